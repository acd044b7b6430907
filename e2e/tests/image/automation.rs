//! ImageUpdateAutomation: markers rewritten in git, committed and pushed.

use std::sync::atomic::Ordering;

use anyhow::Result;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use weir_api::{ImagePolicy, condition::find_condition, reasons, types};
use weir_e2e::{Harness, wait_until};

use crate::fixture::*;

#[tokio::test]
async fn automation_rewrites_only_the_marked_values_and_pushes_one_commit() -> Result<()> {
    let f = Fixture::start().await?;
    let image = f
        .image_and_policy(&["1.0.0", "1.1.0", "2.0.0"], "1.x")
        .await?;
    let before = DEPLOY.replace("IMAGE", &image).replace("NS", f.ns.name());
    let outside = "image: x:1 # {\"$imagepolicy\": \"NS:app\"}\n".replace("NS", f.ns.name());
    let repo = f
        .git_source(&[
            ("apps/deploy.yaml", &before),
            ("other/outside.yaml", &outside),
        ])
        .await?;
    let initial = repo.head()?;
    f.latest_tag("app", "1.1.0").await?;
    f.automation(
        "auto",
        automation_spec(Some(
            "Update {{ .AutomationObject }}\n{{ range .Changed.Changes }}\n- {{ .Setter }}: {{ .OldValue }} -> {{ .NewValue }}{{ end }}\n",
        )),
    )
    .await?;
    let pushed = f.wait_pushed("auto", || repo.head().unwrap()).await?;

    // Exactly the marked values changed, byte for byte; the file outside update.path did not.
    let expected = before
        .replace(
            &format!("\"{image}:1.0.0\" #"),
            &format!("\"{image}:1.1.0\" #"),
        )
        .replace("tag: '1.0.0'", "tag: '1.1.0'");
    assert_eq!(git_in(&repo, &["show", "main:apps/deploy.yaml"]), expected);
    assert_eq!(git_in(&repo, &["show", "main:other/outside.yaml"]), outside);
    // One commit on top of the initial one, by the configured author, with the rendered message.
    assert_eq!(git_in(&repo, &["rev-parse", "main~1"]).trim(), initial);
    let log = git_in(&repo, &["log", "-1", "--format=%an <%ae>%n%B", "main"]);
    let ns = f.ns.name();
    assert_eq!(
        log,
        format!(
            "Weir Bot <bot@weir.invalid>\nUpdate {ns}/auto\n\n- {ns}:app: {image}:1.0.0 -> {image}:1.1.0\n- {ns}:app:tag: 1.0.0 -> 1.1.0\n\n"
        )
    );
    let auto = f
        .wait_ready::<weir_api::ImageUpdateAutomation>("auto", "True", None)
        .await?;
    let status = auto.status.unwrap();
    assert_eq!(status.last_push_commit.as_deref(), Some(pushed.as_str()));
    assert_eq!(status.observed_policies["app"].tag, "1.1.0");
    assert!(status.last_push_time.is_some() && status.last_automation_run_time.is_some());

    // Nothing changed: a new run commits nothing.
    f.request_reconcile::<weir_api::ImageUpdateAutomation>("auto", "again")
        .await?;
    let api = f.api::<weir_api::ImageUpdateAutomation>();
    wait_until("the second run to be handled", || {
        let api = api.clone();
        async move {
            let a = api.get("auto").await.map_err(|e| e.to_string())?;
            let s = a.status.unwrap_or_default();
            let ready = find_condition(&s.conditions, types::READY).cloned();
            match (s.last_handled_reconcile_at.as_deref(), ready) {
                (Some("again"), Some(c)) if c.message == "repository up-to-date" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await?;
    assert_eq!(repo.head()?, pushed, "no commit when nothing changed");
    assert_eq!(f.controller.metrics.pushes.load(Ordering::Relaxed), 1);
    Ok(())
}

/// A pre-receive hook that, on the first push only, lands someone else's commit on `main`
/// first (outside the push's quarantine), so that push is rejected because the branch moved.
const RACE_HOOK: &str = r#"#!/bin/sh
[ -e "$GIT_DIR/weir-raced" ] && exit 0
touch "$GIT_DIR/weir-raced"
unset GIT_QUARANTINE_PATH GIT_OBJECT_DIRECTORY GIT_ALTERNATE_OBJECT_DIRECTORIES
old=$(git rev-parse refs/heads/main)
blob=$(echo "someone else's change" | git hash-object -w --stdin)
tree=$( (git ls-tree "$old"; printf '100644 blob %s\tOTHER.md\n' "$blob") | git mktree)
new=$(echo "Someone else's commit" | GIT_AUTHOR_NAME=Other GIT_AUTHOR_EMAIL=other@weir.invalid \
  GIT_COMMITTER_NAME=Other GIT_COMMITTER_EMAIL=other@weir.invalid git commit-tree "$tree" -p "$old")
git update-ref refs/heads/main "$new" "$old"
exit 0
"#;

#[tokio::test]
async fn a_push_race_ends_with_both_commits_in_history() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::start().await?;
    let image = f.image_and_policy(&["1.0.0", "1.2.0"], "*").await?;
    let before = DEPLOY.replace("IMAGE", &image).replace("NS", f.ns.name());
    let repo = f.git_source(&[("apps/deploy.yaml", &before)]).await?;
    let hook = repo.path().join("hooks/pre-receive");
    std::fs::write(&hook, RACE_HOOK)?;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755))?;
    f.latest_tag("app", "1.2.0").await?;
    f.automation("auto", automation_spec(None)).await?;
    f.wait_pushed("auto", || repo.head().unwrap()).await?;

    let log = git_in(&repo, &["log", "--format=%an: %s", "main"]);
    assert_eq!(
        log,
        "Weir Bot: Update from image update automation\nOther: Someone else's commit\nWeir E2E: Initial commit\n",
        "never forced: the other commit stays, the update lands on top of it"
    );
    assert!(git_in(&repo, &["show", "main:apps/deploy.yaml"]).contains(&format!("{image}:1.2.0")));
    assert!(git_in(&repo, &["show", "main:OTHER.md"]).contains("someone else"));
    assert_eq!(f.controller.metrics.push_retries.load(Ordering::Relaxed), 1);
    let body = git_in(&repo, &["log", "-1", "--format=%b", "main"]);
    assert!(
        body.contains(&format!(
            "apps/deploy.yaml:12 {}:app: {image}:1.0.0 -> {image}:1.2.0",
            f.ns.name()
        )),
        "the default message says which policy changed what: {body}"
    );
    Ok(())
}

#[tokio::test]
async fn automation_pushes_to_another_branch_when_asked() -> Result<()> {
    let f = Fixture::start().await?;
    let image = f.image_and_policy(&["1.0.0", "1.3.0"], "*").await?;
    let before = DEPLOY.replace("IMAGE", &image).replace("NS", f.ns.name());
    let repo = f.git_source(&[("apps/deploy.yaml", &before)]).await?;
    let main = repo.head()?;
    f.latest_tag("app", "1.3.0").await?;
    let mut spec = automation_spec(None);
    spec["git"]["push"] = json!({ "branch": "image-updates" });
    f.automation("auto", spec).await?;
    f.wait_pushed("auto", || {
        repo.branch_head("image-updates").unwrap_or_default()
    })
    .await?;
    assert_eq!(repo.head()?, main, "main is left alone");
    assert_eq!(
        git_in(&repo, &["rev-parse", "image-updates~1"]).trim(),
        main
    );
    Ok(())
}

#[tokio::test]
async fn automation_failures_give_their_reasons() -> Result<()> {
    let f = Fixture::start().await?;
    f.image_and_policy(&["1.0.0"], "*").await?;
    let bad_marker =
        "kind: X\nimage: x # {\"$imagepolicy\": \"NS:app:size\"}\n".replace("NS", f.ns.name());
    let repo = f.git_source(&[("apps/bad.yaml", &bad_marker)]).await?;
    let head = repo.head()?;
    f.latest_tag("app", "1.0.0").await?;

    f.automation("marker", automation_spec(None)).await?;
    let a: weir_api::ImageUpdateAutomation =
        f.wait_ready_any("marker", reasons::INVALID_MARKER).await?;
    let message = ready_message(&a.status.unwrap().conditions);
    assert!(message.contains("apps/bad.yaml:2"), "{message}");

    f.automation("template", automation_spec(Some("{{ .Updated.Images }}")))
        .await?;
    let a = f
        .wait_ready_any("template", reasons::INVALID_MESSAGE_TEMPLATE)
        .await?;
    let message = ready_message(&a.status.unwrap().conditions);
    assert!(message.contains("Updated"), "{message}");

    let mut spec = automation_spec(None);
    spec["sourceRef"]["name"] = json!("absent");
    f.automation("no-source", spec).await?;
    f.wait_ready_any("no-source", reasons::INVALID_SOURCE_CONFIGURATION)
        .await?;

    let mut spec = automation_spec(None);
    spec["update"]["path"] = json!("../outside");
    f.automation("bad-path", spec).await?;
    f.wait_ready_any("bad-path", reasons::INVALID_SPEC).await?;

    assert_eq!(repo.head()?, head, "nothing was pushed");
    let password = Harness::get().await?.git().http_password().to_owned();
    let all = f
        .api::<weir_api::ImageUpdateAutomation>()
        .list(&kube::api::ListParams::default())
        .await?;
    assert!(!serde_json::to_string(&all)?.contains(&password));
    Ok(())
}

/// `--no-cross-namespace-refs`: an automation's source in another namespace is refused before
/// it is read; one in its own namespace is looked up as usual.
#[tokio::test]
async fn lockdown_blocks_an_automations_source_in_another_namespace() -> Result<()> {
    let f = Fixture::start_with(weir_image::Config {
        no_cross_namespace_refs: true,
        ..weir_image::Config::default()
    })
    .await?;
    let mut spec = automation_spec(None);
    spec["sourceRef"] = json!({ "kind": "GitRepository", "name": "app", "namespace": "default" });
    f.automation("elsewhere", spec).await?;
    let a = f
        .wait_ready_any("elsewhere", reasons::ACCESS_DENIED)
        .await?;
    assert_eq!(
        ready_message(&a.status.unwrap().conditions),
        "can't access 'GitRepository/default/app', cross-namespace references have been blocked"
    );
    let mut spec = automation_spec(None);
    spec["sourceRef"] =
        json!({ "kind": "GitRepository", "name": "absent", "namespace": f.ns.name() });
    f.automation("own", spec).await?;
    f.wait_ready_any("own", reasons::INVALID_SOURCE_CONFIGURATION)
        .await?;
    Ok(())
}

#[tokio::test]
async fn automation_pushes_over_ssh_with_the_sources_identity() -> Result<()> {
    let f = Fixture::start().await?;
    let image = f.image_and_policy(&["1.0.0", "1.4.0"], "*").await?;
    let before = DEPLOY.replace("IMAGE", &image).replace("NS", f.ns.name());
    let repo = f.git_source(&[("apps/deploy.yaml", &before)]).await?;
    let git = Harness::get().await?.git();
    f.api::<Secret>()
        .create(&PostParams::default(), &git.ssh_secret("ssh-auth")?)
        .await?;
    f.api::<weir_api::GitRepository>()
        .patch(
            "fleet",
            &PatchParams::default(),
            &Patch::Merge(
                &json!({ "spec": { "url": repo.ssh_url(), "secretRef": { "name": "ssh-auth" } } }),
            ),
        )
        .await?;
    f.latest_tag("app", "1.4.0").await?;
    f.automation("auto", automation_spec(None)).await?;
    f.wait_pushed("auto", || repo.head().unwrap()).await?;
    assert!(git_in(&repo, &["show", "main:apps/deploy.yaml"]).contains(&format!("{image}:1.4.0")));
    let identity = std::fs::read_to_string(git.ssh_identity())?;
    let key_line = identity.lines().nth(1).unwrap_or_default().to_owned();
    let events =
        Api::<k8s_openapi::api::core::v1::Event>::namespaced(f.client.clone(), f.ns.name())
            .list(&kube::api::ListParams::default())
            .await?;
    assert!(
        !serde_json::to_string(&events)?.contains(&key_line),
        "the key leaked into an event"
    );
    Ok(())
}

#[tokio::test]
async fn policy_selector_limits_the_policies_an_automation_applies() -> Result<()> {
    let f = Fixture::start().await?;
    let image = f.image_and_policy(&["1.0.0", "1.5.0"], "*").await?;
    f.policy(
        "pinned",
        json!({ "imageRepositoryRef": { "name": "app" }, "policy": { "semver": { "range": "1.0.x" } } }),
    )
    .await?;
    f.api::<ImagePolicy>()
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(&json!({ "metadata": { "labels": { "automate": "yes" } } })),
        )
        .await?;
    let ns = f.ns.name();
    let files = format!(
        "a: {image}:0.1 # {{\"$imagepolicy\": \"{ns}:app\"}}\nb: {image}:0.1 # {{\"$imagepolicy\": \"{ns}:pinned\"}}\n"
    );
    let repo = f.git_source(&[("apps/images.yaml", &files)]).await?;
    f.latest_tag("app", "1.5.0").await?;
    f.latest_tag("pinned", "1.0.0").await?;
    let mut spec = automation_spec(None);
    spec["policySelector"] = json!({ "matchLabels": { "automate": "yes" } });
    f.automation("auto", spec).await?;
    f.wait_pushed("auto", || repo.head().unwrap()).await?;
    assert_eq!(
        git_in(&repo, &["show", "main:apps/images.yaml"]),
        files.replacen(&format!("{image}:0.1"), &format!("{image}:1.5.0"), 1),
        "only the selected policy's marker changed"
    );
    let auto = f
        .api::<weir_api::ImageUpdateAutomation>()
        .get("auto")
        .await?;
    let observed = auto.status.unwrap().observed_policies;
    assert_eq!(observed.keys().collect::<Vec<_>>(), ["app"]);
    Ok(())
}

