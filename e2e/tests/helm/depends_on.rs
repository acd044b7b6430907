//! Weir's cross-kind `dependsOn`: a HelmRelease waits for a Kustomization and a Kustomization
//! for a HelmRelease, each started by the other becoming Ready (watches, not the requeue); a
//! cycle across kinds stalls both, naming every object in it.

use anyhow::Result;
use kube::Api;
use serde_json::json;
use weir_api::{Kustomization, condition::find_condition, helm_release as hr, types};
use weir_e2e::unique_name;

use crate::fixture::{Fixture, app_chart};

const CONFIG: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: NAMESPACE\ndata:\n  mode: fast\n";

#[tokio::test]
async fn releases_and_kustomizations_wait_for_each_other() -> Result<()> {
    let fx = Fixture::start()
        .await?
        .with_kustomize(&[("config/settings.yaml", CONFIG)])
        .await?;
    let chart = unique_name("dependent", 30);
    fx.publish(&app_chart(&chart, "1.0.0")).await?;

    // The HelmRelease depends on a Kustomization that does not exist yet.
    fx.create(
        "web",
        &chart,
        "*",
        json!({ "dependsOn": [{ "kind": "Kustomization", "name": "config" }] }),
    )
    .await?;
    let waiting = fx
        .wait_ready("web", "False", Some(hr::DEPENDENCY_NOT_READY_REASON))
        .await?;
    let message = find_condition(&waiting.status.unwrap_or_default().conditions, types::READY)
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains(&format!("Kustomization/{}/config", fx.ns.name())),
        "{message}"
    );
    assert_eq!(fx.storage_secrets("web").await?, Vec::<String>::new());

    // A Kustomization depending on the HelmRelease waits too.
    fx.create_ks(
        "after",
        json!({ "path": "./config", "dependsOn": [{ "kind": "HelmRelease", "name": "web" }],
                "targetNamespace": fx.ns.name() }),
    )
    .await?;
    // The Kustomization the release waits for: once Ready, the release is made at once (the
    // requeue is 10 minutes), and then the Kustomization waiting for the release.
    fx.create_ks("config", json!({ "path": "./config" }))
        .await?;
    fx.wait_ready("web", "True", Some(hr::INSTALL_SUCCEEDED_REASON))
        .await?;
    let kustomizations: Api<Kustomization> = Api::namespaced(fx.client.clone(), fx.ns.name());
    weir_e2e::wait_ready(&kustomizations, "after", "True", None).await?;
    Ok(())
}

#[tokio::test]
async fn a_cycle_across_kinds_stalls_both_naming_each() -> Result<()> {
    let fx = Fixture::start()
        .await?
        .with_kustomize(&[("config/settings.yaml", CONFIG)])
        .await?;
    let chart = unique_name("cycle", 30);
    fx.publish(&app_chart(&chart, "1.0.0")).await?;
    fx.create(
        "a",
        &chart,
        "*",
        json!({ "dependsOn": [{ "kind": "Kustomization", "name": "b" }] }),
    )
    .await?;
    fx.create_ks(
        "b",
        json!({ "path": "./config", "dependsOn": [{ "kind": "HelmRelease", "name": "a" }] }),
    )
    .await?;
    let ns = fx.ns.name();
    let stalled = fx
        .wait_ready("a", "False", Some(hr::DEPENDENCY_NOT_READY_REASON))
        .await?;
    let conditions = stalled.status.unwrap_or_default().conditions;
    let message = find_condition(&conditions, types::STALLED)
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert_eq!(
        message,
        format!(
            "dependency cycle: HelmRelease/{ns}/a -> Kustomization/{ns}/b -> HelmRelease/{ns}/a"
        )
    );
    let kustomizations: Api<Kustomization> = Api::namespaced(fx.client.clone(), ns);
    let b = weir_e2e::wait_ready(&kustomizations, "b", "False", Some("DependencyNotReady")).await?;
    let stalled = find_condition(&b.status.unwrap_or_default().conditions, types::STALLED)
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert_eq!(
        stalled,
        format!(
            "dependency cycle: Kustomization/{ns}/b -> HelmRelease/{ns}/a -> Kustomization/{ns}/b"
        )
    );
    Ok(())
}
