//! The spec's kustomize fields merged into the kustomization that builds a path, as Flux's
//! kustomize-controller does: into the user's own kustomization file when the path has one, or
//! into the one generated for a plain directory (its YAML files and kustomization
//! subdirectories as resources).
//!
//! Flux's rules, which decide how an overlay with its own fields behaves:
//! - `targetNamespace`, `namePrefix` and `nameSuffix` replace the file's `namespace`,
//!   `namePrefix` and `nameSuffix` (prefixes never stack);
//! - `patches` are appended to the file's, so they run in the same kustomization and target the
//!   names written in git (kustomize patches before it prefixes);
//! - `images` replace the file's entry of the same `name`, others are appended;
//! - `components` are appended, and must be local relative paths.
//!
//! `commonMetadata` is not part of it: Flux sets those labels and annotations on the built
//! objects' metadata afterwards (see [`crate::native`]), never on selectors or templates.

use serde_json::{Map, Value, json};
use weir_api::KustomizationSpec;

use crate::build::BuildError;

/// kustomize's build option that records each object's file; Weir reads and removes it.
const ORIGIN_ANNOTATIONS: &str = "originAnnotations";

/// The kustomization Flux generates for a plain directory: `resources` are its object files and
/// kustomization subdirectories, relative to it.
#[must_use]
pub fn generated(resources: &[&str]) -> Map<String, Value> {
    let mut doc = Map::new();
    doc.insert(
        "apiVersion".into(),
        json!("kustomize.config.k8s.io/v1beta1"),
    );
    doc.insert("kind".into(), json!("Kustomization"));
    doc.insert("resources".into(), json!(resources));
    doc
}

/// Merges the spec's kustomize fields into `doc`, the kustomization read from `file` (named in
/// errors). Returns whether origin annotations were switched on by Weir (and so must be removed
/// from the built objects) rather than asked for by the file.
pub fn merge_spec(
    doc: &mut Map<String, Value>,
    spec: &KustomizationSpec,
    file: &str,
) -> Result<bool, BuildError> {
    for (field, value) in [
        ("namespace", &spec.target_namespace),
        ("namePrefix", &spec.name_prefix),
        ("nameSuffix", &spec.name_suffix),
    ] {
        if let Some(value) = value {
            doc.insert(field.into(), json!(value));
        }
    }
    let patches = spec.patches.iter().map(|p| {
        let mut patch = json!({ "patch": p.patch });
        if let Some(target) = &p.target {
            patch["target"] = json!(target);
        }
        patch
    });
    list(doc, "patches", file)?.extend(patches);
    for component in &spec.components {
        if component.starts_with('/') || component.contains("://") {
            return Err(BuildError::UnsafePath(component.clone()));
        }
    }
    list(doc, "components", file)?.extend(spec.components.iter().map(|c| json!(c)));
    let images = list(doc, "images", file)?;
    for image in &spec.images {
        let new = json!(image);
        match images
            .iter_mut()
            .find(|i| i.get("name").and_then(Value::as_str) == Some(image.name.as_str()))
        {
            Some(existing) => *existing = new,
            None => images.push(new),
        }
    }
    let build_metadata = list(doc, "buildMetadata", file)?;
    for option in &spec.build_metadata {
        if !build_metadata
            .iter()
            .any(|m| m.as_str() == Some(option.as_str()))
        {
            build_metadata.push(json!(option.as_str()));
        }
    }
    let asked = build_metadata
        .iter()
        .any(|m| m.as_str() == Some(ORIGIN_ANNOTATIONS));
    if !asked {
        build_metadata.push(json!(ORIGIN_ANNOTATIONS));
    }
    drop_empty_lists(doc);
    Ok(!asked)
}

/// The list `field` of `doc`, created when absent; anything but a list is the file's error.
fn list<'a>(
    doc: &'a mut Map<String, Value>,
    field: &str,
    file: &str,
) -> Result<&'a mut Vec<Value>, BuildError> {
    let value = doc.entry(field).or_insert_with(|| json!([]));
    if value.is_null() {
        *value = json!([]);
    }
    value.as_array_mut().ok_or_else(|| BuildError::NotAList {
        file: file.to_owned(),
        field: field.to_owned(),
    })
}

/// kustomize rejects no empty list, but leaving the file's shape alone keeps errors familiar.
fn drop_empty_lists(doc: &mut Map<String, Value>) {
    doc.retain(|_, v| v.as_array().is_none_or(|a| !a.is_empty()));
}

