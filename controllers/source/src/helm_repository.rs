//! `HelmRepository`: an HTTP(S) Helm repository's `index.yaml`, fetched every interval and
//! stored as an artifact when it changed: `credentials → fetch → validate → store`, stopping at
//! the first failure; status is summarised and written once.
//!
//! As Flux's source-controller (v1.2 and later):
//! - the index is `<url>/index.yaml` (Go's `path.Join`), fetched within `spec.timeout` and at
//!   most 50 MiB; the revision is `sha256:` of the fetched bytes, and a fetched index with the
//!   revision of the stored artifact stores nothing (and, in Weir, writes no status);
//! - a fetch failure is `FetchFailed=True` with reason `Failed`, an index that does not load is
//!   `IndexationFailed`, a Secret that gives no credentials `AuthenticationFailed`, an `oci://`
//!   URL without `type: oci` `URLInvalid` (stalled); the last good artifact stays;
//! - `status.url` is `…/index.yaml` in storage, always the latest index;
//! - an OCI HelmRepository (`type: oci`) is static: nothing fetches or validates it, it has no
//!   artifact, no status and no finalizer; one that has them (it was `default` before) loses
//!   them, and its artifacts are removed. Its `secretRef`, `certSecretRef`, `insecure` and
//!   `provider` are for HelmCharts.
//!
//! Where Weir differs: Flux stores a JSON re-encoding of the parsed index (so its artifact's
//! digest differs from its revision); Weir stores the fetched bytes as they are, so the digest
//! is the revision and the artifact is the index the repository served. And Weir asks for the
//! index conditionally: the `ETag` the stored index was served with (kept in memory) goes in
//! `If-None-Match`, and a `304 Not Modified` keeps the artifact without a download; Flux
//! downloads the index every time and compares digests, which Weir still does when the server
//! sends no `ETag` or after a restart.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::{
    api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
    runtime::controller::Action,
};
use sha2::{Digest, Sha256};
use weir_api::{
    Artifact, Condition, ConditionStatus, HelmRepository, HelmRepositoryStatus,
    helm_repository::INDEXATION_FAILED_REASON, meta::FINALIZER, reasons, types,
};
use weir_runtime::{
    ControllerError, Disposition, Failure, Redactor,
    conclude::{Ending, Pass},
    controller::{AbortOnDropHandle, Base, Reconciler, Runtime, Synced},
    decision::StepResult,
    schedule,
    watches::Watches,
};

use crate::{
    FIELD_MANAGER,
    helm_index::{self, IndexError, MAX_INDEX_SIZE, UrlError},
    storage::Storage,
};

/// The kind's name, for storage paths.
const KIND: &str = "HelmRepository";

