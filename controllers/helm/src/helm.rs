//! Running the real Helm 4 binary: one child process per Helm action, never through a shell.
//!
//! Flux's helm-controller links Helm as a Go library; Weir runs the pinned `helm` binary
//! instead, so every release is made by Helm itself and `helm list/history/rollback` agree
//! with the controller. This module is only the process boundary: the controller decides
//! install versus upgrade, rollback or uninstall, and this runner maps its options to flags.
//!
//! # Isolation
//! Each [`Helm`] owns a private home (a temporary directory, mode 0700) holding
//! `HELM_CONFIG_HOME`, `HELM_CACHE_HOME`, `HELM_DATA_HOME` and an empty `HELM_PLUGINS`, so no
//! user configuration, repository or plugin (Helm 4 post-renderers are plugins) is loaded.
//! Helm runs with a cleared environment: only [`PASSED_THROUGH_ENV`] is copied from ours,
//! plus `KUBECONFIG` and the in-cluster `KUBERNETES_SERVICE_*` variables when it uses our own
//! cluster access ([`KubeAccess::kubeconfig`] is `None`).
//!
//! # Helm 4 versus Helm 3 (what Flux still links)
//! - `--wait` takes a strategy. Flux's `disableWait: false` becomes `--wait=watcher` (kstatus,
//!   like Flux's own health checks); `disableWait: true` becomes `--wait=hookOnly`, Helm 4's
//!   default, which, as Helm 3 without `--wait` did, still waits for hooks.
//! - `--force` is `--force-replace`; `rollback --recreate-pods` is gone, so Flux's deprecated
//!   `rollback.recreate` has no flag here.
//! - Helm applies CRDs from `crds/` only on install, creating missing ones and never replacing
//!   existing ones; upgrade never touches them. Flux's `CreateReplace`, and any CRD policy on
//!   upgrade, must be carried out by the controller before it calls Helm.
//!
//! # Cancellation
//! Helm 4's `install` and `upgrade` commands catch SIGTERM and SIGINT (`pkg/cmd/install.go`
//! `runInstall`, `pkg/cmd/upgrade.go` `RunE`: `signal.Notify(cSignal, os.Interrupt,
//! syscall.SIGTERM)` then `cancel()` of the context given to `RunWithContext`). The action's
//! `handleContext` (`pkg/action/install.go`, `pkg/action/upgrade.go`) then calls `failRelease`,
//! which records the release as `failed` (and runs cleanup-on-fail) instead of leaving it
//! `pending-install`/`pending-upgrade`. `rollback`, `uninstall` and `test` register no handler:
//! SIGTERM ends them at once, as Go's default does, and a rollback may stay `pending-rollback`.
//! Either way a signal before the release record is written leaves nothing behind.
//!
//! So a call that outlives its deadline, or whose future is dropped, sends SIGTERM to Helm's
//! process group (Helm is started as a group leader, so exec credential plugins it runs are
//! stopped too), waits [`Helm::with_grace`] (10 s by default) and then sends SIGKILL. The
//! workspace denies `unsafe_code` and has no signal crate, so signals are sent by the `kill`
//! program; if it cannot be run, Helm is killed at once (SIGKILL, through tokio). A dropped
//! future cannot await, so its guard sends SIGTERM synchronously and leaves the kill after
//! the grace to a spawned task; the child is not `kill_on_drop`, so if the runtime itself is
//! shutting down Helm still gets to finish failing its release before it exits.
//!
//! # Output
//! Helm's stdout and stderr go to unlinked files in the home, read once it has exited, not
//! to pipes: a Go program writing to a closed pipe on fd 1 or 2 dies of SIGPIPE, and Helm
//! prints `Release <name> has been cancelled.` on SIGTERM, so a pipe whose reader went with
//! a dropped future would kill Helm before it records the release as failed. Files also mean
//! no reader to keep alive and no process blocked on a full pipe. Only the head of stdout
//! (64 MiB) and the tail of stderr (64 KiB) are read.
//!
//! # Errors
//! A non-zero exit becomes [`HelmError::Failed`] carrying only Helm's `Error:` line(s), never
//! the whole stderr, with every string of the release's values at least
//! [`MIN_REDACTED_LEN`] long replaced by `***` (Kubernetes validation errors and chart `fail`
//! messages quote values).

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
use tokio::process::{Child, Command};

/// Variables copied from Weir's environment into Helm's: `PATH` for exec credential plugins,
/// proxies and CA locations for reaching the API server, `TMPDIR` for Helm's scratch files.
pub const PASSED_THROUGH_ENV: &[&str] = &[
    "PATH",
    "TMPDIR",
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "NO_PROXY",
    "https_proxy",
    "http_proxy",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

/// Variables copied only when Helm uses Weir's own cluster access: a kubeconfig path, or
/// in a pod the service address client-go's in-cluster config reads.
const AMBIENT_KUBE_ENV: &[&str] = &[
    "KUBECONFIG",
    "KUBERNETES_SERVICE_HOST",
    "KUBERNETES_SERVICE_PORT",
];

/// Value strings shorter than this are left in error messages: short strings (`true`,
/// `nginx`, a port) are rarely secret and would mangle every message they occur in.
pub const MIN_REDACTED_LEN: usize = 6;

/// Helm's stdout is read up to this size; past it, a successful install or upgrade is read
/// back with `helm status`, whose JSON has no chart.
const STDOUT_LIMIT: usize = 64 << 20;
/// The tail of Helm's stderr kept for the error message.
const STDERR_LIMIT: usize = 64 << 10;
/// Longest error message returned, so it fits a condition message.
const MESSAGE_LIMIT: usize = 4096;
/// Added to the timed waits Helm may make before Weir stops it.
const DEADLINE_MARGIN: Duration = Duration::from_secs(60);
/// Helm's `--timeout` bounds each wait, not the action: install, upgrade, rollback and
/// uninstall wait for pre-hooks, resources and post-hooks in turn.
const TIMED_WAITS: u32 = 3;
const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// The Helm subcommand a call ran, for errors and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Install,
    Upgrade,
    Rollback,
    Uninstall,
    Test,
    Status,
}

