//! Building: kustomize overlays, `spec.kustomize` fields, components, plain directories and what
//! a build may read.

use std::collections::BTreeMap;

use anyhow::Result;
use k8s_openapi::api::{apps::v1::Deployment, core::v1::ConfigMap};
use kube::Api;
use serde_json::json;
use weir_api::reasons;
use weir_e2e::Harness;

use crate::fixture::*;

/// `ignoreMissingComponents` leaves out a component the source lacks; without it the build
/// fails naming the missing one, as kustomize does.
#[tokio::test]
async fn missing_components_fail_the_build_unless_ignored() -> Result<()> {
    let f = Fixture::start(&[
        ("app/cm.yaml", &config_map_yaml("app", "1")),
        (
            "components/tier/kustomization.yaml",
            "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\ncommonAnnotations: {tier: web}\n",
        ),
    ])
    .await?;
    let head = f.repo.head()?;
    let components = json!(["../components/tier", "../components/absent"]);
    f.create_ks(
        "strict",
        json!({ "path": "./app", "components": components, "namePrefix": "strict-" }),
    )
    .await?;
    f.create_ks(
        "lenient",
        json!({ "path": "./app", "components": components, "ignoreMissingComponents": true }),
    )
    .await?;
    f.wait_applied("lenient", &head).await?;
    let cm = f.config_map("app").await?.unwrap();
    assert_eq!(
        cm.metadata.annotations.unwrap()["tier"],
        "web",
        "the present one applies"
    );
    let ks = f
        .wait_failed("strict", Some(&head), reasons::BUILD_FAILED)
        .await?;
    assert!(message(&ks).contains("absent"), "{}", message(&ks));
    assert!(f.config_map("strict-app").await?.is_none());
    f.teardown().await
}

#[tokio::test]
async fn spec_kustomize_fields_merge_into_the_overlay_as_flux_merges_them() -> Result<()> {
    let f = Fixture::start(&[
        // No namespace in the base: targetNamespace gives it one.
        ("base/deploy.yaml", &DEPLOYMENT.replace("  namespace: NAMESPACE\n", "")),
        ("base/kustomization.yaml", "resources: [deploy.yaml]\n"),
        // The overlay has a prefix and a patch of its own, and loads a file beside its base.
        (
            "overlay/kustomization.yaml",
            "namePrefix: git-\nresources: [../base, ../common/cm.yaml]\ncommonLabels: {env: prod}\npatches:\n- patch: |\n    - op: add\n      path: /spec/template/metadata/annotations\n      value: {from: overlay}\n  target: {kind: Deployment, name: web}\n",
        ),
        ("common/cm.yaml", &config_map_yaml("settings", "1").replace("  namespace: NAMESPACE\n", "")),
        (
            "components/tier/kustomization.yaml",
            "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\ncommonAnnotations: {tier: web}\n",
        ),
    ])
    .await?;
    f.create_ks(
        "app",
        json!({
            "path": "./overlay",
            "targetNamespace": f.ns(),
            "namePrefix": "p-",
            "nameSuffix": "-s",
            "images": [{ "name": "registry.invalid/web", "newTag": "2.0.0" }],
            "patches": [
                {
                    // Targets the name in git, as the overlay's own patch does.
                    "target": { "kind": "Deployment", "name": "web" },
                    "patch": "- op: replace\n  path: /spec/replicas\n  value: 3\n",
                },
                {
                    "patch": "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  annotations:\n    patched: strategic-merge\n",
                },
            ],
            "commonMetadata": { "labels": { "team": "blue" }, "annotations": { "owner": "ops" } },
            "components": ["../components/tier"],
        }),
    )
    .await?;
    let head = f.repo.head()?;
    f.wait_applied("app", &head).await?;
    // The spec's prefix replaces the overlay's: `p-web-s`, never `p-git-web-s`.
    let d = Api::<Deployment>::namespaced(f.client.clone(), f.ns())
        .get("p-web-s")
        .await?;
    let spec = d.spec.unwrap();
    assert_eq!(
        spec.replicas,
        Some(3),
        "the spec's patch, by the name in git"
    );
    let template = spec.template;
    assert_eq!(
        template.spec.unwrap().containers[0].image.as_deref(),
        Some("registry.invalid/web:2.0.0")
    );
    let labels = d.metadata.labels.unwrap();
    assert_eq!(labels["env"], "prod");
    assert_eq!(labels["team"], "blue");
    let annotations = d.metadata.annotations.unwrap();
    assert_eq!(annotations["tier"], "web", "component applied");
    assert_eq!(annotations["patched"], "strategic-merge");
    assert_eq!(annotations["owner"], "ops");
    // commonMetadata is metadata only, as in Flux: not the pod template, not the selector.
    let template_metadata = template.metadata.unwrap();
    assert_eq!(
        template_metadata.annotations.unwrap()["from"],
        "overlay",
        "the overlay's own patch"
    );
    let template_labels = template_metadata.labels.unwrap();
    assert!(!template_labels.contains_key("team"), "{template_labels:?}");
    assert!(
        !spec.selector.match_labels.unwrap().contains_key("team"),
        "selector untouched"
    );
    let cm = f
        .config_map("p-settings-s")
        .await?
        .expect("the file beside the base");
    assert_eq!(cm.metadata.labels.unwrap()["team"], "blue");
    assert!(f.config_map("p-git-settings-s").await?.is_none());
    f.teardown().await
}

