//! The typed failures of the image controller's reconciles, each with its condition reason and
//! disposition.

use std::time::Duration;

use oci_client::errors::OciDistributionError;
use weir_api::{image::RegistryProvider, reasons};
use weir_git::{GitError, credentials::CredentialsError};
use weir_runtime::{Disposition, Failure};

use crate::{
    policy::PolicyError, setters::MarkerError, signing::SigningError, template::TemplateError,
};

/// Why an ImageRepository, ImagePolicy or ImageUpdateAutomation reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image {image:?}: {why}")]
    InvalidImage { image: String, why: &'static str },
    #[error("invalid image {image:?}")]
    UnparsableImage {
        image: String,
        #[source]
        source: oci_client::ParseError,
    },
    #[error("invalid exclusionList entry {pattern:?}")]
    InvalidExclusion {
        pattern: String,
        #[source]
        source: regex::Error,
    },
    #[error("secret '{namespace}/{name}' not found")]
    SecretNotFound { namespace: String, name: String },
    #[error("cannot read secret '{name}'")]
    SecretUnreadable {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("secret '{name}': {why}")]
    SecretInvalid { name: String, why: String },
    /// A value of the Secret that the library reading it refused; boxed, as the libraries
    /// (reqwest, oci-client, serde_json, url) differ.
    #[error("secret '{name}': {what}")]
    SecretUnusable {
        name: String,
        /// The value, in Weir's words: `cannot use ca.crt`.
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("authentication to the registry of {image} failed")]
    RegistryAuthentication {
        image: String,
        #[source]
        source: RegistryFailure,
    },
    #[error("cannot read {image} from its registry")]
    Registry {
        image: String,
        #[source]
        source: RegistryFailure,
    },
    #[error("scanning {image} timed out after {after:?}")]
    ScanTimeout { image: String, after: Duration },
    #[error("ImagePolicy")]
    InvalidPolicy(#[from] PolicyError),
    #[error("ImageRepository '{0}' has no scan result yet")]
    RepositoryNotReady(String),
    #[error("failed to get the referred ImageRepository")]
    RepositoryAccess(#[from] AccessDenial),
    #[error("referenced ImageRepository '{0}' does not exist")]
    RepositoryNotFound(String),
    #[error(
        "ImageRepository '{namespace}/{name}' is in a namespace this controller does not watch"
    )]
    RepositoryNotWatched { namespace: String, name: String },
    #[error("serviceaccount '{namespace}/{name}' not found")]
    ServiceAccountNotFound { namespace: String, name: String },
    #[error(
        "spec.provider '{}': Weir does not implement its workload identity (it needs the cloud's \
         metadata endpoint); use provider 'generic' with secretRef or serviceAccountName",
        .0.as_str()
    )]
    ProviderUnsupported(RegistryProvider),
    #[error("no tag of {image} (of {count}) is allowed by the policy")]
    NoMatchingTag { image: String, count: usize },
    #[error("{0}")]
    InvalidSource(String),
    #[error("git.checkout.ref.semver")]
    InvalidCheckoutSemver(#[source] weir_runtime::semver_range::RangeError),
    #[error("can't access '{0}', cross-namespace references have been blocked")]
    AccessDenied(String),
    #[error("invalid policySelector")]
    InvalidSelector(#[source] kube::core::ParseExpressionError),
    #[error(transparent)]
    Marker(#[from] MarkerError),
    #[error("commit message template")]
    Template(#[from] TemplateError),
    #[error("invalid update.path {0:?}: it must stay inside the repository")]
    InvalidUpdatePath(String),
    /// `git.commit.signingKey`: the Secret (`namespace/name`) and what is wrong with it.
    #[error(transparent)]
    SigningKey(#[from] SigningError),
    /// The GitRepository's URL or Secrets give no usable remote.
    #[error(transparent)]
    GitAccess(#[from] CredentialsError),
    #[error("git")]
    Git(#[source] GitError),
    #[error("push to branch '{branch}' was rejected {attempts} times: the branch kept moving")]
    PushRejected { branch: String, attempts: u32 },
    #[error("git operation timed out after {0:?}")]
    GitTimeout(Duration),
    /// The automation's previous clone or push timed out and still waits on the server.
    #[error("the previous git operation (timed out after {0:?}) is still waiting on the server")]
    GitStillRunning(Duration),
    #[error("kubernetes API")]
    Kube(#[from] kube::Error),
    #[error("the update task failed")]
    Task(#[from] tokio::task::JoinError),
    #[error("scratch space for the update")]
    Scratch(#[source] std::io::Error),
}

impl Failure for ImageError {
    fn reason(&self) -> &'static str {
        match self {
            Self::InvalidImage { .. } | Self::UnparsableImage { .. } => reasons::IMAGE_URL_INVALID,
            Self::InvalidExclusion { .. } | Self::InvalidUpdatePath(_) => reasons::INVALID_SPEC,
            Self::SecretNotFound { .. }
            | Self::SecretUnreadable { .. }
            | Self::SecretInvalid { .. }
            | Self::SecretUnusable { .. }
            | Self::ServiceAccountNotFound { .. }
            | Self::ProviderUnsupported(_)
            | Self::RegistryAuthentication { .. }
            | Self::GitAccess(
                CredentialsError::SecretNotFound { .. } | CredentialsError::SecretUnreadable { .. },
            )
            | Self::Git(
                GitError::Authentication(_) | GitError::HostKey(_) | GitError::Certificate(_),
            ) => reasons::AUTHENTICATION_FAILED,
            Self::Registry { .. } | Self::ScanTimeout { .. } => reasons::READ_OPERATION_FAILED,
            Self::InvalidPolicy(_) => reasons::INVALID_POLICY,
            Self::RepositoryNotReady(_)
            | Self::RepositoryNotFound(_)
            | Self::RepositoryNotWatched { .. } => reasons::DEPENDENCY_NOT_READY,
            Self::NoMatchingTag { .. } => reasons::NO_MATCHING_TAG,
            Self::InvalidSource(_)
            | Self::InvalidCheckoutSemver(_)
            | Self::SigningKey(_)
            | Self::GitAccess(
                CredentialsError::InvalidUrl { .. }
                | CredentialsError::ProxySecretNotFound { .. }
                | CredentialsError::ProxySecretUnreadable { .. }
                | CredentialsError::ProxySecretInvalid { .. }
                | CredentialsError::ProxyNeedsHttps(_),
            ) => reasons::INVALID_SOURCE_CONFIGURATION,
            Self::AccessDenied(_) | Self::RepositoryAccess(_) => reasons::ACCESS_DENIED,
            Self::InvalidSelector(_) => reasons::INVALID_POLICY_SELECTOR,
            Self::PushRejected { .. } => reasons::PUSH_REJECTED,
            Self::Marker(_) => reasons::INVALID_MARKER,
            Self::Template(_) => reasons::INVALID_MESSAGE_TEMPLATE,
            Self::Git(
                GitError::Timeout | GitError::Rejected(_) | GitError::Git(_) | GitError::LibGit2(_),
            )
            | Self::GitTimeout(_)
            | Self::GitStillRunning(_) => reasons::GIT_OPERATION_FAILED,
            Self::Kube(_) | Self::Task(_) | Self::Scratch(_) => reasons::RECONCILIATION_FAILED,
        }
    }

    fn disposition(&self) -> Disposition {
        match self {
            // Only a change of the object's spec fixes these.
            Self::InvalidImage { .. }
            | Self::UnparsableImage { .. }
            | Self::InvalidExclusion { .. }
            | Self::InvalidPolicy(_)
            | Self::InvalidSelector(_)
            | Self::Template(_)
            | Self::InvalidUpdatePath(_)
            | Self::ProviderUnsupported(_) => Disposition::Stalled,
            Self::RepositoryNotReady(_) | Self::RepositoryNotFound(_) => {
                Disposition::Waiting(Duration::from_secs(5))
            }
            // Flux retries a denied access too: the namespace labels it depends on are not
            // watched.
            Self::SecretNotFound { .. }
            | Self::SecretUnreadable { .. }
            | Self::SecretInvalid { .. }
            | Self::SecretUnusable { .. }
            | Self::ServiceAccountNotFound { .. }
            | Self::RepositoryAccess(_)
            | Self::RepositoryNotWatched { .. }
            | Self::RegistryAuthentication { .. }
            | Self::Registry { .. }
            | Self::ScanTimeout { .. }
            | Self::NoMatchingTag { .. }
            | Self::InvalidSource(_)
            | Self::InvalidCheckoutSemver(_)
            | Self::SigningKey(_)
            | Self::AccessDenied(_)
            | Self::Marker(_)
            | Self::Git(_)
            | Self::PushRejected { .. }
            | Self::GitTimeout(_)
            | Self::GitStillRunning(_)
            | Self::GitAccess(_)
            | Self::Kube(_)
            | Self::Task(_)
            | Self::Scratch(_) => Disposition::Transient,
        }
    }
}

/// What went wrong reading a registry: oci-client's error, or one of the requests for the tag
/// list, which Weir makes itself.
#[derive(Debug, thiserror::Error)]
pub enum RegistryFailure {
    /// oci-client's error: the token exchange, a manifest.
    #[error(transparent)]
    Client(OciDistributionError),
    #[error("cannot build an HTTP client")]
    HttpClient(#[source] reqwest::Error),
    #[error("invalid registry address")]
    Address(#[source] url::ParseError),
    #[error("GET {url}")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("GET {url}: {status}")]
    Status {
        url: String,
        status: reqwest::StatusCode,
    },
    #[error("GET {url}: not a tag list")]
    TagList {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the tag list's Link header is not visible ASCII")]
    LinkNotAscii,
    #[error("the tag list's Link header cannot be parsed")]
    LinkUnparsable(#[source] parse_link_header::Error),
    #[error("the tag list's Link header has an invalid next URL")]
    LinkUrl(#[source] url::ParseError),
    #[error("the tag list's Link header points to another host ({0}); it is not followed")]
    LinkOtherHost(String),
}

/// Why an ImagePolicy may not read the ImageRepository it names, in Flux's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessDenial {
    /// `--no-cross-namespace-refs` and the repository is in another namespace.
    #[error(
        "cannot access 'ImageRepository/{namespace}/{name}', cross-namespace references have \
         been blocked"
    )]
    Blocked { namespace: String, name: String },
    /// The repository in another namespace has no `spec.accessFrom`.
    #[error(
        "access denied: '{namespace}/{name}' can't be accessed due to missing ACL labels on \
         'accessFrom'"
    )]
    NoAccessFrom { namespace: String, name: String },
    /// No selector of the repository's `spec.accessFrom` matches the policy's namespace.
    #[error(
        "access denied: '{namespace}/{name}' can't be accessed due to ACL labels mismatch on \
         namespace '{from}'"
    )]
    LabelsMismatch {
        namespace: String,
        name: String,
        from: String,
    },
}
