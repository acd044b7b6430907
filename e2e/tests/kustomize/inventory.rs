//! What the status records and reads back: the inventory, the history, and fields written by a
//! newer Flux.

use anyhow::Result;
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use weir_api::{Kustomization, kustomize::annotations, reasons};
use weir_e2e::wait_until;

use crate::fixture::*;

#[tokio::test]
async fn an_inventory_written_by_flux_is_read_and_its_rbac_objects_pruned() -> Result<()> {
    use k8s_openapi::api::rbac::v1::ClusterRole;
    let f = Fixture::start(&[("apps/cm.yaml", &config_map_yaml("kept", "1"))]).await?;
    // An object Flux applied: its labels, and a name with colons, as RBAC names often have.
    let role_name = format!("system:weir-e2e:{}", f.ns());
    let roles = Api::<ClusterRole>::all(f.client.clone());
    let role: ClusterRole = serde_json::from_value(json!({
        "metadata": {
            "name": role_name,
            "labels": {
                annotations::NAME_LABEL: "app",
                annotations::NAMESPACE_LABEL: f.ns(),
            },
        },
        "rules": [],
    }))?;
    roles.create(&PostParams::default(), &role).await?;
    f.create_ks("app", json!({ "path": "./apps", "suspend": true }))
        .await?;
    // The inventory as Flux's cli-utils writes it: `:` in the name is `__`.
    let flux_id = format!(
        "_{}_rbac.authorization.k8s.io_ClusterRole",
        role_name.replace(':', "__")
    );
    f.ks.patch_status(
        "app",
        &PatchParams::default(),
        &Patch::Merge(
            json!({ "status": { "inventory": { "entries": [{ "id": flux_id, "v": "v1" }] } } }),
        ),
    )
    .await?;
    f.ks.patch(
        "app",
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "suspend": false } })),
    )
    .await?;
    let head = f.repo.head()?;
    f.wait_applied("app", &head).await?;
    wait_until("the role Flux applied to be pruned", || {
        let roles = roles.clone();
        let name = role_name.clone();
        async move {
            match roles.get_opt(&name).await.map_err(|e| e.to_string())? {
                None => Ok(()),
                Some(r) if r.metadata.deletion_timestamp.is_some() => Ok(()),
                Some(_) => Err("still there".to_owned()),
            }
        }
    })
    .await?;
    assert!(f.config_map("kept").await?.is_some());
    f.teardown().await
}

/// A Kustomization written by a newer Flux, with a status field Weir does not know, is
/// reconciled, and so are the others of its kind: one object Weir cannot fully read must not
/// blind its watch. The harness's CRD gains the field as a newer Flux's CRD would have it (a
/// list of objects, `status.newerHistory`); an added optional field changes nothing for the
/// other tests.
#[tokio::test]
async fn a_status_field_from_a_newer_flux_blinds_nothing() -> Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let f = Fixture::start(&[
        ("apps/a/cm.yaml", &config_map_yaml("from-newer", "1")),
        ("apps/b/cm.yaml", &config_map_yaml("from-other", "1")),
    ])
    .await?;
    let crds = Api::<CustomResourceDefinition>::all(f.client.clone());
    let newer = json!({
        "type": "array",
        "items": { "type": "object", "x-kubernetes-preserve-unknown-fields": true },
    });
    crds.patch(
        "kustomizations.kustomize.toolkit.fluxcd.io",
        &PatchParams::default(),
        &Patch::<()>::Json(serde_json::from_value(json!([{
            "op": "add",
            "path": "/spec/versions/0/schema/openAPIV3Schema/properties/status/properties/newerHistory",
            "value": newer,
        }]))?),
    )
    .await?;

    f.create_ks("newer", json!({ "path": "./apps/a", "suspend": true }))
        .await?;
    // The API server takes the new schema a moment after the CRD changes.
    let entry = json!({ "digest": "sha256:0123", "totalReconciliations": 3 });
    let raw = Api::<kube::api::DynamicObject>::namespaced_with(
        f.client.clone(),
        f.ns(),
        &kube::api::ApiResource::erase::<Kustomization>(&()),
    );
    wait_until("the status to keep a history", || {
        let (ks, raw, entry) = (f.ks.clone(), raw.clone(), entry.clone());
        async move {
            ks.patch_status(
                "newer",
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": { "newerHistory": [entry] } })),
            )
            .await
            .map_err(|e| e.to_string())?;
            let read = raw.get("newer").await.map_err(|e| e.to_string())?;
            match read.data.pointer("/status/newerHistory/0") {
                Some(kept) if *kept == entry => Ok(()),
                other => Err(format!("history read back as {other:?}")),
            }
        }
    })
    .await?;
    f.ks.patch(
        "newer",
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "suspend": false } })),
    )
    .await?;
    f.create_ks("other", json!({ "path": "./apps/b" })).await?;

    let head = f.repo.head()?;
    f.wait_applied("newer", &head).await?;
    f.wait_applied("other", &head).await?;
    assert!(f.config_map("from-newer").await?.is_some());
    assert!(f.config_map("from-other").await?.is_some());
    // Weir's status writes leave the field it does not know alone.
    let read = raw.get("newer").await?;
    assert_eq!(read.data.pointer("/status/newerHistory/0"), Some(&entry));
    f.teardown().await
}

