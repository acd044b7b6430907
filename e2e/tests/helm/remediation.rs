//! Failures and what follows them, as the spec says: a values-schema violation installs
//! nothing and stalls until the values change; a failed upgrade is rolled back, retried, then
//! stalled, and `resetAt` gives it its retries back; a release left pending by a killed Helm is
//! unlocked and released again; tests run after a release and report TestSuccess.

use anyhow::Result;
use kube::api::DeleteParams;
use serde_json::json;
use weir_api::{condition::find_condition, helm_release as hr, types};
use weir_e2e::unique_name;

use crate::fixture::{Fixture, app_chart};

/// `values.schema.json` requiring an integer `replicaCount`.
const SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft-07/schema#",
  "type": "object",
  "properties": { "replicaCount": { "type": "integer", "minimum": 0 } }
}"#;

#[tokio::test]
async fn a_values_schema_violation_installs_nothing_and_stalls_until_fixed() -> Result<()> {
    let fx = Fixture::start().await?;
    let chart = unique_name("schema", 30);
    fx.publish(&app_chart(&chart, "1.0.0").file("values.schema.json", SCHEMA))
        .await?;
    fx.create(
        "app",
        &chart,
        "*",
        json!({ "values": { "replicaCount": "many" } }),
    )
    .await?;

    // No retries: one failed install, then Stalled with Flux's reason and a message that names
    // the value and the schema.
    let stalled = fx
        .wait_ready("app", "False", Some("RetriesExceeded"))
        .await?;
    let status = stalled.status.unwrap_or_default();
    let ready = find_condition(&status.conditions, types::READY).unwrap();
    assert!(
        ready
            .message
            .contains("Failed to install after 1 attempt(s)"),
        "{}",
        ready.message
    );
    let stalled_condition = find_condition(&status.conditions, types::STALLED).unwrap();
    assert_eq!(stalled_condition.reason, "RetriesExceeded");
    let released = find_condition(&status.conditions, hr::RELEASED_CONDITION).unwrap();
    assert_eq!(released.reason, hr::INSTALL_FAILED_REASON);
    assert!(
        released.message.contains("replicaCount") && released.message.contains("schema"),
        "the failure names the value and the schema: {}",
        released.message
    );
    assert_eq!(status.install_failures, 1);
    // Helm validated before it stored anything: nothing installed.
    assert_eq!(fx.storage_secrets("app").await?, Vec::<String>::new());

    // Asked again without a change: no new attempt.
    let again = fx.reconcile("app", "no-change").await?;
    assert_eq!(again.status.unwrap_or_default().install_failures, 1);
    assert_eq!(fx.storage_secrets("app").await?, Vec::<String>::new());

    // Valid values are a new desired state: retries back, installed.
    fx.patch(
        "app",
        json!({ "spec": { "values": { "replicaCount": 0 } } }),
    )
    .await?;
    let ready = fx
        .wait_ready("app", "True", Some(hr::INSTALL_SUCCEEDED_REASON))
        .await?;
    let status = ready.status.unwrap_or_default();
    assert_eq!(status.install_failures, 0);
    assert!(find_condition(&status.conditions, types::STALLED).is_none());
    Ok(())
}

#[tokio::test]
async fn a_failed_upgrade_is_rolled_back_retried_then_stalled_until_reset() -> Result<()> {
    let fx = Fixture::start().await?;
    let chart = unique_name("rollback", 30);
    fx.publish(&app_chart(&chart, "1.0.0")).await?;
    fx.create(
        "app",
        &chart,
        "*",
        json!({
            "timeout": "3s",
            "upgrade": { "remediation": { "retries": 1 } },
        }),
    )
    .await?;
    fx.wait_ready("app", "True", Some(hr::INSTALL_SUCCEEDED_REASON))
        .await?;

    // A Deployment that can never become ready: one replica no node may run.
    fx.patch(
        "app",
        json!({ "spec": { "values": { "replicaCount": 1, "nodeSelector": { "weir.dev/none": "x" } } } }),
    )
    .await?;
    let stalled = fx
        .wait_ready("app", "False", Some("RetriesExceeded"))
        .await?;
    let status = stalled.status.unwrap_or_default();
    let ready = find_condition(&status.conditions, types::READY).unwrap();
    assert!(
        ready
            .message
            .contains("Failed to upgrade after 2 attempt(s)"),
        "{}",
        ready.message
    );
    assert_eq!(status.upgrade_failures, 2);
    let remediated = find_condition(&status.conditions, hr::REMEDIATED_CONDITION).unwrap();
    assert_eq!(remediated.reason, hr::ROLLBACK_SUCCEEDED_REASON);
    // Each failed upgrade was rolled back to the release that worked: install, upgrade
    // (failed), rollback, upgrade (failed), rollback — all in Helm's own history.
    let history = fx.helm_history("app").await?;
    let statuses: Vec<&str> = history.iter().map(|(_, s, _)| s.as_str()).collect();
    assert_eq!(
        statuses,
        vec!["superseded", "failed", "superseded", "failed", "deployed"],
        "{history:?}"
    );
    // The rollback left the release as it was installed: no replicas.
    let values = fx.helm(&["get", "values", "app", "-o", "json"]).await?;
    assert_eq!(values.trim(), "null", "rolled back to the install's values");

    // resetAt gives the release its retries back: two more failed attempts, stalled again.
    fx.patch(
        "app",
        // As `flux reconcile helmrelease --reset` asks: a reset with a reconcile request.
        json!({ "metadata": { "annotations": {
            "reconcile.fluxcd.io/resetAt": "one",
            "reconcile.fluxcd.io/requestedAt": "one",
        } } }),
    )
    .await?;
    let api = fx.api.clone();
    weir_e2e::wait_until("the reset to be handled and retried", || {
        let api = api.clone();
        async move {
            let hr = api.get("app").await.map_err(|e| e.to_string())?;
            let status = hr.status.unwrap_or_default();
            let stalled = find_condition(&status.conditions, types::STALLED).is_some();
            if status.last_handled_reset_at.as_deref() == Some("one") && stalled {
                Ok(())
            } else {
                Err(format!(
                    "reset {:?}, stalled {stalled}",
                    status.last_handled_reset_at
                ))
            }
        }
    })
    .await?;
    // Two more upgrades, each rolled back: revisions 6 to 9, and Helm keeps the last five
    // (maxHistory's default).
    let history = fx.helm_history("app").await?;
    let revisions: Vec<i64> = history.iter().map(|(r, _, _)| *r).collect();
    assert_eq!(revisions, vec![5, 6, 7, 8, 9], "{history:?}");
    assert_eq!(history.last().map(|(_, s, _)| s.as_str()), Some("deployed"));
    Ok(())
}

