use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};

use crate::harness::read_crds;
use crate::names::{current_test_name, unique_name};
use crate::{Error, Harness};

/// Set to keep every test namespace for debugging instead of deleting it.
const KEEP_NAMESPACES_VAR: &str = "WEIR_E2E_KEEP_NAMESPACES";

/// Label on every test namespace, so leftovers are easy to find:
/// `kubectl get ns -l weir.dev/e2e=true`.
pub const TEST_NAMESPACE_LABEL: &str = "weir.dev/e2e";

/// A namespace that exists for one test and is deleted when this guard drops — when the test
/// returns, fails or panics. Set `WEIR_E2E_KEEP_NAMESPACES=1` to keep them for debugging.
#[derive(Debug)]
pub struct TestNamespace {
    name: String,
    harness: &'static Harness,
}

impl TestNamespace {
    /// Creates a namespace named after the running test plus a random suffix.
    pub(crate) async fn create(harness: &'static Harness) -> Result<Self, Error> {
        let test_name = current_test_name();
        let name = unique_name(&test_name, 63);
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([(TEST_NAMESPACE_LABEL.to_owned(), "true".to_owned())].into()),
                annotations: Some([("weir.dev/e2e-test".to_owned(), test_name)].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(harness.client()?)
            .create(&PostParams::default(), &namespace)
            .await
            .map_err(Error::kube(format!("creating test namespace {name}")))?;
        Ok(Self { name, harness })
    }

    /// The namespace's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Deletes the namespace, releasing Weir's custom resources in it first.
    ///
    /// `Drop` cannot await, and the test's runtime may be the one unwinding, so the requests run
    /// on their own thread with their own runtime and client, and `drop` waits for them: the
    /// delete has really been sent when the guard is gone.
    fn delete_blocking(&self) -> Result<(), Error> {
        let harness = self.harness;
        let name = self.name.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(Error::io("starting a runtime to delete a test namespace"))?;
            runtime.block_on(async {
                let client = harness.client()?;
                // Delete the namespace even when releasing failed; report the first error.
                let released = release_custom_resources(&client, &name).await;
                // A test may have deleted its namespace itself.
                ignore_not_found(
                    Api::<Namespace>::all(client)
                        .delete(&name, &DeleteParams::background())
                        .await
                        .map(drop),
                )
                .map_err(Error::kube(format!("deleting test namespace {name}")))?;
                released
            })
        })
        .join()
        .map_err(|_| Error::CleanupThread {
            namespace: self.name.clone(),
        })?
    }
}

/// Deletes the objects of every kind in `crds/` in `namespace` and removes their finalizers.
///
/// The controllers under test run inside the tests; once a test is over nobody is left to
/// remove the finalizers they added, and the namespace would stay Terminating for ever.
/// Deleting first matters: an object being deleted cannot get new finalizers, so a controller
/// still running cannot put one back after it was removed.
async fn release_custom_resources(client: &kube::Client, namespace: &str) -> Result<(), Error> {
    for crd in read_crds()? {
        let Some(version) = crd.spec.versions.iter().find(|v| v.storage) else {
            continue;
        };
        let resource = ApiResource {
            group: crd.spec.group.clone(),
            version: version.name.clone(),
            api_version: format!("{}/{}", crd.spec.group, version.name),
            kind: crd.spec.names.kind.clone(),
            plural: crd.spec.names.plural.clone(),
        };
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
        let objects = api
            .list(&ListParams::default())
            .await
            .map_err(Error::kube(format!(
                "listing {} in test namespace {namespace}",
                resource.plural
            )))?;
        for object in objects {
            let Some(name) = object.metadata.name.as_deref() else {
                continue;
            };
            let what = format!("{} {namespace}/{name}", resource.kind);
            ignore_not_found(
                api.delete(name, &DeleteParams::background())
                    .await
                    .map(drop),
            )
            .map_err(Error::kube(format!("deleting {what}")))?;
            if object.metadata.finalizers.is_some_and(|f| !f.is_empty()) {
                let no_finalizers = serde_json::json!({ "metadata": { "finalizers": null } });
                let patched = api
                    .patch(name, &PatchParams::default(), &Patch::Merge(&no_finalizers))
                    .await;
                ignore_not_found(patched.map(drop))
                    .map_err(Error::kube(format!("removing the finalizers of {what}")))?;
            }
        }
    }
    Ok(())
}

/// An object that is already gone needs no cleanup.
fn ignore_not_found(result: Result<(), kube::Error>) -> Result<(), kube::Error> {
    match result {
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        other => other,
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::env::var_os(KEEP_NAMESPACES_VAR).is_some() {
            eprintln!(
                "keeping test namespace {} ({KEEP_NAMESPACES_VAR} is set)",
                self.name
            );
            return;
        }
        // A failed cleanup must not hide the test's own result; say so and go on.
        if let Err(error) = self.delete_blocking() {
            eprintln!("could not delete test namespace {}: {error}", self.name);
        }
    }
}
