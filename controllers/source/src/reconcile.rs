//! The GitRepository reconcile: `credentials → resolve → fetch → archive → store`, stopping at
//! the first failure; status is summarised and written once by the caller.

use std::{sync::atomic::Ordering, time::Instant};

use git2::Oid;
use k8s_openapi::{
    api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp,
};
use kube::{Api, ResourceExt};
use weir_api::{Artifact, GitRepository, source::ResolvedRef};
use weir_runtime::{Redactor, redact::strip_url_credentials, semver_range};

use crate::{
    Context,
    error::SourceError,
    git::{self, Credentials, Remote, RemoteRefs},
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
    git_credentials(&ctx.client, repo).await
}

/// [`load_credentials`] for any controller that talks to a GitRepository's remote (the image
/// automation pushes with the same credentials).
pub async fn git_credentials(
    client: &kube::Client,
    repo: &GitRepository,
) -> Result<(String, Credentials, Redactor), SourceError> {
    let namespace = repo.namespace().unwrap_or_default();
    let mut redactor = Redactor::default();
    redactor.add_url_credentials(&repo.spec.url);
    let url = strip_url_credentials(&repo.spec.url);
    validate_url(&url, &repo.spec.url)?;

    let mut credentials = match &repo.spec.secret_ref {
        None => Credentials::default(),
        Some(r) => {
            let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
            let secret =
                secrets
                    .get_opt(&r.name)
                    .await
                    .map_err(|e| SourceError::SecretUnreadable {
                        name: r.name.clone(),
                        message: e.to_string(),
                    })?;
            let secret = secret.ok_or_else(|| SourceError::SecretNotFound {
                namespace: namespace.clone(),
                name: r.name.clone(),
            })?;
            let data = weir_runtime::secrets::data(secret);
            Credentials::from_secret_data(&data)
        }
    };
    credentials.proxy = load_proxy(client, repo).await?;
    if let (Some(r), true) = (&repo.spec.proxy_secret_ref, url.starts_with("http://")) {
        return Err(SourceError::ProxyNeedsHttps(r.name.clone()));
    }
    // Credentials embedded in the URL are used when the secret gives none.
    if credentials.basic.is_none()
        && let Some((user, password)) = url_userinfo(&repo.spec.url)
    {
        credentials.basic = Some((user, password));
    }
    for value in credentials.secret_values() {
        redactor.add(value);
    }
    Ok((url, credentials, redactor))
}

/// The proxy of `spec.proxySecretRef` (Flux's keys `address`, `username`, `password`).
async fn load_proxy(
    client: &kube::Client,
    repo: &GitRepository,
) -> Result<Option<git::Proxy>, SourceError> {
    let Some(r) = &repo.spec.proxy_secret_ref else {
        return Ok(None);
    };
    let namespace = repo.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let secret = secrets
        .get_opt(&r.name)
        .await
        .map_err(|e| SourceError::ProxySecretInvalid {
            name: r.name.clone(),
            why: e.to_string(),
        })?
        .ok_or_else(|| SourceError::ProxySecretNotFound {
            namespace,
            name: r.name.clone(),
        })?;
    let data = weir_runtime::secrets::data(secret);
    git::Proxy::from_secret_data(&data)
        .map(Some)
        .map_err(|why| SourceError::ProxySecretInvalid {
            name: r.name.clone(),
            why,
        })
}

fn url_userinfo(url: &str) -> Option<(String, String)> {
    let rest = &url[url.find("://")? + 3..];
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let (userinfo, _) = authority.rsplit_once('@')?;
    let (user, password) = userinfo.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn validate_url(url: &str, original: &str) -> Result<(), SourceError> {
    let invalid = |why: &str| SourceError::InvalidUrl {
        url: strip_url_credentials(original),
        why: why.to_owned(),
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(invalid("no scheme"));
    };
    if !matches!(scheme, "http" | "https" | "ssh") {
        return Err(invalid("the scheme must be http, https or ssh"));
    }
    if rest.split('/').next().is_none_or(str::is_empty) {
        return Err(invalid("no host"));
    }
    Ok(())
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
            let parsed = semver_range::Range::parse(range)
                .map_err(|e| SourceError::InvalidSemver(e.to_string()))?;
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

/// Objects (by name and URL) with a git operation still running on a blocking thread. libgit2
/// cannot be interrupted while it waits on a silent server, so a timed-out operation may keep
/// its thread until [`crate::git::SOCKET_TIMEOUT`] passes; this keeps it to one such thread per
/// object and URL instead of one per retry, and a changed URL starts at once.
#[derive(Debug, Default, Clone)]
pub struct InFlight(std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>);

/// Marks an object's git operation as running until dropped (when its thread ends).
#[derive(Debug)]
pub struct InFlightGuard {
    set: InFlight,
    key: String,
}

impl InFlight {
    fn start(&self, key: &str) -> Option<InFlightGuard> {
        let mut set = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        set.insert(key.to_owned()).then(|| InFlightGuard {
            set: self.clone(),
            key: key.to_owned(),
        })
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.set
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.key);
    }
}

/// Runs `f` on a blocking thread within the spec's timeout, at most one per object at a time.
async fn blocking<T: Send + 'static>(
    ctx: &Context,
    key: &str,
    timeout: std::time::Duration,
    label: String,
    f: impl FnOnce() -> Result<T, SourceError> + Send + 'static,
) -> Result<T, SourceError> {
    let Some(guard) = ctx.in_flight.start(key) else {
        return Err(SourceError::StillRunning(label));
    };
    let task = tokio::task::spawn_blocking(move || {
        let _guard = guard;
        f()
    });
    match tokio::time::timeout(timeout, task).await {
        Err(_) => Err(SourceError::Timeout(label)),
        Ok(Err(join)) => Err(SourceError::Task(join)),
        Ok(Ok(result)) => result,
    }
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
            tracing::warn!(%error, object_dir, "artifact garbage collection failed");
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
    let verify_with = Verifier::load(&ctx.client, repo).await?;
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
    let git = |e: git2::Error| SourceError::Git(git::GitError::Git(e.message().to_owned()));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_validation_and_userinfo() {
        assert!(validate_url("https://example.com/repo", "https://example.com/repo").is_ok());
        assert!(validate_url("ftp://example.com/repo", "ftp://example.com/repo").is_err());
        assert!(validate_url("https:///repo", "https:///repo").is_err());
        assert_eq!(
            url_userinfo("https://bob:pw@h/r"),
            Some(("bob".into(), "pw".into()))
        );
        assert_eq!(url_userinfo("ssh://git@h/r"), None);
        let e = validate_url("ftp://h/r", "ftp://bob:secretpw@h/r").unwrap_err();
        assert!(!e.to_string().contains("secretpw"), "{e}");
    }
}
