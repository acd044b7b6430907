use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, PostParams};

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

    /// Asks the API server to delete the namespace; its controller then removes the contents.
    ///
    /// `Drop` cannot await, and the test's runtime may be the one unwinding, so the request runs
    /// on its own thread with its own runtime and client, and `drop` waits for the answer: the
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
                Api::<Namespace>::all(harness.client()?)
                    .delete(&name, &DeleteParams::background())
                    .await
                    .map_err(Error::kube(format!("deleting test namespace {name}")))
                    .map(drop)
            })
        })
        .join()
        .map_err(|_| Error::CleanupThread {
            namespace: self.name.clone(),
        })?
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
