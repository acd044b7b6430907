//! The chart's CRDs as Flux's `install.crds` and `upgrade.crds` say: `CreateReplace` on install
//! creates them, `CreateReplace` on upgrade replaces them (Helm never does), `Create` on upgrade
//! creates the missing ones and leaves the others, and `Skip` (the upgrade's default) leaves them
//! as they are.

use std::fmt::Write as _;

use anyhow::{Result, ensure};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{Api, api::DeleteParams};
use serde_json::json;
use weir_api::{condition::find_condition, helm_release as hr};
use weir_e2e::{unique_name, wait_until};

use crate::fixture::{Fixture, app_chart};

/// A namespaced CRD `widgets.<group>` whose spec has the string `fields`.
fn widgets(group: &str, fields: &[&str]) -> String {
    let mut properties = String::new();
    for field in fields {
        writeln!(properties, "                {field}: {{type: string}}").unwrap();
    }
    format!(
        "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.{group}
spec:
  group: {group}
  scope: Namespaced
  names: {{plural: widgets, singular: widget, kind: Widget, listKind: WidgetList}}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
{properties}"
    )
}

/// Fails unless the spec of the live CRD `name` has exactly the fields `expected`.
async fn expect_fields(
    crds: &Api<CustomResourceDefinition>,
    name: &str,
    expected: &[&str],
) -> Result<()> {
    let crd = serde_json::to_value(crds.get(name).await?)?;
    let fields: Vec<&str> = crd
        .pointer("/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties")
        .and_then(|p| p.as_object())
        .map(|p| p.keys().map(String::as_str).collect())
        .unwrap_or_default();
    ensure!(
        fields == expected,
        "{name} has the fields {fields:?}, not {expected:?}"
    );
    Ok(())
}

/// Waits until the HelmRelease `name`'s latest release is of chart `version`, deployed.
async fn wait_released(fx: &Fixture, name: &str, version: &str) -> Result<()> {
    wait_until(
        &format!("HelmRelease {name} released {version}"),
        || async {
            let hr = fx.api.get(name).await.map_err(|e| e.to_string())?;
            let latest = hr.status.unwrap_or_default().history.into_iter().next();
            match latest {
                Some(s) if s.chart_version == version && s.status == "deployed" => Ok(()),
                other => Err(format!("latest is {other:?}")),
            }
        },
    )
    .await?;
    Ok(())
}

/// Runs `steps` with a CRD group of this run's own (CRDs are cluster-scoped), then deletes the
/// CRD `widgets.<group>` whatever the outcome: `steps` fail with errors, not panics, so that
/// the deletion runs.
async fn with_widgets_group<F>(steps: impl FnOnce(Fixture, String) -> F) -> Result<()>
where
    F: Future<Output = Result<()>>,
{
    let fx = Fixture::start().await?;
    let crds: Api<CustomResourceDefinition> = Api::all(fx.client.clone());
    let group = format!("{}.e2e.weir.dev", unique_name("crds", 30));
    let name = format!("widgets.{group}");
    let result = steps(fx, group).await;
    crds.delete(&name, &DeleteParams::default()).await.ok();
    result
}

#[tokio::test]
async fn crds_are_created_and_replaced_as_the_policies_say() -> Result<()> {
    with_widgets_group(|fx, group| async move {
        let crds: Api<CustomResourceDefinition> = Api::all(fx.client.clone());
        let name = format!("widgets.{group}");
        create_replace_then_skip(&fx, &crds, &group, &name).await
    })
    .await
}

