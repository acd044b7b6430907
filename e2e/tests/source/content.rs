//! What goes into the artifact besides the commit's tree (`include`, `sparseCheckout`,
//! `recurseSubmodules`), how git reaches the remote (`proxySecretRef`) and whose identity
//! authenticates (`provider`).

use std::{collections::BTreeMap, sync::atomic::Ordering};

use anyhow::{Context as _, Result, ensure};
use kube::api::{Patch, PatchParams};
use serde_json::json;
use weir_api::{GitRepository, condition::find_condition, reasons, types};
use weir_e2e::{Harness, wait_until};

use crate::fixture::*;

fn status(repo: &GitRepository) -> weir_api::GitRepositoryStatus {
    repo.status.clone().unwrap_or_default()
}

fn condition(repo: &GitRepository, kind: &str) -> Option<weir_api::Condition> {
    find_condition(&status(repo).conditions, kind).cloned()
}

async fn patch_spec(f: &Fixture, name: &str, spec: serde_json::Value) -> Result<()> {
    f.api
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await?;
    Ok(())
}

/// Waits until `name` is Ready=True at its generation and `check` holds.
async fn wait_ready_and(
    f: &Fixture,
    name: &str,
    what: &str,
    check: impl Fn(&GitRepository) -> bool,
) -> Result<GitRepository> {
    let api = f.api.clone();
    let check = &check;
    Ok(wait_until(&format!("GitRepository {name}: {what}"), || {
        let api = api.clone();
        async move {
            let repo = api.get(name).await.map_err(|e| e.to_string())?;
            let st = status(&repo);
            let ready = find_condition(&st.conditions, types::READY)
                .is_some_and(weir_api::Condition::is_true);
            if ready && st.observed_generation == repo.metadata.generation && check(&repo) {
                Ok(repo)
            } else {
                Err(format!("{:?}", st.conditions))
            }
        }
    })
    .await?)
}

fn digest(repo: &GitRepository) -> Option<String> {
    status(repo).artifact.and_then(|a| a.digest)
}

#[tokio::test]
async fn an_included_artifact_is_copied_in_and_its_new_revision_rebuilds_the_includer() -> Result<()>
{
    let f = Fixture::start().await?;
    let (harness, app) = harness_repo().await?;
    let shared = harness.git().create_repo(
        "shared",
        &BTreeMap::from([
            ("deploy/shared.yaml", "kind: Shared\n"),
            ("README.md", "# shared\n"),
        ]),
    )?;
    f.create(
        "shared",
        json!({ "url": shared.http_url(), "interval": "10m" }),
    )
    .await?;
    let shared_repo = f.wait_ready("shared", "True").await?;
    f.create(
            "app",
            json!({
                "url": app.http_url(),
                "interval": "10m",
                "include": [
                    { "repository": { "name": "shared" }, "fromPath": "deploy", "toPath": "vendor/shared" },
                    { "repository": { "name": "shared" } },
                ],
            }),
        )
        .await?;
    let first = f.wait_ready("app", "True").await?;
    assert_eq!(revision(&first), format!("main@sha1:{}", app.head()?));
    let files = download(&first).await?;
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        [
            "README.md",
            "deploy/configmap.yaml",
            "shared/README.md",
            "shared/deploy/shared.yaml",
            "vendor/shared/shared.yaml"
        ]
    );
    assert_eq!(files["vendor/shared/shared.yaml"], "kind: Shared\n");
    let st = status(&first);
    let shared_artifact = status(&shared_repo).artifact.unwrap();
    assert_eq!(
        st.included_artifacts,
        vec![shared_artifact.clone(), shared_artifact]
    );
    assert_eq!(st.observed_include, first.spec.include);
    let fetches = f.controller.metrics.fetches.load(Ordering::Relaxed);

    // Only the included repository moves, and only it is asked to reconcile: the includer
    // follows by itself, with a new artifact for the same commit.
    let moved = shared
        .change()
        .write("deploy/shared.yaml", "kind: Shared\nv: 2\n")
        .commit("shared v2")?;
    f.request_reconcile("shared", "moved-1").await?;
    let second = wait_ready_and(&f, "app", "the new shared revision included", |r| {
        status(r)
            .included_artifacts
            .first()
            .is_some_and(|a| a.revision == format!("main@sha1:{moved}"))
    })
    .await?;
    assert_eq!(revision(&second), revision(&first));
    assert_ne!(digest(&second), digest(&first));
    assert_eq!(
        download(&second).await?["vendor/shared/shared.yaml"],
        "kind: Shared\nv: 2\n"
    );
    assert!(f.controller.metrics.fetches.load(Ordering::Relaxed) > fetches);

    // Nothing moved: no clone.
    let fetches = f.controller.metrics.fetches.load(Ordering::Relaxed);
    f.request_reconcile("app", "unchanged-1").await?;
    assert_eq!(
        f.controller.metrics.fetches.load(Ordering::Relaxed),
        fetches
    );
    Ok(())
}

