//! Weir's rollback of a HelmRelease: the annotation `weir.dev/rollback-to: "<N>"` (a revision
//! in Helm's storage, as `helm history` lists it) rolls the release back to revision N once
//! (`helm rollback <release> N`, with `spec.rollback`'s options) and then holds it: no install,
//! upgrade, test or drift correction runs while the annotation is set, whatever the chart and
//! values become (a rollback wins over a lock, which holds the release as it is anyway),
//! and Ready says `Rolled back to revision N (by user: reason)`, announced once by a
//! `RolledBack` Event. Removed (`weir rollback helmrelease <name> --clear`, or `kubectl annotate
//! … weir.dev/rollback-to-`), the release is upgraded to the desired state again, with a
//! `RollbackCleared` Event. Flux has no such thing; its rollback is remediation only.
//!
//! The hold comes before the chart is fetched: a release rolled back because its new chart is
//! broken (or gone) stays rolled back. A revision that is not in storage (or is uninstalled)
//! stalls the HelmRelease with a message naming the revisions there are.

use kube::ResourceExt;
use weir_api::{
    ConditionStatus,
    condition::{find_condition, types},
    control::{
        ROLLBACK_TO,
        reasons::{ROLLBACK_CLEARED, ROLLED_BACK},
    },
    helm_release::{self as hr, HelmRelease, HelmReleaseStatus},
};

use crate::{
    Context, actions,
    error::HelmReleaseError,
    reconcile::Attempt,
    storage::{self, Release},
};

/// What a pinned release needs next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pin {
    /// No annotation: the usual decision.
    Unpinned,
    /// A Helm action left the latest revision pending: unlock it first.
    Unlock,
    /// Roll back to this revision.
    RollBack(i64),
    /// The latest revision is the rollback (or the revision itself): hold it.
    Held(i64),
    /// The annotation asks for what cannot be.
    Invalid(String),
}

/// The decision for `hr` given Helm's storage `history` (newest first).
#[must_use]
pub fn decide(hr: &HelmRelease, history: &[Release]) -> Pin {
    let Some(text) = hr.annotations().get(ROLLBACK_TO) else {
        return Pin::Unpinned;
    };
    let Some(version) = text.trim().parse::<i64>().ok().filter(|v| *v > 0) else {
        return Pin::Invalid(format!(
            "invalid revision '{text}': expected a Helm release revision number"
        ));
    };
    let listed = || {
        let all: Vec<String> = history
            .iter()
            .map(|r| format!("{} ({})", r.version, r.info.status))
            .collect();
        if all.is_empty() {
            "none".to_owned()
        } else {
            all.join(", ")
        }
    };
    let Some(wanted) = history.iter().find(|r| r.version == version) else {
        return Pin::Invalid(format!(
            "revision {version} is not in Helm's storage (revisions: {})",
            listed()
        ));
    };
    if matches!(wanted.info.status.as_str(), "uninstalled" | "uninstalling")
        || storage::is_pending(&wanted.info.status)
    {
        return Pin::Invalid(format!(
            "revision {version} is {} and cannot be rolled back to",
            wanted.info.status
        ));
    }
    let Some(latest) = history.first() else {
        return Pin::Invalid(format!("revision {version} is not in Helm's storage"));
    };
    if storage::is_pending(&latest.info.status) {
        return Pin::Unlock;
    }
    let deployed = latest.info.status == "deployed";
    let is_rollback = latest.info.description == format!("Rollback to {version}");
    if deployed && (latest.version == version || is_rollback) {
        Pin::Held(version)
    } else {
        Pin::RollBack(version)
    }
}

/// While `hr` is pinned: rolls it back (once) and holds it; returns Helm's storage history
/// when held (the reconcile is then done). Unpinned, `None`, and a release that was held is
/// announced as following its desired state again.
pub async fn hold(
    hr: &HelmRelease,
    ctx: &Context,
    status: &HelmReleaseStatus,
    attempt: &mut Attempt,
) -> Result<Option<Vec<Release>>, HelmReleaseError> {
    let storage_ns = hr.storage_namespace();
    let release_name = hr.release_name();
    // At most: an unlock, the rollback, and the check that it holds.
    for _ in 0..3 {
        if !hr.annotations().contains_key(ROLLBACK_TO) {
            announce_cleared(hr, ctx, status).await;
            return Ok(None);
        }
        let history = storage::history(&ctx.base.client, &storage_ns, &release_name)
            .await
            .map_err(HelmReleaseError::Storage)?;
        match decide(hr, &history) {
            Pin::Unpinned => return Ok(None),
            Pin::Invalid(message) => return Err(HelmReleaseError::Rollback(message)),
            Pin::Held(version) => {
                attempt.released = Some((ROLLED_BACK, ready_message(hr, version)));
                return Ok(Some(history));
            }
            Pin::Unlock => {
                if let Some(latest) = history.first() {
                    let message = storage::unlock_message(&latest.info.status);
                    storage::unlock(&ctx.base.client, &storage_ns, latest, &message)
                        .await
                        .map_err(HelmReleaseError::Storage)?;
                    attempt.acted = true;
                }
            }
            Pin::RollBack(version) => {
                tracing::info!(release = %format!("{storage_ns}/{release_name}"), version, "rolling back as weir.dev/rollback-to asks");
                actions::rollback_to(ctx, hr, version)
                    .await
                    .map_err(|message| HelmReleaseError::Action {
                        reason: hr::ROLLBACK_FAILED_REASON,
                        message: format!(
                            "Helm rollback to revision {version} failed for release {storage_ns}/{release_name}: {message}"
                        ),
                    })?;
                attempt.acted = true;
            }
        }
    }
    Err(HelmReleaseError::Rollback(
        "the release did not hold the revision after a rollback".to_owned(),
    ))
}

