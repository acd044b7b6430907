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
/// each of them once, and for the kustomize controller's four watches of locked workloads
/// (Deployments, StatefulSets, DaemonSets and CronJobs labelled `weir.dev/locked=true`).
#[tokio::test]
async fn controllers_in_one_process_watch_each_kind_once() -> Result<()> {
    let f = Fixture::start().await?;
    assert_eq!(f.watches.len(), 8, "{:?}", f.watches);
    let synced = f.synced();
    assert_eq!(synced.len(), 8 + 4);
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
    child: tokio::process::Child,
    http: reqwest::Client,
    base: String,
    dir: tempfile::TempDir,
}

impl WeirProcess {
    /// Starts `weir controllers --namespace ns`, as the user of `kubeconfig` (the harness's by
    /// default).
    fn start(harness: &Harness, ns: &str, kubeconfig: Option<&std::path::Path>) -> Result<Self> {
        Self::start_with(harness, ns, kubeconfig, &[], &[])
    }

    /// [`Self::start`] with more flags and environment variables.
    fn start_with(
        harness: &Harness,
        ns: &str,
        kubeconfig: Option<&std::path::Path>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let weir = weir_bin()?;
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
            .args(extra)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("weir.log"))?)
            .kill_on_drop(true);
        if let Some(kubeconfig) = kubeconfig {
            command.env("KUBECONFIG", kubeconfig);
        }
        Ok(Self {
            child: command.spawn()?,
            http: reqwest::Client::new(),
            base: format!("http://{metrics_addr}"),
            dir,
        })
    }

    /// Sends the process `signal` (`KILL`, `TERM`) and waits for it to exit.
    async fn signal(&mut self, signal: &str) -> Result<()> {
        let pid = self.child.id().context("the process has exited already")?;
        let status = tokio::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .await?;
        anyhow::ensure!(status.success(), "kill -{signal} {pid}: {status}");
        self.child.wait().await?;
        Ok(())
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
                    // The kustomize controller watches locked workloads (by label).
                    rule("apps", &["deployments", "statefulsets", "daemonsets"]),
                    rule("batch", &["cronjobs"]),
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

/// The holder of the source controller's Lease in `ns`, if any.
async fn leader(client: &kube::Client, ns: &str) -> Result<Option<String>, String> {
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(client.clone(), ns);
    Ok(leases
        .get_opt("weir-source-leader-election")
        .await
        .map_err(|e| e.to_string())?
        .and_then(|l| l.spec?.holder_identity)
        .filter(|h| !h.is_empty()))
}

/// Waits until the replica named `pod` holds the source controller's Lease, at most `within`.
async fn wait_leader(
    client: &kube::Client,
    ns: &str,
    pod: &str,
    within: std::time::Duration,
) -> Result<()> {
    weir_e2e::wait_until_within(&format!("{pod} to lead"), within, || async move {
        match leader(client, ns).await? {
            Some(holder) if holder.starts_with(&format!("{pod}_")) => Ok(()),
            other => Err(format!("holder: {other:?}")),
        }
    })
    .await?;
    Ok(())
}

/// The number after `name ` in a `/metrics` page.
fn counter(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} "))?.trim().parse().ok())
}

/// Creates a GitRepository `name` of `url` and waits until it is Ready.
async fn git_repository_ready(
    client: &kube::Client,
    ns: &str,
    name: &str,
    url: &str,
) -> Result<()> {
    let repo = json!({
        "apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
        "metadata": {"name": name},
        "spec": {"url": url, "interval": "1h", "ref": {"branch": "main"}},
    });
    create_all(client, ns, &[repo]).await?;
    let repos: kube::Api<weir_api::GitRepository> = kube::Api::namespaced(client.clone(), ns);
    weir_e2e::wait_ready(&repos, name, "True", None).await?;
    Ok(())
}

/// `weir controllers` flags: the source controller only, leader-elected in `ns`.
fn election_flags(ns: &str, lease: &str, renew: &str) -> Vec<String> {
    [
        "--controllers",
        "source",
        "--enable-leader-election",
        "--leader-election-namespace",
        ns,
        "--leader-election-lease-duration",
        lease,
        "--leader-election-renew-deadline",
        renew,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Two replicas with leader election: one holds the Lease and reconciles, the other stands by
/// (ready, reconciling nothing); killed, the leader is replaced once its Lease expires; stopped
/// with SIGTERM, it gives the Lease up, and the standby takes over long before it would expire.
#[tokio::test]
async fn replicas_elect_one_leader_and_a_standby_takes_over_when_it_goes() -> Result<()> {
    let harness = Harness::get().await?;
    let ns = harness.namespace().await?;
    let ns = ns.name();
    let client = harness.client()?;
    let git = app_repo(harness)?;
    // A short Lease, so a killed leader is replaced soon.
    let flags = election_flags(ns, "4s", "3s");
    let short: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut a = WeirProcess::start_with(harness, ns, None, &short, &[("POD_NAME", "replica-a")])?;
    wait_leader(&client, ns, "replica-a", weir_e2e::DEFAULT_DEADLINE)
        .await
        .with_context(|| a.log())?;
    let b = WeirProcess::start_with(harness, ns, None, &short, &[("POD_NAME", "replica-b")])?;
    assert_eq!(
        b.wait_ok("/readyz").await?,
        "standby: waiting for leadership"
    );
    a.wait_ok("/readyz").await?;
    git_repository_ready(&client, ns, "first", &git.http_url())
        .await
        .with_context(|| a.log())?;
    let standby = b.get("/metrics").await.map_err(anyhow::Error::msg)?.1;
    assert_eq!(
        counter(&standby, "weir_source_reconciles_total"),
        None,
        "a standby runs no controller:\n{standby}"
    );
    assert_eq!(
        leader(&client, ns)
            .await
            .map_err(anyhow::Error::msg)?
            .map(|h| h.starts_with("replica-a_")),
        Some(true)
    );

    // Killed: no release; the standby takes over once the Lease expires, and reconciles.
    a.signal("KILL").await?;
    wait_leader(&client, ns, "replica-b", weir_e2e::DEFAULT_DEADLINE)
        .await
        .with_context(|| b.log())?;
    git_repository_ready(&client, ns, "second", &git.http_url())
        .await
        .with_context(|| b.log())?;
    let text = b.wait_ok("/metrics").await?;
    assert!(
        counter(&text, "weir_source_reconciles_total").is_some_and(|n| n > 0),
        "{text}"
    );
    drop(b);

    // A long Lease now: a standby could not take over within a minute unless it is released.
    let ns2 = harness.namespace().await?;
    let ns2 = ns2.name();
    let flags = election_flags(ns2, "300s", "290s");
    let long: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut c = WeirProcess::start_with(harness, ns2, None, &long, &[("POD_NAME", "replica-c")])?;
    wait_leader(&client, ns2, "replica-c", weir_e2e::DEFAULT_DEADLINE)
        .await
        .with_context(|| c.log())?;
    let d = WeirProcess::start_with(harness, ns2, None, &long, &[("POD_NAME", "replica-d")])?;
    d.wait_ok("/readyz").await?;
    c.signal("TERM").await?;
    wait_leader(
        &client,
        ns2,
        "replica-d",
        std::time::Duration::from_secs(60),
    )
    .await
    .with_context(|| format!("{}\n{}", c.log(), d.log()))?;
    Ok(())
}
