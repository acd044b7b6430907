//! The helm controller as a user meets it: `weir controllers --controllers source,helm` (the
//! binary, found through `WEIR_BIN`) releasing with the harness's Helm 4, driven and read by the
//! official `flux` CLI and `weir get`, checked with the real `helm` CLI; and a process killed
//! while Helm waits, whose stale `pending-upgrade` the next process unlocks.

use std::path::PathBuf;

use anyhow::{Context, Result, ensure};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use weir_api::{HelmRelease, helm_release as hr, manifest};
use weir_e2e::{Chart, Harness, TestNamespace, unique_name, wait_until};

use crate::fixture::{Run, cell, flux, weir_bin, weir_ok_as};

/// A HelmRelease made with `flux create helmrelease` is installed by a `weir controllers`
/// process; `flux get helmreleases` shows it Ready with Flux's message and the chart version as
/// its revision, and `weir get hr` prints the same row. After a new chart version is published,
/// `flux reconcile helmrelease --with-source` waits for the upgrade and exits 0, and Helm's
/// history has it as revision 2.
#[tokio::test]
async fn flux_installs_gets_and_upgrades_a_helm_release_released_by_weir() -> Result<()> {
    let f = HelmFixture::start().await?;
    let ns = f.ns.name();
    let chart = unique_name("cli-hr", 30);
    f.harness.charts().publish(&Chart::new(&chart, "1.0.0"))?;
    let weir = WeirProcess::start(f.harness, ns)?;

    f.flux_ok(&[
        "create",
        "source",
        "helm",
        "charts",
        "--url",
        f.harness.charts().url(),
        "--interval",
        "10m",
    ])
    .await
    .with_context(|| weir.log())?;
    let created = f
        .flux_ok(&[
            "create",
            "helmrelease",
            "app",
            "--source",
            "HelmRepository/charts",
            "--chart",
            &chart,
            "--interval",
            "10m",
        ])
        .await
        .with_context(|| weir.log())?;
    ensure!(
        created.all.contains("applied revision 1.0.0"),
        "{}",
        created.all
    );

    let table = f.flux_ok(&["get", "helmreleases"]).await?.stdout;
    assert_eq!(cell(&table, "app", "REVISION")?, "1.0.0", "{table}");
    assert_eq!(cell(&table, "app", "SUSPENDED")?, "False", "{table}");
    assert_eq!(cell(&table, "app", "READY")?, "True", "{table}");
    assert_eq!(
        cell(&table, "app", "MESSAGE")?,
        format!("Helm install succeeded for release {ns}/app.v1 with chart {chart}@1.0.0"),
    );
    f.assert_weir_get_matches(&table).await?;

    // A new version: `--with-source` reconciles the HelmChart and, first, its HelmRepository
    // (flux 2.9 follows the chain), so the upgrade needs nothing else.
    f.harness.charts().publish(&Chart::new(&chart, "1.1.0"))?;
    let reconciled = f
        .flux_ok(&["reconcile", "helmrelease", "app", "--with-source"])
        .await
        .with_context(|| weir.log())?;
    ensure!(
        reconciled.all.contains("applied revision 1.1.0"),
        "{}",
        reconciled.all
    );
    let revisions = f.helm_history("app", "chart").await?;
    assert_eq!(
        revisions,
        [
            (1, "superseded".into(), format!("{chart}-1.0.0")),
            (2, "deployed".into(), format!("{chart}-1.1.0")),
        ]
    );

    let table = f.flux_ok(&["get", "helmreleases"]).await?.stdout;
    assert_eq!(cell(&table, "app", "REVISION")?, "1.1.0", "{table}");
    assert_eq!(
        cell(&table, "app", "MESSAGE")?,
        format!("Helm upgrade succeeded for release {ns}/app.v2 with chart {chart}@1.1.0"),
    );
    f.assert_weir_get_matches(&table).await?;
    let all = f.weir_get(&["all", "-n", ns]).await?;
    assert_eq!(cell(&all, "helmrelease/app", "REVISION")?, "1.1.0", "{all}");
    Ok(())
}