#[tokio::test]
async fn tests_run_after_a_release_and_report_test_success() -> Result<()> {
    let fx = Fixture::start().await?;
    let chart = unique_name("tested", 30);
    let test_job = "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {{ .Release.Name }}-smoke\n  annotations:\n    helm.sh/hook: test\nspec:\n  backoffLimit: 0\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n        - name: smoke\n          image: registry.invalid/smoke:1\n";
    fx.publish(&app_chart(&chart, "1.0.0").template("test.yaml", test_job))
        .await?;
    fx.create("app", &chart, "*", json!({ "test": { "enable": true } }))
        .await?;
    let tested = fx
        .wait_condition(
            "app",
            hr::TEST_SUCCESS_CONDITION,
            "True",
            hr::TEST_SUCCEEDED_REASON,
        )
        .await?;
    let status = tested.status.unwrap_or_default();
    let hooks = status.history[0].test_hooks.clone().unwrap_or_default();
    let smoke = &hooks["app-smoke"];
    assert_eq!(smoke.phase.as_deref(), Some("Succeeded"), "{hooks:?}");
    assert!(smoke.last_completed.is_some());
    fx.wait_ready("app", "True", None).await?;
    // Tested once per revision: a reconcile without a change runs no test again.
    let before = smoke.last_started.clone();
    let again = fx.reconcile("app", "again").await?;
    let hooks = again.status.unwrap_or_default().history[0]
        .test_hooks
        .clone()
        .unwrap_or_default();
    assert_eq!(hooks["app-smoke"].last_started, before);
    Ok(())
}

#[tokio::test]
async fn a_pending_release_left_by_a_killed_helm_is_unlocked_and_released() -> Result<()> {
    let mut fx = Fixture::start().await?;
    let chart = unique_name("pending", 30);
    fx.publish(&app_chart(&chart, "1.0.0")).await?;
    fx.create("app", &chart, "*", json!({})).await?;
    fx.wait_ready("app", "True", Some(hr::INSTALL_SUCCEEDED_REASON))
        .await?;

    // With the controller stopped, a person's `helm upgrade` is killed while it waits: the
    // release stays pending-upgrade, which blocks every later Helm action.
    fx.stop_helm();
    fx.kill_helm_upgrade_midway("app", &chart).await?;
    let history = fx.helm_history("app").await?;
    assert_eq!(history.last().unwrap().1, "pending-upgrade", "{history:?}");

    // Weir unlocks it as Flux does and releases what the spec asks.
    fx.start_helm().await?;
    let done = fx.reconcile("app", "after-kill").await?;
    let status = done.status.unwrap_or_default();
    assert_eq!(
        find_condition(&status.conditions, types::READY).map(|c| c.status),
        Some(weir_api::ConditionStatus::True),
        "{:?}",
        status.conditions
    );
    let history = fx.helm_history("app").await?;
    let statuses: Vec<&str> = history.iter().map(|(_, s, _)| s.as_str()).collect();
    assert_eq!(
        statuses,
        vec!["superseded", "failed", "deployed"],
        "{history:?}"
    );
    let description = fx.helm(&["history", "app", "-o", "json"]).await?;
    assert!(
        description.contains("Release unlocked from stale 'pending-upgrade' state"),
        "{description}"
    );

    // Deleting the HelmRelease uninstalls what remains.
    fx.api.delete("app", &DeleteParams::default()).await?;
    weir_e2e::wait_gone(&fx.api, "app").await?;
    assert_eq!(fx.storage_secrets("app").await?, Vec::<String>::new());
    Ok(())
}
