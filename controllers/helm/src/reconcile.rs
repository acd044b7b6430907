//! The steps of one HelmRelease reconcile: dependencies, the chart (through a HelmChart), the
//! values, what Helm's storage holds, and the one next action — install, upgrade, test,
//! remediation — repeated until the release is in sync, failed, or out of retries.
//!
//! The decision ([`next`]) is a pure function of what storage holds, the desired chart and
//! values, and the failure counters, so it is unit-tested without a cluster.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use weir_api::helm_release::{
    self as hr, HelmRelease, HelmReleaseStatus, ReleaseAction, RemediationStrategy, Snapshot,
    TestHookStatus,
};
use weir_api::{Condition, ConditionStatus, HelmChart, condition, types};

use crate::error::HelmReleaseError;
use crate::storage::{self, Release};
use crate::{Context, actions, drift, values};

/// The field manager of the HelmCharts made from `spec.chart`: Flux's, so a HelmChart moves
/// between engines.
pub const CHART_FIELD_MANAGER: &str = "helm-controller";
/// The most Helm actions one reconcile runs (an unlock, a remediation, the action, its tests).
const MAX_ACTIONS: usize = 4;

/// What one reconcile found and did, for the status.
#[derive(Debug, Default)]
pub struct Attempt {
    /// The last successful action's message (Ready and Released), when one ran or is recorded.
    pub released: Option<(&'static str, String)>,
    /// Whether any Helm action ran (announced in an Event).
    pub acted: bool,
}

/// The chart and values a release should have.
#[derive(Debug, Clone)]
pub struct Desired {
    pub chart_name: String,
    pub chart_version: String,
    pub chart_path: PathBuf,
    pub values: serde_json::Value,
    pub config_digest: String,
    /// The digest of `spec.postRenderers`, when there are any.
    pub post_renderers_digest: Option<String>,
}

/// The one next thing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Nothing: the release is what the spec asks.
    InSync,
    /// Install; `replace` reuses the name of an uninstalled or failed-only release.
    Install {
        replace: bool,
    },
    Upgrade,
    Test,
    /// Mark a release left `pending-*` by a killed Helm as failed.
    Unlock,
    /// Retries are spent for this desired state: the message says which action.
    Stalled(String),
}

/// The decision, from the latest release in storage and the status's counters.
#[must_use]
pub fn next(
    hr: &HelmRelease,
    status: &HelmReleaseStatus,
    history: &[Release],
    desired: &Desired,
    forced: bool,
) -> Next {
    let Some(latest) = history.first() else {
        return gate(hr, status, ReleaseAction::Install)
            .unwrap_or(Next::Install { replace: false });
    };
    let state = latest.info.status.as_str();
    if storage::is_pending(state) {
        return Next::Unlock;
    }
    let ever_deployed = history
        .iter()
        .any(|r| matches!(r.info.status.as_str(), "deployed" | "superseded"));
    if state == "uninstalled" || (state == "failed" && !ever_deployed) {
        return gate(hr, status, ReleaseAction::Install).unwrap_or(Next::Install { replace: true });
    }
    let differs = state != "deployed"
        || latest.chart.metadata.name != desired.chart_name
        || latest.chart.metadata.version != desired.chart_version
        || storage::config_digest(&config_of(latest)) != desired.config_digest
        || status.observed_post_renderers_digest != desired.post_renderers_digest;
    if differs || forced {
        if forced && !differs {
            return Next::Upgrade;
        }
        return gate(hr, status, ReleaseAction::Upgrade).unwrap_or(Next::Upgrade);
    }
    if test_enabled(hr) && !tested(status, latest) {
        return Next::Test;
    }
    Next::InSync
}

/// `Stalled` when `action` has no retries left.
fn gate(hr: &HelmRelease, status: &HelmReleaseStatus, action: ReleaseAction) -> Option<Next> {
    let (retries, failures, verb) = match action {
        ReleaseAction::Install => (install_retries(hr), status.install_failures, "install"),
        ReleaseAction::Upgrade => (upgrade_retries(hr), status.upgrade_failures, "upgrade"),
    };
    exhausted(retries, failures)
        .then(|| Next::Stalled(format!("Failed to {verb} after {failures} attempt(s)")))
}

/// Flux's rule: a negative count retries for ever; otherwise `retries` retries after the first
/// attempt.
fn exhausted(retries: i64, failures: i64) -> bool {
    retries >= 0 && failures > retries
}

fn install_retries(hr: &HelmRelease) -> i64 {
    hr.spec
        .install
        .as_ref()
        .and_then(|i| i.remediation.as_ref())
        .map_or(0, |r| r.retries)
}

fn upgrade_retries(hr: &HelmRelease) -> i64 {
    hr.spec
        .upgrade
        .as_ref()
        .and_then(|u| u.remediation.as_ref())
        .map_or(0, |r| r.retries)
}

fn test_enabled(hr: &HelmRelease) -> bool {
    hr.spec.test.as_ref().is_some_and(|t| t.enable)
}

