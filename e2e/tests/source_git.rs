//! The source controller against the real harness: GitRepositories over anonymous and
//! authenticated HTTP and SSH become artifacts served over HTTP with the advertised digest.

// A test's helpers fail the test by panicking; that is their job.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{collections::BTreeMap, io::Read, sync::atomic::Ordering};

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use sha2::{Digest, Sha256};
use weir_api::{GitRepository, condition::find_condition, manifest, reasons, types};
use weir_e2e::{GitRepo, Harness, TestNamespace, wait_until};

/// A namespace with its own source controller watching only it.
struct Fixture {
    client: Client,
    ns: TestNamespace,
    api: Api<GitRepository>,
    controller: weir_source::Handle,
    storage: tempfile::TempDir,
}

impl Fixture {
    async fn start() -> Result<Self> {
        let harness = Harness::get().await?;
        let ns = harness.namespace().await?;
        let client = harness.client()?;
        let storage = tempfile::tempdir()?;
        let config = weir_source::Config {
            storage_path: storage.path().to_path_buf(),
            storage_addr: "127.0.0.1:0".parse()?,
            storage_adv_addr: None,
            artifact_retention: 2,
            namespace: Some(ns.name().to_owned()),
            concurrency: 4,
        };
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
    async fn create(&self, name: &str, mut spec: serde_json::Value) -> Result<GitRepository> {
        if spec.get("ref").is_none() {
            spec["ref"] = json!({ "branch": "main" });
        }
        self.create_as_written(name, spec).await
    }

    async fn create_as_written(
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

    async fn secret(&self, name: &str, data: &[(&str, &str)]) -> Result<()> {
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
    async fn wait_ready(&self, name: &str, status: &str) -> Result<GitRepository> {
        let api = self.api.clone();
        Ok(
            wait_until(&format!("GitRepository {name} Ready={status}"), || {
                let api = api.clone();
                async move {
                    let repo = api.get(name).await.map_err(|e| e.to_string())?;
                    let st = repo.status.clone().unwrap_or_default();
                    let ready = find_condition(&st.conditions, types::READY);
                    match ready {
                        Some(c)
                            if format!("{:?}", c.status) == status
                                && st.observed_generation == repo.metadata.generation =>
                        {
                            Ok(repo)
                        }
                        other => Err(format!("Ready is {other:?}")),
                    }
                }
            })
            .await?,
        )
    }

    /// Sets `reconcile.fluxcd.io/requestedAt` and waits until it is handled.
    async fn request_reconcile(&self, name: &str, token: &str) -> Result<GitRepository> {
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

    async fn events_text(&self) -> Result<String> {
        let events = Api::<Event>::namespaced(self.client.clone(), self.ns.name())
            .list(&ListParams::default())
            .await?;
        Ok(serde_json::to_string(&events.items)?)
    }
}

fn revision(repo: &GitRepository) -> String {
    repo.status
        .as_ref()
        .and_then(|s| s.artifact.as_ref())
        .map(|a| a.revision.clone())
        .unwrap_or_default()
}

fn ready_reason(repo: &GitRepository) -> String {
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
async fn download(repo: &GitRepository) -> Result<BTreeMap<String, String>> {
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

fn app_repo() -> BTreeMap<&'static str, &'static str> {
    BTreeMap::from([
        (
            "deploy/configmap.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\ndata:\n  v: \"1\"\n",
        ),
        ("README.md", "# app\n"),
    ])
}

async fn harness_repo() -> Result<(&'static Harness, GitRepo)> {
    let harness = Harness::get().await?;
    let repo = harness.git().create_repo("app", &app_repo())?;
    Ok((harness, repo))
}

#[tokio::test]
async fn a_branch_becomes_an_artifact_served_with_the_advertised_digest() -> Result<()> {
    let f = Fixture::start().await?;
    let (_, git) = harness_repo().await?;
    f.create(
        "app",
        json!({ "url": git.http_url(), "interval": "10m", "ref": { "branch": "main" } }),
    )
    .await?;
    let repo = f.wait_ready("app", "True").await?;
    assert_eq!(revision(&repo), format!("main@sha1:{}", git.head()?));
    assert_eq!(ready_reason(&repo), reasons::SUCCEEDED);
    let conds = &repo.status.as_ref().unwrap().conditions;
    assert!(
        find_condition(conds, types::ARTIFACT_IN_STORAGE).is_some_and(weir_api::Condition::is_true)
    );
    assert!(
        repo.finalizers()
            .contains(&"finalizers.fluxcd.io".to_owned())
    );
    let files = download(&repo).await?;
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        ["README.md", "deploy/configmap.yaml"]
    );
    assert!(files["deploy/configmap.yaml"].contains("kind: ConfigMap"));
    Ok(())
}

#[tokio::test]
async fn without_a_ref_the_master_branch_is_followed_as_in_flux() -> Result<()> {
    let f = Fixture::start().await?;
    // The remote's default branch is `main`: Flux follows `master` all the same.
    let (_, git) = harness_repo().await?;
    f.create_as_written("app", json!({ "url": git.http_url(), "interval": "10m" }))
        .await?;
    let repo = f.wait_ready("app", "False").await?;
    let ready = find_condition(&repo.status.as_ref().unwrap().conditions, types::READY).unwrap();
    assert!(ready.message.contains("master"), "{}", ready.message);

    let master = git.create_branch("master")?;
    f.request_reconcile("app", "master-created").await?;
    let repo = f.wait_ready("app", "True").await?;
    assert_eq!(revision(&repo), format!("master@sha1:{master}"));
    Ok(())
}

#[tokio::test]
async fn tag_semver_name_and_commit_refs_resolve_with_fluxs_revision_format() -> Result<()> {
    let f = Fixture::start().await?;
    let (_, git) = harness_repo().await?;
    let first = git.head()?;
    git.tag("v1.0.0")?;
    git.change()
        .write("deploy/extra.yaml", "kind: List\n")
        .commit("second")?;
    git.annotated_tag("v1.1.0", "release 1.1.0")?;
    let v110 = git.tag_target("v1.1.0")?;
    git.change()
        .write("deploy/rc.yaml", "kind: List\n")
        .commit("rc")?;
    git.tag("v2.0.0-rc.1")?;
    git.create_branch("feature")?;
    let feature = git
        .change()
        .on_branch("feature")
        .write("f.yaml", "kind: List\n")
        .commit("feature work")?;

    f.create(
        "tag",
        json!({ "url": git.http_url(), "interval": "10m", "ref": { "tag": "v1.0.0" } }),
    )
    .await?;
    f.create(
        "semver",
        json!({ "url": git.http_url(), "interval": "10m", "ref": { "semver": ">=1.0.0 <2.0.0" } }),
    )
    .await?;
    f.create(
        "prerelease",
        json!({ "url": git.http_url(), "interval": "10m", "ref": { "semver": ">=2.0.0-0" } }),
    )
    .await?;
    f.create("name", json!({ "url": git.http_url(), "interval": "10m", "ref": { "name": "refs/heads/feature" } })).await?;
    f.create("commit", json!({ "url": git.http_url(), "interval": "10m", "ref": { "branch": "main", "commit": first } })).await?;
    f.create(
        "bare-commit",
        json!({ "url": git.http_url(), "interval": "10m", "ref": { "commit": feature } }),
    )
    .await?;
    // Commit wins over branch, per Flux's precedence: a commit not on the branch is an error.
    f.create("wrong-branch", json!({ "url": git.http_url(), "interval": "10m", "ref": { "branch": "main", "commit": feature } })).await?;

    assert_eq!(
        revision(&f.wait_ready("tag", "True").await?),
        format!("v1.0.0@sha1:{first}")
    );
    let semver = f.wait_ready("semver", "True").await?;
    assert_eq!(revision(&semver), format!("v1.1.0@sha1:{v110}"));
    assert!(download(&semver).await?.contains_key("deploy/extra.yaml"));
    assert_eq!(
        revision(&f.wait_ready("prerelease", "True").await?),
        format!("v2.0.0-rc.1@sha1:{}", git.tag_target("v2.0.0-rc.1")?)
    );
    assert_eq!(
        revision(&f.wait_ready("name", "True").await?),
        format!("refs/heads/feature@sha1:{feature}")
    );
    assert_eq!(
        revision(&f.wait_ready("commit", "True").await?),
        format!("main@sha1:{first}")
    );
    assert_eq!(
        revision(&f.wait_ready("bare-commit", "True").await?),
        format!("sha1:{feature}")
    );
    let wrong = f.wait_ready("wrong-branch", "False").await?;
    assert_eq!(ready_reason(&wrong), reasons::GIT_OPERATION_FAILED);
    Ok(())
}

#[tokio::test]
async fn missing_branches_tags_and_unmatched_ranges_fail_with_a_reason() -> Result<()> {
    let f = Fixture::start().await?;
    let (_, git) = harness_repo().await?;
    f.create(
        "branch",
        json!({ "url": git.http_url(), "interval": "10m", "ref": { "branch": "nope" } }),
    )
    .await?;
    f.create(
        "range",
        json!({ "url": git.http_url(), "interval": "10m", "ref": { "semver": ">=5.0.0" } }),
    )
    .await?;
    f.create(
        "bad-range",
        json!({ "url": git.http_url(), "interval": "10m", "ref": { "semver": ">=x.y.z.w" } }),
    )
    .await?;
    let branch = f.wait_ready("branch", "False").await?;
    assert_eq!(ready_reason(&branch), reasons::GIT_OPERATION_FAILED);
    let msg = find_condition(
        &branch.status.as_ref().unwrap().conditions,
        types::FETCH_FAILED,
    )
    .unwrap()
    .message
    .clone();
    assert!(msg.contains("branch 'nope' not found"), "{msg}");
    let range = f.wait_ready("range", "False").await?;
    let conds = &range.status.as_ref().unwrap().conditions;
    assert!(
        find_condition(conds, types::READY)
            .unwrap()
            .message
            .contains("no tag matches the semver range '>=5.0.0'")
    );
    assert!(
        find_condition(conds, types::RECONCILING).is_some(),
        "a transient failure is retried"
    );
    let bad = f.wait_ready("bad-range", "False").await?;
    let conds = &bad.status.as_ref().unwrap().conditions;
    assert!(
        find_condition(conds, types::STALLED).is_some_and(weir_api::Condition::is_true),
        "a bad range needs a human: {conds:?}"
    );
    Ok(())
}

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

fn read(path: &std::path::Path) -> Result<String> {
    Ok(std::fs::read_to_string(path)?)
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
async fn an_unchanged_remote_is_not_cloned_and_a_new_commit_makes_a_new_artifact() -> Result<()> {
    let f = Fixture::start().await?;
    let (_, git) = harness_repo().await?;
    f.create("app", json!({ "url": git.http_url(), "interval": "10m" }))
        .await?;
    let first = f.wait_ready("app", "True").await?;
    let first_artifact = first.status.as_ref().unwrap().artifact.clone().unwrap();
    let metrics = &f.controller.metrics;
    let fetches = metrics.fetches.load(Ordering::Relaxed);
    let checks = metrics.remote_checks.load(Ordering::Relaxed);
    assert_eq!(fetches, 1);

    let again = f.request_reconcile("app", "unchanged-1").await?;
    assert_eq!(
        metrics.fetches.load(Ordering::Relaxed),
        fetches,
        "no clone when the remote did not move"
    );
    assert!(
        metrics.remote_checks.load(Ordering::Relaxed) > checks,
        "the remote was asked"
    );
    assert_eq!(
        again.status.as_ref().unwrap().artifact.as_ref(),
        Some(&first_artifact)
    );

    let second = git
        .change()
        .write("deploy/new.yaml", "kind: List\n")
        .delete("README.md")
        .commit("add new")?;
    let after = f.request_reconcile("app", "changed-1").await?;
    assert_eq!(revision(&after), format!("main@sha1:{second}"));
    assert_eq!(metrics.fetches.load(Ordering::Relaxed), fetches + 1);
    let files = download(&after).await?;
    assert!(files.contains_key("deploy/new.yaml") && !files.contains_key("README.md"));
    assert_ne!(
        after
            .status
            .as_ref()
            .unwrap()
            .artifact
            .as_ref()
            .unwrap()
            .digest,
        first_artifact.digest
    );
    let events = f.events_text().await?;
    assert!(
        events.contains("NewArtifact") && events.contains(&second),
        "a NewArtifact event names the revision"
    );
    Ok(())
}

/// Every `Reconciling` condition a watch of `name` sees, in order, with Ready's status beside it.
fn watch_reconciling(api: &Api<GitRepository>, name: &str) -> Seen {
    use futures::StreamExt;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(vec![]));
    let (stream, record) = (
        kube::runtime::watcher::watch_object(api.clone(), name),
        seen.clone(),
    );
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            // None until the object exists; a watch error is retried by the watcher.
            let Ok(Some(repo)) = item else { continue };
            let conditions = repo.status.unwrap_or_default().conditions;
            if let Some(c) = find_condition(&conditions, types::RECONCILING) {
                let ready = find_condition(&conditions, types::READY)
                    .map(|r| format!("{:?}", r.status))
                    .unwrap_or_default();
                let entry = (c.reason.clone(), c.message.clone(), ready);
                let mut seen = record.lock().unwrap();
                if seen.last() != Some(&entry) {
                    seen.push(entry);
                }
            }
        }
    });
    seen
}

type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, String, String)>>>;

async fn wait_seen(seen: &Seen, entry: (String, String, String)) -> Result<()> {
    wait_until(&format!("a watch to see Reconciling {entry:?}"), || {
        let (seen, entry) = (seen.clone(), entry.clone());
        async move {
            let seen = seen.lock().unwrap();
            if seen.contains(&entry) {
                Ok(())
            } else {
                Err(format!("seen {seen:?}"))
            }
        }
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn new_generations_and_revisions_are_reconciling_while_they_are_built() -> Result<()> {
    let f = Fixture::start().await?;
    let (_, git) = harness_repo().await?;
    let seen = watch_reconciling(&f.api, "app");
    f.create("app", json!({ "url": git.http_url(), "interval": "10m" }))
        .await?;
    let first = f.wait_ready("app", "True").await?;
    let progressing = |message: &str| {
        (
            reasons::PROGRESSING.to_owned(),
            message.to_owned(),
            "Unknown".to_owned(),
        )
    };
    wait_seen(
        &seen,
        progressing("processing object: new generation 0 -> 1"),
    )
    .await?;
    let conditions = first.status.unwrap().conditions;
    assert!(
        find_condition(&conditions, types::RECONCILING).is_none(),
        "Ready clears Reconciling: {conditions:?}"
    );

    // A new commit: the new revision is in progress until stored.
    let second = git
        .change()
        .write("deploy/more.yaml", "kind: List\n")
        .commit("more")?;
    let after = f.request_reconcile("app", "new-revision").await?;
    assert_eq!(revision(&after), format!("main@sha1:{second}"));
    wait_seen(
        &seen,
        progressing(&format!(
            "building artifact: new upstream revision 'main@sha1:{second}'"
        )),
    )
    .await?;

    // Nothing new: nothing in progress.
    let marks = seen.lock().unwrap().len();
    f.request_reconcile("app", "unchanged").await?;
    let ready = f.wait_ready("app", "True").await?;
    let conditions = ready.status.unwrap().conditions;
    assert!(find_condition(&conditions, types::RECONCILING).is_none());
    assert_eq!(
        seen.lock().unwrap().len(),
        marks,
        "{:?}",
        seen.lock().unwrap()
    );
    Ok(())
}

#[tokio::test]
async fn ignore_rules_and_sourceignore_files_shape_the_artifact() -> Result<()> {
    let f = Fixture::start().await?;
    let harness = Harness::get().await?;
    let git = harness.git().create_repo(
        "ignore",
        &BTreeMap::from([
            ("apps/app.yaml", "kind: List\n"),
            ("apps/secret.enc.yaml", "kind: List\n"),
            ("apps/.sourceignore", "*.enc.yaml\n"),
            (".github/workflows/ci.yaml", "on: push\n"),
            ("docs/logo.png", "png"),
            ("scratch/tmp.yaml", "kind: List\n"),
        ]),
    )?;
    f.create(
        "app",
        json!({ "url": git.http_url(), "interval": "10m", "ignore": "/scratch/\n" }),
    )
    .await?;
    let repo = f.wait_ready("app", "True").await?;
    let files = download(&repo).await?;
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        ["apps/.sourceignore", "apps/app.yaml"]
    );
    assert_eq!(
        repo.status.as_ref().unwrap().observed_ignore.as_deref(),
        Some("/scratch/\n")
    );
    Ok(())
}

#[tokio::test]
async fn equal_trees_give_equal_digests() -> Result<()> {
    let f = Fixture::start().await?;
    let harness = Harness::get().await?;
    let one = harness.git().create_repo("one", &app_repo())?;
    // The same tree reached through different history: another commit, then its revert.
    let mut with_extra = app_repo();
    with_extra.insert("extra.yaml", "kind: List\n");
    let two = harness.git().create_repo("two", &with_extra)?;
    two.change().delete("extra.yaml").commit("remove extra")?;
    f.create("one", json!({ "url": one.http_url(), "interval": "10m" }))
        .await?;
    f.create("two", json!({ "url": two.http_url(), "interval": "10m" }))
        .await?;
    let a = f.wait_ready("one", "True").await?;
    let b = f.wait_ready("two", "True").await?;
    let digest = |r: &GitRepository| {
        r.status
            .as_ref()
            .unwrap()
            .artifact
            .as_ref()
            .unwrap()
            .digest
            .clone()
    };
    assert_eq!(digest(&a), digest(&b));
    assert_ne!(
        revision(&a),
        revision(&b),
        "different commits with the same tree"
    );
    Ok(())
}

#[tokio::test]
async fn a_failure_keeps_the_last_good_artifact_and_deletion_removes_all_artifacts() -> Result<()> {
    let f = Fixture::start().await?;
    let (_, git) = harness_repo().await?;
    f.create("app", json!({ "url": git.http_url(), "interval": "10m" }))
        .await?;
    let good = f.wait_ready("app", "True").await?;
    let good_artifact = good.status.as_ref().unwrap().artifact.clone().unwrap();

    let patch = json!({ "spec": { "ref": { "branch": "gone" } } });
    f.api
        .patch("app", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let failed = f.wait_ready("app", "False").await?;
    assert_eq!(
        failed.status.as_ref().unwrap().artifact.as_ref(),
        Some(&good_artifact),
        "the last good artifact stays"
    );
    assert!(download(&failed).await.is_ok(), "and is still served");

    let dir = f
        .storage
        .path()
        .join(format!("gitrepository/{}/app", f.ns.name()));
    assert!(dir.is_dir());
    f.api
        .delete("app", &kube::api::DeleteParams::default())
        .await?;
    let api = f.api.clone();
    wait_until("GitRepository app to be gone", || {
        let api = api.clone();
        async move {
            match api.get_opt("app").await {
                Ok(None) => Ok(()),
                other => Err(format!(
                    "{:?}",
                    other.map(|o| o.map(|r| r.finalizers().to_vec()))
                )),
            }
        }
    })
    .await?;
    assert!(!dir.exists(), "artifacts of a deleted object are removed");
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
async fn a_suspended_repository_is_left_alone_until_resumed() -> Result<()> {
    let f = Fixture::start().await?;
    let (_, git) = harness_repo().await?;
    f.create(
        "app",
        json!({ "url": git.http_url(), "interval": "10m", "suspend": true }),
    )
    .await?;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert!(
        f.api.get("app").await?.status.is_none(),
        "no status while suspended"
    );
    assert_eq!(
        f.controller.metrics.remote_checks.load(Ordering::Relaxed),
        0
    );
    f.api
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(&json!({ "spec": { "suspend": false } })),
        )
        .await?;
    f.wait_ready("app", "True").await?;
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

#[tokio::test]
async fn unreachable_or_silent_servers_time_out_release_their_thread_and_hold_back_no_fix()
-> Result<()> {
    let f = Fixture::start().await?;
    // A port nobody listens on, and a server that accepts connections and never answers.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let silent_addr = silent.local_addr()?;
    // Counts the connections the client gave up on (closed its end).
    let released = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = released.clone();
    let holder = tokio::spawn(async move {
        while let Ok((mut conn, _)) = silent.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut sink = vec![];
                // Reads what the client sends, answers nothing, until the client closes.
                let _ = tokio::io::AsyncReadExt::read_to_end(&mut conn, &mut sink).await;
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
    });
    f.create(
        "unreachable",
        json!({ "url": format!("http://{closed}/repo.git"), "interval": "10m" }),
    )
    .await?;
    f.create("silent", json!({ "url": format!("http://{silent_addr}/repo.git"), "interval": "10m", "timeout": "2s" })).await?;

    let unreachable = f.wait_ready("unreachable", "False").await?;
    assert_eq!(ready_reason(&unreachable), reasons::GIT_OPERATION_FAILED);
    // The first attempt times out; its thread stays stuck on the silent connection, so retries
    // say so instead of piling up threads.
    let api = f.api.clone();
    wait_until("silent to report the stuck operation", || {
        let api = api.clone();
        async move {
            let repo = api.get("silent").await.map_err(|e| e.to_string())?;
            let conds = repo.status.map(|s| s.conditions).unwrap_or_default();
            let message = find_condition(&conds, types::READY)
                .map(|c| c.message.clone())
                .unwrap_or_default();
            if message.contains("still waiting on the server") {
                Ok(())
            } else {
                Err(message)
            }
        }
    })
    .await?;
    let events = f.events_text().await?;
    assert!(
        events.contains("git operation timed out after 2s"),
        "the timeout was reported as an event"
    );

    // The URL fixed, the repository is Ready at once: the operation still stuck on the silent
    // server holds back only that server's URL.
    let (_, git) = harness_repo().await?;
    f.api
        .patch(
            "silent",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({ "spec": { "url": git.http_url() } })),
        )
        .await?;
    let fixed = f.wait_ready("silent", "True").await?;
    assert!(
        revision(&fixed).ends_with(&git.head()?),
        "{}",
        revision(&fixed)
    );
    assert_eq!(
        released.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the fix did not wait for the stuck operation"
    );
    // And the stuck operation's thread is released: libgit2 gives up on the silent socket.
    wait_until("the silent connection to be given up", || {
        let released = released.clone();
        async move {
            match released.load(std::sync::atomic::Ordering::SeqCst) {
                0 => Err("still held"),
                _ => Ok(()),
            }
        }
    })
    .await?;
    holder.abort();
    Ok(())
}
