//! `weir events`: the Events of Weir's objects (Flux's kinds), of the workloads their inventories
//! hold, and the control Events (locks, rollbacks, releases), newest last, as `flux events`
//! prints them: LAST SEEN, TYPE, REASON, OBJECT, MESSAGE (and NAMESPACE first with `-A`).
//!
//! `--for <kind>/<name>` keeps the Events of that object and of what it depends on, as `flux
//! events --for` does (a Kustomization's GitRepository; a HelmRelease's HelmChart and its
//! source), and, beyond Flux, of the workloads in its inventory. `--watch` prints the Events
//! that follow as they come.
//!
//! Events are core/v1 Events; those written through events.k8s.io/v1 (kube's `Recorder`, as
//! `weir lock` writes them) are read through the same API, their time from `eventTime` or the
//! series' last observation.

use std::{collections::BTreeSet, process::ExitCode};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::{api::core::v1::Event, jiff::Timestamp};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, WatchEvent, WatchParams},
};
use weir_api::{
    HelmRelease, Kustomization,
    control::reasons,
    kustomize::{ObjMetadata, ResourceRef},
};

use crate::{common::Cluster, get::BoxError};

/// The API groups of Flux's (and so Weir's) kinds.
const FLUX_GROUPS: [&str; 5] = [
    "source.toolkit.fluxcd.io",
    "kustomize.toolkit.fluxcd.io",
    "helm.toolkit.fluxcd.io",
    "image.toolkit.fluxcd.io",
    "notification.toolkit.fluxcd.io",
];

/// The reasons of the control Events, on whatever object they concern.
pub(crate) const CONTROL_REASONS: [&str; 6] = [
    reasons::LOCKED,
    reasons::UNLOCKED,
    reasons::LOCK_EXPIRED,
    reasons::ROLLED_BACK,
    reasons::ROLLBACK_CLEARED,
    reasons::RELEASED,
];

/// Flags of `weir events`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub cluster: Cluster,
    /// Events of every namespace.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,
    /// Only the Events of this object (`<kind>/<name>`, such as `kustomization/app`), what it
    /// depends on and the workloads it applied.
    #[arg(long = "for", value_name = "KIND/NAME")]
    pub for_object: Option<String>,
    /// After the Events so far, print new ones as they come, until interrupted.
    #[arg(short = 'w', long, conflicts_with = "output")]
    pub watch: bool,
    /// How to print the Events: `json` and `yaml` give the rows with RFC 3339 times.
    #[arg(short = 'o', long, value_enum, default_value_t = crate::common::Output::Table)]
    pub output: crate::common::Output,
}

/// An object Events may be about: (kind, namespace, name).
type ObjectKey = (String, String, String);

/// Which Events to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// Those of Flux's kinds, the control Events, and those of these workloads.
    Weir { workloads: BTreeSet<ObjectKey> },
    /// Those of these objects.
    Objects(BTreeSet<ObjectKey>),
}

impl Filter {
    fn keeps(&self, event: &Event) -> bool {
        let involved = &event.involved_object;
        let key = (
            involved.kind.clone().unwrap_or_default(),
            involved.namespace.clone().unwrap_or_default(),
            involved.name.clone().unwrap_or_default(),
        );
        match self {
            Self::Objects(objects) => objects.contains(&key),
            Self::Weir { workloads } => {
                let group = involved
                    .api_version
                    .as_deref()
                    .and_then(|v| v.rsplit_once('/'))
                    .map_or("", |(group, _)| group);
                FLUX_GROUPS.contains(&group)
                    || event
                        .reason
                        .as_deref()
                        .is_some_and(|r| CONTROL_REASONS.contains(&r))
                    || workloads.contains(&key)
            }
        }
    }
}

/// One Event's row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub namespace: String,
    #[serde(serialize_with = "rfc3339")]
    pub last_seen: Option<Timestamp>,
    #[serde(rename = "type")]
    pub type_: String,
    pub reason: String,
    pub object: String,
    pub message: String,
}

