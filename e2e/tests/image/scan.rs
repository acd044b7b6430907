//! ImageRepositories scanning registries: tag list paging, exclusions, auth, plain HTTP, CAs, and
//! the reasons bad inputs give.

use std::sync::atomic::Ordering;

use anyhow::Result;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use weir_api::{ImagePolicy, ImageRepository, condition::find_condition, reasons, types};
use weir_e2e::{Harness, unique_name};

use crate::fixture::*;

/// The harness's registry (Distribution 2.8) ignores `n` and `last` on tag lists and always
/// sends the whole list: the scan must take it as the last page, not ask again or count twice.
#[tokio::test]
async fn a_registry_that_ignores_the_page_size_gives_every_tag_once() -> Result<()> {
    let f = Fixture::start_with_page_size(5).await?;
    let tags: Vec<String> = (0..13).map(|i| format!("1.0.{i}")).collect();
    let refs: Vec<&str> = tags.iter().map(String::as_str).collect();
    let image = push_tags("pages", &refs).await?;
    f.repository(
        "app",
        json!({ "image": image, "interval": "1h", "insecure": true }),
    )
    .await?;
    let repo: ImageRepository = f.wait_ready("app", "True", None).await?;
    assert_eq!(repo.status.unwrap().last_scan_result.unwrap().tag_count, 13);
    assert_eq!(
        f.controller.metrics.tag_pages.load(Ordering::Relaxed),
        1,
        "one request: the longer-than-asked page is the whole list"
    );
    f.policy(
        "app",
        json!({ "imageRepositoryRef": { "name": "app" }, "policy": { "semver": { "range": ">=1.0.0" } } }),
    )
    .await?;
    f.latest_tag("app", "1.0.12").await?;
    Ok(())
}

/// A registry in front of the harness's that pages its tag lists as registries capping `n` do:
/// at most `cap` tags per page, whatever was asked, with a `Link` to the next page when `links`,
/// silently when not. The tags are the real registry's (Distribution 2.x, which ignores `n`).
/// While `failing` is set, every page after the first is a 500.
struct CappingRegistry {
    host: String,
    requests: std::sync::Arc<std::sync::atomic::AtomicU64>,
    failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    _server: tokio::task::JoinHandle<()>,
}

