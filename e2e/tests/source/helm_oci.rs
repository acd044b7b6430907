//! HelmCharts of OCI HelmRepositories: charts pushed to the harness's registries with the real
//! `helm push`, the highest tag in the range pulled (a `+` in a version pushed as `_`) and stored
//! as a chart archive whose revision is the version; credentials from the repository's
//! `secretRef` (username and password, or a docker config); a missing chart, a range no tag
//! satisfies and an unreachable registry are Ready=False naming what failed, and retried.

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use weir_api::{HelmChart, HelmRepository, condition::find_condition, manifest, types};
use weir_e2e::{Chart, Harness, Registry, unique_name};

use crate::{
    fixture::Fixture,
    helm_chart::{artifact, download, file, ready_message, yaml},
};

/// A source controller and the HelmRepositories and HelmCharts of its namespace.
struct OciCharts {
    fx: Fixture,
    api: Api<HelmChart>,
}

impl OciCharts {
    async fn start() -> Result<Self> {
        let fx = Fixture::start().await?;
        let api = Api::namespaced(fx.client.clone(), fx.ns.name());
        Ok(Self { fx, api })
    }

    /// Creates an OCI HelmRepository `name` of `url`, spoken to over plain HTTP, with `extra`
    /// spec fields.
    async fn repository(&self, name: &str, url: &str, extra: serde_json::Value) -> Result<()> {
        let mut spec = json!({ "type": "oci", "url": url, "insecure": true, "timeout": "10s" });
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        let repo: HelmRepository = manifest::from_value(json!({
            "apiVersion": "source.toolkit.fluxcd.io/v1",
            "kind": "HelmRepository",
            "metadata": { "name": name, "namespace": self.fx.ns.name() },
            "spec": spec,
        }))?;
        Api::<HelmRepository>::namespaced(self.fx.client.clone(), self.fx.ns.name())
            .create(&PostParams::default(), &repo)
            .await?;
        Ok(())
    }

    /// Creates a HelmChart `name` of `chart` in `range` from the HelmRepository `repo`.
    async fn chart(&self, name: &str, repo: &str, chart: &str, range: &str) -> Result<()> {
        let object: HelmChart = manifest::from_value(json!({
            "apiVersion": "source.toolkit.fluxcd.io/v1",
            "kind": "HelmChart",
            "metadata": { "name": name, "namespace": self.fx.ns.name() },
            "spec": {
                "chart": chart,
                "version": range,
                "sourceRef": { "kind": "HelmRepository", "name": repo },
                "interval": "10m",
            },
        }))?;
        self.api.create(&PostParams::default(), &object).await?;
        Ok(())
    }

    async fn wait_ready(
        &self,
        name: &str,
        status: &str,
        reason: Option<&str>,
    ) -> Result<HelmChart> {
        Ok(weir_e2e::wait_ready(&self.api, name, status, reason).await?)
    }

    async fn create_secret(&self, secret: &Secret) -> Result<()> {
        Api::<Secret>::namespaced(self.fx.client.clone(), self.fx.ns.name())
            .create(&PostParams::default(), secret)
            .await?;
        Ok(())
    }
}

/// Pushes `chart` to `registry` under `path` with the pinned helm; returns the repository URL.
async fn push(registry: &Registry, chart: &Chart, path: &str) -> Result<String> {
    let helm = Harness::get().await?.tool("helm");
    Ok(registry.push_chart(&helm, chart, path)?)
}

/// Asserts the HelmChart's artifact is `name` at `version`: its revision, and the `Chart.yaml`
/// of the archive served.
async fn assert_chart(chart: &HelmChart, name: &str, version: &str) -> Result<()> {
    assert_eq!(artifact(chart)?.revision, version);
    let files = download(chart).await?;
    let chart_yaml = yaml(file(&files, &format!("{name}/Chart.yaml")).context("no Chart.yaml")?);
    assert_eq!(chart_yaml["version"], yaml(version));
    assert_eq!(chart_yaml["name"], yaml(name));
    Ok(())
}

