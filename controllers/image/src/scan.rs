//! Scanning a registry: `credentials → list tags (paginated) → exclude → record`. The registry
//! client is oci-client; HTTPS unless `spec.insecure`.
//!
//! Credentials come, as in Flux, from `spec.secretRef`, then from the
//! `kubernetes.io/dockerconfigjson` `imagePullSecrets` of `spec.serviceAccountName`: the first
//! with an entry for the registry wins. `spec.proxySecretRef` sends every registry request (tag
//! list, token exchange, digest lookup) through an HTTP(S) proxy. Cloud providers (`spec.provider` other than `generic`) need
//! their metadata endpoints and workload identity, which Weir does not implement: such a
//! repository is Stalled with a message naming the provider.

use std::collections::BTreeMap;

use base64::Engine as _;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::{Api, Client};
use oci_client::{
    Reference, RegistryOperation,
    client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol},
    errors::OciDistributionError,
    secrets::RegistryAuth,
};
use regex::Regex;
use sha2::{Digest, Sha256};
use weir_api::{ImageRepository, image::RegistryProvider};
use weir_runtime::Redactor;

use crate::error::{ImageError, RegistryFailure};

/// Tags asked for per page of the tag list.
pub const PAGE_SIZE: usize = 1000;

/// How to reach a registry: protocol, extra CA, proxy and credentials. Passwords never print.
#[derive(Clone)]
pub struct RegistryAccess {
    pub insecure: bool,
    pub ca_pem: Option<Vec<u8>>,
    pub auth: RegistryAuth,
    /// The HTTP(S) proxy every request goes through, its credentials in the URL's userinfo.
    pub proxy: Option<url::Url>,
}

impl std::fmt::Debug for RegistryAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAccess")
            .field("insecure", &self.insecure)
            .field("ca", &self.ca_pem.is_some())
            .field(
                "proxy",
                &self.proxy.as_ref().map(|p| {
                    format!(
                        "{}:{}",
                        p.host_str().unwrap_or_default(),
                        p.port_or_known_default().unwrap_or_default()
                    )
                }),
            )
            .field(
                "auth",
                &match &self.auth {
                    RegistryAuth::Anonymous => "anonymous",
                    _ => "*****",
                },
            )
            .finish()
    }
}

impl RegistryAccess {
    /// An HTTP client with the same trust as [`Self::client`], for the requests oci-client does
    /// not expose (the tag list's `Link` header).
    pub fn http_client(&self) -> Result<reqwest::Client, ImageError> {
        let mut builder = reqwest::Client::builder();
        if let Some(pem) = &self.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
                ImageError::SecretUnusable {
                    name: "certSecretRef".to_owned(),
                    what: "cannot use ca.crt".to_owned(),
                    source: e.into(),
                }
            })?;
            builder = builder.tls_certs_merge(certs);
        }
        if let Some(proxy) = &self.proxy {
            builder = builder.proxy(reqwest::Proxy::all(proxy.as_str()).map_err(|e| {
                ImageError::SecretUnusable {
                    name: "proxySecretRef".to_owned(),
                    what: "unusable proxy address".to_owned(),
                    source: e.into(),
                }
            })?);
        }
        builder.build().map_err(|e| ImageError::Registry {
            image: String::new(),
            source: RegistryFailure::HttpClient(e),
        })
    }

    /// An oci-client for this registry. (Not `Client::new`, which falls back to a default
    /// client, HTTPS and system roots, when the configuration is unusable: a bad CA must fail.)
    pub fn client(&self) -> Result<oci_client::Client, ImageError> {
        let ca_error = |why: String| ImageError::SecretInvalid {
            name: "certSecretRef".to_owned(),
            why,
        };
        if let Some(pem) = &self.ca_pem
            && !String::from_utf8_lossy(pem).contains("-----BEGIN CERTIFICATE-----")
        {
            return Err(ca_error("ca.crt holds no PEM certificate".to_owned()));
        }
        oci_client::Client::try_from(ClientConfig {
            protocol: if self.insecure {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            extra_root_certificates: self
                .ca_pem
                .iter()
                .map(|pem| Certificate {
                    encoding: CertificateEncoding::Pem,
                    data: pem.clone(),
                })
                .collect(),
            https_proxy: self.proxy.as_ref().map(ToString::to_string),
            http_proxy: self.proxy.as_ref().map(ToString::to_string),
            ..ClientConfig::default()
        })
        .map_err(|e| ImageError::SecretUnusable {
            name: "certSecretRef".to_owned(),
            what: "cannot use ca.crt".to_owned(),
            source: e.into(),
        })
    }
}

