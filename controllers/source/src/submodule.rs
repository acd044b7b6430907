//! `spec.recurseSubmodules`: every gitlink of the commit's tree is fetched from the URL its
//! `.gitmodules` entry names (relative URLs resolve against the parent's URL), with the parent's
//! credentials and proxy as Flux does, at the commit the tree pins; then its own submodules, in
//! turn. Blocking; run on the reconcile's blocking thread.
//!
//! Where Weir deviates: Flux's go-git clones the submodule's default branch shallowly and fails
//! when the pinned commit is not in it; Weir fetches every branch with full history, so a
//! pinned commit on any branch works. Only `http`, `https` and `ssh` URLs are followed: a
//! `file://` or local path would read the controller's own disk.

use std::{collections::BTreeMap, time::Instant};

use git2::{ObjectType, Oid, Repository, TreeWalkMode, TreeWalkResult};

use crate::{archive::Submodule, error::SourceError};
use weir_git::{self as git, Credentials, GitError, Remote};

/// How deep submodules of submodules are followed; git has no limit, a loop would have none.
const MAX_DEPTH: usize = 8;

/// Fetched submodules by path from the root, and the scratch directories holding them (they
/// must outlive the archive).
#[derive(Debug, Default)]
pub struct Fetched {
    pub submodules: BTreeMap<String, Submodule>,
    scratch: Vec<tempfile::TempDir>,
}

/// Fetches the submodules of `commit` in `repo` (fetched from `url`), recursively.
pub fn fetch_all(
    repo: &Repository,
    commit: Oid,
    url: &str,
    credentials: &Credentials,
    deadline: Instant,
) -> Result<Fetched, SourceError> {
    let mut fetched = Fetched::default();
    fetch_into(
        repo,
        commit,
        url,
        "",
        credentials,
        deadline,
        0,
        &mut fetched,
    )?;
    Ok(fetched)
}

#[allow(clippy::too_many_arguments)] // The recursion's state; a struct would only rename it.
fn fetch_into(
    repo: &Repository,
    commit: Oid,
    url: &str,
    prefix: &str,
    credentials: &Credentials,
    deadline: Instant,
    depth: usize,
    fetched: &mut Fetched,
) -> Result<(), SourceError> {
    let gitlinks = gitlinks(repo, commit)?;
    if gitlinks.is_empty() {
        return Ok(());
    }
    let modules = gitmodules(repo, commit)?;
    for (path, pinned) in gitlinks {
        let full = format!("{prefix}{path}");
        let fail = |why: String| SourceError::Submodule {
            path: full.clone(),
            source: GitError::Git(why),
        };
        if depth >= MAX_DEPTH {
            return Err(fail(format!("nested deeper than {MAX_DEPTH} levels")));
        }
        let raw = modules
            .get(&path)
            .ok_or_else(|| fail("no url for it in .gitmodules".to_owned()))?;
        let sub_url = resolve_url(url, raw).ok_or_else(|| {
            fail(format!(
                "url {raw:?} is not http(s), ssh or relative to the parent's"
            ))
        })?;
        let scratch = tempfile::tempdir().map_err(SourceError::Storage)?;
        let remote = Remote {
            url: &sub_url,
            credentials,
            deadline,
        };
        let sub = git::fetch(
            &remote,
            scratch.path(),
            &["+refs/heads/*:refs/remotes/origin/*".to_owned()],
            0,
        )
        .map_err(|source| match source {
            GitError::Timeout => SourceError::Timeout("the spec's timeout".to_owned()),
            source => SourceError::Submodule {
                path: full.clone(),
                source,
            },
        })?;
        if sub.find_commit(pinned).is_err() {
            return Err(fail(format!(
                "commit {pinned} is on no branch of {}",
                weir_runtime::redact::strip_url_credentials(&sub_url)
            )));
        }
        fetch_into(
            &sub,
            pinned,
            &sub_url,
            &format!("{full}/"),
            credentials,
            deadline,
            depth + 1,
            fetched,
        )?;
        fetched.submodules.insert(
            full,
            Submodule {
                repo: sub,
                commit: pinned,
            },
        );
        fetched.scratch.push(scratch);
    }
    Ok(())
}

