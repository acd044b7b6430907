//! The official `flux` CLI (built by `make tools` at the version in versions.env) as a client of
//! Weir: a Flux user's commands create, reconcile, suspend, inspect, diff and build Weir's
//! objects and print what they print against Flux.
//!
//! Each test runs Weir's source, kustomize and image controllers in-process, scoped to its own
//! namespace, and drives them only through `flux` (plus reads through the API to check what a
//! command did). `flux check`, `flux logs`, `flux install` and `flux bootstrap` look for Flux's
//! own Deployments and manifests and are not run (see the README).

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use weir_api::{GitRepository, ImagePolicy, ImageRepository, ImageUpdateAutomation, Kustomization};
use weir_e2e::{Harness, wait_until};

use crate::fixture::*;

#[tokio::test]
async fn flux_creates_gets_and_reconciles_a_git_source_and_kustomization() -> Result<()> {
    let f = Fixture::start().await?;
    let repo = f.repo_with_config_map("1").await?;
    let first = repo.head()?;

    let (source, ks) = f.create_source_and_kustomization(&repo).await?;
    assert!(
        source
            .all
            .contains(&format!("fetched revision: main@sha1:{first}")),
        "{}",
        source.all
    );
    assert!(
        ks.all
            .contains(&format!("applied revision main@sha1:{first}")),
        "{}",
        ks.all
    );
    assert_eq!(f.config_map_value().await?.as_deref(), Some("1"));

    // `flux get` tables: revision, suspended, ready, message.
    let short = format!("main@sha1:{}", &first[..8]);
    let all = f.ok(&["get", "all"]).await?.stdout;
    for name in ["gitrepository/app", "kustomization/app"] {
        assert_eq!(cell(&all, name, "REVISION")?, short, "{all}");
        assert_eq!(cell(&all, name, "SUSPENDED")?, "False", "{all}");
        assert_eq!(cell(&all, name, "READY")?, "True", "{all}");
    }
    let all_namespaces = f.ok(&["get", "all", "--all-namespaces"]).await?.stdout;
    assert_eq!(
        cell(&all_namespaces, "kustomization/app", "NAMESPACE")?,
        f.ns.name()
    );
    let sources = f.ok(&["get", "sources", "git"]).await?.stdout;
    assert_eq!(
        cell(&sources, "app", "MESSAGE")?,
        format!("stored artifact for revision '{short}'")
    );
    let kustomizations = f.ok(&["get", "kustomizations"]).await?.stdout;
    assert_eq!(
        cell(&kustomizations, "app", "MESSAGE")?,
        format!("Applied revision: {short}")
    );

    // A new commit: `flux reconcile source git` fetches it at once (the interval is 10m).
    let second = repo
        .change()
        .write("deploy/cm.yaml", &config_map_yaml(f.ns.name(), "2"))
        .commit("a: 2")?;
    let run = f.ok(&["reconcile", "source", "git", "app"]).await?;
    assert!(
        run.all
            .contains(&format!("fetched revision main@sha1:{second}")),
        "{}",
        run.all
    );
    // And `flux reconcile kustomization --with-source` applies the next one.
    let third = repo
        .change()
        .write("deploy/cm.yaml", &config_map_yaml(f.ns.name(), "3"))
        .commit("a: 3")?;
    let run = f
        .ok(&["reconcile", "kustomization", "app", "--with-source"])
        .await?;
    assert!(
        run.all
            .contains(&format!("applied revision main@sha1:{third}")),
        "{}",
        run.all
    );
    assert_eq!(f.config_map_value().await?.as_deref(), Some("3"));
    Ok(())
}

#[tokio::test]
async fn flux_suspends_and_resumes_sources_and_kustomizations() -> Result<()> {
    let f = Fixture::start().await?;
    let repo = f.repo_with_config_map("1").await?;
    f.create_source_and_kustomization(&repo).await?;

    f.ok(&["suspend", "kustomization", "app"]).await?;
    f.ok(&["suspend", "source", "git", "app"]).await?;
    let ks = f.api::<Kustomization>().get("app").await?;
    let git = f.api::<GitRepository>().get("app").await?;
    assert!(ks.spec.suspend && git.spec.suspend);
    let table = f.ok(&["get", "kustomizations"]).await?.stdout;
    assert_eq!(cell(&table, "app", "SUSPENDED")?, "True");

    // While suspended, a new commit reaches neither the source nor the cluster...
    let next = repo
        .change()
        .write("deploy/cm.yaml", &config_map_yaml(f.ns.name(), "2"))
        .commit("a: 2")?;
    // ...and resuming (which waits for the reconcile) brings it in.
    let run = f.ok(&["resume", "source", "git", "app"]).await?;
    assert!(
        run.all
            .contains(&format!("fetched revision main@sha1:{next}")),
        "{}",
        run.all
    );
    assert_eq!(f.config_map_value().await?.as_deref(), Some("1"));
    let run = f.ok(&["resume", "kustomization", "app"]).await?;
    assert!(
        run.all
            .contains(&format!("applied revision main@sha1:{next}")),
        "{}",
        run.all
    );
    assert_eq!(f.config_map_value().await?.as_deref(), Some("2"));
    assert!(!f.api::<Kustomization>().get("app").await?.spec.suspend);
    Ok(())
}

