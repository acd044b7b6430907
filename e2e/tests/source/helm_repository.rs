//! HelmRepository: an HTTP(S) repository's index becomes an artifact whose revision is the
//! index's sha256, a repository whose URL serves no index fails with Flux's reason and keeps
//! its last artifact, basic auth comes from `secretRef`, and an OCI repository stays static, as
//! Flux leaves it.
//!
//! The harness's chart repository (nginx) has no authentication; basic auth is tested against a
//! small server in the test that requires it, which also serves the indexes a test switches
//! between.

use std::{
    fs::File,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use anyhow::{Context as _, Result, bail};
use axum::{
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::Engine as _;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use sha2::{Digest, Sha256};
use weir_api::{
    Artifact, HelmRepository, condition::find_condition, manifest, meta::FINALIZER, types,
};
use weir_e2e::{Chart, ChartRepository, Harness, unique_name, wait_until};

use crate::fixture::Fixture;

/// A source controller and the HelmRepositories of its namespace.
struct Helm {
    fx: Fixture,
    api: Api<HelmRepository>,
}

impl Helm {
    async fn start() -> Result<Self> {
        let fx = Fixture::start().await?;
        let api = Api::namespaced(fx.client.clone(), fx.ns.name());
        Ok(Self { fx, api })
    }

    async fn create(&self, name: &str, spec: serde_json::Value) -> Result<HelmRepository> {
        let repo: HelmRepository = manifest::from_value(json!({
            "apiVersion": "source.toolkit.fluxcd.io/v1",
            "kind": "HelmRepository",
            "metadata": { "name": name, "namespace": self.fx.ns.name() },
            "spec": spec,
        }))?;
        Ok(self.api.create(&PostParams::default(), &repo).await?)
    }

    async fn wait_ready(
        &self,
        name: &str,
        status: &str,
        reason: Option<&str>,
    ) -> Result<HelmRepository> {
        Ok(weir_e2e::wait_ready(&self.api, name, status, reason).await?)
    }

    /// Sets `reconcile.fluxcd.io/requestedAt` and waits until the reconcile that answers it has
    /// written its status.
    async fn request_reconcile(&self, name: &str, token: &str) -> Result<HelmRepository> {
        let patch =
            json!({ "metadata": { "annotations": { "reconcile.fluxcd.io/requestedAt": token } } });
        self.api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        let api = self.api.clone();
        Ok(wait_until(
            &format!("HelmRepository {name} to handle request {token}"),
            || {
                let api = api.clone();
                async move {
                    let repo = api.get(name).await.map_err(|e| e.to_string())?;
                    let handled = repo
                        .status
                        .as_ref()
                        .and_then(|s| s.last_handled_reconcile_at.clone());
                    if handled.as_deref() == Some(token) {
                        Ok(repo)
                    } else {
                        Err(format!("handled {handled:?}"))
                    }
                }
            },
        )
        .await?)
    }

    /// The index files stored for `name`, by file name.
    fn stored_indexes(&self, name: &str) -> Result<Vec<String>> {
        let dir = self
            .fx
            .storage
            .path()
            .join("helmrepository")
            .join(self.fx.ns.name())
            .join(name);
        let mut files = vec![];
        if dir.exists() {
            for entry in std::fs::read_dir(dir)? {
                let file = entry?.file_name().to_string_lossy().into_owned();
                if file.starts_with("index-") {
                    files.push(file);
                }
            }
        }
        files.sort();
        Ok(files)
    }
}

fn artifact(repo: &HelmRepository) -> Result<Artifact> {
    repo.status
        .as_ref()
        .and_then(|s| s.artifact.clone())
        .context("no artifact")
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

async fn get(url: &str) -> Result<Vec<u8>> {
    Ok(reqwest::get(url)
        .await?
        .error_for_status()?
        .bytes()
        .await?
        .to_vec())
}

/// Downloads the artifact and checks it against its status: digest, size, and that the
/// revision is the digest (Weir stores the index as served).
async fn download(repo: &HelmRepository) -> Result<Vec<u8>> {
    let artifact = artifact(repo)?;
    let bytes = get(&artifact.url).await?;
    assert_eq!(artifact.digest.as_deref(), Some(sha256(&bytes).as_str()));
    assert_eq!(artifact.revision, sha256(&bytes));
    assert_eq!(artifact.size, Some(bytes.len() as i64));
    Ok(bytes)
}

fn ready_message(repo: &HelmRepository) -> String {
    let conditions = repo
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    find_condition(&conditions, types::READY)
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// Holds the harness chart repository's publish lock (the one [`ChartRepository::publish`]
/// takes), so its index cannot change while held.
fn hold_publishing(charts: &ChartRepository) -> Result<File> {
    let lock = File::create(charts.dir().with_extension("publish.lock"))?;
    lock.lock()?;
    Ok(lock)
}

#[tokio::test]
async fn an_http_repository_stores_its_index_as_served_and_a_new_chart_version_changes_the_revision()
-> Result<()> {
    let helm = Helm::start().await?;
    let charts = Harness::get().await?.charts();
    let chart = unique_name("hr-chart", 40);
    charts.publish(&Chart::new(&chart, "0.1.0"))?;
    helm.create("charts", json!({ "url": charts.url(), "interval": "10m" }))
        .await?;
    let first = helm.wait_ready("charts", "True", Some("Succeeded")).await?;
    let stored = download(&first).await?;
    assert!(String::from_utf8_lossy(&stored).contains(&chart));
    let status = first.status.clone().unwrap();
    assert_eq!(
        ready_message(&first),
        format!("stored artifact: revision '{}'", artifact(&first)?.revision)
    );
    // `status.url` serves the latest index too.
    let latest = status.url.clone().context("no status.url")?;
    assert!(latest.ends_with("/index.yaml"), "{latest}");
    assert_eq!(get(&latest).await?, stored);

    // With publishing held, the served index is the one a reconcile fetches: the artifact is
    // those bytes, and fetching them again stores nothing new.
    let lock = hold_publishing(charts)?;
    let served = get(&charts.index_url()).await?;
    let again = helm.request_reconcile("charts", "same-1").await?;
    assert_eq!(download(&again).await?, served);
    assert_eq!(artifact(&again)?.revision, sha256(&served));
    let files = helm.stored_indexes("charts")?;
    let unchanged = helm.request_reconcile("charts", "same-2").await?;
    assert_eq!(
        artifact(&unchanged)?,
        artifact(&again)?,
        "an unchanged index changed the artifact"
    );
    assert_eq!(
        helm.stored_indexes("charts")?,
        files,
        "a new file was stored"
    );
    drop(lock);

    charts.publish(&Chart::new(&chart, "0.2.0"))?;
    let newer = helm.request_reconcile("charts", "new-version").await?;
    let bytes = download(&newer).await?;
    assert_ne!(artifact(&newer)?.revision, artifact(&again)?.revision);
    assert!(String::from_utf8_lossy(&bytes).contains("0.2.0"));
    assert_eq!(
        get(&latest).await?,
        bytes,
        "status.url follows the new index"
    );
    assert!(
        helm.fx
            .events_text()
            .await?
            .contains("stored fetched index of size"),
        "no NewArtifact event"
    );
    Ok(())
}

/// What the test's chart server answers for `/charts/index.yaml`.
#[derive(Clone)]
enum Serve {
    Index(String),
    Status(StatusCode),
}

struct ServerState {
    serve: Mutex<Serve>,
    /// `user:password` the server requires, if any.
    basic: Option<String>,
    /// Indexes sent whole, and `304 Not Modified` answers to an `If-None-Match` of the index's
    /// `ETag` (its sha256).
    sent: AtomicUsize,
    not_modified: AtomicUsize,
}

/// A chart server on loopback; the URL of its repository is `<base>/charts`.
struct ChartServer {
    state: Arc<ServerState>,
    addr: SocketAddr,
    _task: tokio::task::JoinHandle<()>,
}

impl ChartServer {
    async fn start(serve: Serve, basic: Option<&str>) -> Result<Self> {
        let state = Arc::new(ServerState {
            serve: Mutex::new(serve),
            basic: basic.map(str::to_owned),
            sent: AtomicUsize::new(0),
            not_modified: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .route("/charts/index.yaml", axum::routing::get(index))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            state,
            addr,
            _task: task,
        })
    }

    fn url(&self) -> String {
        format!("http://{}/charts", self.addr)
    }

    fn serve(&self, serve: Serve) {
        *self.state.serve.lock().unwrap() = serve;
    }
}

async fn index(State(state): State<Arc<ServerState>>, headers: HeaderMap) -> Response {
    if let Some(expected) = &state.basic {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok());
        if given.as_deref() != Some(expected.as_bytes()) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Basic realm=\"charts\"")],
            )
                .into_response();
        }
    }
    let serve = state.serve.lock().unwrap().clone();
    match serve {
        Serve::Index(text) => {
            let etag = format!("\"{}\"", sha256(text.as_bytes()));
            if headers
                .get(header::IF_NONE_MATCH)
                .is_some_and(|v| v.as_bytes() == etag.as_bytes())
            {
                state.not_modified.fetch_add(1, Ordering::SeqCst);
                return StatusCode::NOT_MODIFIED.into_response();
            }
            state.sent.fetch_add(1, Ordering::SeqCst);
            ([(header::ETAG, etag)], text).into_response()
        }
        Serve::Status(status) => status.into_response(),
    }
}

