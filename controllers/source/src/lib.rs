//! Weir's source controller: turns each `GitRepository` into a reproducible tar.gz artifact, each
//! HTTP(S) `HelmRepository` into its index and each `HelmChart` into a chart archive, served over
//! HTTP and published in `status.artifact` for other controllers to download.

pub mod archive;
pub mod content;
pub mod error;
pub mod helm_chart;
pub mod helm_chart_build;
pub mod helm_index;
pub mod helm_oci;
pub mod helm_repository;
pub mod include;
pub mod reconcile;
pub mod storage;
pub mod submodule;
pub mod verify;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, atomic::AtomicU64},
};

use kube::{Api, Client, runtime::controller::Action};
use weir_api::{GitRepository, GitRepositoryStatus, condition, reasons, types};
use weir_runtime::{
    ControllerError,
    conclude::{Ending, Pass},
    controller::{AbortOnDropHandle, Base, Reconciler, Runtime, Synced},
    decision::StepResult,
    schedule,
    watches::Watches,
};

use crate::{error::SourceError, reconcile::SourceOutcome, storage::Storage};

pub use weir_api::meta::FINALIZER;
/// The field manager of status writes.
pub const FIELD_MANAGER: &str = "weir-source-controller";
/// The name events are reported under.
pub const CONTROLLER_NAME: &str = "weir-source-controller";

/// Settings of the source controller (`weir controllers` flags).
#[derive(Debug, Clone)]
pub struct Config {
    /// Where artifacts are stored.
    pub storage_path: PathBuf,
    /// Where the artifact HTTP server listens; port 0 picks a free one.
    pub storage_addr: SocketAddr,
    /// The `host:port` put in artifact URLs; defaults to the bound address.
    pub storage_adv_addr: Option<String>,
    /// How many artifacts to keep per object, the current one included.
    pub artifact_retention: usize,
    /// Watch only this namespace; all namespaces when `None`.
    pub namespace: Option<String>,
    /// How many objects are reconciled at once.
    pub concurrency: u16,
    /// The process's shared watches (`weir controllers`); when `None`, the controller watches on
    /// its own.
    pub watches: Option<Watches>,
}

/// Counters read by tests and benchmarks (and later exported as Prometheus metrics).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Reconciles run.
    pub reconciles: AtomicU64,
    /// Remote ref listings (`ls-remote`): cheap, no objects transferred.
    pub remote_checks: AtomicU64,
    /// Fetches (clones) of repository content.
    pub fetches: AtomicU64,
    /// Artifacts written to storage.
    pub artifacts_written: AtomicU64,
}

/// Served at `/metrics` by `weir controllers`, as Prometheus counters.
impl weir_runtime::metrics::Counters for Metrics {
    fn counters(&self) -> Vec<(&'static str, &'static str, &AtomicU64)> {
        vec![
            (
                "weir_source_reconciles_total",
                "GitRepository reconciles run.",
                &self.reconciles,
            ),
            (
                "weir_source_remote_checks_total",
                "Remote ref listings (no objects transferred).",
                &self.remote_checks,
            ),
            (
                "weir_source_fetches_total",
                "Fetches (clones) of repository content.",
                &self.fetches,
            ),
            (
                "weir_source_artifacts_written_total",
                "Artifacts written to storage.",
                &self.artifacts_written,
            ),
        ]
    }
}

/// Shared by the reconciles of one controller; never by two controllers.
pub struct Context {
    /// The client, Events and backoff the runtime uses.
    pub base: Base,
    pub storage: Storage,
    pub metrics: Arc<Metrics>,
    pub in_flight: weir_git::bounded::InFlight,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("storage", &self.storage)
            .finish_non_exhaustive()
    }
}

