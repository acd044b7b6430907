//! `HelmChart`: one chart of an HTTP(S) HelmRepository, the highest version in `spec.version`,
//! stored as a `.tgz` artifact: `source → resolve → pull → values → store`, stopping at the
//! first failure; status is summarised and written once.
//!
//! As Flux's source-controller:
//! - the source's index is its stored artifact, read from this controller's storage (as Flux's
//!   controller reads it from its own) and checked against the artifact's digest;
//! - the revision is the chart version (the `Revision` strategy changes nothing for a
//!   HelmRepository, whose versions are immutable); an artifact of the same version is kept
//!   until the generation changes, whatever the repository's new revisions;
//! - the chart's URL is the index entry's first, resolved against the repository URL when
//!   relative; the repository's `secretRef` credentials go to its own host only, unless
//!   `passCredentials`; its `certSecretRef` applies; a chart is at most 10 MiB;
//! - without `valuesFiles` the archive is stored as pulled (`ChartPullSucceeded`); with them,
//!   they are merged in order (later wins, maps merged key by key; the chart's `values.yaml`
//!   only when listed) into the archive's `values.yaml` (`ChartPackageSucceeded`);
//! - a missing source is `FetchFailed` `SourceUnavailable`, one without an artifact
//!   `NoSourceArtifact`; no version in the range is `BuildFailed` `InvalidChartReference`
//!   naming chart and range, a failed download or a non-chart `ChartPullError`, a values file
//!   missing (without `ignoreMissingValuesFiles`) `ValuesFilesError`; the last artifact stays;
//! - `status.url` serves the latest artifact (`latest.tar.gz`).
//!
//! Where Weir differs: charts of GitRepositories and Buckets, and of OCI HelmRepositories, are
//! not built (the schema rejects the first two; an OCI repository is Stalled naming it), and the
//! packaged archive is Weir's re-archive of the pulled one with the merged `values.yaml`, not
//! Helm's `chartutil.Save` output (same files, no Helm-specific re-serialisation of the others).

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{Api, Client, ResourceExt, runtime::controller::Action};
use sha2::{Digest, Sha256};
use weir_api::{
    Artifact, Condition, ConditionStatus, HelmChart, HelmChartStatus, HelmRepository, condition,
    helm_chart as api, reasons, types,
};
use weir_runtime::{
    ControllerError, Disposition, Failure, Redactor,
    conclude::{Ending, conclude},
    controller::{AbortOnDropHandle, Base, Reconciler, Runtime, Synced},
    decision::StepResult,
    schedule,
    status::apply_status,
    watches::Watches,
};

use crate::{
    FIELD_MANAGER,
    helm_chart_build::{
        self, ArchiveError, ChartArchive, MAX_CHART_SIZE, ReferenceError, UrlError, ValuesError,
    },
    helm_repository::{Access, FetchError, HelmRepositoryError},
    storage::Storage,
};

/// The kind's name, for storage paths.
const KIND: &str = "HelmChart";

