//! Git operations on blocking threads, bounded by a timeout and at most one per key.
//!
//! libgit2 cannot be interrupted while it waits on a silent server, so an operation that timed
//! out may keep its thread until [`crate::SOCKET_TIMEOUT`] passes. [`InFlight`] keeps that to
//! one thread per key (an object and its URL) instead of one per retry: a retry while the old
//! operation still waits fails at once with [`BoundedError::StillRunning`], and a changed URL is
//! a new key that starts at once. Each controller that talks to git keeps one `InFlight` for its
//! objects.
//!
//! Why this and not a transport that can be killed at `spec.timeout`: what a user sees is the
//! same (the object reports the timeout within `spec.timeout`, its retries say the old
//! operation still waits, a fixed URL is Ready at once — the silent-server e2e tests of the
//! source and image suites), and the cost is bounded: at most one parked thread per object and
//! URL, for at most [`crate::SOCKET_TIMEOUT`] (Flux's default `spec.timeout`). Running the git
//! CLI in a process killed at the deadline (Argo CD's way) would release the thread exactly, but
//! costs a fork and exec per remote check and loses libgit2's in-memory ref listing, which is
//! what keeps an unchanged GitRepository from cloning anything; a shorter process-wide socket
//! timeout would fail slow but healthy servers mid-transfer.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

/// The keys with a git operation still running on a blocking thread.
#[derive(Debug, Default, Clone)]
pub struct InFlight(Arc<Mutex<HashSet<String>>>);

/// Why a bounded operation gave no result of its own.
#[derive(Debug, thiserror::Error)]
pub enum BoundedError<E> {
    /// The previous operation of the key has not ended yet; nothing was started.
    #[error("the previous git operation (timed out after {0:?}) is still waiting on the server")]
    StillRunning(Duration),
    /// The operation did not end within the timeout; its thread ends on its own.
    #[error("git operation timed out after {0:?}")]
    Timeout(Duration),
    /// The blocking task panicked or was cancelled.
    #[error("the git task failed")]
    Task(#[source] tokio::task::JoinError),
    /// The operation ended with its own error.
    #[error(transparent)]
    Operation(E),
}

/// Marks a key's operation as running until dropped (when its thread ends).
#[derive(Debug)]
struct Guard {
    set: InFlight,
    key: String,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.set
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}

impl InFlight {
    fn start(&self, key: &str) -> Option<Guard> {
        let mut set = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        set.insert(key.to_owned()).then(|| Guard {
            set: self.clone(),
            key: key.to_owned(),
        })
    }

    /// Whether an operation of `key` is running.
    #[must_use]
    pub fn is_running(&self, key: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(key)
    }

    /// Runs `f` on a blocking thread and waits for it at most `timeout`, unless an operation of
    /// `key` is still running. The key stays taken until `f` returns, also after a timeout.
    pub async fn run<T, E>(
        &self,
        key: &str,
        timeout: Duration,
        f: impl FnOnce() -> Result<T, E> + Send + 'static,
    ) -> Result<T, BoundedError<E>>
    where
        T: Send + 'static,
        E: Send + 'static,
    {
        let Some(guard) = self.start(key) else {
            return Err(BoundedError::StillRunning(timeout));
        };
        let task = tokio::task::spawn_blocking(move || {
            let _guard = guard;
            f()
        });
        match tokio::time::timeout(timeout, task).await {
            Err(_) => Err(BoundedError::Timeout(timeout)),
            Ok(Err(join)) => Err(BoundedError::Task(join)),
            Ok(Ok(result)) => result.map_err(BoundedError::Operation),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    #[tokio::test]
    async fn a_timed_out_operation_holds_its_key_until_it_ends_and_other_keys_run() {
        let in_flight = InFlight::default();
        let (release, wait) = mpsc::channel::<()>();
        let short = Duration::from_millis(50);
        let stuck = in_flight
            .run("ns/a url", short, move || {
                wait.recv().map_err(|_| "released without a value")
            })
            .await;
        assert!(matches!(stuck, Err(BoundedError::Timeout(d)) if d == short));
        assert!(in_flight.is_running("ns/a url"));

        // A retry starts no second thread while the first still waits.
        let retry = in_flight.run("ns/a url", short, || Ok::<_, &str>(1)).await;
        assert!(
            matches!(retry, Err(BoundedError::StillRunning(_))),
            "{retry:?}"
        );
        // Another key (a changed URL) is not held back.
        let other = in_flight
            .run("ns/a fixed-url", short, || Ok::<_, &str>(2))
            .await;
        assert_eq!(other.ok(), Some(2));

        release.send(()).expect("the stuck operation still waits");
        tokio::time::timeout(Duration::from_secs(10), async {
            while in_flight.is_running("ns/a url") {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the key is released when the operation ends");
        let after = in_flight
            .run("ns/a url", short, || Err::<i32, _>("refused"))
            .await;
        assert!(
            matches!(after, Err(BoundedError::Operation("refused"))),
            "{after:?}"
        );
    }
}
