//! `weir rollback`: Flux v1's rollback, brought back as changes to resources that `kubectl`
//! sees and can undo, written with the user's own kubeconfig (so RBAC decides: a user who may
//! not patch the object cannot roll it back).
//!
//! - `weir rollback kustomization <name> [--to <revision>]` pins the Kustomization to a revision
//!   it applied before (by default the newest successful one in `status.history` other than
//!   the one applied now): the annotation `weir.dev/rollback-to`, with who (the user the API
//!   server authenticated), when and why (`--reason`). The kustomize controller applies that
//!   revision and holds it through new commits (see `weir_kustomize::rollback`) until
//!   `--clear` (or `kubectl annotate … weir.dev/rollback-to-`).
//! - `weir rollback helmrelease <name> [--to N]` does the same with a Helm release revision
//!   found in Helm's storage (by default the deployed one before the latest): the helm
//!   controller runs `helm rollback` to it once, then holds it (no upgrade) until cleared.
//! - `--commit` (Kustomization only) writes the rollback to git instead, as Flux v1 did: a
//!   commit on the source branch whose tree is the target revision's (see [`crate::revert`]),
//!   pushed with the source's credentials, then a reconcile is requested.
//!
//! Each command asks for a reconcile in the same patch and waits (a watch) for the
//! controller's answer. Bad input (no such object, a malformed revision, a revision never
//! applied, a Helm revision not in storage) is refused before anything is written.
//!
//! Exit codes: 0 done, 1 refused or failed, 2 usage.

use std::{process::ExitCode, time::Duration};

use chrono::{SecondsFormat, Utc};
use clap::ValueEnum;
use futures::StreamExt as _;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    core::object::HasStatus,
    runtime::{WatchStreamExt as _, watcher},
};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use weir_api::{
    ConditionStatus, HelmRelease, Kustomization, RECONCILE_REQUESTED_AT_ANNOTATION,
    condition::{find_condition, types},
    control::{ROLLBACK_REASON, ROLLBACK_TO, ROLLED_BACK_AT, ROLLED_BACK_BY},
    reasons,
    status::ObjectStatus,
};
use weir_kustomize::rollback::PinnedRevision;

use crate::get::BoxError;

/// The field manager the rollback annotations are written with.
pub const FIELD_MANAGER: &str = "weir-rollback";
/// The Ready message prefix of a rolled-back object (both controllers).
const ROLLED_BACK_PREFIX: &str = "Rolled back to revision ";

/// The kinds that can be rolled back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    #[value(name = "kustomization", alias = "ks")]
    Kustomization,
    #[value(name = "helmrelease", alias = "hr")]
    HelmRelease,
}

/// Flags of `weir rollback`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The object's kind.
    #[arg(value_enum)]
    pub kind: Kind,
    /// The object's name.
    pub name: String,
    /// The revision to go back to: a source revision (`main@sha1:<sha>`, or a commit sha or its
    /// first 7+ digits) for a Kustomization, a Helm release revision number for a HelmRelease.
    /// By default the previous good one.
    #[arg(long, conflicts_with = "clear")]
    pub to: Option<String>,
    /// End the rollback: follow the source (or the desired chart and values) again.
    #[arg(long)]
    pub clear: bool,
    /// Write a revert commit to the source branch instead of pinning (Kustomization only).
    #[arg(long, conflicts_with = "clear")]
    pub commit: bool,
    /// Why (recorded in the annotation, the Ready message, the Event and the commit).
    #[arg(short = 'm', long)]
    pub reason: Option<String>,
    /// How to reach the cluster, and the namespace.
    #[command(flatten)]
    pub cluster: crate::common::Cluster,
    /// How long to wait for the controller's answer.
    #[arg(long, default_value = "5m", value_parser = crate::controllers::parse_duration)]
    pub timeout: Duration,
}

/// Runs `weir rollback`.
pub fn run(args: &Args) -> ExitCode {
    if args.commit && args.kind == Kind::HelmRelease {
        eprintln!(
            "weir rollback: --commit rolls back a Kustomization's source; a HelmRelease is rolled back in Helm's storage"
        );
        return ExitCode::from(2);
    }
    let Some(runtime) = crate::common::runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(rollback(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("✗ {}", weir_runtime::chain(&*error));
            ExitCode::FAILURE
        }
    }
}

