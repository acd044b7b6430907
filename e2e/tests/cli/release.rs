//! `weir release` (the binary, found through `WEIR_BIN`) against Weir's controllers, as
//! `fluxctl release` was used: a release is a commit in `git log` with its message, the user as
//! author and a `Released-by:` trailer, pushed with the GitRepository's credentials, recorded
//! in an Event, and the command returns once the Deployment has rolled it out; a dry run shows
//! the diff and pushes nothing. A release that cannot be made (a tag the registry does not have,
//! a locked workload without `--force`, no file setting the image, a workload no Kustomization
//! manages, a user who may not patch the workload or read the source's Secret, bad input) is
//! refused with a message and exit code 1 (2 for usage), nothing pushed.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Event, Secret},
};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use weir_api::{GitRepository, ImageRepository, Kustomization};
use weir_e2e::{GitRepo, Harness, PushedImage, unique_name, wait_until};

use crate::fixture::*;

/// `git <args>` in the server's bare repository.
fn git(repo: &Path, args: &[&str]) -> Result<String> {
    let out = weir_e2e::git_command()
        .arg("--git-dir")
        .arg(repo)
        .args(args)
        .output()?;
    ensure!(out.status.success(), "git {args:?}: {out:?}");
    Ok(String::from_utf8(out.stdout)?)
}

/// What `weir release deploy/web -n <namespace> --image <image> <flags>` printed as the user of
/// `kubeconfig`, and its exit code.
async fn release_web(
    f: &Fixture,
    kubeconfig: &Path,
    image: &str,
    flags: &[&str],
) -> Result<(Option<i32>, String)> {
    let ns = f.ns.name();
    let args = [
        &["release", "deploy/web", "-n", ns, "--image", image][..],
        flags,
    ]
    .concat();
    weir_as(kubeconfig, &args).await
}

/// A Deployment `web` running `image`, its image field marked for the ImagePolicy `app`, and a
/// ConfigMap in the same file.
fn web_yaml(ns: &str, image: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: {ns}\n\
         spec:\n  replicas: 1\n  selector:\n    matchLabels: {{app: web}}\n  template:\n    \
         metadata:\n      labels: {{app: web}}\n    spec:\n      containers:\n        \
         - name: web\n          image: {image} # {{\"$imagepolicy\": \"{ns}:app\"}}\n\
         ---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web-config\n  namespace: {ns}\n\
         data:\n  image: \"{image}\"\n"
    )
}

/// The app of these tests: `1.0.0` and `1.1.0` of an image in the registry that needs
/// credentials (an ImageRepository with them scans it), a private git repository (basic auth:
/// pushes allowed) whose `deploy/web.yaml` runs `1.0.0`, a GitRepository with its Secret and a
/// Kustomization `app` (long intervals: only requests start reconciles), applied.
async fn deployed_app(f: &Fixture) -> Result<(GitRepo, PushedImage, PushedImage)> {
    let harness = Harness::get().await?;
    let ns = f.ns.name();
    let registry = harness.registry_with_auth();
    let name = unique_name("release", 50);
    let first = registry.push_image(&name, "1.0.0").await?;
    let second = registry.push_image(&name, "1.1.0").await?;
    let post = PostParams::default();
    f.api::<Secret>()
        .create(&post, &registry.docker_config_secret("registry-auth")?)
        .await?;
    let scanner: ImageRepository = serde_json::from_value(json!({
        "apiVersion": "image.toolkit.fluxcd.io/v1", "kind": "ImageRepository",
        "metadata": { "name": "app", "namespace": ns },
        "spec": { "image": first.repository, "interval": "1h", "insecure": true,
            "secretRef": { "name": "registry-auth" } },
    }))?;
    f.api::<ImageRepository>().create(&post, &scanner).await?;

    let web = web_yaml(ns, &first.reference());
    let repo = harness.git().create_repo(
        "release",
        &BTreeMap::from([("deploy/web.yaml", web.as_str())]),
    )?;
    f.api::<Secret>()
        .create(&post, &harness.git().basic_auth_secret("git-auth"))
        .await?;
    let source: GitRepository = serde_json::from_value(json!({
        "apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
        "metadata": { "name": "app", "namespace": ns },
        "spec": { "url": repo.private_http_url(), "ref": { "branch": "main" }, "interval": "1h",
            "secretRef": { "name": "git-auth" } },
    }))?;
    f.api::<GitRepository>().create(&post, &source).await?;
    let ks: Kustomization = serde_json::from_value(json!({
        "apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
        "metadata": { "name": "app", "namespace": ns },
        "spec": { "interval": "1h", "path": "./deploy", "prune": true,
            "sourceRef": { "kind": "GitRepository", "name": "app" } },
    }))?;
    f.api::<Kustomization>().create(&post, &ks).await?;
    let revision = format!("main@sha1:{}", repo.head()?);
    let kustomizations = f.api::<Kustomization>();
    wait_until(&format!("Kustomization app applied {revision}"), || async {
        let ks = kustomizations.get("app").await.map_err(|e| e.to_string())?;
        let applied = ks.status.unwrap_or_default().last_applied_revision;
        if applied.as_deref() == Some(revision.as_str()) {
            Ok(())
        } else {
            Err(format!("lastAppliedRevision {applied:?}"))
        }
    })
    .await?;
    Ok((repo, first, second))
}

