//! Smoke tests of the harness's Kubernetes API server and kwok node: the pinned version, the
//! CRDs, strict validation, and test namespaces.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use weir_e2e::{Harness, repo_root, wait_gone, wait_until};

use crate::fixture::*;

#[tokio::test]
async fn api_server_reports_the_pinned_kubernetes_version() -> Result<()> {
    let harness = Harness::get().await?;
    let versions_file = repo_root().join("e2e/harness/versions.env");
    let versions = std::fs::read_to_string(&versions_file)?;
    let pinned = versions
        .lines()
        .find_map(|line| line.strip_prefix("KUBERNETES_VERSION="))
        .with_context(|| format!("no KUBERNETES_VERSION in {}", versions_file.display()))?
        .trim();

    let version = harness.client()?.apiserver_version().await?;

    assert_eq!(version.git_version, pinned);
    Ok(())
}

#[tokio::test]
async fn crds_from_the_crds_directory_are_established() -> Result<()> {
    let harness = Harness::get().await?;
    let served: Api<CustomResourceDefinition> = Api::all(harness.client()?);
    let mut files = yaml_files(&repo_root().join("crds"))?;
    // crds/kustomization.yaml only indexes the CRD files for kustomize.
    files.retain(|f| f.file_name().is_some_and(|n| n != "kustomization.yaml"));
    ensure!(!files.is_empty(), "no CRDs in crds/");

    for file in files {
        let committed: CustomResourceDefinition =
            serde_yaml_ng::from_str(&std::fs::read_to_string(&file)?)?;
        let name = committed.metadata.name.clone().unwrap();
        let crd = served
            .get(&name)
            .await
            .with_context(|| format!("{name} is not served"))?;

        // The server adds defaults (listKind, conversion), so compare what the file says.
        assert_contains(
            &serde_json::to_value(&committed.spec)?,
            &serde_json::to_value(&crd.spec)?,
            &format!("{name}: spec"),
        );
        let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
        assert!(
            conditions
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True"),
            "{name} is not Established: {conditions:?}"
        );
    }
    Ok(())
}

/// Server-side apply that fails on any field the schema does not declare.
fn strict_apply() -> PatchParams {
    PatchParams::apply("weir-e2e-smoke").validation_strict()
}

/// Every leaf of `expected` is in `actual` with the same value (the server may add defaults).
fn assert_contains(expected: &Value, actual: &Value, path: &str) {
    match (expected, actual) {
        (Value::Object(want), Value::Object(got)) => {
            for (key, value) in want {
                let field = format!("{path}.{key}");
                let other = got
                    .get(key)
                    .unwrap_or_else(|| panic!("{field} was dropped"));
                assert_contains(value, other, &field);
            }
        }
        (Value::Array(want), Value::Array(got)) => {
            assert_eq!(want.len(), got.len(), "{path} changed length");
            for (i, (w, g)) in want.iter().zip(got).enumerate() {
                assert_contains(w, g, &format!("{path}[{i}]"));
            }
        }
        _ => assert_eq!(expected, actual, "{path} changed"),
    }
}

fn read_fixture(file: &Path, namespace: &str) -> Result<Value> {
    let mut object: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(file)?)?;
    object["metadata"]["namespace"] = json!(namespace);
    Ok(object)
}