/// Parses `spec.image`: a repository without tag or digest.
pub fn parse_image(image: &str) -> Result<Reference, ImageError> {
    let invalid = |why| ImageError::InvalidImage {
        image: image.to_owned(),
        why,
    };
    if image.contains("://") {
        return Err(invalid("give the image without a scheme"));
    }
    let reference: Reference = image
        .parse()
        .map_err(|source| ImageError::UnparsableImage {
            image: image.to_owned(),
            source,
        })?;
    if reference.digest().is_some() || image.rsplit('/').next().is_some_and(|l| l.contains(':')) {
        return Err(invalid("give the repository without a tag or digest"));
    }
    Ok(reference)
}

/// `registry/repository` with the registry made explicit (`index.docker.io` for Docker Hub). A
/// mirror the reference is read through does not change it.
#[must_use]
pub fn canonical_name(reference: &Reference) -> String {
    let registry = match reference.registry() {
        "docker.io" => "index.docker.io",
        other => other,
    };
    format!("{registry}/{}", reference.repository())
}

/// Pull-through mirrors by registry host (`--registry-mirror docker.io=mirror:5000`), as
/// containerd's `hosts.toml` mirrors: a repository of a mirrored registry is read from the mirror,
/// with `ns=<registry>` on each request; its name (in status, and in `latestRef`) stays the
/// registry's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mirrors(BTreeMap<String, String>);

impl Mirrors {
    /// Parses `registry=mirror` entries; Docker Hub may be named `docker.io` or
    /// `index.docker.io`.
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut mirrors = BTreeMap::new();
        for entry in entries {
            let (registry, mirror) = entry
                .split_once('=')
                .filter(|(r, m)| !r.is_empty() && !m.is_empty() && !m.contains('/'))
                .ok_or_else(|| format!("registry mirror {entry:?} is not registry=host[:port]"))?;
            let registry = if registry == "index.docker.io" {
                "docker.io"
            } else {
                registry
            };
            mirrors.insert(registry.to_owned(), mirror.to_owned());
        }
        Ok(Self(mirrors))
    }

    /// `reference`, read through its registry's mirror when one is configured.
    #[must_use]
    pub fn apply(&self, mut reference: Reference) -> Reference {
        if let Some(mirror) = self.0.get(reference.registry()) {
            reference.set_mirror_registry(mirror.clone());
        }
        reference
    }
}

async fn read_secret(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<BTreeMap<String, Vec<u8>>, ImageError> {
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(|source| ImageError::SecretUnreadable {
            name: name.to_owned(),
            source,
        })?
        .ok_or_else(|| ImageError::SecretNotFound {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })?;
    Ok(weir_runtime::secrets::data(secret))
}

/// The credentials for `registry` in a `.dockerconfigjson`: `username`/`password` or `auth`.
pub fn docker_config_auth(
    config: &[u8],
    registry: &str,
    secret: &str,
) -> Result<Option<(String, String)>, ImageError> {
    let invalid = |why: String| ImageError::SecretInvalid {
        name: secret.to_owned(),
        why,
    };
    let value: serde_json::Value =
        serde_json::from_slice(config).map_err(|e| ImageError::SecretUnusable {
            name: secret.to_owned(),
            what: ".dockerconfigjson is not JSON".to_owned(),
            source: e.into(),
        })?;
    let Some(auths) = value.get("auths").and_then(|a| a.as_object()) else {
        return Err(invalid(".dockerconfigjson has no auths".to_owned()));
    };
    let host_of = |key: &str| {
        let key = key
            .strip_prefix("https://")
            .or_else(|| key.strip_prefix("http://"))
            .unwrap_or(key);
        key.split('/').next().unwrap_or(key).to_owned()
    };
    let wanted = [
        registry,
        if registry == "index.docker.io" {
            "docker.io"
        } else {
            registry
        },
    ];
    let Some(entry) = auths
        .iter()
        .find(|(k, _)| wanted.contains(&host_of(k).as_str()))
        .map(|(_, v)| v)
    else {
        return Ok(None);
    };
    let text = |k: &str| entry.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    if let (Some(user), Some(password)) = (text("username"), text("password")) {
        return Ok(Some((user, password)));
    }
    if let Some(auth) = text("auth") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| invalid(format!("the auth of {registry} is not base64")))?;
        let decoded = String::from_utf8_lossy(&decoded);
        let (user, password) = decoded
            .split_once(':')
            .ok_or_else(|| invalid(format!("the auth of {registry} is not user:password")))?;
        return Ok(Some((user.to_owned(), password.to_owned())));
    }
    Ok(None)
}

