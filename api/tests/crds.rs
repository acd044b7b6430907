//! The CRDs in `crds/` are generated from the types; these tests fail when they drift, and check
//! that each is a valid `apiextensions.k8s.io/v1` CustomResourceDefinition with Flux's names.

// A test's helpers fail the test by panicking; that is their job.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};

fn crds_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds")
}

#[test]
fn committed_crds_match_the_types() {
    let committed_index = std::fs::read_to_string(crds_dir().join("kustomization.yaml"))
        .unwrap_or_else(|e| panic!("crds/kustomization.yaml is missing ({e}); run `make crds`"));
    assert!(
        committed_index == weir_api::crd::kustomization_yaml(&weir_api::crd::all()),
        "crds/kustomization.yaml differs from the types; run `make crds` and commit"
    );
    let mut expected_files = vec!["kustomization.yaml".to_owned()];
    for crd in weir_api::crd::all() {
        let name = weir_api::crd::file_name(&crd);
        let committed = std::fs::read_to_string(crds_dir().join(&name))
            .unwrap_or_else(|e| panic!("crds/{name} is missing ({e}); run `make crds`"));
        let generated = weir_api::crd::to_yaml(&crd).unwrap();
        assert!(
            committed == generated,
            "crds/{name} differs from the types; run `make crds` and commit"
        );
        expected_files.push(name);
    }
    let mut present: Vec<_> = std::fs::read_dir(crds_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| {
            std::path::Path::new(n)
                .extension()
                .is_some_and(|e| e == "yaml")
        })
        .collect();
    present.sort();
    expected_files.sort();
    assert_eq!(
        present, expected_files,
        "crds/ holds files no type generates"
    );
}

fn read_crd(file: &str) -> CustomResourceDefinition {
    let text = std::fs::read_to_string(crds_dir().join(file)).unwrap();
    serde_yaml_ng::from_str(&text).unwrap()
}

fn columns(crd: &CustomResourceDefinition) -> Vec<(String, String)> {
    crd.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| (c.name.clone(), c.json_path.clone()))
        .collect()
}

const READY: &str = r#".status.conditions[?(@.type=="Ready")].status"#;
const STATUS: &str = r#".status.conditions[?(@.type=="Ready")].message"#;

#[test]
fn gitrepository_crd_has_fluxs_names_and_columns() {
    let crd = read_crd("gitrepositories.source.toolkit.fluxcd.io.yaml");
    assert_eq!(crd.spec.group, "source.toolkit.fluxcd.io");
    assert_eq!(crd.spec.names.kind, "GitRepository");
    assert_eq!(crd.spec.names.plural, "gitrepositories");
    assert_eq!(
        crd.spec.names.short_names.as_deref(),
        Some(&["gitrepo".to_owned()][..])
    );
    assert_eq!(
        crd.spec.names.categories.as_deref(),
        Some(
            &[
                "all".to_owned(),
                "fluxcd".to_owned(),
                "fluxcd-sources".to_owned()
            ][..]
        )
    );
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.versions[0].name, "v1");
    assert!(
        crd.spec.versions[0]
            .subresources
            .as_ref()
            .unwrap()
            .status
            .is_some()
    );
    let cols = columns(&crd);
    for (name, path) in [
        ("URL", ".spec.url"),
        ("Age", ".metadata.creationTimestamp"),
        ("Ready", READY),
        ("Status", STATUS),
    ] {
        assert!(
            cols.contains(&(name.to_owned(), path.to_owned())),
            "missing column {name}: {cols:?}"
        );
    }
}