fn index_yaml(chart: &str, version: &str) -> String {
    format!(
        "apiVersion: v1\nentries:\n  {chart}:\n  - apiVersion: v2\n    name: {chart}\n    version: {version}\n    urls:\n    - {chart}-{version}.tgz\ngenerated: \"2026-01-01T00:00:00Z\"\n"
    )
}

#[tokio::test]
async fn a_url_serving_no_helm_index_fails_naming_it_and_the_last_artifact_stays() -> Result<()> {
    let helm = Helm::start().await?;
    let server = ChartServer::start(Serve::Index(index_yaml("app", "1.0.0")), None).await?;
    let index_url = format!("{}/index.yaml", server.url());
    helm.create("repo", json!({ "url": server.url(), "interval": "10m" }))
        .await?;
    let good = helm.wait_ready("repo", "True", None).await?;
    let last = artifact(&good)?;

    // A page that is no index: IndexationFailed, naming the index URL.
    server.serve(Serve::Index(
        "<!DOCTYPE html>\n<html><body>Welcome</body></html>\n".to_owned(),
    ));
    helm.request_reconcile("repo", "html").await?;
    let html = helm
        .wait_ready("repo", "False", Some("IndexationFailed"))
        .await?;
    let message = ready_message(&html);
    assert!(
        message.starts_with("failed to load Helm repository from index YAML")
            && message.contains(&index_url),
        "{message}"
    );
    assert_eq!(artifact(&html)?, last, "the last good artifact stays");
    let conditions = html.status.clone().unwrap().conditions;
    let fetch_failed =
        find_condition(&conditions, types::FETCH_FAILED).context("no FetchFailed")?;
    assert_eq!(fetch_failed.reason, "IndexationFailed");

    // A YAML document without apiVersion is no index either.
    server.serve(Serve::Index("entries: {}\n".to_owned()));
    let no_version = helm.request_reconcile("repo", "no-version").await?;
    assert!(
        ready_message(&no_version).contains("no API version specified"),
        "{}",
        ready_message(&no_version)
    );

    // Not found: Flux's reason Failed, naming the URL and the status.
    server.serve(Serve::Status(StatusCode::NOT_FOUND));
    let missing = helm.request_reconcile("repo", "404").await?;
    let message = ready_message(&missing);
    assert!(
        message.contains(&index_url) && message.contains("404 Not Found"),
        "{message}"
    );
    let missing = helm.wait_ready("repo", "False", Some("Failed")).await?;
    assert_eq!(artifact(&missing)?, last, "the last good artifact stays");
    assert_eq!(
        download(&missing).await?,
        index_yaml("app", "1.0.0").into_bytes()
    );

    // Fixed: Ready again, the failure conditions gone.
    server.serve(Serve::Index(index_yaml("app", "1.0.0")));
    helm.request_reconcile("repo", "fixed").await?;
    let fixed = helm.wait_ready("repo", "True", Some("Succeeded")).await?;
    let conditions = fixed.status.clone().unwrap().conditions;
    assert!(find_condition(&conditions, types::FETCH_FAILED).is_none());
    assert_eq!(artifact(&fixed)?.revision, last.revision);
    Ok(())
}

