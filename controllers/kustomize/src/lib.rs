//! Weir's kustomize controller: takes the artifact of a `Kustomization`'s source, builds the
//! manifests under its path, validates the whole set with a server-side dry run, applies what
//! changed with server-side apply, prunes what left the source, and waits for health.
//!
//! A new artifact revision of a GitRepository reconciles every Kustomization that uses it at
//! once (a watch on sources), not at the next interval.
//!
//! Behaviour worth knowing (Flux's, unless said otherwise):
//! - Namespaced objects must name their namespace, or get one from `spec.targetNamespace`.
//! - Objects are applied with server-side apply under the field manager `kustomize-controller`
//!   (Flux's), with strict field validation; an object whose dry run equals the live object is
//!   not written at all, so a reconcile without changes issues no write.
//! - Validation is atomic: every object is dry-run before any is applied. Objects whose kind or
//!   namespace is created or changed by the same set (a CRD and its resources, a new schema
//!   field and its first use, a Namespace and its contents) can only be validated once those
//!   definitions are in place, so definitions are applied first and these objects validated
//!   after; a failure then leaves only the definitions applied.
//! - Objects annotated `kustomize.toolkit.fluxcd.io/ssa: Ignore` or `reconcile: disabled` are
//!   left alone but stay in the inventory, so they are never pruned while still in the source.
//! - `postBuild` substitutes the braced forms of Flux's envsubst (defaults, substrings,
//!   replacements, trims, case, length; see `substitute`), strictly as Flux 2.9 does (an
//!   undefined variable without a default is an error); a bare `$var` is left as written, and
//!   with no variable defined nothing is substituted. Values of Secrets read through
//!   `substituteFrom` are masked in every message, event and log line.
//! - The spec's kustomize fields are merged into the path's own kustomization as Flux merges
//!   them (prefixes replace, patches append and target the names in git). A build may load any
//!   file inside the artifact and nothing outside it. The `kustomize` binary runs with no
//!   plugins or exec functions, an empty environment and no network, in a private view of the
//!   shared artifact (never a copy of it); plain directories with no more than
//!   `targetNamespace` are built natively. `commonMetadata` goes on the built objects' metadata
//!   only, as in Flux.

pub mod build;
pub mod built;
pub mod error;
pub mod fetch;
pub mod generator;
pub mod inventory;
pub mod local;
pub mod lock;
pub mod native;
pub mod reconcile;
pub mod references;
pub mod rollback;
pub mod substitute;
pub mod view;

use std::{
    collections::BTreeMap,
    hash::{DefaultHasher, Hash, Hasher},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, ResourceExt,
    runtime::{controller::Action, reflector::ObjectRef},
};
use weir_api::{
    Condition, ConditionStatus, GitRepository, HelmRelease, Kustomization, KustomizationStatus,
    condition, history,
    kustomize::{DeletionPolicy, DependencyKind},
    reasons, types,
};
use weir_runtime::{
    ControllerError, Failure,
    conclude::{Ending, Retry, conclude},
    controller::{AbortOnDropHandle, Base, Reconciler, Runtime, Synced},
    decision::StepResult,
    schedule,
    status::apply_status,
    watches::Watches,
};

use weir_ssa::KindCache;

use crate::{error::KustomizeError, fetch::ArtifactFetcher, reconcile::Attempt};

pub use weir_api::meta::FINALIZER;
/// The field manager of status writes.
pub const STATUS_FIELD_MANAGER: &str = "weir-kustomize-controller";
/// The field manager of applied objects: Flux's, so objects move between engines.
pub const APPLY_FIELD_MANAGER: &str = "kustomize-controller";
/// The name events are reported under.
pub const CONTROLLER_NAME: &str = "weir-kustomize-controller";

