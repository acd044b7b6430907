//! Prometheus metrics, through prometheus-client: Flux's reconcile metrics under Flux's names and
//! labels (so Flux's dashboards and alerts work unchanged), and the controllers' own counters.
//!
//! - `gotk_reconcile_duration_seconds{kind,name,namespace}`: a histogram of reconcile durations,
//!   with the buckets of Flux's runtime (10ns to 10s, tenfold);
//! - `gotk_suspend_status{kind,name,namespace}`: 1 while `spec.suspend` is set;
//! - `gotk_reconcile_condition{kind,name,namespace,type,status}`: 1 for the `Ready` condition's
//!   current status (`True`, `False`, `Unknown`, or `Deleted` once the object is being deleted)
//!   and 0 for the others, as Flux sets it;
//! - `weir_status_writes_total{kind}`: status writes (skipped ones are not counted);
//! - `weir_api_requests_total{verb,dry_run}`: every request a [`crate::client`] sends to the API server
//!   (`verb`: get — lists too —, watch, create, update, patch, delete; `dry_run`: true for
//!   server-side dry runs), counted in the client's tower stack, so no call site can forget it.
//!
//! The families are process-wide, as controller-runtime's registry is in Go: every controller of
//! the process records into them, and `weir controllers` registers them once with [`register`].

use std::{
    fmt,
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use kube::{Resource, ResourceExt};
use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use weir_api::status::{ObjectStatus, Reconciled};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ObjectLabels {
    kind: String,
    name: String,
    namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConditionLabels {
    kind: String,
    name: String,
    namespace: String,
    r#type: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    verb: &'static str,
    dry_run: bool,
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(10e-9, 10.0, 10))
}

/// The process-wide reconcile metrics.
#[derive(Debug)]
struct Reconciles {
    duration: Family<ObjectLabels, Histogram, fn() -> Histogram>,
    suspend: Family<ObjectLabels, Gauge>,
    condition: Family<ConditionLabels, Gauge>,
    status_writes: Family<KindLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
}

fn reconciles() -> &'static Reconciles {
    static RECONCILES: OnceLock<Reconciles> = OnceLock::new();
    RECONCILES.get_or_init(|| Reconciles {
        duration: Family::new_with_constructor(duration_histogram),
        suspend: Family::default(),
        condition: Family::default(),
        status_writes: Family::default(),
        requests: Family::default(),
    })
}

/// Registers the reconcile metrics with `registry` (once per registry).
pub fn register(registry: &mut Registry) {
    let m = reconciles();
    registry.register(
        "gotk_reconcile_duration_seconds",
        "The duration in seconds of a GitOps Toolkit resource reconciliation.",
        m.duration.clone(),
    );
    registry.register(
        "gotk_suspend_status",
        "The current suspend status of a GitOps Toolkit resource.",
        m.suspend.clone(),
    );
    registry.register(
        "gotk_reconcile_condition",
        "The current condition status of a GitOps Toolkit resource reconciliation.",
        m.condition.clone(),
    );
    registry.register(
        "weir_status_writes",
        "Status writes, by kind.",
        m.status_writes.clone(),
    );
    registry.register(
        "weir_api_requests",
        "Requests to the Kubernetes API server, by verb and dry run.",
        m.requests.clone(),
    );
}

/// Counts one request by its verb, as the API server's audit log names it.
pub(crate) fn count_request<B>(request: http::Request<B>) -> http::Request<B> {
    let query = request.uri().query().unwrap_or_default();
    let param = |name: &str, values: &[&str]| {
        query.split('&').any(|pair| {
            pair.split_once('=')
                .is_some_and(|(k, v)| k == name && values.contains(&v))
        })
    };
    let verb = match *request.method() {
        http::Method::GET if param("watch", &["true", "1"]) => "watch",
        http::Method::GET => "get",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ => "other",
    };
    reconciles()
        .requests
        .get_or_create(&RequestLabels {
            verb,
            dry_run: param("dryRun", &["All"]),
        })
        .inc();
    request
}

fn object_labels<K: Resource<DynamicType = ()>>(obj: &K) -> ObjectLabels {
    ObjectLabels {
        kind: K::kind(&()).into_owned(),
        name: obj.name_any(),
        namespace: obj.namespace().unwrap_or_default(),
    }
}

/// The statuses `gotk_reconcile_condition` has a series for.
const CONDITION_STATUSES: [&str; 4] = ["True", "False", "Unknown", "Deleted"];

fn set_ready(labels: &ObjectLabels, current: &str) {
    for status in CONDITION_STATUSES {
        let series = ConditionLabels {
            kind: labels.kind.clone(),
            name: labels.name.clone(),
            namespace: labels.namespace.clone(),
            r#type: weir_api::types::READY.to_owned(),
            status: status.to_owned(),
        };
        reconciles()
            .condition
            .get_or_create(&series)
            .set(i64::from(status == current));
    }
}

/// Runs one reconcile of `obj` and records its duration and suspend status, and `Deleted` for an
/// object being deleted. Every controller's reconcile function goes through this.
pub async fn measured<K, T>(obj: &K, reconcile: impl Future<Output = T>) -> T
where
    K: Resource<DynamicType = ()> + Reconciled,
{
    let start = Instant::now();
    let out = reconcile.await;
    let labels = object_labels(obj);
    let m = reconciles();
    m.duration
        .get_or_create(&labels)
        .observe(start.elapsed().as_secs_f64());
    m.suspend
        .get_or_create(&labels)
        .set(i64::from(obj.suspended()));
    if obj.meta().deletion_timestamp.is_some() {
        set_ready(&labels, "Deleted");
    }
    out
}

