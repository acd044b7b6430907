//! `git.commit.signingKey`: commits signed with OpenPGP and SSH keys.

use anyhow::Result;
use kube::Api;
use serde_json::json;
use weir_api::reasons;

use crate::fixture::*;

/// A throwaway GnuPG home; its agent is stopped when dropped.
struct GnuPgHome(tempfile::TempDir);

impl GnuPgHome {
    fn new() -> Self {
        // Short: gpg-agent's socket path must fit in a socket address.
        let dir = tempfile::Builder::new()
            .prefix("gpg")
            .tempdir_in("/tmp")
            .unwrap();
        Self(dir)
    }

    fn gpg(&self, args: &[&str]) -> std::process::Output {
        let out = std::process::Command::new("gpg")
            .env("GNUPGHOME", self.0.path())
            .args(["--batch", "--pinentry-mode", "loopback"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "gpg {args:?}: {out:?}");
        out
    }
}

impl Drop for GnuPgHome {
    fn drop(&mut self) {
        let _ = std::process::Command::new("gpgconf")
            .env("GNUPGHOME", self.0.path())
            .args(["--kill", "gpg-agent"])
            .status();
    }
}

#[tokio::test]
async fn signed_commits_pass_git_verify_commit() -> Result<()> {
    let signer_home = GnuPgHome::new();
    let uid = "Weir Signer <signer@weir.invalid>";
    signer_home.gpg(&[
        "--passphrase",
        "s3cret phrase",
        "--quick-gen-key",
        uid,
        "ed25519",
        "sign",
        "never",
    ]);
    let private = signer_home.gpg(&[
        "--passphrase",
        "s3cret phrase",
        "--armor",
        "--export-secret-keys",
        uid,
    ]);
    let public = signer_home.gpg(&["--armor", "--export", uid]);
    let verifier_home = GnuPgHome::new();
    let key_file = verifier_home.0.path().join("signer.asc");
    std::fs::write(&key_file, &public.stdout)?;
    verifier_home.gpg(&["--import", key_file.to_str().unwrap()]);

    let f = Fixture::start().await?;
    let repo = f.marked_source("1.9.0").await?;
    f.secret(
        "signing",
        &[
            ("git.asc", std::str::from_utf8(&private.stdout)?),
            ("passphrase", "s3cret phrase"),
        ],
    )
    .await?;
    let mut spec = automation_spec(None);
    spec["git"]["commit"]["signingKey"] = json!({ "secretRef": { "name": "signing" } });
    f.automation("auto", spec).await?;
    let pushed = f.wait_pushed("auto", || repo.head().unwrap()).await?;

    let verify = weir_e2e::git_command()
        .env("GNUPGHOME", verifier_home.0.path())
        .arg("--git-dir")
        .arg(repo.path())
        .args(["verify-commit", "--raw", &pushed])
        .output()?;
    let report = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success(), "git verify-commit: {report}");
    assert!(
        report.contains("GOODSIG") && report.contains(uid),
        "{report}"
    );
    // A commit of someone else's is not accepted by the same check.
    let initial = git_in(&repo, &["rev-parse", "main~1"]);
    let unsigned = weir_e2e::git_command()
        .env("GNUPGHOME", verifier_home.0.path())
        .arg("--git-dir")
        .arg(repo.path())
        .args(["verify-commit", initial.trim()])
        .output()?;
    assert!(!unsigned.status.success());
    Ok(())
}