/// `ArtifactOutdated`'s status, reason and message, if present.
fn outdated(conditions: &[weir_api::Condition]) -> Option<(String, String, String)> {
    find_condition(conditions, types::ARTIFACT_OUTDATED).map(|c| {
        (
            format!("{:?}", c.status),
            c.reason.clone(),
            c.message.clone(),
        )
    })
}

/// What [`watch_progress`] saw: Reconciling's message and `ArtifactOutdated`, per status.
type Progressing =
    std::sync::Arc<std::sync::Mutex<Vec<(String, Option<(String, String, String)>)>>>;

/// Watches `name` and records, for each status with Reconciling=True, Reconciling's message and
/// `ArtifactOutdated` (see [`outdated`]): what was written while the work ran.
fn watch_progress(f: &Fixture, name: &str) -> Progressing {
    use futures::StreamExt;
    let seen = Progressing::default();
    let (stream, record) = (
        kube::runtime::watcher::watch_object(f.api.clone(), name),
        std::sync::Arc::clone(&seen),
    );
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            let Ok(Some(repo)) = item else { continue };
            let conditions = status(&repo).conditions;
            let Some(reconciling) =
                find_condition(&conditions, types::RECONCILING).filter(|c| c.is_true())
            else {
                continue;
            };
            let entry = (reconciling.message.clone(), outdated(&conditions));
            let mut seen = record.lock().unwrap();
            if seen.last() != Some(&entry) {
                seen.push(entry);
            }
        }
    });
    seen
}

#[tokio::test]
async fn a_changed_include_marks_the_artifact_outdated_until_its_new_artifact_is_stored()
-> Result<()> {
    let f = Fixture::start().await?;
    let (harness, app) = harness_repo().await?;
    let shared = harness.git().create_repo(
        "shared",
        &BTreeMap::from([("deploy/shared.yaml", "kind: Shared\n")]),
    )?;
    f.create(
        "shared",
        json!({ "url": shared.http_url(), "interval": "10m" }),
    )
    .await?;
    f.wait_ready("shared", "True").await?;
    f.create(
        "app",
        json!({
            "url": app.http_url(),
            "interval": "10m",
            "include": [{ "repository": { "name": "shared" }, "fromPath": "deploy" }],
        }),
    )
    .await?;
    let first = f.wait_ready("app", "True").await?;
    assert_eq!(outdated(&status(&first).conditions), None);
    let progress = watch_progress(&f, "app");

    // The included repository moves to a commit without the `fromPath`: the includer sees the
    // change, and its build fails.
    shared
        .change()
        .delete("deploy/shared.yaml")
        .write("README.md", "# moved\n")
        .commit("no deploy")?;
    f.request_reconcile("shared", "no-deploy").await?;
    let failed = f.wait_ready("app", "False").await?;
    let st = status(&failed);
    let expected = Some((
        "True".to_owned(),
        "IncludeChange".to_owned(),
        "included artifacts differ from last observed includes".to_owned(),
    ));
    assert_eq!(outdated(&st.conditions), expected, "{:?}", st.conditions);
    assert_eq!(
        condition(&failed, types::STORAGE_OPERATION_FAILED).map(|c| c.reason),
        Some(reasons::COPY_FAILURE.to_owned())
    );
    assert_eq!(
        (st.artifact, st.included_artifacts),
        (
            status(&first).artifact,
            status(&first).included_artifacts.clone()
        ),
        "the last artifact and what it was built with stay"
    );
    // Written before the build, with the progressing mark.
    let mark = (
        "building artifact: included artifacts differ from last observed includes".to_owned(),
        expected,
    );
    wait_until("the include change marked while building", || {
        let (progress, mark) = (std::sync::Arc::clone(&progress), mark.clone());
        async move {
            let seen = progress.lock().unwrap();
            if seen.contains(&mark) {
                Ok(())
            } else {
                Err(format!("seen {seen:?}"))
            }
        }
    })
    .await?;

    // Back with a `fromPath`: the new artifact is stored and it is no longer outdated.
    let restored = shared
        .change()
        .write("deploy/shared.yaml", "kind: Shared\nv: 2\n")
        .commit("deploy again")?;
    f.request_reconcile("shared", "deploy-again").await?;
    let rebuilt = wait_ready_and(&f, "app", "the restored include built", |r| {
        status(r)
            .included_artifacts
            .first()
            .is_some_and(|a| a.revision == format!("main@sha1:{restored}"))
    })
    .await?;
    let st = status(&rebuilt);
    assert_eq!(outdated(&st.conditions), None, "{:?}", st.conditions);
    assert_eq!(condition(&rebuilt, types::STORAGE_OPERATION_FAILED), None);
    assert_eq!(
        download(&rebuilt).await?["shared/shared.yaml"],
        "kind: Shared\nv: 2\n"
    );
    Ok(())
}