/// Errors that stop the controller from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot prepare artifact storage at {path}")]
    Storage {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running source controller.
#[derive(Debug)]
pub struct Handle {
    pub metrics: Arc<Metrics>,
    /// Whether the controller's cache has synced.
    pub synced: Synced,
    /// The base URL artifacts are advertised at.
    pub storage_url: String,
    /// Stopped, like the server, when the handle is dropped.
    controller: AbortOnDropHandle<()>,
    helm: helm_repository::Running,
    charts: AbortOnDropHandle<()>,
    server: AbortOnDropHandle<()>,
}

impl Handle {
    /// Runs until the controller stops (it stops on SIGTERM/SIGINT when `shutdown_on_signal`).
    pub async fn wait(self) {
        let _ = futures::join!(self.controller, self.helm.controller, self.charts);
    }

    /// Stops the controller and the artifact server.
    pub fn abort(&self) {
        self.controller.abort();
        self.helm.controller.abort();
        self.helm.statics.abort();
        self.charts.abort();
        self.server.abort();
    }
}

/// Starts the artifact server and the controller. With `shutdown_on_signal`, SIGTERM and
/// SIGINT stop it gracefully (in-flight reconciles finish).
pub async fn start(
    client: Client,
    config: Config,
    shutdown_on_signal: bool,
) -> Result<Handle, StartError> {
    weir_git::bound_socket_waits();
    let listener =
        storage::bind(config.storage_addr)
            .await
            .map_err(|source| StartError::Listen {
                addr: config.storage_addr,
                source,
            })?;
    let bound = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.storage_addr,
        source,
    })?;
    let adv = config
        .storage_adv_addr
        .clone()
        .unwrap_or_else(|| bound.to_string());
    let storage_url = format!("http://{adv}");
    let storage = Storage::new(
        config.storage_path.clone(),
        &storage_url,
        config.artifact_retention,
    )
    .map_err(|source| StartError::Storage {
        path: config.storage_path.display().to_string(),
        source,
    })?;
    let root = storage.root().to_path_buf();
    let server = AbortOnDropHandle::new(tokio::spawn(async move {
        if let Err(error) = storage::serve(root, listener).await {
            tracing::error!(error = %weir_runtime::chain(&error), "artifact server stopped");
        }
    }));

    let metrics = Arc::new(Metrics::default());
    let ctx = Arc::new(Context {
        base: Base::new(client.clone(), CONTROLLER_NAME),
        storage: storage.clone(),
        metrics: metrics.clone(),
        in_flight: weir_git::bounded::InFlight::default(),
    });
    let watches = config
        .watches
        .clone()
        .unwrap_or_else(|| Watches::new(client.clone()));
    let namespace = config.namespace.as_deref();
    let mut synced = Synced::default();
    let controller = weir_runtime::controller::watch::<GitRepository>(
        &watches,
        namespace,
        config.concurrency,
        &mut synced,
    );
    let includes = watches
        .subscribe::<GitRepository>(namespace, &mut synced)
        .changed(include::artifact_trigger);
    let controller = watch_includes(controller, includes);
    let controller = weir_runtime::controller::spawn(controller, ctx, shutdown_on_signal);
    let helm = helm_repository::start(
        &client,
        &watches,
        namespace,
        config.concurrency,
        &mut synced,
        storage.clone(),
        shutdown_on_signal,
    );
    let charts = helm_chart::start(
        &client,
        &watches,
        namespace,
        config.concurrency,
        &mut synced,
        storage,
        shutdown_on_signal,
    );
    tracing::info!(storage = %storage_url, "source controller started");
    Ok(Handle {
        metrics,
        synced,
        storage_url,
        controller,
        helm,
        charts,
        server,
    })
}