/// Ready's message while held: `Rolled back to revision N (by user: reason)`.
#[must_use]
pub fn ready_message(hr: &HelmRelease, version: i64) -> String {
    weir_api::control::rolled_back_message(hr.annotations(), &version.to_string())
}

/// A release whose Ready said it was rolled back, now unpinned: a `RollbackCleared` Event.
async fn announce_cleared(hr: &HelmRelease, ctx: &Context, status: &HelmReleaseStatus) {
    let was_held = find_condition(&status.conditions, types::READY)
        .is_some_and(|c| c.reason == ROLLED_BACK && c.status == ConditionStatus::True);
    if was_held {
        ctx.base
            .events
            .normal(
                hr,
                ROLLBACK_CLEARED,
                "Reconcile",
                "Rollback cleared: following the desired chart and values again",
            )
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;
    use weir_api::control::{ROLLBACK_REASON, ROLLED_BACK_BY};

    fn hr(rollback_to: Option<&str>) -> HelmRelease {
        let mut hr: HelmRelease = serde_json::from_value(serde_json::json!({
            "apiVersion": "helm.toolkit.fluxcd.io/v2",
            "kind": "HelmRelease",
            "metadata": { "name": "app", "namespace": "apps" },
            "spec": { "interval": "10m", "chart": { "spec": {
                "chart": "web", "sourceRef": { "kind": "HelmRepository", "name": "charts" }
            } } }
        }))
        .unwrap();
        if let Some(to) = rollback_to {
            hr.metadata.annotations = Some([(ROLLBACK_TO.to_owned(), to.to_owned())].into());
        }
        hr
    }

    fn release(version: i64, status: &str, description: &str) -> Release {
        serde_json::from_value(serde_json::json!({
            "name": "app", "namespace": "apps", "version": version,
            "info": { "status": status, "description": description },
        }))
        .unwrap()
    }

    #[test]
    fn a_pinned_release_is_rolled_back_once_then_held() {
        let upgraded = [
            release(2, "deployed", "Upgrade complete"),
            release(1, "superseded", "Install complete"),
        ];
        assert_eq!(decide(&hr(None), &upgraded), Pin::Unpinned);
        assert_eq!(decide(&hr(Some("1")), &upgraded), Pin::RollBack(1));
        let rolled_back = [
            release(3, "deployed", "Rollback to 1"),
            release(2, "superseded", "Upgrade complete"),
            release(1, "superseded", "Install complete"),
        ];
        assert_eq!(decide(&hr(Some("1")), &rolled_back), Pin::Held(1));
        // Back to the upgrade, by number: a rollback to 2.
        assert_eq!(decide(&hr(Some("2")), &rolled_back), Pin::RollBack(2));
        // The latest itself: nothing to do.
        assert_eq!(decide(&hr(Some("3")), &rolled_back), Pin::Held(3));
        let pending = [release(4, "pending-upgrade", ""), rolled_back[0].clone()];
        assert_eq!(decide(&hr(Some("3")), &pending), Pin::Unlock);
    }

    #[test]
    fn a_revision_not_in_storage_or_malformed_stalls() {
        let history = [release(1, "deployed", "Install complete")];
        let Pin::Invalid(missing) = decide(&hr(Some("5")), &history) else {
            panic!("not refused");
        };
        assert_eq!(
            missing,
            "revision 5 is not in Helm's storage (revisions: 1 (deployed))"
        );
        let Pin::Invalid(bad) = decide(&hr(Some("two")), &history) else {
            panic!("not refused");
        };
        assert!(bad.contains("invalid revision 'two'"), "{bad}");
        assert!(matches!(decide(&hr(Some("0")), &history), Pin::Invalid(_)));
        let gone = [release(1, "uninstalled", "")];
        assert!(matches!(decide(&hr(Some("1")), &gone), Pin::Invalid(_)));
    }

    #[test]
    fn ready_says_who_rolled_back_and_why() {
        let mut pinned = hr(Some("1"));
        pinned.metadata.annotations.get_or_insert_default().extend([
            (ROLLED_BACK_BY.to_owned(), "alice".to_owned()),
            (ROLLBACK_REASON.to_owned(), "1.1.0 is broken".to_owned()),
        ]);
        assert_eq!(
            ready_message(&pinned, 1),
            "Rolled back to revision 1 (by alice: 1.1.0 is broken)"
        );
        assert_eq!(
            ready_message(&hr(Some("1")), 1),
            "Rolled back to revision 1"
        );
    }
}