#[tokio::test]
async fn flux_tree_trace_events_and_export_read_weirs_objects() -> Result<()> {
    let f = Fixture::start().await?;
    let repo = f.repo_with_config_map("1").await?;
    let head = repo.head()?;
    f.create_source_and_kustomization(&repo).await?;
    let ns = f.ns.name();

    // The tree is Weir's inventory.
    let tree = f.ok(&["tree", "kustomization", "app"]).await?.stdout;
    assert!(tree.contains(&format!("Kustomization/{ns}/app")), "{tree}");
    assert!(tree.contains(&format!("ConfigMap/{ns}/demo")), "{tree}");

    // trace finds the Kustomization and source from the object's labels.
    let trace = f.ok(&["trace", "configmap", "demo"]).await?.stdout;
    for line in [
        "Status:          Managed by Flux".to_owned(),
        "Kustomization:   app".to_owned(),
        "Path:            ./deploy".to_owned(),
        format!("Revision:        main@sha1:{head}"),
        "GitRepository:   app".to_owned(),
        format!("URL:             {}", repo.http_url()),
    ] {
        assert!(trace.contains(&line), "no {line:?} in:\n{trace}");
    }

    // events --for lists Weir's events of the object.
    let events = f
        .ok(&["events", "--for", "Kustomization/app"])
        .await?
        .stdout;
    let applied = events
        .lines()
        .find(|l| l.contains("ReconciliationSucceeded"))
        .with_context(|| format!("no ReconciliationSucceeded event in:\n{events}"))?;
    assert!(applied.contains("Kustomization/app"), "{applied}");
    assert!(
        events.contains(&format!("ConfigMap/{ns}/demo created")),
        "{events}"
    );

    // export writes manifests that a Flux user can apply again.
    let exported = f.ok(&["export", "kustomization", "app"]).await?.stdout;
    let docs: Vec<Value> = exported
        .split("\n---")
        .filter(|d| !d.trim().is_empty() && d.trim() != "---")
        .map(serde_yaml_ng::from_str)
        .collect::<Result<_, _>>()?;
    let ks = docs
        .iter()
        .find(|d| d["kind"] == "Kustomization")
        .with_context(|| format!("no Kustomization in:\n{exported}"))?;
    assert_eq!(ks["apiVersion"], "kustomize.toolkit.fluxcd.io/v1");
    assert_eq!(ks["spec"]["path"], "./deploy");
    assert_eq!(ks["spec"]["sourceRef"]["name"], "app");
    assert!(ks.get("status").is_none(), "{exported}");
    let source = f.ok(&["export", "source", "git", "app"]).await?.stdout;
    assert!(
        source.contains(&format!("url: {}", repo.http_url())),
        "{source}"
    );

    // Flux's CRD categories: `kubectl get fluxcd` (and `all`) list Weir's objects. Discovery
    // serves a new CRD's categories a moment after it is Established, so ask until it does, each
    // time with an empty discovery cache.
    let kubectl = Harness::get().await?.tool("kubectl");
    for category in ["fluxcd", "all", "fluxcd-sources", "fluxcd-appliers"] {
        let source = "gitrepository.source.toolkit.fluxcd.io/app";
        let ks = "kustomization.kustomize.toolkit.fluxcd.io/app";
        let want = match category {
            "fluxcd-sources" => (true, false),
            "fluxcd-appliers" => (false, true),
            _ => (true, true),
        };
        wait_until(
            &format!("kubectl get {category} to list the objects"),
            || {
                let (kubectl, kubeconfig) = (kubectl.clone(), f.kubeconfig.clone());
                async move {
                    let cache = tempfile::tempdir().map_err(|e| e.to_string())?;
                    let output = tokio::process::Command::new(&kubectl)
                        .args(["get", category, "--namespace", ns, "--output", "name"])
                        .arg("--cache-dir")
                        .arg(cache.path())
                        .env("KUBECONFIG", &kubeconfig)
                        .output()
                        .await
                        .map_err(|e| e.to_string())?;
                    let names = String::from_utf8_lossy(&output.stdout);
                    if (names.contains(source), names.contains(ks)) == want {
                        Ok(())
                    } else {
                        Err(format!(
                            "got {names:?}, stderr {:?}",
                            String::from_utf8_lossy(&output.stderr)
                        ))
                    }
                }
            },
        )
        .await?;
    }
    Ok(())
}

