//! The kustomize controller against the real harness: manifests pushed to git reach the cluster
//! through a GitRepository and a Kustomization, atomically, and leave it when removed.
//!
//! Each test runs the source and kustomize controllers in-process, scoped to its own namespace.

// A test's helpers fail the test by panicking; that is their job.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{collections::BTreeMap, sync::atomic::Ordering};

use anyhow::Result;
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Secret},
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use weir_api::{
    Kustomization, condition::find_condition, kustomize::annotations, manifest, reasons, types,
};
use weir_e2e::{GitRepo, Harness, TestNamespace, wait_until};

/// A namespace with its own source and kustomize controllers watching only it, and one git
/// repository with a GitRepository pointing at it.
struct Fixture {
    client: Client,
    ns: TestNamespace,
    repo: GitRepo,
    ks: Api<Kustomization>,
    _source: weir_source::Handle,
    kustomize: weir_kustomize::Handle,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl Fixture {
    async fn start(files: &[(&str, &str)]) -> Result<Self> {
        let kustomize = Harness::get().await?.tool("kustomize");
        Self::start_with_kustomize(files, kustomize).await
    }

    /// A fixture whose kustomize controller runs the `kustomize` binary at `kustomize_path`.
    async fn start_with_kustomize(
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
    async fn start_with_gates(
        files: &[(&str, &str)],
        gates: weir_kustomize::FeatureGates,
    ) -> Result<Self> {
        let kustomize = Harness::get().await?.tool("kustomize");
        Self::start_with(files, kustomize, weir_kustomize::Lockdown::default(), gates).await
    }

    /// A fixture whose kustomize controller runs with Flux's multi-tenancy `lockdown` flags.
    async fn start_locked_down(
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

    async fn start_with(
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
        let source = weir_source::start(
            client.clone(),
            weir_source::Config {
                storage_path: storage.path().to_path_buf(),
                storage_addr: "127.0.0.1:0".parse()?,
                storage_adv_addr: None,
                artifact_retention: 2,
                namespace: Some(ns.name().to_owned()),
                concurrency: 4,
            },
            false,
        )
        .await?;
        let kustomize = weir_kustomize::start(
            harness.kube_config().clone(),
            weir_kustomize::Config {
                namespace: Some(ns.name().to_owned()),
                concurrency: 4,
                kustomize_path,
                cache_dir: cache.path().to_path_buf(),
                // Long, so dependsOn tests prove that a dependency becoming Ready starts its
                // dependents at once.
                dependency_requeue: std::time::Duration::from_secs(600),
                artifact_limits: weir_kustomize::fetch::Limits::default(),
                lockdown,
                feature_gates,
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

    fn ns(&self) -> &str {
        self.ns.name()
    }

    /// A manifest with `NAMESPACE` replaced by the test's namespace.
    fn yaml(&self, manifest: &str) -> String {
        manifest.replace("NAMESPACE", self.ns())
    }

    async fn create_ks(&self, name: &str, spec: Value) -> Result<()> {
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
    async fn wait_ks(
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
    async fn wait_applied(&self, name: &str, commit: &str) -> Result<Kustomization> {
        self.wait_ks(name, &format!("Ready with {commit} applied"), |ks| {
            ready(ks).is_some_and(|(s, _, _)| s == "True")
                && applied(ks).is_some_and(|r| r.ends_with(commit))
                && ks.status.as_ref().and_then(|s| s.observed_generation) == ks.metadata.generation
        })
        .await
    }

    /// Waits for Ready=False with `reason` after `commit` was attempted.
    async fn wait_failed(
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

    async fn create_secret(&self, name: &str, string_data: Value) -> Result<()> {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": { "name": name }, "stringData": string_data
        }))?;
        Api::<Secret>::namespaced(self.client.clone(), self.ns())
            .create(&PostParams::default(), &secret)
            .await?;
        Ok(())
    }

    async fn config_map(&self, name: &str) -> Result<Option<ConfigMap>> {
        Ok(Api::<ConfigMap>::namespaced(self.client.clone(), self.ns())
            .get_opt(name)
            .await?)
    }

    /// Deletes the Kustomizations while the controllers still run, so their finalizer is
    /// handled and the namespace can go.
    async fn teardown(&self) -> Result<()> {
        for ks in self.ks.list(&ListParams::default()).await? {
            let name = kube::ResourceExt::name_any(&ks);
            self.ks.delete(&name, &DeleteParams::default()).await?;
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

fn ready(ks: &Kustomization) -> Option<(String, String, String)> {
    let status = ks.status.as_ref()?;
    find_condition(&status.conditions, types::READY).map(|c| {
        (
            format!("{:?}", c.status),
            c.reason.clone(),
            c.message.clone(),
        )
    })
}

fn applied(ks: &Kustomization) -> Option<&str> {
    ks.status.as_ref()?.last_applied_revision.as_deref()
}

fn message(ks: &Kustomization) -> String {
    ready(ks).map(|(_, _, m)| m).unwrap_or_default()
}

fn config_map_yaml(name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: NAMESPACE\ndata:\n  key: \"{value}\"\n"
    )
}

const DEPLOYMENT: &str = "apiVersion: apps/v1
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

#[tokio::test]
async fn pushed_manifests_are_applied_with_owner_labels_then_changed_and_pruned() -> Result<()> {
    let cm = config_map_yaml("settings", "one");
    let old = config_map_yaml("old", "x");
    let f = Fixture::start(&[
        ("apps/settings.yaml", &cm),
        ("apps/nested/old.yaml", &old),
        ("apps/deploy.yaml", DEPLOYMENT),
    ])
    .await?;
    f.create_ks("app", json!({ "path": "./apps" })).await?;
    let head = f.repo.head()?;
    let ks = f.wait_applied("app", &head).await?;

    let settings = f.config_map("settings").await?.expect("settings applied");
    let labels = settings.metadata.labels.unwrap_or_default();
    assert_eq!(
        labels.get(annotations::NAME_LABEL).map(String::as_str),
        Some("app")
    );
    assert_eq!(
        labels.get(annotations::NAMESPACE_LABEL).map(String::as_str),
        Some(f.ns())
    );
    let deployment = Api::<Deployment>::namespaced(f.client.clone(), f.ns())
        .get("web")
        .await?;
    assert!(
        deployment
            .metadata
            .managed_fields
            .unwrap_or_default()
            .iter()
            .any(|m| m.manager.as_deref() == Some("kustomize-controller"))
    );
    let ids: Vec<String> = ks
        .status
        .unwrap()
        .inventory
        .unwrap()
        .entries
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert!(
        ids.contains(&format!("{}_web_apps_Deployment", f.ns())),
        "{ids:?}"
    );
    assert!(
        ids.contains(&format!("{}_old__ConfigMap", f.ns())),
        "{ids:?}"
    );

    let second = f
        .repo
        .change()
        .write(
            "apps/settings.yaml",
            &f.yaml(&config_map_yaml("settings", "two")),
        )
        .delete("apps/nested/old.yaml")
        .commit("change settings, remove old")?;
    f.wait_applied("app", &second).await?;
    let settings = f.config_map("settings").await?.expect("settings kept");
    assert_eq!(settings.data.unwrap()["key"], "two");
    wait_until("ConfigMap old to be pruned", || async {
        match f.config_map("old").await {
            Ok(None) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    f.teardown().await
}

#[tokio::test]
async fn bad_commits_apply_nothing_and_keep_the_last_good_revision_until_fixed() -> Result<()> {
    let f = Fixture::start(&[("apps/a.yaml", &config_map_yaml("a", "1"))]).await?;
    f.create_ks("app", json!({ "path": "./apps" })).await?;
    let good = f.repo.head()?;
    f.wait_applied("app", &good).await?;

    // Invalid YAML: the build fails and names the file.
    let bad_yaml = f
        .repo
        .change()
        .write("apps/a.yaml", &f.yaml(&config_map_yaml("a", "2")))
        .write("apps/broken.yaml", "kind: [unclosed\n")
        .commit("broken yaml")?;
    let ks = f
        .wait_failed("app", Some(&bad_yaml), reasons::BUILD_FAILED)
        .await?;
    assert!(
        message(&ks).contains("apps/broken.yaml"),
        "{}",
        message(&ks)
    );
    assert!(applied(&ks).unwrap().ends_with(&good));
    assert_eq!(
        f.config_map("a").await?.unwrap().data.unwrap()["key"],
        "1",
        "nothing applied"
    );

    // An unknown field: the dry run fails, naming object, file and the server's message; the
    // valid new object in the same commit is not applied either.
    let unknown = f
        .repo
        .change()
        .delete("apps/broken.yaml")
        .write("apps/new.yaml", &f.yaml(&config_map_yaml("new", "n")))
        .write(
            "apps/bad.yaml",
            &f.yaml("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bad\n  namespace: NAMESPACE\nspec:\n  oops: true\n"),
        )
        .commit("unknown field")?;
    let ks = f
        .wait_failed("app", Some(&unknown), reasons::RECONCILIATION_FAILED)
        .await?;
    let m = message(&ks);
    assert!(
        m.contains("ConfigMap/")
            && m.contains("/bad")
            && m.contains("apps/bad.yaml")
            && m.contains(".spec: field not declared in schema"),
        "{m}"
    );
    assert!(f.config_map("new").await?.is_none(), "nothing applied");
    assert_eq!(f.config_map("a").await?.unwrap().data.unwrap()["key"], "1");
    assert!(applied(&ks).unwrap().ends_with(&good));

    // A kind without a CRD.
    let missing = f
        .repo
        .change()
        .delete("apps/bad.yaml")
        .write(
            "apps/widget.yaml",
            "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\n",
        )
        .commit("missing CRD")?;
    let ks = f
        .wait_failed("app", Some(&missing), reasons::RECONCILIATION_FAILED)
        .await?;
    let m = message(&ks);
    assert!(
        m.contains("Widget/w") && m.contains("apps/widget.yaml"),
        "{m}"
    );
    assert!(f.config_map("new").await?.is_none(), "nothing applied");

    // A namespaced object that names no namespace, as Flux refuses it.
    let no_namespace = f
        .repo
        .change()
        .delete("apps/widget.yaml")
        .write(
            "apps/loose.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: loose\n",
        )
        .commit("no namespace")?;
    let ks = f
        .wait_failed("app", Some(&no_namespace), reasons::RECONCILIATION_FAILED)
        .await?;
    assert!(
        message(&ks).contains("ConfigMap/loose (apps/loose.yaml): namespace not specified"),
        "{}",
        message(&ks)
    );
    assert!(f.config_map("new").await?.is_none(), "nothing applied");

    // Recovery.
    let fixed = f.repo.change().delete("apps/loose.yaml").commit("fix")?;
    f.wait_applied("app", &fixed).await?;
    assert_eq!(f.config_map("a").await?.unwrap().data.unwrap()["key"], "2");
    assert!(f.config_map("new").await?.is_some());
    f.teardown().await
}

#[tokio::test]
async fn unchanged_reconciles_write_nothing_and_manual_edits_are_reverted() -> Result<()> {
    // A Secret written with stringData: the server stores it as data, and that is no change.
    let secret = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\n  namespace: NAMESPACE\nstringData:\n  password: hunter2\n";
    let f = Fixture::start(&[
        ("apps/a.yaml", &config_map_yaml("a", "1")),
        ("apps/deploy.yaml", DEPLOYMENT),
        ("apps/secret.yaml", secret),
    ])
    .await?;
    f.create_ks("app", json!({ "path": "./apps", "interval": "3s" }))
        .await?;
    let head = f.repo.head()?;
    f.wait_applied("app", &head).await?;
    let deployments = Api::<Deployment>::namespaced(f.client.clone(), f.ns());
    let versions = || async {
        (
            f.config_map("a")
                .await
                .unwrap()
                .unwrap()
                .metadata
                .resource_version,
            deployments
                .get("web")
                .await
                .unwrap()
                .metadata
                .resource_version,
            Api::<Secret>::namespaced(f.client.clone(), f.ns())
                .get("s")
                .await
                .unwrap()
                .metadata
                .resource_version,
        )
    };
    // Let the Deployment settle (its status moves as kwok rolls it out) before comparing.
    wait_until("Deployment web to be available", || async {
        let d = deployments.get("web").await.map_err(|e| e.to_string())?;
        match d.status.and_then(|s| s.available_replicas) {
            Some(1) => Ok(()),
            other => Err(format!("available {other:?}")),
        }
    })
    .await?;
    let before = versions().await;
    let writes = || {
        let m = &f.kustomize.metrics;
        (
            m.object_writes.load(Ordering::Relaxed),
            m.status_writes.load(Ordering::Relaxed),
            m.builds.load(Ordering::Relaxed),
        )
    };
    let writes_before = writes();
    for token in ["one", "two"] {
        let patch =
            json!({ "metadata": { "annotations": { "reconcile.fluxcd.io/requestedAt": token } } });
        f.ks.patch("app", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        f.wait_ks("app", &format!("request {token} handled"), |ks| {
            ks.status
                .as_ref()
                .and_then(|s| s.last_handled_reconcile_at.as_deref())
                == Some(token)
        })
        .await?;
    }
    assert_eq!(
        versions().await,
        before,
        "a reconcile without changes wrote nothing"
    );
    let (objects, statuses, builds) = writes();
    assert_eq!(objects, writes_before.0, "no object was written");
    assert_eq!(
        builds, writes_before.2,
        "nothing new: the last build was reused"
    );
    assert_eq!(
        statuses,
        writes_before.1 + 2,
        "the only status writes record the two handled requests"
    );

    // A manual edit of an applied field is corrected at the next interval.
    let edit = json!({ "data": { "key": "edited" } });
    Api::<ConfigMap>::namespaced(f.client.clone(), f.ns())
        .patch("a", &PatchParams::default(), &Patch::Merge(&edit))
        .await?;
    wait_until("the manual edit to be reverted", || async {
        let cm = f
            .config_map("a")
            .await
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        match cm.data.unwrap_or_default().get("key").map(String::as_str) {
            Some("1") => Ok(()),
            other => Err(format!("key = {other:?}")),
        }
    })
    .await?;
    f.teardown().await
}

#[tokio::test]
async fn wait_fails_with_health_check_failed_for_a_deployment_that_never_becomes_ready()
-> Result<()> {
    let never_ready = DEPLOYMENT.replace(
        "    spec:\n      containers:",
        "    spec:\n      nodeSelector: {weir.dev/no-such-node: \"true\"}\n      containers:",
    );
    let f = Fixture::start(&[("apps/deploy.yaml", &never_ready)]).await?;
    f.create_ks(
        "app",
        json!({ "path": "./apps", "wait": true, "timeout": "8s" }),
    )
    .await?;
    // While it waits, the work in progress shows as Flux shows it, so kstatus, `kubectl wait`
    // and dependents never take the old Ready for the new revision's. (The timeout is Flux's
    // floor of 30s, whatever less is asked.)
    let head = f.repo.head()?;
    let fetching =
        format!("Fetching manifests for revision main@sha1:{head} with a timeout of 30s");
    let ks = f
        .wait_ks("app", "Reconciling=True while it waits", |ks| {
            let conditions = ks
                .status
                .as_ref()
                .map(|s| s.conditions.as_slice())
                .unwrap_or_default();
            find_condition(conditions, types::RECONCILING)
                .is_some_and(|c| c.reason == reasons::PROGRESSING && c.message == fetching)
        })
        .await?;
    let status = ks.status.as_ref().unwrap();
    let ready = find_condition(&status.conditions, types::READY).unwrap();
    assert_eq!(
        (format!("{:?}", ready.status), ready.message.as_str()),
        ("Unknown".to_owned(), "Reconciliation in progress")
    );
    assert_eq!(
        weir_api::condition::kstatus(
            &status.conditions,
            ks.metadata.generation,
            status.observed_generation
        ),
        weir_api::KStatus::InProgress
    );
    let ks = f
        .wait_failed("app", None, reasons::HEALTH_CHECK_FAILED)
        .await?;
    let m = message(&ks);
    assert!(m.contains(&format!("Deployment/{}/web", f.ns())), "{m}");
    let healthy = find_condition(&ks.status.as_ref().unwrap().conditions, types::HEALTHY).unwrap();
    assert_eq!(format!("{:?}", healthy.status), "False");
    f.teardown().await
}

/// The Widgets of `group` at v1.
fn widget_resource(group: &str) -> kube::api::ApiResource {
    kube::api::ApiResource {
        group: group.to_owned(),
        version: "v1".into(),
        api_version: format!("{group}/v1"),
        kind: "Widget".into(),
        plural: "widgets".into(),
    }
}

/// Sets a Widget's `status.phase` (what its controller would do).
async fn set_phase(api: &Api<kube::api::DynamicObject>, name: &str, phase: &str) -> Result<()> {
    let patch = json!({ "status": { "phase": phase } });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Waits until the object `name` exists.
async fn wait_exists(api: &Api<kube::api::DynamicObject>, name: &str) -> Result<()> {
    wait_until(&format!("{name} to be applied"), || async {
        api.get_opt(name)
            .await
            .map_err(|e| e.to_string())?
            .map(|_| ())
            .ok_or_else(|| "not yet".to_owned())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn health_check_exprs_decide_custom_resources_and_a_failed_one_fails_at_once() -> Result<()> {
    let group = format!("{}.weir.test", weir_e2e::unique_name("cel", 30));
    let crd = format!(
        "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.{group}
spec:
  group: {group}
  scope: Namespaced
  names: {{kind: Widget, plural: widgets, singular: widget, listKind: WidgetList}}
  versions:
  - {{name: v1, served: true, storage: true, schema: {{openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}}}}}
"
    );
    let widget = |name: &str| {
        format!(
            "apiVersion: {group}/v1\nkind: Widget\nmetadata:\n  name: {name}\n  namespace: NAMESPACE\nspec: {{size: 1}}\n"
        )
    };
    let f = Fixture::start(&[("crd/crd.yaml", &crd)]).await?;
    let head = f.repo.head()?;
    f.create_ks("crd", json!({ "path": "./crd" })).await?;
    f.wait_applied("crd", &head).await?;
    let exprs = json!([{
        "apiVersion": format!("{group}/v1"),
        "kind": "Widget",
        "inProgress": "status.phase == 'Pending'",
        "failed": "status.phase == 'Broken'",
        "current": "status.phase == 'Ready'",
    }]);
    let widgets: Api<kube::api::DynamicObject> =
        Api::namespaced_with(f.client.clone(), f.ns(), &widget_resource(&group));

    // Ready once the expression says so: Pending is in progress, Ready is current.
    let good = f
        .repo
        .change()
        .write("apps/good.yaml", &f.yaml(&widget("good")))
        .commit("a widget")?;
    f.create_ks(
        "app",
        json!({ "path": "./apps", "wait": true, "timeout": "2m", "healthCheckExprs": exprs }),
    )
    .await?;
    wait_exists(&widgets, "good").await?;
    set_phase(&widgets, "good", "Pending").await?;
    let ks = f
        .wait_ks(
            "app",
            "Reconciling=True while the widget is Pending",
            |ks| {
                let conditions = ks
                    .status
                    .as_ref()
                    .map(|s| s.conditions.as_slice())
                    .unwrap_or_default();
                find_condition(conditions, types::RECONCILING).is_some()
            },
        )
        .await?;
    assert_ne!(applied(&ks), Some(format!("main@sha1:{good}").as_str()));
    set_phase(&widgets, "good", "Ready").await?;
    f.wait_applied("app", &good).await?;

    // A failed widget fails the check at once, long before the two-minute timeout.
    let bad = f
        .repo
        .change()
        .write("apps/bad.yaml", &f.yaml(&widget("bad")))
        .commit("a broken widget")?;
    wait_exists(&widgets, "bad").await?;
    set_phase(&widgets, "bad", "Broken").await?;
    let ks = f
        .wait_failed("app", Some(&bad), reasons::HEALTH_CHECK_FAILED)
        .await?;
    let m = message(&ks);
    assert!(
        m.contains("failed early") && m.contains(&format!("Widget/{}/bad", f.ns())),
        "{m}"
    );

    // An expression that does not compile stalls the Kustomization, naming the field.
    f.ks.patch(
        "app",
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "healthCheckExprs": [{
            "apiVersion": format!("{group}/v1"), "kind": "Widget", "current": "status.phase ==",
        }] } })),
    )
    .await?;
    let ks = f
        .wait_failed("app", None, reasons::INVALID_CEL_EXPRESSION)
        .await?;
    assert!(
        message(&ks).contains("healthCheckExprs[0].current"),
        "{}",
        message(&ks)
    );
    f.teardown().await
}

#[tokio::test]
async fn a_dependent_waits_until_its_dependency_is_ready() -> Result<()> {
    let f = Fixture::start(&[
        ("base/a.yaml", &config_map_yaml("base", "1")),
        ("app/b.yaml", &config_map_yaml("app", "1")),
    ])
    .await?;
    f.create_ks(
        "app",
        json!({ "path": "./app", "dependsOn": [{ "name": "base" }] }),
    )
    .await?;
    f.wait_failed("app", None, reasons::DEPENDENCY_NOT_READY)
        .await?;
    assert!(f.config_map("app").await?.is_none());
    f.create_ks("base", json!({ "path": "./base" })).await?;
    let head = f.repo.head()?;
    f.wait_applied("app", &head).await?;
    assert!(f.config_map("base").await?.is_some());
    f.teardown().await
}

/// `dependsOn[].readyExpr` decides readiness in place of the Ready condition, reading the
/// dependency as `dep` and the dependent as `self`; a change the expression reads (a label
/// here) releases the dependent at once, and an expression that does not compile stalls.
#[tokio::test]
async fn a_ready_expr_decides_when_a_dependency_is_ready() -> Result<()> {
    let f = Fixture::start(&[
        ("base/a.yaml", &config_map_yaml("base", "1")),
        ("app/b.yaml", &config_map_yaml("app", "1")),
        ("bad/c.yaml", &config_map_yaml("bad", "1")),
    ])
    .await?;
    let head = f.repo.head()?;
    f.create_ks("base", json!({ "path": "./base" })).await?;
    f.wait_applied("base", &head).await?;
    let expr = "dep.metadata.labels.stage == self.metadata.labels.stage";
    let app = json!({ "path": "./app", "dependsOn": [{ "name": "base", "readyExpr": expr }] });
    f.create_ks("app", app).await?;
    f.ks.patch(
        "app",
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "labels": { "stage": "two" } } })),
    )
    .await?;
    // base is Ready, but the expression (a label base lacks) says it is not.
    let ks = f
        .wait_failed("app", None, reasons::DEPENDENCY_NOT_READY)
        .await?;
    assert!(
        message(&ks).contains("dependsOn[0].readyExpr"),
        "{}",
        message(&ks)
    );
    assert!(f.config_map("app").await?.is_none());
    f.ks.patch(
        "base",
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "labels": { "stage": "two" } } })),
    )
    .await?;
    f.wait_applied("app", &head).await?;
    assert!(f.config_map("app").await?.is_some());

    let bad = json!({ "path": "./bad", "dependsOn": [{ "name": "base", "readyExpr": "dep.(" }] });
    f.create_ks("bad", bad).await?;
    let ks = f
        .wait_failed("bad", None, reasons::INVALID_CEL_EXPRESSION)
        .await?;
    assert!(
        message(&ks).contains("invalid dependsOn[0].readyExpr"),
        "{}",
        message(&ks)
    );
    assert!(f.config_map("bad").await?.is_none());
    f.teardown().await
}

/// Flux's rule: a dependency on the same source must have applied the source's current
/// revision, not only be Ready. The dependency here is held (suspended) with a Ready status on
/// an older revision, as a lagging one would be, then catches up.
#[tokio::test]
async fn a_dependent_on_the_same_source_waits_for_its_dependency_to_apply_the_revision()
-> Result<()> {
    let f = Fixture::start(&[
        ("base/a.yaml", &config_map_yaml("base", "1")),
        ("app/b.yaml", &config_map_yaml("app", "1")),
    ])
    .await?;
    f.create_ks("base", json!({ "path": "./base", "suspend": true }))
        .await?;
    let head = f.repo.head()?;
    let applied = |revision: &str| {
        json!({ "status": {
            "observedGeneration": 1,
            "lastAppliedRevision": revision,
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "ReconciliationSucceeded",
                "message": format!("Applied revision: {revision}"), "observedGeneration": 1,
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }],
        }})
    };
    let older = format!("main@sha1:{}", "0".repeat(40));
    f.ks.patch_status(
        "base",
        &PatchParams::default(),
        &Patch::Merge(applied(&older)),
    )
    .await?;
    f.create_ks(
        "app",
        json!({ "path": "./app", "dependsOn": [{ "name": "base" }] }),
    )
    .await?;
    let ks = f
        .wait_failed("app", None, reasons::DEPENDENCY_NOT_READY)
        .await?;
    assert!(
        message(&ks).contains("revision is not up to date"),
        "{}",
        message(&ks)
    );
    assert!(f.config_map("app").await?.is_none());

    // The dependency applies the current revision: the dependent goes at once (its watch on
    // dependencies, not the 10 minute fallback requeue).
    f.ks.patch_status(
        "base",
        &PatchParams::default(),
        &Patch::Merge(applied(&format!("main@sha1:{head}"))),
    )
    .await?;
    f.wait_applied("app", &head).await?;
    assert!(f.config_map("app").await?.is_some());
    f.teardown().await
}

/// `ignoreMissingComponents` leaves out a component the source lacks; without it the build
/// fails naming the missing one, as kustomize does.
#[tokio::test]
async fn missing_components_fail_the_build_unless_ignored() -> Result<()> {
    let f = Fixture::start(&[
        ("app/cm.yaml", &config_map_yaml("app", "1")),
        (
            "components/tier/kustomization.yaml",
            "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\ncommonAnnotations: {tier: web}\n",
        ),
    ])
    .await?;
    let head = f.repo.head()?;
    let components = json!(["../components/tier", "../components/absent"]);
    f.create_ks(
        "strict",
        json!({ "path": "./app", "components": components, "namePrefix": "strict-" }),
    )
    .await?;
    f.create_ks(
        "lenient",
        json!({ "path": "./app", "components": components, "ignoreMissingComponents": true }),
    )
    .await?;
    f.wait_applied("lenient", &head).await?;
    let cm = f.config_map("app").await?.unwrap();
    assert_eq!(
        cm.metadata.annotations.unwrap()["tier"],
        "web",
        "the present one applies"
    );
    let ks = f
        .wait_failed("strict", Some(&head), reasons::BUILD_FAILED)
        .await?;
    assert!(message(&ks).contains("absent"), "{}", message(&ks));
    assert!(f.config_map("strict-app").await?.is_none());
    f.teardown().await
}

#[tokio::test]
async fn spec_kustomize_fields_merge_into_the_overlay_as_flux_merges_them() -> Result<()> {
    let f = Fixture::start(&[
        // No namespace in the base: targetNamespace gives it one.
        ("base/deploy.yaml", &DEPLOYMENT.replace("  namespace: NAMESPACE\n", "")),
        ("base/kustomization.yaml", "resources: [deploy.yaml]\n"),
        // The overlay has a prefix and a patch of its own, and loads a file beside its base.
        (
            "overlay/kustomization.yaml",
            "namePrefix: git-\nresources: [../base, ../common/cm.yaml]\ncommonLabels: {env: prod}\npatches:\n- patch: |\n    - op: add\n      path: /spec/template/metadata/annotations\n      value: {from: overlay}\n  target: {kind: Deployment, name: web}\n",
        ),
        ("common/cm.yaml", &config_map_yaml("settings", "1").replace("  namespace: NAMESPACE\n", "")),
        (
            "components/tier/kustomization.yaml",
            "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\ncommonAnnotations: {tier: web}\n",
        ),
    ])
    .await?;
    f.create_ks(
        "app",
        json!({
            "path": "./overlay",
            "targetNamespace": f.ns(),
            "namePrefix": "p-",
            "nameSuffix": "-s",
            "images": [{ "name": "registry.invalid/web", "newTag": "2.0.0" }],
            "patches": [
                {
                    // Targets the name in git, as the overlay's own patch does.
                    "target": { "kind": "Deployment", "name": "web" },
                    "patch": "- op: replace\n  path: /spec/replicas\n  value: 3\n",
                },
                {
                    "patch": "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  annotations:\n    patched: strategic-merge\n",
                },
            ],
            "commonMetadata": { "labels": { "team": "blue" }, "annotations": { "owner": "ops" } },
            "components": ["../components/tier"],
        }),
    )
    .await?;
    let head = f.repo.head()?;
    f.wait_applied("app", &head).await?;
    // The spec's prefix replaces the overlay's: `p-web-s`, never `p-git-web-s`.
    let d = Api::<Deployment>::namespaced(f.client.clone(), f.ns())
        .get("p-web-s")
        .await?;
    let spec = d.spec.unwrap();
    assert_eq!(
        spec.replicas,
        Some(3),
        "the spec's patch, by the name in git"
    );
    let template = spec.template;
    assert_eq!(
        template.spec.unwrap().containers[0].image.as_deref(),
        Some("registry.invalid/web:2.0.0")
    );
    let labels = d.metadata.labels.unwrap();
    assert_eq!(labels["env"], "prod");
    assert_eq!(labels["team"], "blue");
    let annotations = d.metadata.annotations.unwrap();
    assert_eq!(annotations["tier"], "web", "component applied");
    assert_eq!(annotations["patched"], "strategic-merge");
    assert_eq!(annotations["owner"], "ops");
    // commonMetadata is metadata only, as in Flux: not the pod template, not the selector.
    let template_metadata = template.metadata.unwrap();
    assert_eq!(
        template_metadata.annotations.unwrap()["from"],
        "overlay",
        "the overlay's own patch"
    );
    let template_labels = template_metadata.labels.unwrap();
    assert!(!template_labels.contains_key("team"), "{template_labels:?}");
    assert!(
        !spec.selector.match_labels.unwrap().contains_key("team"),
        "selector untouched"
    );
    let cm = f
        .config_map("p-settings-s")
        .await?
        .expect("the file beside the base");
    assert_eq!(cm.metadata.labels.unwrap()["team"], "blue");
    assert!(f.config_map("p-git-settings-s").await?.is_none());
    f.teardown().await
}

#[tokio::test]
async fn a_plain_directory_with_target_namespace_is_built_without_kustomize() -> Result<()> {
    // kustomize fails every build here: only a native build can get this Ready.
    let f = Fixture::start_with_kustomize(
        &[
            (
                "apps/cm.yaml",
                &config_map_yaml("plain", "1").replace("  namespace: NAMESPACE\n", ""),
            ),
            (
                "apps/deploy.yaml",
                &DEPLOYMENT.replace("NAMESPACE", "elsewhere"),
            ),
        ],
        // A binary that fails whatever it is asked.
        "/usr/bin/false".into(),
    )
    .await?;
    f.create_ks(
        "app",
        json!({
            "path": "./apps",
            "targetNamespace": f.ns(),
            "commonMetadata": { "labels": { "team": "blue" } },
        }),
    )
    .await?;
    let head = f.repo.head()?;
    f.wait_applied("app", &head).await?;
    let cm = f
        .config_map("plain")
        .await?
        .expect("given the target namespace");
    assert_eq!(cm.metadata.labels.unwrap()["team"], "blue");
    // An object naming another namespace is moved, as kustomize's namespace transformer does.
    Api::<Deployment>::namespaced(f.client.clone(), f.ns())
        .get("web")
        .await?;
    f.teardown().await
}

#[tokio::test]
async fn post_build_substitutes_variables_from_the_spec_config_maps_and_secrets() -> Result<()> {
    let template = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: vars\n  namespace: NAMESPACE\ndata:\n  cluster: ${cluster}\n  region: ${region:=eu}\n  token: ${token}\n  literal: $${cluster}\n";
    let off = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: raw\n  namespace: NAMESPACE\n  annotations:\n    kustomize.toolkit.fluxcd.io/substitute: disabled\ndata:\n  k: ${cluster}\n";
    let f = Fixture::start(&[("apps/vars.yaml", template), ("apps/raw.yaml", off)]).await?;
    Api::<ConfigMap>::namespaced(f.client.clone(), f.ns())
        .create(&PostParams::default(), &serde_json::from_value(json!({
            "metadata": { "name": "cluster-vars" }, "data": { "cluster": "from-cm", "region": "us" }
        }))?)
        .await?;
    f.create_secret("cluster-secret", json!({ "token": "s3cr3t" }))
        .await?;
    f.create_ks(
        "app",
        json!({
            "path": "./apps",
            "postBuild": {
                "substitute": { "cluster": "prod" },
                "substituteFrom": [
                    { "kind": "ConfigMap", "name": "cluster-vars" },
                    { "kind": "Secret", "name": "cluster-secret" },
                    { "kind": "ConfigMap", "name": "absent", "optional": true },
                ],
            },
        }),
    )
    .await?;
    let head = f.repo.head()?;
    f.wait_applied("app", &head).await?;
    let data = f.config_map("vars").await?.unwrap().data.unwrap();
    assert_eq!(data["cluster"], "prod", "spec variables win");
    assert_eq!(data["region"], "us");
    assert_eq!(data["token"], "s3cr3t");
    assert_eq!(data["literal"], "${cluster}");
    assert_eq!(
        f.config_map("raw").await?.unwrap().data.unwrap()["k"],
        "${cluster}"
    );
    f.teardown().await
}

/// `substituteStrategy`: with no variable defined, `WithVariables` (the default) leaves the
/// manifests as written and `Always` substitutes anyway, so defaults apply.
#[tokio::test]
async fn substitute_strategy_always_substitutes_without_variables() -> Result<()> {
    let cm = |name: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: NAMESPACE\n\
             data:\n  region: ${{region:=eu}}\n"
        )
    };
    let f = Fixture::start(&[
        ("default/cm.yaml", &cm("with-variables")),
        ("always/cm.yaml", &cm("always")),
    ])
    .await?;
    f.create_ks(
        "with-variables",
        json!({ "path": "./default", "postBuild": { "substituteFrom": [] } }),
    )
    .await?;
    f.create_ks(
        "always",
        json!({ "path": "./always", "postBuild": { "substituteStrategy": "Always" } }),
    )
    .await?;
    let head = f.repo.head()?;
    f.wait_applied("with-variables", &head).await?;
    f.wait_applied("always", &head).await?;
    let region = |cm: Option<ConfigMap>| cm.unwrap().data.unwrap()["region"].clone();
    assert_eq!(
        region(f.config_map("with-variables").await?),
        "${region:=eu}"
    );
    assert_eq!(region(f.config_map("always").await?), "eu");
    f.teardown().await
}

