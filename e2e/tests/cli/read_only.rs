//! The read-only commands (the binary, found through `WEIR_BIN`): `weir tree`, `weir trace`,
//! `weir history` and `weir events`, as a Flux user runs `flux tree|trace|events`, against a
//! Kustomization `app` whose `deploy/` holds a Deployment `web` and a nested Kustomization
//! `child` (of `child/`, one ConfigMap `inner`). Locks and control Events are written by the
//! tests themselves, as `weir lock` writes them, so these tests need no other command.

use std::collections::BTreeMap;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::ConfigMap, core::v1::Event};
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use weir_api::{GitRepository, Kustomization};
use weir_e2e::{GitRepo, Harness, wait_ready, wait_until};

use crate::fixture::*;

/// `weir <args>` exits `code`, saying `expected`.
async fn fails(f: &Fixture, args: &[&str], code: i32, expected: &str) -> Result<()> {
    let (exit, out) = weir(f, args).await?;
    assert_eq!(exit, Some(code), "{out}");
    ensure!(out.contains(expected), "{out}");
    Ok(())
}

fn deployment_yaml(namespace: &str, image: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: {namespace}\n\
         spec:\n  replicas: 1\n  selector:\n    matchLabels: {{app: web}}\n  template:\n    \
         metadata:\n      labels: {{app: web}}\n    spec:\n      containers:\n      - name: web\n        \
         image: {image}\n"
    )
}

fn child_yaml(namespace: &str) -> String {
    format!(
        "apiVersion: kustomize.toolkit.fluxcd.io/v1\nkind: Kustomization\nmetadata:\n  name: child\n  \
         namespace: {namespace}\nspec:\n  interval: 10m\n  path: ./child\n  prune: true\n  \
         sourceRef:\n    kind: GitRepository\n    name: app\n"
    )
}

fn inner_yaml(namespace: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: inner\n  namespace: {namespace}\n\
         data:\n  a: \"1\"\n"
    )
}

/// The repository and the Kustomizations `app` and `child`, both applied.
async fn app_with_child(f: &Fixture) -> Result<GitRepo> {
    let ns = f.ns.name();
    let (web, child, inner) = (
        deployment_yaml(ns, "nginx:1.27"),
        child_yaml(ns),
        inner_yaml(ns),
    );
    let files = BTreeMap::from([
        ("deploy/web.yaml", web.as_str()),
        ("deploy/child.yaml", child.as_str()),
        ("child/inner.yaml", inner.as_str()),
    ]);
    let repo = Harness::get().await?.git().create_repo("tree", &files)?;
    f.create_source_and_kustomization(&repo).await?;
    wait_ready(&f.api::<Kustomization>(), "child", "True", None).await?;
    Ok(repo)
}

/// Locks `web` as `weir lock` does: the label and annotations.
async fn lock_web(f: &Fixture) -> Result<()> {
    let patch = json!({"metadata": {
        "labels": {"weir.dev/locked": "true"},
        "annotations": {"weir.dev/lock-reason": "incident 42", "weir.dev/locked-by": "alice",
            "weir.dev/locked-at": "2026-12-01T10:00:00Z"},
    }});
    f.api::<Deployment>()
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// The value of `key` in the `Key: value` lines of `weir trace` output, section `index`.
fn field(text: &str, index: usize, key: &str) -> Option<String> {
    text.split("---\n").nth(index)?.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k == key).then(|| v.trim().to_owned())
    })
}

