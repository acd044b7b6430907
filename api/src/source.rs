//! `GitRepository` (source.toolkit.fluxcd.io/v1): a git repository and ref, turned into an
//! artifact that other controllers download.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Artifact, Condition, GoDuration, LocalObjectReference};

/// The API group of the source kinds.
pub const SOURCE_GROUP: &str = "source.toolkit.fluxcd.io";

/// The desired state of a `GitRepository`.
#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[kube(
    group = "source.toolkit.fluxcd.io",
    version = "v1",
    kind = "GitRepository",
    plural = "gitrepositories",
    namespaced,
    status = "GitRepositoryStatus",
    shortname = "gitrepo",
    category = "all",
    category = "fluxcd",
    category = "fluxcd-sources",
    doc = "GitRepository is the Schema for the gitrepositories API.",
    printcolumn(name = "URL", type_ = "string", json_path = ".spec.url"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].message"#
    ),
    printcolumn(
        name = "Revision",
        type_ = "string",
        json_path = ".status.artifact.revision",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
pub struct GitRepositorySpec {
    /// The repository URL: `http://`, `https://` or `ssh://`.
    #[schemars(regex(pattern = r"^(http|https|ssh)://.*$"))]
    pub url: String,
    /// A Secret in the same namespace with credentials: `username`/`password` or `bearerToken`
    /// for HTTP(S), `identity` and `known_hosts` for SSH, and optionally `ca.crt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,
    /// How often to check the repository for new commits.
    pub interval: GoDuration,
    /// Timeout of git operations.
    #[serde(default = "default_timeout")]
    pub timeout: GoDuration,
    /// The git reference to check out; the remote's default branch when omitted.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<GitRepositoryRef>,
    /// Verify the signature of the commit and/or tag checked out, against the public keys in a
    /// Secret; no artifact is produced from a source that fails.
    #[serde(default, rename = "verify", skip_serializing_if = "Option::is_none")]
    pub verification: Option<GitRepositoryVerification>,
    /// Extra ignore rules in `.sourceignore` (gitignore) syntax, on top of the defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore: Option<String>,
    /// Stop reconciling this object.
    #[serde(default)]
    pub suspend: bool,
    /// Where HTTP(S) credentials come from: `generic` (the `secretRef`), or a provider's
    /// identity (`azure` workload identity, a `github` App), which Weir does not implement.
    #[serde(default)]
    pub provider: GitProvider,
    /// The ServiceAccount whose workload identity authenticates with provider `azure`. Flux uses
    /// it for nothing else; Weir accepts it and, like provider `azure`, does not implement it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// A Secret in the same namespace with the HTTP(S) proxy git goes through: `address`
    /// (required) and optionally `username` and `password`. Weir proxies `https://` URLs
    /// (CONNECT) and refuses a plain `http://` URL with a proxy, which libgit2 would send
    /// around it; SSH never uses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_secret_ref: Option<LocalObjectReference>,
    /// Clone the submodules (with the same credentials) and include them in the artifact.
    #[serde(default)]
    pub recurse_submodules: bool,
    /// Other GitRepositories whose artifacts are copied into this one's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<GitRepositoryInclude>,
    /// Directories to check out; the whole tree when empty. Each must exist in the commit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sparse_checkout: Vec<String>,
}

/// Where a GitRepository's HTTP(S) credentials come from.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum GitProvider {
    /// `secretRef`.
    #[default]
    Generic,
    /// Azure DevOps, through Azure workload identity.
    Azure,
    /// GitHub, through a GitHub App installation token.
    Github,
}

impl GitProvider {
    /// The name as written in `spec.provider`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Generic => "generic",
            Self::Azure => "azure",
            Self::Github => "github",
        }
    }
}

/// Another GitRepository's artifact, copied into this one's.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GitRepositoryInclude {
    /// The GitRepository, in the same namespace.
    pub repository: LocalObjectReference,
    /// The directory of the included artifact to copy; its root when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_path: Option<String>,
    /// Where the copy goes in this artifact; the included repository's name when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_path: Option<String>,
}

impl GitRepositoryInclude {
    /// `fromPath`, or the root (empty).
    #[must_use]
    pub fn from_path(&self) -> &str {
        self.from_path.as_deref().unwrap_or_default()
    }

    /// `toPath`, or the included repository's name.
    #[must_use]
    pub fn to_path(&self) -> &str {
        self.to_path
            .as_deref()
            .filter(|p| !p.is_empty())
            .unwrap_or(&self.repository.name)
    }
}

fn default_timeout() -> GoDuration {
    GoDuration::from_secs(60)
}

/// The git reference to check out. When several are set, the most specific wins:
/// `commit`, then `name`, then `semver`, then `tag`, then `branch` (Flux's precedence).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GitRepositoryRef {
    /// Branch to check out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// Tag to check out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// A semver range; the highest matching tag is checked out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semver: Option<String>,
    /// A full reference name such as `refs/heads/main` or `refs/pull/1/head`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A commit SHA; with `branch`, the commit must be on that branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

/// Which git objects `spec.verify` checks, and against which keys.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GitRepositoryVerification {
    /// Which git objects to verify: `HEAD` (the commit checked out; `head` means the same),
    /// `Tag` (the annotated tag checked out) or `TagAndHEAD` (both).
    #[serde(default)]
    pub mode: GitVerificationMode,
    /// A Secret in the same namespace with the trusted public keys: OpenPGP keys (armored key
    /// rings) under keys ending in `.asc`, SSH keys (`authorized_keys` lines) under keys ending
    /// in `.sshpub`. Any other key is read as an OpenPGP key ring, as Flux reads it.
    pub secret_ref: LocalObjectReference,
}

