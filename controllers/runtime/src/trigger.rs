//! Which changes of an object start a reconcile. Status writes must not (or every reconcile
//! would trigger the next); spec changes, reconcile requests, finalizer and deletion changes must.

use std::hash::{DefaultHasher, Hash, Hasher};

use kube::Resource;
use weir_api::RECONCILE_REQUESTED_AT_ANNOTATION;

/// A hash of what should trigger a reconcile: generation, the `requestedAt` and
/// `weir.dev/rollback-to` annotations (and lock's), finalizers and the deletion timestamp. Use
/// with `predicate_filter`.
pub fn reconcile_trigger<K: Resource>(obj: &K) -> Option<u64> {
    let meta = obj.meta();
    let mut hasher = DefaultHasher::new();
    meta.generation.hash(&mut hasher);
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(RECONCILE_REQUESTED_AT_ANNOTATION))
        .hash(&mut hasher);
    // Weir's rollback is an annotation the controllers honour: set or removed (also with
    // kubectl), it takes effect at once.
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(weir_api::control::ROLLBACK_TO))
        .hash(&mut hasher);
    // Weir's locks (`weir lock`, or kubectl): a lock set, changed or removed is honoured at once.
    meta.labels
        .as_ref()
        .and_then(|l| l.get(weir_api::control::LOCKED_LABEL))
        .hash(&mut hasher);
    for key in [
        weir_api::control::LOCK_REASON,
        weir_api::control::LOCK_EXPIRES,
        weir_api::control::ALLOW_MASS_PRUNE,
    ] {
        meta.annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .hash(&mut hasher);
    }
    meta.finalizers.hash(&mut hasher);
    meta.deletion_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .hash(&mut hasher);
    Some(hasher.finish())
}

/// A hash of an object's readiness at its generation (its Ready condition's status and
/// observed generation, and the generation): what of a dependency starts the objects that
/// depend on it. Use with `predicate_filter`.
#[allow(clippy::unnecessary_wraps)] // The signature `predicate_filter` asks for.
pub fn readiness_trigger<K>(obj: &K) -> Option<u64>
where
    K: Resource + kube::core::object::HasStatus<Status: weir_api::status::ObjectStatus>,
{
    use weir_api::status::ObjectStatus as _;
    let mut hasher = DefaultHasher::new();
    obj.status()
        .and_then(|s| s.ready())
        .map(|c| (c.status, c.observed_generation))
        .hash(&mut hasher);
    obj.meta().generation.hash(&mut hasher);
    Some(hasher.finish())
}