#[tokio::test]
async fn weir_tree_expands_a_nested_kustomization_and_marks_a_locked_deployment() -> Result<()> {
    let f = Fixture::start().await?;
    let repo = app_with_child(&f).await?;
    lock_web(&f).await?;
    let ns = f.ns.name();
    // Rolled back (as `weir rollback` marks it) to the revision it runs, so nothing moves.
    let revision = format!("main@sha1:{}", repo.head()?);
    let patch = json!({"metadata": {"annotations": {"weir.dev/rollback-to": revision}}});
    f.api::<Kustomization>()
        .patch("child", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;

    let tree = weir_ok(&f, &["tree", "kustomization", "app", "-n", ns]).await?;
    let lines: Vec<&str> = tree.lines().collect();
    assert_eq!(lines[0], format!("Kustomization/{ns}/app"), "{tree}");
    ensure!(
        lines.contains(
            &format!("├── Kustomization/{ns}/child [rolled back to {revision}]").as_str()
        ),
        "{tree}"
    );
    // `inner` hangs under `child`, one level down.
    ensure!(
        lines.contains(&format!("│   └── ConfigMap/{ns}/inner").as_str()),
        "{tree}"
    );
    ensure!(
        lines.contains(&format!("└── Deployment/{ns}/web [locked by alice: incident 42]").as_str()),
        "{tree}"
    );
    assert_eq!(lines.len(), 4, "{tree}");

    let json: Value =
        serde_json::from_str(&weir_ok(&f, &["tree", "ks", "app", "-n", ns, "-o", "json"]).await?)?;
    let child = json["resources"]
        .as_array()
        .and_then(|r| r.iter().find(|n| n["name"] == "child"))
        .context("child in the JSON tree")?;
    assert_eq!(child["resources"][0]["name"], "inner", "{json}");

    fails(
        &f,
        &["tree", "kustomization", "nothing", "-n", ns],
        1,
        &format!("Kustomization '{ns}/nothing' not found"),
    )
    .await?;
    fails(&f, &["tree", "deployment", "web", "-n", ns], 2, "").await?;
    Ok(())
}

#[tokio::test]
async fn weir_trace_names_the_kustomization_source_and_revision_of_a_deployment() -> Result<()> {
    let f = Fixture::start().await?;
    let repo = app_with_child(&f).await?;
    lock_web(&f).await?;
    let ns = f.ns.name();
    let head = repo.head()?;

    let trace = weir_ok(&f, &["trace", "deployment/web", "-n", ns]).await?;
    assert_eq!(
        field(&trace, 0, "Object").as_deref(),
        Some("Deployment/web"),
        "{trace}"
    );
    assert_eq!(
        field(&trace, 0, "Status").as_deref(),
        Some("Managed by Weir")
    );
    assert_eq!(
        field(&trace, 0, "Lock").as_deref(),
        Some("locked by alice: incident 42")
    );
    assert_eq!(
        field(&trace, 1, "Kustomization").as_deref(),
        Some("app"),
        "{trace}"
    );
    assert_eq!(
        field(&trace, 1, "Revision"),
        Some(format!("main@sha1:{head}"))
    );
    assert_eq!(field(&trace, 1, "Ready").as_deref(), Some("True"));
    assert_eq!(field(&trace, 2, "GitRepository").as_deref(), Some("app"));
    assert_eq!(field(&trace, 2, "URL"), Some(repo.http_url()));
    assert_eq!(field(&trace, 2, "Ready").as_deref(), Some("True"));
    // The same chain as JSON: one object a section.
    let json: serde_json::Value = serde_json::from_str(
        &weir_ok(&f, &["trace", "deployment/web", "-n", ns, "-o", "json"]).await?,
    )?;
    assert_eq!(json[0]["Object"], "Deployment/web", "{json}");
    assert_eq!(json[1]["Revision"], format!("main@sha1:{head}"), "{json}");

    // A nested object: its Kustomization, then the one that applied that, each with its source.
    let nested = weir_ok(&f, &["trace", "configmap", "inner", "-n", ns]).await?;
    assert_eq!(
        field(&nested, 1, "Kustomization").as_deref(),
        Some("child"),
        "{nested}"
    );
    assert_eq!(
        field(&nested, 3, "Kustomization").as_deref(),
        Some("app"),
        "{nested}"
    );

    // Bad input: no such object, no such kind, an object Weir does not manage.
    fails(
        &f,
        &["trace", "deployment/nothing", "-n", ns],
        1,
        &format!("Deployment '{ns}/nothing' not found"),
    )
    .await?;
    fails(
        &f,
        &["trace", "frobnicator/web", "-n", ns],
        1,
        "unknown kind 'frobnicator'",
    )
    .await?;
    let mut loose = ConfigMap::default();
    loose.metadata.name = Some("loose".to_owned());
    f.api::<ConfigMap>()
        .create(&PostParams::default(), &loose)
        .await?;
    fails(
        &f,
        &["trace", "cm/loose", "-n", ns],
        1,
        "is not managed by Weir",
    )
    .await?;
    Ok(())
}

/// Records a control Event about `web`, as `weir lock` records one.
async fn locked_event(f: &Fixture) -> Result<()> {
    let event: Event = serde_json::from_value(json!({
        "metadata": {"generateName": "web.", "namespace": f.ns.name()},
        "involvedObject": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
            "namespace": f.ns.name()},
        "reason": "Locked", "type": "Normal", "message": "locked by alice: incident 42",
        "source": {"component": "weir-cli"},
        "firstTimestamp": "2026-12-01T10:00:00Z", "lastTimestamp": "2026-12-01T10:00:00Z",
    }))?;
    f.api::<Event>()
        .create(&PostParams::default(), &event)
        .await?;
    Ok(())
}

