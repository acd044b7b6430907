//! The GitRepository reconcile: `credentials → resolve → fetch → archive → store`, stopping at
//! the first failure; status is summarised and written once by the caller.

use std::{sync::atomic::Ordering, time::Instant};

use git2::Oid;
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::ResourceExt;
use weir_api::{Artifact, GitRepository, source::ResolvedRef};
use weir_git::{self as git, Credentials, Remote, RemoteRefs, bounded::BoundedError};
use weir_runtime::{Redactor, semver_range};

use crate::{
    Context,
    error::SourceError,
    storage::Storage,
    verify::{self, Verified, Verifier},
};

/// What a successful reconcile produced.
#[derive(Debug)]
pub enum SourceOutcome {
    /// The remote still points at the stored artifact's revision: nothing was fetched.
    Unchanged(Artifact),
    /// A new artifact was stored.
    NewArtifact {
        artifact: Artifact,
        commit_summary: String,
    },
}

/// Credentials from the secret and the URL, plus a redactor that knows every secret value.
pub async fn load_credentials(
    repo: &GitRepository,
    ctx: &Context,
) -> Result<(String, Credentials, Redactor), SourceError> {
    let access = weir_git::credentials::for_repository(&ctx.base.client, repo).await?;
    Ok((access.url, access.credentials, access.redactor))
}

/// The ref to fetch and the revision string it will be recorded as.
struct Target {
    refspecs: Vec<String>,
    /// The ref whose head is the commit (for branch/tag/name), or `None` for a commit lookup.
    local_ref: Option<String>,
    /// The commit the remote advertises, when known before fetching.
    commit: Option<Oid>,
    /// `<branch>@sha1:` style prefix; the commit's hex is appended.
    revision_prefix: String,
    depth: i32,
    /// For `commit` refs: the commit asked for, and the branch it must be on.
    wanted_commit: Option<(String, Option<String>)>,
}

impl Target {
    fn revision(&self, commit: Oid) -> String {
        format!("{}sha1:{commit}", self.revision_prefix)
    }
}

fn branch_target(branch: &str, refs: &RemoteRefs) -> Result<Target, SourceError> {
    let name = format!("refs/heads/{branch}");
    let commit = refs
        .get(&name)
        .ok_or_else(|| SourceError::BranchNotFound(branch.to_owned()))?;
    let local = format!("refs/remotes/origin/{branch}");
    Ok(Target {
        refspecs: vec![format!("+{name}:{local}")],
        local_ref: Some(local),
        commit: Some(commit),
        revision_prefix: format!("{branch}@"),
        depth: 1,
        wanted_commit: None,
    })
}

fn tag_target(tag: &str, refs: &RemoteRefs) -> Result<Target, SourceError> {
    let name = format!("refs/tags/{tag}");
    let commit = refs
        .get(&name)
        .ok_or_else(|| SourceError::TagNotFound(tag.to_owned()))?;
    Ok(Target {
        refspecs: vec![format!("+{name}:{name}")],
        local_ref: Some(name),
        commit: Some(commit),
        revision_prefix: format!("{tag}@"),
        depth: 1,
        wanted_commit: None,
    })
}

/// Resolves the spec's ref against the remote's advertised refs.
fn resolve(reference: &ResolvedRef<'_>, refs: Option<&RemoteRefs>) -> Result<Target, SourceError> {
    let refs_or_empty = RemoteRefs::default();
    let refs = refs.unwrap_or(&refs_or_empty);
    match reference {
        ResolvedRef::Branch(b) => branch_target(b, refs),
        ResolvedRef::Tag(t) => tag_target(t, refs),
        ResolvedRef::Semver(range) => {
            let parsed = semver_range::Range::parse(range).map_err(SourceError::InvalidSemver)?;
            let best = refs
                .tags()
                .filter_map(|t| semver_range::parse_version(t).map(|v| (v, t)))
                .filter(|(v, _)| parsed.matches(v))
                .max()
                .ok_or_else(|| SourceError::NoMatchingTag((*range).to_owned()))?;
            tag_target(best.1, refs)
        }
        ResolvedRef::Name(name) => {
            let commit = refs
                .get(name)
                .ok_or_else(|| SourceError::RefNotFound((*name).to_owned()))?;
            Ok(Target {
                refspecs: vec![format!("+{name}:{name}")],
                local_ref: Some((*name).to_owned()),
                commit: Some(commit),
                revision_prefix: format!("{name}@"),
                depth: 1,
                wanted_commit: None,
            })
        }
        ResolvedRef::Commit { sha, branch } => {
            let (refspecs, prefix) = match branch {
                Some(b) => (
                    vec![format!("+refs/heads/{b}:refs/remotes/origin/{b}")],
                    format!("{b}@"),
                ),
                None => (
                    vec!["+refs/heads/*:refs/remotes/origin/*".to_owned()],
                    String::new(),
                ),
            };
            Ok(Target {
                refspecs,
                local_ref: None,
                commit: Oid::from_str(sha).ok().filter(|_| sha.len() == 40),
                revision_prefix: prefix,
                depth: 0,
                wanted_commit: Some(((*sha).to_owned(), branch.map(str::to_owned))),
            })
        }
    }
}