#[tokio::test]
async fn flux_diffs_and_builds_a_kustomization_from_a_local_path() -> Result<()> {
    let f = Fixture::start().await?;
    let repo = f.repo_with_config_map("1").await?;
    f.create_source_and_kustomization(&repo).await?;
    let local = tempfile::tempdir()?;
    let cm = local.path().join("cm.yaml");
    let path = local.path().to_str().context("temp path")?;

    // What git has is what the cluster has: no diff, exit 0.
    std::fs::write(&cm, config_map_yaml(f.ns.name(), "1"))?;
    let same = f
        .run(&["diff", "kustomization", "app", "--path", path])
        .await?;
    assert_eq!(same.code, Some(0), "{}", same.all);

    // A local change: the drift is shown against the live object, exit 1 (for CI).
    std::fs::write(&cm, config_map_yaml(f.ns.name(), "2"))?;
    let changed = f
        .run(&["diff", "kustomization", "app", "--path", path])
        .await?;
    assert_eq!(changed.code, Some(1), "{}", changed.all);
    assert!(
        changed
            .all
            .contains(&format!("ConfigMap/{}/demo drifted", f.ns.name())),
        "{}",
        changed.all
    );
    assert!(changed.all.contains("data.a"), "{}", changed.all);
    // A dry run: the cluster still has the value from git.
    assert_eq!(f.config_map_value().await?.as_deref(), Some("1"));

    // build prints the objects as the Kustomization would apply them, with Flux's labels.
    let built = f
        .ok(&["build", "kustomization", "app", "--path", path])
        .await?
        .stdout;
    let object: Value = serde_yaml_ng::from_str(built.trim_end().trim_end_matches("---"))?;
    assert_eq!(object["data"]["a"], "2");
    assert_eq!(
        object["metadata"]["labels"]["kustomize.toolkit.fluxcd.io/name"],
        "app"
    );
    assert_eq!(
        object["metadata"]["labels"]["kustomize.toolkit.fluxcd.io/namespace"],
        f.ns.name()
    );
    Ok(())
}

#[tokio::test]
async fn flux_creates_gets_suspends_and_resumes_image_automation() -> Result<()> {
    let f = Fixture::start().await?;
    let harness = Harness::get().await?;
    let image_name = weir_e2e::unique_name("flux-cli", 60);
    harness.registry().push_image(&image_name, "1.0.0").await?;
    let image = harness.registry().push_image(&image_name, "1.2.0").await?;
    let repo = f.repo_with_config_map("1").await?;
    f.ok(&[
        "create",
        "source",
        "git",
        "app",
        "--url",
        &repo.http_url(),
        "--branch",
        "main",
    ])
    .await?;

    f.create_image_automation(&image.repository).await?;
    let policies = f.api::<ImagePolicy>();
    wait_until("the policy to choose 1.2.0", || {
        let policies = policies.clone();
        async move {
            let p = policies.get("app").await.map_err(|e| e.to_string())?;
            let tag = p.status.and_then(|s| s.latest_ref).map(|r| r.tag);
            if tag.as_deref() == Some("1.2.0") {
                Ok(())
            } else {
                Err(format!("latest tag is {tag:?}"))
            }
        }
    })
    .await?;

    let images = f.ok(&["get", "images", "all"]).await?.stdout;
    assert_eq!(
        cell(&images, "imagerepository/app", "MESSAGE")?,
        "successful scan: found 2 tags"
    );
    assert_eq!(cell(&images, "imagepolicy/app", "IMAGE")?, image.repository);
    assert_eq!(cell(&images, "imagepolicy/app", "TAG")?, "1.2.0");
    assert_eq!(cell(&images, "imageupdateautomation/app", "READY")?, "True");

    for kind in ["repository", "policy", "update"] {
        f.ok(&["suspend", "image", kind, "app"]).await?;
    }
    ensure!(f.api::<ImageRepository>().get("app").await?.spec.suspend);
    ensure!(policies.get("app").await?.spec.suspend);
    ensure!(
        f.api::<ImageUpdateAutomation>()
            .get("app")
            .await?
            .spec
            .suspend
    );
    let images = f.ok(&["get", "images", "all"]).await?.stdout;
    // (Flux's policy table has no SUSPENDED column.)
    for name in ["imagerepository/app", "imageupdateautomation/app"] {
        assert_eq!(cell(&images, name, "SUSPENDED")?, "True", "{images}");
    }
    for kind in ["repository", "policy", "update"] {
        let run = f.ok(&["resume", "image", kind, "app"]).await?;
        if !run.all.contains("reconciliation completed") {
            bail!(
                "flux resume image {kind} did not see the reconcile:\n{}",
                run.all
            );
        }
    }
    ensure!(!f.api::<ImageRepository>().get("app").await?.spec.suspend);
    Ok(())
}