/// Whether the tests ran against `release` (its snapshot holds their outcome).
fn tested(status: &HelmReleaseStatus, release: &Release) -> bool {
    status
        .history
        .iter()
        .any(|s| s.version == release.version && s.name == release.name && s.test_hooks.is_some())
}

fn config_of(release: &Release) -> serde_json::Value {
    release
        .config
        .clone()
        .map_or_else(|| json!({}), serde_json::Value::Object)
}

/// Whether a failed test is remediated like a failed release.
fn ignores_test_failures(hr: &HelmRelease, action: Option<ReleaseAction>) -> bool {
    let default = hr.spec.test.as_ref().is_some_and(|t| t.ignore_failures);
    match action {
        Some(ReleaseAction::Install) => hr
            .spec
            .install
            .as_ref()
            .and_then(|i| i.remediation.as_ref())
            .and_then(|r| r.ignore_test_failures)
            .unwrap_or(default),
        Some(ReleaseAction::Upgrade) => hr
            .spec
            .upgrade
            .as_ref()
            .and_then(|u| u.remediation.as_ref())
            .and_then(|r| r.ignore_test_failures)
            .unwrap_or(default),
        None => default,
    }
}

/// Runs the steps of one reconcile, filling `status` in.
pub async fn run(
    hr: &HelmRelease,
    ctx: &Context,
    status: &mut HelmReleaseStatus,
    attempt: &mut Attempt,
) -> Result<(), HelmReleaseError> {
    if let Some(problem) = actions::unsupported_by(ctx, hr) {
        return Err(HelmReleaseError::Unsupported(problem));
    }
    // Compiled before anything runs: a bad expression stalls whatever the release's state.
    weir_ssa::HealthRules::compile(&hr.spec.health_check_exprs)
        .map_err(HelmReleaseError::HealthCheckExpr)?;
    check_dependencies(hr, ctx).await?;
    // Weir's rollback: a pinned release is rolled back and held, whatever its chart and values.
    if let Some(history) = crate::rollback::hold(hr, ctx, status, attempt).await? {
        status.storage_namespace = Some(hr.storage_namespace());
        record_history(status, &history);
        return Ok(());
    }
    // Weir's locks: a locked release is left as it is.
    if crate::lock::hold(hr, ctx, status, attempt).await? {
        return Ok(());
    }
    let desired = desired(hr, ctx, status).await?;

    let mut forced = handle_requests(hr, status, &desired);

    let storage_ns = hr.storage_namespace();
    let release_name = hr.release_name();
    status.storage_namespace = Some(storage_ns.clone());
    for _ in 0..MAX_ACTIONS {
        let history = storage::history(&ctx.base.client, &storage_ns, &release_name)
            .await
            .map_err(HelmReleaseError::Storage)?;
        let decision = next(hr, status, &history, &desired, forced.is_some());
        tracing::debug!(?decision, "next");
        match decision {
            Next::InSync => {
                record_history(status, &history);
                attempt
                    .released
                    .get_or_insert_with(|| in_sync_message(status, &history));
                if let Some(latest) = history.first() {
                    status.inventory = Some(
                        drift::inventory(ctx, latest)
                            .await
                            .map_err(|e| HelmReleaseError::Drift(weir_runtime::chain(&e)))?,
                    );
                    check_drift(hr, ctx, status, latest).await?;
                }
                return Ok(());
            }
            Next::Stalled(message) => {
                record_history(status, &history);
                return Err(HelmReleaseError::RetriesExhausted(message));
            }
            Next::Unlock => {
                let Some(latest) = history.first() else {
                    continue;
                };
                let message = storage::unlock_message(&latest.info.status);
                storage::unlock(&ctx.base.client, &storage_ns, latest, &message)
                    .await
                    .map_err(HelmReleaseError::Storage)?;
                tracing::warn!(release = %release_name, version = latest.version, "{message}");
                attempt.acted = true;
            }
            Next::Install { replace } => {
                forced = None;
                release(
                    hr,
                    ctx,
                    status,
                    attempt,
                    &desired,
                    ReleaseAction::Install,
                    replace,
                )
                .await?;
            }
            Next::Upgrade => {
                forced = None;
                release(
                    hr,
                    ctx,
                    status,
                    attempt,
                    &desired,
                    ReleaseAction::Upgrade,
                    false,
                )
                .await?;
            }
            Next::Test => test(hr, ctx, status, attempt, &desired).await?,
        }
    }
    let history = storage::history(&ctx.base.client, &storage_ns, &release_name)
        .await
        .map_err(HelmReleaseError::Storage)?;
    record_history(status, &history);
    Ok(())
}

