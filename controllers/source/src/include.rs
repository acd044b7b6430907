//! `spec.include`: other GitRepositories' artifacts copied into this one's, as Flux does. Each
//! include's artifact (from storage, not downloaded: the included repository is reconciled by
//! this controller) contributes its files under `fromPath` (its root by default), placed under
//! `toPath` (the included repository's name by default). The included artifacts are recorded in
//! `status.includedArtifacts`; a change of one, or of `include`, `sparseCheckout` or
//! `recurseSubmodules`, builds a new artifact even when the commit did not move.
//!
//! An artifact built with other included artifacts than those there are now is outdated, as
//! Flux says it: `ArtifactOutdated=True` with reason `IncludeChange` and the message
//! [`INCLUDE_CHANGE`], set once the includes are fetched and found to differ from
//! `status.includedArtifacts` (unless none were recorded: a first include is no change of one)
//! and written with the progressing mark (`building artifact: ` and the message) before the
//! build. It is removed when an artifact is stored, or when a reconcile finds the includes back
//! at what the artifact was built with; a reconcile that fails before it has the includes to
//! compare keeps it as it was.
//!
//! Where Weir deviates: Flux drops `ArtifactOutdated` from the object in memory right after its
//! progressing write, so a build that then fails ends without it (unlike its `NewRevision`
//! reason, which stays); Weir keeps it until the new artifact is stored, since the artifact in
//! status is still the outdated one. Flux also sets `ArtifactOutdated` with `NewRevision` for a
//! new commit; Weir does not (its progressing mark names the new revision). Flux clamps a
//! `toPath` or `fromPath` that climbs out of the root (`../x` becomes `x`); Weir refuses it,
//! naming the field, since such a path is a mistake.

use std::io::Read;

use kube::{Api, ResourceExt};
use weir_api::{
    Artifact, Condition, ConditionStatus, GitRepository, GitRepositoryInclude, GitRepositorySpec,
    GitRepositoryStatus, condition, types,
};

use crate::{archive::IncludedFile, error::SourceError, storage::Storage};

