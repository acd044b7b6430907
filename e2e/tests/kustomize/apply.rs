//! Applying: manifests reach the cluster with owner labels, atomically; bad commits apply nothing;
//! unchanged reconciles write nothing; drift is corrected; force, annotations, suspend, events,
//! `spec.ignore` and CRDs before their resources.

use std::sync::atomic::Ordering;

use anyhow::Result;
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Secret},
};
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::json;
use weir_api::{kustomize::annotations, reasons};
use weir_e2e::{wait_gone, wait_until};

use crate::fixture::*;

#[tokio::test]
async fn pushed_manifests_are_applied_with_owner_labels_then_changed_and_pruned() -> Result<()> {
    let cm = config_map_yaml("settings", "one");
    let old = config_map_yaml("old", "x");
    let f = Fixture::start(&[
        ("apps/settings.yaml", &cm),
        ("apps/nested/old.yaml", &old),
        ("apps/deploy.yaml", DEPLOYMENT),
    ])
    .await?;
    f.create_ks("app", json!({ "path": "./apps" })).await?;
    let head = f.repo.head()?;
    let ks = f.wait_applied("app", &head).await?;

    let settings = f.config_map("settings").await?.expect("settings applied");
    let labels = settings.metadata.labels.unwrap_or_default();
    assert_eq!(
        labels.get(annotations::NAME_LABEL).map(String::as_str),
        Some("app")
    );
    assert_eq!(
        labels.get(annotations::NAMESPACE_LABEL).map(String::as_str),
        Some(f.ns())
    );
    let deployment = Api::<Deployment>::namespaced(f.client.clone(), f.ns())
        .get("web")
        .await?;
    assert!(
        deployment
            .metadata
            .managed_fields
            .unwrap_or_default()
            .iter()
            .any(|m| m.manager.as_deref() == Some("kustomize-controller"))
    );
    let ids: Vec<String> = ks
        .status
        .unwrap()
        .inventory
        .unwrap()
        .entries
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert!(
        ids.contains(&format!("{}_web_apps_Deployment", f.ns())),
        "{ids:?}"
    );
    assert!(
        ids.contains(&format!("{}_old__ConfigMap", f.ns())),
        "{ids:?}"
    );

    let second = f
        .repo
        .change()
        .write(
            "apps/settings.yaml",
            &f.yaml(&config_map_yaml("settings", "two")),
        )
        .delete("apps/nested/old.yaml")
        .commit("change settings, remove old")?;
    f.wait_applied("app", &second).await?;
    let settings = f.config_map("settings").await?.expect("settings kept");
    assert_eq!(settings.data.unwrap()["key"], "two");
    wait_gone(&f.config_maps(), "old").await?;
    f.teardown().await
}