#[tokio::test]
async fn a_missing_include_waits_with_fluxs_reason_and_an_escaping_to_path_stalls() -> Result<()> {
    let f = Fixture::start().await?;
    let (harness, app) = harness_repo().await?;
    f.create(
        "app",
        json!({ "url": app.http_url(), "interval": "10m",
                    "include": [{ "repository": { "name": "later" } }] }),
    )
    .await?;
    let waiting = f.wait_ready("app", "False").await?;
    assert_eq!(ready_reason(&waiting), "NotFound");
    let unavailable =
        condition(&waiting, types::INCLUDE_UNAVAILABLE).context("no IncludeUnavailable")?;
    assert!(
        unavailable.is_true() && unavailable.message.contains("'later'"),
        "{unavailable:?}"
    );

    // The included repository appears: the includer is reconciled when its artifact does.
    let later = harness
        .git()
        .create_repo("later", &BTreeMap::from([("x.yaml", "x: 1\n")]))?;
    f.create(
        "later",
        json!({ "url": later.http_url(), "interval": "10m" }),
    )
    .await?;
    let ready = wait_ready_and(&f, "app", "the include available", |r| {
        condition(r, types::INCLUDE_UNAVAILABLE).is_none()
    })
    .await?;
    assert!(download(&ready).await?.contains_key("later/x.yaml"));

    f.create(
        "escape",
        json!({ "url": app.http_url(), "interval": "10m",
                    "include": [{ "repository": { "name": "later" }, "toPath": "a/../../etc" }] }),
    )
    .await?;
    let stalled = f.wait_ready("escape", "False").await?;
    assert_eq!(ready_reason(&stalled), "IllegalPath");
    assert!(
        condition(&stalled, types::STALLED)
            .as_ref()
            .is_some_and(weir_api::Condition::is_true)
    );
    let message = condition(&stalled, types::READY).unwrap().message;
    assert!(message.contains("spec.include[0].toPath"), "{message}");
    Ok(())
}