#[tokio::test]
async fn history_records_each_built_digest_and_outcome_as_flux_does() -> Result<()> {
    let f = Fixture::start(&[("apps/a.yaml", &config_map_yaml("a", "1"))]).await?;
    // A ConfigMap whose `key` is "2" fails its health check at once.
    let exprs = json!([{
        "apiVersion": "v1", "kind": "ConfigMap", "current": "data.key != '2'", "failed": "data.key == '2'",
    }]);
    f.create_ks(
        "app",
        json!({ "path": "./apps", "wait": true, "healthCheckExprs": exprs }),
    )
    .await?;
    let first = f.repo.head()?;
    let ks = f.wait_applied("app", &first).await?;
    let status = ks.status.unwrap();
    let [snapshot] = status.history.as_slice() else {
        panic!("one snapshot expected: {:?}", status.history)
    };
    assert!(snapshot.digest.starts_with("sha256:"), "{snapshot:?}");
    assert_eq!(
        snapshot.last_reconciled_status,
        reasons::RECONCILIATION_SUCCEEDED
    );
    assert_eq!(snapshot.total_reconciliations, 1);
    assert_eq!(
        snapshot.metadata.get("revision"),
        status.last_applied_revision.as_ref()
    );
    // A git source has no origin revision (an OCI artifact built from git would).
    assert!(!snapshot.metadata.contains_key("originRevision"));
    assert_eq!(status.last_applied_origin_revision, None);
    let first_snapshot = snapshot.clone();

    // A requested reconcile of the same manifests counts again in the same snapshot.
    let patch =
        json!({ "metadata": { "annotations": { "reconcile.fluxcd.io/requestedAt": "1" } } });
    f.ks.patch("app", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let ks = f
        .wait_ks("app", "the request handled", |ks| {
            ks.status
                .as_ref()
                .and_then(|s| s.last_handled_reconcile_at.as_deref())
                == Some("1")
        })
        .await?;
    let history = ks.status.unwrap().history;
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0].digest, first_snapshot.digest);
    assert_eq!(history[0].total_reconciliations, 2);
    assert_eq!(history[0].first_reconciled, first_snapshot.first_reconciled);

    // A failing health check of new manifests is a snapshot of its own, first...
    let failing = f
        .repo
        .change()
        .write("apps/a.yaml", &f.yaml(&config_map_yaml("a", "2")))
        .commit("a failing config map")?;
    let ks = f
        .wait_failed("app", Some(&failing), reasons::HEALTH_CHECK_FAILED)
        .await?;
    let history = ks.status.unwrap().history;
    assert_eq!(history.len(), 2, "{history:?}");
    assert_eq!(
        history[0].last_reconciled_status,
        reasons::HEALTH_CHECK_FAILED
    );
    assert!(history[0].metadata["revision"].ends_with(&failing));
    assert_ne!(history[0].digest, first_snapshot.digest);
    assert_eq!(history[1].digest, first_snapshot.digest);

    // ...and going back to the first manifests moves their snapshot to the front again.
    let back = f
        .repo
        .change()
        .write("apps/a.yaml", &f.yaml(&config_map_yaml("a", "1")))
        .commit("back")?;
    let ks = f.wait_applied("app", &back).await?;
    let history = ks.status.unwrap().history;
    assert_eq!(history.len(), 2, "{history:?}");
    assert_eq!(history[0].digest, first_snapshot.digest);
    assert_eq!(history[0].total_reconciliations, 3);
    assert!(history[0].metadata["revision"].ends_with(&back));
    assert_eq!(
        history[1].last_reconciled_status,
        reasons::HEALTH_CHECK_FAILED
    );
    f.teardown().await
}

