//! Charts of OCI HelmRepositories (`type: oci`): the chart `<chart>` of `oci://host/path` is the
//! OCI artifact `host/path/<chart>`, its versions are the repository's tags, and the chart
//! archive is the manifest's chart layer.
//!
//! As Flux's source-controller (and Helm):
//! - a tag is a version with `+` written `_` (OCI tags cannot hold `+`); the highest version the
//!   range allows wins, tags that are not versions are skipped;
//! - the manifest's config is `application/vnd.cncf.helm.config.v1+json` and its chart layer
//!   `application/vnd.cncf.helm.chart.content.v1.tar+gzip` (at most 10 MiB, as HTTP charts);
//!   other layers (a provenance file) are not pulled;
//! - credentials come from the HelmRepository's `secretRef`: a `kubernetes.io/dockerconfigjson`
//!   Secret (its entry for the registry's host), or `username` and `password`; anonymous without
//!   one; `certSecretRef`'s `ca.crt` is trusted besides the system's roots; `insecure` speaks plain
//!   HTTP to the registry.
//!
//! Where Weir differs: `spec.timeout` bounds each registry operation (Flux ignores it for OCI); a
//! client certificate (`tls.crt`/`tls.key`) and the cloud providers (`provider` other than
//! `generic`) are not implemented and fail naming them; an exact `version` is looked up in the
//! tag list too (Flux pulls it without listing); `verify` (cosign, notation) is not implemented.

use std::{collections::BTreeMap, time::Duration};

use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt};
use oci_client::{
    Reference,
    client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol},
    errors::{OciDistributionError, OciErrorCode},
    manifest::{OciDescriptor, OciManifest},
    secrets::RegistryAuth,
};
use weir_api::{HelmRepository, helm_chart as api, image::RegistryProvider, reasons, types};
use weir_runtime::{
    Disposition, Redactor,
    semver_range::{self, Range},
};

use crate::helm_chart_build::{MAX_CHART_SIZE, ReferenceError};

/// The media type of a Helm chart's config (Helm's `ConfigMediaType`).
pub const CHART_CONFIG_MEDIA_TYPE: &str = "application/vnd.cncf.helm.config.v1+json";
/// The media type of a Helm chart's archive layer (Helm's `ChartLayerMediaType`).
pub const CHART_LAYER_MEDIA_TYPE: &str = "application/vnd.cncf.helm.chart.content.v1.tar+gzip";
/// Tags asked for per page of a tag list.
const TAG_PAGE_SIZE: usize = 1000;
/// The type of Secrets holding a `.dockerconfigjson`.
const DOCKER_CONFIG_JSON: &str = ".dockerconfigjson";

/// Why a chart of an OCI HelmRepository could not be reached or pulled.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("invalid OCI repository URL '{url}': {why}")]
    Url { url: String, why: &'static str },
    #[error("invalid chart reference: '{0}' is not a valid OCI repository name")]
    ChartName(String),
    #[error(
        "OCI registry credentials from provider '{0}' are not implemented in Weir: use a secretRef"
    )]
    Provider(&'static str),
    #[error("failed to get secret '{secret}'")]
    SecretUnreadable {
        secret: String,
        #[source]
        source: kube::Error,
    },
    #[error("invalid '{secret}' secret data: {why}")]
    SecretInvalid { secret: String, why: String },
    #[error("cannot configure the OCI registry client")]
    Client(#[source] OciDistributionError),
    #[error("chart pull error: failed to list the tags of '{reference}'")]
    Tags {
        reference: String,
        #[source]
        source: OciDistributionError,
    },
    #[error("chart pull error: failed to pull '{reference}'")]
    Pull {
        reference: String,
        #[source]
        source: OciDistributionError,
    },
    #[error("chart pull error: '{reference}' is not a Helm chart: {why}")]
    NotAChart { reference: String, why: String },
    #[error(
        "chart pull error: the chart layer of '{reference}' exceeds the maximum size of {limit} bytes"
    )]
    TooLarge { reference: String, limit: u64 },
    #[error("chart pull error: no answer from the registry of '{reference}' within {after:?}")]
    Timeout { reference: String, after: Duration },
}

