//! Weir's rollback of a Kustomization: the annotation `weir.dev/rollback-to: <revision>` (such
//! as `main@sha1:<sha>`, a revision it applied before) pins it to that revision until the
//! annotation is removed (`weir rollback kustomization <name> --clear`, or `kubectl annotate …
//! weir.dev/rollback-to-`). Flux has no such thing (Flux v1 rolled back by git commits only;
//! `weir rollback --commit` still does that).
//!
//! The source controller keeps only a source's newest artifact, so the pinned content comes from
//! a GitRepository of the rollback's own: a copy of the Kustomization's source spec with
//! `ref.commit` set to the pinned commit (and `ref.branch` kept when the revision names the
//! branch the source follows), named after the Kustomization ([`source_name`]), labelled
//! [`ROLLBACK_OF_LABEL`], owned by the Kustomization when in its namespace. While pinned:
//! - the Kustomization applies that GitRepository's artifact once it holds the pinned commit,
//!   and waits (Ready=False, `ArtifactFailed`, Reconciling) until then;
//! - new commits on the source change nothing (the source's artifact is not read for content;
//!   its revision still gates `dependsOn` on the same source);
//! - Ready says `Rolled back to revision X (by user: reason)`, announced once by a `RolledBack`
//!   Event.
//!
//! Unpinned, a left-over rollback GitRepository is deleted and a `RollbackCleared` Event says
//! the Kustomization follows its source again. Deleting the Kustomization deletes it too (owner
//! reference, or [`delete_source`] across namespaces).

use std::{
    collections::BTreeMap,
    hash::{DefaultHasher, Hash, Hasher},
    time::Duration,
};

use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
    runtime::reflector::ObjectRef,
};
use weir_api::{
    Artifact, GitRepository, GitRepositorySpec, GoDuration, Kustomization,
    control::{
        ROLLBACK_TO,
        reasons::{ROLLBACK_CLEARED, ROLLED_BACK},
    },
    reasons,
    source::{GitRepositoryRef, ResolvedRef},
};
use weir_runtime::{Disposition, Failure};

use crate::{Context, error::KustomizeError};

/// Label on a rollback GitRepository: the name of the Kustomization it serves (cut to a label
/// value's 63 characters).
pub const ROLLBACK_OF_LABEL: &str = "weir.dev/rollback-of";
/// The field manager the rollback GitRepository is written with.
pub const FIELD_MANAGER: &str = "weir-kustomize-rollback";
/// How often the rollback GitRepository checks its (immutable) commit again.
const ROLLBACK_SOURCE_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);
/// The longest Kubernetes label value, and the longest name Weir gives a rollback source.
const MAX_NAME: usize = 63;

/// A revision a Kustomization is pinned to: `[<ref>@]sha1:<40 hex digits>`, as the source
/// controller records a git revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedRevision {
    /// The revision as written.
    pub revision: String,
    /// The ref before `@` (a branch, tag or ref name), if any.
    pub reference: Option<String>,
    /// The commit, lower-case hex.
    pub sha: String,
}

/// A revision that is not a git revision of a source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid revision '{0}': expected <branch>@sha1:<40 hex digits> or sha1:<40 hex digits>, as in status.lastAppliedRevision"
)]
pub struct InvalidRevision(pub String);

impl PinnedRevision {
    /// Parses a git revision as the source controller writes it.
    pub fn parse(text: &str) -> Result<Self, InvalidRevision> {
        let invalid = || InvalidRevision(text.to_owned());
        let (reference, digest) = match text.rsplit_once('@') {
            Some((reference, digest)) => (Some(reference), digest),
            None => (None, text),
        };
        let sha = digest.strip_prefix("sha1:").ok_or_else(invalid)?;
        let well_formed_ref = reference.is_none_or(|r| {
            !r.is_empty() && !r.chars().any(|c| c.is_whitespace() || c.is_control())
        });
        if sha.len() != 40 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) || !well_formed_ref {
            return Err(invalid());
        }
        Ok(Self {
            revision: text.to_owned(),
            reference: reference.map(str::to_owned),
            sha: sha.to_ascii_lowercase(),
        })
    }

    /// Whether the artifact revision `revision` is this commit.
    #[must_use]
    pub fn is_revision(&self, revision: &str) -> bool {
        revision
            .rsplit_once("sha1:")
            .is_some_and(|(_, sha)| sha.eq_ignore_ascii_case(&self.sha))
    }
}

