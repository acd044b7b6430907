//! How a failed reconcile step is reported and retried.

use std::time::Duration;

/// What to do after a step failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Needs a change by a human (bad spec): Stalled=True, no retry until the object changes.
    Stalled,
    /// A condition outside our control (a dependency not ready): check again after this long.
    Waiting(Duration),
    /// Might succeed on retry (network, auth that may be fixed): retry with backoff.
    Transient,
}

/// A typed error of a reconcile step: it knows its condition reason and its disposition.
pub trait Failure: std::error::Error {
    /// The condition (and Event) reason, such as `GitOperationFailed`.
    fn reason(&self) -> &'static str;
    /// Whether to stall, wait or retry.
    fn disposition(&self) -> Disposition;
}

impl Disposition {
    /// The kstatus outcome of a failure with this disposition, and when to reconcile again:
    /// Stalled waits for a change of the object, Waiting checks again after its delay, Transient
    /// retries after `retry`.
    #[must_use]
    pub fn outcome(
        self,
        reason: &str,
        message: &str,
        retry: Duration,
    ) -> (weir_api::Outcome, kube::runtime::controller::Action) {
        use kube::runtime::controller::Action;
        use weir_api::Outcome;
        let (reason, message) = (reason.to_owned(), message.to_owned());
        match self {
            Self::Stalled => (Outcome::Stalled { reason, message }, Action::await_change()),
            Self::Waiting(after) => (
                Outcome::Retrying { reason, message },
                Action::requeue(after),
            ),
            Self::Transient => (
                Outcome::Retrying { reason, message },
                Action::requeue(retry),
            ),
        }
    }
}

/// Errors of a controller's reconcile wrapper itself (talking to the API server, running the
/// finalizer), as opposed to the typed failures of its steps; retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("kubernetes API")]
    Kube(#[from] kube::Error),
    /// Cleaning up after a deleted object failed; its finalizer stays until it succeeds.
    #[error("cleanup")]
    Cleanup(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The finalizer could not be handled for the object as it is (no name, a bad path).
    #[error("finalizer: {0}")]
    Finalizer(&'static str),
}

impl ControllerError {
    /// A cleanup failure with its cause.
    pub fn cleanup(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Cleanup(Box::new(error))
    }
}

impl From<kube::runtime::finalizer::Error<ControllerError>> for ControllerError {
    /// The inner error of a failed apply or cleanup, or of the finalizer's own patch.
    fn from(e: kube::runtime::finalizer::Error<ControllerError>) -> Self {
        use kube::runtime::finalizer::Error;
        match e {
            Error::ApplyFailed(inner) | Error::CleanupFailed(inner) => inner,
            Error::AddFinalizer(error) | Error::RemoveFinalizer(error) => Self::Kube(error),
            Error::UnnamedObject => Self::Finalizer("the object has no name"),
            Error::InvalidFinalizer => Self::Finalizer("the finalizer's path is invalid"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispositions_map_to_kstatus_outcomes_and_requeues() {
        use kube::runtime::controller::Action;
        use weir_api::Outcome;
        let retry = Duration::from_secs(7);
        let (outcome, action) = Disposition::Stalled.outcome("InvalidSpec", "bad", retry);
        assert!(matches!(outcome, Outcome::Stalled { .. }));
        assert_eq!(action, Action::await_change());
        let wait = Duration::from_secs(2);
        let (outcome, action) =
            Disposition::Waiting(wait).outcome("DependencyNotReady", "m", retry);
        assert_eq!(
            outcome,
            Outcome::Retrying {
                reason: "DependencyNotReady".into(),
                message: "m".into()
            }
        );
        assert_eq!(action, Action::requeue(wait));
        let (_, action) = Disposition::Transient.outcome("BuildFailed", "m", retry);
        assert_eq!(action, Action::requeue(retry));
    }
}
