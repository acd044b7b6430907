//! The end of every reconcile, the same for every kind: the status records the generation
//! handled and the `reconcile.fluxcd.io/requestedAt` token answered, the per-object backoff is
//! reset by a success and advanced by a failure, a failure is logged, [`decide`] sets the
//! conditions and picks the Event, the Event is published, and the reconcile learns when to
//! come back. What stays with each kind is what its steps found (artifacts, inventories, tags)
//! and its one status write ([`crate::status::apply_status`]).

use std::time::Duration;

use kube::{ResourceExt, runtime::controller::Action};
use weir_api::{meta::handled_reconcile_at, status::ObjectStatus};

use crate::{
    controller::{Object, Runtime, object_key},
    decision::{Schedule, StepResult, decide},
};

/// How a failed reconcile is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// After the object's backoff (doubling from one failure to the next), never later than
    /// `cap` (the interval, as Flux requeues a failure at the latest on its interval).
    Backoff { cap: Option<Duration> },
    /// After this delay, whatever came before (Kustomization's jittered `retryInterval`).
    After(Duration),
}

/// How one kind's reconcile ends: when to come back and under which Event action.
#[derive(Clone, Debug)]
pub struct Ending<'a> {
    /// After a success: the interval, jittered; `None` waits for a change.
    pub after_success: Option<Duration>,
    /// After a failure.
    pub retry: Retry,
    /// The Event's action (`Fetch`, `Reconcile`, `Scan`…).
    pub action: &'a str,
    /// The Event's message in place of the failure's own (a Kustomization says what it changed
    /// before the failure); the condition keeps the failure's message.
    pub failure_note: Option<String>,
}

impl<'a> Ending<'a> {
    /// Back after `after_success` on success, after the backoff capped at `cap` on failure.
    #[must_use]
    pub fn new(action: &'a str, after_success: Option<Duration>, cap: Option<Duration>) -> Self {
        Self {
            after_success,
            retry: Retry::Backoff { cap },
            action,
            failure_note: None,
        }
    }
}

/// Concludes one reconcile of `obj` whose steps came to `result`: records in `status` what was
/// handled and the conditions [`decide`] sets, publishes the Event it picks, and returns when to
/// reconcile again.
pub async fn conclude<K, R>(
    runtime: &R,
    obj: &K,
    status: &mut K::Status,
    result: &StepResult,
    ending: Ending<'_>,
) -> Action
where
    K: Object,
    K::Status: ObjectStatus,
    R: Runtime + ?Sized,
{
    let handled = handled_reconcile_at(
        obj.annotations().into(),
        obj.status()
            .and_then(ObjectStatus::last_handled_reconcile_at),
    );
    status.set_handled(obj.meta().generation, handled);
    let key = object_key(obj);
    let backoff = &runtime.base().backoff;
    let retry = match result {
        StepResult::Succeeded { .. } => {
            backoff.succeeded(&key);
            Duration::ZERO
        }
        StepResult::Failed {
            reason, message, ..
        } => {
            tracing::warn!(reason, error = message, "reconcile failed");
            match ending.retry {
                Retry::Backoff { .. } => backoff.failed(&key),
                Retry::After(delay) => delay,
            }
        }
    };
    let schedule = Schedule {
        after_success: ending.after_success,
        retry,
        retry_cap: match ending.retry {
            Retry::Backoff { cap } => cap,
            Retry::After(_) => None,
        },
    };
    let mut decision = decide(
        status.conditions(),
        obj.meta().generation,
        result,
        &schedule,
    );
    *status.conditions_mut() = std::mem::take(&mut decision.conditions);
    if let (Some(event), StepResult::Failed { .. }, Some(note)) =
        (&mut decision.event, result, ending.failure_note)
    {
        event.message = note;
    }
    runtime
        .base()
        .events
        .announce(obj, decision.event.as_ref(), ending.action)
        .await;
    decision.action
}