#[tokio::test]
async fn bad_commits_apply_nothing_and_keep_the_last_good_revision_until_fixed() -> Result<()> {
    let f = Fixture::start(&[("apps/a.yaml", &config_map_yaml("a", "1"))]).await?;
    f.create_ks("app", json!({ "path": "./apps" })).await?;
    let good = f.repo.head()?;
    f.wait_applied("app", &good).await?;

    // Invalid YAML: the build fails and names the file.
    let bad_yaml = f
        .repo
        .change()
        .write("apps/a.yaml", &f.yaml(&config_map_yaml("a", "2")))
        .write("apps/broken.yaml", "kind: [unclosed\n")
        .commit("broken yaml")?;
    let ks = f
        .wait_failed("app", Some(&bad_yaml), reasons::BUILD_FAILED)
        .await?;
    assert!(
        message(&ks).contains("apps/broken.yaml"),
        "{}",
        message(&ks)
    );
    assert!(applied(&ks).unwrap().ends_with(&good));
    assert_eq!(
        f.config_map("a").await?.unwrap().data.unwrap()["key"],
        "1",
        "nothing applied"
    );

    // An unknown field: the dry run fails, naming object, file and the server's message; the
    // valid new object in the same commit is not applied either.
    let unknown = f
        .repo
        .change()
        .delete("apps/broken.yaml")
        .write("apps/new.yaml", &f.yaml(&config_map_yaml("new", "n")))
        .write(
            "apps/bad.yaml",
            &f.yaml("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bad\n  namespace: NAMESPACE\nspec:\n  oops: true\n"),
        )
        .commit("unknown field")?;
    let ks = f
        .wait_failed("app", Some(&unknown), reasons::RECONCILIATION_FAILED)
        .await?;
    let m = message(&ks);
    assert!(
        m.contains("ConfigMap/")
            && m.contains("/bad")
            && m.contains("apps/bad.yaml")
            && m.contains(".spec: field not declared in schema"),
        "{m}"
    );
    assert!(f.config_map("new").await?.is_none(), "nothing applied");
    assert_eq!(f.config_map("a").await?.unwrap().data.unwrap()["key"], "1");
    assert!(applied(&ks).unwrap().ends_with(&good));

    // A kind without a CRD.
    let missing = f
        .repo
        .change()
        .delete("apps/bad.yaml")
        .write(
            "apps/widget.yaml",
            "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\n",
        )
        .commit("missing CRD")?;
    let ks = f
        .wait_failed("app", Some(&missing), reasons::RECONCILIATION_FAILED)
        .await?;
    let m = message(&ks);
    assert!(
        m.contains("Widget/w") && m.contains("apps/widget.yaml"),
        "{m}"
    );
    assert!(f.config_map("new").await?.is_none(), "nothing applied");

    // A namespaced object that names no namespace, as Flux refuses it.
    let no_namespace = f
        .repo
        .change()
        .delete("apps/widget.yaml")
        .write(
            "apps/loose.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: loose\n",
        )
        .commit("no namespace")?;
    let ks = f
        .wait_failed("app", Some(&no_namespace), reasons::RECONCILIATION_FAILED)
        .await?;
    assert!(
        message(&ks).contains("ConfigMap/loose (apps/loose.yaml): namespace not specified"),
        "{}",
        message(&ks)
    );
    assert!(f.config_map("new").await?.is_none(), "nothing applied");

    // Recovery.
    let fixed = f.repo.change().delete("apps/loose.yaml").commit("fix")?;
    f.wait_applied("app", &fixed).await?;
    assert_eq!(f.config_map("a").await?.unwrap().data.unwrap()["key"], "2");
    assert!(f.config_map("new").await?.is_some());
    f.teardown().await
}