/// Runs `f` on a blocking thread within the spec's timeout, at most one per object and URL at a
/// time (see [`weir_git::bounded`]).
async fn blocking<T: Send + 'static>(
    ctx: &Context,
    key: &str,
    timeout: std::time::Duration,
    label: String,
    f: impl FnOnce() -> Result<T, SourceError> + Send + 'static,
) -> Result<T, SourceError> {
    ctx.in_flight
        .run(key, timeout, f)
        .await
        .map_err(|e| match e {
            BoundedError::StillRunning(_) => SourceError::StillRunning(label),
            BoundedError::Timeout(_) => SourceError::Timeout(label),
            BoundedError::Task(join) => SourceError::Task(join),
            BoundedError::Operation(e) => e,
        })
}

/// Step: list the remote's refs (`ls-remote`), counted in `remote_checks`.
async fn list_remote(
    ctx: &Context,
    key: &str,
    spec: &weir_api::GitRepositorySpec,
    url: String,
    credentials: Credentials,
) -> Result<RemoteRefs, SourceError> {
    ctx.metrics.remote_checks.fetch_add(1, Ordering::Relaxed);
    let timeout = spec.timeout.as_std();
    let deadline = Instant::now() + timeout;
    blocking(ctx, key, timeout, spec.timeout.to_string(), move || {
        let scratch = tempfile::tempdir().map_err(SourceError::Storage)?;
        let remote = Remote {
            url: &url,
            credentials: &credentials,
            deadline,
        };
        git::ls_remote(&remote, scratch.path()).map_err(map_git_error(&spec_timeout_text(timeout)))
    })
    .await
}

/// What [`fetch_and_store`] produced besides the artifact's path and commit.
struct Stored {
    archive: crate::archive::ArchiveSummary,
    commit_summary: String,
    /// What `spec.verify` verified before the archive was written.
    verified: Option<Verified>,
}

/// Step: fetch the target, archive its tree into storage and collect old artifacts; counted in
/// `fetches` and `artifacts_written`.
// One input each, moved into the blocking task; a struct of them would only rename them.
#[allow(clippy::too_many_arguments)]
async fn fetch_and_store(
    ctx: &Context,
    key: &str,
    spec: &weir_api::GitRepositorySpec,
    target: Target,
    url: String,
    credentials: Credentials,
    object_dir: String,
    verify_with: Option<Verifier>,
    content: crate::content::ArtifactContent,
) -> Result<(String, Stored, Oid), SourceError> {
    ctx.metrics.fetches.fetch_add(1, Ordering::Relaxed);
    let storage = ctx.storage.clone();
    let ignore = spec.ignore.clone();
    let timeout = spec.timeout.as_std();
    let deadline = Instant::now() + timeout;
    let stored = blocking(ctx, key, timeout, spec.timeout.to_string(), move || {
        let scratch = tempfile::tempdir().map_err(SourceError::Storage)?;
        let remote = Remote {
            url: &url,
            credentials: &credentials,
            deadline,
        };
        let repo = git::fetch(&remote, scratch.path(), &target.refspecs, target.depth)
            .map_err(map_git_error(&spec_timeout_text(timeout)))?;
        let commit = find_commit(&repo, &target)?;
        // Before anything is archived: a source that fails verification is never an artifact.
        let verified = verify_with
            .map(|v| v.verify(&repo, commit, target.local_ref.as_deref()))
            .transpose()?;
        let commit_summary = repo
            .find_commit(commit)
            .ok()
            .and_then(|c| c.summary().ok().flatten().map(str::to_owned))
            .unwrap_or_default();
        let path = format!("{object_dir}/{commit}.tar.gz");
        let content = content.prepare(&repo, commit, &remote)?;
        let archive = storage.write_atomic(&path, |file| {
            content.write(&repo, commit, ignore.as_deref(), file)
        })?;
        if let Err(error) = storage.collect_garbage(&object_dir, &path) {
            tracing::warn!(error = %weir_runtime::chain(&error), object_dir, "artifact garbage collection failed");
        }
        Ok((
            path,
            Stored {
                archive,
                commit_summary,
                verified,
            },
            commit,
        ))
    })
    .await?;
    ctx.metrics
        .artifacts_written
        .fetch_add(1, Ordering::Relaxed);
    Ok(stored)
}