impl OciError {
    /// The negative-polarity condition this failure sets: what concerns the repository's
    /// address and credentials is a fetch failure, the rest a build failure.
    #[must_use]
    pub fn condition_type(&self) -> &'static str {
        match self {
            Self::Url { .. }
            | Self::Provider(_)
            | Self::SecretUnreadable { .. }
            | Self::SecretInvalid { .. }
            | Self::Client(_) => types::FETCH_FAILED,
            Self::ChartName(_)
            | Self::Tags { .. }
            | Self::Pull { .. }
            | Self::NotAChart { .. }
            | Self::TooLarge { .. }
            | Self::Timeout { .. } => types::BUILD_FAILED,
        }
    }

    /// Flux's reason: a refused login is `AuthenticationFailed`, as is a Secret (or CA) that gives
    /// no credentials.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Url { .. } => reasons::URL_INVALID,
            Self::ChartName(_) => api::INVALID_CHART_REFERENCE_REASON,
            Self::Provider(_)
            | Self::SecretUnreadable { .. }
            | Self::SecretInvalid { .. }
            | Self::Client(_) => reasons::AUTHENTICATION_FAILED,
            Self::Tags { source, .. } | Self::Pull { source, .. } if unauthorized(source) => {
                reasons::AUTHENTICATION_FAILED
            }
            Self::Tags { .. }
            | Self::Pull { .. }
            | Self::NotAChart { .. }
            | Self::TooLarge { .. }
            | Self::Timeout { .. } => api::CHART_PULL_ERROR_REASON,
        }
    }

    /// Stalled when only a change of the spec fixes it; a registry's answer may change.
    #[must_use]
    pub fn disposition(&self) -> Disposition {
        match self {
            Self::Url { .. } | Self::ChartName(_) | Self::Provider(_) | Self::Client(_) => {
                Disposition::Stalled
            }
            Self::SecretUnreadable { .. }
            | Self::SecretInvalid { .. }
            | Self::Tags { .. }
            | Self::Pull { .. }
            | Self::NotAChart { .. }
            | Self::TooLarge { .. }
            | Self::Timeout { .. } => Disposition::Transient,
        }
    }
}

/// Whether the registry refused the credentials (or their absence).
fn unauthorized(error: &OciDistributionError) -> bool {
    match error {
        OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::UnauthorizedError { .. } => true,
        OciDistributionError::ServerError { code, .. } => matches!(code, 401 | 403),
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)),
        _ => false,
    }
}

/// Whether the registry does not know the repository (a chart never pushed).
fn unknown_repository(error: &OciDistributionError) -> bool {
    match error {
        OciDistributionError::ServerError { code, .. } => *code == 404,
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| matches!(e.code, OciErrorCode::NameUnknown | OciErrorCode::NotFound)),
        _ => false,
    }
}

/// Where an OCI HelmRepository's charts are: the registry's `host[:port]` and the repository
/// path under it (possibly empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciLocation {
    registry: String,
    path: String,
}

impl OciLocation {
    /// Parses `oci://host[:port][/path]`: no tag, digest, query or credentials.
    pub fn parse(url: &str) -> Result<Self, OciError> {
        let invalid = |why| OciError::Url {
            url: url.to_owned(),
            why,
        };
        let rest = url
            .strip_prefix("oci://")
            .ok_or_else(|| invalid("the scheme must be oci://"))?
            .trim_end_matches('/');
        let (registry, path) = rest.split_once('/').unwrap_or((rest, ""));
        if registry.is_empty() || registry.contains(['@', '?', '#']) {
            return Err(invalid("no registry host"));
        }
        if !path.is_empty() && !valid_repository(path) {
            return Err(invalid(
                "the path must be a repository name (lowercase, no tag or digest)",
            ));
        }
        Ok(Self {
            registry: registry.to_owned(),
            path: path.to_owned(),
        })
    }