/// Why a pinned Kustomization cannot apply its pinned revision (yet).
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error("annotation {ROLLBACK_TO}")]
    InvalidRevision(#[source] InvalidRevision),
    #[error(
        "rollback source GitRepository '{0}' exists and is not Weir's (no {ROLLBACK_OF_LABEL} label): rename it or remove the {ROLLBACK_TO} annotation"
    )]
    Taken(String),
    #[error("cannot write rollback source GitRepository '{name}'")]
    Write {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("waiting for rollback source GitRepository '{name}' to fetch revision {revision}{why}")]
    Waiting {
        name: String,
        revision: String,
        /// `: <its Ready message>` when it has one.
        why: String,
        after: Duration,
    },
}

impl Failure for RollbackError {
    fn reason(&self) -> &'static str {
        match self {
            Self::InvalidRevision(_) | Self::Taken(_) => reasons::INVALID_SPEC,
            Self::Write { .. } => reasons::RECONCILIATION_FAILED,
            Self::Waiting { .. } => reasons::ARTIFACT_FAILED,
        }
    }

    fn disposition(&self) -> Disposition {
        match self {
            // Only a change of the annotation (which starts a reconcile) or of the other object
            // fixes these.
            Self::InvalidRevision(_) | Self::Taken(_) => Disposition::Stalled,
            Self::Write { .. } => Disposition::Transient,
            // The rollback source's new artifact starts a reconcile at once; this is a fallback.
            Self::Waiting { after, .. } => Disposition::Waiting(*after),
        }
    }
}

/// The revision `ks` is pinned to, if it carries the annotation (malformed: an error).
#[must_use]
pub fn pinned(ks: &Kustomization) -> Option<Result<PinnedRevision, InvalidRevision>> {
    ks.annotations()
        .get(ROLLBACK_TO)
        .map(|text| PinnedRevision::parse(text.trim()))
}

/// The namespace and name of the rollback GitRepository of `ks`, whose source is in
/// `source_ns`: `<ks>-rollback` beside it, `<ks namespace>-<ks>-rollback` in another namespace,
/// cut to 63 characters with a hash of the whole when longer.
#[must_use]
pub fn source_name(ks_namespace: &str, ks_name: &str, source_ns: &str) -> String {
    let full = if ks_namespace == source_ns {
        format!("{ks_name}-rollback")
    } else {
        format!("{ks_namespace}-{ks_name}-rollback")
    };
    cut(&full)
}

/// `text`, or when longer than 63 characters its start and a hash of the whole.
fn cut(text: &str) -> String {
    if text.len() <= MAX_NAME {
        return text.to_owned();
    }
    let mut hasher = DefaultHasher::new();
    text.hash(&mut hasher);
    let hash = format!("{:08x}", hasher.finish() & 0xffff_ffff);
    let keep = MAX_NAME - hash.len() - 1;
    let start = text[..keep].trim_end_matches(['-', '.']);
    format!("{start}-{hash}")
}

/// The namespace of `ks`'s source.
fn source_namespace(ks: &Kustomization) -> String {
    ks.spec
        .source_ref
        .namespace
        .clone()
        .or_else(|| ks.namespace())
        .unwrap_or_default()
}

