//! The image controller under test, in-process and scoped to its own namespace, and the helpers
//! every image test uses.

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::Secret;
use kube::core::object::HasStatus;
use kube::{
    Api, Client, Resource,
    api::{Patch, PatchParams, PostParams},
};
use serde::de::DeserializeOwned;
use serde_json::json;
use weir_api::{
    Condition, ImagePolicy, ImageRepository, condition::find_condition, manifest,
    status::ObjectStatus, types,
};
use weir_e2e::{ControllerConfigs, Harness, TestNamespace, Watches, unique_name, wait_until};

/// A namespace with its own image controller watching only it.
pub(crate) struct Fixture {
    pub(crate) client: Client,
    pub(crate) ns: TestNamespace,
    pub(crate) controller: weir_image::Handle,
}

/// Anything with status conditions.
/// The conditions of an object of any kind Weir reconciles, read through api's status trait.
pub(crate) trait Observed {
    fn conditions(&self) -> Vec<Condition>;
}

impl<K: weir_api::status::Reconciled> Observed for K {
    fn conditions(&self) -> Vec<Condition> {
        use weir_api::status::ObjectStatus;
        self.status()
            .map(|status| status.conditions().to_vec())
            .unwrap_or_default()
    }
}

impl Fixture {
    pub(crate) async fn start() -> Result<Self> {
        Self::start_with_page_size(weir_image::scan::PAGE_SIZE).await
    }

    pub(crate) async fn start_with_page_size(tag_page_size: usize) -> Result<Self> {
        Self::start_with(weir_image::Config {
            tag_page_size,
            ..weir_image::Config::default()
        })
        .await
    }

    /// A controller with `config`, watching only the fixture's namespace.
    pub(crate) async fn start_with(config: weir_image::Config) -> Result<Self> {
        let harness = Harness::get().await?;
        let ns = harness.namespace().await?;
        let client = harness.client()?;
        let config = weir_image::Config {
            namespace: Some(ns.name().to_owned()),
            ..config
        };
        let controller = weir_image::start(client.clone(), config, false).await?;
        Ok(Self {
            client,
            ns,
            controller,
        })
    }

    pub(crate) fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), self.ns.name())
    }

    pub(crate) async fn create<K>(
        &self,
        kind: &str,
        name: &str,
        spec: serde_json::Value,
    ) -> Result<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + DeserializeOwned
            + serde::Serialize
            + Clone
            + std::fmt::Debug,
    {
        self.create_with_finalizers(kind, name, spec, &[]).await
    }

    /// Creates an image object as Flux leaves it behind when Weir takes over: with Flux's
    /// finalizer already set.
    pub(crate) async fn create_left_by_flux<K>(
        &self,
        kind: &str,
        name: &str,
        spec: serde_json::Value,
    ) -> Result<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + DeserializeOwned
            + serde::Serialize
            + Clone
            + std::fmt::Debug,
    {
        self.create_with_finalizers(kind, name, spec, &[FLUX_FINALIZER])
            .await
    }

    async fn create_with_finalizers<K>(
        &self,
        kind: &str,
        name: &str,
        spec: serde_json::Value,
        finalizers: &[&str],
    ) -> Result<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + DeserializeOwned
            + serde::Serialize
            + Clone
            + std::fmt::Debug,
    {
        let obj: K = manifest::from_value(json!({
            "apiVersion": "image.toolkit.fluxcd.io/v1",
            "kind": kind,
            "metadata": { "name": name, "namespace": self.ns.name(), "finalizers": finalizers },
            "spec": spec,
        }))?;
        Ok(self.api::<K>().create(&PostParams::default(), &obj).await?)
    }

    pub(crate) async fn repository(
        &self,
        name: &str,
        spec: serde_json::Value,
    ) -> Result<ImageRepository> {
        self.create("ImageRepository", name, spec).await
    }

    pub(crate) async fn policy(&self, name: &str, spec: serde_json::Value) -> Result<ImagePolicy> {
        self.create("ImagePolicy", name, spec).await
    }

    /// Waits until `Ready` has `status` (and `reason`, when given) at the current generation.
    pub(crate) async fn wait_ready<K>(
        &self,
        name: &str,
        status: &str,
        reason: Option<&str>,
    ) -> Result<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + HasStatus
            + DeserializeOwned
            + Clone
            + std::fmt::Debug,
        K::Status: ObjectStatus,
    {
        Ok(weir_e2e::wait_ready(&self.api::<K>(), name, status, reason).await?)
    }

    pub(crate) async fn latest_tag(&self, policy: &str, tag: &str) -> Result<ImagePolicy> {
        let api = self.api::<ImagePolicy>();
        Ok(
            wait_until(&format!("ImagePolicy {policy} to choose {tag}"), || {
                let api = api.clone();
                async move {
                    let p = api.get(policy).await.map_err(|e| e.to_string())?;
                    let latest = p.status.as_ref().and_then(|s| s.latest_ref.clone());
                    match latest {
                        Some(r) if r.tag == tag => Ok(p),
                        other => Err(format!("latestRef is {other:?}")),
                    }
                }
            })
            .await?,
        )
    }

    pub(crate) async fn request_reconcile<K>(&self, name: &str, token: &str) -> Result<()>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + DeserializeOwned
            + Clone
            + std::fmt::Debug,
    {
        let patch =
            json!({ "metadata": { "annotations": { "reconcile.fluxcd.io/requestedAt": token } } });
        self.api::<K>()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }
}

