//! The git side of an ImageUpdateAutomation: `fetch → rewrite markers → commit → push`, and on
//! a rejected push (the branch moved) the same again on the new head, with backoff. Never forced.
//! Blocking; run it on a blocking thread.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use git2::{FileMode, ObjectType, Oid, Repository, Signature, TreeWalkMode, TreeWalkResult};
use weir_api::ImageRef;
use weir_source::git::{self, Credentials, GitError, Remote};

use crate::{
    error::ImageError,
    setters::{self, Change, ObjectId},
    template::{Template, Value},
};

/// Everything one run needs; owned, so it can move to a blocking thread.
#[derive(Debug)]
pub struct UpdateRequest {
    /// Remote URL without credentials.
    pub url: String,
    pub credentials: Credentials,
    /// Limit of each git operation.
    pub timeout: Duration,
    /// The branch to check out, or `None` for the remote's default branch.
    pub checkout_branch: Option<String>,
    /// The branch to push to, or `None` for the checkout branch.
    pub push_branch: Option<String>,
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
    NoChange { head: String },
    /// A commit was pushed.
    Pushed {
        commit: String,
        branch: String,
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
    ImageError::Git(GitError::Git(e.message().to_owned()))
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

/// One attempt: fetch the base, rewrite, commit, push.
fn attempt(req: &UpdateRequest) -> Result<UpdateOutcome, ImageError> {
    let remote = Remote {
        url: &req.url,
        credentials: &req.credentials,
        deadline: Instant::now() + req.timeout,
    };
    let scratch = tempfile::tempdir().map_err(ImageError::Scratch)?;
    let refs = git::ls_remote(&remote, &scratch.path().join("ls")).map_err(map_git)?;
    let checkout = match &req.checkout_branch {
        Some(b) => b.clone(),
        None => refs
            .head
            .as_deref()
            .and_then(|h| h.strip_prefix("refs/heads/"))
            .map(str::to_owned)
            .ok_or_else(|| {
                ImageError::InvalidSource("the remote has no default branch".to_owned())
            })?,
    };
    let push = req.push_branch.clone().unwrap_or_else(|| checkout.clone());
    // Work on the push branch when it exists (earlier automation commits are on it), else
    // start it from the checkout branch.
    let base_branch = if refs.get(&format!("refs/heads/{push}")).is_some() {
        push.clone()
    } else if refs.get(&format!("refs/heads/{checkout}")).is_some() {
        checkout.clone()
    } else {
        return Err(ImageError::InvalidSource(format!(
            "branch '{checkout}' not found in the remote"
        )));
    };
    let tracking = format!("refs/remotes/origin/{base_branch}");
    let repo = git::fetch(
        &remote,
        &scratch.path().join("repo"),
        &[format!("+refs/heads/{base_branch}:{tracking}")],
        0,
    )
    .map_err(map_git)?;
    let base = repo
        .find_reference(&tracking)
        .and_then(|r| r.peel_to_commit())
        .map_err(|e| git_err(&e))?;
    let tree = base.tree().map_err(|e| git_err(&e))?;

    let mut changes = vec![];
    let mut builder = git2::build::TreeUpdateBuilder::new();
    for (file, blob, mode) in yaml_files(&repo, &tree, &req.path)? {
        let blob = repo.find_blob(blob).map_err(|e| git_err(&e))?;
        let Ok(text) = std::str::from_utf8(blob.content()) else {
            continue;
        };
        let (new_text, file_changes) = setters::apply_setters(&file, text, &req.policies)?;
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
        return Ok(UpdateOutcome::NoChange {
            head: base.id().to_string(),
        });
    }
    let new_tree = builder
        .create_updated(&repo, &tree)
        .and_then(|oid| repo.find_tree(oid))
        .map_err(|e| git_err(&e))?;
    let message = commit_message(req.template.as_ref(), &req.automation, &changes)?;
    let signature = Signature::now(&req.author_name, &req.author_email).map_err(|e| git_err(&e))?;
    let local = format!("refs/heads/{push}");
    let commit = repo
        .commit(
            Some(&local),
            &signature,
            &signature,
            &message,
            &new_tree,
            &[&base],
        )
        .map_err(|e| git_err(&e))?;
    git::push(&remote, &repo, &format!("{local}:{local}")).map_err(map_git)?;
    Ok(UpdateOutcome::Pushed {
        commit: commit.to_string(),
        branch: push,
        message,
        changes,
        rejected: 0,
    })
}

/// Runs the update, retrying on a rejected push (re-applying the change on the new head) up to
/// `max_attempts` times with doubling delays. `on_rejected` is called for each rejection.
pub fn run(req: &UpdateRequest, on_rejected: &dyn Fn()) -> Result<UpdateOutcome, ImageError> {
    let mut delay = req.retry_delay;
    let mut rejected = 0;
    loop {
        match attempt(req) {
            Err(ImageError::Git(GitError::Rejected(why))) => {
                rejected += 1;
                on_rejected();
                tracing::info!(why, rejected, "push rejected; retrying on the new head");
                if rejected >= req.max_attempts {
                    return Err(ImageError::PushRejected {
                        branch: req
                            .push_branch
                            .clone()
                            .or_else(|| req.checkout_branch.clone())
                            .unwrap_or_default(),
                        attempts: rejected,
                    });
                }
                std::thread::sleep(delay);
                delay = delay.saturating_mul(2);
            }
            Ok(UpdateOutcome::Pushed {
                commit,
                branch,
                message,
                changes,
                ..
            }) => {
                return Ok(UpdateOutcome::Pushed {
                    commit,
                    branch,
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
