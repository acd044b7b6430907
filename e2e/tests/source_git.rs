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

/// `spec.verify`: commits and tags signed by the real `git`, with keys made by `gpg` and
/// `ssh-keygen`, verified against the public keys of a Secret.
mod verify {
    use weir_api::source::GitVerificationMode;
    use weir_e2e::{GpgKey, SshSigningKey};

    use super::*;

    fn conditions(repo: &GitRepository) -> Vec<weir_api::Condition> {
        repo.status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default()
    }

    /// `SourceVerified`'s status, reason and message.
    fn source_verified(repo: &GitRepository) -> Option<(String, String, String)> {
        find_condition(&conditions(repo), types::SOURCE_VERIFIED).map(|c| {
            (
                format!("{:?}", c.status),
                c.reason.clone(),
                c.message.clone(),
            )
        })
    }

    fn ready(repo: &GitRepository) -> (String, String, String) {
        let conditions = conditions(repo);
        let c = find_condition(&conditions, types::READY).unwrap();
        (
            format!("{:?}", c.status),
            c.reason.clone(),
            c.message.clone(),
        )
    }

    fn verify_spec(git: &GitRepo, mode: &str, secret: &str) -> serde_json::Value {
        json!({
            "url": git.http_url(),
            "interval": "10m",
            "verify": { "mode": mode, "secretRef": { "name": secret } },
        })
    }

