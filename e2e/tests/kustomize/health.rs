//! Health: `wait`, `healthChecks` and `healthCheckExprs` decide when a Kustomization is Ready.

use anyhow::Result;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::json;
use weir_api::{condition::find_condition, reasons, types};
use weir_e2e::wait_until;

use crate::fixture::*;

#[tokio::test]
async fn wait_fails_with_health_check_failed_for_a_deployment_that_never_becomes_ready()
-> Result<()> {
    let never_ready = DEPLOYMENT.replace(
        "    spec:\n      containers:",
        "    spec:\n      nodeSelector: {weir.dev/no-such-node: \"true\"}\n      containers:",
    );
    let f = Fixture::start(&[("apps/deploy.yaml", &never_ready)]).await?;
    f.create_ks(
        "app",
        json!({ "path": "./apps", "wait": true, "timeout": "8s" }),
    )
    .await?;
    // While it waits, the work in progress shows as Flux shows it, so kstatus, `kubectl wait`
    // and dependents never take the old Ready for the new revision's. (The timeout is Flux's
    // floor of 30s, whatever less is asked.)
    let head = f.repo.head()?;
    let fetching =
        format!("Fetching manifests for revision main@sha1:{head} with a timeout of 30s");
    let ks = f
        .wait_ks("app", "Reconciling=True while it waits", |ks| {
            let conditions = ks
                .status
                .as_ref()
                .map(|s| s.conditions.as_slice())
                .unwrap_or_default();
            find_condition(conditions, types::RECONCILING)
                .is_some_and(|c| c.reason == reasons::PROGRESSING && c.message == fetching)
        })
        .await?;
    let status = ks.status.as_ref().unwrap();
    let ready = find_condition(&status.conditions, types::READY).unwrap();
    assert_eq!(
        (format!("{:?}", ready.status), ready.message.as_str()),
        ("Unknown".to_owned(), "Reconciliation in progress")
    );
    assert_eq!(
        weir_api::condition::kstatus(
            &status.conditions,
            ks.metadata.generation,
            status.observed_generation
        ),
        weir_api::KStatus::InProgress
    );
    let ks = f
        .wait_failed("app", None, reasons::HEALTH_CHECK_FAILED)
        .await?;
    let m = message(&ks);
    assert!(m.contains(&format!("Deployment/{}/web", f.ns())), "{m}");
    let healthy = find_condition(&ks.status.as_ref().unwrap().conditions, types::HEALTHY).unwrap();
    assert_eq!(format!("{:?}", healthy.status), "False");
    f.teardown().await
}

/// The Widgets of `group` at v1.
fn widget_resource(group: &str) -> kube::api::ApiResource {
    kube::api::ApiResource {
        group: group.to_owned(),
        version: "v1".into(),
        api_version: format!("{group}/v1"),
        kind: "Widget".into(),
        plural: "widgets".into(),
    }
}

