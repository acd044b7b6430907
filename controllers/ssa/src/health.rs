//! Object health: whether an applied object reached its desired state.
//!
//! The built-in rules are kstatus's (sigs.k8s.io/cli-utils `status.Compute`), which Flux uses:
//! first the generic properties of any object (being deleted, an unobserved generation, a
//! Reconciling=True or Stalled=True condition), then the rules of the built-in kinds. Jobs follow
//! Flux's own Job reader rather than kstatus's: a running Job is not done until it completes.
//! Where Weir deviates: an object of another kind that carries a `Ready` condition must have it
//! True (kstatus calls such an object current), and a terminating object is in progress (kstatus
//! has a Terminating status, which Flux's wait treats as not current either).
//!
//! `spec.healthCheckExprs` replaces the built-in rules for the objects of a group and kind with
//! CEL expressions, as Flux's RFC 0009 evaluates them: see [`HealthRules`].

use std::{collections::HashMap, sync::Arc};

use cel::{Context, Env, Program};
use chrono::{DateTime, Utc};
use serde_json::Value;
use weir_api::kustomize::CustomHealthCheck;

use crate::ManifestFields as _;

/// The kstatus reading of one live object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Reconciled and ready.
    Current,
    /// Still on its way; the text says what is missing.
    InProgress(String),
    /// Failed and will not get better by itself.
    Failed(String),
}

impl Health {
    /// Whether the object is current.
    #[must_use]
    pub fn is_current(&self) -> bool {
        matches!(self, Self::Current)
    }

    fn in_progress(why: impl Into<String>) -> Self {
        Self::InProgress(why.into())
    }
}

fn int(obj: &Value, pointer: &str) -> Option<i64> {
    obj.pointer(pointer).and_then(Value::as_i64)
}

fn str_at<'a>(obj: &'a Value, pointer: &str) -> Option<&'a str> {
    obj.pointer(pointer).and_then(Value::as_str)
}

/// One entry of `status.conditions`.
struct Condition<'a> {
    r#type: &'a str,
    status: &'a str,
    reason: &'a str,
    message: &'a str,
}

/// `status.conditions` in their order.
fn conditions(obj: &Value) -> impl Iterator<Item = Condition<'_>> {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| {
            let s = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or_default();
            Condition {
                r#type: s("type"),
                status: s("status"),
                reason: s("reason"),
                message: s("message"),
            }
        })
}

fn condition<'a>(obj: &'a Value, r#type: &str) -> Option<Condition<'a>> {
    conditions(obj).find(|c| c.r#type == r#type)
}

/// Reads a live object's health by the built-in rules.
#[must_use]
pub fn object_health(obj: &Value) -> Health {
    object_health_at(obj, Utc::now())
}

/// [`object_health`] as of `now` (a Pod's scheduling grace is timed from its creation).
fn object_health_at(obj: &Value, now: DateTime<Utc>) -> Health {
    if let Some(health) = generic_properties(obj) {
        return health;
    }
    match (obj.group(), obj.kind()) {
        ("apps" | "extensions", "Deployment") => deployment(obj),
        ("apps" | "extensions", "ReplicaSet") => replica_set(obj),
        ("apps", "StatefulSet") => stateful_set(obj),
        ("apps" | "extensions", "DaemonSet") => daemon_set(obj),
        ("batch", "Job") => job(obj),
        ("", "Pod") => pod(obj, now),
        ("", "PersistentVolumeClaim") => match str_at(obj, "/status/phase") {
            Some("Bound") => Health::Current,
            phase => Health::InProgress(format!(
                "PVC is not Bound, phase {}",
                phase.unwrap_or("unknown")
            )),
        },
        ("", "Service") => service(obj),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => crd(obj),
        // kstatus: always ready once they exist (a PDB's status is computed when observed).
        ("", "Secret" | "ConfigMap") | ("batch", "CronJob") | ("policy", "PodDisruptionBudget") => {
            Health::Current
        }
        _ => ready_condition(obj),
    }
}

/// kstatus's checks that hold for every kind; `None` when they decide nothing.
fn generic_properties(obj: &Value) -> Option<Health> {
    if str_at(obj, "/metadata/deletionTimestamp").is_some_and(|t| !t.is_empty()) {
        return Some(Health::in_progress("scheduled for deletion"));
    }
    if let Some(health) = unobserved_generation(obj) {
        return Some(health);
    }
    conditions(obj).find_map(|c| match (c.r#type, c.status) {
        ("Reconciling", "True") => Some(Health::InProgress(
            format!("reconciling: {} {}", c.reason, c.message)
                .trim()
                .to_owned(),
        )),
        ("Stalled", "True") => Some(Health::Failed(
            format!("stalled: {} {}", c.reason, c.message)
                .trim()
                .to_owned(),
        )),
        _ => None,
    })
}

