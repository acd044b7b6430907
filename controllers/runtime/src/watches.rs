//! One watch and one cache per kind per process, shared by every controller that reads the kind.
//!
//! `weir controllers` runs controllers that read each other's kinds: GitRepository is reconciled
//! by the source controller and watched by the kustomize controller (a new artifact starts its
//! Kustomizations) and the image automation; Kustomization by its own controller and by its
//! dependents. [`Watches`] holds one watcher and one [`Store`] per kind and namespace scope,
//! started on first use, and gives each reader a [`Subscription`]: the shared store and a stream
//! of the objects the watch applies. Each subscriber filters the stream itself ([`changed`]): a
//! controller's own reconciles start only on spec changes, while a cross-kind watch sees status
//! changes too, so no predicate is ever applied on the shared stream.
//!
//! The one watch and store are kube-runtime's (`watcher` + `reflect`), and the controllers take
//! the subscriptions through kube-runtime's shared-stream entry points
//! (`Controller::for_shared_stream`, `watches_shared_stream`). The fan-out to the subscribers is
//! Weir's, not `reflector::store_shared` + `Writer::subscribe`, because kube-runtime 5.0's
//! `ReflectHandle` (a) returns `Pending` without a waker when the object of a dispatched reference
//! was deleted before it was read (a finalizer removed, then the object gone), which stalls that
//! subscriber for good; (b) never shows a subscriber created after the first list the objects
//! listed; and (c) lets one subscriber that is not polled block all others (its buffer is
//! bounded). Here each subscriber has its own queue of the objects themselves, starting with the
//! store's contents; the queue goes with the subscriber when its controller stops.
//!
//! [`changed`]: Subscription::changed

use std::{
    any::{Any, TypeId},
    collections::HashMap,
    fmt::Debug,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    task::{Context, Poll},
};

use futures::{Stream, StreamExt, channel::mpsc, future};
use kube::{
    Api, Client, Resource,
    runtime::{
        Predicate, PredicateConfig, WatchStreamExt,
        reflector::{self, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;

use crate::controller::{AbortOnDropHandle, SyncFlag, Synced};

/// What a shared watch can watch: a namespaced kind known at compile time.
pub trait Watched:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> Watched for K where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static
{
}

/// The watches of one process, one per kind and namespace scope; cloned into every controller
/// started in the process. A controller started alone makes its own.
#[derive(Clone)]
pub struct Watches(Arc<Registry>);

struct Registry {
    client: Client,
    watches: Mutex<HashMap<Scope, Arc<dyn Any + Send + Sync>>>,
}

/// A kind, and the namespace it is watched in (all when `None`).
type Scope = (TypeId, Option<String>);

impl Debug for Watches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watches")
            .field("watches", &self.len())
            .finish_non_exhaustive()
    }
}

impl Watches {
    /// No watches yet; they will list and watch with `client`.
    #[must_use]
    pub fn new(client: Client) -> Self {
        Self(Arc::new(Registry {
            client,
            watches: Mutex::default(),
        }))
    }

    /// A reader of `K` in `namespace` (all namespaces when `None`), on the one watch of that
    /// scope, which starts with the first reader; the watch counts (once) in `synced`.
    ///
    /// Must be called inside a Tokio runtime.
    pub fn subscribe<K: Watched>(
        &self,
        namespace: Option<&str>,
        synced: &mut Synced,
    ) -> Subscription<K> {
        let watch = self.watch::<K>(namespace);
        synced.insert(&watch.synced);
        watch.subscribe()
    }

    /// How many watches run.
    #[must_use]
    pub fn len(&self) -> usize {
        lock(&self.0.watches).len()
    }

    /// Whether no watch runs yet.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn watch<K: Watched>(&self, namespace: Option<&str>) -> Arc<SharedWatch<K>> {
        let mut watches = lock(&self.0.watches);
        let scope = (TypeId::of::<K>(), namespace.map(str::to_owned));
        if let Some(watch) = watches
            .get(&scope)
            .and_then(|watch| Arc::clone(watch).downcast::<SharedWatch<K>>().ok())
        {
            return watch;
        }
        let api = match namespace {
            Some(ns) => Api::namespaced(self.0.client.clone(), ns),
            None => Api::all(self.0.client.clone()),
        };
        let watch = Arc::new(SharedWatch::start(api));
        watches.insert(scope, watch.clone());
        watch
    }
}

