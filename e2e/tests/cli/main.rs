//! The weir binary and the clients and services around it, as a user meets them: smoke tests of
//! the local harness and the weir-e2e helpers, `weir controllers` itself (its HelmReleases
//! checked with the real `helm`), the official `flux` CLI as a client of Weir, and the install
//! manifests in `config/`.

// A test's helpers fail the test by panicking; that is their job.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod config;
mod control;
mod diff;
mod fixture;
mod flux_cli;
mod harness_api;
mod harness_git;
mod harness_registry;
mod helm;
mod lock;
mod read_only;
mod release;
mod rollback;
mod weir_controllers;
mod weir_get;
