//! Weir's source controller: turns each `GitRepository` into a reproducible tar.gz artifact,
//! served over HTTP and published in `status.artifact` for other controllers to download.

pub mod archive;
pub mod content;
pub mod error;
pub mod include;
pub mod reconcile;
pub mod storage;
pub mod submodule;
pub mod verify;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, atomic::AtomicU64},
    time::Duration,
};

use kube::{Api, Client, ResourceExt, runtime::controller::Action};
use weir_api::{
    GitRepository, GitRepositoryStatus, condition, meta::handled_reconcile_at, reasons, types,
};
use weir_runtime::{
    ControllerError, Failure,
    controller::{AbortOnDropHandle, Reconciler, Runtime, Synced},
    decision::{Schedule, StepResult, decide},
    events::EventPublisher,
    schedule,
    status::apply_status,
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
    pub client: Client,
    pub storage: Storage,
    pub events: EventPublisher,
    pub backoff: schedule::Backoff,
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
    server: AbortOnDropHandle<()>,
}

impl Handle {
    /// Runs until the controller stops (it stops on SIGTERM/SIGINT when `shutdown_on_signal`).
    pub async fn wait(self) {
        let _ = self.controller.await;
    }

    /// Stops the controller and the artifact server.
    pub fn abort(&self) {
        self.controller.abort();
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
        client: client.clone(),
        storage,
        events: EventPublisher::new(client.clone(), CONTROLLER_NAME),
        backoff: schedule::Backoff::default(),
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
    tracing::info!(storage = %storage_url, "source controller started");
    Ok(Handle {
        metrics,
        synced,
        storage_url,
        controller,
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

fn object_key(repo: &GitRepository) -> String {
    weir_runtime::controller::object_key(repo)
}

impl Runtime for Context {
    fn client(&self) -> &Client {
        &self.client
    }

    fn backoff(&self) -> &schedule::Backoff {
        &self.backoff
    }
}

impl Reconciler<GitRepository> for Context {
    async fn apply(
        &self,
        api: &Api<GitRepository>,
        repo: Arc<GitRepository>,
    ) -> Result<Action, ControllerError> {
        apply(api, &repo, self).await
    }

    async fn cleanup(&self, repo: Arc<GitRepository>) -> Result<Action, ControllerError> {
        cleanup(&repo, self)
    }
}

/// Deleting a GitRepository removes all its artifacts.
fn cleanup(repo: &GitRepository, ctx: &Context) -> Result<Action, ControllerError> {
    let dir = Storage::object_dir(
        "GitRepository",
        &repo.namespace().unwrap_or_default(),
        &repo.name_any(),
    )
    .map_err(ControllerError::cleanup)?;
    ctx.storage
        .remove_object(&dir)
        .map_err(ControllerError::cleanup)?;
    tracing::info!(dir, "removed artifacts");
    Ok(Action::await_change())
}

/// One reconcile of a live object: run the steps, summarise, write status once.
async fn apply(
    api: &Api<GitRepository>,
    repo: &GitRepository,
    ctx: &Context,
) -> Result<Action, ControllerError> {
    use std::sync::atomic::Ordering;
    ctx.metrics.reconciles.fetch_add(1, Ordering::Relaxed);
    let key = object_key(repo);
    let previous = repo.status.clone();
    let mut status = previous.clone().unwrap_or_default();
    let generation = repo.metadata.generation;

    // A new generation is work in progress from the start (Flux's message); a new upstream
    // revision is marked when it is found, unless this already was.
    let mut progress = Progress::new(api, repo, FIELD_MANAGER);
    if let Some(message) = weir_runtime::progress::new_generation(
        previous.as_ref().and_then(|s| s.observed_generation),
        generation,
    ) {
        progress.mark(&message).await;
    }
    let (result, redactor, included) = steps(repo, ctx, &mut status, &mut progress).await;

    status.observed_generation = generation;
    status.last_handled_reconcile_at = handled_reconcile_at(
        repo.annotations().into(),
        previous
            .as_ref()
            .and_then(|s| s.last_handled_reconcile_at.as_deref()),
    );
    let action = match result {
        Ok((outcome, verified)) => {
            ctx.backoff.succeeded(&key);
            let (artifact, new) = match outcome {
                SourceOutcome::Unchanged(a) => (a, None),
                SourceOutcome::NewArtifact {
                    artifact,
                    commit_summary,
                } => (artifact, Some(commit_summary)),
            };
            let message = format!("stored artifact for revision '{}'", artifact.revision);
            condition::remove_condition(&mut status.conditions, types::FETCH_FAILED);
            condition::remove_condition(&mut status.conditions, types::STORAGE_OPERATION_FAILED);
            condition::remove_condition(&mut status.conditions, types::ARTIFACT_OUTDATED);
            condition::set_condition(
                &mut status.conditions,
                weir_api::Condition::new(
                    types::ARTIFACT_IN_STORAGE,
                    weir_api::ConditionStatus::True,
                    reasons::SUCCEEDED,
                    &message,
                )
                .for_generation(generation),
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
            let schedule = Schedule {
                after_success: Some(schedule::jittered(repo.spec.interval.as_std())),
                retry: Duration::ZERO,
                retry_cap: None,
            };
            let decision = decide(&status.conditions, generation, &result, &schedule);
            status.conditions = decision.conditions;
            ctx.events
                .announce(repo, decision.event.as_ref(), "Fetch")
                .await;
            status.artifact = Some(artifact);
            status.observed_ignore.clone_from(&repo.spec.ignore);
            include::record(&mut status, &repo.spec, included);
            verify::record_success(&mut status, repo, verified.as_ref());
            decision.action
        }
        Err(error) => failed(repo, ctx, &mut status, &error, &redactor, &key).await,
    };
    // Compared with what the object holds now: a progressing status written above must be
    // replaced even when the outcome equals the status before it.
    let current = progress.into_written().or(previous);
    apply_status(api, repo, current.as_ref(), &status, FIELD_MANAGER).await?;
    Ok(action)
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
    let included = include::fetch_includes(&ctx.client, repo).await?;
    condition::remove_condition(&mut status.conditions, types::INCLUDE_UNAVAILABLE);
    include::observe(repo, status, &included, progress).await;
    Ok(included)
}

/// Writes Reconciling=True (Flux's `Progressing` reason) and Ready=Unknown before the work a new
/// generation or a new upstream revision needs, as Flux's source-controller does, so kstatus,
/// `kubectl wait` and dependents see it in progress. At most once per reconcile; a reconcile with
/// nothing new writes nothing here.
pub type Progress<'a> = weir_runtime::progress::Progress<'a, GitRepository>;

/// Records a failure: the negative-polarity condition, Ready=False, Reconciling or Stalled, an
/// event; the last good artifact stays in status.
async fn failed(
    repo: &GitRepository,
    ctx: &Context,
    status: &mut GitRepositoryStatus,
    error: &SourceError,
    redactor: &weir_runtime::Redactor,
    key: &str,
) -> Action {
    let generation = repo.metadata.generation;
    let (reason, message) = (error.reason(), redactor.redact(&weir_runtime::chain(error)));
    tracing::warn!(reason, error = message, "reconcile failed");
    verify::record_failure(status, error);
    condition::set_condition(
        &mut status.conditions,
        weir_api::Condition::new(
            error.condition_type(),
            error.condition_status(),
            reason,
            &message,
        )
        .for_generation(generation),
    );
    let result = StepResult::Failed {
        reason: reason.to_owned(),
        disposition: error.disposition(),
        message,
    };
    let interval = repo.spec.interval.as_std();
    let schedule = Schedule {
        after_success: Some(interval),
        retry: ctx.backoff.failed(key),
        retry_cap: Some(interval),
    };
    let decision = decide(&status.conditions, generation, &result, &schedule);
    status.conditions = decision.conditions;
    ctx.events
        .announce(repo, decision.event.as_ref(), "Fetch")
        .await;
    decision.action
}
