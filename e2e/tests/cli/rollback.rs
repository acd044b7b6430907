//! `weir rollback` (the binary, found through `WEIR_BIN`) against Weir's controllers: a
//! Kustomization pinned to an earlier revision applies its content and holds it through new
//! commits until `--clear`; bad input and a user who may not patch the object are refused with
//! nothing changed; `--commit` writes a revert commit that `git log` shows and the cluster
//! applies; a HelmRelease is rolled back to a Helm revision and follows its chart again when
//! cleared.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Event;
use kube::{
    ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    runtime::wait::{await_condition, conditions},
};
use serde_json::json;
use weir_api::{
    GitRepository, HelmRelease, HelmRepository, Kustomization,
    control::{ROLLBACK_REASON, ROLLBACK_TO, ROLLED_BACK_BY},
    manifest,
};
use weir_e2e::{Chart, Harness, unique_name, wait_until};

use crate::fixture::*;

/// What `weir <args> --kubeconfig <kubeconfig> --timeout 120s` printed, and its exit code.
async fn weir_as(kubeconfig: &Path, args: &[&str]) -> Result<(Option<i32>, String)> {
    let run = weir_run(kubeconfig, args, &["--timeout", "120s"]).await?;
    Ok((run.code, run.all))
}

/// What `weir <args> --kubeconfig <the harness's> --timeout 120s` printed, and its exit code.
async fn weir(f: &Fixture, args: &[&str]) -> Result<(Option<i32>, String)> {
    weir_as(&f.kubeconfig, args).await
}

/// A Kustomization `app` that applied `deploy/cm.yaml` with `a: "1"`, then `a: "2"`; returns
/// the two revisions.
async fn two_applied_revisions(f: &Fixture, repo: &weir_e2e::GitRepo) -> Result<(String, String)> {
    f.create_source_and_kustomization(repo).await?;
    let ns = f.ns.name();
    let first = format!("main@sha1:{}", repo.head()?);
    let second = repo
        .change()
        .write("deploy/cm.yaml", &config_map_yaml(ns, "2"))
        .commit("two")?;
    let (code, out) = weir(f, &["reconcile", "ks", "app", "-n", ns, "--with-source"]).await?;
    ensure!(code == Some(0), "{out}");
    assert_eq!(f.config_map_value().await?.as_deref(), Some("2"));
    Ok((first, format!("main@sha1:{second}")))
}

/// The reasons of the Events about the object `app` (Kustomization or HelmRelease), each as
/// often as it happened (aggregated Events counted).
async fn event_reasons(f: &Fixture) -> Result<Vec<String>> {
    let events = f
        .api::<Event>()
        .list(&ListParams::default().fields("involvedObject.name=app"))
        .await?;
    Ok(events
        .items
        .into_iter()
        .flat_map(|e| {
            let count = usize::try_from(e.count.unwrap_or(1)).unwrap_or(1);
            std::iter::repeat_n(e.reason.unwrap_or_default(), count)
        })
        .collect())
}