#[tokio::test]
async fn sparse_checkout_keeps_the_listed_directories_and_a_change_rebuilds_without_a_new_commit()
-> Result<()> {
    let f = Fixture::start().await?;
    let harness = Harness::get().await?;
    let git = harness.git().create_repo(
        "sparse",
        &BTreeMap::from([
            ("deploy/a.yaml", "a: 1\n"),
            ("apps/b.yaml", "b: 1\n"),
            ("infra/c.yaml", "c: 1\n"),
            ("README.md", "# r\n"),
        ]),
    )?;
    f.create(
        "sparse",
        json!({ "url": git.http_url(), "interval": "10m", "sparseCheckout": ["./deploy"] }),
    )
    .await?;
    let first = f.wait_ready("sparse", "True").await?;
    assert_eq!(
        download(&first).await?.keys().collect::<Vec<_>>(),
        ["deploy/a.yaml"]
    );
    assert_eq!(status(&first).observed_sparse_checkout, ["./deploy"]);
    let metrics = &f.controller.metrics;
    let fetches = metrics.fetches.load(Ordering::Relaxed);
    f.request_reconcile("sparse", "unchanged-1").await?;
    assert_eq!(
        metrics.fetches.load(Ordering::Relaxed),
        fetches,
        "no clone when nothing changed"
    );

    patch_spec(
        &f,
        "sparse",
        json!({ "sparseCheckout": ["deploy", "apps/"] }),
    )
    .await?;
    let second = wait_ready_and(&f, "sparse", "apps checked out too", |r| {
        status(r).observed_sparse_checkout == ["deploy", "apps/"]
    })
    .await?;
    assert_eq!(revision(&second), revision(&first));
    assert_eq!(
        download(&second).await?.keys().collect::<Vec<_>>(),
        ["apps/b.yaml", "deploy/a.yaml"]
    );

    patch_spec(&f, "sparse", json!({ "sparseCheckout": ["missing"] })).await?;
    let failed = f.wait_ready("sparse", "False").await?;
    assert_eq!(ready_reason(&failed), reasons::GIT_OPERATION_FAILED);
    let message = condition(&failed, types::READY).unwrap().message;
    assert!(message.contains("'missing' does not exist"), "{message}");
    assert_eq!(
        revision(&failed),
        revision(&first),
        "the last good artifact stays"
    );
    Ok(())
}

#[tokio::test]
async fn git_over_https_goes_through_the_proxy_of_proxy_secret_ref() -> Result<()> {
    let f = Fixture::start().await?;
    let (harness, git) = harness_repo().await?;
    let url = git.https_url()?;
    let upstream = url
        .strip_prefix("https://")
        .and_then(|r| r.split('/').next())
        .context("harness URL")?
        .to_owned();
    // `localhost` is in the server's certificate, and nothing listens on port 1: only the
    // proxy, which sends every tunnel to the server, makes this URL work.
    let via_proxy_only = url.replacen(&upstream, "localhost:1", 1);
    let proxy = weir_e2e::LoopbackProxy::start(&upstream, "proxy-user", "proxy-s3cret").await?;
    let ca = read(harness.git().https_ca()?)?;
    f.secret("ca", &[("ca.crt", &ca)]).await?;
    let address = proxy.url();
    let proxy_secret = |name: &'static str, password: &'static str| {
        let (f, address) = (&f, &address);
        async move {
            f.secret(
                name,
                &[
                    ("address", address.as_str()),
                    ("username", "proxy-user"),
                    ("password", password),
                ],
            )
            .await
        }
    };
    proxy_secret("proxy", "proxy-s3cret").await?;
    let spec = |secret: &str| {
        json!({ "url": via_proxy_only, "interval": "10m", "secretRef": { "name": "ca" },
                    "proxySecretRef": { "name": secret } })
    };
    f.create("proxied", spec("proxy")).await?;
    let ready = f.wait_ready("proxied", "True").await?;
    assert_eq!(revision(&ready), format!("main@sha1:{}", git.head()?));
    assert!(proxy.forwarded() > 0, "nothing went through the proxy");

    // A proxy refusing the credentials fails the fetch; no password shows anywhere.
    proxy_secret("bad-proxy", "wrong-pw-123").await?;
    f.create("refused", spec("bad-proxy")).await?;
    let refused = f.wait_ready("refused", "False").await?;
    let message = condition(&refused, types::READY).unwrap().message;
    f.create("no-secret", spec("absent")).await?;
    let missing = f.wait_ready("no-secret", "False").await?;
    assert_eq!(ready_reason(&missing), reasons::AUTHENTICATION_FAILED);
    let missing_message = condition(&missing, types::READY).unwrap().message;
    assert!(
        missing_message.contains("/absent' not found"),
        "{missing_message}"
    );

    // Plain http:// would go around the proxy (libgit2 connects to the server itself):
    // refused, naming the field.
    f.create(
        "plain",
        json!({ "url": git.http_url(), "interval": "10m",
                    "proxySecretRef": { "name": "proxy" } }),
    )
    .await?;
    let plain = f.wait_ready("plain", "False").await?;
    assert!(
        condition(&plain, types::STALLED)
            .as_ref()
            .is_some_and(weir_api::Condition::is_true)
    );
    let plain_message = condition(&plain, types::READY).unwrap().message;
    assert!(
        plain_message.contains("spec.proxySecretRef") && plain_message.contains("https://"),
        "{plain_message}"
    );

    let everything = format!(
        "{message}{missing_message}{}{}",
        f.events_text().await?,
        serde_json::to_string(&f.api.get("refused").await?.status)?
    );
    assert!(!everything.contains("wrong-pw-123") && !everything.contains("proxy-s3cret"));
    Ok(())
}

