//! `weir build kustomization` and `weir diff kustomization` (the binary, found through
//! `WEIR_BIN`), as a Flux user runs `flux build|diff kustomization`: the build prints what the
//! controller applies (owner labels and the spec's kustomize fields included, Secret values
//! masked); the diff, by server-side dry run, is empty right after the controller applied and
//! exits 1 naming what a local change would drift, create and prune; a Kustomization that does
//! not exist yet is built from `--kustomization-file`, its `postBuild` variables read from the
//! cluster; bad input fails with a message.

use std::{collections::BTreeMap, ffi::OsStr, path::Path};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, api::PostParams};
use serde_json::json;
use weir_api::{GitRepository, Kustomization, manifest};
use weir_e2e::{Harness, wait_ready};

use crate::fixture::{Fixture, weir_run};

/// The Secret's value as written in git, and as the API server stores it (base64).
const PASSWORD: &str = "hunter2-weir-e2e";
const PASSWORD_BASE64: &str = "aHVudGVyMi13ZWlyLWUyZQ==";
const NEW_PASSWORD: &str = "correct-horse-weir";

/// What `weir <args> --kubeconfig <harness> --kustomize-path <harness's>` printed (stdout
/// and stderr), and its exit code.
async fn weir(kubeconfig: &Path, args: &[&str]) -> Result<(Option<i32>, String)> {
    let kustomize = Harness::get().await?.tool("kustomize");
    let extra = [OsStr::new("--kustomize-path"), kustomize.as_os_str()];
    let run = weir_run(kubeconfig, args, &extra).await?;
    let text = run.all;
    // No command, whatever it prints, shows a Secret's value.
    for secret in [PASSWORD, PASSWORD_BASE64, NEW_PASSWORD] {
        ensure!(!text.contains(secret), "a secret value printed:\n{text}");
    }
    Ok((run.code, text))
}

fn config_map(name: &str, data: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n{data}")
}

fn secret(password: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\nstringData:\n  password: {password}\n"
    )
}

/// Writes `files` under `dir`.
fn write_files(dir: &Path, files: &[(&str, String)]) -> Result<()> {
    for (path, content) in files {
        std::fs::write(dir.join(path), content)?;
    }
    Ok(())
}

#[tokio::test]
async fn build_and_diff_show_what_the_controller_applies_and_would_change() -> Result<()> {
    let f = Fixture::start().await?;
    let ns = f.ns.name();
    let demo = config_map("demo", "  a: \"1\"\n");
    let old = config_map("old", "  x: \"1\"\n");
    let creds = secret(PASSWORD);
    let files = BTreeMap::from([
        ("deploy/demo.yaml", demo.as_str()),
        ("deploy/old.yaml", old.as_str()),
        ("deploy/secret.yaml", creds.as_str()),
    ]);
    let repo = Harness::get().await?.git().create_repo("diff", &files)?;
    let sources: Api<GitRepository> = f.api();
    sources
        .create(
            &PostParams::default(),
            &manifest::from_value(json!({
                "apiVersion": "source.toolkit.fluxcd.io/v1",
                "kind": "GitRepository",
                "metadata": {"name": "app", "namespace": ns},
                "spec": {"url": repo.http_url(), "interval": "10m", "ref": {"branch": "main"}},
            }))?,
        )
        .await?;
    // The spec's kustomize fields: the build must go through kustomize as the controller does.
    let kustomizations: Api<Kustomization> = f.api();
    kustomizations
        .create(
            &PostParams::default(),
            &manifest::from_value(json!({
                "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
                "kind": "Kustomization",
                "metadata": {"name": "app", "namespace": ns},
                "spec": {
                    "sourceRef": {"kind": "GitRepository", "name": "app"},
                    "path": "./deploy",
                    "interval": "10m",
                    "prune": true,
                    "targetNamespace": ns,
                    "namePrefix": "web-",
                    "commonMetadata": {"labels": {"team": "web"}},
                    "patches": [{
                        "target": {"kind": "ConfigMap", "name": "demo"},
                        "patch": "- op: add\n  path: /data/patched\n  value: by-spec\n",
                    }],
                },
            }))?,
        )
        .await?;
    wait_ready(&kustomizations, "app", "True", None).await?;
    let kubeconfig = &f.kubeconfig;

    // The build: the applied objects, labelled and transformed, the Secret's value masked.
    let (code, out) = weir(kubeconfig, &["build", "kustomization", "app", "-n", ns]).await?;
    ensure!(code == Some(0), "{out}");
    for expected in [
        "name: web-demo",
        "name: web-creds",
        "kustomize.toolkit.fluxcd.io/name: app",
        &format!("kustomize.toolkit.fluxcd.io/namespace: {ns}"),
        "team: web",
        "patched: by-spec",
        "password: '***'",
    ] {
        assert!(out.contains(expected), "{expected:?} missing from:\n{out}");
    }

    // Right after the controller applied, nothing would change.
    let (code, out) = weir(kubeconfig, &["diff", "ks", "app", "-n", ns]).await?;
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains('►'), "{out}");

    // A local change: a value changed, an object added, one removed, the password changed.
    let local = tempfile::tempdir()?;
    write_files(
        local.path(),
        &[
            ("demo.yaml", config_map("demo", "  a: \"2\"\n")),
            ("fresh.yaml", config_map("fresh", "  b: \"1\"\n")),
            ("secret.yaml", secret(NEW_PASSWORD)),
        ],
    )?;
    let path = local.path().to_str().context("temp path")?;
    let (code, out) = weir(kubeconfig, &["diff", "ks", "app", "-n", ns, "--path", path]).await?;
    assert_eq!(code, Some(1), "{out}");
    for expected in [
        format!("► ConfigMap/{ns}/web-demo drifted"),
        "-  a: '1'\n+  a: '2'".to_owned(),
        format!("► ConfigMap/{ns}/web-fresh created"),
        format!("► ConfigMap/{ns}/web-old deleted"),
        format!("► Secret/{ns}/web-creds drifted"),
        "-  password: '***'\n+  password: '*** (changed)'".to_owned(),
    ] {
        assert!(out.contains(&expected), "{expected:?} missing from:\n{out}");
    }
    assert!(!out.contains("managedFields"), "{out}");

    // The build of the local directory has the new object, with the spec's fields.
    let (code, out) = weir(
        kubeconfig,
        &["build", "ks", "app", "-n", ns, "--path", path],
    )
    .await?;
    ensure!(code == Some(0), "{out}");
    assert!(
        out.contains("name: web-fresh") && !out.contains("name: web-old"),
        "{out}"
    );
    Ok(())
}