/// Why a HelmRepository reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum HelmRepositoryError {
    #[error("invalid Helm repository URL")]
    InvalidUrl(#[source] UrlError),
    #[error("failed to get secret '{secret}'")]
    SecretUnreadable {
        secret: String,
        #[source]
        source: kube::Error,
    },
    #[error("invalid '{secret}' secret data: {why}")]
    SecretInvalid { secret: String, why: &'static str },
    #[error("invalid '{secret}' secret data")]
    TlsUnusable {
        secret: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("failed to construct Helm client")]
    Client(#[source] reqwest::Error),
    #[error("failed to fetch Helm repository index '{url}'")]
    Fetch {
        url: String,
        #[source]
        source: FetchError,
    },
    #[error("failed to load Helm repository from index YAML '{url}'")]
    Index {
        url: String,
        #[source]
        source: IndexError,
    },
    #[error("unable to save artifact to storage")]
    Storage(#[source] std::io::Error),
    #[error("the storage task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// Why the index could not be downloaded.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("request failed")]
    Request(#[source] reqwest::Error),
    #[error("{0}")]
    Status(reqwest::StatusCode),
    #[error("reading the response failed")]
    Body(#[source] reqwest::Error),
    #[error(transparent)]
    TooLarge(IndexError),
    #[error("exceeds the maximum size of {0} bytes")]
    Exceeds(u64),
}

impl HelmRepositoryError {
    /// The negative-polarity condition this failure sets.
    #[must_use]
    pub fn condition_type(&self) -> &'static str {
        match self {
            Self::Storage(_) | Self::Task(_) => types::STORAGE_OPERATION_FAILED,
            Self::InvalidUrl(_)
            | Self::SecretUnreadable { .. }
            | Self::SecretInvalid { .. }
            | Self::TlsUnusable { .. }
            | Self::Client(_)
            | Self::Fetch { .. }
            | Self::Index { .. } => types::FETCH_FAILED,
        }
    }
}

impl Failure for HelmRepositoryError {
    fn reason(&self) -> &'static str {
        match self {
            Self::InvalidUrl(_) => reasons::URL_INVALID,
            Self::SecretUnreadable { .. }
            | Self::SecretInvalid { .. }
            | Self::TlsUnusable { .. } => reasons::AUTHENTICATION_FAILED,
            Self::Client(_) | Self::Fetch { .. } => reasons::FAILED,
            Self::Index { .. } => INDEXATION_FAILED_REASON,
            Self::Storage(_) | Self::Task(_) => reasons::ARCHIVE_OPERATION_FAILED,
        }
    }

    fn disposition(&self) -> Disposition {
        match self {
            // Only a change of the spec fixes these (Flux stalls on them too).
            Self::InvalidUrl(_) | Self::Client(_) => Disposition::Stalled,
            Self::SecretUnreadable { .. }
            | Self::SecretInvalid { .. }
            | Self::TlsUnusable { .. }
            | Self::Fetch { .. }
            | Self::Index { .. }
            | Self::Storage(_)
            | Self::Task(_) => Disposition::Transient,
        }
    }
}

/// The HelmRepository controller's context; its own backoff and Events, the source
/// controller's storage.
pub struct HelmContext {
    pub base: Base,
    pub storage: Storage,
    pub validators: Validators,
}

impl std::fmt::Debug for HelmContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HelmContext")
            .field("storage", &self.storage)
            .finish_non_exhaustive()
    }
}

impl Runtime for HelmContext {
    fn base(&self) -> &Base {
        &self.base
    }
}

/// The running HelmRepository controller: the reconciler of HTTP(S) repositories and the task
/// that keeps OCI repositories static. Both stop when dropped.
#[derive(Debug)]
pub struct Running {
    pub controller: AbortOnDropHandle<()>,
    pub statics: AbortOnDropHandle<()>,
}

/// Starts the HelmRepository controller on the process's shared watch of the kind.
pub fn start(
    client: &Client,
    watches: &Watches,
    namespace: Option<&str>,
    concurrency: u16,
    synced: &mut Synced,
    storage: Storage,
    shutdown_on_signal: bool,
) -> Running {
    let ctx = Arc::new(HelmContext {
        base: Base::new(client.clone(), crate::CONTROLLER_NAME),
        storage: storage.clone(),
        validators: Validators::default(),
    });
    // OCI repositories never enter the reconciler, which would put Flux's finalizer on them.
    let subscription = watches.subscribe::<HelmRepository>(namespace, synced);
    let store = subscription.store();
    let trigger = subscription
        .changed(weir_runtime::trigger::reconcile_trigger::<HelmRepository>)
        .filter(|repo| std::future::ready(!repo.spec.is_oci()));
    let controller = kube::runtime::Controller::for_shared_stream(trigger, store)
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency));
    let controller = weir_runtime::controller::spawn(controller, ctx, shutdown_on_signal);
    let statics = watches.subscribe::<HelmRepository>(namespace, synced);
    let client = client.clone();
    let statics = AbortOnDropHandle::new(tokio::spawn(async move {
        statics
            .for_each(|repo| keep_static(&client, &storage, repo))
            .await;
    }));
    Running {
        controller,
        statics,
    }
}

