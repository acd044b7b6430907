//! The Helm actions of a HelmRelease, as the spec configures them: the options each `helm`
//! call gets (timeouts, waits, hooks, history, impersonation) from `install`, `upgrade`,
//! `rollback`, `uninstall` and `test`, and the chart's CRDs applied before an install or an
//! upgrade where the CRD policy asks for more than Helm does ([`crate::crds`]).

use std::time::Duration;

use kube::ResourceExt;
use weir_api::GoDuration;
use weir_api::helm_release::{CrdsPolicy, DeletionPropagation, HelmRelease};

use crate::Context;
use crate::crds;
use crate::error::HelmReleaseError;
use crate::helm::{
    self, Impersonation, InstallOptions, KubeAccess, ReleaseTarget, RollbackOptions,
    UninstallOptions, UpgradeOptions,
};
use crate::reconcile::Desired;
use crate::storage;

/// A failed action's message: Helm's error with its causes (values masked by the runner).
fn message(error: &helm::HelmError) -> String {
    weir_runtime::chain(error)
}

/// The release `hr` makes, with `timeout`, acting as its service account when it names one.
fn target(ctx: &Context, hr: &HelmRelease, timeout: Option<&GoDuration>) -> ReleaseTarget {
    let timeout = timeout.map_or_else(|| hr.timeout(), GoDuration::as_std);
    let mut target = ReleaseTarget::new(&hr.release_name(), &hr.release_namespace(), timeout);
    target.kube = KubeAccess {
        kubeconfig: ctx.config.kubeconfig.clone(),
        impersonate: hr
            .spec
            .service_account_name
            .as_deref()
            .map(|sa| Impersonation::service_account(&hr.namespace().unwrap_or_default(), sa)),
    };
    target
}

/// `spec.maxHistory` as Helm's `--history-max` (0 keeps every revision).
fn max_history(hr: &HelmRelease) -> u32 {
    u32::try_from(hr.max_history().max(0)).unwrap_or(u32::MAX)
}

/// The `weir-post-render` plugin's arguments for `hr`'s post-renderers (written to a private
/// file, kept while the returned handle lives): none without post-renderers.
fn post_render(
    ctx: &Context,
    hr: &HelmRelease,
    args: &mut Vec<std::ffi::OsString>,
) -> Result<Option<tempfile::TempPath>, String> {
    if hr.spec.post_renderers.is_empty() {
        return Ok(None);
    }
    let Some(config) = &ctx.config.post_renderer else {
        return Err(unsupported(hr).unwrap_or_default());
    };
    let json = serde_json::to_vec(&hr.spec.post_renderers).map_err(|e| e.to_string())?;
    let file = ctx.helm.write_private(&json).map_err(|e| message(&e))?;
    args.push(file.as_os_str().to_owned());
    args.push(config.kustomize.as_os_str().to_owned());
    Ok(Some(file))
}

/// Helm's error, with what the post-renderer said when it was the one that failed (Helm 4
/// reports only that the plugin failed).
fn with_post_render_error(error: String, renderers: Option<&tempfile::TempPath>) -> String {
    let Some(spec) = renderers else {
        return error;
    };
    let path = crate::postrender::error_path(spec);
    let said = std::fs::read_to_string(&path).ok();
    let _ = std::fs::remove_file(&path);
    match said {
        Some(said) => format!("{error}: {said}"),
        None => error,
    }
}

/// Applies the chart's CRDs as `policy` says, with the access Helm gets for `target`, each
/// waited for up to the action's timeout; a failure names the CRD and its file in the chart.
async fn apply_crds(
    ctx: &Context,
    desired: &Desired,
    target: &ReleaseTarget,
    policy: crds::Policy,
) -> Result<(), String> {
    let chain = |e: crds::CrdError| weir_runtime::chain(&e);
    let client = ctx
        .crd_clients
        .for_access(&ctx.base.client, &target.kube)
        .await
        .map_err(chain)?;
    let chart_crds = crds::read_chart(&desired.chart_path).await.map_err(chain)?;
    let written = crds::apply(&client, &chart_crds, policy, target.timeout)
        .await
        .map_err(chain)?;
    if !written.is_empty() {
        tracing::info!(release = %format!("{}/{}", target.namespace, target.name), crds = ?written, ?policy, "applied the chart's CRDs");
    }
    Ok(())
}

