//! `spec.verify`: commits and tags signed by the real `git`, with keys made by `gpg` and
//! `ssh-keygen`, verified against the public keys of a Secret.

use std::sync::atomic::Ordering;

use anyhow::{Result, ensure};
use kube::api::{Patch, PatchParams};
use serde_json::json;
use weir_api::source::GitVerificationMode;
use weir_api::{GitRepository, condition::find_condition, reasons, types};
use weir_e2e::GitRepo;
use weir_e2e::{GpgKey, SshSigningKey};

use crate::fixture::*;

fn conditions(repo: &GitRepository) -> Vec<weir_api::Condition> {
    repo.status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default()
}

/// `SourceVerified`'s status, reason and message.
fn source_verified(repo: &GitRepository) -> Option<(String, String, String)> {
    find_condition(&conditions(repo), types::SOURCE_VERIFIED).map(|c| {
        (
            format!("{:?}", c.status),
            c.reason.clone(),
            c.message.clone(),
        )
    })
}

fn ready(repo: &GitRepository) -> (String, String, String) {
    let conditions = conditions(repo);
    let c = find_condition(&conditions, types::READY).unwrap();
    (
        format!("{:?}", c.status),
        c.reason.clone(),
        c.message.clone(),
    )
}

fn verify_spec(git: &GitRepo, mode: &str, secret: &str) -> serde_json::Value {
    json!({
        "url": git.http_url(),
        "interval": "10m",
        "verify": { "mode": mode, "secretRef": { "name": secret } },
    })
}

/// The archives stored for `name`.
fn stored_artifacts(f: &Fixture, name: &str) -> usize {
    let dir = f
        .storage
        .path()
        .join(format!("gitrepository/{}/{name}", f.ns.name()));
    std::fs::read_dir(dir).map_or(0, |d| {
        d.filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".tar.gz"))
        })
        .count()
    })
}

#[tokio::test]
async fn gpg_and_ssh_signed_commits_are_verified_and_the_mode_recorded() -> Result<()> {
    let gpg = GpgKey::generate("Release Bot <release@weir.invalid>")?;
    let ssh = SshSigningKey::generate()?;
    let f = Fixture::start().await?;
    let (_, git) = harness_repo().await?;
    let gpg_signed = git.change().signed(&gpg.signing()).commit("gpg signed")?;
    f.secret(
        "keys",
        &[
            ("release.asc", &gpg.public_key()?),
            ("ci.sshpub", &ssh.public_key()?),
        ],
    )
    .await?;
    f.create("app", verify_spec(&git, "HEAD", "keys")).await?;
    let repo = f.wait_ready("app", "True").await?;
    assert_eq!(revision(&repo), format!("main@sha1:{gpg_signed}"));
    assert_eq!(
        source_verified(&repo),
        Some((
            "True".to_owned(),
            reasons::SUCCEEDED.to_owned(),
            format!(
                "verified signature of\n\t- commit '{gpg_signed}' with key '{}'",
                gpg.key_id()?
            )
        ))
    );
    assert_eq!(
        repo.status.as_ref().unwrap().source_verification_mode,
        Some(GitVerificationMode::Head)
    );

    let ssh_signed = git.change().signed(&ssh.signing()).commit("ssh signed")?;
    let repo = f.request_reconcile("app", "ssh-signed").await?;
    assert_eq!(revision(&repo), format!("main@sha1:{ssh_signed}"));
    let (status, _, message) = source_verified(&repo).unwrap();
    assert_eq!(status, "True");
    assert!(
        message.ends_with(&format!("with key '{}'", ssh.fingerprint()?)),
        "{message}"
    );
    Ok(())
}

/// Asks for a reconcile and checks it failed verification with `reason` and a message
/// containing `detail`, keeping `kept` as the artifact and writing no archive.
async fn rejected(f: &Fixture, token: &str, reason: &str, detail: &str, kept: &str) -> Result<()> {
    let written = f
        .controller
        .metrics
        .artifacts_written
        .load(Ordering::Relaxed);
    let archives = stored_artifacts(f, "app");
    let repo = f.request_reconcile("app", token).await?;
    let (status, ready_reason, message) = ready(&repo);
    ensure!(
        status == "False" && ready_reason == reason,
        "{token}: Ready {status} {ready_reason}: {message}"
    );
    ensure!(message.contains(detail), "{token}: {message}");
    let verified = source_verified(&repo);
    ensure!(
        verified == Some(("False".to_owned(), reason.to_owned(), message.clone())),
        "{token}: SourceVerified {verified:?}"
    );
    ensure!(
        revision(&repo) == format!("main@sha1:{kept}"),
        "{token}: the last verified artifact stays"
    );
    ensure!(
        download(&repo).await.is_ok(),
        "{token}: and is still served"
    );
    ensure!(
        f.controller
            .metrics
            .artifacts_written
            .load(Ordering::Relaxed)
            == written
            && stored_artifacts(f, "app") == archives,
        "{token}: no archive was written"
    );
    Ok(())
}