/// Never another operation in progress: a `weir controllers` process killed (with the Helm it
/// runs, as a pod's death kills every process in it) while Helm waits on an upgrade leaves the
/// revision `pending-upgrade`. The next process unlocks it as Flux does — marked `failed`,
/// "Release unlocked from stale 'pending-upgrade' state" — and releases the fixed values as a
/// new revision, so no Helm action ever runs against a release another one holds.
#[tokio::test]
async fn a_weir_killed_mid_upgrade_leaves_pending_upgrade_that_the_next_weir_unlocks() -> Result<()>
{
    let f = HelmFixture::start().await?;
    let (mut weir, api) = upgrade_waiting(&f, "cli-killed").await?;
    let killed = weir.kill_with_helm()?;
    ensure!(
        killed.helms > 0,
        "no helm was running under weir:\n{}",
        weir.log()
    );
    assert_eq!(
        f.latest_revision("app").await?,
        (2, "pending-upgrade".to_owned()),
        "the killed upgrade stays pending"
    );

    // The values fixed, and a new process.
    fix_values(&api).await?;
    weir.restart()?;
    let ready = weir_e2e::wait_ready(&api, "app", "True", Some(hr::UPGRADE_SUCCEEDED_REASON))
        .await
        .with_context(|| weir.log())?;
    let status = ready.status.unwrap_or_default();
    let latest = status.history.first().context("an empty history")?;
    assert_eq!((latest.version, latest.status.as_str()), (3, "deployed"));

    // Helm's history: the killed upgrade failed with Flux's unlock message, then the upgrade
    // of the fixed values.
    let revisions = f.helm_history("app", "description").await?;
    let revision =
        |n: i64, status: &str, description: &str| (n, status.to_owned(), description.to_owned());
    assert_eq!(
        revisions,
        [
            revision(1, "superseded", "Install complete"),
            revision(
                2,
                "failed",
                "Release unlocked from stale 'pending-upgrade' state"
            ),
            revision(3, "deployed", "Upgrade complete"),
        ]
    );
    Ok(())
}

/// A weir killed alone (SIGKILL to its pid, its Helm untouched) takes its Helm with it: the
/// kernel sends Helm SIGTERM (Helm's parent-death signal), Helm records the upgrade failed
/// itself, and the next process upgrades — never two Helms on one release, never two
/// `deployed` revisions.
#[tokio::test]
async fn a_weir_killed_alone_takes_its_helm_with_it() -> Result<()> {
    let f = HelmFixture::start().await?;
    let (mut weir, api) = upgrade_waiting(&f, "cli-alone").await?;
    let killed = weir.kill_alone()?;
    ensure!(
        killed.helms > 0,
        "no helm was running under weir:\n{}",
        weir.log()
    );
    assert_eq!(
        f.latest_revision("app").await?,
        (2, "failed".to_owned()),
        "Helm, stopped by SIGTERM, recorded its upgrade failed"
    );
    fix_values(&api).await?;
    weir.restart()?;
    weir_e2e::wait_ready(&api, "app", "True", Some(hr::UPGRADE_SUCCEEDED_REASON))
        .await
        .with_context(|| weir.log())?;
    let statuses: Vec<String> = f
        .helm_history("app", "description")
        .await?
        .into_iter()
        .map(|(_, status, _)| status)
        .collect();
    assert_eq!(statuses, ["superseded", "failed", "deployed"]);
    Ok(())
}

