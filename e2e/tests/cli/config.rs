//! The install manifests in `config/` build with the pinned kustomize and every object passes the
//! real API server's strict validation (server-side dry run).

use anyhow::{Context, Result, ensure};
use kube::{
    Api,
    api::{DynamicObject, GroupVersionKind, Patch, PatchParams},
    discovery::{Scope, pinned_kind},
};
use weir_e2e::{Harness, repo_root};

#[tokio::test]
async fn install_manifests_build_and_pass_strict_server_side_validation() -> Result<()> {
    let harness = Harness::get().await?;
    let ns = harness.namespace().await?;
    let client = harness.client()?;
    let out = std::process::Command::new(harness.tool("kustomize"))
        .arg("build")
        .arg(repo_root().join("config"))
        .output()?;
    ensure!(
        out.status.success(),
        "kustomize build config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout)?;

    let mut kinds = vec![];
    for doc in serde_yaml_ng::Deserializer::from_str(&yaml) {
        let value: serde_json::Value = serde::Deserialize::deserialize(doc)?;
        let mut obj: DynamicObject = serde_json::from_value(value)?;
        let types = obj
            .types
            .clone()
            .context("object without apiVersion/kind")?;
        let gvk = GroupVersionKind::try_from(&types)?;
        let (resource, caps) = pinned_kind(&client, &gvk).await?;
        let name = obj.metadata.name.clone().context("object without a name")?;
        let api: Api<DynamicObject> = if caps.scope == Scope::Namespaced {
            // Checked in the test's namespace: a dry run cannot create weir-system first.
            obj.metadata.namespace = Some(ns.name().to_owned());
            Api::namespaced_with(client.clone(), ns.name(), &resource)
        } else {
            Api::all_with(client.clone(), &resource)
        };
        let params = PatchParams::apply("weir-e2e-config")
            .validation_strict()
            .dry_run();
        api.patch(&name, &params, &Patch::Apply(&obj))
            .await
            .with_context(|| format!("{}/{name} fails strict validation", types.kind))?;
        kinds.push(types.kind);
    }
    for kind in [
        "Namespace",
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRoleBinding",
        "Service",
        "Deployment",
    ] {
        ensure!(
            kinds.iter().any(|k| k == kind),
            "config/ has no {kind}: {kinds:?}"
        );
    }
    Ok(())
}