/// Flux's `--feature-gates=StrictPostBuildSubstitutions=false`: a variable with no value and no
/// default becomes the empty string instead of failing the build (the default, strict, is
/// table-tested in substitute.rs).
#[tokio::test]
async fn lenient_substitution_is_flux_feature_gate_turned_off() -> Result<()> {
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: vars\n  namespace: NAMESPACE\ndata:\n  set: ${set}\n  unset: \"${unset}\"\n";
    let gates = weir_kustomize::FeatureGates::parse(&["StrictPostBuildSubstitutions=false"])
        .map_err(anyhow::Error::msg)?;
    let f = Fixture::start_with_gates(&[("apps/vars.yaml", cm)], gates).await?;
    f.create_ks(
        "app",
        json!({ "path": "./apps", "postBuild": { "substitute": { "set": "yes" } } }),
    )
    .await?;
    f.wait_applied("app", &f.repo.head()?).await?;
    let data = f.config_map("vars").await?.unwrap().data.unwrap();
    assert_eq!(data["set"], "yes");
    assert_eq!(data["unset"], "");
    f.teardown().await
}

#[tokio::test]
async fn impersonating_a_service_account_without_rbac_fails_clearly() -> Result<()> {
    let f = Fixture::start(&[("apps/a.yaml", &config_map_yaml("a", "1"))]).await?;
    f.create_ks(
        "app",
        json!({ "path": "./apps", "serviceAccountName": "nobody" }),
    )
    .await?;
    let ks = f
        .wait_failed("app", None, reasons::RECONCILIATION_FAILED)
        .await?;
    let m = message(&ks);
    assert!(
        m.contains("forbidden") && m.contains(&format!("system:serviceaccount:{}:nobody", f.ns())),
        "{m}"
    );
    assert!(f.config_map("a").await?.is_none());
    f.teardown().await
}

