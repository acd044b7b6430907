//! Writing status: once per reconcile, by server-side apply under the controller's status field
//! manager, and not at all when nothing changed.

use std::fmt::Debug;

use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use serde::{Serialize, de::DeserializeOwned};
use weir_api::status::ObjectStatus;

/// Applies `status` to the status subresource of `obj` unless it equals `current`, and records
/// its `Ready` condition in the metrics. Returns whether a write was made.
///
/// `version` is the resourceVersion the reconcile last saw of the object (its own last status
/// write's, or the object's it started from): the write is made only if the object is still at
/// that version, and `version` then moves to the written one. A reconcile that started from a
/// stale copy in the watch cache (an earlier status write not yet seen) thus fails with a
/// conflict and is retried from the fresh object, instead of putting an older status back.
pub async fn apply_status<K, S>(
    api: &Api<K>,
    obj: &K,
    current: Option<&S>,
    status: &S,
    field_manager: &str,
    version: &mut Option<String>,
) -> Result<bool, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    S: Serialize + PartialEq + ObjectStatus,
{
    if current == Some(status) {
        crate::metrics::record_status(obj, status, false);
        return Ok(false);
    }
    let mut body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    if let Some(version) = version.as_deref() {
        body["metadata"] = serde_json::json!({ "resourceVersion": version });
    }
    let params = PatchParams::apply(field_manager).force();
    let written = api
        .patch_status(&obj.name_any(), &params, &Patch::Apply(&body))
        .await?;
    *version = written.resource_version();
    crate::metrics::record_status(obj, status, true);
    Ok(true)
}
