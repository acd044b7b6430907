//! The kustomize controller against the real harness: manifests pushed to git reach the cluster
//! through a GitRepository and a Kustomization, atomically, and leave it when removed.
//!
//! Each test runs the source and kustomize controllers in-process, scoped to its own namespace.

// A test's helpers fail the test by panicking; that is their job.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod apply;
mod build;
mod depends_on;
mod fixture;
mod health;
mod inventory;
mod prune;
mod rbac;
mod substitution;