#[tokio::test]
async fn weir_history_names_the_commit_subject_and_author_of_each_applied_revision() -> Result<()> {
    let f = Fixture::start().await?;
    let repo = app_with_child(&f).await?;
    let ns = f.ns.name();
    let first = repo.head()?;
    let second = repo
        .change()
        .write("deploy/web.yaml", &deployment_yaml(ns, "nginx:1.28"))
        .commit("Move web to nginx 1.28")?;
    f.ok(&["reconcile", "kustomization", "app", "--with-source"])
        .await?;
    lock_web(&f).await?;
    locked_event(&f).await?;

    let history = weir_ok(&f, &["history", "kustomization", "app", "-n", ns]).await?;
    let row = |sha: &str| {
        history
            .lines()
            .find(|l| l.starts_with(&format!("main@sha1:{}", &sha[..8])))
            .map(str::to_owned)
    };
    let newest = row(&second).with_context(|| format!("no row of {second}:\n{history}"))?;
    ensure!(newest.contains("Move web to nginx 1.28"), "{history}");
    ensure!(newest.contains("Weir E2E <e2e@weir.invalid>"), "{history}");
    let oldest = row(&first).with_context(|| format!("no row of {first}:\n{history}"))?;
    ensure!(oldest.contains("Initial commit"), "{history}");
    ensure!(
        history.contains("  Deployment/web: locked by alice: incident 42\n"),
        "{history}"
    );
    ensure!(
        history
            .lines()
            .any(|l| l.starts_with("2026-12-01T10:00:00Z")
                && l.contains("Locked")
                && l.contains("locked by alice: incident 42")),
        "{history}"
    );

    // The source unreachable: the revisions are still there, and why the commits are not.
    f.api::<GitRepository>()
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"url": "http://127.0.0.1:9/nothing.git"}})),
        )
        .await?;
    let offline = weir_ok(&f, &["history", "ks", "app", "-n", ns]).await?;
    ensure!(
        offline.contains(&format!("main@sha1:{}", &second[..8])),
        "{offline}"
    );
    ensure!(offline.contains("commit details unavailable"), "{offline}");
    ensure!(!offline.contains("Move web to nginx 1.28"), "{offline}");

    fails(
        &f,
        &["history", "kustomization", "nothing", "-n", ns],
        1,
        "not found",
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn weir_events_lists_a_kustomizations_events_and_its_sources() -> Result<()> {
    let f = Fixture::start().await?;
    app_with_child(&f).await?;
    locked_event(&f).await?;
    let ns = f.ns.name();

    let objects = |text: &str| -> Vec<String> {
        text.lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().nth(3).map(str::to_owned))
            .collect()
    };
    // The controller's Events are written as it works: wait for both Kustomizations'.
    let all = wait_until("Events of both Kustomizations", || async {
        let out = weir_ok(&f, &["events", "-n", ns])
            .await
            .map_err(|e| e.to_string())?;
        let seen = objects(&out);
        if seen.iter().any(|o| o == "Kustomization/app")
            && seen.iter().any(|o| o == "Kustomization/child")
        {
            Ok(out)
        } else {
            Err(out)
        }
    })
    .await?;
    assert_eq!(
        all.lines()
            .next()
            .map(|h| h.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]),
        "{all}"
    );
    ensure!(
        objects(&all).iter().any(|o| o == "GitRepository/app"),
        "{all}"
    );
    // As JSON: the rows, times in RFC 3339, the Locked Event among them.
    let json: serde_json::Value =
        serde_json::from_str(&weir_ok(&f, &["events", "-n", ns, "-o", "json"]).await?)?;
    let rows = json.as_array().context("a JSON list")?;
    ensure!(
        rows.iter().any(|r| r["reason"] == "Locked"
            && r["type"] == "Normal"
            && r["lastSeen"]
                .as_str()
                .is_some_and(|t| t.starts_with("2026-12-01T"))),
        "{json}"
    );
    // The Locked Event of 2026-12-01 is the oldest, so first.
    ensure!(
        all.lines().nth(1).is_some_and(|l| l.contains("Locked")),
        "{all}"
    );

    let only = weir_ok(&f, &["events", "-n", ns, "--for", "kustomization/app"]).await?;
    let seen = objects(&only);
    ensure!(seen.iter().any(|o| o == "Kustomization/app"), "{only}");
    ensure!(
        seen.iter().all(
            |o| ["Kustomization/app", "GitRepository/app", "Deployment/web"].contains(&o.as_str())
        ),
        "{only}"
    );

    fails(
        &f,
        &["events", "-n", ns, "--for", "kustomization/nothing"],
        1,
        &format!("Kustomization '{ns}/nothing' not found"),
    )
    .await?;
    Ok(())
}