/// The chart (downloaded, verified) and values the release should have.
async fn desired(
    hr: &HelmRelease,
    ctx: &Context,
    status: &mut HelmReleaseStatus,
) -> Result<Desired, HelmReleaseError> {
    let chart = chart(hr, ctx, status).await?;
    let artifact = chart
        .status
        .as_ref()
        .and_then(|s| s.artifact.clone())
        .ok_or_else(|| {
            HelmReleaseError::ChartNotReady(
                chart_key(&chart),
                "no artifact".into(),
                ctx.config.dependency_requeue,
            )
        })?;
    let chart_path =
        ctx.fetcher
            .fetch(&artifact)
            .await
            .map_err(|source| HelmReleaseError::Fetch {
                name: chart_key(&chart),
                source,
            })?;
    let namespace = hr.namespace().unwrap_or_default();
    let values = values::compose(&ctx.base.client, &namespace, &hr.spec)
        .await
        .map_err(HelmReleaseError::Values)?;
    Ok(Desired {
        chart_name: chart
            .status
            .as_ref()
            .and_then(|s| s.observed_chart_name.clone())
            .unwrap_or_else(|| chart.spec.chart.clone()),
        chart_version: artifact.revision.clone(),
        chart_path,
        config_digest: storage::config_digest(&values),
        values,
        post_renderers_digest: crate::postrender::digest(&hr.spec.post_renderers),
    })
}

/// Drift detection as `spec.driftDetection` asks: `warn` reports drifted objects in the
/// Drifted condition and a Warning Event; `enabled` applies them again from the manifest and
/// says so in a Normal Event. Without drift (or when disabled) there is no Drifted condition.
async fn check_drift(
    hr: &HelmRelease,
    ctx: &Context,
    status: &mut HelmReleaseStatus,
    latest: &Release,
) -> Result<(), HelmReleaseError> {
    use weir_api::helm_release::DriftDetectionMode;
    use weir_runtime::{decision::Notice, events::EventType};
    let mode = hr
        .spec
        .drift_detection
        .as_ref()
        .and_then(|d| d.mode)
        .unwrap_or_default();
    if mode == DriftDetectionMode::Disabled {
        condition::remove_condition(&mut status.conditions, hr::DRIFTED_CONDITION);
        return Ok(());
    }
    let correct = mode == DriftDetectionMode::Enabled;
    let drifted = drift::check(ctx, hr, latest, correct)
        .await
        .map_err(|e| HelmReleaseError::Drift(weir_runtime::chain(&e)))?;
    if drifted.is_empty() {
        condition::remove_condition(&mut status.conditions, hr::DRIFTED_CONDITION);
        return Ok(());
    }
    let objects = drift::describe(&drifted);
    let release = full_name(latest);
    let (value, reason, message, kind) = if correct {
        (
            ConditionStatus::False,
            hr::DRIFT_CORRECTED_REASON,
            format!("Cluster state of release {release} was corrected: {objects}"),
            EventType::Normal,
        )
    } else {
        (
            ConditionStatus::True,
            hr::DRIFT_DETECTED_REASON,
            format!(
                "Cluster state of release {release} has drifted from the desired state: {objects}"
            ),
            EventType::Warning,
        )
    };
    tracing::info!(release, drifted = objects, corrected = correct, "drift");
    set(status, hr, hr::DRIFTED_CONDITION, value, reason, &message);
    let notice = Notice {
        r#type: kind,
        reason: reason.to_owned(),
        message,
    };
    ctx.base
        .events
        .announce(hr, Some(&notice), "Reconcile")
        .await;
    Ok(())
}

/// Gives a new desired state (or a `resetAt` request) its retries back, records the requests
/// handled, and returns the `forceAt` token when an upgrade is forced.
fn handle_requests(
    hr: &HelmRelease,
    status: &mut HelmReleaseStatus,
    desired: &Desired,
) -> Option<String> {
    // A new desired state (or a reset request) gets its retries back.
    let reset = requested(
        hr,
        hr::RESET_AT_ANNOTATION,
        status.last_handled_reset_at.as_deref(),
    );
    let generation = hr.metadata.generation;
    if reset.is_some()
        || status.last_attempted_revision.as_deref() != Some(desired.chart_version.as_str())
        || status.last_attempted_config_digest.as_deref() != Some(desired.config_digest.as_str())
        || status.last_attempted_generation != generation
    {
        status.failures = 0;
        status.install_failures = 0;
        status.upgrade_failures = 0;
    }
    if let Some(token) = reset {
        status.last_handled_reset_at = Some(token);
    }
    let forced = requested(
        hr,
        hr::FORCE_AT_ANNOTATION,
        status.last_handled_force_at.as_deref(),
    );
    if let Some(token) = &forced {
        status.last_handled_force_at = Some(token.clone());
    }
    forced
}

/// The new value of annotation `key`, when it differs from the one last handled.
fn requested(hr: &HelmRelease, key: &str, handled: Option<&str>) -> Option<String> {
    hr.annotations()
        .get(key)
        .filter(|token| Some(token.as_str()) != handled)
        .cloned()
}

fn chart_key(chart: &HelmChart) -> String {
    format!(
        "{}/{}",
        chart.namespace().unwrap_or_default(),
        chart.name_any()
    )
}