async fn rollback(args: &Args) -> Result<bool, BoxError> {
    let (client, namespace) = args.cluster.connect().await?;
    let target = Object {
        client,
        namespace,
        name: args.name.clone(),
        timeout: args.timeout,
    };
    match (args.kind, args.clear, args.commit) {
        (Kind::Kustomization, true, _) => target.clear::<Kustomization>().await,
        (Kind::HelmRelease, true, _) => target.clear::<HelmRelease>().await,
        (Kind::Kustomization, false, false) => target.pin_kustomization(args).await,
        (Kind::Kustomization, false, true) => crate::revert::run(&target, args).await,
        (Kind::HelmRelease, false, _) => target.pin_release(args).await,
    }
}

/// The object rolled back, and how to reach it.
pub struct Object {
    pub client: Client,
    pub namespace: String,
    pub name: String,
    pub timeout: Duration,
}

/// What a kind needs here.
pub trait Rollbackable:
    Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
    + Clone
    + std::fmt::Debug
    + DeserializeOwned
    + Send
    + Sync
    + 'static
    + HasStatus<Status: ObjectStatus>
{
}

impl<K> Rollbackable for K where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + DeserializeOwned
        + Send
        + Sync
        + 'static
        + HasStatus<Status: ObjectStatus>
{
}

impl Object {
    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The object, or a clear error when it does not exist.
    pub async fn get<K: Rollbackable>(&self) -> Result<K, BoxError> {
        let api: Api<K> = Api::namespaced(self.client.clone(), &self.namespace);
        api.get_opt(&self.name)
            .await
            .map_err(|e| format!("cannot read {} '{}': {e}", K::kind(&()), self.key()))?
            .ok_or_else(|| format!("{} '{}' not found", K::kind(&()), self.key()).into())
    }

    async fn pin_kustomization(&self, args: &Args) -> Result<bool, BoxError> {
        let ks: Kustomization = self.get().await?;
        let revision = kustomization_target(&ks, args.to.as_deref())
            .map_err(|e| format!("Kustomization '{}': {e}", self.key()))?;
        let by = crate::audit::whoami(&self.client).await?;
        println!(
            "► rolling back Kustomization {} in {} namespace to {revision}",
            self.name, self.namespace
        );
        let token = self
            .annotate::<Kustomization>(rollback_annotations(&revision, &by, args.reason.as_deref()))
            .await?;
        let want = PinnedRevision::parse(&revision)?;
        self.wait::<Kustomization>(&token, move |ks| {
            ks.status
                .as_ref()
                .and_then(|s| s.last_applied_revision.as_deref())
                .is_some_and(|r| want.is_revision(r))
        })
        .await
    }

    async fn pin_release(&self, args: &Args) -> Result<bool, BoxError> {
        let hr: HelmRelease = self.get().await?;
        let storage_ns = hr.storage_namespace();
        let history = weir_helm::storage::history(&self.client, &storage_ns, &hr.release_name())
            .await
            .map_err(|e| {
                format!(
                    "HelmRelease '{}': cannot read Helm's storage: {}",
                    self.key(),
                    weir_runtime::chain(&e)
                )
            })?;
        let versions: Vec<(i64, &str)> = history
            .iter()
            .map(|r| (r.version, r.info.status.as_str()))
            .collect();
        let revision = release_target(&versions, args.to.as_deref())
            .map_err(|e| format!("HelmRelease '{}': {e}", self.key()))?;
        let by = crate::audit::whoami(&self.client).await?;
        println!(
            "► rolling back HelmRelease {} in {} namespace to revision {revision}",
            self.name, self.namespace
        );
        let token = self
            .annotate::<HelmRelease>(rollback_annotations(
                &revision.to_string(),
                &by,
                args.reason.as_deref(),
            ))
            .await?;
        let expected = format!("{ROLLED_BACK_PREFIX}{revision}");
        self.wait::<HelmRelease>(&token, move |hr| {
            hr.status
                .as_ref()
                .and_then(ObjectStatus::ready)
                .is_some_and(|c| c.message.starts_with(&expected))
        })
        .await
    }

    /// `--clear`: removes the rollback annotations and waits for the object to follow its
    /// source again. An object that is not rolled back is left as it is.
    async fn clear<K: Rollbackable>(&self) -> Result<bool, BoxError> {
        let object: K = self.get().await?;
        let kind = K::kind(&());
        let Some(revision) = object
            .meta()
            .annotations
            .as_ref()
            .and_then(|a| a.get(ROLLBACK_TO))
        else {
            println!("✔ {kind} '{}' is not rolled back", self.key());
            return Ok(true);
        };
        println!(
            "► clearing the rollback of {kind} {} in {} namespace (to {revision})",
            self.name, self.namespace
        );
        let cleared = json!({
            ROLLBACK_TO: null, ROLLED_BACK_BY: null, ROLLED_BACK_AT: null, ROLLBACK_REASON: null,
        });
        let token = self.annotate::<K>(cleared).await?;
        self.wait::<K>(&token, |_| true).await
    }

