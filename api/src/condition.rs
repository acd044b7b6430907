//! Conditions as Flux and kstatus read them: `Ready` plus the abnormal-true `Reconciling` and
//! `Stalled`, a list keyed on `type`, with `lastTransitionTime` moving only when status moves.

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Condition types shared by every kind.
pub mod types {
    /// The object's desired state is in effect.
    pub const READY: &str = "Ready";
    /// Abnormal-true: work is in progress.
    pub const RECONCILING: &str = "Reconciling";
    /// Abnormal-true: progress is impossible without a change by a human.
    pub const STALLED: &str = "Stalled";
    /// The applied objects passed their health checks (Kustomization).
    pub const HEALTHY: &str = "Healthy";
    /// Negative polarity: the last fetch of the source failed (GitRepository).
    pub const FETCH_FAILED: &str = "FetchFailed";
    /// Negative polarity: storing or serving the artifact failed (GitRepository).
    pub const STORAGE_OPERATION_FAILED: &str = "StorageOperationFailed";
    /// The current artifact is in storage and served (GitRepository).
    pub const ARTIFACT_IN_STORAGE: &str = "ArtifactInStorage";
    /// Abnormal-true: a GitRepository of `spec.include` is missing or has no artifact yet.
    pub const INCLUDE_UNAVAILABLE: &str = "IncludeUnavailable";
    /// Abnormal-true: the served artifact is older than the spec asks for (GitRepository).
    pub const ARTIFACT_OUTDATED: &str = "ArtifactOutdated";
    /// Bipolar, present only with `spec.verify`: the source's signatures were verified
    /// (GitRepository).
    pub const SOURCE_VERIFIED: &str = "SourceVerified";
    /// Negative polarity: the chart could not be resolved, pulled or packaged (HelmChart).
    pub const BUILD_FAILED: &str = "BuildFailed";
}

/// Condition reasons, spelled as Flux spells them; Event reasons use the same strings.
pub mod reasons {
    pub const SUCCEEDED: &str = "Succeeded";
    pub const FAILED: &str = "Failed";
    pub const PROGRESSING: &str = "Progressing";
    pub const PROGRESSING_WITH_RETRY: &str = "ProgressingWithRetry";
    pub const SUSPENDED: &str = "Suspended";
    pub const DEPENDENCY_NOT_READY: &str = "DependencyNotReady";
    pub const RECONCILIATION_SUCCEEDED: &str = "ReconciliationSucceeded";
    pub const RECONCILIATION_FAILED: &str = "ReconciliationFailed";
    pub const HEALTH_CHECK_FAILED: &str = "HealthCheckFailed";
    pub const ARTIFACT_FAILED: &str = "ArtifactFailed";
    pub const BUILD_FAILED: &str = "BuildFailed";
    pub const PRUNE_FAILED: &str = "PruneFailed";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// A reference the controller's lockdown flags refuse (Flux's acl reason).
    pub const ACCESS_DENIED: &str = "AccessDenied";
    /// A `healthCheckExprs` expression does not compile (Flux's `InvalidCELExpression`).
    pub const INVALID_CEL_EXPRESSION: &str = "InvalidCELExpression";
    // Source reasons.
    pub const GIT_OPERATION_FAILED: &str = "GitOperationFailed";
    pub const GIT_OPERATION_SUCCEEDED: &str = "GitOperationSucceeded";
    pub const AUTHENTICATION_FAILED: &str = "AuthenticationFailed";
    pub const URL_INVALID: &str = "URLInvalid";
    pub const NEW_REVISION: &str = "NewRevision";
    pub const ARCHIVE_OPERATION_FAILED: &str = "ArchiveOperationFailed";
    pub const STAT_OPERATION_FAILED: &str = "StatOperationFailed";
    pub const WRITE_OPERATION_FAILED: &str = "WriteOperationFailed";
    pub const DIRECTORY_CREATION_FAILED: &str = "DirectoryCreationFailed";
    pub const GARBAGE_COLLECTION_FAILED: &str = "GarbageCollectionFailed";
    pub const GARBAGE_COLLECTION_SUCCEEDED: &str = "GarbageCollectionSucceeded";
    /// An object a spec refers to does not exist (an included GitRepository).
    pub const NOT_FOUND: &str = "NotFound";
    /// An included GitRepository has no artifact yet.
    pub const NO_ARTIFACT: &str = "NoArtifact";
    /// A path of the spec leaves the artifact's root (`include[].toPath`).
    pub const ILLEGAL_PATH: &str = "IllegalPath";
    /// An included artifact could not be copied into the artifact.
    pub const COPY_FAILURE: &str = "CopyFailure";
    /// `spec.provider` names an identity Weir cannot obtain.
    pub const INVALID_PROVIDER_CONFIGURATION: &str = "InvalidProviderConfiguration";
    /// The `spec.verify` keys could not be read (the Secret is missing or unreadable).
    pub const VERIFICATION_ERROR: &str = "VerificationError";
    /// `spec.verify.mode` asks for a tag and the ref checks out no tag.
    pub const INVALID_VERIFICATION_MODE: &str = "InvalidVerificationMode";
    /// The tag to verify is not signed (or is a lightweight tag).
    pub const INVALID_GIT_OBJECT: &str = "InvalidGitObject";
    /// The tag's signature is missing, unknown or does not match.
    pub const INVALID_TAG_SIGNATURE: &str = "InvalidTagSignature";
    /// The commit's signature is missing, unknown or does not match.
    pub const INVALID_COMMIT_SIGNATURE: &str = "InvalidCommitSignature";
    // Image reasons.
    /// `spec.image` is not an image repository reference.
    pub const IMAGE_URL_INVALID: &str = "ImageURLInvalid";
    /// Reading the registry (tags, digests) failed.
    pub const READ_OPERATION_FAILED: &str = "ReadOperationFailed";
    /// A policy's range, pattern or extract is invalid.
    pub const INVALID_POLICY: &str = "InvalidPolicy";
    /// No tag of the repository is allowed by the policy.
    pub const NO_MATCHING_TAG: &str = "NoMatchingTag";
    /// The automation's source is missing, of the wrong kind, or has no usable ref.
    pub const INVALID_SOURCE_CONFIGURATION: &str = "InvalidSourceConfiguration";
    /// `spec.policySelector` is not a valid label selector.
    pub const INVALID_POLICY_SELECTOR: &str = "InvalidPolicySelector";
    /// The commit message template cannot be rendered.
    pub const INVALID_MESSAGE_TEMPLATE: &str = "InvalidMessageTemplate";
    /// A `$imagepolicy` marker is malformed or names no policy.
    pub const INVALID_MARKER: &str = "InvalidMarker";
    /// The push was rejected after every retry (the branch kept moving).
    pub const PUSH_REJECTED: &str = "PushRejected";
}

