//! `HelmRelease` (helm.toolkit.fluxcd.io/v2): a chart from a source, released by the real Helm 4
//! with the computed values, tested, remediated when it fails, and uninstalled on deletion.
//!
//! Field names, defaults, status and reasons are Flux 2.9's. Not implemented yet, so left out of
//! the schema (the API server rejects them): `kubeConfig`, `persistentClient` (Weir runs Helm as
//! a process per action), `commonMetadata`, the deprecated post-renderer fields
//! (`patchesStrategicMerge`, `patchesJson6902`), `chart.spec.verify`,
//! the deprecated `valuesFile` and `install.skipCRDs`, and `chartRef` to an OCIRepository.
//!
//! CRD policies are Flux's: `install.crds` (`Create` by default) and `upgrade.crds` (`Skip` by
//! default). Helm itself only creates a chart's CRDs on install, so the controller applies them
//! itself where the policy asks for more (`CreateReplace` on install, `Create` or
//! `CreateReplace` on upgrade).

use std::collections::BTreeMap;
use std::time::Duration;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::helm_chart::{HelmChartSourceKind, ReconcileStrategy};
use crate::kustomize::DependencyReference;
use crate::{Condition, GoDuration};

/// An install was made (Flux's).
pub const INSTALL_SUCCEEDED_REASON: &str = "InstallSucceeded";
/// An install failed (Flux's).
pub const INSTALL_FAILED_REASON: &str = "InstallFailed";
/// An upgrade was made (Flux's).
pub const UPGRADE_SUCCEEDED_REASON: &str = "UpgradeSucceeded";
/// An upgrade failed (Flux's).
pub const UPGRADE_FAILED_REASON: &str = "UpgradeFailed";
/// The release's tests passed (Flux's).
pub const TEST_SUCCEEDED_REASON: &str = "TestSucceeded";
/// A test of the release failed (Flux's).
pub const TEST_FAILED_REASON: &str = "TestFailed";
/// A failed release was rolled back (Flux's).
pub const ROLLBACK_SUCCEEDED_REASON: &str = "RollbackSucceeded";
/// Rolling a failed release back failed (Flux's).
pub const ROLLBACK_FAILED_REASON: &str = "RollbackFailed";
/// The release was uninstalled (Flux's).
pub const UNINSTALL_SUCCEEDED_REASON: &str = "UninstallSucceeded";
/// Uninstalling the release failed (Flux's).
pub const UNINSTALL_FAILED_REASON: &str = "UninstallFailed";
/// The chart artifact is missing, or could not be downloaded or verified (Flux's).
pub const ARTIFACT_FAILED_REASON: &str = "ArtifactFailed";
/// The release could not be prepared: its values, chart or Helm (Flux's).
pub const INIT_FAILED_REASON: &str = "InitFailed";
/// The release in Helm's storage could not be read (Flux's).
pub const GET_LAST_RELEASE_FAILED_REASON: &str = "GetLastReleaseFailed";
/// A dependency is not Ready (Flux's).
pub const DEPENDENCY_NOT_READY_REASON: &str = "DependencyNotReady";

/// The `Released` condition: the last install or upgrade against the desired state (Flux's).
pub const RELEASED_CONDITION: &str = "Released";
/// The `TestSuccess` condition: the last test run against the desired state (Flux's).
pub const TEST_SUCCESS_CONDITION: &str = "TestSuccess";
/// The `Remediated` condition: the last rollback or uninstall after a failure (Flux's).
pub const REMEDIATED_CONDITION: &str = "Remediated";

/// Annotation whose new value resets the failure counters, so a Stalled release is retried
/// (Flux's `reconcile.fluxcd.io/resetAt`); it also asks for a reconcile like `requestedAt`.
pub const RESET_AT_ANNOTATION: &str = "reconcile.fluxcd.io/resetAt";
/// Annotation whose new value forces one upgrade (or install) even without a change
/// (Flux's `reconcile.fluxcd.io/forceAt`); it must be paired with the same `requestedAt`.
pub const FORCE_AT_ANNOTATION: &str = "reconcile.fluxcd.io/forceAt";

