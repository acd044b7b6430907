//! `weir get` (the binary, found through `WEIR_BIN`), as a Flux user runs `flux get`: the same
//! rows, read with the user's own kubeconfig.

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use weir_api::{GitRepository, Kustomization};

use crate::fixture::*;

impl Fixture {
    /// Runs `weir get <args> --kubeconfig <the harness's>`; fails unless it exits 0.
    async fn weir_get(&self, args: &[&str]) -> Result<String> {
        let weir = std::env::var("WEIR_BIN")
            .context("WEIR_BIN: the weir binary to run (make integration builds it)")?;
        let output = tokio::process::Command::new(weir)
            .arg("get")
            .args(args)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .output()
            .await?;
        let stdout = String::from_utf8(output.stdout)?;
        ensure!(
            output.status.success(),
            "weir get {args:?}: {}\n{stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(stdout)
    }
}

/// A source and a Kustomization made with `flux create` show in `weir get` with their
/// revisions cut as flux cuts them, not suspended, Ready with their messages; `-A` adds the
/// namespace, a suspended one says so, and `-o json` has the whole revision.
#[tokio::test]
async fn weir_get_shows_sources_and_kustomizations_as_flux_get_does() -> Result<()> {
    let f = Fixture::start().await?;
    let repo = f.repo_with_config_map("1").await?;
    let head = repo.head()?;
    f.create_source_and_kustomization(&repo).await?;
    let short = format!("main@sha1:{}", &head[..8]);
    let ns = f.ns.name();

    let all = f.weir_get(&["all", "-n", ns]).await?;
    for name in ["gitrepository/app", "kustomization/app"] {
        assert_eq!(cell(&all, name, "REVISION")?, short, "{all}");
        assert_eq!(cell(&all, name, "SUSPENDED")?, "False", "{all}");
        assert_eq!(cell(&all, name, "READY")?, "True", "{all}");
    }
    assert_eq!(
        cell(&all, "kustomization/app", "MESSAGE")?,
        format!("Applied revision: main@sha1:{head}")
    );
    let sources = f.weir_get(&["sources", "-n", ns]).await?;
    ensure!(
        !sources.contains("kustomization/"),
        "sources only:\n{sources}"
    );
    // Other tests run beside this one and have their own `app`: this namespace's row is there.
    let everywhere = f.weir_get(&["kustomizations", "-A"]).await?;
    ensure!(
        everywhere.lines().any(|line| {
            let cells: Vec<&str> = line.split('\t').map(str::trim).collect();
            cells.first() == Some(&ns) && cells.get(1) == Some(&"kustomization/app")
        }),
        "no kustomization/app row in {ns}:\n{everywhere}"
    );

    f.ok(&["suspend", "kustomization", "app"]).await?;
    let suspended = f.weir_get(&["kustomizations", "-n", ns]).await?;
    assert_eq!(cell(&suspended, "kustomization/app", "SUSPENDED")?, "True");

    let json: Value = serde_json::from_str(&f.weir_get(&["all", "-n", ns, "-o", "json"]).await?)?;
    let rows = json.as_array().context("a JSON list")?;
    let row = |kind: &str| {
        rows.iter()
            .find(|r| r["kind"] == kind && r["name"] == "app")
            .cloned()
            .with_context(|| format!("no {kind} row in {json}"))
    };
    assert_eq!(
        row("gitrepository")?["revision"],
        format!("main@sha1:{head}")
    );
    assert_eq!(row("kustomization")?["suspended"], true);
    assert_eq!(row("kustomization")?["namespace"], ns);
    // The rows are the objects' own state.
    let ks = f.api::<Kustomization>().get("app").await?;
    assert_eq!(
        row("kustomization")?["revision"],
        ks.status.unwrap().last_applied_revision.unwrap()
    );
    let source = f.api::<GitRepository>().get("app").await?;
    assert_eq!(
        row("gitrepository")?["revision"],
        source.status.unwrap().artifact.unwrap().revision
    );
    Ok(())
}