#[tokio::test]
async fn a_plain_directory_with_target_namespace_is_built_without_kustomize() -> Result<()> {
    // kustomize fails every build here: only a native build can get this Ready.
    let f = Fixture::start_with_kustomize(
        &[
            (
                "apps/cm.yaml",
                &config_map_yaml("plain", "1").replace("  namespace: NAMESPACE\n", ""),
            ),
            (
                "apps/deploy.yaml",
                &DEPLOYMENT.replace("NAMESPACE", "elsewhere"),
            ),
        ],
        // A binary that fails whatever it is asked.
        "/usr/bin/false".into(),
    )
    .await?;
    f.create_ks(
        "app",
        json!({
            "path": "./apps",
            "targetNamespace": f.ns(),
            "commonMetadata": { "labels": { "team": "blue" } },
        }),
    )
    .await?;
    let head = f.repo.head()?;
    f.wait_applied("app", &head).await?;
    let cm = f
        .config_map("plain")
        .await?
        .expect("given the target namespace");
    assert_eq!(cm.metadata.labels.unwrap()["team"], "blue");
    // An object naming another namespace is moved, as kustomize's namespace transformer does.
    Api::<Deployment>::namespaced(f.client.clone(), f.ns())
        .get("web")
        .await?;
    f.teardown().await
}

#[tokio::test]
async fn kustomize_builds_load_any_file_of_the_artifact_but_nothing_outside_it() -> Result<()> {
    let f = Fixture::start(&[
        ("other/o.yaml", &config_map_yaml("o", "1")),
        ("app/kustomization.yaml", "resources: [../other/o.yaml]\n"),
    ])
    .await?;
    f.create_ks("app", json!({ "path": "./app" })).await?;
    let head = f.repo.head()?;
    f.wait_applied("app", &head).await?;
    assert!(
        f.config_map("o").await?.is_some(),
        "a file beside the overlay"
    );

    let commit = f
        .repo
        .change()
        .write(
            "app/kustomization.yaml",
            "resources: [../other/o.yaml, ../../../etc/passwd]\n",
        )
        .commit("a path out of the artifact")?;
    let ks = f
        .wait_failed("app", Some(&commit), reasons::BUILD_FAILED)
        .await?;
    let m = message(&ks);
    assert!(
        m.contains("app/kustomization.yaml")
            && m.contains("resources[1]")
            && m.contains("../../../etc/passwd"),
        "{m}"
    );

    // A remote base is refused before kustomize runs, naming the URL (builds have no network).
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/base.yaml", listener.local_addr()?);
    let commit = f
        .repo
        .change()
        .write("app/kustomization.yaml", &format!("resources: [{url}]\n"))
        .commit("a remote base")?;
    let ks = f
        .wait_failed("app", Some(&commit), reasons::BUILD_FAILED)
        .await?;
    assert!(message(&ks).contains(&url), "{}", message(&ks));
    listener.set_nonblocking(true)?;
    assert!(
        listener.accept().is_err(),
        "nothing connected to the remote base's server"
    );

    let exec = "transformers:
- |-
  apiVersion: example.com/v1
  kind: Touch
  metadata:
    name: x
    annotations:
      config.kubernetes.io/function: |
        exec:
          path: /usr/bin/touch
";
    let commit = f
        .repo
        .change()
        .write("app/kustomization.yaml", exec)
        .commit("an exec function")?;
    let ks = f
        .wait_failed("app", Some(&commit), reasons::BUILD_FAILED)
        .await?;
    assert!(
        message(&ks).contains("external plugins disabled"),
        "{}",
        message(&ks)
    );
    f.teardown().await
}

