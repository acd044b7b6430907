//! `weir history kustomization|helmrelease <name>`: what an object applied and what people did
//! to it.
//!
//! - **Revisions**: a Kustomization's `status.history` (newest first, one snapshot per distinct
//!   set of manifests and outcome), each git revision with its commit's author, time and
//!   subject; a HelmRelease's releases from its `status.history`, with chart and status.
//! - **Commits** are read from the source's git: the GitRepository's URL, with its own
//!   credentials (read with the user's kubeconfig, so the user must be allowed to read that
//!   Secret), fetching only the refs the revisions name into a bare scratch repository. When the
//!   source cannot be read, the revisions are still printed, with the reason the commits are
//!   missing.
//! - **Control**: the lock or rollback in place now (the `weir.dev/` labels and annotations on the
//!   object and on the workloads of its inventory), and the past ones from the Events with the
//!   control reasons of `weir_api::control::reasons` about the object or those workloads, oldest
//!   first. Events expire (an hour by default), so the past is as long as the cluster keeps it;
//!   a manual release is also its git commit, listed with the revisions once applied.

use std::{collections::BTreeMap, process::ExitCode, time::Duration};

use k8s_openapi::api::core::v1::Event;
use kube::{Api, Client, ResourceExt, api::ListParams};
use serde::Serialize;
use weir_api::{
    GitRepository, HelmRelease, Kustomization,
    control::{ROLLBACK_REASON, ROLLBACK_TO, ROLLED_BACK_AT, ROLLED_BACK_BY},
    kustomize::ObjMetadata,
    source::GitRepositoryRef,
};

use crate::{
    common::{AppliedObject, Applier, Output},
    get::BoxError,
    tree::Node,
};

/// Flags of `weir history`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub object: AppliedObject,
    /// How to print the history.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Everything `weir history` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct History {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// Newest first.
    pub revisions: Vec<AppliedRevision>,
    /// Why the commits of the revisions are missing, when they are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commits_unavailable: Option<String>,
    /// Locks and rollbacks in place now.
    pub current: Vec<Current>,
    /// Control Events, oldest first.
    pub events: Vec<ControlEvent>,
}

/// One applied revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppliedRevision {
    /// The source revision (`main@sha1:…`), or the Helm release (`v3`).
    pub revision: String,
    /// The outcome: the last reconcile's reason, or Helm's status.
    pub status: String,
    /// When it was last applied (RFC 3339).
    pub applied: String,
    /// For a HelmRelease: `<chart>@<version>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chart: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<Commit>,
}

/// A git commit's author, time and subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Commit {
    pub sha: String,
    pub author: String,
    pub email: String,
    /// The author's time (RFC 3339, UTC).
    pub time: String,
    pub subject: String,
}

/// A lock or rollback in place now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Current {
    /// `Kind/name`.
    pub object: String,
    /// `locked by alice: incident 42 (until …)`, `rolled back to … by bob at …: why`.
    pub description: String,
}

/// A control Event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ControlEvent {
    /// When (RFC 3339), if the Event says.
    pub time: Option<String>,
    pub reason: String,
    /// `Kind/name`.
    pub object: String,
    pub message: String,
}

/// Runs `weir history`.
pub fn run(args: &Args) -> ExitCode {
    crate::common::block_on("history", async {
        let AppliedObject {
            kind,
            name,
            cluster,
        } = &args.object;
        let (client, namespace) = cluster.connect().await?;
        let history = match kind {
            Applier::Kustomization => kustomization(&client, &namespace, name).await?,
            Applier::HelmRelease => helm_release(&client, &namespace, name).await?,
        };
        render(&history, args.output)
    })
}