/// In progress when `status.observedGeneration` is set and differs from `metadata.generation`:
/// the controller has not acted on the latest spec.
fn unobserved_generation(obj: &Value) -> Option<Health> {
    let generation = int(obj, "/metadata/generation")?;
    let observed = int(obj, "/status/observedGeneration")?;
    (observed != generation).then(|| {
        Health::InProgress(format!(
            "generation is {generation}, but latest observed generation is {observed}"
        ))
    })
}

/// kstatus: replicas created, updated, old ones gone, available and ready, then the
/// `Progressing` (NewReplicaSetAvailable) and `Available` conditions. A progress deadline
/// exceeded fails.
fn deployment(obj: &Value) -> Health {
    // Without a progress deadline the controller never sets Progressing.
    let mut progressing = int(obj, "/spec/progressDeadlineSeconds").is_none();
    let mut available = false;
    for c in conditions(obj) {
        match c.r#type {
            "Progressing" if c.reason == "ProgressDeadlineExceeded" => {
                return Health::Failed(format!("progress deadline exceeded: {}", c.message));
            }
            "Progressing" if c.status == "True" && c.reason == "NewReplicaSetAvailable" => {
                progressing = true;
            }
            "Available" if c.status == "True" => available = true,
            _ => {}
        }
    }
    let want = int(obj, "/spec/replicas").unwrap_or(1);
    let total = int(obj, "/status/replicas").unwrap_or(0);
    let updated = int(obj, "/status/updatedReplicas").unwrap_or(0);
    let ready = int(obj, "/status/readyReplicas").unwrap_or(0);
    let available_replicas = int(obj, "/status/availableReplicas").unwrap_or(0);
    if want > total {
        return Health::InProgress(format!("replicas: {total}/{want}"));
    }
    if want > updated {
        return Health::InProgress(format!("updated: {updated}/{want}"));
    }
    if total > want {
        return Health::InProgress(format!("pending termination: {}", total - want));
    }
    if updated > available_replicas {
        return Health::InProgress(format!("available: {available_replicas}/{updated}"));
    }
    if want > ready {
        return Health::InProgress(format!("ready: {ready}/{want}"));
    }
    if !progressing {
        return Health::in_progress("ReplicaSet not Available");
    }
    if !available {
        return Health::in_progress("Deployment not Available");
    }
    Health::Current
}

/// kstatus: no ReplicaFailure, then every replica labelled, available and ready, and no extra.
fn replica_set(obj: &Value) -> Health {
    if conditions(obj).any(|c| c.r#type == "ReplicaFailure" && c.status == "True") {
        return Health::in_progress("replica failure, check the pods");
    }
    let want = int(obj, "/spec/replicas").unwrap_or(1);
    let total = int(obj, "/status/replicas").unwrap_or(0);
    let labelled = int(obj, "/status/fullyLabeledReplicas").unwrap_or(0);
    let available = int(obj, "/status/availableReplicas").unwrap_or(0);
    let ready = int(obj, "/status/readyReplicas").unwrap_or(0);
    for (have, what) in [
        (labelled, "labelled"),
        (available, "available"),
        (ready, "ready"),
    ] {
        if want > have {
            return Health::InProgress(format!("{what}: {have}/{want}"));
        }
    }
    if total > want {
        return Health::InProgress(format!("pending termination: {}", total - want));
    }
    Health::Current
}

/// kstatus: OnDelete is managed by the user and current; otherwise every replica exists and is
/// ready with none extra, then with a partition the pods above it are updated, without one
/// every replica is current and the current revision is the update revision (the controller
/// sets no conditions, so a StatefulSet never fails).
fn stateful_set(obj: &Value) -> Health {
    if str_at(obj, "/spec/updateStrategy/type") == Some("OnDelete") {
        return Health::Current;
    }
    let want = int(obj, "/spec/replicas").unwrap_or(1);
    let total = int(obj, "/status/replicas").unwrap_or(0);
    let ready = int(obj, "/status/readyReplicas").unwrap_or(0);
    let current = int(obj, "/status/currentReplicas").unwrap_or(0);
    let updated = int(obj, "/status/updatedReplicas").unwrap_or(0);
    if want > total {
        return Health::InProgress(format!("replicas: {total}/{want}"));
    }
    if want > ready {
        return Health::InProgress(format!("ready: {ready}/{want}"));
    }
    if total > want {
        return Health::InProgress(format!("pending termination: {}", total - want));
    }
    if let Some(partition) = int(obj, "/spec/updateStrategy/rollingUpdate/partition") {
        return if updated < want - partition {
            Health::InProgress(format!(
                "partition rollout: updated {updated}/{}",
                want - partition
            ))
        } else {
            Health::Current
        };
    }
    if want > current {
        return Health::InProgress(format!("current: {current}/{want}"));
    }
    if str_at(obj, "/status/currentRevision") != str_at(obj, "/status/updateRevision") {
        return Health::in_progress("waiting for the update revision to become current");
    }
    Health::Current
}

