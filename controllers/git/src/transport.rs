//! Git transport with libgit2: listing a remote's refs without cloning, shallow fetches and
//! pushes. Blocking; callers run it on a blocking thread (see [`crate::bounded`]).

use std::{
    cell::{Cell, RefCell},
    collections::BTreeMap,
    path::Path,
    time::Instant,
};

use git2::{
    AutotagOption, CertificateCheckStatus, Cred, CredentialType, Direction, FetchOptions, Oid,
    ProxyOptions, PushOptions, RemoteCallbacks, Repository,
};

use crate::{
    known_hosts::{HostKeyError, KnownHosts},
    tls::CertificateError,
};

/// Credentials read from the secret named by `spec.secretRef`, with Flux's key names.
#[derive(Clone, Default)]
pub struct Credentials {
    /// `username` and `password`: HTTP basic auth.
    pub basic: Option<(String, String)>,
    /// `bearerToken`: sent as `Authorization: Bearer`.
    pub bearer_token: Option<String>,
    /// `identity` (a private key in PEM/OpenSSH form) and optional `password` for SSH.
    pub ssh_identity: Option<String>,
    pub ssh_passphrase: Option<String>,
    /// `known_hosts`: required for SSH.
    pub known_hosts: Option<KnownHosts>,
    /// `ca.crt`: a PEM CA bundle the HTTPS server's certificate must chain to, instead of the
    /// system's trust store.
    pub ca_cert: Option<Vec<u8>>,
    /// The HTTP(S) proxy of `spec.proxySecretRef`, when set. SSH never goes through it.
    pub proxy: Option<Proxy>,
}

/// An HTTP(S) proxy from a Secret with Flux's keys: `address`, optional `username`/`password`.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    /// `http://host:port` or `https://host:port`, without credentials.
    pub address: String,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("address", &self.address)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "*****"))
            .finish()
    }
}

impl Proxy {
    /// Reads `address`, `username` and `password`; the error names what is wrong, never a value
    /// but the address.
    pub fn from_secret_data(data: &BTreeMap<String, Vec<u8>>) -> Result<Self, String> {
        let text = |k: &str| {
            data.get(k)
                .map(|v| String::from_utf8_lossy(v).trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let address = text("address").ok_or_else(|| "key 'address' not found".to_owned())?;
        let valid = address.split_once("://").is_some_and(|(scheme, rest)| {
            matches!(scheme, "http" | "https")
                && !rest.is_empty()
                && !rest.contains('@')
                && !rest.chars().any(|c| c.is_whitespace() || c.is_control())
        });
        if !valid {
            return Err(format!(
                "invalid 'address' {:?}: want http(s)://host:port without credentials",
                weir_runtime::redact::strip_url_credentials(&address)
            ));
        }
        Ok(Self {
            address,
            username: text("username"),
            password: text("password"),
        })
    }

    /// The URL libgit2 is given: the address with the credentials as userinfo, which libgit2
    /// answers a proxy's `407` with.
    fn url(&self) -> String {
        let Some(user) = &self.username else {
            return self.address.clone();
        };
        let (scheme, rest) = self
            .address
            .split_once("://")
            .unwrap_or(("http", &self.address));
        let password = self
            .password
            .as_deref()
            .map(|p| format!(":{}", percent_encode(p)))
            .unwrap_or_default();
        format!("{scheme}://{}{password}@{rest}", percent_encode(user))
    }
}

/// Percent-encodes all but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Proxy options for a remote: its proxy, or none (libgit2 then ignores the environment's).
fn proxy_options<'a>(remote: &Remote<'_>) -> ProxyOptions<'a> {
    let mut po = ProxyOptions::new();
    if let Some(proxy) = &remote.credentials.proxy {
        po.url(&proxy.url());
    }
    po
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("basic", &self.basic.as_ref().map(|(u, _)| (u, "*****")))
            .field("bearer_token", &self.bearer_token.as_ref().map(|_| "*****"))
            .field("ssh_identity", &self.ssh_identity.as_ref().map(|_| "*****"))
            .field(
                "ssh_passphrase",
                &self.ssh_passphrase.as_ref().map(|_| "*****"),
            )
            .field("known_hosts", &self.known_hosts.is_some())
            .field("ca_cert", &self.ca_cert.is_some())
            .field("proxy", &self.proxy)
            .finish()
    }
}

