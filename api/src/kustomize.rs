//! `Kustomization` (kustomize.toolkit.fluxcd.io/v1): a path in a source's artifact, built and
//! applied to the cluster, pruned and health-checked.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Condition, CrossNamespaceSourceReference, GoDuration};

/// The API group of `Kustomization`.
pub const KUSTOMIZE_GROUP: &str = "kustomize.toolkit.fluxcd.io";

/// Per-object annotations and labels Weir reads and writes on applied objects, as Flux does.
pub mod annotations {
    /// `Merge` (default), `IfNotPresent` or `Ignore`: how an object is applied.
    pub const SSA: &str = "kustomize.toolkit.fluxcd.io/ssa";
    /// `disabled`: never prune this object.
    pub const PRUNE: &str = "kustomize.toolkit.fluxcd.io/prune";
    /// `enabled`: recreate the object when an immutable field changes.
    pub const FORCE: &str = "kustomize.toolkit.fluxcd.io/force";
    /// `disabled`: leave an existing object alone.
    pub const RECONCILE: &str = "kustomize.toolkit.fluxcd.io/reconcile";
    /// `disabled`: skip postBuild substitution for this object.
    pub const SUBSTITUTE: &str = "kustomize.toolkit.fluxcd.io/substitute";
    /// Label: the name of the Kustomization that applied the object.
    pub const NAME_LABEL: &str = "kustomize.toolkit.fluxcd.io/name";
    /// Label: the namespace of the Kustomization that applied the object.
    pub const NAMESPACE_LABEL: &str = "kustomize.toolkit.fluxcd.io/namespace";
}