/// The credentials for the registry in one `.dockerconfigjson`; through a mirror, the mirror's
/// own entry first, then the registry's.
fn docker_config_credentials(
    config: &[u8],
    reference: &Reference,
    secret: &str,
) -> Result<Option<(String, String)>, ImageError> {
    let mut found = docker_config_auth(config, reference.resolve_registry(), secret)?;
    if found.is_none() && reference.namespace().is_some() {
        let registry = canonical_name(reference);
        let host = registry.split('/').next().unwrap_or_default();
        found = docker_config_auth(config, host, secret)?;
    }
    Ok(found)
}

/// The `imagePullSecrets` of `spec.serviceAccountName` that are `kubernetes.io/dockerconfigjson`
/// Secrets, in order, as `(name, .dockerconfigjson)`.
async fn service_account_pull_secrets(
    client: &Client,
    namespace: &str,
    account: &str,
) -> Result<Vec<(String, Vec<u8>)>, ImageError> {
    let sa = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .get_opt(account)
        .await?
        .ok_or_else(|| ImageError::ServiceAccountNotFound {
            namespace: namespace.to_owned(),
            name: account.to_owned(),
        })?;
    let mut configs = vec![];
    for pull in sa.image_pull_secrets.unwrap_or_default() {
        let secret = Api::<Secret>::namespaced(client.clone(), namespace)
            .get_opt(&pull.name)
            .await
            .map_err(|source| ImageError::SecretUnreadable {
                name: pull.name.clone(),
                source,
            })?;
        // A missing or other-typed pull secret is skipped, as the kubelet skips it.
        let Some(secret) = secret.filter(|s| s.type_.as_deref() == Some(DOCKER_CONFIG_JSON)) else {
            continue;
        };
        if let Some(config) = secret.data.and_then(|mut d| d.remove(".dockerconfigjson")) {
            configs.push((pull.name, config.0));
        }
    }
    Ok(configs)
}

/// The type of Secrets holding a `.dockerconfigjson`.
const DOCKER_CONFIG_JSON: &str = "kubernetes.io/dockerconfigjson";

/// The registry's credentials: `spec.secretRef`'s, else the first pull secret of
/// `spec.serviceAccountName` with an entry for the registry; anonymous when none has one.
async fn credentials(
    client: &Client,
    repo: &ImageRepository,
    namespace: &str,
    reference: &Reference,
) -> Result<RegistryAuth, ImageError> {
    if repo.spec.provider != RegistryProvider::Generic {
        return Err(ImageError::ProviderUnsupported(repo.spec.provider));
    }
    if let Some(r) = &repo.spec.secret_ref {
        let data = read_secret(client, namespace, &r.name).await?;
        let config = data
            .get(".dockerconfigjson")
            .ok_or_else(|| ImageError::SecretInvalid {
                name: r.name.clone(),
                why: "not a kubernetes.io/dockerconfigjson secret (no .dockerconfigjson)".into(),
            })?;
        if let Some((user, password)) = docker_config_credentials(config, reference, &r.name)? {
            return Ok(RegistryAuth::Basic(user, password));
        }
    }
    if let Some(account) = repo.spec.service_account_name.as_deref() {
        for (name, config) in service_account_pull_secrets(client, namespace, account).await? {
            if let Some((user, password)) = docker_config_credentials(&config, reference, &name)? {
                return Ok(RegistryAuth::Basic(user, password));
            }
        }
    }
    Ok(RegistryAuth::Anonymous)
}

/// `spec.certSecretRef`'s `ca.crt`.
async fn ca_certificate(
    client: &Client,
    repo: &ImageRepository,
    namespace: &str,
) -> Result<Option<Vec<u8>>, ImageError> {
    let Some(r) = &repo.spec.cert_secret_ref else {
        return Ok(None);
    };
    let data = read_secret(client, namespace, &r.name).await?;
    if data.contains_key("tls.crt") || data.contains_key("tls.key") {
        return Err(ImageError::SecretInvalid {
            name: r.name.clone(),
            why: "client certificates (tls.crt/tls.key) are not supported; give only ca.crt".into(),
        });
    }
    data.get("ca.crt")
        .cloned()
        .map(Some)
        .ok_or_else(|| ImageError::SecretInvalid {
            name: r.name.clone(),
            why: "no ca.crt".into(),
        })
}

