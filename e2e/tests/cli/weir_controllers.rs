//! `weir controllers`, the binary (found through `WEIR_BIN`).

use anyhow::{Context, Result};
use kube::api::PostParams;
use serde_json::{Value, json};
use weir_e2e::{Harness, wait_until};

use crate::fixture::*;

/// The controllers of one process share their watches: each of the eight kinds they read is
/// listed and watched once, however many controllers read it (the source controller reads
/// GitRepository three times, for itself, for includes and for HelmCharts, and HelmRepository
/// three times, for itself, for the static OCI ones and for HelmCharts; the kustomize controller
/// GitRepository for new artifacts, Kustomization twice, for itself and for dependencies, and
/// HelmRelease for dependencies; the image controller ImageRepository and ImagePolicy twice;
/// the helm controller HelmRelease twice, HelmChart and Kustomization), and readiness waits for
/// each of them once.
#[tokio::test]
async fn controllers_in_one_process_watch_each_kind_once() -> Result<()> {
    let f = Fixture::start().await?;
    assert_eq!(f.watches.len(), 8, "{:?}", f.watches);
    let synced = f.synced();
    assert_eq!(synced.len(), 8);
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

/// A `weir controllers` process (the binary `make integration` builds, found through
/// `WEIR_BIN`) watching one namespace, its metrics and health endpoints, and its log.
struct WeirProcess {
    _child: tokio::process::Child,
    http: reqwest::Client,
    base: String,
    dir: tempfile::TempDir,
}

impl WeirProcess {
    /// Starts `weir controllers --namespace ns`, as the user of `kubeconfig` (the harness's by
    /// default).
    fn start(harness: &Harness, ns: &str, kubeconfig: Option<&std::path::Path>) -> Result<Self> {
        let weir = std::env::var("WEIR_BIN")
            .context("WEIR_BIN: the weir binary to run (make integration builds it)")?;
        let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let dir = tempfile::tempdir()?;
        let mut command = tokio::process::Command::new(weir);
        command
            .args([
                "controllers",
                "--namespace",
                ns,
                "--storage-addr",
                "127.0.0.1:0",
            ])
            .arg("--metrics-addr")
            .arg(metrics_addr.to_string())
            .arg("--storage-path")
            .arg(dir.path().join("artifacts"))
            .arg("--artifact-cache-path")
            .arg(dir.path().join("cache"))
            .arg("--kustomize-path")
            .arg(harness.tool("kustomize"))
            .arg("--helm-path")
            .arg(harness.tool("helm"))
            .arg("--chart-cache-path")
            .arg(dir.path().join("charts"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("weir.log"))?)
            .kill_on_drop(true);
        if let Some(kubeconfig) = kubeconfig {
            command.env("KUBECONFIG", kubeconfig);
        }
        Ok(Self {
            _child: command.spawn()?,
            http: reqwest::Client::new(),
            base: format!("http://{metrics_addr}"),
            dir,
        })
    }

    /// The process's log so far, shown when a test fails.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("weir.log")).unwrap_or_default()
    }

    /// The status and body `path` answers with (an error while nothing listens yet).
    async fn get(&self, path: &str) -> Result<(reqwest::StatusCode, String), String> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        Ok((status, response.text().await.map_err(|e| e.to_string())?))
    }

    /// Waits until `path` answers 200.
    async fn wait_ok(&self, path: &str) -> Result<String> {
        wait_until(&format!("{path} to answer 200"), || async move {
            match self.get(path).await? {
                (status, body) if status.is_success() => Ok(body),
                (status, body) => Err(format!("{status}: {body}")),
            }
        })
        .await
        .with_context(|| format!("weir's log:\n{}", self.log()))
    }
}

/// `weir controllers` runs every controller in one process: `/readyz` answers once the caches
/// have synced, and `/metrics` has Flux's reconcile metrics for every kind, so Flux's dashboards
/// work unchanged, and Weir's count of API requests by verb.
#[tokio::test]
async fn weir_controllers_serves_fluxs_metrics_for_every_kind() -> Result<()> {
    let harness = Harness::get().await?;
    let ns = harness.namespace().await?;
    let client = harness.client()?;
    let git = app_repo(harness)?;
    let weir = WeirProcess::start(harness, ns.name(), None)?;
    weir.wait_ok("/readyz").await?;

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
        let (weir, ns) = (&weir, ns.name());
        async move {
            let (_, text) = weir.get("/metrics").await?;
            match missing_metrics(&text, ns) {
                Some(missing) => Err(missing),
                None => Ok(text),
            }
        }
    })
    .await
    .with_context(|| format!("weir's log:\n{}", weir.log()))?;
    let suspend = format!(
        r#"gotk_suspend_status{{kind="GitRepository",name="app",namespace="{}"}} 0"#,
        ns.name()
    );
    assert!(text.contains(&suspend), "{text}");
    assert!(text.contains("weir_kustomize_reconciles_total "), "{text}");
    Ok(())
}

