//! The ImageUpdateAutomation reconcile: `source → checkout and push branch → signing key →
//! policies → template → update (git)`, then status once. The git work runs on a blocking thread
//! within the source's timeout.
//!
//! `status.observedSourceRevision` is Flux's: the checked-out revision (`<ref>@sha1:<commit>`)
//! after a run that changed nothing, the pushed commit on the push branch after a push.

use std::{
    collections::BTreeMap,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, ResourceExt,
    api::ListParams,
    core::{Selector, SelectorExt},
    runtime::controller::Action,
};
use weir_api::{
    GitRepository, ImagePolicy, ImageRef, ImageUpdateAutomation, meta::handled_reconcile_at,
    reasons,
};
use weir_runtime::{
    ControllerError, Redactor, controller::Reconciler, schedule, status::apply_status,
};
use weir_source::error::SourceError;

use crate::{
    Context, FIELD_MANAGER,
    error::ImageError,
    failed,
    signing::{self, CommitSigner, SigningError},
    succeeded,
    template::Template,
    update::{self, Checkout, UpdateOutcome, UpdateRequest},
};

/// Pushes tried when the branch keeps moving, before giving up until the next run.
pub const MAX_PUSH_ATTEMPTS: u32 = 5;
/// The author name when `git.commit.author.name` is not set, as in Flux.
pub const DEFAULT_AUTHOR_NAME: &str = "FluxBot";

/// The GitRepository of `spec.sourceRef`, refused before it is read when it is in another
/// namespace and `--no-cross-namespace-refs` is set.
async fn source_repository(
    auto: &ImageUpdateAutomation,
    ctx: &Context,
) -> Result<GitRepository, ImageError> {
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
    Ok(repo)
}

/// The checkout (`git.checkout.ref`, else the GitRepository's ref, else its default branch),
/// the push branch (`git.push.branch`, else the checkout ref's `branch`, which then must be set,
/// as in Flux) and whether the two differ.
fn checkout_and_push(
    git_spec: &weir_api::image::GitSpec,
    repo: &GitRepository,
) -> Result<(Checkout, String, bool), ImageError> {
    let reference = match &git_spec.checkout {
        Some(c) => c.reference.clone(),
        None => repo.spec.reference.clone().unwrap_or_default(),
    };
    let checkout = Checkout::from(reference.resolve());
    let ref_branch = match (&reference, &checkout) {
        // No ref at all follows the default branch, which is also where commits go.
        (_, Checkout::Branch(b)) => Some(b.clone()),
        (r, _) => r.branch.clone().filter(|b| !b.is_empty()),
    };
    let push_branch = git_spec
        .push
        .as_ref()
        .and_then(|p| p.branch.clone())
        .filter(|b| !b.is_empty());
    match (push_branch, ref_branch) {
        (Some(push), ref_branch) => {
            let switch = ref_branch.as_deref() != Some(push.as_str());
            Ok((checkout, push, switch))
        }
        (None, Some(branch)) => Ok((checkout, branch, false)),
        (None, None) => Err(ImageError::InvalidSource(
            "push spec not provided, and cannot be inferred from .spec.git.checkout.ref or \
             GitRepository .spec.ref: set spec.git.push.branch"
                .to_owned(),
        )),
    }
}

