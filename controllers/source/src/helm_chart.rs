//! `HelmChart`: a chart of an HTTP(S) or OCI HelmRepository (the highest version in
//! `spec.version`) or of a GitRepository (the chart directory at the path `spec.chart`), stored as
//! a `.tgz` artifact: `source → resolve → pull or package → values → store`, stopping at the first
//! failure; status is summarised and written once.
//!
//! As Flux's source-controller:
//! - the source's artifact is read from this controller's storage (as Flux's controller reads
//!   its own) and checked against the artifact's digest;
//! - from a HelmRepository, the revision is the chart version (the `Revision` strategy changes
//!   nothing: its versions are immutable); the chart's URL is the index entry's first, resolved
//!   against the repository URL when relative; the repository's `secretRef` credentials go to
//!   its own host only, unless `passCredentials`; its `certSecretRef` applies; a chart is at most
//!   10 MiB; without `valuesFiles` the archive is stored as pulled (`ChartPullSucceeded`);
//! - from an OCI HelmRepository (`type: oci`), the chart is the OCI artifact `<url>/<chart>`, its
//!   versions the tags (see [`crate::helm_oci`]); it is then stored as a chart of an HTTP(S)
//!   repository is, and `status.observedSourceArtifactRevision` stays empty (the repository has
//!   no artifact);
//! - from a GitRepository, `spec.version` is ignored: the chart directory is packaged
//!   (`ChartPackageSucceeded`) under its `Chart.yaml` name, less what its `.helmignore` leaves
//!   out; the `Revision` strategy makes the version `<version>+<first 12 hex of the commit>`,
//!   written into the packaged `Chart.yaml` too;
//! - an artifact of the same version is kept until the generation changes, whatever the
//!   source's new revisions (`status.observedSourceArtifactRevision` follows them);
//! - `valuesFiles` (paths in the chart for a HelmRepository, in the artifact for a
//!   GitRepository) are merged in order (later wins, maps merged key by key; the chart's
//!   `values.yaml` only when listed) into the packaged chart's `values.yaml`;
//! - a missing source is `FetchFailed` `SourceUnavailable`, one without an artifact
//!   `NoSourceArtifact`; no version in the range, or no chart at the path, is `BuildFailed`
//!   `InvalidChartReference` naming it, a failed download or a non-chart `ChartPullError`, a
//!   values file missing (without `ignoreMissingValuesFiles`) `ValuesFilesError`; the last
//!   artifact stays;
//! - `status.url` serves the latest artifact (`latest.tar.gz`).
//!
//! Where Weir differs: charts of Buckets are not built (the schema rejects them); an OCI chart's
//! `verify` is not implemented (the schema leaves it out); a GitRepository chart's
//! dependencies are not built: each must be vendored in its `charts/` (otherwise
//! `DependencyBuildError` names them); and a packaged archive is Weir's re-archive of the chart's
//! files with the merged `values.yaml` (and versioned `Chart.yaml`), not Helm's `chartutil.Save`
//! output (the same files, the others not re-serialised).

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{Api, Client, ResourceExt, api::ObjectMeta, runtime::controller::Action};
use sha2::{Digest, Sha256};
use weir_api::{
    Artifact, Condition, ConditionStatus, GitRepository, HelmChart, HelmChartStatus,
    HelmRepository, condition,
    helm_chart::{self as api, HelmChartSourceKind, ReconcileStrategy},
    reasons, types,
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
    helm_chart_build::{
        self, ArchiveError, ChartArchive, MAX_CHART_SIZE, ReferenceError, UrlError, ValuesError,
    },
    helm_oci::{self, OciAccess, OciError},
    helm_repository::{Access, FetchError, HelmRepositoryError},
    storage::Storage,
};

/// The kind's name, for storage paths.
const KIND: &str = "HelmChart";