/// kstatus: the controller must have observed the generation (both fields set), then every
/// desired pod is scheduled, updated, available and ready.
fn daemon_set(obj: &Value) -> Health {
    if int(obj, "/metadata/generation").is_none() {
        return Health::in_progress("metadata.generation not found");
    }
    if int(obj, "/status/observedGeneration").is_none() {
        return Health::in_progress("status.observedGeneration not found");
    }
    let Some(want) = int(obj, "/status/desiredNumberScheduled") else {
        return Health::in_progress("missing status.desiredNumberScheduled");
    };
    for (pointer, what) in [
        ("/status/currentNumberScheduled", "current"),
        ("/status/updatedNumberScheduled", "updated"),
        ("/status/numberAvailable", "available"),
        ("/status/numberReady", "ready"),
    ] {
        let have = int(obj, pointer).unwrap_or(0);
        if want > have {
            return Health::InProgress(format!("{what}: {have}/{want}"));
        }
    }
    Health::Current
}

/// Flux's Job reader: a suspended Job is current, Complete=True is current, Failed=True fails,
/// anything else (not started, running) is in progress.
fn job(obj: &Value) -> Health {
    if obj.pointer("/spec/suspend").and_then(Value::as_bool) == Some(true) {
        return Health::Current;
    }
    for c in conditions(obj) {
        match (c.r#type, c.status) {
            ("Complete", "True") => return Health::Current,
            ("Failed", "True") => {
                return Health::Failed(
                    format!("job failed: {} {}", c.reason, c.message)
                        .trim()
                        .to_owned(),
                );
            }
            _ => {}
        }
    }
    if str_at(obj, "/status/startTime").is_none_or(str::is_empty) {
        Health::in_progress("job not started")
    } else {
        Health::InProgress(format!(
            "job in progress: {} succeeded, {} active, {} failed",
            int(obj, "/status/succeeded").unwrap_or(0),
            int(obj, "/status/active").unwrap_or(0),
            int(obj, "/status/failed").unwrap_or(0)
        ))
    }
}

/// How long a Pod may stay unschedulable before kstatus calls it failed.
const SCHEDULE_WINDOW: chrono::TimeDelta = chrono::TimeDelta::seconds(15);

/// kstatus: a finished Pod is current whether it succeeded or not; a running one must be Ready
/// and fails when a container is in CrashLoopBackOff; a pending one fails once it has been
/// unschedulable past the schedule window.
fn pod(obj: &Value, now: DateTime<Utc>) -> Health {
    match str_at(obj, "/status/phase").unwrap_or_default() {
        "Succeeded" | "Failed" => Health::Current,
        "Running" => {
            if condition(obj, "Ready").is_some_and(|c| c.status == "True") {
                return Health::Current;
            }
            let crash_looping = crash_looping_containers(obj);
            if crash_looping.is_empty() {
                Health::in_progress("pod is running but not Ready")
            } else {
                Health::Failed(format!(
                    "containers in CrashLoopBackOff: {}",
                    crash_looping.join(",")
                ))
            }
        }
        "Pending" => {
            let unschedulable = condition(obj, "PodScheduled")
                .is_some_and(|c| c.status == "False" && c.reason == "Unschedulable");
            if !unschedulable {
                return Health::in_progress("pod is pending");
            }
            let created = str_at(obj, "/metadata/creationTimestamp")
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok());
            match created {
                Some(created) if now - SCHEDULE_WINDOW < created => {
                    Health::in_progress("pod has not been scheduled")
                }
                _ => Health::Failed("pod could not be scheduled".to_owned()),
            }
        }
        "" => Health::in_progress("pod phase not available"),
        phase => Health::InProgress(format!("unknown pod phase {phase}")),
    }
}

fn crash_looping_containers(obj: &Value) -> Vec<&str> {
    obj.pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|s| str_at(s, "/state/waiting/reason") == Some("CrashLoopBackOff"))
        .filter_map(|s| s.get("name").and_then(Value::as_str))
        .collect()
}

/// kstatus: a LoadBalancer Service waits for its cluster IP; every other Service is current.
fn service(obj: &Value) -> Health {
    let load_balancer = str_at(obj, "/spec/type") == Some("LoadBalancer");
    if load_balancer && str_at(obj, "/spec/clusterIP").is_none_or(str::is_empty) {
        Health::in_progress("cluster IP not set")
    } else {
        Health::Current
    }
}

/// kstatus, by the conditions in their order: NamesAccepted=False fails, Established=True is
/// current, Established=False fails unless still Installing.
fn crd(obj: &Value) -> Health {
    for c in conditions(obj) {
        match (c.r#type, c.status) {
            ("NamesAccepted", "False") => {
                return Health::Failed(format!("names not accepted: {} {}", c.reason, c.message));
            }
            ("Established", "True") => return Health::Current,
            ("Established", "False") if c.reason != "Installing" => {
                return Health::Failed(format!("not established: {} {}", c.reason, c.message));
            }
            _ => {}
        }
    }
    Health::in_progress("not established")
}

