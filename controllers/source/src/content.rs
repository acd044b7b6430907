//! What the artifact holds besides the fetched commit's tree, decided by `spec.sparseCheckout`,
//! `spec.recurseSubmodules` and `spec.include`. Blocking; runs on the fetch's thread.
//!
//! libgit2 has no sparse checkout; Weir never checks out a worktree anyway, it archives the
//! commit's tree, so keeping only the listed directories' files gives the artifact Flux's sparse
//! checkout gives. As in Flux, a listed directory missing from the commit is an error.

use std::io::Write;

use git2::{ObjectType, Oid, Repository};
use weir_api::{Artifact, GitRepositoryInclude, GitRepositorySpec};

use weir_git::Remote;

use crate::{
    archive::{self, ArchiveInput, ArchiveSummary, IncludedFile},
    error::SourceError,
    include,
    storage::Storage,
    submodule,
};

/// The spec's content settings and the included artifacts, moved into the fetch's thread.
#[derive(Debug)]
pub struct ArtifactContent {
    sparse: Vec<String>,
    recurse_submodules: bool,
    includes: Vec<(GitRepositoryInclude, Artifact)>,
    storage: Storage,
}

/// [`ArtifactContent`] made ready for one commit: submodules fetched, includes read.
#[derive(Debug)]
pub struct Prepared {
    sparse: Vec<String>,
    submodules: submodule::Fetched,
    included: Vec<IncludedFile>,
}

/// `spec.sparseCheckout` entries as tree paths: no `./`, no leading or trailing `/`.
#[must_use]
pub fn sparse_dirs(spec: &GitRepositorySpec) -> Vec<String> {
    spec.sparse_checkout
        .iter()
        .map(|d| d.trim_start_matches("./").trim_matches('/').to_owned())
        .collect()
}

impl ArtifactContent {
    /// `included` holds the artifact of each `spec.include`, in order.
    #[must_use]
    pub fn new(spec: &GitRepositorySpec, included: &[Artifact], storage: Storage) -> Self {
        Self {
            sparse: sparse_dirs(spec),
            recurse_submodules: spec.recurse_submodules,
            includes: spec
                .include
                .iter()
                .cloned()
                .zip(included.iter().cloned())
                .collect(),
            storage,
        }
    }

    /// Checks the sparse directories exist in `commit`, fetches its submodules (through
    /// `remote`'s credentials and proxy) and reads the included artifacts' files.
    pub fn prepare(
        self,
        repo: &Repository,
        commit: Oid,
        remote: &Remote<'_>,
    ) -> Result<Prepared, SourceError> {
        check_sparse(repo, commit, &self.sparse)?;
        let submodules = if self.recurse_submodules {
            submodule::fetch_all(
                repo,
                commit,
                remote.url,
                remote.credentials,
                remote.deadline,
            )?
        } else {
            submodule::Fetched::default()
        };
        let mut included = vec![];
        for (index, (spec, artifact)) in self.includes.iter().enumerate() {
            included.extend(include::included_files(
                &self.storage,
                spec,
                index,
                artifact,
            )?);
        }
        Ok(Prepared {
            sparse: self.sparse,
            submodules,
            included,
        })
    }
}

impl Prepared {
    /// Writes the artifact of `commit` to `out`.
    pub fn write(
        self,
        repo: &Repository,
        commit: Oid,
        ignore: Option<&str>,
        out: impl Write,
    ) -> Result<ArchiveSummary, SourceError> {
        let input = ArchiveInput {
            extra_ignore: ignore,
            sparse: &self.sparse,
            submodules: self.submodules.submodules,
            included: self.included,
        };
        archive::write_artifact(repo, commit, &input, out).map_err(SourceError::Archive)
    }
}

/// Every sparse directory must be a directory of the commit's tree (Flux: "does not exist in
/// repository").
fn check_sparse(repo: &Repository, commit: Oid, dirs: &[String]) -> Result<(), SourceError> {
    if dirs.is_empty() {
        return Ok(());
    }
    let tree = repo
        .find_commit(commit)
        .and_then(|c| c.tree())
        .map_err(|e| SourceError::Git(weir_git::GitError::from(&e)))?;
    for dir in dirs {
        let is_dir = !dir.is_empty()
            && tree
                .get_path(std::path::Path::new(dir))
                .is_ok_and(|e| e.kind() == Some(ObjectType::Tree));
        if !is_dir {
            return Err(SourceError::SparseCheckoutMissing(dir.clone()));
        }
    }
    Ok(())
}
