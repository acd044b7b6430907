//! Pieces shared by every kind: artifacts, references, and the reconcile-request annotation.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The finalizer Flux's controllers put on their objects; Weir's controllers use the same, so
/// objects move between the engines.
pub const FINALIZER: &str = "finalizers.fluxcd.io";

/// Set to any new value (usually a timestamp) to ask for an immediate reconcile, as
/// `flux reconcile` does; the controller answers with `status.lastHandledReconcileAt`.
pub const RECONCILE_REQUESTED_AT_ANNOTATION: &str = "reconcile.fluxcd.io/requestedAt";

/// The pattern of an artifact digest: `<algorithm>:<encoded>`.
pub const DIGEST_PATTERN: &str = r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$";

/// A reference to an object in the same namespace.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalObjectReference {
    /// Name of the referent.
    pub name: String,
}

/// A reference to an object, in the namespace of the object that refers to it unless
/// `namespace` is set (Flux's `meta.NamespacedObjectReference`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespacedObjectReference {
    /// Name of the referent.
    pub name: String,
    /// Namespace of the referent; the referring object's namespace when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

impl NamespacedObjectReference {
    /// The referent's namespace: `namespace`, or `own` (the referring object's) when it is not
    /// set or empty, as Flux reads an empty string.
    #[must_use]
    pub fn namespace_or<'a>(&'a self, own: &'a str) -> &'a str {
        self.namespace
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or(own)
    }
}

/// Which namespaces may refer to an object from elsewhere (Flux's `acl.AccessFrom`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AccessFrom {
    /// A namespace matching any of these selectors is allowed.
    pub namespace_selectors: Vec<NamespaceSelector>,
}

/// Namespaces by their labels.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceSelector {
    /// Labels a namespace must all carry; an empty map matches every namespace.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

impl AccessFrom {
    /// Whether a namespace with `labels` is allowed: some selector's labels are all among them.
    #[must_use]
    pub fn allows(&self, labels: &BTreeMap<String, String>) -> bool {
        self.namespace_selectors
            .iter()
            .any(|s| s.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v)))
    }
}

/// The kinds a Kustomization can take its manifests from.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SourceKind {
    #[default]
    GitRepository,
}

impl SourceKind {
    /// The kind's name as it appears in manifests.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GitRepository => "GitRepository",
        }
    }
}

/// A reference to a source, optionally in another namespace.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CrossNamespaceSourceReference {
    /// API version of the referent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Kind of the referent.
    pub kind: SourceKind,
    /// Name of the referent.
    pub name: String,
    /// Namespace of the referent; defaults to the namespace of the object that refers to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

/// The output of a source reconcile: a tarball other controllers download and verify.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Artifact {
    /// Path of the artifact relative to the storage root.
    pub path: String,
    /// HTTP address the artifact is served at.
    pub url: String,
    /// Human-readable identifier of the source revision, such as `main@sha1:<hex>`.
    pub revision: String,
    /// Digest of the file, `sha256:<hex>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$"))]
    pub digest: Option<String>,
    /// When the artifact last changed.
    pub last_update_time: Time,
    /// Size of the file in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
    /// Free-form metadata of the artifact.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// Whether the object's `reconcile.fluxcd.io/requestedAt` annotation asks for a reconcile that
/// `last_handled` (its `status.lastHandledReconcileAt`) has not answered yet; returns the value
/// to record as handled.
#[must_use]
pub fn pending_reconcile_request<'a>(
    annotations: Option<&'a BTreeMap<String, String>>,
    last_handled: Option<&str>,
) -> Option<&'a str> {
    let requested = annotations?.get(RECONCILE_REQUESTED_AT_ANNOTATION)?;
    (Some(requested.as_str()) != last_handled).then_some(requested.as_str())
}

/// The value to store in `status.lastHandledReconcileAt` after a reconcile: the annotation's
/// value when present, otherwise what was stored before.
#[must_use]
pub fn handled_reconcile_at(
    annotations: Option<&BTreeMap<String, String>>,
    previous: Option<&str>,
) -> Option<String> {
    annotations
        .and_then(|a| a.get(RECONCILE_REQUESTED_AT_ANNOTATION))
        .map(String::as_str)
        .or(previous)
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_from_allows_a_namespace_matching_any_selector() {
        let labels: BTreeMap<String, String> = [("team", "a"), ("env", "prod")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into();
        let selector = |pairs: &[(&str, &str)]| NamespaceSelector {
            match_labels: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        let acl = |selectors: Vec<NamespaceSelector>| AccessFrom {
            namespace_selectors: selectors,
        };
        for (access, allowed) in [
            (acl(vec![]), false),
            (acl(vec![selector(&[])]), true),
            (acl(vec![selector(&[("team", "a")])]), true),
            (acl(vec![selector(&[("team", "a"), ("env", "dev")])]), false),
            (
                acl(vec![
                    selector(&[("team", "b")]),
                    selector(&[("env", "prod")]),
                ]),
                true,
            ),
            (acl(vec![selector(&[("other", "x")])]), false),
        ] {
            assert_eq!(access.allows(&labels), allowed, "{access:?}");
        }
        assert!(!acl(vec![selector(&[("team", "a")])]).allows(&BTreeMap::new()));
        assert!(acl(vec![selector(&[])]).allows(&BTreeMap::new()));
    }

    #[test]
    fn an_empty_reference_namespace_is_the_referrers() {
        let mut r = NamespacedObjectReference {
            name: "app".into(),
            namespace: None,
        };
        assert_eq!(r.namespace_or("own"), "own");
        r.namespace = Some(String::new());
        assert_eq!(r.namespace_or("own"), "own");
        r.namespace = Some("other".into());
        assert_eq!(r.namespace_or("own"), "other");
    }

    #[test]
    fn a_new_request_is_pending_until_handled() {
        let mut ann = BTreeMap::new();
        assert_eq!(pending_reconcile_request(Some(&ann), None), None);
        ann.insert(
            RECONCILE_REQUESTED_AT_ANNOTATION.to_owned(),
            "2024-01-01T00:00:00Z".to_owned(),
        );
        assert_eq!(
            pending_reconcile_request(Some(&ann), None),
            Some("2024-01-01T00:00:00Z")
        );
        assert_eq!(
            pending_reconcile_request(Some(&ann), Some("2024-01-01T00:00:00Z")),
            None
        );
        assert_eq!(
            handled_reconcile_at(Some(&ann), Some("old")).as_deref(),
            Some("2024-01-01T00:00:00Z")
        );
        assert_eq!(
            handled_reconcile_at(None, Some("old")).as_deref(),
            Some("old")
        );
    }
}