/// The desired state of a `Kustomization`.
#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[kube(
    group = "kustomize.toolkit.fluxcd.io",
    version = "v1",
    kind = "Kustomization",
    plural = "kustomizations",
    namespaced,
    status = "KustomizationStatus",
    shortname = "ks",
    category = "all",
    category = "fluxcd",
    category = "fluxcd-appliers",
    doc = "Kustomization is the Schema for the kustomizations API.",
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].message"#
    ),
    printcolumn(
        name = "Revision",
        type_ = "string",
        json_path = ".status.lastAppliedRevision",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
#[allow(clippy::struct_excessive_bools)] // Flux's API: prune, wait, suspend and force are booleans.
pub struct KustomizationSpec {
    /// The source whose artifact holds the manifests.
    pub source_ref: CrossNamespaceSourceReference,
    /// Path to the directory with the manifests, relative to the artifact root; defaults to the root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// How often to reconcile, which also corrects drift.
    pub interval: GoDuration,
    /// How soon to retry after a failure; defaults to `interval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_interval: Option<GoDuration>,
    /// Timeout of build, apply and health checking; defaults to `interval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<GoDuration>,
    /// Delete objects that were applied before and are no longer in the source.
    pub prune: bool,
    /// What deleting the Kustomization does to its objects; `MirrorPrune` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,
    /// Wait for every applied object to become healthy.
    #[serde(default)]
    pub wait: bool,
    /// Specific objects whose health decides readiness.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health_checks: Vec<NamespacedObjectKindReference>,
    /// CEL expressions that decide the health of objects of a kind, in place of the built-in
    /// rules; used only when `wait` or `healthChecks` asks for health checking.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health_check_exprs: Vec<CustomHealthCheck>,
    /// Fields drift detection and apply leave to the cluster: JSON pointers, for every object
    /// or the objects a target selects (Flux 2.9's `spec.ignore`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore: Vec<IgnoreRule>,
    /// Kustomizations that must be Ready before this one is applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<DependencyReference>,
    /// Sets or overrides the namespace of every namespaced object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub target_namespace: Option<String>,
    /// Stop reconciling this object.
    #[serde(default)]
    pub suspend: bool,
    /// Recreate objects whose immutable fields changed.
    #[serde(default)]
    pub force: bool,
    /// The service account to impersonate for every request about applied objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Variable substitution after the build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_build: Option<PostBuild>,
    /// Strategic-merge or JSON6902 patches, applied with kustomize semantics.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patches: Vec<Patch>,
    /// Image overrides, applied with kustomize semantics.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<Image>,
    /// A prefix added to the names of all objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 200))]
    pub name_prefix: Option<String>,
    /// A suffix added to the names of all objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 200))]
    pub name_suffix: Option<String>,
    /// Labels and annotations added to all objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_metadata: Option<CommonMetadata>,
    /// Kustomize components (paths relative to `path`) included in the build.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<String>,
    /// Build metadata kustomize adds to the built objects, applied with them:
    /// `originAnnotations` (`config.kubernetes.io/origin`, the file each object came from) and
    /// `transformerAnnotations` (`alpha.config.kubernetes.io/transformations`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub build_metadata: Vec<BuildMetadataOption>,
    /// Leave out the `components` that are not in the source instead of failing the build.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_missing_components: bool,
}

impl KustomizationSpec {
    /// How long a build, apply and health check may take: `timeout`, or when unset the
    /// interval less 30 seconds, never less than 30 seconds (Flux's `GetTimeout`).
    #[must_use]
    pub fn timeout(&self) -> std::time::Duration {
        const FLOOR: std::time::Duration = std::time::Duration::from_secs(30);
        let duration = self.timeout.as_ref().map_or_else(
            || self.interval.as_std().saturating_sub(FLOOR),
            GoDuration::as_std,
        );
        duration.max(FLOOR)
    }
}

/// A reference to an object by kind, name and namespace.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedObjectKindReference {
    /// API version of the referent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Kind of the referent.
    pub kind: String,
    /// Name of the referent.
    pub name: String,
    /// Namespace of the referent; defaults to the Kustomization's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// CEL expressions evaluated against each object of one apiVersion and kind: the first of
/// `inProgress`, `failed` and `current` that returns true gives its status.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CustomHealthCheck {
    /// API version of the objects under evaluation; its group, with the kind, selects them.
    pub api_version: String,
    /// Kind of the objects under evaluation.
    pub kind: String,
    /// CEL expression that returns true when the object has reached its desired state.
    pub current: String,
    /// CEL expression that returns true when the object has not yet reached its desired state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_progress: Option<String>,
    /// CEL expression that returns true when the object failed to reach its desired state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

/// A Kustomization this one depends on.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DependencyReference {
    /// Weir's extension: the kind of the dependency, `Kustomization` or `HelmRelease`; the
    /// dependent's own kind when unset (Flux's only choice). A cycle across kinds stalls every
    /// object in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<DependencyKind>,
    /// Name of the referent.
    pub name: String,
    /// Namespace of the referent; defaults to the namespace of the dependent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// CEL expression over `dep` (the dependency) and `self` (this Kustomization) that decides
    /// whether the dependency is ready, in place of the built-in Ready check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_expr: Option<String>,
}

/// The kinds a `dependsOn` entry may name.
#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub enum DependencyKind {
    Kustomization,
    HelmRelease,
}

impl DependencyKind {
    /// The kind's name as it appears in manifests.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kustomization => "Kustomization",
            Self::HelmRelease => "HelmRelease",
        }
    }

    /// The kind's API group and version.
    #[must_use]
    pub fn api_version(self) -> &'static str {
        match self {
            Self::Kustomization => "kustomize.toolkit.fluxcd.io/v1",
            Self::HelmRelease => "helm.toolkit.fluxcd.io/v2",
        }
    }

    /// The kind's resource name (plural).
    #[must_use]
    pub fn plural(self) -> &'static str {
        match self {
            Self::Kustomization => "kustomizations",
            Self::HelmRelease => "helmreleases",
        }
    }
}

/// Variable substitution applied after the build.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PostBuild {
    /// When to substitute: `WithVariables` (the default) only when at least one variable is
    /// defined, `Always` even with none (so `${var:=default}` takes its default).
    #[serde(default, skip_serializing_if = "SubstituteStrategy::is_default")]
    pub substitute_strategy: SubstituteStrategy,
    /// Variables by name; these win over `substituteFrom`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub substitute: BTreeMap<String, String>,
    /// ConfigMaps and Secrets whose data are variables, read in order; later ones win.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub substitute_from: Vec<SubstituteReference>,
}