#[tokio::test]
async fn ssh_signed_commits_pass_git_verify_commit_with_allowed_signers() -> Result<()> {
    let keys = tempfile::tempdir()?;
    let key = keys.path().join("signer");
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "signer", "-f"])
        .arg(&key)
        .output()?;
    assert!(out.status.success(), "ssh-keygen: {out:?}");
    let public = std::fs::read_to_string(key.with_extension("pub"))?;
    let allowed = keys.path().join("allowed_signers");
    std::fs::write(
        &allowed,
        format!("bot@weir.invalid namespaces=\"git\" {public}"),
    )?;

    let f = Fixture::start().await?;
    let repo = f.marked_source("1.12.0").await?;
    f.secret(
        "ssh-signing",
        &[("identity", &std::fs::read_to_string(&key)?)],
    )
    .await?;
    let mut spec = automation_spec(None);
    spec["git"]["commit"]["signingKey"] =
        json!({ "secretRef": { "name": "ssh-signing" }, "type": "ssh" });
    f.automation("auto", spec).await?;
    let pushed = f.wait_pushed("auto", || repo.head().unwrap()).await?;

    let verify = |commit: &str| {
        weir_e2e::git_command()
            .arg("-c")
            .arg(format!("gpg.ssh.allowedSignersFile={}", allowed.display()))
            .arg("--git-dir")
            .arg(repo.path())
            .args(["verify-commit", commit])
            .output()
            .unwrap()
    };
    let good = verify(&pushed);
    let report = String::from_utf8_lossy(&good.stderr);
    assert!(good.status.success(), "git verify-commit: {report}");
    assert!(
        report.contains("Good \"git\" signature for bot@weir.invalid"),
        "{report}"
    );
    let initial = git_in(&repo, &["rev-parse", "main~1"]);
    assert!(!verify(initial.trim()).status.success());
    Ok(())
}

#[tokio::test]
async fn bad_signing_keys_name_the_secret_and_key_and_push_nothing() -> Result<()> {
    let f = Fixture::start().await?;
    let repo = f.marked_source("1.10.0").await?;
    let head = repo.head()?;
    let protected = include_str!("../../../controllers/image/testdata/signing-key-protected.asc");
    f.secret("no-key", &[("identity", "x")]).await?;
    f.secret("garbage", &[("git.asc", "not a key")]).await?;
    f.secret(
        "wrong-passphrase",
        &[("git.asc", protected), ("passphrase", "hunter2-not-it")],
    )
    .await?;
    f.secret("no-passphrase", &[("git.asc", protected)]).await?;
    let ns = f.ns.name();
    let cases = [
        ("absent", "gpg", "'NS/absent' not found"),
        (
            "no-key",
            "gpg",
            "'NS/no-key' does not contain a 'git.asc' key",
        ),
        (
            "garbage",
            "gpg",
            "'NS/garbage' could not read the OpenPGP secret key in 'git.asc'",
        ),
        (
            "wrong-passphrase",
            "gpg",
            "'NS/wrong-passphrase' cannot sign with the key in 'git.asc'",
        ),
        ("no-passphrase", "gpg", "without a 'passphrase' key"),
        (
            "no-key",
            "ssh",
            "'NS/no-key' could not read the SSH private key in 'identity'",
        ),
        (
            "garbage",
            "ssh",
            "'NS/garbage' does not contain an 'identity' key",
        ),
    ];
    for (i, (secret, key_type, expected)) in cases.iter().enumerate() {
        let name = format!("sign-{i}");
        let mut spec = automation_spec(None);
        spec["git"]["commit"]["signingKey"] =
            json!({ "secretRef": { "name": secret }, "type": key_type });
        f.automation(&name, spec).await?;
        let a = f
            .wait_ready_any(&name, reasons::INVALID_SOURCE_CONFIGURATION)
            .await?;
        let message = ready_message(&a.status.unwrap().conditions);
        assert!(
            message.contains(&expected.replace("NS", ns)),
            "{secret}: {message}"
        );
        assert!(
            !message.contains("hunter2") && !message.contains("BEGIN PGP"),
            "{message}"
        );
    }

    assert_eq!(repo.head()?, head, "nothing was pushed");
    let events =
        Api::<k8s_openapi::api::core::v1::Event>::namespaced(f.client.clone(), f.ns.name())
            .list(&kube::api::ListParams::default())
            .await?;
    assert!(!serde_json::to_string(&events)?.contains("hunter2"));
    Ok(())
}