#[test]
fn helmrepository_crd_has_fluxs_names_columns_and_validation() {
    let crd = read_crd("helmrepositories.source.toolkit.fluxcd.io.yaml");
    assert_eq!(crd.spec.group, "source.toolkit.fluxcd.io");
    assert_eq!(crd.spec.names.kind, "HelmRepository");
    assert_eq!(crd.spec.names.plural, "helmrepositories");
    assert_eq!(
        crd.spec.names.short_names.as_deref(),
        Some(&["helmrepo".to_owned()][..])
    );
    assert_eq!(
        crd.spec.names.categories.as_deref(),
        Some(
            &[
                "all".to_owned(),
                "fluxcd".to_owned(),
                "fluxcd-sources".to_owned()
            ][..]
        )
    );
    assert_eq!(crd.spec.versions[0].name, "v1");
    assert_eq!(
        columns(&crd),
        [
            ("URL", ".spec.url"),
            ("Age", ".metadata.creationTimestamp"),
            ("Ready", READY),
            ("Status", STATUS),
        ]
        .map(|(n, p)| (n.to_owned(), p.to_owned()))
    );
    let s = schema(&crd);
    assert_structural(s, "HelmRepository");
    assert_eq!(
        prop(s, &["spec", "url"]).pattern.as_deref(),
        Some("^(http|https|oci)://.*$")
    );
    let enum_of = |path: &[&str]| -> Vec<serde_json::Value> {
        prop(s, path)
            .enum_
            .clone()
            .unwrap()
            .into_iter()
            .map(|v| v.0)
            .collect()
    };
    assert_eq!(
        enum_of(&["spec", "type"]),
        [serde_json::json!("default"), serde_json::json!("oci")]
    );
    assert_eq!(enum_of(&["spec", "provider"]).len(), 4);
    assert_eq!(
        prop(s, &["spec", "timeout"]).pattern.as_deref(),
        Some(r"^([0-9]+(\.[0-9]+)?(ms|s|m))+$"),
        "Flux's timeout takes no hours"
    );
    let required = s.properties.as_ref().unwrap()["spec"]
        .required
        .clone()
        .unwrap();
    assert_eq!(required, ["url"], "only url is required, as in Flux");
}

#[test]
fn helmchart_crd_has_fluxs_names_columns_and_validation() {
    let crd = read_crd("helmcharts.source.toolkit.fluxcd.io.yaml");
    assert_eq!(crd.spec.group, "source.toolkit.fluxcd.io");
    assert_eq!(crd.spec.names.kind, "HelmChart");
    assert_eq!(crd.spec.names.plural, "helmcharts");
    assert_eq!(
        crd.spec.names.short_names.as_deref(),
        Some(&["hc".to_owned()][..])
    );
    assert_eq!(crd.spec.versions[0].name, "v1");
    assert_eq!(
        columns(&crd),
        [
            ("Chart", ".spec.chart"),
            ("Version", ".spec.version"),
            ("Source Kind", ".spec.sourceRef.kind"),
            ("Source Name", ".spec.sourceRef.name"),
            ("Age", ".metadata.creationTimestamp"),
            ("Ready", READY),
            ("Status", STATUS),
        ]
        .map(|(n, p)| (n.to_owned(), p.to_owned()))
    );
    let s = schema(&crd);
    assert_structural(s, "HelmChart");
    let enum_of = |path: &[&str]| -> Vec<serde_json::Value> {
        prop(s, path)
            .enum_
            .clone()
            .unwrap()
            .into_iter()
            .map(|v| v.0)
            .collect()
    };
    // Bucket sources are not implemented: the API server rejects them.
    assert_eq!(
        enum_of(&["spec", "sourceRef", "kind"]),
        [
            serde_json::json!("HelmRepository"),
            serde_json::json!("GitRepository")
        ]
    );
    assert_eq!(
        enum_of(&["spec", "reconcileStrategy"]),
        [
            serde_json::json!("ChartVersion"),
            serde_json::json!("Revision")
        ]
    );
    assert_eq!(
        prop(s, &["spec", "version"]).default.as_ref().map(|d| &d.0),
        Some(&serde_json::json!("*"))
    );
    let spec = &s.properties.as_ref().unwrap()["spec"];
    assert!(
        !spec.properties.as_ref().unwrap().contains_key("verify"),
        "verify (OCI only) is not implemented"
    );
    let mut required = spec.required.clone().unwrap();
    required.sort();
    assert_eq!(required, ["chart", "interval", "sourceRef"]);
}