/// Any other kind (Weir's addition to kstatus): a `Ready` condition, when present, must be
/// True; an object without one is current once it exists.
fn ready_condition(obj: &Value) -> Health {
    match condition(obj, "Ready") {
        None => Health::Current,
        Some(c) if c.status == "True" => Health::Current,
        Some(c) => Health::InProgress(format!("Ready={} {}: {}", c.status, c.reason, c.message)),
    }
}

/// Why `spec.healthCheckExprs` cannot be used; each names the entry and the field.
#[derive(Debug, thiserror::Error)]
pub enum HealthExprError {
    #[error("invalid healthCheckExprs[{index}].{field} ({api_version} {kind})")]
    Compile {
        index: usize,
        field: &'static str,
        api_version: String,
        kind: String,
        #[source]
        source: cel::ParseErrors,
    },
    #[error("invalid healthCheckExprs[{index}].current ({api_version} {kind}): it is empty")]
    MissingCurrent {
        index: usize,
        api_version: String,
        kind: String,
    },
}

/// The status each expression of an entry stands for, in the order they are evaluated.
const OUTCOMES: [(&str, Outcome); 3] = [
    ("inProgress", Outcome::InProgress),
    ("failed", Outcome::Failed),
    ("current", Outcome::Current),
];

#[derive(Debug, Clone, Copy)]
enum Outcome {
    InProgress,
    Failed,
    Current,
}

/// One compiled `healthCheckExprs` entry.
#[derive(Debug)]
struct CompiledCheck {
    index: usize,
    group: String,
    kind: String,
    /// In the order of [`OUTCOMES`]; `None` for an optional expression left out.
    programs: [Option<Program>; 3],
}

/// How the health of objects is read for one spec (a Kustomization's): the `healthCheckExprs`,
/// compiled once, for the objects of their group and kind, the built-in rules for the rest.
///
/// As Flux evaluates them (RFC 0009): an object whose `status.observedGeneration` is set and
/// differs from `metadata.generation` is in progress; otherwise `inProgress`, `failed` and
/// `current` run in this order and the first that returns true decides; when none does the
/// object is in progress. The object's top-level fields (`metadata`, `spec`, `status`, ...) are
/// the variables, so a field the object lacks is an evaluation error. An evaluation error or a
/// result that is not a bool leaves the object in progress with the error as the reason, so the
/// wait goes on until the timeout, as Flux's Unknown status does. Objects are matched by the
/// group of `apiVersion` and by `kind`, whatever the version; the first entry for a group and
/// kind is used.
pub struct HealthRules {
    checks: Vec<CompiledCheck>,
    env: Option<Arc<Env>>,
}

impl std::fmt::Debug for HealthRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthRules")
            .field("checks", &self.checks)
            .finish_non_exhaustive()
    }
}

impl Default for HealthRules {
    /// The built-in rules only.
    fn default() -> Self {
        Self {
            checks: vec![],
            env: None,
        }
    }
}

impl HealthRules {
    /// Compiles every entry of `spec.healthCheckExprs`; the first invalid expression is the
    /// error. Flux's environment has the standard library with the strings and encoders
    /// extensions; this one too (cel-rust has no sets extension).
    pub fn compile(exprs: &[CustomHealthCheck]) -> Result<Self, HealthExprError> {
        if exprs.is_empty() {
            return Ok(Self::default());
        }
        let env = cel_env();
        let mut checks = Vec::with_capacity(exprs.len());
        for (index, check) in exprs.iter().enumerate() {
            if check.current.trim().is_empty() {
                return Err(HealthExprError::MissingCurrent {
                    index,
                    api_version: check.api_version.clone(),
                    kind: check.kind.clone(),
                });
            }
            let sources = [
                check.in_progress.as_deref(),
                check.failed.as_deref(),
                Some(check.current.as_str()),
            ];
            let mut programs = [None, None, None];
            for ((slot, source), (field, _)) in programs.iter_mut().zip(sources).zip(OUTCOMES) {
                // An empty optional expression is one left out, as Flux's omitempty strings.
                let Some(source) = source.filter(|s| !s.trim().is_empty()) else {
                    continue;
                };
                let program = env
                    .compile(source)
                    .map_err(|source| HealthExprError::Compile {
                        index,
                        field,
                        api_version: check.api_version.clone(),
                        kind: check.kind.clone(),
                        source,
                    })?;
                *slot = Some(program);
            }
            let group = check
                .api_version
                .rsplit_once('/')
                .map_or("", |(g, _)| g)
                .to_owned();
            checks.push(CompiledCheck {
                index,
                group,
                kind: check.kind.clone(),
                programs,
            });
        }
        Ok(Self {
            checks,
            env: Some(env),
        })
    }

