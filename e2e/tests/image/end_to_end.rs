//! The whole loop, from a new tag in the registry to a rolled-out Deployment.

use anyhow::Result;
use kube::{Api, api::PostParams};
use serde_json::json;
use weir_api::manifest;
use weir_e2e::{Harness, unique_name, wait_until};

use crate::fixture::*;

/// Whether Deployment `web` runs `image`: the template has it and kwok rolled it out.
async fn deployment_runs(
    deployments: Api<k8s_openapi::api::apps::v1::Deployment>,
    image: String,
) -> Result<(), String> {
    let d = deployments.get("web").await.map_err(|e| e.to_string())?;
    let current = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref()?.containers.first()?.image.clone());
    let status = d.status.clone().unwrap_or_default();
    let done = current.as_deref() == Some(image.as_str())
        && status.observed_generation == d.metadata.generation
        && status.updated_replicas == Some(1)
        && status.available_replicas == Some(1)
        && status.replicas == Some(1);
    if done {
        Ok(())
    } else {
        Err(format!("image {current:?}, status {status:?}"))
    }
}

/// The whole loop: a Deployment synced from git by a Kustomization; a new semver tag in the
/// registry is chosen by the policy, committed and pushed by the automation, fetched by the
/// GitRepository, applied by the Kustomization, and rolled out (by kwok).
#[tokio::test]
async fn a_new_tag_reaches_the_cluster_through_a_commit() -> Result<()> {
    use k8s_openapi::api::apps::v1::Deployment;
    let f = Fixture::start().await?;
    let harness = Harness::get().await?;
    let ns = f.ns.name().to_owned();
    let _sync = f.start_sync_controllers().await?;

    let name = unique_name("e2e", 50);
    let first = harness.registry().push_image(&name, "1.0.0").await?;
    let deployment = format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: {ns}
spec:
  replicas: 1
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
      - name: web
        image: {image} # {{"$imagepolicy": "{ns}:app"}}
"#,
        image = first.reference()
    );
    let repo = f.git_source(&[("apps/deploy.yaml", &deployment)]).await?;
    let ks: weir_api::Kustomization = manifest::from_value(json!({
        "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
        "kind": "Kustomization",
        "metadata": { "name": "apps", "namespace": ns },
        "spec": {
            "sourceRef": { "kind": "GitRepository", "name": "fleet" },
            "path": "./apps", "interval": "1m", "retryInterval": "2s", "timeout": "30s", "prune": true,
        },
    }))?;
    f.api::<weir_api::Kustomization>()
        .create(&PostParams::default(), &ks)
        .await?;
    f.repository(
        "app",
        json!({ "image": first.repository, "interval": "2s", "insecure": true }),
    )
    .await?;
    f.policy(
        "app",
        json!({ "imageRepositoryRef": { "name": "app" }, "policy": { "semver": { "range": ">=1.0.0" } } }),
    )
    .await?;
    f.automation("auto", automation_spec(None)).await?;

    let setup = std::time::Instant::now();
    let deployments = f.api::<Deployment>();
    let rolled_out = |image: String| deployment_runs(deployments.clone(), image);
    wait_until("the Deployment to run 1.0.0", || {
        rolled_out(first.reference())
    })
    .await?;
    eprintln!("first sync and rollout: {:?}", setup.elapsed());
    let initial = repo.head()?;

    let started = std::time::Instant::now();
    let second = harness.registry().push_image(&name, "1.1.0").await?;
    let pushed = f.wait_pushed("auto", || repo.head().unwrap()).await?;
    let to_commit = started.elapsed();
    wait_until("the Deployment to roll out 1.1.0", || {
        rolled_out(second.reference())
    })
    .await?;
    eprintln!(
        "new tag to pushed commit: {to_commit:?}; to rolled-out Deployment: {:?}",
        started.elapsed()
    );

    assert_ne!(pushed, initial);
    let log = git_in(&repo, &["log", "--format=%H %an: %s", "main"]);
    assert!(
        log.starts_with(&format!(
            "{pushed} Weir Bot: Update from image update automation"
        )),
        "{log}"
    );
    let ks = f.api::<weir_api::Kustomization>().get("apps").await?;
    let applied = ks.status.unwrap().last_applied_revision.unwrap_or_default();
    assert!(
        applied.ends_with(&pushed),
        "applied {applied}, pushed {pushed}"
    );
    Ok(())
}
