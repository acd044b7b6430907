//! Flux's finalizer on the image kinds.

use anyhow::Result;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::DeleteParams;
use serde_json::json;
use weir_api::{ImagePolicy, ImageRepository};

use crate::fixture::*;

#[tokio::test]
async fn policies_and_automations_carry_fluxs_finalizer_and_are_deleted_with_it() -> Result<()> {
    let f = Fixture::start().await?;
    f.image_and_policy(&["1.0.0"], "*").await?;
    f.git_source(&[("apps/app.yaml", "kind: X\n")]).await?;
    f.automation("auto", automation_spec(None)).await?;
    // As Flux leaves them behind when Weir takes over: the finalizer set, one suspended.
    for (name, suspend) in [("from-flux", false), ("suspended-from-flux", true)] {
        let mut spec = automation_spec(None);
        spec["suspend"] = json!(suspend);
        f.create_left_by_flux::<weir_api::ImageUpdateAutomation>(
            "ImageUpdateAutomation",
            name,
            spec,
        )
        .await?;
    }

    // Weir adds it as Flux does, so either engine can delete what the other created.
    f.wait_finalizer::<ImagePolicy>("app").await?;
    f.wait_finalizer::<weir_api::ImageUpdateAutomation>("auto")
        .await?;
    f.latest_tag("app", "1.0.0").await?;
    f.wait_ready::<weir_api::ImageUpdateAutomation>("from-flux", "True", None)
        .await?;

    f.delete_and_wait_gone::<ImagePolicy>("app").await?;
    for name in ["auto", "from-flux", "suspended-from-flux"] {
        f.delete_and_wait_gone::<weir_api::ImageUpdateAutomation>(name)
            .await?;
    }
    f.delete_and_wait_gone::<ImageRepository>("app").await?;
    Ok(())
}

/// A namespace holding image objects of every kind that Flux left behind (its finalizer on
/// each, one of them suspended) is deleted: Weir cleans up and lets each go, so the namespace
/// never hangs in Terminating.
#[tokio::test]
async fn a_namespace_holding_flux_finalized_image_objects_is_deleted() -> Result<()> {
    let f = Fixture::start().await?;
    let image = push_tags("ns-delete", &["1.0.0"]).await?;
    f.git_source(&[("apps/app.yaml", "kind: X\n")]).await?;
    f.create_left_by_flux::<ImageRepository>(
        "ImageRepository",
        "app",
        json!({ "image": image, "interval": "1h", "insecure": true }),
    )
    .await?;
    f.create_left_by_flux::<ImagePolicy>(
        "ImagePolicy",
        "app",
        json!({ "imageRepositoryRef": { "name": "app" }, "policy": { "semver": { "range": "*" } } }),
    )
    .await?;
    let mut suspended = automation_spec(None);
    suspended["suspend"] = json!(true);
    f.create_left_by_flux::<weir_api::ImageUpdateAutomation>(
        "ImageUpdateAutomation",
        "suspended",
        suspended,
    )
    .await?;
    f.latest_tag("app", "1.0.0").await?;

    let namespaces = kube::Api::<Namespace>::all(f.client.clone());
    namespaces
        .delete(f.ns.name(), &DeleteParams::background())
        .await?;
    let what = format!("namespace {} to be gone", f.ns.name());
    weir_e2e::await_within(
        &namespaces,
        f.ns.name(),
        &what,
        weir_e2e::DEFAULT_DEADLINE,
        |ns: Option<&Namespace>| ns.is_none(),
    )
    .await?;
    Ok(())
}
