//! The steps of one Kustomization reconcile: dependencies → source → fetch → build →
//! substitute → resolve → validate and apply → prune → health. Each returns a typed error;
//! status is summarised and written once by the caller.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client, ResourceExt};
use serde_json::Value;
use weir_api::{
    GitRepository, Kustomization, KustomizationStatus,
    kustomize::{ObjMetadata, ResourceInventory, SubstituteKind, SubstituteStrategy, annotations},
};
use weir_runtime::{Redactor, progress::Progress};
use weir_ssa::{
    ApplyFailure, ApplySet, ChangeSet, HealthRules, HealthTarget, IgnoreRules, ManifestFields as _,
    Refusal, Refusals, SsaError, Target,
    kinds::{resource_from_crd, split_api_version},
};

use crate::{
    Context,
    build::{self, Manifest},
    error::KustomizeError,
    inventory::{self, InventoryDiff},
    substitute,
};

/// What a reconcile did, successful or not; the caller turns it into status and events.
#[derive(Debug, Default)]
pub struct Attempt {
    /// The source revision attempted, once known.
    pub revision: Option<String>,
    /// The inventory after this attempt, when it changed.
    pub inventory: Option<ResourceInventory>,
    pub changes: ChangeSet,
    /// `Some(healthy)` when health was checked (wait or healthChecks).
    pub healthy: Option<bool>,
    /// Masks the values of substituted secrets in every message.
    pub redactor: Redactor,
    /// The status written when work on a new revision or generation started, if it was.
    pub progressing: Option<KustomizationStatus>,
    /// The resourceVersion of that write, when there was one: the final write's precondition.
    pub version: Option<String>,
    /// `sha256:<hex>` of the built and substituted manifests, once built: the history's key.
    pub digest: Option<String>,
    /// The source artifact's origin revision (`org.opencontainers.image.revision`), if any.
    pub origin_revision: Option<String>,
}

/// The artifact metadata key of the revision an artifact was built from, as Flux reads it.
pub const ORIGIN_REVISION_KEY: &str = "org.opencontainers.image.revision";