/// One kind's watcher and store, and the queues of its subscribers. The watch stops when the
/// registry and every subscription are gone.
struct SharedWatch<K: Watched> {
    store: Store<K>,
    subscribers: Arc<Subscribers<K>>,
    synced: SyncFlag,
    _task: AbortOnDropHandle<()>,
}

impl<K: Watched> SharedWatch<K> {
    fn start(api: Api<K>) -> Self {
        let (store, writer) = reflector::store::<K>();
        let subscribers = Arc::new(Subscribers(Mutex::default()));
        let synced = SyncFlag::default();
        let events = watcher(api, watcher::Config::default())
            .default_backoff()
            .reflect(writer);
        let (reader, fanout, flag) = (store.clone(), subscribers.clone(), synced.clone());
        let task = AbortOnDropHandle::new(tokio::spawn(events.for_each(move |event| {
            flag.observe(&event);
            match event {
                Ok(watcher::Event::Apply(obj)) => fanout.send([Arc::new(obj)]),
                // A (re)list: every object listed, now in the store.
                Ok(watcher::Event::InitDone) => fanout.send(reader.state()),
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(error = %crate::chain(&error), kind = %K::kind(&()), "watch stream error");
                }
            }
            future::ready(())
        })));
        Self {
            store,
            subscribers,
            synced,
            _task: task,
        }
    }

    /// A new subscriber's queue starts with what the store holds, taken under the lock the
    /// watch sends under: an object the store got before is in it, one it gets after is sent.
    fn subscribe(self: &Arc<Self>) -> Subscription<K> {
        let (sender, objects) = mpsc::unbounded();
        let mut subscribers = lock(&self.subscribers.0);
        for obj in self.store.state() {
            let _ = sender.unbounded_send(obj);
        }
        subscribers.push(sender);
        Subscription {
            store: self.store.clone(),
            objects,
            _watch: self.clone(),
        }
    }
}

struct Subscribers<K>(Mutex<Vec<mpsc::UnboundedSender<Arc<K>>>>);

impl<K> Subscribers<K> {
    /// Queues `objects` for every subscriber, forgetting those that are gone.
    fn send(&self, objects: impl IntoIterator<Item = Arc<K>>) {
        let mut subscribers = lock(&self.0);
        for obj in objects {
            subscribers.retain(|sender| sender.unbounded_send(obj.clone()).is_ok());
        }
    }
}

/// One reader of a shared watch: its store, and (as a stream) every object the watch applies,
/// starting with those already stored. Keeps the watch running while it exists.
pub struct Subscription<K: Watched> {
    store: Store<K>,
    objects: mpsc::UnboundedReceiver<Arc<K>>,
    _watch: Arc<SharedWatch<K>>,
}

impl<K: Watched> Debug for Subscription<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("kind", &K::kind(&()))
            .finish_non_exhaustive()
    }
}

impl<K: Watched> Subscription<K> {
    /// The shared store of the kind.
    #[must_use]
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// The objects whose `predicate` hash changed (kube-runtime's `predicate_filter`, for this
    /// subscriber alone).
    pub fn changed<P>(self, predicate: P) -> impl Stream<Item = Arc<K>> + Send + 'static
    where
        P: Predicate<K> + Send + 'static,
    {
        self.map(|obj| Ok::<K, watcher::Error>(Arc::unwrap_or_clone(obj)))
            .predicate_filter(predicate, PredicateConfig::default())
            .filter_map(|obj| future::ready(obj.ok().map(Arc::new)))
    }
}

impl<K: Watched> Stream for Subscription<K> {
    type Item = Arc<K>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.objects.poll_next_unpin(cx)
    }
}

