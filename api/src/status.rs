//! What every kind's status has in common, so that the runtime, metrics and tests handle any
//! kind alike: its conditions, the generation they describe, and the last handled
//! `reconcile.fluxcd.io/requestedAt` token; and whether an object is suspended.

use kube::core::object::HasStatus;

use crate::{
    Condition, GitRepository, GitRepositoryStatus, HelmChart, HelmChartStatus, HelmRelease,
    HelmReleaseStatus, HelmRepository, HelmRepositoryStatus, ImagePolicy, ImagePolicyStatus,
    ImageRepository, ImageRepositoryStatus, ImageUpdateAutomation, ImageUpdateAutomationStatus,
    Kustomization, KustomizationStatus, condition::find_condition, types,
};

/// The fields Flux's status types share (`meta.ReconcileRequestStatus` and conditions).
pub trait ObjectStatus {
    fn conditions(&self) -> &[Condition];
    /// The conditions, to change (the runtime's progressing mark).
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;
    fn observed_generation(&self) -> Option<i64>;
    fn last_handled_reconcile_at(&self) -> Option<&str>;
    /// Records what a reconcile handled: the object's generation and the
    /// `reconcile.fluxcd.io/requestedAt` token it answered.
    fn set_handled(&mut self, generation: Option<i64>, last_handled_reconcile_at: Option<String>);

    /// The `Ready` condition, when there is one.
    fn ready(&self) -> Option<&Condition> {
        find_condition(self.conditions(), types::READY)
    }
}

/// A kind the controllers reconcile: its status is an [`ObjectStatus`], and it may be suspended.
pub trait Reconciled: HasStatus<Status: ObjectStatus> {
    /// `spec.suspend`.
    fn suspended(&self) -> bool;
}

macro_rules! object_status {
    ($($status:ty),*) => {$(
        impl ObjectStatus for $status {
            fn conditions(&self) -> &[Condition] {
                &self.conditions
            }
            fn conditions_mut(&mut self) -> &mut Vec<Condition> {
                &mut self.conditions
            }
            fn observed_generation(&self) -> Option<i64> {
                self.observed_generation
            }
            fn last_handled_reconcile_at(&self) -> Option<&str> {
                self.last_handled_reconcile_at.as_deref()
            }
            fn set_handled(&mut self, generation: Option<i64>, handled: Option<String>) {
                self.observed_generation = generation;
                self.last_handled_reconcile_at = handled;
            }
        }
    )*};
}

object_status!(
    GitRepositoryStatus,
    HelmRepositoryStatus,
    HelmChartStatus,
    HelmReleaseStatus,
    KustomizationStatus,
    ImageRepositoryStatus,
    ImagePolicyStatus,
    ImageUpdateAutomationStatus
);

macro_rules! suspendable {
    ($($kind:ty),*) => {$(
        impl Reconciled for $kind {
            fn suspended(&self) -> bool {
                self.spec.suspend
            }
        }
    )*};
}

suspendable!(
    GitRepository,
    HelmRepository,
    HelmChart,
    HelmRelease,
    Kustomization,
    ImageRepository,
    ImagePolicy,
    ImageUpdateAutomation
);
