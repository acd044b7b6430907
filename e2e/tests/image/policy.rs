//! ImagePolicies choosing from the scanned tags: semver, alphabetical and numerical policies,
//! filters, digest reflection, and a restarted controller.

use std::sync::atomic::Ordering;

use anyhow::Result;
use serde_json::json;
use weir_api::{ImagePolicy, ImageRepository, condition::find_condition, reasons, types};
use weir_e2e::{Harness, unique_name, wait_until};

use crate::fixture::*;

#[tokio::test]
async fn semver_policy_picks_the_highest_tag_in_range_and_follows_new_tags() -> Result<()> {
    let f = Fixture::start().await?;
    let image = push_tags(
        "semver",
        &["1.0.0", "1.2.0", "v1.3.0", "2.0.0", "1.4.0-rc.1", "latest"],
    )
    .await?;
    f.repository(
        "app",
        json!({ "image": image, "interval": "1h", "insecure": true }),
    )
    .await?;
    let repo: ImageRepository = f.wait_ready("app", "True", None).await?;
    let scan = repo.status.clone().unwrap();
    assert_eq!(scan.canonical_image_name.as_deref(), Some(image.as_str()));
    let result = scan.last_scan_result.unwrap();
    assert_eq!(result.tag_count, 6);
    assert_eq!(result.latest_tags[0], "v1.3.0", "descending alphabetical");
    assert_eq!(scan.observed_exclusion_list, [r"^.*\.sig$"]);

    f.policy(
        "app",
        json!({
            "imageRepositoryRef": { "name": "app" },
            "policy": { "semver": { "range": ">=1.0.0 <2.0.0" } },
        }),
    )
    .await?;
    let policy = f.latest_tag("app", "v1.3.0").await?;
    let latest = policy.status.clone().unwrap().latest_ref.unwrap();
    assert_eq!(latest.name, image);
    assert_eq!(latest.digest, None, "no digest unless reflection is on");
    f.wait_ready::<ImagePolicy>("app", "True", Some(reasons::SUCCEEDED))
        .await?;

    // A new tag in range: rescan on request, and the policy follows with its previous pick kept.
    Harness::get()
        .await?
        .registry()
        .push_image(image.rsplit_once('/').unwrap().1, "1.5.0")
        .await?;
    f.request_reconcile::<ImageRepository>("app", "rescan-1")
        .await?;
    let policy = f.latest_tag("app", "1.5.0").await?;
    assert_eq!(
        policy.status.unwrap().observed_previous_ref.unwrap().tag,
        "v1.3.0"
    );
    assert!(
        f.controller
            .metrics
            .policy_evaluations
            .load(Ordering::Relaxed)
            >= 2
    );
    Ok(())
}

#[tokio::test]
async fn a_restarted_controller_keeps_policies_ready_while_it_rescans() -> Result<()> {
    let mut f = Fixture::start().await?;
    let image = push_tags("restart", &["1.0.0", "1.1.0"]).await?;
    f.repository(
        "app",
        json!({ "image": image, "interval": "1h", "insecure": true }),
    )
    .await?;
    f.policy(
        "app",
        json!({ "imageRepositoryRef": { "name": "app" }, "policy": { "semver": { "range": "*" } } }),
    )
    .await?;
    f.latest_tag("app", "1.1.0").await?;
    let ready = |p: &ImagePolicy| {
        find_condition(&p.conditions(), types::READY)
            .cloned()
            .unwrap()
    };
    let before: ImagePolicy = f.wait_ready("app", "True", None).await?;
    let scanned_before = f.api::<ImageRepository>().get("app").await?.status.unwrap();

    // A new process: its tag lists are empty until the repositories are scanned again. (Scan
    // times have whole seconds: let one pass so the rescan is seen.)
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    f.controller.abort();
    f.controller = weir_image::start(
        f.client.clone(),
        weir_image::Config {
            namespace: Some(f.ns.name().to_owned()),
            ..weir_image::Config::default()
        },
        false,
    )
    .await?;
    let api = f.api::<ImageRepository>();
    let previous_scan = scanned_before.last_scan_result.unwrap().scan_time;
    wait_until("the repository to be scanned again", || {
        let api = api.clone();
        let previous_scan = previous_scan.clone();
        async move {
            let r = api.get("app").await.map_err(|e| e.to_string())?;
            let scan = r
                .status
                .and_then(|s| s.last_scan_result)
                .and_then(|s| s.scan_time);
            if scan == previous_scan {
                Err("not rescanned".to_owned())
            } else {
                Ok(())
            }
        }
    })
    .await?;
    let after: ImagePolicy = f.wait_ready("app", "True", None).await?;
    assert_eq!(
        ready(&after).last_transition_time,
        ready(&before).last_transition_time,
        "Ready never left True"
    );
    assert_eq!(after.status.unwrap().latest_ref.unwrap().tag, "1.1.0");
    Ok(())
}

