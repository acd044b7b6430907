//! The typed failures of a GitRepository reconcile, each with its condition reason.

use weir_api::{GitProvider, reasons, types};
use weir_runtime::{Disposition, Failure};

use weir_git::{GitError, credentials::CredentialsError};

use crate::{archive::ArchiveError, include::CopyError, verify::VerifyError};

/// Why a GitRepository reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The URL, `spec.secretRef` or `spec.proxySecretRef` does not give a usable remote.
    #[error(transparent)]
    Access(#[from] CredentialsError),
    #[error(transparent)]
    InvalidSemver(weir_runtime::semver_range::RangeError),
    #[error("failed to checkout and determine revision")]
    Git(#[source] GitError),
    #[error("branch '{0}' not found in the remote")]
    BranchNotFound(String),
    #[error("tag '{0}' not found in the remote")]
    TagNotFound(String),
    #[error("reference '{0}' not found in the remote")]
    RefNotFound(String),
    #[error("no tag matches the semver range '{0}'")]
    NoMatchingTag(String),
    #[error("commit '{commit}' not found{}", branch.as_ref().map(|b| format!(" on branch '{b}'")).unwrap_or_default())]
    CommitNotFound {
        commit: String,
        branch: Option<String>,
    },
    #[error("git operation timed out after {0}")]
    Timeout(String),
    #[error("the previous git operation (timed out after {0}) is still waiting on the server")]
    StillRunning(String),
    #[error("failed to archive the tree")]
    Archive(#[source] ArchiveError),
    #[error("failed to write the artifact")]
    Storage(#[source] std::io::Error),
    #[error("the git task failed")]
    Task(#[from] tokio::task::JoinError),
    /// `spec.verify` failed; boxed, as its signature errors are large.
    #[error(transparent)]
    Verification(Box<VerifyError>),
    #[error("the remote gave no commit to check out")]
    NothingToCheckOut,
    #[error(
        "spec.provider '{}': Weir does not implement its identity (Azure workload identity or a \
         GitHub App token, fetched from the provider's service); use provider 'generic' with \
         secretRef (spec.serviceAccountName is only read with provider 'azure')",
        .0.as_str()
    )]
    ProviderUnsupported(GitProvider),
    #[error(
        "could not get resource for include '{name}': GitRepository '{namespace}/{name}' not found"
    )]
    IncludeNotFound { namespace: String, name: String },
    #[error("could not get resource for include '{name}'")]
    IncludeUnreadable {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("no artifact available for include '{0}'")]
    IncludeNoArtifact(String),
    #[error("{field} '{path}' leaves the artifact's root")]
    IllegalIncludePath { field: String, path: String },
    #[error("failed to copy '{name}' include from '{from}' to '{to}'")]
    IncludeCopyFailed {
        name: String,
        from: String,
        to: String,
        #[source]
        source: CopyError,
    },
    #[error(
        "failed to sparse checkout directories: spec.sparseCheckout dir '{0}' does not exist in repository"
    )]
    SparseCheckoutMissing(String),
    #[error("submodule '{path}'")]
    Submodule {
        path: String,
        #[source]
        source: GitError,
    },
}

/// How long an include that is not available yet waits before it is looked at again, when no
/// change of the included GitRepository triggers a reconcile first (Flux's default
/// `--requeue-dependency`).
pub const INCLUDE_REQUEUE: std::time::Duration = std::time::Duration::from_secs(30);

impl From<VerifyError> for SourceError {
    fn from(e: VerifyError) -> Self {
        Self::Verification(Box::new(e))
    }
}

impl From<std::io::Error> for SourceError {
    fn from(e: std::io::Error) -> Self {
        Self::Storage(e)
    }
}