/// Settings of the kustomize controller (`weir controllers` flags).
#[derive(Debug, Clone)]
pub struct Config {
    /// Watch only this namespace; all namespaces when `None`.
    pub namespace: Option<String>,
    /// How many Kustomizations are reconciled at once.
    pub concurrency: u16,
    /// The `kustomize` binary.
    pub kustomize_path: PathBuf,
    /// Where verified artifacts are cached by digest.
    pub cache_dir: PathBuf,
    /// How soon a Kustomization whose dependencies are not ready checks again.
    pub dependency_requeue: Duration,
    /// Bounds on downloading and extracting artifacts.
    pub artifact_limits: fetch::Limits,
    /// Multi-tenancy lockdown, as Flux's `--no-cross-namespace-refs` and
    /// `--default-service-account`.
    pub lockdown: Lockdown,
    /// Flux's kustomize-controller feature gates (`--feature-gates`).
    pub feature_gates: FeatureGates,
    /// The process's shared watches (`weir controllers`); when `None`, the controller watches on
    /// its own.
    pub watches: Option<Watches>,
}

/// The feature gates of Flux's kustomize-controller that Weir implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureGates {
    /// `StrictPostBuildSubstitutions` (on by default since Flux 2.9): a variable without a value
    /// or default fails the build; off, it becomes the empty string.
    pub strict_post_build_substitutions: bool,
}

impl Default for FeatureGates {
    fn default() -> Self {
        Self {
            strict_post_build_substitutions: true,
        }
    }
}

impl FeatureGates {
    /// The names Weir knows.
    pub const KNOWN: &[&str] = &["StrictPostBuildSubstitutions"];

    /// Parses Flux's `--feature-gates` values (`Name=true|false`, comma-separated or repeated)
    /// over the defaults; an unknown gate or a value that is not a bool is an error, as in Flux.
    pub fn parse<S: AsRef<str>>(values: &[S]) -> Result<Self, String> {
        let mut gates = Self::default();
        for item in values.iter().flat_map(|v| v.as_ref().split(',')) {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let (name, value) = item
                .split_once('=')
                .ok_or_else(|| format!("feature gate {item:?}: expected Name=true|false"))?;
            let on = match value.trim() {
                "true" => true,
                "false" => false,
                other => {
                    return Err(format!(
                        "feature gate {name}: {other:?} is not true or false"
                    ));
                }
            };
            match name.trim() {
                "StrictPostBuildSubstitutions" => gates.strict_post_build_substitutions = on,
                other => {
                    return Err(format!(
                        "unknown feature gate {other:?} (known: {})",
                        Self::KNOWN.join(", ")
                    ));
                }
            }
        }
        Ok(gates)
    }

    /// How `postBuild` treats a variable with no value and no default.
    #[must_use]
    pub fn substitution(self) -> substitute::Strictness {
        if self.strict_post_build_substitutions {
            substitute::Strictness::Strict
        } else {
            substitute::Strictness::Lenient
        }
    }
}

/// Flux's multi-tenancy lockdown flags.
#[derive(Debug, Clone, Default)]
pub struct Lockdown {
    /// Refuse a `sourceRef` to another namespace (`AccessDenied`).
    pub no_cross_namespace_refs: bool,
    /// The service account (in the Kustomization's namespace) impersonated when
    /// `spec.serviceAccountName` is empty.
    pub default_service_account: Option<String>,
}

/// Counters read by tests and benchmarks, served at `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Reconciles run.
    pub reconciles: AtomicU64,
    /// Requests reconciles made to the API server (reads, dry runs and writes; Events and the
    /// watches excluded).
    pub api_requests: AtomicU64,
    /// Objects created, changed or deleted.
    pub object_writes: AtomicU64,
    /// Writes of Kustomization status.
    pub status_writes: AtomicU64,
    /// Builds run (natively or by kustomize); a reconcile with nothing new reuses the last.
    pub builds: AtomicU64,
}