/// The proxy of a `spec.proxySecretRef` Secret's data: `address`, and optionally `username` and
/// `password`, which go into the address's userinfo.
pub fn proxy_url(data: &BTreeMap<String, Vec<u8>>, secret: &str) -> Result<url::Url, ImageError> {
    let invalid = |why: String| ImageError::SecretInvalid {
        name: secret.to_owned(),
        why,
    };
    let text = |key: &str| {
        data.get(key)
            .map(|v| {
                String::from_utf8(v.clone()).map_err(|_| invalid(format!("'{key}' is not UTF-8")))
            })
            .transpose()
    };
    let address = text("address")?.ok_or_else(|| invalid("no 'address'".to_owned()))?;
    let mut url = url::Url::parse(address.trim()).map_err(|e| ImageError::SecretUnusable {
        name: secret.to_owned(),
        what: format!("'address' {address:?} is not a URL"),
        source: e.into(),
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(invalid(format!(
            "'address' {address:?} is not an http:// or https:// proxy"
        )));
    }
    let (username, password) = (text("username")?, text("password")?);
    if password.is_some() && username.is_none() {
        return Err(invalid("'password' without 'username'".to_owned()));
    }
    if let Some(user) = username {
        url.set_username(&user)
            .and_then(|()| url.set_password(password.as_deref()))
            .map_err(|()| invalid("the proxy address cannot carry credentials".to_owned()))?;
    }
    Ok(url)
}

/// Whether go-containerregistry, and so Flux, lets `registry` (`host[:port]`) speak plain HTTP
/// though `insecure` is not set: `localhost`, loopback, private (RFC 1918) addresses and
/// `.local` names.
fn plain_http_allowed(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        // `[::1]:5000`, `::1` and `host:port`.
        _ if registry.starts_with('[') => registry
            .split_once(']')
            .map_or(registry, |(h, _)| h.trim_start_matches('[')),
        Some((host, port)) if !host.contains(':') && port.parse::<u16>().is_ok() => host,
        _ => registry,
    };
    let host = host.to_ascii_lowercase();
    let top_label = host.rsplit_once('.').map(|(_, label)| label);
    if host == "localhost" || matches!(top_label, Some("local" | "localhost")) {
        return true;
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => ip.is_loopback() || ip.is_private(),
        Ok(std::net::IpAddr::V6(ip)) => ip.is_loopback(),
        Err(_) => false,
    }
}

/// Whether `registry` answers `GET /v2/` over HTTPS at all (any status: 401 is an answer).
async fn speaks_https(http: &reqwest::Client, registry: &str) -> bool {
    http.get(format!("https://{registry}/v2/"))
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await
        .is_ok()
}

/// The registry access an ImageRepository asks for, and a redactor knowing its secrets.
pub async fn registry_access(
    client: &Client,
    repo: &ImageRepository,
    namespace: &str,
    reference: &Reference,
) -> Result<(RegistryAccess, Redactor), ImageError> {
    let mut redactor = Redactor::default();
    let auth = credentials(client, repo, namespace, reference).await?;
    if let RegistryAuth::Basic(_, password) = &auth {
        redactor.add(password.clone());
    }
    let ca_pem = ca_certificate(client, repo, namespace).await?;
    let proxy = match &repo.spec.proxy_secret_ref {
        Some(r) => {
            let data = read_secret(client, namespace, &r.name).await?;
            let url = proxy_url(&data, &r.name)?;
            // Errors may quote the address, its password percent-encoded.
            if let Some(password) = data.get("password") {
                redactor.add(String::from_utf8_lossy(password).into_owned());
            }
            if let Some(password) = url.password() {
                redactor.add(password.to_owned());
            }
            Some(url)
        }
        None => None,
    };
    let mut access = RegistryAccess {
        insecure: repo.spec.insecure,
        ca_pem,
        auth,
        proxy,
    };
    // As Flux's registry client (go-containerregistry) does: a local registry is asked over
    // HTTPS and over plain HTTP, HTTPS preferred, without `insecure`.
    let registry = reference.resolve_registry();
    if !access.insecure && plain_http_allowed(registry) {
        access.insecure = !speaks_https(&access.http_client()?, registry).await;
    }
    // A CA the client cannot use is the cert secret's fault: name it.
    if let (Err(e), Some(r)) = (access.client(), &repo.spec.cert_secret_ref) {
        match e {
            ImageError::SecretInvalid { why, .. } => {
                return Err(ImageError::SecretInvalid {
                    name: r.name.clone(),
                    why,
                });
            }
            ImageError::SecretUnusable { what, source, .. } => {
                return Err(ImageError::SecretUnusable {
                    name: r.name.clone(),
                    what,
                    source,
                });
            }
            _ => {}
        }
    }
    Ok((access, redactor))
}

