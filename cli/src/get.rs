//! `weir get`: the state of Weir's objects as `flux get` shows it — one row an object with its
//! revision, whether it is suspended, and its `Ready` condition — read through the API with the
//! user's own kubeconfig (so Kubernetes RBAC decides what they see).
//!
//! The REVISION column holds what each kind calls its revision: the stored artifact's for a
//! source, the chart version of the latest release for a HelmRelease (of the last attempt
//! before any release, as `flux get helmreleases` falls back), the last applied one for a
//! Kustomization, the latest image for an ImagePolicy, the scanned tags' for an
//! ImageRepository, and the last pushed commit for an ImageUpdateAutomation.

use std::{path::PathBuf, process::ExitCode};

use clap::ValueEnum;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::ListParams,
    config::{KubeConfigOptions, Kubeconfig},
};
use serde::{Serialize, de::DeserializeOwned};
use weir_api::{
    GitRepository, HelmChart, HelmRelease, HelmReleaseStatus, HelmRepository, ImagePolicy,
    ImageRepository, ImageUpdateAutomation, Kustomization,
    status::{ObjectStatus, Reconciled},
};

/// Flags of `weir get`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which objects to show.
    #[arg(value_enum)]
    pub what: What,
    /// The namespace to read (the kubeconfig's namespace when omitted).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Read every namespace.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,
    /// How to print the rows.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// The kubeconfig file (`KUBECONFIG` or ~/.kube/config when omitted).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (its current context when omitted).
    #[arg(long)]
    pub context: Option<String>,
    /// After the table, print each object's row again whenever it changes, until interrupted.
    #[arg(short = 'w', long, conflicts_with = "output")]
    pub watch: bool,
}

/// The kinds `weir get` shows, grouped as `flux get` groups them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum What {
    /// GitRepository, HelmRepository, HelmChart.
    Sources,
    /// HelmRelease (also `hr`, `helmrelease`, as flux takes it).
    #[value(name = "helmreleases", alias = "hr", alias = "helmrelease")]
    HelmReleases,
    /// Kustomization.
    Kustomizations,
    /// ImageRepository, ImagePolicy, ImageUpdateAutomation.
    Images,
    /// All of the above.
    All,
}

/// How rows are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

/// One object's row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub revision: String,
    pub suspended: bool,
    pub ready: String,
    pub message: String,
}

/// Runs `weir get`; prints the rows, or the error on stderr with exit code 1.
pub fn run(args: &Args) -> ExitCode {
    let Some(runtime) = crate::common::runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(rows(args)) {
        Ok((rows, _)) if !args.watch => match render(&rows, args.output, args.all_namespaces) {
            Ok(text) => crate::common::print("get", &text),
            Err(error) => {
                eprintln!("weir get: {error}");
                ExitCode::FAILURE
            }
        },
        Ok((rows, lister)) => match runtime.block_on(watch(args, &lister, rows)) {
            Ok(code) => code,
            Err(error) => {
                eprintln!("weir get: {}", weir_runtime::chain(&*error));
                ExitCode::FAILURE
            }
        },
        Err(error) => {
            eprintln!("weir get: {}", weir_runtime::chain(&*error));
            ExitCode::FAILURE
        }
    }
}

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A client for the user's kubeconfig (`kubeconfig`, else `KUBECONFIG` or ~/.kube/config; its
/// `context`, else the current one), and that context's namespace.
pub(crate) async fn connect(
    kubeconfig: Option<&std::path::Path>,
    context: Option<&str>,
) -> Result<(Client, String), BoxError> {
    let config = user_config(kubeconfig, context).await?;
    let namespace = config.default_namespace.clone();
    Ok((weir_runtime::client::new(config)?, namespace))
}

/// The user's kubeconfig as [`connect`] reads it, for commands that need the configuration
/// itself (to impersonate, as the controllers do).
pub(crate) async fn user_config(
    kubeconfig: Option<&std::path::Path>,
    context: Option<&str>,
) -> Result<kube::Config, BoxError> {
    let options = KubeConfigOptions {
        context: context.map(str::to_owned),
        ..KubeConfigOptions::default()
    };
    Ok(match kubeconfig {
        Some(path) => {
            kube::Config::from_custom_kubeconfig(Kubeconfig::read_from(path)?, &options).await?
        }
        None if context.is_some() => kube::Config::from_kubeconfig(&options).await?,
        None => kube::Config::infer().await?,
    })
}