impl SourceError {
    /// The negative-polarity condition this failure sets: FetchFailed or StorageOperationFailed.
    #[must_use]
    pub fn condition_type(&self) -> &'static str {
        match self {
            Self::Verification(_) => types::SOURCE_VERIFIED,
            Self::Archive(_)
            | Self::Storage(_)
            | Self::IllegalIncludePath { .. }
            | Self::IncludeCopyFailed { .. } => types::STORAGE_OPERATION_FAILED,
            Self::IncludeNotFound { .. }
            | Self::IncludeUnreadable { .. }
            | Self::IncludeNoArtifact(_) => types::INCLUDE_UNAVAILABLE,
            Self::Access(_)
            | Self::InvalidSemver(_)
            | Self::Git(_)
            | Self::BranchNotFound(_)
            | Self::TagNotFound(_)
            | Self::RefNotFound(_)
            | Self::NoMatchingTag(_)
            | Self::CommitNotFound { .. }
            | Self::Timeout(_)
            | Self::StillRunning(_)
            | Self::Task(_)
            | Self::NothingToCheckOut
            | Self::ProviderUnsupported(_)
            | Self::SparseCheckoutMissing(_)
            | Self::Submodule { .. } => types::FETCH_FAILED,
        }
    }
}

impl SourceError {
    /// The status this failure sets its condition to: False for the bipolar `SourceVerified`,
    /// True for the negative-polarity rest.
    #[must_use]
    pub fn condition_status(&self) -> weir_api::ConditionStatus {
        if self.condition_type() == types::SOURCE_VERIFIED {
            weir_api::ConditionStatus::False
        } else {
            weir_api::ConditionStatus::True
        }
    }
}

impl Failure for SourceError {
    fn reason(&self) -> &'static str {
        match self {
            Self::Verification(e) => e.reason(),
            Self::Access(e) => e.reason(),
            Self::Git(
                GitError::Authentication(_) | GitError::HostKey(_) | GitError::Certificate(_),
            )
            | Self::Submodule {
                source:
                    GitError::Authentication(_) | GitError::HostKey(_) | GitError::Certificate(_),
                ..
            } => reasons::AUTHENTICATION_FAILED,
            Self::ProviderUnsupported(_) => reasons::INVALID_PROVIDER_CONFIGURATION,
            Self::IncludeNotFound { .. } | Self::IncludeUnreadable { .. } => reasons::NOT_FOUND,
            Self::IncludeNoArtifact(_) => reasons::NO_ARTIFACT,
            Self::IllegalIncludePath { .. } => reasons::ILLEGAL_PATH,
            Self::IncludeCopyFailed { .. } => reasons::COPY_FAILURE,
            Self::Archive(_) => reasons::ARCHIVE_OPERATION_FAILED,
            Self::Storage(_) => reasons::WRITE_OPERATION_FAILED,
            Self::InvalidSemver(_)
            | Self::Git(
                GitError::Timeout | GitError::Rejected(_) | GitError::Git(_) | GitError::LibGit2(_),
            )
            | Self::BranchNotFound(_)
            | Self::TagNotFound(_)
            | Self::RefNotFound(_)
            | Self::NoMatchingTag(_)
            | Self::CommitNotFound { .. }
            | Self::Timeout(_)
            | Self::StillRunning(_)
            | Self::Task(_)
            | Self::NothingToCheckOut
            | Self::SparseCheckoutMissing(_)
            | Self::Submodule {
                source:
                    GitError::Timeout | GitError::Rejected(_) | GitError::Git(_) | GitError::LibGit2(_),
                ..
            } => reasons::GIT_OPERATION_FAILED,
        }
    }

    fn disposition(&self) -> Disposition {
        match self {
            Self::Verification(e) => e.disposition(),
            // Only a change of the spec fixes these.
            Self::Access(e) => e.disposition(),
            Self::InvalidSemver(_)
            | Self::ProviderUnsupported(_)
            | Self::IllegalIncludePath { .. } => Disposition::Stalled,
            Self::IncludeNotFound { .. } | Self::IncludeNoArtifact(_) => {
                Disposition::Waiting(INCLUDE_REQUEUE)
            }
            Self::Git(_)
            | Self::BranchNotFound(_)
            | Self::TagNotFound(_)
            | Self::RefNotFound(_)
            | Self::NoMatchingTag(_)
            | Self::CommitNotFound { .. }
            | Self::Timeout(_)
            | Self::StillRunning(_)
            | Self::Archive(_)
            | Self::Storage(_)
            | Self::Task(_)
            | Self::NothingToCheckOut
            | Self::IncludeUnreadable { .. }
            | Self::IncludeCopyFailed { .. }
            | Self::SparseCheckoutMissing(_)
            | Self::Submodule { .. } => Disposition::Transient,
        }
    }
}