#[tokio::test]
async fn a_kustomization_that_does_not_exist_yet_is_diffed_from_its_file() -> Result<()> {
    let harness = Harness::get().await?;
    let ns = harness.namespace().await?;
    let ns = ns.name();
    let kubeconfig = harness.kubeconfig_path();
    let dir = tempfile::tempdir()?;
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests)?;
    write_files(
        &manifests,
        &[(
            "cm.yaml",
            config_map("settings", "  a: \"1\"\n  greeting: ${greeting}\n"),
        )],
    )?;
    // postBuild variables come from the cluster, as the controller reads them.
    let vars: Api<ConfigMap> = Api::namespaced(harness.client()?, ns);
    vars.create(
        &PostParams::default(),
        &manifest::from_value(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "vars", "namespace": ns},
            "data": {"greeting": "hello-from-the-cluster"},
        }))?,
    )
    .await?;
    let file = dir.path().join("fresh.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: kustomize.toolkit.fluxcd.io/v1\nkind: Kustomization\nmetadata:\n  \
             name: fresh\nspec:\n  interval: 5m\n  prune: true\n  targetNamespace: {ns}\n  \
             sourceRef:\n    kind: GitRepository\n    name: none\n  postBuild:\n    \
             substituteFrom:\n    - kind: ConfigMap\n      name: vars\n"
        ),
    )?;
    let (path, file) = (
        manifests.to_str().context("temp path")?,
        file.to_str().context("temp path")?,
    );
    let with_file = ["-n", ns, "--path", path, "--kustomization-file", file];

    let diff: Vec<&str> = ["diff", "kustomization", "fresh"]
        .into_iter()
        .chain(with_file)
        .collect();
    let (code, out) = weir(kubeconfig, &diff).await?;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("► ConfigMap/{ns}/settings created")),
        "{out}"
    );

    let build: Vec<&str> = ["build", "kustomization", "fresh"]
        .into_iter()
        .chain(with_file)
        .collect();
    let (code, out) = weir(kubeconfig, &build).await?;
    ensure!(code == Some(0), "{out}");
    assert!(out.contains(&format!("namespace: {ns}")), "{out}");
    assert!(
        out.contains("kustomize.toolkit.fluxcd.io/name: fresh"),
        "{out}"
    );
    assert!(out.contains("greeting: hello-from-the-cluster"), "{out}");

    // Bad input: no --path for a Kustomization that does not exist, a path that does not.
    let (code, out) = weir(kubeconfig, &["diff", "ks", "fresh", "-n", ns]).await?;
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains(&format!("Kustomization '{ns}/fresh' not found")) && out.contains("--path"),
        "{out}"
    );
    let (code, out) = weir(kubeconfig, &["build", "ks", "fresh", "-n", ns]).await?;
    assert_eq!(code, Some(1), "{out}");
    let (code, out) = weir(
        kubeconfig,
        &["diff", "ks", "fresh", "-n", ns, "--path", "/no/such/dir"],
    )
    .await?;
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("--path /no/such/dir: no such directory"),
        "{out}"
    );
    // An invalid manifest in the directory is named with its file.
    write_files(&manifests, &[("bad.yaml", "kind: [unclosed\n".to_owned())])?;
    let (code, out) = weir(kubeconfig, &diff).await?;
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("bad.yaml: invalid YAML"), "{out}");
    Ok(())
}
