//! Scanning a registry: `credentials → list tags (paginated) → exclude → record`. The registry
//! client is oci-client; HTTPS unless `spec.insecure`.

use std::collections::BTreeMap;

use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use oci_client::{
    Reference,
    client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol},
    errors::OciDistributionError,
    secrets::RegistryAuth,
};
use regex::Regex;
use sha2::{Digest, Sha256};
use weir_api::ImageRepository;
use weir_runtime::Redactor;

use crate::error::ImageError;

/// Tags asked for per page of the tag list.
pub const PAGE_SIZE: usize = 1000;

/// How to reach a registry: protocol, extra CA and credentials. The password never prints.
#[derive(Clone)]
pub struct RegistryAccess {
    pub insecure: bool,
    pub ca_pem: Option<Vec<u8>>,
    pub auth: RegistryAuth,
}

impl std::fmt::Debug for RegistryAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAccess")
            .field("insecure", &self.insecure)
            .field("ca", &self.ca_pem.is_some())
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
            ..ClientConfig::default()
        })
        .map_err(|e| ca_error(format!("cannot use ca.crt: {e}")))
    }
}

/// Parses `spec.image`: a repository without tag or digest.
pub fn parse_image(image: &str) -> Result<Reference, ImageError> {
    let invalid = |why: &str| ImageError::InvalidImage {
        image: image.to_owned(),
        why: why.to_owned(),
    };
    if image.contains("://") {
        return Err(invalid("give the image without a scheme"));
    }
    let reference: Reference = image.parse().map_err(|e| invalid(&format!("{e}")))?;
    if reference.digest().is_some() || image.rsplit('/').next().is_some_and(|l| l.contains(':')) {
        return Err(invalid("give the repository without a tag or digest"));
    }
    Ok(reference)
}

/// `registry/repository` with the registry made explicit (`index.docker.io` for Docker Hub).
#[must_use]
pub fn canonical_name(reference: &Reference) -> String {
    format!(
        "{}/{}",
        reference.resolve_registry(),
        reference.repository()
    )
}