/// Why a HelmChart reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum HelmChartError {
    #[error("failed to get source: {kind} '{name}'")]
    SourceUnavailable {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Oci(OciError),
    #[error("no artifact available for {kind} source '{name}'")]
    NoSourceArtifact { kind: &'static str, name: String },
    #[error("failed to read the artifact of {kind} '{name}'")]
    SourceArtifact {
        kind: &'static str,
        name: String,
        #[source]
        source: ArchiveError,
    },
    #[error("artifact of {kind} '{name}' does not match its digest (expected {expected})")]
    SourceDigest {
        kind: &'static str,
        name: String,
        expected: String,
    },
    #[error("invalid chart reference: path '{0}' leaves the source")]
    ChartPath(String),
    #[error("invalid chart reference: no chart at path '{path}'")]
    NoChartAtPath {
        path: String,
        #[source]
        source: ArchiveError,
    },
    #[error("chart package error: chart version '{0}' is not semver")]
    ChartVersion(String),
    #[error(
        "dependency build error: dependencies {0:?} are not in charts/ (Weir does not build chart dependencies: vendor them)"
    )]
    Dependencies(Vec<String>),
    #[error("invalid chart reference: failed to get chart version for remote reference")]
    Reference(#[source] ReferenceError),
    #[error("chart pull error: failed to get chart URL")]
    ChartUrl(#[source] UrlError),
    #[error("chart pull error: cannot reach the repository")]
    Access(#[source] HelmRepositoryError),
    #[error("chart pull error: failed to download chart '{url}'")]
    Download {
        url: String,
        #[source]
        source: FetchError,
    },
    #[error("chart pull error: '{url}' is not a chart archive")]
    NotAChart {
        url: String,
        #[source]
        source: ArchiveError,
    },
    #[error("values files merge error")]
    Values(#[source] ValuesError),
    #[error("chart package error")]
    Package(#[source] std::io::Error),
    #[error("unable to save artifact to storage")]
    Storage(#[source] std::io::Error),
    #[error("the storage task failed")]
    Task(#[source] tokio::task::JoinError),
}

impl HelmChartError {
    /// The negative-polarity condition this failure sets.
    #[must_use]
    pub fn condition_type(&self) -> &'static str {
        match self {
            Self::Oci(e) => e.condition_type(),
            Self::SourceUnavailable { .. }
            | Self::NoSourceArtifact { .. }
            | Self::SourceArtifact { .. }
            | Self::SourceDigest { .. } => types::FETCH_FAILED,
            Self::ChartPath(_)
            | Self::NoChartAtPath { .. }
            | Self::ChartVersion(_)
            | Self::Dependencies(_)
            | Self::Reference(_)
            | Self::ChartUrl(_)
            | Self::Access(_)
            | Self::Download { .. }
            | Self::NotAChart { .. }
            | Self::Values(_)
            | Self::Package(_) => types::BUILD_FAILED,
            Self::Storage(_) | Self::Task(_) => types::STORAGE_OPERATION_FAILED,
        }
    }
}

impl Failure for HelmChartError {
    fn reason(&self) -> &'static str {
        match self {
            Self::SourceUnavailable { .. }
            | Self::SourceArtifact { .. }
            | Self::SourceDigest { .. } => api::SOURCE_UNAVAILABLE_REASON,
            Self::NoSourceArtifact { .. } => api::NO_SOURCE_ARTIFACT_REASON,
            Self::Oci(e) => e.reason(),
            Self::Reference(_) | Self::ChartPath(_) | Self::NoChartAtPath { .. } => {
                api::INVALID_CHART_REFERENCE_REASON
            }
            Self::Dependencies(_) => api::DEPENDENCY_BUILD_ERROR_REASON,
            Self::Access(e) => e.reason(),
            Self::ChartUrl(_) | Self::Download { .. } | Self::NotAChart { .. } => {
                api::CHART_PULL_ERROR_REASON
            }
            Self::Values(_) => api::VALUES_FILES_ERROR_REASON,
            Self::ChartVersion(_) | Self::Package(_) => api::CHART_PACKAGE_ERROR_REASON,
            Self::Storage(_) | Self::Task(_) => reasons::ARCHIVE_OPERATION_FAILED,
        }
    }

    fn disposition(&self) -> Disposition {
        match self {
            Self::Oci(e) => e.disposition(),
            // Only a change of the spec fixes these.
            Self::Reference(ReferenceError::Range { .. })
            | Self::ChartPath(_)
            | Self::Package(_) => Disposition::Stalled,
            Self::SourceUnavailable { .. }
            | Self::NoSourceArtifact { .. }
            | Self::NoChartAtPath { .. }
            | Self::ChartVersion(_)
            | Self::Dependencies(_)
            | Self::SourceArtifact { .. }
            | Self::SourceDigest { .. }
            | Self::Reference(_)
            | Self::ChartUrl(_)
            | Self::Access(_)
            | Self::Download { .. }
            | Self::NotAChart { .. }
            | Self::Values(_)
            | Self::Storage(_)
            | Self::Task(_) => Disposition::Transient,
        }
    }
}

/// The HelmChart controller's context: its own backoff and Events, the source controller's
/// storage.
pub struct ChartContext {
    pub base: Base,
    pub storage: Storage,
}

impl std::fmt::Debug for ChartContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChartContext")
            .field("storage", &self.storage)
            .finish_non_exhaustive()
    }
}

impl Runtime for ChartContext {
    fn base(&self) -> &Base {
        &self.base
    }
}

/// Starts the HelmChart controller on the process's shared watches: its own kind, and the
/// HelmRepositories and GitRepositories, so a new artifact of a source reconciles its charts at
/// once.
pub fn start(
    client: &Client,
    watches: &Watches,
    namespace: Option<&str>,
    concurrency: u16,
    synced: &mut Synced,
    storage: Storage,
    shutdown_on_signal: bool,
) -> AbortOnDropHandle<()> {
    use kube::runtime::reflector::ObjectRef;
    let ctx = Arc::new(ChartContext {
        base: Base::new(client.clone(), crate::CONTROLLER_NAME),
        storage,
    });
    let controller =
        weir_runtime::controller::watch::<HelmChart>(watches, namespace, concurrency, synced);
    let repositories = watches
        .subscribe::<HelmRepository>(namespace, synced)
        .changed(repository_artifact_trigger);
    let gits = watches
        .subscribe::<GitRepository>(namespace, synced)
        .changed(crate::include::artifact_trigger);
    let store = controller.store();
    let dependents = move |kind: HelmChartSourceKind, source: &ObjectMeta| {
        store
            .state()
            .into_iter()
            .filter(|chart| uses(chart, kind, source))
            .map(|chart| ObjectRef::from_obj(&*chart))
            .collect::<Vec<_>>()
    };
    let for_git = dependents.clone();
    let controller = controller
        .watches_shared_stream(repositories, move |repo: Arc<HelmRepository>| {
            dependents(HelmChartSourceKind::HelmRepository, &repo.metadata)
        })
        .watches_shared_stream(gits, move |repo: Arc<GitRepository>| {
            for_git(HelmChartSourceKind::GitRepository, &repo.metadata)
        });
    weir_runtime::controller::spawn(controller, ctx, shutdown_on_signal)
}

/// Whether `chart` takes its chart from the `kind` source `source`.
fn uses(chart: &HelmChart, kind: HelmChartSourceKind, source: &ObjectMeta) -> bool {
    chart.spec.source_ref.kind == kind
        && chart.metadata.namespace == source.namespace
        && Some(&chart.spec.source_ref.name) == source.name.as_ref()
}

/// What of a HelmRepository starts its charts: its artifact's revision and digest, or an OCI
/// repository's generation.
#[allow(clippy::unnecessary_wraps)] // The signature `predicate_filter` asks for.
fn repository_artifact_trigger(repo: &HelmRepository) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let artifact = repo.status.as_ref().and_then(|s| s.artifact.as_ref());
    artifact.map(|a| &a.revision).hash(&mut hasher);
    artifact.map(|a| &a.digest).hash(&mut hasher);
    // An OCI repository has no artifact: a new generation (URL, credentials) starts its charts.
    repo.spec
        .is_oci()
        .then_some(repo.metadata.generation)
        .hash(&mut hasher);
    Some(hasher.finish())
}

/// Writes Reconciling=True and Ready=Unknown before a new generation's or a new chart's work.
type Progress<'a> = weir_runtime::progress::Progress<'a, HelmChart>;

/// One reconcile of a live HelmChart: the steps, the conclusion, one status write. Deleting it
/// removes its artifacts.
impl Reconciler<HelmChart> for ChartContext {
    async fn apply(
        &self,
        api: &Api<HelmChart>,
        chart: Arc<HelmChart>,
    ) -> Result<Action, ControllerError> {
        let mut pass = Pass::begin(api, &*chart, FIELD_MANAGER).await;
        let mut redactor = Redactor::default();
        let result = match self
            .steps(&chart, &mut pass.status, &mut redactor, &mut pass.progress)
            .await
        {
            Ok(built) => succeeded(&mut pass.status, &chart, built, &redactor),
            Err(error) => failed(&mut pass.status, &chart, &error, &redactor),
        };
        let interval = chart.spec.interval();
        let ending = Ending::new("Build", Some(schedule::jittered(interval)), Some(interval));
        Ok(pass.finish(self, &result, ending).await?)
    }

    async fn cleanup(&self, chart: Arc<HelmChart>) -> Result<Action, ControllerError> {
        self.storage
            .remove_artifacts_of(&*chart)
            .map_err(ControllerError::cleanup)?;
        Ok(Action::await_change())
    }
}

/// What a successful reconcile came to.
#[derive(Debug)]
enum Built {
    /// The stored artifact is the chart version the range picks: nothing was written.
    Unchanged(Artifact),
    /// A new chart archive was stored.
    New {
        artifact: Artifact,
        /// The chart's name (its `Chart.yaml`'s).
        name: String,
        /// Flux's build summary (`pulled 'app' chart with version '1.2.0'`).
        summary: String,
        packaged: bool,
        values_files: Vec<String>,
    },
}

impl ChartContext {
    /// The steps of the chart's source kind.
    async fn steps(
        &self,
        chart: &HelmChart,
        status: &mut HelmChartStatus,
        redactor: &mut Redactor,
        progress: &mut Progress<'_>,
    ) -> Result<Built, HelmChartError> {
        match chart.spec.source_ref.kind {
            HelmChartSourceKind::HelmRepository => {
                self.chart_of_repository(chart, status, redactor, progress)
                    .await
            }
            HelmChartSourceKind::GitRepository => self.chart_of_git(chart, status, progress).await,
        }
    }

    /// From a HelmRepository: the repository and its index, the version, then (for a new
    /// version or generation) the pull, the values and the store.
    async fn chart_of_repository(
        &self,
        chart: &HelmChart,
        status: &mut HelmChartStatus,
        redactor: &mut Redactor,
        progress: &mut Progress<'_>,
    ) -> Result<Built, HelmChartError> {
        let namespace = chart.namespace().unwrap_or_default();
        let repo: HelmRepository = self.source(chart, &namespace).await?;
        redactor.add_url_credentials(&repo.spec.url);
        if repo.spec.is_oci() {
            return self
                .chart_of_oci(chart, &namespace, &repo, status, redactor, progress)
                .await;
        }
        let source = repo.status.as_ref().and_then(|s| s.artifact.as_ref());
        let index = self.artifact_of("HelmRepository", &repo, source)?;
        status.observed_source_artifact_revision = source.map(|a| a.revision.clone());
        let (name, range) = (chart.spec.chart.clone(), chart.spec.version.clone());
        let entry = blocking(move || {
            helm_chart_build::select_version(&index.read()?, &name, &range)
                .map_err(HelmChartError::Reference)
        })
        .await?;
        if let Some(artifact) = self.unchanged(chart, status, &chart.spec.chart, &entry.version) {
            return Ok(Built::Unchanged(artifact));
        }
        let message = format!(
            "pulling '{}' chart with version '{}'",
            chart.spec.chart, entry.version
        );
        self.mark_new(chart, status, &message, progress).await;
        self.build(chart, &namespace, &repo, &entry, redactor).await
    }

    /// From an OCI HelmRepository: the tags of the chart's repository, the version, then (for a
    /// new version or generation) the pull, the values and the store.
    async fn chart_of_oci(
        &self,
        chart: &HelmChart,
        namespace: &str,
        repo: &HelmRepository,
        status: &mut HelmChartStatus,
        redactor: &mut Redactor,
        progress: &mut Progress<'_>,
    ) -> Result<Built, HelmChartError> {
        status.observed_source_artifact_revision = None;
        let oci = OciAccess::load(&self.base.client, repo, redactor)
            .await
            .map_err(HelmChartError::Oci)?;
        let name = &chart.spec.chart;
        let tags = oci.tags(name).await.map_err(HelmChartError::Oci)?;
        let (version, tag) = helm_oci::select_tag(&tags, name, &chart.spec.version)
            .map_err(HelmChartError::Reference)?;
        if let Some(artifact) = self.unchanged(chart, status, name, &version) {
            return Ok(Built::Unchanged(artifact));
        }
        let message = format!("pulling '{name}' chart with version '{version}'");
        self.mark_new(chart, status, &message, progress).await;
        let (reference, bytes) = oci.pull(name, &tag).await.map_err(HelmChartError::Oci)?;
        self.store_pulled(chart, namespace, &reference, &version, bytes)
            .await
    }

    /// From a GitRepository: the chart directory at `spec.chart` in its artifact, its version
    /// (with the commit for the `Revision` strategy), then (for a new version or generation) the
    /// values, the package and the store.
    async fn chart_of_git(
        &self,
        chart: &HelmChart,
        status: &mut HelmChartStatus,
        progress: &mut Progress<'_>,
    ) -> Result<Built, HelmChartError> {
        let namespace = chart.namespace().unwrap_or_default();
        let repo: GitRepository = self.source(chart, &namespace).await?;
        let source = repo.status.as_ref().and_then(|s| s.artifact.as_ref());
        let artifact = self.artifact_of("GitRepository", &repo, source)?;
        let revision = source.map(|a| a.revision.clone()).unwrap_or_default();
        status.observed_source_artifact_revision = Some(revision.clone());
        let dir = crate::include::normalize(&chart.spec.chart)
            .ok_or_else(|| HelmChartError::ChartPath(chart.spec.chart.clone()))?;
        let path = chart.spec.chart.clone();
        let (files, archive) = blocking(move || {
            let files = helm_chart_build::read_files(&artifact.read()?)
                .map_err(|source| artifact.unreadable(source))?;
            let archive = ChartArchive::from_dir(&files, &dir)
                .map_err(|source| HelmChartError::NoChartAtPath { path, source })?;
            Ok((files, archive))
        })
        .await?;
        let version = chart_version(
            &archive.metadata.version,
            (chart.spec.reconcile_strategy == ReconcileStrategy::Revision).then_some(&*revision),
        )?;
        if let Some(artifact) = self.unchanged(chart, status, &archive.metadata.name, &version) {
            return Ok(Built::Unchanged(artifact));
        }
        let message = format!(
            "packaging '{}' chart with version '{version}'",
            archive.metadata.name
        );
        self.mark_new(chart, status, &message, progress).await;
        let missing =
            archive
                .missing_dependencies()
                .map_err(|source| HelmChartError::NoChartAtPath {
                    path: chart.spec.chart.clone(),
                    source,
                })?;
        if !missing.is_empty() {
            return Err(HelmChartError::Dependencies(missing));
        }
        let mut replace = BTreeMap::new();
        if version != archive.metadata.version {
            let chart_yaml = archive
                .chart_yaml_with_version(&version)
                .map_err(|source| HelmChartError::NoChartAtPath {
                    path: chart.spec.chart.clone(),
                    source,
                })?;
            replace.insert("Chart.yaml", chart_yaml);
        }
        let read = |file: &str| {
            let wanted = crate::include::normalize(file)?;
            files
                .iter()
                .find(|(name, _)| *name == wanted)
                .map(|(_, content)| content.as_slice())
        };
        let values_files = Self::values(chart, read, &mut replace)?;
        let bytes = archive.repack(&replace).map_err(HelmChartError::Package)?;
        let artifact = self
            .store(chart, &namespace, &archive.metadata.name, &version, bytes)
            .await?;
        Ok(Built::New {
            artifact,
            name: archive.metadata.name.clone(),
            summary: summary(true, &archive.metadata.name, &version, &values_files),
            packaged: true,
            values_files,
        })
    }

    /// The stored artifact, when it is chart `name`'s at `version` and this generation's:
    /// nothing to build.
    fn unchanged(
        &self,
        chart: &HelmChart,
        status: &HelmChartStatus,
        name: &str,
        version: &str,
    ) -> Option<Artifact> {
        let handled = status.observed_generation == chart.metadata.generation
            && status.observed_chart_name.as_deref() == Some(name);
        status
            .artifact
            .clone()
            .filter(|a| handled && a.revision == version && self.storage.exists(&a.path))
            .map(|mut a| {
                a.url = self.storage.url(&a.path);
                a
            })
    }

    /// Marks a build in progress (with `ArtifactOutdated` when it replaces an artifact).
    async fn mark_new(
        &self,
        chart: &HelmChart,
        status: &HelmChartStatus,
        message: &str,
        progress: &mut Progress<'_>,
    ) {
        let outdated = status.artifact.as_ref().map(|_| {
            Condition::new(
                types::ARTIFACT_OUTDATED,
                ConditionStatus::True,
                reasons::NEW_REVISION,
                message,
            )
            .for_generation(chart.metadata.generation)
        });
        progress
            .mark_with(
                &format!("building artifact: {message}"),
                outdated.as_slice(),
            )
            .await;
    }

    /// Step: `spec.valuesFiles` merged (read by `read`) into the `values.yaml` of `replace`, when
    /// there are any. Returns the files merged.
    fn values<'a>(
        chart: &HelmChart,
        read: impl Fn(&str) -> Option<&'a [u8]>,
        replace: &mut BTreeMap<&'static str, Vec<u8>>,
    ) -> Result<Vec<String>, HelmChartError> {
        if chart.spec.values_files.is_empty() {
            return Ok(vec![]);
        }
        let (values, used) = helm_chart_build::merge_values_files(
            read,
            &chart.spec.values_files,
            chart.spec.ignore_missing_values_files,
        )
        .map_err(HelmChartError::Values)?;
        replace.insert("values.yaml", values);
        Ok(used)
    }

    /// Steps: download the chart archive of an HTTP(S) repository, then store it.
    async fn build(
        &self,
        chart: &HelmChart,
        namespace: &str,
        repo: &HelmRepository,
        entry: &helm_chart_build::ChartVersion,
        redactor: &mut Redactor,
    ) -> Result<Built, HelmChartError> {
        let url = helm_chart_build::chart_url(&repo.spec.url, entry, &chart.spec.chart)
            .map_err(HelmChartError::ChartUrl)?;
        let access = Access::load(&self.base.client, repo, redactor)
            .await
            .map_err(HelmChartError::Access)?;
        let credentials = repo.spec.pass_credentials || same_host(&url, &repo.spec.url);
        let bytes = access
            .download(&url, repo.spec.timeout(), credentials, MAX_CHART_SIZE)
            .await
            .map_err(|source| HelmChartError::Download {
                url: url.to_string(),
                source,
            })?;
        self.store_pulled(chart, namespace, url.as_str(), &entry.version, bytes)
            .await
    }

    /// Steps: check a pulled chart archive (from `origin`) is the chart at `version`, merge the
    /// values files into it, store it.
    async fn store_pulled(
        &self,
        chart: &HelmChart,
        namespace: &str,
        origin: &str,
        version: &str,
        bytes: Vec<u8>,
    ) -> Result<Built, HelmChartError> {
        let not_a_chart = |source| HelmChartError::NotAChart {
            url: origin.to_owned(),
            source,
        };
        let archive = ChartArchive::read(&bytes).map_err(not_a_chart)?;
        archive
            .expect(&chart.spec.chart, version)
            .map_err(not_a_chart)?;
        let mut replace = BTreeMap::new();
        let values_files = Self::values(chart, |f| archive.file(f), &mut replace)?;
        let packaged = !replace.is_empty();
        let bytes = if packaged {
            archive.repack(&replace).map_err(HelmChartError::Package)?
        } else {
            bytes
        };
        let artifact = self
            .store(chart, namespace, &archive.metadata.name, version, bytes)
            .await?;
        let summary = summary(packaged, &archive.metadata.name, version, &values_files);
        Ok(Built::New {
            artifact,
            name: archive.metadata.name,
            summary,
            packaged,
            values_files,
        })
    }

    /// Step: the source named by `sourceRef`, of kind `S`.
    async fn source<S>(&self, chart: &HelmChart, namespace: &str) -> Result<S, HelmChartError>
    where
        S: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let name = &chart.spec.source_ref.name;
        Api::<S>::namespaced(self.base.client.clone(), namespace)
            .get(name)
            .await
            .map_err(|source| HelmChartError::SourceUnavailable {
                kind: chart.spec.source_ref.kind.as_str(),
                name: format!("{namespace}/{name}"),
                source,
            })
    }

    /// The reader of a source's stored artifact; without one, `NoSourceArtifact`.
    fn artifact_of(
        &self,
        kind: &'static str,
        source: &impl kube::Resource,
        artifact: Option<&Artifact>,
    ) -> Result<SourceArtifact, HelmChartError> {
        let name = format!(
            "{}/{}",
            source.meta().namespace.clone().unwrap_or_default(),
            source.meta().name.clone().unwrap_or_default()
        );
        let artifact = artifact
            .cloned()
            .ok_or_else(|| HelmChartError::NoSourceArtifact {
                kind,
                name: name.clone(),
            })?;
        Ok(SourceArtifact {
            storage: self.storage.clone(),
            kind,
            name,
            artifact,
        })
    }

    /// Writes the chart as `<chart>-<version>.tgz`, points `latest.tar.gz` at it, and collects
    /// older ones.
    async fn store(
        &self,
        chart: &HelmChart,
        namespace: &str,
        name: &str,
        version: &str,
        bytes: Vec<u8>,
    ) -> Result<Artifact, HelmChartError> {
        let object_dir = Storage::object_dir(KIND, namespace, &chart.name_any())
            .map_err(HelmChartError::Storage)?;
        let file = format!("{name}-{version}.tgz");
        if file.contains(['/', '\\']) || file.starts_with('.') {
            return Err(HelmChartError::Storage(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("unusable artifact file name {file:?}"),
            )));
        }
        let path = format!("{object_dir}/{file}");
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        let size = bytes.len();
        let storage = self.storage.clone();
        let (dir, target) = (object_dir.clone(), path.clone());
        tokio::task::spawn_blocking(move || {
            storage.write_atomic(&target, |f| std::io::Write::write_all(f, &bytes))?;
            storage.link_latest(&dir, &target, "latest.tar.gz")?;
            if let Err(error) = storage.collect_garbage(&dir, &target) {
                tracing::warn!(error = %error, dir, "artifact garbage collection failed");
            }
            Ok::<_, std::io::Error>(())
        })
        .await
        .map_err(HelmChartError::Task)?
        .map_err(HelmChartError::Storage)?;
        tracing::info!(chart = name, version, "stored new chart");
        Ok(Artifact {
            url: self.storage.url(&path),
            path,
            revision: version.to_owned(),
            digest: Some(digest),
            last_update_time: Time(Timestamp::now()),
            size: i64::try_from(size).ok(),
            metadata: BTreeMap::new(),
        })
    }
}

