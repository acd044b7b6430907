//! Flux's finalizer on the image kinds.

use anyhow::Result;
use kube::api::PostParams;
use serde_json::json;
use weir_api::{ImagePolicy, manifest};

use crate::fixture::*;

#[tokio::test]
async fn policies_and_automations_carry_fluxs_finalizer_and_are_deleted_with_it() -> Result<()> {
    let f = Fixture::start().await?;
    f.image_and_policy(&["1.0.0"], "*").await?;
    f.git_source(&[("apps/app.yaml", "kind: X\n")]).await?;
    f.automation("auto", automation_spec(None)).await?;
    // As Flux leaves them behind when Weir takes over: the finalizer set, one suspended.
    let written_by_flux = |name: &str, suspend: bool| -> Result<weir_api::ImageUpdateAutomation> {
        let mut spec = automation_spec(None);
        spec["suspend"] = json!(suspend);
        Ok(manifest::from_value(json!({
            "apiVersion": "image.toolkit.fluxcd.io/v1",
            "kind": "ImageUpdateAutomation",
            "metadata": {
                "name": name,
                "namespace": f.ns.name(),
                "finalizers": [FLUX_FINALIZER],
            },
            "spec": spec,
        }))?)
    };
    let automations = f.api::<weir_api::ImageUpdateAutomation>();
    for (name, suspend) in [("from-flux", false), ("suspended-from-flux", true)] {
        automations
            .create(&PostParams::default(), &written_by_flux(name, suspend)?)
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
    Ok(())
}