/// The image of the live `web`'s first container.
async fn web_image(f: &Fixture) -> Result<String> {
    let deployment = f.api::<Deployment>().get("web").await?;
    Ok(deployment
        .spec
        .and_then(|s| s.template.spec?.containers.first()?.image.clone())
        .unwrap_or_default())
}

/// The note of the `Released` Event on Deployment `web`, empty when there is none.
async fn released_note(f: &Fixture) -> Result<String> {
    let events = f.api::<Event>().list(&ListParams::default()).await?;
    Ok(events
        .items
        .into_iter()
        .find(|e| {
            e.reason.as_deref() == Some("Released")
                && e.involved_object.kind.as_deref() == Some("Deployment")
                && e.involved_object.name.as_deref() == Some("web")
        })
        .and_then(|e| e.message)
        .unwrap_or_default())
}

/// `weir release --dry-run` shows the diff of the field and pushes nothing.
async fn dry_run_pushes_nothing(f: &Fixture, repo: &GitRepo, from: &str, to: &str) -> Result<()> {
    let before = repo.head()?;
    let (code, out) = release_web(f, &f.kubeconfig, to, &["--dry-run"]).await?;
    ensure!(code == Some(0), "{out}");
    assert!(out.contains("--- a/deploy/web.yaml"), "{out}");
    assert!(
        out.contains(&format!("-          image: {from} #")),
        "{out}"
    );
    assert!(out.contains(&format!("+          image: {to} #")), "{out}");
    ensure!(repo.head()? == before, "a dry run pushed: {out}");
    Ok(())
}

#[tokio::test]
async fn a_release_is_a_commit_by_the_user_and_the_deployment_runs_it() -> Result<()> {
    let f = Fixture::start().await?;
    let ns = f.ns.name();
    let (repo, first, second) = deployed_app(&f).await?;
    let image = second.reference();
    dry_run_pushes_nothing(&f, &repo, &first.reference(), &image).await?;

    let before = repo.head()?;
    let (code, out) = release_web(
        &f,
        &f.kubeconfig,
        &image,
        &["-m", "Ship 1.1.0 to the demo", "--timeout", "2m"],
    )
    .await?;
    ensure!(code == Some(0), "{out}");
    // The marked field is written, and the user is told that automation may move it again.
    assert!(
        out.contains(&format!("is marked for ImagePolicy {ns}:app")),
        "{out}"
    );
    assert!(
        out.contains(&format!("Deployment/{ns}/web runs {image}")),
        "{out}"
    );
    // The command returned once the Deployment ran it: nothing to wait for here.
    assert_eq!(web_image(&f).await?, image);

    let head = repo.head()?;
    assert_ne!(head, before);
    assert!(
        out.contains(&format!("pushed commit {head} to branch main")),
        "{out}"
    );
    let log = git(repo.path(), &["log", "-1", "--format=%an%n%B", "main"])?;
    let (author, message) = log.split_once('\n').context("git log")?;
    assert!(
        message.starts_with(&format!(
            "Ship 1.1.0 to the demo\n\n- deploy/web.yaml:16 {} -> {image}\n",
            first.reference()
        )),
        "{log}"
    );
    assert!(
        message
            .trim_end()
            .ends_with(&format!("Released-by: {author}")),
        "{log}"
    );
    // Only the Deployment's field changed: the ConfigMap's copy of the image is no image field.
    let file = git(repo.path(), &["show", "main:deploy/web.yaml"])?;
    let copy = |i: &str| format!("image: \"{i}\"");
    assert_eq!(
        file,
        web_yaml(ns, &image).replace(&copy(&image), &copy(&first.reference()))
    );
    let note = released_note(&f).await?;
    assert!(
        note.contains(&format!(
            "{author} released {image} to Deployment/{ns}/web in commit {head} on branch main: \
             Ship 1.1.0 to the demo"
        )),
        "{note:?}"
    );

    // Released again: git already has it; nothing is committed and it still runs.
    let (code, out) = release_web(&f, &f.kubeconfig, &image, &[]).await?;
    ensure!(code == Some(0), "{out}");
    assert!(out.contains("nothing to commit"), "{out}");
    assert_eq!(repo.head()?, head);
    Ok(())
}

