//! Drift detection: the objects of a release's manifest (as Helm's storage holds it) dry-run
//! with server-side apply under Helm 4's field manager and compared with the live objects, as
//! the Kustomization controller compares what it applies; `driftDetection.ignore` paths and
//! objects labelled or annotated `helm.toolkit.fluxcd.io/driftDetection: disabled` are left
//! out. Correction applies the drifted objects again from the manifest (forcing conflicts with
//! whoever edited them), without a new Helm revision.

use serde::Deserialize as _;
use serde_json::Value;
use weir_api::helm_release::{DRIFT_DETECTION_KEY, HelmRelease};
use weir_api::kustomize::ObjMetadata;
use weir_ssa::{ApplySet, Change, IgnoreRules, Target, kinds};

use crate::Context;
use crate::storage::Release;

/// The field manager Helm 4 applies release objects with (server-side apply).
pub const HELM_FIELD_MANAGER: &str = "helm";

/// Why drift could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum DriftError {
    #[error("release manifest of {release}: document {index} is not valid YAML")]
    Manifest {
        release: String,
        index: usize,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("driftDetection.ignore")]
    Ignore(#[source] weir_ssa::IgnoreRuleError),
    #[error("cannot resolve {kind} of {api_version}")]
    Kind {
        kind: String,
        api_version: String,
        #[source]
        source: Box<weir_ssa::SsaError>,
    },
    #[error(transparent)]
    Ssa(Box<weir_ssa::SsaError>),
}

/// Counts nothing: requests are counted by the client's own layer.
struct NoCount;

impl weir_ssa::ApiCounter for NoCount {
    fn request(&self) {}
    fn write(&self) {}
}

/// The YAML documents of a manifest, parsed before anything is awaited (the parser is not
/// `Send`).
fn documents(release: &str, manifest: &str) -> Result<Vec<Value>, DriftError> {
    serde_yaml_ng::Deserializer::from_str(manifest)
        .enumerate()
        .map(|(index, document)| {
            Value::deserialize(document).map_err(|source| DriftError::Manifest {
                release: release.to_owned(),
                index,
                source,
            })
        })
        .collect()
}

/// The objects of `release`'s manifest, ready to dry-run or apply.
async fn targets(
    ctx: &Context,
    release: &Release,
    for_drift: bool,
) -> Result<Vec<Target>, DriftError> {
    let name = format!(
        "{}/{}.v{}",
        release.namespace, release.name, release.version
    );
    let mut targets = vec![];
    for mut object in documents(&name, &release.manifest)? {
        if !object.is_object() {
            continue;
        }
        let Some(api_version) = object
            .get("apiVersion")
            .and_then(Value::as_str)
            .map(str::to_owned)
        else {
            continue;
        };
        let Some(kind) = object
            .get("kind")
            .and_then(Value::as_str)
            .map(str::to_owned)
        else {
            continue;
        };
        let object_name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        // Helm writes its ownership metadata on every object it applies, not in the stored
        // manifest: the comparison (and a correction) must carry it too.
        add_ownership(&mut object, release);
        let disabled = |key: &str| {
            let pointer = format!("/metadata/{key}/{}", DRIFT_DETECTION_KEY.replace('/', "~1"));
            object.pointer(&pointer).and_then(Value::as_str) == Some("disabled")
        };
        if for_drift && (disabled("labels") || disabled("annotations")) {
            continue;
        }
        let (group, version) = kinds::split_api_version(&api_version);
        let resolved = ctx
            .kinds
            .resolve(&ctx.base.client, &NoCount, group, version, &kind)
            .await
            .map_err(|source| DriftError::Kind {
                kind: kind.clone(),
                api_version: api_version.clone(),
                source: Box::new(source),
            })?;
        // A kind the server no longer serves: its object cannot have drifted into anything a
        // dry run could show (Helm's own upgrade would fail on it first).
        let Some((resource, namespaced)) = resolved else {
            continue;
        };
        let namespace = if namespaced {
            let ns = object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .map_or_else(|| release.namespace.clone(), str::to_owned);
            if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.insert("namespace".into(), Value::String(ns.clone()));
            }
            ns
        } else {
            String::new()
        };
        targets.push(Target {
            object,
            file: format!("release {name}"),
            meta: ObjMetadata {
                namespace,
                name: object_name,
                group: group.to_owned(),
                kind,
            },
            api_version,
            resource,
            namespaced,
            kind_from_set: false,
            defining_crd: None,
        });
    }
    Ok(targets)
}

/// Helm's ownership label and annotations, as Helm sets them on a release's objects.
fn add_ownership(object: &mut Value, release: &Release) {
    let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let mut put = |field: &str, key: &str, value: &str| {
        let map = meta
            .entry(field)
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
        if let Some(map) = map.as_object_mut() {
            map.insert(key.to_owned(), Value::String(value.to_owned()));
        }
    };
    put("labels", "app.kubernetes.io/managed-by", "Helm");
    put("annotations", "meta.helm.sh/release-name", &release.name);
    put(
        "annotations",
        "meta.helm.sh/release-namespace",
        &release.namespace,
    );
}

