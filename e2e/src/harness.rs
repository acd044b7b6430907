use std::collections::BTreeMap;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::sync::OnceCell;

use crate::Error;
use crate::charts::ChartRepository;
use crate::git::GitServer;
use crate::namespace::TestNamespace;
use crate::registry::{Registry, RegistryCredentials};

/// Field manager for the CRDs: the one `cluster.sh up` applies them with, so each apply owns
/// every field and a field removed from `crds/` is removed from the cluster too.
const CRD_FIELD_MANAGER: &str = "weir-harness";

/// How long a harness service may take to accept a TCP connection before it counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

static HARNESS: OnceCell<Harness> = OnceCell::const_new();

/// The repository's root directory (where `Cargo.toml`, `crds/` and `.tools/` are).
#[must_use]
pub fn repo_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map_or_else(|| manifest_dir.join(".."), Path::to_path_buf)
}

/// The running local harness: the API server and the git, registry and chart services, with
/// their URLs and credentials.
///
/// Found, in this order, from the env file named by `WEIR_HARNESS_ENV`; from the process
/// environment when it has the harness variables (`eval "$(make -s env)"`, as
/// `e2e/scripts/integration.sh` does); or from `$WEIR_TOOLS_DIR/cluster/env.sh` (default
/// `<repo>/.tools/cluster/env.sh`), which `make cluster-up` writes.
#[derive(Debug)]
pub struct Harness {
    kube_config: kube::Config,
    kubeconfig_path: PathBuf,
    tools_bin: PathBuf,
    git: GitServer,
    registry: Registry,
    registry_with_auth: Registry,
    charts: ChartRepository,
}