/// Why a HelmChart reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum HelmChartError {
    #[error("failed to get source: HelmRepository '{name}'")]
    SourceUnavailable {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("charts of OCI HelmRepository '{0}' are not implemented in Weir")]
    OciSource(String),
    #[error("no artifact available for HelmRepository source '{0}'")]
    NoSourceArtifact(String),
    #[error("failed to read the artifact of HelmRepository '{name}'")]
    SourceArtifact {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("artifact of HelmRepository '{name}' does not match its digest (expected {expected})")]
    SourceDigest { name: String, expected: String },
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
            Self::SourceUnavailable { .. }
            | Self::OciSource(_)
            | Self::NoSourceArtifact(_)
            | Self::SourceArtifact { .. }
            | Self::SourceDigest { .. } => types::FETCH_FAILED,
            Self::Reference(_)
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
            Self::NoSourceArtifact(_) => api::NO_SOURCE_ARTIFACT_REASON,
            Self::OciSource(_) | Self::Reference(_) => api::INVALID_CHART_REFERENCE_REASON,
            Self::Access(e) => e.reason(),
            Self::ChartUrl(_) | Self::Download { .. } | Self::NotAChart { .. } => {
                api::CHART_PULL_ERROR_REASON
            }
            Self::Values(_) => api::VALUES_FILES_ERROR_REASON,
            Self::Package(_) => api::CHART_PACKAGE_ERROR_REASON,
            Self::Storage(_) | Self::Task(_) => reasons::ARCHIVE_OPERATION_FAILED,
        }
    }

    fn disposition(&self) -> Disposition {
        match self {
            // Only a change of the spec (or of the repository's type) fixes these.
            Self::OciSource(_)
            | Self::Reference(ReferenceError::Range { .. })
            | Self::Package(_) => Disposition::Stalled,
            Self::SourceUnavailable { .. }
            | Self::NoSourceArtifact(_)
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
/// HelmRepositories, so a new index reconciles the charts of that repository at once.
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
    let store = controller.store();
    let controller =
        controller.watches_shared_stream(repositories, move |repo: Arc<HelmRepository>| {
            store
                .state()
                .into_iter()
                .filter(|chart| uses(chart, &repo))
                .map(|chart| ObjectRef::from_obj(&*chart))
                .collect::<Vec<_>>()
        });
    weir_runtime::controller::spawn(controller, ctx, shutdown_on_signal)
}

/// Whether `chart` takes its chart from `repo`.
fn uses(chart: &HelmChart, repo: &HelmRepository) -> bool {
    chart.namespace() == repo.namespace() && chart.spec.source_ref.name == repo.name_any()
}

/// What of a HelmRepository starts its charts: its artifact's revision and digest.
#[allow(clippy::unnecessary_wraps)] // The signature `predicate_filter` asks for.
fn repository_artifact_trigger(repo: &HelmRepository) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let artifact = repo.status.as_ref().and_then(|s| s.artifact.as_ref());
    artifact.map(|a| &a.revision).hash(&mut hasher);
    artifact.map(|a| &a.digest).hash(&mut hasher);
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
        let previous = chart.status.clone();
        let mut status = previous.clone().unwrap_or_default();
        let mut progress = Progress::new(api, &chart, FIELD_MANAGER);
        if let Some(message) = weir_runtime::progress::new_generation(
            previous.as_ref().and_then(|s| s.observed_generation),
            chart.metadata.generation,
        ) {
            progress.mark(&message).await;
        }
        let mut redactor = Redactor::default();
        let result = match self
            .steps(&chart, &mut status, &mut redactor, &mut progress)
            .await
        {
            Ok(built) => succeeded(&mut status, &chart, built, &redactor),
            Err(error) => failed(&mut status, &chart, &error, &redactor),
        };
        let interval = chart.spec.interval();
        let ending = Ending::new("Build", Some(schedule::jittered(interval)), Some(interval));
        let action = conclude(self, &*chart, &mut status, &result, ending).await;
        let current = progress.into_written().or(previous);
        apply_status(api, &*chart, current.as_ref(), &status, FIELD_MANAGER).await?;
        Ok(action)
    }

    async fn cleanup(&self, chart: Arc<HelmChart>) -> Result<Action, ControllerError> {
        let dir = Storage::object_dir(
            KIND,
            &chart.namespace().unwrap_or_default(),
            &chart.name_any(),
        )
        .map_err(ControllerError::cleanup)?;
        self.storage
            .remove_object(&dir)
            .map_err(ControllerError::cleanup)?;
        tracing::info!(dir, "removed artifacts");
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
        /// Flux's build summary (`pulled 'app' chart with version '1.2.0'`).
        summary: String,
        packaged: bool,
        values_files: Vec<String>,
    },
}

impl ChartContext {
    /// The steps: the source and its index, the version, then (for a new version or
    /// generation) the pull, the values and the store.
    async fn steps(
        &self,
        chart: &HelmChart,
        status: &mut HelmChartStatus,
        redactor: &mut Redactor,
        progress: &mut Progress<'_>,
    ) -> Result<Built, HelmChartError> {
        let namespace = chart.namespace().unwrap_or_default();
        let repo = self.source(chart, &namespace).await?;
        redactor.add_url_credentials(&repo.spec.url);
        let (index, revision) = self.read_index(&repo)?;
        status.observed_source_artifact_revision = Some(revision);
        let entry =
            helm_chart_build::select_version(&index, &chart.spec.chart, &chart.spec.version)
                .map_err(HelmChartError::Reference)?;
        let current = status
            .artifact
            .clone()
            .filter(|a| self.storage.exists(&a.path))
            .map(|mut a| {
                a.url = self.storage.url(&a.path);
                a
            });
        let handled = status.observed_generation == chart.metadata.generation
            && status.observed_chart_name.as_deref() == Some(chart.spec.chart.as_str());
        if let Some(artifact) = current
            .as_ref()
            .filter(|a| handled && a.revision == entry.version)
        {
            return Ok(Built::Unchanged(artifact.clone()));
        }
        let message = format!(
            "pulling '{}' chart with version '{}'",
            chart.spec.chart, entry.version
        );
        let outdated = current.as_ref().map(|_| {
            Condition::new(
                types::ARTIFACT_OUTDATED,
                ConditionStatus::True,
                reasons::NEW_REVISION,
                &message,
            )
            .for_generation(chart.metadata.generation)
        });
        progress
            .mark_with(
                &format!("building artifact: {message}"),
                outdated.as_slice(),
            )
            .await;
        self.build(chart, &namespace, &repo, &entry, redactor).await
    }

