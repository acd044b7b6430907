//! HelmChart: the highest version of a chart in a range, from the harness's chart repository
//! through a HelmRepository, stored as a chart archive whose revision is the version; a new
//! version in range makes a new artifact, a new index without one keeps it; values files merged
//! into `values.yaml`; a missing values file or a range nothing satisfies is Ready=False naming
//! it; a GitRepository's chart directory packaged, with the commit in its version under the
//! `Revision` strategy; sources Weir does not build are rejected by the API server.

use std::io::Read;

use anyhow::{Context as _, Result};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use weir_api::{Artifact, HelmChart, HelmRepository, condition::find_condition, manifest, types};
use weir_e2e::{Chart, Harness, unique_name, wait_until};

use crate::fixture::Fixture;

/// A source controller, a HelmRepository `charts` of the harness's chart repository, and the
/// HelmCharts of the namespace.
struct Charts {
    fx: Fixture,
    api: Api<HelmChart>,
    repos: Api<HelmRepository>,
}

impl Charts {
    async fn start() -> Result<Self> {
        let fx = Fixture::start().await?;
        let api = Api::namespaced(fx.client.clone(), fx.ns.name());
        let repos = Api::namespaced(fx.client.clone(), fx.ns.name());
        let charts = Harness::get().await?.charts();
        let repo: HelmRepository = manifest::from_value(json!({
            "apiVersion": "source.toolkit.fluxcd.io/v1",
            "kind": "HelmRepository",
            "metadata": { "name": "charts", "namespace": fx.ns.name() },
            "spec": { "url": charts.url(), "interval": "10m" },
        }))?;
        repos.create(&PostParams::default(), &repo).await?;
        Ok(Self { fx, api, repos })
    }

    fn manifest(&self, name: &str, spec: serde_json::Value) -> Result<HelmChart> {
        Ok(manifest::from_value(json!({
            "apiVersion": "source.toolkit.fluxcd.io/v1",
            "kind": "HelmChart",
            "metadata": { "name": name, "namespace": self.fx.ns.name() },
            "spec": spec,
        }))?)
    }

    /// Creates a HelmChart of `chart` in `range` from the `charts` HelmRepository.
    async fn create(
        &self,
        name: &str,
        chart: &str,
        range: &str,
        extra: serde_json::Value,
    ) -> Result<()> {
        let mut spec = json!({
            "chart": chart,
            "version": range,
            "sourceRef": { "kind": "HelmRepository", "name": "charts" },
            "interval": "10m",
        });
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        let object = self.manifest(name, spec)?;
        self.api.create(&PostParams::default(), &object).await?;
        Ok(())
    }

    async fn wait_ready(
        &self,
        name: &str,
        status: &str,
        reason: Option<&str>,
    ) -> Result<HelmChart> {
        Ok(weir_e2e::wait_ready(&self.api, name, status, reason).await?)
    }

    /// Asks the HelmRepository for its index again and returns the revision it then stores.
    async fn refresh_index(&self, token: &str) -> Result<String> {
        let patch =
            json!({ "metadata": { "annotations": { "reconcile.fluxcd.io/requestedAt": token } } });
        self.repos
            .patch("charts", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        let repos = self.repos.clone();
        Ok(
            wait_until(&format!("HelmRepository charts to handle {token}"), || {
                let repos = repos.clone();
                async move {
                    let repo = repos.get("charts").await.map_err(|e| e.to_string())?;
                    let status = repo.status.unwrap_or_default();
                    match (status.last_handled_reconcile_at.as_deref(), status.artifact) {
                        (Some(t), Some(artifact)) if t == token => Ok(artifact.revision),
                        (handled, _) => Err(format!("handled {handled:?}")),
                    }
                }
            })
            .await?,
        )
    }

    /// Waits until `name`'s status satisfies `done`.
    async fn wait_for(
        &self,
        name: &str,
        what: &str,
        done: impl Fn(&HelmChart) -> bool,
    ) -> Result<HelmChart> {
        let api = self.api.clone();
        let done = &done;
        Ok(wait_until(&format!("HelmChart {name}: {what}"), || {
            let api = api.clone();
            async move {
                let chart = api.get(name).await.map_err(|e| e.to_string())?;
                if done(&chart) {
                    Ok(chart)
                } else {
                    Err(format!("status {:?}", chart.status))
                }
            }
        })
        .await?)
    }
}

pub(crate) fn artifact(chart: &HelmChart) -> Result<Artifact> {
    chart
        .status
        .as_ref()
        .and_then(|s| s.artifact.clone())
        .context("no artifact")
}

pub(crate) fn ready_message(chart: &HelmChart) -> String {
    let conditions = chart.status.clone().unwrap_or_default().conditions;
    find_condition(&conditions, types::READY)
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// Downloads the artifact, checks its digest and size, and returns its files by path.
pub(crate) async fn download(chart: &HelmChart) -> Result<Vec<(String, String)>> {
    let artifact = artifact(chart)?;
    let bytes = reqwest::get(&artifact.url)
        .await?
        .error_for_status()?
        .bytes()
        .await?
        .to_vec();
    assert_eq!(
        artifact.digest.as_deref(),
        Some(format!("sha256:{}", hex::encode(Sha256::digest(&bytes))).as_str())
    );
    assert_eq!(artifact.size, Some(bytes.len() as i64));
    let mut files = vec![];
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes.as_slice()));
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        let mut text = String::new();
        entry.read_to_string(&mut text)?;
        files.push((path, text));
    }
    Ok(files)
}

