//! Kinds: which resource serves a group, version and kind, asked of the API server's discovery
//! (cached), or read from a CRD of the set being applied; and which kinds define others.

use std::{collections::HashMap, sync::Mutex};

use kube::{
    Client,
    api::{ApiResource, GroupVersionKind},
    discovery::{self, Scope},
};
use serde_json::Value;

use crate::{ApiCounter, SsaError};

/// Kinds applied first (and pruned last): they define what other objects need.
const DEFINITION_KINDS: &[(&str, &str)] = &[
    ("apiextensions.k8s.io", "CustomResourceDefinition"),
    ("", "Namespace"),
    ("rbac.authorization.k8s.io", "ClusterRole"),
];

/// Whether objects of this group and kind are applied in the first stage.
#[must_use]
pub fn is_definition(group: &str, kind: &str) -> bool {
    DEFINITION_KINDS
        .iter()
        .any(|(g, k)| *g == group && *k == kind)
}

/// `apiVersion` split into group and version (`v1` → `("", "v1")`).
#[must_use]
pub fn split_api_version(api_version: &str) -> (&str, &str) {
    api_version.rsplit_once('/').unwrap_or(("", api_version))
}

/// Group, version and kind → the resource and whether it is namespaced.
type KindMap = HashMap<(String, String, String), (ApiResource, bool)>;

/// Kinds the API server serves, cached per group/version/kind. Entries are only added: a kind
/// that was missing is looked up again next time.
#[derive(Debug, Default)]
pub struct KindCache {
    kinds: Mutex<KindMap>,
}

impl KindCache {
    /// The resource and whether it is namespaced, or `None` when the server does not serve it.
    pub async fn resolve(
        &self,
        client: &Client,
        counter: &dyn ApiCounter,
        group: &str,
        version: &str,
        kind: &str,
    ) -> Result<Option<(ApiResource, bool)>, SsaError> {
        let key = (group.to_owned(), version.to_owned(), kind.to_owned());
        if let Some(found) = self.lock().get(&key) {
            return Ok(Some(found.clone()));
        }
        let gvk = GroupVersionKind::gvk(group, version, kind);
        counter.request();
        match discovery::pinned_kind(client, &gvk).await {
            Ok((resource, caps)) => {
                let found = (resource, caps.scope == Scope::Namespaced);
                self.lock().insert(key, found.clone());
                Ok(Some(found))
            }
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
            Err(kube::Error::Discovery(_)) => Ok(None),
            Err(e) => Err(SsaError::Discovery(e)),
        }
    }

    /// The kind of an object recorded at `version` (an inventory entry), asked of the server
    /// now, not of the cache (the version may have stopped being served since it was cached):
    /// that version when served, else the kind at any version its group still serves
    /// (cli-utils' inventories identify objects by group and kind; a CRD that stopped serving one
    /// version keeps its objects). `None` only when the group no longer serves the kind at all; a
    /// discovery failure is an error, so the entry is kept, never dropped with its object.
    pub async fn resolve_served(
        client: &Client,
        counter: &dyn ApiCounter,
        group: &str,
        version: &str,
        kind: &str,
    ) -> Result<Option<(ApiResource, bool)>, kube::Error> {
        counter.request();
        match discovery::pinned_kind(client, &GroupVersionKind::gvk(group, version, kind)).await {
            Ok((resource, caps)) => return Ok(Some((resource, caps.scope == Scope::Namespaced))),
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(kube::Error::Discovery(_)) => {}
            Err(e) => return Err(e),
        }
        counter.request();
        let served = match discovery::group(client, group).await {
            Ok(served) => served,
            Err(kube::Error::Api(status)) if status.code == 404 => return Ok(None),
            Err(kube::Error::Discovery(kube::error::DiscoveryError::MissingApiGroup(_))) => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let found = served.recommended_kind(kind).or_else(|| {
            served
                .versions()
                .flat_map(|v| served.versioned_resources(v))
                .find(|(resource, _)| resource.kind == kind)
        });
        Ok(found.map(|(resource, caps)| (resource, caps.scope == Scope::Namespaced)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, KindMap> {
        self.kinds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The resource of a kind defined by a CRD manifest of the set, for objects of that kind
/// (`api_version` is theirs).
#[must_use]
pub fn resource_from_crd(
    crd: &Value,
    api_version: &str,
    kind: &str,
) -> Option<(ApiResource, bool)> {
    let spec = crd.get("spec")?;
    let group = spec.get("group")?.as_str()?;
    let (object_group, version) = split_api_version(api_version);
    if object_group != group || spec.pointer("/names/kind")?.as_str()? != kind {
        return None;
    }
    let plural = spec.pointer("/names/plural")?.as_str()?;
    let namespaced = spec.get("scope").and_then(Value::as_str) != Some("Cluster");
    Some((
        ApiResource {
            group: group.to_owned(),
            version: version.to_owned(),
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
            plural: plural.to_owned(),
        },
        namespaced,
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn kinds_of_crds_in_the_set_resolve_from_the_manifest() {
        let crd = json!({"spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"kind": "Widget", "plural": "widgets"}}});
        let (r, namespaced) = resource_from_crd(&crd, "example.com/v1", "Widget").unwrap();
        assert_eq!(
            (r.plural.as_str(), r.version.as_str(), namespaced),
            ("widgets", "v1", true)
        );
        assert!(resource_from_crd(&crd, "other.com/v1", "Widget").is_none());
    }

    #[test]
    fn api_versions_split_and_definitions_are_known() {
        assert_eq!(split_api_version("v1"), ("", "v1"));
        assert_eq!(split_api_version("apps/v1"), ("apps", "v1"));
        assert!(is_definition("", "Namespace"));
        assert!(!is_definition("", "ConfigMap"));
    }
}