/// Status of a condition.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

/// One observation of an object's state, shaped like `metav1.Condition`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Type of condition in CamelCase.
    #[schemars(
        length(max = 316),
        regex(
            pattern = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
        )
    )]
    pub r#type: String,
    /// True, False or Unknown.
    pub status: ConditionStatus,
    /// The `.metadata.generation` the condition was set for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub observed_generation: Option<i64>,
    /// When the status last changed.
    pub last_transition_time: Time,
    /// A programmatic identifier for the last transition, in CamelCase.
    #[schemars(
        length(min = 1, max = 1024),
        regex(pattern = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    )]
    pub reason: String,
    /// A human-readable message about the transition.
    #[schemars(length(max = 32768))]
    pub message: String,
}

impl Condition {
    /// A condition observed now.
    #[must_use]
    pub fn new(
        r#type: &str,
        status: ConditionStatus,
        reason: &str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            r#type: r#type.to_owned(),
            status,
            observed_generation: None,
            last_transition_time: Time(Timestamp::now()),
            reason: reason.to_owned(),
            message: message.into(),
        }
    }

    /// Sets the generation this condition describes.
    #[must_use]
    pub fn for_generation(mut self, generation: Option<i64>) -> Self {
        self.observed_generation = generation;
        self
    }

    #[must_use]
    pub fn is_true(&self) -> bool {
        self.status == ConditionStatus::True
    }
}

/// Puts `condition` in `conditions`, replacing the one of the same type. The previous
/// `lastTransitionTime` is kept when the status did not change, as `meta.SetStatusCondition` does.
pub fn set_condition(conditions: &mut Vec<Condition>, mut condition: Condition) {
    if let Some(existing) = conditions.iter_mut().find(|c| c.r#type == condition.r#type) {
        if existing.status == condition.status {
            condition.last_transition_time = existing.last_transition_time.clone();
        }
        *existing = condition;
    } else {
        conditions.push(condition);
    }
}

/// Removes the condition of the given type, if any.
pub fn remove_condition(conditions: &mut Vec<Condition>, r#type: &str) {
    conditions.retain(|c| c.r#type != r#type);
}

/// The condition of the given type, if present.
#[must_use]
pub fn find_condition<'a>(conditions: &'a [Condition], r#type: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.r#type == r#type)
}

/// Whether the condition of the given type is present and True.
#[must_use]
pub fn is_condition_true(conditions: &[Condition], r#type: &str) -> bool {
    find_condition(conditions, r#type).is_some_and(Condition::is_true)
}

/// The kstatus reading of an object's conditions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KStatus {
    /// Ready=True at the current generation, not reconciling or stalled.
    Current,
    /// Reconciling=True, or Ready missing/Unknown, or the conditions describe an older generation.
    InProgress,
    /// Stalled=True: needs a human.
    Stalled,
    /// Ready=False and neither reconciling nor stalled.
    Failed,
}

/// Reads conditions the way kstatus does. `generation` is `.metadata.generation`;
/// `observed_generation` is `.status.observedGeneration`.
#[must_use]
pub fn kstatus(
    conditions: &[Condition],
    generation: Option<i64>,
    observed_generation: Option<i64>,
) -> KStatus {
    if generation.is_some() && observed_generation != generation {
        return KStatus::InProgress;
    }
    if is_condition_true(conditions, types::STALLED) {
        return KStatus::Stalled;
    }
    if is_condition_true(conditions, types::RECONCILING) {
        return KStatus::InProgress;
    }
    match find_condition(conditions, types::READY).map(|c| c.status) {
        Some(ConditionStatus::True) => KStatus::Current,
        Some(ConditionStatus::False) => KStatus::Failed,
        Some(ConditionStatus::Unknown) | None => KStatus::InProgress,
    }
}

