//! `spec.postRenderers`: kustomize patches and images applied to the rendered manifests by
//! Helm's post-renderer plugin (the weir binary, with the real kustomize) before Helm applies
//! them; a change of the post-renderers alone upgrades the release.

use anyhow::Result;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use serde_json::json;
use weir_api::helm_release as hr;
use weir_e2e::unique_name;

use crate::fixture::{Fixture, app_chart};

fn renderers(label: &str) -> serde_json::Value {
    json!([
        { "kustomize": { "images": [{ "name": "registry.invalid/app", "newTag": "2" }] } },
        { "kustomize": { "patches": [{
            "patch": format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app\n  labels:\n    rendered: {label}\n"
            ),
            "target": { "kind": "Deployment" },
        }] } },
    ])
}

#[tokio::test]
async fn post_renderers_change_what_helm_applies() -> Result<()> {
    let fx = Fixture::start().await?;
    let chart = unique_name("rendered", 30);
    fx.publish(&app_chart(&chart, "1.0.0")).await?;
    fx.create(
        "app",
        &chart,
        "*",
        json!({ "postRenderers": renderers("first") }),
    )
    .await?;
    let installed = fx
        .wait_ready("app", "True", Some(hr::INSTALL_SUCCEEDED_REASON))
        .await?;
    let digest = installed
        .status
        .unwrap_or_default()
        .observed_post_renderers_digest
        .expect("the post-renderers' digest is recorded");
    assert!(digest.starts_with("sha256:"));
    let deployments: Api<Deployment> = Api::namespaced(fx.client.clone(), fx.ns.name());
    let deployment = deployments.get("app").await?;
    assert_eq!(
        deployment.metadata.labels.clone().unwrap_or_default()["rendered"],
        "first"
    );
    let image = deployment.spec.unwrap().template.spec.unwrap().containers[0]
        .image
        .clone();
    assert_eq!(image.as_deref(), Some("registry.invalid/app:2"));
    // Helm's own record holds the post-rendered manifest.
    let manifest = fx.helm(&["get", "manifest", "app"]).await?;
    assert!(manifest.contains("registry.invalid/app:2"), "{manifest}");

    // Only the post-renderers change: a new revision with the new label.
    fx.patch(
        "app",
        json!({ "spec": { "postRenderers": renderers("second") } }),
    )
    .await?;
    let upgraded = fx
        .wait_ready("app", "True", Some(hr::UPGRADE_SUCCEEDED_REASON))
        .await?;
    let status = upgraded.status.unwrap_or_default();
    assert_eq!(status.history[0].version, 2);
    assert_ne!(
        status.observed_post_renderers_digest.as_deref(),
        Some(digest.as_str())
    );
    let deployment = deployments.get("app").await?;
    assert_eq!(
        deployment.metadata.labels.unwrap_or_default()["rendered"],
        "second"
    );
    Ok(())
}

#[tokio::test]
async fn a_post_renderer_that_fails_is_named_and_nothing_is_installed() -> Result<()> {
    let fx = Fixture::start().await?;
    let chart = unique_name("badrender", 30);
    fx.publish(&app_chart(&chart, "1.0.0")).await?;
    fx.create(
        "app",
        &chart,
        "*",
        json!({ "postRenderers": [{ "kustomize": { "patches": [{
            "patch": "- op: replace\n  path: /spec/nothing/here\n  value: 1\n",
            "target": { "kind": "Deployment" },
        }] } }] }),
    )
    .await?;
    let failed = fx
        .wait_condition(
            "app",
            hr::RELEASED_CONDITION,
            "False",
            hr::INSTALL_FAILED_REASON,
        )
        .await?;
    let conditions = failed.status.unwrap_or_default().conditions;
    let released = weir_api::condition::find_condition(&conditions, hr::RELEASED_CONDITION)
        .unwrap()
        .message
        .clone();
    assert!(
        released.contains("postRenderers[0]: kustomize build failed")
            && released.contains("/spec/nothing/here"),
        "{released}"
    );
    assert_eq!(fx.storage_secrets("app").await?, Vec::<String>::new());
    Ok(())
}
