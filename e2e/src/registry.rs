use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::git::run;
use crate::{Chart, Error};

/// An empty tar archive (two zero blocks): the smallest layer that is what its media type says.
const EMPTY_TAR: [u8; 1024] = [0; 1024];

/// Basic-auth credentials of a registry.
#[derive(Clone)]
pub struct RegistryCredentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keep the password out of test output, as Weir keeps secrets out of its logs.
        f.debug_struct("RegistryCredentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// An OCI registry of the harness, spoken to over plain HTTP on loopback.
#[derive(Debug)]
pub struct Registry {
    host: String,
    credentials: Option<RegistryCredentials>,
}

/// An image tag pushed by [`Registry::push_image`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedImage {
    /// `host:port/name`, the form an image field or an ImageRepository's `spec.image` takes.
    pub repository: String,
    pub tag: String,
    /// The manifest digest the registry reports (`sha256:...`).
    pub digest: String,
}

impl PushedImage {
    /// `host:port/name:tag`.
    #[must_use]
    pub fn reference(&self) -> String {
        format!("{}:{}", self.repository, self.tag)
    }
}

impl Registry {
    pub(crate) fn new(host: String, credentials: Option<RegistryCredentials>) -> Self {
        Self { host, credentials }
    }

    /// `host:port` of the registry.
    #[must_use]
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The credentials it needs, if any.
    #[must_use]
    pub fn credentials(&self) -> Option<&RegistryCredentials> {
        self.credentials.as_ref()
    }

    /// The credentials it needs, as oci-client takes them.
    #[must_use]
    pub fn auth(&self) -> RegistryAuth {
        self.credentials
            .as_ref()
            .map_or(RegistryAuth::Anonymous, |c| {
                RegistryAuth::Basic(c.username.clone(), c.password.clone())
            })
    }