/// A kind of build metadata (Flux's `buildMetadata`, kustomize's names).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum BuildMetadataOption {
    OriginAnnotations,
    TransformerAnnotations,
}

impl BuildMetadataOption {
    /// The name kustomize's `buildMetadata` takes.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OriginAnnotations => "originAnnotations",
            Self::TransformerAnnotations => "transformerAnnotations",
        }
    }
}

/// When `postBuild` substitutes variables (Flux's `substituteStrategy`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SubstituteStrategy {
    /// Only when at least one variable is defined, inline or from `substituteFrom`.
    #[default]
    WithVariables,
    /// Even when none is.
    Always,
}

impl SubstituteStrategy {
    #[allow(
        clippy::trivially_copy_pass_by_ref,
        reason = "serde's skip_serializing_if passes a reference"
    )]
    fn is_default(&self) -> bool {
        *self == Self::WithVariables
    }
}

/// What deleting a Kustomization does to the objects it applied (Flux's `deletionPolicy`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeletionPolicy {
    /// Delete them when `prune` is on, orphan them when it is off.
    #[default]
    MirrorPrune,
    /// Delete them.
    Delete,
    /// Delete them and wait (up to `timeout`) until they are gone.
    WaitForTermination,
    /// Leave them.
    Orphan,
}

impl KustomizationSpec {
    /// The policy in force: `MirrorPrune` resolved to `Delete` or `Orphan` by `prune`.
    #[must_use]
    pub fn effective_deletion_policy(&self) -> DeletionPolicy {
        match self.deletion_policy.unwrap_or_default() {
            DeletionPolicy::MirrorPrune if self.prune => DeletionPolicy::Delete,
            DeletionPolicy::MirrorPrune => DeletionPolicy::Orphan,
            other => other,
        }
    }
}

/// The kinds variables can be read from.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubstituteKind {
    Secret,
    ConfigMap,
}

/// A ConfigMap or Secret holding substitution variables.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SubstituteReference {
    /// `ConfigMap` or `Secret`.
    pub kind: SubstituteKind,
    /// Name of the referent, in the Kustomization's namespace.
    #[schemars(length(max = 253))]
    pub name: String,
    /// A missing referent is not an error when true.
    #[serde(default)]
    pub optional: bool,
}

/// A patch and the objects it targets.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Patch {
    /// A strategic-merge patch or a JSON6902 patch, as YAML or JSON.
    pub patch: String,
    /// Which objects the patch applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Selector>,
}

/// Paths of the selected objects that drift detection and apply ignore.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IgnoreRule {
    /// JSON pointers (RFC 6901), such as `/spec/replicas`.
    #[schemars(length(min = 1))]
    pub paths: Vec<String>,
    /// The objects the paths are ignored in; all objects when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Selector>,
}

/// Selects objects by group, version, kind, name, namespace and selectors (kustomize semantics).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Selector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotation_selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<String>,
}

/// An image override: every container image named `name` gets the new name, tag or digest.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    /// The image name to match, without tag.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_tag: Option<String>,
    /// Replaces the tag with a digest when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// Labels and annotations put on every applied object.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CommonMetadata {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// The observed state of a `Kustomization`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KustomizationStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The revision of the last successful apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_revision: Option<String>,
    /// The origin revision of the last successful apply: the source artifact's
    /// `org.opencontainers.image.revision` metadata, when it has one (OCI artifacts pushed by
    /// `flux push artifact` carry the git revision they were built from).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_origin_revision: Option<String>,
    /// The revision of the last apply attempt, successful or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempted_revision: Option<String>,
    /// The last reconciliations of built manifests, newest first (Flux 2.7's `status.history`):
    /// one snapshot per digest of the manifests and outcome.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: crate::history::History,
    /// The objects applied by the last successful apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<ResourceInventory>,
    /// The last `reconcile.fluxcd.io/requestedAt` value handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,
}

