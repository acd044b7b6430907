//! `dependsOn`: a dependent waits for its dependencies as Flux's rules say.

use anyhow::Result;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use weir_api::reasons;

use crate::fixture::*;

#[tokio::test]
async fn a_dependent_waits_until_its_dependency_is_ready() -> Result<()> {
    let f = Fixture::start(&[
        ("base/a.yaml", &config_map_yaml("base", "1")),
        ("app/b.yaml", &config_map_yaml("app", "1")),
    ])
    .await?;
    f.create_ks(
        "app",
        json!({ "path": "./app", "dependsOn": [{ "name": "base" }] }),
    )
    .await?;
    f.wait_failed("app", None, reasons::DEPENDENCY_NOT_READY)
        .await?;
    assert!(f.config_map("app").await?.is_none());
    f.create_ks("base", json!({ "path": "./base" })).await?;
    let head = f.repo.head()?;
    f.wait_applied("app", &head).await?;
    assert!(f.config_map("base").await?.is_some());
    f.teardown().await
}

/// `dependsOn[].readyExpr` decides readiness in place of the Ready condition, reading the
/// dependency as `dep` and the dependent as `self`; a change the expression reads (a label
/// here) releases the dependent at once, and an expression that does not compile stalls.
#[tokio::test]
async fn a_ready_expr_decides_when_a_dependency_is_ready() -> Result<()> {
    let f = Fixture::start(&[
        ("base/a.yaml", &config_map_yaml("base", "1")),
        ("app/b.yaml", &config_map_yaml("app", "1")),
        ("bad/c.yaml", &config_map_yaml("bad", "1")),
    ])
    .await?;
    let head = f.repo.head()?;
    f.create_ks("base", json!({ "path": "./base" })).await?;
    f.wait_applied("base", &head).await?;
    let expr = "dep.metadata.labels.stage == self.metadata.labels.stage";
    let app = json!({ "path": "./app", "dependsOn": [{ "name": "base", "readyExpr": expr }] });
    f.create_ks("app", app).await?;
    f.ks.patch(
        "app",
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "labels": { "stage": "two" } } })),
    )
    .await?;
    // base is Ready, but the expression (a label base lacks) says it is not.
    let ks = f
        .wait_failed("app", None, reasons::DEPENDENCY_NOT_READY)
        .await?;
    assert!(
        message(&ks).contains("dependsOn[0].readyExpr"),
        "{}",
        message(&ks)
    );
    assert!(f.config_map("app").await?.is_none());
    f.ks.patch(
        "base",
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "labels": { "stage": "two" } } })),
    )
    .await?;
    f.wait_applied("app", &head).await?;
    assert!(f.config_map("app").await?.is_some());

    let bad = json!({ "path": "./bad", "dependsOn": [{ "name": "base", "readyExpr": "dep.(" }] });
    f.create_ks("bad", bad).await?;
    let ks = f
        .wait_failed("bad", None, reasons::INVALID_CEL_EXPRESSION)
        .await?;
    assert!(
        message(&ks).contains("invalid dependsOn[0].readyExpr"),
        "{}",
        message(&ks)
    );
    assert!(f.config_map("bad").await?.is_none());
    f.teardown().await
}

/// Flux's rule: a dependency on the same source must have applied the source's current
/// revision, not only be Ready. The dependency here is held (suspended) with a Ready status on
/// an older revision, as a lagging one would be, then catches up.
#[tokio::test]
async fn a_dependent_on_the_same_source_waits_for_its_dependency_to_apply_the_revision()
-> Result<()> {
    let f = Fixture::start(&[
        ("base/a.yaml", &config_map_yaml("base", "1")),
        ("app/b.yaml", &config_map_yaml("app", "1")),
    ])
    .await?;
    f.create_ks("base", json!({ "path": "./base", "suspend": true }))
        .await?;
    let head = f.repo.head()?;
    let applied = |revision: &str| {
        json!({ "status": {
            "observedGeneration": 1,
            "lastAppliedRevision": revision,
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "ReconciliationSucceeded",
                "message": format!("Applied revision: {revision}"), "observedGeneration": 1,
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }],
        }})
    };
    let older = format!("main@sha1:{}", "0".repeat(40));
    f.ks.patch_status(
        "base",
        &PatchParams::default(),
        &Patch::Merge(applied(&older)),
    )
    .await?;
    f.create_ks(
        "app",
        json!({ "path": "./app", "dependsOn": [{ "name": "base" }] }),
    )
    .await?;
    let ks = f
        .wait_failed("app", None, reasons::DEPENDENCY_NOT_READY)
        .await?;
    assert!(
        message(&ks).contains("revision is not up to date"),
        "{}",
        message(&ks)
    );
    assert!(f.config_map("app").await?.is_none());

    // The dependency applies the current revision: the dependent goes at once (its watch on
    // dependencies, not the 10 minute fallback requeue).
    f.ks.patch_status(
        "base",
        &PatchParams::default(),
        &Patch::Merge(applied(&format!("main@sha1:{head}"))),
    )
    .await?;
    f.wait_applied("app", &head).await?;
    assert!(f.config_map("app").await?.is_some());
    f.teardown().await
}
