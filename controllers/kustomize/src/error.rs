//! The typed failures of a Kustomization reconcile, each with its condition reason and
//! disposition.

use std::time::Duration;

use weir_api::reasons;
use weir_runtime::{Disposition, Failure};
use weir_ssa::{HealthExprError, IgnoreProblem, IgnoreRuleError, SsaError};

use crate::{build::BuildError, fetch::FetchError, substitute::SubstituteError};

/// Why a Kustomization reconcile failed. Messages never hold secret values: substituted
/// variables are masked by the caller's redactor before a message leaves the process.
#[derive(Debug, thiserror::Error)]
pub enum KustomizeError {
    #[error("dependency '{0}' is not ready")]
    DependencyNotReady(String, Duration),
    #[error("dependency '{0}' revision is not up to date")]
    DependencyRevision(String, Duration),
    #[error("dependency '{name}' is not ready: dependsOn[{index}].readyExpr {why}")]
    DependencyExprNotReady {
        name: String,
        index: usize,
        why: String,
        after: Duration,
    },
    /// The dependencies lead back to this Kustomization: only a change of a spec ends it.
    #[error("dependency cycle: {0}")]
    DependencyCycle(String),
    #[error("invalid dependsOn[{index}].readyExpr")]
    DependencyExpr {
        index: usize,
        #[source]
        source: cel::ParseErrors,
    },
    /// The objects a `readyExpr` reads did not serialize (a bug, not a bad spec).
    #[error("dependsOn[{index}].readyExpr: cannot serialize the objects it reads")]
    ReadyExprInput {
        index: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("can't access '{0}', cross-namespace references have been blocked")]
    AccessDenied(String),
    #[error("source '{0}' not found")]
    SourceNotFound(String, Duration),
    #[error("source '{0}' has no artifact yet")]
    ArtifactNotReady(String, Duration),
    /// Weir's rollback (`weir.dev/rollback-to`): the pinned revision is not there (yet).
    #[error(transparent)]
    Rollback(crate::rollback::RollbackError),
    #[error(transparent)]
    Fetch(FetchError),
    #[error(transparent)]
    Build(BuildError),
    #[error("variable substitution failed in {file} ({object})")]
    Substitute {
        file: String,
        object: String,
        #[source]
        source: SubstituteError,
    },
    #[error("variable substitution failed")]
    SubstituteInput(#[source] SubstituteError),
    #[error("{kind} '{name}' for postBuild.substituteFrom not found")]
    SubstituteFromNotFound { kind: &'static str, name: String },
    #[error("cannot impersonate service account '{account}'")]
    Impersonation {
        account: String,
        #[source]
        source: kube::Error,
    },
    /// The set was refused by its dry run (or a kind or namespace did not resolve).
    #[error("validation failed, nothing applied")]
    Validation(#[source] SsaError),
    #[error("apply failed")]
    Apply(#[source] SsaError),
    #[error("prune failed")]
    Prune(#[source] SsaError),
    /// The revision applies nothing and would prune every object applied before; Weir's guard
    /// against an emptied path (`weir.dev/allow-mass-prune: "true"` allows it).
    #[error(
        "refusing to prune all {0} objects applied before: the revision applies no object \
         (an emptied path?); nothing was pruned. Annotate the Kustomization \
         weir.dev/allow-mass-prune=true to prune them"
    )]
    MassPrune(usize),
    #[error("health check failed after {after:?}")]
    HealthCheck {
        after: Duration,
        /// Boxed: beside `after`, it would make every result of a step large.
        #[source]
        source: Box<SsaError>,
    },
    #[error("healthChecks: {0}")]
    HealthCheckKind(String),
    #[error(transparent)]
    HealthCheckExpr(HealthExprError),
    #[error("invalid spec.{field}")]
    IgnoreRule {
        /// The field, as `ignore[1].target.name`.
        field: String,
        #[source]
        source: IgnoreProblem,
    },
    #[error("kubernetes API")]
    Kube(#[source] kube::Error),
    /// Discovery of the kinds of the set (or of healthChecks) failed.
    #[error("kubernetes API")]
    Discovery(#[source] SsaError),
    /// Weir's locks: the watches of locked workloads have not listed them yet (the API server
    /// is slow, or the controller may not watch workloads).
    #[error("the locked workloads were not listed within {0:?}: their images cannot be kept")]
    LocksNotSynced(Duration),
    /// The reconcile did not end within its bound (twice `spec.timeout`) and was abandoned.
    #[error("reconciliation did not end within {0:?} (twice spec.timeout) and was abandoned")]
    Abandoned(Duration),
}

impl From<IgnoreRuleError> for KustomizeError {
    fn from(e: IgnoreRuleError) -> Self {
        Self::IgnoreRule {
            field: e.field,
            source: e.problem,
        }
    }
}

impl Failure for KustomizeError {
    fn reason(&self) -> &'static str {
        match self {
            Self::DependencyNotReady(..)
            | Self::DependencyRevision(..)
            | Self::DependencyExprNotReady { .. }
            | Self::DependencyCycle(_) => reasons::DEPENDENCY_NOT_READY,
            Self::SourceNotFound(..) | Self::ArtifactNotReady(..) | Self::Fetch(_) => {
                reasons::ARTIFACT_FAILED
            }
            Self::Build(_)
            | Self::Substitute { .. }
            | Self::SubstituteInput(_)
            | Self::SubstituteFromNotFound { .. } => reasons::BUILD_FAILED,
            Self::Prune(_) | Self::MassPrune(_) => reasons::PRUNE_FAILED,
            Self::HealthCheck { .. } | Self::HealthCheckKind(_) => reasons::HEALTH_CHECK_FAILED,
            Self::HealthCheckExpr(_) | Self::DependencyExpr { .. } => {
                reasons::INVALID_CEL_EXPRESSION
            }
            Self::AccessDenied(_) => reasons::ACCESS_DENIED,
            Self::Rollback(e) => e.reason(),
            Self::Impersonation { .. }
            | Self::Validation(_)
            | Self::Apply(_)
            | Self::IgnoreRule { .. }
            | Self::Kube(_)
            | Self::Discovery(_)
            | Self::ReadyExprInput { .. }
            | Self::LocksNotSynced(_)
            | Self::Abandoned(_) => reasons::RECONCILIATION_FAILED,
        }
    }

    fn disposition(&self) -> Disposition {
        match self {
            Self::DependencyNotReady(_, after)
            | Self::DependencyRevision(_, after)
            | Self::SourceNotFound(_, after)
            | Self::ArtifactNotReady(_, after)
            | Self::DependencyExprNotReady { after, .. } => Disposition::Waiting(*after),
            Self::Rollback(e) => e.disposition(),
            // A new commit or a changed spec fixes the rest; both trigger a reconcile, and
            // retryInterval retries meanwhile (RBAC or a CRD may be added by someone else).
            Self::Fetch(_)
            | Self::Build(_)
            | Self::Substitute { .. }
            | Self::SubstituteInput(_)
            | Self::SubstituteFromNotFound { .. }
            | Self::Impersonation { .. }
            | Self::AccessDenied(_)
            | Self::Validation(_)
            | Self::Apply(_)
            | Self::Prune(_)
            | Self::MassPrune(_)
            | Self::HealthCheck { .. }
            | Self::HealthCheckKind(_)
            | Self::Kube(_)
            | Self::Discovery(_)
            | Self::ReadyExprInput { .. }
            | Self::LocksNotSynced(_)
            | Self::Abandoned(_) => Disposition::Transient,
            // Only a change of the spec fixes an expression; Flux stalls too.
            Self::HealthCheckExpr(_)
            | Self::DependencyExpr { .. }
            | Self::IgnoreRule { .. }
            | Self::DependencyCycle(_) => Disposition::Stalled,
        }
    }
}

#[cfg(test)]
mod tests {
    use weir_ssa::{Refusal, Refusals};

    use super::*;

    #[test]
    fn a_refused_set_reads_as_the_refusals_after_what_failed() {
        let refusal = |name: &str| Refusal::NoNamespace {
            object: format!("ConfigMap/{name}"),
            file: format!("{name}.yaml"),
        };
        let error = KustomizeError::Validation(SsaError::Invalid(Refusals(vec![
            refusal("a"),
            refusal("b"),
        ])));
        assert_eq!(
            weir_runtime::chain(&error),
            "validation failed, nothing applied: ConfigMap/a (a.yaml): namespace not specified\n\
             ConfigMap/b (b.yaml): namespace not specified"
        );
    }
}