#[tokio::test]
async fn an_unchanged_index_is_asked_for_with_its_etag_and_a_304_keeps_the_artifact() -> Result<()>
{
    let helm = Helm::start().await?;
    let server = ChartServer::start(Serve::Index(index_yaml("app", "1.0.0")), None).await?;
    helm.create("repo", json!({ "url": server.url(), "interval": "10m" }))
        .await?;
    let first = artifact(&helm.wait_ready("repo", "True", None).await?)?;
    assert_eq!(server.state.sent.load(Ordering::SeqCst), 1);

    let again = helm.request_reconcile("repo", "unchanged").await?;
    assert_eq!(server.state.not_modified.load(Ordering::SeqCst), 1);
    assert_eq!(
        server.state.sent.load(Ordering::SeqCst),
        1,
        "downloaded again"
    );
    assert_eq!(artifact(&again)?, first);
    assert_eq!(
        ready_message(&again),
        format!("stored artifact: revision '{}'", first.revision)
    );

    // A changed index has another ETag: sent whole, a new revision.
    server.serve(Serve::Index(index_yaml("app", "1.1.0")));
    let changed = helm.request_reconcile("repo", "changed").await?;
    assert_eq!(server.state.sent.load(Ordering::SeqCst), 2);
    assert_eq!(
        download(&changed).await?,
        index_yaml("app", "1.1.0").into_bytes()
    );
    Ok(())
}

