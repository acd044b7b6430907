//! The tag lists of scanned repositories, held once per ImageRepository and shared by all its
//! policies: each list is one `Arc<[Box<str>]>` (sorted, deduplicated), handed out by cloning the
//! `Arc`, never the tags. A new scan replaces the list; readers keep the one they hold.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use crate::scan::RegistryAccess;

/// One scan of one repository.
#[derive(Debug)]
pub struct ScannedTags {
    /// The repository's `spec.image` as written (`nginx`, `127.0.0.1:5000/app`): the name a
    /// policy's `latestRef` carries, as in Flux, so an update keeps the manifest's spelling.
    pub image: String,
    /// The image name with its registry host, such as `index.docker.io/library/nginx`.
    pub canonical_image_name: String,
    /// Where the repository is read (through a mirror when one is configured).
    pub reference: oci_client::Reference,
    /// The recorded tags, sorted and deduplicated.
    pub tags: Arc<[Box<str>]>,
    /// The digest of the list, as in `status.lastScanResult.revision`.
    pub revision: String,
    /// How to reach the registry again (digest lookups by policies).
    pub access: RegistryAccess,
}

/// Scans by `namespace/name` of the ImageRepository.
#[derive(Debug, Default)]
pub struct TagStore {
    scans: RwLock<HashMap<String, Arc<ScannedTags>>>,
}

impl TagStore {
    fn key(namespace: &str, name: &str) -> String {
        format!("{namespace}/{name}")
    }

    /// The last scan of a repository, if any.
    #[must_use]
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<ScannedTags>> {
        self.scans
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&Self::key(namespace, name))
            .cloned()
    }

    /// Records a scan, replacing the previous one.
    pub fn put(&self, namespace: &str, name: &str, scan: ScannedTags) {
        self.scans
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(Self::key(namespace, name), Arc::new(scan));
    }

    /// Forgets a deleted repository.
    pub fn remove(&self, namespace: &str, name: &str) {
        self.scans
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&Self::key(namespace, name));
    }

    /// The number of tags held, over all repositories (for metrics).
    #[must_use]
    pub fn tag_count(&self) -> usize {
        self.scans
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .map(|s| s.tags.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_share_one_tag_list_and_keep_it_across_a_rescan() {
        let store = TagStore::default();
        let scan = |tags: &[&str]| ScannedTags {
            image: "reg/app".into(),
            canonical_image_name: "reg/app".into(),
            reference: "reg/app".parse().unwrap(),
            tags: tags.iter().map(|t| Box::<str>::from(*t)).collect(),
            revision: String::new(),
            access: RegistryAccess {
                insecure: true,
                ca_pem: None,
                auth: oci_client::secrets::RegistryAuth::Anonymous,
                proxy: None,
            },
        };
        store.put("ns", "app", scan(&["1.0.0", "1.1.0"]));
        let a = store.get("ns", "app").unwrap();
        let b = store.get("ns", "app").unwrap();
        assert!(
            Arc::ptr_eq(&a.tags, &b.tags),
            "one list, not a copy per policy"
        );
        store.put("ns", "app", scan(&["2.0.0"]));
        assert_eq!(a.tags.len(), 2, "a reader keeps the list it holds");
        assert_eq!(store.get("ns", "app").unwrap().tags.len(), 1);
        assert_eq!(store.tag_count(), 1);
        store.remove("ns", "app");
        assert!(store.get("ns", "app").is_none());
    }
}