/// Whether an OCI HelmRepository holds what Flux removes from one: its finalizer or any status.
fn needs_to_be_made_static(repo: &HelmRepository) -> bool {
    repo.spec.is_oci()
        && (repo.finalizers().iter().any(|f| f == FINALIZER)
            || repo.status.as_ref().is_some_and(|s| !s.is_empty()))
        && !(repo.spec.suspend && repo.metadata.deletion_timestamp.is_none())
}

/// Makes an OCI HelmRepository static, as Flux migrates one: its artifacts removed, its status
/// emptied, its finalizer removed (over the version read: a conflict is left to the newer
/// version's event). A failure is logged; the next change of the object retries.
async fn keep_static(client: &Client, storage: &Storage, repo: Arc<HelmRepository>) {
    if !needs_to_be_made_static(&repo) {
        return;
    }
    let namespace = repo.namespace().unwrap_or_default();
    let name = repo.name_any();
    let api: Api<HelmRepository> = Api::namespaced(client.clone(), &namespace);
    let result = async {
        if let Ok(dir) = Storage::object_dir(KIND, &namespace, &name) {
            storage
                .remove_object(&dir)
                .map_err(ControllerError::cleanup)?;
        }
        if repo.finalizers().iter().any(|f| f == FINALIZER) {
            // The list without Flux's finalizer, written only over the version read (a merge
            // patch replaces the whole list).
            let kept: Vec<&String> = repo
                .finalizers()
                .iter()
                .filter(|f| *f != FINALIZER)
                .collect();
            let patch = serde_json::json!({
                "metadata": { "finalizers": kept, "resourceVersion": repo.resource_version() },
            });
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        // Once deleted (the finalizer was the last), there is no status to reset.
        if repo.status.is_some() && repo.metadata.deletion_timestamp.is_none() {
            let reset = serde_json::json!({ "status": null });
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&reset))
                .await?;
        }
        Ok::<_, ControllerError>(())
    }
    .await;
    match result {
        Ok(()) => tracing::info!(namespace, name, "OCI HelmRepository made static"),
        Err(error) => tracing::warn!(
            error = %weir_runtime::chain(&error),
            namespace,
            name,
            "cannot make the OCI HelmRepository static"
        ),
    }
}

/// Writes Reconciling=True and Ready=Unknown before a new generation's or a new index's work.
type Progress<'a> = weir_runtime::progress::Progress<'a, HelmRepository>;

/// One reconcile of a live HTTP(S) HelmRepository: the steps, the conclusion, one status write.
/// Deleting it removes its artifacts.
impl Reconciler<HelmRepository> for HelmContext {
    async fn apply(
        &self,
        api: &Api<HelmRepository>,
        repo: Arc<HelmRepository>,
    ) -> Result<Action, ControllerError> {
        if repo.spec.is_oci() {
            // Queued before it became OCI; the static task has it now.
            return Ok(Action::await_change());
        }
        let mut pass = Pass::begin(api, &*repo, FIELD_MANAGER).await;
        let mut redactor = Redactor::default();
        redactor.add_url_credentials(&repo.spec.url);
        let result = match self.steps(&repo, &mut redactor, &mut pass.progress).await {
            Ok(stored) => succeeded(&mut pass.status, &repo, stored, &redactor),
            Err(error) => failed(&mut pass.status, &repo, &error, &redactor),
        };
        let interval = repo.spec.interval();
        let ending = Ending::new("Fetch", Some(schedule::jittered(interval)), Some(interval));
        Ok(pass.finish(self, &result, ending).await?)
    }

    async fn cleanup(&self, repo: Arc<HelmRepository>) -> Result<Action, ControllerError> {
        self.storage
            .remove_artifacts_of(&*repo)
            .map_err(ControllerError::cleanup)?;
        self.validators
            .forget(&weir_runtime::controller::object_key(&*repo));
        Ok(Action::await_change())
    }
}