/// Installs the desired chart and values; returns the new revision.
pub async fn install(
    ctx: &Context,
    hr: &HelmRelease,
    desired: &Desired,
    replace: bool,
) -> Result<i64, String> {
    let spec = hr.spec.install.clone().unwrap_or_default();
    let values = ctx
        .helm
        .write_values(&desired.values)
        .map_err(|e| message(&e))?;
    let options = InstallOptions {
        create_namespace: spec.create_namespace,
        crds: match spec.crds {
            Some(CrdsPolicy::Skip) => helm::CrdPolicy::Skip,
            Some(CrdsPolicy::Create) | None => helm::CrdPolicy::Create,
            Some(CrdsPolicy::CreateReplace) => helm::CrdPolicy::CreateReplace,
        },
        wait: !spec.disable_wait,
        wait_for_jobs: !spec.disable_wait_for_jobs,
        disable_hooks: spec.disable_hooks,
        replace: replace || spec.replace,
        disable_openapi_validation: spec.disable_openapi_validation,
        skip_schema_validation: spec.disable_schema_validation,
        description: None,
        post_render_args: vec![],
    };
    let mut options = options;
    let renderers = post_render(ctx, hr, &mut options.post_render_args)?;
    let target = target(ctx, hr, spec.timeout.as_ref());
    // Helm creates the CRDs that do not exist (with `CreateReplace` too: those of the
    // subcharts its values enable, which Weir does not read); replacing is Weir's.
    if options.crds == helm::CrdPolicy::CreateReplace {
        apply_crds(ctx, desired, &target, crds::Policy::CreateReplace).await?;
    }
    ctx.metrics.helm_run();
    let release = ctx
        .helm
        .install(&target, &desired.chart_path, &values, &options)
        .await
        .map_err(|e| with_post_render_error(message(&e), renderers.as_ref()))?;
    Ok(release.version)
}

/// Upgrades to the desired chart and values; returns the new revision.
pub async fn upgrade(ctx: &Context, hr: &HelmRelease, desired: &Desired) -> Result<i64, String> {
    let spec = hr.spec.upgrade.clone().unwrap_or_default();
    let values = ctx
        .helm
        .write_values(&desired.values)
        .map_err(|e| message(&e))?;
    let options = UpgradeOptions {
        wait: !spec.disable_wait,
        wait_for_jobs: !spec.disable_wait_for_jobs,
        disable_hooks: spec.disable_hooks,
        force: spec.force,
        cleanup_on_fail: spec.cleanup_on_fail,
        max_history: Some(max_history(hr)),
        preserve_values: spec.preserve_values,
        disable_openapi_validation: spec.disable_openapi_validation,
        skip_schema_validation: spec.disable_schema_validation,
        description: None,
        post_render_args: vec![],
    };
    let mut options = options;
    let renderers = post_render(ctx, hr, &mut options.post_render_args)?;
    let target = target(ctx, hr, spec.timeout.as_ref());
    // Helm's upgrade never touches CRDs: any policy but `Skip` is carried out here.
    match spec.crds {
        Some(CrdsPolicy::Skip) | None => {}
        Some(CrdsPolicy::Create) => {
            apply_crds(ctx, desired, &target, crds::Policy::Create).await?;
        }
        Some(CrdsPolicy::CreateReplace) => {
            apply_crds(ctx, desired, &target, crds::Policy::CreateReplace).await?;
        }
    }
    ctx.metrics.helm_run();
    let release = ctx
        .helm
        .upgrade(&target, &desired.chart_path, &values, &options)
        .await
        .map_err(|e| with_post_render_error(message(&e), renderers.as_ref()))?;
    Ok(release.version)
}

/// Rolls back to the newest revision before the latest that was deployed; returns the
/// revision rolled back to.
pub async fn rollback(ctx: &Context, hr: &HelmRelease) -> Result<i64, String> {
    let history = storage::history(
        &ctx.base.client,
        &hr.storage_namespace(),
        &hr.release_name(),
    )
    .await
    .map_err(|e| weir_runtime::chain(&e))?;
    let Some(previous) = history
        .iter()
        .skip(1)
        .find(|r| matches!(r.info.status.as_str(), "deployed" | "superseded"))
    else {
        return Err("no earlier deployed revision to roll back to".to_owned());
    };
    rollback_to(ctx, hr, previous.version).await?;
    Ok(previous.version)
}

/// Rolls back to `version` (Helm's `helm rollback <release> <version>`), with the options of
/// `spec.rollback`: remediation, and Weir's `weir.dev/rollback-to`.
pub async fn rollback_to(ctx: &Context, hr: &HelmRelease, version: i64) -> Result<(), String> {
    let spec = hr.spec.rollback.clone().unwrap_or_default();
    let options = RollbackOptions {
        wait: !spec.disable_wait,
        wait_for_jobs: !spec.disable_wait_for_jobs,
        disable_hooks: spec.disable_hooks,
        force: spec.force,
        cleanup_on_fail: spec.cleanup_on_fail,
        max_history: Some(max_history(hr)),
    };
    ctx.metrics.helm_run();
    ctx.helm
        .rollback(
            &target(ctx, hr, spec.timeout.as_ref()),
            Some(version),
            &options,
        )
        .await
        .map_err(|e| message(&e))
}