impl Credentials {
    /// Reads Flux's secret keys from a Secret's data.
    #[must_use]
    pub fn from_secret_data(data: &BTreeMap<String, Vec<u8>>) -> Self {
        let text = |k: &str| data.get(k).map(|v| String::from_utf8_lossy(v).into_owned());
        let identity = text("identity");
        Self {
            basic: text("username").map(|u| (u, text("password").unwrap_or_default())),
            bearer_token: text("bearerToken"),
            // With an identity, `password` is the key's passphrase.
            ssh_passphrase: identity.as_ref().and_then(|_| text("password")),
            ssh_identity: identity,
            known_hosts: text("known_hosts").map(|k| KnownHosts::parse(&k)),
            ca_cert: data.get("ca.crt").cloned(),
            proxy: None,
        }
    }

    /// Every secret value, for redaction.
    #[must_use]
    pub fn secret_values(&self) -> Vec<String> {
        let mut out = vec![];
        if let Some((_, p)) = &self.basic {
            out.push(p.clone());
        }
        out.extend(self.bearer_token.clone());
        out.extend(self.ssh_identity.clone());
        out.extend(self.ssh_passphrase.clone());
        if let Some(password) = self.proxy.as_ref().and_then(|p| p.password.as_ref()) {
            // libgit2 is given it percent-encoded in the proxy URL.
            out.push(percent_encode(password));
            out.push(password.clone());
        }
        out
    }
}

/// How long libgit2 waits on a silent socket (connecting, or for the next bytes) before it fails
/// the operation: Flux's default `spec.timeout`. A transfer that makes progress is bounded by
/// its own deadline instead (checked in the progress callback), but a server that accepts and
/// never answers gives no progress, and without this bound the blocking thread would wait until
/// the OS drops the socket.
pub const SOCKET_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Bounds every libgit2 socket wait of this process by [`SOCKET_TIMEOUT`] (HTTP(S) and SSH, the
/// latter through libssh2's session timeout). Called by each controller's start, before it
/// runs any git operation; only the first call sets the options.
pub fn bound_socket_waits() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let ms = i32::try_from(SOCKET_TIMEOUT.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: the options are process-wide integers libgit2 reads when it opens a socket.
        // They are written once, before this process's controllers start any git operation, so
        // no libgit2 thread reads them while they change.
        #[allow(unsafe_code)]
        let set = unsafe {
            git2::opts::set_server_connect_timeout_in_milliseconds(ms)
                .and_then(|()| git2::opts::set_server_timeout_in_milliseconds(ms))
        };
        if let Err(error) = set {
            tracing::error!(%error, "cannot bound libgit2's socket waits");
        }
    });
}

/// A remote to talk to: a URL without credentials, how to authenticate, and a deadline.
#[derive(Debug)]
pub struct Remote<'a> {
    pub url: &'a str,
    pub credentials: &'a Credentials,
    pub deadline: Instant,
}