/// Records the `Ready` condition of `status`, the status `obj` has after a reconcile.
pub fn record_status<K, S>(obj: &K, status: &S, written: bool)
where
    K: Resource<DynamicType = ()>,
    S: ObjectStatus,
{
    let labels = object_labels(obj);
    if written {
        reconciles()
            .status_writes
            .get_or_create(&KindLabels {
                kind: labels.kind.clone(),
            })
            .inc();
    }
    let current = status
        .ready()
        .map_or_else(|| "Unknown".to_owned(), |c| format!("{:?}", c.status));
    set_ready(&labels, &current);
}

/// A controller's own counters, kept as atomics so that tests and benchmarks read them directly;
/// exported through [`CounterSet`].
pub trait Counters: fmt::Debug + Send + Sync + 'static {
    /// Each counter's name (ending in `_total`), help and value.
    fn counters(&self) -> Vec<(&'static str, &'static str, &AtomicU64)>;
}

/// A controller's [`Counters`] as a prometheus-client collector, to register with a registry.
#[derive(Debug)]
pub struct CounterSet<T>(pub std::sync::Arc<T>);

impl<T: Counters> prometheus_client::collector::Collector for CounterSet<T> {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        for (name, help, value) in self.0.counters() {
            let counter = ConstCounter::new(value.load(Ordering::Relaxed));
            let name = name.strip_suffix("_total").unwrap_or(name);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}

/// The registry's metrics in the OpenMetrics text format.
#[must_use]
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(error) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::error!(%error, "cannot encode the metrics");
    }
    out
}

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    fn kustomization(name: &str, suspend: bool, status: Option<&str>) -> weir_api::Kustomization {
        let mut value = serde_json::json!({
            "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
            "kind": "Kustomization",
            "metadata": {"name": name, "namespace": "metrics-test"},
            "spec": {
                "interval": "1m", "prune": true, "suspend": suspend,
                "sourceRef": {"kind": "GitRepository", "name": "repo"},
            },
        });
        if let Some(ready) = status {
            value["status"] = serde_json::json!({"conditions": [{
                "type": "Ready", "status": ready, "reason": "ReconciliationSucceeded",
                "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z",
            }]});
        }
        serde_json::from_value(value).unwrap()
    }

    #[tokio::test]
    async fn reconciles_are_exported_under_fluxs_names_and_labels() {
        let mut registry = Registry::default();
        register(&mut registry);
        let ks = kustomization("app", false, Some("False"));
        let answer = measured(&ks, async { 42 }).await;
        assert_eq!(answer, 42);
        record_status(&ks, ks.status.as_ref().unwrap(), true);
        let paused = kustomization("paused", true, None);
        measured(&paused, async {}).await;

        let text = render(&registry);
        let series = |name: &str, labels: &str| {
            text.lines()
                .find(|l| l.starts_with(&format!("{name}{{{labels}}}")))
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_owned)
        };
        let app = r#"kind="Kustomization",name="app",namespace="metrics-test""#;
        assert_eq!(
            series("gotk_reconcile_duration_seconds_count", app).as_deref(),
            Some("1"),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "gotk_reconcile_duration_seconds_bucket{{le=\"10.0\",{app}}} 1"
            )) || text.contains(&format!(
                "gotk_reconcile_duration_seconds_bucket{{{app},le=\"10.0\"}} 1"
            )),
            "{text}"
        );
        assert_eq!(series("gotk_suspend_status", app).as_deref(), Some("0"));
        let paused_labels = r#"kind="Kustomization",name="paused",namespace="metrics-test""#;
        assert_eq!(
            series("gotk_suspend_status", paused_labels).as_deref(),
            Some("1")
        );
        for (status, value) in [
            ("True", "0"),
            ("False", "1"),
            ("Unknown", "0"),
            ("Deleted", "0"),
        ] {
            assert_eq!(
                series(
                    "gotk_reconcile_condition",
                    &format!(r#"{app},type="Ready",status="{status}""#)
                )
                .as_deref(),
                Some(value),
                "{status}: {text}"
            );
        }
        assert!(
            text.contains(r#"weir_status_writes_total{kind="Kustomization"} "#),
            "{text}"
        );
    }

    #[test]
    fn requests_are_counted_by_verb_and_dry_run() {
        let mut registry = Registry::default();
        register(&mut registry);
        let count = |verb: &'static str, dry_run: bool| {
            reconciles()
                .requests
                .get_or_create(&RequestLabels { verb, dry_run })
                .get()
        };
        let before = [
            count("watch", false),
            count("get", false),
            count("patch", true),
            count("patch", false),
            count("delete", false),
        ];
        for (method, uri) in [
            (
                "GET",
                "/api/v1/namespaces/a/configmaps?watch=true&resourceVersion=1",
            ),
            ("GET", "/api/v1/namespaces/a/configmaps?watch=false"),
            (
                "PATCH",
                "/api/v1/namespaces/a/configmaps/x?dryRun=All&fieldManager=weir",
            ),
            (
                "PATCH",
                "/api/v1/namespaces/a/configmaps/x?fieldManager=weir&force=true",
            ),
            ("DELETE", "/api/v1/namespaces/a/configmaps/x"),
        ] {
            let request = http::Request::builder()
                .method(method)
                .uri(uri)
                .body(())
                .unwrap();
            count_request(request);
        }
        let after = [
            count("watch", false),
            count("get", false),
            count("patch", true),
            count("patch", false),
            count("delete", false),
        ];
        // Other tests of this process may count too, never fewer.
        for (b, a) in before.iter().zip(after) {
            assert!(a > *b, "{before:?} -> {after:?}");
        }
        let text = render(&registry);
        assert!(
            text.contains(r#"weir_api_requests_total{verb="patch",dry_run="true"} "#),
            "{text}"
        );
    }
}
