//! `weir lock` and `weir unlock`: Flux v1's `fluxctl lock`/`unlock`, as labels and annotations
//! on the workload itself (see [`weir_api::control`]), written through the API with the user's
//! own kubeconfig, so RBAC decides (a user who may not patch the object cannot lock it) and
//! `kubectl` sees and can undo a lock.
//!
//! - A lock writes the label `weir.dev/locked=true` and the annotations `weir.dev/lock-reason`,
//!   `weir.dev/locked-by` (the user the API server authenticated, from a SelfSubjectReview),
//!   `weir.dev/locked-at` and, with `--expires`, `weir.dev/lock-expires`, with a JSON merge
//!   patch as the field manager `weir-lock`. The kustomize controller applies with server-side
//!   apply as `kustomize-controller` and never owns these fields, so its applies leave them.
//! - Locking a locked workload updates the lock (reason, who, when, expiry), as `fluxctl lock`
//!   updated the message; the output says which lock it replaced. Unlocking a workload that is
//!   not locked changes nothing and succeeds.
//! - Only what Weir manages can be locked: a workload applied by a Kustomization (its
//!   `kustomize.toolkit.fluxcd.io/name` label), or a HelmRelease. A workload of a Helm release
//!   is refused with a pointer to its HelmRelease, since the chart, not the workload, is what
//!   the helm controller upgrades.
//! - Each lock and unlock is recorded as an Event on the workload (`Locked`, `Unlocked`).
//!
//! Exit codes: 0 done, 1 refused or failed (nothing changed), 2 usage.

use std::{process::ExitCode, time::Duration};

use chrono::{SecondsFormat, Utc};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Api, Client, ResourceExt,
    api::{DynamicObject, Patch, PatchParams},
};
use serde_json::{Value, json};
use weir_api::{
    control::{
        LOCK_EXPIRES, LOCK_FIELD_MANAGER, LOCK_REASON, LOCKED_AT, LOCKED_BY, LOCKED_LABEL, Lock,
        container_images, reasons,
    },
    kustomize::annotations::NAME_LABEL,
};

use crate::{
    get::BoxError,
    workload::{self, Kind, block_on, parse_workload},
};

/// The annotation Helm writes on the objects of a release: the release's name.
const HELM_RELEASE_NAME: &str = "meta.helm.sh/release-name";
/// The annotation Helm writes on the objects of a release: the release's namespace.
const HELM_RELEASE_NAMESPACE: &str = "meta.helm.sh/release-namespace";

/// Which workload, and how to reach the cluster.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// The workload, as `kind/name`: deployment/ (deploy/), statefulset/ (sts/), daemonset/
    /// (ds/), cronjob/ (cj/) or helmrelease/ (hr/).
    pub workload: String,
    /// How to reach the cluster, and the namespace.
    #[command(flatten)]
    pub cluster: crate::common::Cluster,
}

/// Flags of `weir lock`.
#[derive(Debug, clap::Args)]
pub struct LockArgs {
    #[command(flatten)]
    pub target: Target,
    /// Why it is locked (recorded on the workload and in its Event).
    #[arg(short = 'm', long)]
    pub reason: String,
    /// Release the lock by itself after this long (`24h`, `90m`); never when omitted.
    #[arg(long, value_parser = crate::controllers::parse_duration)]
    pub expires: Option<Duration>,
}

/// Flags of `weir unlock`.
#[derive(Debug, clap::Args)]
pub struct UnlockArgs {
    #[command(flatten)]
    pub target: Target,
}

/// `weir lock`.
pub fn lock(args: &LockArgs) -> ExitCode {
    let workload = match parse(&args.target.workload) {
        Ok(workload) => workload,
        Err(message) => return usage("lock", &message),
    };
    if args.reason.trim().is_empty() {
        return usage("lock", "--reason must say why");
    }
    block_on(run_lock(args, workload))
}

/// `weir unlock`.
pub fn unlock(args: &UnlockArgs) -> ExitCode {
    match parse(&args.target.workload) {
        Ok(workload) => block_on(run_unlock(&args.target, workload)),
        Err(message) => usage("unlock", &message),
    }
}

/// `kind/name` of a kind that can be locked (a workload or a HelmRelease), split and checked.
fn parse(text: &str) -> Result<(Kind, String), String> {
    parse_workload(text, Kind::ALL, Some("locked"))
}

