//! Object health by kstatus rules: whether an applied object reached its desired state.

use serde_json::Value;

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
    #[must_use]
    pub fn is_current(&self) -> bool {
        matches!(self, Self::Current)
    }
}

fn int(obj: &Value, pointer: &str) -> Option<i64> {
    obj.pointer(pointer).and_then(Value::as_i64)
}

/// The condition of `type` in `status.conditions`: (status, reason, message).
fn condition<'a>(obj: &'a Value, r#type: &str) -> Option<(&'a str, &'a str, &'a str)> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(r#type))
        .map(|c| {
            let s = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or_default();
            (s("status"), s("reason"), s("message"))
        })
}

/// Reads a live object's health.
#[must_use]
pub fn object_health(obj: &Value) -> Health {
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
    let group = obj
        .get("apiVersion")
        .and_then(Value::as_str)
        .and_then(|v| v.rsplit_once('/').map(|(g, _)| g))
        .unwrap_or_default();
    // A controller that has not seen the latest spec has not acted on it.
    if let (Some(generation), Some(observed)) = (
        int(obj, "/metadata/generation"),
        int(obj, "/status/observedGeneration"),
    ) && observed < generation
    {
        return Health::InProgress(format!(
            "observed generation {observed} is older than generation {generation}"
        ));
    }
    match (group, kind) {
        ("apps", "Deployment") => deployment(obj),
        ("apps", "StatefulSet" | "ReplicaSet") => replicas_ready(obj, "/status/readyReplicas"),
        ("apps", "DaemonSet") => daemon_set(obj),
        ("batch", "Job") => job(obj),
        ("", "Pod") => pod(obj),
        ("", "PersistentVolumeClaim") => match obj.pointer("/status/phase").and_then(Value::as_str)
        {
            Some("Bound") => Health::Current,
            phase => Health::InProgress(format!("phase {}", phase.unwrap_or("unknown"))),
        },
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            match condition(obj, "Established") {
                Some(("True", _, _)) => Health::Current,
                _ => Health::InProgress("not established".to_owned()),
            }
        }
        _ => generic(obj),
    }
}

fn deployment(obj: &Value) -> Health {
    if let Some(("False", "ProgressDeadlineExceeded", message)) = condition(obj, "Progressing") {
        return Health::Failed(format!("progress deadline exceeded: {message}"));
    }
    let want = int(obj, "/spec/replicas").unwrap_or(1);
    let updated = int(obj, "/status/updatedReplicas").unwrap_or(0);
    let available = int(obj, "/status/availableReplicas").unwrap_or(0);
    let total = int(obj, "/status/replicas").unwrap_or(0);
    if updated < want {
        return Health::InProgress(format!("{updated} of {want} replicas updated"));
    }
    if total > updated {
        return Health::InProgress(format!(
            "{} old replicas pending termination",
            total - updated
        ));
    }
    if available < want {
        return Health::InProgress(format!("{available} of {want} replicas available"));
    }
    // A Deployment scaled to zero is done once rolled out, whatever Available says.
    match condition(obj, "Available") {
        Some(("True", _, _)) => Health::Current,
        _ if want == 0 => Health::Current,
        _ => Health::InProgress("not Available".to_owned()),
    }
}

fn replicas_ready(obj: &Value, ready_pointer: &str) -> Health {
    let want = int(obj, "/spec/replicas").unwrap_or(1);
    let ready = int(obj, ready_pointer).unwrap_or(0);
    if ready < want {
        Health::InProgress(format!("{ready} of {want} replicas ready"))
    } else {
        Health::Current
    }
}

fn daemon_set(obj: &Value) -> Health {
    let want = int(obj, "/status/desiredNumberScheduled").unwrap_or(0);
    let available = int(obj, "/status/numberAvailable").unwrap_or(0);
    if available < want {
        Health::InProgress(format!("{available} of {want} pods available"))
    } else {
        Health::Current
    }
}

fn job(obj: &Value) -> Health {
    if let Some(("True", reason, message)) = condition(obj, "Failed") {
        return Health::Failed(format!("job failed: {reason} {message}").trim().to_owned());
    }
    match condition(obj, "Complete") {
        Some(("True", _, _)) => Health::Current,
        _ => Health::InProgress("job not complete".to_owned()),
    }
}

fn pod(obj: &Value) -> Health {
    match obj.pointer("/status/phase").and_then(Value::as_str) {
        Some("Succeeded") => return Health::Current,
        Some("Failed") => return Health::Failed("pod failed".to_owned()),
        _ => {}
    }
    match condition(obj, "Ready") {
        Some(("True", _, _)) => Health::Current,
        _ => Health::InProgress("pod not ready".to_owned()),
    }
}

/// Any other kind: Stalled=True fails, Ready must be True when present, Reconciling=True is
/// progress; an object without conditions is current once it exists.
fn generic(obj: &Value) -> Health {
    if let Some(("True", reason, message)) = condition(obj, "Stalled") {
        return Health::Failed(format!("stalled: {reason} {message}").trim().to_owned());
    }
    if let Some(("True", reason, _)) = condition(obj, "Reconciling") {
        return Health::InProgress(format!("reconciling: {reason}"));
    }
    match condition(obj, "Ready") {
        None | Some(("True", _, _)) => Health::Current,
        Some((status, reason, message)) => {
            Health::InProgress(format!("Ready={status} {reason}: {message}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn deploy(status: &Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"generation": 2}, "spec": {"replicas": 2}, "status": status})
    }

    #[test]
    fn a_rolled_out_available_deployment_is_current() {
        let d = deploy(
            &json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2,
            "availableReplicas": 2, "conditions": [{"type": "Available", "status": "True"}]}),
        );
        assert_eq!(object_health(&d), Health::Current);
    }

    #[test]
    fn a_deployment_short_of_replicas_or_generation_is_in_progress() {
        let old = deploy(
            &json!({"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2,
            "availableReplicas": 2}),
        );
        assert!(matches!(object_health(&old), Health::InProgress(_)));
        let short = deploy(
            &json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2,
            "availableReplicas": 1}),
        );
        assert_eq!(
            object_health(&short),
            Health::InProgress("1 of 2 replicas available".to_owned())
        );
        let stuck = deploy(&json!({"observedGeneration": 2, "conditions": [
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
             "message": "too slow"}]}));
        assert!(matches!(object_health(&stuck), Health::Failed(_)));
    }

    #[test]
    fn jobs_must_complete() {
        let job = |conds: Value| {
            json!({"apiVersion": "batch/v1", "kind": "Job",
                                      "status": {"conditions": conds}})
        };
        assert_eq!(
            object_health(&job(json!([{"type": "Complete", "status": "True"}]))),
            Health::Current
        );
        assert!(matches!(
            object_health(&job(
                json!([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}])
            )),
            Health::Failed(_)
        ));
        assert!(matches!(
            object_health(&job(json!([]))),
            Health::InProgress(_)
        ));
    }

    #[test]
    fn other_kinds_follow_their_ready_condition() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}});
        assert_eq!(object_health(&cm), Health::Current);
        let ks = |status: &str| {
            json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1",
            "kind": "Kustomization", "metadata": {"generation": 1},
            "status": {"observedGeneration": 1,
                       "conditions": [{"type": "Ready", "status": status, "reason": "R", "message": "m"}]}})
        };
        assert_eq!(object_health(&ks("True")), Health::Current);
        assert!(matches!(object_health(&ks("False")), Health::InProgress(_)));
        let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "status": {"conditions": [{"type": "Established", "status": "True"}]}});
        assert!(object_health(&crd).is_current());
    }
}
