//! Server-side apply of a set of objects, for every controller that applies manifests (the
//! Kustomization controller today; the HelmRelease controller and `weir diff`/`weir build`
//! next), as Flux's `fluxcd/pkg/ssa` serves its controllers:
//!
//! - [`kinds`]: which resource serves each kind (discovery, cached; or a CRD of the set);
//! - [`plan`]: validate the whole set with a server-side dry run and decide, per object,
//!   whether applying changes anything (`spec.ignore`'s paths, [`drift`], left out);
//! - [`write`]: apply what changed, definitions first, new CRDs Established before the rest;
//! - [`prune`]: delete what left the set, and wait for it to be gone;
//! - [`wait`]: wait until objects are healthy by [`health`]'s rules (kstatus, or CEL
//!   `healthCheckExprs`).
//!
//! What is a caller's is a parameter: the field manager, the owner labels an object must carry
//! to be pruned, the client (the controller's or an impersonated one). The
//! `kustomize.toolkit.fluxcd.io/{ssa,force,prune,reconcile}` annotations are Flux's contract
//! with any object it applies, so they are read here.
//!
//! Every failure is an [`SsaError`]; the caller maps it to its own condition reasons.

pub mod attribution;
pub mod dependency;
pub mod drift;
pub mod error;
pub mod health;
pub mod kinds;
pub mod object;
pub mod plan;
pub mod prune;
pub mod wait;
pub mod write;

use std::time::Duration;

use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject},
};

pub use crate::{
    drift::{IgnoreProblem, IgnoreRuleError, IgnoreRules},
    error::{ObjectError, ObjectErrors, Refusal, Refusals, SsaError},
    health::{Health, HealthExprError, HealthRules},
    kinds::KindCache,
    object::{Change, ChangeSet, ManifestFields, Target},
    prune::Deleted,
    wait::HealthTarget,
    write::ApplyFailure,
};

/// How often, at most, health, recreation and termination are polled once an object has taken
/// a while.
const POLL: Duration = Duration::from_secs(1);
/// The first pause between two polls: most objects (a Deployment scaled to 0, a Service, an
/// Ingress) are current within milliseconds of being applied, and a reconcile that waited a
/// whole [`POLL`] for each would spend its time asleep.
const FIRST_POLL: Duration = Duration::from_millis(50);

/// The pauses between polls of one wait: [`FIRST_POLL`], doubling up to [`POLL`], so an object
/// that is ready at once is seen at once and one that takes minutes costs one read a second.
#[derive(Debug)]
struct Polls(Duration);

impl Polls {
    fn new() -> Self {
        Self(FIRST_POLL)
    }

    /// The pause before the next poll.
    fn next_pause(&mut self) -> Duration {
        let pause = self.0;
        self.0 = (self.0 * 2).min(POLL);
        pause
    }

    async fn sleep(&mut self) {
        tokio::time::sleep(self.next_pause()).await;
    }
}

/// Counts the API requests an apply makes, for the caller's metrics.
pub trait ApiCounter: Send + Sync {
    /// One read, dry run or discovery request.
    fn request(&self);
    /// One write of an object (created, changed or deleted; also a request).
    fn write(&self);
}

/// Applies, prunes and waits on a set of objects under one client (the controller's, or an
/// impersonated one).
pub struct ApplySet<'a> {
    /// The client objects are read and written with.
    pub client: &'a Client,
    /// Counts the requests made.
    pub counter: &'a dyn ApiCounter,
    /// The field manager of applied objects.
    pub field_manager: &'a str,
    /// Recreate objects whose immutable fields changed (Flux's `spec.force`).
    pub force: bool,
    /// How long to wait for CRDs, recreations, terminations and health.
    pub timeout: Duration,
    /// Fields drift detection and apply leave to the cluster (Flux's `spec.ignore`).
    pub ignore: &'a IgnoreRules,
}

impl std::fmt::Debug for ApplySet<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApplySet")
            .field("field_manager", &self.field_manager)
            .field("force", &self.force)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ApplySet<'_> {
    /// The API of objects of `resource` in `namespace` (ignored when cluster-scoped).
    fn api_for(
        &self,
        resource: &ApiResource,
        namespaced: bool,
        namespace: &str,
    ) -> Api<DynamicObject> {
        if namespaced {
            Api::namespaced_with(self.client.clone(), namespace, resource)
        } else {
            Api::all_with(self.client.clone(), resource)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_start_fast_and_slow_down_to_one_a_second() {
        let mut polls = Polls::new();
        let pauses: Vec<u128> = (0..7).map(|_| polls.next_pause().as_millis()).collect();
        assert_eq!(pauses, [50, 100, 200, 400, 800, 1000, 1000]);
    }
}