impl Metrics {
    /// Counts one read or dry run.
    pub fn request(&self) {
        self.api_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one write of an applied object (also a request).
    pub fn write(&self) {
        self.request();
        self.object_writes.fetch_add(1, Ordering::Relaxed);
    }
}

impl weir_ssa::ApiCounter for Metrics {
    fn request(&self) {
        Self::request(self);
    }

    fn write(&self) {
        Self::write(self);
    }
}

/// Served at `/metrics` by `weir controllers`, as Prometheus counters.
impl weir_runtime::metrics::Counters for Metrics {
    fn counters(&self) -> Vec<(&'static str, &'static str, &AtomicU64)> {
        vec![
            (
                "weir_kustomize_reconciles_total",
                "Kustomization reconciles run.",
                &self.reconciles,
            ),
            (
                "weir_kustomize_api_requests_total",
                "API requests made by reconciles (events and watches excluded).",
                &self.api_requests,
            ),
            (
                "weir_kustomize_object_writes_total",
                "Objects created, changed or deleted.",
                &self.object_writes,
            ),
            (
                "weir_kustomize_status_writes_total",
                "Kustomization status writes.",
                &self.status_writes,
            ),
            (
                "weir_kustomize_builds_total",
                "Builds run (a reconcile with nothing new reuses the last build).",
                &self.builds,
            ),
        ]
    }
}

/// Shared by the reconciles of one controller; never by two controllers.
pub struct Context {
    /// The client, Events and backoff the runtime uses.
    pub base: Base,
    /// The controller's own connection settings, from which impersonating clients are made.
    pub kube_config: kube::Config,
    pub config: Config,
    pub fetcher: ArtifactFetcher,
    pub kinds: KindCache,
    pub metrics: Arc<Metrics>,
    /// Each Kustomization's last build, reused while nothing it depends on changes.
    pub builds: built::BuildCache,
    /// One client per impersonated service account (`namespace/name`), so that its
    /// connections are reused from one reconcile to the next instead of a TLS handshake each.
    pub impersonated: std::sync::Mutex<BTreeMap<String, kube::Client>>,
    /// The locked workloads (Weir's `weir lock`), watched.
    pub locks: lock::Locks,
    /// The GitRepositories the shared watch holds (rollback sources are found there).
    pub sources: kube::runtime::reflector::Store<GitRepository>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Errors that stop the controller from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot connect to the Kubernetes API")]
    Client(#[source] kube::Error),
    #[error("cannot prepare the artifact cache")]
    Cache(#[source] fetch::FetchError),
    #[error("kustomize binary {0:?} not found (set --kustomize-path)")]
    KustomizeNotFound(PathBuf),
}

/// A running kustomize controller.
#[derive(Debug)]
pub struct Handle {
    pub metrics: Arc<Metrics>,
    /// Whether the controller's cache has synced.
    pub synced: Synced,
    /// Stopped when the handle is dropped.
    controller: AbortOnDropHandle<()>,
}

impl Handle {
    /// Runs until the controller stops (on SIGTERM/SIGINT when `shutdown_on_signal`).
    pub async fn wait(self) {
        let _ = self.controller.await;
    }

    /// Stops the controller.
    pub fn abort(&self) {
        self.controller.abort();
    }
}

/// What of a GitRepository triggers its Kustomizations: a new artifact.
#[allow(clippy::unnecessary_wraps)] // The signature `predicate_filter` asks for.
fn artifact_trigger(repo: &GitRepository) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    let artifact = repo.status.as_ref().and_then(|s| s.artifact.as_ref());
    artifact.map(|a| &a.revision).hash(&mut hasher);
    artifact.map(|a| &a.digest).hash(&mut hasher);
    Some(hasher.finish())
}

/// What of a Kustomization starts its dependents: its readiness at its generation.
#[allow(clippy::unnecessary_wraps)] // The signature `predicate_filter` asks for.
fn readiness_trigger(ks: &Kustomization) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    let ready = ks
        .status
        .as_ref()
        .and_then(|s| condition::find_condition(&s.conditions, types::READY));
    ready
        .map(|c| (c.status, c.observed_generation))
        .hash(&mut hasher);
    ks.metadata.generation.hash(&mut hasher);
    // A dependency that applied a new revision releases dependents on the same source.
    ks.status
        .as_ref()
        .and_then(|s| s.last_applied_revision.as_deref())
        .hash(&mut hasher);
    // A dependsOn[].readyExpr may read any field of the dependency: its labels, annotations
    // and whole status release dependents too (the status write is skipped when unchanged).
    ks.metadata.labels.hash(&mut hasher);
    ks.metadata.annotations.hash(&mut hasher);
    serde_json::to_string(&ks.status)
        .unwrap_or_default()
        .hash(&mut hasher);
    Some(hasher.finish())
}

/// Whether `ks` lists `dependency`, an object of `kind`, in `dependsOn`.
fn depends_on<K: ResourceExt>(ks: &Kustomization, kind: DependencyKind, dependency: &K) -> bool {
    let ks_ns = ks.namespace().unwrap_or_default();
    ks.spec.depends_on.iter().any(|d| {
        d.kind.unwrap_or(DependencyKind::Kustomization) == kind
            && d.name == dependency.name_any()
            && Some(d.namespace.as_deref().unwrap_or(&ks_ns)) == dependency.namespace().as_deref()
    })
}

/// Whether `ks` takes its manifests from `repo`.
fn uses_source(ks: &Kustomization, repo: &GitRepository) -> bool {
    let ks_ns = ks.namespace().unwrap_or_default();
    let source_ns = ks.spec.source_ref.namespace.as_deref().unwrap_or(&ks_ns);
    ks.spec.source_ref.kind == weir_api::SourceKind::GitRepository
        && ks.spec.source_ref.name == repo.name_any()
        && Some(source_ns) == repo.namespace().as_deref()
}

/// Starts the controller. With `shutdown_on_signal`, SIGTERM and SIGINT stop it gracefully.
#[allow(clippy::unused_async)] // The same shape as `weir_source::start`, so callers start both alike.
pub async fn start(
    kube_config: kube::Config,
    config: Config,
    shutdown_on_signal: bool,
) -> Result<Handle, StartError> {
    let mut config = config;
    config.kustomize_path = build::find_binary(&config.kustomize_path)
        .ok_or_else(|| StartError::KustomizeNotFound(config.kustomize_path.clone()))?;
    let client = weir_runtime::client::new(kube_config.clone()).map_err(StartError::Client)?;
    let fetcher = ArtifactFetcher::new(config.cache_dir.clone(), config.artifact_limits)
        .map_err(StartError::Cache)?;
    let metrics = Arc::new(Metrics::default());
    let watches = config
        .watches
        .clone()
        .unwrap_or_else(|| Watches::new(client.clone()));
    let (namespace, concurrency) = (config.namespace.clone(), config.concurrency);
    let mut synced = Synced::default();
    let sources = watches.subscribe::<GitRepository>(namespace.as_deref(), &mut synced);
    let (locks, unlocked) = lock::Locks::start(&client, namespace.as_deref(), &mut synced);
    let ctx = Arc::new(Context {
        base: Base::new(client.clone(), CONTROLLER_NAME),
        kube_config,
        config,
        fetcher,
        kinds: KindCache::default(),
        metrics: metrics.clone(),
        builds: built::BuildCache::default(),
        impersonated: std::sync::Mutex::default(),
        sources: sources.store(),
        locks,
    });
    let namespace = namespace.as_deref();
    let controller = weir_runtime::controller::watch::<Kustomization>(
        &watches,
        namespace,
        concurrency,
        &mut synced,
    );
    let sources = sources.changed(artifact_trigger);
    let dependencies = watches
        .subscribe::<Kustomization>(namespace, &mut synced)
        .changed(readiness_trigger);
    let releases = watches
        .subscribe::<HelmRelease>(namespace, &mut synced)
        .changed(weir_runtime::trigger::readiness_trigger::<HelmRelease>);
    let (by_source, by_dependency, by_release) =
        (controller.store(), controller.store(), controller.store());
    let controller = controller
        .watches_shared_stream(sources, move |repo: Arc<GitRepository>| {
            by_source
                .state()
                .into_iter()
                .filter(|ks| uses_source(ks, &repo) || rollback::uses_rollback_source(ks, &repo))
                .map(|ks| ObjectRef::from_obj(&*ks))
                .collect::<Vec<_>>()
        })
        // A dependency that becomes Ready starts its dependents at once; the dependency requeue
        // is only the fallback.
        .watches_shared_stream(dependencies, move |dependency: Arc<Kustomization>| {
            by_dependency
                .state()
                .into_iter()
                .filter(|ks| depends_on(ks, DependencyKind::Kustomization, &*dependency))
                .map(|ks| ObjectRef::from_obj(&*ks))
                .collect::<Vec<_>>()
        })
        // Weir's cross-kind dependsOn: a HelmRelease that becomes Ready starts the
        // Kustomizations that depend on it.
        .watches_shared_stream(releases, move |hr: Arc<HelmRelease>| {
            by_release
                .state()
                .into_iter()
                .filter(|ks| depends_on(ks, DependencyKind::HelmRelease, &*hr))
                .map(|ks| ObjectRef::from_obj(&*ks))
                .collect::<Vec<_>>()
        });
    // A lock removed or expired: git's images return at once.
    let controller = controller.reconcile_on(unlocked);
    let controller = weir_runtime::controller::spawn(controller, ctx, shutdown_on_signal);
    tracing::info!("kustomize controller started");
    Ok(Handle {
        metrics,
        synced,
        controller,
    })
}

impl Runtime for Context {
    fn base(&self) -> &Base {
        &self.base
    }
}

/// One reconcile of a live object: run the steps, conclude, write status once.
impl Reconciler<Kustomization> for Context {
    async fn apply(
        &self,
        api: &Api<Kustomization>,
        ks: Arc<Kustomization>,
    ) -> Result<Action, ControllerError> {
        self.metrics.reconciles.fetch_add(1, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let previous = ks.status.clone();
        let mut status = previous.clone().unwrap_or_default();

        let mut attempt = Attempt::default();
        // Every step is bounded by spec.timeout on its own (download, build, health wait); the
        // whole reconcile by twice that, so that no API call left waiting (a server that stops
        // answering) holds the object for ever. What was applied before is applied again next
        // time; nothing is pruned after an abandoned reconcile.
        let bound = ks.spec.timeout().saturating_mul(2);
        let result = tokio::time::timeout(bound, reconcile::run(&ks, self, &mut attempt))
            .await
            .unwrap_or(Err(KustomizeError::Abandoned(bound)));

        if let Some(revision) = &attempt.revision {
            status.last_attempted_revision = Some(revision.clone());
        }
        if let Some(inventory) = attempt.inventory.take() {
            status.inventory = Some(inventory);
        }
        if !checks_health(&ks) {
            condition::remove_condition(&mut status.conditions, types::HEALTHY);
        }
        if attempt.changes.wrote() {
            let summary = attempt.redactor.redact(&attempt.changes.summary());
            tracing::info!(summary, "applied changes");
        }
        let (step, ending, outcome) = match &result {
            Ok(()) => (
                succeeded(&ks, &mut status, &attempt),
                Ending::new(
                    "Reconcile",
                    Some(schedule::jittered(ks.spec.interval.as_std())),
                    None,
                ),
                reasons::RECONCILIATION_SUCCEEDED,
            ),
            Err(error) => {
                let step = failed(&ks, &mut status, &attempt, error);
                let retry = ks.spec.retry_interval.as_ref().unwrap_or(&ks.spec.interval);
                let note = match &step {
                    StepResult::Failed { message, .. } => Some(note(&attempt, message)),
                    StepResult::Succeeded { .. } => None,
                };
                let ending = Ending {
                    retry: Retry::After(schedule::jittered(retry.as_std())),
                    failure_note: note,
                    ..Ending::new("Reconcile", None, None)
                };
                (step, ending, error.reason())
            }
        };
        let action = conclude(self, &*ks, &mut status, &step, ending).await;
        // Compared with what is there now: the progressing status, when one was written.
        let current = attempt.progressing.as_ref().or(previous.as_ref());
        record_history(&mut status, current, &attempt, outcome, started.elapsed());
        let mut version = attempt.version.clone().or_else(|| ks.resource_version());
        if apply_status(
            api,
            &*ks,
            current,
            &status,
            STATUS_FIELD_MANAGER,
            &mut version,
        )
        .await?
        {
            self.metrics.request();
            self.metrics.status_writes.fetch_add(1, Ordering::Relaxed);
        }
        Ok(action)
    }

    async fn cleanup(&self, ks: Arc<Kustomization>) -> Result<Action, ControllerError> {
        cleanup(&ks, self).await
    }
}

/// Deleting a Kustomization deletes its inventory as `deletionPolicy` says (by default, when
/// prune is on); `Orphan` (and a suspended Kustomization) leaves the objects. A
/// `WaitForTermination` that times out is logged and the Kustomization still goes, as in Flux.
async fn cleanup(ks: &Kustomization, ctx: &Context) -> Result<Action, ControllerError> {
    ctx.builds.remove(&built::BuildCache::key(ks));
    // An owner reference removes a rollback source in the same namespace; not in another.
    if let Err(error) = rollback::delete_source(ks, ctx).await {
        tracing::warn!(error = %weir_runtime::chain(&error), "cannot delete the rollback source");
    }
    let policy = ks.spec.effective_deletion_policy();
    if policy == DeletionPolicy::Orphan || ks.spec.suspend {
        return Ok(Action::await_change());
    }
    let wait = policy == DeletionPolicy::WaitForTermination;
    let (deleted, waited) = reconcile::delete_inventory(ks, ctx, wait)
        .await
        .map_err(ControllerError::cleanup)?;
    if let Some(error) = waited {
        tracing::error!(
            kustomization = %ObjectRef::from_obj(ks),
            error = %weir_runtime::chain(&error),
            "deleted objects did not terminate within the timeout"
        );
    }
    if deleted.wrote() {
        tracing::info!(
            summary = deleted.summary(),
            "pruned inventory of deleted Kustomization"
        );
    }
    Ok(Action::await_change())
}

/// Records the reconcile in `status.history` once the manifests were built (as Flux does,
/// keyed by their digest and the outcome's reason). A reconcile that changes nothing else and
/// repeats the latest snapshot's outcome is not recorded, so a steady state writes no status;
/// `totalReconciliations` counts the reconciles that wrote one.
fn record_history(
    status: &mut KustomizationStatus,
    current: Option<&KustomizationStatus>,
    attempt: &Attempt,
    outcome: &str,
    took: std::time::Duration,
) {
    let Some(digest) = &attempt.digest else {
        return;
    };
    if current == Some(&*status) && history::is_latest(&status.history, digest, outcome) {
        return;
    }
    let mut metadata = BTreeMap::new();
    if let Some(revision) = &attempt.revision {
        metadata.insert("revision".to_owned(), revision.clone());
    }
    if let Some(origin) = &attempt.origin_revision {
        metadata.insert("originRevision".to_owned(), origin.clone());
    }
    history::upsert(
        &mut status.history,
        history::Reconciled {
            digest: digest.clone(),
            status: outcome.to_owned(),
            at: Time(Timestamp::now()),
            took,
            metadata,
        },
    );
}

fn checks_health(ks: &Kustomization) -> bool {
    ks.spec.wait || !ks.spec.health_checks.is_empty()
}

/// The event note: the changes made, then the message.
fn note(attempt: &Attempt, message: &str) -> String {
    let summary = attempt.redactor.redact(&attempt.changes.summary());
    if summary.is_empty() {
        message.to_owned()
    } else {
        format!("{summary}\n{message}")
    }
}

/// Records success: Healthy=True when checked, the applied revision; announced when something
/// was written or the revision is new.
fn succeeded(
    ks: &Kustomization,
    status: &mut KustomizationStatus,
    attempt: &Attempt,
) -> StepResult {
    let revision = attempt.revision.clone().unwrap_or_default();
    let message = rollback::ready_message(ks, &revision)
        .unwrap_or_else(|| format!("Applied revision: {revision}"));
    let previous_ready =
        condition::find_condition(&status.conditions, types::READY).map(|c| c.message.clone());
    if checks_health(ks) {
        condition::set_condition(
            &mut status.conditions,
            Condition::new(
                types::HEALTHY,
                ConditionStatus::True,
                reasons::SUCCEEDED,
                "Health check passed",
            )
            .for_generation(ks.metadata.generation),
        );
    }
    let new_revision = status.last_applied_revision.as_deref() != Some(revision.as_str());
    status.last_applied_revision = Some(revision);
    status
        .last_applied_origin_revision
        .clone_from(&attempt.origin_revision);
    let result = StepResult::succeeded(reasons::RECONCILIATION_SUCCEEDED, &message);
    if let Some(reason) = rollback::announcement(ks, &message, previous_ready.as_deref()) {
        return result.announcing(reason, note(attempt, &message));
    }
    if attempt.changes.wrote() || new_revision {
        result.announcing(reasons::RECONCILIATION_SUCCEEDED, note(attempt, &message))
    } else {
        result
    }
}

/// Records a failure: Healthy=False when health failed (Ready, Reconciling or Stalled follow
/// from the step result); the last applied revision stays.
fn failed(
    ks: &Kustomization,
    status: &mut KustomizationStatus,
    attempt: &Attempt,
    error: &KustomizeError,
) -> StepResult {
    let result = StepResult::failed(error, &attempt.redactor);
    if let (
        Some(false),
        StepResult::Failed {
            reason, message, ..
        },
    ) = (attempt.healthy, &result)
    {
        condition::set_condition(
            &mut status.conditions,
            Condition::new(types::HEALTHY, ConditionStatus::False, reason, message)
                .for_generation(ks.metadata.generation),
        );
    }
    result
}

#[cfg(test)]
mod feature_gate_tests {
    use super::FeatureGates;

    #[test]
    fn feature_gates_parse_as_fluxs_flag_and_refuse_unknown_ones() {
        assert_eq!(
            FeatureGates::parse::<&str>(&[]).unwrap(),
            FeatureGates::default()
        );
        assert!(FeatureGates::default().strict_post_build_substitutions);
        let off = FeatureGates::parse(&["StrictPostBuildSubstitutions=false"]).unwrap();
        assert!(!off.strict_post_build_substitutions);
        let on = FeatureGates::parse(&[
            "StrictPostBuildSubstitutions=false,StrictPostBuildSubstitutions=true",
        ])
        .unwrap();
        assert!(on.strict_post_build_substitutions);
        let err = FeatureGates::parse(&["CacheSecretsAndConfigMaps=true"]).unwrap_err();
        assert!(
            err.contains("unknown feature gate") && err.contains("StrictPostBuildSubstitutions"),
            "{err}"
        );
        let err = FeatureGates::parse(&["StrictPostBuildSubstitutions=yes"]).unwrap_err();
        assert!(err.contains("not true or false"), "{err}");
        assert!(FeatureGates::parse(&["StrictPostBuildSubstitutions"]).is_err());
    }
}
