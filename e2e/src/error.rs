use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while preparing a test on the harness.
///
/// Messages name what was being done, so a failing test says which setup step broke.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The harness is not up, or not reachable; the message says how to start it.
    #[error(
        "the e2e harness is not running: {reason}. Start it with `make cluster-up` (or run \
         `make test`, which starts it and stops it afterwards); `make cluster-status` shows \
         what is down"
    )]
    HarnessNotRunning { reason: String },

    /// The harness environment exists but is not what the tests can use.
    #[error("the e2e harness environment from {source_name} is unusable: {reason}")]
    HarnessEnvironment { source_name: String, reason: String },

    #[error("reading the harness kubeconfig {path}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },

    #[error("building a Kubernetes client")]
    KubeClient(#[source] kube::Error),

    #[error("{action}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },

    #[error("{action}")]
    Io {
        action: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{action}")]
    Yaml {
        action: String,
        #[source]
        source: serde_yaml_ng::Error,
    },

    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },

    #[error("{action}")]
    Registry {
        action: String,
        #[source]
        source: oci_client::errors::OciDistributionError,
    },

    #[error("a background thread deleting namespace {namespace} panicked")]
    CleanupThread { namespace: String },

    /// A [`crate::wait_until`] condition did not hold before its deadline.
    #[error("timed out after {}s waiting for {what}; last seen: {last_seen}", .after.as_secs())]
    Timeout {
        what: String,
        after: Duration,
        last_seen: String,
    },
}

impl Error {
    pub(crate) fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let action = action.into();
        move |source| Self::Io { action, source }
    }

    pub(crate) fn kube(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let action = action.into();
        move |source| Self::Kube { action, source }
    }

    pub(crate) fn registry(
        action: impl Into<String>,
    ) -> impl FnOnce(oci_client::errors::OciDistributionError) -> Self {
        let action = action.into();
        move |source| Self::Registry { action, source }
    }
}