/// Helm's limit on a release name, and the length a longer default name is shortened to
/// (before a `-` and 12 hex characters of its SHA-256), as Flux does.
pub const RELEASE_NAME_MAX: usize = 53;
const RELEASE_NAME_SHORT_PREFIX: usize = 40;

/// The desired state of a `HelmRelease`.
#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[kube(
    group = "helm.toolkit.fluxcd.io",
    version = "v2",
    kind = "HelmRelease",
    plural = "helmreleases",
    namespaced,
    status = "HelmReleaseStatus",
    shortname = "hr",
    category = "all",
    category = "fluxcd",
    doc = "HelmRelease is the Schema for the helmreleases API.",
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
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.chart) && !has(self.chartRef)) || (!has(self.chart) && has(self.chartRef))",
    "message": "either chart or chartRef must be set",
}]))]
pub struct HelmReleaseSpec {
    /// The template of the HelmChart the controller creates for this release
    /// (`<namespace>-<name>`, in the source's namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chart: Option<HelmChartTemplate>,
    /// An existing HelmChart whose artifact is the chart, in place of `chart`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chart_ref: Option<ChartReference>,
    /// How often the release is reconciled (and its HelmChart's default interval).
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub interval: GoDuration,
    /// Stop reconciling this object.
    #[serde(default)]
    pub suspend: bool,
    /// The Helm release name; defaults to `[<targetNamespace>-]<name>`, shortened as Flux
    /// does when longer than 53 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 53))]
    pub release_name: Option<String>,
    /// The namespace the release is installed into; defaults to the HelmRelease's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub target_namespace: Option<String>,
    /// The namespace of Helm's release storage. Weir releases with the helm CLI, which keeps a
    /// release in the namespace it releases into: this defaults to that namespace (Flux's
    /// default is the HelmRelease's namespace), and naming another is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub storage_namespace: Option<String>,
    /// HelmReleases that must be Ready before this one is released.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<DependencyReference>,
    /// How long any one Kubernetes operation of a Helm action may take; defaults to `5m0s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub timeout: Option<GoDuration>,
    /// How many release revisions Helm keeps; `0` for all; defaults to `5`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_history: Option<i64>,
    /// The service account Helm acts as, impersonated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub service_account_name: Option<String>,
    /// Weir's extension: CEL expressions that decide the health of the release's objects of a
    /// kind after an install or upgrade (as a Kustomization's `healthCheckExprs`), on top of
    /// Helm's own kstatus wait; an object failing them fails the action (and remediation
    /// follows).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health_check_exprs: Vec<crate::kustomize::CustomHealthCheck>,
    /// Whether and how the live objects are compared with the release's manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift_detection: Option<DriftDetection>,
    /// How installs are made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install: Option<Install>,
    /// How upgrades are made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<Upgrade>,
    /// Whether and how the chart's tests run after an install or upgrade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<Test>,
    /// How a failed upgrade is rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<Rollback>,
    /// How the release is uninstalled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uninstall: Option<Uninstall>,
    /// ConfigMaps and Secrets whose values are merged, in order, under `values`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values_from: Vec<ValuesReference>,
    /// Kustomizations of the rendered manifests, applied in order before Helm applies them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post_renderers: Vec<PostRenderer>,
    /// The release's values, merged over everything in `valuesFrom`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub values: Option<serde_json::Map<String, serde_json::Value>>,
}

fn free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// One post-renderer of the rendered manifests.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PostRenderer {
    /// Patches and image overrides, applied with kustomize.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kustomize: Option<KustomizePostRenderer>,
}

/// A kustomization of the rendered manifests.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KustomizePostRenderer {
    /// Strategic-merge or JSON6902 patches, with targets as kustomize selects them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patches: Vec<crate::kustomize::Patch>,
    /// Image name, tag or digest overrides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<crate::kustomize::Image>,
}

