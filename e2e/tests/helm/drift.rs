//! Drift detection: a live object changed behind Helm's back (`kubectl edit`, `kubectl
//! delete`) is corrected from the release's manifest with `mode: enabled`, without a new Helm
//! revision, and reported (the Drifted condition, a Warning Event) with `mode: warn`;
//! `ignore` paths are left out.

use anyhow::Result;
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Service};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams},
};
use serde_json::json;
use weir_api::{ConditionStatus, condition::find_condition, helm_release as hr};
use weir_e2e::unique_name;

use crate::fixture::{Fixture, app_chart};

/// Scales the release's Deployment to 3 as `kubectl edit` would (an update by another manager).
async fn edit_replicas(fx: &Fixture, name: &str) -> Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(fx.client.clone(), fx.ns.name());
    let params = PatchParams {
        field_manager: Some("kubectl-edit".into()),
        ..PatchParams::default()
    };
    deployments
        .patch(
            name,
            &params,
            &Patch::Merge(&json!({ "spec": { "replicas": 3 } })),
        )
        .await?;
    Ok(())
}

async fn replicas(fx: &Fixture, name: &str) -> Result<Option<i32>> {
    let deployments: Api<Deployment> = Api::namespaced(fx.client.clone(), fx.ns.name());
    Ok(deployments.get(name).await?.spec.and_then(|s| s.replicas))
}

#[tokio::test]
async fn drift_is_corrected_when_enabled_without_a_new_revision() -> Result<()> {
    let fx = Fixture::start().await?;
    let chart = unique_name("drift", 30);
    fx.publish(&app_chart(&chart, "1.0.0")).await?;
    fx.create(
        "app",
        &chart,
        "*",
        json!({ "driftDetection": { "mode": "enabled" } }),
    )
    .await?;
    fx.wait_ready("app", "True", Some(hr::INSTALL_SUCCEEDED_REASON))
        .await?;

    edit_replicas(&fx, "app").await?;
    let services: Api<Service> = Api::namespaced(fx.client.clone(), fx.ns.name());
    services.delete("app", &DeleteParams::default()).await?;
    weir_e2e::wait_gone(&services, "app").await?;

    let corrected = fx.reconcile("app", "after-edit").await?;
    let status = corrected.status.unwrap_or_default();
    let drifted = find_condition(&status.conditions, hr::DRIFTED_CONDITION).unwrap();
    assert_eq!(
        (drifted.status, drifted.reason.as_str()),
        (ConditionStatus::False, hr::DRIFT_CORRECTED_REASON)
    );
    let ns = fx.ns.name();
    assert!(
        drifted.message.contains(&format!(
            "Deployment/{ns}/app changed (kubectl-edit changed .spec.replicas)"
        )) && drifted
            .message
            .contains(&format!("Service/{ns}/app removed")),
        "{}",
        drifted.message
    );
    assert_eq!(replicas(&fx, "app").await?, Some(0));
    assert!(
        services.get_opt("app").await?.is_some(),
        "the Service is back"
    );
    // Corrected in place: still the first revision.
    assert_eq!(fx.helm_history("app").await?.len(), 1);

    // Nothing drifted since: the condition goes.
    let calm = fx.reconcile("app", "calm").await?;
    let conditions = calm.status.unwrap_or_default().conditions;
    assert!(find_condition(&conditions, hr::DRIFTED_CONDITION).is_none());
    Ok(())
}

#[tokio::test]
async fn drift_is_reported_when_warned_and_ignored_paths_are_left_out() -> Result<()> {
    let fx = Fixture::start().await?;
    let chart = unique_name("warned", 30);
    fx.publish(&app_chart(&chart, "1.0.0")).await?;
    fx.create(
        "app",
        &chart,
        "*",
        json!({ "driftDetection": { "mode": "warn" } }),
    )
    .await?;
    fx.wait_ready("app", "True", Some(hr::INSTALL_SUCCEEDED_REASON))
        .await?;

    edit_replicas(&fx, "app").await?;
    let warned = fx.reconcile("app", "after-edit").await?;
    let status = warned.status.unwrap_or_default();
    let drifted = find_condition(&status.conditions, hr::DRIFTED_CONDITION).unwrap();
    assert_eq!(
        (drifted.status, drifted.reason.as_str()),
        (ConditionStatus::True, hr::DRIFT_DETECTED_REASON)
    );
    assert_eq!(
        drifted.message,
        format!(
            "Cluster state of release {0}/app.v1 has drifted from the desired state: Deployment/{0}/app changed (kubectl-edit changed .spec.replicas)",
            fx.ns.name()
        )
    );
    // Reported, not corrected; the release stays Ready.
    assert_eq!(replicas(&fx, "app").await?, Some(3));
    let ready = find_condition(&status.conditions, "Ready").unwrap();
    assert_eq!(ready.status, ConditionStatus::True);
    let events = fx.events("app").await?;
    assert!(
        events
            .iter()
            .any(|(kind, reason, _)| kind == "Warning" && reason == hr::DRIFT_DETECTED_REASON),
        "{events:?}"
    );

    // The replicas are someone else's business: ignored, no drift.
    fx.patch(
        "app",
        json!({ "spec": { "driftDetection": { "ignore": [
            { "paths": ["/spec/replicas"], "target": { "kind": "Deployment" } }
        ] } } }),
    )
    .await?;
    let ignored = fx.wait_ready("app", "True", None).await?;
    let conditions = ignored.status.unwrap_or_default().conditions;
    assert!(
        find_condition(&conditions, hr::DRIFTED_CONDITION).is_none(),
        "{conditions:?}"
    );
    assert_eq!(replicas(&fx, "app").await?, Some(3));
    Ok(())
}