/// Flux's multi-tenancy lockdown: `--no-cross-namespace-refs` refuses a source in another
/// namespace (a named source in its own is fine), and `--default-service-account` is
/// impersonated by a Kustomization that names none.
#[tokio::test]
async fn lockdown_blocks_cross_namespace_sources_and_impersonates_the_default_account() -> Result<()>
{
    let lockdown = weir_kustomize::Lockdown {
        no_cross_namespace_refs: true,
        default_service_account: Some("nobody".to_owned()),
    };
    let f = Fixture::start_locked_down(&[("apps/a.yaml", &config_map_yaml("a", "1"))], lockdown)
        .await?;
    let own = json!({ "kind": "GitRepository", "name": "app", "namespace": f.ns() });
    f.create_ks("app", json!({ "path": "./apps", "sourceRef": own }))
        .await?;
    let elsewhere = json!({ "kind": "GitRepository", "name": "app", "namespace": "default" });
    f.create_ks(
        "elsewhere",
        json!({ "path": "./apps", "sourceRef": elsewhere }),
    )
    .await?;
    let ks = f
        .wait_failed("elsewhere", None, reasons::ACCESS_DENIED)
        .await?;
    assert_eq!(
        message(&ks),
        "can't access 'GitRepository/default/app', cross-namespace references have been blocked"
    );
    let ks = f
        .wait_failed("app", None, reasons::RECONCILIATION_FAILED)
        .await?;
    let m = message(&ks);
    assert!(
        m.contains("forbidden") && m.contains(&format!("system:serviceaccount:{}:nobody", f.ns())),
        "{m}"
    );
    assert!(f.config_map("a").await?.is_none());
    f.teardown().await
}

