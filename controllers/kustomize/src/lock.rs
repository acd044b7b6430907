//! Weir's workload locks in apply (`weir lock`, see [`weir_api::control`]): a Kustomization
//! applies a locked Deployment, StatefulSet, DaemonSet or CronJob with the images it runs now,
//! whatever git says; everything else about the object still follows git. Flux v2 has no locks;
//! this is Flux v1's `fluxctl lock`, kept on the object so `kubectl` sees and undoes it.
//!
//! - Locked workloads are found without a request per reconcile: one watch per lockable kind,
//!   with the label selector `weir.dev/locked=true`, holds the few locked objects (the images
//!   are read from there). A reconcile waits, bounded by `spec.timeout`, until these watches
//!   have listed once, so that a controller just started never applies git's images over a
//!   lock it has not seen yet.
//! - Containers and init containers are matched by name; a container git adds keeps git's
//!   image. `LockHeld` (a Normal Event on the Kustomization) names the workloads and the images
//!   kept when git wants another image, once per change of what is kept, not every interval.
//! - A lock whose `weir.dev/lock-expires` has passed is released by the reconcile that finds it
//!   (label and annotations removed as the field manager `weir-lock`, a `LockExpired` Event on
//!   the workload), and git's images are applied at once. The watch also starts the
//!   Kustomization at the expiry time, and when a lock is removed (by `weir unlock` or
//!   `kubectl`), so that git's images return without waiting for the interval.
//! - A lock on a HelmRelease is the helm controller's to honour: a Kustomization still applies
//!   the HelmRelease's spec.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use chrono::{DateTime, SecondsFormat, Utc};
use futures::{Stream, StreamExt, channel::mpsc, stream::BoxStream};
use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, Deployment, StatefulSet},
        batch::v1::CronJob,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ApiResource, DynamicObject, Patch, PatchParams},
    runtime::{
        WatchStreamExt,
        reflector::{ObjectRef, Store, store::Writer},
        watcher,
    },
};
use serde_json::Value;
use weir_api::{
    Kustomization,
    control::{
        LOCK_FIELD_MANAGER, LOCKED_LABEL, Lock, container_images, pod_spec_pointer, reasons,
    },
    kustomize::annotations::{NAME_LABEL, NAMESPACE_LABEL},
};
use weir_runtime::controller::{AbortOnDropHandle, SyncFlag, Synced};
use weir_ssa::Target;

use crate::{Context, error::KustomizeError};

/// One image a lock kept: git wanted `wanted` for `container`, the live `kept` stays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptImage {
    pub container: String,
    pub wanted: String,
    pub kept: String,
}

/// Sets the image of every container (and init container) of `desired` that `live` also has,
/// by name, to the live one; returns those where git wanted another. A kind without a pod spec,
/// or a container git adds, is left as git has it.
pub fn keep_images(kind: &str, desired: &mut Value, live: &Value) -> Vec<KeptImage> {
    let live: HashMap<String, String> = container_images(kind, live).into_iter().collect();
    let Some(spec) = pod_spec_pointer(kind).and_then(|p| desired.pointer_mut(p)) else {
        return vec![];
    };
    let mut kept = vec![];
    for field in ["initContainers", "containers"] {
        let containers = spec.get_mut(field).and_then(Value::as_array_mut);
        for container in containers.into_iter().flatten() {
            let Some(name) = container
                .get("name")
                .and_then(Value::as_str)
                .map(str::to_owned)
            else {
                continue;
            };
            let (Some(live_image), Some(image)) = (live.get(&name), container.get_mut("image"))
            else {
                continue;
            };
            if image.as_str() != Some(live_image.as_str()) {
                kept.push(KeptImage {
                    container: name,
                    wanted: image.as_str().unwrap_or_default().to_owned(),
                    kept: live_image.clone(),
                });
                *image = Value::String(live_image.clone());
            }
        }
    }
    kept
}

