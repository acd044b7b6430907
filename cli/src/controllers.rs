//! `weir controllers`: runs the selected controllers in one process. Controllers share nothing
//! but the process's watches (one watcher and cache per kind, read by every controller that
//! reads the kind); each writes only through the API server.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::ValueEnum;

/// The controllers this binary can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Controller {
    /// GitRepository, HelmRepository, HelmChart → artifacts served over HTTP.
    Source,
    /// Kustomization → built, validated, applied, pruned and health-checked objects.
    Kustomize,
    /// ImageRepository, ImagePolicy, ImageUpdateAutomation → new images committed to git.
    Image,
    /// HelmRelease → releases made by the real Helm 4, in Helm's own storage.
    Helm,
}

/// Flags of `weir controllers`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Controllers to run, comma-separated; all of them when omitted.
    #[arg(long, value_delimiter = ',', value_enum)]
    pub controllers: Vec<Controller>,
    /// Watch only this namespace (all namespaces when omitted).
    #[arg(long, env = "WEIR_WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// How many objects of each kind are reconciled at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: u16,
    /// Directory where the source controller stores artifacts.
    #[arg(long, default_value = "/var/lib/weir/artifacts")]
    pub storage_path: PathBuf,
    /// Address the artifact HTTP server listens on.
    #[arg(long, default_value = "0.0.0.0:9090")]
    pub storage_addr: SocketAddr,
    /// `host:port` advertised in artifact URLs (defaults to the listening address).
    #[arg(long)]
    pub storage_adv_addr: Option<String>,
    /// How many artifacts to keep per object, the current one included.
    #[arg(long = "artifact-retention-records", default_value_t = 2)]
    pub artifact_retention: usize,
    /// Refuse references to another namespace: a Kustomization's or ImageUpdateAutomation's
    /// `sourceRef`, an ImagePolicy's `imageRepositoryRef` (Flux's multi-tenancy lockdown).
    #[arg(long)]
    pub no_cross_namespace_refs: bool,
    /// Flags of the kustomize controller.
    #[command(flatten)]
    pub kustomize: Box<KustomizeArgs>,
    /// Flags of the image controller.
    #[command(flatten)]
    pub image: Box<ImageArgs>,
    /// Flags of the helm controller.
    #[command(flatten)]
    pub helm: Box<HelmArgs>,
    /// Address of the Prometheus metrics and health endpoints (`/metrics`, `/healthz`).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub metrics_addr: SocketAddr,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Flags of leader election.
    #[command(flatten)]
    pub leader_election: Box<LeaderElectionArgs>,
}

/// Flags of leader election, as Flux's controllers name them.
#[derive(Debug, clap::Args)]
pub struct LeaderElectionArgs {
    /// Run a controller only while holding its Lease (`weir-<controller>-leader-election`), so
    /// that of several replicas one reconciles and the others stand by.
    #[arg(long)]
    pub enable_leader_election: bool,
    /// The namespace of the Leases (the pod's namespace when omitted).
    #[arg(long)]
    pub leader_election_namespace: Option<String>,
    /// How long a Lease holds after its last renewal; a standby takes over a leader that
    /// stopped renewing after this long.
    #[arg(long, default_value = "35s", value_parser = parse_duration)]
    pub leader_election_lease_duration: Duration,
    /// How long after its last renewal the leader renews the Lease again.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub leader_election_renew_deadline: Duration,
    /// How often a standby looks at the Leases again.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub leader_election_retry_period: Duration,
}