/// "ns/name.vN", as Flux names a release revision.
fn full_name(release: &Release) -> String {
    format!(
        "{}/{}.v{}",
        release.namespace, release.name, release.version
    )
}

pub(crate) fn in_sync_message(
    status: &HelmReleaseStatus,
    history: &[Release],
) -> (&'static str, String) {
    let Some(latest) = history.first() else {
        return (hr::INSTALL_SUCCEEDED_REASON, String::new());
    };
    let (reason, verb) = match status.last_attempted_release_action {
        Some(ReleaseAction::Upgrade) => (hr::UPGRADE_SUCCEEDED_REASON, "upgrade"),
        _ if latest.version > 1 => (hr::UPGRADE_SUCCEEDED_REASON, "upgrade"),
        _ => (hr::INSTALL_SUCCEEDED_REASON, "install"),
    };
    (
        reason,
        format!(
            "Helm {verb} succeeded for release {} with chart {}@{}",
            full_name(latest),
            latest.chart.metadata.name,
            latest.chart.metadata.version
        ),
    )
}

/// Installs or upgrades; a failure counts against the action's retries and is remediated as
/// the spec says before the error is returned.
async fn release(
    hr: &HelmRelease,
    ctx: &Context,
    status: &mut HelmReleaseStatus,
    attempt: &mut Attempt,
    desired: &Desired,
    action: ReleaseAction,
    replace: bool,
) -> Result<(), HelmReleaseError> {
    status.last_attempted_release_action = Some(action);
    status.last_attempted_revision = Some(desired.chart_version.clone());
    status.last_attempted_config_digest = Some(desired.config_digest.clone());
    status.last_attempted_generation = hr.metadata.generation;
    attempt.acted = true;
    let chart = format!("{}@{}", desired.chart_name, desired.chart_version);
    let target = format!("{}/{}", hr.release_namespace(), hr.release_name());
    let mut result = match action {
        ReleaseAction::Install => actions::install(ctx, hr, desired, replace).await,
        ReleaseAction::Upgrade => actions::upgrade(ctx, hr, desired).await,
    };
    if let Ok(version) = result
        && !hr.spec.health_check_exprs.is_empty()
    {
        result = check_health(hr, ctx).await.map(|()| version);
    }
    let (verb, ok_reason, failed_reason) = match action {
        ReleaseAction::Install => (
            "install",
            hr::INSTALL_SUCCEEDED_REASON,
            hr::INSTALL_FAILED_REASON,
        ),
        ReleaseAction::Upgrade => (
            "upgrade",
            hr::UPGRADE_SUCCEEDED_REASON,
            hr::UPGRADE_FAILED_REASON,
        ),
    };
    match result {
        Ok(version) => {
            let message =
                format!("Helm {verb} succeeded for release {target}.v{version} with chart {chart}");
            set(
                status,
                hr,
                hr::RELEASED_CONDITION,
                ConditionStatus::True,
                ok_reason,
                &message,
            );
            condition::remove_condition(&mut status.conditions, hr::TEST_SUCCESS_CONDITION);
            condition::remove_condition(&mut status.conditions, hr::REMEDIATED_CONDITION);
            status.failures = 0;
            status.install_failures = 0;
            status.upgrade_failures = 0;
            status
                .observed_post_renderers_digest
                .clone_from(&desired.post_renderers_digest);
            attempt.released = Some((ok_reason, message));
            Ok(())
        }
        Err(error) => {
            let message =
                format!("Helm {verb} failed for release {target} with chart {chart}: {error}");
            set(
                status,
                hr,
                hr::RELEASED_CONDITION,
                ConditionStatus::False,
                failed_reason,
                &message,
            );
            status.failures += 1;
            match action {
                ReleaseAction::Install => status.install_failures += 1,
                ReleaseAction::Upgrade => status.upgrade_failures += 1,
            }
            remediate(hr, ctx, status, action).await;
            Err(HelmReleaseError::Action {
                reason: failed_reason,
                message,
            })
        }
    }
}

/// Helm's kstatus wait passed: the objects `healthCheckExprs` speak of must also be healthy by
/// those expressions (within the release's timeout).
async fn check_health(hr: &HelmRelease, ctx: &Context) -> Result<(), String> {
    let rules = weir_ssa::HealthRules::compile(&hr.spec.health_check_exprs)
        .map_err(|e| weir_runtime::chain(&e))?;
    let latest = storage::latest(
        &ctx.base.client,
        &hr.storage_namespace(),
        &hr.release_name(),
    )
    .await
    .map_err(|e| weir_runtime::chain(&e))?
    .ok_or_else(|| "the release is not in Helm's storage".to_owned())?;
    let Err(error) = drift::check_health(ctx, hr, &latest, &rules).await else {
        return Ok(());
    };
    let message = format!("health check failed: {}", weir_runtime::chain(&error));
    // Helm recorded the revision deployed: recorded failed, the next decision remediates and
    // retries it as it would a failed Helm wait.
    storage::fail(&ctx.base.client, &hr.storage_namespace(), &latest, &message)
        .await
        .map_err(|e| format!("{message}; {}", weir_runtime::chain(&e)))?;
    Err(message)
}