    /// The archives stored for `name`.
    fn stored_artifacts(f: &Fixture, name: &str) -> usize {
        let dir = f
            .storage
            .path()
            .join(format!("gitrepository/{}/{name}", f.ns.name()));
        std::fs::read_dir(dir).map_or(0, |d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".tar.gz"))
            })
            .count()
        })
    }

    #[tokio::test]
    async fn gpg_and_ssh_signed_commits_are_verified_and_the_mode_recorded() -> Result<()> {
        let gpg = GpgKey::generate("Release Bot <release@weir.invalid>")?;
        let ssh = SshSigningKey::generate()?;
        let f = Fixture::start().await?;
        let (_, git) = harness_repo().await?;
        let gpg_signed = git.change().signed(&gpg.signing()).commit("gpg signed")?;
        f.secret(
            "keys",
            &[
                ("release.asc", &gpg.public_key()?),
                ("ci.sshpub", &ssh.public_key()?),
            ],
        )
        .await?;
        f.create("app", verify_spec(&git, "HEAD", "keys")).await?;
        let repo = f.wait_ready("app", "True").await?;
        assert_eq!(revision(&repo), format!("main@sha1:{gpg_signed}"));
        assert_eq!(
            source_verified(&repo),
            Some((
                "True".to_owned(),
                reasons::SUCCEEDED.to_owned(),
                format!(
                    "verified signature of\n\t- commit '{gpg_signed}' with key '{}'",
                    gpg.key_id()?
                )
            ))
        );
        assert_eq!(
            repo.status.as_ref().unwrap().source_verification_mode,
            Some(GitVerificationMode::Head)
        );

        let ssh_signed = git.change().signed(&ssh.signing()).commit("ssh signed")?;
        let repo = f.request_reconcile("app", "ssh-signed").await?;
        assert_eq!(revision(&repo), format!("main@sha1:{ssh_signed}"));
        let (status, _, message) = source_verified(&repo).unwrap();
        assert_eq!(status, "True");
        assert!(
            message.ends_with(&format!("with key '{}'", ssh.fingerprint()?)),
            "{message}"
        );
        Ok(())
    }

    /// Asks for a reconcile and checks it failed verification with `reason` and a message
    /// containing `detail`, keeping `kept` as the artifact and writing no archive.
    async fn rejected(
        f: &Fixture,
        token: &str,
        reason: &str,
        detail: &str,
        kept: &str,
    ) -> Result<()> {
        let written = f
            .controller
            .metrics
            .artifacts_written
            .load(Ordering::Relaxed);
        let archives = stored_artifacts(f, "app");
        let repo = f.request_reconcile("app", token).await?;
        let (status, ready_reason, message) = ready(&repo);
        ensure!(
            status == "False" && ready_reason == reason,
            "{token}: Ready {status} {ready_reason}: {message}"
        );
        ensure!(message.contains(detail), "{token}: {message}");
        let verified = source_verified(&repo);
        ensure!(
            verified == Some(("False".to_owned(), reason.to_owned(), message.clone())),
            "{token}: SourceVerified {verified:?}"
        );
        ensure!(
            revision(&repo) == format!("main@sha1:{kept}"),
            "{token}: the last verified artifact stays"
        );
        ensure!(
            download(&repo).await.is_ok(),
            "{token}: and is still served"
        );
        ensure!(
            f.controller
                .metrics
                .artifacts_written
                .load(Ordering::Relaxed)
                == written
                && stored_artifacts(f, "app") == archives,
            "{token}: no archive was written"
        );
        Ok(())
    }

    #[tokio::test]
    async fn unsigned_unknown_and_tampered_commits_are_rejected_and_keep_the_last_artifact()
    -> Result<()> {
        let (trusted, stranger) = (SshSigningKey::generate()?, SshSigningKey::generate()?);
        let f = Fixture::start().await?;
        let (_, git) = harness_repo().await?;
        let good = git.change().signed(&trusted.signing()).commit("trusted")?;
        f.secret("keys", &[("trusted.sshpub", &trusted.public_key()?)])
            .await?;
        f.create("app", verify_spec(&git, "HEAD", "keys")).await?;
        f.wait_ready("app", "True").await?;

        let unsigned = git
            .change()
            .write("a.yaml", "kind: List\n")
            .commit("unsigned")?;
        rejected(&f, "unsigned", reasons::INVALID_COMMIT_SIGNATURE, &format!("signature verification of commit '{unsigned}' failed: unsupported signature type: empty"), &good).await?;
        git.change()
            .signed(&stranger.signing())
            .commit("by a stranger")?;
        rejected(
            &f,
            "stranger",
            reasons::INVALID_COMMIT_SIGNATURE,
            "no matching key",
            &good,
        )
        .await?;

        let good = git
            .change()
            .signed(&trusted.signing())
            .commit("trusted again")?;
        let repo = f.request_reconcile("app", "trusted-again").await?;
        assert_eq!(
            (revision(&repo), ready(&repo).0),
            (format!("main@sha1:{good}"), "True".to_owned())
        );

        // The trusted commit with another message and its signature kept: a valid git object
        // whose signature no longer matches it.
        let git_dir = || {
            let mut command = weir_e2e::git_command();
            command.arg("--git-dir").arg(git.path());
            command
        };
        let raw = git_dir().args(["cat-file", "commit", &good]).output()?;
        let forged = String::from_utf8(raw.stdout)?.replace("trusted again", "not what was signed");
        let file = tempfile::NamedTempFile::new()?;
        std::fs::write(file.path(), forged)?;
        let out = git_dir()
            .args(["hash-object", "-t", "commit", "-w"])
            .arg(file.path())
            .output()?;
        let tampered = String::from_utf8(out.stdout)?.trim().to_owned();
        let moved = git_dir()
            .args(["update-ref", "refs/heads/main", &tampered, &good])
            .status()?;
        ensure!(moved.success() && tampered.len() == 40 && tampered != good);
        rejected(
            &f,
            "tampered",
            reasons::INVALID_COMMIT_SIGNATURE,
            "no matching key",
            &good,
        )
        .await?;
        let events = f.events_text().await?;
        assert!(
            events.contains(reasons::INVALID_COMMIT_SIGNATURE),
            "a Warning event with the reason"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_missing_key_secret_is_named_and_no_artifact_is_made() -> Result<()> {
        let ssh = SshSigningKey::generate()?;
        let f = Fixture::start().await?;
        let (_, git) = harness_repo().await?;
        git.change().signed(&ssh.signing()).commit("signed")?;
        f.create("app", verify_spec(&git, "HEAD", "no-such-keys"))
            .await?;
        let repo = f.wait_ready("app", "False").await?;
        let (_, reason, message) = ready(&repo);
        assert_eq!(reason, reasons::VERIFICATION_ERROR);
        assert!(
            message.contains(&format!("'{}/no-such-keys' not found", f.ns.name())),
            "{message}"
        );
        assert_eq!(
            source_verified(&repo).map(|v| v.0),
            Some("False".to_owned())
        );
        assert!(repo.status.as_ref().unwrap().artifact.is_none());
        assert_eq!(stored_artifacts(&f, "app"), 0);
        Ok(())
    }

    #[tokio::test]
    async fn adding_verify_to_an_unchanged_source_verifies_it_at_once() -> Result<()> {
        let ssh = SshSigningKey::generate()?;
        let f = Fixture::start().await?;
        let (_, git) = harness_repo().await?;
        f.secret("keys", &[("ci.sshpub", &ssh.public_key()?)])
            .await?;
        f.create("app", json!({ "url": git.http_url(), "interval": "10m" }))
            .await?;
        let before = f.wait_ready("app", "True").await?;
        assert_eq!(
            source_verified(&before),
            None,
            "only present with spec.verify"
        );

        // The remote did not move, yet the unsigned head must not pass as verified.
        let patch = json!({ "spec": { "verify": { "secretRef": { "name": "keys" } } } });
        f.api
            .patch("app", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        let repo = f.wait_ready("app", "False").await?;
        assert_eq!(ready(&repo).1, reasons::INVALID_COMMIT_SIGNATURE);
        assert_eq!(revision(&repo), revision(&before));
        assert_eq!(repo.status.as_ref().unwrap().source_verification_mode, None);

        // And removing it again clears the verification from status.
        let patch = json!({ "spec": { "verify": null } });
        f.api
            .patch("app", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        let repo = f.wait_ready("app", "True").await?;
        assert_eq!(source_verified(&repo), None);
        Ok(())
    }

    #[tokio::test]
    async fn signed_tags_verify_in_tag_modes_and_a_branch_ref_stalls() -> Result<()> {
        let ssh = SshSigningKey::generate()?;
        let f = Fixture::start().await?;
        let (_, git) = harness_repo().await?;
        let commit = git.change().signed(&ssh.signing()).commit("release")?;
        git.signed_tag("v1.0.0", "release 1.0.0", &ssh.signing())?;
        git.annotated_tag("v1.0.1", "unsigned release")?;
        f.secret("keys", &[("ci.sshpub", &ssh.public_key()?)])
            .await?;
        let mut both = verify_spec(&git, "TagAndHEAD", "keys");
        both["ref"] = json!({ "tag": "v1.0.0" });
        f.create("signed", both).await?;
        let mut unsigned = verify_spec(&git, "Tag", "keys");
        unsigned["ref"] = json!({ "semver": "1.0.1" });
        f.create("unsigned", unsigned).await?;
        f.create("branch", verify_spec(&git, "Tag", "keys")).await?;

        let repo = f.wait_ready("signed", "True").await?;
        assert_eq!(revision(&repo), format!("v1.0.0@sha1:{commit}"));
        let (_, _, message) = source_verified(&repo).unwrap();
        let key = ssh.fingerprint()?;
        assert!(
            message.starts_with("verified signature of\n\t- tag 'v1.0.0@")
                && message.ends_with(&format!(
                    "with key '{key}'\n\t- commit '{commit}' with key '{key}'"
                )),
            "{message}"
        );
        assert_eq!(
            repo.status.as_ref().unwrap().source_verification_mode,
            Some(GitVerificationMode::TagAndHead)
        );

        let repo = f.wait_ready("unsigned", "False").await?;
        let (_, reason, message) = ready(&repo);
        assert_eq!(reason, reasons::INVALID_GIT_OBJECT);
        assert!(
            message.contains("tag 'v1.0.1@") && message.ends_with("since it is not signed"),
            "{message}"
        );

        let repo = f.wait_ready("branch", "False").await?;
        assert_eq!(ready(&repo).1, reasons::INVALID_VERIFICATION_MODE);
        let conditions = conditions(&repo);
        let stalled = find_condition(&conditions, types::STALLED);
        assert!(
            stalled.is_some_and(weir_api::Condition::is_true),
            "only a new spec fixes it"
        );
        assert!(repo.status.as_ref().unwrap().artifact.is_none());
        Ok(())
    }
}

/// What goes into the artifact besides the commit's tree (`include`, `sparseCheckout`,
/// `recurseSubmodules`), how git reaches the remote (`proxySecretRef`) and whose identity
/// authenticates (`provider`).
mod content {
    use super::*;

    fn status(repo: &GitRepository) -> weir_api::GitRepositoryStatus {
        repo.status.clone().unwrap_or_default()
    }

    fn condition(repo: &GitRepository, kind: &str) -> Option<weir_api::Condition> {
        find_condition(&status(repo).conditions, kind).cloned()
    }

    async fn patch_spec(f: &Fixture, name: &str, spec: serde_json::Value) -> Result<()> {
        f.api
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": spec })),
            )
            .await?;
        Ok(())
    }

    /// Waits until `name` is Ready=True at its generation and `check` holds.
    async fn wait_ready_and(
        f: &Fixture,
        name: &str,
        what: &str,
        check: impl Fn(&GitRepository) -> bool,
    ) -> Result<GitRepository> {
        let api = f.api.clone();
        let check = &check;
        Ok(wait_until(&format!("GitRepository {name}: {what}"), || {
            let api = api.clone();
            async move {
                let repo = api.get(name).await.map_err(|e| e.to_string())?;
                let st = status(&repo);
                let ready = find_condition(&st.conditions, types::READY)
                    .is_some_and(weir_api::Condition::is_true);
                if ready && st.observed_generation == repo.metadata.generation && check(&repo) {
                    Ok(repo)
                } else {
                    Err(format!("{:?}", st.conditions))
                }
            }
        })
        .await?)
    }

    fn digest(repo: &GitRepository) -> Option<String> {
        status(repo).artifact.and_then(|a| a.digest)
    }

    #[tokio::test]
    async fn an_included_artifact_is_copied_in_and_its_new_revision_rebuilds_the_includer()
    -> Result<()> {
        let f = Fixture::start().await?;
        let (harness, app) = harness_repo().await?;
        let shared = harness.git().create_repo(
            "shared",
            &BTreeMap::from([
                ("deploy/shared.yaml", "kind: Shared\n"),
                ("README.md", "# shared\n"),
            ]),
        )?;
        f.create(
            "shared",
            json!({ "url": shared.http_url(), "interval": "10m" }),
        )
        .await?;
        let shared_repo = f.wait_ready("shared", "True").await?;
        f.create(
            "app",
            json!({
                "url": app.http_url(),
                "interval": "10m",
                "include": [
                    { "repository": { "name": "shared" }, "fromPath": "deploy", "toPath": "vendor/shared" },
                    { "repository": { "name": "shared" } },
                ],
            }),
        )
        .await?;
        let first = f.wait_ready("app", "True").await?;
        assert_eq!(revision(&first), format!("main@sha1:{}", app.head()?));
        let files = download(&first).await?;
        assert_eq!(
            files.keys().collect::<Vec<_>>(),
            [
                "README.md",
                "deploy/configmap.yaml",
                "shared/README.md",
                "shared/deploy/shared.yaml",
                "vendor/shared/shared.yaml"
            ]
        );
        assert_eq!(files["vendor/shared/shared.yaml"], "kind: Shared\n");
        let st = status(&first);
        let shared_artifact = status(&shared_repo).artifact.unwrap();
        assert_eq!(
            st.included_artifacts,
            vec![shared_artifact.clone(), shared_artifact]
        );
        assert_eq!(st.observed_include, first.spec.include);
        let fetches = f.controller.metrics.fetches.load(Ordering::Relaxed);

        // Only the included repository moves, and only it is asked to reconcile: the includer
        // follows by itself, with a new artifact for the same commit.
        let moved = shared
            .change()
            .write("deploy/shared.yaml", "kind: Shared\nv: 2\n")
            .commit("shared v2")?;
        f.request_reconcile("shared", "moved-1").await?;
        let second = wait_ready_and(&f, "app", "the new shared revision included", |r| {
            status(r)
                .included_artifacts
                .first()
                .is_some_and(|a| a.revision == format!("main@sha1:{moved}"))
        })
        .await?;
        assert_eq!(revision(&second), revision(&first));
        assert_ne!(digest(&second), digest(&first));
        assert_eq!(
            download(&second).await?["vendor/shared/shared.yaml"],
            "kind: Shared\nv: 2\n"
        );
        assert!(f.controller.metrics.fetches.load(Ordering::Relaxed) > fetches);

        // Nothing moved: no clone.
        let fetches = f.controller.metrics.fetches.load(Ordering::Relaxed);
        f.request_reconcile("app", "unchanged-1").await?;
        assert_eq!(
            f.controller.metrics.fetches.load(Ordering::Relaxed),
            fetches
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_missing_include_waits_with_fluxs_reason_and_an_escaping_to_path_stalls() -> Result<()>
    {
        let f = Fixture::start().await?;
        let (harness, app) = harness_repo().await?;
        f.create(
            "app",
            json!({ "url": app.http_url(), "interval": "10m",
                    "include": [{ "repository": { "name": "later" } }] }),
        )
        .await?;
        let waiting = f.wait_ready("app", "False").await?;
        assert_eq!(ready_reason(&waiting), "NotFound");
        let unavailable =
            condition(&waiting, types::INCLUDE_UNAVAILABLE).context("no IncludeUnavailable")?;
        assert!(
            unavailable.is_true() && unavailable.message.contains("'later'"),
            "{unavailable:?}"
        );

        // The included repository appears: the includer is reconciled when its artifact does.
        let later = harness
            .git()
            .create_repo("later", &BTreeMap::from([("x.yaml", "x: 1\n")]))?;
        f.create(
            "later",
            json!({ "url": later.http_url(), "interval": "10m" }),
        )
        .await?;
        let ready = wait_ready_and(&f, "app", "the include available", |r| {
            condition(r, types::INCLUDE_UNAVAILABLE).is_none()
        })
        .await?;
        assert!(download(&ready).await?.contains_key("later/x.yaml"));

        f.create(
            "escape",
            json!({ "url": app.http_url(), "interval": "10m",
                    "include": [{ "repository": { "name": "later" }, "toPath": "a/../../etc" }] }),
        )
        .await?;
        let stalled = f.wait_ready("escape", "False").await?;
        assert_eq!(ready_reason(&stalled), "IllegalPath");
        assert!(
            condition(&stalled, types::STALLED)
                .as_ref()
                .is_some_and(weir_api::Condition::is_true)
        );
        let message = condition(&stalled, types::READY).unwrap().message;
        assert!(message.contains("spec.include[0].toPath"), "{message}");
        Ok(())
    }

    #[tokio::test]
    async fn sparse_checkout_keeps_the_listed_directories_and_a_change_rebuilds_without_a_new_commit()
    -> Result<()> {
        let f = Fixture::start().await?;
        let harness = Harness::get().await?;
        let git = harness.git().create_repo(
            "sparse",
            &BTreeMap::from([
                ("deploy/a.yaml", "a: 1\n"),
                ("apps/b.yaml", "b: 1\n"),
                ("infra/c.yaml", "c: 1\n"),
                ("README.md", "# r\n"),
            ]),
        )?;
        f.create(
            "sparse",
            json!({ "url": git.http_url(), "interval": "10m", "sparseCheckout": ["./deploy"] }),
        )
        .await?;
        let first = f.wait_ready("sparse", "True").await?;
        assert_eq!(
            download(&first).await?.keys().collect::<Vec<_>>(),
            ["deploy/a.yaml"]
        );
        assert_eq!(status(&first).observed_sparse_checkout, ["./deploy"]);
        let metrics = &f.controller.metrics;
        let fetches = metrics.fetches.load(Ordering::Relaxed);
        f.request_reconcile("sparse", "unchanged-1").await?;
        assert_eq!(
            metrics.fetches.load(Ordering::Relaxed),
            fetches,
            "no clone when nothing changed"
        );

        patch_spec(
            &f,
            "sparse",
            json!({ "sparseCheckout": ["deploy", "apps/"] }),
        )
        .await?;
        let second = wait_ready_and(&f, "sparse", "apps checked out too", |r| {
            status(r).observed_sparse_checkout == ["deploy", "apps/"]
        })
        .await?;
        assert_eq!(revision(&second), revision(&first));
        assert_eq!(
            download(&second).await?.keys().collect::<Vec<_>>(),
            ["apps/b.yaml", "deploy/a.yaml"]
        );

        patch_spec(&f, "sparse", json!({ "sparseCheckout": ["missing"] })).await?;
        let failed = f.wait_ready("sparse", "False").await?;
        assert_eq!(ready_reason(&failed), reasons::GIT_OPERATION_FAILED);
        let message = condition(&failed, types::READY).unwrap().message;
        assert!(message.contains("'missing' does not exist"), "{message}");
        assert_eq!(
            revision(&failed),
            revision(&first),
            "the last good artifact stays"
        );
        Ok(())
    }

    #[tokio::test]
    async fn git_over_https_goes_through_the_proxy_of_proxy_secret_ref() -> Result<()> {
        let f = Fixture::start().await?;
        let (harness, git) = harness_repo().await?;
        let url = git.https_url()?;
        let upstream = url
            .strip_prefix("https://")
            .and_then(|r| r.split('/').next())
            .context("harness URL")?
            .to_owned();
        // `localhost` is in the server's certificate, and nothing listens on port 1: only the
        // proxy, which sends every tunnel to the server, makes this URL work.
        let via_proxy_only = url.replacen(&upstream, "localhost:1", 1);
        let proxy = weir_e2e::LoopbackProxy::start(&upstream, "proxy-user", "proxy-s3cret").await?;
        let ca = read(harness.git().https_ca()?)?;
        f.secret("ca", &[("ca.crt", &ca)]).await?;
        let address = proxy.url();
        let proxy_secret = |name: &'static str, password: &'static str| {
            let (f, address) = (&f, &address);
            async move {
                f.secret(
                    name,
                    &[
                        ("address", address.as_str()),
                        ("username", "proxy-user"),
                        ("password", password),
                    ],
                )
                .await
            }
        };
        proxy_secret("proxy", "proxy-s3cret").await?;
        let spec = |secret: &str| {
            json!({ "url": via_proxy_only, "interval": "10m", "secretRef": { "name": "ca" },
                    "proxySecretRef": { "name": secret } })
        };
        f.create("proxied", spec("proxy")).await?;
        let ready = f.wait_ready("proxied", "True").await?;
        assert_eq!(revision(&ready), format!("main@sha1:{}", git.head()?));
        assert!(proxy.forwarded() > 0, "nothing went through the proxy");

        // A proxy refusing the credentials fails the fetch; no password shows anywhere.
        proxy_secret("bad-proxy", "wrong-pw-123").await?;
        f.create("refused", spec("bad-proxy")).await?;
        let refused = f.wait_ready("refused", "False").await?;
        let message = condition(&refused, types::READY).unwrap().message;
        f.create("no-secret", spec("absent")).await?;
        let missing = f.wait_ready("no-secret", "False").await?;
        assert_eq!(ready_reason(&missing), reasons::AUTHENTICATION_FAILED);
        let missing_message = condition(&missing, types::READY).unwrap().message;
        assert!(
            missing_message.contains("/absent' not found"),
            "{missing_message}"
        );

        // Plain http:// would go around the proxy (libgit2 connects to the server itself):
        // refused, naming the field.
        f.create(
            "plain",
            json!({ "url": git.http_url(), "interval": "10m",
                    "proxySecretRef": { "name": "proxy" } }),
        )
        .await?;
        let plain = f.wait_ready("plain", "False").await?;
        assert!(
            condition(&plain, types::STALLED)
                .as_ref()
                .is_some_and(weir_api::Condition::is_true)
        );
        let plain_message = condition(&plain, types::READY).unwrap().message;
        assert!(
            plain_message.contains("spec.proxySecretRef") && plain_message.contains("https://"),
            "{plain_message}"
        );

        let everything = format!(
            "{message}{missing_message}{}{}",
            f.events_text().await?,
            serde_json::to_string(&f.api.get("refused").await?.status)?
        );
        assert!(!everything.contains("wrong-pw-123") && !everything.contains("proxy-s3cret"));
        Ok(())
    }

    #[tokio::test]
    async fn providers_other_than_generic_stall_naming_the_provider() -> Result<()> {
        let f = Fixture::start().await?;
        let (_, git) = harness_repo().await?;
        f.create(
            "generic",
            json!({ "url": git.http_url(), "interval": "10m", "provider": "generic" }),
        )
        .await?;
        f.create(
            "azure",
            json!({ "url": git.http_url(), "interval": "10m", "provider": "azure",
                    "serviceAccountName": "git-identity" }),
        )
        .await?;
        f.create(
            "github",
            json!({ "url": git.http_url(), "interval": "10m", "provider": "github" }),
        )
        .await?;
        f.wait_ready("generic", "True").await?;
        for provider in ["azure", "github"] {
            let repo = f.wait_ready(provider, "False").await?;
            assert_eq!(ready_reason(&repo), "InvalidProviderConfiguration");
            assert!(
                condition(&repo, types::STALLED)
                    .as_ref()
                    .is_some_and(weir_api::Condition::is_true)
            );
            let message = condition(&repo, types::READY).unwrap().message;
            assert!(
                message.contains(&format!("spec.provider '{provider}'")),
                "{message}"
            );
        }
        Ok(())
    }

    #[tokio::test]
    async fn submodules_are_archived_when_recurse_submodules_is_set() -> Result<()> {
        let f = Fixture::start().await?;
        let harness = Harness::get().await?;
        let lib = harness
            .git()
            .create_repo("lib", &BTreeMap::from([("lib.yaml", "lib: 1\n")]))?;
        let (_, app) = harness_repo().await?;
        // Add the submodule by its http URL through a clone of the bare repository.
        let work = tempfile::tempdir()?;
        let git = |args: &[&str]| -> Result<()> {
            let out = weir_e2e::git_command()
                .current_dir(work.path())
                .args(args)
                .output()?;
            ensure!(
                out.status.success(),
                "git {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(())
        };
        git(&["clone", "--quiet", &app.path().display().to_string(), "."])?;
        git(&["submodule", "add", "--quiet", &lib.http_url(), "vendor/lib"])?;
        git(&["commit", "--quiet", "--message", "add lib"])?;
        git(&["push", "--quiet", "origin", "HEAD:refs/heads/main"])?;

        f.create("app", json!({ "url": app.http_url(), "interval": "10m" }))
            .await?;
        let plain = f.wait_ready("app", "True").await?;
        assert!(!download(&plain).await?.contains_key("vendor/lib/lib.yaml"));

        patch_spec(&f, "app", json!({ "recurseSubmodules": true })).await?;
        let recursed = wait_ready_and(&f, "app", "submodules recursed", |r| {
            status(r).observed_recurse_submodules
        })
        .await?;
        assert_eq!(revision(&recursed), revision(&plain));
        let files = download(&recursed).await?;
        assert_eq!(files["vendor/lib/lib.yaml"], "lib: 1\n");
        assert!(files.contains_key("deploy/configmap.yaml"));
        Ok(())
    }
}