/// Why a git operation failed.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("authentication failed")]
    Authentication(#[source] AuthFailure),
    #[error("ssh host key verification failed")]
    HostKey(#[from] HostKeyError),
    #[error("TLS certificate verification failed")]
    Certificate(#[source] CertificateError),
    #[error("git operation timed out")]
    Timeout,
    /// The remote refused a push that is not a fast-forward: the branch moved.
    #[error("push rejected: {0}")]
    Rejected(String),
    /// A failure Weir names itself, in its own words.
    #[error("{0}")]
    Git(String),
    /// libgit2's own error.
    #[error(transparent)]
    LibGit2(LibGit2Error),
}

/// Why authentication to the remote failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthFailure {
    /// What the credentials callback found, in Weir's words.
    #[error("{0}")]
    Refused(&'static str),
    /// The secret's ssh identity (or its passphrase) did not load.
    #[error("cannot use the ssh identity")]
    SshIdentity(#[source] LibGit2Error),
    /// libgit2's error, when it tells of a refused authentication.
    #[error(transparent)]
    LibGit2(LibGit2Error),
}

/// libgit2's error as a cause. It reads as libgit2's message alone, as in Flux's messages:
/// `git2::Error`'s `Display` appends its class and code (`; class=Net (12)`).
#[derive(Debug)]
pub struct LibGit2Error(pub git2::Error);

impl std::fmt::Display for LibGit2Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.message())
    }
}

impl std::error::Error for LibGit2Error {}

impl From<&git2::Error> for GitError {
    /// A copy of `error` (git2's error is not `Clone`).
    fn from(error: &git2::Error) -> Self {
        Self::LibGit2(copy(error))
    }
}

/// A copy of `error` (git2's error is not `Clone`): its code, class and message.
fn copy(error: &git2::Error) -> LibGit2Error {
    LibGit2Error(git2::Error::new(
        error.code(),
        error.class(),
        error.message(),
    ))
}

/// What the callbacks learned, beyond libgit2's own error.
#[derive(Default)]
struct CallbackState {
    host_key: RefCell<Option<HostKeyError>>,
    certificate: RefCell<Option<CertificateError>>,
    auth_failure: RefCell<Option<AuthFailure>>,
    credential_requests: Cell<u32>,
    timed_out: Cell<bool>,
}

impl CallbackState {
    /// Turns libgit2's error into ours, preferring what the callbacks saw.
    fn error(&self, e: &git2::Error) -> GitError {
        if let Some(hk) = self.host_key.borrow_mut().take() {
            return GitError::HostKey(hk);
        }
        if let Some(why) = self.certificate.borrow_mut().take() {
            return GitError::Certificate(why);
        }
        if self.timed_out.get() {
            return GitError::Timeout;
        }
        if let Some(why) = self.auth_failure.borrow_mut().take() {
            return GitError::Authentication(why);
        }
        let lower = e.message().to_lowercase();
        if e.code() == git2::ErrorCode::Auth
            || lower.contains("401")
            || lower.contains("403")
            || lower.contains("authentication")
            || lower.contains("unauthorized")
        {
            return GitError::Authentication(AuthFailure::LibGit2(copy(e)));
        }
        GitError::from(e)
    }
}

/// The port of an `ssh://` URL (22 by default).
fn ssh_port(url: &str) -> u16 {
    url.strip_prefix("ssh://")
        .and_then(|rest| rest.split('/').next())
        .and_then(|authority| authority.rsplit_once(':'))
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or(22)
}