impl Action {
    fn subcommand(self) -> &'static str {
        match self {
            Self::Install => "install",
            Self::Upgrade => "upgrade",
            Self::Rollback => "rollback",
            Self::Uninstall => "uninstall",
            Self::Test => "test",
            Self::Status => "status",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.subcommand())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HelmError {
    #[error("creating Helm's private home")]
    Home(#[source] std::io::Error),
    #[error("encoding the release values")]
    EncodeValues(#[source] serde_json::Error),
    #[error("writing the release values")]
    WriteValues(#[source] std::io::Error),
    #[error("starting {binary}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the output of helm {action}")]
    Output {
        action: Action,
        #[source]
        source: std::io::Error,
    },
    #[error("helm {action} failed: {message}")]
    Failed { action: Action, message: String },
    #[error("helm {action} did not finish within {after:?} and was stopped")]
    TimedOut { action: Action, after: Duration },
    #[error("parsing the output of helm {action}")]
    Parse {
        action: Action,
        #[source]
        source: serde_json::Error,
    },
}

/// The Helm binary and its private home.
#[derive(Debug)]
pub struct Helm {
    binary: PathBuf,
    home: tempfile::TempDir,
    grace: Duration,
}

/// How Helm reaches the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeAccess {
    /// A kubeconfig file (Flux's `spec.kubeConfig`, written by the caller). `None` is Weir's
    /// own access: `KUBECONFIG` if set, else in-cluster config.
    pub kubeconfig: Option<PathBuf>,
    pub impersonate: Option<Impersonation>,
}

/// `--kube-as-user` / `--kube-as-group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Impersonation {
    pub user: String,
    pub groups: Vec<String>,
}

impl Impersonation {
    /// Flux's `spec.serviceAccountName`. No groups: the API server adds `system:serviceaccounts`
    /// and `system:serviceaccounts:<namespace>` itself when a service account is impersonated
    /// without groups.
    #[must_use]
    pub fn service_account(namespace: &str, name: &str) -> Self {
        Self {
            user: format!("system:serviceaccount:{namespace}:{name}"),
            groups: Vec::new(),
        }
    }
}

/// What every call names: the release, where it lives and how long Helm may wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseTarget {
    pub name: String,
    /// The release's storage namespace (`-n`).
    pub namespace: String,
    pub kube: KubeAccess,
    /// Helm's `--timeout`: the limit on each wait (hooks, resources), not on the action.
    pub timeout: Duration,
    /// When Weir stops Helm (SIGTERM, then SIGKILL after the grace). `None`: three timeouts
    /// plus a minute, as an action makes at most three timed waits (pre-hooks, resources,
    /// post-hooks) unless a phase has several hooks.
    pub deadline: Option<Duration>,
}

impl ReleaseTarget {
    #[must_use]
    pub fn new(name: &str, namespace: &str, timeout: Duration) -> Self {
        Self {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            kube: KubeAccess::default(),
            timeout,
            deadline: None,
        }
    }

    fn deadline(&self) -> Duration {
        self.deadline.unwrap_or_else(|| {
            self.timeout
                .saturating_mul(TIMED_WAITS)
                .saturating_add(DEADLINE_MARGIN)
        })
    }
}

/// Flux's `install.crds`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CrdPolicy {
    /// `--skip-crds`.
    Skip,
    /// Helm's default: CRDs in `crds/` that do not exist yet are created.
    #[default]
    Create,
    /// The same flags as `Create`: Helm never replaces an existing CRD, so the controller
    /// must apply the chart's CRDs itself first.
    CreateReplace,
}

/// Flux's `spec.install`.
#[allow(clippy::struct_excessive_bools)] // Flux's switches, one Helm flag each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstallOptions {
    pub create_namespace: bool,
    pub crds: CrdPolicy,
    /// `--wait=watcher`; otherwise `--wait=hookOnly`.
    pub wait: bool,
    /// `--wait-for-jobs`, passed only with `wait` (Helm ignores it otherwise).
    pub wait_for_jobs: bool,
    pub disable_hooks: bool,
    pub replace: bool,
    pub disable_openapi_validation: bool,
    pub skip_schema_validation: bool,
    pub description: Option<String>,
    /// Arguments of the `weir-post-render` plugin (see [`Helm::with_post_renderer`]); none
    /// runs no post-renderer.
    pub post_render_args: Vec<OsString>,
}

/// Flux's `spec.upgrade`. There is no CRD policy: Helm's upgrade never applies CRDs.
#[allow(clippy::struct_excessive_bools)] // Flux's switches, one Helm flag each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpgradeOptions {
    pub wait: bool,
    pub wait_for_jobs: bool,
    pub disable_hooks: bool,
    /// `--force-replace`.
    pub force: bool,
    pub cleanup_on_fail: bool,
    /// `--history-max`; `Some(0)` keeps every revision, `None` leaves Helm's default (10).
    pub max_history: Option<u32>,
    /// `--reuse-values`; otherwise `--reset-values`, as Flux sends the full values each time.
    pub preserve_values: bool,
    pub disable_openapi_validation: bool,
    pub skip_schema_validation: bool,
    pub description: Option<String>,
    /// Arguments of the `weir-post-render` plugin (see [`Helm::with_post_renderer`]); none
    /// runs no post-renderer.
    pub post_render_args: Vec<OsString>,
}

/// Flux's `spec.rollback`, less `recreate` (Helm 4 removed `--recreate-pods`).
#[allow(clippy::struct_excessive_bools)] // Flux's switches, one Helm flag each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RollbackOptions {
    pub wait: bool,
    pub wait_for_jobs: bool,
    pub disable_hooks: bool,
    /// `--force-replace`.
    pub force: bool,
    pub cleanup_on_fail: bool,
    pub max_history: Option<u32>,
}

/// `--cascade`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeletionPropagation {
    #[default]
    Background,
    Foreground,
    Orphan,
}

impl DeletionPropagation {
    fn as_flag_value(self) -> &'static str {
        match self {
            Self::Background => "background",
            Self::Foreground => "foreground",
            Self::Orphan => "orphan",
        }
    }
}

/// Flux's `spec.uninstall`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UninstallOptions {
    pub keep_history: bool,
    pub disable_hooks: bool,
    /// `--wait=watcher`: wait until the release's objects are gone.
    pub wait: bool,
    pub deletion_propagation: DeletionPropagation,
}

/// One of Flux's `spec.test.filters`: `--filter=name=<name>`, or `--filter=!name=<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestFilter {
    pub name: String,
    pub exclude: bool,
}