impl CappingRegistry {
    async fn start(cap: usize, links: bool) -> Result<Self> {
        let upstream = Harness::get().await?.registry().host().to_owned();
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (counted, fails) = (requests.clone(), failing.clone());
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
            let (upstream, counted, fails) = (upstream.clone(), counted.clone(), fails.clone());
            async move {
                let later_page = uri.query().is_some_and(|q| q.contains("last="));
                if later_page && fails.load(Ordering::Relaxed) {
                    use axum::response::IntoResponse;
                    return axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response();
                }
                Self::serve(&upstream, &uri, cap, links, &counted).await
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let host = listener.local_addr()?.to_string();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            host,
            requests,
            failing,
            _server: server,
        })
    }

    async fn serve(
        upstream: &str,
        uri: &axum::http::Uri,
        cap: usize,
        links: bool,
        counted: &std::sync::atomic::AtomicU64,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        let path = uri.path();
        if path == "/v2/" {
            return "{}".into_response();
        }
        let Some(name) = path
            .strip_prefix("/v2/")
            .and_then(|p| p.strip_suffix("/tags/list"))
        else {
            return axum::http::StatusCode::NOT_FOUND.into_response();
        };
        counted.fetch_add(1, Ordering::Relaxed);
        let query: std::collections::HashMap<String, String> =
            url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
                .into_owned()
                .collect();
        let asked: usize = query.get("n").and_then(|n| n.parse().ok()).unwrap_or(cap);
        let all = reqwest::get(format!("http://{upstream}/v2/{name}/tags/list"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let all: serde_json::Value = serde_json::from_slice(&all).unwrap();
        let mut tags: Vec<String> = serde_json::from_value(all["tags"].clone()).unwrap();
        tags.sort();
        let after: Vec<String> = tags
            .into_iter()
            .filter(|t| query.get("last").is_none_or(|last| t > last))
            .collect();
        let page: Vec<String> = after.iter().take(asked.min(cap)).cloned().collect();
        let mut response = json!({ "name": name, "tags": page })
            .to_string()
            .into_response();
        if links && after.len() > page.len() {
            let link = format!(
                "</v2/{name}/tags/list?n={cap}&last={}>; rel=\"next\"",
                page.last().unwrap()
            );
            response
                .headers_mut()
                .insert(axum::http::header::LINK, link.parse().unwrap());
        }
        response
    }
}

#[tokio::test]
async fn tag_lists_capped_below_the_page_size_are_read_to_the_end() -> Result<()> {
    let f = Fixture::start().await?;
    let tags: Vec<String> = (0..8).map(|i| format!("1.0.{i}")).collect();
    let refs: Vec<&str> = tags.iter().map(String::as_str).collect();
    let image = push_tags("capped", &refs).await?;
    let name = image.split_once('/').unwrap().1;
    // Pages of 3 where 1000 were asked: 3 + 3 + 2 tags.
    for (repo, links, requests) in [("linked", true, 3), ("silent", false, 4)] {
        let registry = CappingRegistry::start(3, links).await?;
        f.repository(
            repo,
            json!({ "image": format!("{}/{name}", registry.host), "interval": "1h", "insecure": true }),
        )
        .await?;
        let scanned: ImageRepository = f.wait_ready(repo, "True", None).await?;
        assert_eq!(
            scanned.status.unwrap().last_scan_result.unwrap().tag_count,
            8,
            "{repo}: every page read"
        );
        f.policy(
            repo,
            json!({ "imageRepositoryRef": { "name": repo }, "policy": { "semver": { "range": ">=1.0.0" } } }),
        )
        .await?;
        f.latest_tag(repo, "1.0.7").await?;
        // With Link, the page without one is the last; without, one more page past the last
        // tag (empty) ends the list.
        assert_eq!(
            registry.requests.load(Ordering::Relaxed),
            requests,
            "{repo}: tag list requests"
        );
    }
    Ok(())
}

/// A tag list whose later page fails is no tag list: the repository is not Ready and keeps no
/// partial result, and the policy picks nothing from the first page (no stale tag passes for
/// the latest); once the registry answers every page, the newest tag is picked.
#[tokio::test]
async fn a_tag_list_failing_past_its_first_page_gives_no_pick() -> Result<()> {
    let f = Fixture::start().await?;
    let tags: Vec<String> = (0..8).map(|i| format!("1.0.{i}")).collect();
    let refs: Vec<&str> = tags.iter().map(String::as_str).collect();
    let image = push_tags("truncated", &refs).await?;
    let name = image.split_once('/').unwrap().1;
    let registry = CappingRegistry::start(3, true).await?;
    registry.failing.store(true, Ordering::Relaxed);
    f.repository(
        "app",
        json!({ "image": format!("{}/{name}", registry.host), "interval": "1h", "insecure": true }),
    )
    .await?;
    f.policy(
        "app",
        json!({ "imageRepositoryRef": { "name": "app" }, "policy": { "semver": { "range": ">=1.0.0" } } }),
    )
    .await?;
    let failed: ImageRepository = f.wait_ready("app", "False", None).await?;
    let message = ready_message(&failed.conditions());
    assert!(message.contains("500"), "{message}");
    assert!(
        failed.status.unwrap().last_scan_result.is_none(),
        "no partial scan is recorded"
    );
    let policy: ImagePolicy = f
        .wait_ready(
            "app",
            "False",
            Some(weir_api::reasons::DEPENDENCY_NOT_READY),
        )
        .await?;
    assert!(
        policy.status.unwrap().latest_ref.is_none(),
        "no pick from one page"
    );

    registry.failing.store(false, Ordering::Relaxed);
    f.request_reconcile::<ImageRepository>("app", "registry-fixed")
        .await?;
    f.latest_tag("app", "1.0.7").await?;
    Ok(())
}

#[tokio::test]
async fn exclusion_list_drops_matching_tags() -> Result<()> {
    let f = Fixture::start().await?;
    let image = push_tags("exclude", &["1.0.0", "1.1.0", "sha256-abc.sig", "1.2.0"]).await?;
    f.repository(
        "default",
        json!({ "image": image, "interval": "1h", "insecure": true }),
    )
    .await?;
    f.repository(
        "custom",
        json!({ "image": image, "interval": "1h", "insecure": true, "exclusionList": ["^1\\.2\\."] }),
    )
    .await?;
    let d: ImageRepository = f.wait_ready("default", "True", None).await?;
    assert_eq!(d.status.unwrap().last_scan_result.unwrap().tag_count, 3);
    let c: ImageRepository = f.wait_ready("custom", "True", None).await?;
    let c = c.status.unwrap();
    assert_eq!(c.observed_exclusion_list, ["^1\\.2\\."]);
    assert_eq!(
        c.last_scan_result.unwrap().tag_count,
        3,
        "a custom list replaces the default: the .sig tag is kept, 1.2.0 dropped"
    );
    f.policy(
        "custom",
        json!({ "imageRepositoryRef": { "name": "custom" }, "policy": { "semver": { "range": "*" } } }),
    )
    .await?;
    f.latest_tag("custom", "1.1.0").await?;
    Ok(())
}

#[tokio::test]
async fn registry_with_auth_needs_the_docker_config_secret() -> Result<()> {
    let f = Fixture::start().await?;
    let registry = Harness::get().await?.registry_with_auth();
    let name = unique_name("auth", 50);
    let pushed = registry.push_image(&name, "1.0.0").await?;
    let password = registry.credentials().unwrap().password.clone();

    f.repository(
        "anonymous",
        json!({ "image": pushed.repository, "interval": "1h", "insecure": true }),
    )
    .await?;
    let anon: ImageRepository = f
        .wait_ready("anonymous", "False", Some(reasons::AUTHENTICATION_FAILED))
        .await?;
    assert!(anon.status.unwrap().last_scan_result.is_none());

    f.repository(
        "missing-secret",
        json!({ "image": pushed.repository, "interval": "1h", "insecure": true,
                "secretRef": { "name": "nope" } }),
    )
    .await?;
    let missing: ImageRepository = f
        .wait_ready(
            "missing-secret",
            "False",
            Some(reasons::AUTHENTICATION_FAILED),
        )
        .await?;
    let ready = find_condition(&missing.conditions(), types::READY)
        .cloned()
        .unwrap();
    assert!(ready.message.contains("nope"), "{}", ready.message);

    let secret = registry.docker_config_secret("regcred")?;
    f.api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await?;
    f.repository(
        "app",
        json!({ "image": pushed.repository, "interval": "1h", "insecure": true,
                "secretRef": { "name": "regcred" } }),
    )
    .await?;
    f.wait_ready::<ImageRepository>("app", "True", None).await?;
    f.policy(
        "app",
        json!({ "imageRepositoryRef": { "name": "app" },
                "digestReflectionPolicy": "IfNotPresent",
                "policy": { "semver": { "range": "1.x" } } }),
    )
    .await?;
    let policy = f.latest_tag("app", "1.0.0").await?;
    assert_eq!(
        policy.status.unwrap().latest_ref.unwrap().digest,
        Some(pushed.digest),
        "the digest is read with the same credentials"
    );

    // The password is nowhere in status or events.
    for name in ["anonymous", "missing-secret", "app"] {
        let text = serde_json::to_string(&f.api::<ImageRepository>().get(name).await?)?;
        assert!(!text.contains(&password), "{name} leaks the password");
    }
    let events =
        Api::<k8s_openapi::api::core::v1::Event>::namespaced(f.client.clone(), f.ns.name())
            .list(&kube::api::ListParams::default())
            .await?;
    assert!(!serde_json::to_string(&events)?.contains(&password));
    Ok(())
}

/// As Flux's registry client (go-containerregistry) does, a loopback, private or `.local`
/// registry is asked over HTTPS and plain HTTP without `insecure`: the harness registry speaks
/// only HTTP. (That other registries need `insecure` for HTTP is a unit test of scan.rs.)
#[tokio::test]
async fn a_loopback_registry_is_scanned_over_plain_http_without_insecure() -> Result<()> {
    let f = Fixture::start().await?;
    let image = push_tags("https", &["1.0.0", "1.1.0"]).await?;
    f.repository(
        "app",
        json!({ "image": image, "interval": "1h", "timeout": "10s" }),
    )
    .await?;
    let repo: ImageRepository = f.wait_ready("app", "True", None).await?;
    let scan = repo.status.unwrap().last_scan_result.unwrap();
    assert_eq!(scan.tag_count, 2);
    Ok(())
}

#[tokio::test]
async fn an_unusable_ca_names_its_secret() -> Result<()> {
    let f = Fixture::start().await?;
    let image = push_tags("ca", &["1.0.0"]).await?;
    let ca = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("bad-ca".to_owned()),
            ..Default::default()
        },
        string_data: Some([("ca.crt".to_owned(), "not a certificate".to_owned())].into()),
        ..Default::default()
    };
    f.api::<Secret>()
        .create(&PostParams::default(), &ca)
        .await?;
    f.repository(
        "bad-ca",
        json!({ "image": image, "interval": "1h", "certSecretRef": { "name": "bad-ca" } }),
    )
    .await?;
    let bad_ca: ImageRepository = f
        .wait_ready("bad-ca", "False", Some(reasons::AUTHENTICATION_FAILED))
        .await?;
    let message = ready_message(&bad_ca.conditions());
    assert!(
        message.contains("'bad-ca'") && message.contains("ca.crt"),
        "{message}"
    );
    Ok(())
}

