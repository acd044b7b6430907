//! The controllers' configurations every suite starts them with: each controller watches only the
//! test's namespace, serves on a free loopback port and keeps its files in the test's temporary
//! directories. A test changes what it is about with struct update syntax:
//!
//! ```no_run
//! # fn example(storage: &std::path::Path, cache: &std::path::Path) {
//! let configs = weir_e2e::ControllerConfigs::new("my-test-ns");
//! let source = configs.source(storage);
//! let kustomize = weir_kustomize::Config {
//!     dependency_requeue: std::time::Duration::from_secs(600),
//!     ..configs.kustomize("/usr/local/bin/kustomize".into(), cache)
//! };
//! # }
//! ```

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use weir_runtime::watches::Watches;

/// Builds the `Config` of each controller for a test scoped to one namespace.
#[derive(Debug, Clone)]
pub struct ControllerConfigs {
    namespace: String,
    watches: Option<Watches>,
}

impl ControllerConfigs {
    /// Configurations of controllers that watch only `namespace`, each on its own.
    #[must_use]
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            watches: None,
        }
    }

    /// Configurations of controllers that share `watches`, as in one `weir controllers`
    /// process: each kind watched once, whichever controllers read it.
    #[must_use]
    pub fn sharing(self, watches: &Watches) -> Self {
        Self {
            watches: Some(watches.clone()),
            ..self
        }
    }

    /// The source controller: artifacts stored in `storage` (two kept per object) and served on
    /// a free loopback port, four reconciles at a time.
    #[must_use]
    pub fn source(&self, storage: &Path) -> weir_source::Config {
        weir_source::Config {
            storage_path: storage.to_path_buf(),
            storage_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            storage_adv_addr: None,
            artifact_retention: 2,
            namespace: Some(self.namespace.clone()),
            concurrency: 4,
            watches: self.watches.clone(),
        }
    }

    /// The kustomize controller: builds with the `kustomize` binary at `kustomize_path`, caches
    /// artifacts in `cache`, four reconciles at a time, dependents requeued every 30 s, and
    /// Flux's default limits, lockdown flags and feature gates.
    #[must_use]
    pub fn kustomize(&self, kustomize_path: PathBuf, cache: &Path) -> weir_kustomize::Config {
        weir_kustomize::Config {
            namespace: Some(self.namespace.clone()),
            concurrency: 4,
            kustomize_path,
            cache_dir: cache.to_path_buf(),
            dependency_requeue: Duration::from_secs(30),
            artifact_limits: weir_kustomize::fetch::Limits::default(),
            lockdown: weir_kustomize::Lockdown::default(),
            feature_gates: weir_kustomize::FeatureGates::default(),
            watches: self.watches.clone(),
        }
    }

    /// The image controller with its defaults.
    #[must_use]
    pub fn image(&self) -> weir_image::Config {
        weir_image::Config {
            namespace: Some(self.namespace.clone()),
            watches: self.watches.clone(),
            ..weir_image::Config::default()
        }
    }

    /// The helm controller: releases with the `helm` binary at `helm_path` through `kubeconfig`,
    /// caches charts in
    /// `cache`, four reconciles at a time, waiting releases checked every 5 s.
    #[must_use]
    pub fn helm(&self, helm_path: PathBuf, kubeconfig: &Path, cache: &Path) -> weir_helm::Config {
        weir_helm::Config {
            namespace: Some(self.namespace.clone()),
            concurrency: 4,
            helm_path,
            kubeconfig: Some(kubeconfig.to_path_buf()),
            post_renderer: None,
            cache_dir: cache.to_path_buf(),
            dependency_requeue: Duration::from_secs(5),
            artifact_limits: weir_kustomize::fetch::Limits::default(),
            watches: self.watches.clone(),
        }
    }
}
