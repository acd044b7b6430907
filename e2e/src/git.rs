use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tempfile::TempDir;

use crate::Error;
use crate::names::unique_name;
use crate::signing::GitSigning;

/// The branch every repository starts with.
pub const DEFAULT_BRANCH: &str = "main";

/// The harness's git server: bare repositories in one directory, each served over smart HTTP
/// (anonymous, basic auth, bearer token) and SSH.
pub struct GitServer {
    pub(crate) root: PathBuf,
    pub(crate) http_url: String,
    pub(crate) http_user: String,
    pub(crate) http_password: String,
    pub(crate) http_token: Option<String>,
    /// The HTTPS endpoint and the CA that signed its certificate (a private CA).
    pub(crate) https: Option<(String, PathBuf)>,
    pub(crate) ssh_url: String,
    pub(crate) ssh_identity: PathBuf,
    pub(crate) ssh_known_hosts: PathBuf,
}

impl std::fmt::Debug for GitServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keep the password and token out of test output, as Weir keeps secrets out of its logs.
        f.debug_struct("GitServer")
            .field("root", &self.root)
            .field("http_url", &self.http_url)
            .field("http_user", &self.http_user)
            .field("ssh_url", &self.ssh_url)
            .finish_non_exhaustive()
    }
}

impl GitServer {
    /// Creates a bare repository named after `name_hint` (plus a random suffix) whose `main`
    /// branch has one commit holding `files` (path → content; directories are made as needed).
    pub fn create_repo(
        &self,
        name_hint: &str,
        files: &BTreeMap<&str, &str>,
    ) -> Result<GitRepo, Error> {
        let name = unique_name(name_hint, 60);
        let bare = self.root.join(format!("{name}.git"));
        run(git_command()
            .args([
                "init",
                "--quiet",
                "--bare",
                "--initial-branch",
                DEFAULT_BRANCH,
            ])
            .arg(&bare))?;
        let work = tempfile::Builder::new()
            .prefix(&format!("weir-e2e-{name}-"))
            .tempdir()
            .map_err(Error::io("making a work tree for a test git repository"))?;
        run(git_command()
            .args(["init", "--quiet", "--initial-branch", DEFAULT_BRANCH])
            .arg(work.path()))?;
        let repo = GitRepo {
            name,
            bare,
            work,
            http_url: self.http_url.clone(),
            https_url: self.https.as_ref().map(|(url, _)| url.clone()),
            ssh_url: self.ssh_url.clone(),
        };
        run(repo.git().args(["remote", "add", "origin"]).arg(&repo.bare))?;
        let mut change = repo.change();
        for (path, content) in files {
            change = change.write(path, content);
        }
        change.commit("Initial commit")?;
        Ok(repo)
    }

    /// The directory of the bare repositories (`WEIR_GIT_ROOT`).
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// User name for the basic-auth URLs ([`GitRepo::private_http_url`]).
    #[must_use]
    pub fn http_user(&self) -> &str {
        &self.http_user
    }

    /// Password for the basic-auth URLs ([`GitRepo::private_http_url`]).
    #[must_use]
    pub fn http_password(&self) -> &str {
        &self.http_password
    }

    /// Bearer token for [`GitRepo::token_http_url`], when the harness serves `/token/`.
    #[must_use]
    pub fn http_token(&self) -> Option<&str> {
        self.http_token.as_deref()
    }

    /// Private key (ed25519, no passphrase) the SSH server accepts.
    #[must_use]
    pub fn ssh_identity(&self) -> &Path {
        &self.ssh_identity
    }

    /// `known_hosts` file holding the SSH server's real host key.
    #[must_use]
    pub fn ssh_known_hosts(&self) -> &Path {
        &self.ssh_known_hosts
    }

    /// A Secret `name` in Flux's format for the basic-auth URLs: `username` and `password`.
    #[must_use]
    pub fn basic_auth_secret(&self, name: &str) -> Secret {
        opaque_secret(
            name,
            [
                ("username", self.http_user.clone()),
                ("password", self.http_password.clone()),
            ],
        )
    }

    /// The PEM file of the CA that signed the HTTPS endpoint's certificate (`WEIR_GIT_HTTPS_CA`).
    pub fn https_ca(&self) -> Result<&Path, Error> {
        self.https
            .as_ref()
            .map(|(_, ca)| ca.as_path())
            .ok_or_else(https_missing)
    }

    /// A Secret `name` in Flux's format for the token URLs: `bearerToken`.
    pub fn bearer_token_secret(&self, name: &str) -> Result<Secret, Error> {
        let token = self
            .http_token
            .clone()
            .ok_or_else(|| Error::HarnessEnvironment {
                source_name: "the harness".to_owned(),
                reason: "WEIR_GIT_HTTP_TOKEN is not set".to_owned(),
            })?;
        Ok(opaque_secret(name, [("bearerToken", token)]))
    }