/// The objects a Kustomization applied.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceInventory {
    pub entries: Vec<ResourceRef>,
}

/// One applied object: `id` is `<namespace>_<name>_<group>_<kind>`, `v` its API version.
#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
pub struct ResourceRef {
    pub id: String,
    pub v: String,
}

/// An object's identity as Flux writes it in an inventory.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjMetadata {
    pub namespace: String,
    pub name: String,
    pub group: String,
    pub kind: String,
}

impl ObjMetadata {
    /// `<namespace>_<name>_<group>_<kind>` (empty namespace for cluster-scoped, empty group for
    /// core), with `:` in the name (RBAC names such as `system:controller`) written `__`, as
    /// Flux's cli-utils writes it.
    #[must_use]
    pub fn id(&self) -> String {
        format!(
            "{}_{}_{}_{}",
            self.namespace,
            self.name.replace(':', "__"),
            self.group,
            self.kind
        )
    }

    /// Parses an inventory id as cli-utils does: the namespace up to the first `_`, the kind and
    /// group after the last two, and the name in between with `__` read back as `:`. Nothing
    /// else may hold a `_`.
    #[must_use]
    pub fn parse(id: &str) -> Option<Self> {
        let (namespace, rest) = id.split_once('_')?;
        let (rest, kind) = rest.rsplit_once('_')?;
        let (name, group) = rest.rsplit_once('_')?;
        let name = name.replace("__", ":");
        if name.is_empty() || kind.is_empty() || name.contains('_') {
            return None;
        }
        Some(Self {
            namespace: namespace.to_owned(),
            name,
            group: group.to_owned(),
            kind: kind.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeout_defaults_as_fluxs_get_timeout() {
        let spec = |interval: &str, timeout: Option<&str>| -> KustomizationSpec {
            let mut v = serde_json::json!({
                "sourceRef": {"kind": "GitRepository", "name": "r"},
                "interval": interval, "prune": false,
            });
            if let Some(t) = timeout {
                v["timeout"] = serde_json::json!(t);
            }
            serde_json::from_value(v).unwrap()
        };
        let secs = std::time::Duration::from_secs;
        // Unset: the interval less 30 s, at least 30 s.
        assert_eq!(spec("10m", None).timeout(), secs(570));
        assert_eq!(spec("1m", None).timeout(), secs(30));
        assert_eq!(spec("10s", None).timeout(), secs(30));
        // Set: as written, at least 30 s.
        assert_eq!(spec("10m", Some("2m")).timeout(), secs(120));
        assert_eq!(spec("10m", Some("5s")).timeout(), secs(30));
    }

    #[test]
    fn inventory_ids_round_trip() {
        let dep = ObjMetadata {
            namespace: "apps".into(),
            name: "web".into(),
            group: "apps".into(),
            kind: "Deployment".into(),
        };
        assert_eq!(dep.id(), "apps_web_apps_Deployment");
        assert_eq!(ObjMetadata::parse(&dep.id()), Some(dep));
        let ns = ObjMetadata {
            namespace: String::new(),
            name: "apps".into(),
            group: String::new(),
            kind: "Namespace".into(),
        };
        assert_eq!(ns.id(), "_apps__Namespace");
        assert_eq!(ObjMetadata::parse("_apps__Namespace"), Some(ns));
        assert_eq!(ObjMetadata::parse("a_b_c"), None);
        assert_eq!(ObjMetadata::parse("a_b_c_d_e"), None, "a `_` in the name");
    }

    #[test]
    fn colons_in_names_are_transcoded_as_in_flux_inventories() {
        let role = ObjMetadata {
            namespace: String::new(),
            name: "system:weir:reader".into(),
            group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
        };
        let id = "_system__weir__reader_rbac.authorization.k8s.io_ClusterRole";
        assert_eq!(role.id(), id);
        assert_eq!(ObjMetadata::parse(id), Some(role));
    }
}
