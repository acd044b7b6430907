//! `weir rollback kustomization <name> --commit`: the rollback written to git, as Flux v1 did,
//! so that the repository stays the truth and its log the audit trail.
//!
//! The commit's tree is the branch head's with the Kustomization's `spec.path` replaced by that
//! directory as it was at the target revision (the whole tree when the path is the root). That
//! is `git revert` of every commit since the target, limited to what this Kustomization
//! applies: one commit, which never conflicts, and which leaves other directories (other
//! Kustomizations of the same repository) alone. Files outside the path that it loads
//! (`../base`) are not reverted; the message says which directory was.
//!
//! The clone uses the source's URL and credentials (its `secretRef` and proxy, read with the
//! user's kubeconfig, so RBAC decides), the author is the user the API server authenticated,
//! the message `Revert to <revision>: <reason>`. The push is never forced; when the branch
//! moved meanwhile, the revert is made again on the new head (up to [`MAX_ATTEMPTS`] times).
//! Then a reconcile of the source and of the Kustomization is requested and waited for.

use std::{path::Path, time::Duration};

use git2::{FileMode, Oid, Repository, Signature};
use kube::ResourceExt;
use serde_json::json;
use weir_api::{GitRepository, Kustomization, control::ROLLBACK_TO, source::ResolvedRef};
use weir_git::{Credentials, GitError, Remote};
use weir_kustomize::rollback::PinnedRevision;

use crate::{
    get::BoxError,
    rollback::{Args, Object, kustomization_target},
};

/// How many times a push rejected because the branch moved is made again.
const MAX_ATTEMPTS: u32 = 3;

/// Writes the revert commit, pushes it and waits for it to be applied.
pub async fn run(target: &Object, args: &Args) -> Result<bool, BoxError> {
    let ks: Kustomization = target.get().await?;
    let key = format!("{}/{}", target.namespace, target.name);
    if let Some(pinned) = ks.annotations().get(ROLLBACK_TO) {
        return Err(format!(
            "Kustomization '{key}' is rolled back to {pinned}: a commit would not be applied; clear it first (weir rollback kustomization {} --clear)",
            target.name
        )
        .into());
    }
    let revision = kustomization_target(&ks, args.to.as_deref())
        .map_err(|e| format!("Kustomization '{key}': {e}"))?;
    let pin = PinnedRevision::parse(&revision)?;
    let source_ns = ks
        .spec
        .source_ref
        .namespace
        .clone()
        .unwrap_or_else(|| target.namespace.clone());
    let source_object = Object {
        client: target.client.clone(),
        namespace: source_ns,
        name: ks.spec.source_ref.name.clone(),
        timeout: target.timeout,
    };
    let source: GitRepository = source_object.get().await?;
    let source_key = format!("{}/{}", source_object.namespace, source_object.name);
    let ResolvedRef::Branch(branch) = source.spec.resolved_ref() else {
        return Err(format!(
            "--commit writes to the branch the source follows; GitRepository '{source_key}' follows no branch (spec.ref)"
        )
        .into());
    };
    let path = directory(ks.spec.path.as_deref())
        .map_err(|e| format!("Kustomization '{key}': spec.path {e}"))?;
    let access = weir_git::credentials::for_repository(&target.client, &source)
        .await
        .map_err(|e| format!("GitRepository '{source_key}': {}", weir_runtime::chain(&e)))?;
    let user = crate::audit::whoami(&target.client).await?;
    let message = match args.reason.as_deref().filter(|r| !r.trim().is_empty()) {
        Some(reason) => format!("Revert to {revision}: {reason}"),
        None => format!("Revert to {revision}"),
    };
    let shown = if path.is_empty() {
        ".".to_owned()
    } else {
        path.clone()
    };
    println!("► reverting {shown} on branch {branch} of GitRepository {source_key} to {revision}");
    let request = Revert {
        url: access.url.clone(),
        credentials: access.credentials,
        timeout: source.spec.timeout.as_std(),
        branch: branch.to_owned(),
        path,
        target: Oid::from_str(&pin.sha)?,
        message: format!(
            "{message}\n\nReverts {shown} to {revision}.\nRolled back by {user} with weir rollback --commit.\n"
        ),
        author: user,
    };
    let redactor = access.redactor;
    let outcome = tokio::task::spawn_blocking(move || push_revert(&request))
        .await?
        .map_err(|e| redactor.redact(&e))?;
    let Some(commit) = outcome else {
        println!("✔ nothing to revert: {shown} on {branch} already is as at {revision}");
        return Ok(true);
    };
    println!("✔ pushed {commit} to {branch}: {message}");
    let sha = commit.to_string();
    let token = source_object.annotate::<GitRepository>(json!({})).await?;
    let fetched = source_object
        .wait::<GitRepository>(&token, |repo| {
            repo.status
                .as_ref()
                .and_then(|s| s.artifact.as_ref())
                .is_some_and(|a| a.revision.ends_with(&sha))
        })
        .await?;
    if !fetched {
        return Ok(false);
    }
    let token = target.annotate::<Kustomization>(json!({})).await?;
    target
        .wait::<Kustomization>(&token, |ks| {
            ks.status
                .as_ref()
                .and_then(|s| s.last_applied_revision.as_deref())
                .is_some_and(|r| r.ends_with(&sha))
        })
        .await
}