#[tokio::test]
async fn unchanged_reconciles_write_nothing_and_manual_edits_are_reverted() -> Result<()> {
    // A Secret written with stringData: the server stores it as data, and that is no change.
    let secret = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\n  namespace: NAMESPACE\nstringData:\n  password: hunter2\n";
    let f = Fixture::start(&[
        ("apps/a.yaml", &config_map_yaml("a", "1")),
        ("apps/deploy.yaml", DEPLOYMENT),
        ("apps/secret.yaml", secret),
    ])
    .await?;
    f.create_ks("app", json!({ "path": "./apps", "interval": "3s" }))
        .await?;
    let head = f.repo.head()?;
    f.wait_applied("app", &head).await?;
    let deployments = Api::<Deployment>::namespaced(f.client.clone(), f.ns());
    let versions = || async {
        (
            f.config_map("a")
                .await
                .unwrap()
                .unwrap()
                .metadata
                .resource_version,
            deployments
                .get("web")
                .await
                .unwrap()
                .metadata
                .resource_version,
            Api::<Secret>::namespaced(f.client.clone(), f.ns())
                .get("s")
                .await
                .unwrap()
                .metadata
                .resource_version,
        )
    };
    // Let the Deployment settle (its status moves as kwok rolls it out) before comparing.
    wait_until("Deployment web to be available", || async {
        let d = deployments.get("web").await.map_err(|e| e.to_string())?;
        match d.status.and_then(|s| s.available_replicas) {
            Some(1) => Ok(()),
            other => Err(format!("available {other:?}")),
        }
    })
    .await?;
    let before = versions().await;
    let writes = || {
        let m = &f.kustomize.metrics;
        (
            m.object_writes.load(Ordering::Relaxed),
            m.status_writes.load(Ordering::Relaxed),
            m.builds.load(Ordering::Relaxed),
        )
    };
    let writes_before = writes();
    for token in ["one", "two"] {
        let patch =
            json!({ "metadata": { "annotations": { "reconcile.fluxcd.io/requestedAt": token } } });
        f.ks.patch("app", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        f.wait_ks("app", &format!("request {token} handled"), |ks| {
            ks.status
                .as_ref()
                .and_then(|s| s.last_handled_reconcile_at.as_deref())
                == Some(token)
        })
        .await?;
    }
    assert_eq!(
        versions().await,
        before,
        "a reconcile without changes wrote nothing"
    );
    let (objects, statuses, builds) = writes();
    assert_eq!(objects, writes_before.0, "no object was written");
    assert_eq!(
        builds, writes_before.2,
        "nothing new: the last build was reused"
    );
    assert_eq!(
        statuses,
        writes_before.1 + 2,
        "the only status writes record the two handled requests"
    );

    // A manual edit of an applied field is corrected at the next interval.
    let edit = json!({ "data": { "key": "edited" } });
    Api::<ConfigMap>::namespaced(f.client.clone(), f.ns())
        .patch("a", &PatchParams::default(), &Patch::Merge(&edit))
        .await?;
    wait_until("the manual edit to be reverted", || async {
        let cm = f
            .config_map("a")
            .await
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        match cm.data.unwrap_or_default().get("key").map(String::as_str) {
            Some("1") => Ok(()),
            other => Err(format!("key = {other:?}")),
        }
    })
    .await?;
    f.teardown().await
}

/// Drift is corrected at the next interval, and the event names who changed what, from the
/// live objects' managedFields, as `kubectl edit` and `kubectl scale` record themselves.
#[tokio::test]
async fn corrected_drift_names_who_changed_what() -> Result<()> {
    let f = Fixture::start(&[
        ("apps/a.yaml", &config_map_yaml("a", "1")),
        ("apps/deploy.yaml", DEPLOYMENT),
    ])
    .await?;
    f.create_ks("app", json!({ "path": "./apps", "interval": "3s" }))
        .await?;
    f.wait_applied("app", &f.repo.head()?).await?;
    let deployments = Api::<Deployment>::namespaced(f.client.clone(), f.ns());
    let edit = json!({ "data": { "key": "edited" } });
    Api::<ConfigMap>::namespaced(f.client.clone(), f.ns())
        .patch(
            "a",
            &PatchParams {
                field_manager: Some("kubectl-edit".into()),
                ..PatchParams::default()
            },
            &Patch::Merge(&edit),
        )
        .await?;
    deployments
        .patch_scale(
            "web",
            &PatchParams {
                field_manager: Some("kubectl-scale".into()),
                ..PatchParams::default()
            },
            &Patch::Merge(json!({ "spec": { "replicas": 3 } })),
        )
        .await?;
    wait_until("the manual edit and the scale to be reverted", || async {
        let cm = f
            .config_map("a")
            .await
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        let replicas = deployments
            .get("web")
            .await
            .map_err(|e| e.to_string())?
            .spec
            .and_then(|s| s.replicas);
        match (
            cm.data.unwrap_or_default().get("key").map(String::as_str),
            replicas,
        ) {
            (Some("1"), Some(1)) => Ok(()),
            other => Err(format!("key, replicas = {other:?}")),
        }
    })
    .await?;
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(f.client.clone(), f.ns());
    let (config_map, deployment) = (
        format!(
            "ConfigMap/{}/a configured (drift: kubectl-edit changed .data.key)",
            f.ns()
        ),
        format!(
            "Deployment/{}/web configured (drift: kubectl-scale changed .spec.replicas)",
            f.ns()
        ),
    );
    wait_until("an event naming who drifted what", || async {
        let notes: Vec<String> = events
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?
            .items
            .into_iter()
            .filter_map(|e| e.message)
            .collect();
        if notes.iter().any(|n| n.contains(&config_map))
            && notes.iter().any(|n| n.contains(&deployment))
        {
            Ok(())
        } else {
            Err(format!("{notes:#?}"))
        }
    })
    .await?;
    f.teardown().await
}

#[tokio::test]
async fn crds_apply_before_the_resources_that_need_them_in_the_same_commit() -> Result<()> {
    let group = format!("{}.weir.test", weir_e2e::unique_name("crd", 30));
    let extra_ns = weir_e2e::unique_name("extra", 30);
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
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {{type: integer}}
"
    );
    let widget = format!(
        "apiVersion: {group}/v1\nkind: Widget\nmetadata:\n  name: w\n  namespace: {extra_ns}\nspec:\n  size: 3\n"
    );
    let namespace = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {extra_ns}\n");
    let f = Fixture::start(&[
        ("apps/widget.yaml", &widget),
        ("apps/crd.yaml", &crd),
        ("apps/ns.yaml", &namespace),
    ])
    .await?;
    f.create_ks("app", json!({ "path": "./apps" })).await?;
    let head = f.repo.head()?;
    let ks = f.wait_applied("app", &head).await?;
    let ids: Vec<String> = ks
        .status
        .unwrap()
        .inventory
        .unwrap()
        .entries
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert!(
        ids.contains(&format!("{extra_ns}_w_{group}_Widget")),
        "{ids:?}"
    );
    let resource = kube::api::ApiResource {
        group: group.clone(),
        version: "v1".into(),
        api_version: format!("{group}/v1"),
        kind: "Widget".into(),
        plural: "widgets".into(),
    };
    let widgets: Api<kube::api::DynamicObject> =
        Api::namespaced_with(f.client.clone(), &extra_ns, &resource);
    assert_eq!(widgets.get("w").await?.data["spec"]["size"], 3);

    // A new schema field and a resource using it, in one commit: the CRD goes first.
    let second = f
        .repo
        .change()
        .write(
            "apps/crd.yaml",
            &crd.replace(
                "              size: {type: integer}\n",
                "              size: {type: integer}\n              color: {type: string}\n",
            ),
        )
        .write("apps/widget.yaml", &format!("{widget}  color: blue\n"))
        .commit("add a color")?;
    f.wait_applied("app", &second).await?;
    assert_eq!(widgets.get("w").await?.data["spec"]["color"], "blue");

    // A field the schema does not have is refused as before, with nothing applied.
    let third = f
        .repo
        .change()
        .write("apps/widget.yaml", &format!("{widget}  shade: dark\n"))
        .commit("an unknown field")?;
    let ks = f
        .wait_failed("app", Some(&third), reasons::RECONCILIATION_FAILED)
        .await?;
    assert!(
        message(&ks).contains(".spec.shade: field not declared in schema"),
        "{}",
        message(&ks)
    );
    assert_eq!(widgets.get("w").await?.data["spec"]["color"], "blue");
    // Teardown prunes the Widget, then its Namespace and CRD.
    f.teardown().await
}

