//! The image controller benchmark (run by `e2e/bench/image.sh`).

use anyhow::Result;
use serde_json::json;
use weir_api::ImageRepository;
use weir_e2e::{Harness, unique_name, wait_until};

use crate::fixture::*;

/// `VmRSS` or `VmHWM` of this process, in KiB.
fn proc_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_default()
}

/// Tags `1.<i/100>.<i%100>` for `i` in `0..n` on repository `name`, all pointing at one
/// manifest (a PUT of the manifest per tag, 32 at a time).
async fn tag_many(name: &str, n: usize) -> Result<String> {
    let registry = Harness::get().await?.registry();
    let first = registry.push_image(name, "0.0.1").await?;
    let client = weir_e2e::Registry::client();
    let auth = oci_client::secrets::RegistryAuth::Anonymous;
    let base = oci_client::Reference::with_tag(
        registry.host().to_owned(),
        name.to_owned(),
        "0.0.1".into(),
    );
    let (manifest, _) = client.pull_manifest(&base, &auth).await?;
    let tags: Vec<String> = (0..n)
        .map(|i| format!("1.{}.{}", i / 100, i % 100))
        .collect();
    for chunk in tags.chunks(32) {
        let mut set = tokio::task::JoinSet::new();
        for tag in chunk {
            let (client, manifest) = (client.clone(), manifest.clone());
            let reference = oci_client::Reference::with_tag(
                registry.host().to_owned(),
                name.to_owned(),
                tag.clone(),
            );
            set.spawn(async move { client.push_manifest(&reference, &manifest).await });
        }
        while let Some(done) = set.join_next().await {
            done??;
        }
    }
    Ok(first.repository)
}

/// The mean time of 20 evaluations of each policy kind over `tags`, in-process.
fn time_policies(tags: &[Box<str>]) -> Result<Vec<(&'static str, std::time::Duration)>> {
    let mut evaluations = vec![];
    for (kind, policy) in [
        (
            "semver >=1.0.0",
            json!({ "semver": { "range": ">=1.0.0" } }),
        ),
        ("alphabetical", json!({ "alphabetical": {} })),
        ("numerical + filterTags/extract", json!({ "numerical": {} })),
    ] {
        let mut spec = json!({ "imageRepositoryRef": { "name": "app" }, "policy": policy });
        if kind.starts_with("numerical") {
            spec["filterTags"] =
                json!({ "pattern": "^1\\.(?P<minor>[0-9]+)\\.0$", "extract": "$minor" });
        }
        let spec: weir_api::ImagePolicySpec = serde_json::from_value(spec)?;
        let compiled = weir_image::policy::Policy::compile(&spec)?;
        let t = std::time::Instant::now();
        for _ in 0..20 {
            assert!(compiled.latest(tags).is_some());
        }
        evaluations.push((kind, t.elapsed() / 20));
    }

    Ok(evaluations)
}

/// Benchmark (run by `e2e/bench/image.sh`, ignored otherwise): a repository with
/// `WEIR_BENCH_IMAGE_TAGS` (10,000) tags — scan time, policy evaluation time, the memory the
/// process grew by and its peak RSS, and the time from a new tag to the pushed commit.
#[tokio::test]
#[ignore = "benchmark: run by e2e/bench/image.sh"]
async fn bench_ten_thousand_tags() -> Result<()> {
    let n: usize = std::env::var("WEIR_BENCH_IMAGE_TAGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let name = unique_name("bench", 50);
    let t = std::time::Instant::now();
    let image = tag_many(&name, n).await?;
    let tagging = t.elapsed();

    let f = Fixture::start().await?;
    let rss_before = proc_status_kib("VmRSS:");
    let t = std::time::Instant::now();
    f.repository(
        "app",
        json!({ "image": image, "interval": "1h", "insecure": true }),
    )
    .await?;
    let repo: ImageRepository = f.wait_ready("app", "True", None).await?;
    let scan = t.elapsed();
    let count = repo.status.unwrap().last_scan_result.unwrap().tag_count;
    assert_eq!(count, i64::try_from(n + 1)?);
    let rss_after_scan = proc_status_kib("VmRSS:");

    // Policy evaluation, in-process over the shared list: the mean of 20 runs per kind.
    let tags = f
        .controller
        .store
        .get(f.ns.name(), "app")
        .unwrap()
        .tags
        .clone();
    let bytes: usize = tags
        .iter()
        .map(|t| t.len() + std::mem::size_of::<Box<str>>())
        .sum();
    let evaluations = time_policies(&tags)?;

    // New tag → commit pushed.
    f.policy(
        "app",
        json!({ "imageRepositoryRef": { "name": "app" }, "policy": { "semver": { "range": ">=1.0.0" } } }),
    )
    .await?;
    let highest = format!("1.{}.{}", (n - 1) / 100, (n - 1) % 100);
    f.latest_tag("app", &highest).await?;
    let deploy = DEPLOY.replace("IMAGE", &image).replace("NS", f.ns.name());
    let git = f.git_source(&[("apps/deploy.yaml", &deploy)]).await?;
    f.automation("auto", automation_spec(None)).await?;
    f.wait_pushed("auto", || git.head().unwrap()).await?;
    let t = std::time::Instant::now();
    Harness::get()
        .await?
        .registry()
        .push_image(&name, "2.0.0")
        .await?;
    f.request_reconcile::<ImageRepository>("app", "new-tag")
        .await?;
    let before = git.head()?;
    wait_until("the automation to push 2.0.0", || {
        let git = &git;
        let before = &before;
        async move {
            let head = git.head().map_err(|e| e.to_string())?;
            if head == *before {
                return Err("not yet".to_owned());
            }
            Ok(head)
        }
    })
    .await?;
    let to_commit = t.elapsed();

    println!("image controller, one repository with {n} tags (+1), registry over HTTP");
    println!(
        "  tagging the registry (setup, not Weir):     {:.1} s",
        tagging.as_secs_f64()
    );
    println!(
        "  scan (create → Ready, {count} tags):        {:.2} s",
        scan.as_secs_f64()
    );
    println!(
        "  shared tag list (tags + boxes):             {} KiB",
        bytes / 1024
    );
    for (kind, took) in evaluations {
        println!(
            "  policy evaluation, {kind}: {:.2} ms",
            took.as_secs_f64() * 1000.0
        );
    }
    println!(
        "  process RSS grew by (scan):                 {} MiB",
        rss_after_scan.saturating_sub(rss_before) / 1024
    );
    println!(
        "  process peak RSS (test + all controllers):  {} MiB",
        proc_status_kib("VmHWM:") / 1024
    );
    println!(
        "  new tag → commit pushed (rescan on request): {:.2} s",
        to_commit.as_secs_f64()
    );
    Ok(())
}
