//! The git side of an ImageUpdateAutomation: `fetch → rewrite markers → commit → push`, and on
//! a rejected push (the branch moved) the same again on the new head, with backoff. Never forced.
//! Blocking; run it on a blocking thread.
//!
//! As in Flux, the checkout is `git.checkout.ref` (any of a GitRepository's ref kinds) and the
//! commit goes to `git.push.branch`, else to the checkout's branch. When the two differ and the
//! push branch exists, the work starts from the push branch (earlier automation commits are on
//! it); otherwise from the checked-out commit. `git.push.refspec` is pushed after the branch,
//! with the same push options; a rejected refspec push is not retried, since the branch push it
//! follows already landed.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use git2::{FileMode, ObjectType, Oid, Repository, Signature, TreeWalkMode, TreeWalkResult};
use weir_api::{ImageRef, source::ResolvedRef};
use weir_git::{self as git, Credentials, GitError, Remote, RemoteRefs};
use weir_runtime::semver_range;

use crate::{
    error::ImageError,
    setters::{self, Change, ObjectId},
    signing::CommitSigner,
    template::{Template, Value},
};

/// The local ref a checked-out branch, tag or named ref is fetched into.
const CHECKOUT_REF: &str = "refs/weir/checkout";

/// What to check out, after the GitRepository precedence (`commit > name > semver > tag >
/// branch`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checkout {
    Branch(String),
    Tag(String),
    /// The highest tag matching the range.
    Semver(String),
    /// A full ref name, such as `refs/pull/1/head`.
    Name(String),
    /// A commit (full or abbreviated SHA), looked for on `branch` or on every branch.
    Commit {
        sha: String,
        branch: Option<String>,
    },
}

impl From<ResolvedRef<'_>> for Checkout {
    fn from(r: ResolvedRef<'_>) -> Self {
        match r {
            ResolvedRef::Branch(b) => Self::Branch(b.to_owned()),
            ResolvedRef::Tag(t) => Self::Tag(t.to_owned()),
            ResolvedRef::Semver(s) => Self::Semver(s.to_owned()),
            ResolvedRef::Name(n) => Self::Name(n.to_owned()),
            ResolvedRef::Commit { sha, branch } => Self::Commit {
                sha: sha.to_owned(),
                branch: branch.map(str::to_owned),
            },
        }
    }
}

/// Where the checkout is after the fetch, and the name Flux gives its revision.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    refspecs: Vec<String>,
    /// A local ref, or the commit's SHA.
    local: String,
    /// The short ref name of `<name>@sha1:<commit>`; `None` gives `sha1:<commit>`.
    label: Option<String>,
}

/// The short name Flux gives a full ref in revisions: what follows its second `/`
/// (`refs/heads/main` → `main`, `refs/pull/1/head` → `1/head`).
fn short_ref(name: &str) -> Option<String> {
    let mut parts = name.splitn(3, '/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(_), Some(rest)) => Some(rest.to_owned()),
        _ => None,
    }
}

