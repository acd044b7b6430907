use std::fmt::{Debug, Display};
use std::future::Future;
use std::time::{Duration, Instant};

use kube::core::object::HasStatus;
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use std::sync::PoisonError;

use weir_api::{condition::find_condition, status::ObjectStatus, types};

use crate::Error;

/// How long [`wait_until`] waits. Generous on purpose: these waits let a slow 2-core machine
/// catch up; they are never timing assertions.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(120);

const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Polls `check` until it returns `Ok`, for at most [`DEFAULT_DEADLINE`].
///
/// `check` returns `Err` with what it saw while the condition does not hold yet ("Available=False
/// (MinimumReplicasUnavailable)", or the API error); on timeout the error says `what` was awaited
/// and the last thing seen.
pub async fn wait_until<T, E, F, Fut>(what: &str, check: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Display,
{
    wait_until_within(what, DEFAULT_DEADLINE, check).await
}

/// [`wait_until`] with its own deadline.
pub async fn wait_until_within<T, E, F, Fut>(
    what: &str,
    deadline: Duration,
    mut check: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Display,
{
    let start = Instant::now();
    loop {
        let last_seen = match check().await {
            Ok(value) => return Ok(value),
            Err(not_yet) => not_yet.to_string(),
        };
        if start.elapsed() >= deadline {
            return Err(Error::Timeout {
                what: what.to_owned(),
                after: deadline,
                last_seen,
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Waits until the `Ready` condition of `name` has `status` (`"True"`, `"False"` or
/// `"Unknown"`), and `reason` when one is given, at the object's current generation; returns the
/// object as it was then.
pub async fn wait_ready<K>(
    api: &Api<K>,
    name: &str,
    status: &str,
    reason: Option<&str>,
) -> Result<K, Error>
where
    K: Resource<DynamicType = ()> + HasStatus + Clone + DeserializeOwned + Debug,
    K::Status: ObjectStatus,
{
    let kind = K::kind(&());
    let what = match reason {
        Some(reason) => format!("{kind} {name} Ready={status} ({reason})"),
        None => format!("{kind} {name} Ready={status}"),
    };
    wait_until(&what, || async move {
        let object = api.get(name).await.map_err(|e| e.to_string())?;
        let (ready, observed) = object
            .status()
            .map(|s| (s.ready().cloned(), s.observed_generation()))
            .unwrap_or_default();
        match ready {
            Some(c)
                if format!("{:?}", c.status) == status
                    && reason.is_none_or(|r| r == c.reason)
                    && observed == object.meta().generation =>
            {
                Ok(object)
            }
            other => Err(format!(
                "Ready is {other:?} (observed generation {observed:?})"
            )),
        }
    })
    .await
}

/// Waits until `name` no longer exists in `api` (its finalizers, if any, done), through a watch
/// (kube-runtime's `await_condition`), for at most [`DEFAULT_DEADLINE`].
pub async fn wait_gone<K>(api: &Api<K>, name: &str) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let what = format!("{} {name} to be gone", K::kind(&()));
    await_within(api, name, &what, DEFAULT_DEADLINE, |object: Option<&K>| {
        object.is_none()
    })
    .await
}

/// Waits through a watch until `condition` (`what`) holds for `name` in `api`, for at most
/// `deadline`; on timeout the error says what the object was like last (its deletion and
/// finalizers).
pub async fn await_within<K>(
    api: &Api<K>,
    name: &str,
    what: &str,
    deadline: Duration,
    condition: impl kube::runtime::wait::Condition<K>,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let awaited = kube::runtime::wait::await_condition(api.clone(), name, condition);
    match tokio::time::timeout(deadline, awaited).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(Error::Timeout {
            what: what.to_owned(),
            after: Duration::ZERO,
            last_seen: format!("the watch failed: {error}"),
        }),
        Err(_) => Err(Error::Timeout {
            what: what.to_owned(),
            after: deadline,
            last_seen: match api.get_opt(name).await {
                Ok(None) => "gone".to_owned(),
                Ok(Some(object)) => format!(
                    "deletionTimestamp {:?}, finalizers {:?}",
                    object.meta().deletion_timestamp,
                    object.meta().finalizers
                ),
                Err(e) => e.to_string(),
            },
        }),
    }
}

/// Every `(reason, message, Ready's status)` a watch of one object saw its `Reconciling`
/// condition with, in order (a repeat of the last one is not recorded again).
pub type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, String, String)>>>;

/// Watches `name` from now on (also before it exists) in a background task, recording each
/// `Reconciling` condition it is seen with, so a test sees work in progress that no poll would
/// catch.
#[must_use]
pub fn watch_reconciling<K>(api: &Api<K>, name: &str) -> Seen
where
    K: Resource + HasStatus + Clone + DeserializeOwned + Debug + Send + 'static,
    K::Status: ObjectStatus,
{
    use futures::StreamExt;
    let seen = Seen::default();
    let (stream, record) = (
        kube::runtime::watcher::watch_object(api.clone(), name),
        seen.clone(),
    );
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            // None until the object exists; a watch error is retried by the watcher.
            let Ok(Some(obj)) = item else { continue };
            let Some(status) = obj.status() else { continue };
            let conditions = status.conditions();
            if let Some(c) = find_condition(conditions, types::RECONCILING) {
                let ready = find_condition(conditions, types::READY)
                    .map(|r| format!("{:?}", r.status))
                    .unwrap_or_default();
                let entry = (c.reason.clone(), c.message.clone(), ready);
                let mut seen = record.lock().unwrap_or_else(PoisonError::into_inner);
                if seen.last() != Some(&entry) {
                    seen.push(entry);
                }
            }
        }
    });
    seen
}

/// Waits until a [`watch_reconciling`] has seen `entry`.
pub async fn wait_seen(seen: &Seen, entry: (String, String, String)) -> Result<(), Error> {
    wait_until(&format!("a watch to see Reconciling {entry:?}"), || {
        let (seen, entry) = (seen.clone(), entry.clone());
        async move {
            let seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
            if seen.contains(&entry) {
                Ok(())
            } else {
                Err(format!("seen {seen:?}"))
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::wait_until_within;

    #[tokio::test]
    async fn returns_the_value_once_the_condition_holds() {
        let mut calls = 0;
        let value = wait_until_within("the third call", Duration::from_secs(10), || {
            calls += 1;
            let seen = calls;
            async move {
                if seen >= 3 {
                    Ok(seen)
                } else {
                    Err(format!("call {seen}"))
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(value, 3);
    }

    #[tokio::test]
    async fn a_timeout_names_what_was_awaited_and_the_last_thing_seen() {
        let err = wait_until_within(
            "the moon to turn blue",
            Duration::from_millis(300),
            || async { Err::<(), _>("grey") },
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("the moon to turn blue"), "{err}");
        assert!(err.contains("last seen: grey"), "{err}");
    }
}