#[tokio::test]
async fn api_fixtures_are_accepted_with_strict_field_validation() -> Result<()> {
    let harness = Harness::get().await?;
    let namespace = harness.namespace().await?;
    let client = harness.client()?;
    let fixtures = yaml_files(&repo_root().join("api/tests/fixtures"))?;
    ensure!(!fixtures.is_empty(), "no fixtures in api/tests/fixtures");

    for file in fixtures {
        let fixture = file.file_name().unwrap().to_string_lossy().into_owned();
        let mut object = read_fixture(&file, namespace.name())?;
        let status = object.as_object_mut().unwrap().remove("status");
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        let api = dynamic_api(&client, namespace.name(), &object).await?;

        let applied = api
            .patch(&name, &strict_apply(), &Patch::Apply(&object))
            .await
            .with_context(|| format!("{fixture} was rejected"))?;
        assert_contains(
            &object["spec"],
            &applied.data["spec"],
            &format!("{fixture}: spec"),
        );

        if let Some(status) = status {
            let status_only = json!({
                "apiVersion": object["apiVersion"],
                "kind": object["kind"],
                "metadata": { "name": name },
                "status": status,
            });
            let applied = api
                .patch_status(&name, &strict_apply(), &Patch::Apply(&status_only))
                .await
                .with_context(|| format!("{fixture}: its status was rejected"))?;
            assert_contains(
                &status,
                &applied.data["status"],
                &format!("{fixture}: status"),
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn an_unknown_spec_field_is_rejected_by_the_api_server() -> Result<()> {
    let harness = Harness::get().await?;
    let namespace = harness.namespace().await?;
    let client = harness.client()?;
    let fixture = repo_root().join("api/tests/fixtures/gitrepository-https-branch.yaml");
    let mut object = read_fixture(&fixture, namespace.name())?;
    object["spec"]["notAField"] = json!(true);
    let name = object["metadata"]["name"].as_str().unwrap().to_owned();
    let api = dynamic_api(&client, namespace.name(), &object).await?;

    let result = api
        .patch(&name, &strict_apply(), &Patch::Apply(&object))
        .await;

    match result {
        Err(kube::Error::Api(status)) => {
            assert!(status.message.contains("notAField"), "{status:?}");
        }
        other => bail!("expected the API server to reject spec.notAField, got {other:?}"),
    }
    assert!(
        api.get_opt(&name).await?.is_none(),
        "the object was stored anyway"
    );
    Ok(())
}

#[tokio::test]
async fn a_deployment_becomes_available_on_the_kwok_node() -> Result<()> {
    let harness = Harness::get().await?;
    let namespace = harness.namespace().await?;
    let deployments: Api<Deployment> = Api::namespaced(harness.client()?, namespace.name());
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": { "name": "web" },
        "spec": {
            "replicas": 2,
            "selector": { "matchLabels": { "app": "web" } },
            "template": {
                "metadata": { "labels": { "app": "web" } },
                // kwok runs no containers, so the image is never pulled.
                "spec": { "containers": [{ "name": "web", "image": "registry.invalid/web:1.0.0" }] },
            },
        },
    }))?;

    deployments
        .create(&PostParams::default(), &deployment)
        .await?;

    let deployments = &deployments;
    wait_until(
        "Deployment web to be Available with 2 replicas",
        || async move {
            let status = deployments
                .get("web")
                .await
                .map_err(|e| e.to_string())?
                .status
                .unwrap_or_default();
            let available = status
                .conditions
                .unwrap_or_default()
                .into_iter()
                .find(|c| c.type_ == "Available")
                .map(|c| format!("{} ({})", c.status, c.reason.unwrap_or_default()));
            match (available.as_deref(), status.available_replicas) {
                (Some(a), Some(2)) if a.starts_with("True") => Ok(()),
                (a, replicas) => Err(format!("Available={a:?}, availableReplicas={replicas:?}")),
            }
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn test_namespace_is_deleted_on_drop_even_with_finalizers_no_controller_will_remove()
-> Result<()> {
    let harness = Harness::get().await?;
    let client = harness.client()?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace = harness.namespace().await?;
    let name = namespace.name().to_owned();
    // What a test leaves behind once its controller has stopped: an object with Flux's
    // finalizer, which no one is left to remove.
    let fixture = repo_root().join("api/tests/fixtures/gitrepository-https-branch.yaml");
    let mut object = read_fixture(&fixture, &name)?;
    object["metadata"]["finalizers"] = json!(["finalizers.fluxcd.io"]);
    let object_name = object["metadata"]["name"].as_str().unwrap().to_owned();
    dynamic_api(&client, &name, &object)
        .await?
        .patch(&object_name, &strict_apply(), &Patch::Apply(&object))
        .await?;
    assert!(namespaces.get_opt(&name).await?.is_some());

    drop(namespace);

    wait_gone(&namespaces, &name).await?;
    Ok(())
}

fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    files.retain(|path| path.is_file() && path.extension().is_some_and(|e| e == "yaml"));
    files.sort();
    Ok(files)
}
