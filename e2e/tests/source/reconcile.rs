//! How a GitRepository reports its reconciles: `Reconciling` while a new generation or revision
//! is built, and nothing done while suspended.

use std::sync::atomic::Ordering;

use anyhow::Result;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use weir_api::{condition::find_condition, reasons, types};
use weir_e2e::{wait_seen, watch_reconciling};

use crate::fixture::*;

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