/// Sets a Widget's `status.phase` (what its controller would do).
async fn set_phase(api: &Api<kube::api::DynamicObject>, name: &str, phase: &str) -> Result<()> {
    let patch = json!({ "status": { "phase": phase } });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Waits until the object `name` exists.
async fn wait_exists(api: &Api<kube::api::DynamicObject>, name: &str) -> Result<()> {
    wait_until(&format!("{name} to be applied"), || async {
        api.get_opt(name)
            .await
            .map_err(|e| e.to_string())?
            .map(|_| ())
            .ok_or_else(|| "not yet".to_owned())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn health_check_exprs_decide_custom_resources_and_a_failed_one_fails_at_once() -> Result<()> {
    let group = format!("{}.weir.test", weir_e2e::unique_name("cel", 30));
    let crd = format!(
        "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.{group}
spec:
  group: {group}
  scope: Namespaced
  names: {{kind: Widget, plural: widgets, singular: widget, listKind: WidgetList}}
  versions:
  - {{name: v1, served: true, storage: true, schema: {{openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}}}}}
"
    );
    let widget = |name: &str| {
        format!(
            "apiVersion: {group}/v1\nkind: Widget\nmetadata:\n  name: {name}\n  namespace: NAMESPACE\nspec: {{size: 1}}\n"
        )
    };
    let f = Fixture::start(&[("crd/crd.yaml", &crd)]).await?;
    let head = f.repo.head()?;
    f.create_ks("crd", json!({ "path": "./crd" })).await?;
    f.wait_applied("crd", &head).await?;
    let exprs = json!([{
        "apiVersion": format!("{group}/v1"),
        "kind": "Widget",
        "inProgress": "status.phase == 'Pending'",
        "failed": "status.phase == 'Broken'",
        "current": "status.phase == 'Ready'",
    }]);
    let widgets: Api<kube::api::DynamicObject> =
        Api::namespaced_with(f.client.clone(), f.ns(), &widget_resource(&group));

    // Ready once the expression says so: Pending is in progress, Ready is current.
    let good = f
        .repo
        .change()
        .write("apps/good.yaml", &f.yaml(&widget("good")))
        .commit("a widget")?;
    f.create_ks(
        "app",
        json!({ "path": "./apps", "wait": true, "timeout": "2m", "healthCheckExprs": exprs }),
    )
    .await?;
    wait_exists(&widgets, "good").await?;
    set_phase(&widgets, "good", "Pending").await?;
    let ks = f
        .wait_ks(
            "app",
            "Reconciling=True while the widget is Pending",
            |ks| {
                let conditions = ks
                    .status
                    .as_ref()
                    .map(|s| s.conditions.as_slice())
                    .unwrap_or_default();
                find_condition(conditions, types::RECONCILING).is_some()
            },
        )
        .await?;
    assert_ne!(applied(&ks), Some(format!("main@sha1:{good}").as_str()));
    set_phase(&widgets, "good", "Ready").await?;
    f.wait_applied("app", &good).await?;

    // A failed widget fails the check at once, long before the two-minute timeout.
    let bad = f
        .repo
        .change()
        .write("apps/bad.yaml", &f.yaml(&widget("bad")))
        .commit("a broken widget")?;
    wait_exists(&widgets, "bad").await?;
    set_phase(&widgets, "bad", "Broken").await?;
    let ks = f
        .wait_failed("app", Some(&bad), reasons::HEALTH_CHECK_FAILED)
        .await?;
    let m = message(&ks);
    assert!(
        m.contains("failed early") && m.contains(&format!("Widget/{}/bad", f.ns())),
        "{m}"
    );

    // An expression that does not compile stalls the Kustomization, naming the field.
    f.ks.patch(
        "app",
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "healthCheckExprs": [{
            "apiVersion": format!("{group}/v1"), "kind": "Widget", "current": "status.phase ==",
        }] } })),
    )
    .await?;
    let ks = f
        .wait_failed("app", None, reasons::INVALID_CEL_EXPRESSION)
        .await?;
    assert!(
        message(&ks).contains("healthCheckExprs[0].current"),
        "{}",
        message(&ks)
    );
    f.teardown().await
}

#[tokio::test]
async fn health_checks_name_the_listed_objects_that_are_not_ready() -> Result<()> {
    let never_ready = DEPLOYMENT.replace(
        "    spec:\n      containers:",
        "    spec:\n      nodeSelector: {weir.dev/no-such-node: \"true\"}\n      containers:",
    );
    let f = Fixture::start(&[
        ("apps/deploy.yaml", &never_ready),
        ("apps/a.yaml", &config_map_yaml("a", "1")),
    ])
    .await?;
    f.create_ks(
        "app",
        json!({
            "path": "./apps",
            "timeout": "6s",
            "healthChecks": [
                { "apiVersion": "apps/v1", "kind": "Deployment", "name": "web" },
                { "apiVersion": "v1", "kind": "ConfigMap", "name": "a" },
            ],
        }),
    )
    .await?;
    let ks = f
        .wait_failed("app", None, reasons::HEALTH_CHECK_FAILED)
        .await?;
    let m = message(&ks);
    assert!(m.contains(&format!("Deployment/{}/web", f.ns())), "{m}");
    assert!(
        !m.contains("ConfigMap/"),
        "a healthy object is not named: {m}"
    );
    assert!(
        f.config_map("a").await?.is_some(),
        "applied before health was checked"
    );
    f.teardown().await
}
