//! How the controller authenticates to git and to whom: basic auth and bearer tokens from a
//! Secret, SSH with known hosts, HTTPS with a private CA, and credentials that never leak.

use anyhow::{Context as _, Result, ensure};
use serde_json::json;
use weir_api::{condition::find_condition, reasons, types};

use crate::fixture::*;

#[tokio::test]
async fn basic_auth_and_bearer_token_credentials_come_from_the_secret() -> Result<()> {
    let f = Fixture::start().await?;
    let (harness, git) = harness_repo().await?;
    let server = harness.git();
    f.secret(
        "basic",
        &[
            ("username", server.http_user()),
            ("password", server.http_password()),
        ],
    )
    .await?;
    f.secret(
        "wrong",
        &[
            ("username", server.http_user()),
            ("password", "not-the-password"),
        ],
    )
    .await?;
    f.secret(
        "token",
        &[(
            "bearerToken",
            server.http_token().context("harness has a token")?,
        )],
    )
    .await?;
    f.create("basic", json!({ "url": git.private_http_url(), "interval": "10m", "secretRef": { "name": "basic" } })).await?;
    f.create(
        "token",
        json!({ "url": git.token_http_url(), "interval": "10m", "secretRef": { "name": "token" } }),
    )
    .await?;
    f.create("wrong", json!({ "url": git.private_http_url(), "interval": "10m", "secretRef": { "name": "wrong" } })).await?;
    f.create(
        "anonymous",
        json!({ "url": git.private_http_url(), "interval": "10m" }),
    )
    .await?;
    f.create("no-secret", json!({ "url": git.private_http_url(), "interval": "10m", "secretRef": { "name": "absent" } })).await?;

    let head = git.head()?;
    assert_eq!(
        revision(&f.wait_ready("basic", "True").await?),
        format!("main@sha1:{head}")
    );
    assert_eq!(
        revision(&f.wait_ready("token", "True").await?),
        format!("main@sha1:{head}")
    );
    for name in ["wrong", "anonymous", "no-secret"] {
        let repo = f.wait_ready(name, "False").await?;
        assert_eq!(
            ready_reason(&repo),
            reasons::AUTHENTICATION_FAILED,
            "{name}"
        );
        assert!(revision(&repo).is_empty(), "{name} has no artifact");
    }
    let text = f.events_text().await?;
    assert!(
        !text.contains("not-the-password") && !text.contains(server.http_password()),
        "events leak a password"
    );
    Ok(())
}

#[tokio::test]
async fn ssh_works_with_the_known_host_key_and_fails_with_another() -> Result<()> {
    let f = Fixture::start().await?;
    let (harness, git) = harness_repo().await?;
    let server = harness.git();
    let identity = read(server.ssh_identity())?;
    let known_hosts = read(server.ssh_known_hosts())?;
    // The same host with a key that is not the server's.
    let host = known_hosts
        .split_whitespace()
        .next()
        .context("known_hosts has a host")?;
    let other_key = format!(
        "{host} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n"
    );
    f.secret(
        "ssh",
        &[("identity", &identity), ("known_hosts", &known_hosts)],
    )
    .await?;
    f.secret(
        "ssh-wrong-host",
        &[("identity", &identity), ("known_hosts", &other_key)],
    )
    .await?;
    f.secret("ssh-no-known-hosts", &[("identity", &identity)])
        .await?;
    f.create(
        "ssh",
        json!({ "url": git.ssh_url(), "interval": "10m", "secretRef": { "name": "ssh" } }),
    )
    .await?;
    f.create("wrong-host", json!({ "url": git.ssh_url(), "interval": "10m", "secretRef": { "name": "ssh-wrong-host" } })).await?;
    f.create("no-known-hosts", json!({ "url": git.ssh_url(), "interval": "10m", "secretRef": { "name": "ssh-no-known-hosts" } })).await?;

    let ok = f.wait_ready("ssh", "True").await?;
    assert_eq!(revision(&ok), format!("main@sha1:{}", git.head()?));
    assert!(download(&ok).await?.contains_key("deploy/configmap.yaml"));
    for name in ["wrong-host", "no-known-hosts"] {
        let repo = f.wait_ready(name, "False").await?;
        assert_eq!(
            ready_reason(&repo),
            reasons::AUTHENTICATION_FAILED,
            "{name}"
        );
        let msg = find_condition(&repo.status.as_ref().unwrap().conditions, types::READY)
            .unwrap()
            .message
            .clone();
        assert!(msg.contains("host key"), "{name}: {msg}");
    }
    let text = f.events_text().await?;
    let key_body = identity.lines().nth(1).unwrap_or("identity");
    assert!(!text.contains(key_body), "events leak the private key");
    Ok(())
}

#[tokio::test]
async fn a_password_in_the_url_never_shows_in_status_or_events() -> Result<()> {
    let f = Fixture::start().await?;
    let (harness, git) = harness_repo().await?;
    let password = "Sup3r-S3cret-Passw0rd";
    let url = git.private_http_url().replacen(
        "://",
        &format!("://{}:{password}@", harness.git().http_user()),
        1,
    );
    f.create("leaky", json!({ "url": url, "interval": "10m" }))
        .await?;
    let repo = f.wait_ready("leaky", "False").await?;
    assert_eq!(ready_reason(&repo), reasons::AUTHENTICATION_FAILED);
    let status = serde_json::to_string(&repo.status)?;
    assert!(
        !status.contains(password),
        "status leaks the password: {status}"
    );
    let events = f.events_text().await?;
    assert!(
        events.contains(reasons::AUTHENTICATION_FAILED),
        "a warning event was published"
    );
    assert!(!events.contains(password), "events leak the password");
    Ok(())
}

#[tokio::test]
async fn https_with_a_private_ca_from_ca_crt_is_verified() -> Result<()> {
    let f = Fixture::start().await?;
    let (harness, git) = harness_repo().await?;
    let ca = read(harness.git().https_ca()?)?;
    // Another CA, which did not sign the server's certificate.
    let dir = tempfile::tempdir()?;
    let other = dir.path().join("other-ca.crt");
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
        ])
        .args(["-subj", "/CN=other-ca", "-keyout"])
        .arg(dir.path().join("other-ca.key"))
        .arg("-out")
        .arg(&other)
        .output()?;
    ensure!(
        status.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    f.secret("ca", &[("ca.crt", &ca)]).await?;
    f.secret("other-ca", &[("ca.crt", &read(&other)?)]).await?;
    f.create(
        "trusted",
        json!({ "url": git.https_url()?, "interval": "10m", "secretRef": { "name": "ca" } }),
    )
    .await?;
    f.create(
        "untrusted",
        json!({ "url": git.https_url()?, "interval": "10m", "secretRef": { "name": "other-ca" } }),
    )
    .await?;
    f.create(
        "no-ca",
        json!({ "url": git.https_url()?, "interval": "10m" }),
    )
    .await?;

    let trusted = f.wait_ready("trusted", "True").await?;
    assert_eq!(revision(&trusted), format!("main@sha1:{}", git.head()?));
    let untrusted = f.wait_ready("untrusted", "False").await?;
    assert_eq!(ready_reason(&untrusted), reasons::AUTHENTICATION_FAILED);
    let message = find_condition(&untrusted.status.as_ref().unwrap().conditions, types::READY)
        .unwrap()
        .message
        .clone();
    assert!(message.contains("not signed by ca.crt"), "{message}");
    let no_ca = f.wait_ready("no-ca", "False").await?;
    assert!(
        revision(&no_ca).is_empty(),
        "the system trust store does not know the harness CA"
    );
    Ok(())
}