async fn kustomization(client: &Client, namespace: &str, name: &str) -> Result<History, BoxError> {
    let ks = Api::<Kustomization>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await?
        .ok_or_else(|| crate::common::not_found("Kustomization", namespace, name))?;
    let status = ks.status.clone().unwrap_or_default();
    let mut revisions: Vec<AppliedRevision> = status
        .history
        .iter()
        .map(|s| AppliedRevision {
            revision: s.metadata.get("revision").cloned().unwrap_or_default(),
            status: s.last_reconciled_status.clone(),
            applied: rfc3339(s.last_reconciled.0),
            chart: None,
            commit: None,
        })
        .collect();
    // A Kustomization written before `status.history` existed: its last applied revision.
    if revisions.is_empty()
        && let Some(revision) = status.last_applied_revision.clone()
    {
        revisions.push(AppliedRevision {
            revision,
            status: String::new(),
            applied: String::new(),
            chart: None,
            commit: None,
        });
    }
    let commits_unavailable = match commits(client, &ks, &revisions).await {
        Ok(commits) => {
            for revision in &mut revisions {
                revision.commit = git_commit_of(&revision.revision)
                    .and_then(|(_, sha)| commits.get(sha).cloned());
            }
            let missing = revisions
                .iter()
                .filter(|r| r.commit.is_none() && git_commit_of(&r.revision).is_some())
                .count();
            (missing > 0).then(|| {
                format!("{missing} commit(s) not found in the source's git (history rewritten?)")
            })
        }
        Err(why) => Some(why),
    };
    let mut history = History {
        kind: "Kustomization".to_owned(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        revisions,
        commits_unavailable,
        current: vec![],
        events: vec![],
    };
    control(client, &mut history, ks.annotations()).await?;
    Ok(history)
}

async fn helm_release(client: &Client, namespace: &str, name: &str) -> Result<History, BoxError> {
    let hr = Api::<HelmRelease>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await?
        .ok_or_else(|| crate::common::not_found("HelmRelease", namespace, name))?;
    let revisions = hr
        .status
        .as_ref()
        .map(|s| s.history.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|s| AppliedRevision {
            revision: format!("v{}", s.version),
            status: s.status.clone(),
            applied: s.last_deployed.clone(),
            chart: Some(format!("{}@{}", s.chart_name, s.chart_version)),
            commit: None,
        })
        .collect();
    let mut history = History {
        kind: "HelmRelease".to_owned(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        revisions,
        commits_unavailable: None,
        current: vec![],
        events: vec![],
    };
    control(client, &mut history, hr.annotations()).await?;
    Ok(history)
}

/// Fills in the locks and rollbacks in place now and the control Events, about the object
/// (whose annotations are `annotations`) and the workloads of its inventory.
async fn control(
    client: &Client,
    history: &mut History,
    annotations: &BTreeMap<String, String>,
) -> Result<(), BoxError> {
    let root = ObjMetadata {
        namespace: history.namespace.clone(),
        name: history.name.clone(),
        group: String::new(),
        kind: history.kind.clone(),
    };
    let group = match history.kind.as_str() {
        "Kustomization" => Applier::Kustomization.group(),
        _ => Applier::HelmRelease.group(),
    };
    let tree = crate::tree::build(
        client,
        &ObjMetadata {
            group: group.to_owned(),
            ..root.clone()
        },
    )
    .await?;
    // The object and the workloads it applied, not those of nested Kustomizations.
    let mut objects: Vec<&Node> = vec![&tree];
    objects.extend(
        tree.resources
            .iter()
            .filter(|n| crate::tree::is_lockable(&n.group, &n.kind)),
    );
    if let Some(description) = rollback_description(annotations) {
        history.current.push(Current {
            object: format!("{}/{}", history.kind, history.name),
            description,
        });
    }
    for node in &objects {
        if let Some(lock) = &node.lock {
            history.current.push(Current {
                object: format!("{}/{}", node.kind, node.name),
                description: lock.description.clone(),
            });
        }
    }
    let keys: Vec<(String, String, String)> = objects
        .iter()
        .map(|n| (n.kind.clone(), n.namespace.clone(), n.name.clone()))
        .collect();
    let mut namespaces: Vec<&str> = keys.iter().map(|(_, ns, _)| ns.as_str()).collect();
    namespaces.sort_unstable();
    namespaces.dedup();
    let mut events = vec![];
    for namespace in namespaces {
        let list = Api::<Event>::namespaced(client.clone(), namespace)
            .list(&ListParams::default())
            .await?;
        events.extend(control_events(&list.items, &keys));
    }
    events.sort_by(|a, b| a.time.cmp(&b.time));
    history.events = events;
    Ok(())
}

/// The control Events about the objects of `keys` (kind, namespace, name), in the list's order.
/// Corrected drift counts too: a Kustomization's event lines that say who drifted what
/// (`… configured (drift: kubectl-scale changed .spec.replicas)`), and a HelmRelease's drift
/// events, shown with the reason `Drift`.
fn control_events(events: &[Event], keys: &[(String, String, String)]) -> Vec<ControlEvent> {
    events
        .iter()
        .filter_map(|e| {
            let reason = e.reason.as_deref().unwrap_or_default();
            let message = e.message.as_deref().unwrap_or_default();
            if crate::events::CONTROL_REASONS.contains(&reason) {
                return Some((e, reason.to_owned(), message.to_owned()));
            }
            if matches!(
                reason,
                weir_api::helm_release::DRIFT_DETECTED_REASON
                    | weir_api::helm_release::DRIFT_CORRECTED_REASON
            ) {
                return Some((e, DRIFT.to_owned(), message.to_owned()));
            }
            let drift: Vec<&str> = message
                .lines()
                .filter(|line| line.contains(" (drift: "))
                .collect();
            (!drift.is_empty()).then(|| (e, DRIFT.to_owned(), drift.join("\n")))
        })
        .filter(|(e, _, _)| {
            let o = &e.involved_object;
            let key = (
                o.kind.clone().unwrap_or_default(),
                o.namespace.clone().unwrap_or_default(),
                o.name.clone().unwrap_or_default(),
            );
            keys.contains(&key)
        })
        .map(|(e, reason, message)| ControlEvent {
            time: crate::events::last_seen(e).map(rfc3339),
            reason,
            object: format!(
                "{}/{}",
                e.involved_object.kind.as_deref().unwrap_or_default(),
                e.involved_object.name.as_deref().unwrap_or_default()
            ),
            message,
        })
        .collect()
}

/// The reason `weir history` shows corrected or detected drift under.
const DRIFT: &str = "Drift";

/// `rolled back to <revision> by <who> at <when>: <why>`, from the `weir.dev/` annotations.
pub(crate) fn rollback_description(annotations: &BTreeMap<String, String>) -> Option<String> {
    let to = annotations.get(ROLLBACK_TO)?;
    let mut line = format!("rolled back to {to}");
    if let Some(by) = annotations.get(ROLLED_BACK_BY) {
        line.extend([" by ", by.as_str()]);
    }
    if let Some(at) = annotations.get(ROLLED_BACK_AT) {
        line.extend([" at ", at.as_str()]);
    }
    if let Some(why) = annotations.get(ROLLBACK_REASON).filter(|r| !r.is_empty()) {
        line.extend([": ", why.as_str()]);
    }
    Some(line)
}

pub(crate) fn rfc3339(t: k8s_openapi::jiff::Timestamp) -> String {
    chrono::DateTime::from_timestamp(t.as_second(), 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// The ref (if named) and commit of a git revision: `main@sha1:<hex>`, `refs/pull/1/head@sha1:…`
/// or `sha1:<hex>`. None for anything else (an OCI digest, a chart version).
#[must_use]
pub fn git_commit_of(revision: &str) -> Option<(Option<&str>, &str)> {
    let (reference, digest) = match revision.rsplit_once('@') {
        Some((reference, digest)) => (Some(reference).filter(|r| !r.is_empty()), digest),
        None => (None, revision),
    };
    let sha = digest.strip_prefix("sha1:")?;
    (sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit())).then_some((reference, sha))
}

/// What to fetch so that the commits of `revisions` are there: the branch or tag each names (as
/// the GitRepository's `spec.ref` says which it is), every branch for a bare commit.
#[must_use]
pub fn refspecs(revisions: &[&str], reference: Option<&GitRepositoryRef>) -> Vec<String> {
    let tags = reference.is_some_and(|r| r.tag.is_some() || r.semver.is_some());
    let mut specs: Vec<String> = revisions
        .iter()
        .filter_map(|r| git_commit_of(r))
        .map(|(name, _)| match name {
            None => "+refs/heads/*:refs/remotes/origin/*".to_owned(),
            Some(name) if name.starts_with("refs/") => format!("+{name}:{name}"),
            Some(tag) if tags => format!("+refs/tags/{tag}:refs/tags/{tag}"),
            Some(branch) => format!("+refs/heads/{branch}:refs/remotes/origin/{branch}"),
        })
        .collect();
    specs.sort();
    specs.dedup();
    specs
}

/// The commits of the revisions, by sha, from the Kustomization's GitRepository; or why they
/// cannot be read.
async fn commits(
    client: &Client,
    ks: &Kustomization,
    revisions: &[AppliedRevision],
) -> Result<BTreeMap<String, Commit>, String> {
    let names: Vec<&str> = revisions.iter().map(|r| r.revision.as_str()).collect();
    let wanted: Vec<String> = names
        .iter()
        .filter_map(|r| git_commit_of(r))
        .map(|(_, sha)| sha.to_owned())
        .collect();
    if wanted.is_empty() {
        return Ok(BTreeMap::new());
    }
    let source = &ks.spec.source_ref;
    let namespace = source
        .namespace
        .clone()
        .or_else(|| ks.namespace())
        .unwrap_or_default();
    let unavailable = |why: String| format!("commit details unavailable: {why}");
    let repo = Api::<GitRepository>::namespaced(client.clone(), &namespace)
        .get_opt(&source.name)
        .await
        .map_err(|e| {
            unavailable(format!(
                "cannot read GitRepository '{namespace}/{}': {e}",
                source.name
            ))
        })?
        .ok_or_else(|| {
            unavailable(format!(
                "GitRepository '{namespace}/{}' not found",
                source.name
            ))
        })?;
    let access = weir_git::credentials::for_repository(client, &repo)
        .await
        .map_err(|e| unavailable(weir_runtime::chain(&e)))?;
    let specs = refspecs(&names, repo.spec.reference.as_ref());
    let timeout = repo.spec.timeout.as_std().max(Duration::from_secs(20));
    let redactor = access.redactor.clone();
    let fetch =
        tokio::task::spawn_blocking(move || read_commits(&access, &specs, &wanted, timeout));
    match tokio::time::timeout(timeout + Duration::from_secs(5), fetch).await {
        Err(_) => Err(unavailable(format!(
            "fetching {} timed out after {timeout:?}",
            repo.spec.url
        ))),
        Ok(Err(join)) => Err(unavailable(format!("the fetch failed: {join}"))),
        Ok(Ok(result)) => result.map_err(|why| unavailable(redactor.redact(&why))),
    }
}

/// Fetches `specs` into a bare scratch repository and reads the `wanted` commits found there.
fn read_commits(
    access: &weir_git::credentials::Access,
    specs: &[String],
    wanted: &[String],
    timeout: Duration,
) -> Result<BTreeMap<String, Commit>, String> {
    weir_git::bound_socket_waits();
    let scratch =
        tempfile::tempdir().map_err(|e| format!("cannot make a scratch directory: {e}"))?;
    let remote = weir_git::Remote {
        url: &access.url,
        credentials: &access.credentials,
        deadline: std::time::Instant::now() + timeout,
    };
    let repo = weir_git::fetch(&remote, scratch.path(), specs, 0)
        .map_err(|e| format!("cannot fetch {}: {}", access.url, weir_runtime::chain(&e)))?;
    let mut commits = BTreeMap::new();
    for sha in wanted {
        let Ok(commit) = git2::Oid::from_str(sha).and_then(|oid| repo.find_commit(oid)) else {
            continue;
        };
        let author = commit.author();
        let time = chrono::DateTime::from_timestamp(author.when().seconds(), 0)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default();
        commits.insert(
            sha.clone(),
            Commit {
                sha: sha.clone(),
                author: String::from_utf8_lossy(author.name_bytes()).into_owned(),
                email: String::from_utf8_lossy(author.email_bytes()).into_owned(),
                time,
                subject: String::from_utf8_lossy(commit.summary_bytes().unwrap_or_default())
                    .into_owned(),
            },
        );
    }
    Ok(commits)
}

/// The history as `output` says.
pub fn render(history: &History, output: Output) -> Result<String, BoxError> {
    Ok(crate::common::structured(history, output)?.unwrap_or_else(|| text(history)))
}

/// The history as text: the revisions table, then what is in place now, then the Events.
#[must_use]
pub fn text(history: &History) -> String {
    let mut out = format!(
        "{} {}/{}\n\n",
        history.kind, history.namespace, history.name
    );
    if history.revisions.is_empty() {
        out.push_str("No revisions applied yet.\n");
    } else {
        out.push_str(&revisions_table(history));
    }
    if let Some(why) = &history.commits_unavailable {
        out.extend(["(", why.as_str(), ")\n"]);
    }
    out.push_str("\nIn place now:\n");
    if history.current.is_empty() {
        out.push_str("  no lock, no rollback\n");
    }
    for current in &history.current {
        out.extend(["  ", &current.object, ": ", &current.description, "\n"]);
    }
    out.push_str("\nLocks, rollbacks and releases:\n");
    if history.events.is_empty() {
        out.push_str("  none recorded in the cluster's Events\n");
    } else {
        let mut rows = vec![
            ["TIME", "EVENT", "OBJECT", "MESSAGE"]
                .map(str::to_owned)
                .to_vec(),
        ];
        rows.extend(history.events.iter().map(|e| {
            vec![
                e.time.clone().unwrap_or_else(|| "-".to_owned()),
                e.reason.clone(),
                e.object.clone(),
                e.message.trim().to_owned(),
            ]
        }));
        out.push_str(&crate::common::table(&rows));
    }
    out
}

fn revisions_table(history: &History) -> String {
    let helm = history.kind == "HelmRelease";
    let mut rows = vec![if helm {
        ["RELEASE", "CHART", "STATUS", "DEPLOYED"]
            .map(str::to_owned)
            .to_vec()
    } else {
        [
            "REVISION",
            "APPLIED",
            "STATUS",
            "AUTHOR",
            "COMMITTED",
            "SUBJECT",
        ]
        .map(str::to_owned)
        .to_vec()
    }];
    for r in &history.revisions {
        rows.push(if helm {
            vec![
                r.revision.clone(),
                r.chart.clone().unwrap_or_default(),
                r.status.clone(),
                r.applied.clone(),
            ]
        } else {
            let commit = r.commit.as_ref();
            let field = |f: fn(&Commit) -> &String| commit.map(f).cloned().unwrap_or_default();
            vec![
                crate::get::short_revision(&r.revision),
                r.applied.clone(),
                r.status.clone(),
                commit
                    .map(|c| format!("{} <{}>", c.author, c.email))
                    .unwrap_or_default(),
                field(|c| &c.time),
                field(|c| &c.subject),
            ]
        });
    }
    crate::common::table(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA_A: &str = "0123456789abcdef0123456789abcdef01234567";
    const SHA_B: &str = "89abcdef0123456789abcdef0123456789abcdef";

    fn sample() -> History {
        History {
            kind: "Kustomization".into(),
            namespace: "apps".into(),
            name: "app".into(),
            revisions: vec![
                AppliedRevision {
                    revision: format!("main@sha1:{SHA_B}"),
                    status: "ReconciliationSucceeded".into(),
                    applied: "2026-12-08T01:10:00Z".into(),
                    chart: None,
                    commit: Some(Commit {
                        sha: SHA_B.into(),
                        author: "Alice".into(),
                        email: "alice@example.com".into(),
                        time: "2026-12-08T01:09:00Z".into(),
                        subject: "Scale web to 3".into(),
                    }),
                },
                AppliedRevision {
                    revision: format!("main@sha1:{SHA_A}"),
                    status: "HealthCheckFailed".into(),
                    applied: "2026-12-08T01:00:00Z".into(),
                    chart: None,
                    commit: None,
                },
            ],
            commits_unavailable: Some("1 commit(s) not found in the source's git".into()),
            current: vec![Current {
                object: "Deployment/web".into(),
                description: "locked by alice: incident 42".into(),
            }],
            events: vec![ControlEvent {
                time: Some("2026-12-08T01:05:00Z".into()),
                reason: "Locked".into(),
                object: "Deployment/web".into(),
                message: "locked by alice: incident 42".into(),
            }],
        }
    }

    #[test]
    fn a_kustomizations_history_reads_as_revisions_then_control() {
        assert_eq!(
            text(&sample()),
            "\
Kustomization apps/app

REVISION             APPLIED                STATUS                    AUTHOR                      COMMITTED              SUBJECT
main@sha1:89abcdef   2026-12-08T01:10:00Z   ReconciliationSucceeded   Alice <alice@example.com>   2026-12-08T01:09:00Z   Scale web to 3
main@sha1:01234567   2026-12-08T01:00:00Z   HealthCheckFailed
(1 commit(s) not found in the source's git)

In place now:
  Deployment/web: locked by alice: incident 42

Locks, rollbacks and releases:
TIME                   EVENT    OBJECT           MESSAGE
2026-12-08T01:05:00Z   Locked   Deployment/web   locked by alice: incident 42
"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render(&sample(), Output::Json).unwrap()).unwrap();
        assert_eq!(json["revisions"][0]["commit"]["subject"], "Scale web to 3");
        assert_eq!(json["current"][0]["object"], "Deployment/web");
    }

    #[test]
    fn a_helm_releases_history_lists_releases_without_commits() {
        let history = History {
            kind: "HelmRelease".into(),
            revisions: vec![AppliedRevision {
                revision: "v2".into(),
                status: "deployed".into(),
                applied: "2026-12-08T01:00:00Z".into(),
                chart: Some("podinfo@6.5.0".into()),
                commit: None,
            }],
            commits_unavailable: None,
            current: vec![],
            events: vec![],
            ..sample()
        };
        assert_eq!(
            text(&history),
            "\
HelmRelease apps/app

RELEASE   CHART           STATUS     DEPLOYED
v2        podinfo@6.5.0   deployed   2026-12-08T01:00:00Z

In place now:
  no lock, no rollback

Locks, rollbacks and releases:
  none recorded in the cluster's Events
"
        );
    }

    #[test]
    fn git_revisions_name_their_ref_and_commit() {
        assert_eq!(
            git_commit_of(&format!("main@sha1:{SHA_A}")),
            Some((Some("main"), SHA_A))
        );
        assert_eq!(git_commit_of(&format!("sha1:{SHA_A}")), Some((None, SHA_A)));
        assert_eq!(
            git_commit_of(&format!("refs/pull/1/head@sha1:{SHA_A}")),
            Some((Some("refs/pull/1/head"), SHA_A))
        );
        assert_eq!(git_commit_of("sha256:abcd"), None);
        assert_eq!(git_commit_of("main@sha1:short"), None);
        assert_eq!(git_commit_of("6.5.0"), None);
    }

    #[test]
    fn the_fetch_asks_for_the_refs_the_revisions_name() {
        let a = format!("main@sha1:{SHA_A}");
        let b = format!("main@sha1:{SHA_B}");
        let bare = format!("sha1:{SHA_A}");
        assert_eq!(
            refspecs(&[&a, &b, "6.5.0"], None),
            ["+refs/heads/main:refs/remotes/origin/main"]
        );
        assert_eq!(
            refspecs(&[&bare], None),
            ["+refs/heads/*:refs/remotes/origin/*"]
        );
        let tag = GitRepositoryRef {
            tag: Some("v1".into()),
            ..GitRepositoryRef::default()
        };
        let v1 = format!("v1@sha1:{SHA_A}");
        assert_eq!(refspecs(&[&v1], Some(&tag)), ["+refs/tags/v1:refs/tags/v1"]);
    }

    #[test]
    fn control_events_are_those_with_control_reasons_about_the_objects() {
        let with_message = |kind: &str, name: &str, reason: &str, message: &str| -> Event {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "e", "namespace": "apps"},
                "involvedObject": {"kind": kind, "name": name, "namespace": "apps"},
                "reason": reason, "message": message,
                "lastTimestamp": "2026-12-08T01:05:00Z",
            }))
            .unwrap()
        };
        let event = |kind: &str, name: &str, reason: &str| {
            with_message(kind, name, reason, &format!("{reason} {name}"))
        };
        let events = [
            event("Deployment", "web", "Locked"),
            event("Deployment", "web", "ScalingReplicaSet"),
            event("Deployment", "other", "Locked"),
            event("Kustomization", "app", "RolledBack"),
            with_message(
                "Kustomization",
                "app",
                "ReconciliationSucceeded",
                "ConfigMap/apps/a configured\nDeployment/apps/web configured (drift: kubectl-scale changed .spec.replicas)\nApplied revision: main@sha1:0123",
            ),
            event("Kustomization", "app", "ReconciliationSucceeded"),
        ];
        let keys = vec![
            ("Kustomization".into(), "apps".into(), "app".into()),
            ("Deployment".into(), "apps".into(), "web".into()),
        ];
        let found = control_events(&events, &keys);
        let messages: Vec<&str> = found.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "Locked web",
                "RolledBack app",
                "Deployment/apps/web configured (drift: kubectl-scale changed .spec.replicas)"
            ]
        );
        assert_eq!(found[2].reason, "Drift");
        assert_eq!(found[0].time.as_deref(), Some("2026-12-08T01:05:00Z"));
    }

    #[test]
    fn a_rollback_says_to_what_by_whom_and_why() {
        let annotations = BTreeMap::from([
            (ROLLBACK_TO.to_owned(), "main@sha1:0123".to_owned()),
            (ROLLED_BACK_BY.to_owned(), "bob".to_owned()),
            (ROLLBACK_REASON.to_owned(), "bad deploy".to_owned()),
        ]);
        assert_eq!(
            rollback_description(&annotations).as_deref(),
            Some("rolled back to main@sha1:0123 by bob: bad deploy")
        );
        assert_eq!(rollback_description(&BTreeMap::new()), None);
    }
}
