//! Keeps secrets out of logs, events, status and errors.

use std::fmt;

/// What replaces a secret in text.
pub const MASK: &str = "*****";

/// Replaces every known secret value in a text with [`MASK`]. Build one per reconcile from the
/// credentials it loaded; pass every message through it before it leaves the process.
#[derive(Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redactor({} secrets)", self.secrets.len())
    }
}

impl Redactor {
    /// Registers a secret value. Very short values are still masked: a one-letter password is a
    /// password.
    pub fn add(&mut self, secret: impl Into<String>) {
        let secret = secret.into();
        if !secret.is_empty() && !self.secrets.contains(&secret) {
            self.secrets.push(secret);
            // Longest first, so a secret containing another is masked whole.
            self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }

    /// Registers the password (and user) embedded in a URL, if any.
    pub fn add_url_credentials(&mut self, url: &str) {
        if let Some((user, password)) = url_userinfo(url) {
            if let Some(password) = password {
                self.add(password);
                self.add(percent_decode(password));
            }
            // A lone userinfo (token@host) is the secret itself.
            if !user.is_empty() {
                self.add(format!("{user}@"));
            }
        }
    }

    /// The text with every secret masked, and any `user:password@` in URLs removed.
    #[must_use]
    pub fn redact(&self, text: &str) -> String {
        let mut out = strip_url_credentials_in_text(text);
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), MASK);
            }
        }
        out
    }
}

/// The `user` and optional `password` of `scheme://user:password@host/...`.
fn url_userinfo(url: &str) -> Option<(&str, Option<&str>)> {
    let rest = &url[url.find("://")? + 3..];
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let at = authority.rfind('@')?;
    let userinfo = &authority[..at];
    Some(match userinfo.split_once(':') {
        Some((user, password)) => (user, Some(password)),
        None => (userinfo, None),
    })
}

/// The URL without its credentials: all userinfo of `http(s)://` URLs (a lone user there may be
/// a token), only the password of other URLs (`ssh://git@host` keeps its user, which is no secret).
#[must_use]
pub fn strip_url_credentials(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let scheme = &url[..scheme_end];
    let keep_user = !scheme.starts_with("http");
    match rest[..at].split_once(':') {
        Some((user, _)) if keep_user => format!("{scheme}{user}@{}", &rest[at + 1..]),
        None if keep_user => url.to_owned(),
        _ => format!("{scheme}{}", &rest[at + 1..]),
    }
}

/// Removes the userinfo of every `http(s)://` or `ssh://` URL found in free text.
fn strip_url_credentials_in_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || c == '\'' || c == '"')
            .unwrap_or(tail.len());
        let authority_end = tail[..end].find('/').unwrap_or(end);
        let start = tail[..authority_end].rfind('@').map_or(0, |at| at + 1);
        // Keep `git@host` style users of SSH URLs: they are not secrets. Only userinfo with a
        // password is removed.
        if start > 0 && !tail[..start].contains(':') {
            out.push_str(&tail[..end]);
        } else {
            out.push_str(&tail[start..end]);
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_registered_secrets_and_url_passwords() {
        let mut r = Redactor::default();
        r.add("hunter2");
        r.add_url_credentials("https://bob:s%40cret@git.example.com/repo.git");
        let text =
            "auth failed for https://bob:s%40cret@git.example.com/repo.git with hunter2 (s@cret)";
        let out = r.redact(text);
        assert!(
            !out.contains("hunter2") && !out.contains("s%40cret") && !out.contains("s@cret"),
            "{out}"
        );
        assert!(out.contains("https://git.example.com/repo.git"), "{out}");
    }

    #[test]
    fn strips_credentials_even_when_not_registered() {
        let r = Redactor::default();
        assert_eq!(
            r.redact("cannot reach 'http://u:p4ss@127.0.0.1:8080/x.git': refused"),
            "cannot reach 'http://127.0.0.1:8080/x.git': refused"
        );
        assert_eq!(
            r.redact("ssh://git@host:22/repo"),
            "ssh://git@host:22/repo",
            "ssh users stay"
        );
        assert_eq!(strip_url_credentials("https://a:b@h/p"), "https://h/p");
        assert_eq!(strip_url_credentials("https://h/p@x"), "https://h/p@x");
        assert_eq!(strip_url_credentials("https://t0ken@h/p"), "https://h/p");
        assert_eq!(
            strip_url_credentials("ssh://git@h:22/p"),
            "ssh://git@h:22/p"
        );
        assert_eq!(strip_url_credentials("ssh://git:pw@h/p"), "ssh://git@h/p");
    }
}
