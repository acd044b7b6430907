//! The `flux` CLI pointed at Weir's controllers, in-process and scoped to one namespace.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::{
    core::v1::ConfigMap,
    rbac::v1::{Role, RoleBinding},
};
use kube::api::{Api, DynamicObject, GroupVersionKind, PostParams};
use serde_json::{Value, json};
use weir_e2e::{ControllerConfigs, Error, GitRepo, Harness, TestNamespace, Watches};

/// A namespace with Weir's controllers watching only it, and the `flux` CLI pointed at it.
pub(crate) struct Fixture {
    pub(crate) ns: TestNamespace,
    pub(crate) client: kube::Client,
    pub(crate) flux: PathBuf,
    pub(crate) kubeconfig: PathBuf,
    /// The watches the four controllers share, as in one `weir controllers` process.
    pub(crate) watches: Watches,
    pub(crate) source: weir_source::Handle,
    pub(crate) kustomize: weir_kustomize::Handle,
    pub(crate) image: weir_image::Handle,
    pub(crate) helm: weir_helm::Handle,
    pub(crate) _dirs: (tempfile::TempDir, tempfile::TempDir),
}

/// What one `flux` or `weir` command did.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    /// stdout and stderr together: `flux` and `weir` write their progress lines (`►`, `✔`, `✗`)
    /// to stderr.
    pub(crate) all: String,
}

impl Fixture {
    pub(crate) async fn start() -> Result<Self> {
        let harness = Harness::get().await?;
        let ns = harness.namespace().await?;
        let client = harness.client()?;
        let storage = tempfile::tempdir()?;
        let cache = tempfile::tempdir()?;
        let watches = Watches::new(client.clone());
        let configs = ControllerConfigs::new(ns.name()).sharing(&watches);
        let source =
            weir_source::start(client.clone(), configs.source(storage.path()), false).await?;
        let kustomize = weir_kustomize::start(
            harness.kube_config().clone(),
            configs.kustomize(harness.tool("kustomize"), cache.path()),
            false,
        )
        .await?;
        let image = weir_image::start(client.clone(), configs.image(), false).await?;
        let helm = weir_helm::start(
            client.clone(),
            configs.helm(
                harness.tool("helm"),
                harness.kubeconfig_path(),
                &cache.path().join("charts"),
            ),
            false,
        )
        .await?;
        Ok(Self {
            ns,
            client,
            flux: harness.tool("flux"),
            kubeconfig: harness.kubeconfig_path().to_path_buf(),
            watches,
            source,
            kustomize,
            image,
            helm,
            _dirs: (storage, cache),
        })
    }

    /// The caches the four controllers wait for, each shared one once.
    pub(crate) fn synced(&self) -> weir_runtime::controller::Synced {
        let mut synced = self.source.synced.clone();
        synced.extend(&self.kustomize.synced);
        synced.extend(&self.image.synced);
        synced.extend(&self.helm.synced);
        synced
    }

    /// Runs `flux <args> -n <namespace>` without blocking the controllers on this runtime.
    pub(crate) async fn run(&self, args: &[&str]) -> Result<Run> {
        flux(&self.flux, &self.kubeconfig, self.ns.name(), args).await
    }

    /// Runs `flux <args>` and fails unless it exits 0.
    pub(crate) async fn ok(&self, args: &[&str]) -> Result<Run> {
        self.run(args).await?.succeeded(args)
    }

    pub(crate) fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), self.ns.name())
    }

    /// A git repository whose `deploy/` holds one ConfigMap `demo` with `data.a: <value>`.
    pub(crate) async fn repo_with_config_map(&self, value: &str) -> Result<GitRepo> {
        let cm = config_map_yaml(self.ns.name(), value);
        let files = BTreeMap::from([("deploy/cm.yaml", cm.as_str())]);
        Ok(Harness::get()
            .await?
            .git()
            .create_repo("flux-cli", &files)?)
    }

    /// `flux create source git app` and `flux create kustomization app --wait` over `repo`.
    pub(crate) async fn create_source_and_kustomization(
        &self,
        repo: &GitRepo,
    ) -> Result<(Run, Run)> {
        let url = repo.http_url();
        let source = self
            .ok(&[
                "create",
                "source",
                "git",
                "app",
                "--url",
                &url,
                "--branch",
                "main",
                "--interval",
                "10m",
            ])
            .await?;
        let ks = self
            .ok(&[
                "create",
                "kustomization",
                "app",
                "--source",
                "GitRepository/app",
                "--path",
                "./deploy",
                "--prune",
                "--interval",
                "10m",
                "--wait",
            ])
            .await?;
        Ok((source, ks))
    }

    pub(crate) async fn config_map_value(&self) -> Result<Option<String>> {
        let cm = self.api::<ConfigMap>().get_opt("demo").await?;
        Ok(cm.and_then(|c| c.data).and_then(|d| d.get("a").cloned()))
    }
}