/// A release as `helm ... -o json` prints it; only the fields the controller reads.
/// Unknown fields are ignored (`config`, the chart's files and templates among them).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Release {
    pub name: String,
    pub namespace: String,
    /// The revision.
    pub version: i64,
    pub info: ReleaseInfo,
    /// Present in install and upgrade output; `helm status` strips it.
    #[serde(default)]
    pub chart: Option<ChartSummary>,
    #[serde(default)]
    pub hooks: Vec<Hook>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ReleaseInfo {
    pub status: ReleaseStatus,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub first_deployed: Option<String>,
    #[serde(default)]
    pub last_deployed: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReleaseStatus {
    Deployed,
    Uninstalled,
    Superseded,
    Failed,
    Uninstalling,
    PendingInstall,
    PendingUpgrade,
    PendingRollback,
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChartSummary {
    pub metadata: ChartMetadata,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChartMetadata {
    pub name: String,
    pub version: String,
    #[serde(default, rename = "appVersion")]
    pub app_version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Hook {
    pub name: String,
    pub kind: String,
    #[serde(default)]
    pub events: Vec<String>,
    #[serde(default)]
    pub last_run: HookRun,
}

impl Hook {
    /// A test hook (`helm.sh/hook: test`, or Helm 2's `test-success`).
    #[must_use]
    pub fn is_test(&self) -> bool {
        self.events
            .iter()
            .any(|e| e == "test" || e == "test-success")
    }
}

/// A hook's last execution; the times are RFC 3339, `None` while it has not run (Helm
/// prints `""` then).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct HookRun {
    #[serde(default, deserialize_with = "non_empty")]
    pub started_at: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    pub completed_at: Option<String>,
    #[serde(default)]
    pub phase: HookPhase,
}

fn non_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let value: Option<String> = Option::deserialize(d)?;
    Ok(value.filter(|s| !s.is_empty()))
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum HookPhase {
    Running,
    Succeeded,
    Failed,
    #[default]
    #[serde(other)]
    Unknown,
}

/// What `helm test` did. `helm test` prints only a table, so the hooks are read from
/// `helm status -o json` afterwards: every test hook with its last run (a hook left out by
/// the filters keeps the run before).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRun {
    /// Helm's error when a test failed or could not run; `None` when all passed.
    pub failure: Option<String>,
    pub hooks: Vec<Hook>,
}

/// The release values, written 0600 in Helm's private home and deleted on drop. It also
/// knows which strings to keep out of error messages.
#[derive(Debug)]
pub struct ValuesFile {
    path: tempfile::TempPath,
    redact: Vec<String>,
}

impl ValuesFile {
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Helm {
    /// A runner for `binary` (an absolute path: Helm runs in its home) with a fresh private
    /// home under the system temporary directory.
    pub fn new(binary: impl Into<PathBuf>) -> Result<Self, HelmError> {
        let home = tempfile::Builder::new()
            .prefix("weir-helm-")
            .tempdir()
            .map_err(HelmError::Home)?;
        for (_, dir) in HOME_DIRS {
            std::fs::create_dir(home.path().join(dir)).map_err(HelmError::Home)?;
        }
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700))
            .map_err(HelmError::Home)?;
        Ok(Self {
            binary: binary.into(),
            home,
            grace: DEFAULT_GRACE,
        })
    }

    /// Installs the `weir-post-render` plugin (the `weir` binary at `weir_binary`) in this
    /// Helm's private plugin directory, so `post_render_args` can run post-renderers.
    pub fn with_post_renderer(self, weir_binary: &Path) -> Result<Self, HelmError> {
        let dir = self
            .home
            .path()
            .join("plugins")
            .join(crate::postrender::PLUGIN_NAME);
        std::fs::create_dir_all(&dir).map_err(HelmError::Home)?;
        std::fs::write(
            dir.join("plugin.yaml"),
            crate::postrender::plugin_yaml(weir_binary),
        )
        .map_err(HelmError::Home)?;
        Ok(self)
    }

    /// Writes `content` to a new private file of the home (0600), removed when the returned
    /// handle is dropped: the post-renderers a release's plugin run reads.
    pub fn write_private(&self, content: &[u8]) -> Result<tempfile::TempPath, HelmError> {
        let mut file = tempfile::Builder::new()
            .prefix("post-render-")
            .suffix(".json")
            .tempfile_in(self.home.path())
            .map_err(HelmError::WriteValues)?;
        std::io::Write::write_all(&mut file, content).map_err(HelmError::WriteValues)?;
        std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(0o600))
            .map_err(HelmError::WriteValues)?;
        Ok(file.into_temp_path())
    }

    /// How long Helm may take to exit after SIGTERM before it is killed.
    #[must_use]
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    #[must_use]
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// Writes `values` as JSON (which Helm reads as YAML) to a fresh 0600 file in the home.
    pub fn write_values(&self, values: &serde_json::Value) -> Result<ValuesFile, HelmError> {
        let body = serde_json::to_vec(values).map_err(HelmError::EncodeValues)?;
        // NamedTempFile creates the file 0600 on Unix.
        let mut file = tempfile::Builder::new()
            .prefix("values-")
            .suffix(".json")
            .tempfile_in(self.home.path())
            .map_err(HelmError::WriteValues)?;
        file.write_all(&body).map_err(HelmError::WriteValues)?;
        file.flush().map_err(HelmError::WriteValues)?;
        Ok(ValuesFile {
            path: file.into_temp_path(),
            redact: redactable_strings(values),
        })
    }

    /// `helm install`. The chart is a local path (a directory or a packaged `.tgz`).
    pub async fn install(
        &self,
        target: &ReleaseTarget,
        chart: &Path,
        values: &ValuesFile,
        options: &InstallOptions,
    ) -> Result<Release, HelmError> {
        let args = install_args(target, chart, values.path(), options);
        self.run_for_release(Action::Install, target, args, &values.redact)
            .await
    }

    /// `helm upgrade`, never `--install`: the controller chooses between the two.
    pub async fn upgrade(
        &self,
        target: &ReleaseTarget,
        chart: &Path,
        values: &ValuesFile,
        options: &UpgradeOptions,
    ) -> Result<Release, HelmError> {
        let args = upgrade_args(target, chart, values.path(), options);
        self.run_for_release(Action::Upgrade, target, args, &values.redact)
            .await
    }

    /// `helm rollback` to `revision`, or to the one before the current when `None`.
    pub async fn rollback(
        &self,
        target: &ReleaseTarget,
        revision: Option<i64>,
        options: &RollbackOptions,
    ) -> Result<(), HelmError> {
        let args = rollback_args(target, revision, options);
        let output = self.run(Action::Rollback, target, args).await?;
        output.success(Action::Rollback, &[]).map(drop)
    }

    pub async fn uninstall(
        &self,
        target: &ReleaseTarget,
        options: &UninstallOptions,
    ) -> Result<(), HelmError> {
        let args = uninstall_args(target, options);
        let output = self.run(Action::Uninstall, target, args).await?;
        output.success(Action::Uninstall, &[]).map(drop)
    }

    /// `helm test`, then `helm status` for the test hooks' phases. A failing test is a
    /// [`TestRun::failure`], not an error; errors are Weir's or `helm status`'s.
    pub async fn test(
        &self,
        target: &ReleaseTarget,
        filters: &[TestFilter],
    ) -> Result<TestRun, HelmError> {
        let args = test_args(target, filters);
        let output = self.run(Action::Test, target, args).await?;
        let failure = match output.success(Action::Test, &[]) {
            Ok(_) => None,
            Err(HelmError::Failed { message, .. }) => Some(message),
            Err(other) => return Err(other),
        };
        let release = self.status(target).await?;
        let hooks = release.hooks.into_iter().filter(Hook::is_test).collect();
        Ok(TestRun { failure, hooks })
    }

    /// `helm status -o json`: the latest revision, without its chart.
    pub async fn status(&self, target: &ReleaseTarget) -> Result<Release, HelmError> {
        let args = status_args(target);
        let output = self.run(Action::Status, target, args).await?;
        let stdout = output.success(Action::Status, &[])?;
        parse_release(Action::Status, stdout)
    }

    async fn run_for_release(
        &self,
        action: Action,
        target: &ReleaseTarget,
        args: Vec<OsString>,
        redact: &[String],
    ) -> Result<Release, HelmError> {
        let output = self.run(action, target, args).await?;
        let truncated = output.stdout.truncated;
        let stdout = output.success(action, redact)?;
        if truncated {
            tracing::debug!(%action, release = %target.name, "helm output too large, reading the release back");
            return self.status(target).await;
        }
        parse_release(action, stdout)
    }

    /// Runs Helm with `args` until it exits, stopping it at the target's deadline.
    async fn run(
        &self,
        action: Action,
        target: &ReleaseTarget,
        args: Vec<OsString>,
    ) -> Result<Captured, HelmError> {
        let output_error = |source| HelmError::Output { action, source };
        // Files, not pipes: see "Output" in the module docs.
        let stdout = tempfile::tempfile_in(self.home.path()).map_err(output_error)?;
        let stderr = tempfile::tempfile_in(self.home.path()).map_err(output_error)?;
        let env = helm_env(self.home.path(), &target.kube, |key| std::env::var_os(key));
        let mut command = Command::new(&self.binary);
        die_with_parent(&mut command);
        let child = command
            .args(args)
            .env_clear()
            .envs(env)
            .current_dir(self.home.path())
            .stdin(Stdio::null())
            .stdout(stdout.try_clone().map_err(output_error)?)
            .stderr(stderr.try_clone().map_err(output_error)?)
            // Its own group, so a stop reaches the exec credential plugins Helm starts.
            .process_group(0)
            .spawn()
            .map_err(|source| HelmError::Spawn {
                binary: self.binary.clone(),
                source,
            })?;
        let mut running = RunningHelm {
            child: Some(child),
            grace: self.grace,
        };
        let deadline = target.deadline();
        let Ok(status) = tokio::time::timeout(deadline, running.wait()).await else {
            tracing::warn!(%action, release = %target.name, ?deadline, "helm ran past its deadline, stopping it");
            running.stop().await;
            return Err(HelmError::TimedOut {
                action,
                after: deadline,
            });
        };
        running.child = None;
        Ok(Captured {
            status: status.map_err(output_error)?,
            stdout: read_capped(stdout, STDOUT_LIMIT, Keep::Head)
                .await
                .map_err(output_error)?,
            stderr: read_capped(stderr, STDERR_LIMIT, Keep::Tail)
                .await
                .map_err(output_error)?,
        })
    }
}