/// A path of the spec made relative to the artifact's root: no empty, `.` or leading `/`
/// components. `None` when it climbs out with `..`.
#[must_use]
pub fn normalize(path: &str) -> Option<String> {
    let mut parts = vec![];
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

/// The `fromPath` and `toPath` of include `index`, normalized; a path that leaves the root is
/// an error naming the field.
pub fn include_paths(
    include: &GitRepositoryInclude,
    index: usize,
) -> Result<(String, String), SourceError> {
    let check = |field: &str, value: &str| {
        normalize(value).ok_or_else(|| SourceError::IllegalIncludePath {
            field: format!("spec.include[{index}].{field}"),
            path: value.to_owned(),
        })
    };
    Ok((
        check("fromPath", include.from_path())?,
        check("toPath", include.to_path())?,
    ))
}

/// Step: the artifact of every included GitRepository, in `spec.include`'s order. A missing
/// repository or one without an artifact yet is [`SourceError::IncludeNotFound`] or
/// [`SourceError::IncludeNoArtifact`] (`IncludeUnavailable`, Flux's reasons).
pub async fn fetch_includes(
    client: &kube::Client,
    repo: &GitRepository,
) -> Result<Vec<Artifact>, SourceError> {
    let namespace = repo.namespace().unwrap_or_default();
    let api: Api<GitRepository> = Api::namespaced(client.clone(), &namespace);
    let mut artifacts = Vec::with_capacity(repo.spec.include.len());
    for (index, include) in repo.spec.include.iter().enumerate() {
        include_paths(include, index)?;
        let name = &include.repository.name;
        let included = api
            .get_opt(name)
            .await
            .map_err(|source| SourceError::IncludeUnreadable {
                name: name.clone(),
                source,
            })?
            .ok_or_else(|| SourceError::IncludeNotFound {
                namespace: namespace.clone(),
                name: name.clone(),
            })?;
        let artifact = included
            .status
            .and_then(|s| s.artifact)
            .ok_or_else(|| SourceError::IncludeNoArtifact(name.clone()))?;
        artifacts.push(artifact);
    }
    Ok(artifacts)
}

/// `ArtifactOutdated`'s reason for an include change (Flux's; it is not in Flux's API constants,
/// so not in `weir_api::reasons` either).
pub const INCLUDE_CHANGE_REASON: &str = "IncludeChange";
/// `ArtifactOutdated`'s message for an include change, as Flux words it.
pub const INCLUDE_CHANGE: &str = "included artifacts differ from last observed includes";

/// Whether `included` differs from the included artifacts the artifact in status was built with
/// (by revision and digest, in order).
#[must_use]
pub fn included_changed(status: Option<&GitRepositoryStatus>, included: &[Artifact]) -> bool {
    let recorded = status.map_or(&[][..], |s| &s.included_artifacts);
    included.len() != recorded.len()
        || included
            .iter()
            .zip(recorded)
            .any(|(now, then)| now.revision != then.revision || now.digest != then.digest)
}

/// Step: compares `included` with what the artifact in `repo`'s status was built with. On a
/// change, `ArtifactOutdated=True` (`IncludeChange`) goes into `status` and, with the
/// progressing mark, onto the object at once; without one, `ArtifactOutdated` is removed.
pub async fn observe(
    repo: &GitRepository,
    status: &mut GitRepositoryStatus,
    included: &[Artifact],
    progress: &mut crate::Progress<'_>,
) {
    let previous = repo.status.as_ref();
    if !included_changed(previous, included) {
        condition::remove_condition(&mut status.conditions, types::ARTIFACT_OUTDATED);
        return;
    }
    let outdated = previous
        .is_some_and(|s| !s.included_artifacts.is_empty())
        .then(|| {
            Condition::new(
                types::ARTIFACT_OUTDATED,
                ConditionStatus::True,
                INCLUDE_CHANGE_REASON,
                INCLUDE_CHANGE,
            )
            .for_generation(repo.metadata.generation)
        });
    if let Some(outdated) = &outdated {
        condition::set_condition(&mut status.conditions, outdated.clone());
    }
    progress
        .mark_with(
            &format!("building artifact: {INCLUDE_CHANGE}"),
            outdated.as_slice(),
        )
        .await;
}

/// Whether the artifact in status was built with other includes, sparse directories or
/// submodule setting than the spec asks for now, or with other included artifacts than
/// `included` (compared by revision and digest, as Flux does).
#[must_use]
pub fn content_config_changed(
    spec: &GitRepositorySpec,
    status: Option<&GitRepositoryStatus>,
    included: &[Artifact],
) -> bool {
    let default = GitRepositoryStatus::default();
    let status = status.unwrap_or(&default);
    spec.recurse_submodules != status.observed_recurse_submodules
        || spec.sparse_checkout != status.observed_sparse_checkout
        || spec.include != status.observed_include
        || included_changed(Some(status), included)
}

/// Whether `repo` includes `other` (same namespace, named in `spec.include`).
#[must_use]
pub fn includes(repo: &GitRepository, other: &GitRepository) -> bool {
    repo.namespace() == other.namespace()
        && repo
            .spec
            .include
            .iter()
            .any(|i| i.repository.name == other.name_any())
}

/// What of a GitRepository starts the GitRepositories including it: its artifact's revision
/// and digest. The same trigger as the kustomize controller's for its sources.
#[allow(clippy::unnecessary_wraps)] // The signature `predicate_filter` asks for.
#[must_use]
pub fn artifact_trigger(repo: &GitRepository) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let artifact = repo.status.as_ref().and_then(|s| s.artifact.as_ref());
    artifact.map(|a| &a.revision).hash(&mut hasher);
    artifact.map(|a| &a.digest).hash(&mut hasher);
    Some(hasher.finish())
}

/// Records what a successful artifact was built with: the included artifacts and the spec's
/// include, sparse and submodule settings (Flux's observed fields).
pub fn record(status: &mut GitRepositoryStatus, spec: &GitRepositorySpec, included: Vec<Artifact>) {
    status.included_artifacts = included;
    status.observed_include.clone_from(&spec.include);
    status.observed_recurse_submodules = spec.recurse_submodules;
    status
        .observed_sparse_checkout
        .clone_from(&spec.sparse_checkout);
}

/// Why the files of an include could not be read from its artifact.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("reading artifact '{path}'")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Reading the archive's entries.
    #[error(transparent)]
    Read(std::io::Error),
    #[error("the artifact holds a path with '..'")]
    ClimbingPath,
    #[error("fromPath '{0}' is not in the artifact")]
    NoFromPath(String),
}