    /// Merges `annotations` and a `reconcile.fluxcd.io/requestedAt` token into the object's
    /// annotations (one patch, so RBAC decides it at once); returns the token.
    pub async fn annotate<K: Rollbackable>(&self, annotations: Value) -> Result<String, BoxError> {
        let token = Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true);
        let mut annotations = annotations;
        if let Some(map) = annotations.as_object_mut() {
            map.insert(RECONCILE_REQUESTED_AT_ANNOTATION.to_owned(), json!(token));
        }
        let patch = json!({ "metadata": { "annotations": annotations } });
        Api::<K>::namespaced(self.client.clone(), &self.namespace)
            .patch(
                &self.name,
                &PatchParams::apply(FIELD_MANAGER),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(|e| {
                format!(
                    "cannot change {} '{}' (nothing changed): {e}",
                    K::kind(&()),
                    self.key()
                )
            })?;
        Ok(token)
    }

    /// Waits until the controller answered `token` and came to an outcome (see [`outcome`]),
    /// showing its progress; reports it. True when Ready and `done` holds.
    pub async fn wait<K: Rollbackable>(
        &self,
        token: &str,
        done: impl Fn(&K) -> bool,
    ) -> Result<bool, BoxError> {
        let kind = K::kind(&()).to_string();
        let api: Api<K> = Api::namespaced(self.client.clone(), &self.namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.name));
        let mut objects = std::pin::pin!(watcher(api, config).applied_objects());
        let mut progress =
            crate::term::Progress::start(&format!("waiting for {kind} reconciliation"));
        let mut last = String::new();
        let waited = tokio::time::timeout(self.timeout, async {
            while let Some(object) = objects.next().await {
                let object = object?;
                let Some(status) = object.status() else {
                    continue;
                };
                if let Some(ready) = status.ready() {
                    last.clone_from(&ready.message);
                    progress.update(&ready.message);
                }
                if let Some(outcome) = outcome(status, token) {
                    return Ok::<_, BoxError>(outcome.map(|m| (m, done(&object))));
                }
            }
            Err(format!("the watch of {kind} '{}' ended", self.key()).into())
        })
        .await;
        progress.finish();
        match waited {
            Err(_) => Err(format!(
                "{kind} '{}' did not finish within {:?}; last: {last}",
                self.key(),
                self.timeout
            )
            .into()),
            Ok(Err(error)) => Err(error),
            Ok(Ok(Ok((message, true)))) => {
                println!("✔ {message}");
                Ok(true)
            }
            Ok(Ok(Ok((message, false)))) => {
                eprintln!(
                    "✗ {kind} '{}' is Ready, but not as asked: {message}",
                    self.key()
                );
                Ok(false)
            }
            Ok(Ok(Err(message))) => {
                eprintln!("✗ {message}");
                Ok(false)
            }
        }
    }
}

/// The annotations of a rollback to `revision` by `by`, now, for `reason` (removed when none).
fn rollback_annotations(revision: &str, by: &str, reason: Option<&str>) -> Value {
    json!({
        ROLLBACK_TO: revision,
        ROLLED_BACK_BY: by,
        ROLLED_BACK_AT: Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
        ROLLBACK_REASON: reason.filter(|r| !r.trim().is_empty()),
    })
}

/// The outcome of a reconcile that answered `token`: `Ok(Ready's message)` once Ready,
/// `Err(reason: message)` once it failed for good or for a reason other than waiting for an
/// artifact (which a rollback does until its source fetched the revision); `None` until then.
fn outcome(status: &impl ObjectStatus, token: &str) -> Option<Result<String, String>> {
    if status.last_handled_reconcile_at() != Some(token) {
        return None;
    }
    let conditions = status.conditions();
    let ready = find_condition(conditions, types::READY)?;
    let stalled = find_condition(conditions, types::STALLED)
        .is_some_and(|c| c.status == ConditionStatus::True);
    match ready.status {
        ConditionStatus::True => Some(Ok(ready.message.clone())),
        ConditionStatus::False
            if stalled
                || (ready.reason != reasons::ARTIFACT_FAILED
                    && ready.reason != reasons::PROGRESSING
                    && ready.reason != reasons::DEPENDENCY_NOT_READY) =>
        {
            Some(Err(format!("{}: {}", ready.reason, ready.message)))
        }
        _ => None,
    }
}