impl Harness {
    /// Connects to the harness once per test process and returns it to every caller.
    ///
    /// Fails, telling how to start it, when the harness is not up; never skips. On the first
    /// call it also installs the CRDs from `crds/` (server-side apply) and waits until they are
    /// Established, so tests always run against the CRDs of the checked-out tree even when the
    /// harness was started before they changed.
    pub async fn get() -> Result<&'static Harness, Error> {
        HARNESS.get_or_try_init(Self::connect).await
    }

    async fn connect() -> Result<Harness, Error> {
        weir_runtime::tls::install_crypto_provider();

        let env = HarnessEnv::load()?;
        let kubeconfig_path = PathBuf::from(env.var("KUBECONFIG")?);
        let kubeconfig_file =
            Kubeconfig::read_from(&kubeconfig_path).map_err(|source| Error::Kubeconfig {
                path: kubeconfig_path.clone(),
                source,
            })?;
        let kube_config =
            kube::Config::from_custom_kubeconfig(kubeconfig_file, &KubeConfigOptions::default())
                .await
                .map_err(|source| Error::Kubeconfig {
                    path: kubeconfig_path.clone(),
                    source,
                })?;
        // Tests create and delete namespaces and install CRDs: never do that to a real cluster
        // a stray KUBECONFIG points at.
        let api_host = kube_config.cluster_url.host().unwrap_or_default();
        if !matches!(api_host, "127.0.0.1" | "localhost" | "[::1]") {
            return Err(env.unusable(format!(
                "KUBECONFIG {} points at {}, not at the loopback harness",
                kubeconfig_path.display(),
                kube_config.cluster_url
            )));
        }

        let registry_credentials = RegistryCredentials {
            username: env.var("WEIR_REGISTRY_USER")?,
            password: env.var("WEIR_REGISTRY_PASSWORD")?,
        };
        let harness = Harness {
            tools_bin: PathBuf::from(env.var("WEIR_TOOLS_BIN")?),
            git: GitServer {
                root: PathBuf::from(env.var("WEIR_GIT_ROOT")?),
                http_url: env.var("WEIR_GIT_HTTP_URL")?,
                http_user: env.var("WEIR_GIT_HTTP_USER")?,
                http_password: env.var("WEIR_GIT_HTTP_PASSWORD")?,
                http_token: env.optional_var("WEIR_GIT_HTTP_TOKEN"),
                https: env
                    .optional_var("WEIR_GIT_HTTPS_URL")
                    .zip(env.optional_var("WEIR_GIT_HTTPS_CA").map(PathBuf::from)),
                ssh_url: env.var("WEIR_GIT_SSH_URL")?,
                ssh_identity: PathBuf::from(env.var("WEIR_GIT_SSH_IDENTITY")?),
                ssh_known_hosts: PathBuf::from(env.var("WEIR_GIT_SSH_KNOWN_HOSTS")?),
            },
            registry: Registry::new(env.var("WEIR_REGISTRY")?, None),
            registry_with_auth: Registry::new(
                env.var("WEIR_REGISTRY_AUTH")?,
                Some(registry_credentials),
            ),
            charts: ChartRepository {
                url: env.var("WEIR_CHARTS_URL")?,
                dir: PathBuf::from(env.var("WEIR_CHARTS_DIR")?),
                helm: PathBuf::from(env.var("WEIR_TOOLS_BIN")?).join("helm"),
            },
            kube_config,
            kubeconfig_path,
        };
        harness.check_services_answer()?;
        harness.install_crds().await?;
        Ok(harness)
    }

    /// Fails with [`Error::HarnessNotRunning`] unless every service accepts connections.
    fn check_services_answer(&self) -> Result<(), Error> {
        let ssh_host_port = self
            .git
            .ssh_url
            .rsplit_once('@')
            .map_or(self.git.ssh_url.as_str(), |(_, host_port)| host_port);
        let api_url = self.kube_config.cluster_url.to_string();
        let services = [
            ("the API server", authority(&api_url)),
            ("the git HTTP server", authority(&self.git.http_url)),
            ("the git SSH server", ssh_host_port),
            ("the registry", self.registry.host()),
            ("the registry with auth", self.registry_with_auth.host()),
            ("the chart repository", authority(&self.charts.url)),
        ];
        for (service, address) in services {
            let answers = address.to_socket_addrs().is_ok_and(|mut addrs| {
                addrs.any(|addr| TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).is_ok())
            });
            if !answers {
                return Err(Error::HarnessNotRunning {
                    reason: format!("{service} at {address} does not accept connections"),
                });
            }
        }
        Ok(())
    }

    async fn install_crds(&self) -> Result<(), Error> {
        let client = self.client()?;
        client
            .apiserver_version()
            .await
            .map_err(|e| Error::HarnessNotRunning {
                reason: format!("the API server does not answer ({e})"),
            })?;
        let crds: Api<CustomResourceDefinition> = Api::all(client);
        let params = PatchParams::apply(CRD_FIELD_MANAGER).force();
        let mut names = vec![];
        for crd in read_crds()? {
            let name = crd.metadata.name.clone().unwrap_or_default();
            crds.patch(&name, &params, &Patch::Apply(&crd))
                .await
                .map_err(Error::kube(format!("installing CRD {name} from crds/")))?;
            names.push(name);
        }
        for name in names {
            crate::wait::await_within(
                &crds,
                &name,
                &format!("CRD {name} to be Established"),
                Duration::from_secs(60),
                kube::runtime::wait::conditions::is_crd_established(),
            )
            .await?;
        }
        Ok(())
    }

    /// A Kubernetes client for the harness's API server (cluster-admin), made as `weir controllers` makes its own (requests counted, short retries).
    ///
    /// A new client per call, bound to the caller's tokio runtime: each `#[tokio::test]` has its
    /// own runtime, and a client made on one stops working when that runtime ends.
    pub fn client(&self) -> Result<kube::Client, Error> {
        weir_runtime::client::new(self.kube_config.clone()).map_err(Error::KubeClient)
    }

    /// The kubeconfig file of the harness (cluster-admin), for command-line clients such as
    /// `kubectl` and `flux`.
    #[must_use]
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// The configuration [`Harness::client`] builds clients from.
    #[must_use]
    pub fn kube_config(&self) -> &kube::Config {
        &self.kube_config
    }

    /// A fresh namespace named after the running test, deleted when the guard drops.
    pub async fn namespace(&'static self) -> Result<TestNamespace, Error> {
        TestNamespace::create(self).await
    }

    /// The pinned tool `name` (kubectl, helm, kustomize, ...) that `make tools` built.
    #[must_use]
    pub fn tool(&self, name: &str) -> PathBuf {
        self.tools_bin.join(name)
    }

    /// The git server (smart HTTP and SSH) and its credentials.
    #[must_use]
    pub fn git(&self) -> &GitServer {
        &self.git
    }

    /// The OCI registry that needs no credentials.
    #[must_use]
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The OCI registry that needs basic-auth credentials ([`Registry::credentials`]).
    #[must_use]
    pub fn registry_with_auth(&self) -> &Registry {
        &self.registry_with_auth
    }

    /// The Helm chart repository (HTTP, `index.yaml` at its root).
    #[must_use]
    pub fn charts(&self) -> &ChartRepository {
        &self.charts
    }
}

/// `host:port` of an `http://host:port/...` URL.
fn authority(url: &str) -> &str {
    let without_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    without_scheme.split('/').next().unwrap_or(without_scheme)
}