/// `/readyz` is ready only once every cache has synced: a process whose identity may read all
/// of Weir's kinds but ImagePolicy answers 503 while that watch is refused (its other watches
/// run and `/healthz` is 200), and 200 as soon as it may list them.
#[tokio::test]
async fn readyz_waits_until_every_kinds_cache_has_synced() -> Result<()> {
    let harness = Harness::get().await?;
    let ns = harness.namespace().await?;
    let client = harness.client()?;
    let rule = |group: &str, resources: &[&str]| json!({ "apiGroups": [group], "resources": resources, "verbs": ["*"] });
    let account =
        json!({ "apiVersion": "v1", "kind": "ServiceAccount", "metadata": { "name": "weir" } });
    create_all(
        &client,
        ns.name(),
        &[
            vec![account],
            role_and_binding(
                "weir",
                &[
                    rule("source.toolkit.fluxcd.io", &["*"]),
                    rule("kustomize.toolkit.fluxcd.io", &["*"]),
                    rule("helm.toolkit.fluxcd.io", &["*"]),
                    rule(
                        "image.toolkit.fluxcd.io",
                        &["imagerepositories", "imageupdateautomations"],
                    ),
                    rule("", &["events", "secrets", "configmaps"]),
                ],
            ),
        ]
        .concat(),
    )
    .await?;
    let kubeconfig = tempfile::NamedTempFile::new()?;
    let mut config: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(harness.kubeconfig_path())?)?;
    for user in config["users"].as_array_mut().into_iter().flatten() {
        user["user"]["as"] = json!(format!("system:serviceaccount:{}:weir", ns.name()));
    }
    std::fs::write(kubeconfig.path(), serde_yaml_ng::to_string(&config)?)?;

    let weir = WeirProcess::start(harness, ns.name(), Some(kubeconfig.path()))?;
    weir.wait_ok("/healthz").await?;
    wait_until("the ImagePolicy watch to be refused", || async {
        let log = weir.log();
        if log.contains("watch stream error") && log.contains("imagepolicies") {
            Ok(())
        } else {
            Err(log)
        }
    })
    .await?;
    let (status, body) = weir.get("/readyz").await.map_err(anyhow::Error::msg)?;
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (503, "caches not synced"),
        "weir's log:\n{}",
        weir.log()
    );

    create_all(
        &client,
        ns.name(),
        &role_and_binding(
            "weir-imagepolicies",
            &[rule("image.toolkit.fluxcd.io", &["imagepolicies"])],
        ),
    )
    .await?;
    weir.wait_ok("/readyz").await?;
    Ok(())
}

/// A Role `name` with `rules` and its binding to the service account `weir`.
fn role_and_binding(name: &str, rules: &[Value]) -> Vec<Value> {
    vec![
        json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": { "name": name }, "rules": rules }),
        json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": { "name": name },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name },
                "subjects": [{ "kind": "ServiceAccount", "name": "weir" }] }),
    ]
}

/// Creates `objects` in `ns`.
async fn create_all(client: &kube::Client, ns: &str, objects: &[Value]) -> Result<()> {
    for object in objects {
        dynamic_api(client, ns, object)
            .await?
            .create(
                &PostParams::default(),
                &serde_json::from_value(object.clone())?,
            )
            .await?;
    }
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

/// What `text` (the `/metrics` page) lacks: a reconcile duration for every kind, Weir's request
/// and status-write counters, and the Kustomization's `Ready=True` in `gotk_reconcile_condition`.
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
    // Weir's own counters: watches, the Kustomization's dry run, and a status write of a kind
    // (an object's first reconcile only adds Flux's finalizer, so its write comes a moment
    // after its first duration).
    let counters: Vec<&str> = [
        r#"weir_api_requests_total{verb="watch",dry_run="false"} "#,
        r#"weir_api_requests_total{verb="patch",dry_run="true"} "#,
        r#"weir_status_writes_total{kind="ImagePolicy"} "#,
    ]
    .into_iter()
    .filter(|series| !text.contains(series))
    .collect();
    if !missing.is_empty() {
        Some(format!("no reconcile duration for {missing:?}"))
    } else if !counters.is_empty() {
        Some(format!("no {counters:?}"))
    } else if !text.contains(&ready) {
        Some("the Kustomization is not Ready in gotk_reconcile_condition".to_owned())
    } else {
        None
    }
}