fn usage(verb: &str, message: &str) -> ExitCode {
    eprintln!("weir {verb}: {message}");
    ExitCode::from(2)
}

/// The live workload and what is needed to change it.
struct Workload {
    api: Api<DynamicObject>,
    object: DynamicObject,
    kind: Kind,
    /// `Deployment apps/web`, for messages.
    title: String,
}

async fn fetch(
    target: &Target,
    (kind, name): (Kind, String),
) -> Result<(Client, Workload), BoxError> {
    let (client, namespace) = target.cluster.connect().await?;
    let title = format!("{} {namespace}/{name}", kind.resource().kind);
    let (api, object) = workload::fetch(&client, kind, &namespace, &name, &title).await?;
    Ok((
        client,
        Workload {
            api,
            object,
            kind,
            title,
        },
    ))
}

/// Why Weir does not manage `object`, if it does not.
fn unmanaged(kind: Kind, object: &DynamicObject, title: &str) -> Option<String> {
    if kind == Kind::HelmRelease {
        return None;
    }
    let labels = object.labels();
    if labels.contains_key(NAME_LABEL) {
        return None;
    }
    let annotations = object.annotations();
    if let Some(release) = annotations.get(HELM_RELEASE_NAME) {
        let ns = annotations
            .get(HELM_RELEASE_NAMESPACE)
            .map_or_else(|| object.namespace().unwrap_or_default(), Clone::clone);
        return Some(format!(
            "{title} belongs to the Helm release {ns}/{release}: lock its HelmRelease instead \
             (weir lock hr/<name> -n <namespace>); nothing changed"
        ));
    }
    Some(format!(
        "{title} is not managed by Weir (it has no {NAME_LABEL} label: no Kustomization applied \
         it), so nothing would honour a lock; nothing changed"
    ))
}

/// The Event's object.
fn reference(workload: &Workload) -> ObjectReference {
    workload::reference(workload.kind, &workload.object)
}

/// The merge patch of a lock (`Some`) or an unlock (`None`).
fn lock_patch(lock: Option<&Lock>) -> Value {
    let time =
        |t: Option<chrono::DateTime<Utc>>| t.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true));
    match lock {
        Some(lock) => json!({ "metadata": {
            "labels": { LOCKED_LABEL: "true" },
            "annotations": {
                LOCK_REASON: lock.reason,
                LOCKED_BY: lock.by,
                LOCKED_AT: time(lock.at),
                LOCK_EXPIRES: time(lock.expires),
            },
        } }),
        None => json!({ "metadata": {
            "labels": { LOCKED_LABEL: null },
            "annotations": {
                LOCK_REASON: null, LOCKED_BY: null, LOCKED_AT: null, LOCK_EXPIRES: null,
            },
        } }),
    }
}

