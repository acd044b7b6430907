//! The ImagePolicy reconcile: `compile → access → repository's tags → choose → digest`, then
//! status once. The last good `latestRef` stays when a step fails.
//!
//! As in Flux, `imageRepositoryRef.namespace` may name another namespace only when that
//! ImageRepository's `spec.accessFrom` has a selector matching the labels of the policy's
//! namespace (and never under `--no-cross-namespace-refs`); otherwise Ready=False with
//! `AccessDenied`, retried with backoff because namespace labels are not watched. A repository
//! outside the namespaces this controller watches is never scanned by it, so such a policy says
//! so instead of waiting for a scan.

use std::sync::{Arc, atomic::Ordering};

use k8s_openapi::api::core::v1::Namespace;
use kube::{Api, ResourceExt, runtime::controller::Action};
use oci_client::{Reference, secrets::RegistryAuth};
use weir_api::{
    ImagePolicy, ImageRef, ImageRepository, image::ReflectionPolicy, meta::AccessFrom, reasons,
};
use weir_runtime::{
    ControllerError, Redactor,
    conclude::{Ending, Pass},
    controller::Reconciler,
    decision::StepResult,
};

use crate::{
    Context, FIELD_MANAGER,
    error::{AccessDenial, ImageError, RegistryFailure},
    policy::Policy,
};

/// How soon a policy whose repository is not scanned yet (after a restart) looks again.
const SCAN_PENDING_RECHECK: std::time::Duration = std::time::Duration::from_secs(2);
/// How often a failed policy is retried at most, when nothing else changes.
const RETRY_CAP: std::time::Duration = std::time::Duration::from_secs(60);

/// The namespace and name of the ImageRepository a policy names.
pub(crate) fn repository_key(policy: &ImagePolicy) -> (String, String) {
    let own = policy.namespace().unwrap_or_default();
    let reference = &policy.spec.image_repository_ref;
    (
        reference.namespace_or(&own).to_owned(),
        reference.name.clone(),
    )
}

