//! Transformations Weir applies in-process instead of running kustomize.
//!
//! [`set_namespace`] is kustomize's `namespace:` transformer (v5.8, the version the harness
//! pins), so that a plain directory with `spec.targetNamespace` builds to exactly what Flux's
//! generated kustomization gives, without a process or a copy. What it does, as observed from
//! `kustomize build` and asserted against the real binary in the e2e suite
//! (`native_namespaces_equal_kustomizes`):
//! - every object gets `metadata.namespace`, replacing any other, except the cluster-scoped
//!   built-in kinds kustomize's schema knows ([`CLUSTER_SCOPED`]); kinds it does not know (custom
//!   resources, and built-in kinds newer than its schema) count as namespaced;
//! - a `v1` Namespace object is renamed to the namespace;
//! - in RoleBindings and ClusterRoleBindings, every subject *named* `default` (whatever its
//!   kind) gets the namespace; other subjects are left alone;
//! - an APIService's `spec.service.namespace` is set (created when missing), and a CRD's
//!   `spec.conversion.webhook.clientConfig.service.namespace` is set when a service is named;
//!   webhook configurations are left alone.
//!
//! [`set_common_metadata`] is Flux's `spec.commonMetadata`: the labels and annotations are set
//! on every built object's own metadata (replacing values of the same keys), never on
//! selectors or pod templates, after the build.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::build::Manifest;

/// The kinds kustomize v5.8 treats as cluster-scoped, by API group and kind (any version).
const CLUSTER_SCOPED: &[(&str, &str)] = &[
    ("", "ComponentStatus"),
    ("", "Namespace"),
    ("", "Node"),
    ("", "PersistentVolume"),
    (
        "admissionregistration.k8s.io",
        "MutatingWebhookConfiguration",
    ),
    (
        "admissionregistration.k8s.io",
        "ValidatingWebhookConfiguration",
    ),
    ("apiextensions.k8s.io", "CustomResourceDefinition"),
    ("apiregistration.k8s.io", "APIService"),
    ("certificates.k8s.io", "CertificateSigningRequest"),
    ("networking.k8s.io", "IngressClass"),
    ("node.k8s.io", "RuntimeClass"),
    ("policy", "PodSecurityPolicy"),
    ("rbac.authorization.k8s.io", "ClusterRole"),
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"),
    ("scheduling.k8s.io", "PriorityClass"),
    ("storage.k8s.io", "CSIDriver"),
    ("storage.k8s.io", "CSINode"),
    ("storage.k8s.io", "StorageClass"),
    ("storage.k8s.io", "VolumeAttachment"),
];

const RBAC: &str = "rbac.authorization.k8s.io";

/// kustomize's namespace transformer over the built objects (see the module doc).
pub fn set_namespace(manifests: &mut [Manifest], namespace: &str) {
    for manifest in manifests {
        let object = &mut manifest.object;
        let (group, kind) = group_kind(object);
        if group.is_empty() && kind == "Namespace" && version(object) == "v1" {
            set(object, &["metadata"], "name", namespace, true);
        }
        let cluster_scoped = CLUSTER_SCOPED.contains(&(group.as_str(), kind.as_str()));
        if !cluster_scoped {
            set(object, &["metadata"], "namespace", namespace, true);
        }
        match (group.as_str(), kind.as_str()) {
            (RBAC, "RoleBinding" | "ClusterRoleBinding") => default_subjects(object, namespace),
            ("apiregistration.k8s.io", "APIService") => {
                set(object, &["spec", "service"], "namespace", namespace, true);
            }
            ("apiextensions.k8s.io", "CustomResourceDefinition") => {
                let path = ["spec", "conversion", "webhook", "clientConfig", "service"];
                set(object, &path, "namespace", namespace, false);
            }
            _ => {}
        }
    }
}

/// Flux's `commonMetadata`: labels and annotations on every object's own metadata.
pub fn set_common_metadata(
    manifests: &mut [Manifest],
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) {
    for manifest in manifests {
        for (field, pairs) in [("labels", labels), ("annotations", annotations)] {
            if pairs.is_empty() {
                continue;
            }
            let Some(map) = mapping_at(&mut manifest.object, &["metadata", field], true) else {
                continue;
            };
            for (key, value) in pairs {
                map.insert(key.clone(), Value::String(value.clone()));
            }
        }
    }
}

/// Every subject named `default` gets the namespace, as kustomize's role binding rule has it.
fn default_subjects(object: &mut Value, namespace: &str) {
    let Some(subjects) = object.get_mut("subjects").and_then(Value::as_array_mut) else {
        return;
    };
    for subject in subjects.iter_mut().filter_map(Value::as_object_mut) {
        if subject.get("name").and_then(Value::as_str) == Some("default") {
            subject.insert("namespace".into(), Value::String(namespace.to_owned()));
        }
    }
}

/// Sets `field` of the mapping at `path` to `value`; the path's mappings are created only when
/// `create`.
fn set(object: &mut Value, path: &[&str], field: &str, value: &str, create: bool) {
    if let Some(map) = mapping_at(object, path, create) {
        map.insert(field.into(), Value::String(value.to_owned()));
    }
}

/// The mapping at `path`, created on the way when `create`; `None` where something else is.
fn mapping_at<'a>(
    object: &'a mut Value,
    path: &[&str],
    create: bool,
) -> Option<&'a mut Map<String, Value>> {
    let mut current = object.as_object_mut()?;
    for part in path {
        if !current.contains_key(*part) {
            if !create {
                return None;
            }
            current.insert((*part).to_owned(), Value::Object(Map::new()));
        }
        current = current.get_mut(*part)?.as_object_mut()?;
    }
    Some(current)
}