    /// Steps: pull the chart archive, check it, merge the values files into it, store it.
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
        let not_a_chart = |source| HelmChartError::NotAChart {
            url: url.to_string(),
            source,
        };
        let archive = ChartArchive::read(&bytes).map_err(not_a_chart)?;
        archive
            .expect(&chart.spec.chart, &entry.version)
            .map_err(not_a_chart)?;
        let (bytes, packaged, values_files) = if chart.spec.values_files.is_empty() {
            (bytes, false, vec![])
        } else {
            let (values, used) = helm_chart_build::merge_values_files(
                &archive,
                &chart.spec.values_files,
                chart.spec.ignore_missing_values_files,
            )
            .map_err(HelmChartError::Values)?;
            let packed = archive
                .with_values(&values)
                .map_err(HelmChartError::Package)?;
            (packed, true, used)
        };
        let artifact = self
            .store(
                chart,
                namespace,
                &archive.metadata.name,
                &entry.version,
                bytes,
            )
            .await?;
        let summary = summary(
            packaged,
            &archive.metadata.name,
            &entry.version,
            &values_files,
        );
        Ok(Built::New {
            artifact,
            summary,
            packaged,
            values_files,
        })
    }

    /// Step: the HelmRepository named by `sourceRef`, an HTTP(S) one.
    async fn source(
        &self,
        chart: &HelmChart,
        namespace: &str,
    ) -> Result<HelmRepository, HelmChartError> {
        let name = &chart.spec.source_ref.name;
        let repo = Api::<HelmRepository>::namespaced(self.base.client.clone(), namespace)
            .get(name)
            .await
            .map_err(|source| HelmChartError::SourceUnavailable {
                name: format!("{namespace}/{name}"),
                source,
            })?;
        if repo.spec.is_oci() {
            return Err(HelmChartError::OciSource(format!("{namespace}/{name}")));
        }
        Ok(repo)
    }

    /// Step: the repository's stored index, checked against its artifact's digest. Returns the
    /// index and the artifact's revision.
    fn read_index(&self, repo: &HelmRepository) -> Result<(Vec<u8>, String), HelmChartError> {
        let name = format!(
            "{}/{}",
            repo.namespace().unwrap_or_default(),
            repo.name_any()
        );
        let artifact = repo
            .status
            .as_ref()
            .and_then(|s| s.artifact.as_ref())
            .ok_or_else(|| HelmChartError::NoSourceArtifact(name.clone()))?;
        let bytes = std::fs::read(self.storage.path(&artifact.path)).map_err(|source| {
            HelmChartError::SourceArtifact {
                name: name.clone(),
                source,
            }
        })?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        let expected = artifact.digest.clone().unwrap_or_default();
        if digest != expected {
            return Err(HelmChartError::SourceDigest { name, expected });
        }
        Ok((bytes, artifact.revision.clone()))
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

/// Records success: the artifact, `status.url`, the observed chart and values files,
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
            summary,
            packaged,
            values_files,
        } => {
            status.observed_values_files = values_files;
            let reason = if packaged {
                api::CHART_PACKAGE_SUCCEEDED_REASON
            } else {
                api::CHART_PULL_SUCCEEDED_REASON
            };
            (artifact, reason.to_owned(), summary, true)
        }
    };
    for stale in [
        types::FETCH_FAILED,
        types::BUILD_FAILED,
        types::STORAGE_OPERATION_FAILED,
        types::ARTIFACT_OUTDATED,
    ] {
        condition::remove_condition(&mut status.conditions, stale);
    }
    condition::set_condition(
        &mut status.conditions,
        Condition::new(
            types::ARTIFACT_IN_STORAGE,
            ConditionStatus::True,
            &reason,
            &message,
        )
        .for_generation(chart.metadata.generation),
    );
    status.observed_chart_name = Some(chart.spec.chart.clone());
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
    let result = StepResult::failed(error, redactor);
    if let StepResult::Failed {
        reason, message, ..
    } = &result
    {
        condition::set_condition(
            &mut status.conditions,
            Condition::new(
                error.condition_type(),
                ConditionStatus::True,
                reason,
                message,
            )
            .for_generation(chart.metadata.generation),
        );
    }
    result
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
        let missing = HelmChartError::NoSourceArtifact("ns/repo".into());
        assert_eq!(missing.reason(), "NoSourceArtifact");
        assert_eq!(missing.condition_type(), types::FETCH_FAILED);
    }
}
