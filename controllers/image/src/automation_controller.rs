//! The ImageUpdateAutomation reconcile: `source → branch → policies → template → update (git)`,
//! then status once. The git work runs on a blocking thread within the source's timeout.

use std::{
    collections::BTreeMap,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, ResourceExt,
    api::ListParams,
    core::{Selector, SelectorExt},
    runtime::controller::Action,
};
use weir_api::{
    GitRepository, ImagePolicy, ImageRef, ImageUpdateAutomation, meta::handled_reconcile_at,
    reasons, source::ResolvedRef,
};
use weir_runtime::{
    ControllerError, Redactor, controller::Reconciler, schedule, status::apply_status,
};
use weir_source::error::SourceError;

use crate::{
    Context, FIELD_MANAGER,
    error::ImageError,
    failed, succeeded,
    template::Template,
    update::{self, UpdateOutcome, UpdateRequest},
};

/// Pushes tried when the branch keeps moving, before giving up until the next run.
pub const MAX_PUSH_ATTEMPTS: u32 = 5;
/// The author name when `git.commit.author.name` is not set, as in Flux.
pub const DEFAULT_AUTHOR_NAME: &str = "FluxBot";

/// The GitRepository of `spec.sourceRef` (with its name and namespace), refused before it is
/// read when it is in another namespace and `--no-cross-namespace-refs` is set.
async fn source_repository<'a>(
    auto: &'a ImageUpdateAutomation,
    ctx: &Context,
) -> Result<
    (
        &'a weir_api::CrossNamespaceSourceReference,
        String,
        GitRepository,
    ),
    ImageError,
> {
    let namespace = auto.namespace().unwrap_or_default();
    let source = &auto.spec.source_ref;
    let source_ns = source.namespace.clone().unwrap_or(namespace.clone());
    if ctx.no_cross_namespace_refs && source_ns != namespace {
        return Err(ImageError::AccessDenied(format!(
            "GitRepository/{source_ns}/{}",
            source.name
        )));
    }
    let repo = Api::<GitRepository>::namespaced(ctx.client.clone(), &source_ns)
        .get_opt(&source.name)
        .await?
        .ok_or_else(|| {
            ImageError::InvalidSource(format!(
                "GitRepository '{source_ns}/{}' not found",
                source.name
            ))
        })?;
    Ok((source, source_ns, repo))
}

async fn prepare(
    auto: &ImageUpdateAutomation,
    ctx: &Context,
    redactor: &mut Redactor,
) -> Result<(UpdateRequest, BTreeMap<String, ImageRef>), ImageError> {
    let namespace = auto.namespace().unwrap_or_default();
    let git_spec = auto.spec.git.as_ref().ok_or_else(|| {
        ImageError::InvalidSource("spec.git.commit.author is required to commit".to_owned())
    })?;
    let (source, source_ns, repo) = source_repository(auto, ctx).await?;
    let checkout_branch = match git_spec.checkout.as_ref() {
        Some(c) => Some(c.reference.branch.clone()),
        None => match repo.spec.resolved_ref() {
            ResolvedRef::Branch(b) => Some(b.to_owned()),
            _ => {
                return Err(ImageError::InvalidSource(format!(
                    "GitRepository '{source_ns}/{}' does not follow a branch; set spec.git.checkout.ref.branch",
                    source.name
                )));
            }
        },
    };
    let (url, credentials, secrets) = weir_source::reconcile::git_credentials(&ctx.client, &repo)
        .await
        .map_err(|e| match e {
            SourceError::SecretNotFound { namespace, name } => {
                ImageError::SecretNotFound { namespace, name }
            }
            SourceError::SecretUnreadable { name, message } => {
                ImageError::SecretUnreadable { name, message }
            }
            other => ImageError::InvalidSource(other.to_string()),
        })?;
    *redactor = secrets;

    let selector = auto
        .spec
        .policy_selector
        .clone()
        .map(Selector::try_from)
        .transpose()
        .map_err(|e| ImageError::InvalidSelector(e.to_string()))?;
    // By policy name, as `status.observedPolicies` holds them.
    let policies: BTreeMap<String, ImageRef> =
        Api::<ImagePolicy>::namespaced(ctx.client.clone(), &namespace)
            .list(&ListParams::default())
            .await?
            .into_iter()
            .filter(|p| selector.as_ref().is_none_or(|s| s.matches(p.labels())))
            .filter_map(|p| Some((p.name_any(), p.status.as_ref()?.latest_ref.clone()?)))
            .collect();
    let template = git_spec
        .commit
        .message_template
        .as_deref()
        .map(Template::parse)
        .transpose()?
        .map(|template| update::MessageTemplate {
            template,
            values: git_spec.commit.message_template_values.clone(),
        });
    let automation = (namespace.clone(), auto.name_any());
    if let Some(t) = &template {
        update::check_template(t, &automation)?;
    }
    let author = &git_spec.commit.author;
    let request = UpdateRequest {
        url,
        credentials,
        timeout: repo.spec.timeout.as_std(),
        checkout_branch,
        push_branch: git_spec.push.as_ref().and_then(|p| p.branch.clone()),
        path: update::normalize_path(auto.spec.update.as_ref().and_then(|u| u.path.as_deref()))?,
        // Markers name policies as `namespace:name`.
        policies: policies
            .iter()
            .map(|(name, image)| (format!("{namespace}:{name}"), image.clone()))
            .collect(),
        author_name: author
            .name
            .clone()
            .unwrap_or_else(|| DEFAULT_AUTHOR_NAME.to_owned()),
        author_email: author.email.clone(),
        template,
        automation,
        max_attempts: MAX_PUSH_ATTEMPTS,
        retry_delay: Duration::from_millis(250),
    };
    Ok((request, policies))
}

