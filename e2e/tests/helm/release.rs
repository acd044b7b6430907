//! HelmRelease through the real Helm 4: install, upgrade by chart version and by values (from a
//! Secret with targetPath), no new revision without a change, every revision visible to the
//! real `helm history`, and uninstall (with the HelmChart made for it) on delete.

use anyhow::Result;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, api::DeleteParams};
use serde_json::json;
use weir_api::{HelmChart, helm_release as hr};
use weir_e2e::{unique_name, wait_gone};

use crate::fixture::{Fixture, app_chart};

#[tokio::test]
async fn install_upgrade_values_and_uninstall_through_helm() -> Result<()> {
    let fx = Fixture::start().await?;
    let chart = unique_name("app", 30);
    fx.publish(&app_chart(&chart, "1.0.0")).await?;
    fx.secret("extra", &[("greeting", "from a secret")]).await?;

    fx.create(
        "app",
        &chart,
        "1.0.x",
        json!({
            "values": { "replicaCount": 0 },
            "valuesFrom": [{ "kind": "Secret", "name": "extra", "valuesKey": "greeting", "targetPath": "message" }],
        }),
    )
    .await?;
    let installed = fx
        .wait_ready("app", "True", Some(hr::INSTALL_SUCCEEDED_REASON))
        .await?;
    let status = installed.status.clone().unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .find(|c| c.r#type == "Ready")
        .cloned()
        .unwrap();
    assert_eq!(
        ready.message,
        format!(
            "Helm install succeeded for release {}/app.v1 with chart {chart}@1.0.0",
            fx.ns.name()
        )
    );
    assert_eq!(status.history.len(), 1, "{:?}", status.history);
    let snapshot = &status.history[0];
    assert_eq!(
        (
            snapshot.version,
            snapshot.status.as_str(),
            snapshot.chart_name.as_str(),
            snapshot.chart_version.as_str()
        ),
        (1, "deployed", chart.as_str(), "1.0.0")
    );
    assert!(snapshot.config_digest.starts_with("sha256:"));
    assert_eq!(status.last_attempted_revision.as_deref(), Some("1.0.0"));
    assert_eq!(
        status.helm_chart,
        Some(format!("{0}/{0}-app", fx.ns.name()))
    );
    // The HelmChart Flux would make, named as Flux names it.
    let charts: Api<HelmChart> = Api::namespaced(fx.client.clone(), fx.ns.name());
    let made = charts.get(&format!("{}-app", fx.ns.name())).await?;
    assert_eq!(made.spec.chart, chart);
    assert_eq!(made.spec.version, "1.0.x");

    // The values reached the objects: the Secret's key set as one value at targetPath.
    let configmaps: Api<ConfigMap> = Api::namespaced(fx.client.clone(), fx.ns.name());
    let cm = configmaps.get(&format!("app-{chart}")).await?;
    assert_eq!(cm.data.unwrap()["message"], "from a secret");

    // A new chart version in range is upgraded to (a new HelmChart artifact starts it).
    fx.publish(&app_chart(&chart, "1.0.1")).await?;
    fx.wait_chart_revision(&format!("{}-app", fx.ns.name()), "1.0.1")
        .await?;
    let upgraded = fx
        .wait_ready("app", "True", Some(hr::UPGRADE_SUCCEEDED_REASON))
        .await?;
    let status = upgraded.status.unwrap_or_default();
    assert_eq!(status.history[0].version, 2);
    assert_eq!(status.history[0].chart_version, "1.0.1");

    // A values change upgrades too: the Secret changes, a reconcile is asked for.
    fx.secret("extra", &[("greeting", "changed")]).await?;
    let after = fx.reconcile("app", "values-changed").await?;
    let status = after.status.unwrap_or_default();
    assert_eq!(status.history[0].version, 3, "{:?}", status.history);
    let cm = configmaps.get(&format!("app-{chart}")).await?;
    assert_eq!(cm.data.unwrap()["message"], "changed");

    // Nothing changed: no new revision.
    let same = fx.reconcile("app", "nothing-changed").await?;
    assert_eq!(same.status.unwrap_or_default().history[0].version, 3);

    // The real helm CLI sees every revision in Helm's own storage.
    let history = fx.helm_history("app").await?;
    let seen: Vec<(i64, &str)> = history.iter().map(|(r, s, _)| (*r, s.as_str())).collect();
    assert_eq!(
        seen,
        vec![(1, "superseded"), (2, "superseded"), (3, "deployed")]
    );
    assert_eq!(history[2].2, format!("{chart}-1.0.1"));
    let values = fx.helm(&["get", "values", "app", "-o", "json"]).await?;
    let values: serde_json::Value = serde_json::from_str(&values)?;
    assert_eq!(values["message"], "changed");

    // Deleting the HelmRelease uninstalls the release and deletes its HelmChart.
    fx.api.delete("app", &DeleteParams::default()).await?;
    wait_gone(&fx.api, "app").await?;
    assert_eq!(fx.storage_secrets("app").await?, Vec::<String>::new());
    assert!(configmaps.get_opt(&format!("app-{chart}")).await?.is_none());
    wait_gone(&charts, &format!("{}-app", fx.ns.name())).await?;
    Ok(())
}

/// A release a person (or Flux's helm-controller) made with the same chart and values is taken
/// over as it is: no new revision, its objects in the inventory.
#[tokio::test]
async fn an_existing_release_is_taken_over_without_a_new_revision() -> Result<()> {
    let fx = Fixture::start().await?;
    let chart = unique_name("existing", 30);
    fx.publish(&app_chart(&chart, "1.0.0")).await?;
    let repo = weir_e2e::Harness::get().await?.charts().url().to_owned();
    fx.helm(&[
        "install",
        "app",
        &chart,
        "--repo",
        &repo,
        "--version",
        "1.0.0",
    ])
    .await?;
    assert_eq!(fx.helm_history("app").await?.len(), 1);

    fx.create("app", &chart, "1.0.0", json!({})).await?;
    let ready = fx.wait_ready("app", "True", None).await?;
    let status = ready.status.unwrap_or_default();
    assert_eq!(status.history.len(), 1, "{:?}", status.history);
    assert_eq!(status.history[0].version, 1);
    assert_eq!(fx.helm_history("app").await?.len(), 1, "not released again");
    let ns = fx.ns.name();
    let ids: Vec<String> = status
        .inventory
        .unwrap_or_default()
        .entries
        .into_iter()
        .map(|e| format!("{}@{}", e.id, e.v))
        .collect();
    assert_eq!(
        ids,
        vec![
            format!("{ns}_app-{chart}__ConfigMap@v1"),
            format!("{ns}_app__Service@v1"),
            format!("{ns}_app__ServiceAccount@v1"),
            format!("{ns}_app_apps_Deployment@v1"),
        ]
    );
    Ok(())
}

/// `targetNamespace`: the release goes there, named `<target>-<name>` as Flux names it (cut to
/// Helm's 53 characters with Flux's hash when longer), and, as the helm CLI keeps it, stored
/// there too; deleting the HelmRelease uninstalls it there.
#[tokio::test]
async fn a_release_into_another_namespace_is_named_and_stored_there() -> Result<()> {
    let fx = Fixture::start().await?;
    let target = weir_e2e::Harness::get().await?.namespace().await?;
    let chart = unique_name("targeted", 30);
    fx.publish(&app_chart(&chart, "1.0.0")).await?;
    fx.create(
        "app",
        &chart,
        "*",
        json!({ "targetNamespace": target.name() }),
    )
    .await?;
    let ready = fx
        .wait_ready("app", "True", Some(hr::INSTALL_SUCCEEDED_REASON))
        .await?;
    let release = ready.release_name();
    let composed = format!("{}-app", target.name());
    assert_eq!(
        release,
        weir_api::helm_release::shorten_release_name(&composed)
    );
    assert!(release.len() <= 53);
    let status = ready.status.unwrap_or_default();
    assert_eq!(status.storage_namespace.as_deref(), Some(target.name()));
    assert_eq!(status.history[0].namespace, target.name());
    let configmaps: Api<ConfigMap> = Api::namespaced(fx.client.clone(), target.name());
    assert!(
        configmaps
            .get_opt(&format!("{release}-{chart}"))
            .await?
            .is_some()
    );
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(fx.client.clone(), target.name());
    let stored = |secrets: Api<k8s_openapi::api::core::v1::Secret>, release: String| async move {
        let params = kube::api::ListParams::default().labels(&format!("owner=helm,name={release}"));
        anyhow::Ok(secrets.list(&params).await?.items.len())
    };
    assert_eq!(stored(secrets.clone(), release.clone()).await?, 1);

    fx.api.delete("app", &DeleteParams::default()).await?;
    wait_gone(&fx.api, "app").await?;
    assert_eq!(stored(secrets, release.clone()).await?, 0);
    assert!(
        configmaps
            .get_opt(&format!("{release}-{chart}"))
            .await?
            .is_none()
    );
    Ok(())
}