/// Compiles `spec.exclusionList`.
pub fn exclusions(list: &[String]) -> Result<Vec<Regex>, ImageError> {
    list.iter()
        .map(|p| {
            Regex::new(p).map_err(|source| ImageError::InvalidExclusion {
                pattern: p.clone(),
                source,
            })
        })
        .collect()
}

/// oci-client's error, as an authentication failure when it is one.
pub(crate) fn registry_error(image: &str, e: OciDistributionError) -> ImageError {
    let message = e.to_string();
    let auth = matches!(
        e,
        OciDistributionError::AuthenticationFailure(_)
            | OciDistributionError::UnauthorizedError { .. }
    ) || message.contains("401")
        || message.to_lowercase().contains("unauthorized");
    let (image, source) = (image.to_owned(), RegistryFailure::Client(e));
    if auth {
        ImageError::RegistryAuthentication { image, source }
    } else {
        ImageError::Registry { image, source }
    }
}

/// One page of a tag list, as the distribution spec's `GET /v2/<name>/tags/list` returns it.
#[derive(serde::Deserialize)]
struct TagPage {
    #[serde(default)]
    tags: Option<Vec<String>>,
}

/// The `rel="next"` target of a `Link` header, resolved against `base`; `None` when there is
/// none. A target on another host is refused: credentials are never sent elsewhere.
fn next_link(
    header: Option<&reqwest::header::HeaderValue>,
    base: &url::Url,
    image: &str,
) -> Result<Option<url::Url>, ImageError> {
    let Some(header) = header else {
        return Ok(None);
    };
    let invalid = |source| ImageError::Registry {
        image: image.to_owned(),
        source,
    };
    let text = header
        .to_str()
        .map_err(|_| invalid(RegistryFailure::LinkNotAscii))?;
    let links = parse_link_header::parse_with_rel(text)
        .map_err(|e| invalid(RegistryFailure::LinkUnparsable(e)))?;
    let Some(next) = links.get("next") else {
        return Ok(None);
    };
    let url = base
        .join(&next.raw_uri)
        .map_err(|e| invalid(RegistryFailure::LinkUrl(e)))?;
    if url.host_str() != base.host_str()
        || url.port_or_known_default() != base.port_or_known_default()
    {
        return Err(invalid(RegistryFailure::LinkOtherHost(
            url.host_str().unwrap_or_default().to_owned(),
        )));
    }
    Ok(Some(url))
}