#[tokio::test]
async fn deleting_a_kustomization_with_prune_removes_its_objects() -> Result<()> {
    let f = Fixture::start(&[("apps/a.yaml", &config_map_yaml("a", "1"))]).await?;
    f.create_ks("app", json!({ "path": "./apps" })).await?;
    let head = f.repo.head()?;
    f.wait_applied("app", &head).await?;
    assert!(f.config_map("a").await?.is_some());
    f.ks.delete("app", &DeleteParams::default()).await?;
    wait_until(
        "ConfigMap a to be deleted with its Kustomization",
        || async {
            match f.config_map("a").await {
                Ok(None) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await?;
    f.teardown().await
}

impl Fixture {
    /// Deletes the Kustomization `name` and waits until it is gone.
    async fn delete_ks(&self, name: &str) -> Result<()> {
        self.ks.delete(name, &DeleteParams::default()).await?;
        let api = self.ks.clone();
        wait_until(&format!("Kustomization {name} to be gone"), || {
            let api = api.clone();
            async move {
                match api.get_opt(name).await {
                    Ok(None) => Ok(()),
                    other => Err(format!("{:?}", other.map(|k| k.map(|k| k.metadata)))),
                }
            }
        })
        .await?;
        Ok(())
    }
}

/// `deletionPolicy` as Flux: `Orphan` leaves the objects although prune is on, `Delete` deletes
/// them although prune is off, and `WaitForTermination` keeps the Kustomization until its
/// objects are gone (one held here by a finalizer).
#[tokio::test]
async fn deletion_policy_orphans_deletes_or_waits_for_termination() -> Result<()> {
    let held_yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: held\n  namespace: NAMESPACE\n  finalizers: [weir.test/hold]\n";
    let f = Fixture::start(&[
        ("orphan/a.yaml", &config_map_yaml("orphaned", "1")),
        ("delete/a.yaml", &config_map_yaml("deleted", "1")),
        ("wait/a.yaml", held_yaml),
    ])
    .await?;
    let head = f.repo.head()?;
    for (name, prune, policy) in [
        ("orphan", true, "Orphan"),
        ("delete", false, "Delete"),
        ("wait", true, "WaitForTermination"),
    ] {
        let spec = json!({ "path": format!("./{name}"), "prune": prune, "deletionPolicy": policy });
        f.create_ks(name, spec).await?;
    }
    for name in ["orphan", "delete", "wait"] {
        f.wait_applied(name, &head).await?;
    }
    f.delete_ks("orphan").await?;
    assert!(f.config_map("orphaned").await?.is_some(), "Orphan left it");
    f.delete_ks("delete").await?;
    assert!(
        f.config_map("deleted").await?.is_none(),
        "Delete deleted it"
    );

    f.ks.delete("wait", &DeleteParams::default()).await?;
    wait_until("ConfigMap held to be deleted", || async {
        match f.config_map("held").await {
            Ok(Some(cm)) if cm.metadata.deletion_timestamp.is_some() => Ok(()),
            other => Err(format!("{:?}", other.map(|c| c.map(|c| c.metadata)))),
        }
    })
    .await?;
    // Terminating, not gone: the Kustomization waits for it (up to its 30 s timeout).
    assert!(f.ks.get_opt("wait").await?.is_some(), "it waits");
    let cms = Api::<ConfigMap>::namespaced(f.client.clone(), f.ns());
    let release = json!({ "metadata": { "finalizers": null } });
    cms.patch("held", &PatchParams::default(), &Patch::Merge(release))
        .await?;
    f.delete_ks("wait").await?;
    assert!(f.config_map("held").await?.is_none());
    f.teardown().await
}

#[tokio::test]
async fn crds_apply_before_the_resources_that_need_them_in_the_same_commit() -> Result<()> {
    let group = format!("{}.weir.test", weir_e2e::unique_name("crd", 30));
    let extra_ns = weir_e2e::unique_name("extra", 30);
    let crd = format!(
        "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.{group}
spec:
  group: {group}
  scope: Namespaced
  names: {{kind: Widget, plural: widgets, singular: widget, listKind: WidgetList}}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {{type: integer}}
"
    );
    let widget = format!(
        "apiVersion: {group}/v1\nkind: Widget\nmetadata:\n  name: w\n  namespace: {extra_ns}\nspec:\n  size: 3\n"
    );
    let namespace = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {extra_ns}\n");
    let f = Fixture::start(&[
        ("apps/widget.yaml", &widget),
        ("apps/crd.yaml", &crd),
        ("apps/ns.yaml", &namespace),
    ])
    .await?;
    f.create_ks("app", json!({ "path": "./apps" })).await?;
    let head = f.repo.head()?;
    let ks = f.wait_applied("app", &head).await?;
    let ids: Vec<String> = ks
        .status
        .unwrap()
        .inventory
        .unwrap()
        .entries
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert!(
        ids.contains(&format!("{extra_ns}_w_{group}_Widget")),
        "{ids:?}"
    );
    let resource = kube::api::ApiResource {
        group: group.clone(),
        version: "v1".into(),
        api_version: format!("{group}/v1"),
        kind: "Widget".into(),
        plural: "widgets".into(),
    };
    let widgets: Api<kube::api::DynamicObject> =
        Api::namespaced_with(f.client.clone(), &extra_ns, &resource);
    assert_eq!(widgets.get("w").await?.data["spec"]["size"], 3);

    // A new schema field and a resource using it, in one commit: the CRD goes first.
    let second = f
        .repo
        .change()
        .write(
            "apps/crd.yaml",
            &crd.replace(
                "              size: {type: integer}\n",
                "              size: {type: integer}\n              color: {type: string}\n",
            ),
        )
        .write("apps/widget.yaml", &format!("{widget}  color: blue\n"))
        .commit("add a color")?;
    f.wait_applied("app", &second).await?;
    assert_eq!(widgets.get("w").await?.data["spec"]["color"], "blue");

    // A field the schema does not have is refused as before, with nothing applied.
    let third = f
        .repo
        .change()
        .write("apps/widget.yaml", &format!("{widget}  shade: dark\n"))
        .commit("an unknown field")?;
    let ks = f
        .wait_failed("app", Some(&third), reasons::RECONCILIATION_FAILED)
        .await?;
    assert!(
        message(&ks).contains(".spec.shade: field not declared in schema"),
        "{}",
        message(&ks)
    );
    assert_eq!(widgets.get("w").await?.data["spec"]["color"], "blue");
    // Teardown prunes the Widget, then its Namespace and CRD.
    f.teardown().await
}

#[tokio::test]
async fn an_object_whose_version_stopped_being_served_is_still_pruned() -> Result<()> {
    let group = format!("{}.weir.test", weir_e2e::unique_name("ver", 30));
    let crd = |old_served: bool| {
        format!(
            "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.{group}
spec:
  group: {group}
  scope: Namespaced
  names: {{kind: Widget, plural: widgets, singular: widget, listKind: WidgetList}}
  versions:
  - {{name: v1alpha1, served: {old_served}, storage: false, schema: {{openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}}}}}
  - {{name: v1, served: true, storage: true, schema: {{openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}}}}}
"
        )
    };
    let f = Fixture::start(&[("crd/crd.yaml", &crd(true))]).await?;
    let widget = format!(
        "apiVersion: {group}/v1alpha1\nkind: Widget\nmetadata:\n  name: w\n  namespace: {}\n",
        f.ns()
    );
    // The CRD is its own Kustomization, as in real repositories (and so teardown leaves it
    // until the Widget is gone).
    let with_widget = f
        .repo
        .change()
        .write("apps/widget.yaml", &widget)
        .commit("a widget at v1alpha1")?;
    f.create_ks("crd", json!({ "path": "./crd" })).await?;
    f.wait_applied("crd", &with_widget).await?;
    f.create_ks("app", json!({ "path": "./apps" })).await?;
    f.wait_applied("app", &with_widget).await?;
    let resource = kube::api::ApiResource {
        group: group.clone(),
        version: "v1".into(),
        api_version: format!("{group}/v1"),
        kind: "Widget".into(),
        plural: "widgets".into(),
    };
    let widgets: Api<kube::api::DynamicObject> =
        Api::namespaced_with(f.client.clone(), f.ns(), &resource);
    assert!(widgets.get_opt("w").await?.is_some());

    // The CRD stops serving v1alpha1, then the Widget leaves git: the inventory still says
    // v1alpha1, and the object must be found at v1 and pruned, not forgotten.
    let unserved = f
        .repo
        .change()
        .write("crd/crd.yaml", &crd(false))
        .commit("stop serving v1alpha1")?;
    f.wait_applied("crd", &unserved).await?;
    let removed = f
        .repo
        .change()
        .delete("apps/widget.yaml")
        .write("apps/cm.yaml", &f.yaml(&config_map_yaml("kept", "1")))
        .commit("the widget leaves git")?;
    let ks = f.wait_applied("app", &removed).await?;
    let ids: Vec<String> = ks
        .status
        .unwrap()
        .inventory
        .unwrap()
        .entries
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert!(!ids.iter().any(|id| id.contains("Widget")), "{ids:?}");
    wait_until("the widget to be pruned", || {
        let widgets = widgets.clone();
        async move {
            match widgets.get_opt("w").await.map_err(|e| e.to_string())? {
                None => Ok(()),
                Some(w) if w.metadata.deletion_timestamp.is_some() => Ok(()),
                Some(_) => Err("still there".to_owned()),
            }
        }
    })
    .await?;
    f.teardown().await
}

#[tokio::test]
async fn force_recreates_an_object_whose_immutable_fields_changed() -> Result<()> {
    let immutable = |value: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: frozen\n  namespace: NAMESPACE\n  annotations:\n    kustomize.toolkit.fluxcd.io/force: enabled\nimmutable: true\ndata:\n  key: \"{value}\"\n"
        )
    };
    let f = Fixture::start(&[("apps/frozen.yaml", &immutable("1"))]).await?;
    f.create_ks("app", json!({ "path": "./apps" })).await?;
    f.wait_applied("app", &f.repo.head()?).await?;
    let first = f.config_map("frozen").await?.unwrap().metadata.uid;
    let second = f
        .repo
        .change()
        .write("apps/frozen.yaml", &f.yaml(&immutable("2")))
        .commit("change immutable data")?;
    f.wait_applied("app", &second).await?;
    let frozen = f.config_map("frozen").await?.unwrap();
    assert_eq!(frozen.data.unwrap()["key"], "2");
    assert_ne!(frozen.metadata.uid, first, "recreated");

    // An invalid object is an error even with force: the live one is not deleted for it.
    let invalid = immutable("3").replace(
        "metadata:\n",
        "metadata:\n  labels: {bad: \"not valid!\"}\n",
    );
    let third = f
        .repo
        .change()
        .write("apps/frozen.yaml", &f.yaml(&invalid))
        .commit("invalid label")?;
    f.wait_failed("app", Some(&third), reasons::RECONCILIATION_FAILED)
        .await?;
    let kept = f.config_map("frozen").await?.expect("not deleted");
    assert_eq!(kept.metadata.uid, frozen.metadata.uid);
    f.teardown().await
}