/// Fails unless `weir` exited 1 saying `why` and that nothing was pushed, and `repo` is still at
/// `head`.
fn refused(
    repo: &GitRepo,
    head: &str,
    (code, out): (Option<i32>, String),
    why: &str,
) -> Result<()> {
    ensure!(code == Some(1), "exit {code:?}: {out}");
    ensure!(out.contains(why), "expected {why:?} in: {out}");
    ensure!(out.contains("nothing pushed"), "{out}");
    ensure!(repo.head()? == head, "something was pushed: {out}");
    Ok(())
}

#[tokio::test]
async fn a_release_that_cannot_take_effect_is_refused_and_nothing_is_pushed() -> Result<()> {
    let f = Fixture::start().await?;
    let ns = f.ns.name();
    let (repo, first, second) = deployed_app(&f).await?;
    let head = repo.head()?;

    let missing = format!("{}:9.9.9", first.repository);
    let out = release_web(&f, &f.kubeconfig, &missing, &[]).await?;
    let why = format!("the registry has no tag 9.9.9 of {}", first.repository);
    refused(&repo, &head, out, &why)?;

    // The live Deployment runs a sidecar added by hand, which no file in git sets.
    let sidecar = Harness::get()
        .await?
        .registry()
        .push_image(&unique_name("sidecar", 50), "2.0.0")
        .await?;
    let patch = json!({ "spec": { "template": { "spec": { "containers": [
        { "name": "sidecar", "image": sidecar.reference() },
    ] } } } });
    f.api::<Deployment>()
        .patch("web", &PatchParams::default(), &Patch::Strategic(&patch))
        .await?;
    let out = release_web(&f, &f.kubeconfig, &sidecar.reference(), &[]).await?;
    let why = format!(
        "no file under './deploy' in {}@main sets an image of {} for Deployment/{ns}/web",
        repo.private_http_url(),
        sidecar.repository
    );
    refused(&repo, &head, out, &why)?;

    let bare: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": "bare", "namespace": ns },
        "spec": { "replicas": 0, "selector": { "matchLabels": { "app": "bare" } },
            "template": { "metadata": { "labels": { "app": "bare" } },
                "spec": { "containers": [ { "name": "bare", "image": first.reference() } ] } } },
    }))?;
    f.api::<Deployment>()
        .create(&PostParams::default(), &bare)
        .await?;
    let image = second.reference();
    let out = weir(&f, &["release", "deploy/bare", "-n", ns, "--image", &image]).await?;
    let why = format!("Deployment/{ns}/bare is not managed by a Kustomization");
    refused(&repo, &head, out, &why)?;

    // kustomize's `images:` sets the image over the field: a commit to the field would do nothing.
    let config = format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
         resources: [web.yaml]\nimages:\n- name: {}\n  newTag: 1.0.0\n",
        first.repository
    );
    let head = repo
        .change()
        .write("deploy/kustomization.yaml", &config)
        .commit("pin the image with kustomize")?;
    let out = release_web(&f, &f.kubeconfig, &image, &[]).await?;
    let why = format!(
        "kustomize sets the image of {0} over the workload's field in \
         deploy/kustomization.yaml (images: {0})",
        first.repository
    );
    refused(&repo, &head, out, &why)?;

    // Bad input is a usage error.
    for args in [
        ["release", "web", "-n", ns, "--image", image.as_str()],
        [
            "release",
            "deploy/web",
            "-n",
            ns,
            "--image",
            first.repository.as_str(),
        ],
    ] {
        let (code, out) = weir(&f, &args).await?;
        ensure!(code == Some(2), "{args:?}: exit {code:?}: {out}");
    }
    Ok(())
}

