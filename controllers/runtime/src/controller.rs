//! What every controller does around kube-runtime's `Controller`: reporting what its stream
//! yields, and telling when its caches have synced (for `/readyz`).

use std::{
    fmt::Display,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use kube::{
    Resource,
    runtime::{controller, reflector::ObjectRef, watcher},
};

/// Reports one item of `Controller::run`'s stream. A failed reconcile was already logged, with
/// its object, by the error policy, so it is kept at `debug`; anything else (a watch that cannot
/// list or decode, a queue failure) would otherwise go unseen and is a `warn`.
#[allow(clippy::unused_async)] // The shape `StreamExt::for_each` takes.
pub async fn report<K, E>(
    result: Result<(ObjectRef<K>, controller::Action), controller::Error<E, watcher::Error>>,
) where
    K: Resource,
    E: std::error::Error + 'static,
{
    match result {
        Ok(_) => {}
        Err(controller::Error::ReconcilerFailed(error, object)) => {
            tracing::debug!(%error, %object, "reconcile failed");
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
#[derive(Debug, Clone)]
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
    /// A new watch this set waits for.
    pub fn flag(&mut self) -> SyncFlag {
        let flag = Arc::new(AtomicBool::new(false));
        self.0.push(flag.clone());
        SyncFlag(flag)
    }

    /// Adds the watches `other` waits for.
    pub fn extend(&mut self, other: &Self) {
        self.0.extend(other.0.iter().cloned());
    }

    /// Whether all of them have listed once.
    #[must_use]
    pub fn is_synced(&self) -> bool {
        self.0.iter().all(|flag| flag.load(Ordering::Acquire))
    }
}