/// `sha256:<hex>` over the manifests in order: each one's JSON, then a newline.
fn manifests_digest(manifests: &[Manifest]) -> String {
    use sha2::{Digest as _, Sha256};
    // sha2's hashers are `io::Write`: the JSON streams into the hash, never into a buffer.
    let mut hasher = Sha256::new();
    for manifest in manifests {
        // Writing JSON into a hasher cannot fail: the values are already JSON.
        let _ = serde_json::to_writer(&mut hasher, &manifest.object);
        hasher.update(b"\n");
    }
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

/// Runs the steps; the `Attempt` is filled in as far as they got.
pub async fn run(
    ks: &Kustomization,
    ctx: &Context,
    attempt: &mut Attempt,
) -> Result<(), KustomizeError> {
    let namespace = ks.namespace().unwrap_or_default();
    let spec = &ks.spec;
    let retry = spec
        .retry_interval
        .as_ref()
        .unwrap_or(&spec.interval)
        .as_std();
    let timeout = spec.timeout();
    // Before anything else, as Flux does: an expression that does not compile stalls the object.
    let health_rules =
        HealthRules::compile(&spec.health_check_exprs).map_err(KustomizeError::HealthCheckExpr)?;
    let ignore = IgnoreRules::compile(&spec.ignore).map_err(KustomizeError::from)?;

    let source_ns = spec
        .source_ref
        .namespace
        .clone()
        .unwrap_or_else(|| namespace.clone());
    let source_key = format!(
        "{}/{source_ns}/{}",
        spec.source_ref.kind.as_str(),
        spec.source_ref.name
    );
    if ctx.config.lockdown.no_cross_namespace_refs && source_ns != namespace {
        return Err(KustomizeError::AccessDenied(source_key));
    }
    ctx.metrics.request();
    let source = Api::<GitRepository>::namespaced(ctx.base.client.clone(), &source_ns)
        .get_opt(&spec.source_ref.name)
        .await
        .map_err(KustomizeError::Kube)?
        .ok_or_else(|| KustomizeError::SourceNotFound(source_key.clone(), retry))?;
    // The source's artifact, or a rolled-back Kustomization's pinned one (Weir's `rollback`).
    let (artifact, followed) =
        crate::rollback::artifact(ks, ctx, &source, &source_key, retry).await?;
    // After the source, as Flux does: a dependency on the same source must have applied its
    // current revision.
    check_dependencies(ks, ctx, &followed).await?;
    attempt.revision = Some(artifact.revision.clone());
    attempt.origin_revision = artifact.metadata.get(ORIGIN_REVISION_KEY).cloned();
    mark_progressing(ks, ctx, &artifact.revision, timeout, attempt).await;

    let manifests = fetch_and_build(ctx, ks, &artifact, timeout).await?;
    let manifests = substitute_variables(ks, ctx, manifests, &mut attempt.redactor).await?;
    attempt.digest = Some(manifests_digest(&manifests));

    for manifest in &manifests {
        register_secret_values(&manifest.object, &mut attempt.redactor);
    }
    let client = impersonated_client(ks, ctx)?;
    let mut targets = resolve(ks, ctx, &client, manifests).await?;
    // Weir's locks: a locked workload keeps its live images.
    crate::lock::hold(ks, ctx, &mut targets).await?;
    let set = ApplySet {
        client: &client,
        counter: ctx.metrics.as_ref(),
        field_manager: crate::APPLY_FIELD_MANAGER,
        force: spec.force,
        timeout,
        ignore: &ignore,
    };
    let old = ks.status.as_ref().and_then(|s| s.inventory.clone());
    // Every object of the set, those left alone by annotation included: an object still in
    // the source is never pruned.
    let new_inventory = inventory::inventory(
        targets
            .iter()
            .map(|t| inventory::entry(&t.meta, &t.api_version)),
    );
    if spec.prune {
        refuse_mass_prune(ks, old.as_ref(), &new_inventory)?;
    }
    let changes = set
        .apply(&targets)
        .await
        .map_err(|failure| apply_failed(failure, &targets, old.as_ref(), attempt))?;
    attempt.changes = changes;
    attempt.inventory = Some(new_inventory.clone());

    if spec.prune {
        let diff = InventoryDiff::between(old.as_ref(), &new_inventory);
        if !diff.is_empty() {
            let name = ks.name_any();
            // The stale entries stay recorded until the prune is done, so that a failed or
            // abandoned prune is tried again by the next reconcile.
            let to_prune = diff.to_prune();
            attempt.inventory = Some(inventory::inventory(
                new_inventory.entries.iter().cloned().chain(diff.stale),
            ));
            let deleted = set
                .prune(&to_prune, &owner_labels(&name, &namespace))
                .await
                .map_err(KustomizeError::Prune)?;
            attempt.changes.entries.extend(deleted.entries);
            attempt.inventory = Some(new_inventory);
        }
    }

    let health_targets = health_targets(ks, ctx, &client, &targets).await?;
    if !health_targets.is_empty() {
        let started = std::time::Instant::now();
        let result = set.wait_healthy(&health_targets, &health_rules).await;
        attempt.healthy = Some(result.is_ok());
        result.map_err(|source| KustomizeError::HealthCheck {
            after: std::time::Duration::from_millis(
                u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            ),
            source: Box::new(source),
        })?;
    }
    Ok(())
}

/// Step (before anything is applied): a revision that applies nothing, where objects were
/// applied before, would prune them all; it is refused unless the Kustomization allows it
/// (`weir.dev/allow-mass-prune: "true"`), so a commit that empties the path never deletes a
/// whole application.
fn refuse_mass_prune(
    ks: &Kustomization,
    old: Option<&ResourceInventory>,
    new: &ResourceInventory,
) -> Result<(), KustomizeError> {
    let Some(old) = old.filter(|o| !o.entries.is_empty()) else {
        return Ok(());
    };
    let allowed = ks
        .annotations()
        .get(weir_api::control::ALLOW_MASS_PRUNE)
        .is_some_and(|v| v == "true");
    if new.entries.is_empty() && !allowed {
        return Err(KustomizeError::MassPrune(old.entries.len()));
    }
    Ok(())
}

/// Step: when work starts on a revision or generation not attempted before, says so at once
/// (Reconciling=True and Ready=Unknown, with Flux's `Progressing` reason and messages), so that
/// kstatus, `kubectl wait` and dependents see the work in progress while it runs. Retries of
/// the same revision and steady-state reconciles write nothing here. A failed write is logged
/// and the reconcile goes on: the final status write says what happened either way.
async fn mark_progressing(
    ks: &Kustomization,
    ctx: &Context,
    revision: &str,
    timeout: std::time::Duration,
    attempt: &mut Attempt,
) {
    let current = ks.status.as_ref();
    let attempted = current.and_then(|s| s.last_attempted_revision.as_deref()) == Some(revision)
        && current.and_then(|s| s.observed_generation) == ks.metadata.generation;
    if attempted {
        return;
    }
    let fetching = format!(
        "Fetching manifests for revision {revision} with a timeout of {}",
        weir_api::duration::go_format(timeout)
    );
    let api = Api::<Kustomization>::namespaced(
        ctx.base.client.clone(),
        &ks.namespace().unwrap_or_default(),
    );
    let mut progress = Progress::new(&api, ks, crate::STATUS_FIELD_MANAGER);
    if progress.mark(&fetching).await {
        ctx.metrics.request();
        ctx.metrics
            .status_writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    (attempt.progressing, attempt.version) = progress.into_written_at();
}

/// Fetches the artifact (cached by digest) and builds the path: natively from the shared
/// extracted tree, or with kustomize in a private view of it; then sets `commonMetadata`.
/// The last build is reused while the artifact and the generation are the same.
async fn fetch_and_build(
    ctx: &Context,
    ks: &Kustomization,
    artifact: &weir_api::Artifact,
    timeout: std::time::Duration,
) -> Result<Vec<Manifest>, KustomizeError> {
    let spec = &ks.spec;
    let key = crate::built::BuildCache::key(ks);
    let generation = ks.metadata.generation;
    // An artifact without a digest (never Weir's or Flux's v1) is built every time.
    let digest = artifact.digest.as_deref();
    if let Some(manifests) = digest.and_then(|d| ctx.builds.get(&key, d, generation)) {
        return Ok(manifests);
    }
    ctx.metrics
        .builds
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let artifacts = ctx
        .fetcher
        .extracted(artifact)
        .await
        .map_err(KustomizeError::Fetch)?;
    let manifests =
        crate::local::build_tree(&artifacts.tree, spec, &ctx.config.kustomize_path, timeout)
            .await
            .map_err(KustomizeError::Build)?;
    if let Some(digest) = digest {
        ctx.builds.put(&key, digest, generation, &manifests);
    }
    Ok(manifests)
}

/// The labels that make an object the Kustomization `namespace/name`'s to prune, as Flux
/// sets them.
#[must_use]
pub fn owner_labels<'a>(name: &'a str, namespace: &'a str) -> [(&'static str, &'a str); 2] {
    [
        (annotations::NAME_LABEL, name),
        (annotations::NAMESPACE_LABEL, namespace),
    ]
}

/// Records what a failed apply wrote (so it can be pruned later) and types its error (its
/// message is redacted when status and events are written).
fn apply_failed(
    failure: ApplyFailure,
    targets: &[Target],
    old: Option<&ResourceInventory>,
    attempt: &mut Attempt,
) -> KustomizeError {
    if !failure.applied.is_empty() {
        let kept = old.iter().flat_map(|o| o.entries.clone());
        let applied = failure
            .applied
            .iter()
            .map(|i| inventory::entry(&targets[*i].meta, &targets[*i].api_version));
        attempt.inventory = Some(inventory::inventory(kept.chain(applied)));
    }
    if failure.error.is_refusal() {
        KustomizeError::Validation(failure.error)
    } else {
        KustomizeError::Apply(failure.error)
    }
}

/// Registers the values of a Secret manifest with the redactor, as written (`data` is base64)
/// and decoded, so an API server message that echoes one never reaches status or events.
pub fn register_secret_values(object: &Value, redactor: &mut Redactor) {
    use base64::Engine as _;
    let is_secret = object.api_version() == "v1" && object.kind() == "Secret";
    if !is_secret {
        return;
    }
    for field in ["data", "stringData"] {
        let values = object
            .get(field)
            .and_then(Value::as_object)
            .into_iter()
            .flatten();
        for value in values.filter_map(|(_, v)| v.as_str()) {
            redactor.add(value);
            if field == "data"
                && let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(value)
            {
                redactor.add(String::from_utf8_lossy(&decoded).into_owned());
            }
        }
    }
}

/// Every `dependsOn` object (a Kustomization, or with Weir's `kind` a HelmRelease) must be
/// ready ([`weir_ssa::dependency::check`]), and a Kustomization of the same source must have
/// applied the same revision.
async fn check_dependencies(
    ks: &Kustomization,
    ctx: &Context,
    revision: &str,
) -> Result<(), KustomizeError> {
    use weir_api::kustomize::DependencyKind;
    use weir_ssa::dependency::{self, DependencyError};
    if ks.spec.depends_on.is_empty() {
        return Ok(());
    }
    let source_of = |k: &Kustomization| {
        let r = &k.spec.source_ref;
        let ns = r
            .namespace
            .clone()
            .or_else(|| k.namespace())
            .unwrap_or_default();
        (r.kind.as_str().to_owned(), ns, r.name.clone())
    };
    let after = ctx.config.dependency_requeue;
    let me = serde_json::to_value(ks)
        .map_err(|source| KustomizeError::ReadyExprInput { index: 0, source })?;
    for _ in &ks.spec.depends_on {
        ctx.metrics.request();
    }
    let found = dependency::check(
        &ctx.base.client,
        DependencyKind::Kustomization,
        &me,
        &ks.spec.depends_on,
    )
    .await
    .map_err(|error| match error {
        DependencyError::NotReady { key, why: None, .. } => {
            KustomizeError::DependencyNotReady(key, after)
        }
        DependencyError::NotReady {
            key,
            index,
            why: Some(why),
        } => KustomizeError::DependencyExprNotReady {
            name: key,
            index,
            why,
            after,
        },
        DependencyError::Expr { index, source } => KustomizeError::DependencyExpr { index, source },
        DependencyError::Cycle(cycle) => KustomizeError::DependencyCycle(cycle),
        DependencyError::Kube { source, .. } => KustomizeError::Kube(source),
    })?;
    for (node, object) in found {
        if node.kind != DependencyKind::Kustomization {
            continue;
        }
        let Ok(d) = serde_json::from_value::<Kustomization>(object) else {
            continue;
        };
        if source_of(&d) == source_of(ks) {
            let applied = d
                .status
                .as_ref()
                .and_then(|s| s.last_applied_revision.as_deref());
            if applied != Some(revision) {
                return Err(KustomizeError::DependencyRevision(node.key(), after));
            }
        }
    }
    Ok(())
}

/// Reads `postBuild` variables and substitutes them into every object not annotated
/// `substitute: disabled`. Secret values are registered with the redactor.
pub async fn substitute_variables(
    ks: &Kustomization,
    ctx: &Context,
    manifests: Vec<Manifest>,
    redactor: &mut Redactor,
) -> Result<Vec<Manifest>, KustomizeError> {
    let Some(post_build) = &ks.spec.post_build else {
        return Ok(manifests);
    };
    let namespace = ks.namespace().unwrap_or_default();
    let mut vars = BTreeMap::new();
    for source in &post_build.substitute_from {
        ctx.metrics.request();
        let data: Option<BTreeMap<String, String>> = match source.kind {
            SubstituteKind::ConfigMap => {
                Api::<ConfigMap>::namespaced(ctx.base.client.clone(), &namespace)
                    .get_opt(&source.name)
                    .await
                    .map_err(KustomizeError::Kube)?
                    .map(|cm| cm.data.unwrap_or_default())
            }
            SubstituteKind::Secret => {
                Api::<Secret>::namespaced(ctx.base.client.clone(), &namespace)
                    .get_opt(&source.name)
                    .await
                    .map_err(KustomizeError::Kube)?
                    .map(|s| {
                        s.data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                            .chain(s.string_data.unwrap_or_default())
                            .inspect(|(_, v)| redactor.add(v.clone()))
                            .collect()
                    })
            }
        };
        match data {
            Some(data) => vars.extend(data),
            None if source.optional => {}
            None => {
                return Err(KustomizeError::SubstituteFromNotFound {
                    kind: match source.kind {
                        SubstituteKind::ConfigMap => "ConfigMap",
                        SubstituteKind::Secret => "Secret",
                    },
                    name: source.name.clone(),
                });
            }
        }
    }
    vars.extend(post_build.substitute.clone());
    substitute::validate_names(vars.keys()).map_err(KustomizeError::SubstituteInput)?;
    // As in Flux (`substituteStrategy`'s default): no variable, no substitution, so `${var}`
    // stays as written rather than failing strict mode; `Always` substitutes anyway.
    if vars.is_empty() && post_build.substitute_strategy == SubstituteStrategy::WithVariables {
        return Ok(manifests);
    }

    let mut out = Vec::with_capacity(manifests.len());
    for manifest in manifests {
        let disabled = manifest.object.annotation(annotations::SUBSTITUTE) == Some("disabled");
        if disabled {
            out.push(manifest);
            continue;
        }
        let object_name = build::object_key(&manifest.object);
        let err = |source| KustomizeError::Substitute {
            file: manifest.file.clone(),
            object: object_name.clone(),
            source,
        };
        let yaml = serde_yaml_ng::to_string(&manifest.object).map_err(|source| {
            KustomizeError::Build(build::BuildError::SubstitutionInput {
                file: manifest.file.clone(),
                object: object_name.clone(),
                source,
            })
        })?;
        // Strict unless `--feature-gates=StrictPostBuildSubstitutions=false`, as in Flux 2.9.
        let strictness = ctx.config.feature_gates.substitution();
        let substituted = substitute::substitute(&yaml, &vars, strictness).map_err(err)?;
        let object: Value = serde_yaml_ng::from_str(&substituted).map_err(|source| {
            KustomizeError::Build(build::BuildError::SubstitutedYaml {
                file: manifest.file.clone(),
                object: object_name.clone(),
                source,
            })
        })?;
        out.push(Manifest {
            object,
            file: manifest.file,
        });
    }
    Ok(out)
}

/// The client applied objects are written with: the controller's own, or one impersonating
/// `spec.serviceAccountName` (or, when empty, the `--default-service-account`).
fn impersonated_client(ks: &Kustomization, ctx: &Context) -> Result<Client, KustomizeError> {
    let Some(sa) = ks
        .spec
        .service_account_name
        .as_ref()
        .filter(|sa| !sa.is_empty())
        .or(ctx.config.lockdown.default_service_account.as_ref())
    else {
        return Ok(ctx.base.client.clone());
    };
    let namespace = ks.namespace().unwrap_or_default();
    let user = format!("system:serviceaccount:{namespace}:{sa}");
    let mut clients = ctx
        .impersonated
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(client) = clients.get(&user) {
        return Ok(client.clone());
    }
    let mut config = ctx.kube_config.clone();
    config.auth_info.impersonate = Some(user.clone());
    config.auth_info.impersonate_groups = None;
    let client =
        weir_runtime::client::new(config).map_err(|source| KustomizeError::Impersonation {
            account: sa.clone(),
            source,
        })?;
    clients.insert(user, client.clone());
    Ok(client)
}

/// Labels every object with its owner and resolves its kind against the API server (or a CRD
/// of the set). Unknown kinds and namespaced objects without a namespace fail the whole set.
pub async fn resolve(
    ks: &Kustomization,
    ctx: &Context,
    client: &Client,
    manifests: Vec<Manifest>,
) -> Result<Vec<Target>, KustomizeError> {
    let namespace = ks.namespace().unwrap_or_default();
    let crds: Vec<Value> = manifests
        .iter()
        .filter(|m| m.object.kind() == "CustomResourceDefinition")
        .map(|m| m.object.clone())
        .collect();
    let mut targets = Vec::with_capacity(manifests.len());
    let mut errors = vec![];
    for Manifest { mut object, file } in manifests {
        let (api_version, kind, name) = (
            object.api_version().to_owned(),
            object.kind().to_owned(),
            object.name().to_owned(),
        );
        let (group, version) = split_api_version(&api_version);
        let served = ctx
            .kinds
            .resolve(client, ctx.metrics.as_ref(), group, version, &kind)
            .await
            .map_err(KustomizeError::Discovery)?;
        let in_set = crds.iter().find_map(|crd| {
            let name = Some(crd.name()).filter(|n| !n.is_empty())?;
            resource_from_crd(crd, &api_version, &kind).map(|r| (r, name.to_owned()))
        });
        let defining_crd = in_set.as_ref().map(|(_, name)| name.clone());
        let (resource, namespaced, kind_from_set) = match (served, in_set) {
            (Some((r, n)), _) => (r, n, false),
            (None, Some(((r, n), _))) => (r, n, true),
            (None, None) => {
                errors.push(Refusal::UnknownKind {
                    object: format!("{kind}/{name}"),
                    file,
                    kind,
                    api_version,
                });
                continue;
            }
        };
        let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) else {
            continue;
        };
        // As Flux does: a namespaced object must name its namespace (or get one from
        // targetNamespace); guessing one would apply it somewhere its author did not mean.
        let object_ns = if namespaced {
            let Some(ns) = meta
                .get("namespace")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
            else {
                errors.push(Refusal::NoNamespace {
                    object: format!("{kind}/{name}"),
                    file,
                });
                continue;
            };
            ns
        } else {
            meta.remove("namespace");
            String::new()
        };
        let labels = meta
            .entry("labels")
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
        if let Some(labels) = labels.as_object_mut() {
            labels.insert(annotations::NAME_LABEL.into(), Value::String(ks.name_any()));
            labels.insert(
                annotations::NAMESPACE_LABEL.into(),
                Value::String(namespace.clone()),
            );
        }
        targets.push(Target {
            object,
            file,
            meta: ObjMetadata {
                namespace: object_ns,
                name,
                group: group.to_owned(),
                kind,
            },
            api_version,
            resource,
            namespaced,
            kind_from_set,
            defining_crd,
        });
    }
    if errors.is_empty() {
        Ok(targets)
    } else {
        Err(KustomizeError::Validation(SsaError::Invalid(Refusals(
            errors,
        ))))
    }
}