/// The revision a Kustomization rolls back to: `to` (a full revision, or a commit sha or its
/// first 7+ digits), or the newest successful revision in `status.history` other than the one
/// applied now. It must be in `status.history` as applied successfully.
pub fn kustomization_target(ks: &Kustomization, to: Option<&str>) -> Result<String, String> {
    let status = ks.status.clone().unwrap_or_default();
    let applied: Vec<&str> = status
        .history
        .iter()
        .filter(|s| s.last_reconciled_status == reasons::RECONCILIATION_SUCCEEDED)
        .filter_map(|s| s.metadata.get("revision").map(String::as_str))
        .collect();
    let current = status.last_applied_revision.as_deref();
    let listed = || {
        if applied.is_empty() {
            "none".to_owned()
        } else {
            applied.join(", ")
        }
    };
    let Some(to) = to.map(str::trim) else {
        return applied
            .iter()
            .find(|r| Some(**r) != current)
            .map(|r| (*r).to_owned())
            .ok_or_else(|| {
                format!(
                    "no earlier applied revision to roll back to in status.history (applied: {})",
                    listed()
                )
            });
    };
    let wanted = if is_sha_prefix(to) {
        let to = to.to_ascii_lowercase();
        let matching: Vec<&&str> = applied
            .iter()
            .filter(|r| {
                r.rsplit_once("sha1:")
                    .is_some_and(|(_, sha)| sha.starts_with(&to))
            })
            .collect();
        match matching.as_slice() {
            [one] => (**one).to_owned(),
            [] => {
                return Err(format!(
                    "revision {to} was never applied (applied revisions in status.history: {})",
                    listed()
                ));
            }
            _ => return Err(format!("commit {to} is ambiguous: give more digits")),
        }
    } else {
        PinnedRevision::parse(to).map_err(|e| e.to_string())?;
        if !applied.contains(&to) {
            return Err(format!(
                "revision {to} was never applied (applied revisions in status.history: {})",
                listed()
            ));
        }
        to.to_owned()
    };
    if Some(wanted.as_str()) == current && ks.annotations().get(ROLLBACK_TO).is_none() {
        return Err(format!("revision {wanted} is the one applied now"));
    }
    Ok(wanted)
}