/// Objects of every shape `native::set_namespace` treats differently, one file per shape.
const NAMESPACE_SHAPES: &[(&str, &str)] = &[
    (
        "apps.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: elsewhere}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: web, image: nginx}]}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {a: b}\n",
    ),
    (
        "namespace.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: old}\n",
    ),
    (
        "cluster.yaml",
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: reader}\nrules: []\n---\napiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: high}\nvalue: 1000\n---\napiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {name: fast}\nprovisioner: example.com/fast\n---\napiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: edge}\nspec: {controller: example.com/edge}\n---\napiVersion: v1\nkind: PersistentVolume\nmetadata: {name: disk}\nspec: {capacity: {storage: 1Gi}, accessModes: [ReadWriteOnce], hostPath: {path: /tmp}}\n",
    ),
    (
        "bindings.yaml",
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: readers}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: reader}\nsubjects:\n- {kind: ServiceAccount, name: default, namespace: other}\n- {kind: ServiceAccount, name: robot, namespace: other}\n- {kind: Group, name: default}\n- {kind: User, name: alice}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: local}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: reader}\nsubjects:\n- {kind: ServiceAccount, name: default}\n- {kind: ServiceAccount, name: robot}\n",
    ),
    (
        "extensions.yaml",
        "apiVersion: apiregistration.k8s.io/v1\nkind: APIService\nmetadata: {name: v1.metrics.example.com}\nspec:\n  group: metrics.example.com\n  version: v1\n  groupPriorityMinimum: 100\n  versionPriority: 100\n  service: {name: metrics}\n---\napiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: widgets.example.com}\nspec:\n  group: example.com\n  names: {kind: Widget, plural: widgets}\n  scope: Namespaced\n  versions: [{name: v1, served: true, storage: true, schema: {openAPIV3Schema: {type: object}}}]\n  conversion:\n    strategy: Webhook\n    webhook:\n      conversionReviewVersions: [v1]\n      clientConfig: {service: {name: convert, namespace: other}}\n---\napiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: gadgets.example.com}\nspec:\n  group: example.com\n  names: {kind: Gadget, plural: gadgets}\n  scope: Namespaced\n  versions: [{name: v1, served: true, storage: true, schema: {openAPIV3Schema: {type: object}}}]\n  conversion:\n    strategy: Webhook\n    webhook:\n      conversionReviewVersions: [v1]\n      clientConfig: {url: https://convert.example.com}\n---\napiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingWebhookConfiguration\nmetadata: {name: check}\nwebhooks:\n- name: check.example.com\n  sideEffects: None\n  admissionReviewVersions: [v1]\n  clientConfig: {service: {name: check, namespace: other}}\n",
    ),
    (
        "custom/widget.yaml",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n---\napiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicy\nmetadata: {name: newer-than-the-schema}\nspec: {validations: [{expression: 'true'}]}\n",
    ),
];