#[tokio::test]
async fn unsigned_unknown_and_tampered_commits_are_rejected_and_keep_the_last_artifact()
-> Result<()> {
    let (trusted, stranger) = (SshSigningKey::generate()?, SshSigningKey::generate()?);
    let f = Fixture::start().await?;
    let (_, git) = harness_repo().await?;
    let good = git.change().signed(&trusted.signing()).commit("trusted")?;
    f.secret("keys", &[("trusted.sshpub", &trusted.public_key()?)])
        .await?;
    f.create("app", verify_spec(&git, "HEAD", "keys")).await?;
    f.wait_ready("app", "True").await?;

    let unsigned = git
        .change()
        .write("a.yaml", "kind: List\n")
        .commit("unsigned")?;
    rejected(&f, "unsigned", reasons::INVALID_COMMIT_SIGNATURE, &format!("signature verification of commit '{unsigned}' failed: unsupported signature type: empty"), &good).await?;
    git.change()
        .signed(&stranger.signing())
        .commit("by a stranger")?;
    rejected(
        &f,
        "stranger",
        reasons::INVALID_COMMIT_SIGNATURE,
        "no matching key",
        &good,
    )
    .await?;

    let good = git
        .change()
        .signed(&trusted.signing())
        .commit("trusted again")?;
    let repo = f.request_reconcile("app", "trusted-again").await?;
    assert_eq!(
        (revision(&repo), ready(&repo).0),
        (format!("main@sha1:{good}"), "True".to_owned())
    );

    // The trusted commit with another message and its signature kept: a valid git object
    // whose signature no longer matches it.
    let git_dir = || {
        let mut command = weir_e2e::git_command();
        command.arg("--git-dir").arg(git.path());
        command
    };
    let raw = git_dir().args(["cat-file", "commit", &good]).output()?;
    let forged = String::from_utf8(raw.stdout)?.replace("trusted again", "not what was signed");
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), forged)?;
    let out = git_dir()
        .args(["hash-object", "-t", "commit", "-w"])
        .arg(file.path())
        .output()?;
    let tampered = String::from_utf8(out.stdout)?.trim().to_owned();
    let moved = git_dir()
        .args(["update-ref", "refs/heads/main", &tampered, &good])
        .status()?;
    ensure!(moved.success() && tampered.len() == 40 && tampered != good);
    rejected(
        &f,
        "tampered",
        reasons::INVALID_COMMIT_SIGNATURE,
        "no matching key",
        &good,
    )
    .await?;
    let events = f.events_text().await?;
    assert!(
        events.contains(reasons::INVALID_COMMIT_SIGNATURE),
        "a Warning event with the reason"
    );
    Ok(())
}

#[tokio::test]
async fn a_missing_key_secret_is_named_and_no_artifact_is_made() -> Result<()> {
    let ssh = SshSigningKey::generate()?;
    let f = Fixture::start().await?;
    let (_, git) = harness_repo().await?;
    git.change().signed(&ssh.signing()).commit("signed")?;
    f.create("app", verify_spec(&git, "HEAD", "no-such-keys"))
        .await?;
    let repo = f.wait_ready("app", "False").await?;
    let (_, reason, message) = ready(&repo);
    assert_eq!(reason, reasons::VERIFICATION_ERROR);
    assert!(
        message.contains(&format!("'{}/no-such-keys' not found", f.ns.name())),
        "{message}"
    );
    assert_eq!(
        source_verified(&repo).map(|v| v.0),
        Some("False".to_owned())
    );
    assert!(repo.status.as_ref().unwrap().artifact.is_none());
    assert_eq!(stored_artifacts(&f, "app"), 0);
    Ok(())
}