#[tokio::test]
async fn force_recreates_an_object_whose_immutable_fields_changed() -> Result<()> {
    let immutable = |value: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: frozen\n  namespace: NAMESPACE\n  annotations:\n    kustomize.toolkit.fluxcd.io/force: enabled\nimmutable: true\ndata:\n  key: \"{value}\"\n"
        )
    };
    let f = Fixture::start(&[("apps/frozen.yaml", &immutable("1"))]).await?;
    f.create_ks("app", json!({ "path": "./apps" })).await?;
    f.wait_applied("app", &f.repo.head()?).await?;
    let first = f.config_map("frozen").await?.unwrap().metadata.uid;
    let second = f
        .repo
        .change()
        .write("apps/frozen.yaml", &f.yaml(&immutable("2")))
        .commit("change immutable data")?;
    f.wait_applied("app", &second).await?;
    let frozen = f.config_map("frozen").await?.unwrap();
    assert_eq!(frozen.data.unwrap()["key"], "2");
    assert_ne!(frozen.metadata.uid, first, "recreated");

    // An invalid object is an error even with force: the live one is not deleted for it.
    let invalid = immutable("3").replace(
        "metadata:\n",
        "metadata:\n  labels: {bad: \"not valid!\"}\n",
    );
    let third = f
        .repo
        .change()
        .write("apps/frozen.yaml", &f.yaml(&invalid))
        .commit("invalid label")?;
    f.wait_failed("app", Some(&third), reasons::RECONCILIATION_FAILED)
        .await?;
    let kept = f.config_map("frozen").await?.expect("not deleted");
    assert_eq!(kept.metadata.uid, frozen.metadata.uid);
    f.teardown().await
}