/// The CRDs in `crds/`.
pub(crate) fn read_crds() -> Result<Vec<CustomResourceDefinition>, Error> {
    let dir = repo_root().join("crds");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(Error::io(format!("listing {}", dir.display())))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        // crds/kustomization.yaml only indexes the CRD files for kustomize.
        .filter(|path| {
            path.file_name()
                .is_some_and(|name| name != "kustomization.yaml")
        })
        .collect();
    files.sort();
    files
        .iter()
        .map(|file| {
            let yaml = std::fs::read_to_string(file)
                .map_err(Error::io(format!("reading {}", file.display())))?;
            serde_yaml_ng::from_str(&yaml).map_err(|source| Error::Yaml {
                action: format!("parsing {} as a CustomResourceDefinition", file.display()),
                source,
            })
        })
        .collect()
}

/// The harness's `KEY=value` settings and where they came from.
struct HarnessEnv {
    source_name: String,
    vars: BTreeMap<String, String>,
}

impl HarnessEnv {
    fn load() -> Result<Self, Error> {
        if let Some(file) = std::env::var_os("WEIR_HARNESS_ENV") {
            return Self::from_file(Path::new(&file));
        }
        if std::env::var_os("WEIR_GIT_ROOT").is_some() {
            return Ok(Self {
                source_name: "the process environment".to_owned(),
                vars: std::env::vars().collect(),
            });
        }
        let tools_dir = std::env::var_os("WEIR_TOOLS_DIR")
            .map_or_else(|| repo_root().join(".tools"), PathBuf::from);
        Self::from_file(&tools_dir.join("cluster/env.sh"))
    }

    /// Reads an env file of `export KEY=value` lines. Bash evaluates it, because the harness
    /// writes values with bash's `printf %q` quoting; the environment is cleared first so only
    /// the file's own settings come back.
    fn from_file(path: &Path) -> Result<Self, Error> {
        if !path.is_file() {
            return Err(Error::HarnessNotRunning {
                reason: format!("there is no harness env file {}", path.display()),
            });
        }
        let output = Command::new("bash")
            .env_clear()
            .args([
                "--noprofile",
                "--norc",
                "-c",
                r#"set -a && . "$1" && env -0"#,
                "bash",
            ])
            .arg(path)
            .output()
            .map_err(Error::io("running bash to read the harness env file"))?;
        let source_name = path.display().to_string();
        if !output.status.success() {
            return Err(Error::HarnessEnvironment {
                source_name,
                reason: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        let vars = output
            .stdout
            .split(|b| *b == 0)
            .filter_map(|entry| {
                let entry = String::from_utf8_lossy(entry);
                let (key, value) = entry.split_once('=')?;
                Some((key.to_owned(), value.to_owned()))
            })
            .collect();
        Ok(Self { source_name, vars })
    }

    fn var(&self, key: &str) -> Result<String, Error> {
        self.optional_var(key)
            .ok_or_else(|| self.unusable(format!("{key} is not set")))
    }

    fn optional_var(&self, key: &str) -> Option<String> {
        self.vars.get(key).filter(|v| !v.is_empty()).cloned()
    }

    fn unusable(&self, reason: String) -> Error {
        Error::HarnessEnvironment {
            source_name: self.source_name.clone(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{HarnessEnv, authority};
    use crate::Error;

    #[test]
    fn a_missing_env_file_says_how_to_start_the_harness() {
        let dir = tempfile::tempdir().unwrap();
        let err = HarnessEnv::from_file(&dir.path().join("env.sh"))
            .err()
            .unwrap();
        assert!(matches!(err, Error::HarnessNotRunning { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("make cluster-up"), "{message}");
        assert!(message.contains("make test"), "{message}");
    }

    #[test]
    fn an_env_file_in_bash_quoting_is_read_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("env.sh");
        std::fs::write(
            &file,
            "export KUBECONFIG=/tmp/a\\ dir/admin.kubeconfig\nexport WEIR_GIT_HTTP_PASSWORD=p\\$ss\n",
        )
        .unwrap();
        let env = HarnessEnv::from_file(&file).unwrap();
        assert_eq!(
            env.var("KUBECONFIG").unwrap(),
            "/tmp/a dir/admin.kubeconfig"
        );
        assert_eq!(env.var("WEIR_GIT_HTTP_PASSWORD").unwrap(), "p$ss");
        let missing = env.var("WEIR_REGISTRY").err().unwrap().to_string();
        assert!(missing.contains("WEIR_REGISTRY is not set"), "{missing}");
        assert!(
            env.optional_var("HOME").is_none(),
            "the caller's environment leaked in"
        );
    }

    #[test]
    fn authority_is_host_and_port() {
        assert_eq!(
            authority("http://127.0.0.1:2000/public/x.git"),
            "127.0.0.1:2000"
        );
        assert_eq!(authority("https://127.0.0.1:6443"), "127.0.0.1:6443");
        assert_eq!(authority("127.0.0.1:5000"), "127.0.0.1:5000");
    }
}
