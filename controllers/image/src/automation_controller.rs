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
use weir_api::{GitRepository, ImagePolicy, ImageRef, ImageUpdateAutomation, reasons};
use weir_git::bounded::BoundedError;
use weir_runtime::{
    ControllerError, Redactor,
    conclude::{Ending, Pass},
    controller::Reconciler,
    decision::StepResult,
    progress::Progress,
    schedule,
};

use crate::{
    Context, FIELD_MANAGER,
    error::ImageError,
    signing::{self, CommitSigner, SigningError},
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
    let repo = Api::<GitRepository>::namespaced(ctx.base.client.clone(), &source_ns)
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
    let found = Api::<Secret>::namespaced(ctx.base.client.clone(), &namespace)
        .get_opt(&key.secret_ref.name)
        .await?
        .ok_or_else(|| SigningError::NotFound {
            secret: secret.clone(),
        })?;
    let data: BTreeMap<String, Vec<u8>> = weir_runtime::secrets::data(found);
    for field in [signing::PASSPHRASE_FIELD, signing::SSH_PASSPHRASE_FIELD] {
        if let Some(p) = data.get(field) {
            redactor.add(String::from_utf8_lossy(p).into_owned());
        }
    }
    Ok(Some(CommitSigner::from_secret_data(
        &secret,
        &data,
        key.key_type.unwrap_or_default(),
    )?))
}

/// Why a run is work in progress before it starts: the GitRepository has a revision this
/// automation has not worked on. Compared only when the automation checks out and pushes the
/// GitRepository's own branch, where the two revisions name the same thing; never after its own
/// push, which the GitRepository may not have fetched yet.
fn source_progress(
    auto: &ImageUpdateAutomation,
    git_spec: &weir_api::image::GitSpec,
    repo: &GitRepository,
    switch_branch: bool,
) -> Option<String> {
    let comparable = git_spec.checkout.is_none()
        && !switch_branch
        && git_spec
            .push
            .as_ref()
            .and_then(|p| p.refspec.as_deref())
            .is_none_or(str::is_empty);
    let revision = &repo.status.as_ref()?.artifact.as_ref()?.revision;
    let status = auto.status.as_ref()?;
    let observed = status.observed_source_revision.as_deref()?;
    let own_push = status
        .last_push_commit
        .as_deref()
        .is_some_and(|commit| observed.ends_with(commit));
    (comparable && !own_push && observed != revision)
        .then(|| format!("processing object: new source revision '{revision}'"))
}

async fn prepare(
    auto: &ImageUpdateAutomation,
    ctx: &Context,
    redactor: &mut Redactor,
    progress: &mut Progress<'_, ImageUpdateAutomation>,
) -> Result<(UpdateRequest, BTreeMap<String, ImageRef>), ImageError> {
    let namespace = auto.namespace().unwrap_or_default();
    let git_spec = auto.spec.git.as_ref().ok_or_else(|| {
        ImageError::InvalidSource("spec.git.commit.author is required to commit".to_owned())
    })?;
    let repo = source_repository(auto, ctx).await?;
    let (checkout, push_branch, switch_branch) = checkout_and_push(git_spec, &repo)?;
    if let Some(message) = source_progress(auto, git_spec, &repo, switch_branch) {
        progress.mark(&message).await;
    }
    let access = weir_git::credentials::for_repository(&ctx.base.client, &repo).await?;
    *redactor = access.redactor;
    let (url, credentials) = (access.url, access.credentials);
    let signer = signer(auto, ctx, redactor).await?;

    let selector = auto
        .spec
        .policy_selector
        .clone()
        .map(Selector::try_from)
        .transpose()
        .map_err(ImageError::InvalidSelector)?;
    // By policy name, as `status.observedPolicies` holds them.
    let policies: BTreeMap<String, ImageRef> =
        Api::<ImagePolicy>::namespaced(ctx.base.client.clone(), &namespace)
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

/// What a run did: its outcome, the policies it used, and which locked workloads it left alone
/// ([`crate::lock::skipped_note`]).
type RunOutcome = (UpdateOutcome, BTreeMap<String, ImageRef>, Option<String>);

async fn run(
    auto: &ImageUpdateAutomation,
    ctx: &Context,
    redactor: &mut Redactor,
    progress: &mut Progress<'_, ImageUpdateAutomation>,
) -> Result<RunOutcome, ImageError> {
    let (request, policies) = prepare(auto, ctx, redactor, progress).await?;
    // Weir's locks: the markers of a locked workload are left as they are.
    let locked = crate::lock::locked(&ctx.base.client, ctx.namespaces.as_deref()).await?;
    // Each attempt has the source's timeout; the delays between them add up to a few seconds.
    let limit = request
        .timeout
        .saturating_mul(MAX_PUSH_ATTEMPTS + 1)
        .saturating_add(Duration::from_secs(10));
    let metrics = ctx.metrics.clone();
    // One clone-and-push per automation and URL: a retry while a timed-out one still waits on a
    // silent server takes no second thread.
    let key = format!(
        "{}/{} {}",
        request.automation.0, request.automation.1, request.url
    );
    let outcome = ctx
        .in_flight
        .run(&key, limit, move || {
            let skipped = std::cell::RefCell::new(vec![]);
            let outcome = update::run_edit(
                &request,
                &|| {
                    metrics.push_retries.fetch_add(1, Ordering::Relaxed);
                },
                &|file, text| {
                    let (text, changes, left) = crate::lock::apply_setters_unlocked(
                        file,
                        text,
                        &request.policies,
                        &locked,
                    )?;
                    skipped
                        .borrow_mut()
                        .extend(left.into_iter().map(|(i, _)| i));
                    Ok((text, changes))
                },
                &|changes| {
                    update::commit_message(request.template.as_ref(), &request.automation, changes)
                },
            )?;
            Ok((
                outcome,
                crate::lock::skipped_note(&locked, &skipped.into_inner()),
            ))
        })
        .await
        .map_err(|e| match e {
            BoundedError::StillRunning(after) => ImageError::GitStillRunning(after),
            BoundedError::Timeout(after) => ImageError::GitTimeout(after),
            BoundedError::Task(join) => ImageError::Task(join),
            BoundedError::Operation(e) => e,
        })?;
    let (outcome, skipped) = outcome;
    Ok((outcome, policies, skipped))
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
        self.metrics.automation_runs.fetch_add(1, Ordering::Relaxed);
        let interval = auto.spec.interval.as_std();
        let mut redactor = Redactor::default();
        // A new generation is in progress from the start; a new source revision once it is seen.
        let mut pass = Pass::begin(api, &*auto, FIELD_MANAGER).await;
        let result = match run(&auto, self, &mut redactor, &mut pass.progress).await {
            Ok((outcome, policies, skipped)) => {
                pass.status.observed_policies = policies;
                let result = record_run(&mut pass.status, outcome, &redactor, self);
                crate::lock::note_skipped(result, skipped.as_deref(), &pass.status)
            }
            Err(error) => StepResult::failed(&error, &redactor),
        };
        let ending = Ending::new("Push", Some(schedule::jittered(interval)), Some(interval));
        Ok(pass.finish(self, &result, ending).await?)
    }
}

