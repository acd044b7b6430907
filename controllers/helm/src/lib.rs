//! Weir's helm controller: a `HelmRelease` (helm.toolkit.fluxcd.io/v2) made into a release by
//! the real Helm 4, kept in Helm's own storage (Secrets `sh.helm.release.v1.*`) so that a
//! person's `helm list`, `helm history`, `helm rollback` and `helm get values` see and act on
//! the same releases, and a release Flux's helm-controller made is taken over as it is.
//!
//! Behaviour worth knowing (Flux's, unless said otherwise):
//! - `spec.chart` makes a HelmChart `<namespace>-<name>` in the source's namespace (server-side
//!   applied under Flux's field manager); `spec.chartRef` names an existing HelmChart. The chart
//!   artifact is downloaded and its digest verified; the release waits while the HelmChart is
//!   not Ready for its current spec, with the HelmChart's own message.
//! - Values: `valuesFrom` in order, then `values`; their digest, the chart's name and version
//!   decide whether an upgrade is due, compared with the release in storage (not with this
//!   object's status), so a release made by Flux or by hand with the same chart and values is
//!   left alone.
//! - Each reconcile reads the release's history from storage and takes the one next action
//!   ([`reconcile::next`]) until the release is in sync: a `pending-*` release (Helm or Weir
//!   killed mid-action) is marked failed first, with Flux's message, so "another operation is
//!   in progress" never blocks it; a failed install or upgrade counts against its
//!   `remediation.retries`, is remediated (uninstall; rollback or uninstall) while retries
//!   remain, and with none left the object is Stalled until its desired state changes or
//!   `reconcile.fluxcd.io/resetAt` is set.
//! - Helm runs as a process per action, without a shell, with its own empty config, cache and
//!   plugin directories, impersonating `serviceAccountName` when set. Waiting for readiness is
//!   Helm 4's kstatus `watcher`. Stopping Weir interrupts a running Helm with SIGTERM, so the
//!   release ends failed rather than pending.
//! - Deleting a HelmRelease uninstalls its release (not when suspended) and deletes the
//!   HelmChart made for it.

mod actions;
pub mod crds;
pub mod drift;
pub mod error;
pub mod helm;
pub mod lock;
pub mod postrender;
pub mod reconcile;
pub mod rollback;
pub mod storage;
pub mod values;

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use kube::{
    Api, ResourceExt,
    runtime::{controller::Action, reflector::ObjectRef},
};
use weir_api::{
    HelmChart, HelmRelease, Kustomization, condition, kustomize::DependencyKind, reasons, types,
};
use weir_kustomize::fetch::{ArtifactFetcher, Limits};
use weir_runtime::{
    ControllerError,
    conclude::{Ending, Pass},
    controller::{AbortOnDropHandle, Base, Reconciler, Runtime, Synced},
    decision::StepResult,
    schedule,
    watches::Watches,
};

use crate::{error::HelmReleaseError, reconcile::Attempt};

/// The field manager of status writes.
pub const STATUS_FIELD_MANAGER: &str = "weir-helm-controller";
/// The name events are reported under.
pub const CONTROLLER_NAME: &str = "weir-helm-controller";

/// Settings of the helm controller (`weir controllers` flags).
#[derive(Debug, Clone)]
pub struct Config {
    /// Watch only this namespace; all namespaces when `None`.
    pub namespace: Option<String>,
    /// How many HelmReleases are reconciled at once.
    pub concurrency: u16,
    /// The `helm` binary (Helm 4).
    pub helm_path: PathBuf,
    /// The kubeconfig Helm connects with; `None` leaves it to Helm (`KUBECONFIG`, or the
    /// pod's service account in a cluster).
    pub kubeconfig: Option<PathBuf>,
    /// Where verified chart artifacts are cached by digest.
    pub cache_dir: PathBuf,
    /// What runs `spec.postRenderers`; `None` refuses them (Stalled, naming the field).
    pub post_renderer: Option<PostRendererConfig>,
    /// How soon a release waiting on a dependency or its chart checks again.
    pub dependency_requeue: Duration,
    /// Bounds on downloading charts.
    pub artifact_limits: Limits,
    /// The process's shared watches; when `None`, the controller watches on its own.
    pub watches: Option<Watches>,
}

/// The programs `spec.postRenderers` run through: Helm's `weir-post-render` plugin is the
/// `weir` binary (its `helm-post-render` subcommand), which builds with `kustomize`.
#[derive(Debug, Clone)]
pub struct PostRendererConfig {
    pub weir_binary: PathBuf,
    pub kustomize: PathBuf,
}

