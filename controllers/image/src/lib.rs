//! Weir's image controller: `ImageRepository` scans a registry's tags into a shared, compact tag
//! list; `ImagePolicy` picks the latest allowed tag from it; `ImageUpdateAutomation` writes the
//! picks into git at the `$imagepolicy` markers, commits and pushes.
//!
//! The three reconcilers run in one process and share one thing: the [`store::TagStore`], so a
//! repository's tags are held once however many policies read them.

mod automation_controller;
pub mod error;
pub mod lock;
pub mod policy;
mod policy_controller;
pub mod release;
mod repository_controller;
pub mod scan;
pub mod setters;
pub mod signing;
pub mod store;
pub mod template;
pub mod update;

use std::sync::{Arc, atomic::AtomicU64};

use kube::{Client, ResourceExt, runtime::reflector::ObjectRef};
use weir_api::{ImagePolicy, ImageRepository, ImageUpdateAutomation};
use weir_runtime::{
    controller::{AbortOnDropHandle, Base, Runtime, Synced, spawn, watch},
    watches::Watches,
};

use crate::store::TagStore;

pub use weir_api::meta::FINALIZER;
/// The field manager of status writes.
pub const FIELD_MANAGER: &str = "weir-image-controller";
/// The name events are reported under.
pub const CONTROLLER_NAME: &str = "weir-image-controller";

/// Settings of the image controller (`weir controllers` flags).
#[derive(Debug, Clone)]
pub struct Config {
    /// Watch only this namespace (and `extra_namespaces`); all namespaces when `None`.
    pub namespace: Option<String>,
    /// With `namespace`, watch these namespaces too: one process serving several namespaces,
    /// whose ImagePolicies may then use each other's ImageRepositories (as `accessFrom`
    /// allows). Ignored when `namespace` is `None`.
    pub extra_namespaces: Vec<String>,
    /// How many objects of each kind are reconciled at once.
    pub concurrency: u16,
    /// How many tags to ask a registry for per page of the tag list.
    pub tag_page_size: usize,
    /// Pull-through mirrors of registries (`--registry-mirror`).
    pub mirrors: scan::Mirrors,
    /// Refuse an ImageUpdateAutomation's `sourceRef` and an ImagePolicy's `imageRepositoryRef`
    /// to another namespace (Flux's `--no-cross-namespace-refs`).
    pub no_cross_namespace_refs: bool,
    /// The process's shared watches (`weir controllers`); when `None`, the controller watches on
    /// its own.
    pub watches: Option<Watches>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            namespace: None,
            extra_namespaces: Vec::new(),
            concurrency: 4,
            tag_page_size: scan::PAGE_SIZE,
            mirrors: scan::Mirrors::default(),
            no_cross_namespace_refs: false,
            watches: None,
        }
    }
}

/// Counters read by tests and benchmarks, exported as Prometheus metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// ImageRepository scans run.
    pub scans: AtomicU64,
    /// Pages of tag lists read from registries.
    pub tag_pages: AtomicU64,
    /// ImagePolicy evaluations run.
    pub policy_evaluations: AtomicU64,
    /// ImageUpdateAutomation runs.
    pub automation_runs: AtomicU64,
    /// Commits pushed by automations.
    pub pushes: AtomicU64,
    /// Pushes rejected because the branch moved, then retried.
    pub push_retries: AtomicU64,
}

/// Served at `/metrics` by `weir controllers`, as Prometheus counters.
impl weir_runtime::metrics::Counters for Metrics {
    fn counters(&self) -> Vec<(&'static str, &'static str, &AtomicU64)> {
        vec![
            (
                "weir_image_scans_total",
                "ImageRepository scans run.",
                &self.scans,
            ),
            (
                "weir_image_tag_pages_total",
                "Pages of tag lists read from registries.",
                &self.tag_pages,
            ),
            (
                "weir_image_policy_evaluations_total",
                "ImagePolicy evaluations run.",
                &self.policy_evaluations,
            ),
            (
                "weir_image_automation_runs_total",
                "ImageUpdateAutomation runs.",
                &self.automation_runs,
            ),
            (
                "weir_image_pushes_total",
                "Commits pushed by ImageUpdateAutomations.",
                &self.pushes,
            ),
            (
                "weir_image_push_retries_total",
                "Pushes rejected because the branch moved, then retried.",
                &self.push_retries,
            ),
        ]
    }
}

/// Shared by the reconciles of the image controller.
pub struct Context {
    /// The client, Events and backoff the runtime uses.
    pub base: Base,
    pub metrics: Arc<Metrics>,
    pub store: Arc<TagStore>,
    pub tag_page_size: usize,
    pub mirrors: scan::Mirrors,
    /// `--no-cross-namespace-refs`.
    pub no_cross_namespace_refs: bool,
    /// The namespaces watched; all when `None`.
    pub namespaces: Option<Vec<String>>,
    /// Automations (by name and URL) with a clone or push still running: one thread each.
    pub in_flight: weir_git::bounded::InFlight,
}