fn callbacks<'a>(remote: &'a Remote<'a>, state: &'a CallbackState) -> RemoteCallbacks<'a> {
    let mut cb = RemoteCallbacks::new();
    let port = ssh_port(remote.url);
    cb.certificate_check(move |cert, host| {
        if let Some(hostkey) = cert.as_hostkey() {
            let known = remote.credentials.known_hosts.clone().unwrap_or_default();
            let verdict = if known.is_empty() {
                Err(HostKeyError::UnknownHost(format!(
                    "{host} (the secret has no known_hosts)"
                )))
            } else {
                known.verify(host, port, hostkey.hostkey())
            };
            return match verdict {
                Ok(()) => Ok(CertificateCheckStatus::CertificateOk),
                Err(e) => {
                    let message = e.to_string();
                    *state.host_key.borrow_mut() = Some(e);
                    Err(git2::Error::from_str(&message))
                }
            };
        }
        // TLS with ca.crt: the chain must lead to that CA. Without it, libgit2 verifies the chain
        // against the system's trust store.
        if let (Some(ca), Some(x509)) = (&remote.credentials.ca_cert, cert.as_x509()) {
            return match crate::tls::verify_server_certificate(ca, x509.data(), host) {
                Ok(()) => Ok(CertificateCheckStatus::CertificateOk),
                Err(why) => {
                    let message = weir_runtime::chain(&why);
                    *state.certificate.borrow_mut() = Some(why);
                    Err(git2::Error::from_str(&message))
                }
            };
        }
        Ok(CertificateCheckStatus::CertificatePassthrough)
    });
    cb.credentials(move |_url, username, allowed| {
        // The SSH transport first asks only for the user name; that is not an attempt.
        if allowed == CredentialType::USERNAME {
            return Cred::username(username.unwrap_or("git"));
        }
        let attempt = state.credential_requests.get() + 1;
        state.credential_requests.set(attempt);
        let fail = |why: AuthFailure| {
            let message = weir_runtime::chain(&why);
            *state.auth_failure.borrow_mut() = Some(why);
            Err(git2::Error::from_str(&message))
        };
        if attempt > 1 {
            return fail(AuthFailure::Refused("the server rejected the credentials"));
        }
        let creds = remote.credentials;
        if allowed.contains(CredentialType::SSH_KEY) {
            if let Some(identity) = &creds.ssh_identity {
                return Cred::ssh_key_from_memory(
                    username.unwrap_or("git"),
                    None,
                    identity,
                    creds.ssh_passphrase.as_deref(),
                )
                .or_else(|e| fail(AuthFailure::SshIdentity(LibGit2Error(e))));
            }
            return fail(AuthFailure::Refused(
                "the server asks for an ssh key and the secret has no identity",
            ));
        }
        if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
            if let Some((user, password)) = &creds.basic {
                return Cred::userpass_plaintext(user, password);
            }
            return fail(AuthFailure::Refused(
                "the server asks for a username and password and none were given",
            ));
        }
        fail(AuthFailure::Refused(
            "the server asks for credentials of a kind Weir cannot provide",
        ))
    });
    cb.transfer_progress(move |_| {
        let in_time = Instant::now() < remote.deadline;
        state.timed_out.set(!in_time);
        in_time
    });
    cb
}

/// The refs a remote advertises, tags peeled to the commits they point at.
#[derive(Debug, Default)]
pub struct RemoteRefs {
    /// The branch the remote's `HEAD` points at, such as `refs/heads/main`.
    pub head: Option<String>,
    refs: BTreeMap<String, Oid>,
}

impl RemoteRefs {
    /// The commit a ref points at (annotated tags peeled).
    #[must_use]
    pub fn get(&self, name: &str) -> Option<Oid> {
        self.refs
            .get(&format!("{name}^{{}}"))
            .or_else(|| self.refs.get(name))
            .copied()
    }

    /// Tag names (without `refs/tags/`).
    pub fn tags(&self) -> impl Iterator<Item = &str> {
        self.refs
            .keys()
            .filter_map(|r| r.strip_prefix("refs/tags/"))
            .filter(|t| !t.ends_with("^{}"))
    }

    #[cfg(test)]
    fn from_pairs(head: Option<&str>, pairs: &[(&str, &str)]) -> Self {
        Self {
            head: head.map(str::to_owned),
            refs: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Oid::from_str(v).unwrap()))
                .collect(),
        }
    }
}

fn fetch_options<'a>(
    remote: &'a Remote<'a>,
    state: &'a CallbackState,
    header: Option<&'a String>,
) -> FetchOptions<'a> {
    let mut fo = FetchOptions::new();
    fo.remote_callbacks(callbacks(remote, state));
    fo.download_tags(AutotagOption::None);
    fo.proxy_options(proxy_options(remote));
    if let Some(h) = header {
        fo.custom_headers(&[h.as_str()]);
    }
    fo
}

