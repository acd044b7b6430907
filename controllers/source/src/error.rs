//! The typed failures of a GitRepository reconcile, each with its condition reason.

use weir_api::{reasons, types};
use weir_runtime::{Disposition, Failure};

use crate::{archive::ArchiveError, git::GitError};

/// Why a GitRepository reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("invalid URL {url:?}: {why}")]
    InvalidUrl { url: String, why: String },
    #[error("secret '{namespace}/{name}' not found")]
    SecretNotFound { namespace: String, name: String },
    #[error("cannot read secret '{name}': {message}")]
    SecretUnreadable { name: String, message: String },
    #[error("{0}")]
    InvalidSemver(String),
    #[error("failed to checkout and determine revision: {0}")]
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
    #[error("failed to archive the tree: {0}")]
    Archive(#[source] ArchiveError),
    #[error("failed to write the artifact: {0}")]
    Storage(#[source] std::io::Error),
    #[error("the git task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("the remote gave no commit to check out")]
    NothingToCheckOut,
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
            Self::Archive(_) | Self::Storage(_) => types::STORAGE_OPERATION_FAILED,
            Self::InvalidUrl { .. }
            | Self::SecretNotFound { .. }
            | Self::SecretUnreadable { .. }
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
            | Self::NothingToCheckOut => types::FETCH_FAILED,
        }
    }
}

impl Failure for SourceError {
    fn reason(&self) -> &'static str {
        match self {
            Self::InvalidUrl { .. } => reasons::URL_INVALID,
            Self::SecretNotFound { .. }
            | Self::SecretUnreadable { .. }
            | Self::Git(
                GitError::Authentication(_) | GitError::HostKey(_) | GitError::Certificate(_),
            ) => reasons::AUTHENTICATION_FAILED,
            Self::Archive(_) => reasons::ARCHIVE_OPERATION_FAILED,
            Self::Storage(_) => reasons::WRITE_OPERATION_FAILED,
            Self::InvalidSemver(_)
            | Self::Git(_)
            | Self::BranchNotFound(_)
            | Self::TagNotFound(_)
            | Self::RefNotFound(_)
            | Self::NoMatchingTag(_)
            | Self::CommitNotFound { .. }
            | Self::Timeout(_)
            | Self::StillRunning(_)
            | Self::Task(_)
            | Self::NothingToCheckOut => reasons::GIT_OPERATION_FAILED,
        }
    }

    fn disposition(&self) -> Disposition {
        match self {
            // Only a change of the spec fixes these.
            Self::InvalidUrl { .. } | Self::InvalidSemver(_) => Disposition::Stalled,
            Self::SecretNotFound { .. }
            | Self::SecretUnreadable { .. }
            | Self::Git(_)
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
            | Self::NothingToCheckOut => Disposition::Transient,
        }
    }
}