/// What a successful fetch came to.
#[derive(Debug)]
enum Stored {
    /// The index has the stored artifact's revision: nothing was written.
    Unchanged(Artifact),
    /// A new index was stored.
    New { artifact: Artifact, note: String },
}

impl HelmContext {
    /// The steps: the index URL, the client and credentials, the fetch (conditional when the
    /// stored index has a validator), then, when the index changed, validation and storage.
    async fn steps(
        &self,
        repo: &HelmRepository,
        redactor: &mut Redactor,
        progress: &mut Progress<'_>,
    ) -> Result<Stored, HelmRepositoryError> {
        let url = helm_index::index_url(&repo.spec.url).map_err(HelmRepositoryError::InvalidUrl)?;
        let access = Access::load(&self.base.client, repo, redactor).await?;
        let key = weir_runtime::controller::object_key(repo);
        let current = repo
            .status
            .as_ref()
            .and_then(|s| s.artifact.clone())
            .filter(|a| self.storage.exists(&a.path))
            .map(|mut a| {
                a.url = self.storage.url(&a.path);
                a
            });
        let validator = current.as_ref().and_then(|artifact| {
            self.validators
                .etag(&key, url.as_str(), &artifact.revision)
                .map(|etag| (etag, artifact.clone()))
        });
        let etag = validator.as_ref().map(|(etag, _)| etag.clone());
        let fetched = access.fetch(url.clone(), repo.spec.timeout(), etag).await?;
        let (bytes, etag) = match (fetched, validator) {
            (Fetched::Index { bytes, etag }, _) => (bytes, etag),
            (Fetched::NotModified, Some((_, artifact))) => {
                return Ok(Stored::Unchanged(artifact));
            }
            // `fetch` answers NotModified only to a conditional request.
            (Fetched::NotModified, None) => {
                return Err(HelmRepositoryError::Fetch {
                    url: url.to_string(),
                    source: FetchError::Status(reqwest::StatusCode::NOT_MODIFIED),
                });
            }
        };
        let revision = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        let stored = match current {
            Some(artifact) if artifact.revision == revision => Stored::Unchanged(artifact),
            current => {
                self.store_new(repo, &url, bytes, &revision, current.is_some(), progress)
                    .await?
            }
        };
        self.validators.record(&key, url.as_str(), etag, &revision);
        Ok(stored)
    }

    /// Validates a new index and stores it, marked progressing first (with `ArtifactOutdated`
    /// when it replaces an artifact).
    async fn store_new(
        &self,
        repo: &HelmRepository,
        url: &url::Url,
        bytes: Vec<u8>,
        revision: &str,
        replaces: bool,
        progress: &mut Progress<'_>,
    ) -> Result<Stored, HelmRepositoryError> {
        let index = helm_index::validate(&bytes).map_err(|source| HelmRepositoryError::Index {
            url: url.to_string(),
            source,
        })?;
        let message = format!("new index revision '{revision}'");
        let outdated = replaces.then(|| {
            Condition::new(
                types::ARTIFACT_OUTDATED,
                ConditionStatus::True,
                reasons::NEW_REVISION,
                &message,
            )
            .for_generation(repo.metadata.generation)
        });
        progress
            .mark_with(
                &format!("building artifact: {message}"),
                outdated.as_slice(),
            )
            .await;
        let object_dir = Storage::object_dir(
            KIND,
            &repo.namespace().unwrap_or_default(),
            &repo.name_any(),
        )
        .map_err(HelmRepositoryError::Storage)?;
        let size = bytes.len() as u64;
        let artifact = self.store(&object_dir, revision, bytes).await?;
        tracing::info!(
            revision,
            charts = index.charts,
            versions = index.versions,
            "stored new index"
        );
        let note = format!(
            "stored fetched index of size {} from '{}'",
            helm_index::human_size(size),
            repo.spec.url
        );
        Ok(Stored::New { artifact, note })
    }