    /// A Secret `name` in Flux's format for the SSH URLs: `identity` and `known_hosts` (the
    /// server's real host key).
    pub fn ssh_secret(&self, name: &str) -> Result<Secret, Error> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(Error::io(format!("reading {}", path.display())))
        };
        Ok(opaque_secret(
            name,
            [
                ("identity", read(&self.ssh_identity)?),
                ("known_hosts", read(&self.ssh_known_hosts)?),
            ],
        ))
    }

    /// A `GIT_SSH_COMMAND` that logs in with [`GitServer::ssh_identity`] and accepts only a host
    /// key listed in `known_hosts` (never asks, never adds one).
    #[must_use]
    pub fn ssh_command(&self, known_hosts: &Path) -> String {
        format!(
            "ssh -i '{}' -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes \
             -o UserKnownHostsFile='{}' -o GlobalKnownHostsFile=/dev/null",
            self.ssh_identity.display(),
            known_hosts.display()
        )
    }
}

/// A repository on the harness's git server, with a private work tree that commits are made
/// in and pushed from.
///
/// Commits are pushed straight to the bare repository on disk: it is the same repository the
/// server serves, and setting up a test should not depend on the transport under test.
#[derive(Debug)]
pub struct GitRepo {
    name: String,
    bare: PathBuf,
    work: TempDir,
    http_url: String,
    https_url: Option<String>,
    ssh_url: String,
}

fn https_missing() -> Error {
    Error::HarnessEnvironment {
        source_name: "the harness".to_owned(),
        reason: "WEIR_GIT_HTTPS_URL/WEIR_GIT_HTTPS_CA are not set: restart it (make cluster-down cluster-up)"
            .to_owned(),
    }
}

impl GitRepo {
    /// The repository's name on the server (without `.git`).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bare repository on disk.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.bare
    }

    /// Smart-HTTP URL needing no credentials.
    #[must_use]
    pub fn http_url(&self) -> String {
        format!("{}/public/{}.git", self.http_url, self.name)
    }

    /// Smart-HTTP URL needing basic auth ([`GitServer::http_user`], [`GitServer::http_password`]).
    #[must_use]
    pub fn private_http_url(&self) -> String {
        format!("{}/private/{}.git", self.http_url, self.name)
    }

    /// Smart-HTTP URL needing `Authorization: Bearer <`[`GitServer::http_token`]`>`.
    #[must_use]
    pub fn token_http_url(&self) -> String {
        format!("{}/token/{}.git", self.http_url, self.name)
    }

    /// HTTPS URL needing no credentials; its certificate is signed by [`GitServer::https_ca`].
    pub fn https_url(&self) -> Result<String, Error> {
        let base = self.https_url.as_ref().ok_or_else(https_missing)?;
        Ok(format!("{base}/public/{}.git", self.name))
    }

    /// SSH URL (`ssh://user@127.0.0.1:port/<path>.git`); see [`GitServer::ssh_command`].
    #[must_use]
    pub fn ssh_url(&self) -> String {
        format!("{}{}", self.ssh_url, self.bare.display())
    }

    /// Starts a commit on `main`: add, change and delete files, then [`Change::commit`].
    pub fn change(&self) -> Change<'_> {
        Change {
            repo: self,
            branch: DEFAULT_BRANCH.to_owned(),
            writes: vec![],
            deletions: vec![],
            signing: None,
        }
    }

    /// The commit `main` points at on the server.
    pub fn head(&self) -> Result<String, Error> {
        self.branch_head(DEFAULT_BRANCH)
    }

    /// The commit `branch` points at on the server.
    pub fn branch_head(&self, branch: &str) -> Result<String, Error> {
        self.rev_parse(&format!("refs/heads/{branch}^{{commit}}"))
    }

    /// The commit `tag` points at on the server (peeled, for annotated tags too).
    pub fn tag_target(&self, tag: &str) -> Result<String, Error> {
        self.rev_parse(&format!("refs/tags/{tag}^{{commit}}"))
    }

    /// Creates `branch` on the server at `main`'s head; commit to it with
    /// [`Change::on_branch`]. Returns the commit.
    pub fn create_branch(&self, branch: &str) -> Result<String, Error> {
        run(self
            .git()
            .args(["branch", "--quiet", branch, DEFAULT_BRANCH]))?;
        run(self.git().args(["push", "--quiet", "origin", branch]))?;
        self.branch_head(branch)
    }

    /// Creates the lightweight tag `tag` on the server at `main`'s head. Returns the commit.
    pub fn tag(&self, tag: &str) -> Result<String, Error> {
        run(self.git().args(["tag", tag, DEFAULT_BRANCH]))?;
        self.push_tag(tag)
    }

    /// Creates the annotated tag `tag` with `message` on the server at `main`'s head. Returns
    /// the commit (not the tag object).
    pub fn annotated_tag(&self, tag: &str, message: &str) -> Result<String, Error> {
        run(self.git().args([
            "tag",
            "--annotate",
            "--message",
            message,
            tag,
            DEFAULT_BRANCH,
        ]))?;
        self.push_tag(tag)
    }

    /// Creates the annotated tag `tag` with `message`, signed by `signing`, on the server at
    /// `main`'s head. Returns the commit (not the tag object).
    pub fn signed_tag(
        &self,
        tag: &str,
        message: &str,
        signing: &GitSigning,
    ) -> Result<String, Error> {
        let mut command = self.git();
        signing.apply(&mut command);
        run(command.args(["tag", "--sign", "--message", message, tag, DEFAULT_BRANCH]))?;
        self.push_tag(tag)
    }

    fn push_tag(&self, tag: &str) -> Result<String, Error> {
        run(self
            .git()
            .args(["push", "--quiet", "origin"])
            .arg(format!("refs/tags/{tag}")))?;
        self.tag_target(tag)
    }

    fn rev_parse(&self, rev: &str) -> Result<String, Error> {
        run(git_command().arg("--git-dir").arg(&self.bare).args([
            "rev-parse",
            "--verify",
            "--quiet",
            rev,
        ]))
    }

    fn has_commits(&self) -> Result<bool, Error> {
        let status = self
            .git()
            .args(["rev-parse", "--verify", "--quiet", "HEAD"])
            .output()
            .map_err(Error::io("running git rev-parse"))?
            .status;
        Ok(status.success())
    }

    /// `git` working in this repository's work tree.
    fn git(&self) -> Command {
        let mut command = git_command();
        command.arg("-C").arg(self.work.path());
        command
    }
}

