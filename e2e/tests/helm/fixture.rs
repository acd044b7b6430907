//! The source and helm controllers under test, in-process and scoped to their own namespace,
//! a HelmRepository `charts` of the harness's chart repository, and helpers every HelmRelease
//! test uses — among them the real `helm` CLI, run as a person would against the same cluster.

use std::process::Command;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use weir_api::{HelmChart, HelmRelease, HelmRepository, condition::find_condition, manifest};
use weir_e2e::{Chart, ControllerConfigs, Harness, TestNamespace, Watches, wait_until};

/// A namespace with its own source and helm controllers watching only it.
pub(crate) struct Fixture {
    pub(crate) client: Client,
    pub(crate) ns: TestNamespace,
    pub(crate) api: Api<HelmRelease>,
    pub(crate) _source: weir_source::Handle,
    pub(crate) helm: Option<weir_helm::Handle>,
    pub(crate) helm_config: weir_helm::Config,
    /// The kustomize controller, when the test asked for one ([`Fixture::with_kustomize`]).
    pub(crate) kustomize: Option<weir_kustomize::Handle>,
    pub(crate) watches: Watches,
    pub(crate) dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl Fixture {
    pub(crate) async fn start() -> Result<Self> {
        let harness = Harness::get().await?;
        let ns = harness.namespace().await?;
        let client = harness.client()?;
        let storage = tempfile::tempdir()?;
        let cache = tempfile::tempdir()?;
        let watches = Watches::new(client.clone());
        let configs = ControllerConfigs::new(ns.name()).sharing(&watches);
        let source =
            weir_source::start(client.clone(), configs.source(storage.path()), false).await?;
        let helm_config = weir_helm::Config {
            // Long, so dependsOn tests prove that a dependency becoming Ready starts its
            // dependents at once.
            dependency_requeue: std::time::Duration::from_secs(600),
            post_renderer: Some(weir_helm::PostRendererConfig {
                weir_binary: weir_binary(),
                kustomize: harness.tool("kustomize"),
            }),
            ..configs.helm(
                harness.tool("helm"),
                harness.kubeconfig_path(),
                cache.path(),
            )
        };
        let helm = weir_helm::start(client.clone(), helm_config.clone(), false).await?;
        let repo: HelmRepository = manifest::from_value(json!({
            "apiVersion": "source.toolkit.fluxcd.io/v1",
            "kind": "HelmRepository",
            "metadata": { "name": "charts", "namespace": ns.name() },
            "spec": { "url": harness.charts().url(), "interval": "10m" },
        }))?;
        Api::<HelmRepository>::namespaced(client.clone(), ns.name())
            .create(&PostParams::default(), &repo)
            .await?;
        let api = Api::namespaced(client.clone(), ns.name());
        Ok(Self {
            client,
            ns,
            api,
            _source: source,
            helm: Some(helm),
            helm_config,
            kustomize: None,
            watches,
            dirs: (storage, cache),
        })
    }

    /// Also runs a kustomize controller (on the same watches, as in `weir controllers`), and a
    /// GitRepository `app` of a repository holding `files`.
    pub(crate) async fn with_kustomize(mut self, files: &[(&str, &str)]) -> Result<Self> {
        let harness = Harness::get().await?;
        let configs = ControllerConfigs::new(self.ns.name()).sharing(&self.watches);
        let cache = self.dirs.1.path().join("kustomize");
        let config = weir_kustomize::Config {
            dependency_requeue: std::time::Duration::from_secs(600),
            ..configs.kustomize(harness.tool("kustomize"), &cache)
        };
        self.kustomize =
            Some(weir_kustomize::start(harness.kube_config().clone(), config, false).await?);
        let files: Vec<(&str, String)> = files
            .iter()
            .map(|(path, content)| (*path, content.replace("NAMESPACE", self.ns.name())))
            .collect();
        let files: std::collections::BTreeMap<&str, &str> =
            files.iter().map(|(p, c)| (*p, c.as_str())).collect();
        let repo = harness.git().create_repo("app", &files)?;
        let source: weir_api::GitRepository = manifest::from_value(json!({
            "apiVersion": "source.toolkit.fluxcd.io/v1",
            "kind": "GitRepository",
            "metadata": { "name": "app", "namespace": self.ns.name() },
            "spec": { "url": repo.http_url(), "interval": "10m", "ref": { "branch": "main" } },
        }))?;
        Api::<weir_api::GitRepository>::namespaced(self.client.clone(), self.ns.name())
            .create(&PostParams::default(), &source)
            .await?;
        Ok(self)
    }

    /// Creates a Kustomization `name` of the `app` GitRepository with `extra` merged into its
    /// spec.
    pub(crate) async fn create_ks(&self, name: &str, extra: Value) -> Result<()> {
        let mut spec = json!({
            "interval": "10m",
            "prune": true,
            "sourceRef": { "kind": "GitRepository", "name": "app" },
        });
        merge(&mut spec, &extra);
        let ks: weir_api::Kustomization = manifest::from_value(json!({
            "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
            "kind": "Kustomization",
            "metadata": { "name": name, "namespace": self.ns.name() },
            "spec": spec,
        }))?;
        Api::<weir_api::Kustomization>::namespaced(self.client.clone(), self.ns.name())
            .create(&PostParams::default(), &ks)
            .await?;
        Ok(())
    }

    /// Stops the helm controller.
    pub(crate) fn stop_helm(&mut self) {
        if let Some(helm) = self.helm.take() {
            helm.abort();
        }
    }

    /// Starts the helm controller again, as a restarted process would.
    pub(crate) async fn start_helm(&mut self) -> Result<()> {
        self.stop_helm();
        let mut config = self.helm_config.clone();
        // Its own watches, as a new process has.
        config.watches = None;
        self.helm = Some(weir_helm::start(self.client.clone(), config, false).await?);
        Ok(())
    }

    /// Runs a person's `helm upgrade` of `release` to a Deployment that never becomes ready,
    /// and SIGKILLs it while it waits: the revision it stored stays `pending-upgrade`.
    pub(crate) async fn kill_helm_upgrade_midway(&self, release: &str, chart: &str) -> Result<()> {
        let harness = Harness::get().await?;
        let home = tempfile::tempdir()?;
        let mut child = tokio::process::Command::new(harness.tool("helm"))
            .args(["upgrade", release, chart, "--repo", harness.charts().url()])
            .args(["--namespace", self.ns.name(), "--wait", "--timeout", "5m"])
            .args([
                "--set",
                "replicaCount=1",
                "--set-json",
                r#"nodeSelector={"weir.dev/none":"x"}"#,
            ])
            .arg("--kubeconfig")
            .arg(harness.kubeconfig_path())
            .env("HELM_CONFIG_HOME", home.path().join("config"))
            .env("HELM_CACHE_HOME", home.path().join("cache"))
            .env("HELM_DATA_HOME", home.path().join("data"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("running helm upgrade")?;
        let waited = wait_until(
            "helm upgrade to store a pending-upgrade revision",
            || async {
                let history = self
                    .helm_history(release)
                    .await
                    .map_err(|e| e.to_string())?;
                match history.last() {
                    Some((_, status, _)) if status == "pending-upgrade" => Ok(()),
                    other => Err(format!("latest is {other:?}")),
                }
            },
        )
        .await;
        // SIGKILL: Helm gets no chance to record anything.
        child.start_kill()?;
        child.wait().await?;
        waited?;
        Ok(())
    }

    /// Publishes `chart` to the harness's chart repository and asks the `charts`
    /// HelmRepository to read the index again.
    pub(crate) async fn publish(&self, chart: &Chart) -> Result<()> {
        Harness::get().await?.charts().publish(chart)?;
        let repos: Api<HelmRepository> = Api::namespaced(self.client.clone(), self.ns.name());
        let token = format!("{}-{}", chart.name(), chart.version());
        let patch =
            json!({ "metadata": { "annotations": { "reconcile.fluxcd.io/requestedAt": token } } });
        repos
            .patch("charts", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        wait_until(&format!("HelmRepository charts to handle {token}"), || {
            let repos = repos.clone();
            let token = token.clone();
            async move {
                let repo = repos.get("charts").await.map_err(|e| e.to_string())?;
                let status = repo.status.unwrap_or_default();
                if status.last_handled_reconcile_at.as_deref() == Some(token.as_str()) {
                    Ok(())
                } else {
                    Err(format!(
                        "last handled {:?}",
                        status.last_handled_reconcile_at
                    ))
                }
            }
        })
        .await?;
        Ok(())
    }

    /// Waits until the HelmChart `name` holds the chart at `revision`, asking it to check its
    /// source meanwhile (it checks on its interval otherwise).
    pub(crate) async fn wait_chart_revision(&self, name: &str, revision: &str) -> Result<()> {
        let charts: Api<HelmChart> = Api::namespaced(self.client.clone(), self.ns.name());
        let mut asked = 0_u32;
        wait_until(&format!("HelmChart {name} to pull {revision}"), || {
            asked += 1;
            let token = format!("{revision}-{asked}");
            let charts = charts.clone();
            async move {
                let chart = charts.get(name).await.map_err(|e| e.to_string())?;
                let pulled = chart.status.and_then(|s| s.artifact).map(|a| a.revision);
                if pulled.as_deref() == Some(revision) {
                    return Ok(());
                }
                let patch = json!({ "metadata": { "annotations": {
                    "reconcile.fluxcd.io/requestedAt": token,
                } } });
                charts
                    .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(|e| e.to_string())?;
                Err(format!("revision {pulled:?}"))
            }
        })
        .await?;
        Ok(())
    }

    /// A HelmRelease `name` of chart `chart` in `version` from the `charts` HelmRepository,
    /// with `extra` merged into its spec.
    pub(crate) fn release(
        &self,
        name: &str,
        chart: &str,
        version: &str,
        extra: &Value,
    ) -> Result<HelmRelease> {
        let mut spec = json!({
            "interval": "10m",
            "chart": { "spec": {
                "chart": chart,
                "version": version,
                "sourceRef": { "kind": "HelmRepository", "name": "charts" },
            } },
        });
        merge(&mut spec, extra);
        Ok(manifest::from_value(json!({
            "apiVersion": "helm.toolkit.fluxcd.io/v2",
            "kind": "HelmRelease",
            "metadata": { "name": name, "namespace": self.ns.name() },
            "spec": spec,
        }))?)
    }

    pub(crate) async fn create(
        &self,
        name: &str,
        chart: &str,
        version: &str,
        extra: Value,
    ) -> Result<HelmRelease> {
        let hr = self.release(name, chart, version, &extra)?;
        Ok(self.api.create(&PostParams::default(), &hr).await?)
    }

    /// Merges `patch` into the HelmRelease `name`.
    pub(crate) async fn patch(&self, name: &str, patch: Value) -> Result<HelmRelease> {
        Ok(self
            .api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?)
    }

    /// Asks for a reconcile with the token `token`, and waits until it is handled; returns the
    /// object then.
    pub(crate) async fn reconcile(&self, name: &str, token: &str) -> Result<HelmRelease> {
        self.patch(
            name,
            json!({ "metadata": { "annotations": { "reconcile.fluxcd.io/requestedAt": token } } }),
        )
        .await?;
        let api = self.api.clone();
        Ok(
            wait_until(&format!("HelmRelease {name} to handle {token}"), || {
                let api = api.clone();
                async move {
                    let hr = api.get(name).await.map_err(|e| e.to_string())?;
                    let handled = hr
                        .status
                        .as_ref()
                        .and_then(|s| s.last_handled_reconcile_at.clone());
                    if handled.as_deref() == Some(token) {
                        Ok(hr)
                    } else {
                        Err(format!("last handled {handled:?}"))
                    }
                }
            })
            .await?,
        )
    }

    pub(crate) async fn wait_ready(
        &self,
        name: &str,
        status: &str,
        reason: Option<&str>,
    ) -> Result<HelmRelease> {
        Ok(weir_e2e::wait_ready(&self.api, name, status, reason).await?)
    }

    /// Waits until condition `type_` of `name` has `status` and `reason`.
    pub(crate) async fn wait_condition(
        &self,
        name: &str,
        type_: &str,
        status: &str,
        reason: &str,
    ) -> Result<HelmRelease> {
        let api = self.api.clone();
        Ok(wait_until(
            &format!("HelmRelease {name} {type_}={status} ({reason})"),
            || {
                let api = api.clone();
                async move {
                    let hr = api.get(name).await.map_err(|e| e.to_string())?;
                    let conditions = hr
                        .status
                        .as_ref()
                        .map(|s| s.conditions.clone())
                        .unwrap_or_default();
                    match find_condition(&conditions, type_) {
                        Some(c) if format!("{:?}", c.status) == status && c.reason == reason => {
                            Ok(hr)
                        }
                        other => Err(format!("{type_} is {other:?}")),
                    }
                }
            },
        )
        .await?)
    }

    /// Creates (or replaces) a Secret with `data`.
    pub(crate) async fn secret(&self, name: &str, data: &[(&str, &str)]) -> Result<()> {
        let secret: Secret = manifest::from_value(json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": { "name": name, "namespace": self.ns.name() },
            "stringData": data.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect::<serde_json::Map<_, _>>(),
        }))?;
        let api: Api<Secret> = Api::namespaced(self.client.clone(), self.ns.name());
        api.patch(
            name,
            &PatchParams::apply("weir-e2e").force(),
            &Patch::Apply(&secret),
        )
        .await?;
        Ok(())
    }

    /// The Events about the HelmRelease `name`: (type, reason, message).
    pub(crate) async fn events(&self, name: &str) -> Result<Vec<(String, String, String)>> {
        let api: Api<k8s_openapi::api::core::v1::Event> =
            Api::namespaced(self.client.clone(), self.ns.name());
        let list = api
            .list(&ListParams::default().fields(&format!(
                "involvedObject.kind=HelmRelease,involvedObject.name={name}"
            )))
            .await?;
        Ok(list
            .items
            .into_iter()
            .map(|e| {
                (
                    e.type_.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    e.message.unwrap_or_default(),
                )
            })
            .collect())
    }

    /// The names of Helm's storage Secrets of `release` in the test namespace.
    pub(crate) async fn storage_secrets(&self, release: &str) -> Result<Vec<String>> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), self.ns.name());
        let list = api
            .list(&ListParams::default().labels(&format!("owner=helm,name={release}")))
            .await?;
        let mut names: Vec<String> = list.items.iter().map(ResourceExt::name_any).collect();
        names.sort();
        Ok(names)
    }

    /// Runs the real `helm` with `args` against the harness's cluster, in the test namespace;
    /// returns its stdout.
    pub(crate) async fn helm(&self, args: &[&str]) -> Result<String> {
        let harness = Harness::get().await?;
        let home = tempfile::tempdir()?;
        let output = Command::new(harness.tool("helm"))
            .args(args)
            .args(["--namespace", self.ns.name()])
            .arg("--kubeconfig")
            .arg(harness.kubeconfig_path())
            .env("HELM_CONFIG_HOME", home.path().join("config"))
            .env("HELM_CACHE_HOME", home.path().join("cache"))
            .env("HELM_DATA_HOME", home.path().join("data"))
            .output()
            .context("running helm")?;
        if !output.status.success() {
            bail!(
                "helm {args:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8(output.stdout)?)
    }

    /// `helm history <release> -o json`: (revision, status, chart) of each revision, oldest first.
    pub(crate) async fn helm_history(&self, release: &str) -> Result<Vec<(i64, String, String)>> {
        let out = self.helm(&["history", release, "-o", "json"]).await?;
        let entries: Vec<Value> = serde_json::from_str(&out)?;
        Ok(entries
            .iter()
            .map(|e| {
                (
                    e["revision"].as_i64().unwrap_or_default(),
                    e["status"].as_str().unwrap_or_default().to_owned(),
                    e["chart"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect())
    }
}

/// The `weir` binary Helm runs as its post-renderer plugin: `WEIR_BIN` (as `make test` sets
/// it), else the workspace's debug build.
pub(crate) fn weir_binary() -> std::path::PathBuf {
    std::env::var_os("WEIR_BIN").map_or_else(
        || weir_e2e::repo_root().join("target/debug/weir"),
        std::path::PathBuf::from,
    )
}

/// Merges `patch` into `target` (objects deeply; anything else replaced).
pub(crate) fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// Flux's benchmark app as a chart: a Deployment (scaled by `replicaCount`, 0 by default), a
/// ServiceAccount and a Service, plus the harness chart's ConfigMap of `message`.
pub(crate) fn app_chart(name: &str, version: &str) -> Chart {
    Chart::new(name, version)
        .values("message: hello\nreplicaCount: 0\nnodeSelector: {}\n")
        .template(
            "serviceaccount.yaml",
            "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {{ .Release.Name }}\n",
        )
        .template(
            "service.yaml",
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {{ .Release.Name }}\nspec:\n  selector:\n    app: {{ .Release.Name }}\n  ports:\n    - port: 80\n",
        )
        .template(
            "deployment.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {{ .Release.Name }}\nspec:\n  replicas: {{ .Values.replicaCount }}\n  selector:\n    matchLabels:\n      app: {{ .Release.Name }}\n  template:\n    metadata:\n      labels:\n        app: {{ .Release.Name }}\n    spec:\n      serviceAccountName: {{ .Release.Name }}\n      nodeSelector: {{ toJson .Values.nodeSelector }}\n      containers:\n        - name: app\n          image: registry.invalid/app:1\n",
        )
}