/// The git objects whose signatures `spec.verify` checks.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GitVerificationMode {
    /// `head`: the same as `HEAD`, kept by Flux for backwards compatibility.
    #[serde(rename = "head")]
    LegacyHead,
    /// The commit checked out.
    #[default]
    #[serde(rename = "HEAD")]
    Head,
    /// The annotated tag checked out (a `tag` or `semver` ref, or a `name` under `refs/tags/`).
    Tag,
    /// The tag and the commit it points at.
    #[serde(rename = "TagAndHEAD")]
    TagAndHead,
}

impl GitVerificationMode {
    /// The mode as Flux records it in `status.sourceVerificationMode` (`head` becomes `HEAD`).
    #[must_use]
    pub fn effective(self) -> Self {
        match self {
            Self::LegacyHead => Self::Head,
            other => other,
        }
    }

    /// Whether the commit's signature is checked.
    #[must_use]
    pub fn verifies_head(self) -> bool {
        matches!(self.effective(), Self::Head | Self::TagAndHead)
    }

    /// Whether the tag's signature is checked.
    #[must_use]
    pub fn verifies_tag(self) -> bool {
        matches!(self, Self::Tag | Self::TagAndHead)
    }
}

/// The branch a GitRepository without a ref follows, as Flux documents (not the remote's
/// `HEAD`: a repository whose default branch is `main` needs `ref.branch: main`).
pub const DEFAULT_BRANCH: &str = "master";

/// What a `GitRepositoryRef` resolves to, after precedence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResolvedRef<'a> {
    Branch(&'a str),
    Tag(&'a str),
    Semver(&'a str),
    Name(&'a str),
    /// A commit, optionally on a branch.
    Commit {
        sha: &'a str,
        branch: Option<&'a str>,
    },
}

fn nonempty(s: Option<&String>) -> Option<&str> {
    s.map(String::as_str).filter(|v| !v.is_empty())
}

impl GitRepositoryRef {
    /// Applies Flux's precedence: commit > name > semver > tag > branch.
    #[must_use]
    pub fn resolve(&self) -> ResolvedRef<'_> {
        if let Some(sha) = nonempty(self.commit.as_ref()) {
            ResolvedRef::Commit {
                sha,
                branch: nonempty(self.branch.as_ref()),
            }
        } else if let Some(name) = nonempty(self.name.as_ref()) {
            ResolvedRef::Name(name)
        } else if let Some(range) = nonempty(self.semver.as_ref()) {
            ResolvedRef::Semver(range)
        } else if let Some(tag) = nonempty(self.tag.as_ref()) {
            ResolvedRef::Tag(tag)
        } else if let Some(branch) = nonempty(self.branch.as_ref()) {
            ResolvedRef::Branch(branch)
        } else {
            ResolvedRef::Branch(DEFAULT_BRANCH)
        }
    }
}

impl GitRepositorySpec {
    /// The reference to check out, after precedence and defaults.
    #[must_use]
    pub fn resolved_ref(&self) -> ResolvedRef<'_> {
        self.reference.as_ref().map_or(
            ResolvedRef::Branch(DEFAULT_BRANCH),
            GitRepositoryRef::resolve,
        )
    }
}

/// The observed state of a `GitRepository`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GitRepositoryStatus {
    /// The last generation reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions of the object.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The last successfully produced artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<Artifact>,
    /// The `spec.verify` mode the current artifact's source was verified with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_verification_mode: Option<GitVerificationMode>,
    /// The ignore rules the current artifact was built with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_ignore: Option<String>,
    /// The artifacts of `spec.include` the current artifact was built with, in the same order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub included_artifacts: Vec<Artifact>,
    /// The `spec.include` the current artifact was built with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub observed_include: Vec<GitRepositoryInclude>,
    /// The `spec.recurseSubmodules` the current artifact was built with.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub observed_recurse_submodules: bool,
    /// The `spec.sparseCheckout` the current artifact was built with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub observed_sparse_checkout: Vec<String>,
    /// The last `reconcile.fluxcd.io/requestedAt` value handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_precedence_is_fluxs() {
        let all = GitRepositoryRef {
            branch: Some("main".into()),
            tag: Some("v1".into()),
            semver: Some(">=1.0.0".into()),
            name: Some("refs/heads/x".into()),
            commit: Some("abc".into()),
        };
        assert_eq!(
            all.resolve(),
            ResolvedRef::Commit {
                sha: "abc",
                branch: Some("main")
            }
        );
        let no_commit = GitRepositoryRef {
            commit: None,
            ..all.clone()
        };
        assert_eq!(no_commit.resolve(), ResolvedRef::Name("refs/heads/x"));
        let no_name = GitRepositoryRef {
            name: None,
            ..no_commit
        };
        assert_eq!(no_name.resolve(), ResolvedRef::Semver(">=1.0.0"));
        let no_semver = GitRepositoryRef {
            semver: None,
            ..no_name
        };
        assert_eq!(no_semver.resolve(), ResolvedRef::Tag("v1"));
        let no_tag = GitRepositoryRef {
            tag: None,
            ..no_semver
        };
        assert_eq!(no_tag.resolve(), ResolvedRef::Branch("main"));
        assert_eq!(
            GitRepositoryRef::default().resolve(),
            ResolvedRef::Branch("master")
        );
    }
}