    /// The repository of `chart`: `path/chart`.
    fn repository(&self, chart: &str) -> Result<String, OciError> {
        if chart.contains('/') || !valid_repository(chart) {
            return Err(OciError::ChartName(chart.to_owned()));
        }
        Ok(if self.path.is_empty() {
            chart.to_owned()
        } else {
            format!("{}/{chart}", self.path)
        })
    }

    /// The artifact `host/path/chart:tag`.
    pub fn reference(&self, chart: &str, tag: &str) -> Result<Reference, OciError> {
        Ok(Reference::with_tag(
            self.registry.clone(),
            self.repository(chart)?,
            tag.to_owned(),
        ))
    }
}

/// Whether `name` is an OCI repository name: `/`-separated components of lowercase letters and
/// digits, joined by `.`, `_`, `__` or `-`s (the distribution spec's grammar, loosely).
fn valid_repository(name: &str) -> bool {
    name.split('/').all(|component| {
        let bytes = component.as_bytes();
        bytes.first().is_some_and(u8::is_ascii_alphanumeric)
            && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
            && component
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    })
}

/// The highest version of `chart` within `range` among a repository's `tags` (`_` read as `+`),
/// with the tag it is pushed under: `(version, tag)`.
pub fn select_tag(
    tags: &[String],
    chart: &str,
    range: &str,
) -> Result<(String, String), ReferenceError> {
    let parsed = Range::parse(range).map_err(|source| ReferenceError::Range {
        range: range.to_owned(),
        source,
    })?;
    tags.iter()
        .filter_map(|tag| {
            let version = tag.replace('_', "+");
            semver_range::parse_version(&version).map(|parsed| (parsed, version, tag))
        })
        .filter(|(parsed_version, _, _)| parsed.matches(parsed_version))
        .max_by(|(a, _, _), (b, _, _)| a.cmp_precedence(b))
        .map(|(_, version, tag)| (version, tag.clone()))
        .ok_or_else(|| ReferenceError::NoMatch {
            chart: chart.to_owned(),
            range: range.to_owned(),
        })
}

/// How an OCI HelmRepository's registry is reached: the client (protocol and trust), the
/// credentials, the timeout of each operation. Passwords never print.
pub struct OciAccess {
    client: oci_client::Client,
    auth: RegistryAuth,
    location: OciLocation,
    timeout: Duration,
}

