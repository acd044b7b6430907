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
    /// The image name with its registry host, such as `127.0.0.1:5000/app`.
    pub canonical_image_name: String,
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