/// The workload kinds a Kustomization keeps the images of, as (group, kind).
const WORKLOADS: [(&str, &str); 4] = [
    ("apps", "Deployment"),
    ("apps", "StatefulSet"),
    ("apps", "DaemonSet"),
    ("batch", "CronJob"),
];

fn resource(kind: &str) -> Option<ApiResource> {
    Some(match kind {
        "Deployment" => ApiResource::erase::<Deployment>(&()),
        "StatefulSet" => ApiResource::erase::<StatefulSet>(&()),
        "DaemonSet" => ApiResource::erase::<DaemonSet>(&()),
        "CronJob" => ApiResource::erase::<CronJob>(&()),
        _ => return None,
    })
}

/// The locked workloads of one controller's scope, watched; see the module doc.
pub struct Locks {
    stores: Vec<(&'static str, ApiResource, Store<DynamicObject>)>,
    synced: tokio::sync::watch::Receiver<bool>,
    /// The last `LockHeld` note of each Kustomization (`namespace/name`), so it is said once.
    held: Mutex<HashMap<String, String>>,
    _task: Option<AbortOnDropHandle<()>>,
}

impl std::fmt::Debug for Locks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Locks")
            .field("synced", &*self.synced.borrow())
            .finish_non_exhaustive()
    }
}

/// What the watch of one kind says, tagged with the kind's index.
type Tagged = (usize, Result<watcher::Event<DynamicObject>, watcher::Error>);

impl Locks {
    /// Starts the watches of locked workloads in `namespace` (all when `None`); they count in
    /// `synced`. The stream names the Kustomizations to reconcile: a lock removed, or expiring.
    ///
    /// Must be called inside a Tokio runtime.
    pub fn start(
        client: &Client,
        namespace: Option<&str>,
        synced: &mut Synced,
    ) -> (
        Self,
        impl Stream<Item = ObjectRef<Kustomization>> + Send + 'static,
    ) {
        let selector = format!("{LOCKED_LABEL}=true");
        let mut stores = vec![];
        let mut streams: Vec<BoxStream<'static, Tagged>> = vec![];
        let mut flags = vec![];
        for (index, (_, kind)) in WORKLOADS.iter().enumerate() {
            let Some(resource) = resource(kind) else {
                continue;
            };
            let writer = Writer::new(resource.clone());
            stores.push((*kind, resource.clone(), writer.as_reader()));
            let api = match namespace {
                Some(ns) => Api::<DynamicObject>::namespaced_with(client.clone(), ns, &resource),
                None => Api::all_with(client.clone(), &resource),
            };
            let flag = SyncFlag::default();
            synced.insert(&flag);
            flags.push(flag);
            let events = watcher(api, watcher::Config::default().labels(&selector))
                .default_backoff()
                .reflect(writer)
                .map(move |event| (index, event));
            streams.push(events.boxed());
        }
        let (ready, synced_rx) = tokio::sync::watch::channel(false);
        let (triggers, trigger_rx) = mpsc::unbounded();
        let task = AbortOnDropHandle::new(tokio::spawn(watch(
            futures::stream::select_all(streams),
            flags,
            ready,
            triggers,
        )));
        let locks = Self {
            stores,
            synced: synced_rx,
            held: Mutex::default(),
            _task: Some(task),
        };
        (locks, trigger_rx)
    }

    /// No locks, and no watch: for a context that only builds (`weir build`, `weir diff`), which
    /// shows what git would apply.
    #[must_use]
    pub fn none() -> Self {
        let (_, synced) = tokio::sync::watch::channel(true);
        Self {
            stores: vec![],
            synced,
            held: Mutex::default(),
            _task: None,
        }
    }

    /// Waits (up to `within`) until every watch has listed the locked workloads once.
    async fn wait_synced(&self, within: Duration) -> Result<(), KustomizeError> {
        if *self.synced.borrow() {
            return Ok(());
        }
        let mut synced = self.synced.clone();
        match tokio::time::timeout(within, synced.wait_for(|s| *s)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(KustomizeError::LocksNotSynced(within)),
        }
    }

