//! The source controller against the real harness: GitRepositories over anonymous and
//! authenticated HTTP and SSH, and HelmRepositories' indexes, become artifacts served over HTTP
//! with the advertised digest.

// A test's helpers fail the test by panicking; that is their job.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod artifact;
mod auth;
mod content;
mod fixture;
mod helm_chart;
mod helm_oci;
mod helm_repository;
mod reconcile;
mod refs;
mod timeouts;
mod verify;