fn group_kind(object: &Value) -> (String, String) {
    let api_version = object
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    (group.to_owned(), kind.to_owned())
}

fn version(object: &Value) -> &str {
    let api_version = object
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    api_version.rsplit_once('/').map_or(api_version, |(_, v)| v)
}

#[cfg(test)]
mod tests {
    use pretty_assertions::assert_eq;
    use serde_json::json;

    use super::*;

    fn manifests(objects: Vec<Value>) -> Vec<Manifest> {
        objects
            .into_iter()
            .map(|object| Manifest {
                object,
                file: "f.yaml".into(),
            })
            .collect()
    }

    fn namespaced(objects: Vec<Value>) -> Vec<Value> {
        let mut m = manifests(objects);
        set_namespace(&mut m, "t");
        m.into_iter().map(|m| m.object).collect()
    }

    #[test]
    fn namespaced_and_unknown_kinds_get_the_namespace_cluster_scoped_ones_do_not() {
        let out = namespaced(vec![
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}}),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "other"}}),
            json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "r"}}),
            json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "s"}}),
            // Newer than kustomize's schema: namespaced to it.
            json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy", "metadata": {"name": "p"}}),
        ]);
        let namespaces: Vec<Option<&str>> = out
            .iter()
            .map(|o| o.pointer("/metadata/namespace").and_then(Value::as_str))
            .collect();
        assert_eq!(
            namespaces,
            [Some("t"), Some("t"), Some("t"), None, None, Some("t")]
        );
    }

    #[test]
    fn a_namespace_object_is_renamed_to_the_namespace() {
        let out = namespaced(vec![
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "apps"}}),
        ]);
        assert_eq!(
            out[0],
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "t"}})
        );
    }

    #[test]
    fn binding_subjects_named_default_get_the_namespace_and_no_others() {
        let subjects = json!([
            {"kind": "ServiceAccount", "name": "default", "namespace": "other"},
            {"kind": "ServiceAccount", "name": "default"},
            {"kind": "ServiceAccount", "name": "sa", "namespace": "default"},
            {"kind": "ServiceAccount", "name": "bare"},
            {"kind": "User", "name": "default"},
        ]);
        for kind in ["RoleBinding", "ClusterRoleBinding"] {
            let out = namespaced(vec![json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind,
                "metadata": {"name": "b"}, "subjects": subjects,
            })]);
            assert_eq!(
                out[0]["subjects"],
                json!([
                    {"kind": "ServiceAccount", "name": "default", "namespace": "t"},
                    {"kind": "ServiceAccount", "name": "default", "namespace": "t"},
                    {"kind": "ServiceAccount", "name": "sa", "namespace": "default"},
                    {"kind": "ServiceAccount", "name": "bare"},
                    {"kind": "User", "name": "default", "namespace": "t"},
                ]),
                "{kind}"
            );
        }
    }

    #[test]
    fn service_references_follow_kustomizes_field_specs() {
        let out = namespaced(vec![
            json!({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": {"name": "a"}, "spec": {"group": "x"}}),
            json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "c"},
                   "spec": {"conversion": {"webhook": {"clientConfig": {"service": {"name": "s", "namespace": "o"}}}}}}),
            json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "n"},
                   "spec": {"conversion": {"strategy": "None"}}}),
            json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration", "metadata": {"name": "v"},
                   "webhooks": [{"clientConfig": {"service": {"name": "s", "namespace": "o"}}}]}),
        ]);
        // Created on an APIService even without a service, as kustomize does.
        assert_eq!(out[0]["spec"]["service"], json!({"namespace": "t"}));
        assert_eq!(
            out[1]["spec"]["conversion"]["webhook"]["clientConfig"]["service"],
            json!({"name": "s", "namespace": "t"})
        );
        assert_eq!(out[2]["spec"], json!({"conversion": {"strategy": "None"}}));
        assert_eq!(
            out[3]["webhooks"][0]["clientConfig"]["service"]["namespace"],
            "o"
        );
    }

    #[test]
    fn common_metadata_goes_on_the_objects_metadata_only_replacing_same_keys() {
        let mut m = manifests(vec![
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "d", "labels": {"team": "red", "app": "d"}},
                "spec": {"selector": {"matchLabels": {"app": "d"}},
                         "template": {"metadata": {"labels": {"app": "d"}}}},
            }),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}),
        ]);
        let labels = BTreeMap::from([("team".to_owned(), "blue".to_owned())]);
        let annotations = BTreeMap::from([("owner".to_owned(), "ops".to_owned())]);
        set_common_metadata(&mut m, &labels, &annotations);
        assert_eq!(
            m[0].object["metadata"],
            json!({"name": "d", "labels": {"team": "blue", "app": "d"}, "annotations": {"owner": "ops"}})
        );
        assert_eq!(
            m[0].object["spec"]["template"]["metadata"],
            json!({"labels": {"app": "d"}})
        );
        assert_eq!(
            m[0].object["spec"]["selector"],
            json!({"matchLabels": {"app": "d"}})
        );
        assert_eq!(
            m[1].object["metadata"],
            json!({"name": "c", "labels": {"team": "blue"}, "annotations": {"owner": "ops"}})
        );
    }
}