impl std::fmt::Debug for OciAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OciAccess")
            .field("location", &self.location)
            .field(
                "auth",
                &match &self.auth {
                    RegistryAuth::Anonymous => "anonymous",
                    _ => "*****",
                },
            )
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl OciAccess {
    /// Reads the repository's URL, `secretRef` and `certSecretRef`; every secret value read is
    /// added to `redactor`.
    pub async fn load(
        client: &Client,
        repo: &HelmRepository,
        redactor: &mut Redactor,
    ) -> Result<Self, OciError> {
        let location = OciLocation::parse(&repo.spec.url)?;
        if repo.spec.provider != RegistryProvider::Generic {
            return Err(OciError::Provider(repo.spec.provider.as_str()));
        }
        let namespace = repo.namespace().unwrap_or_default();
        let auth = match &repo.spec.secret_ref {
            Some(r) => {
                let secret = format!("{namespace}/{}", r.name);
                let data = read_secret(client, &namespace, &r.name).await?;
                let (user, password) = credentials(&data, &location.registry, &secret)?;
                redactor.add(password.clone());
                RegistryAuth::Basic(user, password)
            }
            None => RegistryAuth::Anonymous,
        };
        let ca = match &repo.spec.cert_secret_ref {
            Some(r) => {
                let secret = format!("{namespace}/{}", r.name);
                let data = read_secret(client, &namespace, &r.name).await?;
                Some(ca_certificate(&data, &secret)?)
            }
            None => None,
        };
        let client = oci_client::Client::try_from(ClientConfig {
            protocol: if repo.spec.insecure {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            extra_root_certificates: ca
                .into_iter()
                .map(|data| Certificate {
                    encoding: CertificateEncoding::Pem,
                    data,
                })
                .collect(),
            connect_timeout: Some(repo.spec.timeout()),
            ..ClientConfig::default()
        })
        .map_err(OciError::Client)?;
        Ok(Self {
            client,
            auth,
            location,
            timeout: repo.spec.timeout(),
        })
    }

    /// Every tag of `chart`'s repository; none when the registry does not know it.
    ///
    /// Pages are asked for past the last tag until one adds nothing: a registry that caps a page
    /// below what was asked cannot pass a part of the list for the whole.
    pub async fn tags(&self, chart: &str) -> Result<Vec<String>, OciError> {
        let reference = self.location.reference(chart, "latest")?;
        let name = display(&reference);
        let list = async {
            let mut tags = vec![];
            let mut last: Option<String> = None;
            loop {
                let page = match self
                    .client
                    .list_tags(&reference, &self.auth, Some(TAG_PAGE_SIZE), last.as_deref())
                    .await
                {
                    Ok(page) => page.tags,
                    Err(e) if unknown_repository(&e) => vec![],
                    Err(e) => return Err(e),
                };
                let page_last = page.iter().max().cloned();
                tags.extend(page);
                if page_last.is_none() || page_last <= last {
                    break;
                }
                last = page_last;
            }
            tags.sort_unstable();
            tags.dedup();
            Ok(tags)
        };
        tokio::time::timeout(self.timeout, list)
            .await
            .map_err(|_| OciError::Timeout {
                reference: name.clone(),
                after: self.timeout,
            })?
            .map_err(|source| OciError::Tags {
                reference: name,
                source,
            })
    }

    /// The chart archive of `chart` at `tag`: its manifest's chart layer. Returns the artifact's
    /// name (`oci://host/path/chart:tag`) with it.
    pub async fn pull(&self, chart: &str, tag: &str) -> Result<(String, Vec<u8>), OciError> {
        let reference = self.location.reference(chart, tag)?;
        let name = display(&reference);
        let pull = async {
            let (manifest, _) = self
                .client
                .pull_manifest(&reference, &self.auth)
                .await
                .map_err(|source| OciError::Pull {
                    reference: name.clone(),
                    source,
                })?;
            let layer = chart_layer(&manifest).map_err(|why| OciError::NotAChart {
                reference: name.clone(),
                why,
            })?;
            if u64::try_from(layer.size).unwrap_or(u64::MAX) > MAX_CHART_SIZE {
                return Err(OciError::TooLarge {
                    reference: name.clone(),
                    limit: MAX_CHART_SIZE,
                });
            }
            let mut bytes = Vec::new();
            self.client
                .pull_blob(&reference, layer, &mut bytes)
                .await
                .map_err(|source| OciError::Pull {
                    reference: name.clone(),
                    source,
                })?;
            Ok(bytes)
        };
        let bytes = tokio::time::timeout(self.timeout, pull)
            .await
            .map_err(|_| OciError::Timeout {
                reference: name.clone(),
                after: self.timeout,
            })??;
        Ok((name, bytes))
    }
}

/// `oci://host/path/chart:tag`, as messages name an artifact.
fn display(reference: &Reference) -> String {
    let base = format!("oci://{}/{}", reference.registry(), reference.repository());
    match reference.tag() {
        Some(tag) if tag != "latest" => format!("{base}:{tag}"),
        _ => base,
    }
}

/// The chart layer of a Helm chart's manifest: an image manifest with Helm's config, and one
/// layer of the chart's media type.
fn chart_layer(manifest: &OciManifest) -> Result<&OciDescriptor, String> {
    let OciManifest::Image(image) = manifest else {
        return Err("its manifest is an image index".to_owned());
    };
    if image.config.media_type != CHART_CONFIG_MEDIA_TYPE {
        return Err(format!(
            "its config media type is '{}', not '{CHART_CONFIG_MEDIA_TYPE}'",
            image.config.media_type
        ));
    }
    let mut layers = image
        .layers
        .iter()
        .filter(|l| l.media_type == CHART_LAYER_MEDIA_TYPE);
    match (layers.next(), layers.next()) {
        (Some(layer), None) => Ok(layer),
        (None, _) => Err(format!("it has no '{CHART_LAYER_MEDIA_TYPE}' layer")),
        (Some(_), Some(_)) => Err(format!(
            "it has more than one '{CHART_LAYER_MEDIA_TYPE}' layer"
        )),
    }
}

async fn read_secret(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<BTreeMap<String, Vec<u8>>, OciError> {
    Api::<Secret>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .map(weir_runtime::secrets::data)
        .map_err(|source| OciError::SecretUnreadable {
            secret: format!("{namespace}/{name}"),
            source,
        })
}

/// The credentials a `secretRef` gives for `registry`: its `.dockerconfigjson` entry for the
/// registry's host, or `username` and `password`.
fn credentials(
    data: &BTreeMap<String, Vec<u8>>,
    registry: &str,
    secret: &str,
) -> Result<(String, String), OciError> {
    let invalid = |why: String| OciError::SecretInvalid {
        secret: secret.to_owned(),
        why,
    };
    if let Some(config) = data.get(DOCKER_CONFIG_JSON) {
        return docker_config_auth(config, registry)
            .map_err(invalid)?
            .ok_or_else(|| invalid(format!("{DOCKER_CONFIG_JSON} has no entry for {registry}")));
    }
    let text = |key: &str| {
        data.get(key)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .filter(|v| !v.is_empty())
    };
    match (text("username"), text("password")) {
        (Some(user), Some(password)) => Ok((user, password)),
        _ => Err(invalid(format!(
            "required fields 'username' and 'password', or '{DOCKER_CONFIG_JSON}'"
        ))),
    }
}

/// The `username`/`password` (or `auth`, base64 of `user:password`) of the `auths` entry for
/// `registry` in a `.dockerconfigjson`; entries are keyed by host, with or without a scheme and
/// path.
fn docker_config_auth(config: &[u8], registry: &str) -> Result<Option<(String, String)>, String> {
    let value: serde_json::Value =
        serde_json::from_slice(config).map_err(|_| format!("{DOCKER_CONFIG_JSON} is not JSON"))?;
    let auths = value
        .get("auths")
        .and_then(|a| a.as_object())
        .ok_or_else(|| format!("{DOCKER_CONFIG_JSON} has no auths"))?;
    let host_of = |key: &str| {
        let key = key
            .strip_prefix("https://")
            .or_else(|| key.strip_prefix("http://"))
            .unwrap_or(key);
        key.split('/').next().unwrap_or(key).to_owned()
    };
    let Some(entry) = auths
        .iter()
        .find(|(key, _)| host_of(key) == registry)
        .map(|(_, entry)| entry)
    else {
        return Ok(None);
    };
    let text = |k: &str| entry.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    if let (Some(user), Some(password)) = (text("username"), text("password")) {
        return Ok(Some((user, password)));
    }
    let Some(auth) = text("auth") else {
        return Ok(None);
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .map_err(|_| format!("the auth of {registry} is not base64"))?;
    let decoded = String::from_utf8_lossy(&decoded);
    let (user, password) = decoded
        .split_once(':')
        .ok_or_else(|| format!("the auth of {registry} is not user:password"))?;
    Ok(Some((user.to_owned(), password.to_owned())))
}

/// `certSecretRef`'s `ca.crt`; a client certificate is refused, as oci-client cannot present one.
fn ca_certificate(data: &BTreeMap<String, Vec<u8>>, secret: &str) -> Result<Vec<u8>, OciError> {
    let invalid = |why: &str| OciError::SecretInvalid {
        secret: secret.to_owned(),
        why: why.to_owned(),
    };
    if data.contains_key("tls.crt") || data.contains_key("tls.key") {
        return Err(invalid(
            "client certificates ('tls.crt', 'tls.key') are not implemented for OCI registries in Weir",
        ));
    }
    let ca = data.get("ca.crt").ok_or_else(|| invalid("no 'ca.crt'"))?;
    if !String::from_utf8_lossy(ca).contains("-----BEGIN CERTIFICATE-----") {
        return Err(invalid("'ca.crt' holds no PEM certificate"));
    }
    Ok(ca.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(list: &[&str]) -> Vec<String> {
        list.iter().map(|t| (*t).to_owned()).collect()
    }

    #[test]
    fn the_highest_tag_in_the_range_wins_with_underscores_read_as_plus() {
        let tags = tags(&[
            "1.0.0",
            "1.10.0_build.7",
            "1.2.0",
            "2.0.0",
            "2.1.0-rc.1",
            "latest",
            "sha256-abc.sig",
        ]);
        let pick = |range: &str| select_tag(&tags, "app", range);
        assert_eq!(
            pick(">=1.0.0 <2.0.0").unwrap(),
            ("1.10.0+build.7".to_owned(), "1.10.0_build.7".to_owned())
        );
        assert_eq!(pick("*").unwrap().0, "2.0.0", "no pre-release unless asked");
        assert_eq!(pick(">=2.1.0-0").unwrap().0, "2.1.0-rc.1");
        assert_eq!(pick("1.2.x").unwrap().1, "1.2.0");
        let none = pick(">=3.0.0").unwrap_err();
        assert_eq!(
            none.to_string(),
            "no 'app' chart with version matching '>=3.0.0' found"
        );
        assert!(matches!(
            select_tag(&[], "missing", "*"),
            Err(ReferenceError::NoMatch { .. })
        ));
        assert!(matches!(
            pick("not a range"),
            Err(ReferenceError::Range { .. })
        ));
    }

    #[test]
    fn a_repository_url_is_a_registry_and_a_path() {
        let location = OciLocation::parse("oci://127.0.0.1:5000/team/charts/").unwrap();
        let reference = location.reference("app", "1.0.0_b").unwrap();
        assert_eq!(reference.registry(), "127.0.0.1:5000");
        assert_eq!(reference.repository(), "team/charts/app");
        assert_eq!(
            display(&reference),
            "oci://127.0.0.1:5000/team/charts/app:1.0.0_b"
        );
        let bare = OciLocation::parse("oci://ghcr.io").unwrap();
        assert_eq!(bare.reference("app", "1").unwrap().repository(), "app");
        for bad in [
            "https://ghcr.io/charts",
            "oci://",
            "oci://ghcr.io/Charts",
            "oci://ghcr.io/charts:1.0",
            "oci://ghcr.io/charts@sha256:00",
            "oci://user@ghcr.io/charts",
        ] {
            assert!(
                matches!(OciLocation::parse(bad), Err(OciError::Url { .. })),
                "{bad}"
            );
        }
        for bad in ["", "a/b", "App", "-app", "app:1"] {
            assert!(
                matches!(location.reference(bad, "1"), Err(OciError::ChartName(_))),
                "{bad}"
            );
        }
    }

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn credentials_come_from_a_docker_config_or_username_and_password() {
        let auth = base64::engine::general_purpose::STANDARD.encode("a:b:c");
        let config = serde_json::json!({ "auths": {
            "127.0.0.1:5000": { "username": "u", "password": "p" },
            "https://ghcr.io/v1/": { "auth": auth },
        }})
        .to_string();
        let secret = data(&[(".dockerconfigjson", &config)]);
        assert_eq!(
            credentials(&secret, "127.0.0.1:5000", "ns/s").unwrap(),
            ("u".into(), "p".into())
        );
        assert_eq!(
            credentials(&secret, "ghcr.io", "ns/s").unwrap(),
            ("a".into(), "b:c".into())
        );
        let other = credentials(&secret, "quay.io", "ns/s").unwrap_err();
        assert_eq!(
            other.to_string(),
            "invalid 'ns/s' secret data: .dockerconfigjson has no entry for quay.io"
        );
        assert_eq!(
            credentials(&data(&[("username", "u"), ("password", "p")]), "r", "ns/s").unwrap(),
            ("u".into(), "p".into())
        );
        let half = credentials(&data(&[("username", "u")]), "r", "ns/s").unwrap_err();
        assert_eq!(half.reason(), "AuthenticationFailed");
        assert_eq!(half.disposition(), Disposition::Transient);
        assert!(
            credentials(&data(&[(".dockerconfigjson", "{")]), "r", "ns/s").is_err(),
            "not JSON"
        );
    }

    #[test]
    fn a_cert_secret_gives_a_ca_and_no_client_certificate() {
        let pem = "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n";
        assert!(ca_certificate(&data(&[("ca.crt", pem)]), "s").is_ok());
        assert!(ca_certificate(&data(&[("ca.crt", "nope")]), "s").is_err());
        let client = ca_certificate(&data(&[("ca.crt", pem), ("tls.crt", pem)]), "s");
        assert!(
            client
                .unwrap_err()
                .to_string()
                .contains("client certificates")
        );
    }

    fn manifest(config: &str, layers: &[&str]) -> OciManifest {
        let descriptor = |media_type: &str| OciDescriptor {
            media_type: media_type.to_owned(),
            digest: "sha256:00".to_owned(),
            size: 1,
            ..OciDescriptor::default()
        };
        OciManifest::Image(oci_client::manifest::OciImageManifest {
            config: descriptor(config),
            layers: layers.iter().map(|l| descriptor(l)).collect(),
            ..oci_client::manifest::OciImageManifest::default()
        })
    }

    #[test]
    fn a_chart_manifest_has_helms_config_and_one_chart_layer() {
        let prov = "application/vnd.cncf.helm.chart.provenance.v1.prov";
        let chart = manifest(CHART_CONFIG_MEDIA_TYPE, &[CHART_LAYER_MEDIA_TYPE, prov]);
        assert_eq!(
            chart_layer(&chart).unwrap().media_type,
            CHART_LAYER_MEDIA_TYPE
        );
        let image = manifest(
            "application/vnd.oci.image.config.v1+json",
            &["application/vnd.oci.image.layer.v1.tar+gzip"],
        );
        assert!(
            chart_layer(&image)
                .unwrap_err()
                .contains("config media type")
        );
        let empty = manifest(CHART_CONFIG_MEDIA_TYPE, &[prov]);
        assert!(chart_layer(&empty).unwrap_err().contains("no"));
    }

    #[test]
    fn failures_map_to_fluxs_reasons() {
        let refused = OciError::Tags {
            reference: "oci://r/app".into(),
            source: OciDistributionError::UnauthorizedError { url: "u".into() },
        };
        assert_eq!(refused.reason(), "AuthenticationFailed");
        assert_eq!(refused.condition_type(), types::BUILD_FAILED);
        let down = OciError::Tags {
            reference: "oci://r/app".into(),
            source: OciDistributionError::GenericError(None),
        };
        assert_eq!(down.reason(), "ChartPullError");
        assert_eq!(down.disposition(), Disposition::Transient);
        let url = OciLocation::parse("oci://").unwrap_err();
        assert_eq!(url.reason(), "URLInvalid");
        assert_eq!(url.disposition(), Disposition::Stalled);
        assert!(unknown_repository(&OciDistributionError::ServerError {
            code: 404,
            url: "u".into(),
            message: String::new(),
        }));
    }
}