pub(crate) fn file<'a>(files: &'a [(String, String)], path: &str) -> Option<&'a str> {
    files
        .iter()
        .find(|(p, _)| p == path)
        .map(|(_, text)| text.as_str())
}

pub(crate) fn yaml(text: &str) -> serde_yaml_ng::Value {
    serde_yaml_ng::from_str(text).unwrap()
}

#[tokio::test]
async fn a_chart_is_the_highest_version_in_its_range_and_follows_new_versions_in_it() -> Result<()>
{
    let t = Charts::start().await?;
    let charts = Harness::get().await?.charts();
    let name = unique_name("hc-range", 40);
    for version in ["1.0.0", "1.1.0", "2.0.0"] {
        charts.publish(&Chart::new(&name, version))?;
    }
    let index = t.refresh_index("first").await?;
    t.create("app", &name, ">=1.0.0 <2.0.0", json!({})).await?;
    let first = t
        .wait_ready("app", "True", Some("ChartPullSucceeded"))
        .await?;
    assert_eq!(artifact(&first)?.revision, "1.1.0");
    assert_eq!(
        ready_message(&first),
        format!("pulled '{name}' chart with version '1.1.0'")
    );
    let events = t.fx.events_text().await?;
    assert!(
        events.contains(&format!("pulled '{name}' chart with version '1.1.0'")),
        "no ChartPullSucceeded event: {events}"
    );
    let files = download(&first).await?;
    let chart_yaml = yaml(file(&files, &format!("{name}/Chart.yaml")).context("no Chart.yaml")?);
    assert_eq!(chart_yaml["version"], yaml("1.1.0"));
    assert_eq!(chart_yaml["name"], yaml(&name));
    let status = first.status.clone().unwrap();
    assert_eq!(status.observed_chart_name.as_deref(), Some(name.as_str()));
    assert_eq!(
        status.observed_source_artifact_revision.as_deref(),
        Some(index.as_str())
    );
    let latest = status.url.context("no status.url")?;
    assert!(latest.ends_with("/latest.tar.gz"), "{latest}");

    // A new index without a new version in range: seen, but the artifact stays.
    charts.publish(&Chart::new(&name, "2.1.0"))?;
    let index = t.refresh_index("out-of-range").await?;
    let same = t
        .wait_for("app", "the new index observed", |c| {
            c.status
                .as_ref()
                .and_then(|s| s.observed_source_artifact_revision.as_deref())
                == Some(index.as_str())
        })
        .await?;
    assert_eq!(
        artifact(&same)?,
        artifact(&first)?,
        "an out-of-range version changed the artifact"
    );

    // A new version in range: a new artifact, through the repository's watch alone.
    charts.publish(&Chart::new(&name, "1.2.0"))?;
    t.refresh_index("in-range").await?;
    let newer = t
        .wait_for("app", "revision 1.2.0", |c| {
            artifact(c).is_ok_and(|a| a.revision == "1.2.0")
        })
        .await?;
    let files = download(&newer).await?;
    let chart_yaml = yaml(file(&files, &format!("{name}/Chart.yaml")).context("no Chart.yaml")?);
    assert_eq!(chart_yaml["version"], yaml("1.2.0"));
    let served = reqwest::get(&latest)
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    assert_eq!(
        Some(format!("sha256:{}", hex::encode(Sha256::digest(&served)))),
        artifact(&newer)?.digest,
        "status.url serves the latest artifact"
    );

    // Deleting it removes its artifacts, then the object (Flux's finalizer).
    let dir =
        t.fx.storage
            .path()
            .join("helmchart")
            .join(t.fx.ns.name())
            .join("app");
    assert!(dir.exists());
    t.api.delete("app", &DeleteParams::default()).await?;
    let api = t.api.clone();
    wait_until("HelmChart app to be deleted", || {
        let api = api.clone();
        async move {
            match api.get_opt("app").await {
                Ok(None) => Ok(()),
                other => Err(format!(
                    "{:?}",
                    other.map(|c| c.map(|c| c.finalizers().to_vec()))
                )),
            }
        }
    })
    .await?;
    assert!(!dir.exists(), "artifacts left after delete");
    Ok(())
}

