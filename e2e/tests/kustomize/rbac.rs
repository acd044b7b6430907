//! Impersonation and multi-tenancy lockdown: whose rights an apply uses.

use anyhow::Result;
use kube::{Api, api::PostParams};
use serde_json::{Value, json};
use weir_api::reasons;

use crate::fixture::*;

#[tokio::test]
async fn impersonating_a_service_account_without_rbac_fails_clearly() -> Result<()> {
    let f = Fixture::start(&[("apps/a.yaml", &config_map_yaml("a", "1"))]).await?;
    f.create_ks(
        "app",
        json!({ "path": "./apps", "serviceAccountName": "nobody" }),
    )
    .await?;
    let ks = f
        .wait_failed("app", None, reasons::RECONCILIATION_FAILED)
        .await?;
    let m = message(&ks);
    assert!(
        m.contains("forbidden") && m.contains(&format!("system:serviceaccount:{}:nobody", f.ns())),
        "{m}"
    );
    assert!(f.config_map("a").await?.is_none());
    f.teardown().await
}

/// Flux's multi-tenancy lockdown: `--no-cross-namespace-refs` refuses a source in another
/// namespace (a named source in its own is fine), and `--default-service-account` is
/// impersonated by a Kustomization that names none.
#[tokio::test]
async fn lockdown_blocks_cross_namespace_sources_and_impersonates_the_default_account() -> Result<()>
{
    let lockdown = weir_kustomize::Lockdown {
        no_cross_namespace_refs: true,
        default_service_account: Some("nobody".to_owned()),
    };
    let f = Fixture::start_locked_down(&[("apps/a.yaml", &config_map_yaml("a", "1"))], lockdown)
        .await?;
    let own = json!({ "kind": "GitRepository", "name": "app", "namespace": f.ns() });
    f.create_ks("app", json!({ "path": "./apps", "sourceRef": own }))
        .await?;
    let elsewhere = json!({ "kind": "GitRepository", "name": "app", "namespace": "default" });
    f.create_ks(
        "elsewhere",
        json!({ "path": "./apps", "sourceRef": elsewhere }),
    )
    .await?;
    let ks = f
        .wait_failed("elsewhere", None, reasons::ACCESS_DENIED)
        .await?;
    assert_eq!(
        message(&ks),
        "can't access 'GitRepository/default/app', cross-namespace references have been blocked"
    );
    let ks = f
        .wait_failed("app", None, reasons::RECONCILIATION_FAILED)
        .await?;
    let m = message(&ks);
    assert!(
        m.contains("forbidden") && m.contains(&format!("system:serviceaccount:{}:nobody", f.ns())),
        "{m}"
    );
    assert!(f.config_map("a").await?.is_none());
    f.teardown().await
}

#[tokio::test]
async fn a_service_account_with_rbac_applies_as_itself() -> Result<()> {
    let f = Fixture::start(&[("apps/a.yaml", &config_map_yaml("a", "1"))]).await?;
    let ns = f.ns().to_owned();
    let rbac: Vec<Value> = vec![
        json!({ "apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": { "name": "deployer", "namespace": ns } }),
        json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": { "name": "configmaps", "namespace": ns },
                "rules": [{ "apiGroups": [""], "resources": ["configmaps"], "verbs": ["*"] }] }),
        json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": { "name": "deployer", "namespace": ns },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "configmaps" },
                "subjects": [{ "kind": "ServiceAccount", "name": "deployer", "namespace": ns }] }),
    ];
    create_rbac(&f, rbac).await?;
    f.create_ks(
        "app",
        json!({ "path": "./apps", "serviceAccountName": "deployer" }),
    )
    .await?;
    f.wait_applied("app", &f.repo.head()?).await?;
    assert!(f.config_map("a").await?.is_some());
    f.teardown().await
}

/// Flux's lockdown as a tenant meets it: `--default-service-account` names an account whose
/// Role reaches ConfigMaps of its own namespace only. A Kustomization naming no account applies
/// its namespace's objects as that account, and one whose path writes into another namespace
/// is refused by the API server (nothing applied, Ready=False naming the account).
#[tokio::test]
async fn a_locked_down_tenant_applies_only_within_its_namespace() -> Result<()> {
    let lockdown = weir_kustomize::Lockdown {
        no_cross_namespace_refs: true,
        default_service_account: Some("tenant".to_owned()),
    };
    let escape = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: escaped\n  namespace: default\ndata:\n  key: x\n";
    let f = Fixture::start_locked_down(
        &[
            ("apps/a.yaml", &config_map_yaml("a", "1")),
            ("escape/b.yaml", escape),
        ],
        lockdown,
    )
    .await?;
    let ns = f.ns().to_owned();
    create_rbac(
        &f,
        vec![
            json!({ "apiVersion": "v1", "kind": "ServiceAccount",
                    "metadata": { "name": "tenant", "namespace": ns } }),
            json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                    "metadata": { "name": "tenant", "namespace": ns },
                    "rules": [{ "apiGroups": [""], "resources": ["configmaps"], "verbs": ["*"] }] }),
            json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                    "metadata": { "name": "tenant", "namespace": ns },
                    "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "tenant" },
                    "subjects": [{ "kind": "ServiceAccount", "name": "tenant", "namespace": ns }] }),
        ],
    )
    .await?;
    f.create_ks("own", json!({ "path": "./apps" })).await?;
    f.create_ks("escape", json!({ "path": "./escape" })).await?;
    f.wait_applied("own", &f.repo.head()?).await?;
    assert!(f.config_map("a").await?.is_some());

    let ks = f
        .wait_failed("escape", None, reasons::RECONCILIATION_FAILED)
        .await?;
    let m = message(&ks);
    assert!(
        m.contains("forbidden") && m.contains(&format!("system:serviceaccount:{ns}:tenant")),
        "{m}"
    );
    let elsewhere: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(f.client.clone(), "default");
    assert!(elsewhere.get_opt("escaped").await?.is_none());
    f.teardown().await
}

/// Creates the ServiceAccounts, Roles and RoleBindings `objects` in the fixture's namespace.
async fn create_rbac(f: &Fixture, objects: Vec<Value>) -> Result<()> {
    for object in objects {
        let resource = match object["kind"].as_str() {
            Some("ServiceAccount") => {
                kube::api::ApiResource::erase::<k8s_openapi::api::core::v1::ServiceAccount>(&())
            }
            Some("Role") => kube::api::ApiResource::erase::<k8s_openapi::api::rbac::v1::Role>(&()),
            _ => kube::api::ApiResource::erase::<k8s_openapi::api::rbac::v1::RoleBinding>(&()),
        };
        let api: Api<kube::api::DynamicObject> =
            Api::namespaced_with(f.client.clone(), f.ns(), &resource);
        api.create(&PostParams::default(), &serde_json::from_value(object)?)
            .await?;
    }
    Ok(())
}