impl Row {
    fn of(event: &Event) -> Self {
        let involved = &event.involved_object;
        Self {
            namespace: event.namespace().unwrap_or_default(),
            last_seen: last_seen(event),
            type_: event.type_.clone().unwrap_or_default(),
            reason: event.reason.clone().unwrap_or_default(),
            object: format!(
                "{}/{}",
                involved.kind.as_deref().unwrap_or_default(),
                involved.name.as_deref().unwrap_or_default()
            ),
            message: event.message.clone().unwrap_or_default(),
        }
    }
}

/// A time as RFC 3339 (seconds, UTC), or null.
#[allow(clippy::ref_option)] // serde's `serialize_with` hands the field over as `&Option<_>`.
fn rfc3339<S: serde::Serializer>(time: &Option<Timestamp>, out: S) -> Result<S::Ok, S::Error> {
    match time {
        Some(t) => out.serialize_str(&crate::history::rfc3339(*t)),
        None => out.serialize_none(),
    }
}

/// When an Event was last seen: its series' last observation, `lastTimestamp`, `eventTime`,
/// `firstTimestamp`, or when it was made, the first that is set.
pub(crate) fn last_seen(event: &Event) -> Option<Timestamp> {
    event
        .series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref())
        .map(|t| t.0)
        .or_else(|| event.last_timestamp.as_ref().map(|t| t.0))
        .or_else(|| event.event_time.as_ref().map(|t| t.0))
        .or_else(|| event.first_timestamp.as_ref().map(|t| t.0))
        .or_else(|| event.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// Runs `weir events`.
pub fn run(args: &Args) -> ExitCode {
    if let Some(object) = &args.for_object
        && object
            .split_once('/')
            .is_none_or(|(k, n)| k.is_empty() || n.is_empty())
    {
        eprintln!("weir events: --for takes <kind>/<name>, such as kustomization/app");
        return ExitCode::from(2);
    }
    crate::common::block_on("events", async {
        let (client, namespace) = args.cluster.connect().await?;
        let mut scope = (!args.all_namespaces).then(|| namespace.clone());
        let filter = match &args.for_object {
            Some(object) => for_object(&client, object, &namespace).await?,
            None => Filter::Weir {
                workloads: workloads(&client, scope.as_deref()).await,
            },
        };
        // An object whose source is in another namespace: its Events are read from every
        // namespace (and the table says which).
        if let Filter::Objects(objects) = &filter
            && objects.iter().any(|(_, ns, _)| *ns != namespace)
        {
            scope = None;
        }
        let all_namespaces = scope.is_none();
        let api: Api<Event> = match &scope {
            Some(namespace) => Api::namespaced(client.clone(), namespace),
            None => Api::all(client.clone()),
        };
        let list = api.list(&ListParams::default()).await?;
        let mut rows: Vec<Row> = list
            .items
            .iter()
            .filter(|e| filter.keeps(e))
            .map(Row::of)
            .collect();
        rows.sort_by_key(|row| row.last_seen);
        if let Some(text) = crate::common::structured(&rows, args.output)? {
            return Ok(text);
        }
        let now = Timestamp::now();
        let table = render(&rows, all_namespaces, now);
        if rows.is_empty() && !args.watch {
            eprintln!(
                "No events found{}.",
                scope
                    .map(|ns| format!(" in {ns} namespace"))
                    .unwrap_or_default()
            );
            // As kubectl: the message on stderr, nothing on stdout.
            return Ok(String::new());
        }
        if !args.watch {
            return Ok(table);
        }
        if crate::common::print("events", &table) != ExitCode::SUCCESS {
            return Ok(String::new());
        }
        let version = list.metadata.resource_version.unwrap_or_default();
        watch(&api, &version, &filter, all_namespaces).await?;
        Ok(String::new())
    })
}

/// Prints each Event `filter` keeps as it is made or changed, from `version` on.
async fn watch(
    api: &Api<Event>,
    version: &str,
    filter: &Filter,
    all_namespaces: bool,
) -> Result<(), BoxError> {
    let mut version = version.to_owned();
    loop {
        let mut stream = api
            .watch(&WatchParams::default().timeout(290), &version)
            .await?
            .boxed();
        while let Some(change) = stream.try_next().await? {
            match change {
                WatchEvent::Added(event) | WatchEvent::Modified(event) => {
                    version = event.resource_version().unwrap_or_default();
                    if filter.keeps(&event) {
                        let rows = [Row::of(&event)];
                        let text = render(&rows, all_namespaces, Timestamp::now());
                        // Only the row: the header was printed with the list.
                        let line = text.lines().nth(1).unwrap_or_default();
                        if crate::common::print("events", &format!("{line}\n")) != ExitCode::SUCCESS
                        {
                            return Ok(());
                        }
                    }
                }
                WatchEvent::Bookmark(bookmark) => version = bookmark.metadata.resource_version,
                WatchEvent::Error(status) if status.code == 410 => {
                    return Err("the watch expired (410 Gone); run the command again".into());
                }
                WatchEvent::Error(status) => return Err(status.message.into()),
                WatchEvent::Deleted(_) => {}
            }
        }
    }
}

/// The Events of the object `<kind>/<name>`, of its sources and of its inventory's workloads.
async fn for_object(client: &Client, object: &str, namespace: &str) -> Result<Filter, BoxError> {
    let (kind, name) = object.split_once('/').unwrap_or((object, ""));
    let key = |kind: &str, namespace: &str, name: &str| {
        (kind.to_owned(), namespace.to_owned(), name.to_owned())
    };
    let mut objects = BTreeSet::new();
    match kind.to_lowercase().as_str() {
        "kustomization" | "kustomizations" | "ks" => {
            let ks = Api::<Kustomization>::namespaced(client.clone(), namespace)
                .get_opt(name)
                .await?
                .ok_or_else(|| crate::common::not_found("Kustomization", namespace, name))?;
            let source = &ks.spec.source_ref;
            objects.insert(key(
                source.kind.as_str(),
                source.namespace.as_deref().unwrap_or(namespace),
                &source.name,
            ));
            let entries = ks.status.and_then(|s| s.inventory).map(|i| i.entries);
            objects.extend(lockable(&entries.unwrap_or_default()));
            objects.insert(key("Kustomization", namespace, name));
        }
        "helmrelease" | "helmreleases" | "hr" => {
            let hr = Api::<HelmRelease>::namespaced(client.clone(), namespace)
                .get_opt(name)
                .await?
                .ok_or_else(|| crate::common::not_found("HelmRelease", namespace, name))?;
            if let Some((chart_ns, chart)) = hr
                .status
                .as_ref()
                .and_then(|s| s.helm_chart.as_deref())
                .and_then(|c| c.split_once('/'))
            {
                objects.insert(key("HelmChart", chart_ns, chart));
            }
            if let Some(source) = hr.spec.chart.as_ref().map(|c| &c.spec.source_ref) {
                objects.insert(key(
                    source.kind.as_str(),
                    source.namespace.as_deref().unwrap_or(namespace),
                    &source.name,
                ));
            }
            let entries = hr.status.and_then(|s| s.inventory).map(|i| i.entries);
            objects.extend(lockable(&entries.unwrap_or_default()));
            objects.insert(key("HelmRelease", namespace, name));
        }
        _ => {
            // Any other kind, by the name Events give it: resolved by discovery.
            let (resource, namespaced) = crate::trace::resolve_kind(client, kind).await?;
            objects.insert(key(
                &resource.kind,
                if namespaced { namespace } else { "" },
                name,
            ));
        }
    }
    Ok(Filter::Objects(objects))
}

/// The lockable workloads of an inventory.
fn lockable(entries: &[ResourceRef]) -> impl Iterator<Item = ObjectKey> + '_ {
    entries
        .iter()
        .filter_map(|e| ObjMetadata::parse(&e.id))
        .filter(|m| crate::tree::is_lockable(&m.group, &m.kind))
        .map(|m| (m.kind, m.namespace, m.name))
}

