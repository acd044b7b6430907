//! The image controller against the real harness: ImageRepositories scan the harness's
//! registries (anonymous and with htpasswd auth, over plain HTTP), ImagePolicies choose from the
//! scanned tags, and failures give their reasons without leaking credentials.

// A test's helpers fail the test by panicking; that is their job.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::Ordering;

use anyhow::Result;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, Resource,
    api::{Patch, PatchParams, PostParams},
};
use serde::de::DeserializeOwned;
use serde_json::json;
use weir_api::{
    Condition, ImagePolicy, ImageRepository, condition::find_condition, manifest, reasons, types,
};
use weir_e2e::{Harness, TestNamespace, unique_name, wait_until};

/// A namespace with its own image controller watching only it.
struct Fixture {
    client: Client,
    ns: TestNamespace,
    controller: weir_image::Handle,
}

/// Anything with status conditions and an observed generation.
trait Observed {
    fn conditions(&self) -> Vec<Condition>;
    fn observed_generation(&self) -> Option<i64>;
}

impl Observed for ImageRepository {
    fn conditions(&self) -> Vec<Condition> {
        self.status.clone().unwrap_or_default().conditions
    }
    fn observed_generation(&self) -> Option<i64> {
        self.status.as_ref().and_then(|s| s.observed_generation)
    }
}

impl Observed for ImagePolicy {
    fn conditions(&self) -> Vec<Condition> {
        self.status.clone().unwrap_or_default().conditions
    }
    fn observed_generation(&self) -> Option<i64> {
        self.status.as_ref().and_then(|s| s.observed_generation)
    }
}

impl Fixture {
    async fn start() -> Result<Self> {
        Self::start_with_page_size(weir_image::scan::PAGE_SIZE).await
    }

    async fn start_with_page_size(tag_page_size: usize) -> Result<Self> {
        Self::start_with(weir_image::Config {
            tag_page_size,
            ..weir_image::Config::default()
        })
        .await
    }

    /// A controller with `config`, watching only the fixture's namespace.
    async fn start_with(config: weir_image::Config) -> Result<Self> {
        let harness = Harness::get().await?;
        let ns = harness.namespace().await?;
        let client = harness.client()?;
        let config = weir_image::Config {
            namespace: Some(ns.name().to_owned()),
            ..config
        };
        let controller = weir_image::start(client.clone(), config, false).await?;
        Ok(Self {
            client,
            ns,
            controller,
        })
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), self.ns.name())
    }

    async fn create<K>(&self, kind: &str, name: &str, spec: serde_json::Value) -> Result<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + DeserializeOwned
            + serde::Serialize
            + Clone
            + std::fmt::Debug,
    {
        let obj: K = manifest::from_value(json!({
            "apiVersion": "image.toolkit.fluxcd.io/v1",
            "kind": kind,
            "metadata": { "name": name, "namespace": self.ns.name() },
            "spec": spec,
        }))?;
        Ok(self.api::<K>().create(&PostParams::default(), &obj).await?)
    }

    async fn repository(&self, name: &str, spec: serde_json::Value) -> Result<ImageRepository> {
        self.create("ImageRepository", name, spec).await
    }

    async fn policy(&self, name: &str, spec: serde_json::Value) -> Result<ImagePolicy> {
        self.create("ImagePolicy", name, spec).await
    }

    /// Waits until `Ready` has `status` (and `reason`, when given) at the current generation.
    async fn wait_ready<K>(&self, name: &str, status: &str, reason: Option<&str>) -> Result<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + DeserializeOwned
            + Clone
            + std::fmt::Debug
            + Observed,
    {
        let api = self.api::<K>();
        let kind = K::kind(&()).to_string();
        Ok(
            wait_until(&format!("{kind} {name} Ready={status} {reason:?}"), || {
                let api = api.clone();
                async move {
                    let obj = api.get(name).await.map_err(|e| e.to_string())?;
                    let conditions = obj.conditions();
                    let ready = find_condition(&conditions, types::READY);
                    match ready {
                        Some(c)
                            if format!("{:?}", c.status) == status
                                && reason.is_none_or(|r| r == c.reason)
                                && obj.observed_generation() == obj.meta().generation =>
                        {
                            Ok(obj)
                        }
                        other => Err(format!("Ready is {other:?}")),
                    }
                }
            })
            .await?,
        )
    }

    async fn latest_tag(&self, policy: &str, tag: &str) -> Result<ImagePolicy> {
        let api = self.api::<ImagePolicy>();
        Ok(
            wait_until(&format!("ImagePolicy {policy} to choose {tag}"), || {
                let api = api.clone();
                async move {
                    let p = api.get(policy).await.map_err(|e| e.to_string())?;
                    let latest = p.status.as_ref().and_then(|s| s.latest_ref.clone());
                    match latest {
                        Some(r) if r.tag == tag => Ok(p),
                        other => Err(format!("latestRef is {other:?}")),
                    }
                }
            })
            .await?,
        )
    }

    async fn request_reconcile<K>(&self, name: &str, token: &str) -> Result<()>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + DeserializeOwned
            + Clone
            + std::fmt::Debug,
    {
        let patch =
            json!({ "metadata": { "annotations": { "reconcile.fluxcd.io/requestedAt": token } } });
        self.api::<K>()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }
}

/// Pushes `tags` of a new repository to the anonymous registry; returns `host/name`.
async fn push_tags(name: &str, tags: &[&str]) -> Result<String> {
    let registry = Harness::get().await?.registry();
    let image = unique_name(name, 50);
    let mut repository = String::new();
    for tag in tags {
        repository = registry.push_image(&image, tag).await?.repository;
    }
    Ok(repository)
}

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
struct CappingRegistry {
    host: String,
    requests: std::sync::Arc<std::sync::atomic::AtomicU64>,
    _server: tokio::task::JoinHandle<()>,
}

