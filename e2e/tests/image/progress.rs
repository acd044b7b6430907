//! Work in progress shows: a new generation of an ImageRepository or ImagePolicy, and a
//! requested scan, are `Reconciling=True` with Flux's `Progressing` reason (Ready=Unknown)
//! before they are `Ready=True` again, as a watch of the object sees them.

use anyhow::Result;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use weir_api::{ImagePolicy, ImageRepository, condition::find_condition, reasons, types};
use weir_e2e::{Seen, wait_seen, wait_until, watch_reconciling};

use crate::fixture::*;

/// Waits until the watch has seen `Reconciling=True` with `Progressing`, `message` and
/// Ready=Unknown.
async fn wait_progressing(seen: &Seen, message: &str) -> Result<()> {
    let entry = (
        reasons::PROGRESSING.to_owned(),
        message.to_owned(),
        "Unknown".to_owned(),
    );
    wait_seen(seen, entry).await?;
    Ok(())
}

fn assert_not_reconciling(obj: &impl Observed) {
    let conditions = obj.conditions();
    assert!(
        find_condition(&conditions, types::RECONCILING).is_none(),
        "Ready clears Reconciling: {conditions:?}"
    );
}

#[tokio::test]
async fn new_generations_and_requested_scans_are_reconciling_until_ready() -> Result<()> {
    let f = Fixture::start().await?;
    let image = push_tags("progress", &["1.0.0", "1.1.0", "2.0.0"]).await?;
    let repo_seen = watch_reconciling(&f.api::<ImageRepository>(), "app");
    let policy_seen = watch_reconciling(&f.api::<ImagePolicy>(), "app");

    f.repository(
        "app",
        json!({ "image": image, "interval": "1h", "insecure": true }),
    )
    .await?;
    let repo: ImageRepository = f.wait_ready("app", "True", None).await?;
    wait_progressing(&repo_seen, "processing object: new generation 0 -> 1").await?;
    assert_not_reconciling(&repo);

    f.policy(
        "app",
        json!({
            "imageRepositoryRef": { "name": "app" },
            "policy": { "semver": { "range": "<2.0.0" } },
        }),
    )
    .await?;
    f.latest_tag("app", "1.1.0").await?;
    wait_progressing(&policy_seen, "processing object: new generation 0 -> 1").await?;

    // A new generation of the policy: in progress until the new pick is ready.
    let patch = json!({ "spec": { "policy": { "semver": { "range": ">=2.0.0" } } } });
    f.api::<ImagePolicy>()
        .patch("app", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    f.latest_tag("app", "2.0.0").await?;
    let policy: ImagePolicy = f
        .wait_ready("app", "True", Some(reasons::SUCCEEDED))
        .await?;
    wait_progressing(&policy_seen, "processing object: new generation 1 -> 2").await?;
    assert_not_reconciling(&policy);

    // A requested scan is work in progress too.
    f.request_reconcile::<ImageRepository>("app", "rescan-1")
        .await?;
    wait_progressing(&repo_seen, "scanning: reconcile requested").await?;
    let repo = wait_until("the requested scan to be handled", || {
        let api = f.api::<ImageRepository>();
        async move {
            let repo = api.get("app").await.map_err(|e| e.to_string())?;
            let status = repo.status.clone().unwrap_or_default();
            let ready = find_condition(&status.conditions, types::READY)
                .is_some_and(weir_api::Condition::is_true);
            if ready && status.last_handled_reconcile_at.as_deref() == Some("rescan-1") {
                Ok(repo)
            } else {
                Err(format!("{status:?}"))
            }
        }
    })
    .await?;
    assert_not_reconciling(&repo);

    // Nothing new for the policy (the rescan found the same tags): no mark.
    let marks = policy_seen.lock().unwrap().len();
    f.wait_ready::<ImagePolicy>("app", "True", Some(reasons::SUCCEEDED))
        .await?;
    assert_eq!(
        policy_seen.lock().unwrap().len(),
        marks,
        "{:?}",
        policy_seen.lock().unwrap()
    );
    Ok(())
}