fn bearer_header(remote: &Remote<'_>) -> Option<String> {
    remote
        .credentials
        .bearer_token
        .as_ref()
        .map(|t| format!("Authorization: Bearer {t}"))
}

/// Lists the remote's refs without fetching any object (`git ls-remote`). `scratch` is an empty
/// directory for a throwaway repository.
pub fn ls_remote(remote: &Remote<'_>, scratch: &Path) -> Result<RemoteRefs, GitError> {
    let repo = Repository::init_bare(scratch).map_err(|e| GitError::from(&e))?;
    let mut git_remote = repo
        .remote_anonymous(remote.url)
        .map_err(|e| GitError::from(&e))?;
    let state = CallbackState::default();
    let header = bearer_header(remote);
    if header.is_some() {
        // libgit2 sends custom headers only on the fetch path: a download of nothing connects,
        // reads the advertisement and stops.
        let mut fo = fetch_options(remote, &state, header.as_ref());
        git_remote
            .download::<&str>(&[], Some(&mut fo))
            .map_err(|e| state.error(&e))?;
    } else {
        git_remote
            .connect_auth(
                Direction::Fetch,
                Some(callbacks(remote, &state)),
                Some(proxy_options(remote)),
            )
            .map_err(|e| state.error(&e))?;
    }
    let heads = git_remote.list().map_err(|e| state.error(&e))?;
    let refs = heads
        .iter()
        .map(|h| (h.name().to_owned(), h.oid()))
        .collect();
    let head = git_remote
        .default_branch()
        .ok()
        .and_then(|b| b.as_str().ok().map(str::to_owned));
    Ok(RemoteRefs { head, refs })
}

/// Fetches `refspecs` into a new bare repository at `dir`; `depth` 0 fetches full history.
pub fn fetch(
    remote: &Remote<'_>,
    dir: &Path,
    refspecs: &[String],
    depth: i32,
) -> Result<Repository, GitError> {
    let repo = Repository::init_bare(dir).map_err(|e| GitError::from(&e))?;
    {
        let mut git_remote = repo
            .remote_anonymous(remote.url)
            .map_err(|e| GitError::from(&e))?;
        let state = CallbackState::default();
        let header = bearer_header(remote);
        let mut fo = fetch_options(remote, &state, header.as_ref());
        if depth > 0 {
            fo.depth(depth);
        }
        git_remote
            .fetch(refspecs, Some(&mut fo), None)
            .map_err(|e| state.error(&e))?;
    }
    Ok(repo)
}

/// Pushes `refspec` from `repo` to the remote with the same credentials and host-key checks as
/// fetches. Never forced: a refspec starting with `+` is refused, and a push the remote (or
/// libgit2) finds is not a fast-forward is [`GitError::Rejected`].
pub fn push(remote: &Remote<'_>, repo: &Repository, refspec: &str) -> Result<(), GitError> {
    push_with_options(remote, repo, refspec, &[])
}