/// The commit signer of `git.commit.signingKey`, read from its Secret in the automation's
/// namespace (`type` `gpg` when not set); its passphrase is added to the redactor.
async fn signer(
    auto: &ImageUpdateAutomation,
    ctx: &Context,
    redactor: &mut Redactor,
) -> Result<Option<CommitSigner>, ImageError> {
    let Some(key) = auto
        .spec
        .git
        .as_ref()
        .and_then(|g| g.commit.signing_key.as_ref())
    else {
        return Ok(None);
    };
    let namespace = auto.namespace().unwrap_or_default();
    let secret = format!("{namespace}/{}", key.secret_ref.name);
    let fail = |why| ImageError::SigningKey {
        secret: secret.clone(),
        why,
    };
    let found = Api::<Secret>::namespaced(ctx.client.clone(), &namespace)
        .get_opt(&key.secret_ref.name)
        .await?
        .ok_or_else(|| fail(SigningError::NotFound))?;
    let data: BTreeMap<String, Vec<u8>> = weir_runtime::secrets::data(found);
    for field in [signing::PASSPHRASE_FIELD, signing::SSH_PASSPHRASE_FIELD] {
        if let Some(p) = data.get(field) {
            redactor.add(String::from_utf8_lossy(p).into_owned());
        }
    }
    CommitSigner::from_secret_data(&data, key.key_type.unwrap_or_default())
        .map(Some)
        .map_err(fail)
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
    let repo = source_repository(auto, ctx).await?;
    let (checkout, push_branch, switch_branch) = checkout_and_push(git_spec, &repo)?;
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
    let signing_secret = git_spec
        .commit
        .signing_key
        .as_ref()
        .map(|k| format!("{namespace}/{}", k.secret_ref.name))
        .unwrap_or_default();
    let signer = signer(auto, ctx, redactor).await?;

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
    let push = git_spec.push.as_ref();
    let request = UpdateRequest {
        url,
        credentials,
        timeout: repo.spec.timeout.as_std(),
        checkout,
        push_branch,
        switch_branch,
        push_refspec: push
            .and_then(|p| p.refspec.clone())
            .filter(|r| !r.is_empty()),
        push_options: push
            .map(|p| p.options.iter().map(|(k, v)| format!("{k}={v}")).collect())
            .unwrap_or_default(),
        signer,
        signing_secret,
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
                UpdateOutcome::NoChange { revision, .. } => {
                    status.observed_source_revision = Some(revision);
                    "repository up-to-date".to_owned()
                }
                UpdateOutcome::Pushed {
                    commit,
                    branch,
                    revision,
                    refspec,
                    message,
                    rejected,
                    ..
                } => {
                    ctx.metrics.pushes.fetch_add(1, Ordering::Relaxed);
                    status.observed_source_revision = Some(revision);
                    let summary = match refspec {
                        Some(r) => format!(
                            "pushed commit '{commit}' to branch '{branch}' and refspecs '{r}'"
                        ),
                        None => format!("pushed commit '{commit}' to branch '{branch}'"),
                    };
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

#[cfg(test)]
mod tests {
    use serde_json::json;
    use weir_runtime::Failure as _;

    use super::*;

    fn checkout_of(
        checkout: serde_json::Value,
        push: serde_json::Value,
        source_ref: serde_json::Value,
    ) -> Result<(Checkout, String, bool), ImageError> {
        let mut git = json!({ "commit": { "author": { "email": "bot@weir.invalid" } } });
        if !checkout.is_null() {
            git["checkout"] = json!({ "ref": checkout });
        }
        if !push.is_null() {
            git["push"] = push;
        }
        let mut source = json!({ "url": "http://git.invalid/r.git", "interval": "1m" });
        if !source_ref.is_null() {
            source["ref"] = source_ref;
        }
        let repo = GitRepository::new("fleet", serde_json::from_value(source).unwrap());
        checkout_and_push(&serde_json::from_value(git).unwrap(), &repo)
    }

    #[test]
    fn checkout_and_push_branch_follow_fluxs_precedence() {
        let n = serde_json::Value::Null;
        let branch = |b: &str| Checkout::Branch(b.to_owned());
        let tag = |t: &str| Checkout::Tag(t.to_owned());
        let cases = [
            // checkout, push, GitRepository ref → checkout, push branch, switch
            (
                json!({"branch": "main"}),
                n.clone(),
                n.clone(),
                branch("main"),
                "main",
                false,
            ),
            (
                n.clone(),
                n.clone(),
                json!({"branch": "dev"}),
                branch("dev"),
                "dev",
                false,
            ),
            (
                n.clone(),
                n.clone(),
                n.clone(),
                branch("master"),
                "master",
                false,
            ),
            (
                json!({"branch": "main", "tag": "v1"}),
                n.clone(),
                n.clone(),
                tag("v1"),
                "main",
                false,
            ),
            (
                json!({"tag": "v1"}),
                json!({"branch": "auto"}),
                json!({"branch": "main"}),
                tag("v1"),
                "auto",
                true,
            ),
            (
                json!({"branch": "main", "semver": "1.x", "name": "refs/pull/1/head"}),
                json!({"branch": "main", "refspec": "HEAD:refs/for/main"}),
                n.clone(),
                Checkout::Name("refs/pull/1/head".to_owned()),
                "main",
                false,
            ),
            (
                json!({"commit": "abc", "branch": "main"}),
                n.clone(),
                n.clone(),
                Checkout::Commit {
                    sha: "abc".to_owned(),
                    branch: Some("main".to_owned()),
                },
                "main",
                false,
            ),
        ];
        for (checkout, push, source_ref, want, want_push, want_switch) in cases {
            let what = format!("{checkout} {push} {source_ref}");
            let (got, got_push, got_switch) = checkout_of(checkout, push, source_ref).unwrap();
            assert_eq!(
                (got, got_push.as_str(), got_switch),
                (want, want_push, want_switch),
                "{what}"
            );
        }
    }

    #[test]
    fn a_checkout_without_a_branch_needs_a_push_branch() {
        for (checkout, push) in [
            (json!({"tag": "v1"}), serde_json::Value::Null),
            (
                json!({"commit": "abc"}),
                json!({"refspec": "HEAD:refs/for/main"}),
            ),
        ] {
            let error = checkout_of(checkout, push, serde_json::Value::Null).unwrap_err();
            assert!(
                error.to_string().contains("spec.git.push.branch"),
                "{error}"
            );
            assert_eq!(error.reason(), reasons::INVALID_SOURCE_CONFIGURATION);
        }
    }
}