    /// A Secret `name` of type `kubernetes.io/dockerconfigjson` with this registry's
    /// credentials, as an ImageRepository's `spec.secretRef` takes it. Fails for the registry
    /// without credentials.
    pub fn docker_config_secret(&self, name: &str) -> Result<Secret, Error> {
        let credentials = self
            .credentials
            .as_ref()
            .ok_or_else(|| Error::HarnessEnvironment {
                source_name: "the harness".to_owned(),
                reason: format!("the registry {} needs no credentials", self.host),
            })?;
        let config = serde_json::json!({
            "auths": {
                &self.host: { "username": credentials.username, "password": credentials.password },
            },
        });
        Ok(Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            type_: Some("kubernetes.io/dockerconfigjson".to_owned()),
            string_data: Some([(".dockerconfigjson".to_owned(), config.to_string())].into()),
            ..Secret::default()
        })
    }

    /// An oci-client speaking plain HTTP, as the harness's registries do.
    #[must_use]
    pub fn client() -> Client {
        Client::new(ClientConfig {
            protocol: ClientProtocol::Http,
            ..ClientConfig::default()
        })
    }

    /// Pushes the tag `tag` of the repository `name` (made if new): a one-layer image whose
    /// config names the tag, so every tag has its own digest. Use
    /// [`crate::unique_name`] for `name` so parallel tests do not share repositories.
    pub async fn push_image(&self, name: &str, tag: &str) -> Result<PushedImage, Error> {
        self.push_image_as(name, tag, &self.auth()).await
    }

    /// [`Registry::push_image`] with `auth` (for checking what other credentials, or none, are
    /// allowed).
    pub async fn push_image_as(
        &self,
        name: &str,
        tag: &str,
        auth: &RegistryAuth,
    ) -> Result<PushedImage, Error> {
        let reference = self.reference(name, tag);
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": { "Labels": { "dev.weir.e2e.tag": tag } },
            "rootfs": {
                "type": "layers",
                "diff_ids": [ImageLayer::oci_v1(EMPTY_TAR.to_vec(), None).sha256_digest()],
            },
        });
        let client = Self::client();
        client
            .push(
                &reference,
                &[ImageLayer::oci_v1(EMPTY_TAR.to_vec(), None)],
                Config::oci_v1(config.to_string().into_bytes(), None),
                auth,
                None,
            )
            .await
            .map_err(Error::registry(format!("pushing image {reference}")))?;
        let digest = client
            .fetch_manifest_digest(&reference, auth)
            .await
            .map_err(Error::registry(format!(
                "reading back the digest of {reference}"
            )))?;
        Ok(PushedImage {
            repository: format!("{}/{name}", self.host),
            tag: tag.to_owned(),
            digest,
        })
    }

    /// The tags of repository `name`, read with this registry's credentials.
    pub async fn list_tags(&self, name: &str) -> Result<Vec<String>, Error> {
        self.list_tags_as(name, &self.auth()).await
    }

    /// The tags of repository `name`, read with `auth` (for checking what other credentials,
    /// or none, are allowed).
    pub async fn list_tags_as(
        &self,
        name: &str,
        auth: &RegistryAuth,
    ) -> Result<Vec<String>, Error> {
        let reference = self.reference(name, "latest");
        let response = Self::client()
            .list_tags(&reference, auth, None, None)
            .await
            .map_err(Error::registry(format!(
                "listing the tags of {}/{name}",
                self.host
            )))?;
        Ok(response.tags)
    }

    /// Pushes `chart` as Helm does: packaged with `helm` (the pinned binary,
    /// `Harness::tool("helm")`) and `helm push`ed over plain HTTP to `oci://<host>/<path>`,
    /// after `helm registry login` when the registry needs credentials. Helm's config stays in a
    /// scratch directory. Returns `oci://<host>/<path>`, an OCI HelmRepository's `spec.url`; the
    /// chart is the artifact `<path>/<chart name>`, tagged with its version (`+` written `_`).
    pub fn push_chart(&self, helm: &Path, chart: &Chart, path: &str) -> Result<String, Error> {
        let scratch = tempfile::tempdir().map_err(Error::io("making a chart scratch directory"))?;
        let helm_home = scratch.path().join("helm");
        let helm = || {
            let mut command = Command::new(helm);
            command
                .env("HELM_CONFIG_HOME", helm_home.join("config"))
                .env("HELM_CACHE_HOME", helm_home.join("cache"))
                .env("HELM_DATA_HOME", helm_home.join("data"));
            command
        };
        let chart_dir = chart.write_to(scratch.path())?;
        let packages = scratch.path().join("packages");
        run(helm()
            .arg("package")
            .arg(&chart_dir)
            .arg("--destination")
            .arg(&packages))?;
        let package = packages.join(format!("{}-{}.tgz", chart.name(), chart.version()));
        if let Some(credentials) = &self.credentials {
            let mut login = helm();
            login.args([
                "registry",
                "login",
                &self.host,
                "--plain-http",
                "--username",
                &credentials.username,
                "--password-stdin",
            ]);
            run_with_stdin(&mut login, &credentials.password)?;
        }
        let url = format!("oci://{}/{path}", self.host);
        run(helm()
            .arg("push")
            .arg(&package)
            .arg(&url)
            .arg("--plain-http"))?;
        Ok(url)
    }

    fn reference(&self, name: &str, tag: &str) -> Reference {
        Reference::with_tag(self.host.clone(), name.to_owned(), tag.to_owned())
    }
}

/// Runs `command` with `input` on its standard input (a password kept out of its arguments, so
/// out of process listings and of the error a failure returns).
fn run_with_stdin(command: &mut Command, input: &str) -> Result<String, Error> {
    let program = command.get_program().to_string_lossy().into_owned();
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(Error::io(format!("starting `{program}`")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(Error::io(format!("writing to `{program}`")))?;
    }
    let output = child
        .wait_with_output()
        .map_err(Error::io(format!("waiting for `{program}`")))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(Error::CommandFailed {
            command: format!("{program} (with input on stdin)"),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}