#[tokio::test]
async fn annotated_objects_are_created_once_ignored_paused_or_kept_when_removed() -> Result<()> {
    let annotated = |name: &str, annotation: &str, value: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: NAMESPACE\n  annotations:\n    {annotation}\ndata:\n  key: \"{value}\"\n"
        )
    };
    let once = |v: &str| annotated("once", "kustomize.toolkit.fluxcd.io/ssa: IfNotPresent", v);
    let keep = annotated("keep", "kustomize.toolkit.fluxcd.io/prune: disabled", "1");
    let ignored = annotated("ignored", "kustomize.toolkit.fluxcd.io/ssa: Ignore", "1");
    let f = Fixture::start(&[
        ("apps/once.yaml", &once("1")),
        ("apps/keep.yaml", &keep),
        ("apps/ignored.yaml", &ignored),
        ("apps/paused.yaml", &config_map_yaml("paused", "1")),
    ])
    .await?;
    f.create_ks("app", json!({ "path": "./apps" })).await?;
    f.wait_applied("app", &f.repo.head()?).await?;
    assert!(
        f.config_map("ignored").await?.is_none(),
        "ssa: Ignore is never applied"
    );
    // Someone pauses reconciliation of one object in the cluster.
    let pause = json!({ "metadata": { "annotations": { "kustomize.toolkit.fluxcd.io/reconcile": "disabled" } } });
    Api::<ConfigMap>::namespaced(f.client.clone(), f.ns())
        .patch("paused", &PatchParams::default(), &Patch::Merge(&pause))
        .await?;
    let second = f
        .repo
        .change()
        .write("apps/once.yaml", &f.yaml(&once("2")))
        .write("apps/paused.yaml", &f.yaml(&config_map_yaml("paused", "2")))
        .delete("apps/keep.yaml")
        .commit("update once and paused, remove keep")?;
    f.wait_applied("app", &second).await?;
    assert_eq!(
        f.config_map("once").await?.unwrap().data.unwrap()["key"],
        "1"
    );
    assert!(
        f.config_map("keep").await?.is_some(),
        "prune: disabled kept it"
    );
    assert_eq!(
        f.config_map("paused").await?.unwrap().data.unwrap()["key"],
        "1",
        "reconcile: disabled in the cluster left it alone"
    );
    f.teardown().await
}

#[tokio::test]
async fn a_suspended_kustomization_applies_nothing_until_resumed() -> Result<()> {
    let f = Fixture::start(&[("apps/a.yaml", &config_map_yaml("a", "1"))]).await?;
    f.create_ks("app", json!({ "path": "./apps", "suspend": true }))
        .await?;
    // The source is ready (so a reconcile would have applied) while the Kustomization waits.
    let git: Api<weir_api::GitRepository> = Api::namespaced(f.client.clone(), f.ns());
    wait_until("the GitRepository to have an artifact", || async {
        let repo = git.get("app").await.map_err(|e| e.to_string())?;
        repo.status
            .and_then(|s| s.artifact)
            .map(drop)
            .ok_or_else(|| "no artifact".to_owned())
    })
    .await?;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert!(f.config_map("a").await?.is_none());
    let resume = json!({ "spec": { "suspend": false } });
    f.ks.patch("app", &PatchParams::default(), &Patch::Merge(&resume))
        .await?;
    f.wait_applied("app", &f.repo.head()?).await?;
    assert!(f.config_map("a").await?.is_some());
    f.teardown().await
}

#[tokio::test]
async fn events_summarise_changes_and_messages_never_show_substituted_secrets() -> Result<()> {
    let f = Fixture::start(&[("apps/a.yaml", &config_map_yaml("a", "1"))]).await?;
    f.create_secret("vars", json!({ "label": "Top Secret!" }))
        .await?;
    f.create_ks(
        "app",
        json!({
            "path": "./apps",
            "postBuild": { "substituteFrom": [{ "kind": "Secret", "name": "vars" }] },
        }),
    )
    .await?;
    f.wait_applied("app", &f.repo.head()?).await?;
    let expected = format!("ConfigMap/{}/a created", f.ns());
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(f.client.clone(), f.ns());
    let events = &events;
    let expected = &expected;
    wait_until("an event naming the created ConfigMap", || async move {
        let text = serde_json::to_string(
            &events
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?
                .items,
        )
        .map_err(|e| e.to_string())?;
        if text.contains(expected.as_str()) && text.contains(reasons::RECONCILIATION_SUCCEEDED) {
            Ok(())
        } else {
            Err(text)
        }
    })
    .await?;

    // The secret value lands in a label, which the API server refuses, echoing the value.
    let labelled = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  namespace: NAMESPACE\n  labels:\n    leak: \"${label}\"\n";
    let bad = f
        .repo
        .change()
        .write("apps/a.yaml", &f.yaml(labelled))
        .commit("secret in a label")?;
    let ks = f
        .wait_failed("app", Some(&bad), reasons::RECONCILIATION_FAILED)
        .await?;
    let status = serde_json::to_string(&ks.status)?;
    assert!(status.contains("ConfigMap/"), "{status}");
    assert!(!status.contains("Top Secret!"), "{status}");
    let text = serde_json::to_string(&events.list(&ListParams::default()).await?.items)?;
    assert!(!text.contains("Top Secret!"), "{text}");
    f.teardown().await
}

