//! Commit signing for `git.commit.signingKey`, with Flux's Secret keys. `type: gpg` (the
//! default): `git.asc` holds one ASCII-armored OpenPGP secret key and `passphrase` unlocks it
//! when it is protected. `type: ssh`: `identity` holds an OpenSSH private key and `password`
//! unlocks it. The commit object is signed and the armored signature goes into its `gpgsig`
//! header, which is what `git verify-commit` checks (for SSH, against
//! `gpg.ssh.allowedSignersFile`, in git's `git` namespace).
//!
//! OpenPGP keys sign with their primary key (as rpgp's and Flux's defaults do for a key made by
//! `gpg --quick-gen-key … sign`). Every key signs once when it is read, so a wrong passphrase
//! fails before any git work.

use std::collections::BTreeMap;

use pgp::{
    composed::{ArmorOptions, Deserializable, DetachedSignature, SignedSecretKey},
    types::{KeyDetails, Password, SigningKey},
};
use weir_api::image::SigningKeyType;

/// The Secret key holding the armored OpenPGP secret key.
pub const KEY_FIELD: &str = "git.asc";
/// The Secret key holding the passphrase of a protected OpenPGP key.
pub const PASSPHRASE_FIELD: &str = "passphrase";
/// The Secret key holding the OpenSSH private key.
pub const SSH_KEY_FIELD: &str = "identity";
/// The Secret key holding the passphrase of a protected SSH key.
pub const SSH_PASSPHRASE_FIELD: &str = "password";
/// The sshsig namespace git signs and verifies commits in.
const SSH_NAMESPACE: &str = "git";

/// `a` or `an` before a quoted field name, as Flux's messages read.
fn article(field: &str) -> &'static str {
    if field.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// Why the signing key of a Secret (`namespace/name`) cannot be used. Never holds key material