#[tokio::test]
async fn an_oci_url_without_type_oci_is_stalled_as_an_invalid_url() -> Result<()> {
    let helm = Helm::start().await?;
    helm.create(
        "oci-default",
        json!({ "url": "oci://ghcr.io/org/charts", "interval": "10m" }),
    )
    .await?;
    let repo = helm
        .wait_ready("oci-default", "False", Some("URLInvalid"))
        .await?;
    let conditions = repo.status.clone().unwrap().conditions;
    let stalled = find_condition(&conditions, types::STALLED).context("not Stalled")?;
    assert!(
        stalled
            .message
            .contains("'oci' URL scheme cannot be used with 'default' HelmRepository type"),
        "{}",
        stalled.message
    );
    Ok(())
}

#[tokio::test]
async fn basic_auth_comes_from_the_secret_ref_and_a_refusal_keeps_the_password_out() -> Result<()> {
    let helm = Helm::start().await?;
    let password = "s3cret-helm-password";
    let server = ChartServer::start(
        Serve::Index(index_yaml("private", "1.0.0")),
        Some(&format!("reader:{password}")),
    )
    .await?;
    helm.fx
        .secret("auth", &[("username", "reader"), ("password", password)])
        .await?;
    helm.create(
        "private",
        json!({ "url": server.url(), "interval": "10m", "secretRef": { "name": "auth" } }),
    )
    .await?;
    let ready = helm
        .wait_ready("private", "True", Some("Succeeded"))
        .await?;
    assert_eq!(
        download(&ready).await?,
        index_yaml("private", "1.0.0").into_bytes()
    );

    // Without credentials the server refuses: Failed, as Flux reports a refused fetch.
    helm.create(
        "anonymous",
        json!({ "url": server.url(), "interval": "10m" }),
    )
    .await?;
    let refused = helm
        .wait_ready("anonymous", "False", Some("Failed"))
        .await?;
    assert!(
        ready_message(&refused).contains("401 Unauthorized"),
        "{}",
        ready_message(&refused)
    );

    // A wrong password: refused, and the password given appears nowhere.
    let wrong = "wrong-helm-password";
    helm.fx
        .secret("wrong", &[("username", "reader"), ("password", wrong)])
        .await?;
    helm.create(
        "wrong",
        json!({ "url": server.url(), "interval": "10m", "secretRef": { "name": "wrong" } }),
    )
    .await?;
    let refused = helm.wait_ready("wrong", "False", Some("Failed")).await?;
    assert!(ready_message(&refused).contains("401 Unauthorized"));
    let events = helm.fx.events_text().await?;
    for text in [serde_json::to_string(&refused.status)?, events] {
        assert!(!text.contains(wrong) && !text.contains(password), "{text}");
    }

    // A Secret without both fields, or none at all: AuthenticationFailed.
    helm.fx.secret("half", &[("username", "reader")]).await?;
    for (name, secret, expected) in [
        ("half", "half", "required fields 'username' and 'password'"),
        ("missing", "does-not-exist", "failed to get secret"),
    ] {
        helm.create(
            name,
            json!({ "url": server.url(), "interval": "10m", "secretRef": { "name": secret } }),
        )
        .await?;
        let failed = helm
            .wait_ready(name, "False", Some("AuthenticationFailed"))
            .await?;
        assert!(
            ready_message(&failed).contains(expected),
            "{}",
            ready_message(&failed)
        );
    }
    Ok(())
}