async fn read_secret(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<BTreeMap<String, Vec<u8>>, ImageError> {
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(|e| ImageError::SecretUnreadable {
            name: name.to_owned(),
            message: e.to_string(),
        })?
        .ok_or_else(|| ImageError::SecretNotFound {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })?;
    Ok(secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect())
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
    let value: serde_json::Value = serde_json::from_slice(config)
        .map_err(|e| invalid(format!(".dockerconfigjson is not JSON: {e}")))?;
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

/// The registry access an ImageRepository asks for, and a redactor knowing its secrets.
pub async fn registry_access(
    client: &Client,
    repo: &ImageRepository,
    namespace: &str,
    reference: &Reference,
) -> Result<(RegistryAccess, Redactor), ImageError> {
    let mut redactor = Redactor::default();
    let mut auth = RegistryAuth::Anonymous;
    if let Some(r) = &repo.spec.secret_ref {
        let data = read_secret(client, namespace, &r.name).await?;
        let config = data
            .get(".dockerconfigjson")
            .ok_or_else(|| ImageError::SecretInvalid {
                name: r.name.clone(),
                why: "not a kubernetes.io/dockerconfigjson secret (no .dockerconfigjson)".into(),
            })?;
        if let Some((user, password)) =
            docker_config_auth(config, reference.resolve_registry(), &r.name)?
        {
            redactor.add(password.clone());
            auth = RegistryAuth::Basic(user, password);
        }
    }
    let mut ca_pem = None;
    if let Some(r) = &repo.spec.cert_secret_ref {
        let data = read_secret(client, namespace, &r.name).await?;
        if data.contains_key("tls.crt") || data.contains_key("tls.key") {
            return Err(ImageError::SecretInvalid {
                name: r.name.clone(),
                why: "client certificates (tls.crt/tls.key) are not supported; give only ca.crt"
                    .into(),
            });
        }
        ca_pem = Some(
            data.get("ca.crt")
                .cloned()
                .ok_or_else(|| ImageError::SecretInvalid {
                    name: r.name.clone(),
                    why: "no ca.crt".into(),
                })?,
        );
    }
    let access = RegistryAccess {
        insecure: repo.spec.insecure,
        ca_pem,
        auth,
    };
    // A CA the client cannot use is the cert secret's fault: name it.
    if let (Err(ImageError::SecretInvalid { why, .. }), Some(r)) =
        (access.client(), &repo.spec.cert_secret_ref)
    {
        return Err(ImageError::SecretInvalid {
            name: r.name.clone(),
            why,
        });
    }
    Ok((access, redactor))
}

/// Compiles `spec.exclusionList`.
pub fn exclusions(list: &[String]) -> Result<Vec<Regex>, ImageError> {
    list.iter()
        .map(|p| {
            Regex::new(p).map_err(|e| ImageError::InvalidExclusion {
                pattern: p.clone(),
                why: e.to_string(),
            })
        })
        .collect()
}

fn registry_error(image: &str, e: &OciDistributionError) -> ImageError {
    let message = e.to_string();
    let auth = matches!(
        e,
        OciDistributionError::AuthenticationFailure(_)
            | OciDistributionError::UnauthorizedError { .. }
    ) || message.contains("401")
        || message.to_lowercase().contains("unauthorized");
    if auth {
        ImageError::RegistryAuthentication {
            image: image.to_owned(),
            message,
        }
    } else {
        ImageError::Registry {
            image: image.to_owned(),
            message,
        }
    }
}

/// Lists every tag of the repository, page by page (`n`/`last`), dropping excluded tags as
/// pages arrive. Returns the tags sorted and deduplicated.
pub async fn list_all_tags(
    access: &RegistryAccess,
    reference: &Reference,
    excluded: &[Regex],
    page_size: usize,
    pages: &std::sync::atomic::AtomicU64,
) -> Result<Vec<Box<str>>, ImageError> {
    let client = access.client()?;
    let image = canonical_name(reference);
    let mut tags: Vec<Box<str>> = vec![];
    let mut last: Option<String> = None;
    loop {
        let page = client
            .list_tags(reference, &access.auth, Some(page_size), last.as_deref())
            .await
            .map_err(|e| registry_error(&image, &e))?;
        pages.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let count = page.tags.len();
        let next = page.tags.iter().max().cloned();
        tags.extend(
            page.tags
                .into_iter()
                .filter(|t| !excluded.iter().any(|re| re.is_match(t)))
                .map(String::into_boxed_str),
        );
        // A short page is the last. A longer one means the registry ignores `n` (Distribution
        // 2.x does) and sent the whole list; one that does not move past the previous page
        // means it ignores `last`.
        if count != page_size || next.is_none() || next <= last {
            break;
        }
        last = next;
    }
    tags.sort_unstable();
    tags.dedup();
    tags.shrink_to_fit();
    Ok(tags)
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
    use super::*;

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
    /// order, at most `n`, after `last`.
    async fn paging_registry(tags: Vec<String>) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
            let mut tags = tags.clone();
            async move {
                if !uri.path().ends_with("/tags/list") {
                    return "{}".to_owned();
                }
                let query: BTreeMap<&str, &str> = uri
                    .query()
                    .unwrap_or_default()
                    .split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .collect();
                tags.sort();
                let n: usize = query.get("n").map_or(usize::MAX, |n| n.parse().unwrap());
                let page: Vec<_> = tags
                    .into_iter()
                    .filter(|t| query.get("last").is_none_or(|l| t.as_str() > *l))
                    .take(n)
                    .collect();
                serde_json::json!({ "name": "app", "tags": page }).to_string()
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    #[tokio::test]
    async fn pages_are_followed_with_n_and_last_until_a_short_page() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let all: Vec<String> = (0..23).map(|i| format!("t{i:02}")).collect();
        let addr = paging_registry(all).await;
        let access = RegistryAccess {
            insecure: true,
            ca_pem: None,
            auth: RegistryAuth::Anonymous,
        };
        let reference = parse_image(&format!("{addr}/app")).unwrap();
        let pages = std::sync::atomic::AtomicU64::new(0);
        // Excluding tags must not disturb paging: `last` is the page's last tag, excluded or not.
        let excluded = exclusions(&["^t1".into()]).unwrap();
        let tags = list_all_tags(&access, &reference, &excluded, 5, &pages)
            .await
            .unwrap();
        assert_eq!(pages.into_inner(), 5, "23 tags in pages of 5");
        assert_eq!(tags.len(), 13);
        assert_eq!(&*tags[0], "t00");
        assert_eq!(&*tags[12], "t22");
        // A list that fills its last page exactly ends with an empty page.
        let pages = std::sync::atomic::AtomicU64::new(0);
        let addr = paging_registry((0..10).map(|i| format!("v{i}")).collect()).await;
        let reference = parse_image(&format!("{addr}/app")).unwrap();
        let tags = list_all_tags(&access, &reference, &[], 5, &pages)
            .await
            .unwrap();
        assert_eq!((tags.len(), pages.into_inner()), (10, 3));
    }

    #[test]
    fn an_unusable_ca_is_an_error_not_a_silent_default() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut access = RegistryAccess {
            insecure: false,
            ca_pem: Some(b"not a certificate".to_vec()),
            auth: RegistryAuth::Anonymous,
        };
        let err = access.client().err().unwrap().to_string();
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