#[tokio::test]
async fn digest_reflection_records_the_digest_of_the_chosen_tag() -> Result<()> {
    let f = Fixture::start().await?;
    let registry = Harness::get().await?.registry();
    let name = unique_name("digest", 50);
    registry.push_image(&name, "1.0.0").await?;
    let pushed = registry.push_image(&name, "1.1.0").await?;
    f.repository(
        "app",
        json!({ "image": pushed.repository, "interval": "1h", "insecure": true }),
    )
    .await?;
    f.policy(
        "app",
        json!({
            "imageRepositoryRef": { "name": "app" },
            "digestReflectionPolicy": "IfNotPresent",
            "policy": { "semver": { "range": "1.x" } },
        }),
    )
    .await?;
    let policy = f.latest_tag("app", "1.1.0").await?;
    assert_eq!(
        policy.status.unwrap().latest_ref.unwrap().digest,
        Some(pushed.digest)
    );
    Ok(())
}

#[tokio::test]
async fn digest_reflection_always_follows_a_tag_pushed_again() -> Result<()> {
    let f = Fixture::start().await?;
    let registry = Harness::get().await?.registry();
    let name = unique_name("always", 50);
    let first = registry.push_image(&name, "1.0.0").await?;
    let other = registry.push_image(&name, "other").await?;
    f.repository(
        "app",
        json!({ "image": first.repository, "interval": "1h", "insecure": true }),
    )
    .await?;
    for (policy, reflection) in [("always", "Always"), ("once", "IfNotPresent")] {
        let mut spec = json!({
            "imageRepositoryRef": { "name": "app" },
            "digestReflectionPolicy": reflection,
            "policy": { "semver": { "range": "1.x" } },
        });
        if reflection == "Always" {
            spec["interval"] = json!("1s");
        }
        f.policy(policy, spec).await?;
        let p = f.latest_tag(policy, "1.0.0").await?;
        assert_eq!(
            p.status.unwrap().latest_ref.unwrap().digest.as_ref(),
            Some(&first.digest)
        );
    }

    // Push the other image's manifest as 1.0.0.
    let client = weir_e2e::Registry::client();
    let auth = oci_client::secrets::RegistryAuth::Anonymous;
    let at = |tag: &str| {
        oci_client::Reference::with_tag(registry.host().to_owned(), name.clone(), tag.to_owned())
    };
    let (manifest, _) = client.pull_manifest(&at("other"), &auth).await?;
    client.push_manifest(&at("1.0.0"), &manifest).await?;

    let api = f.api::<ImagePolicy>();
    let moved = wait_until("the Always policy to see the new digest", || {
        let api = api.clone();
        let want = other.digest.clone();
        async move {
            let p = api.get("always").await.map_err(|e| e.to_string())?;
            let digest = p
                .status
                .clone()
                .and_then(|s| s.latest_ref)
                .and_then(|r| r.digest);
            if digest.as_ref() == Some(&want) {
                Ok(p)
            } else {
                Err(format!("digest {digest:?}"))
            }
        }
    })
    .await?;
    let status = moved.status.unwrap();
    assert_eq!(
        status.observed_previous_ref.unwrap().digest,
        Some(first.digest.clone())
    );
    let once = f.api::<ImagePolicy>().get("once").await?;
    assert_eq!(
        once.status.unwrap().latest_ref.unwrap().digest,
        Some(first.digest),
        "IfNotPresent keeps the digest it found"
    );
    Ok(())
}

