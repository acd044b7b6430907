//! The one way every controller runs: a [`Reconciler`] for a kind, driven by kube-runtime's
//! `Controller` through [`watch`] and [`spawn`]. One object enters, passes Flux's finalizer, the
//! suspend check and the reconciler's steps, and leaves with one status write (the reconciler's)
//! and its metrics; failures are logged and backed off per object.
//!
//! The controllers differ only in their `Reconciler`s and in which other kinds they watch
//! (`Controller::watches_shared_stream` on what [`watch`] returns, with a subscription of the
//! process's [`Watches`]).

use std::{
    fmt::{Debug, Display},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use futures::StreamExt;
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{
        Controller,
        controller::{self, Action},
        finalizer::{Event as FinalizerEvent, finalizer},
        reflector::ObjectRef,
        watcher,
    },
};
use serde::Serialize;
pub use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;
use weir_api::{meta::FINALIZER, status::Reconciled};

use crate::{
    ControllerError,
    events::EventPublisher,
    schedule::Backoff,
    watches::{Watched, Watches},
};

/// What every reconciled kind is, for [`watch`] and [`spawn`].
pub trait Object: Watched + Reconciled + Serialize {}

impl<K> Object for K where K: Watched + Reconciled + Serialize {}

/// What the runtime needs of every controller's context, whatever kinds it reconciles.
pub struct Base {
    /// The client objects are read and written with.
    pub client: Client,
    /// The controller's Events.
    pub events: EventPublisher,
    /// The per-object backoff failed reconciles are retried with.
    pub backoff: Backoff,
}

impl Debug for Base {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Base")
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

impl Base {
    /// A controller reporting its Events as `component`, with the default backoff.
    #[must_use]
    pub fn new(client: Client, component: &str) -> Self {
        Self {
            events: EventPublisher::new(client.clone(), component),
            client,
            backoff: Backoff::default(),
        }
    }
}

/// A controller's shared context, as the runtime sees it.
pub trait Runtime: Send + Sync + 'static {
    /// The client, Events and backoff of the controller.
    fn base(&self) -> &Base;
}

/// One controller's reconcile of kind `K`; implemented by the controller's shared context.
pub trait Reconciler<K: Object>: Runtime {
    /// Reconciles a live object that is not suspended, Flux's finalizer in place: its steps
    /// and its one status write.
    fn apply(
        &self,
        api: &Api<K>,
        obj: Arc<K>,
    ) -> impl Future<Output = Result<Action, ControllerError>> + Send;

    /// Cleans up after an object being deleted, before its finalizer is removed; also when it
    /// is suspended (the reconciler decides what suspension means for cleanup).
    fn cleanup(&self, obj: Arc<K>) -> impl Future<Output = Result<Action, ControllerError>> + Send {
        let _ = obj;
        async { Ok(Action::await_change()) }
    }
}

/// The `namespace/name` objects are logged and backed off under.
pub fn object_key<K: Resource>(obj: &K) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// A controller of `K` in `namespace` (all when `None`) on the process's shared watch of that
/// scope, whose reconciles start only on changes that ask for one (spec, `requestedAt`,
/// finalizers, deletion), never on its own status writes; the watch counts in `synced`.
pub fn watch<K: Object>(
    watches: &Watches,
    namespace: Option<&str>,
    concurrency: u16,
    synced: &mut Synced,
) -> Controller<K> {
    let subscription = watches.subscribe::<K>(namespace, synced);
    let store = subscription.store();
    let trigger = subscription.changed(crate::trigger::reconcile_trigger::<K>);
    Controller::for_shared_stream(trigger, store)
        .with_config(controller::Config::default().concurrency(concurrency))
}

/// Runs `controller` with `reconciler` until it stops (on SIGTERM or SIGINT when
/// `shutdown_on_signal`), or until the returned handle is dropped.
pub fn spawn<K, R>(
    controller: Controller<K>,
    reconciler: Arc<R>,
    shutdown_on_signal: bool,
) -> AbortOnDropHandle<()>
where
    K: Object,
    R: Reconciler<K>,
{
    let controller = if shutdown_on_signal {
        controller.shutdown_on_signal()
    } else {
        controller
    };
    AbortOnDropHandle::new(tokio::spawn(async move {
        controller
            .run(reconcile::<K, R>, error_policy::<K, R>, reconciler)
            .for_each(report)
            .await;
    }))
}