/// `spec.path` as a path in the repository's tree: no `./`, no trailing `/`, empty for the root;
/// a path leaving the repository is refused.
fn directory(path: Option<&str>) -> Result<String, String> {
    let mut parts = vec![];
    for part in path.unwrap_or_default().split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(format!(
                    "'{}' leaves the repository",
                    path.unwrap_or_default()
                ));
            }
            part => parts.push(part),
        }
    }
    Ok(parts.join("/"))
}

/// One revert to make and push.
struct Revert {
    url: String,
    credentials: Credentials,
    timeout: Duration,
    branch: String,
    /// The directory to revert, empty for the whole tree.
    path: String,
    target: Oid,
    message: String,
    author: String,
}

/// Makes the revert on the branch head and pushes it, again on the new head when the branch
/// moved; `None` when the directory already is as at the target.
fn push_revert(req: &Revert) -> Result<Option<Oid>, String> {
    let git = |e: git2::Error| e.message().to_owned();
    let local = format!("refs/heads/{}", req.branch);
    let tracking = format!("refs/remotes/origin/{}", req.branch);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let scratch =
            tempfile::tempdir().map_err(|e| format!("cannot make a scratch directory: {e}"))?;
        let remote = Remote {
            url: &req.url,
            credentials: &req.credentials,
            deadline: std::time::Instant::now() + req.timeout,
        };
        let refspec = format!("+{local}:{tracking}");
        let repo =
            weir_git::fetch(&remote, &scratch.path().join("repo"), &[refspec], 0).map_err(|e| {
                format!(
                    "cannot fetch branch {}: {}",
                    req.branch,
                    weir_runtime::chain(&e)
                )
            })?;
        let head = repo.refname_to_id(&tracking).map_err(git)?;
        let on_branch =
            head == req.target || repo.graph_descendant_of(head, req.target).unwrap_or(false);
        if !on_branch {
            return Err(format!(
                "commit {} is not on branch {}",
                req.target, req.branch
            ));
        }
        let parent = repo.find_commit(head).map_err(git)?;
        let target = repo.find_commit(req.target).map_err(git)?;
        let tree = reverted_tree(
            &repo,
            &parent.tree().map_err(git)?,
            &target.tree().map_err(git)?,
            &req.path,
        )
        .map_err(git)?;
        if tree == parent.tree_id() {
            return Ok(None);
        }
        let tree = repo.find_tree(tree).map_err(git)?;
        // A Kubernetes user has no email: the name stands in for it (git refuses an empty one).
        let name = req.author.replace(['<', '>'], "");
        let author = Signature::now(&name, &name).map_err(git)?;
        let commit = repo
            .commit(None, &author, &author, &req.message, &tree, &[&parent])
            .map_err(git)?;
        repo.reference(&local, commit, true, "weir rollback --commit")
            .map_err(git)?;
        match weir_git::push(&remote, &repo, &format!("{local}:{local}")) {
            Ok(()) => return Ok(Some(commit)),
            Err(GitError::Rejected(why)) if attempt < MAX_ATTEMPTS => {
                eprintln!("◎ the branch moved ({why}): reverting again on its new head");
            }
            Err(GitError::Rejected(why)) => {
                return Err(format!(
                    "push to {} rejected {attempt} times, the branch keeps moving: {why}",
                    req.branch
                ));
            }
            Err(error) => return Err(format!("cannot push: {}", weir_runtime::chain(&error))),
        }
    }
}

