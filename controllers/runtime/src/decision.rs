//! What a reconcile's result means for status, requeue and events, decided without I/O: the
//! previous conditions, the generation and the steps' result go in; the new conditions, when
//! to reconcile again and the Event to publish come out. The controllers keep the side effects
//! (the status write, publishing, backoff bookkeeping) and table-test nothing but this.
//!
//! As in Flux's `summarize` helpers: success is Ready=True with Reconciling and Stalled removed;
//! a failure to retry is Ready=False with Reconciling=True (`ProgressingWithRetry`); a failure
//! that needs a human is Ready=False with Stalled=True. Every condition is stamped with the
//! generation it describes. Events follow kstatus' habit and Flux's recorder: a failure is a
//! Warning, waiting on something outside the object (a dependency not ready) a Normal event,
//! and a success is announced when it brings news (a new tag, a push) or recovers from a
//! failure; a success repeating the last one announces nothing, so a steady state is silent.

use std::time::Duration;

use kube::runtime::controller::Action;
use weir_api::{
    Condition, ConditionStatus, Outcome,
    condition::{self, find_condition, types},
};

use crate::{Disposition, Failure, Redactor, events::EventType};

/// The shortest retry: a retry bound by an interval never spins faster than this.
pub const MIN_RETRY: Duration = Duration::from_secs(1);

/// What a reconcile's steps came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepResult {
    /// Every step succeeded.
    Succeeded {
        /// The Ready reason, such as `Succeeded`.
        reason: String,
        /// The Ready message.
        message: String,
        /// What is new and worth an Event (a new revision, a push), if anything.
        news: Option<Notice>,
    },
    /// A step failed.
    Failed {
        /// The condition (and Event) reason of the failure.
        reason: String,
        /// Whether to stall, wait or retry.
        disposition: Disposition,
        /// The failure's message, secrets masked.
        message: String,
    },
}

impl StepResult {
    /// Success with Ready's reason and message, and nothing new to announce.
    #[must_use]
    pub fn succeeded(reason: &str, message: impl Into<String>) -> Self {
        Self::Succeeded {
            reason: reason.to_owned(),
            message: message.into(),
            news: None,
        }
    }

    /// This success, announced by a Normal Event with `reason` and `message` (already
    /// redacted). A failure is left as it is.
    #[must_use]
    pub fn announcing(mut self, reason: &str, message: impl Into<String>) -> Self {
        if let Self::Succeeded { news, .. } = &mut self {
            *news = Some(Notice {
                r#type: EventType::Normal,
                reason: reason.to_owned(),
                message: message.into(),
            });
        }
        self
    }

    /// The failure `error`, its message (the error with its causes, [`crate::chain`]) passed
    /// through `redactor`.
    #[must_use]
    pub fn failed(error: &(impl Failure + ?Sized), redactor: &Redactor) -> Self {
        Self::Failed {
            reason: error.reason().to_owned(),
            disposition: error.disposition(),
            message: redactor.redact(&crate::chain(error)),
        }
    }
}

/// An Event to publish: its type, reason and (redacted) message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// Normal or Warning.
    pub r#type: EventType,
    /// The Event's reason: the condition reason it reports.
    pub reason: String,
    /// The Event's message.
    pub message: String,
}

/// When to reconcile again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// After a success (the interval, jittered by the caller); `None` waits for a change.
    pub after_success: Option<Duration>,
    /// After a failure to retry: the backoff's delay (or the retry interval).
    pub retry: Duration,
    /// A retry never waits longer than this (the interval), nor less than [`MIN_RETRY`].
    pub retry_cap: Option<Duration>,
}

/// What to write, when to come back and what to announce.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The new conditions.
    pub conditions: Vec<Condition>,
    /// When to reconcile again.
    pub action: Action,
    /// The Event to publish, if any.
    pub event: Option<Notice>,
}