/// Records a successful run in `status`; a push is news, announced with its commit message.
fn record_run(
    status: &mut weir_api::ImageUpdateAutomationStatus,
    outcome: UpdateOutcome,
    redactor: &Redactor,
    ctx: &Context,
) -> StepResult {
    let now = Time(Timestamp::now());
    status.last_automation_run_time = Some(now.clone());
    match outcome {
        UpdateOutcome::NoChange { revision, .. } => {
            status.observed_source_revision = Some(revision);
            StepResult::succeeded(reasons::SUCCEEDED, "repository up-to-date")
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
                Some(r) => {
                    format!("pushed commit '{commit}' to branch '{branch}' and refspecs '{r}'")
                }
                None => format!("pushed commit '{commit}' to branch '{branch}'"),
            };
            let note = if rejected > 0 {
                format!("{summary} after {rejected} rejected push(es)\n{message}")
            } else {
                format!("{summary}\n{message}")
            };
            status.last_push_commit = Some(commit);
            status.last_push_time = Some(now);
            StepResult::succeeded(reasons::SUCCEEDED, summary)
                .announcing(reasons::SUCCEEDED, redactor.redact(&note))
        }
    }
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

    #[test]
    fn only_a_source_revision_not_worked_on_marks_a_run_in_progress() {
        let git: weir_api::image::GitSpec =
            serde_json::from_value(json!({ "commit": { "author": { "email": "b@w.invalid" } } }))
                .unwrap();
        let mut repo = GitRepository::new(
            "fleet",
            serde_json::from_value(json!({ "url": "http://git.invalid/r.git", "interval": "1m" }))
                .unwrap(),
        );
        repo.status = Some(
            serde_json::from_value(json!({ "artifact": {
                "path": "p", "url": "u", "revision": "main@sha1:bbb",
                "lastUpdateTime": "2026-01-01T00:00:00Z",
            }}))
            .unwrap(),
        );
        let auto_at = |observed: &str, pushed: Option<&str>| {
            let mut auto: ImageUpdateAutomation = serde_json::from_value(json!({
                "apiVersion": "image.toolkit.fluxcd.io/v1",
                "kind": "ImageUpdateAutomation",
                "metadata": { "name": "auto", "namespace": "a", "generation": 1 },
                "spec": {
                    "interval": "1m",
                    "sourceRef": { "kind": "GitRepository", "name": "fleet" },
                },
            }))
            .unwrap();
            let status = auto.status.get_or_insert_default();
            status.observed_source_revision = Some(observed.to_owned());
            status.last_push_commit = pushed.map(str::to_owned);
            auto
        };
        assert_eq!(
            source_progress(&auto_at("main@sha1:aaa", None), &git, &repo, false).as_deref(),
            Some("processing object: new source revision 'main@sha1:bbb'")
        );
        assert_eq!(
            source_progress(&auto_at("main@sha1:bbb", None), &git, &repo, false),
            None,
            "the revision worked on"
        );
        assert_eq!(
            source_progress(&auto_at("main@sha1:ccc", Some("ccc")), &git, &repo, false),
            None,
            "its own push, not fetched by the GitRepository yet"
        );
        assert_eq!(
            source_progress(&auto_at("auto@sha1:aaa", None), &git, &repo, true),
            None,
            "another push branch names other revisions"
        );
    }
}
