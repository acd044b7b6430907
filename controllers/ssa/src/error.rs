//! The one error of server-side apply.
//!
//! Messages name each object (`Kind/namespace/name`, with its file when it came from one) and,
//! where the API server refused something, give the server's own words (`status.message`), the
//! part a user can act on; the kube error stays the typed source. Lists of objects (every
//! refusal of a dry run, every failed deletion) are one error each, one object per line.

use std::{fmt, time::Duration};

/// Why applying, pruning or waiting on a set of objects failed.
#[derive(Debug, thiserror::Error)]
pub enum SsaError {
    /// The API server's discovery failed (not a kind it does not serve: that is `None`).
    #[error(transparent)]
    Discovery(kube::Error),
    /// The set does not validate: nothing of it was applied.
    #[error("{0}")]
    Invalid(Refusals),
    /// Objects that needed the set's definitions do not validate once those were applied.
    #[error("{refusals}\n(definitions were applied first: {})", definitions.join(", "))]
    InvalidAfterDefinitions {
        /// The objects refused.
        refusals: Refusals,
        /// The definitions applied before (`Kind/name`).
        definitions: Vec<String>,
    },
    /// Writing (or deleting for recreation) one object failed.
    #[error("{object} ({file})")]
    Write {
        /// `Kind/namespace/name`.
        object: String,
        /// The file it was built from.
        file: String,
        /// The API server's answer.
        #[source]
        source: ServerAnswer,
    },
    /// An object deleted for recreation (`force`) was still there at the timeout.
    #[error("{object}: still being deleted for recreation")]
    RecreateTimeout {
        /// `Kind/namespace/name`.
        object: String,
    },
    /// Watching a CRD of the set, to see it Established, failed.
    #[error("CustomResourceDefinition/{name}")]
    ReadDefinition {
        /// The CRD's name.
        name: String,
        /// Why the watch failed.
        #[source]
        source: kube::runtime::wait::Error,
    },
    /// A CRD of the set was not Established within the timeout.
    #[error("CustomResourceDefinition/{name} not established after {timeout:?}")]
    NotEstablished {
        /// The CRD's name.
        name: String,
        /// How long it was waited for.
        timeout: Duration,
    },
    /// Discovery of the kind of an object to prune failed: nothing more is pruned.
    #[error("{object}: discovery failed")]
    PruneDiscovery {
        /// `Kind/namespace/name`.
        object: String,
        /// The API server's answer.
        #[source]
        source: ServerAnswer,
    },
    /// Objects to prune that could not be read or deleted.
    #[error("{0}")]
    Delete(ObjectErrors),
    /// Pruned objects still there at the timeout (finalizers, the garbage collector).
    #[error("timeout waiting for termination of: {}", objects.join(", "))]
    NotTerminated {
        /// `Kind/namespace/name` of each.
        objects: Vec<String>,
    },
    /// Objects that failed (kstatus Failed) and will not get better by themselves.
    #[error("failed early due to stalled resources: {}", objects.join(", "))]
    Stalled {
        /// `Kind/namespace/name (why)` of each.
        objects: Vec<String>,
    },
    /// Objects still not healthy at the timeout.
    #[error("timeout waiting for: {}", objects.join(", "))]
    NotHealthy {
        /// `Kind/namespace/name (why)` of each.
        objects: Vec<String>,
    },
}

impl SsaError {
    /// Whether the set was refused by validation (a dry run, or a kind or namespace that does
    /// not resolve), as opposed to a write, a prune or a wait that failed.
    #[must_use]
    pub fn is_refusal(&self) -> bool {
        match self {
            Self::Invalid(_) | Self::InvalidAfterDefinitions { .. } => true,
            Self::Discovery(_)
            | Self::Write { .. }
            | Self::RecreateTimeout { .. }
            | Self::ReadDefinition { .. }
            | Self::NotEstablished { .. }
            | Self::PruneDiscovery { .. }
            | Self::Delete(_)
            | Self::NotTerminated { .. }
            | Self::Stalled { .. }
            | Self::NotHealthy { .. } => false,
        }
    }
}

