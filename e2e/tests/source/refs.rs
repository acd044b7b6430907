//! Which commit a GitRepository follows: branches, tags, semver ranges, names and commits,
//! with Flux's revision format, and the reasons a ref that does not resolve gives.

use anyhow::Result;
use kube::ResourceExt;
use serde_json::json;
use weir_api::{condition::find_condition, reasons, types};

use crate::fixture::*;

#[tokio::test]
async fn a_branch_becomes_an_artifact_served_with_the_advertised_digest() -> Result<()> {
    let f = Fixture::start().await?;
    let (_, git) = harness_repo().await?;
    f.create(
        "app",
        json!({ "url": git.http_url(), "interval": "10m", "ref": { "branch": "main" } }),
    )
    .await?;
    let repo = f.wait_ready("app", "True").await?;
    assert_eq!(revision(&repo), format!("main@sha1:{}", git.head()?));
    assert_eq!(ready_reason(&repo), reasons::SUCCEEDED);
    let conds = &repo.status.as_ref().unwrap().conditions;
    assert!(
        find_condition(conds, types::ARTIFACT_IN_STORAGE).is_some_and(weir_api::Condition::is_true)
    );
    assert!(
        repo.finalizers()
            .contains(&"finalizers.fluxcd.io".to_owned())
    );
    let files = download(&repo).await?;
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        ["README.md", "deploy/configmap.yaml"]
    );
    assert!(files["deploy/configmap.yaml"].contains("kind: ConfigMap"));
    Ok(())
}

#[tokio::test]
async fn without_a_ref_the_master_branch_is_followed_as_in_flux() -> Result<()> {
    let f = Fixture::start().await?;
    // The remote's default branch is `main`: Flux follows `master` all the same.
    let (_, git) = harness_repo().await?;
    f.create_as_written("app", json!({ "url": git.http_url(), "interval": "10m" }))
        .await?;
    let repo = f.wait_ready("app", "False").await?;
    let ready = find_condition(&repo.status.as_ref().unwrap().conditions, types::READY).unwrap();
    assert!(ready.message.contains("master"), "{}", ready.message);

    let master = git.create_branch("master")?;
    f.request_reconcile("app", "master-created").await?;
    let repo = f.wait_ready("app", "True").await?;
    assert_eq!(revision(&repo), format!("master@sha1:{master}"));
    Ok(())
}

#[tokio::test]
async fn tag_semver_name_and_commit_refs_resolve_with_fluxs_revision_format() -> Result<()> {
    let f = Fixture::start().await?;
    let (_, git) = harness_repo().await?;
    let first = git.head()?;
    git.tag("v1.0.0")?;
    git.change()
        .write("deploy/extra.yaml", "kind: List\n")
        .commit("second")?;
    git.annotated_tag("v1.1.0", "release 1.1.0")?;
    let v110 = git.tag_target("v1.1.0")?;
    git.change()
        .write("deploy/rc.yaml", "kind: List\n")
        .commit("rc")?;
    git.tag("v2.0.0-rc.1")?;
    git.create_branch("feature")?;
    let feature = git
        .change()
        .on_branch("feature")
        .write("f.yaml", "kind: List\n")
        .commit("feature work")?;

    f.create(
        "tag",
        json!({ "url": git.http_url(), "interval": "10m", "ref": { "tag": "v1.0.0" } }),
    )
    .await?;
    f.create(
        "semver",
        json!({ "url": git.http_url(), "interval": "10m", "ref": { "semver": ">=1.0.0 <2.0.0" } }),
    )
    .await?;
    f.create(
        "prerelease",
        json!({ "url": git.http_url(), "interval": "10m", "ref": { "semver": ">=2.0.0-0" } }),
    )
    .await?;
    f.create("name", json!({ "url": git.http_url(), "interval": "10m", "ref": { "name": "refs/heads/feature" } })).await?;
    f.create("commit", json!({ "url": git.http_url(), "interval": "10m", "ref": { "branch": "main", "commit": first } })).await?;
    f.create(
        "bare-commit",
        json!({ "url": git.http_url(), "interval": "10m", "ref": { "commit": feature } }),
    )
    .await?;
    // Commit wins over branch, per Flux's precedence: a commit not on the branch is an error.
    f.create("wrong-branch", json!({ "url": git.http_url(), "interval": "10m", "ref": { "branch": "main", "commit": feature } })).await?;

    assert_eq!(
        revision(&f.wait_ready("tag", "True").await?),
        format!("v1.0.0@sha1:{first}")
    );
    let semver = f.wait_ready("semver", "True").await?;
    assert_eq!(revision(&semver), format!("v1.1.0@sha1:{v110}"));
    assert!(download(&semver).await?.contains_key("deploy/extra.yaml"));
    assert_eq!(
        revision(&f.wait_ready("prerelease", "True").await?),
        format!("v2.0.0-rc.1@sha1:{}", git.tag_target("v2.0.0-rc.1")?)
    );
    assert_eq!(
        revision(&f.wait_ready("name", "True").await?),
        format!("refs/heads/feature@sha1:{feature}")
    );
    assert_eq!(
        revision(&f.wait_ready("commit", "True").await?),
        format!("main@sha1:{first}")
    );
    assert_eq!(
        revision(&f.wait_ready("bare-commit", "True").await?),
        format!("sha1:{feature}")
    );
    let wrong = f.wait_ready("wrong-branch", "False").await?;
    assert_eq!(ready_reason(&wrong), reasons::GIT_OPERATION_FAILED);
    Ok(())
}

#[tokio::test]
async fn missing_branches_tags_and_unmatched_ranges_fail_with_a_reason() -> Result<()> {
    let f = Fixture::start().await?;
    let (_, git) = harness_repo().await?;
    f.create(
        "branch",
        json!({ "url": git.http_url(), "interval": "10m", "ref": { "branch": "nope" } }),
    )
    .await?;
    f.create(
        "range",
        json!({ "url": git.http_url(), "interval": "10m", "ref": { "semver": ">=5.0.0" } }),
    )
    .await?;
    f.create(
        "bad-range",
        json!({ "url": git.http_url(), "interval": "10m", "ref": { "semver": ">=x.y.z.w" } }),
    )
    .await?;
    let branch = f.wait_ready("branch", "False").await?;
    assert_eq!(ready_reason(&branch), reasons::GIT_OPERATION_FAILED);
    let msg = find_condition(
        &branch.status.as_ref().unwrap().conditions,
        types::FETCH_FAILED,
    )
    .unwrap()
    .message
    .clone();
    assert!(msg.contains("branch 'nope' not found"), "{msg}");
    let range = f.wait_ready("range", "False").await?;
    let conds = &range.status.as_ref().unwrap().conditions;
    assert!(
        find_condition(conds, types::READY)
            .unwrap()
            .message
            .contains("no tag matches the semver range '>=5.0.0'")
    );
    assert!(
        find_condition(conds, types::RECONCILING).is_some(),
        "a transient failure is retried"
    );
    let bad = f.wait_ready("bad-range", "False").await?;
    let conds = &bad.status.as_ref().unwrap().conditions;
    assert!(
        find_condition(conds, types::STALLED).is_some_and(weir_api::Condition::is_true),
        "a bad range needs a human: {conds:?}"
    );
    Ok(())
}