/// One commit being put together; made by [`GitRepo::change`].
#[derive(Debug)]
#[must_use = "a change does nothing until it is committed"]
pub struct Change<'a> {
    repo: &'a GitRepo,
    branch: String,
    writes: Vec<(String, String)>,
    deletions: Vec<String>,
    signing: Option<GitSigning>,
}

impl Change<'_> {
    /// Commits to `branch` (made with [`GitRepo::create_branch`]) instead of `main`.
    pub fn on_branch(mut self, branch: &str) -> Self {
        branch.clone_into(&mut self.branch);
        self
    }

    /// Adds or replaces the file at `path` (relative to the repository root).
    pub fn write(mut self, path: &str, content: &str) -> Self {
        self.writes.push((path.to_owned(), content.to_owned()));
        self
    }

    /// Signs the commit (`git commit -S`) as `signing` says.
    pub fn signed(mut self, signing: &GitSigning) -> Self {
        self.signing = Some(signing.clone());
        self
    }

    /// Deletes the file at `path`.
    pub fn delete(mut self, path: &str) -> Self {
        self.deletions.push(path.to_owned());
        self
    }

    /// Commits the change with `message` and pushes it to the server. A change with no edits
    /// still makes a commit (a new revision with the same content). Returns the commit.
    pub fn commit(self, message: &str) -> Result<String, Error> {
        let repo = self.repo;
        let work = repo.work.path();
        if repo.has_commits()? {
            run(repo.git().args(["checkout", "--quiet", &self.branch]))?;
        }
        for (path, content) in &self.writes {
            let file = work.join(path);
            if let Some(dir) = file.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(Error::io(format!("making directory {}", dir.display())))?;
            }
            std::fs::write(&file, content)
                .map_err(Error::io(format!("writing {}", file.display())))?;
        }
        for path in &self.deletions {
            run(repo.git().args(["rm", "--quiet", "--"]).arg(path))?;
        }
        run(repo.git().args(["add", "--all"]))?;
        let mut command = repo.git();
        if let Some(signing) = &self.signing {
            signing.apply(&mut command);
            command.arg("-c").arg("commit.gpgSign=true");
        }
        run(command.args(["commit", "--quiet", "--allow-empty", "--message", message]))?;
        run(repo
            .git()
            .args(["push", "--quiet", "origin"])
            .arg(format!("HEAD:refs/heads/{}", self.branch)))?;
        repo.branch_head(&self.branch)
    }
}

/// `git` isolated from the machine's and user's git configuration, with a fixed identity and
/// no prompts, so tests behave the same everywhere. Clone with it to check what the server
/// serves.
#[must_use]
pub fn git_command() -> Command {
    let mut command = Command::new("git");
    command
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", "Weir E2E")
        .env("GIT_AUTHOR_EMAIL", "e2e@weir.invalid")
        .env("GIT_COMMITTER_NAME", "Weir E2E")
        .env("GIT_COMMITTER_EMAIL", "e2e@weir.invalid")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_SSH_COMMAND")
        .env_remove("GIT_ASKPASS")
        .env_remove("SSH_ASKPASS");
    command
}

/// A Secret `name` of type Opaque holding `entries` as they are (`stringData`).
pub(crate) fn opaque_secret<const N: usize>(name: &str, entries: [(&str, String); N]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        string_data: Some(
            entries
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// Runs `command`; its trimmed stdout on success, its stderr in the error otherwise.
pub(crate) fn run(command: &mut Command) -> Result<String, Error> {
    let output = command
        .output()
        .map_err(Error::io(format!("starting `{}`", describe(command))))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(Error::CommandFailed {
            command: describe(command),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}
