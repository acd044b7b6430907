//! Weir's locks on a HelmRelease (`weir lock hr/<name>`, see [`weir_api::control`]): while the
//! release is locked, no Helm action runs — a new chart version, new values or a drift wait
//! until it is unlocked (or the lock expires). Flux v2 has no locks; this is Flux v1's
//! `fluxctl lock`, kept on the object so `kubectl` sees and undoes it.
//!
//! - A locked release that is deployed stays `Ready=True` with the reason it had
//!   (`InstallSucceeded`/`UpgradeSucceeded`, as Flux says of a release in sync) and a message
//!   that starts with the lock: `locked by alice: incident 42; Helm upgrade succeeded for …`.
//! - A locked release that is not deployed (failed, pending) is not repaired either: Ready is
//!   False with the failure reason of its last action and a message that names the lock.
//! - A lock on a release never installed does not hold: there is nothing to pin yet.
//! - An expired lock is released by the reconcile that finds it (label and annotations removed
//!   as the field manager `weir-lock`, a `LockExpired` Event), which then goes on as usual. It is
//!   found at the next reconcile (the interval), not at the expiry time itself.
//! - Weir's rollback (`weir.dev/rollback-to`) is checked first: an explicit rollback is carried
//!   out even on a locked release.

use chrono::{SecondsFormat, Utc};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};
use weir_api::{
    control::{LOCK_FIELD_MANAGER, Lock, reasons},
    helm_release::{self as hr, HelmRelease, HelmReleaseStatus, ReleaseAction},
};

use crate::{Context, error::HelmReleaseError, reconcile::Attempt, storage};

/// Step, before anything is downloaded or decided: whether a lock holds the release (then the
/// status and `attempt` say so and the reconcile ends). An expired lock is released here.
pub async fn hold(
    release: &HelmRelease,
    ctx: &Context,
    status: &mut HelmReleaseStatus,
    attempt: &mut Attempt,
) -> Result<bool, HelmReleaseError> {
    let Some(lock) = Lock::read(release.labels(), release.annotations()) else {
        return Ok(false);
    };
    if lock.expired(Utc::now()) {
        expire(release, ctx, &lock).await?;
        return Ok(false);
    }
    let storage_ns = release.storage_namespace();
    let history = storage::history(&ctx.base.client, &storage_ns, &release.release_name())
        .await
        .map_err(HelmReleaseError::Storage)?;
    let Some(latest) = history.first() else {
        return Ok(false);
    };
    status.storage_namespace = Some(storage_ns);
    crate::reconcile::record_history(status, &history);
    let state = latest.info.status.as_str();
    if state == "deployed" {
        let (reason, message) = crate::reconcile::in_sync_message(status, &history);
        attempt.released = Some((reason, held_message(&lock, &message)));
        return Ok(true);
    }
    let reason = match status.last_attempted_release_action {
        Some(ReleaseAction::Install) => hr::INSTALL_FAILED_REASON,
        _ => hr::UPGRADE_FAILED_REASON,
    };
    Err(HelmReleaseError::Action {
        reason,
        message: held_message(
            &lock,
            &format!(
                "release {}/{}.v{} is {state}, and is not repaired while locked",
                latest.namespace, latest.name, latest.version
            ),
        ),
    })
}

/// `<lock>; <message>; changes wait until it is unlocked`.
fn held_message(lock: &Lock, message: &str) -> String {
    format!(
        "{}; {message}; changes wait until it is unlocked",
        lock.describe()
    )
}

/// Removes an expired lock and says so in a `LockExpired` Event on the release.
async fn expire(release: &HelmRelease, ctx: &Context, lock: &Lock) -> Result<(), HelmReleaseError> {
    let api: Api<HelmRelease> = Api::namespaced(
        ctx.base.client.clone(),
        &release.namespace().unwrap_or_default(),
    );
    let patch = weir_api::control::unlock_patch();
    let params = PatchParams {
        field_manager: Some(LOCK_FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    api.patch(&release.name_any(), &params, &Patch::Merge(&patch))
        .await
        .map_err(HelmReleaseError::Kube)?;
    let expired = lock
        .expires
        .map(|e| e.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_default();
    let note = format!(
        "lock expired at {expired} and was released ({}); the release follows its spec again",
        lock.describe()
    );
    ctx.base
        .events
        .normal(release, reasons::LOCK_EXPIRED, "Unlock", &note)
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_release_says_who_locked_it_and_why_first() {
        let lock = Lock {
            reason: "incident 42".into(),
            by: Some("alice".into()),
            at: None,
            expires: None,
        };
        assert_eq!(
            held_message(
                &lock,
                "Helm upgrade succeeded for release a/b.v2 with chart c@1.0.0"
            ),
            "locked by alice: incident 42; Helm upgrade succeeded for release a/b.v2 with chart \
             c@1.0.0; changes wait until it is unlocked"
        );
    }
}