#[tokio::test]
async fn bad_inputs_give_their_reasons() -> Result<()> {
    let f = Fixture::start().await?;
    let image = push_tags("bad", &["1.0.0", "1.1.0"]).await?;
    f.repository(
        "app",
        json!({ "image": image, "interval": "1h", "insecure": true }),
    )
    .await?;
    f.repository(
        "tagged",
        json!({ "image": format!("{image}:1.0.0"), "interval": "1h", "insecure": true }),
    )
    .await?;
    f.repository(
        "unreachable",
        json!({ "image": "127.0.0.1:1/nothing/here", "interval": "1h", "insecure": true, "timeout": "10s" }),
    )
    .await?;
    f.repository(
        "bad-exclusion",
        json!({ "image": image, "interval": "1h", "insecure": true, "exclusionList": ["(unclosed"] }),
    )
    .await?;
    f.policy(
        "bad-range",
        json!({ "imageRepositoryRef": { "name": "app" }, "policy": { "semver": { "range": "one point oh" } } }),
    )
    .await?;
    f.policy(
        "bad-pattern",
        json!({ "imageRepositoryRef": { "name": "app" },
                "filterTags": { "pattern": "(unclosed" },
                "policy": { "alphabetical": {} } }),
    )
    .await?;
    f.policy(
        "no-match",
        json!({ "imageRepositoryRef": { "name": "app" }, "policy": { "semver": { "range": ">=5.0.0" } } }),
    )
    .await?;
    f.policy(
        "no-repo",
        json!({ "imageRepositoryRef": { "name": "absent" }, "policy": { "semver": { "range": "*" } } }),
    )
    .await?;

    let tagged: ImageRepository = f
        .wait_ready("tagged", "False", Some(reasons::IMAGE_URL_INVALID))
        .await?;
    assert!(find_condition(&tagged.conditions(), types::STALLED).is_some());
    f.wait_ready::<ImageRepository>("unreachable", "False", Some(reasons::READ_OPERATION_FAILED))
        .await?;
    f.wait_ready::<ImageRepository>("bad-exclusion", "False", Some(reasons::INVALID_SPEC))
        .await?;
    let range: ImagePolicy = f
        .wait_ready("bad-range", "False", Some(reasons::INVALID_POLICY))
        .await?;
    assert!(find_condition(&range.conditions(), types::STALLED).is_some());
    let pattern: ImagePolicy = f
        .wait_ready("bad-pattern", "False", Some(reasons::INVALID_POLICY))
        .await?;
    let message = find_condition(&pattern.conditions(), types::READY)
        .unwrap()
        .message
        .clone();
    assert!(message.contains("filterTags.pattern"), "{message}");
    f.wait_ready::<ImagePolicy>("no-match", "False", Some(reasons::NO_MATCHING_TAG))
        .await?;
    f.wait_ready::<ImagePolicy>("no-repo", "False", Some(reasons::DEPENDENCY_NOT_READY))
        .await?;

    // A policy that was good keeps its last pick when its range turns bad.
    f.policy(
        "good",
        json!({ "imageRepositoryRef": { "name": "app" }, "policy": { "semver": { "range": "1.x" } } }),
    )
    .await?;
    f.latest_tag("good", "1.1.0").await?;
    f.api::<ImagePolicy>()
        .patch(
            "good",
            &PatchParams::default(),
            &Patch::Merge(&json!({ "spec": { "policy": { "semver": { "range": "bad range" } } } })),
        )
        .await?;
    let good: ImagePolicy = f
        .wait_ready("good", "False", Some(reasons::INVALID_POLICY))
        .await?;
    assert_eq!(good.status.unwrap().latest_ref.unwrap().tag, "1.1.0");
    Ok(())
}
