//! `weir lock` and `weir unlock` (the binary, found through `WEIR_BIN`) against Weir's
//! controllers: a locked Deployment keeps its image through new commits while the rest of it
//! follows git, and follows git again once unlocked or once the lock expires; image automation
//! leaves a locked workload's marker alone; a lock of an object Weir does not manage, or by a user
//! who may not patch it, is refused and changes nothing.

use anyhow::{Result, ensure};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Event};
use kube::api::{ListParams, PostParams};
use serde_json::{Value, json};
use weir_api::{
    GitRepository, Kustomization,
    control::{LOCK_EXPIRES, LOCK_REASON, LOCKED_AT, LOCKED_BY, LOCKED_LABEL},
};
use weir_e2e::{GitRepo, Harness, wait_until};

use crate::fixture::*;

/// A Deployment `web` running `image` with `COLOR=<color>`, its image field marked for the
/// ImagePolicy `app`.
fn web_yaml(ns: &str, image: &str, color: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: {ns}\n\
         spec:\n  replicas: 1\n  selector:\n    matchLabels: {{app: web}}\n  template:\n    \
         metadata:\n      labels: {{app: web}}\n    spec:\n      containers:\n        \
         - name: web\n          image: {image} # {{\"$imagepolicy\": \"{ns}:app\"}}\n          \
         env:\n            - {{name: COLOR, value: {color}}}\n"
    )
}

/// A repository with `deploy/web.yaml`, a GitRepository and a Kustomization `app` over it
/// (long intervals: only requests and watches start reconciles), applied once.
async fn deployed(f: &Fixture, image: &str) -> Result<GitRepo> {
    let ns = f.ns.name();
    let web = web_yaml(ns, image, "blue");
    let repo = Harness::get().await?.git().create_repo(
        "lock",
        &std::collections::BTreeMap::from([("deploy/web.yaml", web.as_str())]),
    )?;
    let source: GitRepository = serde_json::from_value(json!({
        "apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
        "metadata": { "name": "app", "namespace": ns },
        "spec": { "url": repo.http_url(), "ref": { "branch": "main" }, "interval": "1h" },
    }))?;
    f.api::<GitRepository>()
        .create(&PostParams::default(), &source)
        .await?;
    let ks: Kustomization = serde_json::from_value(json!({
        "apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
        "metadata": { "name": "app", "namespace": ns },
        "spec": { "interval": "1h", "path": "./deploy", "prune": true,
            "sourceRef": { "kind": "GitRepository", "name": "app" } },
    }))?;
    f.api::<Kustomization>()
        .create(&PostParams::default(), &ks)
        .await?;
    applied(f, &repo.head()?).await?;
    Ok(repo)
}

/// Waits until the Kustomization `app` has applied `commit`.
async fn applied(f: &Fixture, commit: &str) -> Result<()> {
    let revision = format!("main@sha1:{commit}");
    let api = f.api::<Kustomization>();
    wait_until(&format!("Kustomization app applied {revision}"), || async {
        let ks = api.get("app").await.map_err(|e| e.to_string())?;
        let status = ks.status.unwrap_or_default();
        if status.last_applied_revision.as_deref() == Some(revision.as_str()) {
            Ok(())
        } else {
            Err(format!(
                "lastAppliedRevision {:?}, conditions {:?}",
                status.last_applied_revision, status.conditions
            ))
        }
    })
    .await?;
    Ok(())
}

/// Commits `web.yaml` with `image` and `color`, and asks for the source and the Kustomization
/// to reconcile now (`weir reconcile --with-source`); returns the commit.
async fn commit_web(f: &Fixture, repo: &GitRepo, image: &str, color: &str) -> Result<String> {
    let head = repo
        .change()
        .write("deploy/web.yaml", &web_yaml(f.ns.name(), image, color))
        .commit(&format!("web {image} {color}"))?;
    let (code, out) = weir(
        f,
        &["reconcile", "ks", "app", "-n", f.ns.name(), "--with-source"],
    )
    .await?;
    ensure!(code == Some(0), "weir reconcile: {out}");
    applied(f, &head).await?;
    Ok(head)
}

