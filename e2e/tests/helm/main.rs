//! The helm controller against the real harness: HelmReleases released by the real Helm 4 from
//! the harness's chart repository, in Helm's own storage, checked with the real `helm` CLI.

// A test's helpers fail the test by panicking; that is their job.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod checks;
mod crds;
mod depends_on;
mod drift;
mod fixture;
mod post_render;
mod release;
mod remediation;
mod sources;