/// The gitlinks (submodule entries) of the commit's tree: path and pinned commit.
fn gitlinks(repo: &Repository, commit: Oid) -> Result<Vec<(String, Oid)>, SourceError> {
    let git = |e: git2::Error| SourceError::Git(GitError::from(&e));
    let tree = repo
        .find_commit(commit)
        .and_then(|c| c.tree())
        .map_err(git)?;
    let mut links = vec![];
    tree.walk(TreeWalkMode::PreOrder, |dir, entry| {
        if entry.kind() == Some(ObjectType::Commit)
            && let Ok(name) = entry.name()
        {
            links.push((format!("{dir}{name}"), entry.id()));
        }
        TreeWalkResult::Ok
    })
    .map_err(git)?;
    Ok(links)
}

/// `.gitmodules` of the commit: submodule path → URL as written.
fn gitmodules(repo: &Repository, commit: Oid) -> Result<BTreeMap<String, String>, SourceError> {
    let git = |e: git2::Error| SourceError::Git(GitError::from(&e));
    let tree = repo
        .find_commit(commit)
        .and_then(|c| c.tree())
        .map_err(git)?;
    let Some(entry) = tree.get_name(".gitmodules") else {
        return Ok(BTreeMap::new());
    };
    let blob = repo.find_blob(entry.id()).map_err(git)?;
    Ok(parse_gitmodules(&String::from_utf8_lossy(blob.content())))
}

/// Parses `.gitmodules` (git-config syntax, as git writes it): path → url of each section.
fn parse_gitmodules(text: &str) -> BTreeMap<String, String> {
    let mut sections: BTreeMap<String, (Option<String>, Option<String>)> = BTreeMap::new();
    let mut current = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = header
                .trim()
                .strip_prefix("submodule")
                .map(|n| n.trim().trim_matches('"').to_owned());
            continue;
        }
        let (Some(name), Some((key, value))) = (&current, line.split_once('=')) else {
            continue;
        };
        let value = value.trim().trim_matches('"').to_owned();
        let entry = sections.entry(name.clone()).or_default();
        match key.trim() {
            "path" => entry.0 = Some(value),
            "url" => entry.1 = Some(value),
            _ => {}
        }
    }
    sections
        .into_values()
        .filter_map(|(path, url)| Some((path?.trim_end_matches('/').to_owned(), url?)))
        .collect()
}

/// A submodule URL, absolute or relative (`../other.git`, `./x`) to the parent's URL, as git
/// resolves it; `None` for schemes Weir does not follow.
fn resolve_url(parent: &str, url: &str) -> Option<String> {
    if url.starts_with("../") || url.starts_with("./") {
        let (scheme, rest) = parent.split_once("://")?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let mut parts: Vec<&str> = path
            .trim_end_matches('/')
            .split('/')
            .filter(|p| !p.is_empty())
            .collect();
        for part in url.split('/') {
            match part {
                "." | "" => {}
                ".." => {
                    parts.pop()?;
                }
                p => parts.push(p),
            }
        }
        return Some(format!("{scheme}://{authority}/{}", parts.join("/")));
    }
    let scheme = url.split_once("://")?.0;
    matches!(scheme, "http" | "https" | "ssh").then(|| url.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitmodules_map_paths_to_urls() {
        let text = "[submodule \"lib\"]\n\tpath = vendor/lib\n\turl = ../lib.git\n\
                    [submodule \"x\"]\n\turl = https://h/x.git\n\tpath = x/\n# c\n";
        let m = parse_gitmodules(text);
        assert_eq!(m["vendor/lib"], "../lib.git");
        assert_eq!(m["x"], "https://h/x.git");
    }

    #[test]
    fn relative_urls_resolve_against_the_parent() {
        let parent = "http://127.0.0.1:8080/public/app.git";
        assert_eq!(
            resolve_url(parent, "../lib.git").as_deref(),
            Some("http://127.0.0.1:8080/public/lib.git")
        );
        assert_eq!(
            resolve_url(parent, "./lib").as_deref(),
            Some("http://127.0.0.1:8080/public/app.git/lib")
        );
        assert_eq!(
            resolve_url(parent, "ssh://git@h/r.git").as_deref(),
            Some("ssh://git@h/r.git")
        );
        assert_eq!(resolve_url(parent, "file:///etc"), None);
        assert_eq!(resolve_url(parent, "/srv/git/x"), None);
        assert_eq!(resolve_url("https://h/a", "../../../x"), None);
    }
}
