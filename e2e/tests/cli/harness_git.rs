//! Smoke tests of the harness's git server: anonymous, basic-auth, bearer and SSH clones, and
//! pushed commits, branches and tags.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use weir_e2e::{Harness, git_command};

use crate::fixture::*;

/// A clone of `url` made with `git` as `configure` sets it up.
struct LocalClone {
    dir: tempfile::TempDir,
}

impl LocalClone {
    fn new(url: &str, configure: impl FnOnce(&mut Command)) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut git = git_command();
        configure(&mut git);
        let output = git
            .args(["clone", "--quiet", url])
            .arg(dir.path().join("repo"))
            .output()?;
        if !output.status.success() {
            bail!(
                "git clone {url} failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(Self { dir })
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    fn head(&self) -> Result<String> {
        self.git(&["rev-parse", "HEAD"])
    }

    fn file(&self, path: &str) -> Result<String> {
        Ok(std::fs::read_to_string(self.path().join(path))?)
    }

    fn git(&self, args: &[&str]) -> Result<String> {
        let output = git_command()
            .arg("-C")
            .arg(self.path())
            .args(args)
            .output()?;
        ensure!(output.status.success(), "git {args:?} failed");
        Ok(String::from_utf8(output.stdout)?.trim().to_owned())
    }
}

fn with_password(url: &str, user: &str, password: &str) -> String {
    url.replacen("http://", &format!("http://{user}:{password}@"), 1)
}

#[tokio::test]
async fn git_clone_over_anonymous_http_gets_the_pushed_files() -> Result<()> {
    let harness = Harness::get().await?;
    let repo = app_repo(harness)?;

    let clone = LocalClone::new(&repo.http_url(), |_| {})?;

    assert_eq!(clone.file("deploy/app.yaml")?, APP_YAML);
    assert_eq!(clone.head()?, repo.head()?);
    Ok(())
}

#[tokio::test]
async fn git_clone_over_basic_auth_http_needs_the_right_password() -> Result<()> {
    let harness = Harness::get().await?;
    let git = harness.git();
    let repo = app_repo(harness)?;
    let url = repo.private_http_url();

    let without_credentials = LocalClone::new(&url, |_| {});
    let wrong_password = LocalClone::new(&with_password(&url, git.http_user(), "wrong"), |_| {});
    let right_password = LocalClone::new(
        &with_password(&url, git.http_user(), git.http_password()),
        |_| {},
    );

    // The server answered 401, so git wanted a user name and was not allowed to ask for one.
    let error = without_credentials
        .err()
        .context("cloned without credentials")?;
    assert!(
        error.to_string().contains("could not read Username"),
        "{error}"
    );
    let error = wrong_password
        .err()
        .context("cloned with a wrong password")?;
    assert!(
        error.to_string().contains("Authentication failed"),
        "{error}"
    );
    assert_eq!(right_password?.head()?, repo.head()?);
    Ok(())
}

#[tokio::test]
async fn git_clone_over_http_with_a_bearer_token_works() -> Result<()> {
    let harness = Harness::get().await?;
    let token = harness
        .git()
        .http_token()
        .context("the harness sets no WEIR_GIT_HTTP_TOKEN")?;
    let repo = app_repo(harness)?;
    let header = |token: &str| format!("http.extraHeader=Authorization: Bearer {token}");

    let wrong_token = LocalClone::new(&repo.token_http_url(), |git| {
        git.arg("-c").arg(header("wrong"));
    });
    let right_token = LocalClone::new(&repo.token_http_url(), |git| {
        git.arg("-c").arg(header(token));
    });

    // A 401 makes git want a user name, which it may not ask for.
    let error = wrong_token.err().context("cloned with a wrong token")?;
    assert!(
        error.to_string().contains("could not read Username"),
        "{error}"
    );
    assert_eq!(right_token?.head()?, repo.head()?);
    Ok(())
}

#[tokio::test]
async fn git_clone_over_ssh_with_the_known_host_key_works() -> Result<()> {
    let harness = Harness::get().await?;
    let git = harness.git();
    let repo = app_repo(harness)?;

    let clone = LocalClone::new(&repo.ssh_url(), |command| {
        command.env("GIT_SSH_COMMAND", git.ssh_command(git.ssh_known_hosts()));
    })?;

    assert_eq!(clone.file("deploy/app.yaml")?, APP_YAML);
    assert_eq!(clone.head()?, repo.head()?);
    Ok(())
}

#[tokio::test]
async fn git_clone_over_ssh_fails_when_the_host_key_is_wrong_or_unknown() -> Result<()> {
    let harness = Harness::get().await?;
    let git = harness.git();
    let repo = app_repo(harness)?;
    let scratch = tempfile::tempdir()?;
    // The server's host pattern with another key: what a man in the middle would present.
    let real = std::fs::read_to_string(git.ssh_known_hosts())?;
    let host_pattern = real
        .split_whitespace()
        .next()
        .context("empty known_hosts")?;
    let other_key = scratch.path().join("other_host_key");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other_key)
        .status()?;
    ensure!(status.success(), "ssh-keygen failed");
    let other_public = std::fs::read_to_string(other_key.with_extension("pub"))?;
    let other_public: Vec<&str> = other_public.split_whitespace().take(2).collect();
    let wrong_known_hosts = scratch.path().join("wrong_known_hosts");
    std::fs::write(
        &wrong_known_hosts,
        format!("{host_pattern} {}\n", other_public.join(" ")),
    )?;
    let empty_known_hosts = scratch.path().join("empty_known_hosts");
    std::fs::write(&empty_known_hosts, "")?;

    let wrong = LocalClone::new(&repo.ssh_url(), |command| {
        command.env("GIT_SSH_COMMAND", git.ssh_command(&wrong_known_hosts));
    });
    let unknown = LocalClone::new(&repo.ssh_url(), |command| {
        command.env("GIT_SSH_COMMAND", git.ssh_command(&empty_known_hosts));
    });

    for (case, result) in [("a wrong host key", wrong), ("an unknown host", unknown)] {
        let error = result
            .err()
            .with_context(|| format!("cloned over SSH with {case}"))?;
        assert!(
            error.to_string().contains("Host key verification failed"),
            "{case}: {error}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn pushed_commits_branches_and_tags_are_served() -> Result<()> {
    let harness = Harness::get().await?;
    let repo = harness.git().create_repo(
        "history",
        &BTreeMap::from([("keep.yaml", "a: 1\n"), ("drop.yaml", "b: 2\n")]),
    )?;
    let first = repo.head()?;

    let second = repo
        .change()
        .write("keep.yaml", "a: 2\n")
        .write("new/dir/added.yaml", "c: 3\n")
        .delete("drop.yaml")
        .commit("Change, add and delete")?;
    let lightweight = repo.tag("v1.0.0")?;
    let annotated = repo.annotated_tag("v1.1.0", "Release 1.1.0")?;
    let branch_base = repo.create_branch("staging")?;
    let on_branch = repo
        .change()
        .on_branch("staging")
        .write("keep.yaml", "a: staging\n")
        .commit("Staging only")?;

    assert_ne!(first, second);
    assert_eq!(repo.head()?, second);
    assert_eq!(
        (lightweight.as_str(), annotated.as_str()),
        (second.as_str(), second.as_str())
    );
    assert_eq!(branch_base, second);
    assert_eq!(repo.branch_head("staging")?, on_branch);

    let clone = LocalClone::new(&repo.http_url(), |_| {})?;
    assert_eq!(clone.head()?, second);
    assert_eq!(clone.file("keep.yaml")?, "a: 2\n");
    assert_eq!(clone.file("new/dir/added.yaml")?, "c: 3\n");
    assert!(!clone.path().join("drop.yaml").exists());
    assert_eq!(clone.git(&["rev-parse", "v1.0.0^{commit}"])?, second);
    assert_eq!(clone.git(&["rev-parse", "v1.1.0^{commit}"])?, second);
    assert_eq!(clone.git(&["cat-file", "-t", "v1.1.0"])?, "tag");
    assert_eq!(clone.git(&["rev-parse", "origin/staging"])?, on_branch);
    assert_eq!(
        clone.git(&["show", "origin/staging:keep.yaml"])?,
        "a: staging"
    );
    Ok(())
}