#[tokio::test]
async fn annotated_objects_are_created_once_ignored_paused_or_kept_when_removed() -> Result<()> {
    let annotated = |name: &str, annotation: &str, value: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: NAMESPACE\n  annotations:\n    {annotation}\ndata:\n  key: \"{value}\"\n"
        )
    };
    let once = |v: &str| annotated("once", "kustomize.toolkit.fluxcd.io/ssa: IfNotPresent", v);
    let keep = annotated("keep", "kustomize.toolkit.fluxcd.io/prune: disabled", "1");
    let ignored = annotated("ignored", "kustomize.toolkit.fluxcd.io/ssa: Ignore", "1");
    let f = Fixture::start(&[
        ("apps/once.yaml", &once("1")),
        ("apps/keep.yaml", &keep),
        ("apps/ignored.yaml", &ignored),
        ("apps/paused.yaml", &config_map_yaml("paused", "1")),
    ])
    .await?;
    f.create_ks("app", json!({ "path": "./apps" })).await?;
    f.wait_applied("app", &f.repo.head()?).await?;
    assert!(
        f.config_map("ignored").await?.is_none(),
        "ssa: Ignore is never applied"
    );
    // Someone pauses reconciliation of one object in the cluster.
    let pause = json!({ "metadata": { "annotations": { "kustomize.toolkit.fluxcd.io/reconcile": "disabled" } } });
    Api::<ConfigMap>::namespaced(f.client.clone(), f.ns())
        .patch("paused", &PatchParams::default(), &Patch::Merge(&pause))
        .await?;
    let second = f
        .repo
        .change()
        .write("apps/once.yaml", &f.yaml(&once("2")))
        .write("apps/paused.yaml", &f.yaml(&config_map_yaml("paused", "2")))
        .delete("apps/keep.yaml")
        .commit("update once and paused, remove keep")?;
    f.wait_applied("app", &second).await?;
    assert_eq!(
        f.config_map("once").await?.unwrap().data.unwrap()["key"],
        "1"
    );
    assert!(
        f.config_map("keep").await?.is_some(),
        "prune: disabled kept it"
    );
    assert_eq!(
        f.config_map("paused").await?.unwrap().data.unwrap()["key"],
        "1",
        "reconcile: disabled in the cluster left it alone"
    );
    f.teardown().await
}

