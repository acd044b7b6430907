//! What else decides a release: Weir's `healthCheckExprs` after Helm's own wait (a failure is
//! recorded in Helm's storage and counts as a failed upgrade); `forceAt` upgrades without a
//! change; a failing pre-upgrade hook and a template error fail the action with Helm's message;
//! `serviceAccountName` makes Helm act as that account, RBAC deciding.

use anyhow::Result;
use kube::{Api, api::PostParams};
use serde_json::json;
use weir_api::{condition::find_condition, helm_release as hr, manifest, types};
use weir_e2e::unique_name;

use crate::fixture::{Fixture, app_chart};

fn condition_message(hr: &weir_api::HelmRelease, type_: &str) -> String {
    hr.status
        .as_ref()
        .and_then(|s| find_condition(&s.conditions, type_))
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn health_check_exprs_decide_after_helms_wait() -> Result<()> {
    let fx = Fixture::start().await?;
    let chart = unique_name("exprs", 30);
    fx.publish(&app_chart(&chart, "1.0.0")).await?;
    fx.create(
        "app",
        &chart,
        "*",
        json!({
            "values": { "message": "ready" },
            "timeout": "5s",
            "healthCheckExprs": [{
                "apiVersion": "v1", "kind": "ConfigMap",
                "current": "data.message == 'ready'",
                "failed": "data.message == 'broken'",
            }],
        }),
    )
    .await?;
    fx.wait_ready("app", "True", Some(hr::INSTALL_SUCCEEDED_REASON))
        .await?;

    fx.patch(
        "app",
        json!({ "spec": { "values": { "message": "broken" } } }),
    )
    .await?;
    let failed = fx
        .wait_condition(
            "app",
            hr::RELEASED_CONDITION,
            "False",
            hr::UPGRADE_FAILED_REASON,
        )
        .await?;
    let message = condition_message(&failed, hr::RELEASED_CONDITION);
    assert!(
        message.contains("health check failed")
            && message.contains(&format!("ConfigMap/{}/app-{chart}", fx.ns.name())),
        "{message}"
    );
    // Helm deployed it; Weir's check failed it, in Helm's own storage.
    let history = fx.helm_history("app").await?;
    assert_eq!(
        history.last().map(|(r, s, _)| (*r, s.as_str())),
        Some((2, "failed"))
    );
    Ok(())
}

#[tokio::test]
async fn force_at_upgrades_without_a_change() -> Result<()> {
    let fx = Fixture::start().await?;
    let chart = unique_name("forced", 30);
    fx.publish(&app_chart(&chart, "1.0.0")).await?;
    fx.create("app", &chart, "*", json!({})).await?;
    fx.wait_ready("app", "True", Some(hr::INSTALL_SUCCEEDED_REASON))
        .await?;
    // As `flux reconcile helmrelease --force` asks: forceAt with a reconcile request.
    fx.patch(
        "app",
        json!({ "metadata": { "annotations": {
            "reconcile.fluxcd.io/forceAt": "now",
            "reconcile.fluxcd.io/requestedAt": "now",
        } } }),
    )
    .await?;
    let api = fx.api.clone();
    let forced = weir_e2e::wait_until("the forced upgrade", || {
        let api = api.clone();
        async move {
            let hr = api.get("app").await.map_err(|e| e.to_string())?;
            let status = hr.status.clone().unwrap_or_default();
            if status.last_handled_force_at.as_deref() == Some("now")
                && status.history.first().map(|s| s.version) == Some(2)
            {
                Ok(hr)
            } else {
                Err(format!("{:?}", status.history.first()))
            }
        }
    })
    .await?;
    let ready = condition_message(&forced, types::READY);
    assert!(ready.contains(".v2"), "{ready}");
    // Handled once: another reconcile makes no third revision.
    let again = fx.reconcile("app", "again").await?;
    assert_eq!(again.status.unwrap_or_default().history[0].version, 2);
    Ok(())
}

#[tokio::test]
async fn failing_hooks_and_templates_fail_with_helms_message() -> Result<()> {
    let fx = Fixture::start().await?;
    let chart = unique_name("hooked", 30);
    fx.publish(&app_chart(&chart, "1.0.0")).await?;
    // 1.1.0's pre-upgrade hook is an object the API server refuses.
    let hook = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-pre\n  annotations:\n    helm.sh/hook: pre-upgrade\ndata:\n  bad: {nested: map}\n";
    fx.publish(&app_chart(&chart, "1.1.0").template("hook.yaml", hook))
        .await?;
    // 1.2.0 fails to render.
    let broken = "{{ fail \"the value 'mode' must be set\" }}\n";
    fx.publish(&app_chart(&chart, "1.2.0").template("broken.yaml", broken))
        .await?;
    fx.create("app", &chart, "1.0.0", json!({})).await?;
    fx.wait_ready("app", "True", Some(hr::INSTALL_SUCCEEDED_REASON))
        .await?;

    fx.patch(
        "app",
        json!({ "spec": { "chart": { "spec": { "version": "1.1.0" } } } }),
    )
    .await?;
    let failed = fx
        .wait_condition(
            "app",
            hr::RELEASED_CONDITION,
            "False",
            hr::UPGRADE_FAILED_REASON,
        )
        .await?;
    let message = condition_message(&failed, hr::RELEASED_CONDITION);
    assert!(message.contains("pre-upgrade"), "{message}");

    fx.patch(
        "app",
        json!({ "spec": { "chart": { "spec": { "version": "1.2.0" } } } }),
    )
    .await?;
    let api = fx.api.clone();
    let broken = weir_e2e::wait_until("the template error", || {
        let api = api.clone();
        async move {
            let hr = api.get("app").await.map_err(|e| e.to_string())?;
            let message = condition_message(&hr, hr::RELEASED_CONDITION);
            if message.contains("the value 'mode' must be set") {
                Ok(message)
            } else {
                Err(message)
            }
        }
    })
    .await?;
    assert!(broken.contains("broken.yaml"), "{broken}");
    Ok(())
}

#[tokio::test]
async fn a_service_account_without_rights_cannot_release() -> Result<()> {
    let fx = Fixture::start().await?;
    let chart = unique_name("tenant", 30);
    fx.publish(&app_chart(&chart, "1.0.0")).await?;
    let ns = fx.ns.name();
    let account: k8s_openapi::api::core::v1::ServiceAccount = manifest::from_value(json!({
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": { "name": "tenant", "namespace": ns },
    }))?;
    Api::namespaced(fx.client.clone(), ns)
        .create(&PostParams::default(), &account)
        .await?;
    fx.create(
        "app",
        &chart,
        "*",
        json!({ "serviceAccountName": "tenant" }),
    )
    .await?;
    let refused = fx
        .wait_condition(
            "app",
            hr::RELEASED_CONDITION,
            "False",
            hr::INSTALL_FAILED_REASON,
        )
        .await?;
    let message = condition_message(&refused, hr::RELEASED_CONDITION);
    assert!(
        message.contains(&format!("system:serviceaccount:{ns}:tenant"))
            && message.contains("forbidden"),
        "{message}"
    );
    assert_eq!(fx.storage_secrets("app").await?, Vec::<String>::new());

    // Bound to admin in its namespace, it can; retried after a reset.
    let binding: k8s_openapi::api::rbac::v1::RoleBinding = manifest::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": { "name": "tenant-admin", "namespace": ns },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin" },
        "subjects": [{ "kind": "ServiceAccount", "name": "tenant", "namespace": ns }],
    }))?;
    Api::namespaced(fx.client.clone(), ns)
        .create(&PostParams::default(), &binding)
        .await?;
    fx.patch(
        "app",
        json!({ "metadata": { "annotations": {
            "reconcile.fluxcd.io/resetAt": "granted",
            "reconcile.fluxcd.io/requestedAt": "granted",
        } } }),
    )
    .await?;
    fx.wait_ready("app", "True", Some(hr::INSTALL_SUCCEEDED_REASON))
        .await?;
    Ok(())
}