    /// The health of a live object: by its expressions when an entry matches its group and
    /// kind, otherwise by the built-in rules.
    #[must_use]
    pub fn health(&self, obj: &Value) -> Health {
        let (group, kind) = (obj.group(), obj.kind());
        let found = self
            .checks
            .iter()
            .find(|c| c.kind == kind && c.group == group);
        match (found, &self.env) {
            (Some(check), Some(env)) => evaluate(check, env, obj),
            _ => object_health(obj),
        }
    }
}

/// The CEL environment of Flux's expressions (healthCheckExprs, dependsOn readyExpr), built
/// once per process and shared by every expression.
#[must_use]
pub fn cel_env() -> Arc<Env> {
    static ENV: std::sync::LazyLock<Arc<Env>> = std::sync::LazyLock::new(|| Arc::new(build_env()));
    Arc::clone(&ENV)
}

fn build_env() -> Env {
    let mut env = Env::stdlib();
    // Both register fresh function names on a fresh standard environment; a conflict would be
    // a bug of the crate, and the standard library alone still evaluates Flux's examples.
    for extension in [cel::extensions::strings, cel::extensions::encoders] {
        if let Err(error) = env.add_extension(extension) {
            tracing::warn!(%error, "CEL extension not registered");
        }
    }
    env
}

fn evaluate(check: &CompiledCheck, env: &Arc<Env>, obj: &Value) -> Health {
    if let Some(health) = unobserved_generation(obj) {
        return health;
    }
    let mut context = Context::with_env(Arc::clone(env));
    if let Some(fields) = obj.as_object() {
        for (name, value) in fields {
            context.add_variable_from_value(name.as_str(), to_cel(value));
        }
    }
    let index = check.index;
    for (program, (field, outcome)) in check.programs.iter().zip(OUTCOMES) {
        let Some(program) = program else { continue };
        match program.execute(&context) {
            Ok(cel::Value::Bool(false)) => {}
            Ok(cel::Value::Bool(true)) => {
                return match outcome {
                    Outcome::Current => Health::Current,
                    Outcome::InProgress => {
                        Health::InProgress(format!("healthCheckExprs[{index}].{field} is true"))
                    }
                    Outcome::Failed => {
                        Health::Failed(format!("healthCheckExprs[{index}].{field} is true"))
                    }
                };
            }
            Ok(other) => {
                return Health::InProgress(format!(
                    "healthCheckExprs[{index}].{field} returned {}, not a bool",
                    other.type_of()
                ));
            }
            Err(error) => {
                return Health::InProgress(format!(
                    "healthCheckExprs[{index}].{field} failed to evaluate: {error}"
                ));
            }
        }
    }
    Health::InProgress(format!(
        "no expression of healthCheckExprs[{index}] is true"
    ))
}

