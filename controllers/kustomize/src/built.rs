//! The last build of each Kustomization, so that a reconcile with nothing new applies (and
//! detects drift) without building again.
//!
//! A build's output depends only on the artifact (its digest), the spec (its generation) and
//! the kustomize binary, which is fixed for the process: builds run with no network and an
//! empty environment, and variable substitution happens after the build, on every reconcile.
//! So the cache is exact. Entries are kept as compact JSON (a fraction of the parsed form's
//! memory), one per Kustomization, and dropped when it is deleted.

use std::{collections::HashMap, sync::Mutex};

use crate::build::Manifest;

/// One entry per Kustomization, by [`BuildCache::key`].
#[derive(Debug, Default)]
pub struct BuildCache(Mutex<HashMap<String, Entry>>);

#[derive(Debug)]
struct Entry {
    digest: String,
    generation: Option<i64>,
    manifests: Box<str>,
}

impl BuildCache {
    /// The entry's key: the object's UID too, so that a Kustomization deleted and made again
    /// under the same name (its generation starting over) never gets the old one's build, even
    /// when its deletion was not seen.
    #[must_use]
    pub fn key(ks: &weir_api::Kustomization) -> String {
        use kube::ResourceExt;
        format!(
            "{}/{}/{}",
            ks.namespace().unwrap_or_default(),
            ks.name_any(),
            ks.uid().unwrap_or_default()
        )
    }

    /// The manifests last built for `key` from the artifact `digest` at `generation`.
    pub fn get(&self, key: &str, digest: &str, generation: Option<i64>) -> Option<Vec<Manifest>> {
        let entries = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = entries.get(key)?;
        if entry.digest != digest || entry.generation != generation {
            return None;
        }
        // Written by `put` from the same type; a failure would only mean building again.
        serde_json::from_str(&entry.manifests).ok()
    }

    /// Keeps `manifests` as `key`'s build of `digest` at `generation`, replacing the last.
    pub fn put(&self, key: &str, digest: &str, generation: Option<i64>, manifests: &[Manifest]) {
        let Ok(json) = serde_json::to_string(manifests) else {
            return;
        };
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                key.to_owned(),
                Entry {
                    digest: digest.to_owned(),
                    generation,
                    manifests: json.into_boxed_str(),
                },
            );
    }

    /// Forgets `key` (the Kustomization was deleted).
    pub fn remove(&self, key: &str) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_build_is_reused_only_for_the_same_digest_and_generation() {
        let cache = BuildCache::default();
        let built = vec![Manifest {
            object: serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}}),
            file: "apps/a.yaml".to_owned(),
        }];
        assert!(cache.get("ns/app", "sha256:1", Some(1)).is_none());
        cache.put("ns/app", "sha256:1", Some(1), &built);
        assert_eq!(
            cache.get("ns/app", "sha256:1", Some(1)),
            Some(built.clone())
        );
        assert!(
            cache.get("ns/app", "sha256:2", Some(1)).is_none(),
            "new artifact"
        );
        assert!(
            cache.get("ns/app", "sha256:1", Some(2)).is_none(),
            "new spec"
        );
        assert!(cache.get("ns/other", "sha256:1", Some(1)).is_none());
        cache.remove("ns/app");
        assert!(cache.get("ns/app", "sha256:1", Some(1)).is_none());
    }
}
