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
pub async fn apply_status<K, S>(
    api: &Api<K>,
    obj: &K,
    current: Option<&S>,
    status: &S,
    field_manager: &str,
) -> Result<bool, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    S: Serialize + PartialEq + ObjectStatus,
{
    if current == Some(status) {
        crate::metrics::record_status(obj, status, false);
        return Ok(false);
    }
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    let params = PatchParams::apply(field_manager).force();
    api.patch_status(&obj.name_any(), &params, &Patch::Apply(&body))
        .await?;
    crate::metrics::record_status(obj, status, true);
    Ok(true)
}