/// Drift detection: the release's objects compared with its manifest in Helm's storage.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DriftDetection {
    /// `disabled` (default), `warn` (report drift) or `enabled` (report and correct it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<DriftDetectionMode>,
    /// JSON pointers left out of the comparison, for every object or those a target selects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore: Vec<crate::kustomize::IgnoreRule>,
}

/// What drift detection does.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DriftDetectionMode {
    /// Drift is corrected: the drifted objects are applied again from the manifest.
    Enabled,
    /// Drift is reported (the Drifted condition, a Warning Event) and left as it is.
    Warn,
    #[default]
    Disabled,
}

/// The `Drifted` condition: whether the live objects differ from the release's manifest
/// (Weir's; Flux reports drift in Events only).
pub const DRIFTED_CONDITION: &str = "Drifted";
/// Live objects differ from the release's manifest.
pub const DRIFT_DETECTED_REASON: &str = "DriftDetected";
/// Drifted objects were applied again from the release's manifest.
pub const DRIFT_CORRECTED_REASON: &str = "DriftCorrected";
/// Label or annotation (value `disabled`) that leaves an object out of drift detection
/// (Flux's).
pub const DRIFT_DETECTION_KEY: &str = "helm.toolkit.fluxcd.io/driftDetection";

/// The template of the HelmChart a HelmRelease creates.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HelmChartTemplate {
    /// Labels and annotations of the HelmChart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<HelmChartTemplateObjectMeta>,
    /// The HelmChart's spec.
    pub spec: HelmChartTemplateSpec,
}

/// Labels and annotations for the created HelmChart.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
pub struct HelmChartTemplateObjectMeta {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The spec of the created HelmChart.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HelmChartTemplateSpec {
    /// The chart's name in the repository, or its path in a GitRepository.
    #[schemars(length(min = 1, max = 2048))]
    pub chart: String,
    /// A semver range; defaults to `*`, the latest version.
    #[serde(default = "any_version")]
    pub version: String,
    /// The source the chart is available at.
    pub source_ref: ChartSourceReference,
    /// How often the source is checked for updates; defaults to the HelmRelease's interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub interval: Option<GoDuration>,
    /// What makes a new chart artifact: `ChartVersion` (default) or `Revision`.
    #[serde(default)]
    pub reconcile_strategy: ReconcileStrategy,
    /// Values files of the source, merged in order as the chart's values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values_files: Vec<String>,
    /// Leave out missing values files instead of failing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_missing_values_files: bool,
}

fn any_version() -> String {
    "*".to_owned()
}

/// The source of a templated chart, possibly in another namespace.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ChartSourceReference {
    /// API version of the referent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Kind of the referent.
    pub kind: HelmChartSourceKind,
    /// Name of the referent.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the referent; defaults to the HelmRelease's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

/// A chart source object whose artifact is the chart.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ChartReference {
    /// API version of the referent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Kind of the referent.
    pub kind: ChartReferenceKind,
    /// Name of the referent.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the referent; defaults to the HelmRelease's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

/// The kinds `chartRef` may name in Weir.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChartReferenceKind {
    HelmChart,
}

/// How installs are made.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[allow(clippy::struct_excessive_bools)] // Flux's API.
pub struct Install {
    /// Timeout of an install; defaults to the HelmRelease's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub timeout: Option<GoDuration>,
    /// What a failed install leads to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remediation: Option<InstallRemediation>,
    /// Do not wait for the release's objects to be ready.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable_wait: bool,
    /// Do not wait for the release's Jobs to complete.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable_wait_for_jobs: bool,
    /// Do not run the chart's hooks.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable_hooks: bool,
    /// Do not validate the rendered objects against the cluster's OpenAPI schema.
    #[serde(
        default,
        skip_serializing_if = "std::ops::Not::not",
        rename = "disableOpenAPIValidation"
    )]
    pub disable_openapi_validation: bool,
    /// Do not validate the values against the chart's `values.schema.json`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable_schema_validation: bool,
    /// Reuse the name of a release uninstalled with its history kept.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replace: bool,
    /// What is done with the chart's CRDs on install: `Create` (default), `CreateReplace` or
    /// `Skip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crds: Option<CrdsPolicy>,
    /// Create the target namespace if it does not exist (it is not deleted on uninstall).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub create_namespace: bool,
}