#[tokio::test]
async fn alphabetical_and_numerical_policies_with_filter_and_extract() -> Result<()> {
    let f = Fixture::start().await?;
    let image = push_tags(
        "filter",
        &[
            "main-abc123-1700000005",
            "main-def456-1700000010",
            "main-fff999-900000000",
            "dev-aaa111-1800000000",
            "RELEASE.2024-01-01T00-00-00Z",
            "RELEASE.2024-03-01T00-00-00Z",
        ],
    )
    .await?;
    f.repository(
        "app",
        json!({ "image": image, "interval": "1h", "insecure": true }),
    )
    .await?;
    f.policy(
        "numeric",
        json!({
            "imageRepositoryRef": { "name": "app" },
            "filterTags": { "pattern": "^main-[a-f0-9]+-(?P<ts>[0-9]+)$", "extract": "$ts" },
            "policy": { "numerical": { "order": "asc" } },
        }),
    )
    .await?;
    f.policy(
        "oldest",
        json!({
            "imageRepositoryRef": { "name": "app" },
            "filterTags": { "pattern": "^main-[a-f0-9]+-(?P<ts>[0-9]+)$", "extract": "$ts" },
            "policy": { "numerical": { "order": "desc" } },
        }),
    )
    .await?;
    f.policy(
        "release",
        json!({
            "imageRepositoryRef": { "name": "app" },
            "filterTags": { "pattern": "^RELEASE\\.(?P<timestamp>.*)Z$", "extract": "$timestamp" },
            "policy": { "alphabetical": { "order": "asc" } },
        }),
    )
    .await?;
    f.latest_tag("numeric", "main-def456-1700000010").await?;
    f.latest_tag("oldest", "main-fff999-900000000").await?;
    f.latest_tag("release", "RELEASE.2024-03-01T00-00-00Z")
        .await?;
    // The three policies read the repository's one tag list.
    let scan = f.controller.store.get(f.ns.name(), "app").unwrap();
    assert_eq!(scan.tags.len(), 6);
    Ok(())
}

#[tokio::test]
async fn latest_ref_names_the_image_as_the_repository_writes_it() -> Result<()> {
    let registry = Harness::get().await?.registry();
    // Docker Hub's short names, read through a mirror (the harness registry) of docker.io.
    let mirror = format!("docker.io={}", registry.host());
    let f = Fixture::start_with(weir_image::Config {
        mirrors: weir_image::scan::Mirrors::parse([mirror.as_str()]).map_err(anyhow::Error::msg)?,
        ..weir_image::Config::default()
    })
    .await?;
    let app = unique_name("hub", 40);
    registry
        .push_image(&format!("library/{app}"), "1.0.0")
        .await?;
    let pushed = registry
        .push_image(&format!("library/{app}"), "1.1.0")
        .await?;
    let direct = push_tags("direct", &["2.0.0"]).await?;
    let cases = [
        ("short", app.clone(), "1.1.0"),
        ("library", format!("library/{app}"), "1.1.0"),
        ("hub", format!("docker.io/library/{app}"), "1.1.0"),
        ("hostport", direct.clone(), "2.0.0"),
    ];
    for (name, image, _) in &cases {
        f.repository(
            name,
            json!({ "image": image, "interval": "1h", "insecure": true }),
        )
        .await?;
        f.policy(
            name,
            json!({
                "imageRepositoryRef": { "name": name },
                "digestReflectionPolicy": "IfNotPresent",
                "policy": { "semver": { "range": ">=1.0.0" } },
            }),
        )
        .await?;
    }
    for (name, image, tag) in &cases {
        let repo: ImageRepository = f.wait_ready(name, "True", None).await?;
        let _: ImagePolicy = f.wait_ready(name, "True", None).await?;
        let policy = f.latest_tag(name, tag).await?;
        let latest = policy.status.unwrap().latest_ref.unwrap();
        assert_eq!(&latest.name, image, "{name}: latestRef.name as written");
        let canonical = repo.status.unwrap().canonical_image_name.unwrap();
        if *name == "hostport" {
            assert_eq!(&canonical, image);
        } else {
            assert_eq!(canonical, format!("index.docker.io/library/{app}"));
            assert_eq!(
                latest.digest.as_deref(),
                Some(pushed.digest.as_str()),
                "{name}: the digest is read through the mirror"
            );
        }
    }
    Ok(())
}
