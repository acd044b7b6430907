//! Smoke tests of the harness's OCI registries and Helm chart repository.

use anyhow::{Context, Result, bail, ensure};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use serde_json::Value;
use weir_e2e::{Chart, Error, Harness, unique_name};

#[tokio::test]
async fn registry_lists_pushed_tags_without_credentials() -> Result<()> {
    let harness = Harness::get().await?;
    let registry = harness.registry();
    let name = unique_name("app", 60);

    let v1 = registry.push_image(&name, "1.0.0").await?;
    let v2 = registry.push_image(&name, "1.1.0").await?;
    let mut tags = registry
        .list_tags_as(&name, &RegistryAuth::Anonymous)
        .await?;

    tags.sort();
    assert_eq!(tags, ["1.0.0", "1.1.0"]);
    assert_eq!(v1.reference(), format!("{}/{name}:1.0.0", registry.host()));
    assert!(v1.digest.starts_with("sha256:"), "{v1:?}");
    assert_ne!(v1.digest, v2.digest, "each tag should have its own digest");
    Ok(())
}

#[tokio::test]
async fn auth_registry_lists_tags_with_credentials_and_refuses_without() -> Result<()> {
    let harness = Harness::get().await?;
    let registry = harness.registry_with_auth();
    let credentials = registry
        .credentials()
        .context("the auth registry has no credentials")?;
    let name = unique_name("private-app", 60);
    registry.push_image(&name, "2.0.0").await?;

    let with_credentials = registry.list_tags(&name).await;
    let anonymous = registry.list_tags_as(&name, &RegistryAuth::Anonymous).await;
    let wrong_password = registry
        .list_tags_as(
            &name,
            &RegistryAuth::Basic(credentials.username.clone(), "wrong".into()),
        )
        .await;
    let anonymous_push = registry
        .push_image_as(&name, "3.0.0", &RegistryAuth::Anonymous)
        .await;

    assert_eq!(with_credentials?, ["2.0.0"]);
    for (case, result) in [
        ("listing tags without credentials", anonymous.map(drop)),
        (
            "listing tags with a wrong password",
            wrong_password.map(drop),
        ),
        ("pushing without credentials", anonymous_push.map(drop)),
    ] {
        match result {
            Err(error) if is_unauthorized(&error) => {}
            other => bail!("{case}: expected 401 Unauthorized, got {other:?}"),
        }
    }
    Ok(())
}

fn is_unauthorized(error: &Error) -> bool {
    matches!(
        error,
        Error::Registry {
            source: OciDistributionError::UnauthorizedError { .. }
                | OciDistributionError::ServerError { code: 401, .. },
            ..
        }
    )
}

#[tokio::test]
async fn chart_index_is_served_and_lists_a_published_chart() -> Result<()> {
    let harness = Harness::get().await?;
    let charts = harness.charts();
    let name = unique_name("weir-chart", 40);

    charts.publish(&Chart::new(&name, "0.1.0"))?;
    charts.publish(&Chart::new(&name, "0.2.0").values("message: second\n"))?;

    let http = reqwest::Client::new();
    let index = http
        .get(charts.index_url())
        .send()
        .await?
        .error_for_status()?;
    let index: Value = serde_yaml_ng::from_str(&index.text().await?)?;
    let entries = index["entries"][&name]
        .as_array()
        .context("chart not in the index")?;
    let mut versions: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["version"].as_str())
        .collect();
    versions.sort_unstable();
    assert_eq!(versions, ["0.1.0", "0.2.0"]);

    let package_url = entries[0]["urls"][0].as_str().context("no package URL")?;
    ensure!(
        package_url.starts_with(charts.url()),
        "package URL {package_url} is not served by the repository"
    );
    let package = http
        .get(package_url)
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    assert_eq!(&package[..2], &[0x1f, 0x8b], "the package is not gzip");
    Ok(())
}
