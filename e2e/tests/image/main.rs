//! The image controller against the real harness: ImageRepositories scan the harness's
//! registries (anonymous and with htpasswd auth, over plain HTTP), ImagePolicies choose from the
//! scanned tags, and failures give their reasons without leaking credentials.

// A test's helpers fail the test by panicking; that is their job.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod automation;
mod bench;
mod checkout_push;
mod end_to_end;
mod finalizers;
mod fixture;
mod policy;
mod policy_access;
mod progress;
mod scan;
mod signing;
mod timeouts;