/// The lock, also after a panic elsewhere: the registry and the queues stay consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::{
        convert::Infallible,
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    use bytes::Bytes;
    use futures::stream;
    use http_body::Frame;
    use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::ResourceExt;
    use serde_json::json;

    use super::*;

    /// Requests the fake API server answered: lists and watches of ConfigMaps in `test`.
    #[derive(Debug, Default)]
    struct Requests {
        lists: AtomicUsize,
        watches: AtomicUsize,
    }

    fn config_map(version: &str, label: &str, data: &str) -> serde_json::Value {
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "a", "namespace": "test", "uid": "u1", "resourceVersion": version,
                "labels": { "l": label },
            },
            "data": { "d": data },
        })
    }

    /// An API server whose one ConfigMap is listed at version 1, then changed twice by the
    /// watch: version 2 only in its labels (as a status write would), version 3 in its data.
    fn fake_client(requests: Arc<Requests>) -> Client {
        let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
            let requests = requests.clone();
            async move {
                assert_eq!(request.uri().path(), "/api/v1/namespaces/test/configmaps");
                let body: BoxBody<Bytes, Infallible> = if request
                    .uri()
                    .query()
                    .unwrap_or_default()
                    .contains("watch=true")
                {
                    requests.watches.fetch_add(1, Ordering::SeqCst);
                    let events = [
                        json!({"type": "MODIFIED", "object": config_map("2", "x", "one")}),
                        json!({"type": "MODIFIED", "object": config_map("3", "x", "two")}),
                    ]
                    .map(|event| Ok(Frame::data(Bytes::from(format!("{event}\n")))));
                    // The watch stays open.
                    BodyExt::boxed(StreamBody::new(
                        stream::iter(events).chain(stream::pending()),
                    ))
                } else {
                    requests.lists.fetch_add(1, Ordering::SeqCst);
                    let list = json!({
                        "apiVersion": "v1", "kind": "ConfigMapList",
                        "metadata": { "resourceVersion": "1" },
                        "items": [config_map("1", "", "one")],
                    });
                    Full::new(Bytes::from(list.to_string())).boxed()
                };
                Ok::<_, Infallible>(http::Response::new(body))
            }
        });
        Client::new(service, "default")
    }

    /// The versions `n` next objects of `stream` have.
    async fn versions(stream: impl Stream<Item = Arc<ConfigMap>> + Unpin, n: usize) -> Vec<String> {
        let next = stream
            .take(n)
            .map(|cm| cm.resource_version().unwrap_or_default());
        tokio::time::timeout(Duration::from_secs(10), next.collect())
            .await
            .unwrap_or_default()
    }

    #[allow(clippy::unnecessary_wraps)] // The signature `predicate_filter` asks for.
    fn data_trigger(cm: &ConfigMap) -> Option<u64> {
        use std::hash::{DefaultHasher, Hash, Hasher};
        let mut hasher = DefaultHasher::new();
        cm.data.hash(&mut hasher);
        Some(hasher.finish())
    }

    #[tokio::test]
    async fn every_subscriber_of_a_kind_reads_the_one_watch_through_its_own_predicate() {
        let requests = Arc::new(Requests::default());
        let watches = Watches::new(fake_client(requests.clone()));
        let (mut synced, mut other) = (Synced::default(), Synced::default());
        let all = watches.subscribe::<ConfigMap>(Some("test"), &mut synced);
        let data = watches.subscribe::<ConfigMap>(Some("test"), &mut synced);
        let data_store = data.store();
        let data = Box::pin(data.changed(data_trigger));
        let _third = watches.subscribe::<ConfigMap>(Some("test"), &mut other);
        assert_eq!(watches.len(), 1);
        assert_eq!((synced.len(), other.len()), (1, 1));
        synced.extend(&other);
        assert_eq!(synced.len(), 1, "a shared watch counts once");

        // The unfiltered subscriber sees the label change, the filtered one only the data's.
        assert_eq!(versions(all, 3).await, ["1", "2", "3"]);
        assert_eq!(versions(data, 2).await, ["1", "3"]);
        assert!(synced.is_synced());
        assert_eq!(data_store.state().len(), 1);

        // One subscribing after the list still gets what is stored, from the same cache.
        let late = watches.subscribe::<ConfigMap>(Some("test"), &mut Synced::default());
        assert_eq!(versions(late, 1).await, ["3"]);
        assert_eq!(requests.lists.load(Ordering::SeqCst), 1);
        assert_eq!(requests.watches.load(Ordering::SeqCst), 1);
    }
}
