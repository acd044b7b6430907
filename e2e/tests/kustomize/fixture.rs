//! The source and kustomize controllers under test, in-process and scoped to their own namespace,
//! and the helpers every Kustomization test uses.

use std::collections::BTreeMap;

use anyhow::Result;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, PostParams},
};
use serde_json::{Value, json};
use weir_api::{Kustomization, condition::find_condition, manifest, types};
use weir_e2e::{
    ControllerConfigs, GitRepo, Harness, TestNamespace, Watches, wait_gone, wait_until,
};

/// A namespace with its own source and kustomize controllers watching only it, and one git
/// repository with a GitRepository pointing at it.
pub(crate) struct Fixture {
    pub(crate) client: Client,
    pub(crate) ns: TestNamespace,
    pub(crate) repo: GitRepo,
    pub(crate) ks: Api<Kustomization>,
    pub(crate) _source: weir_source::Handle,
    pub(crate) kustomize: weir_kustomize::Handle,
    pub(crate) _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl Fixture {
    pub(crate) async fn start(files: &[(&str, &str)]) -> Result<Self> {
        let kustomize = Harness::get().await?.tool("kustomize");
        Self::start_with_kustomize(files, kustomize).await
    }

    /// A fixture whose kustomize controller runs the `kustomize` binary at `kustomize_path`.
    pub(crate) async fn start_with_kustomize(
        files: &[(&str, &str)],
        kustomize_path: std::path::PathBuf,
    ) -> Result<Self> {
        Self::start_with(
            files,
            kustomize_path,
            weir_kustomize::Lockdown::default(),
            weir_kustomize::FeatureGates::default(),
        )
        .await
    }

    /// A fixture whose kustomize controller runs with Flux's `--feature-gates` `gates`.
    pub(crate) async fn start_with_gates(
        files: &[(&str, &str)],
        gates: weir_kustomize::FeatureGates,
    ) -> Result<Self> {
        let kustomize = Harness::get().await?.tool("kustomize");
        Self::start_with(files, kustomize, weir_kustomize::Lockdown::default(), gates).await
    }

    /// A fixture whose kustomize controller runs with Flux's multi-tenancy `lockdown` flags.
    pub(crate) async fn start_locked_down(
        files: &[(&str, &str)],
        lockdown: weir_kustomize::Lockdown,
    ) -> Result<Self> {
        let kustomize = Harness::get().await?.tool("kustomize");
        Self::start_with(
            files,
            kustomize,
            lockdown,
            weir_kustomize::FeatureGates::default(),
        )
        .await
    }

    pub(crate) async fn start_with(
        files: &[(&str, &str)],
        kustomize_path: std::path::PathBuf,
        lockdown: weir_kustomize::Lockdown,
        feature_gates: weir_kustomize::FeatureGates,
    ) -> Result<Self> {
        let harness = Harness::get().await?;
        let ns = harness.namespace().await?;
        let client = harness.client()?;
        let storage = tempfile::tempdir()?;
        let cache = tempfile::tempdir()?;
        // One watch of GitRepository and of Kustomization for both, as in `weir controllers`.
        let configs = ControllerConfigs::new(ns.name()).sharing(&Watches::new(client.clone()));
        let source =
            weir_source::start(client.clone(), configs.source(storage.path()), false).await?;
        let kustomize = weir_kustomize::start(
            harness.kube_config().clone(),
            weir_kustomize::Config {
                // Long, so dependsOn tests prove that a dependency becoming Ready starts its
                // dependents at once.
                dependency_requeue: std::time::Duration::from_secs(600),
                lockdown,
                feature_gates,
                ..configs.kustomize(kustomize_path, cache.path())
            },
            false,
        )
        .await?;
        // Manifests name their namespace, as Flux requires; `NAMESPACE` stands for the test's.
        let files: Vec<(&str, String)> = files
            .iter()
            .map(|(path, content)| (*path, content.replace("NAMESPACE", ns.name())))
            .collect();
        let files: BTreeMap<&str, &str> = files.iter().map(|(p, c)| (*p, c.as_str())).collect();
        let repo = harness.git().create_repo("app", &files)?;
        let git: Api<weir_api::GitRepository> = Api::namespaced(client.clone(), ns.name());
        let source_obj: weir_api::GitRepository = manifest::from_value(json!({
            "apiVersion": "source.toolkit.fluxcd.io/v1",
            "kind": "GitRepository",
            "metadata": { "name": "app", "namespace": ns.name() },
            "spec": { "url": repo.http_url(), "interval": "2s", "ref": { "branch": "main" } },
        }))?;
        git.create(&PostParams::default(), &source_obj).await?;
        let ks = Api::namespaced(client.clone(), ns.name());
        Ok(Self {
            client,
            ns,
            repo,
            ks,
            _source: source,
            kustomize,
            _dirs: (storage, cache),
        })
    }

    pub(crate) fn ns(&self) -> &str {
        self.ns.name()
    }

    /// A manifest with `NAMESPACE` replaced by the test's namespace.
    pub(crate) fn yaml(&self, manifest: &str) -> String {
        manifest.replace("NAMESPACE", self.ns())
    }

    pub(crate) async fn create_ks(&self, name: &str, spec: Value) -> Result<()> {
        let mut full = json!({
            "sourceRef": { "kind": "GitRepository", "name": "app" },
            "interval": "1m",
            "retryInterval": "2s",
            "timeout": "30s",
            "prune": true,
        });
        if let (Some(full), Some(extra)) = (full.as_object_mut(), spec.as_object()) {
            full.extend(extra.clone());
        }
        let ks: Kustomization = manifest::from_value(json!({
            "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
            "kind": "Kustomization",
            "metadata": { "name": name, "namespace": self.ns() },
            "spec": full,
        }))?;
        self.ks.create(&PostParams::default(), &ks).await?;
        Ok(())
    }

    /// Waits until the Kustomization's Ready condition has `status` and the `check` holds.
    pub(crate) async fn wait_ks(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&Kustomization) -> bool,
    ) -> Result<Kustomization> {
        let api = self.ks.clone();
        let check = &check;
        Ok(wait_until(&format!("Kustomization {name}: {what}"), || {
            let api = api.clone();
            async move {
                let ks = api.get(name).await.map_err(|e| e.to_string())?;
                if check(&ks) {
                    Ok(ks)
                } else {
                    Err(format!("status: {:?}", ks.status))
                }
            }
        })
        .await?)
    }