    /// Writes the index as `index-<hex>.yaml`, points `index.yaml` at it, and collects older
    /// ones.
    async fn store(
        &self,
        object_dir: &str,
        revision: &str,
        bytes: Vec<u8>,
    ) -> Result<Artifact, HelmRepositoryError> {
        let hex = revision.trim_start_matches("sha256:");
        let path = format!("{object_dir}/index-{hex}.yaml");
        let storage = self.storage.clone();
        let (dir, file) = (object_dir.to_owned(), path.clone());
        let size = bytes.len();
        tokio::task::spawn_blocking(move || {
            storage.write_atomic(&file, |f| std::io::Write::write_all(f, &bytes))?;
            storage.link_latest(&dir, &file, "index.yaml")?;
            if let Err(error) = storage.collect_garbage(&dir, &file) {
                tracing::warn!(error = %error, dir, "artifact garbage collection failed");
            }
            Ok::<_, std::io::Error>(())
        })
        .await
        .map_err(HelmRepositoryError::Task)?
        .map_err(HelmRepositoryError::Storage)?;
        Ok(Artifact {
            url: self.storage.url(&path),
            path,
            revision: revision.to_owned(),
            digest: Some(revision.to_owned()),
            last_update_time: Time(Timestamp::now()),
            size: i64::try_from(size).ok(),
            metadata: BTreeMap::new(),
        })
    }
}

/// What a fetch of the index got.
enum Fetched {
    /// The server has nothing newer than the index whose `ETag` was sent (304).
    NotModified,
    /// The index, and its `ETag` when the server sent one.
    Index {
        bytes: Vec<u8>,
        etag: Option<String>,
    },
}

/// The `ETag` each object's stored index was served with, to ask for the index conditionally
/// next time. In memory: after a restart the first fetch of each index is a whole one.
#[derive(Debug, Default)]
pub struct Validators(Mutex<HashMap<String, Validator>>);

#[derive(Debug)]
struct Validator {
    url: String,
    etag: String,
    revision: String,
}

impl Validators {
    /// The `ETag` to send for `key`'s index at `url`, when the stored index (`revision`) is the
    /// one it was served with.
    fn etag(&self, key: &str, url: &str, revision: &str) -> Option<String> {
        let validators = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        validators
            .get(key)
            .filter(|v| v.url == url && v.revision == revision)
            .map(|v| v.etag.clone())
    }

    /// Records what the index now stored for `key` was served with (forgets it without one).
    fn record(&self, key: &str, url: &str, etag: Option<String>, revision: &str) {
        let mut validators = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match etag {
            Some(etag) => {
                validators.insert(
                    key.to_owned(),
                    Validator {
                        url: url.to_owned(),
                        etag,
                        revision: revision.to_owned(),
                    },
                );
            }
            None => {
                validators.remove(key);
            }
        }
    }

    fn forget(&self, key: &str) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }
}

/// How the index (and, for HelmCharts, the chart archives) is reached: TLS trust and client
/// certificate, and basic auth.
pub(crate) struct Access {
    client: reqwest::Client,
    basic: Option<(String, String)>,
}

impl Access {
    /// Reads `certSecretRef` and `secretRef`; every secret value read is added to `redactor`.
    pub(crate) async fn load(
        client: &Client,
        repo: &HelmRepository,
        redactor: &mut Redactor,
    ) -> Result<Self, HelmRepositoryError> {
        let namespace = repo.namespace().unwrap_or_default();
        let mut builder = reqwest::Client::builder();
        if let Some(r) = &repo.spec.cert_secret_ref {
            let data = read_secret(client, &namespace, &r.name).await?;
            let secret = format!("{namespace}/{}", r.name);
            builder = with_tls(builder, &data, &secret)?;
        }
        let basic = match &repo.spec.secret_ref {
            Some(r) => {
                let data = read_secret(client, &namespace, &r.name).await?;
                let basic = basic_auth(&data, &format!("{namespace}/{}", r.name))?;
                if let Some((_, password)) = &basic {
                    redactor.add(password.clone());
                }
                basic
            }
            None => None,
        };
        let client = builder.build().map_err(HelmRepositoryError::Client)?;
        Ok(Self { client, basic })
    }