/// The objects whose health decides readiness: every applied object with `wait`, otherwise
/// those of `healthChecks`.
async fn health_targets(
    ks: &Kustomization,
    ctx: &Context,
    client: &Client,
    targets: &[Target],
) -> Result<Vec<HealthTarget>, KustomizeError> {
    if ks.spec.wait {
        return Ok(targets
            .iter()
            .filter(|t| !t.is_ignored())
            .map(|t| HealthTarget {
                meta: t.meta.clone(),
                resource: t.resource.clone(),
                namespaced: t.namespaced,
            })
            .collect());
    }
    let namespace = ks.namespace().unwrap_or_default();
    let mut out = vec![];
    for check in &ks.spec.health_checks {
        let api_version = check.api_version.clone().unwrap_or_else(|| "v1".to_owned());
        let (group, version) = split_api_version(&api_version);
        let resolved = ctx
            .kinds
            .resolve(client, ctx.metrics.as_ref(), group, version, &check.kind)
            .await
            .map_err(KustomizeError::Discovery)?;
        let Some((resource, namespaced)) = resolved else {
            return Err(KustomizeError::HealthCheckKind(format!(
                "{}/{}: the API server does not serve kind {} in {api_version}{}",
                check.kind,
                check.name,
                check.kind,
                if check.api_version.is_none() {
                    " (apiVersion not set)"
                } else {
                    ""
                }
            )));
        };
        out.push(HealthTarget {
            meta: ObjMetadata {
                namespace: if namespaced {
                    check.namespace.clone().unwrap_or_else(|| namespace.clone())
                } else {
                    String::new()
                },
                name: check.name.clone(),
                group: group.to_owned(),
                kind: check.kind.clone(),
            },
            resource,
            namespaced,
        });
    }
    Ok(out)
}