/// The lockable workloads in the inventories of the Kustomizations and HelmReleases in scope.
async fn workloads(client: &Client, scope: Option<&str>) -> BTreeSet<ObjectKey> {
    let params = ListParams::default();
    let (kustomizations, helm_releases): (Api<Kustomization>, Api<HelmRelease>) = match scope {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    // Without the right to list them (or without their CRDs), Events of Flux's kinds and the
    // control Events still show; only those of managed workloads are left out.
    let mut entries = vec![];
    if let Ok(list) = kustomizations.list(&params).await {
        entries.extend(list.items.into_iter().flat_map(|ks| {
            ks.status
                .and_then(|s| s.inventory)
                .map(|i| i.entries)
                .unwrap_or_default()
        }));
    }
    if let Ok(list) = helm_releases.list(&params).await {
        entries.extend(list.items.into_iter().flat_map(|hr| {
            hr.status
                .and_then(|s| s.inventory)
                .map(|i| i.entries)
                .unwrap_or_default()
        }));
    }
    lockable(&entries).collect()
}

/// The rows as a table, as `flux events` prints it; `now` dates LAST SEEN.
#[must_use]
pub fn render(rows: &[Row], all_namespaces: bool, now: Timestamp) -> String {
    let mut table = vec![];
    let mut header = vec![];
    if all_namespaces {
        header.push("NAMESPACE".to_owned());
    }
    header.extend(["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"].map(str::to_owned));
    table.push(header);
    for row in rows {
        let mut line = vec![];
        if all_namespaces {
            line.push(row.namespace.clone());
        }
        line.extend([
            row.last_seen
                .map_or_else(|| "<unknown>".to_owned(), |t| human_duration(now, t)),
            row.type_.clone(),
            row.reason.clone(),
            row.object.clone(),
            row.message.trim().to_owned(),
        ]);
        table.push(line);
    }
    crate::common::table(&table)
}

/// How long ago `then` was, as kubectl says it (`HumanDuration` of apimachinery): `45s`, `3m2s`,
/// `17m`, `5h3m`, `30h`, `3d4h`, `20d`, `2y3d`.
#[must_use]
pub fn human_duration(now: Timestamp, then: Timestamp) -> String {
    let seconds = now.as_second() - then.as_second();
    if seconds < -1 {
        return "<invalid>".to_owned();
    }
    let seconds = seconds.max(0);
    let (minutes, hours) = (seconds / 60, seconds / 3600);
    let days = hours / 24;
    let with = |major: i64, unit: &str, minor: i64, minor_unit: &str| {
        if minor == 0 {
            format!("{major}{unit}")
        } else {
            format!("{major}{unit}{minor}{minor_unit}")
        }
    };
    match () {
        () if seconds < 120 => format!("{seconds}s"),
        () if minutes < 10 => with(minutes, "m", seconds % 60, "s"),
        () if minutes < 180 => format!("{minutes}m"),
        () if hours < 8 => with(hours, "h", minutes % 60, "m"),
        () if hours < 48 => format!("{hours}h"),
        () if hours < 24 * 8 => with(days, "d", hours % 24, "h"),
        () if hours < 24 * 365 * 2 => format!("{days}d"),
        () if hours < 24 * 365 * 8 => with(days / 365, "y", days % 365, "d"),
        () => format!("{}y", days / 365),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    fn event(kind: &str, api_version: &str, name: &str, reason: &str) -> Event {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("{name}.1"), "namespace": "apps"},
            "involvedObject": {"kind": kind, "apiVersion": api_version, "name": name,
                "namespace": "apps"},
            "reason": reason, "type": "Normal", "message": "m",
        }))
        .unwrap()
    }

    #[test]
    fn rows_print_as_flux_events_prints_them() {
        let now = at(1_000_000);
        let rows = [
            Row {
                namespace: "apps".into(),
                last_seen: Some(at(1_000_000 - 3 * 3600)),
                type_: "Normal".into(),
                reason: "ReconciliationSucceeded".into(),
                object: "Kustomization/app".into(),
                message: "Reconciliation finished in 1s, next run in 10m\n".into(),
            },
            Row {
                namespace: "apps".into(),
                last_seen: Some(at(1_000_000 - 42)),
                type_: "Normal".into(),
                reason: "Locked".into(),
                object: "Deployment/web".into(),
                message: "locked by alice: incident 42".into(),
            },
            Row {
                namespace: "other".into(),
                last_seen: None,
                type_: "Warning".into(),
                reason: "BuildFailed".into(),
                object: "Kustomization/broken".into(),
                message: "kustomization.yaml: no such file".into(),
            },
        ];
        assert_eq!(
            render(&rows, false, now),
            "\
LAST SEEN   TYPE      REASON                    OBJECT                 MESSAGE
3h          Normal    ReconciliationSucceeded   Kustomization/app      Reconciliation finished in 1s, next run in 10m
42s         Normal    Locked                    Deployment/web         locked by alice: incident 42
<unknown>   Warning   BuildFailed               Kustomization/broken   kustomization.yaml: no such file
"
        );
        assert!(render(&rows, true, now).starts_with("NAMESPACE   LAST SEEN"));
    }

    #[test]
    fn durations_read_as_kubectl_prints_them() {
        let now = at(100_000_000);
        let ago = |secs: i64| human_duration(now, at(100_000_000 - secs));
        assert_eq!(ago(0), "0s");
        assert_eq!(ago(119), "119s");
        assert_eq!(ago(182), "3m2s");
        assert_eq!(ago(600), "10m");
        assert_eq!(ago(5 * 3600 + 180), "5h3m");
        assert_eq!(ago(30 * 3600), "30h");
        assert_eq!(ago(76 * 3600), "3d4h");
        assert_eq!(ago(20 * 86400), "20d");
        assert_eq!(ago(733 * 86400), "2y3d");
        assert_eq!(human_duration(at(0), at(10)), "<invalid>");
    }

    #[test]
    fn weirs_filter_keeps_flux_kinds_control_events_and_managed_workloads() {
        let workloads = BTreeSet::from([("Deployment".into(), "apps".into(), "web".into())]);
        let filter = Filter::Weir { workloads };
        let ks = event(
            "Kustomization",
            "kustomize.toolkit.fluxcd.io/v1",
            "app",
            "Progressing",
        );
        let web = event("Deployment", "apps/v1", "web", "ScalingReplicaSet");
        let other = event("Deployment", "apps/v1", "other", "ScalingReplicaSet");
        let locked_other = event("Deployment", "apps/v1", "other", "Locked");
        let pod = event("Pod", "v1", "web-1", "Scheduled");
        assert!(filter.keeps(&ks));
        assert!(filter.keeps(&web));
        assert!(!filter.keeps(&other));
        assert!(filter.keeps(&locked_other));
        assert!(!filter.keeps(&pod));
        let only = Filter::Objects(BTreeSet::from([(
            "Kustomization".into(),
            "apps".into(),
            "app".into(),
        )]));
        assert!(only.keeps(&ks));
        assert!(!only.keeps(&web));
    }

    #[test]
    fn an_events_time_is_its_latest_known() {
        let mut e = event("Deployment", "apps/v1", "web", "Locked");
        assert_eq!(last_seen(&e), None);
        e.event_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
            at(5),
        ));
        assert_eq!(last_seen(&e), Some(at(5)));
        e.last_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at(7)));
        assert_eq!(last_seen(&e), Some(at(7)));
    }
}