impl Context {
    /// Whether this controller watches (and so scans the ImageRepositories of) `namespace`.
    #[must_use]
    pub fn watches(&self, namespace: &str) -> bool {
        self.namespaces
            .as_ref()
            .is_none_or(|all| all.iter().any(|n| n == namespace))
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

/// Errors that stop the controller from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// A running image controller.
#[derive(Debug)]
pub struct Handle {
    pub metrics: Arc<Metrics>,
    /// Whether the controllers' caches have synced.
    pub synced: Synced,
    /// The scanned tag lists (read by tests and benchmarks).
    pub store: Arc<TagStore>,
    /// Stopped when the handle is dropped.
    controllers: Vec<AbortOnDropHandle<()>>,
}

impl Handle {
    /// Runs until the controllers stop (on SIGTERM/SIGINT when `shutdown_on_signal`).
    pub async fn wait(self) {
        for task in self.controllers {
            let _ = task.await;
        }
    }

    /// Stops the controllers.
    pub fn abort(&self) {
        for task in &self.controllers {
            task.abort();
        }
    }
}

/// Starts the ImageRepository, ImagePolicy and ImageUpdateAutomation controllers. With
/// `shutdown_on_signal`, SIGTERM and SIGINT stop them gracefully.
// Async like the other controllers' `start`, so `weir controllers` starts them all alike.
#[allow(clippy::unused_async)]
pub async fn start(
    client: Client,
    config: Config,
    shutdown_on_signal: bool,
) -> Result<Handle, StartError> {
    if config.concurrency == 0 || config.tag_page_size == 0 {
        return Err(StartError::Config(
            "concurrency and tag_page_size must be at least 1".into(),
        ));
    }
    weir_runtime::tls::install_crypto_provider();
    weir_git::bound_socket_waits();
    let metrics = Arc::new(Metrics::default());
    let store = Arc::new(TagStore::default());
    let ctx = Arc::new(Context {
        base: Base::new(client.clone(), CONTROLLER_NAME),
        metrics: metrics.clone(),
        store: store.clone(),
        tag_page_size: config.tag_page_size,
        mirrors: config.mirrors,
        no_cross_namespace_refs: config.no_cross_namespace_refs,
        namespaces: config.namespace.clone().map(|ns| {
            let mut all = vec![ns];
            for extra in &config.extra_namespaces {
                if !all.contains(extra) {
                    all.push(extra.clone());
                }
            }
            all
        }),
        in_flight: weir_git::bounded::InFlight::default(),
    });
    // One set of controllers per watched namespace (one for all namespaces), sharing `ctx`.
    let scopes: Vec<Option<String>> = match &ctx.namespaces {
        None => vec![None],
        Some(all) => all.iter().cloned().map(Some).collect(),
    };
    let watches = config
        .watches
        .clone()
        .unwrap_or_else(|| Watches::new(client.clone()));
    let mut synced = Synced::default();
    let mut controllers = Vec::new();
    for ns in &scopes {
        controllers.extend(spawn_scope(
            &watches,
            ns.as_deref(),
            &scopes,
            &ctx,
            config.concurrency,
            &mut synced,
            shutdown_on_signal,
        ));
    }
    tracing::info!("image controller started");
    Ok(Handle {
        metrics,
        synced,
        store,
        controllers,
    })
}

/// The policies of `store` that name `repo`, in its namespace or (with `namespace`) another.
fn policies_of(
    store: &kube::runtime::reflector::Store<ImagePolicy>,
    repo: &ImageRepository,
) -> Vec<ObjectRef<ImagePolicy>> {
    let key = (repo.namespace().unwrap_or_default(), repo.name_any());
    store
        .state()
        .into_iter()
        .filter(|p| policy_controller::repository_key(p) == key)
        .map(|p| ObjectRef::from_obj(&*p))
        .collect()
}

/// Starts the three controllers for the objects of `ns` (all namespaces when `None`). A policy
/// may name a repository of any namespace in `scopes`, so its controller watches them all.
fn spawn_scope(
    watches: &Watches,
    ns: Option<&str>,
    scopes: &[Option<String>],
    ctx: &Arc<Context>,
    concurrency: u16,
    synced: &mut Synced,
    shutdown_on_signal: bool,
) -> Vec<AbortOnDropHandle<()>> {
    let repositories = watch::<ImageRepository>(watches, ns, concurrency, synced);
    let mut policies = watch::<ImagePolicy>(watches, ns, concurrency, synced);
    // A new scan (the repository's status changes) re-evaluates its policies.
    for repo_ns in scopes {
        let policy_store = policies.store();
        policies = policies.watches_shared_stream(
            watches.subscribe::<ImageRepository>(repo_ns.as_deref(), synced),
            move |repo| policies_of(&policy_store, &repo),
        );
    }
    let automations_of_ns = watch::<ImageUpdateAutomation>(watches, ns, concurrency, synced);
    let automation_store = automations_of_ns.store();
    // A policy's new pick runs the automations of its namespace.
    let automations = automations_of_ns.watches_shared_stream(
        watches.subscribe::<ImagePolicy>(ns, synced),
        move |policy| {
            let namespace = policy.namespace();
            automation_store
                .state()
                .into_iter()
                .filter(|a| a.namespace() == namespace)
                .map(|a| ObjectRef::from_obj(&*a))
                .collect::<Vec<_>>()
        },
    );
    vec![
        spawn(repositories, ctx.clone(), shutdown_on_signal),
        spawn(policies, ctx.clone(), shutdown_on_signal),
        spawn(automations, ctx.clone(), shutdown_on_signal),
    ]
}

impl Runtime for Context {
    fn base(&self) -> &Base {
        &self.base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_as_prometheus_counters() {
        let m = Arc::new(Metrics::default());
        m.pushes.fetch_add(2, std::sync::atomic::Ordering::Relaxed);
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(weir_runtime::metrics::CounterSet(m)));
        let text = weir_runtime::metrics::render(&registry);
        assert!(
            text.contains("# TYPE weir_image_pushes counter\nweir_image_pushes_total 2\n"),
            "{text}"
        );
        assert_eq!(text.matches("# HELP ").count(), 6);
    }
}
