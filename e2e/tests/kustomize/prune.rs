//! Pruning and deletion: objects removed from git or with their Kustomization leave the cluster as
//! `prune` and `deletionPolicy` say.

use anyhow::Result;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams},
};
use serde_json::json;
use weir_e2e::{wait_gone, wait_until};

use crate::fixture::*;

#[tokio::test]
async fn deleting_a_kustomization_with_prune_removes_its_objects() -> Result<()> {
    let f = Fixture::start(&[("apps/a.yaml", &config_map_yaml("a", "1"))]).await?;
    f.create_ks("app", json!({ "path": "./apps" })).await?;
    let head = f.repo.head()?;
    f.wait_applied("app", &head).await?;
    assert!(f.config_map("a").await?.is_some());
    f.ks.delete("app", &DeleteParams::default()).await?;
    wait_gone(&f.config_maps(), "a").await?;
    f.teardown().await
}

/// `deletionPolicy` as Flux: `Orphan` leaves the objects although prune is on, `Delete` deletes
/// them although prune is off, and `WaitForTermination` keeps the Kustomization until its
/// objects are gone (one held here by a finalizer).
#[tokio::test]
async fn deletion_policy_orphans_deletes_or_waits_for_termination() -> Result<()> {
    let held_yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: held\n  namespace: NAMESPACE\n  finalizers: [weir.test/hold]\n";
    let f = Fixture::start(&[
        ("orphan/a.yaml", &config_map_yaml("orphaned", "1")),
        ("delete/a.yaml", &config_map_yaml("deleted", "1")),
        ("wait/a.yaml", held_yaml),
    ])
    .await?;
    let head = f.repo.head()?;
    for (name, prune, policy) in [
        ("orphan", true, "Orphan"),
        ("delete", false, "Delete"),
        ("wait", true, "WaitForTermination"),
    ] {
        let spec = json!({ "path": format!("./{name}"), "prune": prune, "deletionPolicy": policy });
        f.create_ks(name, spec).await?;
    }
    for name in ["orphan", "delete", "wait"] {
        f.wait_applied(name, &head).await?;
    }
    f.delete_ks("orphan").await?;
    assert!(f.config_map("orphaned").await?.is_some(), "Orphan left it");
    f.delete_ks("delete").await?;
    assert!(
        f.config_map("deleted").await?.is_none(),
        "Delete deleted it"
    );

    f.ks.delete("wait", &DeleteParams::default()).await?;
    wait_until("ConfigMap held to be deleted", || async {
        match f.config_map("held").await {
            Ok(Some(cm)) if cm.metadata.deletion_timestamp.is_some() => Ok(()),
            other => Err(format!("{:?}", other.map(|c| c.map(|c| c.metadata)))),
        }
    })
    .await?;
    // Terminating, not gone: the Kustomization waits for it (up to its 30 s timeout).
    assert!(f.ks.get_opt("wait").await?.is_some(), "it waits");
    let cms = Api::<ConfigMap>::namespaced(f.client.clone(), f.ns());
    let release = json!({ "metadata": { "finalizers": null } });
    cms.patch("held", &PatchParams::default(), &Patch::Merge(release))
        .await?;
    f.delete_ks("wait").await?;
    assert!(f.config_map("held").await?.is_none());
    f.teardown().await
}