#[tokio::test]
async fn values_files_are_merged_in_order_into_values_yaml_and_a_missing_one_is_named() -> Result<()>
{
    let t = Charts::start().await?;
    let charts = Harness::get().await?.charts();
    let name = unique_name("hc-values", 40);
    let scratch = tempfile::tempdir()?;
    let dir = Chart::new(&name, "0.1.0")
        .values("message: base\nimage:\n  repository: app\n  tag: '1'\n")
        .write_to(scratch.path())?;
    std::fs::write(
        dir.join("values-prod.yaml"),
        "image:\n  tag: '2'\nreplicas: 3\n",
    )?;
    charts.publish_dir(&dir)?;
    t.refresh_index("published").await?;

    t.create(
        "app",
        &name,
        "*",
        json!({ "valuesFiles": ["values.yaml", "values-prod.yaml"] }),
    )
    .await?;
    let merged = t
        .wait_ready("app", "True", Some("ChartPackageSucceeded"))
        .await?;
    assert_eq!(
        ready_message(&merged),
        format!(
            "packaged '{name}' chart with version '0.1.0' and merged values files [values.yaml values-prod.yaml]"
        )
    );
    assert_eq!(
        artifact(&merged)?.revision,
        "0.1.0",
        "Flux adds nothing to the version"
    );
    let files = download(&merged).await?;
    let values = file(&files, &format!("{name}/values.yaml")).context("no values.yaml")?;
    assert_eq!(
        yaml(values),
        yaml("message: base\nimage:\n  repository: app\n  tag: '2'\nreplicas: 3\n")
    );
    assert!(file(&files, &format!("{name}/templates/configmap.yaml")).is_some());
    assert_eq!(
        merged.status.clone().unwrap().observed_values_files,
        ["values.yaml", "values-prod.yaml"]
    );

    // A missing values file fails naming it; the last artifact stays.
    let patch = json!({ "spec": { "valuesFiles": ["values.yaml", "values-missing.yaml"] } });
    t.api
        .patch("app", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let missing = t
        .wait_ready("app", "False", Some("ValuesFilesError"))
        .await?;
    assert!(
        ready_message(&missing).contains("no values file found at path 'values-missing.yaml'"),
        "{}",
        ready_message(&missing)
    );
    assert_eq!(artifact(&missing)?, artifact(&merged)?);
    let conditions = missing.status.clone().unwrap().conditions;
    assert_eq!(
        find_condition(&conditions, "BuildFailed").map(|c| c.reason.as_str()),
        Some("ValuesFilesError")
    );

    // Told to ignore it, the files that exist are merged.
    let patch = json!({ "spec": { "ignoreMissingValuesFiles": true } });
    t.api
        .patch("app", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let ignored = t
        .wait_for("app", "Ready with values.yaml alone", |c| {
            c.status.as_ref().is_some_and(|s| {
                s.observed_generation == c.metadata.generation
                    && s.observed_values_files == ["values.yaml"]
            })
        })
        .await?;
    assert_eq!(
        ready_message(&ignored),
        format!(
            "packaged '{name}' chart with version '0.1.0' and merged values files [values.yaml]"
        )
    );
    let files = download(&ignored).await?;
    let values = file(&files, &format!("{name}/values.yaml")).context("no values.yaml")?;
    assert_eq!(
        yaml(values),
        yaml("message: base\nimage:\n  repository: app\n  tag: '1'\n")
    );
    Ok(())
}

#[tokio::test]
async fn a_range_nothing_satisfies_is_not_ready_naming_chart_and_range() -> Result<()> {
    let t = Charts::start().await?;
    let charts = Harness::get().await?.charts();
    let name = unique_name("hc-none", 40);
    charts.publish(&Chart::new(&name, "1.0.0"))?;
    t.refresh_index("published").await?;
    t.create("app", &name, ">=5.0.0", json!({})).await?;
    let none = t
        .wait_ready("app", "False", Some("InvalidChartReference"))
        .await?;
    assert!(
        ready_message(&none).contains(&format!(
            "no '{name}' chart with version matching '>=5.0.0' found"
        )),
        "{}",
        ready_message(&none)
    );
    assert!(none.status.clone().unwrap().artifact.is_none());

    t.create("unknown", "no-such-chart", "*", json!({})).await?;
    let unknown = t
        .wait_ready("unknown", "False", Some("InvalidChartReference"))
        .await?;
    assert!(
        ready_message(&unknown)
            .contains("no 'no-such-chart' chart with version matching '*' found"),
        "{}",
        ready_message(&unknown)
    );
    Ok(())
}

#[tokio::test]
async fn bucket_sources_weir_does_not_build_are_rejected_by_the_api_server() -> Result<()> {
    let t = Charts::start().await?;
    for kind in ["Bucket", "OCIRepository"] {
        let object = t.manifest(
            "other",
            json!({
                "chart": "./chart",
                "sourceRef": { "kind": kind, "name": "repo" },
                "interval": "10m",
            }),
        );
        // The typed API refuses it before the API server would.
        assert!(object.is_err(), "{kind} accepted by the types");
        let raw = kube::api::DynamicObject::new(
            "other",
            &kube::discovery::ApiResource::erase::<HelmChart>(&()),
        )
        .within(t.fx.ns.name())
        .data(json!({
            "spec": {
                "chart": "./chart",
                "sourceRef": { "kind": kind, "name": "repo" },
                "interval": "10m",
            }
        }));
        let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
            t.fx.client.clone(),
            t.fx.ns.name(),
            &kube::discovery::ApiResource::erase::<HelmChart>(&()),
        );
        let err = api
            .create(&PostParams::default(), &raw)
            .await
            .expect_err("the API server accepted an unbuilt source kind");
        assert!(err.to_string().contains("spec.sourceRef.kind"), "{err}");
    }
    Ok(())
}

#[tokio::test]
async fn a_chart_directory_of_a_git_repository_is_packaged_and_revision_adds_the_commit()
-> Result<()> {
    let t = Charts::start().await?;
    let harness = Harness::get().await?;
    let files = BTreeMap::from([
        (
            "charts/app/Chart.yaml",
            "apiVersion: v2\nname: git-app\nversion: 0.3.0\n",
        ),
        ("charts/app/values.yaml", "message: base\nreplicas: 1\n"),
        ("charts/app/templates/cm.yaml", "kind: ConfigMap\n"),
        ("env/prod.yaml", "replicas: 3\n"),
    ]);
    let git = harness.git().create_repo("hc-git", &files)?;
    t.fx.create("app", json!({ "url": git.http_url(), "interval": "10m" }))
        .await?;
    t.fx.wait_ready("app", "True").await?;
    let head = git.head()?;
    let source = |kind: &str| json!({ "kind": kind, "name": "app" });
    for (name, strategy) in [("by-version", "ChartVersion"), ("by-revision", "Revision")] {
        let object = t.manifest(
            name,
            json!({
                "chart": "./charts/app",
                "sourceRef": source("GitRepository"),
                "interval": "10m",
                "reconcileStrategy": strategy,
                "valuesFiles": ["charts/app/values.yaml", "env/prod.yaml"],
            }),
        )?;
        t.api.create(&PostParams::default(), &object).await?;
    }
    let by_version = t
        .wait_ready("by-version", "True", Some("ChartPackageSucceeded"))
        .await?;
    assert_eq!(artifact(&by_version)?.revision, "0.3.0");
    assert_eq!(
        by_version
            .status
            .clone()
            .unwrap()
            .observed_chart_name
            .as_deref(),
        Some("git-app"),
        "the chart's name, not its path"
    );
    assert_eq!(
        ready_message(&by_version),
        "packaged 'git-app' chart with version '0.3.0' and merged values files [charts/app/values.yaml env/prod.yaml]"
    );
    let packaged = download(&by_version).await?;
    let chart_yaml = yaml(file(&packaged, "git-app/Chart.yaml").context("no Chart.yaml")?);
    assert_eq!(chart_yaml["version"], yaml("0.3.0"));
    assert_eq!(
        yaml(file(&packaged, "git-app/values.yaml").context("no values.yaml")?),
        yaml("message: base\nreplicas: 3\n")
    );
    assert!(file(&packaged, "git-app/templates/cm.yaml").is_some());

    let with_commit = format!("0.3.0+{}", &head[..12]);
    let by_revision = t
        .wait_for("by-revision", "the commit in its version", |c| {
            artifact(c).is_ok_and(|a| a.revision == with_commit)
        })
        .await?;
    let packaged = download(&by_revision).await?;
    let chart_yaml = yaml(file(&packaged, "git-app/Chart.yaml").context("no Chart.yaml")?);
    assert_eq!(chart_yaml["version"], yaml(&with_commit));

    // A new commit without a new chart version: Revision follows it, ChartVersion keeps its
    // artifact.
    let second = git
        .change()
        .write(
            "charts/app/templates/cm.yaml",
            "kind: ConfigMap\n# changed\n",
        )
        .commit("change the template")?;
    let revision = format!("main@sha1:{second}");
    t.fx.request_reconcile("app", "second").await?;
    let newer = format!("0.3.0+{}", &second[..12]);
    t.wait_for("by-revision", "the new commit in its version", |c| {
        artifact(c).is_ok_and(|a| a.revision == newer)
    })
    .await?;
    let kept = t
        .wait_for("by-version", "the new commit observed", |c| {
            c.status
                .as_ref()
                .and_then(|s| s.observed_source_artifact_revision.as_deref())
                == Some(revision.as_str())
        })
        .await?;
    assert_eq!(artifact(&kept)?, artifact(&by_version)?);

    Ok(())
}

/// A chart server on loopback that requires basic auth for the index and for chart files on its
/// own address, serves `/charts/public/*` to anyone, and records whether each chart request
/// carried credentials.
struct AuthServer {
    addr: std::net::SocketAddr,
    /// (path, whether an `Authorization` header came with it), per chart request.
    seen: std::sync::Arc<std::sync::Mutex<Vec<(String, bool)>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl AuthServer {
    /// `index` makes the index from the server's port.
    async fn start(
        basic: &str,
        index: impl FnOnce(u16) -> String,
        files: BTreeMap<String, Vec<u8>>,
    ) -> Result<Self> {
        use axum::{
            extract::Path,
            http::{HeaderMap, StatusCode, header},
            response::IntoResponse,
        };
        use base64::Engine as _;
        let seen = std::sync::Arc::new(std::sync::Mutex::new(vec![]));
        let expected = basic.to_owned();
        let authorized = move |headers: &HeaderMap| {
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Basic "))
                .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
                .is_some_and(|given| given == expected.as_bytes())
        };
        let (for_index, for_files) = (authorized.clone(), authorized);
        let record = seen.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let index = index(addr.port());
        let app = axum::Router::new()
            .route(
                "/charts/index.yaml",
                axum::routing::get(move |headers: HeaderMap| async move {
                    if for_index(&headers) {
                        index.into_response()
                    } else {
                        StatusCode::UNAUTHORIZED.into_response()
                    }
                }),
            )
            .route(
                "/charts/{*file}",
                axum::routing::get(move |Path(file): Path<String>, headers: HeaderMap| {
                    let record = record.clone();
                    let files = files.clone();
                    let for_files = for_files.clone();
                    async move {
                        let sent = headers.contains_key(header::AUTHORIZATION);
                        record.lock().unwrap().push((file.clone(), sent));
                        if !file.starts_with("public/") && !for_files(&headers) {
                            return StatusCode::UNAUTHORIZED.into_response();
                        }
                        match files.get(&file) {
                            Some(bytes) => bytes.clone().into_response(),
                            None => StatusCode::NOT_FOUND.into_response(),
                        }
                    }
                }),
            );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            addr,
            seen,
            _task: task,
        })
    }

    fn seen(&self, file: &str) -> Vec<bool> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(f, _)| f == file)
            .map(|(_, sent)| *sent)
            .collect()
    }
}