/// Remediates the failed `action` when retries remain, or when the last failure is to be
/// remediated too: an install is uninstalled; an upgrade rolled back (or uninstalled).
async fn remediate(
    hr: &HelmRelease,
    ctx: &Context,
    status: &mut HelmReleaseStatus,
    action: ReleaseAction,
) {
    let (retries, failures, remediate_last, strategy) = match action {
        ReleaseAction::Install => {
            let r = hr
                .spec
                .install
                .as_ref()
                .and_then(|i| i.remediation.clone())
                .unwrap_or_default();
            (
                r.retries,
                status.install_failures,
                r.remediate_last_failure(),
                RemediationStrategy::Uninstall,
            )
        }
        ReleaseAction::Upgrade => {
            let r = hr
                .spec
                .upgrade
                .as_ref()
                .and_then(|u| u.remediation.clone())
                .unwrap_or_default();
            (
                r.retries,
                status.upgrade_failures,
                r.remediate_last_failure(),
                r.strategy(),
            )
        }
    };
    if exhausted(retries, failures) && !remediate_last {
        return;
    }
    let target = format!("{}/{}", hr.release_namespace(), hr.release_name());
    let (result, ok, failed, verb) = match strategy {
        RemediationStrategy::Rollback => (
            actions::rollback(ctx, hr).await,
            hr::ROLLBACK_SUCCEEDED_REASON,
            hr::ROLLBACK_FAILED_REASON,
            "rollback",
        ),
        RemediationStrategy::Uninstall => (
            actions::uninstall(ctx, hr).await.map(|()| 0),
            hr::UNINSTALL_SUCCEEDED_REASON,
            hr::UNINSTALL_FAILED_REASON,
            "uninstall",
        ),
    };
    match result {
        Ok(_) => set(
            status,
            hr,
            hr::REMEDIATED_CONDITION,
            ConditionStatus::True,
            ok,
            &format!("Helm {verb} succeeded for release {target}"),
        ),
        Err(error) => set(
            status,
            hr,
            hr::REMEDIATED_CONDITION,
            ConditionStatus::False,
            failed,
            &format!("Helm {verb} failed for release {target}: {error}"),
        ),
    }
}

/// Runs the chart's tests against the latest release; a failure counts and is remediated like
/// a failed release unless failures are ignored.
async fn test(
    hr: &HelmRelease,
    ctx: &Context,
    status: &mut HelmReleaseStatus,
    attempt: &mut Attempt,
    desired: &Desired,
) -> Result<(), HelmReleaseError> {
    attempt.acted = true;
    let storage_ns = hr.storage_namespace();
    let release_name = hr.release_name();
    let outcome = actions::test(ctx, hr).await;
    let history = storage::history(&ctx.base.client, &storage_ns, &release_name)
        .await
        .map_err(HelmReleaseError::Storage)?;
    record_history(status, &history);
    let Some(latest) = history.first() else {
        return Ok(());
    };
    let hooks = test_hooks(latest);
    if let Some(snapshot) = status
        .history
        .iter_mut()
        .find(|s| s.version == latest.version && s.name == latest.name)
    {
        snapshot.test_hooks = Some(hooks.clone());
    }
    let chart = format!("{}@{}", desired.chart_name, desired.chart_version);
    match outcome {
        Ok(()) => {
            let message = format!(
                "Helm test succeeded for release {} with chart {chart}: {} test hook(s) completed successfully",
                full_name(latest),
                hooks.len()
            );
            set(
                status,
                hr,
                hr::TEST_SUCCESS_CONDITION,
                ConditionStatus::True,
                hr::TEST_SUCCEEDED_REASON,
                &message,
            );
            Ok(())
        }
        Err(error) => {
            let message = format!(
                "Helm test failed for release {} with chart {chart}: {error}",
                full_name(latest)
            );
            set(
                status,
                hr,
                hr::TEST_SUCCESS_CONDITION,
                ConditionStatus::False,
                hr::TEST_FAILED_REASON,
                &message,
            );
            let action = status.last_attempted_release_action;
            if ignores_test_failures(hr, action) {
                return Ok(());
            }
            status.failures += 1;
            let action = action.unwrap_or(ReleaseAction::Install);
            match action {
                ReleaseAction::Install => status.install_failures += 1,
                ReleaseAction::Upgrade => status.upgrade_failures += 1,
            }
            remediate(hr, ctx, status, action).await;
            Err(HelmReleaseError::Action {
                reason: hr::TEST_FAILED_REASON,
                message,
            })
        }
    }
}