/// Pushes `tags` of a new repository to the anonymous registry; returns `host/name`.
pub(crate) async fn push_tags(name: &str, tags: &[&str]) -> Result<String> {
    let registry = Harness::get().await?.registry();
    let image = unique_name(name, 50);
    let mut repository = String::new();
    for tag in tags {
        repository = registry.push_image(&image, tag).await?.repository;
    }
    Ok(repository)
}

/// A deployment manifest with a marker, comments and a second document.
pub(crate) const DEPLOY: &str = r#"# The app. Comments, quoting and order stay as written.
apiVersion: apps/v1
kind: Deployment
metadata:
  name: app
  namespace: apps   # trailing comment
spec:
  template:
    spec:
      containers:
        - name: app
          image: "IMAGE:1.0.0" # {"$imagepolicy": "NS:app"}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: versions}
data:
  tag: '1.0.0'   # {"$imagepolicy": "NS:app:tag"}
  untouched: "IMAGE:1.0.0"
"#;

pub(crate) fn git_in(repo: &weir_e2e::GitRepo, args: &[&str]) -> String {
    let out = weir_e2e::git_command()
        .arg("--git-dir")
        .arg(repo.path())
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

impl Fixture {
    /// A git repository holding `files`, a GitRepository for it (basic auth, so pushes are
    /// allowed), and its secret.
    pub(crate) async fn git_source(&self, files: &[(&str, &str)]) -> Result<weir_e2e::GitRepo> {
        let harness = Harness::get().await?;
        let repo = harness
            .git()
            .create_repo("auto", &files.iter().copied().collect())?;
        self.api::<Secret>()
            .create(
                &PostParams::default(),
                &harness.git().basic_auth_secret("git-auth"),
            )
            .await?;
        let source: weir_api::GitRepository = manifest::from_value(json!({
            "apiVersion": "source.toolkit.fluxcd.io/v1",
            "kind": "GitRepository",
            "metadata": { "name": "fleet", "namespace": self.ns.name() },
            "spec": {
                "url": repo.private_http_url(),
                // Only the end-to-end test runs a source controller to fetch it.
                "interval": "2s",
                "secretRef": { "name": "git-auth" },
                "ref": { "branch": "main" },
            },
        }))?;
        self.api::<weir_api::GitRepository>()
            .create(&PostParams::default(), &source)
            .await?;
        Ok(repo)
    }

    /// An image repository with `tags`, an ImageRepository and a semver ImagePolicy `app` on it.
    pub(crate) async fn image_and_policy(&self, tags: &[&str], range: &str) -> Result<String> {
        let image = push_tags("auto", tags).await?;
        self.repository(
            "app",
            json!({ "image": image, "interval": "1h", "insecure": true }),
        )
        .await?;
        self.policy(
            "app",
            json!({ "imageRepositoryRef": { "name": "app" }, "policy": { "semver": { "range": range } } }),
        )
        .await?;
        Ok(image)
    }

    pub(crate) async fn automation(&self, name: &str, spec: serde_json::Value) -> Result<()> {
        self.create::<weir_api::ImageUpdateAutomation>("ImageUpdateAutomation", name, spec)
            .await?;
        Ok(())
    }

    pub(crate) async fn wait_pushed(
        &self,
        name: &str,
        branch_head: impl Fn() -> String,
    ) -> Result<String> {
        let api = self.api::<weir_api::ImageUpdateAutomation>();
        Ok(
            wait_until(&format!("ImageUpdateAutomation {name} to push"), || {
                let api = api.clone();
                let head = branch_head();
                async move {
                    let a = api.get(name).await.map_err(|e| e.to_string())?;
                    let pushed = a.status.as_ref().and_then(|s| s.last_push_commit.clone());
                    match pushed {
                        Some(c) if c == head => Ok(c),
                        other => Err(format!("lastPushCommit {other:?}, head {head}")),
                    }
                }
            })
            .await?,
        )
    }
}

pub(crate) fn automation_spec(message_template: Option<&str>) -> serde_json::Value {
    let mut commit = json!({ "author": { "name": "Weir Bot", "email": "bot@weir.invalid" } });
    if let Some(t) = message_template {
        commit["messageTemplate"] = json!(t);
    }
    json!({
        "interval": "1h",
        "sourceRef": { "kind": "GitRepository", "name": "fleet" },
        "git": { "checkout": { "ref": { "branch": "main" } }, "commit": commit },
        "update": { "path": "./apps", "strategy": "Setters" },
    })
}

pub(crate) fn ready_message(conditions: &[Condition]) -> String {
    find_condition(conditions, types::READY)
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

impl Fixture {
    pub(crate) async fn wait_ready_any(
        &self,
        name: &str,
        reason: &str,
    ) -> Result<weir_api::ImageUpdateAutomation> {
        self.wait_ready(name, "False", Some(reason)).await
    }
}

/// The source and kustomize controllers of an end-to-end test, and their directories.
pub(crate) type SyncControllers = (
    weir_source::Handle,
    weir_kustomize::Handle,
    tempfile::TempDir,
    tempfile::TempDir,
);

impl Fixture {
    /// Starts the source and kustomize controllers watching the test's namespace.
    pub(crate) async fn start_sync_controllers(&self) -> Result<SyncControllers> {
        let harness = Harness::get().await?;
        let storage = tempfile::tempdir()?;
        let cache = tempfile::tempdir()?;
        let configs =
            ControllerConfigs::new(self.ns.name()).sharing(&Watches::new(self.client.clone()));
        let source = weir_source::start(
            self.client.clone(),
            weir_source::Config {
                concurrency: 2,
                ..configs.source(storage.path())
            },
            false,
        )
        .await?;
        let kustomize = weir_kustomize::start(
            harness.kube_config().clone(),
            weir_kustomize::Config {
                concurrency: 2,
                dependency_requeue: std::time::Duration::from_secs(10),
                ..configs.kustomize(harness.tool("kustomize"), cache.path())
            },
            false,
        )
        .await?;
        Ok((source, kustomize, storage, cache))
    }
}

impl Fixture {
    /// Waits until `name` carries Flux's finalizer.
    pub(crate) async fn wait_finalizer<K>(&self, name: &str) -> Result<()>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + DeserializeOwned
            + Clone
            + std::fmt::Debug,
    {
        let api = self.api::<K>();
        let kind = K::kind(&()).to_string();
        wait_until(&format!("{kind} {name} to carry {FLUX_FINALIZER}"), || {
            let api = api.clone();
            async move {
                let object = api.get(name).await.map_err(|e| e.to_string())?;
                let finalizers = object.meta().finalizers.clone().unwrap_or_default();
                if finalizers.iter().any(|f| f == FLUX_FINALIZER) {
                    Ok(())
                } else {
                    Err(format!("finalizers {finalizers:?}"))
                }
            }
        })
        .await?;
        Ok(())
    }

    /// Deletes `name` and waits until it is gone.
    pub(crate) async fn delete_and_wait_gone<K>(&self, name: &str) -> Result<()>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + DeserializeOwned
            + Clone
            + std::fmt::Debug
            + Send
            + 'static,
    {
        let params = kube::api::DeleteParams::default();
        let deleted =
            kube::runtime::wait::delete::delete_and_finalize(self.api::<K>(), name, &params);
        tokio::time::timeout(weir_e2e::DEFAULT_DEADLINE, deleted)
            .await
            .with_context(|| format!("{name} is still there: finalizers not removed"))??;
        Ok(())
    }
}

/// The finalizer Flux's image controllers put on every image kind.
pub(crate) const FLUX_FINALIZER: &str = "finalizers.fluxcd.io";

/// A Secret `name` with `entries` as `stringData`.
pub(crate) fn string_secret(name: &str, entries: &[(&str, &str)]) -> Secret {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": name },
        "stringData": entries.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect::<serde_json::Map<_, _>>(),
    }))
    .unwrap()
}

