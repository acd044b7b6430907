//! `weir controllers`, the binary (found through `WEIR_BIN`).

use anyhow::{Context, Result};
use kube::api::PostParams;
use serde_json::{Value, json};
use weir_e2e::{Harness, wait_until};

use crate::fixture::*;

/// The controllers of one process share their watches: each of the five kinds they read is
/// listed and watched once, however many controllers read it (the source controller reads
/// GitRepository twice, for itself and for includes; the kustomize controller GitRepository for
/// new artifacts and Kustomization twice, for itself and for dependencies; the image controller
/// ImageRepository and ImagePolicy twice), and readiness waits for each of them once.
#[tokio::test]
async fn controllers_in_one_process_watch_each_kind_once() -> Result<()> {
    let f = Fixture::start().await?;
    assert_eq!(f.watches.len(), 5, "{:?}", f.watches);
    let synced = f.synced();
    assert_eq!(synced.len(), 5);
    wait_until("the shared caches to sync", || async {
        if synced.is_synced() {
            Ok(())
        } else {
            Err("not synced yet")
        }
    })
    .await?;
    Ok(())
}

/// `weir controllers` (built by `make integration`, found through `WEIR_BIN`) runs every
/// controller in one process: `/readyz` answers once the caches have synced, and `/metrics`
/// has Flux's reconcile metrics for every kind, so Flux's dashboards work unchanged.
#[tokio::test]
async fn weir_controllers_serves_fluxs_metrics_for_every_kind() -> Result<()> {
    let weir = std::env::var("WEIR_BIN")
        .context("WEIR_BIN: the weir binary to run (make integration builds it)")?;
    let harness = Harness::get().await?;
    let ns = harness.namespace().await?;
    let client = harness.client()?;
    let git = app_repo(harness)?;
    let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let storage = tempfile::tempdir()?;
    let _weir = tokio::process::Command::new(weir)
        .args([
            "controllers",
            "--namespace",
            ns.name(),
            "--storage-addr",
            "127.0.0.1:0",
        ])
        .arg("--metrics-addr")
        .arg(metrics_addr.to_string())
        .arg("--storage-path")
        .arg(storage.path().join("artifacts"))
        .arg("--artifact-cache-path")
        .arg(storage.path().join("cache"))
        .arg("--kustomize-path")
        .arg(harness.tool("kustomize"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(storage.path().join("weir.log"))?)
        .kill_on_drop(true)
        .spawn()?;
    // The process's log, shown when the test fails.
    let log = || std::fs::read_to_string(storage.path().join("weir.log")).unwrap_or_default();

    let http = reqwest::Client::new();
    let base = format!("http://{metrics_addr}");
    wait_until("/readyz to answer ok", || {
        let (http, url) = (http.clone(), format!("{base}/readyz"));
        async move {
            let response = http.get(&url).send().await.map_err(|e| e.to_string())?;
            if response.status().is_success() {
                Ok(())
            } else {
                Err(format!("{}", response.status()))
            }
        }
    })
    .await
    .with_context(|| format!("weir's log:\n{}", log()))?;

    let objects = every_kind(&git.http_url(), ns.name());
    for object in &objects {
        let api = dynamic_api(&client, ns.name(), object).await?;
        api.create(
            &PostParams::default(),
            &serde_json::from_value(object.clone())?,
        )
        .await?;
    }

    let text = wait_until("every kind's reconciles in /metrics", || {
        let (http, url) = (http.clone(), format!("{base}/metrics"));
        let ns = ns.name().to_owned();
        async move {
            let text = http
                .get(&url)
                .send()
                .await
                .map_err(|e| e.to_string())?
                .text()
                .await
                .map_err(|e| e.to_string())?;
            match missing_metrics(&text, &ns) {
                Some(missing) => Err(missing),
                None => Ok(text),
            }
        }
    })
    .await
    .with_context(|| format!("weir's log:\n{}", log()))?;
    let suspend = format!(
        r#"gotk_suspend_status{{kind="GitRepository",name="app",namespace="{}"}} 0"#,
        ns.name()
    );
    assert!(text.contains(&suspend), "{text}");
    assert!(text.contains("weir_kustomize_reconciles_total "), "{text}");
    Ok(())
}

/// One object of every kind Weir reconciles, named `app`, in `ns`.
fn every_kind(git_url: &str, ns: &str) -> [Value; 5] {
    [
        json!({
            "apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
            "metadata": {"name": "app"},
            "spec": {"url": git_url, "interval": "1m", "ref": {"branch": "main"}},
        }),
        json!({
            "apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
            "metadata": {"name": "app"},
            "spec": {
                "sourceRef": {"kind": "GitRepository", "name": "app"}, "interval": "1m",
                "path": "./deploy", "prune": true, "targetNamespace": ns,
            },
        }),
        // Nothing listens there: the scan fails, which is still a reconcile.
        json!({
            "apiVersion": "image.toolkit.fluxcd.io/v1", "kind": "ImageRepository",
            "metadata": {"name": "app"},
            "spec": {"image": "127.0.0.1:9/app", "interval": "1h", "insecure": true},
        }),
        json!({
            "apiVersion": "image.toolkit.fluxcd.io/v1", "kind": "ImagePolicy",
            "metadata": {"name": "app"},
            "spec": {"imageRepositoryRef": {"name": "app"}, "policy": {"semver": {"range": "*"}}},
        }),
        json!({
            "apiVersion": "image.toolkit.fluxcd.io/v1", "kind": "ImageUpdateAutomation",
            "metadata": {"name": "app"},
            "spec": {
                "interval": "1h", "sourceRef": {"kind": "GitRepository", "name": "app"},
                "git": {"commit": {"author": {"name": "weir", "email": "bot@weir.invalid"}}},
                "update": {"path": "./deploy", "strategy": "Setters"},
            },
        }),
    ]
}

/// What `text` (the `/metrics` page) lacks: a reconcile duration for every kind, and the
/// Kustomization's `Ready=True` in `gotk_reconcile_condition`.
fn missing_metrics(text: &str, ns: &str) -> Option<String> {
    let missing: Vec<&str> = [
        "GitRepository",
        "Kustomization",
        "ImageRepository",
        "ImagePolicy",
        "ImageUpdateAutomation",
    ]
    .into_iter()
    .filter(|kind| {
        let labels = format!(r#"kind="{kind}",name="app",namespace="{ns}""#);
        !text.lines().any(|l| {
            l.starts_with("gotk_reconcile_duration_seconds_bucket{") && l.contains(&labels)
        })
    })
    .collect();
    let ready = format!(
        r#"gotk_reconcile_condition{{kind="Kustomization",name="app",namespace="{ns}",type="Ready",status="True"}} 1"#
    );
    if !missing.is_empty() {
        Some(format!("no reconcile duration for {missing:?}"))
    } else if !text.contains(&ready) {
        Some("the Kustomization is not Ready in gotk_reconcile_condition".to_owned())
    } else {
        None
    }
}