/// `head`'s tree with `path` as it is in `target` (removed when `target` has none).
fn reverted_tree(
    repo: &Repository,
    head: &git2::Tree<'_>,
    target: &git2::Tree<'_>,
    path: &str,
) -> Result<Oid, git2::Error> {
    if path.is_empty() {
        return Ok(target.id());
    }
    let at = Path::new(path);
    let mut builder = git2::build::TreeUpdateBuilder::new();
    match (target.get_path(at), head.get_path(at)) {
        (Ok(entry), _) => {
            builder.upsert(path, entry.id(), file_mode(entry.filemode()));
        }
        (Err(_), Ok(_)) => {
            builder.remove(path);
        }
        (Err(_), Err(_)) => return Ok(head.id()),
    }
    builder.create_updated(repo, head)
}

fn file_mode(mode: i32) -> FileMode {
    match mode {
        m if m == i32::from(FileMode::Tree) => FileMode::Tree,
        m if m == i32::from(FileMode::BlobExecutable) => FileMode::BlobExecutable,
        m if m == i32::from(FileMode::Link) => FileMode::Link,
        m if m == i32::from(FileMode::Commit) => FileMode::Commit,
        _ => FileMode::Blob,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_directories_of_the_repository() {
        assert_eq!(directory(None).unwrap(), "");
        assert_eq!(directory(Some("./")).unwrap(), "");
        assert_eq!(directory(Some("./deploy/")).unwrap(), "deploy");
        assert_eq!(directory(Some("apps//web")).unwrap(), "apps/web");
        assert!(directory(Some("../other")).is_err());
    }

    /// A repository with `deploy/cm.yaml` and `other.txt` at two commits.
    fn commit(repo: &Repository, files: &[(&str, &str)], parent: Option<Oid>) -> Oid {
        let mut builder = git2::build::TreeUpdateBuilder::new();
        for (path, content) in files {
            let blob = repo.blob(content.as_bytes()).unwrap();
            builder.upsert(*path, blob, FileMode::Blob);
        }
        let empty = repo.treebuilder(None).unwrap().write().unwrap();
        let base = match parent {
            Some(p) => repo.find_commit(p).unwrap().tree().unwrap(),
            None => repo.find_tree(empty).unwrap(),
        };
        let tree = repo
            .find_tree(builder.create_updated(repo, &base).unwrap())
            .unwrap();
        let sig = Signature::now("t", "t@example").unwrap();
        let parents: Vec<git2::Commit<'_>> = parent
            .iter()
            .map(|p| repo.find_commit(*p).unwrap())
            .collect();
        let parents: Vec<&git2::Commit<'_>> = parents.iter().collect();
        repo.commit(None, &sig, &sig, "c", &tree, &parents).unwrap()
    }

    fn read(repo: &Repository, tree: Oid, path: &str) -> Option<String> {
        let tree = repo.find_tree(tree).unwrap();
        let entry = tree.get_path(Path::new(path)).ok()?;
        let blob = repo.find_blob(entry.id()).unwrap();
        Some(String::from_utf8_lossy(blob.content()).into_owned())
    }

    #[test]
    fn the_revert_restores_the_path_and_leaves_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let first = commit(&repo, &[("deploy/cm.yaml", "1"), ("other.txt", "a")], None);
        let second = commit(
            &repo,
            &[
                ("deploy/cm.yaml", "2"),
                ("deploy/new.yaml", "n"),
                ("other.txt", "b"),
            ],
            Some(first),
        );
        let head = repo.find_commit(second).unwrap().tree().unwrap();
        let old = repo.find_commit(first).unwrap().tree().unwrap();
        let reverted = reverted_tree(&repo, &head, &old, "deploy").unwrap();
        assert_eq!(
            read(&repo, reverted, "deploy/cm.yaml").as_deref(),
            Some("1")
        );
        assert_eq!(read(&repo, reverted, "deploy/new.yaml"), None);
        assert_eq!(read(&repo, reverted, "other.txt").as_deref(), Some("b"));
        assert_eq!(reverted_tree(&repo, &head, &old, "").unwrap(), old.id());
        assert_eq!(
            reverted_tree(&repo, &head, &head, "deploy").unwrap(),
            head.id()
        );
        assert_eq!(
            reverted_tree(&repo, &head, &old, "nowhere").unwrap(),
            head.id()
        );
    }
}