/// A HelmRelease from a chart repository: `weir tree` lists its release's ConfigMap, and
/// `weir trace` leads from that ConfigMap (marked only by Helm's annotations) to the HelmRelease,
/// its HelmChart and HelmRepository; `weir history` lists the release.
#[tokio::test]
async fn weir_tree_trace_and_history_follow_a_helm_release() -> Result<()> {
    let f = Fixture::start().await?;
    let ns = f.ns.name();
    let chart = f.helm_release("tree-hr", "db", "10m").await?;
    let url = Harness::get().await?.charts().url();
    let config_map = format!("db-{chart}");

    let tree = weir_ok(&f, &["tree", "hr", "db", "-n", ns]).await?;
    assert_eq!(
        tree,
        format!("HelmRelease/{ns}/db\n└── ConfigMap/{ns}/{config_map}\n")
    );

    let trace = weir_ok(&f, &["trace", "configmap", &config_map, "-n", ns]).await?;
    assert_eq!(
        field(&trace, 1, "HelmRelease").as_deref(),
        Some("db"),
        "{trace}"
    );
    assert_eq!(
        field(&trace, 1, "Revision").as_deref(),
        Some("1.0.0"),
        "{trace}"
    );
    assert_eq!(field(&trace, 2, "Chart"), Some(chart.clone()), "{trace}");
    assert_eq!(
        field(&trace, 3, "HelmRepository").as_deref(),
        Some("charts"),
        "{trace}"
    );
    assert_eq!(field(&trace, 3, "URL").as_deref(), Some(url), "{trace}");

    let history = weir_ok(&f, &["history", "helmrelease", "db", "-n", ns]).await?;
    ensure!(
        history.lines().any(|l| l.starts_with("v1 ")
            && l.contains(&format!("{chart}@1.0.0"))
            && l.contains("deployed")),
        "{history}"
    );
    Ok(())
}

