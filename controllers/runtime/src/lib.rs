//! Reconcile scaffolding shared by Weir's controllers.
//!
//! Controllers share no state with each other beyond the read-only caches of one process's
//! watches ([`watches`]: one per kind); what they share is this code: how a failure maps to a
//! condition and a requeue, how requeues are jittered and backed off, how status is written once
//! per reconcile, how events are published, and how secrets are kept out of text.

pub mod chain;
pub mod client;
pub mod conclude;
pub mod controller;
pub mod decision;
pub mod events;
pub mod failure;
pub mod metrics;
pub mod progress;
pub mod redact;
pub mod schedule;
pub mod secrets;
pub mod semver_range;
pub mod status;
pub mod tls;
pub mod trigger;
pub mod watches;

pub use chain::chain;
pub use failure::{ControllerError, Disposition, Failure};
pub use redact::Redactor;
