//! What an artifact holds and when a new one is made: an unchanged remote is not cloned again,
//! ignore rules shape the tree, equal trees give equal digests, and a failure keeps the last good one.

use std::{collections::BTreeMap, sync::atomic::Ordering};

use anyhow::Result;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use weir_api::GitRepository;
use weir_e2e::{Harness, wait_gone};

use crate::fixture::*;

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
    wait_gone(&f.api, "app").await?;
    assert!(!dir.exists(), "artifacts of a deleted object are removed");
    Ok(())
}
