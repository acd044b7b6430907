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
    /// Extra ignore rules in `.sourceignore` (gitignore) syntax, on top of the defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore: Option<String>,
    /// Stop reconciling this object.
    #[serde(default)]
    pub suspend: bool,
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
    /// The ignore rules the current artifact was built with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_ignore: Option<String>,
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