/// Whether `repo` is the rollback GitRepository of `ks` (its artifact starts a reconcile).
#[must_use]
pub fn uses_rollback_source(ks: &Kustomization, repo: &GitRepository) -> bool {
    let source_ns = source_namespace(ks);
    let ks_ns = ks.namespace().unwrap_or_default();
    repo.namespace().as_deref() == Some(source_ns.as_str())
        && repo.name_any() == source_name(&ks_ns, &ks.name_any(), &source_ns)
}

/// The rollback GitRepository of `ks` pinned at `pin`, made from its source `source`.
#[must_use]
pub fn rollback_source(
    ks: &Kustomization,
    source: &GitRepository,
    pin: &PinnedRevision,
) -> GitRepository {
    let ks_ns = ks.namespace().unwrap_or_default();
    let source_ns = source.namespace().unwrap_or_default();
    let name = source_name(&ks_ns, &ks.name_any(), &source_ns);
    // The branch is kept when the revision names the branch the source follows: the commit is
    // then checked to be on it, and the artifact's revision reads as the one pinned. A tag or
    // ref name is not a branch the source controller can check a commit against.
    let branch = match source.spec.resolved_ref() {
        ResolvedRef::Branch(b)
        | ResolvedRef::Commit {
            branch: Some(b), ..
        } if pin.reference.as_deref() == Some(b) => Some(b.to_owned()),
        _ => None,
    };
    let spec = GitRepositorySpec {
        reference: Some(GitRepositoryRef {
            branch,
            commit: Some(pin.sha.clone()),
            ..GitRepositoryRef::default()
        }),
        interval: GoDuration::from_secs(ROLLBACK_SOURCE_INTERVAL.as_secs()),
        suspend: false,
        ..source.spec.clone()
    };
    let mut repo = GitRepository::new(&name, spec);
    repo.metadata.namespace = Some(source_ns.clone());
    repo.metadata.labels = Some(BTreeMap::from([
        (ROLLBACK_OF_LABEL.to_owned(), cut(&ks.name_any())),
        ("app.kubernetes.io/managed-by".to_owned(), "weir".to_owned()),
    ]));
    if source_ns == ks_ns {
        repo.metadata.owner_references = ks.owner_ref(&()).map(|r| vec![r]);
    }
    repo
}

/// The artifact `ks` applies, and the source revision its same-source dependencies must have
/// applied: the source's artifact, or while pinned, its rollback GitRepository's once that
/// holds the pinned commit. Unpinned, a left-over rollback GitRepository is removed first.
pub async fn artifact(
    ks: &Kustomization,
    ctx: &Context,
    source: &GitRepository,
    source_key: &str,
    retry: Duration,
) -> Result<(Artifact, String), KustomizeError> {
    let current = source.status.as_ref().and_then(|s| s.artifact.clone());
    let Some(pin) = pinned(ks) else {
        clear(ks, ctx).await?;
        let artifact = current
            .ok_or_else(|| KustomizeError::ArtifactNotReady(source_key.to_owned(), retry))?;
        let revision = artifact.revision.clone();
        return Ok((artifact, revision));
    };
    let pin = pin.map_err(|e| KustomizeError::Rollback(RollbackError::InvalidRevision(e)))?;
    let artifact = pinned_artifact(ks, ctx, source, &pin, retry)
        .await
        .map_err(KustomizeError::Rollback)?;
    let followed = current.map_or_else(|| artifact.revision.clone(), |a| a.revision);
    Ok((artifact, followed))
}

