//! Signing keys made by the real tools (`gpg`, `ssh-keygen`) and the `git` options that sign
//! commits and tags with them, for tests of signature verification.

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use crate::Error;
use crate::git::run;

/// How `git commit -S` and `git tag -s` sign: `-c` options and the environment `gpg` runs in.
/// Made by [`GpgKey::signing`] and [`SshSigningKey::signing`].
#[derive(Debug, Clone)]
pub struct GitSigning {
    pub(crate) config: Vec<(String, String)>,
    pub(crate) gnupg_home: Option<PathBuf>,
}

impl GitSigning {
    /// Adds the options to a `git` command.
    pub(crate) fn apply(&self, command: &mut Command) {
        for (key, value) in &self.config {
            command.arg("-c").arg(format!("{key}={value}"));
        }
        if let Some(home) = &self.gnupg_home {
            command.env("GNUPGHOME", home);
        }
    }
}

/// An ed25519 OpenPGP signing key in its own throwaway GnuPG home; the home's agent is stopped
/// when this is dropped.
#[derive(Debug)]
pub struct GpgKey {
    home: TempDir,
    uid: String,
}

impl GpgKey {
    /// Generates a key for `uid` (such as `Name <email>`), without a passphrase.
    pub fn generate(uid: &str) -> Result<Self, Error> {
        Self::generate_with(uid, &[], "never")
    }

    /// Generates a key for `uid` made on 2020-01-01 that expired a year later. Its home fakes
    /// the time to 2020-06-01 (`gpg.conf`), so what git signs with it was signed while it was
    /// valid; only the verification, now, finds it expired.
    pub fn generate_expired(uid: &str) -> Result<Self, Error> {
        let key = Self::generate_with(uid, &["--faked-system-time", "20200101T000000"], "1y")?;
        std::fs::write(
            key.home.path().join("gpg.conf"),
            "faked-system-time 20200601T000000\n",
        )
        .map_err(Error::io("writing gpg.conf"))?;
        Ok(key)
    }

    /// An ed25519 signing key for `uid` in a new home, made with `gpg_args` first and expiring
    /// as `expire` says (`never`, `1y`).
    fn generate_with(uid: &str, gpg_args: &[&str], expire: &str) -> Result<Self, Error> {
        // Short: gpg-agent's socket path must fit in a socket address.
        let home = tempfile::Builder::new()
            .prefix("gpg")
            .tempdir_in("/tmp")
            .map_err(Error::io("making a GnuPG home"))?;
        let key = Self {
            home,
            uid: uid.to_owned(),
        };
        run(key.gpg().args(gpg_args).args([
            "--passphrase",
            "",
            "--quick-gen-key",
            uid,
            "ed25519",
            "sign",
            expire,
        ]))?;
        Ok(key)
    }

    /// Revokes the key by importing the revocation certificate `gpg` made with it (stored with
    /// its armor's first line escaped, against an import by accident); the exported public
    /// key carries the revocation from then on.
    pub fn revoke(&self) -> Result<(), Error> {
        let dir = self.home.path().join("openpgp-revocs.d");
        let certificate = std::fs::read_dir(&dir)
            .map_err(Error::io("listing revocation certificates"))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "rev"))
            .ok_or_else(|| Error::HarnessEnvironment {
                source_name: "gpg".to_owned(),
                reason: format!("no revocation certificate in {}", dir.display()),
            })?;
        let text = std::fs::read_to_string(&certificate)
            .map_err(Error::io("reading the revocation certificate"))?;
        let path = self.home.path().join("revocation.asc");
        std::fs::write(&path, text.replace(":-----BEGIN", "-----BEGIN"))
            .map_err(Error::io("writing the revocation certificate"))?;
        run(self.gpg().arg("--import").arg(path))?;
        Ok(())
    }

    /// The primary key's fingerprint, as `gpg --list-keys --with-colons` lists it.
    pub fn fingerprint(&self) -> Result<String, Error> {
        let listing = run(self.gpg().args(["--with-colons", "--list-keys", &self.uid]))?;
        listing
            .lines()
            .find_map(|l| l.strip_prefix("fpr:"))
            .and_then(|l| l.split(':').nth(8))
            .map(str::to_owned)
            .ok_or_else(|| Error::HarnessEnvironment {
                source_name: "gpg --list-keys".to_owned(),
                reason: format!("no fingerprint listed for {}", self.uid),
            })
    }

    fn gpg(&self) -> Command {
        let mut command = Command::new("gpg");
        command
            .env("GNUPGHOME", self.home.path())
            .args(["--batch", "--pinentry-mode", "loopback"]);
        command
    }

    /// The armored public key, as `gpg --armor --export` writes it.
    pub fn public_key(&self) -> Result<String, Error> {
        run(self.gpg().args(["--armor", "--export", &self.uid]))
    }

    /// The primary key's 16-digit ID, as `gpg --list-keys --with-colons` lists it.
    pub fn key_id(&self) -> Result<String, Error> {
        let listing = run(self.gpg().args(["--with-colons", "--list-keys", &self.uid]))?;
        listing
            .lines()
            .find_map(|l| l.strip_prefix("pub:"))
            .and_then(|l| l.split(':').nth(3))
            .map(str::to_owned)
            .ok_or_else(|| Error::HarnessEnvironment {
                source_name: "gpg --list-keys".to_owned(),
                reason: format!("no primary key listed for {}", self.uid),
            })
    }

    /// Signs with this key.
    #[must_use]
    pub fn signing(&self) -> GitSigning {
        GitSigning {
            config: vec![("user.signingkey".to_owned(), self.uid.clone())],
            gnupg_home: Some(self.home.path().to_path_buf()),
        }
    }
}

impl Drop for GpgKey {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.home.path())
            .args(["--kill", "gpg-agent"])
            .status();
    }
}

/// An ed25519 SSH key made by `ssh-keygen`, without a passphrase, that git signs with
/// (`gpg.format=ssh`).
#[derive(Debug)]
pub struct SshSigningKey {
    dir: TempDir,
}

impl SshSigningKey {
    /// Generates a key.
    pub fn generate() -> Result<Self, Error> {
        let dir = tempfile::tempdir().map_err(Error::io("making a directory for an SSH key"))?;
        let key = Self { dir };
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "signer", "-f"])
            .arg(key.private_key()))?;
        Ok(key)
    }

    fn private_key(&self) -> PathBuf {
        self.dir.path().join("signer")
    }

    fn public_key_file(&self) -> PathBuf {
        self.dir.path().join("signer.pub")
    }

    /// The public key, one `authorized_keys` line.
    pub fn public_key(&self) -> Result<String, Error> {
        let path = self.public_key_file();
        std::fs::read_to_string(&path).map_err(Error::io(format!("reading {}", path.display())))
    }

    /// The key's `SHA256:…` fingerprint, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> Result<String, Error> {
        let out = run(Command::new("ssh-keygen")
            .args(["-l", "-E", "sha256", "-f"])
            .arg(self.public_key_file()))?;
        Ok(out.split_whitespace().nth(1).unwrap_or_default().to_owned())
    }

    /// Signs with this key.
    #[must_use]
    pub fn signing(&self) -> GitSigning {
        GitSigning {
            config: vec![
                ("gpg.format".to_owned(), "ssh".to_owned()),
                ("user.signingkey".to_owned(), display(&self.private_key())),
            ],
            gnupg_home: None,
        }
    }
}

fn display(path: &Path) -> String {
    path.display().to_string()
}