#[tokio::test]
async fn a_locked_workload_is_released_only_with_force_and_stays_locked() -> Result<()> {
    let f = Fixture::start().await?;
    let (repo, _, second) = deployed_app(&f).await?;
    let head = repo.head()?;
    let lock = json!({ "metadata": {
        "labels": { "weir.dev/locked": "true" },
        "annotations": { "weir.dev/lock-reason": "incident 42", "weir.dev/locked-by": "alice" },
    } });
    f.api::<Deployment>()
        .patch("web", &PatchParams::default(), &Patch::Merge(&lock))
        .await?;
    let image = second.reference();
    let out = release_web(&f, &f.kubeconfig, &image, &[]).await?;
    refused(&repo, &head, out, "is locked by alice: incident 42")?;

    // Forced: the commit is made; the lock keeps the cluster on its image.
    let (code, out) = release_web(&f, &f.kubeconfig, &image, &["--force"]).await?;
    ensure!(code == Some(0), "{out}");
    assert!(
        out.contains("the cluster keeps its images until `weir unlock`"),
        "{out}"
    );
    assert_ne!(repo.head()?, head);
    let file = git(repo.path(), &["show", "main:deploy/web.yaml"])?;
    assert!(file.contains(&format!("image: {image} #")), "{file}");
    let live = f.api::<Deployment>().get("web").await?;
    assert_eq!(
        live.metadata
            .labels
            .unwrap_or_default()
            .get("weir.dev/locked"),
        Some(&"true".to_owned())
    );
    Ok(())
}

/// A Role `name` that reads what a release reads (no Secrets), and may patch Deployments when
/// `patch`, bound to `user`.
async fn release_role(f: &Fixture, name: &str, user: &str, patch: bool) -> Result<()> {
    let mut deployments = vec!["get", "list", "watch"];
    if patch {
        deployments.push("patch");
    }
    let rules = json!([
        { "apiGroups": ["apps"], "resources": ["deployments"], "verbs": deployments },
        { "apiGroups": ["kustomize.toolkit.fluxcd.io"], "resources": ["kustomizations"],
            "verbs": ["get", "list"] },
        { "apiGroups": ["source.toolkit.fluxcd.io"], "resources": ["gitrepositories"],
            "verbs": ["get", "list"] },
        { "apiGroups": ["image.toolkit.fluxcd.io"], "resources": ["imagerepositories"],
            "verbs": ["get", "list"] },
    ]);
    f.grant(name, user, rules).await?;
    Ok(())
}

#[tokio::test]
async fn a_user_who_may_not_patch_the_workload_or_read_the_sources_secret_cannot_release()
-> Result<()> {
    let f = Fixture::start().await?;
    let ns = f.ns.name();
    let (repo, _, second) = deployed_app(&f).await?;
    let head = repo.head()?;
    let image = second.reference();
    let dir = tempfile::tempdir()?;

    let viewer = format!("viewer-{ns}");
    release_role(&f, "viewer", &viewer, false).await?;
    let kubeconfig = impersonating(&f, &viewer, dir.path())?;
    let out = release_web(&f, &kubeconfig, &image, &[]).await?;
    let why = format!("you may not patch Deployment/{ns}/web (RBAC), so you may not release it");
    refused(&repo, &head, out, &why)?;

    // May patch it, but not read the GitRepository's Secret (nor the ImageRepository's: the
    // tag check is skipped).
    let deployer = format!("deployer-{ns}");
    release_role(&f, "deployer", &deployer, true).await?;
    let kubeconfig = impersonating(&f, &deployer, dir.path())?;
    let out = release_web(&f, &kubeconfig, &image, &["--skip-tag-check"]).await?;
    let why = format!("you may not read Secret '{ns}/git-auth' of GitRepository '{ns}/app' (RBAC)");
    refused(&repo, &head, out, &why)?;
    Ok(())
}