#[tokio::test]
async fn an_object_whose_version_stopped_being_served_is_still_pruned() -> Result<()> {
    let group = format!("{}.weir.test", weir_e2e::unique_name("ver", 30));
    let crd = |old_served: bool| {
        format!(
            "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.{group}
spec:
  group: {group}
  scope: Namespaced
  names: {{kind: Widget, plural: widgets, singular: widget, listKind: WidgetList}}
  versions:
  - {{name: v1alpha1, served: {old_served}, storage: false, schema: {{openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}}}}}
  - {{name: v1, served: true, storage: true, schema: {{openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}}}}}
"
        )
    };
    let f = Fixture::start(&[("crd/crd.yaml", &crd(true))]).await?;
    let widget = format!(
        "apiVersion: {group}/v1alpha1\nkind: Widget\nmetadata:\n  name: w\n  namespace: {}\n",
        f.ns()
    );
    // The CRD is its own Kustomization, as in real repositories (and so teardown leaves it
    // until the Widget is gone).
    let with_widget = f
        .repo
        .change()
        .write("apps/widget.yaml", &widget)
        .commit("a widget at v1alpha1")?;
    f.create_ks("crd", json!({ "path": "./crd" })).await?;
    f.wait_applied("crd", &with_widget).await?;
    f.create_ks("app", json!({ "path": "./apps" })).await?;
    f.wait_applied("app", &with_widget).await?;
    let resource = kube::api::ApiResource {
        group: group.clone(),
        version: "v1".into(),
        api_version: format!("{group}/v1"),
        kind: "Widget".into(),
        plural: "widgets".into(),
    };
    let widgets: Api<kube::api::DynamicObject> =
        Api::namespaced_with(f.client.clone(), f.ns(), &resource);
    assert!(widgets.get_opt("w").await?.is_some());

    // The CRD stops serving v1alpha1, then the Widget leaves git: the inventory still says
    // v1alpha1, and the object must be found at v1 and pruned, not forgotten.
    let unserved = f
        .repo
        .change()
        .write("crd/crd.yaml", &crd(false))
        .commit("stop serving v1alpha1")?;
    f.wait_applied("crd", &unserved).await?;
    let removed = f
        .repo
        .change()
        .delete("apps/widget.yaml")
        .write("apps/cm.yaml", &f.yaml(&config_map_yaml("kept", "1")))
        .commit("the widget leaves git")?;
    let ks = f.wait_applied("app", &removed).await?;
    let ids: Vec<String> = ks
        .status
        .unwrap()
        .inventory
        .unwrap()
        .entries
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert!(!ids.iter().any(|id| id.contains("Widget")), "{ids:?}");
    wait_until("the widget to be pruned", || {
        let widgets = widgets.clone();
        async move {
            match widgets.get_opt("w").await.map_err(|e| e.to_string())? {
                None => Ok(()),
                Some(w) if w.metadata.deletion_timestamp.is_some() => Ok(()),
                Some(_) => Err("still there".to_owned()),
            }
        }
    })
    .await?;
    f.teardown().await
}

#[tokio::test]
async fn deleting_a_kustomization_with_prune_off_orphans_its_objects() -> Result<()> {
    let f = Fixture::start(&[("apps/a.yaml", &config_map_yaml("a", "1"))]).await?;
    f.create_ks("app", json!({ "path": "./apps", "prune": false }))
        .await?;
    f.wait_applied("app", &f.repo.head()?).await?;
    f.teardown().await?;
    assert!(f.config_map("a").await?.is_some(), "orphaned");
    Ok(())
}

/// Weir's guard against an emptied path: a commit that removes every object the Kustomization
/// applied is refused (PruneFailed, naming the annotation), nothing is pruned and the last
/// revision stays applied; annotated `weir.dev/allow-mass-prune: "true"`, the prune goes ahead.
#[tokio::test]
async fn a_revision_that_would_prune_everything_is_refused_until_allowed() -> Result<()> {
    let f = Fixture::start(&[
        ("apps/a.yaml", &config_map_yaml("a", "1")),
        ("apps/b.yaml", &config_map_yaml("b", "1")),
        ("apps/README.md", "the app's manifests\n"),
    ])
    .await?;
    f.create_ks("app", json!({ "path": "./apps", "prune": true }))
        .await?;
    let first = f.repo.head()?;
    f.wait_applied("app", &first).await?;

    let emptied = f
        .repo
        .change()
        .delete("apps/a.yaml")
        .delete("apps/b.yaml")
        .commit("remove everything")?;
    let ks = f.wait_failed("app", Some(&emptied), "PruneFailed").await?;
    let message = ks
        .status
        .as_ref()
        .and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.r#type == "Ready")
                .map(|c| c.message.clone())
        })
        .unwrap_or_default();
    assert!(
        message.contains("refusing to prune all 2 objects")
            && message.contains("weir.dev/allow-mass-prune=true"),
        "{message}"
    );
    assert!(f.config_map("a").await?.is_some(), "nothing was pruned");
    assert!(f.config_map("b").await?.is_some(), "nothing was pruned");
    assert!(
        ks.status
            .as_ref()
            .and_then(|s| s.last_applied_revision.as_deref())
            .is_some_and(|r| r.ends_with(&first)),
        "the last good revision stays applied"
    );

    // Allowed: the annotation alone asks for a reconcile, and the objects go.
    let allow = json!({ "metadata": { "annotations": { "weir.dev/allow-mass-prune": "true" } } });
    f.ks.patch("app", &PatchParams::default(), &Patch::Merge(&allow))
        .await?;
    f.wait_applied("app", &emptied).await?;
    let config_maps = f.config_maps();
    wait_gone(&config_maps, "a").await?;
    wait_gone(&config_maps, "b").await?;
    f.teardown().await
}