/// Lists every tag of the repository, page by page, dropping excluded tags as pages arrive.
/// Returns the tags sorted and deduplicated.
///
/// A page is followed by the next while the registry sends a `Link: <…>; rel="next"` header (the
/// distribution spec's way, which registries capping `n` below what was asked use). A registry
/// that never sends `Link` is asked again past the last tag it gave (`last=`), until a page adds
/// nothing: a short page is never taken for the last one, so a silently capped list cannot pass
/// for the whole. A page longer than asked means the registry ignores `n` and sent everything.
/// oci-client does the authentication (bearer token exchange or basic); it does not expose the
/// `Link` header, so the pages are requested here.
pub async fn list_all_tags(
    access: &RegistryAccess,
    reference: &Reference,
    excluded: &[Regex],
    page_size: usize,
    pages: &std::sync::atomic::AtomicU64,
) -> Result<Vec<Box<str>>, ImageError> {
    let image = canonical_name(reference);
    let registry_failure = |source| ImageError::Registry {
        image: image.clone(),
        source,
    };
    let token = access
        .client()?
        .auth(reference, &access.auth, RegistryOperation::Pull)
        .await
        .map_err(|e| registry_error(&image, e))?;
    let http = access.http_client()?;
    let scheme = if access.insecure { "http" } else { "https" };
    let base = url::Url::parse(&format!("{scheme}://{}/", reference.resolve_registry()))
        .map_err(|e| registry_failure(RegistryFailure::Address(e)))?;
    let list_url = |last: Option<&str>| {
        let mut url = base.clone();
        url.set_path(&format!("/v2/{}/tags/list", reference.repository()));
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("n", &page_size.to_string());
            if let Some(last) = last {
                query.append_pair("last", last);
            }
        }
        with_namespace(url, reference)
    };
    let mut tags: Vec<Box<str>> = vec![];
    let mut url = list_url(None);
    let mut last: Option<String> = None;
    let mut registry_links = false;
    loop {
        let mut request = http.get(url.clone());
        request = match (&token, &access.auth) {
            (Some(token), _) => request.bearer_auth(token),
            (None, RegistryAuth::Basic(user, password)) => request.basic_auth(user, Some(password)),
            (None, _) => request,
        };
        let request_failed = |source| RegistryFailure::Request {
            url: url.to_string(),
            source,
        };
        let response = request
            .send()
            .await
            .map_err(|e| registry_failure(request_failed(e)))?;
        let status = response.status();
        let refused = || RegistryFailure::Status {
            url: url.to_string(),
            status,
        };
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(ImageError::RegistryAuthentication {
                image: image.clone(),
                source: refused(),
            });
        }
        if !status.is_success() {
            return Err(registry_failure(refused()));
        }
        let next = next_link(response.headers().get(reqwest::header::LINK), &base, &image)?;
        let body = response
            .bytes()
            .await
            .map_err(|e| registry_failure(request_failed(e)))?;
        let page: TagPage = serde_json::from_slice(&body).map_err(|source| {
            registry_failure(RegistryFailure::TagList {
                url: url.to_string(),
                source,
            })
        })?;
        pages.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let page = page.tags.unwrap_or_default();
        let count = page.len();
        let page_last = page.iter().max().cloned();
        tags.extend(
            page.into_iter()
                .filter(|t| !excluded.iter().any(|re| re.is_match(t)))
                .map(String::into_boxed_str),
        );
        // A page that does not move past the previous one ends the list, whatever the registry
        // says next: it ignores `last` (or loops), and asking again would never end.
        if page_last.is_none() || page_last <= last {
            break;
        }
        last = page_last;
        if let Some(next) = next {
            registry_links = true;
            url = with_namespace(next, reference);
            continue;
        }
        // No Link: the end for a registry that sends them; for one that never does, the end
        // only when the page is longer than asked (it ignores `n`), else ask past its last tag.
        if registry_links || count > page_size {
            break;
        }
        url = list_url(last.as_deref());
    }
    tags.sort_unstable();
    tags.dedup();
    tags.shrink_to_fit();
    Ok(tags)
}

/// Adds `ns=<registry>` (containerd's convention) when the reference is read through a mirror.
fn with_namespace(mut url: url::Url, reference: &Reference) -> url::Url {
    if let Some(ns) = reference.namespace()
        && !url.query_pairs().any(|(k, _)| k == "ns")
    {
        url.query_pairs_mut().append_pair("ns", ns);
    }
    url
}

