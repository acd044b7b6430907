//! `HelmChart` (source.toolkit.fluxcd.io/v1): one chart of a source, in a version range, pulled
//! (or packaged) into a `.tgz` artifact with its values files merged in.
//!
//! Weir takes charts from HTTP(S) and OCI HelmRepositories and from GitRepositories: Flux's
//! `Bucket` source and an OCI chart's `verify` are not implemented, so the schema leaves them out
//! and the API server rejects them.

use std::time::Duration;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Artifact, Condition, GoDuration};

/// A chart reference that names no chart, or a range no version satisfies (Flux's).
pub const INVALID_CHART_REFERENCE_REASON: &str = "InvalidChartReference";
/// The chart archive could not be downloaded or is not a chart (Flux's).
pub const CHART_PULL_ERROR_REASON: &str = "ChartPullError";
/// A values file is missing or does not merge (Flux's).
pub const VALUES_FILES_ERROR_REASON: &str = "ValuesFilesError";
/// A chart's dependencies could not be built (Flux's).
pub const DEPENDENCY_BUILD_ERROR_REASON: &str = "DependencyBuildError";
/// The chart could not be packaged with its merged values (Flux's).
pub const CHART_PACKAGE_ERROR_REASON: &str = "ChartPackageError";
/// A chart archive pulled as published (Flux's).
pub const CHART_PULL_SUCCEEDED_REASON: &str = "ChartPullSucceeded";
/// A chart packaged anew, with merged values (Flux's).
pub const CHART_PACKAGE_SUCCEEDED_REASON: &str = "ChartPackageSucceeded";
/// The source is missing or unreadable (Flux's).
pub const SOURCE_UNAVAILABLE_REASON: &str = "SourceUnavailable";
/// The source has no artifact yet (Flux's).
pub const NO_SOURCE_ARTIFACT_REASON: &str = "NoSourceArtifact";

/// The desired state of a `HelmChart`.
#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[kube(
    group = "source.toolkit.fluxcd.io",
    version = "v1",
    kind = "HelmChart",
    plural = "helmcharts",
    namespaced,
    status = "HelmChartStatus",
    shortname = "hc",
    category = "all",
    category = "fluxcd",
    category = "fluxcd-sources",
    doc = "HelmChart is the Schema for the helmcharts API.",
    printcolumn(name = "Chart", type_ = "string", json_path = ".spec.chart"),
    printcolumn(name = "Version", type_ = "string", json_path = ".spec.version"),
    printcolumn(
        name = "Source Kind",
        type_ = "string",
        json_path = ".spec.sourceRef.kind"
    ),
    printcolumn(
        name = "Source Name",
        type_ = "string",
        json_path = ".spec.sourceRef.name"
    ),
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
    )
)]
#[serde(rename_all = "camelCase")]
pub struct HelmChartSpec {
    /// The chart's name in a HelmRepository's index, or the path of its directory in a
    /// GitRepository's artifact.
    pub chart: String,
    /// A semver range (Masterminds' constraint syntax); the highest version in it is taken.
    /// Ignored for a GitRepository's chart, which has the one version of its `Chart.yaml`.
    #[serde(default = "any_version")]
    pub version: String,
    /// The source the chart is available at.
    pub source_ref: LocalHelmChartSourceReference,
    /// How often the source is checked for a new chart version.
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub interval: GoDuration,
    /// What makes a new artifact: `ChartVersion` (a new chart version; the default) or
    /// `Revision` (a new source revision, the version then `<version>+<12 hex of the commit>`
    /// for a GitRepository; as `ChartVersion` for a HelmRepository, whose versions are
    /// immutable).
    #[serde(default)]
    pub reconcile_strategy: ReconcileStrategy,
    /// Values files (of the chart for a HelmRepository, of the artifact's root for a
    /// GitRepository), merged in this order (later files win; maps merged deeply) into
    /// the artifact's `values.yaml`; the chart's own `values.yaml` only when listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values_files: Vec<String>,
    /// Leave out a missing values file instead of failing.
    #[serde(default)]
    pub ignore_missing_values_files: bool,
    /// Stop reconciling this object.
    #[serde(default)]
    pub suspend: bool,
}

fn any_version() -> String {
    "*".to_owned()
}

/// The source of a chart, in the HelmChart's namespace.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LocalHelmChartSourceReference {
    /// API version of the referent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Kind of the referent.
    pub kind: HelmChartSourceKind,
    /// Name of the referent.
    pub name: String,
}

/// The kinds a HelmChart takes its chart from in Weir.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HelmChartSourceKind {
    /// `chart` is a chart name in the repository's index.
    HelmRepository,
    /// `chart` is the path of a chart directory in the repository's artifact.
    GitRepository,
}

impl HelmChartSourceKind {
    /// The kind's name as it appears in manifests.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HelmRepository => "HelmRepository",
            Self::GitRepository => "GitRepository",
        }
    }
}

/// What makes a new artifact.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReconcileStrategy {
    /// A new chart version.
    #[default]
    ChartVersion,
    /// A new source revision (for a HelmRepository, the same as `ChartVersion`).
    Revision,
}

impl HelmChartSpec {
    /// `spec.interval`.
    #[must_use]
    pub fn interval(&self) -> Duration {
        self.interval.as_std()
    }
}

/// The observed state of a `HelmChart`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HelmChartStatus {
    /// The last generation reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The source's artifact revision the last reconcile saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_source_artifact_revision: Option<String>,
    /// The chart name the last reconcile resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_chart_name: Option<String>,
    /// The values files merged into the artifact.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub observed_values_files: Vec<String>,
    /// Conditions of the object.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Where the latest artifact is served, whatever its revision (`…/latest.tar.gz`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The last successfully stored chart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<Artifact>,
    /// The last `reconcile.fluxcd.io/requestedAt` value handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_fluxs() {
        let spec: HelmChartSpec = serde_json::from_value(serde_json::json!({
            "chart": "podinfo",
            "sourceRef": { "kind": "HelmRepository", "name": "podinfo" },
            "interval": "5m",
        }))
        .unwrap();
        assert_eq!(spec.version, "*");
        assert_eq!(spec.reconcile_strategy, ReconcileStrategy::ChartVersion);
        assert_eq!(spec.interval(), Duration::from_secs(300));
        assert!(spec.values_files.is_empty());
        assert!(!spec.ignore_missing_values_files);
        for kind in ["Bucket", "OCIRepository"] {
            let other = serde_json::from_value::<HelmChartSpec>(serde_json::json!({
                "chart": "podinfo",
                "sourceRef": { "kind": kind, "name": "podinfo" },
                "interval": "5m",
            }));
            assert!(other.is_err(), "{kind}");
        }
    }
}