/// Deletes the inventory of a Kustomization being deleted, as its finalizer does; with
/// `wait` (deletionPolicy `WaitForTermination`) also waits, up to `timeout`, until the objects
/// are gone, and returns the wait's error beside what was deleted.
pub async fn delete_inventory(
    ks: &Kustomization,
    ctx: &Context,
    wait: bool,
) -> Result<(ChangeSet, Option<SsaError>), KustomizeError> {
    let Some(inventory) = ks.status.as_ref().and_then(|s| s.inventory.clone()) else {
        return Ok((ChangeSet::default(), None));
    };
    let client = impersonated_client(ks, ctx)?;
    let set = ApplySet {
        client: &client,
        counter: ctx.metrics.as_ref(),
        field_manager: crate::APPLY_FIELD_MANAGER,
        force: false,
        timeout: ks.spec.timeout(),
        ignore: &IgnoreRules::default(),
    };
    let diff = InventoryDiff::between(Some(&inventory), &ResourceInventory::default());
    let (changes, deleted) = set
        .prune_tracked(
            &diff.to_prune(),
            &owner_labels(&ks.name_any(), &ks.namespace().unwrap_or_default()),
        )
        .await
        .map_err(KustomizeError::Prune)?;
    let waited = if wait {
        set.wait_terminated(&deleted).await.err()
    } else {
        None
    };
    Ok((changes, waited))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_of_secret_manifests_are_masked() {
        let secret = serde_json::json!({"apiVersion": "v1", "kind": "Secret",
            "data": {"a": "aHVudGVyMg=="}, "stringData": {"b": "swordfish"}});
        let mut redactor = Redactor::default();
        register_secret_values(&secret, &mut redactor);
        let text = redactor.redact("a=aHVudGVyMg== (hunter2) b=swordfish");
        assert!(
            !text.contains("hunter2")
                && !text.contains("aHVudGVyMg")
                && !text.contains("swordfish"),
            "{text}"
        );
        let config_map =
            serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "public"}});
        let mut redactor = Redactor::default();
        register_secret_values(&config_map, &mut redactor);
        assert_eq!(redactor.redact("public"), "public");
    }

    #[test]
    fn substituted_yaml_numbers_become_numbers_again() {
        let object = serde_json::json!({"spec": {"replicas": "${replicas}", "name": "a-${x:=b}"}});
        let yaml = serde_yaml_ng::to_string(&object).unwrap();
        let vars = BTreeMap::from([("replicas".to_owned(), "3".to_owned())]);
        let substituted =
            substitute::substitute(&yaml, &vars, substitute::Strictness::Strict).unwrap();
        let out: Value = serde_yaml_ng::from_str(&substituted).unwrap();
        assert_eq!(
            out,
            serde_json::json!({"spec": {"replicas": 3, "name": "a-b"}})
        );
    }
}