/// The outcome of one reconcile, summarised into the three kstatus conditions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Work in progress: Reconciling=True, Ready=Unknown.
    Progressing { reason: String, message: String },
    /// Done: Ready=True; Reconciling and Stalled removed.
    Ready { reason: String, message: String },
    /// Failed and will be retried: Ready=False, Reconciling=True with ProgressingWithRetry.
    Retrying { reason: String, message: String },
    /// Failed and needs a human: Ready=False, Stalled=True; Reconciling removed.
    Stalled { reason: String, message: String },
}

/// Writes `outcome` into `conditions` as Ready/Reconciling/Stalled for `generation`.
pub fn summarize(conditions: &mut Vec<Condition>, outcome: &Outcome, generation: Option<i64>) {
    use ConditionStatus::{False, True, Unknown};
    let cond = |t: &str, s, r: &str, m: &str| Condition::new(t, s, r, m).for_generation(generation);
    match outcome {
        Outcome::Progressing { reason, message } => {
            set_condition(conditions, cond(types::RECONCILING, True, reason, message));
            set_condition(conditions, cond(types::READY, Unknown, reason, message));
            remove_condition(conditions, types::STALLED);
        }
        Outcome::Ready { reason, message } => {
            set_condition(conditions, cond(types::READY, True, reason, message));
            remove_condition(conditions, types::RECONCILING);
            remove_condition(conditions, types::STALLED);
        }
        Outcome::Retrying { reason, message } => {
            set_condition(conditions, cond(types::READY, False, reason, message));
            set_condition(
                conditions,
                cond(
                    types::RECONCILING,
                    True,
                    reasons::PROGRESSING_WITH_RETRY,
                    message,
                ),
            );
            remove_condition(conditions, types::STALLED);
        }
        Outcome::Stalled { reason, message } => {
            set_condition(conditions, cond(types::READY, False, reason, message));
            set_condition(conditions, cond(types::STALLED, True, reason, message));
            remove_condition(conditions, types::RECONCILING);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ConditionStatus::{False, True};

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let mut conds = vec![];
        let mut first = Condition::new(types::READY, True, reasons::SUCCEEDED, "a");
        first.last_transition_time = at(100);
        set_condition(&mut conds, first);

        let mut same = Condition::new(types::READY, True, reasons::SUCCEEDED, "b");
        same.last_transition_time = at(200);
        set_condition(&mut conds, same);
        assert_eq!(conds.len(), 1);
        assert_eq!(
            conds[0].last_transition_time,
            at(100),
            "same status keeps the time"
        );
        assert_eq!(conds[0].message, "b", "but takes the new message");

        let mut flipped = Condition::new(types::READY, False, reasons::FAILED, "c");
        flipped.last_transition_time = at(300);
        set_condition(&mut conds, flipped);
        assert_eq!(conds[0].last_transition_time, at(300));
    }

    #[test]
    fn summaries_follow_kstatus() {
        let mut conds = vec![];
        let g = Some(3);
        summarize(
            &mut conds,
            &Outcome::Progressing {
                reason: "Progressing".into(),
                message: "m".into(),
            },
            g,
        );
        assert_eq!(kstatus(&conds, g, g), KStatus::InProgress);

        summarize(
            &mut conds,
            &Outcome::Ready {
                reason: "Succeeded".into(),
                message: "ok".into(),
            },
            g,
        );
        assert_eq!(kstatus(&conds, g, g), KStatus::Current);
        assert!(find_condition(&conds, types::RECONCILING).is_none());

        summarize(
            &mut conds,
            &Outcome::Stalled {
                reason: "InvalidSpec".into(),
                message: "bad".into(),
            },
            g,
        );
        assert_eq!(kstatus(&conds, g, g), KStatus::Stalled);
        assert_eq!(find_condition(&conds, types::READY).unwrap().status, False);

        summarize(
            &mut conds,
            &Outcome::Retrying {
                reason: "GitOperationFailed".into(),
                message: "x".into(),
            },
            g,
        );
        assert_eq!(kstatus(&conds, g, g), KStatus::InProgress);
        assert!(find_condition(&conds, types::STALLED).is_none());
        assert_eq!(
            find_condition(&conds, types::RECONCILING).unwrap().reason,
            reasons::PROGRESSING_WITH_RETRY
        );
    }

    #[test]
    fn an_older_observed_generation_is_in_progress() {
        let mut conds = vec![];
        summarize(
            &mut conds,
            &Outcome::Ready {
                reason: "Succeeded".into(),
                message: "ok".into(),
            },
            Some(1),
        );
        assert_eq!(kstatus(&conds, Some(2), Some(1)), KStatus::InProgress);
    }
}