/// A GitRepository whose artifact changes starts every GitRepository including it at once, so a
/// new included artifact makes a new artifact of the includer (the include requeue is only the
/// fallback).
fn watch_includes(
    controller: kube::runtime::Controller<GitRepository>,
    changed: impl futures::Stream<Item = Arc<GitRepository>> + Send + 'static,
) -> kube::runtime::Controller<GitRepository> {
    use kube::runtime::reflector::ObjectRef;
    let store = controller.store();
    controller.watches_shared_stream(changed, move |changed: Arc<GitRepository>| {
        store
            .state()
            .into_iter()
            .filter(|repo| include::includes(repo, &changed))
            .map(|repo| ObjectRef::from_obj(&*repo))
            .collect::<Vec<_>>()
    })
}

impl Runtime for Context {
    fn base(&self) -> &Base {
        &self.base
    }
}

/// One reconcile of a live object: run the steps, conclude, write status once. Deleting a
/// GitRepository removes all its artifacts.
impl Reconciler<GitRepository> for Context {
    async fn apply(
        &self,
        api: &Api<GitRepository>,
        repo: Arc<GitRepository>,
    ) -> Result<Action, ControllerError> {
        use std::sync::atomic::Ordering;
        self.metrics.reconciles.fetch_add(1, Ordering::Relaxed);
        // A new generation is work in progress from the start (Flux's message); a new upstream
        // revision is marked when it is found, unless this already was.
        let mut pass = Pass::begin(api, &*repo, FIELD_MANAGER).await;
        let (result, redactor, included) =
            steps(&repo, self, &mut pass.status, &mut pass.progress).await;
        let status = &mut pass.status;
        let result = match result {
            Ok((outcome, verified)) => {
                let (artifact, result) = succeeded(status, &repo, outcome, &redactor);
                status.artifact = Some(artifact);
                status.observed_ignore.clone_from(&repo.spec.ignore);
                include::record(status, &repo.spec, included);
                verify::record_success(status, &repo, verified.as_ref());
                result
            }
            Err(error) => failed(&repo, status, &error, &redactor),
        };
        let interval = repo.spec.interval.as_std();
        let ending = Ending::new("Fetch", Some(schedule::jittered(interval)), Some(interval));
        Ok(pass.finish(self, &result, ending).await?)
    }

    async fn cleanup(&self, repo: Arc<GitRepository>) -> Result<Action, ControllerError> {
        self.storage
            .remove_artifacts_of(&*repo)
            .map_err(ControllerError::cleanup)?;
        Ok(Action::await_change())
    }
}

/// Records success: `ArtifactInStorage=True`, the failure conditions removed; announces a new
/// artifact. Returns the artifact to publish and the step result.
fn succeeded(
    status: &mut GitRepositoryStatus,
    repo: &GitRepository,
    outcome: SourceOutcome,
    redactor: &weir_runtime::Redactor,
) -> (weir_api::Artifact, StepResult) {
    let (artifact, new) = match outcome {
        SourceOutcome::Unchanged(a) => (a, None),
        SourceOutcome::NewArtifact {
            artifact,
            commit_summary,
        } => (artifact, Some(commit_summary)),
    };
    let message = format!("stored artifact for revision '{}'", artifact.revision);
    record_stored(
        &mut status.conditions,
        repo.metadata.generation,
        &[types::FETCH_FAILED, types::STORAGE_OPERATION_FAILED],
        reasons::SUCCEEDED,
        &message,
    );
    let mut result = StepResult::succeeded(reasons::SUCCEEDED, message);
    if let Some(summary) = new {
        let note = redactor.redact(&format!(
            "stored artifact for commit '{summary}', revision '{}'",
            artifact.revision
        ));
        result = result.announcing("NewArtifact", note);
        tracing::info!(revision = artifact.revision, "stored new artifact");
    }
    (artifact, result)
}