/// Writes the rollback GitRepository when it is missing or differs, and returns its artifact
/// once it holds the pinned commit.
async fn pinned_artifact(
    ks: &Kustomization,
    ctx: &Context,
    source: &GitRepository,
    pin: &PinnedRevision,
    retry: Duration,
) -> Result<Artifact, RollbackError> {
    let desired = rollback_source(ks, source, pin);
    let name = desired.name_any();
    let namespace = desired.namespace().unwrap_or_default();
    let key = format!("{namespace}/{name}");
    let api = Api::<GitRepository>::namespaced(ctx.base.client.clone(), &namespace);
    ctx.metrics.request();
    let live = api
        .get_opt(&name)
        .await
        .map_err(|source| RollbackError::Write {
            name: key.clone(),
            source,
        })?;
    if let Some(live) = &live
        && !live.labels().contains_key(ROLLBACK_OF_LABEL)
    {
        return Err(RollbackError::Taken(key));
    }
    let current = live.filter(|l| {
        l.spec == desired.spec && l.metadata.owner_references == desired.metadata.owner_references
    });
    let Some(live) = current else {
        ctx.metrics.write();
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&desired),
        )
        .await
        .map_err(|source| RollbackError::Write {
            name: key.clone(),
            source,
        })?;
        tracing::info!(
            rollback_source = key,
            revision = pin.revision,
            "wrote rollback source"
        );
        return Err(waiting(key, pin, None, retry));
    };
    let status = live.status.as_ref();
    match status.and_then(|s| s.artifact.clone()) {
        Some(artifact) if pin.is_revision(&artifact.revision) => Ok(artifact),
        _ => {
            let ready = status
                .and_then(|s| weir_api::condition::find_condition(&s.conditions, "Ready"))
                .filter(|c| c.observed_generation == live.metadata.generation)
                .map(|c| c.message.clone());
            Err(waiting(key, pin, ready, retry))
        }
    }
}

fn waiting(
    name: String,
    pin: &PinnedRevision,
    ready: Option<String>,
    after: Duration,
) -> RollbackError {
    RollbackError::Waiting {
        name,
        revision: pin.revision.clone(),
        why: ready
            .filter(|m| !m.is_empty())
            .map(|m| format!(": {m}"))
            .unwrap_or_default(),
        after,
    }
}

/// Unpinned: deletes a left-over rollback GitRepository of `ks` (as the shared watch sees
/// them, so a steady state costs no request) and says so with a `RollbackCleared` Event.
async fn clear(ks: &Kustomization, ctx: &Context) -> Result<(), KustomizeError> {
    if delete_source(ks, ctx).await? {
        let source = &ks.spec.source_ref;
        let note = format!(
            "Rollback cleared: following {}/{} again",
            source.kind.as_str(),
            source.name
        );
        ctx.base
            .events
            .normal(ks, ROLLBACK_CLEARED, "Reconcile", &note)
            .await;
    }
    Ok(())
}

/// Deletes the rollback GitRepository of `ks` when the shared watch holds one; true when it
/// did. Also called when `ks` is deleted (an owner reference cannot cross namespaces).
pub async fn delete_source(ks: &Kustomization, ctx: &Context) -> Result<bool, KustomizeError> {
    let source_ns = source_namespace(ks);
    let name = source_name(
        &ks.namespace().unwrap_or_default(),
        &ks.name_any(),
        &source_ns,
    );
    let reference = ObjectRef::<GitRepository>::new(&name).within(&source_ns);
    let Some(found) = ctx.sources.get(&reference) else {
        return Ok(false);
    };
    if !found.labels().contains_key(ROLLBACK_OF_LABEL) {
        return Ok(false);
    }
    ctx.metrics.write();
    match Api::<GitRepository>::namespaced(ctx.base.client.clone(), &source_ns)
        .delete(&name, &DeleteParams::background())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(false),
        Err(e) => return Err(KustomizeError::Kube(e)),
    }
    tracing::info!(rollback_source = %reference, "deleted rollback source");
    Ok(true)
}

/// While pinned: Ready's message, `Rolled back to revision X (by user: reason)`.
#[must_use]
pub fn ready_message(ks: &Kustomization, revision: &str) -> Option<String> {
    pinned(ks)?.ok()?;
    Some(weir_api::control::rolled_back_message(
        ks.annotations(),
        revision,
    ))
}

