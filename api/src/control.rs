//! Weir's control extensions (`weir.dev/`): locks, rollbacks and manual releases, recorded as
//! labels and annotations on the objects themselves so that `kubectl` sees and can undo them.
//!
//! - A **lock** pins a workload (Deployment, StatefulSet, DaemonSet, CronJob) or a HelmRelease
//!   to what it runs now. The label [`LOCKED_LABEL`] marks it (so controllers can watch only
//!   locked objects); the annotations say why, who and until when. A Kustomization keeps the
//!   live images of a locked workload when it applies; image automation leaves the setter
//!   markers of a locked workload alone; the helm controller does not upgrade a locked
//!   HelmRelease. An expired lock is removed by the controller that finds it, with an Event.
//! - A **rollback** pins a Kustomization or HelmRelease to an earlier applied revision until it
//!   is cleared: [`ROLLBACK_TO`] and who/why annotations on the object.
//! - A **manual release** is a git commit; its record is the commit itself.

use chrono::{DateTime, Utc};

/// Label: `"true"` on a locked object.
pub const LOCKED_LABEL: &str = "weir.dev/locked";
/// Annotation: why the object is locked (required for a lock).
pub const LOCK_REASON: &str = "weir.dev/lock-reason";
/// Annotation: the Kubernetes user who locked it.
pub const LOCKED_BY: &str = "weir.dev/locked-by";
/// Annotation: when it was locked (RFC 3339).
pub const LOCKED_AT: &str = "weir.dev/locked-at";
/// Annotation: when the lock expires (RFC 3339); absent for a lock until unlocked.
pub const LOCK_EXPIRES: &str = "weir.dev/lock-expires";
/// The field manager `weir lock`/`weir unlock` write with.
pub const LOCK_FIELD_MANAGER: &str = "weir-lock";

/// Annotation on a Kustomization or HelmRelease: the revision it is rolled back to (a source
/// revision such as `main@sha1:…` for a Kustomization, a Helm release number for a
/// HelmRelease).
pub const ROLLBACK_TO: &str = "weir.dev/rollback-to";
/// Annotation: the Kubernetes user who rolled it back.
pub const ROLLED_BACK_BY: &str = "weir.dev/rolled-back-by";
/// Annotation: when it was rolled back (RFC 3339).
pub const ROLLED_BACK_AT: &str = "weir.dev/rolled-back-at";
/// Annotation: why (optional).
pub const ROLLBACK_REASON: &str = "weir.dev/rollback-reason";

/// Annotation on a Kustomization: `"true"` lets a revision that applies no object prune every
/// object applied before. Without it, such a revision (a path emptied by mistake) is refused
/// and nothing is pruned.
pub const ALLOW_MASS_PRUNE: &str = "weir.dev/allow-mass-prune";

/// Event reasons of the control extensions, on the object concerned.
pub mod reasons {
    pub const LOCKED: &str = "Locked";
    pub const UNLOCKED: &str = "Unlocked";
    pub const LOCK_EXPIRED: &str = "LockExpired";
    /// A Kustomization kept a locked workload's images.
    pub const LOCK_HELD: &str = "LockHeld";
    pub const ROLLED_BACK: &str = "RolledBack";
    pub const ROLLBACK_CLEARED: &str = "RollbackCleared";
    pub const RELEASED: &str = "Released";
}

/// The kinds that can be locked, as (group, kind).
pub const LOCKABLE_KINDS: [(&str, &str); 5] = [
    ("apps", "Deployment"),
    ("apps", "StatefulSet"),
    ("apps", "DaemonSet"),
    ("batch", "CronJob"),
    ("helm.toolkit.fluxcd.io", "HelmRelease"),
];

/// Whether `(group, kind)` can be locked.
#[must_use]
pub fn lockable(group: &str, kind: &str) -> bool {
    LOCKABLE_KINDS
        .iter()
        .any(|(g, k)| *g == group && *k == kind)
}

/// Where a lockable workload kind holds its pod spec, as a JSON pointer: `spec.template.spec`,
/// or a CronJob's `spec.jobTemplate.spec.template.spec`. `None` for a kind without one (a
/// HelmRelease, whose images are its chart's).
#[must_use]
pub fn pod_spec_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Deployment" | "StatefulSet" | "DaemonSet" => Some("/spec/template/spec"),
        "CronJob" => Some("/spec/jobTemplate/spec/template/spec"),
        _ => None,
    }
}

/// The images of a workload's containers and init containers, as `(container, image)` in the
/// order the object lists them; empty for a kind without a pod spec or a malformed object.
#[must_use]
pub fn container_images(kind: &str, object: &serde_json::Value) -> Vec<(String, String)> {
    let Some(spec) = pod_spec_pointer(kind).and_then(|p| object.pointer(p)) else {
        return vec![];
    };
    ["initContainers", "containers"]
        .iter()
        .filter_map(|field| spec.get(field)?.as_array())
        .flatten()
        .filter_map(|c| {
            let name = c.get("name")?.as_str()?;
            let image = c.get("image")?.as_str()?;
            Some((name.to_owned(), image.to_owned()))
        })
        .collect()
}

/// The merge patch that removes a lock: the label and every lock annotation.
#[must_use]
pub fn unlock_patch() -> serde_json::Value {
    serde_json::json!({ "metadata": {
        "labels": { LOCKED_LABEL: null },
        "annotations": { LOCK_REASON: null, LOCKED_BY: null, LOCKED_AT: null, LOCK_EXPIRES: null },
    } })
}