#[tokio::test]
async fn providers_other_than_generic_stall_naming_the_provider() -> Result<()> {
    let f = Fixture::start().await?;
    let (_, git) = harness_repo().await?;
    f.create(
        "generic",
        json!({ "url": git.http_url(), "interval": "10m", "provider": "generic" }),
    )
    .await?;
    f.create(
        "azure",
        json!({ "url": git.http_url(), "interval": "10m", "provider": "azure",
                    "serviceAccountName": "git-identity" }),
    )
    .await?;
    f.create(
        "github",
        json!({ "url": git.http_url(), "interval": "10m", "provider": "github" }),
    )
    .await?;
    f.wait_ready("generic", "True").await?;
    for provider in ["azure", "github"] {
        let repo = f.wait_ready(provider, "False").await?;
        assert_eq!(ready_reason(&repo), "InvalidProviderConfiguration");
        assert!(
            condition(&repo, types::STALLED)
                .as_ref()
                .is_some_and(weir_api::Condition::is_true)
        );
        let message = condition(&repo, types::READY).unwrap().message;
        assert!(
            message.contains(&format!("spec.provider '{provider}'")),
            "{message}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn submodules_are_archived_when_recurse_submodules_is_set() -> Result<()> {
    let f = Fixture::start().await?;
    let harness = Harness::get().await?;
    let lib = harness
        .git()
        .create_repo("lib", &BTreeMap::from([("lib.yaml", "lib: 1\n")]))?;
    let (_, app) = harness_repo().await?;
    // Add the submodule by its http URL through a clone of the bare repository.
    let work = tempfile::tempdir()?;
    let git = |args: &[&str]| -> Result<()> {
        let out = weir_e2e::git_command()
            .current_dir(work.path())
            .args(args)
            .output()?;
        ensure!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    git(&["clone", "--quiet", &app.path().display().to_string(), "."])?;
    git(&["submodule", "add", "--quiet", &lib.http_url(), "vendor/lib"])?;
    git(&["commit", "--quiet", "--message", "add lib"])?;
    git(&["push", "--quiet", "origin", "HEAD:refs/heads/main"])?;

    f.create("app", json!({ "url": app.http_url(), "interval": "10m" }))
        .await?;
    let plain = f.wait_ready("app", "True").await?;
    assert!(!download(&plain).await?.contains_key("vendor/lib/lib.yaml"));

    patch_spec(&f, "app", json!({ "recurseSubmodules": true })).await?;
    let recursed = wait_ready_and(&f, "app", "submodules recursed", |r| {
        status(r).observed_recurse_submodules
    })
    .await?;
    assert_eq!(revision(&recursed), revision(&plain));
    let files = download(&recursed).await?;
    assert_eq!(files["vendor/lib/lib.yaml"], "lib: 1\n");
    assert!(files.contains_key("deploy/configmap.yaml"));
    Ok(())
}