/// A `weir controllers` process that installed HelmRelease `app` and is upgrading it to a
/// Deployment no node may run, Helm waiting on it (revision 2 `pending-upgrade`).
async fn upgrade_waiting(
    f: &HelmFixture,
    chart_hint: &str,
) -> Result<(WeirProcess, Api<HelmRelease>)> {
    let ns = f.ns.name();
    let chart = unique_name(chart_hint, 30);
    f.harness.charts().publish(&deployment_chart(&chart))?;
    let weir = WeirProcess::start(f.harness, ns)?;
    f.flux_ok(&[
        "create",
        "source",
        "helm",
        "charts",
        "--url",
        f.harness.charts().url(),
        "--interval",
        "10m",
    ])
    .await
    .with_context(|| weir.log())?;
    let release: HelmRelease = manifest::from_value(json!({
        "apiVersion": "helm.toolkit.fluxcd.io/v2",
        "kind": "HelmRelease",
        "metadata": { "name": "app", "namespace": ns },
        "spec": {
            "interval": "10m",
            "timeout": "5m",
            "chart": { "spec": {
                "chart": chart,
                "sourceRef": { "kind": "HelmRepository", "name": "charts" },
            } },
        },
    }))?;
    let api: Api<HelmRelease> = Api::namespaced(f.client.clone(), ns);
    api.create(&PostParams::default(), &release).await?;
    weir_e2e::wait_ready(&api, "app", "True", Some(hr::INSTALL_SUCCEEDED_REASON))
        .await
        .with_context(|| weir.log())?;

    // A Deployment no node may run: Helm's upgrade waits up to 5 minutes for it.
    let values = |values: Value| json!({ "spec": { "values": values } });
    api.patch(
        "app",
        &PatchParams::default(),
        &Patch::Merge(&values(
            json!({ "replicaCount": 1, "nodeSelector": { "weir.dev/none": "x" } }),
        )),
    )
    .await?;
    wait_until("Helm to store revision 2 pending-upgrade", || async {
        let latest = f.latest_revision("app").await.map_err(|e| e.to_string())?;
        if latest == (2, "pending-upgrade".to_owned()) {
            Ok(())
        } else {
            Err(format!("latest is {latest:?}"))
        }
    })
    .await
    .with_context(|| weir.log())?;
    Ok((weir, api))
}