/// The steps: credentials, the included artifacts, the source. Returns the outcome, the
/// redactor of what the credentials hold, and the included artifacts the source was built with.
async fn steps(
    repo: &GitRepository,
    ctx: &Context,
    status: &mut GitRepositoryStatus,
    progress: &mut Progress<'_>,
) -> (
    Result<(SourceOutcome, Option<verify::Verified>), SourceError>,
    weir_runtime::Redactor,
    Vec<weir_api::Artifact>,
) {
    let (url, credentials, redactor) = match reconcile::load_credentials(repo, ctx).await {
        Ok(loaded) => loaded,
        Err(e) => {
            let mut r = weir_runtime::Redactor::default();
            r.add_url_credentials(&repo.spec.url);
            return (Err(e), r, vec![]);
        }
    };
    match included_artifacts(repo, ctx, status, progress).await {
        Ok(included) => {
            let result =
                reconcile::reconcile_source(repo, ctx, url, credentials, &included, progress).await;
            (result, redactor, included)
        }
        Err(e) => (Err(e), redactor, vec![]),
    }
}

/// Step: the included artifacts (`IncludeUnavailable` cleared once they all are,
/// `ArtifactOutdated` set when they changed: see [`include::observe`]).
async fn included_artifacts(
    repo: &GitRepository,
    ctx: &Context,
    status: &mut GitRepositoryStatus,
    progress: &mut Progress<'_>,
) -> Result<Vec<weir_api::Artifact>, SourceError> {
    let included = include::fetch_includes(&ctx.base.client, repo).await?;
    condition::remove_condition(&mut status.conditions, types::INCLUDE_UNAVAILABLE);
    include::observe(repo, status, &included, progress).await;
    Ok(included)
}

/// Writes Reconciling=True (Flux's `Progressing` reason) and Ready=Unknown before the work a new
/// generation or a new upstream revision needs, as Flux's source-controller does, so kstatus,
/// `kubectl wait` and dependents see it in progress. At most once per reconcile; a reconcile with
/// nothing new writes nothing here.
pub type Progress<'a> = weir_runtime::progress::Progress<'a, GitRepository>;

/// Records a failure: the negative-polarity condition (Ready, Reconciling or Stalled follow
/// from the step result); the last good artifact stays in status.
fn failed(
    repo: &GitRepository,
    status: &mut GitRepositoryStatus,
    error: &SourceError,
    redactor: &weir_runtime::Redactor,
) -> StepResult {
    verify::record_failure(status, error);
    record_failure(
        &mut status.conditions,
        repo.metadata.generation,
        error,
        (error.condition_type(), error.condition_status()),
        redactor,
    )
}

/// Records a stored artifact in `conditions`, as every source kind does: `ArtifactInStorage=True`
/// with `reason` and `message`, and the failure (`stale`) and `ArtifactOutdated` conditions of
/// earlier reconciles removed.
pub(crate) fn record_stored(
    conditions: &mut Vec<weir_api::Condition>,
    generation: Option<i64>,
    stale: &[&str],
    reason: &str,
    message: &str,
) {
    for r#type in stale.iter().chain(&[types::ARTIFACT_OUTDATED]) {
        condition::remove_condition(conditions, r#type);
    }
    condition::set_condition(
        conditions,
        weir_api::Condition::new(
            types::ARTIFACT_IN_STORAGE,
            weir_api::ConditionStatus::True,
            reason,
            message,
        )
        .for_generation(generation),
    );
}

/// The step result of a failure of a source kind, its negative-polarity condition (`r#type`
/// with `status`: `FetchFailed`, `BuildFailed`…) set in `conditions` with the same reason and
/// message.
pub(crate) fn record_failure(
    conditions: &mut Vec<weir_api::Condition>,
    generation: Option<i64>,
    error: &(impl weir_runtime::Failure + ?Sized),
    (r#type, status): (&str, weir_api::ConditionStatus),
    redactor: &weir_runtime::Redactor,
) -> StepResult {
    let result = StepResult::failed(error, redactor);
    if let StepResult::Failed {
        reason, message, ..
    } = &result
    {
        condition::set_condition(
            conditions,
            weir_api::Condition::new(r#type, status, reason, message).for_generation(generation),
        );
    }
    result
}