#[test]
fn kustomization_crd_has_fluxs_names_and_columns() {
    let crd = read_crd("kustomizations.kustomize.toolkit.fluxcd.io.yaml");
    assert_eq!(crd.spec.group, "kustomize.toolkit.fluxcd.io");
    assert_eq!(crd.spec.names.kind, "Kustomization");
    assert_eq!(
        crd.spec.names.short_names.as_deref(),
        Some(&["ks".to_owned()][..])
    );
    assert_eq!(
        crd.spec.names.categories.as_deref(),
        Some(
            &[
                "all".to_owned(),
                "fluxcd".to_owned(),
                "fluxcd-appliers".to_owned()
            ][..]
        )
    );
    let cols = columns(&crd);
    for (name, path) in [
        ("Age", ".metadata.creationTimestamp"),
        ("Ready", READY),
        ("Status", STATUS),
    ] {
        assert!(
            cols.contains(&(name.to_owned(), path.to_owned())),
            "missing column {name}: {cols:?}"
        );
    }
}

fn schema(crd: &CustomResourceDefinition) -> &JSONSchemaProps {
    crd.spec.versions[0]
        .schema
        .as_ref()
        .unwrap()
        .open_api_v3_schema
        .as_ref()
        .unwrap()
}

fn prop<'a>(s: &'a JSONSchemaProps, path: &[&str]) -> &'a JSONSchemaProps {
    path.iter().fold(s, |s, p| {
        let s = s.items.as_ref().map_or(s, |items| match items {
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(s) => s,
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schemas(_) => panic!("tuple schema"),
        });
        s.properties.as_ref().and_then(|m| m.get(*p)).unwrap_or_else(|| panic!("no property {p}"))
    })
}

/// Walks every schema node: a structural schema has a type on every node and never keeps
/// unknown fields.
fn assert_structural(s: &JSONSchemaProps, path: &str) {
    assert!(
        s.type_.is_some() || s.x_kubernetes_int_or_string == Some(true),
        "{path} has no type"
    );
    assert_ne!(
        s.x_kubernetes_preserve_unknown_fields,
        Some(true),
        "{path} keeps unknown fields"
    );
    for (k, v) in s.properties.iter().flatten() {
        assert_structural(v, &format!("{path}.{k}"));
    }
    if let Some(k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(items)) = &s.items {
        assert_structural(items, &format!("{path}[]"));
    }
    if let Some(k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrBool::Schema(extra)) = &s.additional_properties {
        assert_structural(extra, &format!("{path}{{}}"));
    }
}

#[test]
fn schemas_are_structural_and_validate_what_flux_validates() {
    let git = read_crd("gitrepositories.source.toolkit.fluxcd.io.yaml");
    let ks = read_crd("kustomizations.kustomize.toolkit.fluxcd.io.yaml");
    assert_structural(schema(&git), "GitRepository");
    assert_structural(schema(&ks), "Kustomization");

    let s = schema(&git);
    assert_eq!(
        prop(s, &["spec", "url"]).pattern.as_deref(),
        Some("^(http|https|ssh)://.*$")
    );
    assert!(prop(s, &["spec", "interval"]).pattern.is_some());
    assert_eq!(
        prop(s, &["spec", "timeout"])
            .default
            .as_ref()
            .map(|d| d.0.clone()),
        Some(serde_json::json!("60s"))
    );
    let conds = prop(s, &["status", "conditions"]);
    assert_eq!(conds.x_kubernetes_list_type.as_deref(), Some("map"));
    assert_eq!(
        conds.x_kubernetes_list_map_keys.as_deref(),
        Some(&["type".to_owned()][..])
    );
    let status = prop(s, &["status", "conditions", "status"]);
    assert_eq!(status.enum_.as_ref().map(Vec::len), Some(3));
    assert_eq!(
        prop(s, &["status", "conditions", "observedGeneration"]).minimum,
        Some(0.0)
    );

    let s = schema(&ks);
    let kinds = prop(s, &["spec", "sourceRef", "kind"])
        .enum_
        .clone()
        .unwrap();
    assert_eq!(
        kinds.len(),
        1,
        "only the source kinds Weir implements are accepted"
    );
    assert_eq!(prop(s, &["spec", "targetNamespace"]).max_length, Some(63));
    let required = s.properties.as_ref().unwrap()["spec"]
        .required
        .clone()
        .unwrap();
    for field in ["interval", "prune", "sourceRef"] {
        assert!(required.contains(&field.to_owned()), "{field} is required");
    }
}

