//! `status.history`: Flux's record of the last reconciliations of a group of resources
//! (`meta.History` of fluxcd/pkg/apis/meta, Flux 2.7+), newest first.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::go_format;

/// At most this many snapshots are kept, as in Flux.
pub const HISTORY_MAX_SIZE: usize = 5;

/// Snapshots of the last reconciliations, the most recent first, one per distinct
/// (digest, status) pair.
pub type History = Vec<Snapshot>;

/// One outcome of reconciling one set of resources.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// Checksum, `<algorithm>:<hex>`, of the resources reconciled.
    pub digest: String,
    /// When these resources were first reconciled with this status.
    pub first_reconciled: Time,
    /// When these resources were last reconciled with this status.
    pub last_reconciled: Time,
    /// How long the last of these reconciliations took, as a Go duration (`1.5s`).
    pub last_reconciled_duration: String,
    /// The reason of the last reconciliation's outcome, such as `ReconciliationSucceeded`.
    pub last_reconciled_status: String,
    /// How many reconciliations had this digest and status.
    pub total_reconciliations: i64,
    /// More about the snapshot: `revision`, and `originRevision` when the source has one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// One reconciliation to record.
#[derive(Clone, Debug)]
pub struct Reconciled {
    pub digest: String,
    pub status: String,
    pub at: Time,
    pub took: Duration,
    pub metadata: BTreeMap<String, String>,
}

/// Records `entry`: the snapshot with the same digest and status is updated and moved to the
/// front, or a new one is put there; the oldest beyond [`HISTORY_MAX_SIZE`] are dropped.
pub fn upsert(history: &mut History, entry: Reconciled) {
    let took = go_format(entry.took);
    if let Some(i) = history
        .iter()
        .position(|s| s.digest == entry.digest && s.last_reconciled_status == entry.status)
    {
        let mut snapshot = history.remove(i);
        snapshot.last_reconciled = entry.at;
        snapshot.last_reconciled_duration = took;
        snapshot.total_reconciliations += 1;
        snapshot.metadata = entry.metadata;
        history.insert(0, snapshot);
    } else {
        history.insert(
            0,
            Snapshot {
                digest: entry.digest,
                first_reconciled: entry.at.clone(),
                last_reconciled: entry.at,
                last_reconciled_duration: took,
                last_reconciled_status: entry.status,
                total_reconciliations: 1,
                metadata: entry.metadata,
            },
        );
    }
    history.truncate(HISTORY_MAX_SIZE);
}

/// Whether recording a reconciliation with `digest` and `status` would only count it again:
/// the latest snapshot already has them.
#[must_use]
pub fn is_latest(history: &History, digest: &str, status: &str) -> bool {
    history
        .first()
        .is_some_and(|s| s.digest == digest && s.last_reconciled_status == status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    fn at(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    fn entry(digest: &str, status: &str, secs: i64) -> Reconciled {
        Reconciled {
            digest: digest.to_owned(),
            status: status.to_owned(),
            at: at(secs),
            took: Duration::from_millis(1500),
            metadata: BTreeMap::from([("revision".to_owned(), format!("main@sha1:{secs}"))]),
        }
    }

    #[test]
    fn a_repeated_outcome_is_counted_and_moved_to_the_front() {
        let mut history = History::new();
        upsert(
            &mut history,
            entry("sha256:a", "ReconciliationSucceeded", 1),
        );
        upsert(&mut history, entry("sha256:b", "HealthCheckFailed", 2));
        upsert(
            &mut history,
            entry("sha256:a", "ReconciliationSucceeded", 3),
        );

        assert_eq!(history.len(), 2);
        let latest = &history[0];
        assert_eq!(latest.digest, "sha256:a");
        assert_eq!(latest.first_reconciled, at(1));
        assert_eq!(latest.last_reconciled, at(3));
        assert_eq!(latest.total_reconciliations, 2);
        assert_eq!(latest.last_reconciled_duration, "1.5s");
        assert_eq!(latest.metadata["revision"], "main@sha1:3");
        assert_eq!(history[1].digest, "sha256:b");
        assert!(is_latest(&history, "sha256:a", "ReconciliationSucceeded"));
        assert!(!is_latest(&history, "sha256:a", "HealthCheckFailed"));
    }

    #[test]
    fn the_same_digest_with_another_status_is_another_snapshot() {
        let mut history = History::new();
        upsert(&mut history, entry("sha256:a", "HealthCheckFailed", 1));
        upsert(
            &mut history,
            entry("sha256:a", "ReconciliationSucceeded", 2),
        );
        assert_eq!(history.len(), 2);
        assert_eq!(history[0].last_reconciled_status, "ReconciliationSucceeded");
        assert_eq!(history[0].total_reconciliations, 1);
    }

    #[test]
    fn only_the_newest_five_are_kept() {
        let mut history = History::new();
        for i in 0..7 {
            upsert(
                &mut history,
                entry(&format!("sha256:{i}"), "ReconciliationSucceeded", i),
            );
        }
        let digests: Vec<&str> = history.iter().map(|s| s.digest.as_str()).collect();
        assert_eq!(
            digests,
            ["sha256:6", "sha256:5", "sha256:4", "sha256:3", "sha256:2"]
        );
    }
}