#[tokio::test]
async fn a_suspended_kustomization_applies_nothing_until_resumed() -> Result<()> {
    let f = Fixture::start(&[("apps/a.yaml", &config_map_yaml("a", "1"))]).await?;
    f.create_ks("app", json!({ "path": "./apps", "suspend": true }))
        .await?;
    // The source is ready (so a reconcile would have applied) while the Kustomization waits.
    let git: Api<weir_api::GitRepository> = Api::namespaced(f.client.clone(), f.ns());
    wait_until("the GitRepository to have an artifact", || async {
        let repo = git.get("app").await.map_err(|e| e.to_string())?;
        repo.status
            .and_then(|s| s.artifact)
            .map(drop)
            .ok_or_else(|| "no artifact".to_owned())
    })
    .await?;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert!(f.config_map("a").await?.is_none());
    let resume = json!({ "spec": { "suspend": false } });
    f.ks.patch("app", &PatchParams::default(), &Patch::Merge(&resume))
        .await?;
    f.wait_applied("app", &f.repo.head()?).await?;
    assert!(f.config_map("a").await?.is_some());
    f.teardown().await
}

#[tokio::test]
async fn events_summarise_changes_and_messages_never_show_substituted_secrets() -> Result<()> {
    let f = Fixture::start(&[("apps/a.yaml", &config_map_yaml("a", "1"))]).await?;
    f.create_secret("vars", json!({ "label": "Top Secret!" }))
        .await?;
    f.create_ks(
        "app",
        json!({
            "path": "./apps",
            "postBuild": { "substituteFrom": [{ "kind": "Secret", "name": "vars" }] },
        }),
    )
    .await?;
    f.wait_applied("app", &f.repo.head()?).await?;
    let expected = format!("ConfigMap/{}/a created", f.ns());
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(f.client.clone(), f.ns());
    let events = &events;
    let expected = &expected;
    wait_until("an event naming the created ConfigMap", || async move {
        let text = serde_json::to_string(
            &events
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?
                .items,
        )
        .map_err(|e| e.to_string())?;
        if text.contains(expected.as_str()) && text.contains(reasons::RECONCILIATION_SUCCEEDED) {
            Ok(())
        } else {
            Err(text)
        }
    })
    .await?;

    // The secret value lands in a label, which the API server refuses, echoing the value.
    let labelled = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  namespace: NAMESPACE\n  labels:\n    leak: \"${label}\"\n";
    let bad = f
        .repo
        .change()
        .write("apps/a.yaml", &f.yaml(labelled))
        .commit("secret in a label")?;
    let ks = f
        .wait_failed("app", Some(&bad), reasons::RECONCILIATION_FAILED)
        .await?;
    let status = serde_json::to_string(&ks.status)?;
    assert!(status.contains("ConfigMap/"), "{status}");
    assert!(!status.contains("Top Secret!"), "{status}");
    let text = serde_json::to_string(&events.list(&ListParams::default()).await?.items)?;
    assert!(!text.contains("Top Secret!"), "{text}");
    f.teardown().await
}

#[tokio::test]
async fn deleting_a_kustomization_with_prune_off_orphans_its_objects() -> Result<()> {
    let f = Fixture::start(&[("apps/a.yaml", &config_map_yaml("a", "1"))]).await?;
    f.create_ks("app", json!({ "path": "./apps", "prune": false }))
        .await?;
    f.wait_applied("app", &f.repo.head()?).await?;
    f.teardown().await?;
    assert!(f.config_map("a").await?.is_some(), "orphaned");
    Ok(())
}

#[tokio::test]
async fn health_checks_name_the_listed_objects_that_are_not_ready() -> Result<()> {
    let never_ready = DEPLOYMENT.replace(
        "    spec:\n      containers:",
        "    spec:\n      nodeSelector: {weir.dev/no-such-node: \"true\"}\n      containers:",
    );
    let f = Fixture::start(&[
        ("apps/deploy.yaml", &never_ready),
        ("apps/a.yaml", &config_map_yaml("a", "1")),
    ])
    .await?;
    f.create_ks(
        "app",
        json!({
            "path": "./apps",
            "timeout": "6s",
            "healthChecks": [
                { "apiVersion": "apps/v1", "kind": "Deployment", "name": "web" },
                { "apiVersion": "v1", "kind": "ConfigMap", "name": "a" },
            ],
        }),
    )
    .await?;
    let ks = f
        .wait_failed("app", None, reasons::HEALTH_CHECK_FAILED)
        .await?;
    let m = message(&ks);
    assert!(m.contains(&format!("Deployment/{}/web", f.ns())), "{m}");
    assert!(
        !m.contains("ConfigMap/"),
        "a healthy object is not named: {m}"
    );
    assert!(
        f.config_map("a").await?.is_some(),
        "applied before health was checked"
    );
    f.teardown().await
}

#[tokio::test]
async fn a_service_account_with_rbac_applies_as_itself() -> Result<()> {
    let f = Fixture::start(&[("apps/a.yaml", &config_map_yaml("a", "1"))]).await?;
    let ns = f.ns().to_owned();
    let rbac: Vec<Value> = vec![
        json!({ "apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": { "name": "deployer", "namespace": ns } }),
        json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": { "name": "configmaps", "namespace": ns },
                "rules": [{ "apiGroups": [""], "resources": ["configmaps"], "verbs": ["*"] }] }),
        json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": { "name": "deployer", "namespace": ns },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "configmaps" },
                "subjects": [{ "kind": "ServiceAccount", "name": "deployer", "namespace": ns }] }),
    ];
    for object in rbac {
        let resource = match object["kind"].as_str() {
            Some("ServiceAccount") => {
                kube::api::ApiResource::erase::<k8s_openapi::api::core::v1::ServiceAccount>(&())
            }
            Some("Role") => kube::api::ApiResource::erase::<k8s_openapi::api::rbac::v1::Role>(&()),
            _ => kube::api::ApiResource::erase::<k8s_openapi::api::rbac::v1::RoleBinding>(&()),
        };
        let api: Api<kube::api::DynamicObject> =
            Api::namespaced_with(f.client.clone(), &ns, &resource);
        api.create(&PostParams::default(), &serde_json::from_value(object)?)
            .await?;
    }
    f.create_ks(
        "app",
        json!({ "path": "./apps", "serviceAccountName": "deployer" }),
    )
    .await?;
    f.wait_applied("app", &f.repo.head()?).await?;
    assert!(f.config_map("a").await?.is_some());
    f.teardown().await
}

#[tokio::test]
async fn kustomize_builds_load_any_file_of_the_artifact_but_nothing_outside_it() -> Result<()> {
    let f = Fixture::start(&[
        ("other/o.yaml", &config_map_yaml("o", "1")),
        ("app/kustomization.yaml", "resources: [../other/o.yaml]\n"),
    ])
    .await?;
    f.create_ks("app", json!({ "path": "./app" })).await?;
    let head = f.repo.head()?;
    f.wait_applied("app", &head).await?;
    assert!(
        f.config_map("o").await?.is_some(),
        "a file beside the overlay"
    );

    let commit = f
        .repo
        .change()
        .write(
            "app/kustomization.yaml",
            "resources: [../other/o.yaml, ../../../etc/passwd]\n",
        )
        .commit("a path out of the artifact")?;
    let ks = f
        .wait_failed("app", Some(&commit), reasons::BUILD_FAILED)
        .await?;
    let m = message(&ks);
    assert!(
        m.contains("app/kustomization.yaml")
            && m.contains("resources[1]")
            && m.contains("../../../etc/passwd"),
        "{m}"
    );

    // A remote base is refused before kustomize runs, naming the URL (builds have no network).
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/base.yaml", listener.local_addr()?);
    let commit = f
        .repo
        .change()
        .write("app/kustomization.yaml", &format!("resources: [{url}]\n"))
        .commit("a remote base")?;
    let ks = f
        .wait_failed("app", Some(&commit), reasons::BUILD_FAILED)
        .await?;
    assert!(message(&ks).contains(&url), "{}", message(&ks));
    listener.set_nonblocking(true)?;
    assert!(
        listener.accept().is_err(),
        "nothing connected to the remote base's server"
    );

    let exec = "transformers:
- |-
  apiVersion: example.com/v1
  kind: Touch
  metadata:
    name: x
    annotations:
      config.kubernetes.io/function: |
        exec:
          path: /usr/bin/touch
";
    let commit = f
        .repo
        .change()
        .write("app/kustomization.yaml", exec)
        .commit("an exec function")?;
    let ks = f
        .wait_failed("app", Some(&commit), reasons::BUILD_FAILED)
        .await?;
    assert!(
        message(&ks).contains("external plugins disabled"),
        "{}",
        message(&ks)
    );
    f.teardown().await
}