/// [`push`] with push options (`git push -o`), each `key=value`. A server that does not
/// advertise `push-options` (git's `receive.advertisePushOptions` off) fails the push with
/// libgit2's "push-options not supported by remote", as `git push -o` fails.
pub fn push_with_options(
    remote: &Remote<'_>,
    repo: &Repository,
    refspec: &str,
    push_options: &[String],
) -> Result<(), GitError> {
    if refspec.starts_with('+') {
        return Err(GitError::Git(format!("refusing to force-push {refspec}")));
    }
    let mut git_remote = repo
        .remote_anonymous(remote.url)
        .map_err(|e| GitError::from(&e))?;
    let state = CallbackState::default();
    let rejected: RefCell<Option<String>> = RefCell::new(None);
    let header = bearer_header(remote);
    let result = {
        let mut cb = callbacks(remote, &state);
        cb.push_update_reference(|name, status| {
            if let Some(why) = status {
                *rejected.borrow_mut() = Some(format!("{name}: {why}"));
            }
            Ok(())
        });
        let mut options = PushOptions::new();
        options.remote_callbacks(cb);
        options.proxy_options(proxy_options(remote));
        if let Some(h) = &header {
            options.custom_headers(&[h.as_str()]);
        }
        let push_options: Vec<&str> = push_options.iter().map(String::as_str).collect();
        if !push_options.is_empty() {
            options.remote_push_options(&push_options);
        }
        git_remote.push(&[refspec], Some(&mut options))
    };
    if let Err(e) = result {
        let lower = e.message().to_lowercase();
        if e.code() == git2::ErrorCode::NotFastForward
            || lower.contains("non-fast")
            || lower.contains("fetch first")
        {
            return Err(GitError::Rejected(e.message().to_owned()));
        }
        return Err(state.error(&e));
    }
    if let Some(why) = rejected.take() {
        return Err(GitError::Rejected(why));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotated_tags_resolve_to_their_commit() {
        let refs = RemoteRefs::from_pairs(
            Some("refs/heads/main"),
            &[
                (
                    "refs/heads/main",
                    "1111111111111111111111111111111111111111",
                ),
                (
                    "refs/tags/v1.0.0",
                    "2222222222222222222222222222222222222222",
                ),
                (
                    "refs/tags/v1.0.0^{}",
                    "3333333333333333333333333333333333333333",
                ),
                (
                    "refs/tags/v0.9.0",
                    "4444444444444444444444444444444444444444",
                ),
            ],
        );
        assert_eq!(
            refs.get("refs/tags/v1.0.0").unwrap().to_string(),
            "3333333333333333333333333333333333333333"
        );
        assert_eq!(
            refs.get("refs/tags/v0.9.0").unwrap().to_string(),
            "4444444444444444444444444444444444444444"
        );
        assert_eq!(refs.tags().collect::<Vec<_>>(), ["v0.9.0", "v1.0.0"]);
    }

    #[test]
    fn proxies_come_from_fluxs_keys_and_never_print_the_password() {
        let data = |pairs: &[(&str, &str)]| -> BTreeMap<String, Vec<u8>> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
                .collect()
        };
        let proxy = Proxy::from_secret_data(&data(&[
            ("address", "http://127.0.0.1:3128"),
            ("username", "me"),
            ("password", "p@ss:w/rd"),
        ]))
        .unwrap();
        assert_eq!(proxy.url(), "http://me:p%40ss%3Aw%2Frd@127.0.0.1:3128");
        assert!(!format!("{proxy:?}").contains("p@ss"));
        let plain = Proxy::from_secret_data(&data(&[("address", "https://proxy:8443")])).unwrap();
        assert_eq!(plain.url(), "https://proxy:8443");
        assert_eq!(
            Proxy::from_secret_data(&data(&[("username", "me")])).unwrap_err(),
            "key 'address' not found"
        );
        let e =
            Proxy::from_secret_data(&data(&[("address", "socks5://u:hunter2@h:1")])).unwrap_err();
        assert!(
            e.contains("invalid 'address'") && !e.contains("hunter2"),
            "{e}"
        );
    }

    #[test]
    fn ssh_ports_come_from_the_url() {
        assert_eq!(ssh_port("ssh://git@127.0.0.1:2222/srv/repo.git"), 2222);
        assert_eq!(ssh_port("ssh://git@github.com/org/repo"), 22);
    }

    #[test]
    fn credentials_never_print_secrets() {
        let mut data = BTreeMap::new();
        data.insert("username".to_owned(), b"bob".to_vec());
        data.insert("password".to_owned(), b"hunter2".to_vec());
        data.insert("bearerToken".to_owned(), b"tok3n".to_vec());
        let c = Credentials::from_secret_data(&data);
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("tok3n"),
            "{shown}"
        );
        assert_eq!(c.secret_values(), ["hunter2", "tok3n"]);
    }
}