async fn wait_for_event(f: &Fixture, reason: &str) -> Result<()> {
    wait_until(&format!("an Event {reason} about app"), || async {
        let reasons = event_reasons(f).await.map_err(|e| e.to_string())?;
        if reasons.iter().any(|r| r == reason) {
            Ok(())
        } else {
            Err(format!("{reasons:?}"))
        }
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_rolled_back_kustomization_holds_its_revision_through_new_commits_until_cleared()
-> Result<()> {
    let f = Fixture::start().await?;
    let repo = f.repo_with_config_map("1").await?;
    let (first, _) = two_applied_revisions(&f, &repo).await?;
    let ns = f.ns.name();
    let kustomizations = f.api::<Kustomization>();

    // By default, back to the previous good revision: its content applied, said so.
    let (code, out) = weir(
        &f,
        &[
            "rollback",
            "kustomization",
            "app",
            "-n",
            ns,
            "--reason",
            "incident 42",
        ],
    )
    .await?;
    ensure!(code == Some(0), "{out}");
    assert!(out.contains(&format!("to {first}")), "{out}");
    assert!(
        out.contains(&format!("✔ Rolled back to revision {first} (by ")),
        "{out}"
    );
    assert!(out.contains(": incident 42)"), "{out}");
    assert_eq!(f.config_map_value().await?.as_deref(), Some("1"));
    let ks = kustomizations.get("app").await?;
    let annotations = ks.annotations();
    assert_eq!(annotations.get(ROLLBACK_TO), Some(&first));
    assert_eq!(
        annotations.get(ROLLBACK_REASON).map(String::as_str),
        Some("incident 42")
    );
    assert!(
        annotations
            .get(ROLLED_BACK_BY)
            .is_some_and(|b| !b.is_empty())
    );
    let status = ks.status.clone().unwrap_or_default();
    assert_eq!(status.last_applied_revision.as_ref(), Some(&first));
    wait_for_event(&f, "RolledBack").await?;
    let sources = f.api::<GitRepository>();
    let pinned = sources.get("app-rollback").await?;
    assert_eq!(
        pinned
            .labels()
            .get("weir.dev/rollback-of")
            .map(String::as_str),
        Some("app")
    );

    // A new commit, fetched and reconciled: the rollback holds.
    let third = repo
        .change()
        .write("deploy/cm.yaml", &config_map_yaml(ns, "3"))
        .commit("three")?;
    let (code, out) = weir(&f, &["reconcile", "ks", "app", "-n", ns, "--with-source"]).await?;
    ensure!(code == Some(0), "{out}");
    assert!(
        out.contains(&format!("Rolled back to revision {first}")),
        "{out}"
    );
    let source = sources.get("app").await?;
    let fetched = source.status.and_then(|s| s.artifact).map(|a| a.revision);
    assert_eq!(fetched, Some(format!("main@sha1:{third}")));
    assert_eq!(f.config_map_value().await?.as_deref(), Some("1"));
    let rolled_back_events = event_reasons(&f)
        .await?
        .iter()
        .filter(|r| *r == "RolledBack")
        .count();
    assert_eq!(rolled_back_events, 1, "RolledBack is announced once");

    // Cleared: git again, and the rollback source is gone.
    let (code, out) = weir(
        &f,
        &["rollback", "kustomization", "app", "-n", ns, "--clear"],
    )
    .await?;
    ensure!(code == Some(0), "{out}");
    assert!(
        out.contains(&format!("✔ Applied revision: main@sha1:{third}")),
        "{out}"
    );
    assert_eq!(f.config_map_value().await?.as_deref(), Some("3"));
    let ks = kustomizations.get("app").await?;
    assert_eq!(ks.annotations().get(ROLLBACK_TO), None);
    let uid = pinned.uid().unwrap_or_default();
    tokio::time::timeout(
        weir_e2e::DEFAULT_DEADLINE,
        await_condition(
            sources.clone(),
            "app-rollback",
            conditions::is_deleted(&uid),
        ),
    )
    .await
    .context("the rollback source was not deleted")??;
    wait_for_event(&f, "RollbackCleared").await?;

    kubectl_alone_pins_and_clears(&f, &first).await
}

/// The same with kubectl alone: the annotation set, then removed, takes effect at once; and
/// the rollback source goes with its Kustomization.
async fn kubectl_alone_pins_and_clears(f: &Fixture, first: &str) -> Result<()> {
    let kustomizations = f.api::<Kustomization>();
    let annotate = |value: serde_json::Value| {
        let kustomizations = kustomizations.clone();
        async move {
            kustomizations
                .patch(
                    "app",
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "metadata": { "annotations": { ROLLBACK_TO: value } } })),
                )
                .await
        }
    };
    annotate(json!(first)).await?;
    wait_for_value(f, "1").await?;
    annotate(serde_json::Value::Null).await?;
    wait_for_value(f, "3").await?;

    // A commit the branch does not have: the Kustomization waits, says why, applies nothing.
    let missing = format!("main@sha1:{}", "1".repeat(40));
    annotate(json!(missing)).await?;
    let waiting = format!(
        "waiting for rollback source GitRepository '{}/app-rollback' to fetch revision {missing}",
        f.ns.name()
    );
    wait_until(
        "the Kustomization to wait for its rollback source",
        || async {
            let ks = kustomizations.get("app").await.map_err(|e| e.to_string())?;
            let ready = ks
                .status
                .as_ref()
                .and_then(|s| weir_api::condition::find_condition(&s.conditions, "Ready"))
                .map(|c| (c.status, c.message.clone()));
            match ready {
                Some((weir_api::ConditionStatus::False, message))
                    if message.starts_with(&waiting) =>
                {
                    Ok(())
                }
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await?;
    assert_eq!(f.config_map_value().await?.as_deref(), Some("3"));

    // Deleting a rolled-back Kustomization deletes its rollback source too.
    annotate(json!(first)).await?;
    wait_for_value(f, "1").await?;
    let sources = f.api::<GitRepository>();
    let uid = sources.get("app-rollback").await?.uid().unwrap_or_default();
    kustomizations
        .delete("app", &DeleteParams::default())
        .await?;
    tokio::time::timeout(
        weir_e2e::DEFAULT_DEADLINE,
        await_condition(sources, "app-rollback", conditions::is_deleted(&uid)),
    )
    .await
    .context("the rollback source outlived its Kustomization")??;
    Ok(())
}

async fn wait_for_value(f: &Fixture, value: &str) -> Result<()> {
    wait_until(&format!("ConfigMap demo with a: {value}"), || async {
        match f.config_map_value().await {
            Ok(Some(v)) if v == value => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn bad_rollbacks_and_users_who_may_not_patch_are_refused_with_nothing_changed() -> Result<()>
{
    let f = Fixture::start().await?;
    let repo = f.repo_with_config_map("1").await?;
    let (first, second) = two_applied_revisions(&f, &repo).await?;
    let ns = f.ns.name();
    let kustomizations = f.api::<Kustomization>();
    let before = kustomizations.get("app").await?.resource_version();

    let never = format!("main@sha1:{}", "0".repeat(40));
    let cases: [(&[&str], &str); 5] = [
        (
            &["rollback", "kustomization", "nothing", "-n", ns],
            &format!("Kustomization '{ns}/nothing' not found"),
        ),
        (
            &[
                "rollback",
                "kustomization",
                "app",
                "-n",
                ns,
                "--to",
                "yesterday",
            ],
            "invalid revision 'yesterday'",
        ),
        (
            &["rollback", "kustomization", "app", "-n", ns, "--to", &never],
            &format!("revision {never} was never applied"),
        ),
        (
            &[
                "rollback",
                "kustomization",
                "app",
                "-n",
                ns,
                "--to",
                &second,
            ],
            "is the one applied now",
        ),
        (
            &["rollback", "helmrelease", "nothing", "-n", ns, "--to", "1"],
            &format!("HelmRelease '{ns}/nothing' not found"),
        ),
    ];
    for (args, expected) in cases {
        let (code, out) = weir(&f, args).await?;
        assert_eq!(code, Some(1), "{args:?}: {out}");
        assert!(out.contains(expected), "{args:?}: {out}");
    }

    // A user who may read Kustomizations but not patch them.
    let user = "rollback-reader";
    let dir = tempfile::tempdir()?;
    let kubeconfig = kustomization_reader(&f, user, dir.path()).await?;
    let (code, out) = weir_as(
        &kubeconfig,
        &["rollback", "kustomization", "app", "-n", ns, "--to", &first],
    )
    .await?;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("forbidden"), "{out}");
    assert!(out.contains("nothing changed"), "{out}");

    let after = kustomizations.get("app").await?;
    assert_eq!(
        after.resource_version(),
        before,
        "the Kustomization was changed"
    );
    assert_eq!(after.annotations().get(ROLLBACK_TO), None);
    assert_eq!(f.config_map_value().await?.as_deref(), Some("2"));
    Ok(())
}

/// A kubeconfig of the harness's cluster acting as `user` (impersonation), who may get, list
/// and watch Kustomizations in the test namespace and nothing more, written in `dir`.
async fn kustomization_reader(f: &Fixture, user: &str, dir: &Path) -> Result<PathBuf> {
    let rules = json!([{
        "apiGroups": ["kustomize.toolkit.fluxcd.io"],
        "resources": ["kustomizations"],
        "verbs": ["get", "list", "watch"],
    }]);
    f.grant("kustomization-reader", user, rules).await?;
    impersonating(f, user, dir)
}

#[tokio::test]
async fn a_rollback_with_commit_writes_a_revert_commit_that_is_applied() -> Result<()> {
    let f = Fixture::start().await?;
    let repo = f.repo_with_config_map("1").await?;
    let (first, second) = two_applied_revisions(&f, &repo).await?;
    let ns = f.ns.name();

    let (code, out) = weir(
        &f,
        &[
            "rollback",
            "kustomization",
            "app",
            "-n",
            ns,
            "--commit",
            "--reason",
            "bad config",
        ],
    )
    .await?;
    ensure!(code == Some(0), "{out}");
    assert_eq!(f.config_map_value().await?.as_deref(), Some("1"));

    // The revert is the new head of main, after the reverted commit, with the message asked.
    let head = repo.head()?;
    let log = git_log(repo.path())?;
    let newest = log.first().context("an empty git log")?;
    assert_eq!(newest.0, head);
    assert_eq!(newest.1, whoami(&f.client).await?, "the author is the user");
    assert_eq!(newest.2, format!("Revert to {first}: bad config"));
    assert!(
        log.iter().any(|(sha, _, _)| second.ends_with(sha.as_str())),
        "{log:?}"
    );
    assert!(
        out.contains(&format!("Applied revision: main@sha1:{head}")),
        "{out}"
    );
    // A commit, not a pin.
    let ks = f.api::<Kustomization>().get("app").await?;
    assert_eq!(ks.annotations().get(ROLLBACK_TO), None);
    Ok(())
}

/// `git log` of `main` in the bare repository `path`: (sha, author, subject), newest first.
fn git_log(path: &Path) -> Result<Vec<(String, String, String)>> {
    let output = weir_e2e::git_command()
        .arg("--git-dir")
        .arg(path)
        .args(["log", "--format=%H%x1f%an%x1f%s", "main"])
        .output()?;
    ensure!(output.status.success(), "git log failed");
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| {
            let mut fields = l.split('\x1f').map(str::to_owned);
            Some((fields.next()?, fields.next()?, fields.next()?))
        })
        .collect())
}

/// The user the harness's kubeconfig is, as the API server says.
async fn whoami(client: &kube::Client) -> Result<String> {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    let review = kube::Api::<SelfSubjectReview>::all(client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await?;
    review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .context("no user in the SelfSubjectReview")
}

#[tokio::test]
async fn a_helm_release_rolls_back_to_a_helm_revision_and_follows_its_chart_when_cleared()
-> Result<()> {
    let f = Fixture::start().await?;
    let harness = Harness::get().await?;
    let ns = f.ns.name();
    let chart = unique_name("rollback", 30);
    let with_value = |version: &str, value: &str| {
        Chart::new(&chart, version).template(
            "cm.yaml",
            &format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: demo\ndata:\n  a: \"{value}\"\n"
            ),
        )
    };
    harness.charts().publish(&with_value("1.0.0", "1"))?;
    let repo: HelmRepository = manifest::from_value(json!({
        "apiVersion": "source.toolkit.fluxcd.io/v1",
        "kind": "HelmRepository",
        "metadata": { "name": "charts", "namespace": ns },
        "spec": { "url": harness.charts().url(), "interval": "10m" },
    }))?;
    f.api::<HelmRepository>()
        .create(&PostParams::default(), &repo)
        .await?;
    let hr: HelmRelease = manifest::from_value(json!({
        "apiVersion": "helm.toolkit.fluxcd.io/v2",
        "kind": "HelmRelease",
        "metadata": { "name": "app", "namespace": ns },
        "spec": {
            "interval": "10m",
            "chart": { "spec": { "chart": chart, "sourceRef": { "kind": "HelmRepository", "name": "charts" } } },
        },
    }))?;
    let releases = f.api::<HelmRelease>();
    releases.create(&PostParams::default(), &hr).await?;
    weir_e2e::wait_ready(&releases, "app", "True", None).await?;
    assert_eq!(f.config_map_value().await?.as_deref(), Some("1"));

    harness.charts().publish(&with_value("1.1.0", "2"))?;
    let (code, out) = weir(&f, &["reconcile", "helmrepository", "charts", "-n", ns]).await?;
    ensure!(code == Some(0), "{out}");
    let (code, out) = weir(&f, &["reconcile", "hr", "app", "-n", ns, "--with-source"]).await?;
    ensure!(code == Some(0), "{out}");
    assert_eq!(f.config_map_value().await?.as_deref(), Some("2"));

    // Never released: refused, nothing changed.
    let (code, out) = weir(&f, &["rollback", "hr", "app", "-n", ns, "--to", "9"]).await?;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("revision 9 was never released"), "{out}");
    assert_eq!(
        releases.get("app").await?.annotations().get(ROLLBACK_TO),
        None
    );

    // Back to revision 1: Helm rolls back (revision 3), and the release holds it.
    let (code, out) = weir(
        &f,
        &[
            "rollback",
            "hr",
            "app",
            "-n",
            ns,
            "--to",
            "1",
            "-m",
            "chart 1.1.0 is broken",
        ],
    )
    .await?;
    ensure!(code == Some(0), "{out}");
    assert!(out.contains("✔ Rolled back to revision 1"), "{out}");
    assert!(out.contains("chart 1.1.0 is broken"), "{out}");
    assert_eq!(f.config_map_value().await?.as_deref(), Some("1"));
    let (code, out) = weir(&f, &["reconcile", "hr", "app", "-n", ns]).await?;
    ensure!(code == Some(0), "{out}");
    assert!(out.contains("Rolled back to revision 1"), "{out}");
    let status = releases.get("app").await?.status.unwrap_or_default();
    let latest = status.history.first().context("no history")?;
    assert_eq!(
        (latest.version, latest.chart_version.as_str()),
        (3, "1.0.0")
    );
    assert_eq!(f.config_map_value().await?.as_deref(), Some("1"));

    // Cleared: upgraded to the chart's latest again.
    let (code, out) = weir(&f, &["rollback", "hr", "app", "-n", ns, "--clear"]).await?;
    ensure!(code == Some(0), "{out}");
    assert_eq!(f.config_map_value().await?.as_deref(), Some("2"));
    let status = releases.get("app").await?.status.unwrap_or_default();
    let latest = status.history.first().context("no history")?;
    assert_eq!(
        (latest.version, latest.chart_version.as_str()),
        (4, "1.1.0")
    );
    wait_for_event(&f, "RolledBack").await?;
    wait_for_event(&f, "RollbackCleared").await?;
    Ok(())
}
