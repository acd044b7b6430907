//! ImagePolicy's `imageRepositoryRef.namespace` and `spec.suspend`, and ImageRepository's
//! `accessFrom`, `serviceAccountName`, `proxySecretRef` and `provider`.

use anyhow::Result;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::core::v1::{Event, Namespace, ServiceAccount};
use kube::api::ListParams;
use kube::{
    Api, Resource,
    api::{Patch, PatchParams, PostParams},
};
use serde::de::DeserializeOwned;
use serde_json::json;
use weir_api::{ImagePolicy, ImageRepository, condition::find_condition, manifest, reasons, types};
use weir_e2e::{Harness, TestNamespace, unique_name, wait_until};

use crate::fixture::*;

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
    pub(crate) async fn warnings(&self, name: &str, reason: &str) -> Result<Vec<Event>> {
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
async fn a_policy_uses_another_namespaces_repository_only_as_its_access_from_allows() -> Result<()>
{
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
        let mut spec = json!({ "image": pushed.repository, "interval": "1h", "insecure": true });
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