/// Why one object of a set cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The API server refused it (its dry run, or reading the live object).
    #[error("{object} ({file})")]
    Server {
        /// `Kind/namespace/name`.
        object: String,
        /// The file it was built from.
        file: String,
        /// The API server's answer.
        #[source]
        source: ServerAnswer,
    },
    /// Neither the API server nor a CRD of the set defines its kind.
    #[error(
        "{object} ({file}): no matches for kind \"{kind}\" in version \"{api_version}\" (is its CRD installed?)"
    )]
    UnknownKind {
        /// `Kind/name`.
        object: String,
        /// The file it was built from.
        file: String,
        /// Its kind.
        kind: String,
        /// Its `apiVersion`.
        api_version: String,
    },
    /// A namespaced object that names no namespace.
    #[error("{object} ({file}): namespace not specified")]
    NoNamespace {
        /// `Kind/name`.
        object: String,
        /// The file it was built from.
        file: String,
    },
}

/// Every refusal of a set, one a line.
#[derive(Debug, Default)]
pub struct Refusals(pub Vec<Refusal>);

impl fmt::Display for Refusals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        lines(f, &self.0)
    }
}

/// One object the API server would not read or delete.
#[derive(Debug, thiserror::Error)]
#[error("{object}")]
pub struct ObjectError {
    /// `Kind/namespace/name`.
    pub object: String,
    /// The API server's answer.
    #[source]
    pub source: ServerAnswer,
}

/// Every failed object of a prune, one a line.
#[derive(Debug, Default)]
pub struct ObjectErrors(pub Vec<ObjectError>);

impl fmt::Display for ObjectErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        lines(f, &self.0)
    }
}

/// Each item with its causes ([`weir_runtime::chain`]), one a line.
fn lines(f: &mut fmt::Formatter<'_>, items: &[impl std::error::Error]) -> fmt::Result {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str("\n")?;
        }
        f.write_str(&weir_runtime::chain(item))?;
    }
    Ok(())
}

/// The API server's answer to a request, as a cause: it reads as the server's own words
/// ([`server_message`]); the kube error stays in `.0`.
#[derive(Debug)]
pub struct ServerAnswer(pub kube::Error);

impl From<kube::Error> for ServerAnswer {
    fn from(error: kube::Error) -> Self {
        Self(error)
    }
}

impl fmt::Display for ServerAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&server_message(&self.0))
    }
}

impl std::error::Error for ServerAnswer {
    /// None for the server's answer (its message is all of it); kube's causes otherwise.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.0 {
            kube::Error::Api(_) => None,
            other => other.source(),
        }
    }
}

/// What the API server said (`status.message`); kube's own rendering for anything else (a
/// connection that failed, an answer that did not parse).
#[must_use]
pub fn server_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

/// Whether the API server answered with this HTTP status code.
pub(crate) fn is_code(error: &kube::Error, code: u16) -> bool {
    matches!(error, kube::Error::Api(s) if s.code == code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(
            kube::core::Status::failure(message, "Invalid").with_code(code),
        ))
    }

    #[test]
    fn refusals_name_object_and_file_one_a_line_with_the_servers_words() {
        let error = SsaError::InvalidAfterDefinitions {
            refusals: Refusals(vec![
                Refusal::Server {
                    object: "Widget/apps/a".to_owned(),
                    file: "w.yaml".to_owned(),
                    source: refused(422, "spec.size: Invalid value").into(),
                },
                Refusal::NoNamespace {
                    object: "ConfigMap/c".to_owned(),
                    file: "c.yaml".to_owned(),
                },
            ]),
            definitions: vec!["CustomResourceDefinition/widgets.example.com".to_owned()],
        };
        assert_eq!(
            weir_runtime::chain(&error),
            "Widget/apps/a (w.yaml): spec.size: Invalid value\n\
             ConfigMap/c (c.yaml): namespace not specified\n\
             (definitions were applied first: CustomResourceDefinition/widgets.example.com)"
        );
        assert!(error.is_refusal());
        assert!(is_code(&refused(404, "gone"), 404));
    }
}