/// Decides the status and event of a reconcile of an object at `generation` whose conditions
/// were `previous` and whose steps came to `result`.
#[must_use]
pub fn decide(
    previous: &[Condition],
    generation: Option<i64>,
    result: &StepResult,
    schedule: &Schedule,
) -> Decision {
    let mut conditions = previous.to_vec();
    let (outcome, action, event) = match result {
        StepResult::Succeeded {
            reason,
            message,
            news,
        } => {
            let recovered = find_condition(previous, types::READY)
                .is_some_and(|ready| ready.status == ConditionStatus::False);
            let event = news.clone().or_else(|| {
                recovered.then(|| Notice {
                    r#type: EventType::Normal,
                    reason: reason.clone(),
                    message: message.clone(),
                })
            });
            let outcome = Outcome::Ready {
                reason: reason.clone(),
                message: message.clone(),
            };
            let action = schedule
                .after_success
                .map_or_else(Action::await_change, Action::requeue);
            (outcome, action, event)
        }
        StepResult::Failed {
            reason,
            disposition,
            message,
        } => {
            let retry = match schedule.retry_cap {
                Some(cap) => schedule.retry.min(cap.max(MIN_RETRY)),
                None => schedule.retry,
            };
            let (outcome, action) = disposition.outcome(reason, message, retry);
            let r#type = match disposition {
                Disposition::Waiting(_) => EventType::Normal,
                Disposition::Stalled | Disposition::Transient => EventType::Warning,
            };
            let event = Notice {
                r#type,
                reason: reason.clone(),
                message: message.clone(),
            };
            (outcome, action, Some(event))
        }
    };
    condition::summarize(&mut conditions, &outcome, generation);
    Decision {
        conditions,
        action,
        event,
    }
}

#[cfg(test)]
mod tests {
    use weir_api::reasons;

    use super::*;

    #[derive(Debug)]
    struct StepError {
        reason: &'static str,
        disposition: Disposition,
        message: &'static str,
    }