impl Fixture {
    pub(crate) async fn secret(&self, name: &str, entries: &[(&str, &str)]) -> Result<()> {
        self.api::<Secret>()
            .create(&PostParams::default(), &string_secret(name, entries))
            .await?;
        Ok(())
    }

    pub(crate) async fn wait_handled(
        &self,
        name: &str,
        token: &str,
    ) -> Result<weir_api::ImageUpdateAutomation> {
        self.request_reconcile::<weir_api::ImageUpdateAutomation>(name, token)
            .await?;
        let api = self.api::<weir_api::ImageUpdateAutomation>();
        Ok(wait_until(&format!("{name} to handle {token}"), || {
            let api = api.clone();
            async move {
                let a = api.get(name).await.map_err(|e| e.to_string())?;
                let s = a.status.clone().unwrap_or_default();
                let ready = find_condition(&s.conditions, types::READY).cloned();
                match (s.last_handled_reconcile_at.as_deref(), ready) {
                    (Some(t), Some(c)) if t == token && c.message == "repository up-to-date" => {
                        Ok(a)
                    }
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await?)
    }
}

impl Fixture {
    /// A policy `app` that chose `tag`, and a git source whose `apps/deploy.yaml` marks the
    /// image at 1.0.0.
    pub(crate) async fn marked_source(&self, tag: &str) -> Result<weir_e2e::GitRepo> {
        let image = self.image_and_policy(&["1.0.0", tag], "*").await?;
        let before = DEPLOY
            .replace("IMAGE", &image)
            .replace("NS", self.ns.name());
        let repo = self.git_source(&[("apps/deploy.yaml", &before)]).await?;
        self.latest_tag("app", tag).await?;
        Ok(repo)
    }
}