    /// The live locked workload `kind` `namespace/name`, if the watch holds it.
    fn locked(&self, kind: &str, namespace: &str, name: &str) -> Option<Arc<DynamicObject>> {
        let (_, resource, store) = self.stores.iter().find(|(k, ..)| *k == kind)?;
        store.get(&ObjectRef::new_with(name, resource.clone()).within(namespace))
    }
}

/// The Kustomization that applied `object`, from its owner labels.
fn owner(object: &DynamicObject) -> Option<ObjectRef<Kustomization>> {
    let labels = object.labels();
    Some(ObjectRef::new(labels.get(NAME_LABEL)?).within(labels.get(NAMESPACE_LABEL)?))
}

/// The watches' task: raises the sync flags, and names the Kustomizations to reconcile when a
/// lock goes (the object leaves the label selector: deleted) and when one expires.
async fn watch(
    mut events: impl Stream<Item = Tagged> + Unpin,
    flags: Vec<SyncFlag>,
    ready: tokio::sync::watch::Sender<bool>,
    triggers: mpsc::UnboundedSender<ObjectRef<Kustomization>>,
) {
    let mut listed = vec![false; flags.len()];
    let mut expiries: BTreeMap<DateTime<Utc>, HashSet<ObjectRef<Kustomization>>> = BTreeMap::new();
    loop {
        let next = expiries.keys().next().copied();
        let sleep = async {
            match next {
                // A second late, so that the reconcile sees the lock expired.
                Some(at) => {
                    let wait = (at - Utc::now()).to_std().unwrap_or_default();
                    tokio::time::sleep(wait + Duration::from_secs(1)).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            event = events.next() => {
                let Some((index, event)) = event else { return };
                if let Some(flag) = flags.get(index) {
                    flag.observe(&event);
                }
                match event {
                    Ok(watcher::Event::InitDone) => {
                        if let Some(done) = listed.get_mut(index) {
                            *done = true;
                        }
                        if listed.iter().all(|l| *l) {
                            ready.send_replace(true);
                        }
                    }
                    Ok(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj)) => {
                        let lock = Lock::read(obj.labels(), obj.annotations());
                        if let (Some(expires), Some(ks)) =
                            (lock.and_then(|l| l.expires), owner(&obj))
                        {
                            expiries.entry(expires).or_default().insert(ks);
                        }
                    }
                    Ok(watcher::Event::Delete(obj)) => {
                        if let Some(ks) = owner(&obj) {
                            let _ = triggers.unbounded_send(ks);
                        }
                    }
                    Ok(watcher::Event::Init) => {}
                    Err(error) => tracing::warn!(
                        error = %weir_runtime::chain(&error),
                        "watch of locked workloads failed"
                    ),
                }
            }
            () = sleep => {
                if let Some((_, due)) = expiries.pop_first() {
                    for ks in due {
                        let _ = triggers.unbounded_send(ks);
                    }
                }
            }
        }
    }
}

/// One workload whose lock held in this reconcile, and what it kept.
struct Held {
    workload: String,
    lock: Lock,
    kept: Vec<KeptImage>,
}

/// Step, between resolve and apply: the targets that are locked workloads get their live
/// images (see the module doc); expired locks are released first. Fails only when the watches
/// of locked workloads have not listed them within `spec.timeout`.
pub async fn hold(
    ks: &Kustomization,
    ctx: &Context,
    targets: &mut [Target],
) -> Result<(), KustomizeError> {
    let workloads = targets.iter().any(is_workload);
    if !workloads {
        return Ok(());
    }
    ctx.locks.wait_synced(ks.spec.timeout()).await?;
    let now = Utc::now();
    let mut held = vec![];
    for target in targets.iter_mut().filter(|t| is_workload(t)) {
        let meta = &target.meta;
        let Some(live) = ctx.locks.locked(&meta.kind, &meta.namespace, &meta.name) else {
            continue;
        };
        let Some(lock) = Lock::read(live.labels(), live.annotations()) else {
            continue;
        };
        if lock.expired(now) {
            release(ctx, &meta.kind, &live, &lock).await;
            continue;
        }
        let Ok(live_json) = serde_json::to_value(&*live) else {
            continue;
        };
        let kept = keep_images(&meta.kind, &mut target.object, &live_json);
        if !kept.is_empty() {
            held.push(Held {
                workload: target.display(),
                lock,
                kept,
            });
        }
    }
    announce(ks, ctx, &held).await;
    Ok(())
}

fn is_workload(target: &Target) -> bool {
    WORKLOADS
        .iter()
        .any(|(g, k)| target.meta.group == *g && target.meta.kind == *k)
}

/// `LockHeld` on the Kustomization, when what the locks keep changed since it was last said.
async fn announce(ks: &Kustomization, ctx: &Context, held: &[Held]) {
    let key = format!("{}/{}", ks.namespace().unwrap_or_default(), ks.name_any());
    let note = held_note(held);
    let said = {
        let mut last = ctx
            .locks
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if note.is_empty() {
            last.remove(&key);
            return;
        }
        last.insert(key, note.clone()).as_ref() == Some(&note)
    };
    if !said {
        ctx.base
            .events
            .normal(ks, reasons::LOCK_HELD, "Apply", &note)
            .await;
    }
}

/// One line a workload: `Deployment/apps/web locked by alice: why; kept web=nginx:1.0 (git:
/// nginx:1.1)`.
fn held_note(held: &[Held]) -> String {
    held.iter()
        .map(|h| {
            let kept = h
                .kept
                .iter()
                .map(|k| format!("{}={} (git: {})", k.container, k.kept, k.wanted))
                .collect::<Vec<_>>()
                .join(", ");
            format!("{} {}; kept {kept}", h.workload, h.lock.describe())
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Removes an expired lock (as `weir-lock`) and says so on the workload. A failure is logged:
/// the lock has expired either way, and git's images are applied.
async fn release(ctx: &Context, kind: &str, live: &DynamicObject, lock: &Lock) {
    let Some(resource) = resource(kind) else {
        return;
    };
    let (namespace, name) = (live.namespace().unwrap_or_default(), live.name_any());
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.base.client.clone(), &namespace, &resource);
    let patch = weir_api::control::unlock_patch();
    let params = PatchParams {
        field_manager: Some(LOCK_FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    ctx.metrics.write();
    if let Err(error) = api.patch(&name, &params, &Patch::Merge(&patch)).await {
        tracing::warn!(
            error = %weir_runtime::chain(&error),
            workload = format!("{kind}/{namespace}/{name}"),
            "cannot remove an expired lock"
        );
        return;
    }
    let expired = lock
        .expires
        .map(|e| e.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_default();
    let note = format!(
        "lock expired at {expired} and was released ({}); the Kustomization applies git's images",
        lock.describe()
    );
    let meta = ObjectMeta {
        name: Some(name),
        namespace: Some(namespace),
        uid: live.metadata.uid.clone(),
        ..ObjectMeta::default()
    };
    let events = &ctx.base.events;
    let (reason, action) = (reasons::LOCK_EXPIRED, "Unlock");
    match kind {
        "Deployment" => {
            let object = Deployment {
                metadata: meta,
                ..Deployment::default()
            };
            events.normal(&object, reason, action, &note).await;
        }
        "StatefulSet" => {
            let object = StatefulSet {
                metadata: meta,
                ..StatefulSet::default()
            };
            events.normal(&object, reason, action, &note).await;
        }
        "DaemonSet" => {
            let object = DaemonSet {
                metadata: meta,
                ..DaemonSet::default()
            };
            events.normal(&object, reason, action, &note).await;
        }
        _ => {
            let object = CronJob {
                metadata: meta,
                ..CronJob::default()
            };
            events.normal(&object, reason, action, &note).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn deployment(containers: Value, init: Value) -> Value {
        json!({ "apiVersion": "apps/v1", "kind": "Deployment",
            "spec": { "replicas": 2, "template": { "spec": {
                "containers": containers, "initContainers": init } } } })
    }

    #[test]
    fn a_locked_workload_keeps_its_live_images_by_container_name() {
        let mut desired = deployment(
            json!([{ "name": "web", "image": "web:2.0" }, { "name": "new", "image": "new:1" }]),
            json!([{ "name": "migrate", "image": "migrate:2.0" }]),
        );
        let live = deployment(
            json!([{ "name": "sidecar", "image": "sidecar:9" }, { "name": "web", "image": "web:1.0" }]),
            json!([{ "name": "migrate", "image": "migrate:1.0" }]),
        );
        let kept = keep_images("Deployment", &mut desired, &live);
        assert_eq!(
            kept,
            [
                KeptImage {
                    container: "migrate".into(),
                    wanted: "migrate:2.0".into(),
                    kept: "migrate:1.0".into()
                },
                KeptImage {
                    container: "web".into(),
                    wanted: "web:2.0".into(),
                    kept: "web:1.0".into()
                },
            ]
        );
        let spec = &desired["spec"]["template"]["spec"];
        assert_eq!(spec["containers"][0]["image"], "web:1.0");
        // A container git adds keeps git's image; nothing else of git's object changes.
        assert_eq!(spec["containers"][1]["image"], "new:1");
        assert_eq!(spec["initContainers"][0]["image"], "migrate:1.0");
        assert_eq!(desired["spec"]["replicas"], 2);
        assert_eq!(spec["containers"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn the_same_images_are_not_reported_as_kept() {
        let mut desired = deployment(json!([{ "name": "web", "image": "web:1.0" }]), json!([]));
        let live = desired.clone();
        assert!(keep_images("Deployment", &mut desired, &live).is_empty());
        assert_eq!(desired, live);
    }

    #[test]
    fn a_cronjob_keeps_the_images_of_its_job_template() {
        let cronjob = |image: &str| {
            json!({ "spec": { "jobTemplate": { "spec": { "template": { "spec": {
                "containers": [{ "name": "backup", "image": image }] } } } } } })
        };
        let mut desired = cronjob("backup:2");
        let kept = keep_images("CronJob", &mut desired, &cronjob("backup:1"));
        assert_eq!(kept.len(), 1);
        assert_eq!(desired, cronjob("backup:1"));
    }

    #[test]
    fn malformed_or_podless_objects_are_left_as_git_has_them() {
        let live = deployment(json!([{ "name": "web", "image": "web:1.0" }]), json!([]));
        for mut desired in [
            json!({ "spec": "not a map" }),
            json!({ "spec": { "template": { "spec": { "containers": "x" } } } }),
            deployment(
                json!([{ "image": "nameless:2" }, { "name": "web" }]),
                json!(null),
            ),
        ] {
            let before = desired.clone();
            assert!(keep_images("Deployment", &mut desired, &live).is_empty());
            assert_eq!(desired, before);
        }
        let mut hr = json!({ "spec": { "values": { "image": "x:2" } } });
        assert!(keep_images("HelmRelease", &mut hr, &live).is_empty());
    }

    #[test]
    fn a_held_note_names_the_workload_the_lock_and_each_image() {
        let held = Held {
            workload: "Deployment/apps/web".into(),
            lock: Lock {
                reason: "incident 42".into(),
                by: Some("alice".into()),
                at: None,
                expires: None,
            },
            kept: vec![KeptImage {
                container: "web".into(),
                wanted: "web:2.0".into(),
                kept: "web:1.0".into(),
            }],
        };
        assert_eq!(
            held_note(&[held]),
            "Deployment/apps/web locked by alice: incident 42; kept web=web:1.0 (git: web:2.0)"
        );
        assert_eq!(held_note(&[]), "");
    }
}