/// The image and `COLOR` of the live `web`, and its labels and annotations.
async fn web(f: &Fixture) -> Result<(String, String, Value)> {
    let deployment = serde_json::to_value(f.api::<Deployment>().get("web").await?)?;
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    Ok((
        container["image"].as_str().unwrap_or_default().to_owned(),
        container["env"][0]["value"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        deployment["metadata"].clone(),
    ))
}

/// The notes of the Events with `reason` about the `kind` `name`.
async fn events(f: &Fixture, kind: &str, name: &str, reason: &str) -> Result<Vec<String>> {
    let events = f.api::<Event>().list(&ListParams::default()).await?;
    Ok(events
        .items
        .into_iter()
        .filter(|e| {
            e.involved_object.kind.as_deref() == Some(kind)
                && e.involved_object.name.as_deref() == Some(name)
                && e.reason.as_deref() == Some(reason)
        })
        .map(|e| e.message.unwrap_or_default())
        .collect())
}

/// Waits for an Event with `reason` about `kind` `name`; returns its note.
async fn event(f: &Fixture, kind: &str, name: &str, reason: &str) -> Result<String> {
    Ok(
        wait_until(&format!("a {reason} Event on {kind} {name}"), || async {
            let notes = events(f, kind, name, reason)
                .await
                .map_err(|e| e.to_string())?;
            notes
                .into_iter()
                .next_back()
                .ok_or_else(|| "none yet".to_owned())
        })
        .await?,
    )
}

/// Waits until the live `web` runs `image`.
async fn runs(f: &Fixture, image: &str) -> Result<()> {
    wait_until(&format!("web runs {image}"), || async {
        let (live, ..) = web(f).await.map_err(|e| e.to_string())?;
        if live == image { Ok(()) } else { Err(live) }
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_locked_deployment_keeps_its_image_through_a_new_commit_and_follows_git_after_unlock()
-> Result<()> {
    let f = Fixture::start().await?;
    let ns = f.ns.name();
    let repo = deployed(&f, "example.com/web:1.0.0").await?;

    let (code, out) = weir(
        &f,
        &["lock", "deploy/web", "-n", ns, "--reason", "incident 42"],
    )
    .await?;
    ensure!(code == Some(0), "{out}");
    assert!(
        out.contains("locked by") && out.contains("incident 42"),
        "{out}"
    );
    assert!(out.contains("web=example.com/web:1.0.0"), "{out}");
    let (_, _, meta) = web(&f).await?;
    assert_eq!(meta["labels"][LOCKED_LABEL], "true", "{meta}");
    assert_eq!(meta["annotations"][LOCK_REASON], "incident 42", "{meta}");
    let by = meta["annotations"][LOCKED_BY].as_str().unwrap_or_default();
    assert!(!by.is_empty(), "{meta}");
    assert!(meta["annotations"][LOCKED_AT].is_string(), "{meta}");
    assert!(meta["annotations"].get(LOCK_EXPIRES).is_none(), "{meta}");
    let locked = event(&f, "Deployment", "web", "Locked").await?;
    assert!(
        locked.contains(by) && locked.contains("incident 42"),
        "{locked}"
    );

    // Git moves the image and the colour: the colour is applied, the image is kept, and the
    // lock survives the controller's server-side apply.
    commit_web(&f, &repo, "example.com/web:2.0.0", "green").await?;
    let (image, color, meta) = web(&f).await?;
    assert_eq!(color, "green");
    assert_eq!(image, "example.com/web:1.0.0");
    assert_eq!(meta["labels"][LOCKED_LABEL], "true", "{meta}");
    assert_eq!(meta["annotations"][LOCK_REASON], "incident 42", "{meta}");
    let held = event(&f, "Kustomization", "app", "LockHeld").await?;
    assert!(
        held.contains("Deployment/")
            && held.contains("web=example.com/web:1.0.0")
            && held.contains("git: example.com/web:2.0.0"),
        "{held}"
    );

    // Locking again updates the lock, as fluxctl did.
    let (code, out) = weir(&f, &["lock", "deploy/web", "-n", ns, "-m", "incident 43"]).await?;
    ensure!(code == Some(0), "{out}");
    assert!(
        out.contains("replacing the lock") && out.contains("incident 42"),
        "{out}"
    );
    let (_, _, meta) = web(&f).await?;
    assert_eq!(meta["annotations"][LOCK_REASON], "incident 43", "{meta}");

    // Unlocked: git's image comes back without asking for a reconcile.
    let (code, out) = weir(&f, &["unlock", "deployment/web", "-n", ns]).await?;
    ensure!(code == Some(0), "{out}");
    assert!(out.contains("unlocked"), "{out}");
    runs(&f, "example.com/web:2.0.0").await?;
    let (_, _, meta) = web(&f).await?;
    assert!(meta["labels"].get(LOCKED_LABEL).is_none(), "{meta}");
    for key in [LOCK_REASON, LOCKED_BY, LOCKED_AT] {
        assert!(meta["annotations"].get(key).is_none(), "{key}: {meta}");
    }
    event(&f, "Deployment", "web", "Unlocked").await?;

    // Unlocking what is not locked changes nothing and succeeds.
    let (code, out) = weir(&f, &["unlock", "deploy/web", "-n", ns]).await?;
    ensure!(code == Some(0) && out.contains("not locked"), "{out}");
    Ok(())
}

#[tokio::test]
async fn an_expired_lock_releases_itself_with_an_event_and_git_applies() -> Result<()> {
    let f = Fixture::start().await?;
    let ns = f.ns.name();
    let repo = deployed(&f, "example.com/web:1.0.0").await?;
    let (code, out) = weir(&f, &["lock", "sts/web", "-n", ns, "--reason", "x"]).await?;
    assert_eq!(code, Some(1), "no StatefulSet web: {out}");
    assert!(
        out.contains("StatefulSet") && out.contains("not found"),
        "{out}"
    );

    let (code, out) = weir(
        &f,
        &[
            "lock",
            "deploy/web",
            "-n",
            ns,
            "--reason",
            "freeze",
            "--expires",
            "40s",
        ],
    )
    .await?;
    ensure!(code == Some(0), "{out}");
    assert!(out.contains("(until "), "{out}");
    let (_, _, meta) = web(&f).await?;
    assert!(meta["annotations"][LOCK_EXPIRES].is_string(), "{meta}");

    // Held while it lasts…
    commit_web(&f, &repo, "example.com/web:2.0.0", "green").await?;
    let (image, color, _) = web(&f).await?;
    assert_eq!(
        (image.as_str(), color.as_str()),
        ("example.com/web:1.0.0", "green")
    );
    // …then released at its expiry, with no reconcile asked for.
    runs(&f, "example.com/web:2.0.0").await?;
    let (_, _, meta) = web(&f).await?;
    assert!(meta["labels"].get(LOCKED_LABEL).is_none(), "{meta}");
    assert!(meta["annotations"].get(LOCK_EXPIRES).is_none(), "{meta}");
    let expired = event(&f, "Deployment", "web", "LockExpired").await?;
    assert!(expired.contains("freeze"), "{expired}");
    Ok(())
}

/// A Deployment made directly through the API, with `labels`.
async fn bare_deployment(f: &Fixture, name: &str, labels: Value) -> Result<()> {
    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": name, "namespace": f.ns.name(), "labels": labels },
        "spec": { "replicas": 0, "selector": { "matchLabels": { "app": name } },
            "template": { "metadata": { "labels": { "app": name } },
                "spec": { "containers": [{ "name": "c", "image": "example.com/c:1" }] } } },
    }))?;
    let deployments = f.api::<Deployment>();
    deployments
        .create(&PostParams::default(), &deployment)
        .await?;
    // The deployment controller annotates a new Deployment with its revision: wait for it, so
    // that a snapshot of the metadata taken after this is not changed by it.
    weir_e2e::wait_until("the Deployment's revision annotation", || async {
        let live = deployments.get(name).await.map_err(|e| e.to_string())?;
        if live
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key("deployment.kubernetes.io/revision")
        {
            Ok(())
        } else {
            Err("not annotated yet".to_owned())
        }
    })
    .await?;
    Ok(())
}

/// The labels and annotations of the Deployment `name`.
async fn metadata(f: &Fixture, name: &str) -> Result<Value> {
    let deployment = f.api::<Deployment>().get(name).await?;
    Ok(json!({
        "labels": deployment.metadata.labels,
        "annotations": deployment.metadata.annotations,
    }))
}

#[tokio::test]
async fn a_lock_of_what_weir_does_not_manage_or_bad_input_is_refused_and_changes_nothing()
-> Result<()> {
    let f = Fixture::start().await?;
    let ns = f.ns.name();
    bare_deployment(&f, "bare", json!({ "app": "bare" })).await?;
    let before = metadata(&f, "bare").await?;

    let (code, out) = weir(&f, &["lock", "deploy/bare", "-n", ns, "--reason", "x"]).await?;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("Deployment {ns}/bare is not managed by Weir"))
            && out.contains("kustomize.toolkit.fluxcd.io/name")
            && out.contains("nothing changed"),
        "{out}"
    );
    assert_eq!(metadata(&f, "bare").await?, before);
    assert!(events(&f, "Deployment", "bare", "Locked").await?.is_empty());

    // Usage errors: exit 2.
    for args in [
        &["lock", "pod/bare", "-n", ns, "--reason", "x"][..],
        &["lock", "deploy/bare", "-n", ns][..],
        &["lock", "bare", "-n", ns, "--reason", "x"][..],
        &["lock", "deploy/bare", "-n", ns, "--reason", " "][..],
        &[
            "lock",
            "deploy/bare",
            "-n",
            ns,
            "--reason",
            "x",
            "--expires",
            "soon",
        ][..],
    ] {
        let (code, out) = weir(&f, args).await?;
        assert_eq!(code, Some(2), "{args:?}: {out}");
    }
    let (code, out) = weir(&f, &["unlock", "deploy/nothing", "-n", ns]).await?;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("Deployment {ns}/nothing not found")),
        "{out}"
    );
    assert_eq!(metadata(&f, "bare").await?, before);
    Ok(())
}