/// A source's artifact in this controller's storage, to read off the async workers.
struct SourceArtifact {
    storage: Storage,
    kind: &'static str,
    name: String,
    artifact: Artifact,
}

impl SourceArtifact {
    /// Step: the artifact's bytes, checked against its digest.
    fn read(&self) -> Result<Vec<u8>, HelmChartError> {
        let bytes = std::fs::read(self.storage.path(&self.artifact.path))
            .map_err(|source| self.unreadable(ArchiveError::Read(source)))?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        let expected = self.artifact.digest.clone().unwrap_or_default();
        if digest != expected {
            return Err(HelmChartError::SourceDigest {
                kind: self.kind,
                name: self.name.clone(),
                expected,
            });
        }
        Ok(bytes)
    }

    fn unreadable(&self, source: ArchiveError) -> HelmChartError {
        HelmChartError::SourceArtifact {
            kind: self.kind,
            name: self.name.clone(),
            source,
        }
    }
}

/// Runs disk- and CPU-bound work off the async workers: an index of tens of MiB takes seconds
/// to parse.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, HelmChartError> + Send + 'static,
) -> Result<T, HelmChartError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(HelmChartError::Task)?
}

/// The version of a GitRepository's chart: its `Chart.yaml` version, and with the `Revision`
/// strategy the source's commit as build metadata (`1.2.0+0123456789ab`: 12 hex digits, as Flux
/// keeps label values short), replacing any the chart had.
fn chart_version(version: &str, revision: Option<&str>) -> Result<String, HelmChartError> {
    let parsed = semver::Version::parse(version.trim_start_matches(['v', 'V']))
        .map_err(|_| HelmChartError::ChartVersion(version.to_owned()))?;
    let Some(revision) = revision else {
        return Ok(version.to_owned());
    };
    // `main@sha1:<hex>` (Flux's revision format), or a bare `sha1:<hex>`.
    let hash = revision.rsplit_once('@').map_or(revision, |(_, h)| h);
    let hash = hash.rsplit_once(':').map_or(hash, |(_, h)| h);
    let short: String = hash.chars().take(12).collect();
    let mut with = parsed;
    with.build = semver::BuildMetadata::new(&short)
        .map_err(|_| HelmChartError::ChartVersion(format!("{version}+{short}")))?;
    Ok(with.to_string())
}

