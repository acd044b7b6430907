//! Test support for Weir's integration and end-to-end tests.
//!
//! Every test runs against the real local harness started by `make cluster-up` (see
//! `e2e/harness/cluster.sh`): a kube-apiserver with a kwok node, a git server (smart HTTP and
//! SSH), two OCI registries and a Helm chart repository, all on loopback. Nothing here mocks a
//! behaviour; the helpers only make test data on those real services.
//!
//! ```no_run
//! # async fn example() -> Result<(), weir_e2e::Error> {
//! use std::collections::BTreeMap;
//! let harness = weir_e2e::Harness::get().await?;
//! let namespace = harness.namespace().await?; // deleted when dropped, even on failure
//! let client = harness.client()?;
//! let repo = harness.git().create_repo("app", &BTreeMap::from([("app.yaml", "kind: List\n")]))?;
//! let image_name = weir_e2e::unique_name("app", 60);
//! let image = harness.registry().push_image(&image_name, "1.0.0").await?;
//! # Ok(()) }
//! ```
//!
//! Tests share one harness and run in parallel, so every name a test makes (namespace, git
//! repository, image repository, chart) carries the test's name and a random suffix.

mod charts;
mod controllers;
mod error;
mod git;
mod harness;
mod names;
mod namespace;
mod proxy;
mod registry;
mod signing;
mod wait;

pub use charts::{Chart, ChartRepository};
pub use controllers::ControllerConfigs;
pub use error::Error;
pub use git::{Change, GitRepo, GitServer, git_command};
pub use harness::{Harness, repo_root};
pub use names::unique_name;
pub use namespace::{TEST_NAMESPACE_LABEL, TestNamespace};
pub use proxy::LoopbackProxy;
pub use registry::{PushedImage, Registry, RegistryCredentials};
pub use signing::{GitSigning, GpgKey, SshSigningKey};
pub use wait::{
    DEFAULT_DEADLINE, Seen, await_within, wait_gone, wait_ready, wait_seen, wait_until,
    wait_until_within, watch_reconciling,
};
pub use weir_runtime::watches::Watches;
