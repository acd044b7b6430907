//! The ImagePolicy reconcile: `compile → repository's tags → choose → digest`, then status once.
//! The last good `latestRef` stays when a step fails.

use std::sync::{Arc, atomic::Ordering};

use kube::{Api, ResourceExt, runtime::controller::Action};
use oci_client::{Reference, secrets::RegistryAuth};
use weir_api::{
    ImagePolicy, ImageRef, ImageRepository, image::ReflectionPolicy, meta::handled_reconcile_at,
    reasons,
};
use weir_runtime::{ControllerError, Redactor, controller::Reconciler, status::apply_status};

use crate::{Context, FIELD_MANAGER, error::ImageError, failed, policy::Policy, succeeded};

/// How soon a policy whose repository is not scanned yet (after a restart) looks again.
const SCAN_PENDING_RECHECK: std::time::Duration = std::time::Duration::from_secs(2);
/// How often a failed policy is retried at most, when nothing else changes.
const RETRY_CAP: std::time::Duration = std::time::Duration::from_secs(60);

async fn choose(
    policy: &ImagePolicy,
    ctx: &Context,
    redactor: &mut Redactor,
) -> Result<ImageRef, ImageError> {
    let compiled = Policy::compile(&policy.spec)?;
    let namespace = policy.namespace().unwrap_or_default();
    let repo_name = &policy.spec.image_repository_ref.name;
    let scan = ctx
        .store
        .get(&namespace, repo_name)
        .ok_or_else(|| ImageError::RepositoryNotReady(repo_name.clone()))?;
    if let RegistryAuth::Basic(_, password) = &scan.access.auth {
        redactor.add(password.clone());
    }
    let tag = compiled
        .latest(&scan.tags)
        .ok_or_else(|| ImageError::NoMatchingTag {
            image: scan.canonical_image_name.clone(),
            count: scan.tags.len(),
        })?;
    let mut chosen = ImageRef {
        name: scan.image.clone(),
        tag: tag.to_owned(),
        digest: None,
    };
    let reflection = policy.spec.digest_reflection_policy;
    if reflection != ReflectionPolicy::Never {
        let previous = policy.status.as_ref().and_then(|s| s.latest_ref.as_ref());
        chosen.digest = match previous {
            Some(p)
                if reflection == ReflectionPolicy::IfNotPresent
                    && p.name == chosen.name
                    && p.tag == chosen.tag
                    && p.digest.is_some() =>
            {
                p.digest.clone()
            }
            _ => {
                let mut reference = Reference::with_tag(
                    scan.reference.registry().to_owned(),
                    scan.reference.repository().to_owned(),
                    chosen.tag.clone(),
                );
                if scan.reference.namespace().is_some() {
                    reference.set_mirror_registry(scan.reference.resolve_registry().to_owned());
                }
                Some(
                    scan.access
                        .client()?
                        .fetch_manifest_digest(&reference, &scan.access.auth)
                        .await
                        .map_err(|e| ImageError::Registry {
                            image: chosen.reference(),
                            message: e.to_string(),
                        })?,
                )
            }
        };
    }
    Ok(chosen)
}

/// Flux's finalizer is kept on policies as on every image kind (the runtime adds and removes it):
/// a policy holds nothing to clean up, but one written by Flux carries it and must be deletable.
impl Reconciler<ImagePolicy> for Context {
    async fn apply(
        &self,
        api: &Api<ImagePolicy>,
        policy: Arc<ImagePolicy>,
    ) -> Result<Action, ControllerError> {
        evaluate(api, policy, self).await
    }
}

async fn evaluate(
    api: &Api<ImagePolicy>,
    policy: Arc<ImagePolicy>,
    ctx: &Context,
) -> Result<Action, ControllerError> {
    ctx.metrics
        .policy_evaluations
        .fetch_add(1, Ordering::Relaxed);
    let previous = policy.status.clone();
    let mut status = previous.clone().unwrap_or_default();
    status.observed_generation = policy.metadata.generation;
    status.last_handled_reconcile_at = handled_reconcile_at(
        policy.annotations().into(),
        previous
            .as_ref()
            .and_then(|s| s.last_handled_reconcile_at.as_deref()),
    );
    let mut redactor = Redactor::default();
    // After a restart the tag lists are empty until the repositories are scanned again (at
    // once, on start). A policy that has a pick keeps it, and its conditions, meanwhile.
    let repo_name = &policy.spec.image_repository_ref.name;
    let namespace = policy.namespace().unwrap_or_default();
    if ctx.store.get(&namespace, repo_name).is_none()
        && status.latest_ref.is_some()
        && previous.as_ref().map(|s| s.observed_generation) == Some(policy.metadata.generation)
        && Api::<ImageRepository>::namespaced(ctx.client.clone(), &namespace)
            .get_opt(repo_name)
            .await?
            .is_some()
    {
        return Ok(Action::requeue(SCAN_PENDING_RECHECK));
    }
    let action = match choose(&policy, ctx, &mut redactor).await {
        Ok(chosen) => {
            let message = format!(
                "Latest image tag for {} resolved to {}",
                chosen.name, chosen.tag
            );
            if status.latest_ref.as_ref() != Some(&chosen) {
                if let Some(old) = status.latest_ref.take() {
                    ctx.events
                        .normal(
                            &*policy,
                            reasons::SUCCEEDED,
                            "Policy",
                            &format!("{message} (previously {})", old.tag),
                        )
                        .await;
                    status.observed_previous_ref = Some(old);
                } else {
                    ctx.events
                        .normal(&*policy, reasons::SUCCEEDED, "Policy", &message)
                        .await;
                }
                status.latest_ref = Some(chosen);
            }
            succeeded(&*policy, ctx, &mut status.conditions, &message);
            // With `Always`, the digest is looked up again every interval; otherwise only a new
            // scan or a change of the policy starts a new evaluation.
            match &policy.spec.interval {
                Some(interval) => {
                    Action::requeue(weir_runtime::schedule::jittered(interval.as_std()))
                }
                None => Action::await_change(),
            }
        }
        Err(error) => {
            failed(
                &*policy,
                ctx,
                &mut status.conditions,
                &error,
                &redactor,
                RETRY_CAP,
                "Policy",
            )
            .await
        }
    };
    apply_status(api, &*policy, previous.as_ref(), &status, FIELD_MANAGER).await?;
    Ok(action)
}