async fn rows(args: &Args) -> Result<(Vec<Row>, Lister), BoxError> {
    let (client, default_namespace) =
        connect(args.kubeconfig.as_deref(), args.context.as_deref()).await?;
    let scope = if args.all_namespaces {
        None
    } else {
        Some(args.namespace.clone().unwrap_or(default_namespace))
    };
    let lister = Lister { client, scope };
    let mut rows = vec![];
    if matches!(args.what, What::Sources | What::All) {
        rows.extend(lister.rows(artifact_revision::<GitRepository>).await?);
        rows.extend(lister.rows(artifact_revision::<HelmRepository>).await?);
        rows.extend(lister.rows(artifact_revision::<HelmChart>).await?);
    }
    if matches!(args.what, What::HelmReleases | What::All) {
        rows.extend(lister.rows(hr_revision).await?);
    }
    if matches!(args.what, What::Kustomizations | What::All) {
        rows.extend(lister.rows(ks_revision).await?);
    }
    if matches!(args.what, What::Images | What::All) {
        rows.extend(lister.rows(image_repository_revision).await?);
        rows.extend(lister.rows(image_policy_revision).await?);
        rows.extend(lister.rows(automation_revision).await?);
    }
    Ok((rows, lister))
}

/// `weir get --watch`: the table, then each object's row again whenever it changes (a row equal
/// to the last one printed for that object is not repeated), until interrupted or a watch ends.
async fn watch(args: &Args, lister: &Lister, rows: Vec<Row>) -> Result<ExitCode, BoxError> {
    use futures::StreamExt as _;
    let colour = crate::term::colour();
    let code = crate::common::print("get", &table(&rows, args.all_namespaces, colour));
    if code != ExitCode::SUCCESS {
        return Ok(code);
    }
    let mut last: std::collections::HashMap<(String, String, String), Row> = rows
        .into_iter()
        .map(|row| {
            (
                (row.kind.clone(), row.namespace.clone(), row.name.clone()),
                row,
            )
        })
        .collect();
    let mut streams = vec![];
    if matches!(args.what, What::Sources | What::All) {
        streams.push(lister.watch(artifact_revision::<GitRepository>));
        streams.push(lister.watch(artifact_revision::<HelmRepository>));
        streams.push(lister.watch(artifact_revision::<HelmChart>));
    }
    if matches!(args.what, What::HelmReleases | What::All) {
        streams.push(lister.watch(hr_revision));
    }
    if matches!(args.what, What::Kustomizations | What::All) {
        streams.push(lister.watch(ks_revision));
    }
    if matches!(args.what, What::Images | What::All) {
        streams.push(lister.watch(image_repository_revision));
        streams.push(lister.watch(image_policy_revision));
        streams.push(lister.watch(automation_revision));
    }
    let mut changes = futures::stream::select_all(streams);
    while let Some(row) = changes.next().await {
        let row = row?;
        let key = (row.kind.clone(), row.namespace.clone(), row.name.clone());
        if last.get(&key) == Some(&row) {
            continue;
        }
        let line = table(std::slice::from_ref(&row), args.all_namespaces, colour);
        // The table's header is its first line: a watched row is printed without it.
        let code = crate::common::print("get", line.split_once('\n').map_or("", |(_, rest)| rest));
        if code != ExitCode::SUCCESS {
            return Ok(code);
        }
        last.insert(key, row);
    }
    Ok(ExitCode::SUCCESS)
}

/// The revision of a source's stored artifact.
pub(crate) fn artifact_revision<K>(object: &K) -> Option<String>
where
    K: kube::core::object::HasStatus<Status: ArtifactStatus>,
{
    object.status()?.artifact_revision()
}

/// The stored artifact's revision, for the source kinds.
pub(crate) trait ArtifactStatus {
    fn artifact_revision(&self) -> Option<String>;
}

macro_rules! artifact_status {
    ($($status:ty),*) => {$(
        impl ArtifactStatus for $status {
            fn artifact_revision(&self) -> Option<String> {
                self.artifact.as_ref().map(|a| a.revision.clone())
            }
        }
    )*};
}
artifact_status!(
    weir_api::GitRepositoryStatus,
    weir_api::HelmRepositoryStatus,
    weir_api::HelmChartStatus
);

fn hr_revision(o: &HelmRelease) -> Option<String> {
    helm_release_revision(o.status.as_ref()?)
}

fn ks_revision(o: &Kustomization) -> Option<String> {
    o.status.as_ref()?.last_applied_revision.clone()
}

fn image_repository_revision(o: &ImageRepository) -> Option<String> {
    o.status
        .as_ref()?
        .last_scan_result
        .as_ref()?
        .revision
        .clone()
}

fn image_policy_revision(o: &ImagePolicy) -> Option<String> {
    let latest = o.status.as_ref()?.latest_ref.as_ref()?;
    Some(format!("{}:{}", latest.name, latest.tag))
}

fn automation_revision(o: &ImageUpdateAutomation) -> Option<String> {
    o.status.as_ref()?.last_push_commit.clone()
}