/// Runs the `flux` at `path` with `args` in `namespace`, as the user of `kubeconfig`.
pub(crate) async fn flux(
    path: &Path,
    kubeconfig: &Path,
    namespace: &str,
    args: &[&str],
) -> Result<Run> {
    let output = tokio::process::Command::new(path)
        .args(args)
        .args(["--namespace", namespace, "--timeout", "60s"])
        .env("KUBECONFIG", kubeconfig)
        // No colour, no spinner: plain lines to compare.
        .env("NO_COLOR", "1")
        .env("TERM", "dumb")
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("running {}", path.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    Ok(Run {
        code: output.status.code(),
        all: format!("{stdout}{stderr}"),
        stdout,
    })
}

impl Run {
    /// The run, or an error with its output unless it exited 0.
    pub(crate) fn succeeded(self, args: &[&str]) -> Result<Self> {
        ensure!(
            self.code == Some(0),
            "flux {} exited with {:?}:\n{}",
            args.join(" "),
            self.code,
            self.all
        );
        Ok(self)
    }
}

pub(crate) fn config_map_yaml(namespace: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: demo\n  namespace: {namespace}\n\
         data:\n  a: \"{value}\"\n"
    )
}

/// The cell under `column` in the row named `name` of `flux get` output, which may hold several
/// tables (`flux get all`), each under its own header line.
pub(crate) fn cell(output: &str, name: &str, column: &str) -> Result<String> {
    let mut header: Vec<&str> = vec![];
    for line in output.lines() {
        let cells: Vec<&str> = line.split('\t').map(str::trim).collect();
        if cells
            .first()
            .is_some_and(|c| *c == "NAME" || *c == "NAMESPACE")
        {
            header = cells;
        } else if cells.iter().take(2).any(|c| *c == name) {
            let i = header
                .iter()
                .position(|h| *h == column)
                .with_context(|| format!("no column {column} above {name} in:\n{output}"))?;
            return cells
                .get(i)
                .map(|c| (*c).to_owned())
                .with_context(|| format!("short row {name} in:\n{output}"));
        }
    }
    bail!("no row {name} in:\n{output}")
}

impl Fixture {
    /// `flux create image repository|policy|update app` for `image`, the automation writing to
    /// the GitRepository `app`.
    pub(crate) async fn create_image_automation(&self, image: &str) -> Result<()> {
        self.ok(&[
            "create",
            "image",
            "repository",
            "app",
            "--image",
            image,
            "--interval",
            "10m",
        ])
        .await?;
        self.ok(&[
            "create",
            "image",
            "policy",
            "app",
            "--image-ref",
            "app",
            "--select-semver",
            ">=1.0.0",
        ])
        .await?;
        self.ok(&[
            "create",
            "image",
            "update",
            "app",
            "--git-repo-ref",
            "app",
            "--git-repo-path",
            "./deploy",
            "--checkout-branch",
            "main",
            "--author-name",
            "weir",
            "--author-email",
            "weir@example.com",
            "--interval",
            "10m",
        ])
        .await?;
        Ok(())
    }
}

/// The API of `object`'s kind in `namespace`, found by discovery.
pub(crate) async fn dynamic_api(
    client: &kube::Client,
    namespace: &str,
    object: &Value,
) -> Result<Api<DynamicObject>> {
    let api_version = object["apiVersion"].as_str().context("no apiVersion")?;
    let kind = object["kind"].as_str().context("no kind")?;
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (resource, _) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .with_context(|| format!("{api_version} {kind} is not served"))?;
    Ok(Api::namespaced_with(client.clone(), namespace, &resource))
}

pub(crate) const APP_YAML: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\n";

pub(crate) fn app_repo(harness: &Harness) -> Result<GitRepo, Error> {
    harness
        .git()
        .create_repo("app", &BTreeMap::from([("deploy/app.yaml", APP_YAML)]))
}

/// The `weir` binary under test (`WEIR_BIN`).
pub(crate) fn weir_bin() -> Result<String> {
    std::env::var("WEIR_BIN")
        .context("WEIR_BIN: the weir binary to run (make integration builds it)")
}

