//! Smoke tests of the local harness and of the weir-e2e helpers: each proves one real part works
//! the way Weir's integration and end-to-end tests will use it.

// A test's helpers fail the test by panicking; that is their job.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use serde_json::{Value, json};
use weir_e2e::{Chart, Error, GitRepo, Harness, git_command, repo_root, unique_name, wait_until};

// --- Kubernetes API server -------------------------------------------------------------------

#[tokio::test]
async fn api_server_reports_the_pinned_kubernetes_version() -> Result<()> {
    let harness = Harness::get().await?;
    let versions_file = repo_root().join("e2e/harness/versions.env");
    let versions = std::fs::read_to_string(&versions_file)?;
    let pinned = versions
        .lines()
        .find_map(|line| line.strip_prefix("KUBERNETES_VERSION="))
        .with_context(|| format!("no KUBERNETES_VERSION in {}", versions_file.display()))?
        .trim();

    let version = harness.client()?.apiserver_version().await?;

    assert_eq!(version.git_version, pinned);
    Ok(())
}

#[tokio::test]
async fn crds_from_the_crds_directory_are_established() -> Result<()> {
    let harness = Harness::get().await?;
    let served: Api<CustomResourceDefinition> = Api::all(harness.client()?);
    let mut files = yaml_files(&repo_root().join("crds"))?;
    // crds/kustomization.yaml only indexes the CRD files for kustomize.
    files.retain(|f| f.file_name().is_some_and(|n| n != "kustomization.yaml"));
    ensure!(!files.is_empty(), "no CRDs in crds/");

    for file in files {
        let committed: CustomResourceDefinition =
            serde_yaml_ng::from_str(&std::fs::read_to_string(&file)?)?;
        let name = committed.metadata.name.clone().unwrap();
        let crd = served
            .get(&name)
            .await
            .with_context(|| format!("{name} is not served"))?;

        // The server adds defaults (listKind, conversion), so compare what the file says.
        assert_contains(
            &serde_json::to_value(&committed.spec)?,
            &serde_json::to_value(&crd.spec)?,
            &format!("{name}: spec"),
        );
        let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
        assert!(
            conditions
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True"),
            "{name} is not Established: {conditions:?}"
        );
    }
    Ok(())
}

/// Server-side apply that fails on any field the schema does not declare.
fn strict_apply() -> PatchParams {
    PatchParams::apply("weir-e2e-smoke").validation_strict()
}

/// Every leaf of `expected` is in `actual` with the same value (the server may add defaults).
fn assert_contains(expected: &Value, actual: &Value, path: &str) {
    match (expected, actual) {
        (Value::Object(want), Value::Object(got)) => {
            for (key, value) in want {
                let field = format!("{path}.{key}");
                let other = got
                    .get(key)
                    .unwrap_or_else(|| panic!("{field} was dropped"));
                assert_contains(value, other, &field);
            }
        }
        (Value::Array(want), Value::Array(got)) => {
            assert_eq!(want.len(), got.len(), "{path} changed length");
            for (i, (w, g)) in want.iter().zip(got).enumerate() {
                assert_contains(w, g, &format!("{path}[{i}]"));
            }
        }
        _ => assert_eq!(expected, actual, "{path} changed"),
    }
}

/// The API of `object`'s kind in `namespace`, found by discovery.
async fn dynamic_api(
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

fn read_fixture(file: &Path, namespace: &str) -> Result<Value> {
    let mut object: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(file)?)?;
    object["metadata"]["namespace"] = json!(namespace);
    Ok(object)
}