    impl std::fmt::Display for StepError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.message)
        }
    }

    impl std::error::Error for StepError {}

    impl Failure for StepError {
        fn reason(&self) -> &'static str {
            self.reason
        }
        fn disposition(&self) -> Disposition {
            self.disposition
        }
    }

    const MIN: u64 = 60;

    fn cond(r#type: &str, status: ConditionStatus, reason: &str, generation: i64) -> Condition {
        Condition::new(r#type, status, reason, "before").for_generation(Some(generation))
    }

    fn ready_before() -> Vec<Condition> {
        vec![cond(
            types::READY,
            ConditionStatus::True,
            reasons::SUCCEEDED,
            1,
        )]
    }

    fn failed_before() -> Vec<Condition> {
        vec![
            cond(
                types::READY,
                ConditionStatus::False,
                reasons::BUILD_FAILED,
                1,
            ),
            cond(
                types::RECONCILING,
                ConditionStatus::True,
                reasons::PROGRESSING_WITH_RETRY,
                1,
            ),
        ]
    }

    fn stalled_before() -> Vec<Condition> {
        vec![
            cond(
                types::READY,
                ConditionStatus::False,
                reasons::INVALID_SPEC,
                1,
            ),
            cond(
                types::STALLED,
                ConditionStatus::True,
                reasons::INVALID_SPEC,
                1,
            ),
        ]
    }

    fn progressing_before() -> Vec<Condition> {
        vec![
            cond(
                types::RECONCILING,
                ConditionStatus::True,
                reasons::PROGRESSING,
                2,
            ),
            cond(
                types::READY,
                ConditionStatus::Unknown,
                reasons::PROGRESSING,
                2,
            ),
        ]
    }

    fn failure(
        reason: &'static str,
        disposition: Disposition,
        message: &'static str,
    ) -> StepResult {
        StepResult::failed(
            &StepError {
                reason,
                disposition,
                message,
            },
            &Redactor::default(),
        )
    }

    fn schedule(retry: u64) -> Schedule {
        Schedule {
            after_success: Some(Duration::from_secs(10 * MIN)),
            retry: Duration::from_secs(retry),
            retry_cap: Some(Duration::from_secs(10 * MIN)),
        }
    }

    /// The conditions a case expects: (type, status, reason, message), in any order.
    type Want = Vec<(&'static str, ConditionStatus, &'static str, &'static str)>;

    struct Case {
        name: &'static str,
        previous: Vec<Condition>,
        generation: i64,
        result: StepResult,
        schedule: Schedule,
        conditions: Want,
        action: Action,
        event: Option<(EventType, &'static str, &'static str)>,
    }

    #[allow(clippy::too_many_lines)] // One row per case, as Flux's summarize tests.
    fn cases() -> Vec<Case> {
        use ConditionStatus::{False, True};
        use EventType::{Normal, Warning};
        let waiting = Disposition::Waiting(Duration::from_secs(5));
        vec![
            Case {
                name: "first success is ready and quiet",
                previous: vec![],
                generation: 1,
                result: StepResult::succeeded(reasons::SUCCEEDED, "found 3 tags"),
                schedule: schedule(1),
                conditions: vec![(types::READY, True, reasons::SUCCEEDED, "found 3 tags")],
                action: Action::requeue(Duration::from_secs(10 * MIN)),
                event: None,
            },
            Case {
                name: "a success repeating the last one announces nothing",
                previous: ready_before(),
                generation: 1,
                result: StepResult::succeeded(reasons::SUCCEEDED, "before"),
                schedule: schedule(1),
                conditions: vec![(types::READY, True, reasons::SUCCEEDED, "before")],
                action: Action::requeue(Duration::from_secs(10 * MIN)),
                event: None,
            },
            Case {
                name: "news is announced as a Normal event",
                previous: ready_before(),
                generation: 1,
                result: StepResult::succeeded(reasons::SUCCEEDED, "resolved to 1.1")
                    .announcing(reasons::SUCCEEDED, "resolved to 1.1 (previously 1.0)"),
                schedule: schedule(1),
                conditions: vec![(types::READY, True, reasons::SUCCEEDED, "resolved to 1.1")],
                action: Action::requeue(Duration::from_secs(10 * MIN)),
                event: Some((
                    Normal,
                    reasons::SUCCEEDED,
                    "resolved to 1.1 (previously 1.0)",
                )),
            },
            Case {
                name: "no interval waits for a change after success",
                previous: vec![],
                generation: 1,
                result: StepResult::succeeded(reasons::SUCCEEDED, "ok"),
                schedule: Schedule {
                    after_success: None,
                    ..schedule(1)
                },
                conditions: vec![(types::READY, True, reasons::SUCCEEDED, "ok")],
                action: Action::await_change(),
                event: None,
            },
            Case {
                name: "a transient failure is retried with backoff and a Warning",
                previous: ready_before(),
                generation: 1,
                result: failure(
                    reasons::READ_OPERATION_FAILED,
                    Disposition::Transient,
                    "503",
                ),
                schedule: schedule(4),
                conditions: vec![
                    (types::READY, False, reasons::READ_OPERATION_FAILED, "503"),
                    (
                        types::RECONCILING,
                        True,
                        reasons::PROGRESSING_WITH_RETRY,
                        "503",
                    ),
                ],
                action: Action::requeue(Duration::from_secs(4)),
                event: Some((Warning, reasons::READ_OPERATION_FAILED, "503")),
            },
            Case {
                name: "a retry never waits longer than the interval",
                previous: failed_before(),
                generation: 1,
                result: failure(reasons::BUILD_FAILED, Disposition::Transient, "bad"),
                schedule: Schedule {
                    retry_cap: Some(Duration::from_secs(MIN)),
                    ..schedule(64 * MIN)
                },
                conditions: vec![
                    (types::READY, False, reasons::BUILD_FAILED, "bad"),
                    (
                        types::RECONCILING,
                        True,
                        reasons::PROGRESSING_WITH_RETRY,
                        "bad",
                    ),
                ],
                action: Action::requeue(Duration::from_secs(MIN)),
                event: Some((Warning, reasons::BUILD_FAILED, "bad")),
            },
            Case {
                name: "nor less than a second under a tiny interval",
                previous: vec![],
                generation: 1,
                result: failure(reasons::BUILD_FAILED, Disposition::Transient, "bad"),
                schedule: Schedule {
                    retry_cap: Some(Duration::from_millis(10)),
                    ..schedule(30)
                },
                conditions: vec![
                    (types::READY, False, reasons::BUILD_FAILED, "bad"),
                    (
                        types::RECONCILING,
                        True,
                        reasons::PROGRESSING_WITH_RETRY,
                        "bad",
                    ),
                ],
                action: Action::requeue(MIN_RETRY),
                event: Some((Warning, reasons::BUILD_FAILED, "bad")),
            },
            Case {
                name: "without a cap the retry interval stands",
                previous: vec![],
                generation: 1,
                result: failure(reasons::BUILD_FAILED, Disposition::Transient, "bad"),
                schedule: Schedule {
                    retry_cap: None,
                    ..schedule(64 * MIN)
                },
                conditions: vec![
                    (types::READY, False, reasons::BUILD_FAILED, "bad"),
                    (
                        types::RECONCILING,
                        True,
                        reasons::PROGRESSING_WITH_RETRY,
                        "bad",
                    ),
                ],
                action: Action::requeue(Duration::from_secs(64 * MIN)),
                event: Some((Warning, reasons::BUILD_FAILED, "bad")),
            },
            Case {
                name: "a bad spec stalls, waits for a change and warns",
                previous: progressing_before(),
                generation: 2,
                result: failure(reasons::INVALID_POLICY, Disposition::Stalled, "bad range"),
                schedule: schedule(1),
                conditions: vec![
                    (types::READY, False, reasons::INVALID_POLICY, "bad range"),
                    (types::STALLED, True, reasons::INVALID_POLICY, "bad range"),
                ],
                action: Action::await_change(),
                event: Some((Warning, reasons::INVALID_POLICY, "bad range")),
            },
            Case {
                name: "waiting on a dependency is a Normal event and its own delay",
                previous: vec![],
                generation: 1,
                result: failure(reasons::DEPENDENCY_NOT_READY, waiting, "repo not scanned"),
                schedule: schedule(30),
                conditions: vec![
                    (
                        types::READY,
                        False,
                        reasons::DEPENDENCY_NOT_READY,
                        "repo not scanned",
                    ),
                    (
                        types::RECONCILING,
                        True,
                        reasons::PROGRESSING_WITH_RETRY,
                        "repo not scanned",
                    ),
                ],
                action: Action::requeue(Duration::from_secs(5)),
                event: Some((Normal, reasons::DEPENDENCY_NOT_READY, "repo not scanned")),
            },
            Case {
                name: "a success after a failure recovers with a Normal event",
                previous: failed_before(),
                generation: 1,
                result: StepResult::succeeded(reasons::SUCCEEDED, "found 3 tags"),
                schedule: schedule(1),
                conditions: vec![(types::READY, True, reasons::SUCCEEDED, "found 3 tags")],
                action: Action::requeue(Duration::from_secs(10 * MIN)),
                event: Some((Normal, reasons::SUCCEEDED, "found 3 tags")),
            },
            Case {
                name: "a success after a stall clears Stalled",
                previous: stalled_before(),
                generation: 2,
                result: StepResult::succeeded(reasons::SUCCEEDED, "ok"),
                schedule: schedule(1),
                conditions: vec![(types::READY, True, reasons::SUCCEEDED, "ok")],
                action: Action::requeue(Duration::from_secs(10 * MIN)),
                event: Some((Normal, reasons::SUCCEEDED, "ok")),
            },
            Case {
                name: "a success after progressing clears Reconciling quietly",
                previous: progressing_before(),
                generation: 2,
                result: StepResult::succeeded(reasons::SUCCEEDED, "ok"),
                schedule: schedule(1),
                conditions: vec![(types::READY, True, reasons::SUCCEEDED, "ok")],
                action: Action::requeue(Duration::from_secs(10 * MIN)),
                event: None,
            },
            Case {
                name: "a retried failure after a stall clears Stalled",
                previous: stalled_before(),
                generation: 2,
                result: failure(reasons::GIT_OPERATION_FAILED, Disposition::Transient, "x"),
                schedule: schedule(2),
                conditions: vec![
                    (types::READY, False, reasons::GIT_OPERATION_FAILED, "x"),
                    (
                        types::RECONCILING,
                        True,
                        reasons::PROGRESSING_WITH_RETRY,
                        "x",
                    ),
                ],
                action: Action::requeue(Duration::from_secs(2)),
                event: Some((Warning, reasons::GIT_OPERATION_FAILED, "x")),
            },
            Case {
                name: "secrets are masked in conditions and events",
                previous: vec![],
                generation: 1,
                result: StepResult::failed(
                    &StepError {
                        reason: reasons::AUTHENTICATION_FAILED,
                        disposition: Disposition::Transient,
                        message: "denied for https://bob:hunter2@git.example/r.git (hunter2)",
                    },
                    &{
                        let mut r = Redactor::default();
                        r.add("hunter2");
                        r
                    },
                ),
                schedule: schedule(1),
                conditions: vec![
                    (
                        types::READY,
                        False,
                        reasons::AUTHENTICATION_FAILED,
                        "denied for https://git.example/r.git (*****)",
                    ),
                    (
                        types::RECONCILING,
                        True,
                        reasons::PROGRESSING_WITH_RETRY,
                        "denied for https://git.example/r.git (*****)",
                    ),
                ],
                action: Action::requeue(Duration::from_secs(1)),
                event: Some((
                    Warning,
                    reasons::AUTHENTICATION_FAILED,
                    "denied for https://git.example/r.git (*****)",
                )),
            },
        ]
    }

    #[test]
    fn decisions_follow_kstatus_and_fluxs_events() {
        for case in cases() {
            let name = case.name;
            let got = decide(
                &case.previous,
                Some(case.generation),
                &case.result,
                &case.schedule,
            );
            let mut conditions: Vec<_> = got
                .conditions
                .iter()
                .map(|c| {
                    assert_eq!(
                        c.observed_generation,
                        Some(case.generation),
                        "{name}: {} is stamped with the generation",
                        c.r#type
                    );
                    (
                        c.r#type.as_str(),
                        c.status,
                        c.reason.as_str(),
                        c.message.as_str(),
                    )
                })
                .collect();
            let mut want = case.conditions.clone();
            conditions.sort_by_key(|c| c.0);
            want.sort_by_key(|c| c.0);
            assert_eq!(conditions, want, "{name}: conditions");
            assert_eq!(got.action, case.action, "{name}: requeue");
            let event = got
                .event
                .as_ref()
                .map(|e| (e.r#type, e.reason.as_str(), e.message.as_str()));
            assert_eq!(event, case.event, "{name}: event");
        }
    }

    #[test]
    fn unchanged_status_keeps_its_transition_time() {
        let previous = ready_before();
        let got = decide(
            &previous,
            Some(1),
            &StepResult::succeeded(reasons::SUCCEEDED, "before"),
            &schedule(1),
        );
        assert_eq!(got.conditions, previous, "a steady state writes nothing");
    }

    #[test]
    fn other_condition_types_are_left_alone() {
        let mut previous = failed_before();
        previous.push(cond(types::FETCH_FAILED, ConditionStatus::True, "X", 1));
        let got = decide(
            &previous,
            Some(1),
            &StepResult::succeeded(reasons::SUCCEEDED, "ok"),
            &schedule(1),
        );
        assert!(find_condition(&got.conditions, types::FETCH_FAILED).is_some());
    }
}