#[tokio::test]
async fn an_inventory_written_by_flux_is_read_and_its_rbac_objects_pruned() -> Result<()> {
    use k8s_openapi::api::rbac::v1::ClusterRole;
    let f = Fixture::start(&[("apps/cm.yaml", &config_map_yaml("kept", "1"))]).await?;
    // An object Flux applied: its labels, and a name with colons, as RBAC names often have.
    let role_name = format!("system:weir-e2e:{}", f.ns());
    let roles = Api::<ClusterRole>::all(f.client.clone());
    let role: ClusterRole = serde_json::from_value(json!({
        "metadata": {
            "name": role_name,
            "labels": {
                annotations::NAME_LABEL: "app",
                annotations::NAMESPACE_LABEL: f.ns(),
            },
        },
        "rules": [],
    }))?;
    roles.create(&PostParams::default(), &role).await?;
    f.create_ks("app", json!({ "path": "./apps", "suspend": true }))
        .await?;
    // The inventory as Flux's cli-utils writes it: `:` in the name is `__`.
    let flux_id = format!(
        "_{}_rbac.authorization.k8s.io_ClusterRole",
        role_name.replace(':', "__")
    );
    f.ks.patch_status(
        "app",
        &PatchParams::default(),
        &Patch::Merge(
            json!({ "status": { "inventory": { "entries": [{ "id": flux_id, "v": "v1" }] } } }),
        ),
    )
    .await?;
    f.ks.patch(
        "app",
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "suspend": false } })),
    )
    .await?;
    let head = f.repo.head()?;
    f.wait_applied("app", &head).await?;
    wait_until("the role Flux applied to be pruned", || {
        let roles = roles.clone();
        let name = role_name.clone();
        async move {
            match roles.get_opt(&name).await.map_err(|e| e.to_string())? {
                None => Ok(()),
                Some(r) if r.metadata.deletion_timestamp.is_some() => Ok(()),
                Some(_) => Err("still there".to_owned()),
            }
        }
    })
    .await?;
    assert!(f.config_map("kept").await?.is_some());
    f.teardown().await
}

/// Objects of every shape `native::set_namespace` treats differently, one file per shape.
const NAMESPACE_SHAPES: &[(&str, &str)] = &[
    (
        "apps.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: elsewhere}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: web, image: nginx}]}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {a: b}\n",
    ),
    (
        "namespace.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: old}\n",
    ),
    (
        "cluster.yaml",
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: reader}\nrules: []\n---\napiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: high}\nvalue: 1000\n---\napiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {name: fast}\nprovisioner: example.com/fast\n---\napiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: edge}\nspec: {controller: example.com/edge}\n---\napiVersion: v1\nkind: PersistentVolume\nmetadata: {name: disk}\nspec: {capacity: {storage: 1Gi}, accessModes: [ReadWriteOnce], hostPath: {path: /tmp}}\n",
    ),
    (
        "bindings.yaml",
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: readers}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: reader}\nsubjects:\n- {kind: ServiceAccount, name: default, namespace: other}\n- {kind: ServiceAccount, name: robot, namespace: other}\n- {kind: Group, name: default}\n- {kind: User, name: alice}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: local}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: reader}\nsubjects:\n- {kind: ServiceAccount, name: default}\n- {kind: ServiceAccount, name: robot}\n",
    ),
    (
        "extensions.yaml",
        "apiVersion: apiregistration.k8s.io/v1\nkind: APIService\nmetadata: {name: v1.metrics.example.com}\nspec:\n  group: metrics.example.com\n  version: v1\n  groupPriorityMinimum: 100\n  versionPriority: 100\n  service: {name: metrics}\n---\napiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: widgets.example.com}\nspec:\n  group: example.com\n  names: {kind: Widget, plural: widgets}\n  scope: Namespaced\n  versions: [{name: v1, served: true, storage: true, schema: {openAPIV3Schema: {type: object}}}]\n  conversion:\n    strategy: Webhook\n    webhook:\n      conversionReviewVersions: [v1]\n      clientConfig: {service: {name: convert, namespace: other}}\n---\napiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: gadgets.example.com}\nspec:\n  group: example.com\n  names: {kind: Gadget, plural: gadgets}\n  scope: Namespaced\n  versions: [{name: v1, served: true, storage: true, schema: {openAPIV3Schema: {type: object}}}]\n  conversion:\n    strategy: Webhook\n    webhook:\n      conversionReviewVersions: [v1]\n      clientConfig: {url: https://convert.example.com}\n---\napiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingWebhookConfiguration\nmetadata: {name: check}\nwebhooks:\n- name: check.example.com\n  sideEffects: None\n  admissionReviewVersions: [v1]\n  clientConfig: {service: {name: check, namespace: other}}\n",
    ),
    (
        "custom/widget.yaml",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n---\napiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicy\nmetadata: {name: newer-than-the-schema}\nspec: {validations: [{expression: 'true'}]}\n",
    ),
];

/// The native `targetNamespace` of a plain directory gives exactly what kustomize gives for the
/// kustomization Flux generates, object for object, with the real kustomize the harness pins.
#[tokio::test]
async fn native_namespaces_equal_kustomizes() -> Result<()> {
    use weir_kustomize::{build, native};
    let kustomize = Harness::get().await?.tool("kustomize");
    let tree = tempfile::tempdir()?;
    for (path, content) in NAMESPACE_SHAPES {
        let file = tree.path().join(path);
        std::fs::create_dir_all(file.parent().unwrap())?;
        std::fs::write(file, content)?;
    }
    let spec: weir_api::kustomize::KustomizationSpec = serde_json::from_value(json!({
        "interval": "5m",
        "prune": true,
        "sourceRef": {"kind": "GitRepository", "name": "repo"},
        "targetNamespace": "target",
    }))?;
    let collected = build::collect_yaml(tree.path(), tree.path())?;
    let mut native_built = collected.manifests.clone();
    native::set_namespace(&mut native_built, "target");

    let work = tempfile::tempdir()?;
    let kustomized = build::kustomize_build(
        work.path(),
        tree.path(),
        &spec,
        build::Planned {
            relative_path: std::path::Path::new(""),
            generated: Some(&collected),
            loads: &[],
        },
        &kustomize,
        std::time::Duration::from_secs(60),
    )
    .await?;

    let by_key = |manifests: Vec<build::Manifest>| -> BTreeMap<String, build::Manifest> {
        manifests
            .into_iter()
            .map(|m| (build::object_key(&m.object), m))
            .collect()
    };
    let (native_built, kustomized) = (by_key(native_built), by_key(kustomized));
    assert_eq!(
        native_built.keys().collect::<Vec<_>>(),
        kustomized.keys().collect::<Vec<_>>()
    );
    for (key, built) in &native_built {
        assert_eq!(
            built, &kustomized[key],
            "{key} differs from kustomize's build"
        );
    }
    // Not vacuous: the shapes were moved, renamed and left alone.
    assert!(
        native_built
            .keys()
            .any(|k| k.contains("target") && k.contains("Deployment"))
    );
    assert!(
        native_built
            .values()
            .any(|m| m.object["kind"] == "Namespace" && m.object["metadata"]["name"] == "target")
    );
    Ok(())
}

/// A Kustomization written by a newer Flux, with a status field Weir does not know, is
/// reconciled, and so are the others of its kind: one object Weir cannot fully read must not
/// blind its watch. The harness's CRD gains the field as a newer Flux's CRD would have it (a
/// list of objects, `status.newerHistory`); an added optional field changes nothing for the
/// other tests.
#[tokio::test]
async fn a_status_field_from_a_newer_flux_blinds_nothing() -> Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let f = Fixture::start(&[
        ("apps/a/cm.yaml", &config_map_yaml("from-newer", "1")),
        ("apps/b/cm.yaml", &config_map_yaml("from-other", "1")),
    ])
    .await?;
    let crds = Api::<CustomResourceDefinition>::all(f.client.clone());
    let newer = json!({
        "type": "array",
        "items": { "type": "object", "x-kubernetes-preserve-unknown-fields": true },
    });
    crds.patch(
        "kustomizations.kustomize.toolkit.fluxcd.io",
        &PatchParams::default(),
        &Patch::<()>::Json(serde_json::from_value(json!([{
            "op": "add",
            "path": "/spec/versions/0/schema/openAPIV3Schema/properties/status/properties/newerHistory",
            "value": newer,
        }]))?),
    )
    .await?;

    f.create_ks("newer", json!({ "path": "./apps/a", "suspend": true }))
        .await?;
    // The API server takes the new schema a moment after the CRD changes.
    let entry = json!({ "digest": "sha256:0123", "totalReconciliations": 3 });
    let raw = Api::<kube::api::DynamicObject>::namespaced_with(
        f.client.clone(),
        f.ns(),
        &kube::api::ApiResource::erase::<Kustomization>(&()),
    );
    wait_until("the status to keep a history", || {
        let (ks, raw, entry) = (f.ks.clone(), raw.clone(), entry.clone());
        async move {
            ks.patch_status(
                "newer",
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": { "newerHistory": [entry] } })),
            )
            .await
            .map_err(|e| e.to_string())?;
            let read = raw.get("newer").await.map_err(|e| e.to_string())?;
            match read.data.pointer("/status/newerHistory/0") {
                Some(kept) if *kept == entry => Ok(()),
                other => Err(format!("history read back as {other:?}")),
            }
        }
    })
    .await?;
    f.ks.patch(
        "newer",
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "suspend": false } })),
    )
    .await?;
    f.create_ks("other", json!({ "path": "./apps/b" })).await?;

    let head = f.repo.head()?;
    f.wait_applied("newer", &head).await?;
    f.wait_applied("other", &head).await?;
    assert!(f.config_map("from-newer").await?.is_some());
    assert!(f.config_map("from-other").await?.is_some());
    // Weir's status writes leave the field it does not know alone.
    let read = raw.get("newer").await?;
    assert_eq!(read.data.pointer("/status/newerHistory/0"), Some(&entry));
    f.teardown().await
}