#[tokio::test]
async fn an_oci_chart_is_the_highest_tag_in_its_range_and_merges_values_files() -> Result<()> {
    let t = OciCharts::start().await?;
    let registry = Harness::get().await?.registry();
    let repository = unique_name("oci-charts", 40);
    let name = unique_name("app", 30);
    let mut url = String::new();
    for version in ["1.0.0", "1.1.0+build.7", "2.0.0"] {
        url = push(registry, &Chart::new(&name, version), &repository).await?;
    }
    t.repository("charts", &url, json!({})).await?;
    t.chart("app", "charts", &name, ">=1.0.0 <2.0.0").await?;

    let pulled = t
        .wait_ready("app", "True", Some("ChartPullSucceeded"))
        .await?;
    assert_eq!(
        ready_message(&pulled),
        format!("pulled '{name}' chart with version '1.1.0+build.7'"),
        "the `_` of the tag is read back as `+`"
    );
    assert_chart(&pulled, &name, "1.1.0+build.7").await?;
    let status = pulled.status.clone().unwrap_or_default();
    assert_eq!(status.observed_chart_name.as_deref(), Some(name.as_str()));
    assert_eq!(status.observed_source_artifact_revision, None);
    let events = t.fx.events_text().await?;
    assert!(
        events.contains(&format!(
            "pulled '{name}' chart with version '1.1.0+build.7'"
        )),
        "no ChartPullSucceeded event: {events}"
    );

    // Values files are merged as for a chart of an HTTP repository.
    let patch = json!({ "spec": { "valuesFiles": ["values.yaml"] } });
    t.api
        .patch("app", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let packaged = t
        .wait_ready("app", "True", Some("ChartPackageSucceeded"))
        .await?;
    assert_eq!(
        ready_message(&packaged),
        format!(
            "packaged '{name}' chart with version '1.1.0+build.7' and merged values files [values.yaml]"
        )
    );
    assert_chart(&packaged, &name, "1.1.0+build.7").await?;
    Ok(())
}

#[tokio::test]
async fn an_oci_chart_is_pulled_with_the_repositorys_credentials() -> Result<()> {
    let t = OciCharts::start().await?;
    let registry = Harness::get().await?.registry_with_auth();
    let credentials = registry
        .credentials()
        .context("the auth registry has no credentials")?;
    let repository = unique_name("oci-private", 40);
    let name = unique_name("private", 30);
    let url = push(registry, &Chart::new(&name, "0.3.0"), &repository).await?;

    t.fx.secret(
        "basic",
        &[
            ("username", credentials.username.as_str()),
            ("password", credentials.password.as_str()),
        ],
    )
    .await?;
    t.create_secret(&registry.docker_config_secret("docker")?)
        .await?;
    t.repository(
        "with-basic",
        &url,
        json!({ "secretRef": { "name": "basic" } }),
    )
    .await?;
    t.repository(
        "with-docker-config",
        &url,
        json!({ "secretRef": { "name": "docker" } }),
    )
    .await?;
    t.repository("anonymous", &url, json!({})).await?;
    t.chart("basic", "with-basic", &name, "*").await?;
    t.chart("docker", "with-docker-config", &name, "0.x")
        .await?;
    t.chart("anonymous", "anonymous", &name, "*").await?;

    for chart in ["basic", "docker"] {
        let pulled = t
            .wait_ready(chart, "True", Some("ChartPullSucceeded"))
            .await?;
        assert_chart(&pulled, &name, "0.3.0").await?;
    }
    let refused = t
        .wait_ready("anonymous", "False", Some("AuthenticationFailed"))
        .await?;
    let message = ready_message(&refused);
    assert!(
        message.contains(&format!("oci://{}/{repository}/{name}", registry.host())),
        "{message}"
    );
    assert!(artifact(&refused).is_err());
    let events = t.fx.events_text().await?;
    assert!(
        !events.contains(&credentials.password),
        "a password in the events: {events}"
    );
    Ok(())
}

#[tokio::test]
async fn a_missing_oci_chart_a_range_no_tag_satisfies_or_no_registry_is_not_ready() -> Result<()> {
    let t = OciCharts::start().await?;
    let registry = Harness::get().await?.registry();
    let repository = unique_name("oci-none", 40);
    let name = unique_name("lonely", 30);
    let url = push(registry, &Chart::new(&name, "1.0.0"), &repository).await?;
    t.repository("charts", &url, json!({})).await?;

    t.chart("out-of-range", "charts", &name, ">=5.0.0").await?;
    t.chart("unknown", "charts", "no-such-chart", "*").await?;
    for (chart, expected) in [
        (
            "out-of-range",
            format!("no '{name}' chart with version matching '>=5.0.0' found"),
        ),
        (
            "unknown",
            "no 'no-such-chart' chart with version matching '*' found".to_owned(),
        ),
    ] {
        let failed = t
            .wait_ready(chart, "False", Some("InvalidChartReference"))
            .await?;
        assert!(
            ready_message(&failed).contains(&expected),
            "{chart}: {}",
            ready_message(&failed)
        );
        assert!(artifact(&failed).is_err());
    }

    // A chart that appears is pulled on the next retry: a missing chart is not a stall.
    push(registry, &Chart::new("no-such-chart", "0.1.0"), &repository).await?;
    let appeared = t
        .wait_ready("unknown", "True", Some("ChartPullSucceeded"))
        .await?;
    assert_chart(&appeared, "no-such-chart", "0.1.0").await?;

    // Nothing listens on port 1: a transient failure naming the registry, not a stall.
    t.repository("nowhere", "oci://127.0.0.1:1/charts", json!({}))
        .await?;
    t.chart("unreachable", "nowhere", &name, "*").await?;
    let unreachable = t
        .wait_ready("unreachable", "False", Some("ChartPullError"))
        .await?;
    let message = ready_message(&unreachable);
    assert!(
        message.contains(&format!(
            "failed to list the tags of 'oci://127.0.0.1:1/charts/{name}'"
        )),
        "{message}"
    );
    let conditions = unreachable.status.clone().unwrap_or_default().conditions;
    assert!(
        find_condition(&conditions, types::STALLED).is_none(),
        "an unreachable registry may come back: {conditions:?}"
    );
    Ok(())
}