/// What a failed install leads to.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct InstallRemediation {
    /// Installs retried after a failure (each after an uninstall); negative for unlimited.
    #[serde(default)]
    pub retries: i64,
    /// Do not remediate when the tests fail; defaults to `test.ignoreFailures`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_test_failures: Option<bool>,
    /// Uninstall the last failed install when no retries remain; defaults to false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remediate_last_failure: Option<bool>,
}

/// How upgrades are made.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[allow(clippy::struct_excessive_bools)] // Flux's API.
pub struct Upgrade {
    /// Timeout of an upgrade; defaults to the HelmRelease's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub timeout: Option<GoDuration>,
    /// What a failed upgrade leads to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remediation: Option<UpgradeRemediation>,
    /// Do not wait for the release's objects to be ready.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable_wait: bool,
    /// Do not wait for the release's Jobs to complete.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable_wait_for_jobs: bool,
    /// Do not run the chart's hooks.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable_hooks: bool,
    /// Do not validate the rendered objects against the cluster's OpenAPI schema.
    #[serde(
        default,
        skip_serializing_if = "std::ops::Not::not",
        rename = "disableOpenAPIValidation"
    )]
    pub disable_openapi_validation: bool,
    /// Do not validate the values against the chart's `values.schema.json`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable_schema_validation: bool,
    /// Replace objects instead of updating them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
    /// Reuse the last release's values and merge the computed ones over them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub preserve_values: bool,
    /// Delete the objects a failed upgrade created.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cleanup_on_fail: bool,
    /// What is done with the chart's CRDs on upgrade: `Skip` (default), `Create` or
    /// `CreateReplace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crds: Option<CrdsPolicy>,
}

/// What a failed upgrade leads to.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeRemediation {
    /// Upgrades retried after a failure (each after the strategy's remediation); negative for
    /// unlimited.
    #[serde(default)]
    pub retries: i64,
    /// Do not remediate when the tests fail; defaults to `test.ignoreFailures`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_test_failures: Option<bool>,
    /// Remediate the last failed upgrade when no retries remain; defaults to `retries > 0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remediate_last_failure: Option<bool>,
    /// `rollback` (default) or `uninstall`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<RemediationStrategy>,
}

/// How a failed upgrade is remediated.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RemediationStrategy {
    Rollback,
    Uninstall,
}

/// What is done with a chart's CRDs.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrdsPolicy {
    /// Neither created nor replaced.
    Skip,
    /// New CRDs created; existing ones left as they are.
    Create,
    /// New CRDs created, existing ones replaced; none deleted.
    CreateReplace,
}

/// The chart's tests.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Test {
    /// Run the tests after every install and upgrade.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub enable: bool,
    /// Timeout of a test run; defaults to the HelmRelease's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub timeout: Option<GoDuration>,
    /// Report failed tests but do not remediate the release.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_failures: bool,
    /// Tests to run, or to leave out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<Vec<TestFilter>>,
}

/// One test to run or leave out.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TestFilter {
    /// The test hook's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Leave the named test out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exclude: bool,
}

/// How a failed upgrade is rolled back.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[allow(clippy::struct_excessive_bools)] // Flux's API.
pub struct Rollback {
    /// Timeout of a rollback; defaults to the HelmRelease's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub timeout: Option<GoDuration>,
    /// Do not wait for the objects to be ready.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable_wait: bool,
    /// Do not wait for Jobs to complete.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable_wait_for_jobs: bool,
    /// Do not run the chart's hooks.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable_hooks: bool,
    /// Replace objects instead of updating them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
    /// Delete the objects a failed rollback created.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cleanup_on_fail: bool,
}