/// The digest of a tag list: `sha256:` over the tags joined by newlines.
#[must_use]
pub fn tags_revision(tags: &[Box<str>]) -> String {
    let mut hasher = Sha256::new();
    for t in tags {
        hasher.update(t.as_bytes());
        hasher.update(b"\n");
    }
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

/// Up to ten tags, in descending alphabetical order, for `status.lastScanResult.latestTags`.
#[must_use]
pub fn latest_tags(tags: &[Box<str>]) -> Vec<String> {
    tags.iter()
        .rev()
        .take(10)
        .map(ToString::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn local_registries_may_speak_plain_http_as_in_flux() {
        for local in [
            "localhost:5000",
            "localhost",
            "127.0.0.1:36361",
            "127.0.0.1",
            "[::1]:5000",
            "10.0.0.7:5000",
            "172.16.3.1",
            "192.168.1.10:443",
            "registry.local:5000",
            "Registry.LOCAL",
        ] {
            assert!(super::plain_http_allowed(local), "{local}");
        }
        for remote in [
            "index.docker.io",
            "ghcr.io",
            "registry.example.com:5000",
            "8.8.8.8:5000",
            "172.32.0.1",
            "localhost.example.com",
        ] {
            assert!(!super::plain_http_allowed(remote), "{remote}");
        }
    }

    use super::*;

    #[test]
    fn mirrors_read_a_registry_elsewhere_and_keep_its_name() {
        let mirrors =
            Mirrors::parse(["index.docker.io=127.0.0.1:5000", "ghcr.io=m.local"]).unwrap();
        let r = mirrors.apply(parse_image("nginx").unwrap());
        assert_eq!(r.resolve_registry(), "127.0.0.1:5000");
        assert_eq!(r.namespace(), Some("docker.io"));
        assert_eq!(canonical_name(&r), "index.docker.io/library/nginx");
        let r = mirrors.apply(parse_image("quay.io/org/app").unwrap());
        assert_eq!(r.resolve_registry(), "quay.io", "no mirror for quay.io");
        assert_eq!(r.namespace(), None);
        for bad in ["docker.io", "=m", "docker.io=", "docker.io=http://m/x"] {
            assert!(Mirrors::parse([bad]).is_err(), "{bad}");
        }
        let mirrored = with_namespace(
            url::Url::parse("http://127.0.0.1:5000/v2/library/nginx/tags/list?n=3").unwrap(),
            &mirrors.apply(parse_image("nginx").unwrap()),
        );
        assert_eq!(mirrored.query(), Some("n=3&ns=docker.io"));
    }

    #[test]
    fn the_next_page_is_the_links_rel_next_on_the_same_host() {
        let base = url::Url::parse("https://reg.example:5000/").unwrap();
        let header = |v: &str| reqwest::header::HeaderValue::from_str(v).unwrap();
        let next = next_link(
            Some(&header(r#"</v2/app/tags/list?n=100&last=b>; rel="next""#)),
            &base,
            "app",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            next.as_str(),
            "https://reg.example:5000/v2/app/tags/list?n=100&last=b"
        );
        assert_eq!(next_link(None, &base, "app").unwrap(), None);
        assert_eq!(
            next_link(Some(&header(r#"</x>; rel="prev""#)), &base, "app").unwrap(),
            None
        );
        let elsewhere = next_link(
            Some(&header(
                r#"<https://evil.example/v2/app/tags/list?last=b>; rel="next""#,
            )),
            &base,
            "app",
        )
        .unwrap_err();
        assert_eq!(
            weir_runtime::chain(&elsewhere),
            "cannot read app from its registry: the tag list's Link header points to another \
             host (evil.example); it is not followed"
        );
    }

    #[test]
    fn images_are_repositories_without_tag_or_digest() {
        let r = parse_image("127.0.0.1:5000/team/app").unwrap();
        assert_eq!(canonical_name(&r), "127.0.0.1:5000/team/app");
        let r = parse_image("nginx").unwrap();
        assert_eq!(canonical_name(&r), "index.docker.io/library/nginx");
        assert!(parse_image("ghcr.io/org/app:1.0").is_err());
        assert!(parse_image("ghcr.io/org/app@sha256:0000000000000000000000000000000000000000000000000000000000000000").is_err());
        assert!(parse_image("https://ghcr.io/org/app").is_err());
        assert!(parse_image("UPPER/Case").is_err());
    }

    #[test]
    fn docker_config_gives_the_registrys_credentials() {
        let config = serde_json::json!({"auths": {
            "127.0.0.1:5000": {"username": "u", "password": "p"},
            "https://ghcr.io": {"auth": base64::engine::general_purpose::STANDARD.encode("a:b")},
        }})
        .to_string();
        assert_eq!(
            docker_config_auth(config.as_bytes(), "127.0.0.1:5000", "s").unwrap(),
            Some(("u".into(), "p".into()))
        );
        assert_eq!(
            docker_config_auth(config.as_bytes(), "ghcr.io", "s").unwrap(),
            Some(("a".into(), "b".into()))
        );
        assert_eq!(
            docker_config_auth(config.as_bytes(), "quay.io", "s").unwrap(),
            None
        );
        assert!(docker_config_auth(b"nope", "quay.io", "s").is_err());
    }

    /// A registry that pages its tag list the way the distribution spec says: tags in lexical
    /// order, at most `n`, after `last`; with a `Link` to the next page when `links`.
    async fn paging_registry(tags: Vec<String>, links: bool) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
            let mut tags = tags.clone();
            async move {
                if !uri.path().ends_with("/tags/list") {
                    return (axum::http::HeaderMap::new(), "{}".to_owned());
                }
                let query: BTreeMap<&str, &str> = uri
                    .query()
                    .unwrap_or_default()
                    .split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .collect();
                tags.sort();
                let n: usize = query.get("n").map_or(usize::MAX, |n| n.parse().unwrap());
                let after: Vec<_> = tags
                    .into_iter()
                    .filter(|t| query.get("last").is_none_or(|l| t.as_str() > *l))
                    .collect();
                let page: Vec<_> = after.iter().take(n).cloned().collect();
                let body = serde_json::json!({ "name": "app", "tags": page }).to_string();
                let mut headers = axum::http::HeaderMap::new();
                if links && after.len() > page.len() {
                    let next = format!(
                        r#"</v2/app/tags/list?n={n}&last={}>; rel="next""#,
                        page.last().unwrap()
                    );
                    headers.insert(axum::http::header::LINK, next.parse().unwrap());
                }
                (headers, body)
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    #[tokio::test]
    async fn pages_are_followed_by_link_or_past_the_last_tag_until_one_adds_nothing() {
        weir_runtime::tls::install_crypto_provider();
        let all: Vec<String> = (0..23).map(|i| format!("t{i:02}")).collect();
        let addr = paging_registry(all.clone(), false).await;
        let access = RegistryAccess {
            insecure: true,
            ca_pem: None,
            auth: RegistryAuth::Anonymous,
            proxy: None,
        };
        let reference = parse_image(&format!("{addr}/app")).unwrap();
        let pages = std::sync::atomic::AtomicU64::new(0);
        // Excluding tags must not disturb paging: `last` is the page's last tag, excluded or not.
        let excluded = exclusions(&["^t1".into()]).unwrap();
        let tags = list_all_tags(&access, &reference, &excluded, 5, &pages)
            .await
            .unwrap();
        assert_eq!(
            pages.into_inner(),
            6,
            "23 tags in pages of 5, then an empty one: without Link a short page may be a cap"
        );
        assert_eq!(tags.len(), 13);
        assert_eq!(&*tags[0], "t00");
        assert_eq!(&*tags[12], "t22");
        // A list that fills its last page exactly ends with an empty page.
        let pages = std::sync::atomic::AtomicU64::new(0);
        let addr = paging_registry((0..10).map(|i| format!("v{i}")).collect(), false).await;
        let reference = parse_image(&format!("{addr}/app")).unwrap();
        let tags = list_all_tags(&access, &reference, &[], 5, &pages)
            .await
            .unwrap();
        assert_eq!((tags.len(), pages.into_inner()), (10, 3));
        // With Link, the page without one is the last.
        let pages = std::sync::atomic::AtomicU64::new(0);
        let addr = paging_registry(all, true).await;
        let reference = parse_image(&format!("{addr}/app")).unwrap();
        let tags = list_all_tags(&access, &reference, &[], 5, &pages)
            .await
            .unwrap();
        assert_eq!((tags.len(), pages.into_inner()), (23, 5));
    }

    #[test]
    fn proxy_secrets_need_an_http_address() {
        let data = |pairs: &[(&str, &str)]| -> BTreeMap<String, Vec<u8>> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
                .collect()
        };
        let url = proxy_url(&data(&[("address", "http://p:3128")]), "s").unwrap();
        assert_eq!(url.as_str(), "http://p:3128/");
        let url = proxy_url(
            &data(&[
                ("address", "https://p:3128"),
                ("username", "u"),
                ("password", "p@ss"),
            ]),
            "s",
        )
        .unwrap();
        assert_eq!((url.username(), url.password()), ("u", Some("p%40ss")));
        for (bad, why) in [
            (data(&[]), "no 'address'"),
            (data(&[("address", "p:3128")]), "not an http"),
            (data(&[("address", "socks5://p:1080")]), "not an http"),
            (data(&[("address", "::")]), "not a URL"),
            (
                data(&[("address", "http://p:3128"), ("password", "x")]),
                "without 'username'",
            ),
        ] {
            let e = weir_runtime::chain(&proxy_url(&bad, "proxy-cfg").unwrap_err());
            assert!(e.contains("secret 'proxy-cfg'") && e.contains(why), "{e}");
        }
    }

    #[test]
    fn an_unusable_ca_is_an_error_not_a_silent_default() {
        weir_runtime::tls::install_crypto_provider();
        let mut access = RegistryAccess {
            insecure: false,
            ca_pem: Some(b"not a certificate".to_vec()),
            auth: RegistryAuth::Anonymous,
            proxy: None,
        };
        let err = weir_runtime::chain(&access.client().err().unwrap());
        assert!(err.contains("ca.crt"), "{err}");
        access.ca_pem =
            Some(b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n".to_vec());
        assert!(access.client().is_err());
        access.ca_pem = None;
        assert!(access.client().is_ok());
    }

    #[test]
    fn revisions_and_latest_tags() {
        let tags: Vec<Box<str>> = ["a", "b", "c"].iter().map(|t| (*t).into()).collect();
        assert_eq!(latest_tags(&tags), ["c", "b", "a"]);
        assert_ne!(tags_revision(&tags), tags_revision(&tags[..2]));
        assert!(exclusions(&["(".into()]).is_err());
    }
}