/// Resolves the checkout against the remote's refs.
fn target(checkout: &Checkout, refs: &RemoteRefs) -> Result<Target, ImageError> {
    let named = |name: String, missing: String| {
        refs.get(&name)
            .ok_or(ImageError::InvalidSource(missing))
            .map(|_| Target {
                refspecs: vec![format!("+{name}:{CHECKOUT_REF}")],
                local: CHECKOUT_REF.to_owned(),
                label: short_ref(&name),
            })
    };
    match checkout {
        Checkout::Branch(b) => named(
            format!("refs/heads/{b}"),
            format!("branch '{b}' not found in the remote"),
        ),
        Checkout::Tag(t) => named(
            format!("refs/tags/{t}"),
            format!("tag '{t}' not found in the remote"),
        ),
        Checkout::Semver(range) => {
            let parsed =
                semver_range::Range::parse(range).map_err(ImageError::InvalidCheckoutSemver)?;
            let (_, best) = refs
                .tags()
                .filter_map(|t| semver_range::parse_version(t).map(|v| (v, t)))
                .filter(|(v, _)| parsed.matches(v))
                .max()
                .ok_or_else(|| {
                    ImageError::InvalidSource(format!(
                        "no tag in the remote matches git.checkout.ref.semver '{range}'"
                    ))
                })?;
            named(format!("refs/tags/{best}"), String::new())
        }
        Checkout::Name(n) => named(n.clone(), format!("ref '{n}' not found in the remote")),
        Checkout::Commit { sha, branch } => {
            // Read as a revision below, so only hex may pass: no `main~1` or `HEAD`.
            if !(4..=40).contains(&sha.len()) || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ImageError::InvalidSource(format!(
                    "git.checkout.ref.commit '{sha}' is not a commit SHA"
                )));
            }
            let refspecs = match branch {
                Some(b) => {
                    if refs.get(&format!("refs/heads/{b}")).is_none() {
                        return Err(ImageError::InvalidSource(format!(
                            "branch '{b}' not found in the remote"
                        )));
                    }
                    vec![format!("+refs/heads/{b}:refs/remotes/origin/{b}")]
                }
                None => vec!["+refs/heads/*:refs/remotes/origin/*".to_owned()],
            };
            Ok(Target {
                refspecs,
                local: sha.clone(),
                label: branch.clone(),
            })
        }
    }
}

/// Flux's revision string: `<label>@sha1:<commit>`, or `sha1:<commit>` without a label.
fn revision(label: Option<&str>, commit: Oid) -> String {
    match label {
        Some(l) => format!("{l}@sha1:{commit}"),
        None => format!("sha1:{commit}"),
    }
}

/// Everything one run needs; owned, so it can move to a blocking thread.
#[derive(Debug)]
pub struct UpdateRequest {
    /// Remote URL without credentials.
    pub url: String,
    pub credentials: Credentials,
    /// Limit of each git operation.
    pub timeout: Duration,
    /// What to check out.
    pub checkout: Checkout,
    /// The branch to push to.
    pub push_branch: String,
    /// Whether `push_branch` differs from the checkout's branch: then an existing push branch
    /// is the base of the work.
    pub switch_branch: bool,
    /// `git.push.refspec`, pushed after the branch.
    pub push_refspec: Option<String>,
    /// `git.push.options` as `key=value`.
    pub push_options: Vec<String>,
    /// Signs the commit when `git.commit.signingKey` is set.
    pub signer: Option<CommitSigner>,
    /// Directory under the repository root whose YAML files are updated (`""` for the root).
    pub path: String,
    /// The chosen image of each policy, by `namespace:name`.
    pub policies: BTreeMap<String, ImageRef>,
    pub author_name: String,
    pub author_email: String,
    pub template: Option<MessageTemplate>,
    /// `namespace/name` of the automation, for the message.
    pub automation: (String, String),
    /// How many pushes to try when the branch keeps moving.
    pub max_attempts: u32,
    /// First delay between attempts; doubles each time.
    pub retry_delay: Duration,
}