/// Counters read by tests and benchmarks, served as Prometheus counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Reconciles run.
    pub reconciles: AtomicU64,
    /// Helm processes run.
    pub helm_runs: AtomicU64,
}

impl Metrics {
    /// Counts one Helm process.
    pub fn helm_run(&self) {
        self.helm_runs.fetch_add(1, Ordering::Relaxed);
    }
}

impl weir_runtime::metrics::Counters for Metrics {
    fn counters(&self) -> Vec<(&'static str, &'static str, &AtomicU64)> {
        vec![
            (
                "weir_helm_reconciles_total",
                "HelmRelease reconciles run.",
                &self.reconciles,
            ),
            (
                "weir_helm_processes_total",
                "Helm processes run (install, upgrade, test, rollback, uninstall).",
                &self.helm_runs,
            ),
        ]
    }
}

/// Shared by the reconciles of the helm controller.
pub struct Context {
    /// The client, Events and backoff the runtime uses.
    pub base: Base,
    pub config: Config,
    pub fetcher: ArtifactFetcher,
    pub helm: helm::Helm,
    pub metrics: Arc<Metrics>,
    /// Which resource serves each kind of a release's objects (drift detection).
    pub kinds: weir_ssa::KindCache,
    /// The clients a chart's CRDs are applied with when `serviceAccountName` is impersonated.
    pub crd_clients: crds::Clients,
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
    #[error("cannot prepare the chart cache")]
    Cache(#[source] weir_kustomize::fetch::FetchError),
    #[error("helm binary {0:?} not found (set --helm-path)")]
    HelmNotFound(PathBuf),
    #[error("cannot prepare Helm's home")]
    Helm(#[source] helm::HelmError),
}

/// A running helm controller.
#[derive(Debug)]
pub struct Handle {
    pub metrics: Arc<Metrics>,
    /// Whether the controller's caches have synced.
    pub synced: Synced,
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

/// What of a HelmChart starts its releases: a new artifact or a new Ready condition.
#[allow(clippy::unnecessary_wraps)] // The signature `predicate_filter` asks for.
fn chart_trigger(chart: &HelmChart) -> Option<u64> {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut hasher = DefaultHasher::new();
    let status = chart.status.as_ref();
    status
        .and_then(|s| s.artifact.as_ref())
        .map(|a| (&a.revision, &a.digest))
        .hash(&mut hasher);
    status
        .and_then(|s| condition::find_condition(&s.conditions, types::READY))
        .map(|c| (c.status, &c.message, c.observed_generation))
        .hash(&mut hasher);
    Some(hasher.finish())
}

/// Whether `hr` takes its chart from `chart`.
fn uses_chart(hr: &HelmRelease, chart: &HelmChart) -> bool {
    let hr_ns = hr.namespace().unwrap_or_default();
    let chart_ns = chart.namespace().unwrap_or_default();
    if let Some(template) = &hr.spec.chart {
        let ns = template
            .spec
            .source_ref
            .namespace
            .as_deref()
            .unwrap_or(&hr_ns);
        return ns == chart_ns && hr.helm_chart_name() == chart.name_any();
    }
    hr.spec.chart_ref.as_ref().is_some_and(|r| {
        r.name == chart.name_any() && r.namespace.as_deref().unwrap_or(&hr_ns) == chart_ns
    })
}

/// Whether `hr` lists `dependency`, an object of `kind`, in `dependsOn`.
fn depends_on<K: ResourceExt>(hr: &HelmRelease, kind: DependencyKind, dependency: &K) -> bool {
    let hr_ns = hr.namespace().unwrap_or_default();
    hr.spec.depends_on.iter().any(|d| {
        d.kind.unwrap_or(DependencyKind::HelmRelease) == kind
            && d.name == dependency.name_any()
            && Some(d.namespace.as_deref().unwrap_or(&hr_ns)) == dependency.namespace().as_deref()
    })
}

/// Starts the controller. With `shutdown_on_signal`, SIGTERM and SIGINT stop it gracefully.
#[allow(clippy::unused_async)] // The same shape as the other controllers' `start`.
pub async fn start(
    client: kube::Client,
    config: Config,
    shutdown_on_signal: bool,
) -> Result<Handle, StartError> {
    let mut config = config;
    config.helm_path = weir_kustomize::build::find_binary(&config.helm_path)
        .ok_or_else(|| StartError::HelmNotFound(config.helm_path.clone()))?;
    let fetcher = ArtifactFetcher::new(config.cache_dir.clone(), config.artifact_limits)
        .map_err(StartError::Cache)?;
    let mut helm = helm::Helm::new(config.helm_path.clone()).map_err(StartError::Helm)?;
    if let Some(post_renderer) = &config.post_renderer {
        helm = helm
            .with_post_renderer(&post_renderer.weir_binary)
            .map_err(StartError::Helm)?;
    }
    let metrics = Arc::new(Metrics::default());
    let watches = config
        .watches
        .clone()
        .unwrap_or_else(|| Watches::new(client.clone()));
    let (namespace, concurrency) = (config.namespace.clone(), config.concurrency);
    let ctx = Arc::new(Context {
        base: Base::new(client, CONTROLLER_NAME),
        config,
        fetcher,
        helm,
        metrics: metrics.clone(),
        kinds: weir_ssa::KindCache::default(),
        crd_clients: crds::Clients::default(),
    });
    let mut synced = Synced::default();
    let namespace = namespace.as_deref();
    let controller = weir_runtime::controller::watch::<HelmRelease>(
        &watches,
        namespace,
        concurrency,
        &mut synced,
    );
    let charts = watches
        .subscribe::<HelmChart>(namespace, &mut synced)
        .changed(chart_trigger);
    let dependencies = watches
        .subscribe::<HelmRelease>(namespace, &mut synced)
        .changed(weir_runtime::trigger::readiness_trigger::<HelmRelease>);
    let kustomizations = watches
        .subscribe::<Kustomization>(namespace, &mut synced)
        .changed(weir_runtime::trigger::readiness_trigger::<Kustomization>);
    let (by_chart, by_dependency, by_kustomization) =
        (controller.store(), controller.store(), controller.store());
    let controller = controller
        .watches_shared_stream(charts, move |chart: Arc<HelmChart>| {
            by_chart
                .state()
                .into_iter()
                .filter(|hr| uses_chart(hr, &chart))
                .map(|hr| ObjectRef::from_obj(&*hr))
                .collect::<Vec<_>>()
        })
        .watches_shared_stream(dependencies, move |dependency: Arc<HelmRelease>| {
            by_dependency
                .state()
                .into_iter()
                .filter(|hr| depends_on(hr, DependencyKind::HelmRelease, &*dependency))
                .map(|hr| ObjectRef::from_obj(&*hr))
                .collect::<Vec<_>>()
        })
        // Weir's cross-kind dependsOn: a Kustomization that becomes Ready starts the
        // HelmReleases that depend on it.
        .watches_shared_stream(kustomizations, move |ks: Arc<Kustomization>| {
            by_kustomization
                .state()
                .into_iter()
                .filter(|hr| depends_on(hr, DependencyKind::Kustomization, &*ks))
                .map(|hr| ObjectRef::from_obj(&*hr))
                .collect::<Vec<_>>()
        });
    let controller = weir_runtime::controller::spawn(controller, ctx, shutdown_on_signal);
    tracing::info!("helm controller started");
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

impl Reconciler<HelmRelease> for Context {
    async fn apply(
        &self,
        api: &Api<HelmRelease>,
        hr: Arc<HelmRelease>,
    ) -> Result<Action, ControllerError> {
        self.metrics.reconciles.fetch_add(1, Ordering::Relaxed);
        let mut pass = Pass::begin(api, &*hr, STATUS_FIELD_MANAGER).await;
        let mut attempt = Attempt::default();
        // Helm's own timeouts bound each action; the whole reconcile (up to four actions and
        // their waits) is bounded so that no stuck call holds the object for ever.
        let bound = actions::bound(&hr);
        let result = tokio::time::timeout(
            bound,
            reconcile::run(&hr, self, &mut pass.status, &mut attempt),
        )
        .await
        .unwrap_or(Err(HelmReleaseError::Abandoned(bound)));
        let step = match &result {
            Ok(()) => {
                let (reason, message) = attempt
                    .released
                    .clone()
                    .unwrap_or((reasons::RECONCILIATION_SUCCEEDED, String::new()));
                let step = StepResult::succeeded(reason, &message);
                if attempt.acted {
                    step.announcing(reason, message)
                } else {
                    step
                }
            }
            Err(error) => StepResult::failed(error, &weir_runtime::Redactor::default()),
        };
        let interval = hr.spec.interval.as_std();
        let ending = Ending::new(
            "Reconcile",
            Some(schedule::jittered(interval)),
            Some(interval),
        );
        Ok(pass.finish(self, &step, ending).await?)
    }

    async fn cleanup(&self, hr: Arc<HelmRelease>) -> Result<Action, ControllerError> {
        if !hr.spec.suspend {
            actions::uninstall_on_delete(self, &hr)
                .await
                .map_err(ControllerError::cleanup)?;
        }
        reconcile::delete_chart(&hr, self)
            .await
            .map_err(|e| ControllerError::cleanup(HelmReleaseError::Kube(e)))?;
        Ok(Action::await_change())
    }
}
