//! Where a release's chart comes from, and bad input: a chart from an OCI HelmRepository (the
//! harness registry, pushed with the real `helm push`) and from a GitRepository path; a chart
//! that does not exist, a range no version satisfies and a missing valuesFrom key are
//! Ready=False naming what is wrong, and nothing is installed.

use std::collections::BTreeMap;

use anyhow::Result;
use kube::{Api, api::PostParams};
use serde_json::json;
use weir_api::{
    GitRepository, HelmRepository, condition::find_condition, helm_release as hr, manifest, types,
};
use weir_e2e::{Harness, unique_name};

use crate::fixture::{Fixture, app_chart};

fn ready_message(hr: &weir_api::HelmRelease) -> String {
    hr.status
        .as_ref()
        .and_then(|s| find_condition(&s.conditions, types::READY))
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_chart_from_an_oci_repository_is_released() -> Result<()> {
    let fx = Fixture::start().await?;
    let harness = Harness::get().await?;
    let chart = app_chart(&unique_name("ocichart", 30), "1.2.0");
    let path = unique_name("charts", 30);
    let url = harness
        .registry()
        .push_chart(&harness.tool("helm"), &chart, &path)?;
    let repo: HelmRepository = manifest::from_value(json!({
        "apiVersion": "source.toolkit.fluxcd.io/v1",
        "kind": "HelmRepository",
        "metadata": { "name": "oci", "namespace": fx.ns.name() },
        "spec": { "url": url, "type": "oci", "insecure": true, "interval": "10m" },
    }))?;
    Api::<HelmRepository>::namespaced(fx.client.clone(), fx.ns.name())
        .create(&PostParams::default(), &repo)
        .await?;
    fx.create(
        "app",
        chart.name(),
        "1.x",
        json!({ "chart": { "spec": { "sourceRef": { "kind": "HelmRepository", "name": "oci" } } } }),
    )
    .await?;
    let ready = fx
        .wait_ready("app", "True", Some(hr::INSTALL_SUCCEEDED_REASON))
        .await?;
    let history = ready.status.unwrap_or_default().history;
    assert_eq!(history[0].chart_version, "1.2.0");
    assert_eq!(fx.helm_history("app").await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn a_chart_from_a_git_repository_path_is_released() -> Result<()> {
    let fx = Fixture::start().await?;
    let harness = Harness::get().await?;
    let scratch = tempfile::tempdir()?;
    let dir = app_chart("gitchart", "0.3.0").write_to(scratch.path())?;
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    for entry in walk(&dir)? {
        let relative = entry.strip_prefix(scratch.path())?.display().to_string();
        files.insert(
            format!("charts/{relative}"),
            std::fs::read_to_string(&entry)?,
        );
    }
    let files: BTreeMap<&str, &str> = files
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let repo = harness.git().create_repo("charts", &files)?;
    let source: GitRepository = manifest::from_value(json!({
        "apiVersion": "source.toolkit.fluxcd.io/v1",
        "kind": "GitRepository",
        "metadata": { "name": "charts-git", "namespace": fx.ns.name() },
        "spec": { "url": repo.http_url(), "interval": "10m", "ref": { "branch": "main" } },
    }))?;
    Api::<GitRepository>::namespaced(fx.client.clone(), fx.ns.name())
        .create(&PostParams::default(), &source)
        .await?;
    fx.create(
        "app",
        "./charts/gitchart",
        "*",
        json!({ "chart": { "spec": { "sourceRef": { "kind": "GitRepository", "name": "charts-git" } } } }),
    )
    .await?;
    let ready = fx
        .wait_ready("app", "True", Some(hr::INSTALL_SUCCEEDED_REASON))
        .await?;
    let history = ready.status.unwrap_or_default().history;
    assert_eq!(
        (
            history[0].chart_name.as_str(),
            history[0].chart_version.as_str()
        ),
        ("gitchart", "0.3.0")
    );
    Ok(())
}

fn walk(dir: &std::path::Path) -> Result<Vec<std::path::PathBuf>> {
    let mut out = vec![];
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(walk(&path)?);
        } else {
            out.push(path);
        }
    }
    Ok(out)
}

/// Waits until `name` is Ready=False with `reason` and a message naming each of `words`: the
/// HelmChart's own verdict, which comes after a first "not ready" while it is reconciled.
async fn wait_failed_naming(fx: &Fixture, name: &str, reason: &str, words: &[&str]) -> Result<()> {
    weir_e2e::wait_until(&format!("{name} to fail naming {words:?}"), || async move {
        let hr = fx.api.get(name).await.map_err(|e| e.to_string())?;
        let ready = hr
            .status
            .as_ref()
            .and_then(|s| find_condition(&s.conditions, types::READY))
            .cloned();
        match ready {
            Some(c)
                if format!("{:?}", c.status) == "False"
                    && c.reason == reason
                    && words.iter().all(|w| c.message.contains(w)) =>
            {
                Ok(())
            }
            other => Err(format!("Ready is {other:?}")),
        }
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn bad_charts_and_values_are_named_and_nothing_is_installed() -> Result<()> {
    let fx = Fixture::start().await?;
    let chart = unique_name("present", 30);
    fx.publish(&app_chart(&chart, "1.0.0")).await?;

    // A chart the repository does not have.
    let missing = unique_name("absent", 30);
    fx.create("nochart", &missing, "*", json!({})).await?;
    wait_failed_naming(&fx, "nochart", hr::ARTIFACT_FAILED_REASON, &[&missing]).await?;

    // A range no version satisfies.
    fx.create("norange", &chart, ">=9.0.0", json!({})).await?;
    wait_failed_naming(
        &fx,
        "norange",
        hr::ARTIFACT_FAILED_REASON,
        &[&chart, ">=9.0.0"],
    )
    .await?;

    // A valuesFrom key the Secret does not have.
    fx.secret("settings", &[("other", "x: 1")]).await?;
    fx.create(
        "nokey",
        &chart,
        "*",
        json!({ "valuesFrom": [{ "kind": "Secret", "name": "settings", "valuesKey": "values.yaml" }] }),
    )
    .await?;
    let failed = fx
        .wait_ready("nokey", "False", Some(hr::INIT_FAILED_REASON))
        .await?;
    let message = ready_message(&failed);
    assert!(
        message.contains("settings") && message.contains("values.yaml"),
        "{message}"
    );
    for name in ["nochart", "norange", "nokey"] {
        assert_eq!(
            fx.storage_secrets(name).await?,
            Vec::<String>::new(),
            "{name}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_chart_ref_names_an_existing_helm_chart() -> Result<()> {
    let fx = Fixture::start().await?;
    let chart = unique_name("referenced", 30);
    fx.publish(&app_chart(&chart, "2.0.0")).await?;
    let helm_chart: weir_api::HelmChart = manifest::from_value(json!({
        "apiVersion": "source.toolkit.fluxcd.io/v1",
        "kind": "HelmChart",
        "metadata": { "name": "shared", "namespace": fx.ns.name() },
        "spec": {
            "chart": chart,
            "version": "2.x",
            "sourceRef": { "kind": "HelmRepository", "name": "charts" },
            "interval": "10m",
        },
    }))?;
    Api::<weir_api::HelmChart>::namespaced(fx.client.clone(), fx.ns.name())
        .create(&PostParams::default(), &helm_chart)
        .await?;
    let hr: weir_api::HelmRelease = manifest::from_value(json!({
        "apiVersion": "helm.toolkit.fluxcd.io/v2",
        "kind": "HelmRelease",
        "metadata": { "name": "app", "namespace": fx.ns.name() },
        "spec": { "interval": "10m", "chartRef": { "kind": "HelmChart", "name": "shared" } },
    }))?;
    fx.api.create(&PostParams::default(), &hr).await?;
    let ready = fx
        .wait_ready("app", "True", Some(hr::INSTALL_SUCCEEDED_REASON))
        .await?;
    let status = ready.status.unwrap_or_default();
    assert_eq!(status.history[0].chart_version, "2.0.0");
    // No HelmChart of its own.
    assert_eq!(status.helm_chart, None);
    let charts = Api::<weir_api::HelmChart>::namespaced(fx.client.clone(), fx.ns.name());
    assert!(
        charts
            .get_opt(&format!("{}-app", fx.ns.name()))
            .await?
            .is_none()
    );
    Ok(())
}