/// A HelmRelease's revision as `flux get helmreleases` shows it: the chart version of the
/// latest release in its history, else of the last attempt.
fn helm_release_revision(status: &HelmReleaseStatus) -> Option<String> {
    status
        .history
        .first()
        .map(|latest| latest.chart_version.clone())
        .or_else(|| status.last_attempted_revision.clone())
}

/// Lists kinds in one namespace, or all.
struct Lister {
    client: Client,
    scope: Option<String>,
}

impl Lister {
    /// The rows of every object of `K` in scope, `revision` read from each; none when the kind
    /// is not served (its CRD not installed).
    async fn rows<K>(&self, revision: impl Fn(&K) -> Option<String>) -> Result<Vec<Row>, BoxError>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Reconciled
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
        K::Status: ObjectStatus,
    {
        let api: Api<K> = match &self.scope {
            Some(namespace) => Api::namespaced(self.client.clone(), namespace),
            None => Api::all(self.client.clone()),
        };
        let list = match api.list(&ListParams::default()).await {
            Ok(list) => list,
            Err(kube::Error::Api(status)) if status.code == 404 => return Ok(vec![]),
            Err(source) => {
                return Err(Box::new(ListError {
                    plural: K::plural(&()).into_owned(),
                    source,
                }));
            }
        };
        Ok(list.items.iter().map(|o| row(o, &revision)).collect())
    }

    /// Every change to an object of `K` in scope, as its row; a deleted object is not shown
    /// again.
    fn watch<K>(
        &self,
        revision: fn(&K) -> Option<String>,
    ) -> futures::stream::BoxStream<'static, Result<Row, BoxError>>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Reconciled
            + Clone
            + DeserializeOwned
            + std::fmt::Debug
            + Send
            + 'static,
        K::Status: ObjectStatus,
    {
        use futures::StreamExt as _;
        use kube::runtime::{WatchStreamExt as _, watcher};
        let api: Api<K> = match &self.scope {
            Some(namespace) => Api::namespaced(self.client.clone(), namespace),
            None => Api::all(self.client.clone()),
        };
        watcher(api, watcher::Config::default())
            .applied_objects()
            .map(move |object| {
                object
                    .map(|o| row(&o, &revision))
                    .map_err(|e| Box::new(e) as BoxError)
            })
            .boxed()
    }
}

/// An object's row, `revision` read from it.
fn row<K>(object: &K, revision: &impl Fn(&K) -> Option<String>) -> Row
where
    K: Resource<DynamicType = ()> + Reconciled,
    K::Status: ObjectStatus,
{
    let ready = object.status().and_then(ObjectStatus::ready);
    Row {
        kind: K::kind(&()).to_lowercase(),
        namespace: object.namespace().unwrap_or_default(),
        name: object.name_any(),
        revision: revision(object).unwrap_or_default(),
        suspended: object.suspended(),
        ready: ready.map_or_else(|| "Unknown".to_owned(), |c| format!("{:?}", c.status)),
        message: ready.map(|c| c.message.clone()).unwrap_or_default(),
    }
}

/// A kind that could not be listed (RBAC, or the API server).
#[derive(Debug, thiserror::Error)]
#[error("cannot list {plural}")]
struct ListError {
    plural: String,
    #[source]
    source: kube::Error,
}

/// The rows as `output` says: a table with a NAMESPACE column when `all_namespaces`, or a JSON
/// or YAML list of rows.
pub fn render(rows: &[Row], output: Output, all_namespaces: bool) -> Result<String, String> {
    match output {
        Output::Json => serde_json::to_string_pretty(rows)
            .map(|text| text + "\n")
            .map_err(|e| e.to_string()),
        Output::Yaml => serde_yaml_ng::to_string(rows).map_err(|e| e.to_string()),
        Output::Table => Ok(table(rows, all_namespaces, crate::term::colour())),
    }
}