    /// Waits for Ready=True with `revision` applied.
    pub(crate) async fn wait_applied(&self, name: &str, commit: &str) -> Result<Kustomization> {
        self.wait_ks(name, &format!("Ready with {commit} applied"), |ks| {
            ready(ks).is_some_and(|(s, _, _)| s == "True")
                && applied(ks).is_some_and(|r| r.ends_with(commit))
                && ks.status.as_ref().and_then(|s| s.observed_generation) == ks.metadata.generation
        })
        .await
    }

    /// Waits for Ready=False with `reason` after `commit` was attempted.
    pub(crate) async fn wait_failed(
        &self,
        name: &str,
        commit: Option<&str>,
        reason: &str,
    ) -> Result<Kustomization> {
        self.wait_ks(name, &format!("Ready=False {reason}"), |ks| {
            ready(ks).is_some_and(|(s, r, _)| s == "False" && r == reason)
                && commit.is_none_or(|c| {
                    ks.status
                        .as_ref()
                        .and_then(|s| s.last_attempted_revision.as_deref())
                        .is_some_and(|r| r.ends_with(c))
                })
        })
        .await
    }

    pub(crate) async fn create_secret(&self, name: &str, string_data: Value) -> Result<()> {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": { "name": name }, "stringData": string_data
        }))?;
        Api::<Secret>::namespaced(self.client.clone(), self.ns())
            .create(&PostParams::default(), &secret)
            .await?;
        Ok(())
    }

    /// The ConfigMaps of the test's namespace.
    pub(crate) fn config_maps(&self) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), self.ns())
    }

    pub(crate) async fn config_map(&self, name: &str) -> Result<Option<ConfigMap>> {
        Ok(self.config_maps().get_opt(name).await?)
    }

    /// Deletes the Kustomizations while the controllers still run, so their finalizer is
    /// handled and the namespace can go.
    pub(crate) async fn teardown(&self) -> Result<()> {
        for ks in self.ks.list(&ListParams::default()).await? {
            let name = kube::ResourceExt::name_any(&ks);
            // One a test deleted may finish going between the list and the delete.
            match self.ks.delete(&name, &DeleteParams::default()).await {
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                other => drop(other?),
            }
        }
        let api = self.ks.clone();
        wait_until("Kustomizations to be deleted", || {
            let api = api.clone();
            async move {
                let left = api
                    .list(&ListParams::default())
                    .await
                    .map_err(|e| e.to_string())?;
                if left.items.is_empty() {
                    Ok(())
                } else {
                    Err(format!("{} left", left.items.len()))
                }
            }
        })
        .await?;
        Ok(())
    }
}

pub(crate) fn ready(ks: &Kustomization) -> Option<(String, String, String)> {
    let status = ks.status.as_ref()?;
    find_condition(&status.conditions, types::READY).map(|c| {
        (
            format!("{:?}", c.status),
            c.reason.clone(),
            c.message.clone(),
        )
    })
}

pub(crate) fn applied(ks: &Kustomization) -> Option<&str> {
    ks.status.as_ref()?.last_applied_revision.as_deref()
}

pub(crate) fn message(ks: &Kustomization) -> String {
    ready(ks).map(|(_, _, m)| m).unwrap_or_default()
}

pub(crate) fn config_map_yaml(name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: NAMESPACE\ndata:\n  key: \"{value}\"\n"
    )
}

pub(crate) const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: NAMESPACE
spec:
  replicas: 1
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: registry.invalid/web:1.0.0
";

impl Fixture {
    /// Deletes the Kustomization `name` and waits until it is gone.
    pub(crate) async fn delete_ks(&self, name: &str) -> Result<()> {
        self.ks.delete(name, &DeleteParams::default()).await?;
        wait_gone(&self.ks, name).await?;
        Ok(())
    }
}