/// Reads the files of include `index` from its artifact in storage: those under `fromPath`,
/// placed under `toPath`.
pub fn included_files(
    storage: &Storage,
    include: &GitRepositoryInclude,
    index: usize,
    artifact: &Artifact,
) -> Result<Vec<IncludedFile>, SourceError> {
    let (from, to) = include_paths(include, index)?;
    let name = &include.repository.name;
    let copy_failed = |source| SourceError::IncludeCopyFailed {
        name: name.clone(),
        from: include.from_path().to_owned(),
        to: include.to_path().to_owned(),
        source,
    };
    let read_failed = |e| copy_failed(CopyError::Read(e));
    let file = std::fs::File::open(storage.path(&artifact.path)).map_err(|source| {
        copy_failed(CopyError::Open {
            path: artifact.path.clone(),
            source,
        })
    })?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut files = vec![];
    let mut from_exists = from.is_empty();
    let entries = archive.entries().map_err(read_failed)?;
    for entry in entries {
        let mut entry = entry.map_err(read_failed)?;
        let path = entry.path().map_err(read_failed)?;
        let Some(path) = normalize(&path.to_string_lossy()) else {
            return Err(copy_failed(CopyError::ClimbingPath));
        };
        let relative = if from.is_empty() {
            Some(path.as_str())
        } else {
            path.strip_prefix(from.as_str())
                .and_then(|r| r.strip_prefix('/'))
        };
        let Some(relative) = relative else { continue };
        from_exists = true;
        if !entry.header().entry_type().is_file() || relative.is_empty() {
            continue;
        }
        let target = [to.as_str(), relative]
            .iter()
            .filter(|p| !p.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join("/");
        let executable = entry.header().mode().is_ok_and(|m| m & 0o111 != 0);
        let mut content = vec![];
        entry.read_to_end(&mut content).map_err(read_failed)?;
        files.push(IncludedFile {
            path: target,
            content,
            executable,
        });
    }
    if !from_exists {
        return Err(copy_failed(CopyError::NoFromPath(
            include.from_path().to_owned(),
        )));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_api::LocalObjectReference;

    fn include(name: &str, from: Option<&str>, to: Option<&str>) -> GitRepositoryInclude {
        GitRepositoryInclude {
            repository: LocalObjectReference { name: name.into() },
            from_path: from.map(Into::into),
            to_path: to.map(Into::into),
        }
    }

    #[test]
    fn paths_default_and_never_leave_the_root() {
        assert_eq!(
            include_paths(&include("shared", None, None), 0).unwrap(),
            (String::new(), "shared".into())
        );
        assert_eq!(
            include_paths(&include("shared", Some("./deploy/"), Some("/vendor//x")), 0).unwrap(),
            ("deploy".into(), "vendor/x".into())
        );
        assert_eq!(
            include_paths(&include("shared", None, Some(".")), 0).unwrap(),
            (String::new(), String::new())
        );
        let e = include_paths(&include("shared", None, Some("a/../../etc")), 2).unwrap_err();
        assert!(e.to_string().contains("spec.include[2].toPath"), "{e}");
        let e = include_paths(&include("shared", Some(".."), None), 0).unwrap_err();
        assert!(e.to_string().contains("spec.include[0].fromPath"), "{e}");
    }

    fn artifact(revision: &str, digest: &str) -> Artifact {
        serde_json::from_value(serde_json::json!({
            "path": "p", "url": "u", "revision": revision, "digest": digest,
            "lastUpdateTime": "2024-01-01T00:00:00Z",
        }))
        .unwrap()
    }

    #[test]
    fn included_artifacts_change_by_count_revision_or_digest() {
        let recorded = GitRepositoryStatus {
            included_artifacts: vec![artifact("main@sha1:1", "sha256:1")],
            ..GitRepositoryStatus::default()
        };
        assert!(!included_changed(None, &[]));
        assert!(included_changed(
            None,
            &[artifact("main@sha1:1", "sha256:1")]
        ));
        assert!(included_changed(Some(&recorded), &[]));
        for (now, changed) in [
            (artifact("main@sha1:1", "sha256:1"), false),
            (artifact("main@sha1:2", "sha256:1"), true),
            (artifact("main@sha1:1", "sha256:2"), true),
        ] {
            assert_eq!(
                included_changed(Some(&recorded), std::slice::from_ref(&now)),
                changed,
                "{now:?}"
            );
        }
    }

    #[test]
    fn content_config_changes_are_seen() {
        let mut spec: GitRepositorySpec =
            serde_json::from_value(serde_json::json!({ "url": "https://h/r", "interval": "1m" }))
                .unwrap();
        let mut status = GitRepositoryStatus::default();
        assert!(!content_config_changed(&spec, Some(&status), &[]));
        assert!(!content_config_changed(&spec, None, &[]));

        spec.sparse_checkout = vec!["deploy".into()];
        assert!(content_config_changed(&spec, Some(&status), &[]));
        status.observed_sparse_checkout = vec!["deploy".into()];
        assert!(!content_config_changed(&spec, Some(&status), &[]));

        spec.recurse_submodules = true;
        assert!(content_config_changed(&spec, Some(&status), &[]));
        status.observed_recurse_submodules = true;

        spec.include = vec![include("shared", None, None)];
        let a = artifact("main@sha1:1", "sha256:1");
        assert!(content_config_changed(
            &spec,
            Some(&status),
            std::slice::from_ref(&a)
        ));
        status.observed_include.clone_from(&spec.include);
        status.included_artifacts = vec![a.clone()];
        assert!(!content_config_changed(&spec, Some(&status), &[a]));
        assert!(content_config_changed(
            &spec,
            Some(&status),
            &[artifact("main@sha1:1", "sha256:2")]
        ));
        assert!(content_config_changed(
            &spec,
            Some(&status),
            &[artifact("main@sha1:2", "sha256:1")]
        ));
    }
}
