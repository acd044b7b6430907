//! `weir reconcile`, `weir suspend` and `weir resume` (the binary, found through `WEIR_BIN`), as
//! a Flux user runs `flux reconcile|suspend|resume`: a reconcile with `--with-source` picks up
//! a new commit at once and reports the applied revision; a suspended object is said to be
//! suspended, and resumed it reconciles again; an unknown object or kind fails with a message
//! and exit code 1 or 2, nothing changed.

use anyhow::{Result, ensure};
use kube::Api;
use weir_api::Kustomization;

use crate::fixture::*;

#[tokio::test]
async fn weir_reconciles_suspends_and_resumes_as_flux_does() -> Result<()> {
    let f = Fixture::start().await?;
    let repo = f.repo_with_config_map("1").await?;
    f.create_source_and_kustomization(&repo).await?;
    let ns = f.ns.name();

    // A new commit, then a reconcile with its source: applied at once (the source's interval
    // is long), and said so.
    let head = repo
        .change()
        .write("deploy/cm.yaml", &config_map_yaml(ns, "2"))
        .commit("two")?;
    let (code, out) = weir(&f, &["reconcile", "ks", "app", "-n", ns, "--with-source"]).await?;
    ensure!(code == Some(0), "{out}");
    assert!(out.contains("► annotating GitRepository app"), "{out}");
    assert!(out.contains("► annotating Kustomization app"), "{out}");
    assert!(
        out.contains(&format!("✔ Applied revision: main@sha1:{head}")),
        "{out}"
    );

    // Suspended: said so, and a reconcile is refused until resumed.
    let (code, out) = weir(&f, &["suspend", "kustomization", "app", "-n", ns]).await?;
    ensure!(code == Some(0), "{out}");
    let kustomizations: Api<Kustomization> = Api::namespaced(f.client.clone(), ns);
    assert!(kustomizations.get("app").await?.spec.suspend);
    let (code, out) = weir(&f, &["reconcile", "kustomization", "app", "-n", ns]).await?;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("is suspended"), "{out}");

    let (code, out) = weir(&f, &["resume", "kustomization", "app", "-n", ns]).await?;
    ensure!(code == Some(0), "{out}");
    assert!(out.contains("✔ Applied revision"), "{out}");
    assert!(!kustomizations.get("app").await?.spec.suspend);

    // Bad input: nothing there, or no such kind.
    let (code, out) = weir(&f, &["reconcile", "kustomization", "nothing", "-n", ns]).await?;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("Kustomization '{ns}/nothing' not found")),
        "{out}"
    );
    let (code, out) = weir(&f, &["reconcile", "deployment", "app", "-n", ns]).await?;
    assert_eq!(code, Some(2), "{out}");
    Ok(())
}
