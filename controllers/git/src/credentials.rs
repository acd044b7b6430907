//! How to reach a GitRepository's remote: its URL without credentials, the [`Credentials`] of
//! `spec.secretRef` (or the URL's userinfo) and `spec.proxySecretRef`, and a [`Redactor`] that
//! knows every secret value, for any controller that talks to the remote.

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use weir_api::{GitRepository, reasons};
use weir_runtime::{Disposition, Failure, Redactor, redact::strip_url_credentials};

use crate::{Credentials, Proxy};

/// Why a GitRepository's remote cannot be reached as its spec says.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("invalid URL {url:?}: {why}")]
    InvalidUrl { url: String, why: &'static str },
    #[error("secret '{namespace}/{name}' not found")]
    SecretNotFound { namespace: String, name: String },
    #[error("cannot read secret '{name}'")]
    SecretUnreadable {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to configure proxy options: secret '{namespace}/{name}' not found")]
    ProxySecretNotFound { namespace: String, name: String },
    #[error("failed to configure proxy options: secret '{name}' (spec.proxySecretRef)")]
    ProxySecretUnreadable {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to configure proxy options: secret '{name}' (spec.proxySecretRef): {why}")]
    ProxySecretInvalid { name: String, why: String },
    #[error(
        "spec.proxySecretRef '{0}': libgit2 sends plain http:// git traffic to the server \
         directly, around the proxy; use an https:// URL (proxied with CONNECT)"
    )]
    ProxyNeedsHttps(String),
}

/// Source-controller's reasons: a URL only a spec change fixes stalls; a Secret may yet appear
/// or be fixed, so those are retried.
impl Failure for CredentialsError {
    fn reason(&self) -> &'static str {
        match self {
            Self::InvalidUrl { .. } | Self::ProxyNeedsHttps(_) => reasons::URL_INVALID,
            Self::SecretNotFound { .. }
            | Self::SecretUnreadable { .. }
            | Self::ProxySecretNotFound { .. }
            | Self::ProxySecretUnreadable { .. }
            | Self::ProxySecretInvalid { .. } => reasons::AUTHENTICATION_FAILED,
        }
    }

    fn disposition(&self) -> Disposition {
        match self {
            Self::InvalidUrl { .. } | Self::ProxyNeedsHttps(_) => Disposition::Stalled,
            Self::SecretNotFound { .. }
            | Self::SecretUnreadable { .. }
            | Self::ProxySecretNotFound { .. }
            | Self::ProxySecretUnreadable { .. }
            | Self::ProxySecretInvalid { .. } => Disposition::Transient,
        }
    }
}

/// A remote as a GitRepository's spec describes it.
#[derive(Debug)]
pub struct Access {
    /// The URL without credentials.
    pub url: String,
    pub credentials: Credentials,
    /// Knows every secret value of `credentials` and the URL's.
    pub redactor: Redactor,
}

/// Reads the Secrets `repo` names and returns how to reach its remote.
pub async fn for_repository(
    client: &kube::Client,
    repo: &GitRepository,
) -> Result<Access, CredentialsError> {
    let namespace = repo.namespace().unwrap_or_default();
    let mut redactor = Redactor::default();
    redactor.add_url_credentials(&repo.spec.url);
    let url = strip_url_credentials(&repo.spec.url);
    validate_url(&url, &repo.spec.url)?;

    let mut credentials = match &repo.spec.secret_ref {
        None => Credentials::default(),
        Some(r) => {
            let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
            let secret = secrets.get_opt(&r.name).await.map_err(|source| {
                CredentialsError::SecretUnreadable {
                    name: r.name.clone(),
                    source,
                }
            })?;
            let secret = secret.ok_or_else(|| CredentialsError::SecretNotFound {
                namespace: namespace.clone(),
                name: r.name.clone(),
            })?;
            Credentials::from_secret_data(&weir_runtime::secrets::data(secret))
        }
    };
    credentials.proxy = load_proxy(client, repo).await?;
    if let (Some(r), true) = (&repo.spec.proxy_secret_ref, url.starts_with("http://")) {
        return Err(CredentialsError::ProxyNeedsHttps(r.name.clone()));
    }
    // Credentials embedded in the URL are used when the secret gives none.
    if credentials.basic.is_none()
        && let Some((user, password)) = url_userinfo(&repo.spec.url)
    {
        credentials.basic = Some((user, password));
    }
    for value in credentials.secret_values() {
        redactor.add(value);
    }
    Ok(Access {
        url,
        credentials,
        redactor,
    })
}

/// The proxy of `spec.proxySecretRef` (Flux's keys `address`, `username`, `password`).
async fn load_proxy(
    client: &kube::Client,
    repo: &GitRepository,
) -> Result<Option<Proxy>, CredentialsError> {
    let Some(r) = &repo.spec.proxy_secret_ref else {
        return Ok(None);
    };
    let namespace = repo.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let secret = secrets
        .get_opt(&r.name)
        .await
        .map_err(|source| CredentialsError::ProxySecretUnreadable {
            name: r.name.clone(),
            source,
        })?
        .ok_or_else(|| CredentialsError::ProxySecretNotFound {
            namespace,
            name: r.name.clone(),
        })?;
    Proxy::from_secret_data(&weir_runtime::secrets::data(secret))
        .map(Some)
        .map_err(|why| CredentialsError::ProxySecretInvalid {
            name: r.name.clone(),
            why,
        })
}

fn url_userinfo(url: &str) -> Option<(String, String)> {
    let rest = &url[url.find("://")? + 3..];
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let (userinfo, _) = authority.rsplit_once('@')?;
    let (user, password) = userinfo.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn validate_url(url: &str, original: &str) -> Result<(), CredentialsError> {
    let invalid = |why| CredentialsError::InvalidUrl {
        url: strip_url_credentials(original),
        why,
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(invalid("no scheme"));
    };
    if !matches!(scheme, "http" | "https" | "ssh") {
        return Err(invalid("the scheme must be http, https or ssh"));
    }
    if rest.split('/').next().is_none_or(str::is_empty) {
        return Err(invalid("no host"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_validation_and_userinfo() {
        assert!(validate_url("https://example.com/repo", "https://example.com/repo").is_ok());
        assert!(validate_url("ftp://example.com/repo", "ftp://example.com/repo").is_err());
        assert!(validate_url("https:///repo", "https:///repo").is_err());
        assert_eq!(
            url_userinfo("https://bob:pw@h/r"),
            Some(("bob".into(), "pw".into()))
        );
        assert_eq!(url_userinfo("ssh://git@h/r"), None);
        let e = validate_url("ftp://h/r", "ftp://bob:secretpw@h/r").unwrap_err();
        assert!(!e.to_string().contains("secretpw"), "{e}");
    }
}
