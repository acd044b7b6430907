//! Reconciling=True while real work runs, as Flux's controllers persist it: when a reconcile
//! starts work on a new generation, a new upstream revision or a requested reconcile, the
//! object is marked (Reconciling=True with the `Progressing` reason and a message saying what
//! is being done, Ready=Unknown) before the work, so `kubectl wait`, kstatus, `flux get` and
//! dependents see it in progress instead of the last revision's Ready=True.
//!
//! Weir deviates from Flux in one way: Flux marks every reconcile in memory and persists the
//! mark only on a new generation or request; Weir writes nothing at all unless there is new
//! work, so a steady state makes no status writes. The final status write replaces the mark.

use std::fmt::Debug;

use kube::Api;
use serde::Serialize;
use weir_api::{
    Condition, ConditionStatus,
    condition::{self, types},
    reasons,
    status::ObjectStatus,
};

use crate::{controller::Object, status::apply_status};

/// Ready's message while work is in progress, as Flux words it.
pub const IN_PROGRESS: &str = "Reconciliation in progress";

/// Marks `conditions` progressing for `generation`: Reconciling=True with `message`,
/// Ready=Unknown, both with Flux's `Progressing` reason; Stalled removed.
pub fn mark(conditions: &mut Vec<Condition>, generation: Option<i64>, message: &str) {
    for (r#type, status, message) in [
        (types::RECONCILING, ConditionStatus::True, message),
        (types::READY, ConditionStatus::Unknown, IN_PROGRESS),
    ] {
        condition::set_condition(
            conditions,
            Condition::new(r#type, status, reasons::PROGRESSING, message)
                .for_generation(generation),
        );
    }
    condition::remove_condition(conditions, types::STALLED);
}

/// Flux's message for a generation not handled yet (`processing object: new generation 1 -> 2`),
/// or `None` when `observed` is `generation`.
#[must_use]
pub fn new_generation(observed: Option<i64>, generation: Option<i64>) -> Option<String> {
    (observed != generation).then(|| {
        format!(
            "processing object: new generation {} -> {}",
            observed.unwrap_or(0),
            generation.unwrap_or(0)
        )
    })
}

/// Writes the progressing mark of one reconcile of `obj`, at most once. A failed write is
/// logged and the reconcile goes on: the final status write says what happened either way.
pub struct Progress<'a, K: Object> {
    api: &'a Api<K>,
    obj: &'a K,
    field_manager: &'a str,
    marked: bool,
    written: Option<K::Status>,
    /// The object's resourceVersion as this reconcile last saw or wrote it.
    version: Option<String>,
}

impl<K: Object> Debug for Progress<'_, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("marked", &self.marked)
            .field("written", &self.written.is_some())
            .finish_non_exhaustive()
    }
}

impl<'a, K> Progress<'a, K>
where
    K: Object,
    K::Status: Clone + Default + Serialize + PartialEq + ObjectStatus,
{
    /// Nothing marked yet; marks are written under `field_manager`.
    #[must_use]
    pub fn new(api: &'a Api<K>, obj: &'a K, field_manager: &'a str) -> Self {
        Self {
            api,
            obj,
            field_manager,
            marked: false,
            written: None,
            version: obj.meta().resource_version.clone(),
        }
    }

    /// Marks the object progressing with `message`, unless it already was in this reconcile.
    /// Returns whether a status write was made.
    pub async fn mark(&mut self, message: &str) -> bool {
        self.mark_with(message, &[]).await
    }

    /// [`Progress::mark`] with `conditions` set in the same write, as Flux persists what it
    /// observed (such as `ArtifactOutdated`) with its progressing mark. Unlike a plain mark,
    /// one with conditions is written even after an earlier mark of this reconcile, over it.
    pub async fn mark_with(&mut self, message: &str, conditions: &[Condition]) -> bool {
        if self.marked && conditions.is_empty() {
            return false;
        }
        self.marked = true;
        let current = self.written.as_ref().or(self.obj.status());
        let mut progressing = current.cloned().unwrap_or_default();
        for c in conditions {
            condition::set_condition(progressing.conditions_mut(), c.clone());
        }
        mark(
            progressing.conditions_mut(),
            self.obj.meta().generation,
            message,
        );
        match apply_status(
            self.api,
            self.obj,
            current,
            &progressing,
            self.field_manager,
            &mut self.version,
        )
        .await
        {
            Ok(wrote) => {
                self.written = Some(progressing);
                wrote
            }
            Err(error) => {
                tracing::warn!(error = %crate::chain(&error), "cannot write the progressing status");
                false
            }
        }
    }

    /// Whether [`Progress::mark`] was called in this reconcile.
    #[must_use]
    pub fn marked(&self) -> bool {
        self.marked
    }

    /// The status the mark wrote, if it did: what the object holds now, for the final write
    /// to compare with.
    #[must_use]
    pub fn into_written(self) -> Option<K::Status> {
        self.written
    }

    /// The status the mark wrote, if it did, and the object's resourceVersion as this
    /// reconcile last saw or wrote it: the precondition of the final write.
    #[must_use]
    pub fn into_written_at(self) -> (Option<K::Status>, Option<String>) {
        (self.written, self.version)
    }
}

#[cfg(test)]
mod tests {
    use weir_api::condition::{KStatus, find_condition, kstatus, summarize};

    use super::*;

    #[test]
    fn a_mark_is_reconciling_and_ready_unknown_for_the_generation() {
        let mut conditions = vec![];
        summarize(
            &mut conditions,
            &weir_api::Outcome::Stalled {
                reason: reasons::INVALID_POLICY.into(),
                message: "bad".into(),
            },
            Some(1),
        );
        mark(
            &mut conditions,
            Some(2),
            "processing object: new generation 1 -> 2",
        );
        let reconciling = find_condition(&conditions, types::RECONCILING).unwrap();
        assert_eq!(reconciling.status, ConditionStatus::True);
        assert_eq!(reconciling.reason, reasons::PROGRESSING);
        assert_eq!(
            reconciling.message,
            "processing object: new generation 1 -> 2"
        );
        let ready = find_condition(&conditions, types::READY).unwrap();
        assert_eq!(
            (ready.status, ready.reason.as_str(), ready.message.as_str()),
            (ConditionStatus::Unknown, reasons::PROGRESSING, IN_PROGRESS)
        );
        assert!(
            find_condition(&conditions, types::STALLED).is_none(),
            "a new generation is no longer stalled"
        );
        assert!(conditions.iter().all(|c| c.observed_generation == Some(2)));
        assert_eq!(kstatus(&conditions, Some(2), Some(2)), KStatus::InProgress);
    }

    #[test]
    fn marking_twice_changes_nothing() {
        let mut once = vec![];
        mark(&mut once, Some(3), "scanning: reconcile requested");
        let mut twice = once.clone();
        mark(&mut twice, Some(3), "scanning: reconcile requested");
        assert_eq!(once, twice);
    }

    #[test]
    fn only_a_generation_not_handled_is_new() {
        assert_eq!(new_generation(Some(2), Some(2)), None);
        assert_eq!(
            new_generation(None, Some(1)).as_deref(),
            Some("processing object: new generation 0 -> 1")
        );
        assert_eq!(
            new_generation(Some(1), Some(2)).as_deref(),
            Some("processing object: new generation 1 -> 2")
        );
    }
}