/// The test hooks of `release` and their last runs.
fn test_hooks(release: &Release) -> BTreeMap<String, TestHookStatus> {
    release
        .hooks
        .iter()
        .filter(|h| h.events.iter().any(|e| e == "test" || e == "test-success"))
        .map(|h| {
            let run = &h.last_run;
            (
                h.name.clone(),
                TestHookStatus {
                    last_started: non_empty(run.started_at.as_deref()),
                    last_completed: non_empty(run.completed_at.as_deref()),
                    phase: non_empty(Some(run.phase.as_str())),
                },
            )
        })
        .collect()
}

fn non_empty(text: Option<&str>) -> Option<String> {
    text.filter(|t| !t.is_empty() && !t.starts_with("0001-01-01"))
        .map(str::to_owned)
}

/// Flux's `status.history`: the releases newest first, back to the latest deployed one (at
/// most five when none was); test outcomes recorded earlier are kept.
pub(crate) fn record_history(status: &mut HelmReleaseStatus, history: &[Release]) {
    let mut snapshots = Vec::new();
    for release in history {
        let tested = status
            .history
            .iter()
            .find(|s| s.version == release.version && s.name == release.name)
            .and_then(|s| s.test_hooks.clone());
        snapshots.push(Snapshot {
            api_version: None,
            digest: storage::release_digest(release),
            name: release.name.clone(),
            namespace: release.namespace.clone(),
            version: release.version,
            status: release.info.status.clone(),
            chart_name: release.chart.metadata.name.clone(),
            chart_version: release.chart.metadata.version.clone(),
            app_version: Some(release.chart.metadata.app_version.clone()).filter(|v| !v.is_empty()),
            config_digest: storage::config_digest(&config_of(release)),
            first_deployed: release.info.first_deployed.clone().unwrap_or_default(),
            last_deployed: release.info.last_deployed.clone().unwrap_or_default(),
            deleted: non_empty(release.info.deleted.as_deref()),
            test_hooks: tested,
        });
        if snapshots.len() > 1 && matches!(release.info.status.as_str(), "deployed" | "superseded")
        {
            break;
        }
        if snapshots.len() == 1 && release.info.status == "deployed" {
            break;
        }
        if snapshots.len() >= 5 {
            break;
        }
    }
    status.history = snapshots;
}

/// Sets condition `type_` with this object's generation.
fn set(
    status: &mut HelmReleaseStatus,
    hr: &HelmRelease,
    type_: &str,
    value: ConditionStatus,
    reason: &str,
    message: &str,
) {
    condition::set_condition(
        &mut status.conditions,
        Condition::new(type_, value, reason, message).for_generation(hr.metadata.generation),
    );
}

/// Every `dependsOn` object (a HelmRelease, or with Weir's `kind` a Kustomization) must be
/// ready ([`weir_ssa::dependency::check`]); a cycle stalls.
async fn check_dependencies(hr: &HelmRelease, ctx: &Context) -> Result<(), HelmReleaseError> {
    use weir_api::kustomize::DependencyKind;
    use weir_ssa::dependency::{self, DependencyError};
    if hr.spec.depends_on.is_empty() {
        return Ok(());
    }
    let after = ctx.config.dependency_requeue;
    let me = serde_json::to_value(hr).map_err(|e| HelmReleaseError::Dependency(e.to_string()))?;
    dependency::check(
        &ctx.base.client,
        DependencyKind::HelmRelease,
        &me,
        &hr.spec.depends_on,
    )
    .await
    .map_err(|error| match error {
        DependencyError::NotReady { .. } => {
            HelmReleaseError::DependencyNotReady(error.to_string(), after)
        }
        DependencyError::Kube { source, .. } => HelmReleaseError::Kube(source),
        DependencyError::Cycle(_) | DependencyError::Expr { .. } => {
            HelmReleaseError::Dependency(weir_runtime::chain(&error))
        }
    })?;
    Ok(())
}

