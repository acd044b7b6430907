//! The typed failures of a HelmRelease reconcile, each with its condition reason and
//! disposition.

use std::time::Duration;

use weir_api::{helm_release as hr, reasons};
use weir_runtime::{Disposition, Failure};

use crate::{helm::HelmError, storage::StorageError, values::ValuesError};

/// The Stalled reason of a release whose retries are spent (Flux's `RetriesExceeded`).
pub const RETRIES_EXCEEDED_REASON: &str = "RetriesExceeded";

/// Why a HelmRelease reconcile failed. Messages never hold values: Helm's own errors are cut to
/// their `Error:` line, and values errors name the object and key, never the content.
#[derive(Debug, thiserror::Error)]
pub enum HelmReleaseError {
    /// A dependency is missing or not ready (the message says which and why).
    #[error("{0}")]
    DependencyNotReady(String, Duration),
    /// A dependency cycle or a bad `readyExpr`: only a change of a spec ends it.
    #[error("{0}")]
    Dependency(String),
    #[error("HelmChart '{0}' is not ready: {1}")]
    ChartNotReady(String, String, Duration),
    #[error("HelmChart '{0}' not found")]
    ChartNotFound(String, Duration),
    #[error("cannot create or update HelmChart '{name}'")]
    ChartWrite {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot download the chart of HelmChart '{name}'")]
    Fetch {
        name: String,
        #[source]
        source: weir_kustomize::fetch::FetchError,
    },
    #[error(transparent)]
    Values(ValuesError),
    #[error("cannot read the release from Helm's storage")]
    Storage(#[source] StorageError),
    #[error("cannot prepare Helm")]
    Init(#[source] HelmError),
    /// A `healthCheckExprs` expression does not compile.
    #[error("invalid healthCheckExprs")]
    HealthCheckExpr(#[source] weir_ssa::HealthExprError),
    /// The spec asks for what Weir does not do; only a change of the spec helps.
    #[error("{0}")]
    Unsupported(String),
    /// A Helm action failed: `reason` is Flux's (InstallFailed, UpgradeFailed, TestFailed…).
    #[error("{message}")]
    Action {
        reason: &'static str,
        message: String,
    },
    /// No retries remain for the current desired state.
    #[error("{0}")]
    RetriesExhausted(String),
    /// The release's objects (its manifest's, or the live ones) could not be read.
    #[error("reading the release's objects: {0}")]
    Drift(String),
    /// Weir's rollback (`weir.dev/rollback-to`) asks for what cannot be: only a change of the
    /// annotation helps.
    #[error("annotation weir.dev/rollback-to: {0}")]
    Rollback(String),
    #[error("the reconcile did not finish within {0:?}")]
    Abandoned(Duration),
    #[error(transparent)]
    Kube(kube::Error),
}

impl Failure for HelmReleaseError {
    fn reason(&self) -> &'static str {
        match self {
            Self::DependencyNotReady(..) | Self::Dependency(_) => hr::DEPENDENCY_NOT_READY_REASON,
            Self::ChartNotReady(..)
            | Self::ChartNotFound(..)
            | Self::ChartWrite { .. }
            | Self::Fetch { .. } => hr::ARTIFACT_FAILED_REASON,
            Self::Values(_) | Self::Init(_) | Self::Unsupported(_) => hr::INIT_FAILED_REASON,
            Self::Storage(_) => hr::GET_LAST_RELEASE_FAILED_REASON,
            Self::Action { reason, .. } => reason,
            Self::RetriesExhausted(_) => RETRIES_EXCEEDED_REASON,
            Self::Rollback(_) => hr::ROLLBACK_FAILED_REASON,
            Self::HealthCheckExpr(_) => reasons::INVALID_CEL_EXPRESSION,
            Self::Abandoned(_) | Self::Kube(_) | Self::Drift(_) => reasons::RECONCILIATION_FAILED,
        }
    }

    fn disposition(&self) -> Disposition {
        match self {
            Self::DependencyNotReady(_, after)
            | Self::ChartNotReady(_, _, after)
            | Self::ChartNotFound(_, after) => Disposition::Waiting(*after),
            Self::Values(error) if error.is_waiting() => Disposition::Waiting(VALUES_RECHECK),
            // Only a change of the spec, or `resetAt`, lets a release with no retries left be
            // attempted again (both start a reconcile).
            Self::RetriesExhausted(_)
            | Self::Unsupported(_)
            | Self::Rollback(_)
            | Self::Dependency(_)
            | Self::HealthCheckExpr(_) => Disposition::Stalled,
            _ => Disposition::Transient,
        }
    }
}

/// How soon a release whose valuesFrom object is missing checks again.
const VALUES_RECHECK: Duration = Duration::from_secs(30);