/// `git.commit.messageTemplate`, parsed, with `messageTemplateValues`.
#[derive(Debug)]
pub struct MessageTemplate {
    pub template: Template,
    pub values: BTreeMap<String, String>,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateOutcome {
    /// Every marked value was already up to date: nothing committed.
    NoChange {
        head: String,
        /// The checked-out revision, as `status.observedSourceRevision` holds it.
        revision: String,
    },
    /// A commit was pushed.
    Pushed {
        commit: String,
        branch: String,
        /// `<branch>@sha1:<commit>`.
        revision: String,
        /// The refspec pushed after the branch, if any.
        refspec: Option<String>,
        /// The commit message.
        message: String,
        /// `(file, change)` for every rewritten value.
        changes: Vec<(String, Change)>,
        /// Pushes that were rejected before this one landed.
        rejected: u32,
    },
}

/// Normalizes `update.path`: relative to the root, no `..`; `""` for the root.
pub fn normalize_path(path: Option<&str>) -> Result<String, ImageError> {
    let raw = path.unwrap_or_default();
    let mut parts = vec![];
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(ImageError::InvalidUpdatePath(raw.to_owned())),
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

fn git_err(e: &git2::Error) -> ImageError {
    ImageError::Git(GitError::from(e))
}

fn map_git(e: GitError) -> ImageError {
    ImageError::Git(e)
}

/// The YAML files under `path` in `tree`, as `(path from the root, blob, mode)`.
fn yaml_files(
    repo: &Repository,
    tree: &git2::Tree<'_>,
    path: &str,
) -> Result<Vec<(String, Oid, i32)>, ImageError> {
    let subtree = if path.is_empty() {
        tree.clone()
    } else {
        tree.get_path(Path::new(path))
            .and_then(|e| e.to_object(repo))
            .and_then(|o| o.peel_to_tree())
            .map_err(|_| {
                ImageError::InvalidSource(format!(
                    "update.path '{path}' is not a directory in the repository"
                ))
            })?
    };
    let prefix = if path.is_empty() {
        String::new()
    } else {
        format!("{path}/")
    };
    let mut files = vec![];
    subtree
        .walk(TreeWalkMode::PreOrder, |dir, entry| {
            let name = entry.name().unwrap_or_default();
            if entry.kind() == Some(ObjectType::Blob)
                && Path::new(name).extension().is_some_and(|e| {
                    e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml")
                })
            {
                files.push((format!("{prefix}{dir}{name}"), entry.id(), entry.filemode()));
            }
            TreeWalkResult::Ok
        })
        .map_err(|e| git_err(&e))?;
    Ok(files)
}

/// What the template reads: `.AutomationObject`, `.Changed` (`FileChanges`, `Objects`,
/// `Changes`) and `.Values`, as in Flux's documentation.
fn template_data(
    automation: &(String, String),
    changes: &[(String, Change)],
    values: &BTreeMap<String, String>,
) -> Value {
    let s = |v: &str| Value::Str(v.to_owned());
    let change = |c: &Change| {
        Value::Struct(
            vec![
                ("OldValue", s(&c.old_value)),
                ("NewValue", s(&c.new_value)),
                ("Setter", s(&c.setter)),
            ],
            format!("{} -> {}", c.old_value, c.new_value),
        )
    };
    let object = |o: &ObjectId| {
        Value::Struct(
            vec![
                ("Kind", s(&o.kind)),
                ("Name", s(&o.name)),
                ("Namespace", s(&o.namespace)),
                ("APIVersion", s(&o.api_version)),
            ],
            format!("{} {}/{}", o.kind, o.namespace, o.name),
        )
    };
    let by_object = |list: &mut dyn Iterator<Item = &Change>| {
        let mut grouped: BTreeMap<ObjectId, Vec<Value>> = BTreeMap::new();
        for c in list {
            grouped.entry(c.object.clone()).or_default().push(change(c));
        }
        Value::map(
            grouped
                .into_iter()
                .map(|(o, cs)| (object(&o), Value::List(cs)))
                .collect(),
        )
    };
    let mut files: BTreeMap<&str, Vec<&Change>> = BTreeMap::new();
    for (file, c) in changes {
        files.entry(file).or_default().push(c);
    }
    let file_changes = Value::map(
        files
            .into_iter()
            .map(|(f, cs)| (s(f), by_object(&mut cs.into_iter())))
            .collect(),
    );
    let (namespace, name) = automation;
    Value::Struct(
        vec![
            (
                "AutomationObject",
                Value::Struct(
                    vec![("Namespace", s(namespace)), ("Name", s(name))],
                    format!("{namespace}/{name}"),
                ),
            ),
            (
                "Changed",
                Value::Struct(
                    vec![
                        ("FileChanges", file_changes),
                        ("Objects", by_object(&mut changes.iter().map(|(_, c)| c))),
                        (
                            "Changes",
                            Value::List(changes.iter().map(|(_, c)| change(c)).collect()),
                        ),
                    ],
                    String::new(),
                ),
            ),
            (
                "Values",
                Value::map(values.iter().map(|(k, v)| (s(k), s(v))).collect()),
            ),
        ],
        String::new(),
    )
}

/// The commit message: the rendered template, or a fixed first line with one line per change
/// (file, line, policy, old and new value), so the history says what changed what.
pub fn commit_message(
    template: Option<&MessageTemplate>,
    automation: &(String, String),
    changes: &[(String, Change)],
) -> Result<String, ImageError> {
    if let Some(t) = template {
        return Ok(t
            .template
            .render(&template_data(automation, changes, &t.values))?);
    }
    let mut message = String::from("Update from image update automation\n\n");
    for (file, c) in changes {
        let _ = writeln!(
            message,
            "- {file}:{} {}: {} -> {}",
            c.line, c.setter, c.old_value, c.new_value
        );
    }
    Ok(message)
}

/// Renders `template` once against a sample change, so a template that cannot render is a spec
/// error found before any git work, whatever the repository holds.
pub fn check_template(
    template: &MessageTemplate,
    automation: &(String, String),
) -> Result<(), ImageError> {
    let sample = Change {
        line: 1,
        setter: format!("{}:policy", automation.0),
        old_value: "registry/image:1.0.0".to_owned(),
        new_value: "registry/image:1.0.1".to_owned(),
        object: ObjectId {
            api_version: "apps/v1".to_owned(),
            kind: "Deployment".to_owned(),
            namespace: automation.0.clone(),
            name: "app".to_owned(),
        },
    };
    commit_message(
        Some(template),
        automation,
        &[("deploy.yaml".to_owned(), sample)],
    )
    .map(|_| ())
}

/// The fetched repository, the commit the work starts from, and the checkout's revision.
struct Base {
    repo: Repository,
    commit: Oid,
    revision: String,
}

/// Fetches the checkout (and the push branch, when it is another and exists) and picks the
/// base: the push branch when switching to an existing one, else the checked-out commit.
fn fetch_base(
    req: &UpdateRequest,
    remote: &Remote<'_>,
    scratch: &Path,
) -> Result<Base, ImageError> {
    let refs = git::ls_remote(remote, &scratch.join("ls")).map_err(map_git)?;
    let mut target = target(&req.checkout, &refs)?;
    let push_ref = format!("refs/heads/{}", req.push_branch);
    let push_tracking = format!("refs/remotes/origin/{}", req.push_branch);
    let from_push_branch = req.switch_branch && refs.get(&push_ref).is_some();
    if from_push_branch {
        target.refspecs.push(format!("+{push_ref}:{push_tracking}"));
    }
    let repo = git::fetch(remote, &scratch.join("repo"), &target.refspecs, 0).map_err(map_git)?;
    let checkout = repo
        .revparse_single(&target.local)
        .and_then(|o| o.peel_to_commit())
        .map_err(|_| match &req.checkout {
            Checkout::Commit { sha, branch } => ImageError::InvalidSource(match branch {
                Some(b) => format!("commit '{sha}' not found on branch '{b}'"),
                None => format!("commit '{sha}' not found in the remote"),
            }),
            _ => ImageError::InvalidSource(format!("cannot resolve '{}'", target.local)),
        })?
        .id();
    let commit = if from_push_branch {
        repo.refname_to_id(&push_tracking)
            .map_err(|e| git_err(&e))?
    } else {
        checkout
    };
    Ok(Base {
        repo,
        commit,
        revision: revision(target.label.as_deref(), checkout),
    })
}

/// A rewritten tree (`None` when nothing changed) and every `(file, change)`.
type Rewrite = (Option<Oid>, Vec<(String, Change)>);

/// Edits one YAML file (its path from the root and its text): the new text and what changed;
/// no change leaves the file as it was. The automation's edit is [`setters::apply_setters`];
/// `weir release` brings its own.
pub type FileEdit<'a> = dyn Fn(&str, &str) -> Result<(String, Vec<Change>), ImageError> + 'a;

/// The commit message of a run's `(file, change)`s.
pub type CommitMessage<'a> = dyn Fn(&[(String, Change)]) -> Result<String, ImageError> + 'a;

/// Applies `edit` to the YAML files under `req.path` in `tree`.
fn rewrite(
    req: &UpdateRequest,
    repo: &Repository,
    tree: &git2::Tree<'_>,
    edit: &FileEdit<'_>,
) -> Result<Rewrite, ImageError> {
    let mut changes = vec![];
    let mut builder = git2::build::TreeUpdateBuilder::new();
    for (file, blob, mode) in yaml_files(repo, tree, &req.path)? {
        let blob = repo.find_blob(blob).map_err(|e| git_err(&e))?;
        let Ok(text) = std::str::from_utf8(blob.content()) else {
            continue;
        };
        let (new_text, file_changes) = edit(&file, text)?;
        if file_changes.is_empty() {
            continue;
        }
        let oid = repo.blob(new_text.as_bytes()).map_err(|e| git_err(&e))?;
        let mode = if mode == i32::from(FileMode::BlobExecutable) {
            FileMode::BlobExecutable
        } else {
            FileMode::Blob
        };
        builder.upsert(&file, oid, mode);
        changes.extend(file_changes.into_iter().map(|c| (file.clone(), c)));
    }
    if changes.is_empty() {
        return Ok((None, changes));
    }
    let new_tree = builder
        .create_updated(repo, tree)
        .map_err(|e| git_err(&e))?;
    Ok((Some(new_tree), changes))
}

/// Commits `tree` on `parent` to `refs/heads/<push branch>` (signed when a signer is set) and
/// points `HEAD` at that branch, so a refspec may name either.
fn write_commit(
    req: &UpdateRequest,
    repo: &Repository,
    tree: Oid,
    parent: &git2::Commit<'_>,
    message: &str,
) -> Result<Oid, ImageError> {
    let tree = repo.find_tree(tree).map_err(|e| git_err(&e))?;
    let signature = Signature::now(&req.author_name, &req.author_email).map_err(|e| git_err(&e))?;
    let local = format!("refs/heads/{}", req.push_branch);
    let commit = match &req.signer {
        None => repo
            .commit(None, &signature, &signature, message, &tree, &[parent])
            .map_err(|e| git_err(&e))?,
        Some(signer) => {
            let buffer = repo
                .commit_create_buffer(&signature, &signature, message, &tree, &[parent])
                .map_err(|e| git_err(&e))?;
            let content = std::str::from_utf8(&buffer).map_err(|_| {
                ImageError::Git(GitError::Git("the commit is not valid UTF-8".to_owned()))
            })?;
            let armored = signer.sign(content.as_bytes())?;
            repo.commit_signed(content, &armored, Some("gpgsig"))
                .map_err(|e| git_err(&e))?
        }
    };
    repo.reference(&local, commit, true, "image update automation")
        .and_then(|_| repo.set_head(&local))
        .map_err(|e| git_err(&e))?;
    Ok(commit)
}

/// Pushes the branch, then the refspec, each with the push options.
fn push_all(req: &UpdateRequest, remote: &Remote<'_>, repo: &Repository) -> Result<(), ImageError> {
    let local = format!("refs/heads/{}", req.push_branch);
    git::push_with_options(remote, repo, &format!("{local}:{local}"), &req.push_options)
        .map_err(map_git)?;
    if let Some(refspec) = &req.push_refspec {
        git::push_with_options(remote, repo, refspec, &req.push_options).map_err(|e| match e {
            // The branch push landed: retrying would find nothing to change and never push
            // the refspec, so a rejection here is a failure of its own.
            GitError::Rejected(why) => ImageError::Git(GitError::Git(format!(
                "push of refspec '{refspec}' rejected: {why}"
            ))),
            other => map_git(other),
        })?;
    }
    Ok(())
}

fn remote(req: &UpdateRequest) -> Remote<'_> {
    Remote {
        url: &req.url,
        credentials: &req.credentials,
        deadline: Instant::now() + req.timeout,
    }
}

/// What a run with `edit` would change on the branch as it is now, without committing or
/// pushing (`weir release --dry-run`): every `(file, change)`, none when nothing would change.
pub fn preview(
    req: &UpdateRequest,
    edit: &FileEdit<'_>,
) -> Result<Vec<(String, Change)>, ImageError> {
    let remote = remote(req);
    let scratch = tempfile::tempdir().map_err(ImageError::Scratch)?;
    let base = fetch_base(req, &remote, scratch.path())?;
    let parent = base
        .repo
        .find_commit(base.commit)
        .map_err(|e| git_err(&e))?;
    let tree = parent.tree().map_err(|e| git_err(&e))?;
    Ok(rewrite(req, &base.repo, &tree, edit)?.1)
}

/// One attempt: fetch the base, rewrite, commit, push.
fn attempt(
    req: &UpdateRequest,
    edit: &FileEdit<'_>,
    message: &CommitMessage<'_>,
) -> Result<UpdateOutcome, ImageError> {
    let remote = remote(req);
    let scratch = tempfile::tempdir().map_err(ImageError::Scratch)?;
    let base = fetch_base(req, &remote, scratch.path())?;
    let repo = &base.repo;
    let parent = repo.find_commit(base.commit).map_err(|e| git_err(&e))?;
    let tree = parent.tree().map_err(|e| git_err(&e))?;
    let (new_tree, changes) = rewrite(req, repo, &tree, edit)?;
    let Some(new_tree) = new_tree else {
        return Ok(UpdateOutcome::NoChange {
            head: base.commit.to_string(),
            revision: base.revision,
        });
    };
    let message = message(&changes)?;
    let commit = write_commit(req, repo, new_tree, &parent, &message)?;
    push_all(req, &remote, repo)?;
    Ok(UpdateOutcome::Pushed {
        commit: commit.to_string(),
        branch: req.push_branch.clone(),
        revision: revision(Some(&req.push_branch), commit),
        refspec: req.push_refspec.clone(),
        message,
        changes,
        rejected: 0,
    })
}

/// Runs the update, retrying on a rejected push (re-applying the change on the new head) up to
/// `max_attempts` times with doubling delays. `on_rejected` is called for each rejection.
pub fn run(req: &UpdateRequest, on_rejected: &dyn Fn()) -> Result<UpdateOutcome, ImageError> {
    run_edit(
        req,
        on_rejected,
        &|file, text| Ok(setters::apply_setters(file, text, &req.policies)?),
        &|changes| commit_message(req.template.as_ref(), &req.automation, changes),
    )
}

/// [`run`] with another edit of the files and another commit message (`weir release`); the
/// request's `policies`, `template` and `automation` are then unused.
pub fn run_edit(
    req: &UpdateRequest,
    on_rejected: &dyn Fn(),
    edit: &FileEdit<'_>,
    message: &CommitMessage<'_>,
) -> Result<UpdateOutcome, ImageError> {
    let mut delay = req.retry_delay;
    let mut rejected = 0;
    loop {
        match attempt(req, edit, message) {
            Err(ImageError::Git(GitError::Rejected(why))) => {
                rejected += 1;
                on_rejected();
                tracing::info!(why, rejected, "push rejected; retrying on the new head");
                if rejected >= req.max_attempts {
                    return Err(ImageError::PushRejected {
                        branch: req.push_branch.clone(),
                        attempts: rejected,
                    });
                }
                std::thread::sleep(delay);
                delay = delay.saturating_mul(2);
            }
            Ok(UpdateOutcome::Pushed {
                commit,
                branch,
                revision,
                refspec,
                message,
                changes,
                ..
            }) => {
                return Ok(UpdateOutcome::Pushed {
                    commit,
                    branch,
                    revision,
                    refspec,
                    message,
                    changes,
                    rejected,
                });
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_are_named_as_flux_names_them() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let commit = Oid::from_str(sha).unwrap();
        let named = |r: &str| revision(short_ref(r).as_deref(), commit);
        assert_eq!(named("refs/heads/main"), format!("main@sha1:{sha}"));
        assert_eq!(named("refs/heads/auto/x"), format!("auto/x@sha1:{sha}"));
        assert_eq!(named("refs/tags/v1.0.0"), format!("v1.0.0@sha1:{sha}"));
        assert_eq!(named("refs/pull/1/head"), format!("1/head@sha1:{sha}"));
        assert_eq!(revision(None, commit), format!("sha1:{sha}"));
    }

    #[test]
    fn update_paths_stay_inside_the_repository() {
        assert_eq!(normalize_path(None).unwrap(), "");
        assert_eq!(normalize_path(Some("./")).unwrap(), "");
        assert_eq!(
            normalize_path(Some("./clusters//my-cluster/")).unwrap(),
            "clusters/my-cluster"
        );
        assert!(normalize_path(Some("../elsewhere")).is_err());
    }

    #[test]
    fn fluxs_documented_template_renders() {
        let auto: weir_api::ImageUpdateAutomation = weir_api::manifest::from_yaml(include_str!(
            "../../../api/tests/fixtures/imageupdateautomation-full.yaml"
        ))
        .unwrap();
        let commit = auto.spec.git.unwrap().commit;
        let template = MessageTemplate {
            template: Template::parse(&commit.message_template.unwrap()).unwrap(),
            values: commit.message_template_values,
        };
        let automation = ("flux-system".to_owned(), "flux-system".to_owned());
        check_template(&template, &automation).unwrap();
        let change = Change {
            line: 3,
            setter: "flux-system:podinfo".into(),
            old_value: "ghcr.io/stefanprodan/podinfo:6.4.0".into(),
            new_value: "ghcr.io/stefanprodan/podinfo:6.5.0".into(),
            object: ObjectId {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                namespace: "apps".into(),
                name: "podinfo".into(),
            },
        };
        let message = commit_message(
            Some(&template),
            &automation,
            &[("clusters/my-cluster/podinfo.yaml".into(), change)],
        )
        .unwrap();
        assert_eq!(
            message,
            "Automated image update (production)\n\nAutomation name: flux-system/flux-system\n\n\
             Files:\n- clusters/my-cluster/podinfo.yaml\nObjects:\n- Deployment podinfo\n  Changes:\n    \
             - ghcr.io/stefanprodan/podinfo:6.4.0 -> ghcr.io/stefanprodan/podinfo:6.5.0\n"
        );
    }

    #[test]
    fn default_message_lists_every_change() {
        let change = Change {
            line: 7,
            setter: "apps:app".into(),
            old_value: "r/app:1.0.0".into(),
            new_value: "r/app:1.1.0".into(),
            object: ObjectId::default(),
        };
        let message = commit_message(
            None,
            &("apps".into(), "auto".into()),
            &[("deploy.yaml".into(), change.clone())],
        )
        .unwrap();
        assert_eq!(
            message,
            "Update from image update automation\n\n- deploy.yaml:7 apps:app: r/app:1.0.0 -> r/app:1.1.0\n"
        );
        let template = MessageTemplate {
            template: Template::parse(
                "{{ .AutomationObject }} ({{ .Values.env }}): {{ range .Changed.Changes }}{{ .Setter }} {{ .NewValue }}{{ end }}",
            )
            .unwrap(),
            values: BTreeMap::from([("env".to_owned(), "prod".to_owned())]),
        };
        assert_eq!(
            commit_message(
                Some(&template),
                &("apps".into(), "auto".into()),
                &[("deploy.yaml".into(), change)]
            )
            .unwrap(),
            "apps/auto (prod): apps:app r/app:1.1.0"
        );
    }
}