#[test]
fn image_crds_have_fluxs_names_and_columns() {
    for (file, kind, short, extra) in [
        (
            "imagerepositories.image.toolkit.fluxcd.io.yaml",
            "ImageRepository",
            "imgrepo",
            ("Tags", ".status.lastScanResult.tagCount"),
        ),
        (
            "imagepolicies.image.toolkit.fluxcd.io.yaml",
            "ImagePolicy",
            "imgpol",
            ("Image", ".status.latestRef.name"),
        ),
        (
            "imageupdateautomations.image.toolkit.fluxcd.io.yaml",
            "ImageUpdateAutomation",
            "iua",
            ("Last run", ".status.lastAutomationRunTime"),
        ),
    ] {
        let crd = read_crd(file);
        assert_eq!(crd.spec.group, "image.toolkit.fluxcd.io");
        assert_eq!(crd.spec.names.kind, kind);
        assert_eq!(crd.spec.versions[0].name, "v1");
        assert!(
            crd.spec
                .names
                .short_names
                .as_deref()
                .unwrap()
                .contains(&short.to_owned()),
            "{kind} short names"
        );
        assert_eq!(
            crd.spec.names.categories.as_deref(),
            Some(
                &[
                    "all".to_owned(),
                    "fluxcd".to_owned(),
                    "fluxcd-images".to_owned()
                ][..]
            )
        );
        assert_structural(schema(&crd), kind);
        let cols = columns(&crd);
        for (name, path) in [
            ("Age", ".metadata.creationTimestamp"),
            ("Ready", READY),
            ("Status", STATUS),
            extra,
        ] {
            assert!(
                cols.contains(&(name.to_owned(), path.to_owned())),
                "{kind}: missing column {name}: {cols:?}"
            );
        }
        let conds = prop(schema(&crd), &["status", "conditions"]);
        assert_eq!(conds.x_kubernetes_list_type.as_deref(), Some("map"));
    }
    // The columns of Flux's generated v1 CRDs, in their order (`kubectl get` shows them so).
    let repo = read_crd("imagerepositories.image.toolkit.fluxcd.io.yaml");
    let names = |crd: &CustomResourceDefinition| -> Vec<String> {
        columns(crd).into_iter().map(|(name, _)| name).collect()
    };
    assert_eq!(
        names(&repo),
        ["Image", "Tags", "Ready", "Status", "Last scan", "Age"]
    );
    assert!(columns(&repo).contains(&("Image".to_owned(), ".spec.image".to_owned())));
    let policy = read_crd("imagepolicies.image.toolkit.fluxcd.io.yaml");
    assert_eq!(names(&policy), ["Image", "Tag", "Ready", "Status", "Age"]);
    assert!(columns(&policy).contains(&("Tag".to_owned(), ".status.latestRef.tag".to_owned())));
    assert_eq!(
        prop(schema(&policy), &["spec", "policy"])
            .one_of
            .as_ref()
            .map(Vec::len),
        Some(3),
        "exactly one of semver, alphabetical, numerical"
    );
    assert_eq!(
        prop(schema(&repo), &["spec", "exclusionList"])
            .default
            .as_ref()
            .map(|d| d.0.clone()),
        Some(serde_json::json!([r"^.*\.sig$"]))
    );
}
