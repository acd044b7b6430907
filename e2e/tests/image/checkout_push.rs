//! `git.checkout.ref`, `git.push.refspec`/`options` and `status.observedSourceRevision`.

use anyhow::Result;
use serde_json::json;
use weir_api::reasons;

use crate::fixture::*;

#[tokio::test]
async fn a_semver_checkout_commits_on_the_highest_tag_and_records_the_revisions() -> Result<()> {
    let f = Fixture::start().await?;
    let repo = f.marked_source("1.7.0").await?;
    let v1_1 = repo.tag("v1.1.0")?;
    repo.change().write("NOTE.md", "later").commit("v2")?;
    repo.tag("v2.0.0")?;
    let main = repo.change().write("NOTE.md", "latest").commit("after")?;
    let mut spec = automation_spec(None);
    spec["git"]["checkout"]["ref"] = json!({ "semver": ">=1.0.0 <2.0.0" });
    spec["git"]["push"] = json!({ "branch": "image-updates" });
    f.automation("auto", spec).await?;
    let pushed = f
        .wait_pushed("auto", || {
            repo.branch_head("image-updates").unwrap_or_default()
        })
        .await?;
    assert_eq!(
        git_in(&repo, &["rev-parse", "image-updates~1"]).trim(),
        v1_1,
        "the commit is on the highest tag in the range"
    );
    assert_eq!(repo.head()?, main, "main is left alone");
    let auto = f
        .wait_ready::<weir_api::ImageUpdateAutomation>("auto", "True", None)
        .await?;
    let status = auto.status.unwrap();
    assert_eq!(
        status.observed_source_revision.as_deref(),
        Some(format!("image-updates@sha1:{pushed}").as_str())
    );
    assert_eq!(status.observed_policies["app"].tag, "1.7.0");

    // Nothing left to change: the checkout's revision is recorded, and nothing is pushed.
    let auto = f.wait_handled("auto", "again").await?;
    assert_eq!(
        auto.status.unwrap().observed_source_revision.as_deref(),
        Some(format!("v1.1.0@sha1:{v1_1}").as_str())
    );
    assert_eq!(repo.branch_head("image-updates")?, pushed);
    Ok(())
}

/// A post-receive hook that appends every push option it gets to `push-options` in the
/// repository, one `ref: option` line each.
const PUSH_OPTIONS_HOOK: &str = r#"#!/bin/sh
while read old new ref; do
  i=0
  while [ "$i" -lt "${GIT_PUSH_OPTION_COUNT:-0}" ]; do
    eval "echo \"$ref: \$GIT_PUSH_OPTION_$i\"" >> "$GIT_DIR/push-options"
    i=$((i + 1))
  done
done
exit 0
"#;

#[tokio::test]
async fn a_refspec_is_pushed_with_the_branch_and_push_options_reach_the_server() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::start().await?;
    let repo = f.marked_source("1.8.0").await?;
    // git's receive-pack takes push options only when the repository advertises them.
    git_in(&repo, &["config", "receive.advertisePushOptions", "true"]);
    let hook = repo.path().join("hooks/post-receive");
    std::fs::write(&hook, PUSH_OPTIONS_HOOK)?;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755))?;
    let mut spec = automation_spec(None);
    spec["git"]["push"] = json!({
        "refspec": "refs/heads/main:refs/heads/auto/main",
        "options": { "ci.skip": "", "merge_request.target": "main" },
    });
    f.automation("auto", spec).await?;
    let pushed = f.wait_pushed("auto", || repo.head().unwrap()).await?;
    assert_eq!(
        repo.branch_head("auto/main")?,
        pushed,
        "the refspec was pushed"
    );
    let auto = f
        .wait_ready::<weir_api::ImageUpdateAutomation>("auto", "True", None)
        .await?;
    let message = ready_message(&auto.status.unwrap().conditions);
    assert!(
        message.ends_with(" and refspecs 'refs/heads/main:refs/heads/auto/main'"),
        "{message}"
    );
    let options = std::fs::read_to_string(repo.path().join("push-options"))?;
    assert_eq!(
        options,
        "refs/heads/main: ci.skip=\nrefs/heads/main: merge_request.target=main\n\
         refs/heads/auto/main: ci.skip=\nrefs/heads/auto/main: merge_request.target=main\n",
        "both pushes carry the options"
    );
    Ok(())
}

/// The harness's repositories do not advertise push options unless configured to.
#[tokio::test]
async fn push_options_to_a_server_that_refuses_them_fail_the_push() -> Result<()> {
    let f = Fixture::start().await?;
    let repo = f.marked_source("1.11.0").await?;
    let head = repo.head()?;
    let mut spec = automation_spec(None);
    spec["git"]["push"] = json!({ "options": { "ci.skip": "" } });
    f.automation("auto", spec).await?;
    let a = f
        .wait_ready_any("auto", reasons::GIT_OPERATION_FAILED)
        .await?;
    let message = ready_message(&a.status.unwrap().conditions);
    assert!(
        message.contains("push-options not supported by remote"),
        "{message}"
    );
    assert_eq!(repo.head()?, head, "nothing was pushed");
    Ok(())
}

#[tokio::test]
async fn bad_checkout_or_push_settings_name_the_field_and_push_nothing() -> Result<()> {
    let f = Fixture::start().await?;
    let repo = f.marked_source("1.10.0").await?;
    repo.tag("v1.0.0")?;
    let head = repo.head()?;
    let mut spec = automation_spec(None);
    spec["git"]["checkout"]["ref"] = json!({ "tag": "v1.0.0" });
    f.automation("tag-without-push-branch", spec).await?;
    let a = f
        .wait_ready_any(
            "tag-without-push-branch",
            reasons::INVALID_SOURCE_CONFIGURATION,
        )
        .await?;
    let message = ready_message(&a.status.unwrap().conditions);
    assert!(message.contains("spec.git.push.branch"), "{message}");

    let mut spec = automation_spec(None);
    spec["git"]["checkout"]["ref"] = json!({ "tag": "v9.9.9" });
    spec["git"]["push"] = json!({ "branch": "auto" });
    f.automation("missing-tag", spec).await?;
    let a = f
        .wait_ready_any("missing-tag", reasons::INVALID_SOURCE_CONFIGURATION)
        .await?;
    let message = ready_message(&a.status.unwrap().conditions);
    assert!(message.contains("tag 'v9.9.9' not found"), "{message}");

    // The API server refuses a forcing refspec, naming the field.
    let mut spec = automation_spec(None);
    spec["git"]["push"] = json!({ "refspec": "+refs/heads/main:refs/heads/main" });
    let refused = f
        .create::<weir_api::ImageUpdateAutomation>("ImageUpdateAutomation", "forced", spec)
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("spec.git.push.refspec"), "{refused}");

    assert_eq!(repo.head()?, head, "nothing was pushed");
    assert!(repo.branch_head("auto").is_err(), "nothing was pushed");
    Ok(())
}