/// `--no-cross-namespace-refs`: a policy may name only a repository in its own namespace.
fn check_lockdown(
    blocked: bool,
    policy_ns: &str,
    repo_ns: &str,
    name: &str,
) -> Result<(), AccessDenial> {
    if blocked && repo_ns != policy_ns {
        return Err(AccessDenial::Blocked {
            namespace: repo_ns.to_owned(),
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Flux's ACL: a repository in another namespace admits a policy only through a selector of its
/// `accessFrom` matching the labels of the policy's namespace.
fn check_access_from(
    access_from: Option<&AccessFrom>,
    policy_ns: &str,
    policy_ns_labels: &std::collections::BTreeMap<String, String>,
    repo_ns: &str,
    name: &str,
) -> Result<(), AccessDenial> {
    if repo_ns == policy_ns {
        return Ok(());
    }
    let (namespace, name) = (repo_ns.to_owned(), name.to_owned());
    match access_from {
        None => Err(AccessDenial::NoAccessFrom { namespace, name }),
        Some(acl) if acl.allows(policy_ns_labels) => Ok(()),
        Some(_) => Err(AccessDenial::LabelsMismatch {
            namespace,
            name,
            from: policy_ns.to_owned(),
        }),
    }
}

/// Whether the policy may read the repository it names; `Ok` for one in its own namespace
/// without a lookup. Sets nothing: the caller records the error.
async fn authorize(policy: &ImagePolicy, ctx: &Context) -> Result<(), ImageError> {
    let policy_ns = policy.namespace().unwrap_or_default();
    let (repo_ns, name) = repository_key(policy);
    check_lockdown(ctx.no_cross_namespace_refs, &policy_ns, &repo_ns, &name)?;
    if repo_ns == policy_ns {
        return Ok(());
    }
    if !ctx.watches(&repo_ns) {
        return Err(ImageError::RepositoryNotWatched {
            namespace: repo_ns,
            name,
        });
    }
    let repo = Api::<ImageRepository>::namespaced(ctx.base.client.clone(), &repo_ns)
        .get_opt(&name)
        .await?
        .ok_or_else(|| ImageError::RepositoryNotFound(format!("{repo_ns}/{name}")))?;
    let labels = match repo.spec.access_from {
        Some(_) => Api::<Namespace>::all(ctx.base.client.clone())
            .get(&policy_ns)
            .await?
            .metadata
            .labels
            .unwrap_or_default(),
        None => std::collections::BTreeMap::new(),
    };
    check_access_from(
        repo.spec.access_from.as_ref(),
        &policy_ns,
        &labels,
        &repo_ns,
        &name,
    )?;
    Ok(())
}

async fn choose(
    policy: &ImagePolicy,
    ctx: &Context,
    redactor: &mut Redactor,
) -> Result<ImageRef, ImageError> {
    let compiled = Policy::compile(&policy.spec)?;
    authorize(policy, ctx).await?;
    let (repo_ns, repo_name) = repository_key(policy);
    let scan = ctx.store.get(&repo_ns, &repo_name).ok_or_else(|| {
        ImageError::RepositoryNotReady(if repo_ns == policy.namespace().unwrap_or_default() {
            repo_name.clone()
        } else {
            format!("{repo_ns}/{repo_name}")
        })
    })?;
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
                            source: RegistryFailure::Client(e),
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
        self.metrics
            .policy_evaluations
            .fetch_add(1, Ordering::Relaxed);
        let previous = policy.status.as_ref();
        let mut redactor = Redactor::default();
        // After a restart the tag lists are empty until the repositories are scanned again (at
        // once, on start). A policy that has a pick keeps it, and its conditions, meanwhile.
        let (repo_ns, repo_name) = repository_key(&policy);
        if self.store.get(&repo_ns, &repo_name).is_none()
            && previous.is_some_and(|s| s.latest_ref.is_some())
            && previous.map(|s| s.observed_generation) == Some(policy.metadata.generation)
            && self.watches(&repo_ns)
            && Api::<ImageRepository>::namespaced(self.base.client.clone(), &repo_ns)
                .get_opt(&repo_name)
                .await?
                .is_some()
        {
            return Ok(Action::requeue(SCAN_PENDING_RECHECK));
        }
        // A new generation is evaluated in progress, as in Flux; a new scan or a digest look-up
        // of the interval writes nothing until done.
        let mut pass = Pass::begin(api, &*policy, FIELD_MANAGER).await;
        let status = &mut pass.status;
        let result = match choose(&policy, self, &mut redactor).await {
            Ok(chosen) => {
                let message = format!(
                    "Latest image tag for {} resolved to {}",
                    chosen.name, chosen.tag
                );
                let mut result = StepResult::succeeded(reasons::SUCCEEDED, &message);
                if status.latest_ref.as_ref() != Some(&chosen) {
                    let note = match status.latest_ref.take() {
                        Some(old) => {
                            let note = format!("{message} (previously {})", old.tag);
                            status.observed_previous_ref = Some(old);
                            note
                        }
                        None => message.clone(),
                    };
                    result = result.announcing(reasons::SUCCEEDED, note);
                    status.latest_ref = Some(chosen);
                }
                result
            }
            Err(error) => StepResult::failed(&error, &redactor),
        };
        // With `Always`, the digest is looked up again every interval; otherwise only a new scan or
        // a change of the policy starts a new evaluation.
        let after_success = policy
            .spec
            .interval
            .as_ref()
            .map(|interval| weir_runtime::schedule::jittered(interval.as_std()));
        let ending = Ending::new("Policy", after_success, Some(RETRY_CAP));
        Ok(pass.finish(self, &result, ending).await?)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use weir_api::meta::NamespaceSelector;

    use super::*;

    #[test]
    fn lockdown_refuses_only_another_namespace() {
        assert_eq!(check_lockdown(true, "a", "a", "app"), Ok(()));
        assert_eq!(check_lockdown(false, "a", "b", "app"), Ok(()));
        let denied = check_lockdown(true, "a", "b", "app").unwrap_err();
        assert_eq!(
            weir_runtime::chain(&ImageError::from(denied)),
            "failed to get the referred ImageRepository: cannot access \
             'ImageRepository/b/app', cross-namespace references have been blocked"
        );
    }

    #[test]
    fn another_namespace_needs_a_matching_access_from() {
        let labels: BTreeMap<String, String> = [("team".to_owned(), "a".to_owned())].into();
        let acl = |pairs: &[(&str, &str)]| AccessFrom {
            namespace_selectors: vec![NamespaceSelector {
                match_labels: pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            }],
        };
        let check = |access: Option<&AccessFrom>, repo_ns: &str| {
            check_access_from(access, "a", &labels, repo_ns, "app").map_err(|e| e.to_string())
        };
        assert_eq!(check(None, "a"), Ok(()), "the same namespace needs no ACL");
        assert_eq!(check(Some(&acl(&[("team", "a")])), "b"), Ok(()));
        assert_eq!(
            check(Some(&acl(&[])), "b"),
            Ok(()),
            "empty matchLabels match all"
        );
        assert_eq!(
            check(None, "b").unwrap_err(),
            "access denied: 'b/app' can't be accessed due to missing ACL labels on 'accessFrom'"
        );
        assert_eq!(
            check(Some(&acl(&[("team", "b")])), "b").unwrap_err(),
            "access denied: 'b/app' can't be accessed due to ACL labels mismatch on namespace 'a'"
        );
    }
}