/// Has the kernel send Helm SIGTERM when Weir dies, however it dies (SIGKILL included): Helm's
/// install and upgrade answer SIGTERM by recording the release as failed, so no Helm outlives
/// Weir to finish (or leave pending) a release the next Weir would act on at the same time.
/// The signal follows the thread that started Helm: Tokio's worker threads live as long as the
/// runtime, and Helm is started from them.
fn die_with_parent(command: &mut Command) {
    let weir = rustix::process::getpid();
    // SAFETY: runs in the child between fork and exec, calling only the async-signal-safe
    // prctl(2) and getppid(2) through rustix's wrappers, allocating nothing.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))
                .map_err(std::io::Error::from)?;
            // Weir died between the fork and the prctl: no signal would come.
            if rustix::process::getppid() != Some(weir) {
                return Err(std::io::Error::other("weir exited before helm started"));
            }
            Ok(())
        });
    }
}

/// Helm's directory variables and the home subdirectory each points to; `plugins` stays
/// empty.
const HOME_DIRS: [(&str, &str); 4] = [
    ("HELM_CONFIG_HOME", "config"),
    ("HELM_CACHE_HOME", "cache"),
    ("HELM_DATA_HOME", "data"),
    ("HELM_PLUGINS", "plugins"),
];

/// Helm's whole environment; `ours` reads Weir's.
fn helm_env(
    home: &Path,
    kube: &KubeAccess,
    ours: impl Fn(&str) -> Option<OsString>,
) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = vec![("HOME".into(), home.into())];
    for (var, dir) in HOME_DIRS {
        env.push((var.into(), home.join(dir).into()));
    }
    let ambient: &[&str] = if kube.kubeconfig.is_none() {
        AMBIENT_KUBE_ENV
    } else {
        &[]
    };
    for key in PASSED_THROUGH_ENV.iter().chain(ambient) {
        if let Some(value) = ours(key) {
            env.push(((*key).into(), value));
        }
    }
    env
}

fn flag(name: &str, value: impl AsRef<OsStr>) -> OsString {
    let mut arg = OsString::from(format!("--{name}="));
    arg.push(value);
    arg
}

fn switch(args: &mut Vec<OsString>, on: bool, name: &str) {
    if on {
        args.push(format!("--{name}").into());
    }
}

/// Go's duration syntax, whole seconds when exact.
fn go_duration(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis().max(1))
    }
}

/// Namespace, colour and cluster access: flags every subcommand takes.
fn target_args(action: Action, target: &ReleaseTarget) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        action.subcommand().into(),
        flag("namespace", &target.namespace),
        flag("color", "never"),
    ];
    if let Some(kubeconfig) = &target.kube.kubeconfig {
        args.push(flag("kubeconfig", kubeconfig));
    }
    if let Some(impersonate) = &target.kube.impersonate {
        args.push(flag("kube-as-user", &impersonate.user));
        for group in &impersonate.groups {
            args.push(flag("kube-as-group", group));
        }
    }
    if action != Action::Status {
        args.push(flag("timeout", go_duration(target.timeout)));
    }
    args
}

fn wait_args(args: &mut Vec<OsString>, wait: bool, wait_for_jobs: bool) {
    args.push(flag("wait", if wait { "watcher" } else { "hookOnly" }));
    switch(args, wait && wait_for_jobs, "wait-for-jobs");
}

/// Ends the flags; positional arguments follow, so none is read as a flag.
fn positionals(args: &mut Vec<OsString>, values: &[&OsStr]) {
    args.push("--".into());
    args.extend(values.iter().map(|v| (*v).to_owned()));
}

/// Runs the `weir-post-render` plugin with `plugin_args`, when there are any.
fn post_render(args: &mut Vec<OsString>, plugin_args: &[OsString]) {
    if plugin_args.is_empty() {
        return;
    }
    args.push(flag("post-renderer", crate::postrender::PLUGIN_NAME));
    for arg in plugin_args {
        args.push(flag("post-renderer-args", arg));
    }
}

fn install_args(
    target: &ReleaseTarget,
    chart: &Path,
    values: &Path,
    options: &InstallOptions,
) -> Vec<OsString> {
    let mut args = target_args(Action::Install, target);
    args.push(flag("values", values));
    args.push(flag("output", "json"));
    wait_args(&mut args, options.wait, options.wait_for_jobs);
    switch(&mut args, options.create_namespace, "create-namespace");
    switch(&mut args, options.crds == CrdPolicy::Skip, "skip-crds");
    switch(&mut args, options.disable_hooks, "no-hooks");
    switch(&mut args, options.replace, "replace");
    switch(
        &mut args,
        options.disable_openapi_validation,
        "disable-openapi-validation",
    );
    switch(
        &mut args,
        options.skip_schema_validation,
        "skip-schema-validation",
    );
    if let Some(description) = &options.description {
        args.push(flag("description", description));
    }
    post_render(&mut args, &options.post_render_args);
    positionals(&mut args, &[OsStr::new(&target.name), chart.as_os_str()]);
    args
}