async fn reconcile<K, R>(obj: Arc<K>, reconciler: Arc<R>) -> Result<Action, ControllerError>
where
    K: Object,
    R: Reconciler<K>,
{
    let span = tracing::info_span!("reconcile", object = %object_key(&*obj));
    let api: Api<K> = Api::namespaced(
        reconciler.base().client.clone(),
        &obj.namespace().unwrap_or_default(),
    );
    let observed = obj.clone();
    let steps = finalizer(&api, FINALIZER, obj, |event| async {
        match event {
            FinalizerEvent::Apply(obj) if obj.suspended() => {
                tracing::debug!("suspended");
                Ok(Action::await_change())
            }
            FinalizerEvent::Apply(obj) => reconciler.apply(&api, obj).await,
            FinalizerEvent::Cleanup(obj) => {
                // A deleted object's failures are forgotten with it.
                reconciler.base().backoff.succeeded(&object_key(&*obj));
                reconciler.cleanup(obj).await
            }
        }
    });
    crate::metrics::measured(&*observed, steps)
        .instrument(span)
        .await
        .map_err(ControllerError::from)
}

fn error_policy<K, R>(obj: Arc<K>, error: &ControllerError, reconciler: Arc<R>) -> Action
where
    K: Object,
    R: Reconciler<K>,
{
    let key = object_key(&*obj);
    tracing::warn!(error = %crate::chain(error), object = key, "reconcile failed");
    Action::requeue(reconciler.base().backoff.failed(&key))
}

/// Reports one item of `Controller::run`'s stream. A failed reconcile was already logged, with
/// its object, by the error policy, so it is kept at `debug`; anything else (a queue failure)
/// would otherwise go unseen and is a `warn`. The shared watches log their own list and watch
/// errors ([`crate::watches`]).
#[allow(clippy::unused_async)] // The shape `StreamExt::for_each` takes.
pub async fn report<K, E>(
    result: Result<(ObjectRef<K>, Action), controller::Error<E, watcher::Error>>,
) where
    K: Resource,
    E: std::error::Error + 'static,
{
    match result {
        Ok(_) => {}
        Err(controller::Error::ReconcilerFailed(error, object)) => {
            tracing::debug!(error = %crate::chain(&error), %object, "reconcile failed");
        }
        Err(error) => report_stream_error(&error),
    }
}

fn report_stream_error(error: &impl Display) {
    tracing::warn!(%error, "controller stream error");
}

/// Whether every cache a process's controllers read from has synced (listed its kind once).
///
/// Tracked from the watch streams themselves rather than `Store::wait_until_ready`: the store's
/// readiness is a oneshot that wakes only its latest waiter, and the controller already waits
/// on it, so a second waiter would never (or the controller would not) be woken.
#[derive(Debug, Clone, Default)]
pub struct Synced(Vec<Arc<AtomicBool>>);

/// One watch's part of [`Synced`]: raised when the watch has listed its kind.
#[derive(Debug, Clone, Default)]
pub struct SyncFlag(Arc<AtomicBool>);

impl SyncFlag {
    /// Looks at one event of the watch (`StreamExt::inspect`).
    pub fn observe<K>(&self, event: &Result<watcher::Event<K>, watcher::Error>) {
        if matches!(event, Ok(watcher::Event::InitDone)) {
            self.0.store(true, Ordering::Release);
        }
    }
}

impl Synced {
    /// Waits for `flag`'s watch too; a watch already waited for (a shared one) counts once.
    pub fn insert(&mut self, flag: &SyncFlag) {
        if !self.0.iter().any(|known| Arc::ptr_eq(known, &flag.0)) {
            self.0.push(flag.0.clone());
        }
    }

    /// Adds the watches `other` waits for, each once.
    pub fn extend(&mut self, other: &Self) {
        for flag in &other.0 {
            self.insert(&SyncFlag(flag.clone()));
        }
    }

    /// How many watches this set waits for.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it waits for none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether all of them have listed once.
    #[must_use]
    pub fn is_synced(&self) -> bool {
        self.0.iter().all(|flag| flag.load(Ordering::Acquire))
    }
}