#[tokio::test]
async fn history_records_each_built_digest_and_outcome_as_flux_does() -> Result<()> {
    let f = Fixture::start(&[("apps/a.yaml", &config_map_yaml("a", "1"))]).await?;
    // A ConfigMap whose `key` is "2" fails its health check at once.
    let exprs = json!([{
        "apiVersion": "v1", "kind": "ConfigMap", "current": "data.key != '2'", "failed": "data.key == '2'",
    }]);
    f.create_ks(
        "app",
        json!({ "path": "./apps", "wait": true, "healthCheckExprs": exprs }),
    )
    .await?;
    let first = f.repo.head()?;
    let ks = f.wait_applied("app", &first).await?;
    let status = ks.status.unwrap();
    let [snapshot] = status.history.as_slice() else {
        panic!("one snapshot expected: {:?}", status.history)
    };
    assert!(snapshot.digest.starts_with("sha256:"), "{snapshot:?}");
    assert_eq!(
        snapshot.last_reconciled_status,
        reasons::RECONCILIATION_SUCCEEDED
    );
    assert_eq!(snapshot.total_reconciliations, 1);
    assert_eq!(
        snapshot.metadata.get("revision"),
        status.last_applied_revision.as_ref()
    );
    // A git source has no origin revision (an OCI artifact built from git would).
    assert!(!snapshot.metadata.contains_key("originRevision"));
    assert_eq!(status.last_applied_origin_revision, None);
    let first_snapshot = snapshot.clone();

    // A requested reconcile of the same manifests counts again in the same snapshot.
    let patch =
        json!({ "metadata": { "annotations": { "reconcile.fluxcd.io/requestedAt": "1" } } });
    f.ks.patch("app", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let ks = f
        .wait_ks("app", "the request handled", |ks| {
            ks.status
                .as_ref()
                .and_then(|s| s.last_handled_reconcile_at.as_deref())
                == Some("1")
        })
        .await?;
    let history = ks.status.unwrap().history;
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0].digest, first_snapshot.digest);
    assert_eq!(history[0].total_reconciliations, 2);
    assert_eq!(history[0].first_reconciled, first_snapshot.first_reconciled);

    // A failing health check of new manifests is a snapshot of its own, first...
    let failing = f
        .repo
        .change()
        .write("apps/a.yaml", &f.yaml(&config_map_yaml("a", "2")))
        .commit("a failing config map")?;
    let ks = f
        .wait_failed("app", Some(&failing), reasons::HEALTH_CHECK_FAILED)
        .await?;
    let history = ks.status.unwrap().history;
    assert_eq!(history.len(), 2, "{history:?}");
    assert_eq!(
        history[0].last_reconciled_status,
        reasons::HEALTH_CHECK_FAILED
    );
    assert!(history[0].metadata["revision"].ends_with(&failing));
    assert_ne!(history[0].digest, first_snapshot.digest);
    assert_eq!(history[1].digest, first_snapshot.digest);

    // ...and going back to the first manifests moves their snapshot to the front again.
    let back = f
        .repo
        .change()
        .write("apps/a.yaml", &f.yaml(&config_map_yaml("a", "1")))
        .commit("back")?;
    let ks = f.wait_applied("app", &back).await?;
    let history = ks.status.unwrap().history;
    assert_eq!(history.len(), 2, "{history:?}");
    assert_eq!(history[0].digest, first_snapshot.digest);
    assert_eq!(history[0].total_reconciliations, 3);
    assert!(history[0].metadata["revision"].ends_with(&back));
    assert_eq!(
        history[1].last_reconciled_status,
        reasons::HEALTH_CHECK_FAILED
    );
    f.teardown().await
}

/// Flux 2.9's `spec.ignore`: a field another applier owns (an autoscaler's `/spec/replicas`)
/// and a field edited in the cluster are left as the cluster has them, through drift
/// correction and through applies of other changes; the rest of the object still follows git.
#[tokio::test]
async fn ignore_rules_leave_the_selected_fields_to_the_cluster() -> Result<()> {
    let f = Fixture::start(&[
        ("apps/deploy.yaml", DEPLOYMENT),
        ("apps/a.yaml", &config_map_yaml("a", "1")),
    ])
    .await?;
    let ignore = json!([
        { "paths": ["/spec/replicas"], "target": { "kind": "Deployment", "name": "w.b" } },
        { "paths": ["/data/key"], "target": { "kind": "ConfigMap", "labelSelector": "!other" } },
    ]);
    f.create_ks("app", json!({ "path": "./apps", "ignore": ignore }))
        .await?;
    f.wait_applied("app", &f.repo.head()?).await?;

    // An autoscaler applies replicas with its own field manager; someone edits the ConfigMap.
    let deployments: Api<Deployment> = Api::namespaced(f.client.clone(), f.ns());
    let scale = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": "web" }, "spec": { "replicas": 3 },
    });
    deployments
        .patch(
            "web",
            &PatchParams::apply("autoscaler").force(),
            &Patch::Apply(&scale),
        )
        .await?;
    let config_maps: Api<ConfigMap> = Api::namespaced(f.client.clone(), f.ns());
    let edit = json!({ "data": { "key": "edited" } });
    config_maps
        .patch("a", &PatchParams::default(), &Patch::Merge(&edit))
        .await?;
    let replicas = || async {
        deployments
            .get("web")
            .await
            .map(|d| d.spec.and_then(|s| s.replicas))
    };
    let key = || async {
        f.config_map("a")
            .await
            .map(|c| c.and_then(|c| c.data).map(|d| d["key"].clone()))
    };

    // Drift correction leaves both alone.
    let patch =
        json!({ "metadata": { "annotations": { "reconcile.fluxcd.io/requestedAt": "1" } } });
    f.ks.patch("app", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    f.wait_ks("app", "the request handled", |ks| {
        ks.status
            .as_ref()
            .and_then(|s| s.last_handled_reconcile_at.as_deref())
            == Some("1")
    })
    .await?;
    assert_eq!(replicas().await?, Some(3));
    assert_eq!(key().await?.as_deref(), Some("edited"));

    // A change in git to both objects is applied, the ignored fields still the cluster's.
    let deploy = DEPLOYMENT.replace("web:1.0.0", "web:2.0.0");
    let cm = config_map_yaml("a", "1").replace("\ndata:\n", "\ndata:\n  more: \"x\"\n");
    let next = f
        .repo
        .change()
        .write("apps/deploy.yaml", &f.yaml(&deploy))
        .write("apps/a.yaml", &f.yaml(&cm))
        .commit("a new image and a new key")?;
    f.wait_applied("app", &next).await?;
    let web = deployments.get("web").await?;
    let spec = web.spec.unwrap();
    assert_eq!(spec.replicas, Some(3), "the autoscaler's replicas");
    assert_eq!(
        spec.template.spec.unwrap().containers[0].image.as_deref(),
        Some("registry.invalid/web:2.0.0")
    );
    let data = f.config_map("a").await?.unwrap().data.unwrap();
    assert_eq!(data["key"], "edited", "the cluster's value");
    assert_eq!(data["more"], "x");

    // A rule that does not compile stalls the Kustomization, naming the field.
    let bad = json!({ "spec": { "ignore": [{ "paths": ["/x"], "target": { "name": "(" } }] } });
    f.ks.patch("app", &PatchParams::default(), &Patch::Merge(&bad))
        .await?;
    let ks = f
        .wait_failed("app", None, reasons::RECONCILIATION_FAILED)
        .await?;
    assert!(
        message(&ks).contains("spec.ignore[0].target.name"),
        "{}",
        message(&ks)
    );
    f.teardown().await
}

/// `buildMetadata`: kustomize's origin and transformer annotations are applied with the objects
/// when asked for, and only then (Weir's own origin annotations never reach the cluster).
#[tokio::test]
async fn build_metadata_annotations_are_applied_only_when_asked_for() -> Result<()> {
    let f = Fixture::start(&[
        ("apps/a.yaml", &config_map_yaml("a", "1")),
        ("apps/kustomization.yaml", "resources: [a.yaml]\n"),
    ])
    .await?;
    f.create_ks(
        "with",
        json!({
            "path": "./apps",
            "namePrefix": "with-",
            "buildMetadata": ["originAnnotations", "transformerAnnotations"],
        }),
    )
    .await?;
    f.create_ks(
        "without",
        json!({ "path": "./apps", "namePrefix": "without-" }),
    )
    .await?;
    let head = f.repo.head()?;
    f.wait_applied("with", &head).await?;
    f.wait_applied("without", &head).await?;
    let annotations = |cm: Option<ConfigMap>| cm.unwrap().metadata.annotations.unwrap_or_default();
    let with = annotations(f.config_map("with-a").await?);
    let origin = with
        .get("config.kubernetes.io/origin")
        .unwrap_or_else(|| panic!("no origin annotation: {with:?}"));
    assert!(origin.contains("path: a.yaml"), "{origin}");
    let transformations = with
        .get("alpha.config.kubernetes.io/transformations")
        .unwrap_or_else(|| panic!("no transformer annotation: {with:?}"));
    assert!(
        transformations.contains("PrefixTransformer"),
        "{transformations}"
    );
    let without = annotations(f.config_map("without-a").await?);
    assert!(
        without.keys().all(|k| !k.contains("config.kubernetes.io/")),
        "{without:?}"
    );
    f.teardown().await
}