/// The rows as a table; the READY cells coloured when `colour` (widths count the text only).
fn table(rows: &[Row], all_namespaces: bool, colour: bool) -> String {
    if rows.is_empty() {
        return "No objects found.\n".to_owned();
    }
    let mut lines: Vec<Vec<String>> = vec![];
    let mut header = vec![];
    if all_namespaces {
        header.push("NAMESPACE".to_owned());
    }
    header.extend(["NAME", "REVISION", "SUSPENDED", "READY", "MESSAGE"].map(str::to_owned));
    lines.push(header);
    for row in rows {
        let mut line = vec![];
        if all_namespaces {
            line.push(row.namespace.clone());
        }
        line.extend([
            format!("{}/{}", row.kind, row.name),
            short_revision(&row.revision),
            if row.suspended { "True" } else { "False" }.to_owned(),
            row.ready.clone(),
            row.message.replace('\n', " "),
        ]);
        lines.push(line);
    }
    let columns = lines[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let ready_column = columns - 2;
    let mut out = String::new();
    for (line_index, line) in lines.iter().enumerate() {
        let mut text = String::new();
        for (i, cell) in line.iter().enumerate() {
            let shown = if line_index > 0 && i == ready_column {
                crate::term::paint(cell, crate::term::ready_style(cell), colour)
            } else {
                cell.clone()
            };
            text.push_str(&shown);
            if i + 1 < columns {
                let pad = widths[i] - cell.chars().count() + 1;
                text.extend(std::iter::repeat_n(' ', pad));
                text.push('\t');
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

/// A revision as `flux get` prints it: a commit or digest cut to its first 8 hex digits
/// (`main@sha1:1a2b3c4d`); the JSON and YAML output keep it whole.
#[must_use]
pub(crate) fn short_revision(revision: &str) -> String {
    for algorithm in ["sha1:", "sha256:"] {
        if let Some(at) = revision.find(algorithm) {
            let hex = at + algorithm.len();
            let end = revision[hex..]
                .char_indices()
                .nth(8)
                .map_or(revision.len(), |(i, _)| hex + i);
            return revision[..end].to_owned();
        }
    }
    revision.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kind: &str, name: &str, ready: &str, message: &str) -> Row {
        Row {
            kind: kind.to_owned(),
            namespace: "team-a".to_owned(),
            name: name.to_owned(),
            revision: "main@sha1:0123abcd4567ef".to_owned(),
            suspended: false,
            ready: ready.to_owned(),
            message: message.to_owned(),
        }
    }

    #[test]
    fn tables_align_columns_and_name_rows_by_kind_as_flux_get_does() {
        let rows = [
            row("gitrepository", "app", "True", "stored artifact"),
            row(
                "kustomization",
                "infrastructure",
                "False",
                "build failed\nat a.yaml",
            ),
        ];
        assert_eq!(
            table(&rows, false, false),
            "NAME                         \tREVISION           \tSUSPENDED \tREADY \tMESSAGE\n\
             gitrepository/app            \tmain@sha1:0123abcd \tFalse     \tTrue  \tstored artifact\n\
             kustomization/infrastructure \tmain@sha1:0123abcd \tFalse     \tFalse \tbuild failed at a.yaml\n"
        );
        assert!(table(&rows, true, false).starts_with("NAMESPACE \tNAME "));
        assert_eq!(table(&[], false, false), "No objects found.\n");
    }

    #[test]
    fn revisions_are_cut_to_eight_hex_digits_as_flux_prints_them() {
        assert_eq!(
            short_revision("main@sha1:0123abcd4567ef"),
            "main@sha1:0123abcd"
        );
        assert_eq!(short_revision("sha256:deadbeefcafe"), "sha256:deadbeef");
        assert_eq!(short_revision("1.2.3"), "1.2.3");
        assert_eq!(short_revision("v1@sha1:abc"), "v1@sha1:abc");
    }

    #[test]
    fn a_helm_releases_revision_is_its_latest_charts_version_as_flux_shows_it() {
        let snapshot = |version: i64, chart_version: &str| weir_api::helm_release::Snapshot {
            version,
            chart_version: chart_version.to_owned(),
            ..Default::default()
        };
        let cases = [
            (vec![], None, None),
            (vec![], Some("1.0.0"), Some("1.0.0")),
            (
                vec![snapshot(2, "1.1.0"), snapshot(1, "1.0.0")],
                Some("2.0.0"),
                Some("1.1.0"),
            ),
        ];
        for (history, last_attempted, want) in cases {
            let status = HelmReleaseStatus {
                history,
                last_attempted_revision: last_attempted.map(str::to_owned),
                ..Default::default()
            };
            assert_eq!(
                helm_release_revision(&status).as_deref(),
                want,
                "{status:?}"
            );
        }
    }

    #[test]
    fn helm_releases_are_named_as_flux_names_them() {
        for name in ["helmreleases", "helmrelease", "hr"] {
            assert_eq!(What::from_str(name, false), Ok(What::HelmReleases));
        }
    }

    #[test]
    fn json_and_yaml_list_the_rows() {
        let rows = [row("imagepolicy", "app", "True", "")];
        let json: serde_json::Value =
            serde_json::from_str(&render(&rows, Output::Json, false).unwrap()).unwrap();
        assert_eq!(json[0]["kind"], "imagepolicy");
        assert_eq!(json[0]["suspended"], false);
        let yaml = render(&rows, Output::Yaml, false).unwrap();
        assert!(yaml.contains("name: app"), "{yaml}");
    }
}