/// Whether `url` is on the repository URL's host and port (where its credentials may go).
fn same_host(url: &url::Url, repository: &str) -> bool {
    url::Url::parse(repository).is_ok_and(|repo| {
        repo.host_str() == url.host_str()
            && repo.port_or_known_default() == url.port_or_known_default()
    })
}

/// Flux's build summary: `pulled` or `packaged`, the chart, its version, and the merged values
/// files.
fn summary(packaged: bool, name: &str, version: &str, values_files: &[String]) -> String {
    let action = if packaged { "packaged" } else { "pulled" };
    let mut text = format!("{action} '{name}' chart with version '{version}'");
    if !values_files.is_empty() {
        text.push_str(" and merged values files [");
        text.push_str(&values_files.join(" "));
        text.push(']');
    }
    text
}

/// Records success: the artifact, `status.url`, the observed chart name and values files,
/// `ArtifactInStorage=True` with the build's reason and summary, the failure conditions removed;
/// a new chart is announced. An unchanged artifact keeps the summary it was built with.
fn succeeded(
    status: &mut HelmChartStatus,
    chart: &HelmChart,
    built: Built,
    redactor: &Redactor,
) -> StepResult {
    let previous = condition::find_condition(&status.conditions, types::ARTIFACT_IN_STORAGE)
        .map(|c| (c.reason.clone(), c.message.clone()));
    let (artifact, reason, message, new) = match built {
        Built::Unchanged(artifact) => {
            let (reason, message) = previous.unwrap_or_else(|| {
                (
                    api::CHART_PULL_SUCCEEDED_REASON.to_owned(),
                    format!("stored artifact: revision '{}'", artifact.revision),
                )
            });
            (artifact, reason, message, false)
        }
        Built::New {
            artifact,
            name,
            summary,
            packaged,
            values_files,
        } => {
            status.observed_chart_name = Some(name);
            status.observed_values_files = values_files;
            let reason = if packaged {
                api::CHART_PACKAGE_SUCCEEDED_REASON
            } else {
                api::CHART_PULL_SUCCEEDED_REASON
            };
            (artifact, reason.to_owned(), summary, true)
        }
    };
    crate::record_stored(
        &mut status.conditions,
        chart.metadata.generation,
        &[
            types::FETCH_FAILED,
            types::BUILD_FAILED,
            types::STORAGE_OPERATION_FAILED,
        ],
        &reason,
        &message,
    );
    if let Some(dir) = artifact.path.rsplit_once('/').map(|(dir, _)| dir) {
        let base = artifact
            .url
            .strip_suffix(&artifact.path)
            .unwrap_or(&artifact.url);
        status.url = Some(format!("{base}{dir}/latest.tar.gz"));
    }
    status.artifact = Some(artifact);
    let result = StepResult::succeeded(&reason, message.clone());
    if new {
        result.announcing(&reason, redactor.redact(&message))
    } else {
        result
    }
}

