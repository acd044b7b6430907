//! The `weir` binary as a user runs it.

// A test's helpers fail the test by panicking; that is their job.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

fn weir(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn version_prints_the_version_and_the_commit_it_was_built_from() {
    let out = weir(&["version"]);
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .unwrap();
    let head = String::from_utf8(head.stdout).unwrap();
    let head = head.trim();
    assert!(!head.is_empty(), "tests run inside the git checkout");
    assert!(
        stdout.starts_with(&format!(
            "weir {} (commit {head}",
            env!("CARGO_PKG_VERSION")
        )),
        "{stdout:?} does not name version {} and commit {head}",
        env!("CARGO_PKG_VERSION")
    );
}

#[test]
fn controllers_help_describes_the_subcommand() {
    let out = weir(&["controllers", "--help"]);
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--controllers",
        "--storage-path",
        "--storage-addr",
        "--storage-adv-addr",
        "--namespace",
    ] {
        assert!(stdout.contains(flag), "{flag} missing from:\n{stdout}");
    }
    assert!(
        stdout.contains("source"),
        "the source controller is listed:\n{stdout}"
    );
}

#[test]
fn an_unknown_command_is_a_usage_error_on_stderr() {
    let out = weir(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("unrecognized subcommand 'frobnicate'")
    );
}

#[test]
fn controllers_without_a_cluster_fail_with_a_clear_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["controllers", "--controllers", "source"])
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("HOME", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("cannot connect to the Kubernetes API"),
        "{stderr}"
    );
}

#[test]
fn an_unknown_controller_is_a_usage_error() {
    let out = weir(&["controllers", "--controllers", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("invalid value 'nope'")
    );
}