/// Flags of the kustomize controller (boxed in [`Args`] to keep the command enum small).
#[derive(Debug, clap::Args)]
pub struct KustomizeArgs {
    /// The `kustomize` binary the kustomize controller builds overlays with (looked up on
    /// `PATH` when it is a bare name).
    #[arg(long, default_value = "kustomize")]
    pub kustomize_path: PathBuf,
    /// Directory where the kustomize controller caches verified artifacts by digest.
    #[arg(long, default_value = "/var/cache/weir/artifacts")]
    pub artifact_cache_path: PathBuf,
    /// How soon a Kustomization whose dependencies are not ready checks them again.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub requeue_dependency: Duration,
    /// How long downloading one artifact may take, from request to last byte.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub artifact_fetch_timeout: Duration,
    /// The largest artifact (compressed, in bytes) the kustomize controller downloads.
    #[arg(long, default_value_t = weir_kustomize::fetch::Limits::default().max_size)]
    pub artifact_max_size: u64,
    /// The most bytes one artifact may extract to.
    #[arg(long, default_value_t = weir_kustomize::fetch::Limits::default().max_untar_size)]
    pub artifact_max_untar_size: u64,
    /// The service account a Kustomization without `serviceAccountName` impersonates (in its
    /// own namespace).
    #[arg(long)]
    pub default_service_account: Option<String>,
    /// The kustomize controller's Flux feature gates, `Name=true|false`, comma-separated:
    /// `StrictPostBuildSubstitutions` (default true: a postBuild variable with no value or
    /// default fails the build).
    #[arg(long, value_delimiter = ',')]
    pub feature_gates: Vec<String>,
}

/// Flags of the image controller (boxed in [`Args`] to keep the command enum small).
#[derive(Debug, clap::Args)]
pub struct ImageArgs {
    /// A pull-through mirror the image controller reads a registry through, as
    /// `registry=host[:port]` (repeatable), such as `docker.io=mirror.internal:5000`.
    #[arg(long = "registry-mirror", value_name = "REGISTRY=MIRROR")]
    pub registry_mirrors: Vec<String>,
}

/// Flags of the helm controller (boxed in [`Args`] to keep the command enum small).
#[derive(Debug, clap::Args)]
pub struct HelmArgs {
    /// The `helm` binary (Helm 4) the helm controller releases with (looked up on `PATH` when
    /// it is a bare name).
    #[arg(long, default_value = "helm")]
    pub helm_path: PathBuf,
    /// Directory where the helm controller caches verified chart artifacts by digest.
    #[arg(long, default_value = "/var/cache/weir/charts")]
    pub chart_cache_path: PathBuf,
}

/// A Go-style duration flag (`30s`, `1m30s`), as Flux's flags take them.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    text.parse::<weir_api::GoDuration>()
        .map(|d| d.as_std())
        .map_err(|e| e.to_string())
}