/// or the passphrase. The cause of `Unreadable` and `CannotSign` is the OpenPGP or the SSH
/// library's error, boxed as the two types differ.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("signing key secret '{secret}' not found")]
    NotFound { secret: String },
    #[error(
        "signing key secret '{secret}' does not contain {} '{field}' key",
        article(field)
    )]
    MissingKey { secret: String, field: &'static str },
    #[error("signing key secret '{secret}' could not read the {kind} in '{field}'")]
    Unreadable {
        secret: String,
        kind: &'static str,
        field: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "signing key secret '{secret}' can not use the passphrase protected key in '{field}' \
         without {} '{passphrase}' key",
        article(passphrase)
    )]
    MissingPassphrase {
        secret: String,
        field: &'static str,
        passphrase: &'static str,
    },
    #[error(
        "signing key secret '{secret}' cannot sign with the key in '{field}' (wrong \
         '{passphrase}'?)"
    )]
    CannotSign {
        secret: String,
        field: &'static str,
        passphrase: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

enum Key {
    OpenPgp {
        key: Box<SignedSecretKey>,
        passphrase: Option<String>,
    },
    /// Decrypted when it was read.
    Ssh(Box<ssh_key::PrivateKey>),
}

/// A key that signs commits.
pub struct CommitSigner {
    /// `namespace/name` of the Secret the key was read from, for errors.
    secret: String,
    key: Key,
}

impl std::fmt::Debug for CommitSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitSigner")
            .field("secret", &self.secret)
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

fn text(data: &BTreeMap<String, Vec<u8>>, field: &str) -> Option<String> {
    data.get(field)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

impl CommitSigner {
    /// Reads the key of `key_type` from the data of the Secret `secret` (`namespace/name`), and
    /// signs once to prove it usable.
    pub fn from_secret_data(
        secret: &str,
        data: &BTreeMap<String, Vec<u8>>,
        key_type: SigningKeyType,
    ) -> Result<Self, SigningError> {
        let key = match key_type {
            SigningKeyType::Gpg => open_pgp(secret, data)?,
            SigningKeyType::Ssh => ssh(secret, data)?,
        };
        let signer = Self {
            secret: secret.to_owned(),
            key,
        };
        signer.sign(b"")?;
        Ok(signer)
    }

    /// The key's fingerprint: upper-case hex for OpenPGP, as `gpg` prints it; `SHA256:…` for
    /// SSH, as `ssh-keygen -l` prints it.
    #[must_use]
    pub fn fingerprint(&self) -> String {
        match &self.key {
            Key::OpenPgp { key, .. } => hex::encode_upper(key.primary_key.fingerprint().as_bytes()),
            Key::Ssh(key) => key.fingerprint(ssh_key::HashAlg::Sha256).to_string(),
        }
    }

    /// An armored signature over `data` (a commit object without its `gpgsig`).
    pub fn sign(&self, data: &[u8]) -> Result<String, SigningError> {
        match &self.key {
            Key::OpenPgp { key, passphrase } => {
                let password = passphrase
                    .as_deref()
                    .map_or_else(Password::empty, Password::from);
                let primary = &key.primary_key;
                DetachedSignature::sign_binary_data(
                    rand08::thread_rng(),
                    primary,
                    &password,
                    primary.hash_alg(),
                    data,
                )
                .and_then(|s| s.to_armored_string(ArmorOptions::default()))
                .map_err(|e| SigningError::CannotSign {
                    secret: self.secret.clone(),
                    field: KEY_FIELD,
                    passphrase: PASSPHRASE_FIELD,
                    source: e.into(),
                })
            }
            Key::Ssh(key) => key
                .sign(SSH_NAMESPACE, ssh_key::HashAlg::Sha512, data)
                .and_then(|s| s.to_pem(ssh_key::LineEnding::LF))
                .map_err(|e| SigningError::CannotSign {
                    secret: self.secret.clone(),
                    field: SSH_KEY_FIELD,
                    passphrase: SSH_PASSPHRASE_FIELD,
                    source: e.into(),
                }),
        }
    }
}

fn open_pgp(secret: &str, data: &BTreeMap<String, Vec<u8>>) -> Result<Key, SigningError> {
    let armored = data
        .get(KEY_FIELD)
        .ok_or_else(|| SigningError::MissingKey {
            secret: secret.to_owned(),
            field: KEY_FIELD,
        })?;
    let (key, _) = SignedSecretKey::from_armor_single(armored.as_slice()).map_err(|e| {
        SigningError::Unreadable {
            secret: secret.to_owned(),
            kind: "OpenPGP secret key",
            field: KEY_FIELD,
            source: e.into(),
        }
    })?;
    let passphrase = text(data, PASSPHRASE_FIELD);
    if key.primary_key.secret_params().is_encrypted() && passphrase.is_none() {
        return Err(SigningError::MissingPassphrase {
            secret: secret.to_owned(),
            field: KEY_FIELD,
            passphrase: PASSPHRASE_FIELD,
        });
    }
    Ok(Key::OpenPgp {
        key: Box::new(key),
        passphrase,
    })
}

fn ssh(secret: &str, data: &BTreeMap<String, Vec<u8>>) -> Result<Key, SigningError> {
    let pem = data
        .get(SSH_KEY_FIELD)
        .ok_or_else(|| SigningError::MissingKey {
            secret: secret.to_owned(),
            field: SSH_KEY_FIELD,
        })?;
    let key = ssh_key::PrivateKey::from_openssh(pem).map_err(|e| SigningError::Unreadable {
        secret: secret.to_owned(),
        kind: "SSH private key",
        field: SSH_KEY_FIELD,
        source: e.into(),
    })?;
    let key = if key.is_encrypted() {
        let password =
            text(data, SSH_PASSPHRASE_FIELD).ok_or_else(|| SigningError::MissingPassphrase {
                secret: secret.to_owned(),
                field: SSH_KEY_FIELD,
                passphrase: SSH_PASSPHRASE_FIELD,
            })?;
        key.decrypt(password.as_bytes())
            .map_err(|e| SigningError::CannotSign {
                secret: secret.to_owned(),
                field: SSH_KEY_FIELD,
                passphrase: SSH_PASSPHRASE_FIELD,
                source: e.into(),
            })?
    } else {
        key
    };
    Ok(Key::Ssh(Box::new(key)))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use pgp::composed::DetachedSignature;

    use super::*;

    const KEY: &str = include_str!("../testdata/signing-key.asc");
    const PROTECTED: &str = include_str!("../testdata/signing-key-protected.asc");
    const SSH_KEY: &str = include_str!("../testdata/ssh-signing-key");
    const SSH_PROTECTED: &str = include_str!("../testdata/ssh-signing-key-protected");

    fn data(entries: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
            .collect()
    }

    fn gpg(entries: &[(&str, &str)]) -> Result<CommitSigner, SigningError> {
        CommitSigner::from_secret_data("apps/key", &data(entries), SigningKeyType::Gpg)
    }

    fn ssh(entries: &[(&str, &str)]) -> Result<CommitSigner, SigningError> {
        CommitSigner::from_secret_data("apps/key", &data(entries), SigningKeyType::Ssh)
    }

    const CONTENT: &[u8] = b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\nmessage\n";

    #[test]
    fn openpgp_signatures_verify_with_the_public_key() {
        let signer = gpg(&[(KEY_FIELD, KEY)]).unwrap();
        assert_eq!(
            signer.fingerprint(),
            "8ADD11BA1AB1659BBD78BC6DEF7AC21E06F84CB2"
        );
        let armored = signer.sign(CONTENT).unwrap();
        assert!(
            armored.starts_with("-----BEGIN PGP SIGNATURE-----"),
            "{armored}"
        );
        let (signature, _) = DetachedSignature::from_string(&armored).unwrap();
        let (key, _) = SignedSecretKey::from_string(KEY).unwrap();
        let public = key.primary_key.public_key();
        signature.verify(&public, CONTENT).unwrap();
        assert!(signature.verify(&public, b"something else").is_err());
    }

    #[test]
    fn ssh_signatures_verify_in_gits_namespace() {
        let signer = ssh(&[(SSH_KEY_FIELD, SSH_KEY)]).unwrap();
        assert!(signer.fingerprint().starts_with("SHA256:"));
        let armored = signer.sign(CONTENT).unwrap();
        assert!(
            armored.starts_with("-----BEGIN SSH SIGNATURE-----"),
            "{armored}"
        );
        let signature = ssh_key::SshSig::from_pem(&armored).unwrap();
        let public = ssh_key::PrivateKey::from_openssh(SSH_KEY)
            .unwrap()
            .public_key()
            .clone();
        public.verify("git", CONTENT, &signature).unwrap();
        assert!(public.verify("file", CONTENT, &signature).is_err());
    }

    #[test]
    fn protected_keys_need_their_passphrase() {
        for (sign, field, pass_field, key) in [
            (
                gpg as fn(&[(&str, &str)]) -> _,
                KEY_FIELD,
                PASSPHRASE_FIELD,
                PROTECTED,
            ),
            (ssh, SSH_KEY_FIELD, SSH_PASSPHRASE_FIELD, SSH_PROTECTED),
        ] {
            sign(&[(field, key), (pass_field, "correct horse")])
                .unwrap()
                .sign(b"x")
                .unwrap();
            let missing = sign(&[(field, key)]).unwrap_err();
            assert!(
                matches!(
                    missing,
                    SigningError::MissingPassphrase { field: f, passphrase: p, .. }
                        if f == field && p == pass_field
                ),
                "{missing}"
            );
            let wrong = sign(&[(field, key), (pass_field, "battery staple")]).unwrap_err();
            assert!(matches!(wrong, SigningError::CannotSign { .. }), "{wrong}");
            let text = weir_runtime::chain(&wrong);
            assert!(
                text.starts_with(&format!(
                    "signing key secret 'apps/key' cannot sign with the key in '{field}' \
                     (wrong '{pass_field}'?): "
                )),
                "{text}"
            );
            assert!(!text.contains("battery"), "{text}");
        }
    }

    #[test]
    fn unusable_secrets_say_which_key_is_wrong() {
        assert_eq!(
            weir_runtime::chain(&gpg(&[(SSH_KEY_FIELD, KEY)]).unwrap_err()),
            "signing key secret 'apps/key' does not contain a 'git.asc' key"
        );
        assert_eq!(
            weir_runtime::chain(&ssh(&[(KEY_FIELD, KEY)]).unwrap_err()),
            "signing key secret 'apps/key' does not contain an 'identity' key"
        );
        // The library's own words follow, as the cause.
        for (garbage, prefix) in [
            (
                gpg(&[(KEY_FIELD, "not a key")]).unwrap_err(),
                "signing key secret 'apps/key' could not read the OpenPGP secret key in \
                 'git.asc': ",
            ),
            (
                ssh(&[(SSH_KEY_FIELD, KEY)]).unwrap_err(),
                "signing key secret 'apps/key' could not read the SSH private key in \
                 'identity': ",
            ),
        ] {
            let text = weir_runtime::chain(&garbage);
            assert!(
                text.starts_with(prefix) && text.len() > prefix.len(),
                "{text}"
            );
        }
    }
}