#[tokio::test]
async fn upgrade_create_adds_missing_crds_and_leaves_existing_ones() -> Result<()> {
    with_widgets_group(|fx, group| async move {
        let crds: Api<CustomResourceDefinition> = Api::all(fx.client.clone());
        let name = format!("widgets.{group}");
        let chart = unique_name("crds", 30);
        let release = format!("{}-app", fx.ns.name());
        fx.publish(&app_chart(&chart, "1.0.0").file("crds/widgets.yaml", &widgets(&group, &["a"])))
            .await?;
        fx.create(
            "app",
            &chart,
            "*",
            json!({ "install": { "crds": "Skip" }, "upgrade": { "crds": "Create" } }),
        )
        .await?;
        fx.wait_ready("app", "True", Some(hr::INSTALL_SUCCEEDED_REASON))
            .await?;
        ensure!(
            crds.get_opt(&name).await?.is_none(),
            "install.crds Skip created {name}"
        );

        // Missing: created by the upgrade.
        fx.publish(
            &app_chart(&chart, "2.0.0").file("crds/widgets.yaml", &widgets(&group, &["a", "b"])),
        )
        .await?;
        fx.wait_chart_revision(&release, "2.0.0").await?;
        wait_released(&fx, "app", "2.0.0").await?;
        expect_fields(&crds, &name, &["a", "b"]).await?;

        // Existing: left as it is.
        fx.publish(
            &app_chart(&chart, "3.0.0")
                .file("crds/widgets.yaml", &widgets(&group, &["a", "b", "c"])),
        )
        .await?;
        fx.wait_chart_revision(&release, "3.0.0").await?;
        wait_released(&fx, "app", "3.0.0").await?;
        expect_fields(&crds, &name, &["a", "b"]).await?;
        Ok(())
    })
    .await
}

async fn create_replace_then_skip(
    fx: &Fixture,
    crds: &Api<CustomResourceDefinition>,
    group: &str,
    name: &str,
) -> Result<()> {
    let chart = unique_name("crds", 30);
    let release = format!("{}-app", fx.ns.name());
    fx.publish(&app_chart(&chart, "1.0.0").file("crds/widgets.yaml", &widgets(group, &["a"])))
        .await?;
    fx.create(
        "app",
        &chart,
        "*",
        json!({
            "install": { "crds": "CreateReplace" },
            "upgrade": { "crds": "CreateReplace" },
        }),
    )
    .await?;
    fx.wait_ready("app", "True", Some(hr::INSTALL_SUCCEEDED_REASON))
        .await?;
    expect_fields(crds, name, &["a"]).await?;

    // A new chart version whose CRD has a new field: replaced before the upgrade.
    fx.publish(&app_chart(&chart, "2.0.0").file("crds/widgets.yaml", &widgets(group, &["a", "b"])))
        .await?;
    fx.wait_chart_revision(&release, "2.0.0").await?;
    wait_released(fx, "app", "2.0.0").await?;
    expect_fields(crds, name, &["a", "b"]).await?;

    // `upgrade.crds` back to its default, Skip: the next upgrade leaves the CRD as it is.
    fx.patch("app", json!({ "spec": { "upgrade": { "crds": null } } }))
        .await?;
    fx.wait_ready("app", "True", None).await?;
    fx.publish(
        &app_chart(&chart, "3.0.0").file("crds/widgets.yaml", &widgets(group, &["a", "b", "c"])),
    )
    .await?;
    fx.wait_chart_revision(&release, "3.0.0").await?;
    wait_released(fx, "app", "3.0.0").await?;
    expect_fields(crds, name, &["a", "b"]).await?;
    Ok(())
}

#[tokio::test]
async fn a_crd_the_api_server_refuses_fails_the_install_naming_it() -> Result<()> {
    with_widgets_group(|fx, group| async move {
        let chart = unique_name("crds", 30);
        // Its name is not `<plural>.<group>`: the API server refuses it.
        let refused = widgets(&group, &["a"]).replace(
            &format!("group: {group}"),
            &format!("group: other.{group}"),
        );
        fx.publish(&app_chart(&chart, "1.0.0").file("crds/widgets.yaml", &refused))
            .await?;
        fx.create(
            "app",
            &chart,
            "*",
            json!({ "install": { "crds": "CreateReplace" } }),
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
        let status = failed.status.unwrap_or_default();
        let released = find_condition(&status.conditions, hr::RELEASED_CONDITION).unwrap();
        let expected = format!(
            "cannot apply CustomResourceDefinition 'widgets.{group}' (crds/widgets.yaml in the chart)"
        );
        ensure!(
            released.message.contains(&expected),
            "the message names the CRD and its file: {}",
            released.message
        );
        // Nothing was released.
        ensure!(fx.storage_secrets("app").await?.is_empty());
        Ok(())
    })
    .await
}
