//! The source controller under test, in-process and scoped to its own namespace, and the helpers
//! every GitRepository test uses.

use std::{collections::BTreeMap, io::Read};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use sha2::{Digest, Sha256};
use weir_api::{GitRepository, condition::find_condition, manifest, types};
use weir_e2e::{ControllerConfigs, GitRepo, Harness, TestNamespace, wait_until};

/// A namespace with its own source controller watching only it.
pub(crate) struct Fixture {
    pub(crate) client: Client,
    pub(crate) ns: TestNamespace,
    pub(crate) api: Api<GitRepository>,
    pub(crate) controller: weir_source::Handle,
    pub(crate) storage: tempfile::TempDir,
}

impl Fixture {
    pub(crate) async fn start() -> Result<Self> {
        let harness = Harness::get().await?;
        let ns = harness.namespace().await?;
        let client = harness.client()?;
        let storage = tempfile::tempdir()?;
        let config = ControllerConfigs::new(ns.name()).source(storage.path());
        let controller = weir_source::start(client.clone(), config, false).await?;
        let api = Api::namespaced(client.clone(), ns.name());
        Ok(Self {
            client,
            ns,
            api,
            controller,
            storage,
        })
    }

    /// Creates a GitRepository following the harness repositories' `main` branch unless `spec`
    /// names a ref.
    pub(crate) async fn create(
        &self,
        name: &str,
        mut spec: serde_json::Value,
    ) -> Result<GitRepository> {
        if spec.get("ref").is_none() {
            spec["ref"] = json!({ "branch": "main" });
        }
        self.create_as_written(name, spec).await
    }

    pub(crate) async fn create_as_written(
        &self,
        name: &str,
        spec: serde_json::Value,
    ) -> Result<GitRepository> {
        let repo: GitRepository = manifest::from_value(json!({
            "apiVersion": "source.toolkit.fluxcd.io/v1",
            "kind": "GitRepository",
            "metadata": { "name": name, "namespace": self.ns.name() },
            "spec": spec,
        }))?;
        Ok(self.api.create(&PostParams::default(), &repo).await?)
    }

    pub(crate) async fn secret(&self, name: &str, data: &[(&str, &str)]) -> Result<()> {
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.to_owned()),
                ..Default::default()
            },
            string_data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..Default::default()
        };
        Api::<Secret>::namespaced(self.client.clone(), self.ns.name())
            .create(&PostParams::default(), &secret)
            .await?;
        Ok(())
    }

    /// Waits until `Ready` has `status` at the current generation, and returns the object.
    pub(crate) async fn wait_ready(&self, name: &str, status: &str) -> Result<GitRepository> {
        Ok(weir_e2e::wait_ready(&self.api, name, status, None).await?)
    }

    /// Sets `reconcile.fluxcd.io/requestedAt` and waits until it is handled.
    pub(crate) async fn request_reconcile(&self, name: &str, token: &str) -> Result<GitRepository> {
        let patch =
            json!({ "metadata": { "annotations": { "reconcile.fluxcd.io/requestedAt": token } } });
        self.api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        let api = self.api.clone();
        Ok(wait_until(
            &format!("GitRepository {name} to handle request {token}"),
            || {
                let api = api.clone();
                async move {
                    let repo = api.get(name).await.map_err(|e| e.to_string())?;
                    let handled = repo
                        .status
                        .as_ref()
                        .and_then(|s| s.last_handled_reconcile_at.clone());
                    if handled.as_deref() == Some(token) {
                        Ok(repo)
                    } else {
                        Err(format!("handled {handled:?}"))
                    }
                }
            },
        )
        .await?)
    }

    pub(crate) async fn events_text(&self) -> Result<String> {
        let events = Api::<Event>::namespaced(self.client.clone(), self.ns.name())
            .list(&ListParams::default())
            .await?;
        Ok(serde_json::to_string(&events.items)?)
    }
}

pub(crate) fn revision(repo: &GitRepository) -> String {
    repo.status
        .as_ref()
        .and_then(|s| s.artifact.as_ref())
        .map(|a| a.revision.clone())
        .unwrap_or_default()
}

pub(crate) fn ready_reason(repo: &GitRepository) -> String {
    let conds = repo
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    find_condition(&conds, types::READY)
        .map(|c| c.reason.clone())
        .unwrap_or_default()
}

/// Downloads the artifact, checks its digest and size, and returns its files and contents.
pub(crate) async fn download(repo: &GitRepository) -> Result<BTreeMap<String, String>> {
    let artifact = repo
        .status
        .as_ref()
        .and_then(|s| s.artifact.clone())
        .context("no artifact")?;
    let bytes = reqwest::get(&artifact.url)
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    if Some(&digest) != artifact.digest.as_ref() {
        bail!(
            "served artifact digest {digest} differs from status {:?}",
            artifact.digest
        );
    }
    assert_eq!(artifact.size, Some(bytes.len() as i64));
    let mut files = BTreeMap::new();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.header().entry_type().is_file() {
            let mut content = String::new();
            entry.read_to_string(&mut content)?;
            files.insert(entry.path()?.to_string_lossy().into_owned(), content);
        }
    }
    Ok(files)
}

pub(crate) fn app_repo() -> BTreeMap<&'static str, &'static str> {
    BTreeMap::from([
        (
            "deploy/configmap.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\ndata:\n  v: \"1\"\n",
        ),
        ("README.md", "# app\n"),
    ])
}

pub(crate) async fn harness_repo() -> Result<(&'static Harness, GitRepo)> {
    let harness = Harness::get().await?;
    let repo = harness.git().create_repo("app", &app_repo())?;
    Ok((harness, repo))
}

pub(crate) fn read(path: &std::path::Path) -> Result<String> {
    Ok(std::fs::read_to_string(path)?)
}