#[cfg(test)]
mod tests {
    use pretty_assertions::assert_eq;

    use super::*;

    fn spec(extra: Value) -> KustomizationSpec {
        let mut base = json!({
            "sourceRef": {"kind": "GitRepository", "name": "r"}, "interval": "1m", "prune": true,
        });
        base.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    fn doc(yaml: &str) -> Map<String, Value> {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn spec_fields_replace_the_files_namespace_and_name_affixes_instead_of_stacking() {
        let mut d = doc("namespace: a\nnamePrefix: git-\nresources: [deploy.yaml]\n");
        merge_spec(
            &mut d,
            &spec(json!({"targetNamespace": "t", "namePrefix": "p-", "nameSuffix": "-s"})),
            "k.yaml",
        )
        .unwrap();
        assert_eq!(d["namespace"], json!("t"));
        assert_eq!(d["namePrefix"], json!("p-"));
        assert_eq!(d["nameSuffix"], json!("-s"));
        assert_eq!(d["resources"], json!(["deploy.yaml"]));
    }

    #[test]
    fn fields_the_spec_leaves_unset_keep_the_files_values() {
        let mut d = doc("namePrefix: git-\nresources: [deploy.yaml]\n");
        merge_spec(&mut d, &spec(json!({})), "k.yaml").unwrap();
        assert_eq!(d["namePrefix"], json!("git-"));
        assert!(!d.contains_key("namespace"));
    }

    #[test]
    fn patches_and_components_are_appended_after_the_files_own() {
        let mut d = doc("patches:\n- path: p.yaml\ncomponents: [../c1]\n");
        merge_spec(
            &mut d,
            &spec(json!({
                "patches": [
                    {"patch": "- op: remove\n  path: /x\n", "target": {"kind": "Deployment", "name": "web"}},
                    {"patch": "kind: ConfigMap\n"},
                ],
                "components": ["../c2"],
            })),
            "k.yaml",
        )
        .unwrap();
        assert_eq!(
            d["patches"],
            json!([
                {"path": "p.yaml"},
                {"patch": "- op: remove\n  path: /x\n", "target": {"kind": "Deployment", "name": "web"}},
                {"patch": "kind: ConfigMap\n"},
            ])
        );
        assert_eq!(d["components"], json!(["../c1", "../c2"]));
    }

    #[test]
    fn images_replace_the_entry_of_the_same_name_and_append_the_rest() {
        let mut d = doc("images:\n- {name: web, newTag: '1'}\n- {name: db, newTag: '9'}\n");
        merge_spec(
            &mut d,
            &spec(json!({"images": [
                {"name": "web", "newName": "mirror/web"},
                {"name": "cache", "digest": "sha256:abc"},
            ]})),
            "k.yaml",
        )
        .unwrap();
        assert_eq!(
            d["images"],
            json!([
                {"name": "web", "newName": "mirror/web"},
                {"name": "db", "newTag": "9"},
                {"name": "cache", "digest": "sha256:abc"},
            ])
        );
    }

    #[test]
    fn origin_annotations_are_added_once_and_reported_only_when_weir_added_them() {
        let mut d = doc("resources: [a.yaml]\n");
        assert!(merge_spec(&mut d, &spec(json!({})), "k.yaml").unwrap());
        assert_eq!(d["buildMetadata"], json!(["originAnnotations"]));
        let mut d = doc("buildMetadata: [originAnnotations, managedByLabel]\n");
        assert!(!merge_spec(&mut d, &spec(json!({})), "k.yaml").unwrap());
        assert_eq!(
            d["buildMetadata"],
            json!(["originAnnotations", "managedByLabel"])
        );
    }

    #[test]
    fn a_field_that_is_not_a_list_is_named_with_its_file() {
        let mut d = doc("patches: {path: p.yaml}\n");
        let e = merge_spec(&mut d, &spec(json!({})), "apps/kustomization.yaml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "apps/kustomization.yaml: patches must be a list"
        );
    }

    #[test]
    fn absolute_or_remote_components_are_refused() {
        for component in ["/etc", "https://example.com/c"] {
            let mut d = doc("resources: []\n");
            let e = merge_spec(&mut d, &spec(json!({"components": [component]})), "k.yaml");
            assert!(matches!(e, Err(BuildError::UnsafePath(c)) if c == component));
        }
    }

    #[test]
    fn the_generated_kustomization_lists_the_resources() {
        assert_eq!(
            Value::Object(generated(&["a.yaml", "sub"])),
            json!({
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": ["a.yaml", "sub"],
            })
        );
    }
}
