//! The end of every reconcile, the same for every kind: the status records the generation
//! handled and the `reconcile.fluxcd.io/requestedAt` token answered, the per-object backoff is
//! reset by a success and advanced by a failure, a failure is logged, [`decide`] sets the
//! conditions and picks the Event, the Event is published, and the reconcile learns when to
//! come back. What stays with each kind is what its steps found (artifacts, inventories, tags).
//! [`Pass`] wraps a whole reconcile around the steps: the status they fill in, the progressing
//! mark, then [`conclude`] and the one status write ([`crate::status::apply_status`]); a kind
//! that records more between the two (Kustomization's history) calls [`conclude`] itself.

use std::time::Duration;

use kube::{Api, ResourceExt, runtime::controller::Action};
use serde::Serialize;
use weir_api::{meta::handled_reconcile_at, status::ObjectStatus};

use crate::{
    controller::{Object, Runtime, object_key},
    decision::{Schedule, StepResult, decide},
    progress::{self, Progress},
    status::apply_status,
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
            reason,
            message,
            disposition,
        } => {
            // Waiting on something else (a source without an artifact yet) is normal operation,
            // as its Event is Normal; a failure is a warning.
            if matches!(disposition, crate::Disposition::Waiting(_)) {
                tracing::info!(reason, message, "waiting");
            } else {
                tracing::warn!(reason, error = message, "reconcile failed");
            }
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

/// One reconcile of `obj` from its first step to its one status write: the status the steps
/// fill in (from what the object holds), the progressing mark, and at the end [`conclude`] and
/// [`apply_status`] — so a kind's reconcile is only its steps.
pub struct Pass<'a, K: Object> {
    /// The status the steps fill in.
    pub status: K::Status,
    /// The progressing mark of this reconcile (steps mark new revisions through it).
    pub progress: Progress<'a, K>,
    previous: Option<K::Status>,
    api: &'a Api<K>,
    obj: &'a K,
    field_manager: &'a str,
}

impl<K: Object> std::fmt::Debug for Pass<'_, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pass")
            .field("progress", &self.progress)
            .finish_non_exhaustive()
    }
}

impl<'a, K> Pass<'a, K>
where
    K: Object,
    K::Status: Clone + Default + Serialize + PartialEq + ObjectStatus,
{
    /// Starts a reconcile whose status writes go under `field_manager`; a generation not
    /// handled yet is marked progressing at once, with Flux's message.
    pub async fn begin(api: &'a Api<K>, obj: &'a K, field_manager: &'a str) -> Self {
        let new = progress::new_generation(
            obj.status().and_then(ObjectStatus::observed_generation),
            obj.meta().generation,
        );
        Self::begin_marked(api, obj, field_manager, new.as_deref()).await
    }

    /// Starts a reconcile marked progressing with `mark`, when there is one (a kind that also
    /// counts a requested reconcile as new work).
    pub async fn begin_marked(
        api: &'a Api<K>,
        obj: &'a K,
        field_manager: &'a str,
        mark: Option<&str>,
    ) -> Self {
        let previous = obj.status().cloned();
        let mut progress = Progress::new(api, obj, field_manager);
        if let Some(message) = mark {
            progress.mark(message).await;
        }
        Self {
            status: previous.clone().unwrap_or_default(),
            progress,
            previous,
            api,
            obj,
            field_manager,
        }
    }

    /// Concludes the reconcile (see [`conclude`]) and writes its status once, unless nothing
    /// changed; returns when to reconcile again.
    pub async fn finish<R: Runtime + ?Sized>(
        mut self,
        runtime: &R,
        result: &StepResult,
        ending: Ending<'_>,
    ) -> Result<Action, kube::Error> {
        let action = conclude(runtime, self.obj, &mut self.status, result, ending).await;
        // Compared with what the object holds now: a progressing status written by this
        // reconcile must be replaced even when the outcome equals the status before it.
        let (written, mut version) = self.progress.into_written_at();
        let current = written.or(self.previous);
        apply_status(
            self.api,
            self.obj,
            current.as_ref(),
            &self.status,
            self.field_manager,
            &mut version,
        )
        .await?;
        Ok(action)
    }
}