fn upgrade_args(
    target: &ReleaseTarget,
    chart: &Path,
    values: &Path,
    options: &UpgradeOptions,
) -> Vec<OsString> {
    let mut args = target_args(Action::Upgrade, target);
    args.push(flag("values", values));
    args.push(flag("output", "json"));
    wait_args(&mut args, options.wait, options.wait_for_jobs);
    let values_mode = if options.preserve_values {
        "reuse-values"
    } else {
        "reset-values"
    };
    switch(&mut args, true, values_mode);
    switch(&mut args, options.disable_hooks, "no-hooks");
    switch(&mut args, options.force, "force-replace");
    switch(&mut args, options.cleanup_on_fail, "cleanup-on-fail");
    if let Some(max) = options.max_history {
        args.push(flag("history-max", max.to_string()));
    }
    switch(
        &mut args,
        options.disable_openapi_validation,
        "disable-openapi-validation",
    );
    switch(
        &mut args,
        options.skip_schema_validation,
        "skip-schema-validation",
    );
    if let Some(description) = &options.description {
        args.push(flag("description", description));
    }
    post_render(&mut args, &options.post_render_args);
    positionals(&mut args, &[OsStr::new(&target.name), chart.as_os_str()]);
    args
}

fn rollback_args(
    target: &ReleaseTarget,
    revision: Option<i64>,
    options: &RollbackOptions,
) -> Vec<OsString> {
    let mut args = target_args(Action::Rollback, target);
    wait_args(&mut args, options.wait, options.wait_for_jobs);
    switch(&mut args, options.disable_hooks, "no-hooks");
    switch(&mut args, options.force, "force-replace");
    switch(&mut args, options.cleanup_on_fail, "cleanup-on-fail");
    if let Some(max) = options.max_history {
        args.push(flag("history-max", max.to_string()));
    }
    let revision = revision.map(|r| OsString::from(r.to_string()));
    let mut release = vec![OsStr::new(&target.name)];
    release.extend(revision.as_deref());
    positionals(&mut args, &release);
    args
}

fn uninstall_args(target: &ReleaseTarget, options: &UninstallOptions) -> Vec<OsString> {
    let mut args = target_args(Action::Uninstall, target);
    args.push(flag(
        "wait",
        if options.wait { "watcher" } else { "hookOnly" },
    ));
    args.push(flag(
        "cascade",
        options.deletion_propagation.as_flag_value(),
    ));
    switch(&mut args, options.keep_history, "keep-history");
    switch(&mut args, options.disable_hooks, "no-hooks");
    positionals(&mut args, &[OsStr::new(&target.name)]);
    args
}

fn test_args(target: &ReleaseTarget, filters: &[TestFilter]) -> Vec<OsString> {
    let mut args = target_args(Action::Test, target);
    for filter in filters {
        let negate = if filter.exclude { "!" } else { "" };
        args.push(flag("filter", format!("{negate}name={}", filter.name)));
    }
    positionals(&mut args, &[OsStr::new(&target.name)]);
    args
}

fn status_args(target: &ReleaseTarget) -> Vec<OsString> {
    let mut args = target_args(Action::Status, target);
    args.push(flag("output", "json"));
    positionals(&mut args, &[OsStr::new(&target.name)]);
    args
}

fn parse_release(action: Action, stdout: &[u8]) -> Result<Release, HelmError> {
    serde_json::from_slice(stdout).map_err(|source| HelmError::Parse { action, source })
}

/// The string leaves of the values worth hiding, longest first so a value that contains
/// another is replaced whole.
fn redactable_strings(values: &serde_json::Value) -> Vec<String> {
    fn collect(value: &serde_json::Value, into: &mut BTreeSet<String>) {
        match value {
            serde_json::Value::String(s) if s.chars().count() >= MIN_REDACTED_LEN => {
                into.insert(s.clone());
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| collect(v, into)),
            serde_json::Value::Object(map) => map.values().for_each(|v| collect(v, into)),
            _ => {}
        }
    }
    let mut found = BTreeSet::new();
    collect(values, &mut found);
    let mut strings: Vec<String> = found.into_iter().collect();
    strings.sort_by_key(|s| std::cmp::Reverse(s.len()));
    strings
}