/// Uninstalls the release as `spec.uninstall` says.
pub async fn uninstall(ctx: &Context, hr: &HelmRelease) -> Result<(), String> {
    let spec = hr.spec.uninstall.clone().unwrap_or_default();
    let options = UninstallOptions {
        keep_history: spec.keep_history,
        disable_hooks: spec.disable_hooks,
        wait: !spec.disable_wait,
        deletion_propagation: match spec.deletion_propagation.unwrap_or_default() {
            DeletionPropagation::Background => helm::DeletionPropagation::Background,
            DeletionPropagation::Foreground => helm::DeletionPropagation::Foreground,
            DeletionPropagation::Orphan => helm::DeletionPropagation::Orphan,
        },
    };
    ctx.metrics.helm_run();
    ctx.helm
        .uninstall(&target(ctx, hr, spec.timeout.as_ref()), &options)
        .await
        .map_err(|e| message(&e))
}

/// Runs the chart's tests (as `test.filters` selects them); a failed test is an error.
pub async fn test(ctx: &Context, hr: &HelmRelease) -> Result<(), String> {
    let spec = hr.spec.test.clone().unwrap_or_default();
    let filters: Vec<helm::TestFilter> = spec
        .filters
        .unwrap_or_default()
        .into_iter()
        .map(|f| helm::TestFilter {
            name: f.name,
            exclude: f.exclude,
        })
        .collect();
    ctx.metrics.helm_run();
    let run = ctx
        .helm
        .test(&target(ctx, hr, spec.timeout.as_ref()), &filters)
        .await
        .map_err(|e| message(&e))?;
    match run.failure {
        Some(failure) => Err(failure),
        None => Ok(()),
    }
}

/// Uninstalls the release of a deleted HelmRelease, when storage holds one that is not
/// uninstalled already; a release Helm left pending is unlocked first.
pub async fn uninstall_on_delete(ctx: &Context, hr: &HelmRelease) -> Result<(), HelmReleaseError> {
    let storage_ns = hr.storage_namespace();
    let name = hr.release_name();
    let history = storage::history(&ctx.base.client, &storage_ns, &name)
        .await
        .map_err(HelmReleaseError::Storage)?;
    let Some(latest) = history.first() else {
        return Ok(());
    };
    if latest.info.status == "uninstalled" {
        return Ok(());
    }
    if storage::is_pending(&latest.info.status) {
        let message = storage::unlock_message(&latest.info.status);
        storage::unlock(&ctx.base.client, &storage_ns, latest, &message)
            .await
            .map_err(HelmReleaseError::Storage)?;
    }
    uninstall(ctx, hr)
        .await
        .map_err(|message| HelmReleaseError::Action {
            reason: weir_api::helm_release::UNINSTALL_FAILED_REASON,
            message: format!("Helm uninstall failed for release {storage_ns}/{name}: {message}"),
        })?;
    tracing::info!(release = %format!("{storage_ns}/{name}"), "uninstalled release of deleted HelmRelease");
    Ok(())
}

/// How long a HelmRelease's actions may run in one reconcile, at most.
#[must_use]
pub fn bound(hr: &HelmRelease) -> Duration {
    // Up to four actions, each bounded by the runner at three times its timeout plus a minute.
    hr.timeout().saturating_mul(12) + Duration::from_secs(240)
}

/// What Weir cannot do with the helm CLI, said before anything runs: a storage namespace
/// other than the release namespace (the CLI keeps a release where it releases).
pub fn unsupported_by(ctx: &Context, hr: &HelmRelease) -> Option<String> {
    if !hr.spec.post_renderers.is_empty() && ctx.config.post_renderer.is_none() {
        return Some(
            "spec.postRenderers: this helm controller runs no post-renderer (it needs the weir binary and kustomize)"
                .to_owned(),
        );
    }
    unsupported(hr)
}

/// What Weir cannot do with the helm CLI whatever its configuration: a storage namespace
/// other than the release namespace.
pub fn unsupported(hr: &HelmRelease) -> Option<String> {
    (hr.storage_namespace() != hr.release_namespace()).then(|| {
        format!(
            "spec.storageNamespace '{}' differs from the release namespace '{}': Weir releases with the helm CLI, which stores a release in the namespace it releases into",
            hr.storage_namespace(),
            hr.release_namespace()
        )
    })
}
