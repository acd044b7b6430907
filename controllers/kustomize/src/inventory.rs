//! The inventory: which objects a Kustomization applied, in Flux's format, and what a new set
//! leaves behind (the objects to prune).

use std::collections::BTreeSet;

use weir_api::kustomize::{ObjMetadata, ResourceInventory, ResourceRef};
use weir_ssa::{
    kinds::{is_definition, split_api_version},
    prune::Recorded,
};

/// An inventory entry of an object.
#[must_use]
pub fn entry(meta: &ObjMetadata, api_version: &str) -> ResourceRef {
    ResourceRef {
        id: meta.id(),
        v: split_api_version(api_version).1.to_owned(),
    }
}

/// Builds an inventory sorted by id, so the same set always gives the same status.
#[must_use]
pub fn inventory(entries: impl IntoIterator<Item = ResourceRef>) -> ResourceInventory {
    let set: BTreeSet<ResourceRef> = entries.into_iter().collect();
    ResourceInventory {
        entries: set.into_iter().collect(),
    }
}

/// What a new set of objects leaves behind from the previous inventory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InventoryDiff {
    /// Entries of the old inventory absent from the new one, in prune order: ordinary objects
    /// first, then definitions (so a Namespace or CRD goes after what lived in it).
    pub stale: Vec<ResourceRef>,
}

impl InventoryDiff {
    /// Compares by id only: an object whose API version changed is the same object.
    #[must_use]
    pub fn between(old: Option<&ResourceInventory>, new: &ResourceInventory) -> Self {
        let current: BTreeSet<&str> = new.entries.iter().map(|e| e.id.as_str()).collect();
        let mut stale: Vec<ResourceRef> = old
            .map(|o| o.entries.as_slice())
            .unwrap_or_default()
            .iter()
            .filter(|e| !current.contains(e.id.as_str()))
            .cloned()
            .collect();
        stale.sort_by_key(|e| {
            let definition =
                ObjMetadata::parse(&e.id).is_some_and(|m| is_definition(&m.group, &m.kind));
            (definition, e.id.clone())
        });
        Self { stale }
    }

    /// The stale entries as objects to prune, in the same order; an entry whose id does not
    /// parse names no object and is left out.
    #[must_use]
    pub fn to_prune(&self) -> Vec<Recorded> {
        self.stale
            .iter()
            .filter_map(|e| {
                ObjMetadata::parse(&e.id).map(|meta| Recorded {
                    meta,
                    version: e.v.clone(),
                })
            })
            .collect()
    }

    /// Whether nothing is left to prune.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.stale.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(id: &str) -> ResourceRef {
        ResourceRef {
            id: id.to_owned(),
            v: "v1".to_owned(),
        }
    }

    #[test]
    fn stale_entries_are_those_that_left_the_set_with_definitions_last() {
        let old = inventory([
            r("_apps__Namespace"),
            r("apps_web_apps_Deployment"),
            r("apps_web__Service"),
            r("apps_cfg__ConfigMap"),
        ]);
        let new = inventory([r("apps_web_apps_Deployment")]);
        let diff = InventoryDiff::between(Some(&old), &new);
        let ids: Vec<_> = diff.stale.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "apps_cfg__ConfigMap",
                "apps_web__Service",
                "_apps__Namespace"
            ]
        );
        let names: Vec<_> = diff.to_prune().into_iter().map(|o| o.meta.name).collect();
        assert_eq!(names, ["cfg", "web", "apps"]);
    }

    #[test]
    fn a_version_change_is_not_staleness_and_no_old_inventory_prunes_nothing() {
        let old = inventory([r("apps_web_apps_Deployment")]);
        let mut moved = r("apps_web_apps_Deployment");
        moved.v = "v2".to_owned();
        let new = inventory([moved]);
        assert!(InventoryDiff::between(Some(&old), &new).is_empty());
        assert!(InventoryDiff::between(None, &new).is_empty());
    }

    #[test]
    fn entries_use_the_version_only_and_inventories_are_sorted() {
        let meta = ObjMetadata {
            namespace: "a".into(),
            name: "b".into(),
            group: "apps".into(),
            kind: "Deployment".into(),
        };
        assert_eq!(entry(&meta, "apps/v1"), r("a_b_apps_Deployment"));
        let inv = inventory([r("b"), r("a"), r("b")]);
        assert_eq!(inv.entries, vec![r("a"), r("b")]);
    }
}
