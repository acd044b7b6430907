//! SSH host key verification against a `known_hosts` file from the GitRepository's secret.
//! An unknown host or a different key is an error, never a silent accept.

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use sha1::Sha1;

/// One usable line of a `known_hosts` file.
#[derive(Clone, Debug)]
struct Entry {
    hosts: HostPattern,
    key: Vec<u8>,
}

#[derive(Clone, Debug)]
enum HostPattern {
    /// Comma-separated names, each `host` or `[host]:port`, possibly negated with `!` or with `*`/`?`.
    Plain(Vec<String>),
    /// `|1|salt|hash`: HMAC-SHA1 of the host name keyed with the salt.
    Hashed { salt: Vec<u8>, hash: Vec<u8> },
}

/// A parsed `known_hosts` file.
#[derive(Clone, Debug, Default)]
pub struct KnownHosts {
    entries: Vec<Entry>,
}

/// Why a host key was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostKeyError {
    #[error("no known_hosts entry for host {0}")]
    UnknownHost(String),
    #[error(
        "host key mismatch for {host}: the server presented a {key_type} key that is not in known_hosts"
    )]
    Mismatch { host: String, key_type: String },
    #[error("the server presented no host key")]
    NoKey,
}

impl KnownHosts {
    /// Parses the file; lines it cannot read (comments, markers like `@revoked`) are skipped.
    #[must_use]
    pub fn parse(text: &str) -> Self {
        let entries = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('@'))
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                let hosts = fields.next()?;
                let _key_type = fields.next()?;
                let key = STANDARD.decode(fields.next()?).ok()?;
                let hosts = if let Some(hashed) = hosts.strip_prefix("|1|") {
                    let (salt, hash) = hashed.split_once('|')?;
                    HostPattern::Hashed {
                        salt: STANDARD.decode(salt).ok()?,
                        hash: STANDARD.decode(hash).ok()?,
                    }
                } else {
                    HostPattern::Plain(hosts.split(',').map(str::to_owned).collect())
                };
                Some(Entry { hosts, key })
            })
            .collect();
        Self { entries }
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Checks the key a server at `host`:`port` presented (`key` is the raw SSH wire-format blob).
    pub fn verify(&self, host: &str, port: u16, key: Option<&[u8]>) -> Result<(), HostKeyError> {
        let key = key.ok_or(HostKeyError::NoKey)?;
        let name = if port == 22 {
            host.to_owned()
        } else {
            format!("[{host}]:{port}")
        };
        let candidates: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|e| e.hosts.matches(&name))
            .collect();
        if candidates.is_empty() {
            return Err(HostKeyError::UnknownHost(name));
        }
        if candidates.iter().any(|e| e.key == key) {
            return Ok(());
        }
        Err(HostKeyError::Mismatch {
            host: name,
            key_type: key_type_of(key),
        })
    }
}

/// The key type written inside an SSH public key blob (a length-prefixed string).
fn key_type_of(blob: &[u8]) -> String {
    let len = blob
        .get(..4)
        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize);
    blob.get(4..4 + len).map_or_else(
        || "unknown".to_owned(),
        |t| String::from_utf8_lossy(t).into_owned(),
    )
}

impl HostPattern {
    fn matches(&self, name: &str) -> bool {
        match self {
            Self::Hashed { salt, hash } => {
                let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(salt) else {
                    return false;
                };
                mac.update(name.as_bytes());
                mac.verify_slice(hash).is_ok()
            }
            Self::Plain(patterns) => {
                let mut matched = false;
                for p in patterns {
                    if let Some(negated) = p.strip_prefix('!') {
                        if glob(negated, name) {
                            return false;
                        }
                    } else if glob(p, name) {
                        matched = true;
                    }
                }
                matched
            }
        }
    }
}

/// `*` and `?` wildcards, as OpenSSH allows in host patterns.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi].eq_ignore_ascii_case(&t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(key_type: &str, body: &[u8]) -> Vec<u8> {
        let mut b = u32::try_from(key_type.len())
            .unwrap()
            .to_be_bytes()
            .to_vec();
        b.extend_from_slice(key_type.as_bytes());
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn accepts_the_listed_key_and_rejects_others() {
        let key = blob("ssh-ed25519", b"right");
        let file = format!(
            "# comment\n[127.0.0.1]:2222 ssh-ed25519 {}\n",
            STANDARD.encode(&key)
        );
        let kh = KnownHosts::parse(&file);
        assert_eq!(kh.verify("127.0.0.1", 2222, Some(&key)), Ok(()));
        let wrong = blob("ssh-ed25519", b"wrong");
        assert_eq!(
            kh.verify("127.0.0.1", 2222, Some(&wrong)),
            Err(HostKeyError::Mismatch {
                host: "[127.0.0.1]:2222".into(),
                key_type: "ssh-ed25519".into()
            })
        );
        assert_eq!(
            kh.verify("127.0.0.1", 22, Some(&key)),
            Err(HostKeyError::UnknownHost("127.0.0.1".into()))
        );
        assert_eq!(kh.verify("127.0.0.1", 2222, None), Err(HostKeyError::NoKey));
    }

    #[test]
    fn hashed_and_wildcard_hosts() {
        let key = blob("ssh-rsa", b"k");
        let salt = b"0123456789abcdefghij";
        let mut mac = Hmac::<Sha1>::new_from_slice(salt).unwrap();
        mac.update(b"github.com");
        let hash = mac.finalize().into_bytes();
        let file = format!(
            "|1|{}|{} ssh-rsa {}\n*.example.com,!bad.example.com ssh-rsa {}\n",
            STANDARD.encode(salt),
            STANDARD.encode(hash),
            STANDARD.encode(&key),
            STANDARD.encode(&key)
        );
        let kh = KnownHosts::parse(&file);
        assert!(kh.verify("github.com", 22, Some(&key)).is_ok());
        assert!(kh.verify("git.example.com", 22, Some(&key)).is_ok());
        assert!(kh.verify("bad.example.com", 22, Some(&key)).is_err());
        assert!(kh.verify("gitlab.com", 22, Some(&key)).is_err());
    }
}