impl CappingRegistry {
    async fn start(cap: usize, links: bool) -> Result<Self> {
        let upstream = Harness::get().await?.registry().host().to_owned();
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = requests.clone();
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
            let (upstream, counted) = (upstream.clone(), counted.clone());
            async move { Self::serve(&upstream, &uri, cap, links, &counted).await }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let host = listener.local_addr()?.to_string();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            host,
            requests,
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

// ImageUpdateAutomation: markers rewritten in git, committed and pushed.

/// A deployment manifest with a marker, comments and a second document.
const DEPLOY: &str = r#"# The app. Comments, quoting and order stay as written.
apiVersion: apps/v1
kind: Deployment
metadata:
  name: app
  namespace: apps   # trailing comment
spec:
  template:
    spec:
      containers:
        - name: app
          image: "IMAGE:1.0.0" # {"$imagepolicy": "NS:app"}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: versions}
data:
  tag: '1.0.0'   # {"$imagepolicy": "NS:app:tag"}
  untouched: "IMAGE:1.0.0"
"#;

fn git_in(repo: &weir_e2e::GitRepo, args: &[&str]) -> String {
    let out = weir_e2e::git_command()
        .arg("--git-dir")
        .arg(repo.path())
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

impl Fixture {
    /// A git repository holding `files`, a GitRepository for it (basic auth, so pushes are
    /// allowed), and its secret.
    async fn git_source(&self, files: &[(&str, &str)]) -> Result<weir_e2e::GitRepo> {
        let harness = Harness::get().await?;
        let repo = harness
            .git()
            .create_repo("auto", &files.iter().copied().collect())?;
        self.api::<Secret>()
            .create(
                &PostParams::default(),
                &harness.git().basic_auth_secret("git-auth"),
            )
            .await?;
        let source: weir_api::GitRepository = manifest::from_value(json!({
            "apiVersion": "source.toolkit.fluxcd.io/v1",
            "kind": "GitRepository",
            "metadata": { "name": "fleet", "namespace": self.ns.name() },
            "spec": {
                "url": repo.private_http_url(),
                // Only the end-to-end test runs a source controller to fetch it.
                "interval": "2s",
                "secretRef": { "name": "git-auth" },
                "ref": { "branch": "main" },
            },
        }))?;
        self.api::<weir_api::GitRepository>()
            .create(&PostParams::default(), &source)
            .await?;
        Ok(repo)
    }

    /// An image repository with `tags`, an ImageRepository and a semver ImagePolicy `app` on it.
    async fn image_and_policy(&self, tags: &[&str], range: &str) -> Result<String> {
        let image = push_tags("auto", tags).await?;
        self.repository(
            "app",
            json!({ "image": image, "interval": "1h", "insecure": true }),
        )
        .await?;
        self.policy(
            "app",
            json!({ "imageRepositoryRef": { "name": "app" }, "policy": { "semver": { "range": range } } }),
        )
        .await?;
        Ok(image)
    }

    async fn automation(&self, name: &str, spec: serde_json::Value) -> Result<()> {
        self.create::<weir_api::ImageUpdateAutomation>("ImageUpdateAutomation", name, spec)
            .await?;
        Ok(())
    }

    async fn wait_pushed(&self, name: &str, branch_head: impl Fn() -> String) -> Result<String> {
        let api = self.api::<weir_api::ImageUpdateAutomation>();
        Ok(
            wait_until(&format!("ImageUpdateAutomation {name} to push"), || {
                let api = api.clone();
                let head = branch_head();
                async move {
                    let a = api.get(name).await.map_err(|e| e.to_string())?;
                    let pushed = a.status.as_ref().and_then(|s| s.last_push_commit.clone());
                    match pushed {
                        Some(c) if c == head => Ok(c),
                        other => Err(format!("lastPushCommit {other:?}, head {head}")),
                    }
                }
            })
            .await?,
        )
    }
}

fn automation_spec(message_template: Option<&str>) -> serde_json::Value {
    let mut commit = json!({ "author": { "name": "Weir Bot", "email": "bot@weir.invalid" } });
    if let Some(t) = message_template {
        commit["messageTemplate"] = json!(t);
    }
    json!({
        "interval": "1h",
        "sourceRef": { "kind": "GitRepository", "name": "fleet" },
        "git": { "checkout": { "ref": { "branch": "main" } }, "commit": commit },
        "update": { "path": "./apps", "strategy": "Setters" },
    })
}

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

fn ready_message(conditions: &[Condition]) -> String {
    find_condition(conditions, types::READY)
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

impl Observed for weir_api::ImageUpdateAutomation {
    fn conditions(&self) -> Vec<Condition> {
        self.status.clone().unwrap_or_default().conditions
    }
    fn observed_generation(&self) -> Option<i64> {
        self.status.as_ref().and_then(|s| s.observed_generation)
    }
}

impl Fixture {
    async fn wait_ready_any(
        &self,
        name: &str,
        reason: &str,
    ) -> Result<weir_api::ImageUpdateAutomation> {
        self.wait_ready(name, "False", Some(reason)).await
    }
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

/// The source and kustomize controllers of an end-to-end test, and their directories.
type SyncControllers = (
    weir_source::Handle,
    weir_kustomize::Handle,
    tempfile::TempDir,
    tempfile::TempDir,
);

impl Fixture {
    /// Starts the source and kustomize controllers watching the test's namespace.
    async fn start_sync_controllers(&self) -> Result<SyncControllers> {
        let harness = Harness::get().await?;
        let storage = tempfile::tempdir()?;
        let cache = tempfile::tempdir()?;
        let source = weir_source::start(
            self.client.clone(),
            weir_source::Config {
                storage_path: storage.path().to_path_buf(),
                storage_addr: "127.0.0.1:0".parse()?,
                storage_adv_addr: None,
                artifact_retention: 2,
                namespace: Some(self.ns.name().to_owned()),
                concurrency: 2,
            },
            false,
        )
        .await?;
        let kustomize = weir_kustomize::start(
            harness.kube_config().clone(),
            weir_kustomize::Config {
                namespace: Some(self.ns.name().to_owned()),
                concurrency: 2,
                kustomize_path: harness.tool("kustomize"),
                cache_dir: cache.path().to_path_buf(),
                dependency_requeue: std::time::Duration::from_secs(10),
                artifact_limits: weir_kustomize::fetch::Limits::default(),
                lockdown: weir_kustomize::Lockdown::default(),
                feature_gates: weir_kustomize::FeatureGates::default(),
            },
            false,
        )
        .await?;
        Ok((source, kustomize, storage, cache))
    }
}

/// Whether Deployment `web` runs `image`: the template has it and kwok rolled it out.
async fn deployment_runs(
    deployments: Api<k8s_openapi::api::apps::v1::Deployment>,
    image: String,
) -> Result<(), String> {
    let d = deployments.get("web").await.map_err(|e| e.to_string())?;
    let current = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref()?.containers.first()?.image.clone());
    let status = d.status.clone().unwrap_or_default();
    let done = current.as_deref() == Some(image.as_str())
        && status.observed_generation == d.metadata.generation
        && status.updated_replicas == Some(1)
        && status.available_replicas == Some(1)
        && status.replicas == Some(1);
    if done {
        Ok(())
    } else {
        Err(format!("image {current:?}, status {status:?}"))
    }
}

/// The whole loop: a Deployment synced from git by a Kustomization; a new semver tag in the
/// registry is chosen by the policy, committed and pushed by the automation, fetched by the
/// GitRepository, applied by the Kustomization, and rolled out (by kwok).
#[tokio::test]
async fn a_new_tag_reaches_the_cluster_through_a_commit() -> Result<()> {
    use k8s_openapi::api::apps::v1::Deployment;
    let f = Fixture::start().await?;
    let harness = Harness::get().await?;
    let ns = f.ns.name().to_owned();
    let _sync = f.start_sync_controllers().await?;

    let name = unique_name("e2e", 50);
    let first = harness.registry().push_image(&name, "1.0.0").await?;
    let deployment = format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: {ns}
spec:
  replicas: 1
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
      - name: web
        image: {image} # {{"$imagepolicy": "{ns}:app"}}
"#,
        image = first.reference()
    );
    let repo = f.git_source(&[("apps/deploy.yaml", &deployment)]).await?;
    let ks: weir_api::Kustomization = manifest::from_value(json!({
        "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
        "kind": "Kustomization",
        "metadata": { "name": "apps", "namespace": ns },
        "spec": {
            "sourceRef": { "kind": "GitRepository", "name": "fleet" },
            "path": "./apps", "interval": "1m", "retryInterval": "2s", "timeout": "30s", "prune": true,
        },
    }))?;
    f.api::<weir_api::Kustomization>()
        .create(&PostParams::default(), &ks)
        .await?;
    f.repository(
        "app",
        json!({ "image": first.repository, "interval": "2s", "insecure": true }),
    )
    .await?;
    f.policy(
        "app",
        json!({ "imageRepositoryRef": { "name": "app" }, "policy": { "semver": { "range": ">=1.0.0" } } }),
    )
    .await?;
    f.automation("auto", automation_spec(None)).await?;

    let setup = std::time::Instant::now();
    let deployments = f.api::<Deployment>();
    let rolled_out = |image: String| deployment_runs(deployments.clone(), image);
    wait_until("the Deployment to run 1.0.0", || {
        rolled_out(first.reference())
    })
    .await?;
    eprintln!("first sync and rollout: {:?}", setup.elapsed());
    let initial = repo.head()?;

    let started = std::time::Instant::now();
    let second = harness.registry().push_image(&name, "1.1.0").await?;
    let pushed = f.wait_pushed("auto", || repo.head().unwrap()).await?;
    let to_commit = started.elapsed();
    wait_until("the Deployment to roll out 1.1.0", || {
        rolled_out(second.reference())
    })
    .await?;
    eprintln!(
        "new tag to pushed commit: {to_commit:?}; to rolled-out Deployment: {:?}",
        started.elapsed()
    );

    assert_ne!(pushed, initial);
    let log = git_in(&repo, &["log", "--format=%H %an: %s", "main"]);
    assert!(
        log.starts_with(&format!(
            "{pushed} Weir Bot: Update from image update automation"
        )),
        "{log}"
    );
    let ks = f.api::<weir_api::Kustomization>().get("apps").await?;
    let applied = ks.status.unwrap().last_applied_revision.unwrap_or_default();
    assert!(
        applied.ends_with(&pushed),
        "applied {applied}, pushed {pushed}"
    );
    Ok(())
}

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

impl Fixture {
    /// Waits until `name` carries Flux's finalizer.
    async fn wait_finalizer<K>(&self, name: &str) -> Result<()>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + DeserializeOwned
            + Clone
            + std::fmt::Debug,
    {
        let api = self.api::<K>();
        let kind = K::kind(&()).to_string();
        wait_until(&format!("{kind} {name} to carry {FLUX_FINALIZER}"), || {
            let api = api.clone();
            async move {
                let object = api.get(name).await.map_err(|e| e.to_string())?;
                let finalizers = object.meta().finalizers.clone().unwrap_or_default();
                if finalizers.iter().any(|f| f == FLUX_FINALIZER) {
                    Ok(())
                } else {
                    Err(format!("finalizers {finalizers:?}"))
                }
            }
        })
        .await?;
        Ok(())
    }

    /// Deletes `name` and waits until it is gone.
    async fn delete_and_wait_gone<K>(&self, name: &str) -> Result<()>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + DeserializeOwned
            + Clone
            + std::fmt::Debug,
    {
        let api = self.api::<K>();
        api.delete(name, &kube::api::DeleteParams::default())
            .await?;
        let kind = K::kind(&()).to_string();
        wait_until(&format!("{kind} {name} to be deleted"), || {
            let api = api.clone();
            async move {
                match api.get_opt(name).await.map_err(|e| e.to_string())? {
                    None => Ok(()),
                    Some(object) => Err(format!(
                        "still there with finalizers {:?}",
                        object.meta().finalizers
                    )),
                }
            }
        })
        .await?;
        Ok(())
    }
}

/// The finalizer Flux's image controllers put on every image kind.
const FLUX_FINALIZER: &str = "finalizers.fluxcd.io";

#[tokio::test]
async fn policies_and_automations_carry_fluxs_finalizer_and_are_deleted_with_it() -> Result<()> {
    let f = Fixture::start().await?;
    f.image_and_policy(&["1.0.0"], "*").await?;
    f.git_source(&[("apps/app.yaml", "kind: X\n")]).await?;
    f.automation("auto", automation_spec(None)).await?;
    // As Flux leaves them behind when Weir takes over: the finalizer set, one suspended.
    let written_by_flux = |name: &str, suspend: bool| -> Result<weir_api::ImageUpdateAutomation> {
        let mut spec = automation_spec(None);
        spec["suspend"] = json!(suspend);
        Ok(manifest::from_value(json!({
            "apiVersion": "image.toolkit.fluxcd.io/v1",
            "kind": "ImageUpdateAutomation",
            "metadata": {
                "name": name,
                "namespace": f.ns.name(),
                "finalizers": [FLUX_FINALIZER],
            },
            "spec": spec,
        }))?)
    };
    let automations = f.api::<weir_api::ImageUpdateAutomation>();
    for (name, suspend) in [("from-flux", false), ("suspended-from-flux", true)] {
        automations
            .create(&PostParams::default(), &written_by_flux(name, suspend)?)
            .await?;
    }

    // Weir adds it as Flux does, so either engine can delete what the other created.
    f.wait_finalizer::<ImagePolicy>("app").await?;
    f.wait_finalizer::<weir_api::ImageUpdateAutomation>("auto")
        .await?;
    f.latest_tag("app", "1.0.0").await?;
    f.wait_ready::<weir_api::ImageUpdateAutomation>("from-flux", "True", None)
        .await?;

    f.delete_and_wait_gone::<ImagePolicy>("app").await?;
    for name in ["auto", "from-flux", "suspended-from-flux"] {
        f.delete_and_wait_gone::<weir_api::ImageUpdateAutomation>(name)
            .await?;
    }
    Ok(())
}

// `git.checkout.ref`, `git.push.refspec`/`options`, `git.commit.signingKey` and
// `status.observedSourceRevision`.

/// A Secret `name` with `entries` as `stringData`.
fn string_secret(name: &str, entries: &[(&str, &str)]) -> Secret {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": name },
        "stringData": entries.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect::<serde_json::Map<_, _>>(),
    }))
    .unwrap()
}

