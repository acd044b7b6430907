//! Who drifted an object: the field managers other than Weir's that own, in the live object's
//! `managedFields`, fields Weir applies with a different value (`kubectl-scale changed
//! .spec.replicas`). Server-side apply records every writer of every field, so the answer is
//! the API server's own bookkeeping, not a guess.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// `<manager> changed <path>, <path>` for each manager other than `field_manager` (and other
/// than writers of the status subresource) owning a field of `desired` whose live value
/// differs, in the order of `managedFields`.
#[must_use]
pub fn drift_attribution(live: &Value, desired: &Value, field_manager: &str) -> Vec<String> {
    let Some(entries) = live
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
    else {
        return vec![];
    };
    let mut by_manager: BTreeMap<usize, (String, Vec<String>)> = BTreeMap::new();
    for (i, entry) in entries.iter().enumerate() {
        let manager = entry.get("manager").and_then(Value::as_str).unwrap_or("");
        let subresource = entry
            .get("subresource")
            .and_then(Value::as_str)
            .unwrap_or("");
        // A status writer never changes what Weir applies; the scale subresource does.
        if manager == field_manager || subresource == "status" {
            continue;
        }
        let Some(fields) = entry.get("fieldsV1").and_then(Value::as_object) else {
            continue;
        };
        let mut paths = vec![];
        walk(fields, Some(desired), Some(live), "", &mut paths);
        // metadata.managedFields itself and Weir's own bookkeeping are never drift.
        paths.retain(|p| !p.starts_with(".metadata.managedFields"));
        if !paths.is_empty() {
            let name = if manager.is_empty() {
                "an unnamed manager".to_owned()
            } else {
                manager.to_owned()
            };
            by_manager.insert(i, (name, paths));
        }
    }
    by_manager
        .into_values()
        .map(|(manager, paths)| format!("{manager} changed {}", paths.join(", ")))
        .collect()
}

/// Collects the leaf paths of `fields` (a fieldsV1 set) present in `desired` with a live value
/// that differs.
fn walk(
    fields: &Map<String, Value>,
    desired: Option<&Value>,
    live: Option<&Value>,
    path: &str,
    out: &mut Vec<String>,
) {
    let Some(desired) = desired else {
        return;
    };
    for (key, sub) in fields {
        let children = sub.as_object();
        let is_leaf = children.is_none_or(|c| c.keys().all(|k| k == "."));
        if let Some(name) = key.strip_prefix("f:") {
            let d = desired.get(name);
            let l = live.and_then(|l| l.get(name));
            let here = format!("{path}.{name}");
            if d.is_none() {
                continue;
            }
            if is_leaf {
                if d != l {
                    out.push(here);
                }
            } else if let Some(children) = children {
                walk(children, d, l, &here, out);
            }
        } else if let Some(key_json) = key.strip_prefix("k:") {
            let Ok(Value::Object(wanted)) = serde_json::from_str::<Value>(key_json) else {
                continue;
            };
            let find = |list: Option<&Value>| -> Option<Value> {
                list?
                    .as_array()?
                    .iter()
                    .find(|item| wanted.iter().all(|(k, v)| item.get(k) == Some(v)))
                    .cloned()
            };
            let d = find(Some(desired));
            let l = find(live);
            let label = wanted
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{k}={}",
                        v.as_str().map_or_else(|| v.to_string(), str::to_owned)
                    )
                })
                .collect::<Vec<_>>()
                .join(",");
            let here = format!("{path}[{label}]");
            if d.is_none() {
                continue;
            }
            if is_leaf {
                if d != l {
                    out.push(here);
                }
            } else if let Some(children) = children {
                walk(children, d.as_ref(), l.as_ref(), &here, out);
            }
        } else if let Some(value_json) = key.strip_prefix("v:") {
            let Ok(value) = serde_json::from_str::<Value>(value_json) else {
                continue;
            };
            let in_desired = desired.as_array().is_some_and(|a| a.contains(&value));
            let in_live = live
                .and_then(Value::as_array)
                .is_some_and(|a| a.contains(&value));
            if in_desired && !in_live {
                out.push(format!("{path}[{value}]"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn live() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {
                "name": "app",
                "managedFields": [
                    { "manager": "kustomize-controller", "operation": "Apply",
                      "fieldsV1": { "f:spec": { "f:replicas": {}, "f:template": { "f:spec": {
                          "f:containers": { "k:{\"name\":\"app\"}": { ".": {}, "f:image": {}, "f:name": {} } } } } } } },
                    { "manager": "kubectl-scale", "operation": "Update", "subresource": "scale",
                      "fieldsV1": { "f:spec": { "f:replicas": {} } } },
                    { "manager": "kubectl-edit", "operation": "Update",
                      "fieldsV1": {
                          "f:metadata": { "f:labels": { "f:team": {} } },
                          "f:spec": { "f:replicas": {}, "f:template": { "f:spec": {
                              "f:containers": { "k:{\"name\":\"app\"}": { "f:image": {} } } } } } } },
                    { "manager": "kube-controller-manager", "operation": "Update", "subresource": "status",
                      "fieldsV1": { "f:status": { "f:replicas": {} } } }
                ]
            },
            "spec": { "replicas": 5, "template": { "spec": { "containers": [
                { "name": "app", "image": "app:hotfix" }
            ] } } },
            "status": { "replicas": 5 }
        })
    }

    #[test]
    fn the_managers_who_changed_applied_fields_are_named_with_the_fields() {
        let desired = json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": { "name": "app" },
            "spec": { "replicas": 2, "template": { "spec": { "containers": [
                { "name": "app", "image": "app:1.0" }
            ] } } }
        });
        assert_eq!(
            drift_attribution(&live(), &desired, "kustomize-controller"),
            vec![
                "kubectl-scale changed .spec.replicas".to_owned(),
                "kubectl-edit changed .spec.replicas, .spec.template.spec.containers[name=app].image"
                    .to_owned()
            ]
        );
    }

    #[test]
    fn fields_weir_does_not_apply_or_that_still_match_are_not_drift() {
        let desired = json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": { "name": "app" },
            "spec": { "replicas": 5, "template": { "spec": { "containers": [
                { "name": "app", "image": "app:hotfix" }
            ] } } }
        });
        assert!(drift_attribution(&live(), &desired, "kustomize-controller").is_empty());
        assert!(drift_attribution(&json!({}), &desired, "kustomize-controller").is_empty());
    }
}
