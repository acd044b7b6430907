//! Weir's workload locks in image automation (`weir lock`, see [`weir_api::control`]): the
//! `$imagepolicy` markers inside a YAML document that describes a locked workload are left as
//! they are, so git keeps the image the workload is pinned to. Flux v2 has no locks; Flux v1's
//! `fluxctl lock` made its automation skip the workload the same way.
//!
//! A document describes a locked workload when its `kind` and `metadata.name` are the locked
//! object's, and its `metadata.namespace`, when it names one, is the object's too (a document
//! without a namespace gets one from its Kustomization, which git does not say). The locked
//! workloads are listed once per run with the label selector `weir.dev/locked=true`, in the
//! namespaces the controller watches; an expired lock is not a lock (the controller that applies
//! the workload releases it).

use std::collections::BTreeMap;

use chrono::Utc;
use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment, StatefulSet},
    batch::v1::CronJob,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ApiResource, DynamicObject, ListParams},
};
use weir_api::{
    HelmRelease, condition,
    control::{LOCKED_LABEL, Lock, reasons},
    types,
};
use weir_runtime::decision::StepResult;

use crate::setters::{self, Change, MarkerError, ObjectId};

/// One locked workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Locked {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub lock: Lock,
}

impl Locked {
    /// Whether the YAML document `object` describes this workload.
    #[must_use]
    pub fn describes(&self, object: &ObjectId) -> bool {
        object.kind == self.kind
            && object.name == self.name
            && (object.namespace.is_empty() || object.namespace == self.namespace)
    }

    /// `Deployment apps/web (locked by alice: why)`.
    #[must_use]
    pub fn title(&self) -> String {
        format!(
            "{} {}/{} ({})",
            self.kind,
            self.namespace,
            self.name,
            self.lock.describe()
        )
    }
}

/// The kinds whose locks the automation honours.
fn kinds() -> [ApiResource; 5] {
    [
        ApiResource::erase::<Deployment>(&()),
        ApiResource::erase::<StatefulSet>(&()),
        ApiResource::erase::<DaemonSet>(&()),
        ApiResource::erase::<CronJob>(&()),
        ApiResource::erase::<HelmRelease>(&()),
    ]
}

/// The workloads locked now (not expired) in `namespaces` (all when `None`).
pub async fn locked(
    client: &Client,
    namespaces: Option<&[String]>,
) -> Result<Vec<Locked>, kube::Error> {
    let params = ListParams::default().labels(&format!("{LOCKED_LABEL}=true"));
    let now = Utc::now();
    let mut out = vec![];
    for resource in kinds() {
        let apis: Vec<Api<DynamicObject>> = match namespaces {
            None => vec![Api::all_with(client.clone(), &resource)],
            Some(namespaces) => namespaces
                .iter()
                .map(|ns| Api::namespaced_with(client.clone(), ns, &resource))
                .collect(),
        };
        for api in apis {
            for object in api.list_metadata(&params).await? {
                let Some(lock) = Lock::read(object.labels(), object.annotations()) else {
                    continue;
                };
                if lock.expired(now) {
                    continue;
                }
                out.push(Locked {
                    kind: resource.kind.clone(),
                    namespace: object.namespace().unwrap_or_default(),
                    name: object.name_any(),
                    lock,
                });
            }
        }
    }
    Ok(out)
}

/// What [`apply_setters_unlocked`] did to one file: its new text, the changes made, and those
/// left out because of a lock (with the lock's index in the locked workloads).
pub type UnlockedEdit = (String, Vec<Change>, Vec<(usize, Change)>);

/// [`setters::apply_setters`], except in the documents of `locked` workloads.
pub fn apply_setters_unlocked(
    file: &str,
    text: &str,
    policies: &BTreeMap<String, weir_api::ImageRef>,
    locked: &[Locked],
) -> Result<UnlockedEdit, MarkerError> {
    let mut skipped = vec![];
    let (out, changes) = setters::apply_setters_where(file, text, policies, |change| {
        let lock = locked.iter().position(|l| l.describes(&change.object));
        if let Some(index) = lock {
            skipped.push((index, change.clone()));
        }
        lock.is_none()
    })?;
    Ok((out, changes, skipped))
}

/// The sentence the automation's Ready message and Event end with, naming each locked workload
/// whose markers were left alone; `None` when none was.
#[must_use]
pub fn skipped_note(locked: &[Locked], skipped: &[usize]) -> Option<String> {
    let mut titles: Vec<String> = skipped
        .iter()
        .filter_map(|i| locked.get(*i))
        .map(Locked::title)
        .collect();
    titles.sort();
    titles.dedup();
    (!titles.is_empty()).then(|| format!("skipped locked workloads: {}", titles.join(", ")))
}