/// Runs `weir <args> --kubeconfig <kubeconfig> <extra>`: its exit code and output.
pub(crate) async fn weir_run<S: AsRef<OsStr>>(
    kubeconfig: &Path,
    args: &[&str],
    extra: &[S],
) -> Result<Run> {
    let output = tokio::process::Command::new(weir_bin()?)
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(extra)
        .env("NO_COLOR", "1")
        .kill_on_drop(true)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    Ok(Run {
        code: output.status.code(),
        all: format!("{stdout}{}", String::from_utf8_lossy(&output.stderr)),
        stdout,
    })
}

/// What `weir <args> --kubeconfig <kubeconfig>` printed (stdout and stderr), and its exit code.
pub(crate) async fn weir_as(kubeconfig: &Path, args: &[&str]) -> Result<(Option<i32>, String)> {
    let run = weir_run::<&str>(kubeconfig, args, &[]).await?;
    Ok((run.code, run.all))
}

/// What `weir <args> --kubeconfig <the harness's>` printed (stdout and stderr), and its exit
/// code.
pub(crate) async fn weir(f: &Fixture, args: &[&str]) -> Result<(Option<i32>, String)> {
    weir_as(&f.kubeconfig, args).await
}

/// `weir <args> --kubeconfig <the harness's>`, which must exit 0; its stdout.
pub(crate) async fn weir_ok(f: &Fixture, args: &[&str]) -> Result<String> {
    weir_ok_as(&f.kubeconfig, args).await
}

/// `weir <args> --kubeconfig <kubeconfig>`, which must exit 0; its stdout.
pub(crate) async fn weir_ok_as(kubeconfig: &Path, args: &[&str]) -> Result<String> {
    let out = weir_run::<&str>(kubeconfig, args, &[]).await?;
    ensure!(
        out.code == Some(0),
        "weir {args:?} exited {:?}:\n{}",
        out.code,
        out.all
    );
    Ok(out.stdout)
}

/// A copy of the harness's kubeconfig, written in `dir`, that impersonates `user` (kubectl's
/// `as:`).
pub(crate) fn impersonating(f: &Fixture, user: &str, dir: &Path) -> Result<PathBuf> {
    let mut config = kube::config::Kubeconfig::read_from(&f.kubeconfig)?;
    for named in &mut config.auth_infos {
        if let Some(auth) = named.auth_info.as_mut() {
            auth.impersonate = Some(user.to_owned());
        }
    }
    let path = dir.join(format!("{user}.kubeconfig"));
    std::fs::write(&path, serde_yaml_ng::to_string(&config)?)?;
    Ok(path)
}

impl Fixture {
    /// A chart `<prefix>-…` 1.0.0 published in the harness's chart repository, and, made with
    /// `flux create`, the HelmRepository `charts` of that repository and the HelmRelease
    /// `release` of the chart (both reconciled every `interval`); the chart's name.
    pub(crate) async fn helm_release(
        &self,
        prefix: &str,
        release: &str,
        interval: &str,
    ) -> Result<String> {
        let harness = Harness::get().await?;
        let chart = weir_e2e::unique_name(prefix, 30);
        harness
            .charts()
            .publish(&weir_e2e::Chart::new(&chart, "1.0.0"))?;
        let url = harness.charts().url();
        self.ok(&[
            "create",
            "source",
            "helm",
            "charts",
            "--url",
            url,
            "--interval",
            interval,
        ])
        .await?;
        self.ok(&[
            "create",
            "helmrelease",
            release,
            "--source",
            "HelmRepository/charts",
            "--chart",
            &chart,
            "--interval",
            interval,
        ])
        .await?;
        Ok(chart)
    }

    /// A Role `name` in the test namespace with `rules`, bound to the user `user`.
    pub(crate) async fn grant(&self, name: &str, user: &str, rules: Value) -> Result<()> {
        let ns = self.ns.name();
        let role: Role = serde_json::from_value(json!({
            "metadata": { "name": name, "namespace": ns },
            "rules": rules,
        }))?;
        self.api::<Role>()
            .create(&PostParams::default(), &role)
            .await?;
        let binding: RoleBinding = serde_json::from_value(json!({
            "metadata": { "name": name, "namespace": ns },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name },
            "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user }],
        }))?;
        self.api::<RoleBinding>()
            .create(&PostParams::default(), &binding)
            .await?;
        Ok(())
    }
}