/// Helm's stderr cut to what explains the failure: from its `Error:` line on (a joined
/// error continues on further lines), else the last `level=ERROR` log's message, else the
/// last line; then values redacted and the length capped.
fn failure_message(stderr: &str, status: ExitStatus, redact: &[String]) -> String {
    let lines: Vec<&str> = stderr.lines().collect();
    let message = if let Some(start) = lines.iter().rposition(|l| l.starts_with("Error: ")) {
        let mut kept: Vec<&str> = lines[start..]
            .iter()
            .map(|l| l.trim_end())
            .filter(|l| !l.trim().is_empty())
            .collect();
        if let Some(first) = kept.first_mut() {
            *first = first.trim_start_matches("Error: ");
        }
        kept.join("\n")
    } else if let Some(logged) = lines.iter().rev().find_map(|l| logged_error(l)) {
        logged
    } else if let Some(last) = lines.iter().rev().find(|l| !l.trim().is_empty()) {
        last.trim().to_owned()
    } else {
        format!("helm exited with {status} and printed no error")
    };
    let mut message = redact_strings(message, redact);
    if message.len() > MESSAGE_LIMIT {
        let mut end = MESSAGE_LIMIT;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

/// The message of a slog text line `level=ERROR msg="..."`, unquoted loosely.
fn logged_error(line: &str) -> Option<String> {
    let rest = line.strip_prefix("level=ERROR msg=")?;
    let quoted = rest
        .strip_prefix('"')
        .and_then(|r| r.rfind('"').map(|end| &r[..end]));
    let message = quoted.unwrap_or(rest);
    Some(message.replace("\\\"", "\""))
}

fn redact_strings(mut message: String, redact: &[String]) -> String {
    for secret in redact {
        if message.contains(secret.as_str()) {
            message = message.replace(secret.as_str(), "***");
        }
    }
    message
}

#[derive(Debug)]
struct Captured {
    status: ExitStatus,
    stdout: Capped,
    stderr: Capped,
}

impl Captured {
    /// Stdout when Helm exited 0, else the cleaned failure.
    fn success(&self, action: Action, redact: &[String]) -> Result<&[u8], HelmError> {
        if self.status.success() {
            return Ok(&self.stdout.bytes);
        }
        let stderr = String::from_utf8_lossy(&self.stderr.bytes);
        Err(HelmError::Failed {
            action,
            message: failure_message(&stderr, self.status, redact),
        })
    }
}

#[derive(Debug)]
struct Capped {
    bytes: Vec<u8>,
    truncated: bool,
}

#[derive(Debug, Clone, Copy)]
enum Keep {
    Head,
    Tail,
}

/// At most `limit` bytes from the head or the tail of `file`, a finished output file.
async fn read_capped(file: std::fs::File, limit: usize, keep: Keep) -> std::io::Result<Capped> {
    let mut file = tokio::fs::File::from_std(file);
    let len = file.metadata().await?.len();
    let limit = u64::try_from(limit).unwrap_or(u64::MAX);
    let start = match keep {
        Keep::Head => 0,
        Keep::Tail => len.saturating_sub(limit),
    };
    file.seek(std::io::SeekFrom::Start(start)).await?;
    let mut bytes = Vec::new();
    file.take(limit).read_to_end(&mut bytes).await?;
    Ok(Capped {
        bytes,
        truncated: len > limit,
    })
}

/// A started Helm until it has exited; dropping it early stops Helm (see the module docs).
#[derive(Debug)]
struct RunningHelm {
    child: Option<Child>,
    grace: Duration,
}

impl RunningHelm {
    async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        match self.child.as_mut() {
            Some(child) => child.wait().await,
            None => Err(std::io::Error::other("helm was already reaped")),
        }
    }

    /// SIGTERM to the group, SIGKILL after the grace; returns once Helm is reaped. If this
    /// future is itself dropped, `Drop` starts over.
    async fn stop(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        stop_gracefully(child, self.grace).await;
        self.child = None;
    }
}

async fn stop_gracefully(child: &mut Child, grace: Duration) {
    let signalled = child
        .id()
        .is_some_and(|pid| signal_group(pid, Signal::Term));
    if signalled && tokio::time::timeout(grace, child.wait()).await.is_ok() {
        return;
    }
    kill_now(child).await;
}

/// SIGKILL to the group and to Helm itself (the group kill needs `kill`, this one does not),
/// then reap it. Errors mean Helm is already gone.
async fn kill_now(child: &mut Child) {
    if let Some(pid) = child.id() {
        signal_group(pid, Signal::Kill);
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
}

impl Drop for RunningHelm {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let Some(pid) = child.id() else {
            return;
        };
        tracing::debug!(pid, "helm call dropped, stopping helm");
        let grace = self.grace;
        let terminated = signal_group(pid, Signal::Term);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if !terminated || tokio::time::timeout(grace, child.wait()).await.is_err() {
                        kill_now(&mut child).await;
                    }
                });
            }
            // No runtime to wait out the grace: a Helm that got SIGTERM ends on its own.
            Err(_) if terminated => {}
            Err(_) => {
                let _ = child.start_kill();
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Signal {
    Term,
    Kill,
}

/// Sends `signal` to the process group `pgid` with the `kill` program; false if it could not.
/// `kill` exits at once, so waiting for it, even from `Drop` on a runtime thread, is brief.
fn signal_group(pgid: u32, signal: Signal) -> bool {
    let name = match signal {
        Signal::Term => "TERM",
        Signal::Kill => "KILL",
    };
    let result = std::process::Command::new("kill")
        .args(["-s", name, "--", &format!("-{pgid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match result {
        Ok(status) => status.success(),
        Err(error) => {
            tracing::warn!(%error, pgid, signal = name, "could not run kill to signal helm");
            false
        }
    }
}

#[cfg(test)]
// Tests fail by panicking; `panic!` names what a `let ... else` did not match.
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;
    use std::os::unix::process::ExitStatusExt as _;

    fn target() -> ReleaseTarget {
        ReleaseTarget::new("podinfo", "apps", Duration::from_secs(300))
    }

    fn strings(args: &[OsString]) -> Vec<String> {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    fn flags_of(args: &[OsString]) -> Vec<String> {
        let all = strings(args);
        let dash = all.iter().position(|a| a == "--").unwrap();
        all[1..dash].to_vec()
    }

    #[test]
    fn default_install_waits_for_nothing_but_hooks_and_prints_json() {
        let args = install_args(
            &target(),
            Path::new("/charts/podinfo"),
            Path::new("/home/values.json"),
            &InstallOptions::default(),
        );
        assert_eq!(
            strings(&args),
            [
                "install",
                "--namespace=apps",
                "--color=never",
                "--timeout=300s",
                "--values=/home/values.json",
                "--output=json",
                "--wait=hookOnly",
                "--",
                "podinfo",
                "/charts/podinfo",
            ]
        );
    }

    #[test]
    fn every_install_option_maps_to_its_flag() {
        let options = InstallOptions {
            create_namespace: true,
            crds: CrdPolicy::Skip,
            wait: true,
            wait_for_jobs: true,
            disable_hooks: true,
            replace: true,
            disable_openapi_validation: true,
            skip_schema_validation: true,
            description: Some("-by weir".into()),
            post_render_args: vec!["/h/r.json".into(), "/bin/kustomize".into()],
        };
        let args = install_args(&target(), Path::new("c"), Path::new("v"), &options);
        assert_eq!(
            flags_of(&args)[5..],
            [
                "--wait=watcher",
                "--wait-for-jobs",
                "--create-namespace",
                "--skip-crds",
                "--no-hooks",
                "--replace",
                "--disable-openapi-validation",
                "--skip-schema-validation",
                "--description=-by weir",
                "--post-renderer=weir-post-render",
                "--post-renderer-args=/h/r.json",
                "--post-renderer-args=/bin/kustomize",
            ]
        );
    }

    #[test]
    fn crd_create_and_create_replace_use_helms_default() {
        for crds in [CrdPolicy::Create, CrdPolicy::CreateReplace] {
            let options = InstallOptions {
                crds,
                ..InstallOptions::default()
            };
            let args = install_args(&target(), Path::new("c"), Path::new("v"), &options);
            assert!(!strings(&args).contains(&"--skip-crds".to_owned()));
        }
    }

    #[test]
    fn wait_for_jobs_is_only_passed_with_wait() {
        let options = InstallOptions {
            wait_for_jobs: true,
            ..InstallOptions::default()
        };
        let args = install_args(&target(), Path::new("c"), Path::new("v"), &options);
        assert!(!strings(&args).contains(&"--wait-for-jobs".to_owned()));
    }

    #[test]
    fn cluster_access_and_impersonation_become_global_flags() {
        let mut target = target();
        target.timeout = Duration::from_millis(1500);
        target.kube = KubeAccess {
            kubeconfig: Some("/secrets/kubeconfig".into()),
            impersonate: Some(Impersonation {
                user: "system:serviceaccount:apps:deployer".into(),
                groups: vec!["ops".into(), "dev".into()],
            }),
        };
        assert_eq!(
            flags_of(&status_args(&target)),
            [
                "--namespace=apps",
                "--color=never",
                "--kubeconfig=/secrets/kubeconfig",
                "--kube-as-user=system:serviceaccount:apps:deployer",
                "--kube-as-group=ops",
                "--kube-as-group=dev",
                "--output=json",
            ]
        );
        assert!(strings(&test_args(&target, &[])).contains(&"--timeout=1500ms".to_owned()));
    }

    #[test]
    fn service_account_impersonation_names_the_service_account_user() {
        assert_eq!(
            Impersonation::service_account("apps", "deployer"),
            Impersonation {
                user: "system:serviceaccount:apps:deployer".into(),
                groups: vec![],
            }
        );
    }

    #[test]
    fn default_upgrade_resets_values_and_never_installs() {
        let args = upgrade_args(
            &target(),
            Path::new("/c.tgz"),
            Path::new("/v.json"),
            &UpgradeOptions::default(),
        );
        assert_eq!(
            strings(&args),
            [
                "upgrade",
                "--namespace=apps",
                "--color=never",
                "--timeout=300s",
                "--values=/v.json",
                "--output=json",
                "--wait=hookOnly",
                "--reset-values",
                "--",
                "podinfo",
                "/c.tgz",
            ]
        );
    }

    #[test]
    fn every_upgrade_option_maps_to_its_flag() {
        let options = UpgradeOptions {
            wait: true,
            wait_for_jobs: true,
            disable_hooks: true,
            force: true,
            cleanup_on_fail: true,
            max_history: Some(0),
            preserve_values: true,
            disable_openapi_validation: true,
            skip_schema_validation: true,
            description: Some("d".into()),
            post_render_args: vec![],
        };
        let args = upgrade_args(&target(), Path::new("c"), Path::new("v"), &options);
        assert_eq!(
            flags_of(&args)[5..],
            [
                "--wait=watcher",
                "--wait-for-jobs",
                "--reuse-values",
                "--no-hooks",
                "--force-replace",
                "--cleanup-on-fail",
                "--history-max=0",
                "--disable-openapi-validation",
                "--skip-schema-validation",
                "--description=d",
            ]
        );
    }

    #[test]
    fn rollback_names_the_revision_only_when_given() {
        let options = RollbackOptions::default();
        let previous = strings(&rollback_args(&target(), None, &options));
        assert_eq!(previous[previous.len() - 2..], ["--", "podinfo"]);
        let options = RollbackOptions {
            wait: true,
            wait_for_jobs: true,
            disable_hooks: true,
            force: true,
            cleanup_on_fail: true,
            max_history: Some(5),
        };
        assert_eq!(
            strings(&rollback_args(&target(), Some(3), &options)),
            [
                "rollback",
                "--namespace=apps",
                "--color=never",
                "--timeout=300s",
                "--wait=watcher",
                "--wait-for-jobs",
                "--no-hooks",
                "--force-replace",
                "--cleanup-on-fail",
                "--history-max=5",
                "--",
                "podinfo",
                "3",
            ]
        );
    }

    #[test]
    fn uninstall_options_map_to_their_flags() {
        assert_eq!(
            flags_of(&uninstall_args(&target(), &UninstallOptions::default()))[3..],
            ["--wait=hookOnly", "--cascade=background"]
        );
        let options = UninstallOptions {
            keep_history: true,
            disable_hooks: true,
            wait: true,
            deletion_propagation: DeletionPropagation::Foreground,
        };
        assert_eq!(
            flags_of(&uninstall_args(&target(), &options))[3..],
            [
                "--wait=watcher",
                "--cascade=foreground",
                "--keep-history",
                "--no-hooks",
            ]
        );
        let orphan = UninstallOptions {
            deletion_propagation: DeletionPropagation::Orphan,
            ..UninstallOptions::default()
        };
        assert!(
            strings(&uninstall_args(&target(), &orphan)).contains(&"--cascade=orphan".to_owned())
        );
    }

    #[test]
    fn test_filters_include_and_exclude_by_name() {
        let filters = [
            TestFilter {
                name: "smoke".into(),
                exclude: false,
            },
            TestFilter {
                name: "slow".into(),
                exclude: true,
            },
        ];
        assert_eq!(
            strings(&test_args(&target(), &filters)),
            [
                "test",
                "--namespace=apps",
                "--color=never",
                "--timeout=300s",
                "--filter=name=smoke",
                "--filter=!name=slow",
                "--",
                "podinfo",
            ]
        );
    }

    #[test]
    fn helm_gets_a_private_home_and_only_the_allowed_environment() {
        let ours = |key: &str| match key {
            "PATH" => Some(OsString::from("/bin")),
            "KUBECONFIG" => Some("/kube".into()),
            "KUBERNETES_SERVICE_HOST" => Some("10.0.0.1".into()),
            "AWS_SECRET_ACCESS_KEY" => Some("nope".into()),
            _ => None,
        };
        let ambient = helm_env(Path::new("/h"), &KubeAccess::default(), ours);
        let rendered: Vec<String> = ambient
            .iter()
            .map(|(k, v)| format!("{}={}", k.to_string_lossy(), v.to_string_lossy()))
            .collect();
        assert_eq!(
            rendered,
            [
                "HOME=/h",
                "HELM_CONFIG_HOME=/h/config",
                "HELM_CACHE_HOME=/h/cache",
                "HELM_DATA_HOME=/h/data",
                "HELM_PLUGINS=/h/plugins",
                "PATH=/bin",
                "KUBECONFIG=/kube",
                "KUBERNETES_SERVICE_HOST=10.0.0.1",
            ]
        );
        let remote = KubeAccess {
            kubeconfig: Some("/remote".into()),
            impersonate: None,
        };
        let keys: Vec<OsString> = helm_env(Path::new("/h"), &remote, ours)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert!(!keys.contains(&OsString::from("KUBECONFIG")));
        assert!(!keys.contains(&OsString::from("KUBERNETES_SERVICE_HOST")));
    }

    #[test]
    fn failure_message_keeps_helms_error_lines_only() {
        let stderr = "level=WARN msg=\"this chart is deprecated\"\n\
            Error: UPGRADE FAILED: 2 errors occurred:\n\
            \t* Deployment.apps \"web\" is invalid\n\
            \t* Service \"web\" is invalid\n\n";
        assert_eq!(
            failure_message(stderr, ExitStatus::from_raw(256), &[]),
            "UPGRADE FAILED: 2 errors occurred:\n\t* Deployment.apps \"web\" is invalid\n\t* Service \"web\" is invalid"
        );
    }

    #[test]
    fn failure_message_falls_back_to_the_logged_error_then_the_last_line() {
        let logged = "level=INFO msg=start\nlevel=ERROR msg=\"cluster \\\"x\\\" unreachable\"\n";
        assert_eq!(
            failure_message(logged, ExitStatus::from_raw(256), &[]),
            "cluster \"x\" unreachable"
        );
        assert_eq!(
            failure_message(
                "panic: boom\n\tgoroutine 1\n",
                ExitStatus::from_raw(512),
                &[]
            ),
            "goroutine 1"
        );
        assert!(
            failure_message("", ExitStatus::from_raw(9), &[]).contains("printed no error"),
            "an empty stderr still explains itself"
        );
    }

    #[test]
    fn failure_message_hides_the_values_and_stays_short() {
        let values = serde_json::json!({
            "password": "hunter2-hunter2",
            "nested": [{"token": "hunter2"}],
            "short": "nginx",
            "port": 8080,
        });
        let redact = redactable_strings(&values);
        assert_eq!(redact, ["hunter2-hunter2", "hunter2"]);
        let stderr = "Error: INSTALLATION FAILED: Secret \"db\" is invalid: data[password]: Invalid value: \"hunter2-hunter2\" (nginx)\n";
        assert_eq!(
            failure_message(stderr, ExitStatus::from_raw(256), &redact),
            "INSTALLATION FAILED: Secret \"db\" is invalid: data[password]: Invalid value: \"***\" (nginx)"
        );
        let long = format!("Error: {}\n", "é".repeat(MESSAGE_LIMIT));
        let message = failure_message(&long, ExitStatus::from_raw(256), &[]);
        assert!(message.len() <= MESSAGE_LIMIT + '…'.len_utf8());
    }

    #[test]
    fn release_json_is_read_tolerantly() {
        let json = br#"{"name":"rel","info":{"first_deployed":"2026-12-07T22:14:33Z","description":"Install complete","status":"pending-install","notes":"hi"},
            "chart":{"metadata":{"name":"tiny","version":"0.1.0","appVersion":"1.0"},"templates":[]},"config":{"a":"secret"},
            "hooks":[{"name":"t","kind":"Pod","events":["test"],"last_run":{"started_at":"a","completed_at":"b","phase":"Succeeded"}},
                     {"name":"p","kind":"Job","events":["pre-install"],"last_run":{"started_at":"","phase":""}}],
            "version":1,"namespace":"ns","apply_method":"ssa"}"#;
        let release = parse_release(Action::Install, json).unwrap();
        assert_eq!(release.info.status, ReleaseStatus::PendingInstall);
        assert_eq!(
            release.chart.unwrap().metadata.app_version.as_deref(),
            Some("1.0")
        );
        assert_eq!(release.hooks[0].last_run.phase, HookPhase::Succeeded);
        assert!(release.hooks[0].is_test());
        assert_eq!(release.hooks[0].last_run.completed_at.as_deref(), Some("b"));
        assert_eq!(release.hooks[1].last_run, HookRun::default());
        assert!(!release.hooks[1].is_test());
    }

    #[tokio::test]
    async fn values_file_is_private_json_and_removed_on_drop() {
        let helm = Helm::new("/nonexistent/helm").unwrap();
        let values = helm.write_values(&serde_json::json!({"a": 1})).unwrap();
        let path = values.path().to_owned();
        assert!(path.starts_with(helm.home()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), r#"{"a":1}"#);
        let home_mode = std::fs::metadata(helm.home()).unwrap().permissions().mode() & 0o777;
        assert_eq!(home_mode, 0o700);
        drop(values);
        assert!(!path.exists());
    }

    /// The pinned Helm: `$WEIR_TOOLS_BIN/helm`, else the workspace's `.tools/bin/current/helm`.
    fn real_helm() -> Option<PathBuf> {
        let path = match std::env::var_os("WEIR_TOOLS_BIN") {
            Some(dir) => PathBuf::from(dir).join("helm"),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/bin/current/helm"),
        };
        if path.exists() {
            Some(path)
        } else {
            println!("skipped: no helm binary at {}", path.display());
            None
        }
    }

    #[tokio::test]
    async fn missing_chart_fails_with_helms_message_naming_the_path() {
        let Some(binary) = real_helm() else { return };
        let helm = Helm::new(binary).unwrap();
        let values = helm
            .write_values(&serde_json::json!({"password": "do-not-print-me"}))
            .unwrap();
        let chart = helm.home().join("no-such-chart");
        let error = helm
            .install(&target(), &chart, &values, &InstallOptions::default())
            .await
            .unwrap_err();
        let HelmError::Failed { action, message } = error else {
            panic!("expected a Helm failure, got {error:?}");
        };
        assert_eq!(action, Action::Install);
        assert_eq!(
            message,
            format!(
                "INSTALLATION FAILED: path \"{}\" not found",
                chart.display()
            )
        );
    }

    #[tokio::test]
    async fn unreachable_cluster_fails_cleanly_through_the_given_kubeconfig() {
        let Some(binary) = real_helm() else { return };
        let helm = Helm::new(binary).unwrap();
        let kubeconfig = helm.home().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n\
             users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n",
        )
        .unwrap();
        let mut target = target();
        target.kube.kubeconfig = Some(kubeconfig);
        let error = helm.status(&target).await.unwrap_err();
        let HelmError::Failed { action, message } = error else {
            panic!("expected a Helm failure, got {error:?}");
        };
        assert_eq!(action, Action::Status);
        assert!(message.contains("127.0.0.1:1"), "{message}");
        assert!(
            !message.contains("Error:") && !message.contains('\n'),
            "{message}"
        );
    }

    /// A stand-in for Helm: a shell script in its own directory.
    fn script(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("fake-helm");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn short_deadline() -> ReleaseTarget {
        let mut target = target();
        target.deadline = Some(Duration::from_secs(2));
        target
    }

    async fn eventually(what: &str, check: impl Fn() -> bool) {
        for _ in 0..200 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting until {what}");
    }

    fn alive(pid: &str) -> bool {
        Path::new("/proc").join(pid.trim()).exists()
    }

    #[tokio::test]
    async fn helm_past_its_deadline_gets_sigterm_and_time_to_exit() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("terminated");
        let binary = script(
            dir.path(),
            &format!(
                "trap 'echo term > {0}; exit 1' TERM\nwhile :; do sleep 0.05; done",
                marker.display()
            ),
        );
        let helm = Helm::new(binary)
            .unwrap()
            .with_grace(Duration::from_secs(20));
        let started = std::time::Instant::now();
        let error = helm.status(&short_deadline()).await.unwrap_err();
        assert!(
            matches!(
                error,
                HelmError::TimedOut {
                    action: Action::Status,
                    ..
                }
            ),
            "{error:?}"
        );
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), "term\n");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "it exited on SIGTERM, well within the grace"
        );
    }

    #[tokio::test]
    async fn helm_ignoring_sigterm_is_killed_after_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        // `exec` keeps the pid, and an ignored signal stays ignored across it.
        let binary = script(
            dir.path(),
            &format!(
                "trap '' TERM\necho $$ > {}\nexec sleep 600",
                pid_file.display()
            ),
        );
        let helm = Helm::new(binary)
            .unwrap()
            .with_grace(Duration::from_millis(300));
        let started = std::time::Instant::now();
        let error = helm.status(&short_deadline()).await.unwrap_err();
        assert!(matches!(error, HelmError::TimedOut { .. }), "{error:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        assert!(
            !alive(&pid),
            "the stubborn helm {pid} was killed and reaped"
        );
    }

    #[tokio::test]
    async fn dropping_the_call_stops_helm() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let marker = dir.path().join("terminated");
        let binary = script(
            dir.path(),
            &format!(
                "trap 'echo term > {}; exit 1' TERM\necho $$ > {}\nwhile :; do sleep 0.05; done",
                marker.display(),
                pid_file.display()
            ),
        );
        let helm = Helm::new(binary).unwrap();
        let target = target();
        let mut call = Box::pin(helm.status(&target));
        let started = || std::fs::read_to_string(&pid_file).is_ok_and(|pid| pid.ends_with('\n'));
        tokio::select! {
            result = &mut call => panic!("the stand-in never exits on its own: {result:?}"),
            () = eventually("the stand-in has started", started) => {}
        }
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        drop(call);
        eventually("the stand-in got SIGTERM", || marker.exists()).await;
        eventually("the stand-in has exited", || !alive(&pid)).await;
    }
}
