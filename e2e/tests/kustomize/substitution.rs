//! `postBuild` variable substitution.

use anyhow::Result;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, api::PostParams};
use serde_json::json;

use crate::fixture::*;

#[tokio::test]
async fn post_build_substitutes_variables_from_the_spec_config_maps_and_secrets() -> Result<()> {
    let template = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: vars\n  namespace: NAMESPACE\ndata:\n  cluster: ${cluster}\n  region: ${region:=eu}\n  token: ${token}\n  literal: $${cluster}\n";
    let off = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: raw\n  namespace: NAMESPACE\n  annotations:\n    kustomize.toolkit.fluxcd.io/substitute: disabled\ndata:\n  k: ${cluster}\n";
    let f = Fixture::start(&[("apps/vars.yaml", template), ("apps/raw.yaml", off)]).await?;
    Api::<ConfigMap>::namespaced(f.client.clone(), f.ns())
        .create(&PostParams::default(), &serde_json::from_value(json!({
            "metadata": { "name": "cluster-vars" }, "data": { "cluster": "from-cm", "region": "us" }
        }))?)
        .await?;
    f.create_secret("cluster-secret", json!({ "token": "s3cr3t" }))
        .await?;
    f.create_ks(
        "app",
        json!({
            "path": "./apps",
            "postBuild": {
                "substitute": { "cluster": "prod" },
                "substituteFrom": [
                    { "kind": "ConfigMap", "name": "cluster-vars" },
                    { "kind": "Secret", "name": "cluster-secret" },
                    { "kind": "ConfigMap", "name": "absent", "optional": true },
                ],
            },
        }),
    )
    .await?;
    let head = f.repo.head()?;
    f.wait_applied("app", &head).await?;
    let data = f.config_map("vars").await?.unwrap().data.unwrap();
    assert_eq!(data["cluster"], "prod", "spec variables win");
    assert_eq!(data["region"], "us");
    assert_eq!(data["token"], "s3cr3t");
    assert_eq!(data["literal"], "${cluster}");
    assert_eq!(
        f.config_map("raw").await?.unwrap().data.unwrap()["k"],
        "${cluster}"
    );
    f.teardown().await
}

/// `substituteStrategy`: with no variable defined, `WithVariables` (the default) leaves the
/// manifests as written and `Always` substitutes anyway, so defaults apply.
#[tokio::test]
async fn substitute_strategy_always_substitutes_without_variables() -> Result<()> {
    let cm = |name: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: NAMESPACE\n\
             data:\n  region: ${{region:=eu}}\n"
        )
    };
    let f = Fixture::start(&[
        ("default/cm.yaml", &cm("with-variables")),
        ("always/cm.yaml", &cm("always")),
    ])
    .await?;
    f.create_ks(
        "with-variables",
        json!({ "path": "./default", "postBuild": { "substituteFrom": [] } }),
    )
    .await?;
    f.create_ks(
        "always",
        json!({ "path": "./always", "postBuild": { "substituteStrategy": "Always" } }),
    )
    .await?;
    let head = f.repo.head()?;
    f.wait_applied("with-variables", &head).await?;
    f.wait_applied("always", &head).await?;
    let region = |cm: Option<ConfigMap>| cm.unwrap().data.unwrap()["region"].clone();
    assert_eq!(
        region(f.config_map("with-variables").await?),
        "${region:=eu}"
    );
    assert_eq!(region(f.config_map("always").await?), "eu");
    f.teardown().await
}

/// Flux's `--feature-gates=StrictPostBuildSubstitutions=false`: a variable with no value and no
/// default becomes the empty string instead of failing the build (the default, strict, is
/// table-tested in substitute.rs).
#[tokio::test]
async fn lenient_substitution_is_flux_feature_gate_turned_off() -> Result<()> {
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: vars\n  namespace: NAMESPACE\ndata:\n  set: ${set}\n  unset: \"${unset}\"\n";
    let gates = weir_kustomize::FeatureGates::parse(&["StrictPostBuildSubstitutions=false"])
        .map_err(anyhow::Error::msg)?;
    let f = Fixture::start_with_gates(&[("apps/vars.yaml", cm)], gates).await?;
    f.create_ks(
        "app",
        json!({ "path": "./apps", "postBuild": { "substitute": { "set": "yes" } } }),
    )
    .await?;
    f.wait_applied("app", &f.repo.head()?).await?;
    let data = f.config_map("vars").await?.unwrap().data.unwrap();
    assert_eq!(data["set"], "yes");
    assert_eq!(data["unset"], "");
    f.teardown().await
}