/// The harness's HTTPS git server (nginx, a private CA, basic auth under `/private`) serves no
/// index, so its 404 is how far a fetch that passes TLS and authentication gets.
#[tokio::test]
async fn an_https_repository_is_trusted_through_the_cert_secret_refs_ca_and_passes_basic_auth()
-> Result<()> {
    let helm = Helm::start().await?;
    let (harness, repo) = crate::fixture::harness_repo().await?;
    let git = harness.git();
    let url = repo.https_url()?.replacen("/public/", "/private/", 1);
    let ca = crate::fixture::read(git.https_ca()?)?;
    helm.fx.secret("ca", &[("ca.crt", &ca)]).await?;
    helm.fx
        .secret(
            "auth",
            &[
                ("username", git.http_user()),
                ("password", git.http_password()),
            ],
        )
        .await?;
    for (name, spec, expected) in [
        ("untrusted", json!({ "url": url }), "certificate"),
        (
            "trusted",
            json!({ "url": url, "certSecretRef": { "name": "ca" } }),
            "401 Unauthorized",
        ),
        (
            "authenticated",
            json!({ "url": url, "certSecretRef": { "name": "ca" }, "secretRef": { "name": "auth" } }),
            "404 Not Found",
        ),
    ] {
        helm.create(name, spec).await?;
        let failed = helm.wait_ready(name, "False", Some("Failed")).await?;
        let message = ready_message(&failed);
        assert!(
            message.to_lowercase().contains(&expected.to_lowercase()),
            "{name}: {message}"
        );
        assert!(!message.contains(git.http_password()), "{message}");
    }
    Ok(())
}

/// Whether the object is as Flux leaves an OCI HelmRepository: no finalizer, no status.
fn is_static(repo: &HelmRepository) -> std::result::Result<(), String> {
    if repo.finalizers().iter().any(|f| f == FINALIZER) {
        return Err("has Flux's finalizer".to_owned());
    }
    match &repo.status {
        Some(status) if !status.is_empty() => Err(format!("has status {status:?}")),
        _ => Ok(()),
    }
}

#[tokio::test]
async fn an_oci_repository_is_static_with_no_artifact_status_or_finalizer_as_in_flux() -> Result<()>
{
    let helm = Helm::start().await?;
    let registry = Harness::get().await?.registry();
    let oci_url = format!("oci://{}/charts", registry.host());
    helm.create(
        "oci",
        json!({ "type": "oci", "url": oci_url, "interval": "10m", "insecure": true }),
    )
    .await?;
    // An HTTP repository created after it becomes Ready: by then the OCI one was seen.
    let server = ChartServer::start(Serve::Index(index_yaml("app", "1.0.0")), None).await?;
    helm.create("http", json!({ "url": server.url(), "interval": "10m" }))
        .await?;
    let http = helm.wait_ready("http", "True", None).await?;
    is_static(&helm.api.get("oci").await?).map_err(anyhow::Error::msg)?;

    // A repository switched to OCI loses its finalizer, status and artifacts, as Flux migrates
    // it.
    assert!(http.finalizers().iter().any(|f| f == FINALIZER));
    assert!(!helm.stored_indexes("http")?.is_empty());
    let patch = json!({ "spec": { "type": "oci", "url": oci_url } });
    helm.api
        .patch("http", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let api = helm.api.clone();
    wait_until("the switched repository to become static", || {
        let api = api.clone();
        async move { is_static(&api.get("http").await.map_err(|e| e.to_string())?) }
    })
    .await?;
    assert!(
        helm.stored_indexes("http")?.is_empty(),
        "its artifacts stay in storage"
    );
    Ok(())
}

#[tokio::test]
async fn an_unknown_spec_field_is_rejected_by_the_api_server() -> Result<()> {
    let helm = Helm::start().await?;
    let object = json!({
        "apiVersion": "source.toolkit.fluxcd.io/v1",
        "kind": "HelmRepository",
        "metadata": { "name": "unknown", "namespace": helm.fx.ns.name() },
        "spec": { "url": "https://charts.example", "notAField": true },
    });
    let result = helm
        .api
        .patch(
            "unknown",
            &PatchParams::apply("weir-e2e").validation_strict(),
            &Patch::Apply(&object),
        )
        .await;
    match result {
        Err(kube::Error::Api(status)) if status.message.contains("notAField") => Ok(()),
        other => bail!("expected spec.notAField to be rejected, got {other:?}"),
    }
}