/// The HelmChart of the release: made (server-side applied) from `spec.chart`, or the one
/// `spec.chartRef` names; ready for its current spec, or the reconcile waits.
async fn chart(
    hr: &HelmRelease,
    ctx: &Context,
    status: &mut HelmReleaseStatus,
) -> Result<HelmChart, HelmReleaseError> {
    let namespace = hr.namespace().unwrap_or_default();
    let requeue = ctx.config.dependency_requeue;
    let (chart_ns, chart_name) = if let Some(template) = &hr.spec.chart {
        let chart_ns = template
            .spec
            .source_ref
            .namespace
            .clone()
            .unwrap_or_else(|| namespace.clone());
        let name = hr.helm_chart_name();
        let api: Api<HelmChart> = Api::namespaced(ctx.base.client.clone(), &chart_ns);
        let patch = chart_manifest(hr, &chart_ns);
        api.patch(
            &name,
            &PatchParams::apply(CHART_FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(|source| HelmReleaseError::ChartWrite {
            name: format!("{chart_ns}/{name}"),
            source,
        })?;
        status.helm_chart = Some(format!("{chart_ns}/{name}"));
        (chart_ns, name)
    } else if let Some(reference) = &hr.spec.chart_ref {
        let chart_ns = reference
            .namespace
            .clone()
            .unwrap_or_else(|| namespace.clone());
        status.helm_chart = None;
        (chart_ns, reference.name.clone())
    } else {
        return Err(HelmReleaseError::ChartNotFound(String::new(), requeue));
    };
    let key = format!("{chart_ns}/{chart_name}");
    let api: Api<HelmChart> = Api::namespaced(ctx.base.client.clone(), &chart_ns);
    let chart = api
        .get_opt(&chart_name)
        .await
        .map_err(HelmReleaseError::Kube)?
        .ok_or_else(|| HelmReleaseError::ChartNotFound(key.clone(), requeue))?;
    let chart_status = chart.status.as_ref();
    let current = chart_status.and_then(|s| s.observed_generation) == chart.metadata.generation;
    let ready = chart_status
        .and_then(|s| condition::find_condition(&s.conditions, types::READY))
        .cloned();
    match ready {
        Some(c) if current && c.status == ConditionStatus::True => Ok(chart),
        Some(c) if current => Err(HelmReleaseError::ChartNotReady(key, c.message, requeue)),
        _ => Err(HelmReleaseError::ChartNotReady(
            key,
            "latest generation of object has not been reconciled".into(),
            requeue,
        )),
    }
}

/// The HelmChart made from `spec.chart`, as Flux makes it.
fn chart_manifest(hr: &HelmRelease, chart_ns: &str) -> serde_json::Value {
    let Some(template) = &hr.spec.chart else {
        return json!({});
    };
    let spec = &template.spec;
    let interval = spec.interval.as_ref().unwrap_or(&hr.spec.interval);
    let meta = template.metadata.clone().unwrap_or_default();
    let mut source_ref =
        json!({"kind": spec.source_ref.kind.as_str(), "name": spec.source_ref.name});
    if let Some(api_version) = &spec.source_ref.api_version {
        source_ref["apiVersion"] = json!(api_version);
    }
    let mut chart_spec = json!({
        "chart": spec.chart,
        "version": spec.version,
        "sourceRef": source_ref,
        "interval": interval,
        "reconcileStrategy": spec.reconcile_strategy,
    });
    if !spec.values_files.is_empty() {
        chart_spec["valuesFiles"] = json!(spec.values_files);
    }
    if spec.ignore_missing_values_files {
        chart_spec["ignoreMissingValuesFiles"] = json!(true);
    }
    json!({
        "apiVersion": "source.toolkit.fluxcd.io/v1",
        "kind": "HelmChart",
        "metadata": {
            "name": hr.helm_chart_name(),
            "namespace": chart_ns,
            "labels": meta.labels,
            "annotations": meta.annotations,
        },
        "spec": chart_spec,
    })
}

/// Deletes the HelmChart made from `spec.chart` (a deleted HelmRelease's).
pub async fn delete_chart(hr: &HelmRelease, ctx: &Context) -> Result<(), kube::Error> {
    let Some(template) = &hr.spec.chart else {
        return Ok(());
    };
    let namespace = hr.namespace().unwrap_or_default();
    let chart_ns = template
        .spec
        .source_ref
        .namespace
        .clone()
        .unwrap_or(namespace);
    let api: Api<HelmChart> = Api::namespaced(ctx.base.client.clone(), &chart_ns);
    match api
        .delete(&hr.helm_chart_name(), &kube::api::DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn hr(extra: serde_json::Value) -> HelmRelease {
        let mut spec =
            json!({ "interval": "5m", "chartRef": { "kind": "HelmChart", "name": "c" } });
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        serde_json::from_value(json!({
            "apiVersion": "helm.toolkit.fluxcd.io/v2",
            "kind": "HelmRelease",
            "metadata": { "name": "app", "namespace": "apps", "generation": 1 },
            "spec": spec,
        }))
        .unwrap()
    }

    fn desired(version: &str, values: serde_json::Value) -> Desired {
        Desired {
            chart_name: "app".into(),
            chart_version: version.into(),
            chart_path: PathBuf::from("/dev/null"),
            config_digest: storage::config_digest(&values),
            values,
            post_renderers_digest: None,
        }
    }

    fn release(
        version: i64,
        status: &str,
        chart_version: &str,
        values: serde_json::Value,
    ) -> Release {
        let mut release = Release {
            name: "app".into(),
            namespace: "apps".into(),
            version,
            config: values.as_object().cloned(),
            ..Release::default()
        };
        release.info.status = status.into();
        release.chart.metadata.name = "app".into();
        release.chart.metadata.version = chart_version.into();
        release
    }

    #[test]
    fn no_release_installs_and_an_uninstalled_or_never_deployed_one_is_replaced() {
        let (hr, status) = (hr(json!({})), HelmReleaseStatus::default());
        let want = desired("1.0.0", json!({}));
        assert_eq!(
            next(&hr, &status, &[], &want, false),
            Next::Install { replace: false }
        );
        let gone = [release(1, "uninstalled", "1.0.0", json!({}))];
        assert_eq!(
            next(&hr, &status, &gone, &want, false),
            Next::Install { replace: true }
        );
        let failed = [release(1, "failed", "1.0.0", json!({}))];
        assert_eq!(
            next(&hr, &status, &failed, &want, false),
            Next::Install { replace: true }
        );
    }

    #[test]
    fn a_release_in_sync_is_left_alone_and_any_difference_upgrades() {
        let (hr, status) = (hr(json!({})), HelmReleaseStatus::default());
        let want = desired("1.0.0", json!({ "a": 1 }));
        let same = [release(1, "deployed", "1.0.0", json!({ "a": 1 }))];
        assert_eq!(next(&hr, &status, &same, &want, false), Next::InSync);
        assert_eq!(next(&hr, &status, &same, &want, true), Next::Upgrade);
        let values = [release(1, "deployed", "1.0.0", json!({ "a": 2 }))];
        assert_eq!(next(&hr, &status, &values, &want, false), Next::Upgrade);
        let version = [release(1, "deployed", "0.9.0", json!({ "a": 1 }))];
        assert_eq!(next(&hr, &status, &version, &want, false), Next::Upgrade);
        // A failed upgrade over a deployed revision is upgraded again.
        let failed = [
            release(2, "failed", "1.0.0", json!({ "a": 1 })),
            release(1, "superseded", "0.9.0", json!({})),
        ];
        assert_eq!(next(&hr, &status, &failed, &want, false), Next::Upgrade);
    }

    #[test]
    fn pending_releases_are_unlocked_first() {
        let (hr, status) = (hr(json!({})), HelmReleaseStatus::default());
        let want = desired("1.0.0", json!({}));
        for pending in ["pending-install", "pending-upgrade", "pending-rollback"] {
            let history = [release(2, pending, "1.0.0", json!({}))];
            assert_eq!(next(&hr, &status, &history, &want, false), Next::Unlock);
        }
    }

    #[test]
    fn retries_are_counted_as_flux_counts_them() {
        let hr0 = hr(json!({}));
        let status = HelmReleaseStatus {
            install_failures: 1,
            upgrade_failures: 1,
            ..HelmReleaseStatus::default()
        };
        let want = desired("1.0.0", json!({ "a": 1 }));
        assert_eq!(
            next(&hr0, &status, &[], &want, false),
            Next::Stalled("Failed to install after 1 attempt(s)".into())
        );
        let deployed = [release(1, "deployed", "1.0.0", json!({}))];
        assert_eq!(
            next(&hr0, &status, &deployed, &want, false),
            Next::Stalled("Failed to upgrade after 1 attempt(s)".into())
        );
        // One retry left; negative retries never run out.
        let retried = hr(json!({ "upgrade": { "remediation": { "retries": 1 } } }));
        assert_eq!(
            next(&retried, &status, &deployed, &want, false),
            Next::Upgrade
        );
        let forever = hr(json!({ "install": { "remediation": { "retries": -1 } } }));
        let many = HelmReleaseStatus {
            install_failures: 100,
            ..HelmReleaseStatus::default()
        };
        assert_eq!(
            next(&forever, &many, &[], &want, false),
            Next::Install { replace: false }
        );
    }

    #[test]
    fn tests_run_once_per_revision_when_enabled() {
        let hr = hr(json!({ "test": { "enable": true } }));
        let want = desired("1.0.0", json!({}));
        let deployed = [release(1, "deployed", "1.0.0", json!({}))];
        let mut status = HelmReleaseStatus::default();
        assert_eq!(next(&hr, &status, &deployed, &want, false), Next::Test);
        record_history(&mut status, &deployed);
        status.history[0].test_hooks = Some(BTreeMap::new());
        assert_eq!(next(&hr, &status, &deployed, &want, false), Next::InSync);
    }

    #[test]
    fn history_reaches_back_to_the_last_deployed_revision() {
        let mut status = HelmReleaseStatus::default();
        let history = [
            release(4, "failed", "1.0.0", json!({})),
            release(3, "superseded", "1.0.0", json!({})),
            release(2, "superseded", "0.9.0", json!({})),
        ];
        record_history(&mut status, &history);
        let versions: Vec<i64> = status.history.iter().map(|s| s.version).collect();
        assert_eq!(versions, vec![4, 3]);
        record_history(&mut status, &history[1..]);
        assert_eq!(
            status.history.len(),
            2,
            "a superseded latest reaches back too"
        );
        let deployed = [
            release(5, "deployed", "1.0.0", json!({})),
            release(4, "failed", "1.0.0", json!({})),
        ];
        record_history(&mut status, &deployed);
        assert_eq!(status.history.len(), 1);
        assert_eq!(status.history[0].status, "deployed");
        assert!(status.history[0].config_digest.starts_with("sha256:"));
    }
}
