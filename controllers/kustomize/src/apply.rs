//! Making the cluster match a built set: validate every object with a server-side dry run,
//! apply only what changed (definitions first), prune what left, and wait for health.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client,
    api::{
        ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams,
        PropagationPolicy, ValidationDirective,
    },
    discovery::{self, Scope},
};
use serde_json::Value;
use weir_api::kustomize::{ObjMetadata, ResourceRef, annotations};

use crate::{
    Metrics,
    drift::{self, IgnoreRules},
    health::{Health, HealthRules},
    inventory::{is_definition, split_api_version},
};

/// The field manager of applied objects: Flux's, so objects move between engines.
pub const APPLY_FIELD_MANAGER: &str = "kustomize-controller";

/// How often health and CRD establishment are polled.
const POLL: Duration = Duration::from_secs(1);

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
        metrics: &Metrics,
        group: &str,
        version: &str,
        kind: &str,
    ) -> Result<Option<(ApiResource, bool)>, kube::Error> {
        let key = (group.to_owned(), version.to_owned(), kind.to_owned());
        if let Some(found) = self.lock().get(&key) {
            return Ok(Some(found.clone()));
        }
        let gvk = GroupVersionKind::gvk(group, version, kind);
        metrics.request();
        match discovery::pinned_kind(client, &gvk).await {
            Ok((resource, caps)) => {
                let found = (resource, caps.scope == Scope::Namespaced);
                self.lock().insert(key, found.clone());
                Ok(Some(found))
            }
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
            Err(kube::Error::Discovery(_)) => Ok(None),
            Err(e) => Err(e),
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
        metrics: &Metrics,
        group: &str,
        version: &str,
        kind: &str,
    ) -> Result<Option<(ApiResource, bool)>, kube::Error> {
        metrics.request();
        match discovery::pinned_kind(client, &GroupVersionKind::gvk(group, version, kind)).await {
            Ok((resource, caps)) => return Ok(Some((resource, caps.scope == Scope::Namespaced))),
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(kube::Error::Discovery(_)) => {}
            Err(e) => return Err(e),
        }
        metrics.request();
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

/// One object to apply, resolved against the API server (or a CRD of the same set).
#[derive(Debug, Clone)]
pub struct Target {
    pub object: Value,
    pub file: String,
    pub meta: ObjMetadata,
    pub api_version: String,
    pub resource: ApiResource,
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

    fn annotation(&self, key: &str) -> Option<&str> {
        annotation(&self.object, key)
    }

    /// Annotated `kustomize.toolkit.fluxcd.io/ssa: Ignore`: never applied.
    #[must_use]
    pub fn is_ignored(&self) -> bool {
        self.annotation(annotations::SSA) == Some("Ignore")
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

fn annotation<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    object.pointer("/metadata/annotations")?.get(key)?.as_str()
}

fn label<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    object.pointer("/metadata/labels")?.get(key)?.as_str()
}

/// What happened to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Created,
    Configured,
    Unchanged,
    /// Left alone by annotation (`ssa: Ignore`/`IfNotPresent`, `reconcile: disabled`).
    Skipped,
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
}

/// The changes of one reconcile, in order.
#[derive(Debug, Clone, Default)]
pub struct ChangeSet {
    pub entries: Vec<(String, Change)>,
}

impl ChangeSet {
    /// Whether anything was written.
    #[must_use]
    pub fn wrote(&self) -> bool {
        self.entries
            .iter()
            .any(|(_, c)| matches!(c, Change::Created | Change::Configured | Change::Deleted))
    }

    /// `Deployment/ns/app configured` lines for the objects written.
    #[must_use]
    pub fn summary(&self) -> String {
        self.entries
            .iter()
            .filter(|(_, c)| matches!(c, Change::Created | Change::Configured | Change::Deleted))
            .map(|(o, c)| format!("{o} {}", c.verb()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Why applying stopped; `applied` lists what was written before (kept in the inventory so it
/// can be pruned later).
#[derive(Debug)]
pub struct ApplyFailure {
    pub validation: bool,
    pub message: String,
    pub applied: Vec<ResourceRef>,
}

/// Applies a built set under one client (the controller's, or the impersonated one).
pub struct ApplySet<'a> {
    pub client: &'a Client,
    pub kinds: &'a KindCache,
    pub metrics: &'a Metrics,
    /// `spec.force`: recreate objects whose immutable fields changed.
    pub force: bool,
    pub timeout: Duration,
    /// `spec.ignore`: fields drift detection and apply leave to the cluster.
    pub ignore: &'a IgnoreRules,
}

impl std::fmt::Debug for ApplySet<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApplySet")
            .field("force", &self.force)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The outcome of validating part of a set.
#[derive(Default)]
struct Validated {
    plans: Vec<Plan>,
    deferred: Vec<usize>,
    skipped: Vec<usize>,
    /// Failures of objects whose CRD is in the set: deferred when that CRD changes (the
    /// failure may be the old schema's), errors otherwise.
    pending: Vec<(usize, String)>,
}

/// Decides the first pass's pending failures: objects whose defining CRD changes in this set
/// are validated again after it is applied; the others' failures stand.
fn settle_pending(targets: &[Target], first_pass: &mut Validated) -> Result<(), Vec<String>> {
    let changing_crds: HashSet<&str> = first_pass
        .plans
        .iter()
        .filter(|p| p.change != Change::Unchanged)
        .map(|p| &targets[p.index])
        .filter(|t| t.meta.kind == "CustomResourceDefinition")
        .map(|t| t.meta.name.as_str())
        .collect();
    let mut errors = vec![];
    for (index, message) in std::mem::take(&mut first_pass.pending) {
        let crd = targets[index].defining_crd.as_deref().unwrap_or_default();
        if changing_crds.contains(crd) {
            first_pass.deferred.push(index);
        } else {
            errors.push(message);
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// One object's plan after validation.
struct Plan {
    index: usize,
    change: Change,
    recreate: bool,
    /// What to apply in place of the target's object (ignored fields left to the cluster).
    payload: Option<Value>,
}

fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

fn is_code(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// Whether the server refused a change of immutable fields (which `force` answers by
/// recreating the object). Other invalid objects are errors: deleting them first would lose
/// the live object for nothing.
fn is_immutable_change(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 422
        && (s.message.contains("immutable") || s.message.contains("Forbidden: updates to")))
}

/// What an apply can change: without `managedFields` (a no-op apply may still touch them),
/// `status` (not applied, and moved by controllers between the read and the dry run) and
/// `resourceVersion` (which moves with it).
fn comparable(mut v: Value) -> Value {
    if let Some(object) = v.as_object_mut() {
        object.remove("status");
    }
    if let Some(meta) = v.pointer_mut("/metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
        meta.remove("resourceVersion");
    }
    v
}

impl ApplySet<'_> {
    fn api(&self, target: &Target) -> Api<DynamicObject> {
        if target.namespaced {
            Api::namespaced_with(
                self.client.clone(),
                &target.meta.namespace,
                &target.resource,
            )
        } else {
            Api::all_with(self.client.clone(), &target.resource)
        }
    }

    fn params(dry_run: bool) -> PatchParams {
        let mut params = PatchParams::apply(APPLY_FIELD_MANAGER).force();
        params.dry_run = dry_run;
        params.field_validation = Some(ValidationDirective::Strict);
        params
    }

    fn wants_force(&self, target: &Target) -> bool {
        self.force || target.annotation(annotations::FORCE) == Some("enabled")
    }

    /// Validates the whole set, then applies what changed: definitions first (waiting for new
    /// CRDs to be Established), then everything else. Nothing is applied when any object fails
    /// validation, except objects whose kind or namespace is created by the set itself, which
    /// can only be validated once their definitions are applied.
    pub async fn apply(&self, targets: &[Target]) -> Result<ChangeSet, ApplyFailure> {
        let fail = |message: String, validation: bool, applied: Vec<ResourceRef>| ApplyFailure {
            validation,
            message,
            applied,
        };
        let set_namespaces: HashSet<&str> = targets
            .iter()
            .filter(|t| t.meta.group.is_empty() && t.meta.kind == "Namespace")
            .map(|t| t.meta.name.as_str())
            .collect();

        let mut changes: BTreeMap<usize, Change> = BTreeMap::new();
        let mut first_pass = self
            .validate(targets, 0..targets.len(), Some(&set_namespaces))
            .await
            .map_err(|errors| fail(errors.join("\n"), true, vec![]))?;
        settle_pending(targets, &mut first_pass)
            .map_err(|errors| fail(errors.join("\n"), true, vec![]))?;
        changes.extend(first_pass.skipped.iter().map(|i| (*i, Change::Skipped)));

        let mut applied = vec![];
        // Stage one: definitions.
        let (first, rest): (Vec<Plan>, Vec<Plan>) = first_pass.plans.into_iter().partition(|p| {
            let m = &targets[p.index].meta;
            is_definition(&m.group, &m.kind)
        });
        let mut new_crds = vec![];
        for plan in &first {
            let target = &targets[plan.index];
            self.write(target, plan)
                .await
                .map_err(|m| fail(m, false, applied.clone()))?;
            if plan.change != Change::Unchanged {
                applied.push(crate::inventory::entry(&target.meta, &target.api_version));
                if target.meta.kind == "CustomResourceDefinition" {
                    new_crds.push(target.meta.name.clone());
                }
            }
            changes.insert(plan.index, plan.change);
        }
        for name in &new_crds {
            self.wait_established(name)
                .await
                .map_err(|m| fail(m, false, applied.clone()))?;
        }

        // Objects that needed the definitions: validate now.
        let late = self
            .validate(targets, first_pass.deferred.into_iter(), None)
            .await
            .map_err(|errors| {
                let definitions: Vec<String> =
                    first.iter().map(|p| targets[p.index].display()).collect();
                fail(
                    format!(
                        "{}\n(definitions were applied first: {})",
                        errors.join("\n"),
                        definitions.join(", ")
                    ),
                    true,
                    applied.clone(),
                )
            })?;
        changes.extend(late.skipped.iter().map(|i| (*i, Change::Skipped)));

        // Stage two: everything else.
        for plan in rest.iter().chain(&late.plans) {
            let target = &targets[plan.index];
            self.write(target, plan)
                .await
                .map_err(|m| fail(m, false, applied.clone()))?;
            if plan.change != Change::Unchanged {
                applied.push(crate::inventory::entry(&target.meta, &target.api_version));
            }
            changes.insert(plan.index, plan.change);
        }
        Ok(ChangeSet {
            entries: changes
                .into_iter()
                .map(|(i, c)| (targets[i].display(), c))
                .collect(),
        })
    }

    /// Plans the objects at `indices`. With `set_namespaces`, objects whose kind comes from a
    /// CRD of the set, or whose namespace is created by the set and does not exist yet, are
    /// deferred instead of failing. Every failure is collected, naming object and file.
    async fn validate(
        &self,
        targets: &[Target],
        indices: impl Iterator<Item = usize>,
        set_namespaces: Option<&HashSet<&str>>,
    ) -> Result<Validated, Vec<String>> {
        let mut out = Validated::default();
        let mut errors = vec![];
        for index in indices {
            let target = &targets[index];
            if target.kind_from_set && set_namespaces.is_some() {
                out.deferred.push(index);
                continue;
            }
            match self.plan(index, target).await {
                Ok(Some(plan)) => out.plans.push(plan),
                Ok(None) => out.skipped.push(index),
                Err(e)
                    if is_code(&e, 404)
                        && target.namespaced
                        && set_namespaces
                            .is_some_and(|s| s.contains(target.meta.namespace.as_str())) =>
                {
                    out.deferred.push(index);
                }
                Err(e) => {
                    let message = format!(
                        "{} ({}): {}",
                        target.display(),
                        target.file,
                        api_message(&e)
                    );
                    if set_namespaces.is_some() && target.defining_crd.is_some() {
                        out.pending.push((index, message));
                    } else {
                        errors.push(message);
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }

    /// Reads the live object and dry-runs the apply: `None` when annotations say to leave it
    /// alone, otherwise whether applying would change anything.
    async fn plan(&self, index: usize, target: &Target) -> Result<Option<Plan>, kube::Error> {
        let api = self.api(target);
        self.metrics.request();
        let live = match api.get_opt(&target.meta.name).await {
            Ok(live) => live.map(|l| serde_json::to_value(l).unwrap_or_default()),
            // The namespace may not exist yet; the dry run says so more precisely.
            Err(e) if is_code(&e, 404) => None,
            Err(e) => return Err(e),
        };
        let ssa = target.annotation(annotations::SSA);
        let disabled = |o: &Value| annotation(o, annotations::RECONCILE) == Some("disabled");
        if ssa == Some("Ignore")
            || live.as_ref().is_some_and(|l| {
                disabled(l)
                    || ssa == Some("IfNotPresent")
                    || annotation(l, annotations::SSA) == Some("Ignore")
            })
            || (live.is_some() && disabled(&target.object))
        {
            return Ok(None);
        }
        self.metrics.request();
        let dry_run = api
            .patch(
                &target.meta.name,
                &Self::params(true),
                &Patch::Apply(&target.object),
            )
            .await;
        let result = match dry_run {
            Ok(result) => result,
            Err(e) if is_immutable_change(&e) && live.is_some() && self.wants_force(target) => {
                // Recreate only an object the server would accept as new; anything else stays
                // an error, and the live object stays.
                self.validate_as_new(&api, target).await?;
                return Ok(Some(Plan {
                    index,
                    change: Change::Configured,
                    recreate: true,
                    payload: None,
                }));
            }
            Err(e) => return Err(e),
        };
        let (change, payload) = match live {
            None => (Change::Created, None),
            Some(live) => {
                let result = serde_json::to_value(result).unwrap_or_default();
                let ignored = self.ignore.paths_for(&target.object);
                if ignored.is_empty() {
                    let change = if comparable(result) == comparable(live) {
                        Change::Unchanged
                    } else {
                        Change::Configured
                    };
                    (change, None)
                } else if drift::without_paths(comparable(result.clone()), &ignored)
                    == drift::without_paths(comparable(live.clone()), &ignored)
                {
                    (Change::Unchanged, None)
                } else {
                    let payload = drift::payload(
                        &target.object,
                        &live,
                        &result,
                        &ignored,
                        APPLY_FIELD_MANAGER,
                    );
                    (Change::Configured, Some(payload))
                }
            }
        };
        Ok(Some(Plan {
            index,
            change,
            recreate: false,
            payload,
        }))
    }

    /// Dry-runs creating the object under a scratch name, so a forced recreation never
    /// deletes a live object for a replacement the server would refuse.
    async fn validate_as_new(
        &self,
        api: &Api<DynamicObject>,
        target: &Target,
    ) -> Result<(), kube::Error> {
        let name = &target.meta.name;
        let prefix: String = name.chars().take(40).collect();
        let scratch = format!("{}-weir-force-check", prefix.trim_end_matches(['-', '.']));
        let mut object = target.object.clone();
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("name".into(), Value::String(scratch.clone()));
        }
        self.metrics.request();
        match api
            .patch(&scratch, &Self::params(true), &Patch::Apply(&object))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(mut status)) => {
                status.message = status.message.replace(&scratch, name);
                Err(kube::Error::Api(status))
            }
            Err(e) => Err(e),
        }
    }

    /// Applies one planned object (nothing when unchanged); recreates it when forced.
    async fn write(&self, target: &Target, plan: &Plan) -> Result<(), String> {
        if plan.change == Change::Unchanged {
            return Ok(());
        }
        let api = self.api(target);
        let name = &target.meta.name;
        let err =
            |e: &kube::Error| format!("{} ({}): {}", target.display(), target.file, api_message(e));
        if plan.recreate {
            self.metrics.write();
            match api.delete(name, &DeleteParams::foreground()).await {
                Ok(_) => {}
                Err(e) if is_code(&e, 404) => {}
                Err(e) => return Err(err(&e)),
            }
            let deadline = Instant::now() + self.timeout;
            while {
                self.metrics.request();
                api.get_opt(name).await.map_err(|e| err(&e))?.is_some()
            } {
                if Instant::now() > deadline {
                    return Err(format!(
                        "{}: still being deleted for recreation",
                        target.display()
                    ));
                }
                tokio::time::sleep(POLL).await;
            }
        }
        self.metrics.write();
        let object = plan.payload.as_ref().unwrap_or(&target.object);
        api.patch(name, &Self::params(false), &Patch::Apply(object))
            .await
            .map_err(|e| err(&e))?;
        Ok(())
    }

    async fn wait_established(&self, name: &str) -> Result<(), String> {
        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        let deadline = Instant::now() + self.timeout;
        loop {
            self.metrics.request();
            let established = crds
                .get_opt(name)
                .await
                .map_err(|e| format!("CustomResourceDefinition/{name}: {}", api_message(&e)))?
                .and_then(|crd| crd.status)
                .and_then(|s| s.conditions)
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                });
            if established {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "CustomResourceDefinition/{name} not established after {:?}",
                    self.timeout
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Deletes the objects of `stale` that still carry this Kustomization's labels, unless
    /// annotated `prune: disabled` or `reconcile: disabled`. Returns the deletions made.
    pub async fn prune(
        &self,
        stale: &[ResourceRef],
        owner: (&str, &str),
    ) -> Result<ChangeSet, String> {
        self.prune_tracked(stale, owner)
            .await
            .map(|(changes, _)| changes)
    }

    /// [`Self::prune`], also returning each deleted object for [`Self::wait_terminated`].
    pub async fn prune_tracked(
        &self,
        stale: &[ResourceRef],
        owner: (&str, &str),
    ) -> Result<(ChangeSet, Vec<Deleted>), String> {
        let mut changes = ChangeSet::default();
        let mut deleted = vec![];
        let mut errors = vec![];
        let mut kinds: HashMap<(String, String, String), Option<(ApiResource, bool)>> =
            HashMap::new();
        for entry in stale {
            let Some(meta) = ObjMetadata::parse(&entry.id) else {
                continue;
            };
            let key = (meta.group.clone(), entry.v.clone(), meta.kind.clone());
            let resolved = if let Some(known) = kinds.get(&key) {
                known.clone()
            } else {
                let found = KindCache::resolve_served(
                    self.client,
                    self.metrics,
                    &meta.group,
                    &entry.v,
                    &meta.kind,
                )
                .await
                .map_err(|e| {
                    format!("{}: discovery failed: {}", display(&meta), api_message(&e))
                })?;
                kinds.insert(key, found.clone());
                found
            };
            // A kind no longer served at any version has no objects left to delete.
            let Some((resource, namespaced)) = resolved else {
                continue;
            };
            let api: Api<DynamicObject> = if namespaced {
                Api::namespaced_with(self.client.clone(), &meta.namespace, &resource)
            } else {
                Api::all_with(self.client.clone(), &resource)
            };
            self.metrics.request();
            let live = match api.get_opt(&meta.name).await {
                Ok(Some(live)) => serde_json::to_value(live).unwrap_or_default(),
                Ok(None) => continue,
                Err(e) => {
                    errors.push(format!("{}: {}", display(&meta), api_message(&e)));
                    continue;
                }
            };
            let is_owned = label(&live, annotations::NAME_LABEL) == Some(owner.0)
                && label(&live, annotations::NAMESPACE_LABEL) == Some(owner.1);
            if !is_owned
                || annotation(&live, annotations::PRUNE) == Some("disabled")
                || annotation(&live, annotations::RECONCILE) == Some("disabled")
            {
                continue;
            }
            let params = DeleteParams {
                propagation_policy: Some(PropagationPolicy::Background),
                ..DeleteParams::default()
            };
            self.metrics.write();
            match api.delete(&meta.name, &params).await {
                Ok(_) => {
                    changes.entries.push((display(&meta), Change::Deleted));
                    let uid = live
                        .pointer("/metadata/uid")
                        .and_then(Value::as_str)
                        .map(str::to_owned);
                    deleted.push(Deleted { api, meta, uid });
                }
                Err(e) if is_code(&e, 404) => {}
                Err(e) => errors.push(format!("{}: {}", display(&meta), api_message(&e))),
            }
        }
        if errors.is_empty() {
            Ok((changes, deleted))
        } else {
            Err(errors.join("\n"))
        }
    }

    /// Waits until every `deleted` object is gone from the API server (finalizers and the
    /// garbage collector done), or `timeout` passes; the error names those still there.
    pub async fn wait_terminated(&self, deleted: &[Deleted]) -> Result<(), String> {
        let deadline = Instant::now() + self.timeout;
        let mut pending: Vec<&Deleted> = deleted.iter().collect();
        loop {
            let mut still = vec![];
            for object in pending {
                self.metrics.request();
                match object.api.get_opt(&object.meta.name).await {
                    // The same name recreated by someone else is another object.
                    Ok(Some(live)) if live.metadata.uid == object.uid => still.push(object),
                    Ok(_) => {}
                    Err(_) => still.push(object),
                }
            }
            if still.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let names: Vec<String> = still.iter().map(|d| display(&d.meta)).collect();
                return Err(format!(
                    "timeout waiting for termination of: {}",
                    names.join(", ")
                ));
            }
            pending = still;
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until every object is healthy by `rules` (healthCheckExprs, else kstatus's), or
    /// `timeout` passes; the error names each unhealthy object and what it lacks.
    pub async fn wait_healthy(
        &self,
        objects: &[HealthTarget],
        rules: &HealthRules,
    ) -> Result<(), String> {
        let deadline = Instant::now() + self.timeout;
        let mut pending: Vec<&HealthTarget> = objects.iter().collect();
        loop {
            let mut still = vec![];
            let mut reasons = vec![];
            let mut failed = vec![];
            for object in pending {
                let api: Api<DynamicObject> = if object.namespaced {
                    Api::namespaced_with(
                        self.client.clone(),
                        &object.meta.namespace,
                        &object.resource,
                    )
                } else {
                    Api::all_with(self.client.clone(), &object.resource)
                };
                self.metrics.request();
                let health = match api.get_opt(&object.meta.name).await {
                    Ok(Some(live)) => rules.health(&serde_json::to_value(live).unwrap_or_default()),
                    Ok(None) => Health::InProgress("not found".to_owned()),
                    Err(e) => Health::InProgress(api_message(&e)),
                };
                match health {
                    Health::Current => {}
                    Health::InProgress(why) => {
                        reasons.push(format!("{} ({why})", display(&object.meta)));
                        still.push(object);
                    }
                    Health::Failed(why) => {
                        failed.push(format!("{} ({why})", display(&object.meta)));
                    }
                }
            }
            // As Flux by default: a failed object fails the check at once, without waiting for
            // the others or the timeout (nothing fixes it but a new revision).
            if !failed.is_empty() {
                return Err(format!(
                    "failed early due to stalled resources: {}",
                    failed.join(", ")
                ));
            }
            if still.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("timeout waiting for: {}", reasons.join(", ")));
            }
            pending = still;
            tokio::time::sleep(POLL).await;
        }
    }
}

/// An object [`ApplySet::prune_tracked`] deleted.
#[derive(Clone)]
pub struct Deleted {
    api: Api<DynamicObject>,
    meta: ObjMetadata,
    uid: Option<String>,
}

impl std::fmt::Debug for Deleted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deleted")
            .field("meta", &self.meta)
            .field("uid", &self.uid)
            .finish_non_exhaustive()
    }
}

/// An object whose health decides readiness.
#[derive(Debug, Clone)]
pub struct HealthTarget {
    pub meta: ObjMetadata,
    pub resource: ApiResource,
    pub namespaced: bool,
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
    fn status_and_resource_version_do_not_count_as_changes() {
        let a = json!({"metadata": {"resourceVersion": "1"}, "spec": {"x": 1}, "status": {"r": 1}});
        let b = json!({"metadata": {"resourceVersion": "2"}, "spec": {"x": 1}, "status": {"r": 2}});
        assert_eq!(comparable(a.clone()), comparable(b));
        let c = json!({"metadata": {"resourceVersion": "1"}, "spec": {"x": 2}});
        assert_ne!(comparable(a), comparable(c));
    }

    #[test]
    fn managed_fields_do_not_count_as_changes() {
        let a = json!({"metadata": {"name": "a", "managedFields": [{"manager": "x"}]}, "data": {"k": "v"}});
        let b = json!({"metadata": {"name": "a", "managedFields": [{"manager": "y"}]}, "data": {"k": "v"}});
        assert_eq!(comparable(a), comparable(b));
    }

    #[test]
    fn change_summaries_list_writes_only() {
        let set = ChangeSet {
            entries: vec![
                ("Deployment/ns/app".to_owned(), Change::Configured),
                ("ConfigMap/ns/cfg".to_owned(), Change::Unchanged),
                ("Service/ns/old".to_owned(), Change::Deleted),
            ],
        };
        assert!(set.wrote());
        assert_eq!(
            set.summary(),
            "Deployment/ns/app configured\nService/ns/old deleted"
        );
    }
}