/// A kind whose group fails discovery (an aggregated API whose service is down, as when
/// metrics-server is not running) keeps its inventory entry, so its objects are never orphaned:
/// the Kustomization is Ready=False (`PruneFailed`) naming the object it could not look up.
/// Once the group is no longer served at all, the entry is dropped as Flux drops it.
#[tokio::test]
async fn a_kind_whose_discovery_fails_stays_in_the_inventory() -> Result<()> {
    use kube::api::{ApiResource, DeleteParams, DynamicObject};
    let f = Fixture::start(&[("apps/cm.yaml", &config_map_yaml("kept", "1"))]).await?;
    let group = format!("{}.broken.weir.dev", f.ns());
    let apiservices: Api<DynamicObject> = Api::all_with(
        f.client.clone(),
        &ApiResource {
            group: "apiregistration.k8s.io".to_owned(),
            version: "v1".to_owned(),
            api_version: "apiregistration.k8s.io/v1".to_owned(),
            kind: "APIService".to_owned(),
            plural: "apiservices".to_owned(),
        },
    );
    let name = format!("v1.{group}");
    // Its service does not exist: the API server answers 503 for the group.
    let broken: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "apiregistration.k8s.io/v1",
        "kind": "APIService",
        "metadata": { "name": name },
        "spec": {
            "group": group, "version": "v1",
            "service": { "namespace": f.ns(), "name": "down", "port": 443 },
            "insecureSkipTLSVerify": true, "groupPriorityMinimum": 1000, "versionPriority": 15,
        },
    }))?;
    apiservices.create(&PostParams::default(), &broken).await?;
    let result = async {
        f.create_ks("app", json!({ "path": "./apps", "suspend": true }))
            .await?;
        let entry = format!("{}_w_{group}_Widget", f.ns());
        f.ks.patch_status(
            "app",
            &PatchParams::default(),
            &Patch::Merge(
                json!({ "status": { "inventory": { "entries": [{ "id": entry, "v": "v1" }] } } }),
            ),
        )
        .await?;
        f.ks.patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "suspend": false } })),
        )
        .await?;
        let failed = f.wait_failed("app", None, reasons::PRUNE_FAILED).await?;
        let m = message(&failed);
        assert!(
            m.contains(&format!("Widget/{}/w", f.ns())) && m.contains("discovery failed"),
            "{m}"
        );
        assert!(inventory_ids(&failed).contains(&entry), "{failed:?}");

        // The group is gone for good: the entry goes, the Kustomization is Ready.
        apiservices.delete(&name, &DeleteParams::default()).await?;
        let applied = f.wait_applied("app", &f.repo.head()?).await?;
        assert!(!inventory_ids(&applied).contains(&entry), "{applied:?}");
        anyhow::Ok(())
    }
    .await;
    // Never leave a broken group behind for the other tests.
    let _ = apiservices.delete(&name, &DeleteParams::default()).await;
    result?;
    f.teardown().await
}

/// The ids of `ks`'s inventory.
fn inventory_ids(ks: &Kustomization) -> Vec<String> {
    ks.status
        .as_ref()
        .and_then(|s| s.inventory.as_ref())
        .map(|i| i.entries.iter().map(|e| e.id.clone()).collect())
        .unwrap_or_default()
}
