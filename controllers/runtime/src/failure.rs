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