#[tokio::test]
async fn a_user_who_may_not_patch_a_workload_cannot_lock_or_unlock_it() -> Result<()> {
    let f = Fixture::start().await?;
    let ns = f.ns.name();
    // Managed (the label is what the command checks), so only RBAC can refuse.
    bare_deployment(
        &f,
        "web",
        json!({ "kustomize.toolkit.fluxcd.io/name": "app",
        "kustomize.toolkit.fluxcd.io/namespace": ns }),
    )
    .await?;
    let user = format!("viewer-{ns}");
    let rules = json!([{ "apiGroups": ["apps"], "resources": ["deployments"],
        "verbs": ["get", "list", "watch"] }]);
    f.grant("viewer", &user, rules).await?;
    let dir = tempfile::tempdir()?;
    let viewer = impersonating(&f, &user, dir.path())?;
    let before = metadata(&f, "web").await?;

    let (code, out) = weir_as(&viewer, &["lock", "deploy/web", "-n", ns, "--reason", "x"]).await?;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("{user} may not patch Deployment {ns}/web"))
            && out.contains("nothing changed"),
        "{out}"
    );
    assert_eq!(metadata(&f, "web").await?, before);
    assert!(events(&f, "Deployment", "web", "Locked").await?.is_empty());

    // Locked by someone who may: the viewer cannot unlock it either.
    let (code, out) = weir(&f, &["lock", "deploy/web", "-n", ns, "--reason", "x"]).await?;
    ensure!(code == Some(0), "{out}");
    let locked = metadata(&f, "web").await?;
    let (code, out) = weir_as(&viewer, &["unlock", "deploy/web", "-n", ns]).await?;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("may not patch"), "{out}");
    assert_eq!(metadata(&f, "web").await?, locked);
    Ok(())
}

