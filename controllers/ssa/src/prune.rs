//! Pruning: deleting the objects that left a set, when they still carry the owner's labels and
//! no annotation keeps them, and waiting for them to be gone.

use std::{collections::HashMap, time::Instant};

use kube::{
    Api, ResourceExt as _,
    api::{ApiResource, DeleteParams, DynamicObject, PropagationPolicy},
};
use weir_api::kustomize::{ObjMetadata, annotations};

use crate::{
    ApplySet, Change, ChangeSet, KindCache, ObjectError, ObjectErrors, Polls, SsaError,
    error::is_code, object::display,
};

/// An object recorded as applied (an inventory entry): who it is and the version it was
/// applied at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// Its identity.
    pub meta: ObjMetadata,
    /// The version of its group it was applied at.
    pub version: String,
}

/// An object [`ApplySet::prune_tracked`] deleted.
#[derive(Clone)]
pub struct Deleted {
    api: Api<DynamicObject>,
    meta: ObjMetadata,
    uid: Option<String>,
}

impl std::fmt::Debug for Deleted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deleted")
            .field("meta", &self.meta)
            .field("uid", &self.uid)
            .finish_non_exhaustive()
    }
}

/// Kinds resolved during one prune, by group, version and kind.
type Resolved = HashMap<(String, String, String), Option<(ApiResource, bool)>>;

impl ApplySet<'_> {
    /// Deletes the objects of `stale` that still carry every one of the `owner` labels, unless
    /// annotated `prune: disabled` or `reconcile: disabled`. Returns the deletions made.
    pub async fn prune(
        &self,
        stale: &[Recorded],
        owner: &[(&str, &str)],
    ) -> Result<ChangeSet, SsaError> {
        self.prune_tracked(stale, owner)
            .await
            .map(|(changes, _)| changes)
    }

    /// [`Self::prune`], also returning each deleted object for [`Self::wait_terminated`].
    pub async fn prune_tracked(
        &self,
        stale: &[Recorded],
        owner: &[(&str, &str)],
    ) -> Result<(ChangeSet, Vec<Deleted>), SsaError> {
        let mut changes = ChangeSet::default();
        let mut deleted = vec![];
        let mut errors = vec![];
        let mut kinds = Resolved::new();
        for Recorded { meta, version } in stale {
            // A kind no longer served at any version has no objects left to delete.
            let Some((resource, namespaced)) = self.resolve(&mut kinds, meta, version).await?
            else {
                continue;
            };
            let api = self.api_for(&resource, namespaced, &meta.namespace);
            self.counter.request();
            let live = match api.get_opt(&meta.name).await {
                Ok(Some(live)) => live,
                Ok(None) => continue,
                Err(source) => {
                    errors.push(ObjectError {
                        object: display(meta),
                        source: source.into(),
                    });
                    continue;
                }
            };
            if !Self::prunable(&live, owner) {
                continue;
            }
            let params = DeleteParams {
                propagation_policy: Some(PropagationPolicy::Background),
                ..DeleteParams::default()
            };
            self.counter.write();
            match api.delete(&meta.name, &params).await {
                Ok(_) => {
                    changes.entries.push((display(meta), Change::Deleted));
                    deleted.push(Deleted {
                        api,
                        meta: meta.clone(),
                        uid: live.metadata.uid,
                    });
                }
                Err(e) if is_code(&e, 404) => {}
                Err(source) => errors.push(ObjectError {
                    object: display(meta),
                    source: source.into(),
                }),
            }
        }
        if errors.is_empty() {
            Ok((changes, deleted))
        } else {
            Err(SsaError::Delete(ObjectErrors(errors)))
        }
    }

    /// The kind of a recorded object, asked of the server once per prune.
    async fn resolve(
        &self,
        kinds: &mut Resolved,
        meta: &ObjMetadata,
        version: &str,
    ) -> Result<Option<(ApiResource, bool)>, SsaError> {
        let key = (meta.group.clone(), version.to_owned(), meta.kind.clone());
        if let Some(known) = kinds.get(&key) {
            return Ok(known.clone());
        }
        let found =
            KindCache::resolve_served(self.client, self.counter, &meta.group, version, &meta.kind)
                .await
                .map_err(|source| SsaError::PruneDiscovery {
                    object: display(meta),
                    source: source.into(),
                })?;
        kinds.insert(key, found.clone());
        Ok(found)
    }

    /// Whether a live object is the owner's to prune: it carries every owner label and no
    /// `prune: disabled` or `reconcile: disabled` annotation.
    #[must_use]
    pub fn prunable(live: &DynamicObject, owner: &[(&str, &str)]) -> bool {
        let (labels, notes) = (live.labels(), live.annotations());
        let is_owned = owner
            .iter()
            .all(|(key, value)| labels.get(*key).map(String::as_str) == Some(*value));
        let disabled = |key: &str| notes.get(key).map(String::as_str) == Some("disabled");
        is_owned && !disabled(annotations::PRUNE) && !disabled(annotations::RECONCILE)
    }

    /// Waits until every `deleted` object is gone from the API server (finalizers and the
    /// garbage collector done), or the timeout passes; the error names those still there.
    ///
    /// Polled (50 ms doubling to 1 s) rather than one kube-runtime `await_condition(is_deleted)`
    /// per object: a Kustomization may prune hundreds of objects of many kinds at once, and
    /// one watch per object would open as many long-lived requests for a wait that mostly
    /// ends at the first poll.
    pub async fn wait_terminated(&self, deleted: &[Deleted]) -> Result<(), SsaError> {
        let deadline = Instant::now() + self.timeout;
        let mut polls = Polls::new();
        let mut pending: Vec<&Deleted> = deleted.iter().collect();
        loop {
            let mut still = vec![];
            for object in pending {
                self.counter.request();
                match object.api.get_opt(&object.meta.name).await {
                    // The same name recreated by someone else is another object.
                    Ok(Some(live)) if live.metadata.uid == object.uid => still.push(object),
                    Ok(_) => {}
                    Err(_) => still.push(object),
                }
            }
            if still.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(SsaError::NotTerminated {
                    objects: still.iter().map(|d| display(&d.meta)).collect(),
                });
            }
            pending = still;
            polls.sleep().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(labels: &[(&str, &str)], notes: &[(&str, &str)]) -> DynamicObject {
        let map = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let mut object = DynamicObject::new(
            "a",
            &ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&()),
        );
        object.metadata.labels = Some(map(labels));
        object.metadata.annotations = Some(map(notes));
        object
    }

    #[test]
    fn only_objects_with_every_owner_label_and_no_opt_out_are_pruned() {
        let owner = [("o/name", "app"), ("o/namespace", "ns")];
        assert!(ApplySet::prunable(&live(&owner, &[]), &owner));
        assert!(!ApplySet::prunable(&live(&owner[..1], &[]), &owner));
        assert!(!ApplySet::prunable(
            &live(&[("o/name", "app"), ("o/namespace", "other")], &[]),
            &owner
        ));
        for key in [annotations::PRUNE, annotations::RECONCILE] {
            assert!(!ApplySet::prunable(
                &live(&owner, &[(key, "disabled")]),
                &owner
            ));
        }
    }
}
