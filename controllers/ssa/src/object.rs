//! The objects of a set: typed reads of a manifest's fields, one resolved object to apply, and
//! what happened to each.

use std::collections::BTreeMap;

use kube::api::ApiResource;
use serde_json::Value;
use weir_api::kustomize::{ObjMetadata, annotations};

/// Typed reads of the fields every manifest has, as built or as the API server returned it.
/// A missing field reads as empty (`None` for annotations and labels), as Kubernetes'
/// unstructured objects read it.
pub trait ManifestFields {
    /// `apiVersion` (`apps/v1`, or `v1` for the core group).
    fn api_version(&self) -> &str;
    /// The group of `apiVersion` (`""` for the core group).
    fn group(&self) -> &str;
    /// `kind`.
    fn kind(&self) -> &str;
    /// `metadata.name`.
    fn name(&self) -> &str;
    /// The value of one `metadata.annotations` entry.
    fn annotation(&self, key: &str) -> Option<&str>;
    /// The value of one `metadata.labels` entry.
    fn label(&self, key: &str) -> Option<&str>;
}

impl ManifestFields for Value {
    fn api_version(&self) -> &str {
        self.get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    fn group(&self) -> &str {
        self.api_version().rsplit_once('/').map_or("", |(g, _)| g)
    }

    fn kind(&self) -> &str {
        self.get("kind").and_then(Value::as_str).unwrap_or_default()
    }

    fn name(&self) -> &str {
        self.pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    fn annotation(&self, key: &str) -> Option<&str> {
        self.pointer("/metadata/annotations")?.get(key)?.as_str()
    }

    fn label(&self, key: &str) -> Option<&str> {
        self.pointer("/metadata/labels")?.get(key)?.as_str()
    }
}

/// One object to apply, resolved against the API server (or a CRD of the same set).
#[derive(Debug, Clone)]
pub struct Target {
    /// The manifest as it is applied.
    pub object: Value,
    /// The file it was built from, for messages.
    pub file: String,
    /// Its identity (namespace empty when cluster-scoped).
    pub meta: ObjMetadata,
    /// Its `apiVersion`.
    pub api_version: String,
    /// The resource its kind is served as.
    pub resource: ApiResource,
    /// Whether its kind is namespaced.
    pub namespaced: bool,
    /// The kind is defined by a CRD in the same set that the server does not serve yet.
    pub kind_from_set: bool,
    /// The name of the CRD of the same set that defines this kind, if any.
    pub defining_crd: Option<String>,
}

impl Target {
    /// `Kind/namespace/name`, as events and messages name objects.
    #[must_use]
    pub fn display(&self) -> String {
        display(&self.meta)
    }

    /// Annotated `kustomize.toolkit.fluxcd.io/ssa: Ignore`: never applied.
    #[must_use]
    pub fn is_ignored(&self) -> bool {
        self.object.annotation(annotations::SSA) == Some("Ignore")
    }
}

/// `Kind/namespace/name` (or `Kind/name` when cluster-scoped).
#[must_use]
pub fn display(meta: &ObjMetadata) -> String {
    if meta.namespace.is_empty() {
        format!("{}/{}", meta.kind, meta.name)
    } else {
        format!("{}/{}/{}", meta.kind, meta.namespace, meta.name)
    }
}

/// What happened to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// It did not exist and was created.
    Created,
    /// It existed and was changed (or recreated).
    Configured,
    /// Applying it would change nothing, so it was not written.
    Unchanged,
    /// Left alone by annotation (`ssa: Ignore`/`IfNotPresent`, `reconcile: disabled`).
    Skipped,
    /// Pruned.
    Deleted,
}

impl Change {
    fn verb(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Configured => "configured",
            Self::Unchanged => "unchanged",
            Self::Skipped => "skipped",
            Self::Deleted => "deleted",
        }
    }

    fn wrote(self) -> bool {
        match self {
            Self::Created | Self::Configured | Self::Deleted => true,
            Self::Unchanged | Self::Skipped => false,
        }
    }
}

/// The changes of one reconcile, in order.
#[derive(Debug, Clone, Default)]
pub struct ChangeSet {
    /// Each object (`Kind/namespace/name`) and what happened to it.
    pub entries: Vec<(String, Change)>,
    /// For configured objects something else had changed: the object and who changed what,
    /// from its `managedFields` (`kubectl-scale changed .spec.replicas`).
    pub drift: BTreeMap<String, Vec<String>>,
}

impl ChangeSet {
    /// Whether anything was written.
    #[must_use]
    pub fn wrote(&self) -> bool {
        self.entries.iter().any(|(_, c)| c.wrote())
    }

    /// `Deployment/ns/app configured` lines for the objects written.
    #[must_use]
    pub fn summary(&self) -> String {
        self.entries
            .iter()
            .filter(|(_, c)| c.wrote())
            .map(|(o, c)| match self.drift.get(o) {
                Some(who) if !who.is_empty() => {
                    format!("{o} {} (drift: {})", c.verb(), who.join("; "))
                }
                _ => format!("{o} {}", c.verb()),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn change_summaries_list_writes_only() {
        let mut set = ChangeSet {
            entries: vec![
                ("Deployment/ns/app".to_owned(), Change::Configured),
                ("ConfigMap/ns/cfg".to_owned(), Change::Unchanged),
                ("Service/ns/old".to_owned(), Change::Deleted),
            ],
            drift: BTreeMap::new(),
        };
        assert!(set.wrote());
        assert_eq!(
            set.summary(),
            "Deployment/ns/app configured\nService/ns/old deleted"
        );
        set.drift.insert(
            "Deployment/ns/app".to_owned(),
            vec!["kubectl-scale changed .spec.replicas".to_owned()],
        );
        assert_eq!(
            set.summary(),
            "Deployment/ns/app configured (drift: kubectl-scale changed .spec.replicas)\nService/ns/old deleted"
        );
    }

    #[test]
    fn manifest_fields_read_as_empty_when_missing() {
        let object = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"a": "b"}}});
        assert_eq!(
            (object.group(), object.kind(), object.name()),
            ("apps", "Deployment", "web")
        );
        assert_eq!(object.label("a"), Some("b"));
        assert_eq!(object.annotation("a"), None);
        let core = json!({"apiVersion": "v1"});
        assert_eq!((core.group(), core.kind(), core.name()), ("", "", ""));
    }
}