fn is_sha_prefix(text: &str) -> bool {
    (7..=40).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The Helm revision a HelmRelease rolls back to: `to`, which must be a revision in Helm's
/// storage (`history`: version and status, newest first) other than an uninstalled or pending
/// one; or the newest deployed or superseded revision before the latest.
pub fn release_target(history: &[(i64, &str)], to: Option<&str>) -> Result<i64, String> {
    let listed = || {
        let all: Vec<String> = history.iter().map(|(v, s)| format!("{v} ({s})")).collect();
        if all.is_empty() {
            "none".to_owned()
        } else {
            all.join(", ")
        }
    };
    let usable = |status: &str| matches!(status, "deployed" | "superseded");
    let Some(to) = to.map(str::trim) else {
        return history
            .iter()
            .skip(1)
            .find(|(_, s)| usable(s))
            .map(|(v, _)| *v)
            .ok_or_else(|| {
                format!(
                    "no earlier deployed revision to roll back to in Helm's storage (revisions: {})",
                    listed()
                )
            });
    };
    let version: i64 = to.parse().ok().filter(|v| *v > 0).ok_or_else(|| {
        format!("invalid revision '{to}': expected a Helm release revision number")
    })?;
    match history.iter().find(|(v, _)| *v == version) {
        Some((_, status)) if usable(status) || *status == "failed" => Ok(version),
        Some((_, status)) => Err(format!(
            "revision {version} is {status} in Helm's storage and cannot be rolled back to"
        )),
        None => Err(format!(
            "revision {version} was never released (revisions in Helm's storage: {})",
            listed()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "main@sha1:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "main@sha1:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const C: &str = "main@sha1:cccccccccccccccccccccccccccccccccccccccc";

    fn ks(history: &[(&str, &str)], applied: &str) -> Kustomization {
        let history: Vec<Value> = history
            .iter()
            .enumerate()
            .map(|(i, (revision, outcome))| {
                json!({
                    "digest": format!("sha256:{i}"),
                    "firstReconciled": "2026-12-01T10:00:00Z",
                    "lastReconciled": "2026-12-01T10:00:00Z",
                    "lastReconciledDuration": "1s",
                    "lastReconciledStatus": outcome,
                    "totalReconciliations": 1,
                    "metadata": { "revision": revision }
                })
            })
            .collect();
        serde_json::from_value(json!({
            "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
            "kind": "Kustomization",
            "metadata": { "name": "app", "namespace": "apps" },
            "spec": {
                "interval": "10m", "prune": true, "path": "./deploy",
                "sourceRef": { "kind": "GitRepository", "name": "app" }
            },
            "status": { "lastAppliedRevision": applied, "history": history }
        }))
        .unwrap()
    }

    #[test]
    fn a_kustomization_rolls_back_to_the_previous_good_revision_by_default() {
        let ks = ks(
            &[
                (C, "HealthCheckFailed"),
                (B, "ReconciliationSucceeded"),
                (A, "ReconciliationSucceeded"),
            ],
            B,
        );
        assert_eq!(kustomization_target(&ks, None).unwrap(), A);
        assert_eq!(kustomization_target(&ks, Some(A)).unwrap(), A);
        assert_eq!(kustomization_target(&ks, Some("aaaaaaa")).unwrap(), A);
    }

    #[test]
    fn a_kustomization_refuses_revisions_never_applied_or_malformed() {
        let ks = ks(
            &[(C, "HealthCheckFailed"), (B, "ReconciliationSucceeded")],
            B,
        );
        let never = kustomization_target(&ks, Some(C)).unwrap_err();
        assert!(never.contains("was never applied"), "{never}");
        assert!(never.contains(B), "{never}");
        let none = kustomization_target(&ks, None).unwrap_err();
        assert!(none.contains("no earlier applied revision"), "{none}");
        let bad = kustomization_target(&ks, Some("yesterday")).unwrap_err();
        assert!(bad.contains("invalid revision 'yesterday'"), "{bad}");
        let now = kustomization_target(&ks, Some(B)).unwrap_err();
        assert!(now.contains("the one applied now"), "{now}");
        let unknown = kustomization_target(&ks, Some("1234567")).unwrap_err();
        assert!(unknown.contains("was never applied"), "{unknown}");
    }

    #[test]
    fn a_release_rolls_back_to_a_revision_in_helms_storage() {
        let history = [(3, "deployed"), (2, "superseded"), (1, "superseded")];
        assert_eq!(release_target(&history, None), Ok(2));
        assert_eq!(release_target(&history, Some("1")), Ok(1));
        let never = release_target(&history, Some("7")).unwrap_err();
        assert!(never.contains("never released"), "{never}");
        assert!(never.contains("3 (deployed)"), "{never}");
        let bad = release_target(&history, Some("two")).unwrap_err();
        assert!(bad.contains("invalid revision 'two'"), "{bad}");
        assert!(release_target(&history, Some("0")).is_err());
        assert!(release_target(&[(1, "deployed")], None).is_err());
        assert!(release_target(&[(2, "pending-upgrade"), (1, "deployed")], Some("2")).is_err());
    }

    #[test]
    fn the_wait_ends_on_ready_or_a_real_failure_once_the_request_is_answered() {
        use weir_api::{Condition, KustomizationStatus};
        let status = |handled: &str, conditions: Vec<Condition>| KustomizationStatus {
            last_handled_reconcile_at: Some(handled.to_owned()),
            conditions,
            ..KustomizationStatus::default()
        };
        let ready = Condition::new(
            types::READY,
            ConditionStatus::True,
            "ReconciliationSucceeded",
            "Rolled back to revision x",
        );
        assert_eq!(outcome(&status("t0", vec![ready.clone()]), "t1"), None);
        assert_eq!(
            outcome(&status("t1", vec![ready]), "t1"),
            Some(Ok("Rolled back to revision x".to_owned()))
        );
        let waiting = Condition::new(
            types::READY,
            ConditionStatus::False,
            reasons::ARTIFACT_FAILED,
            "waiting for rollback source",
        );
        assert_eq!(outcome(&status("t1", vec![waiting]), "t1"), None);
        let failed = Condition::new(
            types::READY,
            ConditionStatus::False,
            reasons::BUILD_FAILED,
            "bad",
        );
        assert_eq!(
            outcome(&status("t1", vec![failed]), "t1"),
            Some(Err("BuildFailed: bad".to_owned()))
        );
    }
}