/// The main steps: list the remote, resolve the ref, stop if the stored artifact is current,
/// otherwise fetch, archive and store. `current` is the artifact in status, if any.
pub async fn reconcile_source(
    repo: &GitRepository,
    ctx: &Context,
    url: String,
    credentials: Credentials,
    included: &[Artifact],
    progress: &mut crate::Progress<'_>,
) -> Result<(SourceOutcome, Option<Verified>), SourceError> {
    let spec = &repo.spec;
    if spec.provider != weir_api::GitProvider::Generic {
        return Err(SourceError::ProviderUnsupported(spec.provider));
    }
    let current = repo.status.as_ref().and_then(|s| s.artifact.clone());
    let observed_ignore = repo.status.as_ref().and_then(|s| s.observed_ignore.clone());
    let reference = spec.resolved_ref();
    let needs_remote_list = !matches!(reference, ResolvedRef::Commit { .. });
    // By URL too: an operation stuck on a silent server does not hold back the fixed URL.
    let in_flight_key = format!(
        "{}/{} {url}",
        repo.namespace().unwrap_or_default(),
        repo.name_any()
    );

    // Ask the remote for its refs first: no clone when nothing moved.
    let refs = if needs_remote_list {
        Some(list_remote(ctx, &in_flight_key, spec, url.clone(), credentials.clone()).await?)
    } else {
        None
    };
    let target = resolve(&reference, refs.as_ref())?;

    let namespace = repo.namespace().unwrap_or_default();
    let object_dir = Storage::object_dir("GitRepository", &namespace, &repo.name_any())
        .map_err(SourceError::Storage)?;
    if let (Some(artifact), Some(commit)) = (&current, target.commit)
        && artifact.revision == target.revision(commit)
        && ctx.storage.exists(&artifact.path)
        && observed_ignore == spec.ignore
        && !crate::include::content_config_changed(spec, repo.status.as_ref(), included)
        && !verify::required(repo)
    {
        let mut artifact = artifact.clone();
        artifact.url = ctx.storage.url(&artifact.path);
        return Ok((SourceOutcome::Unchanged(artifact), None));
    }

    let revision_prefix = target.revision_prefix.clone();
    progress
        .mark(&match target.commit {
            Some(commit) => format!(
                "building artifact: new upstream revision '{}'",
                target.revision(commit)
            ),
            None => "building artifact".to_owned(),
        })
        .await;
    let verify_with = Verifier::load(&ctx.base.client, repo).await?;
    let (artifact_path, summary, commit) = fetch_and_store(
        ctx,
        &in_flight_key,
        spec,
        target,
        url,
        credentials,
        object_dir,
        verify_with,
        crate::content::ArtifactContent::new(spec, included, ctx.storage.clone()),
    )
    .await?;
    let verified = summary.verified;
    let revision = format!("{revision_prefix}sha1:{commit}");
    let artifact = Artifact {
        url: ctx.storage.url(&artifact_path),
        path: artifact_path,
        revision,
        digest: Some(summary.archive.digest),
        last_update_time: Time(Timestamp::now()),
        size: i64::try_from(summary.archive.size).ok(),
        metadata: std::collections::BTreeMap::new(),
    };
    let commit_summary = summary.commit_summary;
    if current
        .as_ref()
        .is_some_and(|c| c.revision == artifact.revision && c.digest == artifact.digest)
    {
        // Same content re-archived (the file went missing): keep the original update time.
        let mut artifact = artifact;
        if let Some(c) = current {
            artifact.last_update_time = c.last_update_time;
        }
        return Ok((SourceOutcome::Unchanged(artifact), verified));
    }
    Ok((
        SourceOutcome::NewArtifact {
            artifact,
            commit_summary,
        },
        verified,
    ))
}

fn spec_timeout_text(timeout: std::time::Duration) -> String {
    format!("{}s", timeout.as_secs())
}

fn map_git_error(timeout: &str) -> impl Fn(git::GitError) -> SourceError + '_ {
    move |e| match e {
        git::GitError::Timeout => SourceError::Timeout(timeout.to_owned()),
        other => SourceError::Git(other),
    }
}

/// The commit to archive: the fetched ref's head, or for `commit` refs the asked-for commit,
/// checked to be on the branch when one is given.
fn find_commit(repo: &git2::Repository, target: &Target) -> Result<Oid, SourceError> {
    let git = |e: git2::Error| SourceError::Git(git::GitError::from(&e));
    if let Some(local) = &target.local_ref {
        let reference = repo.find_reference(local).map_err(git)?;
        return reference.peel_to_commit().map(|c| c.id()).map_err(git);
    }
    let Some((sha, branch)) = &target.wanted_commit else {
        return Err(SourceError::NothingToCheckOut);
    };
    let not_found = || SourceError::CommitNotFound {
        commit: sha.clone(),
        branch: branch.clone(),
    };
    let commit = repo
        .revparse_single(sha)
        .and_then(|o| o.peel_to_commit())
        .map_err(|_| not_found())?
        .id();
    if let Some(b) = branch {
        let head = repo
            .find_reference(&format!("refs/remotes/origin/{b}"))
            .and_then(|r| r.peel_to_commit())
            .map_err(|_| SourceError::BranchNotFound(b.clone()))?
            .id();
        if head != commit && !repo.graph_descendant_of(head, commit).map_err(git)? {
            return Err(not_found());
        }
    }
    Ok(commit)
}