/// The values of HelmRelease `app` fixed: a Deployment that becomes ready.
async fn fix_values(api: &Api<HelmRelease>) -> Result<()> {
    let patch = json!({ "spec": { "values": { "replicaCount": 0, "nodeSelector": null } } });
    api.patch("app", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// A namespace of its own, and the `flux` and `helm` CLIs pointed at it.
struct HelmFixture {
    harness: &'static Harness,
    ns: TestNamespace,
    client: kube::Client,
}

impl HelmFixture {
    async fn start() -> Result<Self> {
        let harness = Harness::get().await?;
        Ok(Self {
            ns: harness.namespace().await?,
            client: harness.client()?,
            harness,
        })
    }

    /// Runs `flux <args>` in the namespace; fails unless it exits 0.
    async fn flux_ok(&self, args: &[&str]) -> Result<Run> {
        flux(
            &self.harness.tool("flux"),
            self.harness.kubeconfig_path(),
            self.ns.name(),
            args,
        )
        .await?
        .succeeded(args)
    }

    /// Runs `weir get <args>` with the harness's kubeconfig; fails unless it exits 0.
    async fn weir_get(&self, args: &[&str]) -> Result<String> {
        weir_ok_as(self.harness.kubeconfig_path(), &[&["get"], args].concat()).await
    }

    /// `weir get hr` prints the row `flux get helmreleases` printed (`flux_table`) for `app`.
    async fn assert_weir_get_matches(&self, flux_table: &str) -> Result<()> {
        let weir = self.weir_get(&["hr", "-n", self.ns.name()]).await?;
        for column in ["REVISION", "SUSPENDED", "READY", "MESSAGE"] {
            assert_eq!(
                cell(&weir, "helmrelease/app", column)?,
                cell(flux_table, "app", column)?,
                "{column} of weir get:\n{weir}\nand of flux get:\n{flux_table}"
            );
        }
        Ok(())
    }

    /// Runs the real `helm <args>` in the namespace, with a home of its own; returns stdout.
    async fn helm(&self, args: &[&str]) -> Result<String> {
        let home = tempfile::tempdir()?;
        let output = tokio::process::Command::new(self.harness.tool("helm"))
            .args(args)
            .args(["--namespace", self.ns.name()])
            .arg("--kubeconfig")
            .arg(self.harness.kubeconfig_path())
            .env("HELM_CONFIG_HOME", home.path().join("config"))
            .env("HELM_CACHE_HOME", home.path().join("cache"))
            .env("HELM_DATA_HOME", home.path().join("data"))
            .output()
            .await
            .context("running helm")?;
        ensure!(
            output.status.success(),
            "helm {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8(output.stdout)?)
    }

    /// `helm history <release> -o json`, oldest first: each revision's number, status and
    /// `field` (`chart`, `description`…).
    async fn helm_history(&self, release: &str, field: &str) -> Result<Vec<(i64, String, String)>> {
        let out = self.helm(&["history", release, "-o", "json"]).await?;
        let entries: Vec<Value> = serde_json::from_str(&out)?;
        let text = |value: &Value| value.as_str().unwrap_or_default().to_owned();
        Ok(entries
            .iter()
            .map(|e| {
                let revision = e["revision"].as_i64().unwrap_or_default();
                (revision, text(&e["status"]), text(&e[field]))
            })
            .collect())
    }

    /// The latest revision of `release` in Helm's storage and its status.
    async fn latest_revision(&self, release: &str) -> Result<(i64, String)> {
        let history = self.helm_history(release, "status").await?;
        let (revision, status, _) = history.last().cloned().context("no revision")?;
        Ok((revision, status))
    }
}

/// A chart of one Deployment, scaled by `replicaCount` (0 by default) and placed by
/// `nodeSelector`.
fn deployment_chart(name: &str) -> Chart {
    Chart::new(name, "1.0.0")
        .values("replicaCount: 0\nnodeSelector: {}\n")
        .without_template("configmap.yaml")
        .template(
            "deployment.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {{ .Release.Name }}\nspec:\n  replicas: {{ .Values.replicaCount }}\n  selector:\n    matchLabels:\n      app: {{ .Release.Name }}\n  template:\n    metadata:\n      labels:\n        app: {{ .Release.Name }}\n    spec:\n      nodeSelector: {{ toJson .Values.nodeSelector }}\n      containers:\n        - name: app\n          image: registry.invalid/app:1\n",
        )
}

/// `weir controllers --controllers source,helm` watching one namespace, the leader of its own
/// process group; restarted as a new process with the same storage, its logs kept.
struct WeirProcess {
    child: Option<std::process::Child>,
    helm: PathBuf,
    kubeconfig: PathBuf,
    ns: String,
    dir: tempfile::TempDir,
    runs: usize,
}

/// What [`WeirProcess::kill_with_helm`] killed.
struct Killed {
    /// How many `helm` processes weir was running.
    helms: usize,
}

impl WeirProcess {
    fn start(harness: &Harness, ns: &str) -> Result<Self> {
        let mut weir = Self {
            child: None,
            helm: harness.tool("helm"),
            kubeconfig: harness.kubeconfig_path().to_path_buf(),
            ns: ns.to_owned(),
            dir: tempfile::tempdir()?,
            runs: 0,
        };
        weir.restart()?;
        Ok(weir)
    }

    /// Starts a new process (after [`Self::kill_with_helm`]).
    fn restart(&mut self) -> Result<()> {
        use std::os::unix::process::CommandExt as _;
        self.runs += 1;
        let dir = self.dir.path();
        let mut command = std::process::Command::new(weir_bin()?);
        command
            .args(["controllers", "--controllers", "source,helm"])
            .args(["--namespace", &self.ns])
            .args(["--storage-addr", "127.0.0.1:0"])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .arg("--storage-path")
            .arg(dir.join("artifacts"))
            .arg("--chart-cache-path")
            .arg(dir.join("charts"))
            .arg("--helm-path")
            .arg(&self.helm)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(self.log_path(self.runs))?)
            // Helm runs with weir's cluster access.
            .env("KUBECONFIG", &self.kubeconfig)
            .process_group(0);
        self.child = Some(command.spawn()?);
        Ok(())
    }

    fn log_path(&self, run: usize) -> PathBuf {
        self.dir.path().join(format!("weir-{run}.log"))
    }

    /// Every process's log so far, shown when a test fails.
    fn log(&self) -> String {
        (1..=self.runs)
            .map(|run| {
                let log = std::fs::read_to_string(self.log_path(run)).unwrap_or_default();
                format!("weir's log (process {run}):\n{log}")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// SIGKILLs the weir process alone and waits until the Helm processes it ran have exited
    /// (their parent-death signal stops them).
    fn kill_alone(&mut self) -> Result<Killed> {
        let Some(mut child) = self.child.take() else {
            return Ok(Killed { helms: 0 });
        };
        let pid = child.id();
        let helms: Vec<u32> = children(pid)
            .into_iter()
            .filter(|&p| command_name(p).as_deref() == Some("helm"))
            .collect();
        child.kill()?;
        child.wait()?;
        for helm in &helms {
            wait_gone(*helm)?;
        }
        Ok(Killed { helms: helms.len() })
    }

    /// SIGKILLs the process's group and the group of every `helm` it runs (Weir starts Helm as
    /// the leader of its own group, so that a stop reaches the credential plugins Helm starts;
    /// killing weir's group alone would leave Helm running), as a pod's death kills every
    /// process in it; waits until they are gone.
    fn kill_with_helm(&mut self) -> Result<Killed> {
        let Some(mut child) = self.child.take() else {
            return Ok(Killed { helms: 0 });
        };
        let pid = child.id();
        let helms: Vec<u32> = children(pid)
            .into_iter()
            .filter(|&p| command_name(p).as_deref() == Some("helm"))
            .collect();
        // Helm's groups first: killed after weir, a Helm would get its parent-death SIGTERM and
        // record the release failed before the SIGKILL.
        for group in helms.iter().copied().chain(std::iter::once(pid)) {
            let status = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{group}")])
                .status()?;
            ensure!(status.success(), "kill -KILL -{group}: {status}");
        }
        child.wait()?;
        for helm in &helms {
            wait_gone(*helm)?;
        }
        Ok(Killed { helms: helms.len() })
    }
}

impl Drop for WeirProcess {
    fn drop(&mut self) {
        // A failed test must not leave weir, or a Helm waiting minutes, behind.
        let _ = self.kill_with_helm();
    }
}

/// The pids whose parent is `parent`, from `/proc`.
fn children(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            (stat_field(pid, 1)? == parent.to_string()).then_some(pid)
        })
        .collect()
}

/// Field `n` after the command name of `/proc/<pid>/stat` (0 is the state, 1 the parent pid).
fn stat_field(pid: u32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid …`: the command name may hold spaces and parentheses.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    rest.split(' ').nth(n).map(str::to_owned)
}

fn command_name(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim_end().to_owned())
}

/// Waits (at most 30 s: SIGKILL is immediate, a Helm stopped by SIGTERM records its release
/// first) until `pid`, which is not our child, has exited: gone, or a zombie its new parent has
/// not reaped yet.
fn wait_gone(pid: u32) -> Result<()> {
    for _ in 0..1200 {
        match stat_field(pid, 0).as_deref() {
            None | Some("Z" | "X") => return Ok(()),
            Some(_) => std::thread::sleep(std::time::Duration::from_millis(25)),
        }
    }
    anyhow::bail!("process {pid} still runs 30 s after it was signalled")
}