/// Writes `patch` as `weir-lock`; a refusal by the API server (RBAC) says who may not do what.
async fn write(workload: &Workload, patch: &Value, user: &str) -> Result<(), BoxError> {
    let params = PatchParams {
        field_manager: Some(LOCK_FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    let name = workload.object.name_any();
    match workload
        .api
        .patch(&name, &params, &Patch::Merge(patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 403 => Err(format!(
            "{user} may not patch {}: {}; nothing changed",
            workload.title, status.message
        )
        .into()),
        Err(error) => {
            Err(format!("cannot patch {}: {error}; nothing changed", workload.title).into())
        }
    }
}

async fn run_lock(args: &LockArgs, target: (Kind, String)) -> Result<(), BoxError> {
    let (client, workload) = fetch(&args.target, target).await?;
    if let Some(why) = unmanaged(workload.kind, &workload.object, &workload.title) {
        return Err(why.into());
    }
    let user = crate::audit::whoami(&client).await?;
    let previous = Lock::read(workload.object.labels(), workload.object.annotations());
    let now = Utc::now();
    let expires = match args.expires {
        Some(after) => Some(
            chrono::Duration::from_std(after)
                .ok()
                .and_then(|d| now.checked_add_signed(d))
                .ok_or("--expires is too far in the future")?,
        ),
        None => None,
    };
    let lock = Lock {
        reason: args.reason.trim().to_owned(),
        by: Some(user.clone()),
        at: Some(now),
        expires,
    };
    println!("► locking {}", workload.title);
    if let Some(previous) = &previous {
        println!("  replacing the lock: {}", previous.describe());
    }
    write(&workload, &lock_patch(Some(&lock)), &user).await?;
    let images = pinned_images(&workload);
    let note = match &images {
        Some(images) => format!("{}; images pinned: {images}", lock.describe()),
        None => lock.describe(),
    };
    crate::audit::record(&client, &reference(&workload), reasons::LOCKED, note).await;
    println!("✔ {} {}", workload.title, lock.describe());
    if let Some(images) = images {
        println!("  images pinned: {images}");
    }
    Ok(())
}

/// `container=image, …` of a workload; `None` for a HelmRelease.
fn pinned_images(workload: &Workload) -> Option<String> {
    let object = serde_json::to_value(&workload.object).ok()?;
    let images = container_images(&workload.kind.resource().kind, &object);
    (!images.is_empty()).then(|| {
        images
            .iter()
            .map(|(container, image)| format!("{container}={image}"))
            .collect::<Vec<_>>()
            .join(", ")
    })
}

async fn run_unlock(target: &Target, workload: (Kind, String)) -> Result<(), BoxError> {
    let (client, workload) = fetch(target, workload).await?;
    let Some(previous) = Lock::read(workload.object.labels(), workload.object.annotations()) else {
        println!("✔ {} is not locked: nothing to do", workload.title);
        return Ok(());
    };
    let user = crate::audit::whoami(&client).await?;
    println!("► unlocking {} ({})", workload.title, previous.describe());
    write(&workload, &lock_patch(None), &user).await?;
    let note = format!("unlocked by {user} (was {})", previous.describe());
    crate::audit::record(&client, &reference(&workload), reasons::UNLOCKED, note).await;
    println!("✔ {} unlocked", workload.title);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unlock_removes_every_lock_field_and_a_lock_writes_them() {
        let lock = Lock {
            reason: "incident 42".to_owned(),
            by: Some("alice".to_owned()),
            at: "2026-12-01T10:00:00Z".parse().ok(),
            expires: None,
        };
        let patch = lock_patch(Some(&lock));
        assert_eq!(patch["metadata"]["labels"][LOCKED_LABEL], "true");
        assert_eq!(
            patch["metadata"]["annotations"][LOCKED_AT],
            "2026-12-01T10:00:00Z"
        );
        // No expiry: null, so a re-lock without --expires removes an earlier expiry.
        assert_eq!(patch["metadata"]["annotations"][LOCK_EXPIRES], Value::Null);
        let unlock = lock_patch(None);
        assert_eq!(unlock["metadata"]["labels"][LOCKED_LABEL], Value::Null);
        for key in [LOCK_REASON, LOCKED_BY, LOCKED_AT, LOCK_EXPIRES] {
            assert_eq!(unlock["metadata"]["annotations"][key], Value::Null, "{key}");
        }
    }

    #[test]
    fn only_what_a_kustomization_or_helm_release_manages_can_be_locked() {
        let object = |labels: Value, annotations: Value| -> DynamicObject {
            serde_json::from_value(json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": { "name": "web", "namespace": "apps",
                    "labels": labels, "annotations": annotations },
            }))
            .unwrap()
        };
        let managed = object(json!({ NAME_LABEL: "apps" }), json!({}));
        assert_eq!(
            unmanaged(Kind::Deployment, &managed, "Deployment apps/web"),
            None
        );
        let bare = object(json!({}), json!({}));
        let why = unmanaged(Kind::Deployment, &bare, "Deployment apps/web").unwrap();
        assert!(
            why.contains("not managed by Weir") && why.contains(NAME_LABEL),
            "{why}"
        );
        let helm = object(json!({}), json!({ HELM_RELEASE_NAME: "web" }));
        let why = unmanaged(Kind::Deployment, &helm, "Deployment apps/web").unwrap();
        assert!(
            why.contains("Helm release apps/web") && why.contains("HelmRelease"),
            "{why}"
        );
        assert_eq!(
            unmanaged(Kind::HelmRelease, &bare, "HelmRelease apps/web"),
            None
        );
    }
}