/// How the release is uninstalled.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Uninstall {
    /// Timeout of an uninstall; defaults to the HelmRelease's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub timeout: Option<GoDuration>,
    /// Do not run the chart's hooks.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable_hooks: bool,
    /// Keep the release's history in storage, marked uninstalled.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_history: bool,
    /// Do not wait for the objects to be deleted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable_wait: bool,
    /// `background` (default), `foreground` or `orphan`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_propagation: Option<DeletionPropagation>,
}

/// How an uninstall deletes dependents.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DeletionPropagation {
    #[default]
    Background,
    Foreground,
    Orphan,
}

impl DeletionPropagation {
    /// The value as Helm's `--cascade` takes it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Background => "background",
            Self::Foreground => "foreground",
            Self::Orphan => "orphan",
        }
    }
}

/// A ConfigMap or Secret key whose values are merged into the release's.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ValuesReference {
    /// `ConfigMap` or `Secret`, in the HelmRelease's namespace.
    pub kind: ValuesKind,
    /// Name of the object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The data key holding the values; defaults to `values.yaml`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253), regex(pattern = r"^[\-._a-zA-Z0-9]+$"))]
    pub values_key: Option<String>,
    /// A path (Helm's `--set` syntax) the key's content is set at, parsed as `--set` parses a
    /// value (typed scalars, `{a,b}` lists), instead of being merged as a values document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 250))]
    pub target_path: Option<String>,
    /// A missing object or key is skipped instead of failing the release.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

/// The kinds values come from.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValuesKind {
    ConfigMap,
    Secret,
}

impl ValuesKind {
    /// The kind's name as it appears in manifests.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConfigMap => "ConfigMap",
            Self::Secret => "Secret",
        }
    }
}

/// The last release action attempted, which decides the remediation in force.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ReleaseAction {
    Install,
    Upgrade,
}

/// The observed state of a `HelmRelease`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HelmReleaseStatus {
    /// The last generation reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The last generation a release was attempted for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempted_generation: Option<i64>,
    /// Conditions of the object.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// `<namespace>/<name>` of the HelmChart created for the release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helm_chart: Option<String>,
    /// The namespace of the release's storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_namespace: Option<String>,
    /// The releases made for this object, newest first, back to the last one deployed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Snapshot>,
    /// The last release action attempted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempted_release_action: Option<ReleaseAction>,
    /// Failed reconciles against the current desired state.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failures: i64,
    /// Failed installs against the current desired state.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub install_failures: i64,
    /// Failed upgrades against the current desired state.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub upgrade_failures: i64,
    /// The chart version of the last release attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempted_revision: Option<String>,
    /// The digest of the values of the last release attempt (`sha256:<hex>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempted_config_digest: Option<String>,
    /// The digest of the post-renderers of the last release made (`sha256:<hex>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_post_renderers_digest: Option<String>,
    /// The objects of the latest release's manifest (Flux's `status.inventory`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<crate::kustomize::ResourceInventory>,
    /// The last `reconcile.fluxcd.io/forceAt` value handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_force_at: Option<String>,
    /// The last `reconcile.fluxcd.io/resetAt` value handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reset_at: Option<String>,
    /// The last `reconcile.fluxcd.io/requestedAt` value handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference.
fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// One release revision as the controller saw it (Flux's `Snapshot`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// The version of how `digest` is computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// The digest of the release in storage (`sha256:<hex>`).
    pub digest: String,
    /// The release name.
    pub name: String,
    /// The release namespace.
    pub namespace: String,
    /// The release revision.
    pub version: i64,
    /// Helm's status of the revision: deployed, failed, superseded, uninstalled…
    pub status: String,
    /// The chart's name.
    pub chart_name: String,
    /// The chart's version.
    pub chart_version: String,
    /// The chart's appVersion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_version: Option<String>,
    /// The digest of the revision's values (`sha256:<hex>`).
    pub config_digest: String,
    /// When the release was first deployed.
    pub first_deployed: String,
    /// When this revision was deployed.
    pub last_deployed: String,
    /// When the release was uninstalled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<String>,
    /// The test hooks run against this revision, by name; empty when the chart has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_hooks: Option<BTreeMap<String, TestHookStatus>>,
}