/// The objects of `release` that differ from its manifest (`Kind/namespace/name` and how),
/// and, with `correct`, what applying them again changed.
pub async fn check(
    ctx: &Context,
    hr: &HelmRelease,
    release: &Release,
    correct: bool,
) -> Result<Vec<Drifted>, DriftError> {
    let rules = hr
        .spec
        .drift_detection
        .as_ref()
        .map(|d| d.ignore.clone())
        .unwrap_or_default();
    let ignore = IgnoreRules::compile(&rules).map_err(DriftError::Ignore)?;
    let targets = targets(ctx, release, true).await?;
    let set = ApplySet {
        client: &ctx.base.client,
        counter: &NoCount,
        field_manager: HELM_FIELD_MANAGER,
        force: false,
        timeout: hr.timeout(),
        ignore: &ignore,
    };
    let diff = set
        .diff(&targets)
        .await
        .map_err(|e| DriftError::Ssa(Box::new(e)))?;
    let mut by = diff.drift;
    let drifted: Vec<Drifted> = diff
        .entries
        .into_iter()
        .filter(|(_, change)| matches!(change, Change::Created | Change::Configured))
        .map(|(object, change)| Drifted {
            by: by.remove(&object).unwrap_or_default(),
            object,
            change,
        })
        .collect();
    if !correct || drifted.is_empty() {
        return Ok(drifted);
    }
    let names: Vec<&str> = drifted.iter().map(|d| d.object.as_str()).collect();
    let again: Vec<Target> = targets
        .into_iter()
        .filter(|t| names.contains(&t.display().as_str()))
        .collect();
    set.apply(&again)
        .await
        .map_err(|failure| DriftError::Ssa(Box::new(failure.error)))?;
    Ok(drifted)
}

/// The objects of `release`'s manifest as an inventory (sorted, as Flux writes it).
pub async fn inventory(
    ctx: &Context,
    release: &Release,
) -> Result<weir_api::kustomize::ResourceInventory, DriftError> {
    let mut entries: Vec<weir_api::kustomize::ResourceRef> = targets(ctx, release, false)
        .await?
        .iter()
        .map(|t| weir_api::kustomize::ResourceRef {
            id: t.meta.id(),
            v: kinds::split_api_version(&t.api_version).1.to_owned(),
        })
        .collect();
    entries.sort();
    entries.dedup();
    Ok(weir_api::kustomize::ResourceInventory { entries })
}

/// Waits until the objects of `release` that `hr.spec.healthCheckExprs` speak of are healthy
/// by those expressions, for at most the release's timeout; the error names each unhealthy
/// object.
pub async fn check_health(
    ctx: &Context,
    hr: &HelmRelease,
    release: &Release,
    rules: &weir_ssa::HealthRules,
) -> Result<(), DriftError> {
    let kinds: Vec<(String, String)> = hr
        .spec
        .health_check_exprs
        .iter()
        .map(|e| (e.api_version.clone(), e.kind.clone()))
        .collect();
    let objects: Vec<weir_ssa::HealthTarget> = targets(ctx, release, false)
        .await?
        .into_iter()
        .filter(|t| {
            kinds
                .iter()
                .any(|(api_version, kind)| *api_version == t.api_version && *kind == t.meta.kind)
        })
        .map(|t| weir_ssa::HealthTarget {
            meta: t.meta,
            resource: t.resource,
            namespaced: t.namespaced,
        })
        .collect();
    let ignore = IgnoreRules::default();
    let set = ApplySet {
        client: &ctx.base.client,
        counter: &NoCount,
        field_manager: HELM_FIELD_MANAGER,
        force: false,
        timeout: hr.timeout(),
        ignore: &ignore,
    };
    set.wait_healthy(&objects, rules)
        .await
        .map_err(|e| DriftError::Ssa(Box::new(e)))
}

/// One object of a release that is not as its manifest says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drifted {
    /// `Kind/namespace/name`.
    pub object: String,
    /// Created: it is missing; Configured: it differs.
    pub change: Change,
    /// Who changed what, from its managedFields (`kubectl-scale changed .spec.replicas`).
    pub by: Vec<String>,
}

/// `Deployment/ns/web changed (kubectl-scale changed .spec.replicas), ConfigMap/ns/x removed`,
/// as a message lists drift.
#[must_use]
pub fn describe(drifted: &[Drifted]) -> String {
    drifted
        .iter()
        .map(|d| match d.change {
            Change::Created => format!("{} removed", d.object),
            _ if d.by.is_empty() => format!("{} changed", d.object),
            _ => format!("{} changed ({})", d.object, d.by.join("; ")),
        })
        .collect::<Vec<_>>()
        .join(", ")
}