/// A successful run's result with the locked workloads it left alone: named at the end of the
/// Ready message, and announced (`LockHeld`, or with the push's own Event) when that message is
/// new, so a lock that holds over many runs is said once.
#[must_use]
pub fn note_skipped(
    result: StepResult,
    skipped: Option<&str>,
    status: &weir_api::ImageUpdateAutomationStatus,
) -> StepResult {
    let (
        Some(skipped),
        StepResult::Succeeded {
            reason,
            message,
            news,
        },
    ) = (skipped, &result)
    else {
        return result;
    };
    let message = format!("{message}; {skipped}");
    let noted = StepResult::succeeded(reason, &message);
    if let Some(news) = news {
        return noted.announcing(&news.reason, format!("{}\n{skipped}", news.message));
    }
    let previous = condition::find_condition(&status.conditions, types::READY);
    if previous.is_some_and(|ready| ready.message == message) {
        noted
    } else {
        noted.announcing(reasons::LOCK_HELD, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn locked(kind: &str, namespace: &str, name: &str) -> Locked {
        Locked {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
            lock: Lock {
                reason: "incident 42".into(),
                by: Some("alice".into()),
                at: None,
                expires: None,
            },
        }
    }

    fn id(kind: &str, namespace: &str, name: &str) -> ObjectId {
        ObjectId {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    #[test]
    fn a_document_describes_a_lock_by_kind_name_and_any_namespace_it_names() {
        let lock = locked("Deployment", "apps", "web");
        assert!(lock.describes(&id("Deployment", "apps", "web")));
        assert!(lock.describes(&id("Deployment", "", "web")));
        assert!(!lock.describes(&id("Deployment", "other", "web")));
        assert!(!lock.describes(&id("StatefulSet", "apps", "web")));
        assert!(!lock.describes(&id("Deployment", "apps", "api")));
    }

    #[test]
    fn markers_of_locked_documents_are_left_and_reported() {
        let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: apps\n\
                    spec:\n  image: reg/web:1.0 # {\"$imagepolicy\": \"apps:web\"}\n---\n\
                    apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: api\n\
                    spec:\n  image: reg/web:1.0 # {\"$imagepolicy\": \"apps:web\"}\n";
        let policies = BTreeMap::from([(
            "apps:web".to_owned(),
            weir_api::ImageRef {
                name: "reg/web".into(),
                tag: "2.0".into(),
                digest: None,
            },
        )]);
        let locks = [locked("Deployment", "apps", "web")];
        let (out, changes, skipped) =
            apply_setters_unlocked("deploy.yaml", text, &policies, &locks).unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].object.name, "api");
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].0, 0);
        assert_eq!(skipped[0].1.new_value, "reg/web:2.0");
        assert_eq!(
            out,
            text.replacen(
                "name: api\nspec:\n  image: reg/web:1.0",
                "name: api\nspec:\n  image: reg/web:2.0",
                1
            )
        );
        assert_eq!(
            skipped_note(&locks, &[0, 0]).as_deref(),
            Some("skipped locked workloads: Deployment apps/web (locked by alice: incident 42)")
        );
        assert_eq!(skipped_note(&locks, &[]), None);

        // Unlocked, both change.
        let (_, changes, skipped) =
            apply_setters_unlocked("deploy.yaml", text, &policies, &[]).unwrap();
        assert_eq!((changes.len(), skipped.len()), (2, 0));
    }

    #[test]
    fn skipped_locks_end_the_ready_message_and_are_announced_once() {
        let note = "skipped locked workloads: Deployment apps/web (locked by alice: x)";
        let up_to_date = || StepResult::succeeded("Succeeded", "repository up-to-date");
        let news = |result: &StepResult| match result {
            StepResult::Succeeded { message, news, .. } => (
                message.clone(),
                news.as_ref().map(|n| (n.reason.clone(), n.message.clone())),
            ),
            StepResult::Failed { .. } => panic!("a success stays one"),
        };
        let mut status = weir_api::ImageUpdateAutomationStatus::default();
        let first = note_skipped(up_to_date(), Some(note), &status);
        let expected = format!("repository up-to-date; {note}");
        assert_eq!(
            news(&first),
            (
                expected.clone(),
                Some((reasons::LOCK_HELD.to_owned(), expected.clone()))
            )
        );
        // The next run, with the same Ready message: no Event.
        condition::set_condition(
            &mut status.conditions,
            weir_api::Condition::new(
                types::READY,
                weir_api::ConditionStatus::True,
                "Succeeded",
                &expected,
            ),
        );
        assert_eq!(
            news(&note_skipped(up_to_date(), Some(note), &status)),
            (expected, None)
        );
        // A push keeps its own Event, which names the skipped workloads too.
        let pushed = StepResult::succeeded("Succeeded", "pushed commit 'abc' to branch 'main'")
            .announcing("Succeeded", "pushed commit 'abc'\nmessage");
        let (_, event) = news(&note_skipped(pushed, Some(note), &status));
        assert_eq!(
            event,
            Some((
                "Succeeded".to_owned(),
                format!("pushed commit 'abc'\nmessage\n{note}")
            ))
        );
        // Nothing skipped: unchanged.
        assert_eq!(
            news(&note_skipped(up_to_date(), None, &status)),
            ("repository up-to-date".to_owned(), None)
        );
    }
}