/// A test hook's last run.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TestHookStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_started: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_completed: Option<String>,
    /// `Succeeded`, `Failed`, `Running`…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
}

impl HelmRelease {
    /// The Helm release name: `spec.releaseName`, else `[<targetNamespace>-]<name>`; a default
    /// longer than 53 characters is cut to 40, then `-` and the first 12 hex characters of its
    /// SHA-256 (Flux's rule, so a release Flux made keeps its name).
    #[must_use]
    pub fn release_name(&self) -> String {
        if let Some(name) = &self.spec.release_name {
            return name.clone();
        }
        let name = self.metadata.name.clone().unwrap_or_default();
        let composed = match &self.spec.target_namespace {
            Some(target) => format!("{target}-{name}"),
            None => name,
        };
        shorten_release_name(&composed)
    }

    /// The namespace the release is installed into.
    #[must_use]
    pub fn release_namespace(&self) -> String {
        self.spec
            .target_namespace
            .clone()
            .or_else(|| self.metadata.namespace.clone())
            .unwrap_or_default()
    }

    /// The namespace of the release's storage: `spec.storageNamespace`, else the release
    /// namespace. Flux defaults it to the HelmRelease's own namespace; the helm CLI Weir runs
    /// keeps a release in the namespace it releases into, so Weir's default is that namespace
    /// (and a `storageNamespace` naming another is refused).
    #[must_use]
    pub fn storage_namespace(&self) -> String {
        self.spec
            .storage_namespace
            .clone()
            .unwrap_or_else(|| self.release_namespace())
    }

    /// The name of the HelmChart made from `spec.chart`: `<namespace>-<name>`.
    #[must_use]
    pub fn helm_chart_name(&self) -> String {
        format!(
            "{}-{}",
            self.metadata.namespace.as_deref().unwrap_or_default(),
            self.metadata.name.as_deref().unwrap_or_default()
        )
    }

    /// `spec.timeout`, or 5 minutes.
    #[must_use]
    pub fn timeout(&self) -> Duration {
        self.spec
            .timeout
            .as_ref()
            .map_or(Duration::from_secs(300), GoDuration::as_std)
    }

    /// `spec.maxHistory`, or 5.
    #[must_use]
    pub fn max_history(&self) -> i64 {
        self.spec.max_history.unwrap_or(5)
    }
}

/// Flux's shortening of a release name longer than Helm allows.
#[must_use]
pub fn shorten_release_name(name: &str) -> String {
    use sha2::{Digest, Sha256};
    if name.len() <= RELEASE_NAME_MAX {
        return name.to_owned();
    }
    let hash = hex::encode(Sha256::digest(name.as_bytes()));
    let prefix: String = name.chars().take(RELEASE_NAME_SHORT_PREFIX).collect();
    format!("{prefix}-{}", &hash[..12])
}

impl InstallRemediation {
    /// Whether the last failure is remediated when no retries remain.
    #[must_use]
    pub fn remediate_last_failure(&self) -> bool {
        self.remediate_last_failure.unwrap_or(false)
    }
}

impl UpgradeRemediation {
    /// Whether the last failure is remediated when no retries remain.
    #[must_use]
    pub fn remediate_last_failure(&self) -> bool {
        self.remediate_last_failure.unwrap_or(self.retries > 0)
    }