/// A JSON value as CEL sees it: whole numbers are `int` (as Kubernetes' unstructured objects
/// hold them), larger ones `uint`, the rest `double`.
#[must_use]
pub fn to_cel(value: &Value) -> cel::Value {
    match value {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => n.as_i64().map_or_else(
            || {
                n.as_u64().map_or_else(
                    || cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
                    cel::Value::UInt,
                )
            },
            cel::Value::Int,
        ),
        Value::String(s) => cel::Value::from(s.as_str()),
        Value::Array(items) => cel::Value::List(Arc::new(items.iter().map(to_cel).collect())),
        Value::Object(fields) => cel::Value::Map(cel::objects::Map::from(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), to_cel(v)))
                .collect::<HashMap<_, _>>(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn in_progress(health: &Health) -> bool {
        matches!(health, Health::InProgress(_))
    }

    fn failed(health: &Health) -> bool {
        matches!(health, Health::Failed(_))
    }

    fn deploy(status: &Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"generation": 2},
               "spec": {"replicas": 2, "progressDeadlineSeconds": 600}, "status": status})
    }

    fn rolled_out() -> Value {
        json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2,
            "availableReplicas": 2, "conditions": [
                {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
                {"type": "Available", "status": "True"}]})
    }

    #[test]
    fn a_rolled_out_available_deployment_is_current() {
        assert_eq!(object_health(&deploy(&rolled_out())), Health::Current);
    }

    #[test]
    fn a_deployment_short_of_replicas_or_generation_is_in_progress() {
        let mut old = rolled_out();
        old["observedGeneration"] = json!(1);
        assert!(in_progress(&object_health(&deploy(&old))));
        let mut short = rolled_out();
        short["availableReplicas"] = json!(1);
        assert_eq!(
            object_health(&deploy(&short)),
            Health::InProgress("available: 1/2".to_owned())
        );
        let stuck = deploy(&json!({"observedGeneration": 2, "conditions": [
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
             "message": "too slow"}]}));
        assert!(failed(&object_health(&stuck)));
    }

    #[test]
    fn a_deployment_needs_ready_replicas_and_a_completed_progressing_condition() {
        let mut not_ready = rolled_out();
        not_ready["readyReplicas"] = json!(1);
        assert_eq!(
            object_health(&deploy(&not_ready)),
            Health::InProgress("ready: 1/2".to_owned())
        );
        // Available, but the new ReplicaSet's rollout is not reported complete yet.
        let mut rolling = rolled_out();
        rolling["conditions"][0]["reason"] = json!("ReplicaSetUpdated");
        assert!(in_progress(&object_health(&deploy(&rolling))));
        // kstatus fails on the reason whatever the condition's status.
        let mut exceeded = rolled_out();
        exceeded["conditions"][0] = json!({"type": "Progressing", "status": "Unknown",
            "reason": "ProgressDeadlineExceeded"});
        assert!(failed(&object_health(&deploy(&exceeded))));
    }

    #[test]
    fn a_newer_observed_generation_is_not_current_either() {
        let mut ahead = rolled_out();
        ahead["observedGeneration"] = json!(3);
        assert!(in_progress(&object_health(&deploy(&ahead))));
    }

    fn sts(spec: &Value, status: &Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
               "metadata": {"generation": 3}, "spec": spec, "status": status})
    }

    fn sts_status(current: &str, update: &str) -> Value {
        json!({"observedGeneration": 3, "replicas": 3, "readyReplicas": 3, "currentReplicas": 3,
            "updatedReplicas": 3, "currentRevision": current, "updateRevision": update})
    }

    #[test]
    fn a_statefulset_is_current_only_when_the_update_revision_is_rolled_out() {
        let spec = json!({"replicas": 3});
        assert_eq!(
            object_health(&sts(&spec, &sts_status("web-1", "web-1"))),
            Health::Current
        );
        // Every pod ready, but the new revision has not replaced the old one yet.
        assert!(in_progress(&object_health(&sts(
            &spec,
            &sts_status("web-1", "web-2")
        ))));
        let mut fewer_current = sts_status("web-1", "web-2");
        fewer_current["currentReplicas"] = json!(1);
        assert_eq!(
            object_health(&sts(&spec, &fewer_current)),
            Health::InProgress("current: 1/3".to_owned())
        );
        let mut unobserved = sts_status("web-1", "web-1");
        unobserved["observedGeneration"] = json!(2);
        assert!(in_progress(&object_health(&sts(&spec, &unobserved))));
    }

    #[test]
    fn a_statefulset_with_a_partition_or_on_delete_follows_its_strategy() {
        let partitioned =
            json!({"replicas": 3, "updateStrategy": {"rollingUpdate": {"partition": 2}}});
        let mut status = sts_status("web-1", "web-2");
        status["updatedReplicas"] = json!(1);
        assert_eq!(object_health(&sts(&partitioned, &status)), Health::Current);
        status["updatedReplicas"] = json!(0);
        assert!(in_progress(&object_health(&sts(&partitioned, &status))));
        let on_delete = json!({"replicas": 3, "updateStrategy": {"type": "OnDelete"}});
        assert_eq!(
            object_health(&sts(&on_delete, &json!({"observedGeneration": 3}))),
            Health::Current
        );
    }

    fn ds(status: &Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
               "metadata": {"generation": 1}, "status": status})
    }

    #[test]
    fn a_daemonset_is_current_once_every_pod_is_updated_available_and_ready() {
        let done = json!({"observedGeneration": 1, "desiredNumberScheduled": 2,
            "currentNumberScheduled": 2, "updatedNumberScheduled": 2, "numberAvailable": 2,
            "numberReady": 2});
        assert_eq!(object_health(&ds(&done)), Health::Current);
        // Old pods still available, the new template not yet rolled out.
        let mut rolling = done.clone();
        rolling["updatedNumberScheduled"] = json!(1);
        assert_eq!(
            object_health(&ds(&rolling)),
            Health::InProgress("updated: 1/2".to_owned())
        );
        let mut not_ready = done.clone();
        not_ready["numberReady"] = json!(0);
        assert!(in_progress(&object_health(&ds(&not_ready))));
        // The controller has not written a status yet.
        let mut unobserved = done;
        unobserved
            .as_object_mut()
            .unwrap()
            .remove("observedGeneration");
        assert!(in_progress(&object_health(&ds(&unobserved))));
    }

    fn job(spec: &Value, status: &Value) -> Value {
        json!({"apiVersion": "batch/v1", "kind": "Job", "spec": spec, "status": status})
    }

    #[test]
    fn jobs_must_complete() {
        let conds = |c: Value| json!({"startTime": "2024-01-01T00:00:00Z", "conditions": c});
        let none = json!({});
        assert_eq!(
            object_health(&job(
                &none,
                &conds(json!([{"type": "Complete", "status": "True"}]))
            )),
            Health::Current
        );
        assert!(failed(&object_health(&job(
            &none,
            &conds(json!([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]))
        ))));
        assert!(in_progress(&object_health(&job(&none, &conds(json!([]))))));
        assert!(in_progress(&object_health(&job(&none, &json!({})))));
    }

    #[test]
    fn a_suspended_job_is_current() {
        assert_eq!(
            object_health(&job(&json!({"suspend": true}), &json!({}))),
            Health::Current
        );
    }

    fn crd(conditions: &Value) -> Value {
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "status": {"conditions": conditions}})
    }

    #[test]
    fn a_crd_is_current_once_established_and_fails_when_its_names_are_refused() {
        assert!(
            object_health(&crd(&json!([{"type": "Established", "status": "True"}]))).is_current()
        );
        assert!(in_progress(&object_health(&crd(&json!([
            {"type": "Established", "status": "False", "reason": "Installing"}])))));
        assert!(failed(&object_health(&crd(&json!([
            {"type": "NamesAccepted", "status": "False", "reason": "MultipleNamesNotAllowed"},
            {"type": "Established", "status": "False", "reason": "NotAccepted"}])))));
    }

    fn pod(status: &Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"creationTimestamp": "2024-01-01T00:00:00Z"}, "status": status})
    }

    #[test]
    fn pods_follow_their_phase_as_kstatus_reads_it() {
        let at = |secs: i64| {
            DateTime::parse_from_rfc3339("2024-01-01T00:00:00Z")
                .unwrap()
                .to_utc()
                + chrono::TimeDelta::seconds(secs)
        };
        // A finished pod is done, succeeded or not.
        assert_eq!(
            object_health_at(&pod(&json!({"phase": "Failed"})), at(0)),
            Health::Current
        );
        let ready =
            json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]});
        assert_eq!(object_health_at(&pod(&ready), at(0)), Health::Current);
        let crashing = json!({"phase": "Running", "containerStatuses": [
            {"name": "app", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]});
        assert_eq!(
            object_health_at(&pod(&crashing), at(0)),
            Health::Failed("containers in CrashLoopBackOff: app".to_owned())
        );
        let unschedulable = json!({"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]});
        assert!(in_progress(&object_health_at(&pod(&unschedulable), at(5))));
        assert!(failed(&object_health_at(&pod(&unschedulable), at(60))));
    }

    #[test]
    fn a_load_balancer_service_waits_for_its_cluster_ip_and_a_pvc_for_binding() {
        let svc = |spec: Value| json!({"apiVersion": "v1", "kind": "Service", "spec": spec});
        assert!(in_progress(&object_health(&svc(
            json!({"type": "LoadBalancer"})
        ))));
        assert_eq!(
            object_health(&svc(
                json!({"type": "LoadBalancer", "clusterIP": "10.0.0.1"})
            )),
            Health::Current
        );
        assert_eq!(object_health(&svc(json!({}))), Health::Current);
        let pvc = |phase: &str| {
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "status": {"phase": phase}})
        };
        assert_eq!(object_health(&pvc("Bound")), Health::Current);
        assert!(in_progress(&object_health(&pvc("Pending"))));
    }

    #[test]
    fn a_replicaset_needs_every_replica_labelled_available_and_ready() {
        let rs = |labelled: i64| {
            json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "spec": {"replicas": 2},
                "status": {"replicas": 2, "fullyLabeledReplicas": labelled,
                           "availableReplicas": 2, "readyReplicas": 2}})
        };
        assert_eq!(object_health(&rs(2)), Health::Current);
        assert!(in_progress(&object_health(&rs(1))));
    }

    #[test]
    fn other_kinds_follow_their_ready_condition() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}});
        assert_eq!(object_health(&cm), Health::Current);
        let ks = |status: &str| {
            json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1",
            "kind": "Kustomization", "metadata": {"generation": 1},
            "status": {"observedGeneration": 1,
                       "conditions": [{"type": "Ready", "status": status, "reason": "R",
                                       "message": "m"}]}})
        };
        assert_eq!(object_health(&ks("True")), Health::Current);
        assert!(in_progress(&object_health(&ks("False"))));
    }

    #[test]
    fn any_object_being_deleted_reconciling_or_stalled_is_not_current() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"deletionTimestamp": "2024-01-01T00:00:00Z"}});
        assert!(in_progress(&object_health(&cm)));
        // The first of Reconciling=True and Stalled=True decides, in the conditions' order.
        let widget = |first: &str, second: &str| {
            json!({"apiVersion": "example.com/v1", "kind": "Widget", "status": {"conditions": [
                {"type": first, "status": "True"}, {"type": second, "status": "True"}]}})
        };
        assert!(in_progress(&object_health(&widget(
            "Reconciling",
            "Stalled"
        ))));
        assert!(failed(&object_health(&widget("Stalled", "Reconciling"))));
    }

    fn sealed_secret_rules() -> HealthRules {
        HealthRules::compile(&[CustomHealthCheck {
            api_version: "bitnami.com/v1alpha1".to_owned(),
            kind: "SealedSecret".to_owned(),
            in_progress: Some(
                "status.conditions.exists(e, e.type == 'Synced' && e.status == 'Unknown')"
                    .to_owned(),
            ),
            failed: Some(
                "status.conditions.filter(e, e.type == 'Synced').all(e, e.status == 'False')"
                    .to_owned(),
            ),
            current: "status.conditions.filter(e, e.type == 'Synced').all(e, e.status == 'True') \
                      && status.observedGeneration == metadata.generation"
                .to_owned(),
        }])
        .unwrap()
    }

    fn sealed_secret(synced: &str) -> Value {
        json!({"apiVersion": "bitnami.com/v1alpha2", "kind": "SealedSecret",
            "metadata": {"name": "s", "generation": 2},
            "status": {"observedGeneration": 2,
                       "conditions": [{"type": "Synced", "status": synced}]}})
    }

    #[test]
    fn health_check_exprs_decide_a_custom_resources_status_in_fluxs_order() {
        let rules = sealed_secret_rules();
        // Matched by group and kind; the version of the object does not matter.
        assert_eq!(rules.health(&sealed_secret("True")), Health::Current);
        assert_eq!(
            rules.health(&sealed_secret("False")),
            Health::Failed("healthCheckExprs[0].failed is true".to_owned())
        );
        assert_eq!(
            rules.health(&sealed_secret("Unknown")),
            Health::InProgress("healthCheckExprs[0].inProgress is true".to_owned())
        );
        // Without a Ready condition the built-in rules would call it current.
        let mut unsynced = sealed_secret("True");
        unsynced["status"]["conditions"][0]["status"] = json!("Maybe");
        assert!(in_progress(&rules.health(&unsynced)));
        assert_eq!(object_health(&unsynced), Health::Current);
        // An unobserved generation is in progress before any expression runs.
        let mut old = sealed_secret("True");
        old["status"]["observedGeneration"] = json!(1);
        assert!(in_progress(&rules.health(&old)));
    }

    #[test]
    fn an_expression_that_fails_to_evaluate_leaves_the_object_in_progress() {
        let rules = sealed_secret_rules();
        let no_status = json!({"apiVersion": "bitnami.com/v1alpha1", "kind": "SealedSecret",
            "metadata": {"name": "s"}});
        let Health::InProgress(why) = rules.health(&no_status) else {
            panic!("not in progress");
        };
        assert!(
            why.starts_with("healthCheckExprs[0].inProgress failed to evaluate"),
            "{why}"
        );
        let not_bool = HealthRules::compile(&[CustomHealthCheck {
            api_version: "example.com/v1".to_owned(),
            kind: "Widget".to_owned(),
            current: "status.replicas + 1".to_owned(),
            ..CustomHealthCheck::default()
        }])
        .unwrap();
        let widget = json!({"apiVersion": "example.com/v1", "kind": "Widget",
            "status": {"replicas": 2}});
        assert_eq!(
            not_bool.health(&widget),
            Health::InProgress("healthCheckExprs[0].current returned int, not a bool".to_owned())
        );
    }

    #[test]
    fn an_expression_that_does_not_compile_names_its_entry_and_field() {
        let check = |current: &str, failed: Option<&str>| CustomHealthCheck {
            api_version: "example.com/v1".to_owned(),
            kind: "Widget".to_owned(),
            current: current.to_owned(),
            failed: failed.map(str::to_owned),
            in_progress: None,
        };
        let ok = check("true", None);
        let error =
            HealthRules::compile(&[ok.clone(), check("true", Some("status.(("))]).unwrap_err();
        assert!(matches!(
            error,
            HealthExprError::Compile {
                index: 1,
                field: "failed",
                ..
            }
        ));
        assert!(
            weir_runtime::chain(&error)
                .starts_with("invalid healthCheckExprs[1].failed (example.com/v1 Widget): "),
            "{error}"
        );
        let empty = HealthRules::compile(&[check(" ", None)]).unwrap_err();
        assert_eq!(
            empty.to_string(),
            "invalid healthCheckExprs[0].current (example.com/v1 Widget): it is empty"
        );
    }

    #[test]
    fn objects_no_expression_matches_keep_the_built_in_rules() {
        let rules = sealed_secret_rules();
        let mut not_rolled_out = rolled_out();
        not_rolled_out["readyReplicas"] = json!(0);
        assert_eq!(
            rules.health(&deploy(&not_rolled_out)),
            object_health(&deploy(&not_rolled_out))
        );
        assert_eq!(rules.health(&deploy(&rolled_out())), Health::Current);
        // Same kind in another group.
        let other = json!({"apiVersion": "example.com/v1", "kind": "SealedSecret",
            "status": {"conditions": [{"type": "Ready", "status": "False"}]}});
        assert!(in_progress(&rules.health(&other)));
        assert_eq!(
            HealthRules::default().health(&deploy(&rolled_out())),
            Health::Current
        );
    }
}