impl Fixture {
    async fn secret(&self, name: &str, entries: &[(&str, &str)]) -> Result<()> {
        self.api::<Secret>()
            .create(&PostParams::default(), &string_secret(name, entries))
            .await?;
        Ok(())
    }

    async fn wait_handled(
        &self,
        name: &str,
        token: &str,
    ) -> Result<weir_api::ImageUpdateAutomation> {
        self.request_reconcile::<weir_api::ImageUpdateAutomation>(name, token)
            .await?;
        let api = self.api::<weir_api::ImageUpdateAutomation>();
        Ok(wait_until(&format!("{name} to handle {token}"), || {
            let api = api.clone();
            async move {
                let a = api.get(name).await.map_err(|e| e.to_string())?;
                let s = a.status.clone().unwrap_or_default();
                let ready = find_condition(&s.conditions, types::READY).cloned();
                match (s.last_handled_reconcile_at.as_deref(), ready) {
                    (Some(t), Some(c)) if t == token && c.message == "repository up-to-date" => {
                        Ok(a)
                    }
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await?)
    }
}

impl Fixture {
    /// A policy `app` that chose `tag`, and a git source whose `apps/deploy.yaml` marks the
    /// image at 1.0.0.
    async fn marked_source(&self, tag: &str) -> Result<weir_e2e::GitRepo> {
        let image = self.image_and_policy(&["1.0.0", tag], "*").await?;
        let before = DEPLOY
            .replace("IMAGE", &image)
            .replace("NS", self.ns.name());
        let repo = self.git_source(&[("apps/deploy.yaml", &before)]).await?;
        self.latest_tag("app", tag).await?;
        Ok(repo)
    }
}

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

/// A throwaway GnuPG home; its agent is stopped when dropped.
struct GnuPgHome(tempfile::TempDir);

impl GnuPgHome {
    fn new() -> Self {
        // Short: gpg-agent's socket path must fit in a socket address.
        let dir = tempfile::Builder::new()
            .prefix("gpg")
            .tempdir_in("/tmp")
            .unwrap();
        Self(dir)
    }

    fn gpg(&self, args: &[&str]) -> std::process::Output {
        let out = std::process::Command::new("gpg")
            .env("GNUPGHOME", self.0.path())
            .args(["--batch", "--pinentry-mode", "loopback"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "gpg {args:?}: {out:?}");
        out
    }
}

impl Drop for GnuPgHome {
    fn drop(&mut self) {
        let _ = std::process::Command::new("gpgconf")
            .env("GNUPGHOME", self.0.path())
            .args(["--kill", "gpg-agent"])
            .status();
    }
}

#[tokio::test]
async fn signed_commits_pass_git_verify_commit() -> Result<()> {
    let signer_home = GnuPgHome::new();
    let uid = "Weir Signer <signer@weir.invalid>";
    signer_home.gpg(&[
        "--passphrase",
        "s3cret phrase",
        "--quick-gen-key",
        uid,
        "ed25519",
        "sign",
        "never",
    ]);
    let private = signer_home.gpg(&[
        "--passphrase",
        "s3cret phrase",
        "--armor",
        "--export-secret-keys",
        uid,
    ]);
    let public = signer_home.gpg(&["--armor", "--export", uid]);
    let verifier_home = GnuPgHome::new();
    let key_file = verifier_home.0.path().join("signer.asc");
    std::fs::write(&key_file, &public.stdout)?;
    verifier_home.gpg(&["--import", key_file.to_str().unwrap()]);

    let f = Fixture::start().await?;
    let repo = f.marked_source("1.9.0").await?;
    f.secret(
        "signing",
        &[
            ("git.asc", std::str::from_utf8(&private.stdout)?),
            ("passphrase", "s3cret phrase"),
        ],
    )
    .await?;
    let mut spec = automation_spec(None);
    spec["git"]["commit"]["signingKey"] = json!({ "secretRef": { "name": "signing" } });
    f.automation("auto", spec).await?;
    let pushed = f.wait_pushed("auto", || repo.head().unwrap()).await?;

    let verify = weir_e2e::git_command()
        .env("GNUPGHOME", verifier_home.0.path())
        .arg("--git-dir")
        .arg(repo.path())
        .args(["verify-commit", "--raw", &pushed])
        .output()?;
    let report = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success(), "git verify-commit: {report}");
    assert!(
        report.contains("GOODSIG") && report.contains(uid),
        "{report}"
    );
    // A commit of someone else's is not accepted by the same check.
    let initial = git_in(&repo, &["rev-parse", "main~1"]);
    let unsigned = weir_e2e::git_command()
        .env("GNUPGHOME", verifier_home.0.path())
        .arg("--git-dir")
        .arg(repo.path())
        .args(["verify-commit", initial.trim()])
        .output()?;
    assert!(!unsigned.status.success());
    Ok(())
}

#[tokio::test]
async fn ssh_signed_commits_pass_git_verify_commit_with_allowed_signers() -> Result<()> {
    let keys = tempfile::tempdir()?;
    let key = keys.path().join("signer");
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "signer", "-f"])
        .arg(&key)
        .output()?;
    assert!(out.status.success(), "ssh-keygen: {out:?}");
    let public = std::fs::read_to_string(key.with_extension("pub"))?;
    let allowed = keys.path().join("allowed_signers");
    std::fs::write(
        &allowed,
        format!("bot@weir.invalid namespaces=\"git\" {public}"),
    )?;

    let f = Fixture::start().await?;
    let repo = f.marked_source("1.12.0").await?;
    f.secret(
        "ssh-signing",
        &[("identity", &std::fs::read_to_string(&key)?)],
    )
    .await?;
    let mut spec = automation_spec(None);
    spec["git"]["commit"]["signingKey"] =
        json!({ "secretRef": { "name": "ssh-signing" }, "type": "ssh" });
    f.automation("auto", spec).await?;
    let pushed = f.wait_pushed("auto", || repo.head().unwrap()).await?;

    let verify = |commit: &str| {
        weir_e2e::git_command()
            .arg("-c")
            .arg(format!("gpg.ssh.allowedSignersFile={}", allowed.display()))
            .arg("--git-dir")
            .arg(repo.path())
            .args(["verify-commit", commit])
            .output()
            .unwrap()
    };
    let good = verify(&pushed);
    let report = String::from_utf8_lossy(&good.stderr);
    assert!(good.status.success(), "git verify-commit: {report}");
    assert!(
        report.contains("Good \"git\" signature for bot@weir.invalid"),
        "{report}"
    );
    let initial = git_in(&repo, &["rev-parse", "main~1"]);
    assert!(!verify(initial.trim()).status.success());
    Ok(())
}

#[tokio::test]
async fn bad_signing_keys_name_the_secret_and_key_and_push_nothing() -> Result<()> {
    let f = Fixture::start().await?;
    let repo = f.marked_source("1.10.0").await?;
    let head = repo.head()?;
    let protected = include_str!("../../controllers/image/testdata/signing-key-protected.asc");
    f.secret("no-key", &[("identity", "x")]).await?;
    f.secret("garbage", &[("git.asc", "not a key")]).await?;
    f.secret(
        "wrong-passphrase",
        &[("git.asc", protected), ("passphrase", "hunter2-not-it")],
    )
    .await?;
    f.secret("no-passphrase", &[("git.asc", protected)]).await?;
    let ns = f.ns.name();
    let cases = [
        ("absent", "gpg", "'NS/absent' not found"),
        (
            "no-key",
            "gpg",
            "'NS/no-key' does not contain a 'git.asc' key",
        ),
        (
            "garbage",
            "gpg",
            "'NS/garbage' could not read the OpenPGP secret key in 'git.asc'",
        ),
        (
            "wrong-passphrase",
            "gpg",
            "'NS/wrong-passphrase' cannot sign with the key in 'git.asc'",
        ),
        ("no-passphrase", "gpg", "without a 'passphrase' key"),
        (
            "no-key",
            "ssh",
            "'NS/no-key' could not read the SSH private key in 'identity'",
        ),
        (
            "garbage",
            "ssh",
            "'NS/garbage' does not contain an 'identity' key",
        ),
    ];
    for (i, (secret, key_type, expected)) in cases.iter().enumerate() {
        let name = format!("sign-{i}");
        let mut spec = automation_spec(None);
        spec["git"]["commit"]["signingKey"] =
            json!({ "secretRef": { "name": secret }, "type": key_type });
        f.automation(&name, spec).await?;
        let a = f
            .wait_ready_any(&name, reasons::INVALID_SOURCE_CONFIGURATION)
            .await?;
        let message = ready_message(&a.status.unwrap().conditions);
        assert!(
            message.contains(&expected.replace("NS", ns)),
            "{secret}: {message}"
        );
        assert!(
            !message.contains("hunter2") && !message.contains("BEGIN PGP"),
            "{message}"
        );
    }

    assert_eq!(repo.head()?, head, "nothing was pushed");
    let events =
        Api::<k8s_openapi::api::core::v1::Event>::namespaced(f.client.clone(), f.ns.name())
            .list(&kube::api::ListParams::default())
            .await?;
    assert!(!serde_json::to_string(&events)?.contains("hunter2"));
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

/// ImagePolicy's `imageRepositoryRef.namespace` and `spec.suspend`, and ImageRepository's
/// `accessFrom`, `serviceAccountName`, `proxySecretRef` and `provider`.
mod policy_access {
    use k8s_openapi::api::core::v1::{Event, Namespace, ServiceAccount};
    use kube::api::ListParams;

    use super::*;

    impl Fixture {
        /// A controller watching its namespace and a second one (returned), as one process
        /// serving two tenants does.
        async fn start_with_second_namespace() -> Result<(Self, TestNamespace)> {
            let harness = Harness::get().await?;
            let other = harness.namespace().await?;
            let f = Self::start_with(weir_image::Config {
                extra_namespaces: vec![other.name().to_owned()],
                ..weir_image::Config::default()
            })
            .await?;
            Ok((f, other))
        }

        /// Waits until the `Ready` message of `name` is `message`.
        async fn wait_message<K>(&self, name: &str, message: &str) -> Result<K>
        where
            K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
                + DeserializeOwned
                + Clone
                + std::fmt::Debug
                + Observed,
        {
            let api = self.api::<K>();
            Ok(
                wait_until(&format!("{name}'s Ready message {message:?}"), || {
                    let api = api.clone();
                    async move {
                        let obj = api.get(name).await.map_err(|e| e.to_string())?;
                        let got = ready_message(&obj.conditions());
                        if got == message {
                            Ok(obj)
                        } else {
                            Err(format!("Ready message is {got:?}"))
                        }
                    }
                })
                .await?,
            )
        }

        /// The Warning events of object `name` with `reason`.
        async fn warnings(&self, name: &str, reason: &str) -> Result<Vec<Event>> {
            Ok(
                Api::<Event>::namespaced(self.client.clone(), self.ns.name())
                    .list(&ListParams::default())
                    .await?
                    .items
                    .into_iter()
                    .filter(|e| {
                        e.involved_object.name.as_deref() == Some(name)
                            && e.reason.as_deref() == Some(reason)
                            && e.type_.as_deref() == Some("Warning")
                    })
                    .collect(),
            )
        }
    }

    /// A repository in another namespace is used only when its `accessFrom` admits the policy's
    /// namespace by its labels; once admitted, a new scan there re-evaluates the policy here.
    #[tokio::test]
    async fn a_policy_uses_another_namespaces_repository_only_as_its_access_from_allows()
    -> Result<()> {
        let (f, other) = Fixture::start_with_second_namespace().await?;
        let (ns, other_ns) = (f.ns.name().to_owned(), other.name().to_owned());
        let image = push_tags("shared", &["1.0.0", "1.1.0"]).await?;
        let repos = Api::<ImageRepository>::namespaced(f.client.clone(), &other_ns);
        let repo: ImageRepository = manifest::from_value(json!({
            "apiVersion": "image.toolkit.fluxcd.io/v1", "kind": "ImageRepository",
            "metadata": { "name": "shared", "namespace": other_ns },
            "spec": { "image": image, "interval": "1h", "insecure": true },
        }))?;
        repos.create(&PostParams::default(), &repo).await?;
        f.policy(
            "app",
            json!({ "imageRepositoryRef": { "name": "shared", "namespace": other_ns },
                    "policy": { "semver": { "range": "*" } } }),
        )
        .await?;
        let denied: ImagePolicy = f
            .wait_ready("app", "False", Some(reasons::ACCESS_DENIED))
            .await?;
        assert_eq!(
            ready_message(&denied.conditions()),
            format!(
                "failed to get the referred ImageRepository: access denied: '{other_ns}/shared' \
                 can't be accessed due to missing ACL labels on 'accessFrom'"
            )
        );
        assert!(denied.status.unwrap().latest_ref.is_none(), "no tag leaks");
        assert!(!f.warnings("app", reasons::ACCESS_DENIED).await?.is_empty());

        // A selector the policy's namespace does not match.
        let tenant = unique_name("tenant", 40);
        repos
            .patch(
                "shared",
                &PatchParams::default(),
                &Patch::Merge(&json!({ "spec": { "accessFrom": { "namespaceSelectors": [
                    { "matchLabels": { "weir.dev/tenant": tenant } },
                ] } } })),
            )
            .await?;
        f.wait_message::<ImagePolicy>(
            "app",
            &format!(
                "failed to get the referred ImageRepository: access denied: '{other_ns}/shared' \
                 can't be accessed due to ACL labels mismatch on namespace '{ns}'"
            ),
        )
        .await?;

        // The namespace gets the label: the next evaluation is allowed.
        Api::<Namespace>::all(f.client.clone())
            .patch(
                &ns,
                &PatchParams::default(),
                &Patch::Merge(&json!({ "metadata": { "labels": { "weir.dev/tenant": tenant } } })),
            )
            .await?;
        f.request_reconcile::<ImagePolicy>("app", "labelled")
            .await?;
        let policy = f.latest_tag("app", "1.1.0").await?;
        assert_eq!(policy.status.unwrap().latest_ref.unwrap().name, image);

        // A new scan in the other namespace re-evaluates the policy here.
        Harness::get()
            .await?
            .registry()
            .push_image(image.rsplit_once('/').unwrap().1, "1.2.0")
            .await?;
        let patch = json!({ "metadata": {
            "annotations": { "reconcile.fluxcd.io/requestedAt": "rescan" },
        } });
        repos
            .patch("shared", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        f.latest_tag("app", "1.2.0").await?;

        // A repository that is not there is waited for, named with its namespace.
        f.policy(
            "missing",
            json!({ "imageRepositoryRef": { "name": "absent", "namespace": other_ns },
                    "policy": { "semver": { "range": "*" } } }),
        )
        .await?;
        let missing: ImagePolicy = f
            .wait_ready("missing", "False", Some(reasons::DEPENDENCY_NOT_READY))
            .await?;
        assert_eq!(
            ready_message(&missing.conditions()),
            format!("referenced ImageRepository '{other_ns}/absent' does not exist")
        );

        // A namespace this controller does not watch is never scanned by it: it says so.
        f.policy(
            "unwatched",
            json!({ "imageRepositoryRef": { "name": "app", "namespace": "default" },
                    "policy": { "semver": { "range": "*" } } }),
        )
        .await?;
        f.wait_message::<ImagePolicy>(
            "unwatched",
            "ImageRepository 'default/app' is in a namespace this controller does not watch",
        )
        .await?;
        drop(other);
        Ok(())
    }

    /// `--no-cross-namespace-refs` refuses a policy's repository in another namespace before
    /// it is read, in Flux's words.
    #[tokio::test]
    async fn lockdown_blocks_a_policys_repository_in_another_namespace() -> Result<()> {
        let f = Fixture::start_with(weir_image::Config {
            no_cross_namespace_refs: true,
            ..weir_image::Config::default()
        })
        .await?;
        f.policy(
            "elsewhere",
            json!({ "imageRepositoryRef": { "name": "app", "namespace": "default" },
                    "policy": { "semver": { "range": "*" } } }),
        )
        .await?;
        let p: ImagePolicy = f
            .wait_ready("elsewhere", "False", Some(reasons::ACCESS_DENIED))
            .await?;
        assert_eq!(
            ready_message(&p.conditions()),
            "failed to get the referred ImageRepository: cannot access \
             'ImageRepository/default/app', cross-namespace references have been blocked"
        );
        assert!(
            !f.warnings("elsewhere", reasons::ACCESS_DENIED)
                .await?
                .is_empty()
        );
        // Its own namespace, named explicitly, is not a cross-namespace reference.
        let image = push_tags("lockdown", &["1.0.0"]).await?;
        f.repository(
            "app",
            json!({ "image": image, "interval": "1h", "insecure": true }),
        )
        .await?;
        f.policy(
            "own",
            json!({ "imageRepositoryRef": { "name": "app", "namespace": f.ns.name() },
                    "policy": { "semver": { "range": "*" } } }),
        )
        .await?;
        f.latest_tag("own", "1.0.0").await?;
        Ok(())
    }

    /// A suspended policy keeps its pick and conditions while the repository moves on; resumed,
    /// it catches up.
    #[tokio::test]
    async fn a_suspended_policy_keeps_its_pick_until_resumed() -> Result<()> {
        let f = Fixture::start().await?;
        let image = push_tags("suspend", &["1.0.0"]).await?;
        f.repository(
            "app",
            json!({ "image": image, "interval": "1h", "insecure": true }),
        )
        .await?;
        for name in ["paused", "control"] {
            f.policy(
                name,
                json!({ "imageRepositoryRef": { "name": "app" },
                        "policy": { "semver": { "range": "*" } } }),
            )
            .await?;
            f.latest_tag(name, "1.0.0").await?;
        }
        let suspend = |on: bool| json!({ "spec": { "suspend": on } });
        f.api::<ImagePolicy>()
            .patch(
                "paused",
                &PatchParams::default(),
                &Patch::Merge(&suspend(true)),
            )
            .await?;
        let before = f.api::<ImagePolicy>().get("paused").await?;
        Harness::get()
            .await?
            .registry()
            .push_image(image.rsplit_once('/').unwrap().1, "1.1.0")
            .await?;
        f.request_reconcile::<ImageRepository>("app", "rescan")
            .await?;
        // The same scan re-evaluates both; only the one not suspended moves.
        f.latest_tag("control", "1.1.0").await?;
        let paused = f.api::<ImagePolicy>().get("paused").await?;
        assert_eq!(
            paused.status, before.status,
            "a suspended policy is not evaluated"
        );
        assert_eq!(
            paused.status.unwrap().latest_ref.unwrap().tag,
            "1.0.0",
            "suspended"
        );
        f.api::<ImagePolicy>()
            .patch(
                "paused",
                &PatchParams::default(),
                &Patch::Merge(&suspend(false)),
            )
            .await?;
        f.latest_tag("paused", "1.1.0").await?;
        f.wait_ready::<ImagePolicy>("paused", "True", Some(reasons::SUCCEEDED))
            .await?;
        Ok(())
    }

    /// `proxySecretRef`: every registry request goes through the proxy with its credentials —
    /// the tag list, the token probe and the policy's digest lookup. The image's host resolves
    /// nowhere, so nothing reaches the registry around the proxy; with a wrong password the
    /// proxy refuses, and the password is in no status.
    #[tokio::test]
    async fn a_proxy_secret_carries_every_registry_request() -> Result<()> {
        let f = Fixture::start().await?;
        let registry = Harness::get().await?.registry();
        let name = unique_name("proxied", 50);
        let pushed = registry.push_image(&name, "1.0.0").await?;
        let proxy = weir_e2e::LoopbackProxy::start(registry.host(), "weir", "pr0xy-s3cret").await?;
        let image = format!("registry.invalid:5000/{name}");
        for (secret, password) in [("proxy", "pr0xy-s3cret"), ("wrong-proxy", "nope-s3cret")] {
            let s: Secret = serde_json::from_value(json!({
                "metadata": { "name": secret },
                "stringData": { "address": proxy.url(), "username": "weir", "password": password },
            }))?;
            f.api::<Secret>().create(&PostParams::default(), &s).await?;
        }
        f.repository(
            "app",
            json!({ "image": image, "interval": "1h", "insecure": true,
                    "proxySecretRef": { "name": "proxy" } }),
        )
        .await?;
        f.repository(
            "refused",
            json!({ "image": image, "interval": "1h", "insecure": true,
                    "proxySecretRef": { "name": "wrong-proxy" } }),
        )
        .await?;
        f.repository(
            "direct",
            json!({ "image": image, "interval": "1h", "insecure": true, "timeout": "10s" }),
        )
        .await?;
        let app: ImageRepository = f.wait_ready("app", "True", None).await?;
        assert_eq!(app.status.unwrap().last_scan_result.unwrap().tag_count, 1);
        f.policy(
            "app",
            json!({ "imageRepositoryRef": { "name": "app" },
                    "digestReflectionPolicy": "IfNotPresent",
                    "policy": { "semver": { "range": "*" } } }),
        )
        .await?;
        let policy = f.latest_tag("app", "1.0.0").await?;
        assert_eq!(
            policy.status.unwrap().latest_ref.unwrap().digest,
            Some(pushed.digest),
            "the digest is looked up through the proxy too"
        );
        assert!(proxy.forwarded() >= 3, "probe, tag list and digest lookup");
        let refused: ImageRepository = f
            .wait_ready("refused", "False", Some(reasons::READ_OPERATION_FAILED))
            .await?;
        let message = ready_message(&refused.conditions());
        assert!(message.contains("407"), "{message}");
        f.wait_ready::<ImageRepository>("direct", "False", None)
            .await?;
        for name in ["app", "refused"] {
            let text = serde_json::to_string(&f.api::<ImageRepository>().get(name).await?)?;
            assert!(!text.contains("s3cret"), "{name} leaks the proxy password");
        }
        Ok(())
    }

    /// The registry with auth is read with the ServiceAccount's dockerconfigjson pull secret
    /// (other pull secrets are skipped); a missing account, a bad proxy Secret and a cloud
    /// provider each give a condition naming what is wrong.
    #[tokio::test]
    async fn service_account_pull_secrets_authenticate_and_bad_settings_are_named() -> Result<()> {
        let f = Fixture::start().await?;
        let registry = Harness::get().await?.registry_with_auth();
        let pushed = registry.push_image(&unique_name("sa", 50), "1.0.0").await?;
        f.api::<Secret>()
            .create(
                &PostParams::default(),
                &registry.docker_config_secret("regcred")?,
            )
            .await?;
        let opaque: Secret = serde_json::from_value(json!({
            "metadata": { "name": "opaque" }, "type": "Opaque",
            "stringData": { "token": "nothing for registries" },
        }))?;
        f.api::<Secret>()
            .create(&PostParams::default(), &opaque)
            .await?;
        let account: ServiceAccount = serde_json::from_value(json!({
            "metadata": { "name": "puller" },
            "imagePullSecrets": [{ "name": "opaque" }, { "name": "absent" }, { "name": "regcred" }],
        }))?;
        f.api::<ServiceAccount>()
            .create(&PostParams::default(), &account)
            .await?;
        let spec = |extra: serde_json::Value| {
            let mut spec =
                json!({ "image": pushed.repository, "interval": "1h", "insecure": true });
            spec.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            spec
        };
        f.repository("app", spec(json!({ "serviceAccountName": "puller" })))
            .await?;
        f.repository(
            "no-account",
            spec(json!({ "serviceAccountName": "nobody" })),
        )
        .await?;
        f.repository("aws", spec(json!({ "provider": "aws" })))
            .await?;
        let proxy: Secret = serde_json::from_value(json!({
            "metadata": { "name": "proxy" }, "stringData": { "username": "u" },
        }))?;
        f.api::<Secret>()
            .create(&PostParams::default(), &proxy)
            .await?;
        f.repository(
            "bad-proxy",
            spec(json!({ "proxySecretRef": { "name": "proxy" } })),
        )
        .await?;

        let app: ImageRepository = f.wait_ready("app", "True", None).await?;
        assert_eq!(app.status.unwrap().last_scan_result.unwrap().tag_count, 1);
        f.wait_message::<ImageRepository>(
            "no-account",
            &format!("serviceaccount '{}/nobody' not found", f.ns.name()),
        )
        .await?;
        let aws: ImageRepository = f
            .wait_ready("aws", "False", Some(reasons::AUTHENTICATION_FAILED))
            .await?;
        assert!(find_condition(&aws.conditions(), types::STALLED).is_some());
        assert!(
            ready_message(&aws.conditions()).starts_with("spec.provider 'aws': Weir does not"),
            "{}",
            ready_message(&aws.conditions())
        );
        f.wait_message::<ImageRepository>("bad-proxy", "secret 'proxy': no 'address'")
            .await?;
        Ok(())
    }
}