/// `deploy/web.yaml` on the branch `main` of `repo`, as the git server holds it.
fn web_in_git(repo: &GitRepo) -> Result<String> {
    let output = weir_e2e::git_command()
        .args(["show", "main:deploy/web.yaml"])
        .current_dir(repo.path())
        .output()?;
    ensure!(output.status.success(), "git show: {output:?}");
    Ok(String::from_utf8(output.stdout)?)
}

/// Waits until the ImageUpdateAutomation `app` is Ready with a message that `check` accepts.
async fn automation_says(f: &Fixture, what: &str, check: impl Fn(&str) -> bool) -> Result<String> {
    let api = f.api::<weir_api::ImageUpdateAutomation>();
    Ok(wait_until(what, || async {
        let auto = api.get("app").await.map_err(|e| e.to_string())?;
        let ready = auto
            .status
            .and_then(|s| s.conditions.into_iter().find(|c| c.r#type == "Ready"));
        match ready {
            Some(c) if c.status == weir_api::ConditionStatus::True && check(&c.message) => {
                Ok(c.message)
            }
            other => Err(format!("Ready: {other:?}")),
        }
    })
    .await?)
}

#[tokio::test]
async fn image_automation_leaves_a_locked_workloads_marker_until_it_is_unlocked() -> Result<()> {
    let f = Fixture::start().await?;
    let ns = f.ns.name();
    let harness = Harness::get().await?;
    let name = weir_e2e::unique_name("lock", 60);
    let old = harness.registry().push_image(&name, "1.0.0").await?;
    harness.registry().push_image(&name, "2.0.0").await?;
    let repo = deployed(&f, &old.reference()).await?;
    let (code, out) = weir(&f, &["lock", "deploy/web", "-n", ns, "--reason", "soak"]).await?;
    ensure!(code == Some(0), "{out}");

    f.create_image_automation(&old.repository).await?;
    let skipped = format!("skipped locked workloads: Deployment {ns}/web");
    let message = automation_says(&f, "the automation to skip the locked web", |m| {
        m.contains(&skipped)
    })
    .await?;
    assert!(message.starts_with("repository up-to-date"), "{message}");
    assert!(message.contains("soak"), "{message}");
    let before = web_in_git(&repo)?;
    assert!(
        before.contains(&format!("{}:1.0.0", old.repository)),
        "{before}"
    );
    let held = event(&f, "ImageUpdateAutomation", "app", "LockHeld").await?;
    assert!(held.contains(&skipped), "{held}");

    // Unlocked, the next run writes the marker.
    let (code, out) = weir(&f, &["unlock", "deploy/web", "-n", ns]).await?;
    ensure!(code == Some(0), "{out}");
    let (code, out) = weir(&f, &["reconcile", "imageupdateautomation", "app", "-n", ns]).await?;
    ensure!(code == Some(0), "{out}");
    let message = automation_says(&f, "the automation to push", |m| {
        m.starts_with("pushed commit")
    })
    .await?;
    assert!(!message.contains("skipped"), "{message}");
    let after = web_in_git(&repo)?;
    assert!(
        after.contains(&format!("{}:2.0.0", old.repository)),
        "{after}"
    );
    Ok(())
}

/// The chart version of the latest release of the HelmRelease `app`, and its Ready message.
async fn release_state(f: &Fixture) -> Result<(String, String)> {
    let release = f.api::<weir_api::HelmRelease>().get("app").await?;
    let status = release.status.unwrap_or_default();
    let version = status
        .history
        .first()
        .map(|s| s.chart_version.clone())
        .unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .find(|c| c.r#type == "Ready")
        .map(|c| format!("{:?} {}: {}", c.status, c.reason, c.message))
        .unwrap_or_default();
    Ok((version, ready))
}

#[tokio::test]
async fn a_locked_helm_release_is_not_upgraded_until_it_is_unlocked() -> Result<()> {
    let f = Fixture::start().await?;
    let ns = f.ns.name();
    let chart = f.helm_release("lock-hr", "app", "1h").await?;
    assert_eq!(release_state(&f).await?.0, "1.0.0");

    let (code, out) = weir(
        &f,
        &["lock", "hr/app", "-n", ns, "--reason", "change freeze"],
    )
    .await?;
    ensure!(code == Some(0), "{out}");
    // The lock alone is answered: Ready as it was, the lock first in its message.
    let api = f.api::<weir_api::HelmRelease>();
    let said = wait_until("the HelmRelease to say it is locked", || async {
        let (_, ready) = release_state(&f).await.map_err(|e| e.to_string())?;
        if ready.contains("locked by") {
            Ok(ready)
        } else {
            Err(ready)
        }
    })
    .await?;
    assert!(
        said.starts_with("True InstallSucceeded: locked by") && said.contains("change freeze"),
        "{said}"
    );

    // A new version, fetched: the release stays on 1.0.0.
    Harness::get()
        .await?
        .charts()
        .publish(&weir_e2e::Chart::new(&chart, "1.1.0"))?;
    let (code, out) = weir(&f, &["reconcile", "helmrepository", "charts", "-n", ns]).await?;
    ensure!(code == Some(0), "{out}");
    let (code, out) = weir(&f, &["reconcile", "hr", "app", "-n", ns, "--with-source"]).await?;
    ensure!(code == Some(0), "{out}");
    assert!(out.contains("locked by"), "{out}");
    let chart_object = f
        .api::<weir_api::HelmChart>()
        .get(&format!("{ns}-app"))
        .await?;
    let fetched = chart_object
        .status
        .and_then(|s| s.artifact)
        .map(|a| a.revision)
        .unwrap_or_default();
    assert_eq!(fetched, "1.1.0", "the HelmChart has the new version");
    let (version, ready) = release_state(&f).await?;
    assert_eq!(version, "1.0.0", "{ready}");
    assert!(api.get("app").await?.status.is_some());

    // Unlocked: upgraded without asking.
    let (code, out) = weir(&f, &["unlock", "hr/app", "-n", ns]).await?;
    ensure!(code == Some(0), "{out}");
    wait_until("the release to be upgraded to 1.1.0", || async {
        let (version, ready) = release_state(&f).await.map_err(|e| e.to_string())?;
        if version == "1.1.0" && ready.starts_with("True") && !ready.contains("locked by") {
            Ok(())
        } else {
            Err(format!("{version}: {ready}"))
        }
    })
    .await?;
    Ok(())
}
