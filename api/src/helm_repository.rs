//! `HelmRepository` (source.toolkit.fluxcd.io/v1): a Helm chart repository. An HTTP(S)
//! repository's `index.yaml` becomes an artifact; an OCI repository (`type: oci`) is, as in Flux
//! since source-controller v1.2, a static object that only HelmCharts read: it gets no
//! artifact, no status and no finalizer.

use std::time::Duration;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    Artifact, Condition, GoDuration, LocalObjectReference, image::RegistryProvider,
    meta::AccessFrom,
};

/// The reason of a fetched index that does not load as a Helm repository index (Flux's).
pub const INDEXATION_FAILED_REASON: &str = "IndexationFailed";

/// The interval an object without `spec.interval` is fetched again at (Flux's).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// The timeout of the index fetch without `spec.timeout` (Flux's).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The desired state of a `HelmRepository`.
#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[kube(
    group = "source.toolkit.fluxcd.io",
    version = "v1",
    kind = "HelmRepository",
    plural = "helmrepositories",
    namespaced,
    status = "HelmRepositoryStatus",
    shortname = "helmrepo",
    category = "all",
    category = "fluxcd",
    category = "fluxcd-sources",
    doc = "HelmRepository is the Schema for the helmrepositories API.",
    printcolumn(name = "URL", type_ = "string", json_path = ".spec.url"),
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
pub struct HelmRepositorySpec {
    /// The repository URL: `http://` or `https://` (its `index.yaml` is fetched), or `oci://`
    /// with `type: oci`.
    #[schemars(regex(pattern = r"^(http|https|oci)://.*$"))]
    pub url: String,
    /// A Secret in the same namespace with credentials: `username` and `password` (HTTP basic
    /// auth); for `type: oci`, a `kubernetes.io/dockerconfigjson` Secret, read by HelmCharts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,
    /// A Secret in the same namespace with `ca.crt` (the server's certificate must chain to it,
    /// besides the system's roots) and/or `tls.crt` and `tls.key` (a client certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_secret_ref: Option<LocalObjectReference>,
    /// Send the `secretRef` credentials to hosts other than the URL's too (chart URLs of the
    /// index on another host); read by HelmCharts. The index itself is fetched from the URL's
    /// host only, and its credentials never follow a redirect to another host.
    #[serde(default)]
    pub pass_credentials: bool,
    /// How often the index is fetched again; 1m when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<GoDuration>,
    /// Reach an OCI registry (`type: oci`) over plain HTTP; read by HelmCharts.
    #[serde(default)]
    pub insecure: bool,
    /// Timeout of the index fetch (and, for HelmCharts, of OCI operations); 60s when not set.
    /// In milliseconds, seconds or minutes, as Flux validates it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m))+$"))]
    pub timeout: Option<GoDuration>,
    /// Stop reconciling this object.
    #[serde(default)]
    pub suspend: bool,
    /// Which namespaces may refer to this repository. Accepted as Flux accepts it; as in Flux,
    /// no kind refers to a HelmRepository in another namespace yet, so it grants nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_from: Option<AccessFrom>,
    /// `default` (an HTTP(S) repository with an `index.yaml`) or `oci`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub repository_type: Option<HelmRepositoryType>,
    /// Where OCI registry credentials come from (`type: oci` only, read by HelmCharts):
    /// `generic` (`secretRef`), or a cloud's workload identity.
    #[serde(default)]
    pub provider: RegistryProvider,
}

/// What a HelmRepository's URL serves: `default` (an HTTP(S) repository with an `index.yaml`;
/// also when not set) or `oci` (an OCI registry).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HelmRepositoryType {
    /// An HTTP(S) Helm repository: `index.yaml` and chart archives.
    #[default]
    Default,
    /// An OCI registry holding charts as OCI artifacts.
    Oci,
}

impl HelmRepositorySpec {
    /// `spec.interval`, or Flux's default.
    #[must_use]
    pub fn interval(&self) -> Duration {
        self.interval
            .as_ref()
            .map_or(DEFAULT_INTERVAL, GoDuration::as_std)
    }

    /// `spec.timeout`, or Flux's default.
    #[must_use]
    pub fn timeout(&self) -> Duration {
        self.timeout
            .as_ref()
            .map_or(DEFAULT_TIMEOUT, GoDuration::as_std)
    }

    /// Whether this is an OCI repository (`type: oci`), which Flux leaves static.
    #[must_use]
    pub fn is_oci(&self) -> bool {
        self.repository_type == Some(HelmRepositoryType::Oci)
    }
}

/// The observed state of a `HelmRepository`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HelmRepositoryStatus {
    /// The last generation reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions of the object.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Where the latest index is served, whatever its revision (`…/index.yaml`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The last successfully stored index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<Artifact>,
    /// The last `reconcile.fluxcd.io/requestedAt` value handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,
}

impl HelmRepositoryStatus {
    /// Whether nothing is recorded: the state Flux leaves an OCI HelmRepository in.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_fluxs() {
        let spec: HelmRepositorySpec =
            serde_json::from_value(serde_json::json!({ "url": "https://charts.example" })).unwrap();
        assert_eq!(spec.interval(), Duration::from_secs(60));
        assert_eq!(spec.timeout(), Duration::from_secs(60));
        assert!(!spec.is_oci());
        assert_eq!(spec.provider, RegistryProvider::Generic);
        let oci: HelmRepositorySpec = serde_json::from_value(
            serde_json::json!({ "url": "oci://r.example/charts", "type": "oci", "interval": "5m" }),
        )
        .unwrap();
        assert!(oci.is_oci());
        assert_eq!(oci.interval(), Duration::from_secs(300));
    }
}