    /// Downloads the index at `url` within `timeout`, refusing one larger than
    /// [`MAX_INDEX_SIZE`] before reading past it. With `etag` (the stored index's), asks only
    /// for a different one (`If-None-Match`).
    async fn fetch(
        &self,
        url: url::Url,
        timeout: Duration,
        etag: Option<String>,
    ) -> Result<Fetched, HelmRepositoryError> {
        let failed = |source: FetchError| HelmRepositoryError::Fetch {
            url: url.to_string(),
            source,
        };
        let mut request = self.client.get(url.clone()).timeout(timeout);
        if let Some((user, password)) = &self.basic {
            request = request.basic_auth(user, Some(password));
        }
        let conditional = etag.is_some();
        if let Some(etag) = etag {
            request = request.header(reqwest::header::IF_NONE_MATCH, etag);
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| failed(FetchError::Request(e.without_url())))?;
        if conditional && response.status() == reqwest::StatusCode::NOT_MODIFIED {
            return Ok(Fetched::NotModified);
        }
        if !response.status().is_success() {
            return Err(failed(FetchError::Status(response.status())));
        }
        let etag = response
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if response
            .content_length()
            .is_some_and(|n| n > MAX_INDEX_SIZE)
        {
            return Err(failed(FetchError::TooLarge(IndexError::TooLarge)));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| failed(FetchError::Body(e.without_url())))?
        {
            if (bytes.len() + chunk.len()) as u64 > MAX_INDEX_SIZE {
                return Err(failed(FetchError::TooLarge(IndexError::TooLarge)));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Fetched::Index { bytes, etag })
    }
}

impl Access {
    /// Downloads `url` within `timeout`, at most `limit` bytes; sends the basic auth credentials
    /// only when `credentials` (a HelmChart sends them to the repository's host, or anywhere
    /// with `passCredentials`).
    pub(crate) async fn download(
        &self,
        url: &url::Url,
        timeout: Duration,
        credentials: bool,
        limit: u64,
    ) -> Result<Vec<u8>, FetchError> {
        let mut request = self.client.get(url.clone()).timeout(timeout);
        if let Some((user, password)) = self.basic.as_ref().filter(|_| credentials) {
            request = request.basic_auth(user, Some(password));
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| FetchError::Request(e.without_url()))?;
        if !response.status().is_success() {
            return Err(FetchError::Status(response.status()));
        }
        if response.content_length().is_some_and(|n| n > limit) {
            return Err(FetchError::Exceeds(limit));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| FetchError::Body(e.without_url()))?
        {
            if (bytes.len() + chunk.len()) as u64 > limit {
                return Err(FetchError::Exceeds(limit));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }
}

async fn read_secret(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<BTreeMap<String, Vec<u8>>, HelmRepositoryError> {
    Api::<Secret>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .map(weir_runtime::secrets::data)
        .map_err(|source| HelmRepositoryError::SecretUnreadable {
            secret: format!("{namespace}/{name}"),
            source,
        })
}

/// `username` and `password` of a `secretRef`: both or neither (a Secret may hold neither).
fn basic_auth(
    data: &BTreeMap<String, Vec<u8>>,
    secret: &str,
) -> Result<Option<(String, String)>, HelmRepositoryError> {
    let text = |key: &str| {
        data.get(key)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .filter(|v| !v.is_empty())
    };
    match (text("username"), text("password")) {
        (Some(user), Some(password)) => Ok(Some((user, password))),
        (None, None) => Ok(None),
        _ => Err(HelmRepositoryError::SecretInvalid {
            secret: secret.to_owned(),
            why: "required fields 'username' and 'password'",
        }),
    }
}

/// The `certSecretRef`'s `ca.crt` (trusted besides the system's roots) and `tls.crt`/`tls.key`
/// (the client certificate); at least one of them, and both halves of a client certificate.
fn with_tls(
    mut builder: reqwest::ClientBuilder,
    data: &BTreeMap<String, Vec<u8>>,
    secret: &str,
) -> Result<reqwest::ClientBuilder, HelmRepositoryError> {
    let invalid = |why| HelmRepositoryError::SecretInvalid {
        secret: secret.to_owned(),
        why,
    };
    let unusable = |source| HelmRepositoryError::TlsUnusable {
        secret: secret.to_owned(),
        source,
    };
    let ca = data.get("ca.crt");
    let identity = match (data.get("tls.crt"), data.get("tls.key")) {
        (Some(cert), Some(key)) => Some([cert.as_slice(), b"\n", key.as_slice()].concat()),
        (None, None) => None,
        _ => return Err(invalid("'tls.crt' and 'tls.key' go together")),
    };
    if ca.is_none() && identity.is_none() {
        return Err(invalid("no 'ca.crt', nor 'tls.crt' and 'tls.key'"));
    }
    if let Some(pem) = ca {
        let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(unusable)?;
        if certs.is_empty() {
            return Err(invalid("'ca.crt' holds no PEM certificate"));
        }
        builder = builder.tls_certs_merge(certs);
    }
    if let Some(pem) = identity {
        builder = builder.identity(reqwest::Identity::from_pem(&pem).map_err(unusable)?);
    }
    Ok(builder)
}

/// Records success: the artifact and `status.url`, `ArtifactInStorage=True`, the failure
/// conditions removed; a new index is announced.
fn succeeded(
    status: &mut HelmRepositoryStatus,
    repo: &HelmRepository,
    stored: Stored,
    redactor: &Redactor,
) -> StepResult {
    let (artifact, note) = match stored {
        Stored::Unchanged(artifact) => (artifact, None),
        Stored::New { artifact, note } => (artifact, Some(note)),
    };
    let message = format!("stored artifact: revision '{}'", artifact.revision);
    crate::record_stored(
        &mut status.conditions,
        repo.metadata.generation,
        &[types::FETCH_FAILED, types::STORAGE_OPERATION_FAILED],
        reasons::SUCCEEDED,
        &message,
    );
    if let Some(dir) = artifact.path.rsplit_once('/').map(|(dir, _)| dir) {
        status.url = Some(latest_url(&artifact.url, dir, &artifact.path));
    }
    status.artifact = Some(artifact);
    let result = StepResult::succeeded(reasons::SUCCEEDED, message);
    match note {
        Some(note) => result.announcing("NewArtifact", redactor.redact(&note)),
        None => result,
    }
}

/// The URL of `index.yaml` beside the artifact at `path` (served at `url`).
fn latest_url(url: &str, dir: &str, path: &str) -> String {
    let base = url.strip_suffix(path).unwrap_or(url);
    format!("{base}{dir}/index.yaml")
}

/// Records a failure: its negative-polarity condition; the last good artifact stays.
fn failed(
    status: &mut HelmRepositoryStatus,
    repo: &HelmRepository,
    error: &HelmRepositoryError,
    redactor: &Redactor,
) -> StepResult {
    crate::record_failure(
        &mut status.conditions,
        repo.metadata.generation,
        error,
        (error.condition_type(), ConditionStatus::True),
        redactor,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn basic_auth_takes_both_or_neither() {
        assert_eq!(
            basic_auth(&data(&[("username", "u"), ("password", "p")]), "ns/s").unwrap(),
            Some(("u".to_owned(), "p".to_owned()))
        );
        assert_eq!(basic_auth(&data(&[("other", "x")]), "ns/s").unwrap(), None);
        let err = basic_auth(&data(&[("username", "u")]), "ns/s").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid 'ns/s' secret data: required fields 'username' and 'password'"
        );
        assert_eq!(err.reason(), reasons::AUTHENTICATION_FAILED);
    }

    #[test]
    fn a_cert_secret_needs_a_ca_or_a_whole_client_certificate() {
        let builder = reqwest::Client::builder;
        assert!(with_tls(builder(), &data(&[]), "ns/s").is_err());
        assert!(with_tls(builder(), &data(&[("tls.crt", "x")]), "ns/s").is_err());
        let err = with_tls(builder(), &data(&[("ca.crt", "not a certificate")]), "ns/s")
            .err()
            .unwrap();
        assert_eq!(err.reason(), reasons::AUTHENTICATION_FAILED);
    }

    #[test]
    fn failures_map_to_fluxs_reasons_and_conditions() {
        let oci = HelmRepositoryError::InvalidUrl(UrlError::Oci);
        assert_eq!(oci.reason(), reasons::URL_INVALID);
        assert_eq!(oci.disposition(), Disposition::Stalled);
        assert_eq!(
            weir_runtime::chain(&oci),
            "invalid Helm repository URL: 'oci' URL scheme cannot be used with 'default' HelmRepository type"
        );
        let fetch = HelmRepositoryError::Fetch {
            url: "http://charts.example/index.yaml".into(),
            source: FetchError::Status(reqwest::StatusCode::NOT_FOUND),
        };
        assert_eq!(fetch.reason(), reasons::FAILED);
        assert_eq!(fetch.condition_type(), types::FETCH_FAILED);
        assert_eq!(
            weir_runtime::chain(&fetch),
            "failed to fetch Helm repository index 'http://charts.example/index.yaml': 404 Not Found"
        );
        let index = HelmRepositoryError::Index {
            url: "http://charts.example/index.yaml".into(),
            source: IndexError::NoApiVersion,
        };
        assert_eq!(index.reason(), "IndexationFailed");
        assert_eq!(index.disposition(), Disposition::Transient);
        let storage = HelmRepositoryError::Storage(std::io::Error::other("disk full"));
        assert_eq!(storage.condition_type(), types::STORAGE_OPERATION_FAILED);
    }

    #[test]
    fn an_etag_is_sent_only_for_the_index_it_was_served_with() {
        let validators = Validators::default();
        let url = "http://charts.example/index.yaml";
        validators.record("ns/a", url, Some("\"e1\"".into()), "sha256:1");
        assert_eq!(
            validators.etag("ns/a", url, "sha256:1").as_deref(),
            Some("\"e1\"")
        );
        // Another stored revision, another URL, another object: a whole fetch.
        assert_eq!(validators.etag("ns/a", url, "sha256:2"), None);
        assert_eq!(
            validators.etag("ns/a", "http://other/index.yaml", "sha256:1"),
            None
        );
        assert_eq!(validators.etag("ns/b", url, "sha256:1"), None);
        // A server that stops sending one is asked whole again.
        validators.record("ns/a", url, None, "sha256:1");
        assert_eq!(validators.etag("ns/a", url, "sha256:1"), None);
        validators.record("ns/a", url, Some("\"e2\"".into()), "sha256:1");
        validators.forget("ns/a");
        assert_eq!(validators.etag("ns/a", url, "sha256:1"), None);
    }

    #[test]
    fn the_latest_index_is_served_beside_the_artifacts() {
        assert_eq!(
            latest_url(
                "http://storage:9090/helmrepository/ns/app/index-abc.yaml",
                "helmrepository/ns/app",
                "helmrepository/ns/app/index-abc.yaml"
            ),
            "http://storage:9090/helmrepository/ns/app/index.yaml"
        );
    }
}