#[tokio::test]
async fn repository_credentials_reach_the_charts_on_its_host_and_elsewhere_only_with_pass_credentials()
-> Result<()> {
    let t = Charts::start().await?;
    let charts = Harness::get().await?.charts();
    let (local, remote) = (unique_name("hc-local", 40), unique_name("hc-remote", 40));
    let mut files = BTreeMap::new();
    for name in [&local, &remote] {
        charts.publish(&Chart::new(name, "1.0.0"))?;
        let tgz = std::fs::read(charts.dir().join(format!("{name}-1.0.0.tgz")))?;
        files.insert(format!("{name}-1.0.0.tgz"), tgz.clone());
        files.insert(format!("public/{name}-1.0.0.tgz"), tgz);
    }
    let password = "s3cret-chart-password";
    // `local` is on the repository's host (a relative URL); `remote` is on another host name
    // for the same server ("localhost", where the repository URL says 127.0.0.1).
    let server = AuthServer::start(
        &format!("reader:{password}"),
        |port| {
            format!(
                "apiVersion: v1\nentries:\n  {local}:\n  - name: {local}\n    version: 1.0.0\n    urls: [{local}-1.0.0.tgz]\n  {remote}:\n  - name: {remote}\n    version: 1.0.0\n    urls: [http://localhost:{port}/charts/public/{remote}-1.0.0.tgz]\n"
            )
        },
        files,
    )
    .await?;
    t.fx.secret("auth", &[("username", "reader"), ("password", password)])
        .await?;
    let url = format!("http://{}/charts", server.addr);
    for (repo, pass) in [("private", false), ("passing", true)] {
        let object: HelmRepository = manifest::from_value(json!({
            "apiVersion": "source.toolkit.fluxcd.io/v1",
            "kind": "HelmRepository",
            "metadata": { "name": repo, "namespace": t.fx.ns.name() },
            "spec": {
                "url": url, "interval": "10m", "secretRef": { "name": "auth" },
                "passCredentials": pass,
            },
        }))?;
        t.repos.create(&PostParams::default(), &object).await?;
    }
    let chart_of = |name: &str, repo: &str| {
        json!({
            "chart": name,
            "sourceRef": { "kind": "HelmRepository", "name": repo },
            "interval": "10m",
        })
    };

    // On the repository's host the chart needs, and gets, the credentials.
    t.api
        .create(
            &PostParams::default(),
            &t.manifest("local", chart_of(&local, "private"))?,
        )
        .await?;
    t.wait_ready("local", "True", Some("ChartPullSucceeded"))
        .await?;
    // Every fetch carried the credentials. (A chart may be fetched twice: a reconcile started
    // by its repository's status can read the chart from the watch cache before the first
    // reconcile's status write reaches it.)
    let local_seen = server.seen(&format!("{local}-1.0.0.tgz"));
    assert!(
        !local_seen.is_empty() && local_seen.iter().all(|sent| *sent),
        "{local_seen:?}"
    );

    // On another host, only with passCredentials.
    t.api
        .create(
            &PostParams::default(),
            &t.manifest("kept", chart_of(&remote, "private"))?,
        )
        .await?;
    t.wait_ready("kept", "True", Some("ChartPullSucceeded"))
        .await?;
    let public = format!("public/{remote}-1.0.0.tgz");
    let kept = server.seen(&public);
    assert!(
        !kept.is_empty() && kept.iter().all(|sent| !sent),
        "credentials went to another host: {kept:?}"
    );
    t.api
        .create(
            &PostParams::default(),
            &t.manifest("passed", chart_of(&remote, "passing"))?,
        )
        .await?;
    t.wait_ready("passed", "True", Some("ChartPullSucceeded"))
        .await?;
    // Only the `passing` repository's chart sends credentials there.
    let passed = server.seen(&public);
    assert!(
        passed.iter().any(|sent| *sent),
        "passCredentials sent none: {passed:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_missing_source_is_named_until_it_appears_and_an_oci_provider_weir_lacks_is_stalled()
-> Result<()> {
    let t = Charts::start().await?;
    let charts = Harness::get().await?.charts();
    let name = unique_name("hc-later", 40);
    charts.publish(&Chart::new(&name, "1.0.0"))?;
    let spec = |repo: &str| {
        json!({
            "chart": name,
            "sourceRef": { "kind": "HelmRepository", "name": repo },
            "interval": "10m",
        })
    };
    t.api
        .create(&PostParams::default(), &t.manifest("later", spec("later"))?)
        .await?;
    let missing = t
        .wait_ready("later", "False", Some("SourceUnavailable"))
        .await?;
    assert!(
        ready_message(&missing).contains(&format!(
            "failed to get source: HelmRepository '{}/later'",
            t.fx.ns.name()
        )),
        "{}",
        ready_message(&missing)
    );
    let conditions = missing.status.clone().unwrap().conditions;
    assert!(find_condition(&conditions, types::FETCH_FAILED).is_some());

    // The repository appears: its first artifact reconciles the chart through the watch.
    let repo: HelmRepository = manifest::from_value(json!({
        "apiVersion": "source.toolkit.fluxcd.io/v1",
        "kind": "HelmRepository",
        "metadata": { "name": "later", "namespace": t.fx.ns.name() },
        "spec": { "url": charts.url(), "interval": "10m" },
    }))?;
    t.repos.create(&PostParams::default(), &repo).await?;
    let ready = t
        .wait_ready("later", "True", Some("ChartPullSucceeded"))
        .await?;
    assert_eq!(artifact(&ready)?.revision, "1.0.0");
    let conditions = ready.status.clone().unwrap().conditions;
    assert!(find_condition(&conditions, types::FETCH_FAILED).is_none());

    // An OCI repository whose credentials come from a cloud provider Weir lacks: stalled, naming
    // the provider (charts of OCI repositories are in `helm_oci`).
    let oci: HelmRepository = manifest::from_value(json!({
        "apiVersion": "source.toolkit.fluxcd.io/v1",
        "kind": "HelmRepository",
        "metadata": { "name": "oci", "namespace": t.fx.ns.name() },
        "spec": { "url": "oci://registry.example/charts", "type": "oci", "provider": "aws" },
    }))?;
    t.repos.create(&PostParams::default(), &oci).await?;
    t.api
        .create(&PostParams::default(), &t.manifest("oci", spec("oci"))?)
        .await?;
    let stalled = t
        .wait_ready("oci", "False", Some("AuthenticationFailed"))
        .await?;
    let conditions = stalled.status.clone().unwrap().conditions;
    assert_eq!(
        find_condition(&conditions, types::STALLED).map(|c| c.status),
        Some(weir_api::ConditionStatus::True),
        "{conditions:?}"
    );
    assert!(
        ready_message(&stalled).contains("provider 'aws' are not implemented"),
        "{}",
        ready_message(&stalled)
    );
    Ok(())
}

#[tokio::test]
async fn a_git_path_without_a_chart_is_an_invalid_chart_reference_naming_it() -> Result<()> {
    let t = Charts::start().await?;
    let files = BTreeMap::from([("README.md", "no chart here\n")]);
    let git = Harness::get()
        .await?
        .git()
        .create_repo("hc-nochart", &files)?;
    t.fx.create("app", json!({ "url": git.http_url(), "interval": "10m" }))
        .await?;
    t.fx.wait_ready("app", "True").await?;
    let source = |kind: &str| json!({ "kind": kind, "name": "app" });
    let object = t.manifest(
        "nowhere",
        json!({ "chart": "charts/missing", "sourceRef": source("GitRepository"), "interval": "10m" }),
    )?;
    t.api.create(&PostParams::default(), &object).await?;
    let missing = t
        .wait_ready("nowhere", "False", Some("InvalidChartReference"))
        .await?;
    assert!(
        ready_message(&missing).contains("no chart at path 'charts/missing'"),
        "{}",
        ready_message(&missing)
    );

    // One that leaves the source needs a new spec: Stalled.
    let object = t.manifest(
        "outside",
        json!({ "chart": "../outside", "sourceRef": source("GitRepository"), "interval": "10m" }),
    )?;
    t.api.create(&PostParams::default(), &object).await?;
    let outside = t
        .wait_ready("outside", "False", Some("InvalidChartReference"))
        .await?;
    let conditions = outside.status.clone().unwrap().conditions;
    assert_eq!(
        find_condition(&conditions, types::STALLED).map(|c| c.status),
        Some(weir_api::ConditionStatus::True),
        "{conditions:?}"
    );
    assert!(
        ready_message(&outside).contains("path '../outside' leaves the source"),
        "{}",
        ready_message(&outside)
    );
    Ok(())
}