/// `weir events --watch`: the table so far, then each new Event as it is recorded.
#[tokio::test]
async fn weir_events_watch_prints_new_events_as_they_come() -> Result<()> {
    use tokio::io::AsyncBufReadExt as _;
    let f = Fixture::start().await?;
    let ns = f.ns.name();
    let mut child = tokio::process::Command::new(weir_bin()?)
        .args(["events", "-n", ns, "--watch", "--kubeconfig"])
        .arg(&f.kubeconfig)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().context("stdout")?).lines();
    let header = tokio::time::timeout(std::time::Duration::from_secs(60), lines.next_line())
        .await
        .context("no header within a minute")??;
    ensure!(
        header
            .as_deref()
            .is_some_and(|h| h.starts_with("LAST SEEN")),
        "{header:?}"
    );
    locked_event(&f).await?;
    let line = tokio::time::timeout(std::time::Duration::from_secs(60), lines.next_line())
        .await
        .context("no Event line within a minute")??
        .context("the watch ended")?;
    ensure!(
        line.contains("Locked") && line.contains("Deployment/web"),
        "{line}"
    );
    child.kill().await?;
    Ok(())
}

/// A source behind basic auth: `weir history` fetches its commits with the GitRepository's own
/// Secret, and never prints it. A user who may read the Kustomization but not that Secret still
/// gets the revisions, and is told why their commits are missing.
#[tokio::test]
async fn weir_history_reads_a_private_source_with_its_secret_when_the_user_may() -> Result<()> {
    use k8s_openapi::api::core::v1::Secret;
    let f = Fixture::start().await?;
    let ns = f.ns.name();
    let git = Harness::get().await?.git();
    let cm = config_map_yaml(ns, "1");
    let repo = git.create_repo(
        "private",
        &BTreeMap::from([("deploy/cm.yaml", cm.as_str())]),
    )?;
    f.api::<Secret>()
        .create(&PostParams::default(), &git.basic_auth_secret("auth"))
        .await?;
    let url = repo.private_http_url();
    f.ok(&[
        "create",
        "source",
        "git",
        "app",
        "--url",
        &url,
        "--branch",
        "main",
        "--secret-ref",
        "auth",
        "--interval",
        "10m",
    ])
    .await?;
    f.ok(&[
        "create",
        "kustomization",
        "app",
        "--source",
        "GitRepository/app",
        "--path",
        "./deploy",
        "--prune",
        "--interval",
        "10m",
    ])
    .await?;
    let head = repo.head()?;
    let short = format!("main@sha1:{}", &head[..8]);

    let history = weir_ok(&f, &["history", "ks", "app", "-n", ns]).await?;
    ensure!(
        history
            .lines()
            .any(|l| l.starts_with(&short) && l.contains("Initial commit")),
        "{history}"
    );
    ensure!(!history.contains(git.http_password()), "{history}");

    // A user who may read the Kustomization, its source and Events, but not Secrets.
    let dir = tempfile::tempdir()?;
    let viewer = viewer(&f, dir.path()).await?;
    // RBAC changes take effect at once, but the binding is made just now: retry until it is.
    let out = wait_until("the viewer's history", || async {
        let (code, all) = weir_as(&viewer, &["history", "ks", "app", "-n", ns])
            .await
            .map_err(|e| e.to_string())?;
        if code == Some(0) { Ok(all) } else { Err(all) }
    })
    .await?;
    ensure!(out.contains(&short), "{out}");
    ensure!(!out.contains("Initial commit"), "{out}");
    ensure!(
        out.contains("commit details unavailable: cannot read secret 'auth'"),
        "{out}"
    );
    Ok(())
}

/// The kubeconfig of a user who may read the Kustomizations, GitRepositories and Events of the
/// test's namespace, and nothing else (no Secrets), written in `dir`.
async fn viewer(f: &Fixture, dir: &std::path::Path) -> Result<std::path::PathBuf> {
    let user = format!("viewer-{}", f.ns.name());
    let rules = json!([
        {"apiGroups": ["kustomize.toolkit.fluxcd.io"], "resources": ["kustomizations"],
            "verbs": ["get", "list"]},
        {"apiGroups": ["source.toolkit.fluxcd.io"], "resources": ["gitrepositories"],
            "verbs": ["get", "list"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["list"]},
    ]);
    f.grant("viewer", &user, rules).await?;
    impersonating(f, &user, dir)
}