/// Flux 2.9's `spec.ignore`: a field another applier owns (an autoscaler's `/spec/replicas`)
/// and a field edited in the cluster are left as the cluster has them, through drift
/// correction and through applies of other changes; the rest of the object still follows git.
#[tokio::test]
async fn ignore_rules_leave_the_selected_fields_to_the_cluster() -> Result<()> {
    let f = Fixture::start(&[
        ("apps/deploy.yaml", DEPLOYMENT),
        ("apps/a.yaml", &config_map_yaml("a", "1")),
    ])
    .await?;
    let ignore = json!([
        { "paths": ["/spec/replicas"], "target": { "kind": "Deployment", "name": "w.b" } },
        { "paths": ["/data/key"], "target": { "kind": "ConfigMap", "labelSelector": "!other" } },
    ]);
    f.create_ks("app", json!({ "path": "./apps", "ignore": ignore }))
        .await?;
    f.wait_applied("app", &f.repo.head()?).await?;

    // An autoscaler applies replicas with its own field manager; someone edits the ConfigMap.
    let deployments: Api<Deployment> = Api::namespaced(f.client.clone(), f.ns());
    let scale = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": "web" }, "spec": { "replicas": 3 },
    });
    deployments
        .patch(
            "web",
            &PatchParams::apply("autoscaler").force(),
            &Patch::Apply(&scale),
        )
        .await?;
    let config_maps: Api<ConfigMap> = Api::namespaced(f.client.clone(), f.ns());
    let edit = json!({ "data": { "key": "edited" } });
    config_maps
        .patch("a", &PatchParams::default(), &Patch::Merge(&edit))
        .await?;
    let replicas = || async {
        deployments
            .get("web")
            .await
            .map(|d| d.spec.and_then(|s| s.replicas))
    };
    let key = || async {
        f.config_map("a")
            .await
            .map(|c| c.and_then(|c| c.data).map(|d| d["key"].clone()))
    };

    // Drift correction leaves both alone.
    let patch =
        json!({ "metadata": { "annotations": { "reconcile.fluxcd.io/requestedAt": "1" } } });
    f.ks.patch("app", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    f.wait_ks("app", "the request handled", |ks| {
        ks.status
            .as_ref()
            .and_then(|s| s.last_handled_reconcile_at.as_deref())
            == Some("1")
    })
    .await?;
    assert_eq!(replicas().await?, Some(3));
    assert_eq!(key().await?.as_deref(), Some("edited"));

    // A change in git to both objects is applied, the ignored fields still the cluster's.
    let deploy = DEPLOYMENT.replace("web:1.0.0", "web:2.0.0");
    let cm = config_map_yaml("a", "1").replace("\ndata:\n", "\ndata:\n  more: \"x\"\n");
    let next = f
        .repo
        .change()
        .write("apps/deploy.yaml", &f.yaml(&deploy))
        .write("apps/a.yaml", &f.yaml(&cm))
        .commit("a new image and a new key")?;
    f.wait_applied("app", &next).await?;
    let web = deployments.get("web").await?;
    let spec = web.spec.unwrap();
    assert_eq!(spec.replicas, Some(3), "the autoscaler's replicas");
    assert_eq!(
        spec.template.spec.unwrap().containers[0].image.as_deref(),
        Some("registry.invalid/web:2.0.0")
    );
    let data = f.config_map("a").await?.unwrap().data.unwrap();
    assert_eq!(data["key"], "edited", "the cluster's value");
    assert_eq!(data["more"], "x");

    // A rule that does not compile stalls the Kustomization, naming the field.
    let bad = json!({ "spec": { "ignore": [{ "paths": ["/x"], "target": { "name": "(" } }] } });
    f.ks.patch("app", &PatchParams::default(), &Patch::Merge(&bad))
        .await?;
    let ks = f
        .wait_failed("app", None, reasons::RECONCILIATION_FAILED)
        .await?;
    assert!(
        message(&ks).contains("spec.ignore[0].target.name"),
        "{}",
        message(&ks)
    );
    f.teardown().await
}