async fn run(
    auto: &ImageUpdateAutomation,
    ctx: &Context,
    redactor: &mut Redactor,
) -> Result<(UpdateOutcome, BTreeMap<String, ImageRef>), ImageError> {
    let (request, policies) = prepare(auto, ctx, redactor).await?;
    // Each attempt has the source's timeout; the delays between them add up to a few seconds.
    let limit = request
        .timeout
        .saturating_mul(MAX_PUSH_ATTEMPTS + 1)
        .saturating_add(Duration::from_secs(10));
    let metrics = ctx.metrics.clone();
    let work = tokio::task::spawn_blocking(move || {
        update::run(&request, &|| {
            metrics.push_retries.fetch_add(1, Ordering::Relaxed);
        })
    });
    let outcome = tokio::time::timeout(limit, work)
        .await
        .map_err(|_| ImageError::GitTimeout(limit))?
        .map_err(ImageError::Task)??;
    Ok((outcome, policies))
}

/// Flux's finalizer is kept on automations as on every image kind, also while suspended (the
/// runtime adds and removes it): an automation holds nothing to clean up, but one written by
/// Flux carries it and must be deletable.
impl Reconciler<ImageUpdateAutomation> for Context {
    async fn apply(
        &self,
        api: &Api<ImageUpdateAutomation>,
        auto: Arc<ImageUpdateAutomation>,
    ) -> Result<Action, ControllerError> {
        automate(api, auto, self).await
    }
}

async fn automate(
    api: &Api<ImageUpdateAutomation>,
    auto: Arc<ImageUpdateAutomation>,
    ctx: &Context,
) -> Result<Action, ControllerError> {
    ctx.metrics.automation_runs.fetch_add(1, Ordering::Relaxed);
    let previous = auto.status.clone();
    let mut status = previous.clone().unwrap_or_default();
    status.observed_generation = auto.metadata.generation;
    status.last_handled_reconcile_at = handled_reconcile_at(
        auto.annotations().into(),
        previous
            .as_ref()
            .and_then(|s| s.last_handled_reconcile_at.as_deref()),
    );
    let interval = auto.spec.interval.as_std();
    let mut redactor = Redactor::default();
    let action = match run(&auto, ctx, &mut redactor).await {
        Ok((outcome, policies)) => {
            let now = Time(Timestamp::now());
            status.last_automation_run_time = Some(now.clone());
            status.observed_policies = policies;
            let message = match outcome {
                UpdateOutcome::NoChange { .. } => "repository up-to-date".to_owned(),
                UpdateOutcome::Pushed {
                    commit,
                    branch,
                    message,
                    rejected,
                    ..
                } => {
                    ctx.metrics.pushes.fetch_add(1, Ordering::Relaxed);
                    let summary = format!("pushed commit '{commit}' to branch '{branch}'");
                    let note = if rejected > 0 {
                        format!("{summary} after {rejected} rejected push(es)\n{message}")
                    } else {
                        format!("{summary}\n{message}")
                    };
                    ctx.events
                        .normal(&*auto, reasons::SUCCEEDED, "Push", &redactor.redact(&note))
                        .await;
                    status.last_push_commit = Some(commit);
                    status.last_push_time = Some(now);
                    summary
                }
            };
            succeeded(&*auto, ctx, &mut status.conditions, &message);
            Action::requeue(schedule::jittered(interval))
        }
        Err(error) => {
            failed(
                &*auto,
                ctx,
                &mut status.conditions,
                &error,
                &redactor,
                interval,
                "Push",
            )
            .await
        }
    };
    apply_status(api, &*auto, previous.as_ref(), &status, FIELD_MANAGER).await?;
    Ok(action)
}