#[tokio::test]
async fn api_fixtures_are_accepted_with_strict_field_validation() -> Result<()> {
    let harness = Harness::get().await?;
    let namespace = harness.namespace().await?;
    let client = harness.client()?;
    let fixtures = yaml_files(&repo_root().join("api/tests/fixtures"))?;
    ensure!(!fixtures.is_empty(), "no fixtures in api/tests/fixtures");

    for file in fixtures {
        let fixture = file.file_name().unwrap().to_string_lossy().into_owned();
        let mut object = read_fixture(&file, namespace.name())?;
        let status = object.as_object_mut().unwrap().remove("status");
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        let api = dynamic_api(&client, namespace.name(), &object).await?;

        let applied = api
            .patch(&name, &strict_apply(), &Patch::Apply(&object))
            .await
            .with_context(|| format!("{fixture} was rejected"))?;
        assert_contains(
            &object["spec"],
            &applied.data["spec"],
            &format!("{fixture}: spec"),
        );

        if let Some(status) = status {
            let status_only = json!({
                "apiVersion": object["apiVersion"],
                "kind": object["kind"],
                "metadata": { "name": name },
                "status": status,
            });
            let applied = api
                .patch_status(&name, &strict_apply(), &Patch::Apply(&status_only))
                .await
                .with_context(|| format!("{fixture}: its status was rejected"))?;
            assert_contains(
                &status,
                &applied.data["status"],
                &format!("{fixture}: status"),
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn an_unknown_spec_field_is_rejected_by_the_api_server() -> Result<()> {
    let harness = Harness::get().await?;
    let namespace = harness.namespace().await?;
    let client = harness.client()?;
    let fixture = repo_root().join("api/tests/fixtures/gitrepository-https-branch.yaml");
    let mut object = read_fixture(&fixture, namespace.name())?;
    object["spec"]["notAField"] = json!(true);
    let name = object["metadata"]["name"].as_str().unwrap().to_owned();
    let api = dynamic_api(&client, namespace.name(), &object).await?;

    let result = api
        .patch(&name, &strict_apply(), &Patch::Apply(&object))
        .await;

    match result {
        Err(kube::Error::Api(status)) => {
            assert!(status.message.contains("notAField"), "{status:?}");
        }
        other => bail!("expected the API server to reject spec.notAField, got {other:?}"),
    }
    assert!(
        api.get_opt(&name).await?.is_none(),
        "the object was stored anyway"
    );
    Ok(())
}

#[tokio::test]
async fn a_deployment_becomes_available_on_the_kwok_node() -> Result<()> {
    let harness = Harness::get().await?;
    let namespace = harness.namespace().await?;
    let deployments: Api<Deployment> = Api::namespaced(harness.client()?, namespace.name());
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": { "name": "web" },
        "spec": {
            "replicas": 2,
            "selector": { "matchLabels": { "app": "web" } },
            "template": {
                "metadata": { "labels": { "app": "web" } },
                // kwok runs no containers, so the image is never pulled.
                "spec": { "containers": [{ "name": "web", "image": "registry.invalid/web:1.0.0" }] },
            },
        },
    }))?;

    deployments
        .create(&PostParams::default(), &deployment)
        .await?;

    let deployments = &deployments;
    wait_until(
        "Deployment web to be Available with 2 replicas",
        || async move {
            let status = deployments
                .get("web")
                .await
                .map_err(|e| e.to_string())?
                .status
                .unwrap_or_default();
            let available = status
                .conditions
                .unwrap_or_default()
                .into_iter()
                .find(|c| c.type_ == "Available")
                .map(|c| format!("{} ({})", c.status, c.reason.unwrap_or_default()));
            match (available.as_deref(), status.available_replicas) {
                (Some(a), Some(2)) if a.starts_with("True") => Ok(()),
                (a, replicas) => Err(format!("Available={a:?}, availableReplicas={replicas:?}")),
            }
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn test_namespace_is_deleted_on_drop_even_with_finalizers_no_controller_will_remove()
-> Result<()> {
    let harness = Harness::get().await?;
    let client = harness.client()?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace = harness.namespace().await?;
    let name = namespace.name().to_owned();
    // What a test leaves behind once its controller has stopped: an object with Flux's
    // finalizer, which no one is left to remove.
    let fixture = repo_root().join("api/tests/fixtures/gitrepository-https-branch.yaml");
    let mut object = read_fixture(&fixture, &name)?;
    object["metadata"]["finalizers"] = json!(["finalizers.fluxcd.io"]);
    let object_name = object["metadata"]["name"].as_str().unwrap().to_owned();
    dynamic_api(&client, &name, &object)
        .await?
        .patch(&object_name, &strict_apply(), &Patch::Apply(&object))
        .await?;
    assert!(namespaces.get_opt(&name).await?.is_some());

    drop(namespace);

    let (namespaces, name) = (&namespaces, name.as_str());
    wait_until(&format!("namespace {name} to be gone"), || async move {
        match namespaces.get_opt(name).await {
            Ok(None) => Ok(()),
            Ok(Some(ns)) => Err(format!(
                "still there: {:?}",
                ns.status.and_then(|s| s.conditions).unwrap_or_default()
            )),
            Err(e) => Err(e.to_string()),
        }
    })
    .await?;
    Ok(())
}

// --- git server ---------------------------------------------------------------------------

const APP_YAML: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\n";

fn app_repo(harness: &Harness) -> Result<GitRepo, Error> {
    harness
        .git()
        .create_repo("app", &BTreeMap::from([("deploy/app.yaml", APP_YAML)]))
}

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

// --- OCI registries ---------------------------------------------------------------------

#[tokio::test]
async fn registry_lists_pushed_tags_without_credentials() -> Result<()> {
    let harness = Harness::get().await?;
    let registry = harness.registry();
    let name = unique_name("app", 60);

    let v1 = registry.push_image(&name, "1.0.0").await?;
    let v2 = registry.push_image(&name, "1.1.0").await?;
    let mut tags = registry
        .list_tags_as(&name, &RegistryAuth::Anonymous)
        .await?;

    tags.sort();
    assert_eq!(tags, ["1.0.0", "1.1.0"]);
    assert_eq!(v1.reference(), format!("{}/{name}:1.0.0", registry.host()));
    assert!(v1.digest.starts_with("sha256:"), "{v1:?}");
    assert_ne!(v1.digest, v2.digest, "each tag should have its own digest");
    Ok(())
}

#[tokio::test]
async fn auth_registry_lists_tags_with_credentials_and_refuses_without() -> Result<()> {
    let harness = Harness::get().await?;
    let registry = harness.registry_with_auth();
    let credentials = registry
        .credentials()
        .context("the auth registry has no credentials")?;
    let name = unique_name("private-app", 60);
    registry.push_image(&name, "2.0.0").await?;

    let with_credentials = registry.list_tags(&name).await;
    let anonymous = registry.list_tags_as(&name, &RegistryAuth::Anonymous).await;
    let wrong_password = registry
        .list_tags_as(
            &name,
            &RegistryAuth::Basic(credentials.username.clone(), "wrong".into()),
        )
        .await;
    let anonymous_push = registry
        .push_image_as(&name, "3.0.0", &RegistryAuth::Anonymous)
        .await;

    assert_eq!(with_credentials?, ["2.0.0"]);
    for (case, result) in [
        ("listing tags without credentials", anonymous.map(drop)),
        (
            "listing tags with a wrong password",
            wrong_password.map(drop),
        ),
        ("pushing without credentials", anonymous_push.map(drop)),
    ] {
        match result {
            Err(error) if is_unauthorized(&error) => {}
            other => bail!("{case}: expected 401 Unauthorized, got {other:?}"),
        }
    }
    Ok(())
}

fn is_unauthorized(error: &Error) -> bool {
    matches!(
        error,
        Error::Registry {
            source: OciDistributionError::UnauthorizedError { .. }
                | OciDistributionError::ServerError { code: 401, .. },
            ..
        }
    )
}

// --- Helm chart repository -----------------------------------------------------------------

#[tokio::test]
async fn chart_index_is_served_and_lists_a_published_chart() -> Result<()> {
    let harness = Harness::get().await?;
    let charts = harness.charts();
    let name = unique_name("weir-chart", 40);

    charts.publish(&Chart::new(&name, "0.1.0"))?;
    charts.publish(&Chart::new(&name, "0.2.0").values("message: second\n"))?;

    let http = reqwest::Client::new();
    let index = http
        .get(charts.index_url())
        .send()
        .await?
        .error_for_status()?;
    let index: Value = serde_yaml_ng::from_str(&index.text().await?)?;
    let entries = index["entries"][&name]
        .as_array()
        .context("chart not in the index")?;
    let mut versions: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["version"].as_str())
        .collect();
    versions.sort_unstable();
    assert_eq!(versions, ["0.1.0", "0.2.0"]);

    let package_url = entries[0]["urls"][0].as_str().context("no package URL")?;
    ensure!(
        package_url.starts_with(charts.url()),
        "package URL {package_url} is not served by the repository"
    );
    let package = http
        .get(package_url)
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    assert_eq!(&package[..2], &[0x1f, 0x8b], "the package is not gzip");
    Ok(())
}

// --- helpers -------------------------------------------------------------------------------

fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    files.retain(|path| path.is_file() && path.extension().is_some_and(|e| e == "yaml"));
    files.sort();
    Ok(files)
}

// --- the weir binary ----------------------------------------------------------------------

/// `weir controllers` (built by `make integration`, found through `WEIR_BIN`) runs every
/// controller in one process: `/readyz` answers once the caches have synced, and `/metrics`
/// has Flux's reconcile metrics for every kind, so Flux's dashboards work unchanged.
#[tokio::test]
async fn weir_controllers_serves_fluxs_metrics_for_every_kind() -> Result<()> {
    let weir = std::env::var("WEIR_BIN")
        .context("WEIR_BIN: the weir binary to run (make integration builds it)")?;
    let harness = Harness::get().await?;
    let ns = harness.namespace().await?;
    let client = harness.client()?;
    let git = app_repo(harness)?;
    let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let storage = tempfile::tempdir()?;
    let _weir = tokio::process::Command::new(weir)
        .args([
            "controllers",
            "--namespace",
            ns.name(),
            "--storage-addr",
            "127.0.0.1:0",
        ])
        .arg("--metrics-addr")
        .arg(metrics_addr.to_string())
        .arg("--storage-path")
        .arg(storage.path().join("artifacts"))
        .arg("--artifact-cache-path")
        .arg(storage.path().join("cache"))
        .arg("--kustomize-path")
        .arg(harness.tool("kustomize"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(storage.path().join("weir.log"))?)
        .kill_on_drop(true)
        .spawn()?;
    // The process's log, shown when the test fails.
    let log = || std::fs::read_to_string(storage.path().join("weir.log")).unwrap_or_default();

    let http = reqwest::Client::new();
    let base = format!("http://{metrics_addr}");
    wait_until("/readyz to answer ok", || {
        let (http, url) = (http.clone(), format!("{base}/readyz"));
        async move {
            let response = http.get(&url).send().await.map_err(|e| e.to_string())?;
            if response.status().is_success() {
                Ok(())
            } else {
                Err(format!("{}", response.status()))
            }
        }
    })
    .await
    .with_context(|| format!("weir's log:\n{}", log()))?;

    let objects = every_kind(&git.http_url(), ns.name());
    for object in &objects {
        let api = dynamic_api(&client, ns.name(), object).await?;
        api.create(
            &PostParams::default(),
            &serde_json::from_value(object.clone())?,
        )
        .await?;
    }

    let text = wait_until("every kind's reconciles in /metrics", || {
        let (http, url) = (http.clone(), format!("{base}/metrics"));
        let ns = ns.name().to_owned();
        async move {
            let text = http
                .get(&url)
                .send()
                .await
                .map_err(|e| e.to_string())?
                .text()
                .await
                .map_err(|e| e.to_string())?;
            match missing_metrics(&text, &ns) {
                Some(missing) => Err(missing),
                None => Ok(text),
            }
        }
    })
    .await
    .with_context(|| format!("weir's log:\n{}", log()))?;
    let suspend = format!(
        r#"gotk_suspend_status{{kind="GitRepository",name="app",namespace="{}"}} 0"#,
        ns.name()
    );
    assert!(text.contains(&suspend), "{text}");
    assert!(text.contains("weir_kustomize_reconciles_total "), "{text}");
    Ok(())
}

/// One object of every kind Weir reconciles, named `app`, in `ns`.
fn every_kind(git_url: &str, ns: &str) -> [Value; 5] {
    [
        json!({
            "apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
            "metadata": {"name": "app"},
            "spec": {"url": git_url, "interval": "1m", "ref": {"branch": "main"}},
        }),
        json!({
            "apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
            "metadata": {"name": "app"},
            "spec": {
                "sourceRef": {"kind": "GitRepository", "name": "app"}, "interval": "1m",
                "path": "./deploy", "prune": true, "targetNamespace": ns,
            },
        }),
        // Nothing listens there: the scan fails, which is still a reconcile.
        json!({
            "apiVersion": "image.toolkit.fluxcd.io/v1", "kind": "ImageRepository",
            "metadata": {"name": "app"},
            "spec": {"image": "127.0.0.1:9/app", "interval": "1h", "insecure": true},
        }),
        json!({
            "apiVersion": "image.toolkit.fluxcd.io/v1", "kind": "ImagePolicy",
            "metadata": {"name": "app"},
            "spec": {"imageRepositoryRef": {"name": "app"}, "policy": {"semver": {"range": "*"}}},
        }),
        json!({
            "apiVersion": "image.toolkit.fluxcd.io/v1", "kind": "ImageUpdateAutomation",
            "metadata": {"name": "app"},
            "spec": {
                "interval": "1h", "sourceRef": {"kind": "GitRepository", "name": "app"},
                "git": {"commit": {"author": {"name": "weir", "email": "bot@weir.invalid"}}},
                "update": {"path": "./deploy", "strategy": "Setters"},
            },
        }),
    ]
}

/// What `text` (the `/metrics` page) lacks: a reconcile duration for every kind, and the
/// Kustomization's `Ready=True` in `gotk_reconcile_condition`.
fn missing_metrics(text: &str, ns: &str) -> Option<String> {
    let missing: Vec<&str> = [
        "GitRepository",
        "Kustomization",
        "ImageRepository",
        "ImagePolicy",
        "ImageUpdateAutomation",
    ]
    .into_iter()
    .filter(|kind| {
        let labels = format!(r#"kind="{kind}",name="app",namespace="{ns}""#);
        !text.lines().any(|l| {
            l.starts_with("gotk_reconcile_duration_seconds_bucket{") && l.contains(&labels)
        })
    })
    .collect();
    let ready = format!(
        r#"gotk_reconcile_condition{{kind="Kustomization",name="app",namespace="{ns}",type="Ready",status="True"}} 1"#
    );
    if !missing.is_empty() {
        Some(format!("no reconcile duration for {missing:?}"))
    } else if !text.contains(&ready) {
        Some("the Kustomization is not Ready in gotk_reconcile_condition".to_owned())
    } else {
        None
    }
}