/// The native `targetNamespace` of a plain directory gives exactly what kustomize gives for the
/// kustomization Flux generates, object for object, with the real kustomize the harness pins.
#[tokio::test]
async fn native_namespaces_equal_kustomizes() -> Result<()> {
    use weir_kustomize::{build, native};
    let kustomize = Harness::get().await?.tool("kustomize");
    let tree = tempfile::tempdir()?;
    for (path, content) in NAMESPACE_SHAPES {
        let file = tree.path().join(path);
        std::fs::create_dir_all(file.parent().unwrap())?;
        std::fs::write(file, content)?;
    }
    let spec: weir_api::kustomize::KustomizationSpec = serde_json::from_value(json!({
        "interval": "5m",
        "prune": true,
        "sourceRef": {"kind": "GitRepository", "name": "repo"},
        "targetNamespace": "target",
    }))?;
    let collected = build::collect_yaml(tree.path(), tree.path())?;
    let mut native_built = collected.manifests.clone();
    native::set_namespace(&mut native_built, "target");

    let work = tempfile::tempdir()?;
    let kustomized = build::kustomize_build(
        work.path(),
        tree.path(),
        &spec,
        build::Planned {
            relative_path: std::path::Path::new(""),
            generated: Some(&collected),
            loads: &[],
        },
        &kustomize,
        std::time::Duration::from_secs(60),
    )
    .await?;

    let by_key = |manifests: Vec<build::Manifest>| -> BTreeMap<String, build::Manifest> {
        manifests
            .into_iter()
            .map(|m| (build::object_key(&m.object), m))
            .collect()
    };
    let (native_built, kustomized) = (by_key(native_built), by_key(kustomized));
    assert_eq!(
        native_built.keys().collect::<Vec<_>>(),
        kustomized.keys().collect::<Vec<_>>()
    );
    for (key, built) in &native_built {
        assert_eq!(
            built, &kustomized[key],
            "{key} differs from kustomize's build"
        );
    }
    // Not vacuous: the shapes were moved, renamed and left alone.
    assert!(
        native_built
            .keys()
            .any(|k| k.contains("target") && k.contains("Deployment"))
    );
    assert!(
        native_built
            .values()
            .any(|m| m.object["kind"] == "Namespace" && m.object["metadata"]["name"] == "target")
    );
    Ok(())
}

/// `buildMetadata`: kustomize's origin and transformer annotations are applied with the objects
/// when asked for, and only then (Weir's own origin annotations never reach the cluster).
#[tokio::test]
async fn build_metadata_annotations_are_applied_only_when_asked_for() -> Result<()> {
    let f = Fixture::start(&[
        ("apps/a.yaml", &config_map_yaml("a", "1")),
        ("apps/kustomization.yaml", "resources: [a.yaml]\n"),
    ])
    .await?;
    f.create_ks(
        "with",
        json!({
            "path": "./apps",
            "namePrefix": "with-",
            "buildMetadata": ["originAnnotations", "transformerAnnotations"],
        }),
    )
    .await?;
    f.create_ks(
        "without",
        json!({ "path": "./apps", "namePrefix": "without-" }),
    )
    .await?;
    let head = f.repo.head()?;
    f.wait_applied("with", &head).await?;
    f.wait_applied("without", &head).await?;
    let annotations = |cm: Option<ConfigMap>| cm.unwrap().metadata.annotations.unwrap_or_default();
    let with = annotations(f.config_map("with-a").await?);
    let origin = with
        .get("config.kubernetes.io/origin")
        .unwrap_or_else(|| panic!("no origin annotation: {with:?}"));
    assert!(origin.contains("path: a.yaml"), "{origin}");
    let transformations = with
        .get("alpha.config.kubernetes.io/transformations")
        .unwrap_or_else(|| panic!("no transformer annotation: {with:?}"));
    assert!(
        transformations.contains("PrefixTransformer"),
        "{transformations}"
    );
    let without = annotations(f.config_map("without-a").await?);
    assert!(
        without.keys().all(|k| !k.contains("config.kubernetes.io/")),
        "{without:?}"
    );
    f.teardown().await
}