impl Controller {
    /// The controller's name, as `--controllers` takes it and its Lease is named.
    fn name(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Kustomize => "kustomize",
            Self::Image => "image",
            Self::Helm => "helm",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Runs the selected controllers until SIGTERM or SIGINT.
pub fn run(args: &Args) -> ExitCode {
    init_logging(args.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("weir controllers: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run_async(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("weir controllers: {message}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run_async(args: &Args) -> Result<(), String> {
    let selected: Vec<Controller> = if args.controllers.is_empty() {
        Controller::value_variants().to_vec()
    } else {
        args.controllers.clone()
    };
    // Flag values are checked before anything connects.
    let feature_gates = weir_kustomize::FeatureGates::parse(&args.kustomize.feature_gates)
        .map_err(|e| format!("--feature-gates: {e}"))?;
    let mut terminated = Termination::listen();
    weir_runtime::tls::install_crypto_provider();
    // One configuration for the process: the kustomize controller builds impersonating clients
    // from it, every other controller shares the client made from it.
    let mut kube_config = kube::Config::infer()
        .await
        .map_err(|e| format!("cannot connect to the Kubernetes API (check KUBECONFIG): {e}"))?;
    identify(&mut kube_config);
    let client = weir_runtime::client::new(kube_config.clone())
        .map_err(|e| format!("cannot connect to the Kubernetes API (check KUBECONFIG): {e}"))?;
    let metrics_listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .map_err(|e| format!("cannot listen on --metrics-addr {}: {e}", args.metrics_addr))?;
    let election = &args.leader_election;
    let health = crate::metrics::Health::new(election.enable_leader_election);
    weir_runtime::metrics::register(&mut health.registry());
    tokio::spawn(crate::metrics::serve(metrics_listener, health.clone()));
    let leadership =
        match elect(election, &client, &kube_config, &selected, &mut terminated).await? {
            Some(Some(held)) => Some(held),
            Some(None) => return Ok(()),
            None => None,
        };
    let watches = weir_runtime::watches::Watches::new(client.clone());
    let mut synced = weir_runtime::controller::Synced::default();
    let mut running = vec![];
    // Starts a controller: its counters served, its caches counted in readiness, run to the end.
    macro_rules! start {
        ($start:expr) => {{
            let handle = $start.await.map_err(|e| weir_runtime::chain(&e))?;
            health
                .registry()
                .register_collector(Box::new(weir_runtime::metrics::CounterSet(
                    handle.metrics.clone(),
                )));
            synced.extend(&handle.synced);
            running.push(tokio::spawn(handle.wait()));
        }};
    }
    for controller in selected {
        match controller {
            Controller::Source => {
                let config = weir_source::Config {
                    storage_path: args.storage_path.clone(),
                    storage_addr: args.storage_addr,
                    storage_adv_addr: args.storage_adv_addr.clone(),
                    artifact_retention: args.artifact_retention,
                    namespace: args.namespace.clone(),
                    concurrency: args.concurrency,
                    watches: Some(watches.clone()),
                };
                start!(weir_source::start(client.clone(), config, true));
            }
            Controller::Kustomize => {
                let config = kustomize_config(args, feature_gates, &watches);
                start!(weir_kustomize::start(kube_config.clone(), config, true));
            }
            Controller::Image => {
                let config = weir_image::Config {
                    namespace: args.namespace.clone(),
                    concurrency: args.concurrency,
                    mirrors: weir_image::scan::Mirrors::parse(
                        args.image.registry_mirrors.iter().map(String::as_str),
                    )?,
                    no_cross_namespace_refs: args.no_cross_namespace_refs,
                    watches: Some(watches.clone()),
                    ..weir_image::Config::default()
                };
                start!(weir_image::start(client.clone(), config, true));
            }
            Controller::Helm => {
                let config = helm_config(args, &watches);
                start!(weir_helm::start(client.clone(), config, true));
            }
        }
    }
    health.started(synced);
    run_to_the_end(running, leadership, &mut terminated).await;
    Ok(())
}

/// How long the controllers may take to stop after SIGTERM before the process ends anyway.
const STOP_GRACE: Duration = Duration::from_secs(20);

/// Waits for the controllers to stop (on SIGTERM), then releases the Leases; exits at once if a
/// Lease is lost meanwhile.
async fn run_to_the_end<T>(
    running: Vec<tokio::task::JoinHandle<T>>,
    mut leadership: Option<crate::leader::Leadership>,
    terminated: &mut Termination,
) {
    let mut stopped = std::pin::pin!(futures::future::join_all(running));
    let lost = async {
        match &mut leadership {
            Some(held) => held.lost().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = &mut stopped => {}
        lease = lost => {
            // Another replica may be writing already: stop now, without a graceful end.
            tracing::error!(lease, "leadership lost: exiting");
            std::process::exit(1);
        }
        () = terminated.recv() => {
            // The controllers stop on the same signal; one that started after it came never saw
            // it, so the wait is bounded.
            if tokio::time::timeout(STOP_GRACE, &mut stopped).await.is_err() {
                tracing::warn!(grace = ?STOP_GRACE, "controllers still running after SIGTERM: stopping");
            }
        }
    }
    if let Some(held) = leadership {
        held.release().await;
    }
}

/// SIGTERM and SIGINT, listened for from the start: a signal that comes while the process waits
/// for leadership, or before its controllers listen themselves, is not lost.
struct Termination {
    term: Option<tokio::signal::unix::Signal>,
}

impl Termination {
    fn listen() -> Self {
        let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .inspect_err(|error| tracing::warn!(%error, "cannot listen for SIGTERM"))
            .ok();
        Self { term }
    }

    /// Resolves on SIGTERM or SIGINT.
    async fn recv(&mut self) {
        let term = async {
            match &mut self.term {
                Some(term) => {
                    term.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = term => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
}

/// With `--enable-leader-election`, waits until this process holds the Leases of `selected`:
/// `Some(Some(_))` then, `Some(None)` when terminated while standing by; `None` without leader
/// election.
async fn elect(
    election: &LeaderElectionArgs,
    client: &kube::Client,
    kube_config: &kube::Config,
    selected: &[Controller],
    terminated: &mut Termination,
) -> Result<Option<Option<crate::leader::Leadership>>, String> {
    if !election.enable_leader_election {
        return Ok(None);
    }
    let namespace = crate::leader::namespace(
        election.leader_election_namespace.as_deref(),
        &kube_config.default_namespace,
    );
    let names: Vec<&str> = selected.iter().map(|c| c.name()).collect();
    let identity = crate::leader::identity();
    let acquire = crate::leader::acquire(
        client,
        &namespace,
        &identity,
        &names,
        crate::leader::Timing {
            lease_duration: election.leader_election_lease_duration,
            renew_deadline: election.leader_election_renew_deadline,
            retry_period: election.leader_election_retry_period,
        },
    );
    tokio::select! {
        held = acquire => Ok(Some(Some(held?))),
        () = terminated.recv() => Ok(Some(None)),
    }
}

/// The kustomize controller's settings from the flags.
fn kustomize_config(
    args: &Args,
    feature_gates: weir_kustomize::FeatureGates,
    watches: &weir_runtime::watches::Watches,
) -> weir_kustomize::Config {
    weir_kustomize::Config {
        namespace: args.namespace.clone(),
        concurrency: args.concurrency,
        kustomize_path: args.kustomize.kustomize_path.clone(),
        cache_dir: args.kustomize.artifact_cache_path.clone(),
        dependency_requeue: args.kustomize.requeue_dependency,
        artifact_limits: weir_kustomize::fetch::Limits {
            timeout: args.kustomize.artifact_fetch_timeout,
            max_size: args.kustomize.artifact_max_size,
            max_untar_size: args.kustomize.artifact_max_untar_size,
        },
        lockdown: weir_kustomize::Lockdown {
            no_cross_namespace_refs: args.no_cross_namespace_refs,
            default_service_account: args.kustomize.default_service_account.clone(),
        },
        feature_gates,
        watches: Some(watches.clone()),
    }
}

/// The helm controller's settings from the flags.
fn helm_config(args: &Args, watches: &weir_runtime::watches::Watches) -> weir_helm::Config {
    weir_helm::Config {
        namespace: args.namespace.clone(),
        concurrency: args.concurrency,
        helm_path: args.helm.helm_path.clone(),
        kubeconfig: std::env::var_os("KUBECONFIG").map(PathBuf::from),
        // Helm runs this very binary as its post-renderer plugin, building with kustomize.
        post_renderer: std::env::current_exe().ok().and_then(|weir_binary| {
            weir_kustomize::build::find_binary(&args.kustomize.kustomize_path).map(|kustomize| {
                weir_helm::PostRendererConfig {
                    weir_binary,
                    kustomize,
                }
            })
        }),
        cache_dir: args.helm.chart_cache_path.clone(),
        dependency_requeue: args.kustomize.requeue_dependency,
        artifact_limits: weir_kustomize::fetch::Limits {
            timeout: args.kustomize.artifact_fetch_timeout,
            max_size: args.kustomize.artifact_max_size,
            max_untar_size: args.kustomize.artifact_max_untar_size,
        },
        watches: Some(watches.clone()),
    }
}

/// Makes requests say who sent them (audit logs, API priority and fairness), as Flux's
/// controllers' do; kube-rs sends no User-Agent of its own.
fn identify(config: &mut kube::Config) {
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(concat!("weir/", env!("CARGO_PKG_VERSION"))),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_weirs_user_agent() {
        let mut config = kube::Config::new("https://127.0.0.1:6443".parse().unwrap());
        identify(&mut config);
        let agent = config
            .headers
            .iter()
            .find(|(name, _)| name == http::header::USER_AGENT)
            .map(|(_, value)| value.to_str().unwrap());
        assert_eq!(agent, Some(concat!("weir/", env!("CARGO_PKG_VERSION"))));
    }
}