/// `Rolled back to revision <revision> (by <who>: <why>)`, Ready's message while an object is
/// pinned, from its rollback annotations.
#[must_use]
pub fn rolled_back_message(
    annotations: &std::collections::BTreeMap<String, String>,
    revision: &str,
) -> String {
    let by = annotations.get(ROLLED_BACK_BY).filter(|s| !s.is_empty());
    let reason = annotations.get(ROLLBACK_REASON).filter(|s| !s.is_empty());
    let why = match (by, reason) {
        (Some(by), Some(reason)) => format!(" (by {by}: {reason})"),
        (Some(by), None) => format!(" (by {by})"),
        (None, Some(reason)) => format!(" ({reason})"),
        (None, None) => String::new(),
    };
    format!("Rolled back to revision {revision}{why}")
}

/// A lock read from an object's labels and annotations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lock {
    pub reason: String,
    pub by: Option<String>,
    pub at: Option<DateTime<Utc>>,
    pub expires: Option<DateTime<Utc>>,
}

impl Lock {
    /// The lock on an object with these labels and annotations, if it is locked: the label is
    /// `"true"`. A malformed time is read as absent (for `expires`: no expiry), never as an
    /// error, so a hand-edited lock still holds.
    #[must_use]
    pub fn read(
        labels: &std::collections::BTreeMap<String, String>,
        annotations: &std::collections::BTreeMap<String, String>,
    ) -> Option<Self> {
        if labels.get(LOCKED_LABEL).map(String::as_str) != Some("true") {
            return None;
        }
        let time = |key: &str| {
            annotations
                .get(key)
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc))
        };
        Some(Self {
            reason: annotations.get(LOCK_REASON).cloned().unwrap_or_default(),
            by: annotations.get(LOCKED_BY).cloned(),
            at: time(LOCKED_AT),
            expires: time(LOCK_EXPIRES),
        })
    }

    /// Whether the lock has expired at `now`.
    #[must_use]
    pub fn expired(&self, now: DateTime<Utc>) -> bool {
        self.expires.is_some_and(|e| e <= now)
    }

    /// One line for tables and messages: `locked by alice: reason (until …)`.
    #[must_use]
    pub fn describe(&self) -> String {
        let mut line = String::from("locked");
        if let Some(by) = &self.by {
            line.push_str(" by ");
            line.push_str(by);
        }
        if !self.reason.is_empty() {
            line.push_str(": ");
            line.push_str(&self.reason);
        }
        if let Some(expires) = self.expires {
            line.push_str(" (until ");
            line.push_str(&expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
            line.push(')');
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_lock_is_read_from_the_label_and_annotations() {
        let labels = map(&[(LOCKED_LABEL, "true")]);
        let annotations = map(&[
            (LOCK_REASON, "incident 42"),
            (LOCKED_BY, "alice"),
            (LOCKED_AT, "2026-12-01T10:00:00Z"),
            (LOCK_EXPIRES, "2026-12-02T10:00:00Z"),
        ]);
        let lock = Lock::read(&labels, &annotations).unwrap();
        assert_eq!(lock.reason, "incident 42");
        assert_eq!(lock.by.as_deref(), Some("alice"));
        let before: DateTime<Utc> = "2026-12-02T09:59:59Z".parse().unwrap();
        let after: DateTime<Utc> = "2026-12-02T10:00:00Z".parse().unwrap();
        assert!(!lock.expired(before));
        assert!(lock.expired(after));
        assert_eq!(
            lock.describe(),
            "locked by alice: incident 42 (until 2026-12-02T10:00:00Z)"
        );
    }

    #[test]
    fn without_the_label_nothing_is_locked_and_a_bad_expiry_never_expires() {
        let annotations = map(&[(LOCK_REASON, "x"), (LOCK_EXPIRES, "tomorrow")]);
        assert_eq!(Lock::read(&BTreeMap::new(), &annotations), None);
        let lock = Lock::read(&map(&[(LOCKED_LABEL, "true")]), &annotations).unwrap();
        assert!(!lock.expired(Utc::now()));
    }

    #[test]
    fn container_images_are_read_from_each_kinds_pod_spec() {
        let pod = serde_json::json!({
            "initContainers": [{ "name": "init", "image": "init:1" }],
            "containers": [{ "name": "app", "image": "app:1" }, { "name": "no-image" }],
        });
        let deployment = serde_json::json!({ "spec": { "template": { "spec": pod } } });
        let cronjob = serde_json::json!({ "spec": { "jobTemplate": { "spec": {
            "template": { "spec": pod } } } } });
        let expected = [
            ("init".to_owned(), "init:1".to_owned()),
            ("app".to_owned(), "app:1".to_owned()),
        ];
        assert_eq!(container_images("Deployment", &deployment), expected);
        assert_eq!(container_images("CronJob", &cronjob), expected);
        assert!(container_images("CronJob", &deployment).is_empty());
        assert!(container_images("HelmRelease", &deployment).is_empty());
        assert!(
            lockable("apps", "StatefulSet") && lockable("helm.toolkit.fluxcd.io", "HelmRelease")
        );
        assert!(!lockable("", "Pod") && !lockable("batch", "Job"));
    }
}