/// A pre-receive hook that lands another commit before every push, so every push is rejected.
const ALWAYS_RACE_HOOK: &str = r#"#!/bin/sh
unset GIT_QUARANTINE_PATH GIT_OBJECT_DIRECTORY GIT_ALTERNATE_OBJECT_DIRECTORIES
old=$(git rev-parse refs/heads/main)
new=$(echo "Busy" | GIT_AUTHOR_NAME=Other GIT_AUTHOR_EMAIL=other@weir.invalid \
  GIT_COMMITTER_NAME=Other GIT_COMMITTER_EMAIL=other@weir.invalid \
  git commit-tree "$(git rev-parse "$old^{tree}")" -p "$old")
git update-ref refs/heads/main "$new" "$old"
exit 0
"#;

#[tokio::test]
async fn a_branch_that_keeps_moving_gives_push_rejected_and_is_never_forced() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::start().await?;
    let image = f.image_and_policy(&["1.0.0", "1.6.0"], "*").await?;
    let before = DEPLOY.replace("IMAGE", &image).replace("NS", f.ns.name());
    let repo = f.git_source(&[("apps/deploy.yaml", &before)]).await?;
    let hook = repo.path().join("hooks/pre-receive");
    std::fs::write(&hook, ALWAYS_RACE_HOOK)?;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755))?;
    f.latest_tag("app", "1.6.0").await?;
    f.automation("auto", automation_spec(None)).await?;
    let auto = f.wait_ready_any("auto", reasons::PUSH_REJECTED).await?;
    let message = ready_message(&auto.status.unwrap().conditions);
    assert!(
        message.contains("'main'") && message.contains("5 times"),
        "{message}"
    );
    let authors = git_in(&repo, &["log", "--format=%an", "main"]);
    assert!(
        !authors.contains("Weir Bot"),
        "nothing of ours landed: {authors}"
    );
    // Five attempts, each beaten by another commit (more once the automation retries later).
    assert!(
        authors.lines().filter(|a| *a == "Other").count() >= 5,
        "{authors}"
    );
    Ok(())
}