/// The Event reason announcing a success with Ready message `message` when Ready said
/// `previous` before: `RolledBack` the first time a rollback is applied.
#[must_use]
pub fn announcement(
    ks: &Kustomization,
    message: &str,
    previous: Option<&str>,
) -> Option<&'static str> {
    (pinned(ks).is_some_and(|p| p.is_ok()) && previous != Some(message)).then_some(ROLLED_BACK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;
    use weir_api::control::{ROLLBACK_REASON, ROLLED_BACK_BY};

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    fn ks(name: &str, annotations: &[(&str, &str)]) -> Kustomization {
        let mut ks: Kustomization = serde_json::from_value(serde_json::json!({
            "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
            "kind": "Kustomization",
            "metadata": { "name": name, "namespace": "apps", "uid": "u-1" },
            "spec": {
                "interval": "10m", "prune": true, "path": "./deploy",
                "sourceRef": { "kind": "GitRepository", "name": "app" }
            }
        }))
        .unwrap();
        ks.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        ks
    }

    fn source(reference: serde_json::Value) -> GitRepository {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "source.toolkit.fluxcd.io/v1",
            "kind": "GitRepository",
            "metadata": { "name": "app", "namespace": "apps" },
            "spec": {
                "url": "https://git.example/app.git", "interval": "1m",
                "secretRef": { "name": "creds" }, "ignore": "/*\n!/deploy",
                "ref": reference
            }
        }))
        .unwrap()
    }

    #[test]
    fn revisions_parse_as_the_source_controller_writes_them() {
        let pin = PinnedRevision::parse(&format!("main@sha1:{SHA}")).unwrap();
        assert_eq!(pin.reference.as_deref(), Some("main"));
        assert_eq!(pin.sha, SHA);
        assert!(pin.is_revision(&format!("sha1:{SHA}")));
        assert!(!pin.is_revision("main@sha1:ffff"));
        let bare = PinnedRevision::parse(&format!("sha1:{}", SHA.to_uppercase())).unwrap();
        assert_eq!((bare.reference, bare.sha.as_str()), (None, SHA));
        let nested = PinnedRevision::parse(&format!("refs/heads/x@sha1:{SHA}")).unwrap();
        assert_eq!(nested.reference.as_deref(), Some("refs/heads/x"));
        for bad in [
            "main",
            "main@sha1:abc",
            &format!("main@sha256:{SHA}"),
            &format!("@sha1:{SHA}"),
            &format!("ma in@sha1:{SHA}"),
            &format!("main@sha1:{}", "g".repeat(40)),
            "",
        ] {
            let error = PinnedRevision::parse(bad).unwrap_err();
            assert!(error.to_string().contains("invalid revision"), "{bad}");
        }
    }

    #[test]
    fn rollback_sources_are_named_after_the_kustomization_and_cut_when_long() {
        assert_eq!(source_name("apps", "web", "apps"), "web-rollback");
        assert_eq!(source_name("apps", "web", "infra"), "apps-web-rollback");
        let long = "x".repeat(80);
        let cut = source_name("apps", &long, "apps");
        assert_eq!(cut.len(), MAX_NAME);
        assert_ne!(cut, source_name("apps", &"x".repeat(81), "apps"));
        assert_eq!(cut, source_name("apps", &long, "apps"));
    }

    #[test]
    fn the_rollback_source_copies_the_source_at_the_pinned_commit() {
        let ks = ks("web", &[]);
        let on_main = source(serde_json::json!({ "branch": "main" }));
        let pin = PinnedRevision::parse(&format!("main@sha1:{SHA}")).unwrap();
        let repo = rollback_source(&ks, &on_main, &pin);
        assert_eq!(repo.name_any(), "web-rollback");
        assert_eq!(repo.namespace().as_deref(), Some("apps"));
        let reference = repo.spec.reference.clone().unwrap();
        assert_eq!(reference.branch.as_deref(), Some("main"));
        assert_eq!(reference.commit.as_deref(), Some(SHA));
        assert_eq!(repo.spec.url, on_main.spec.url);
        assert_eq!(repo.spec.secret_ref, on_main.spec.secret_ref);
        assert_eq!(repo.spec.ignore, on_main.spec.ignore);
        assert_eq!(repo.spec.interval.as_std(), ROLLBACK_SOURCE_INTERVAL);
        assert_eq!(
            repo.labels().get(ROLLBACK_OF_LABEL).map(String::as_str),
            Some("web")
        );
        let owner = &repo.metadata.owner_references.clone().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("Kustomization", "u-1")
        );
        assert!(uses_rollback_source(&ks, &repo));
        assert!(!uses_rollback_source(&ks, &on_main));

        // A tag is no branch to check the commit against.
        let on_tag = source(serde_json::json!({ "tag": "v1" }));
        let pin = PinnedRevision::parse(&format!("v1@sha1:{SHA}")).unwrap();
        let repo = rollback_source(&ks, &on_tag, &pin);
        let reference = repo.spec.reference.unwrap();
        assert_eq!((reference.branch, reference.tag), (None, None));
        assert_eq!(reference.commit.as_deref(), Some(SHA));

        // In another namespace: no owner reference.
        let mut elsewhere = on_main;
        elsewhere.metadata.namespace = Some("infra".into());
        let repo = rollback_source(
            &ks,
            &elsewhere,
            &PinnedRevision::parse(&format!("main@sha1:{SHA}")).unwrap(),
        );
        assert_eq!(repo.name_any(), "apps-web-rollback");
        assert_eq!(repo.metadata.owner_references, None);
    }

    #[test]
    fn ready_says_who_rolled_back_and_why_and_is_announced_once() {
        let revision = format!("main@sha1:{SHA}");
        let pinned_ks = ks(
            "web",
            &[
                (ROLLBACK_TO, revision.as_str()),
                (ROLLED_BACK_BY, "alice"),
                (ROLLBACK_REASON, "incident 42"),
            ],
        );
        let message = ready_message(&pinned_ks, &revision).unwrap();
        assert_eq!(
            message,
            format!("Rolled back to revision {revision} (by alice: incident 42)")
        );
        assert_eq!(
            announcement(&pinned_ks, &message, Some("Applied revision: x")),
            Some(ROLLED_BACK)
        );
        assert_eq!(
            announcement(&pinned_ks, &message, Some(message.as_str())),
            None
        );

        let bare = ks("web", &[(ROLLBACK_TO, revision.as_str())]);
        assert_eq!(
            ready_message(&bare, &revision).unwrap(),
            format!("Rolled back to revision {revision}")
        );
        let unpinned = ks("web", &[]);
        assert_eq!(ready_message(&unpinned, &revision), None);
        assert_eq!(announcement(&unpinned, "Applied revision: x", None), None);
        let malformed = ks("web", &[(ROLLBACK_TO, "yesterday")]);
        assert_eq!(ready_message(&malformed, &revision), None);
    }

    #[test]
    fn failures_stall_on_bad_input_and_wait_for_the_artifact() {
        let invalid = RollbackError::InvalidRevision(InvalidRevision("x".into()));
        assert_eq!(invalid.disposition(), Disposition::Stalled);
        assert_eq!(
            weir_runtime::chain(&invalid),
            "annotation weir.dev/rollback-to: invalid revision 'x': expected <branch>@sha1:<40 hex digits> or sha1:<40 hex digits>, as in status.lastAppliedRevision"
        );
        let pin = PinnedRevision::parse(&format!("main@sha1:{SHA}")).unwrap();
        let wait = waiting(
            "apps/web-rollback".into(),
            &pin,
            Some("commit not found".into()),
            Duration::from_secs(5),
        );
        assert_eq!(wait.reason(), reasons::ARTIFACT_FAILED);
        assert_eq!(
            wait.disposition(),
            Disposition::Waiting(Duration::from_secs(5))
        );
        assert_eq!(
            wait.to_string(),
            format!(
                "waiting for rollback source GitRepository 'apps/web-rollback' to fetch revision main@sha1:{SHA}: commit not found"
            )
        );
    }
}
