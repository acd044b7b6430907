//! Kubernetes Events about Weir's objects, as `kubectl describe` and `flux events` show them.
//! Event reasons equal condition reasons.
//!
//! Events are core/v1 Events, aggregated the way client-go's recorder does it: the same
//! object, type, reason and message within [`AGGREGATION_WINDOW`] bumps `count` on the existing
//! Event instead of creating another, while a different message (a new revision) is a new Event.

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::core::v1::{Event, EventSource, ObjectReference},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource,
    api::{Patch, PatchParams, PostParams},
};

/// How long a repeated event is folded into the first one.
pub const AGGREGATION_WINDOW: Duration = Duration::from_secs(10 * 60);
/// The API server limits an event's message to 1 kB in practice (`kubectl describe` truncates).
const MAX_NOTE: usize = 1024;
/// At most this many distinct recent events are remembered for aggregation.
const MAX_REMEMBERED: usize = 4096;

/// Whether an event reports normal operation or a problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        }
    }
}

struct Seen {
    name: String,
    namespace: String,
    count: i32,
    at: Instant,
}

/// Publishes Events for one controller. Failing to publish is logged, never fatal.
pub struct EventPublisher {
    client: Client,
    component: String,
    recent: Mutex<HashMap<u64, Seen>>,
}

impl std::fmt::Debug for EventPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EventPublisher({})", self.component)
    }
}

impl EventPublisher {
    /// `component` names the reporting controller, such as `weir-source-controller`.
    #[must_use]
    pub fn new(client: Client, component: &str) -> Self {
        Self {
            client,
            component: component.to_owned(),
            recent: Mutex::default(),
        }
    }

    /// A Normal event.
    pub async fn normal<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        reason: &str,
        action: &str,
        note: &str,
    ) {
        self.publish(obj, EventType::Normal, reason, action, note)
            .await;
    }

    /// A Warning event.
    pub async fn warning<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        reason: &str,
        action: &str,
        note: &str,
    ) {
        self.publish(obj, EventType::Warning, reason, action, note)
            .await;
    }

    /// Publishes the event a [`crate::decision::decide`] chose, if any, under `action`.
    pub async fn announce<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        notice: Option<&crate::decision::Notice>,
        action: &str,
    ) {
        if let Some(n) = notice {
            self.publish(obj, n.r#type, &n.reason, action, &n.message)
                .await;
        }
    }

    /// Publishes an event about `obj`. `note` must already be redacted.
    pub async fn publish<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        action: &str,
        note: &str,
    ) {
        let note = truncate(note, MAX_NOTE);
        let reference = obj.object_ref(&());
        let key = {
            let mut h = DefaultHasher::new();
            (
                &reference.uid,
                &reference.name,
                &reference.namespace,
                type_,
                reason,
                note,
            )
                .hash(&mut h);
            h.finish()
        };
        if let Err(error) = self
            .publish_or_bump(key, reference, type_, reason, action, note)
            .await
        {
            tracing::warn!(error = %crate::chain(&error), reason, "cannot publish event");
        }
    }

    async fn publish_or_bump(
        &self,
        key: u64,
        reference: ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: &str,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let repeat = {
            let mut recent = self
                .recent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            recent.retain(|_, seen| seen.at.elapsed() < AGGREGATION_WINDOW);
            recent.get_mut(&key).map(|seen| {
                seen.count += 1;
                seen.at = Instant::now();
                (seen.name.clone(), seen.namespace.clone(), seen.count)
            })
        };
        if let Some((name, namespace, count)) = repeat {
            let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
            let patch = serde_json::json!({ "count": count, "lastTimestamp": Time(now) });
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return Ok(()),
                // Events expire (one hour by default): publish a new one.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }

        let namespace = reference
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let object_name = reference.name.clone().unwrap_or_default();
        let name = format!("{object_name}.{:x}", now.as_nanosecond());
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: reference,
            type_: Some(type_.as_str().to_owned()),
            reason: Some(reason.to_owned()),
            action: Some(action.to_owned()),
            message: Some(note.to_owned()),
            count: Some(1),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            reporting_component: Some(self.component.clone()),
            reporting_instance: Some(
                std::env::var("POD_NAME").unwrap_or_else(|_| self.component.clone()),
            ),
            source: Some(EventSource {
                component: Some(self.component.clone()),
                host: None,
            }),
            ..Event::default()
        };
        Api::<Event>::namespaced(self.client.clone(), &namespace)
            .create(&PostParams::default(), &event)
            .await?;
        let mut recent = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if recent.len() < MAX_REMEMBERED {
            recent.insert(
                key,
                Seen {
                    name,
                    namespace,
                    count: 1,
                    at: Instant::now(),
                },
            );
        }
        Ok(())
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
#[must_use]
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(super::truncate("héllo", 2), "h");
        assert_eq!(super::truncate("héllo", 3), "hé");
        assert_eq!(super::truncate("abc", 10), "abc");
    }
}