#[tokio::test]
async fn adding_verify_to_an_unchanged_source_verifies_it_at_once() -> Result<()> {
    let ssh = SshSigningKey::generate()?;
    let f = Fixture::start().await?;
    let (_, git) = harness_repo().await?;
    f.secret("keys", &[("ci.sshpub", &ssh.public_key()?)])
        .await?;
    f.create("app", json!({ "url": git.http_url(), "interval": "10m" }))
        .await?;
    let before = f.wait_ready("app", "True").await?;
    assert_eq!(
        source_verified(&before),
        None,
        "only present with spec.verify"
    );

    // The remote did not move, yet the unsigned head must not pass as verified.
    let patch = json!({ "spec": { "verify": { "secretRef": { "name": "keys" } } } });
    f.api
        .patch("app", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let repo = f.wait_ready("app", "False").await?;
    assert_eq!(ready(&repo).1, reasons::INVALID_COMMIT_SIGNATURE);
    assert_eq!(revision(&repo), revision(&before));
    assert_eq!(repo.status.as_ref().unwrap().source_verification_mode, None);

    // And removing it again clears the verification from status.
    let patch = json!({ "spec": { "verify": null } });
    f.api
        .patch("app", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let repo = f.wait_ready("app", "True").await?;
    assert_eq!(source_verified(&repo), None);
    Ok(())
}

#[tokio::test]
async fn signed_tags_verify_in_tag_modes_and_a_branch_ref_stalls() -> Result<()> {
    let ssh = SshSigningKey::generate()?;
    let f = Fixture::start().await?;
    let (_, git) = harness_repo().await?;
    let commit = git.change().signed(&ssh.signing()).commit("release")?;
    git.signed_tag("v1.0.0", "release 1.0.0", &ssh.signing())?;
    git.annotated_tag("v1.0.1", "unsigned release")?;
    f.secret("keys", &[("ci.sshpub", &ssh.public_key()?)])
        .await?;
    let mut both = verify_spec(&git, "TagAndHEAD", "keys");
    both["ref"] = json!({ "tag": "v1.0.0" });
    f.create("signed", both).await?;
    let mut unsigned = verify_spec(&git, "Tag", "keys");
    unsigned["ref"] = json!({ "semver": "1.0.1" });
    f.create("unsigned", unsigned).await?;
    f.create("branch", verify_spec(&git, "Tag", "keys")).await?;

    let repo = f.wait_ready("signed", "True").await?;
    assert_eq!(revision(&repo), format!("v1.0.0@sha1:{commit}"));
    let (_, _, message) = source_verified(&repo).unwrap();
    let key = ssh.fingerprint()?;
    assert!(
        message.starts_with("verified signature of\n\t- tag 'v1.0.0@")
            && message.ends_with(&format!(
                "with key '{key}'\n\t- commit '{commit}' with key '{key}'"
            )),
        "{message}"
    );
    assert_eq!(
        repo.status.as_ref().unwrap().source_verification_mode,
        Some(GitVerificationMode::TagAndHead)
    );

    let repo = f.wait_ready("unsigned", "False").await?;
    let (_, reason, message) = ready(&repo);
    assert_eq!(reason, reasons::INVALID_GIT_OBJECT);
    assert!(
        message.contains("tag 'v1.0.1@") && message.ends_with("since it is not signed"),
        "{message}"
    );

    let repo = f.wait_ready("branch", "False").await?;
    assert_eq!(ready(&repo).1, reasons::INVALID_VERIFICATION_MODE);
    let conditions = conditions(&repo);
    let stalled = find_condition(&conditions, types::STALLED);
    assert!(
        stalled.is_some_and(weir_api::Condition::is_true),
        "only a new spec fixes it"
    );
    assert!(repo.status.as_ref().unwrap().artifact.is_none());
    Ok(())
}

#[tokio::test]
async fn signatures_by_expired_or_revoked_gpg_keys_are_rejected_naming_the_key() -> Result<()> {
    let trusted = GpgKey::generate("Release Bot <release@weir.invalid>")?;
    let expired = GpgKey::generate_expired("Old Bot <old@weir.invalid>")?;
    let revoked = GpgKey::generate("Gone Bot <gone@weir.invalid>")?;
    let f = Fixture::start().await?;
    let (_, git) = harness_repo().await?;
    let good = git.change().signed(&trusted.signing()).commit("trusted")?;
    f.secret(
        "keys",
        &[
            ("release.asc", &trusted.public_key()?),
            ("old.asc", &expired.public_key()?),
            ("gone.asc", &revoked.public_key()?),
        ],
    )
    .await?;
    f.create("app", verify_spec(&git, "HEAD", "keys")).await?;
    f.wait_ready("app", "True").await?;

    // Signed in 2020 while the key was valid; it expired at the end of that year.
    git.change()
        .signed(&expired.signing())
        .commit("by an expired key")?;
    let detail = format!(
        "signature made by expired key {} (expired 2020-12-31T00:00:00Z)",
        expired.fingerprint()?
    );
    rejected(
        &f,
        "expired",
        reasons::INVALID_COMMIT_SIGNATURE,
        &detail,
        &good,
    )
    .await?;

    // Signed while the key was good, then the key was revoked and the Secret given the
    // revocation (`gpg` signs with no revoked key).
    git.change()
        .signed(&revoked.signing())
        .commit("by a key revoked since")?;
    revoked.revoke()?;
    let patch = json!({ "stringData": { "gone.asc": revoked.public_key()? } });
    kube::Api::<k8s_openapi::api::core::v1::Secret>::namespaced(f.client.clone(), f.ns.name())
        .patch("keys", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let detail = format!("signature made by revoked key {}", revoked.fingerprint()?);
    rejected(
        &f,
        "revoked",
        reasons::INVALID_COMMIT_SIGNATURE,
        &detail,
        &good,
    )
    .await?;
    Ok(())
}