    /// The strategy, rollback by default.
    #[must_use]
    pub fn strategy(&self) -> RemediationStrategy {
        self.strategy.unwrap_or(RemediationStrategy::Rollback)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::unwrap_used)]
    fn release(yaml: &str) -> HelmRelease {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn release_names_default_and_shorten_as_fluxs() {
        let hr = release(
            "apiVersion: helm.toolkit.fluxcd.io/v2\nkind: HelmRelease\nmetadata: {name: podinfo, namespace: apps}\nspec: {interval: 5m, chartRef: {kind: HelmChart, name: podinfo}}\n",
        );
        assert_eq!(hr.release_name(), "podinfo");
        assert_eq!(hr.release_namespace(), "apps");
        assert_eq!(hr.storage_namespace(), "apps");
        assert_eq!(hr.helm_chart_name(), "apps-podinfo");
        assert_eq!(hr.timeout(), Duration::from_secs(300));
        assert_eq!(hr.max_history(), 5);

        let mut targeted = hr.clone();
        targeted.spec.target_namespace = Some("prod".into());
        assert_eq!(targeted.release_name(), "prod-podinfo");
        assert_eq!(targeted.release_namespace(), "prod");
        assert_eq!(
            targeted.storage_namespace(),
            "prod",
            "where the helm CLI keeps it"
        );

        let mut long = hr.clone();
        long.spec.target_namespace = Some("a-rather-long-target-namespace-name".into());
        long.metadata.name = Some("and-a-long-release-name".into());
        let name = long.release_name();
        assert_eq!(name.len(), 53);
        assert!(name.starts_with("a-rather-long-target-namespace-name-and-"));
        let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
            "a-rather-long-target-namespace-name-and-a-long-release-name",
        ));
        assert_eq!(&name[41..], &hash[..12]);

        let mut explicit = long;
        explicit.spec.release_name = Some("mine".into());
        assert_eq!(explicit.release_name(), "mine");
    }

    #[test]
    fn remediation_defaults_are_fluxs() {
        assert!(!InstallRemediation::default().remediate_last_failure());
        let upgrade = UpgradeRemediation::default();
        assert!(!upgrade.remediate_last_failure());
        assert_eq!(upgrade.strategy(), RemediationStrategy::Rollback);
        let retried = UpgradeRemediation {
            retries: 2,
            ..UpgradeRemediation::default()
        };
        assert!(retried.remediate_last_failure());
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn values_and_flux_field_names_round_trip() {
        let hr = release(
            "apiVersion: helm.toolkit.fluxcd.io/v2\nkind: HelmRelease\nmetadata: {name: a, namespace: b}\nspec:\n  interval: 1m\n  chart:\n    spec: {chart: podinfo, sourceRef: {kind: HelmRepository, name: repo}}\n  install: {disableOpenAPIValidation: true, crds: Skip, remediation: {retries: -1}}\n  upgrade: {remediation: {strategy: uninstall}, crds: CreateReplace}\n  uninstall: {deletionPropagation: orphan}\n  valuesFrom: [{kind: Secret, name: s, valuesKey: k, targetPath: a.b}]\n  values: {replicaCount: 0, nested: {list: [1, 2]}}\n",
        );
        let chart = hr.spec.chart.as_ref().unwrap();
        assert_eq!(chart.spec.version, "*");
        let install = hr.spec.install.as_ref().unwrap();
        assert!(install.disable_openapi_validation);
        assert_eq!(install.crds, Some(CrdsPolicy::Skip));
        assert_eq!(
            hr.spec
                .upgrade
                .as_ref()
                .unwrap()
                .remediation
                .as_ref()
                .unwrap()
                .strategy(),
            RemediationStrategy::Uninstall
        );
        assert_eq!(
            hr.spec.upgrade.as_ref().unwrap().crds,
            Some(CrdsPolicy::CreateReplace)
        );
        let json = serde_json::to_value(&hr).unwrap();
        assert_eq!(json["spec"]["upgrade"]["crds"], "CreateReplace");
        assert_eq!(json["spec"]["install"]["disableOpenAPIValidation"], true);
        assert_eq!(json["spec"]["values"]["nested"]["list"][1], 2);
        assert_eq!(json["spec"]["uninstall"]["deletionPropagation"], "orphan");
    }
}
