//! `weir get` (the binary, found through `WEIR_BIN`), as a Flux user runs `flux get`: the same
//! rows, read with the user's own kubeconfig.

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use weir_api::{GitRepository, Kustomization};

use crate::fixture::*;

impl Fixture {
    /// Runs `weir get <args> --kubeconfig <the harness's>`; fails unless it exits 0.
    async fn weir_get(&self, args: &[&str]) -> Result<String> {
        weir_ok(self, &[&["get"], args].concat()).await
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

/// `weir get --watch`: the table first, then a row again when the object changes — a new
/// commit reconciled shows its revision without running the command again.
#[tokio::test]
async fn weir_get_watch_prints_a_row_again_when_it_changes() -> Result<()> {
    use tokio::io::AsyncBufReadExt as _;
    let f = Fixture::start().await?;
    let repo = f.repo_with_config_map("1").await?;
    f.create_source_and_kustomization(&repo).await?;
    let ns = f.ns.name();
    let weir = weir_bin()?;
    let mut child = tokio::process::Command::new(weir)
        .args(["get", "kustomizations", "-n", ns, "--watch", "--kubeconfig"])
        .arg(&f.kubeconfig)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().context("stdout")?).lines();
    // Reads lines until one contains `wanted`; what was read, for the failure message.
    let mut seen = String::new();
    let mut read_until = async |wanted: String| -> Result<()> {
        let found = tokio::time::timeout(std::time::Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await? {
                seen.push_str(&line);
                seen.push('\n');
                if line.contains(&wanted) {
                    return Ok::<bool, anyhow::Error>(true);
                }
            }
            Ok(false)
        })
        .await;
        ensure!(
            matches!(found, Ok(Ok(true))),
            "no line with {wanted:?} in:\n{seen}"
        );
        Ok(())
    };
    read_until("NAME".to_owned()).await?;
    read_until(format!("main@sha1:{}", &repo.head()?[..8])).await?;

    let next = repo
        .change()
        .write("deploy/cm.yaml", &config_map_yaml(ns, "2"))
        .commit("two")?;
    f.ok(&["reconcile", "kustomization", "app", "--with-source"])
        .await?;
    read_until(format!("main@sha1:{}", &next[..8])).await?;
    child.kill().await?;
    Ok(())
}

/// `weir completion <shell>` prints clap's completion script for every command.
#[tokio::test]
async fn weir_completion_prints_a_script_for_each_shell() -> Result<()> {
    let weir = weir_bin()?;
    for (shell, mark) in [
        ("bash", "_weir()"),
        ("zsh", "#compdef weir"),
        ("fish", "complete -c weir"),
    ] {
        let output = tokio::process::Command::new(&weir)
            .args(["completion", shell])
            .output()
            .await?;
        let script = String::from_utf8(output.stdout)?;
        ensure!(output.status.success(), "{shell}: {}", output.status);
        ensure!(script.contains(mark), "{shell}: no {mark:?} in\n{script}");
        ensure!(
            script.contains("reconcile"),
            "{shell}: the commands are completed"
        );
    }
    let bad = tokio::process::Command::new(&weir)
        .args(["completion", "tcsh"])
        .output()
        .await?;
    assert_eq!(
        bad.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
    Ok(())
}