/// Records a failure: its negative-polarity condition; the last good artifact stays.
fn failed(
    status: &mut HelmChartStatus,
    chart: &HelmChart,
    error: &HelmChartError,
    redactor: &Redactor,
) -> StepResult {
    crate::record_failure(
        &mut status.conditions,
        chart.metadata.generation,
        error,
        (error.condition_type(), ConditionStatus::True),
        redactor,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_are_fluxs() {
        assert_eq!(
            summary(false, "app", "1.2.0", &[]),
            "pulled 'app' chart with version '1.2.0'"
        );
        assert_eq!(
            summary(
                true,
                "app",
                "1.2.0",
                &["values.yaml".to_owned(), "values-prod.yaml".to_owned()]
            ),
            "packaged 'app' chart with version '1.2.0' and merged values files [values.yaml values-prod.yaml]"
        );
    }

    #[test]
    fn a_revision_strategy_adds_the_commit_to_the_version() {
        let commit = "main@sha1:0123456789abcdef0123456789abcdef01234567";
        assert_eq!(chart_version("1.2.0", None).unwrap(), "1.2.0");
        assert_eq!(
            chart_version("1.2.0", Some(commit)).unwrap(),
            "1.2.0+0123456789ab"
        );
        assert_eq!(
            chart_version("1.2.0+old", Some("sha1:fedcba9876543210")).unwrap(),
            "1.2.0+fedcba987654"
        );
        assert!(matches!(
            chart_version("latest", None),
            Err(HelmChartError::ChartVersion(_))
        ));
    }

    #[test]
    fn credentials_stay_on_the_repositorys_host() {
        let url = |u: &str| url::Url::parse(u).unwrap();
        assert!(same_host(
            &url("http://charts.example/a.tgz"),
            "http://charts.example:80/x"
        ));
        assert!(!same_host(
            &url("http://cdn.example/a.tgz"),
            "http://charts.example"
        ));
        assert!(!same_host(
            &url("http://charts.example:8080/a.tgz"),
            "http://charts.example"
        ));
    }

    #[test]
    fn failures_map_to_fluxs_reasons_and_conditions() {
        let none = HelmChartError::Reference(ReferenceError::NoMatch {
            chart: "app".into(),
            range: ">=3".into(),
        });
        assert_eq!(none.reason(), "InvalidChartReference");
        assert_eq!(none.condition_type(), types::BUILD_FAILED);
        assert_eq!(none.disposition(), Disposition::Transient);
        assert_eq!(
            weir_runtime::chain(&none),
            "invalid chart reference: failed to get chart version for remote reference: no 'app' chart with version matching '>=3' found"
        );
        let values = HelmChartError::Values(ValuesError::Missing("values-dev.yaml".into()));
        assert_eq!(values.reason(), "ValuesFilesError");
        assert_eq!(
            weir_runtime::chain(&values),
            "values files merge error: no values file found at path 'values-dev.yaml'"
        );
        let missing = HelmChartError::NoSourceArtifact {
            kind: "HelmRepository",
            name: "ns/repo".into(),
        };
        assert_eq!(missing.reason(), "NoSourceArtifact");
        assert_eq!(missing.condition_type(), types::FETCH_FAILED);
    }
}
