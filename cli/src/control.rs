//! `weir reconcile`, `weir suspend` and `weir resume`: what `flux reconcile|suspend|resume`
//! do, through the API with the user's own kubeconfig (so RBAC decides): a reconcile is the
//! `reconcile.fluxcd.io/requestedAt` annotation, answered by the controller in
//! `status.lastHandledReconcileAt`; suspension is `spec.suspend`. Reconcile and resume wait for
//! the controller's answer (through a watch) and report its Ready condition: exit 0 when
//! Ready, 1 when not (or on an API error, a missing or suspended object, a timeout).

use std::{fmt::Debug, process::ExitCode, time::Duration};

use clap::ValueEnum;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    core::object::HasStatus,
    runtime::watcher::{self, watcher},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};
use weir_api::{
    ConditionStatus, GitRepository, HelmChart, HelmRelease, HelmRepository, ImagePolicy,
    ImageRepository, ImageUpdateAutomation, Kustomization, RECONCILE_REQUESTED_AT_ANNOTATION,
    status::{ObjectStatus, Reconciled},
};

use crate::get::BoxError;

/// The kinds these commands act on (flux's names and short names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    #[value(name = "kustomization", alias = "ks")]
    Kustomization,
    #[value(name = "helmrelease", alias = "hr")]
    HelmRelease,
    #[value(name = "gitrepository", alias = "git")]
    GitRepository,
    #[value(name = "helmrepository")]
    HelmRepository,
    #[value(name = "helmchart")]
    HelmChart,
    #[value(name = "imagerepository")]
    ImageRepository,
    #[value(name = "imagepolicy")]
    ImagePolicy,
    #[value(name = "imageupdateautomation", alias = "imageupdate")]
    ImageUpdateAutomation,
}

/// Which object, and how to reach the cluster.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// The object's kind.
    #[arg(value_enum)]
    pub kind: Kind,
    /// The object's name.
    pub name: Option<String>,
    /// How to reach the cluster, and the namespace.
    #[command(flatten)]
    pub cluster: crate::common::Cluster,
    /// How long to wait for the controller's answer.
    #[arg(long, default_value = "5m", value_parser = crate::controllers::parse_duration)]
    pub timeout: Duration,
}

/// Flags of `weir reconcile`.
#[derive(Debug, clap::Args)]
pub struct ReconcileArgs {
    #[command(flatten)]
    pub target: Target,
    /// Reconcile the object's source first (a Kustomization's `sourceRef`, a HelmRelease's
    /// HelmChart, a HelmChart's `sourceRef`), and wait for it.
    #[arg(long)]
    pub with_source: bool,
}

/// Flags of `weir suspend` and `weir resume`.
#[derive(Debug, clap::Args)]
pub struct SuspendArgs {
    #[command(flatten)]
    pub target: Target,
    /// Every object of the kind in the namespace.
    #[arg(long, conflicts_with = "name")]
    pub all: bool,
}

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Suspend,
    Resume,
}

fn block_on(future: impl Future<Output = Result<bool, BoxError>>) -> ExitCode {
    let Some(runtime) = crate::common::runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(future) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("✗ {}", weir_runtime::chain(&*error));
            ExitCode::FAILURE
        }
    }
}

/// `weir reconcile`.
pub fn reconcile(args: &ReconcileArgs) -> ExitCode {
    if args.target.name.is_none() {
        eprintln!("weir reconcile: a name is required");
        return ExitCode::from(2);
    }
    block_on(run_reconcile(args))
}

/// `weir suspend` and `weir resume`.
pub fn suspend(args: &SuspendArgs, verb: Verb) -> ExitCode {
    if args.target.name.is_none() && !args.all {
        eprintln!("weir {}: a name or --all is required", verb.word());
        return ExitCode::from(2);
    }
    block_on(run_suspend(args, verb))
}

impl Verb {
    fn word(self) -> &'static str {
        match self {
            Self::Suspend => "suspend",
            Self::Resume => "resume",
        }
    }
}

async fn client(target: &Target) -> Result<(Client, String), BoxError> {
    target.cluster.connect().await
}

/// Calls `$body` with the Rust type of `$kind` as `K`.
macro_rules! with_kind {
    ($kind:expr, $body:ident ( $($arg:expr),* )) => {
        match $kind {
            Kind::Kustomization => $body::<Kustomization>($($arg),*).await,
            Kind::HelmRelease => $body::<HelmRelease>($($arg),*).await,
            Kind::GitRepository => $body::<GitRepository>($($arg),*).await,
            Kind::HelmRepository => $body::<HelmRepository>($($arg),*).await,
            Kind::HelmChart => $body::<HelmChart>($($arg),*).await,
            Kind::ImageRepository => $body::<ImageRepository>($($arg),*).await,
            Kind::ImagePolicy => $body::<ImagePolicy>($($arg),*).await,
            Kind::ImageUpdateAutomation => $body::<ImageUpdateAutomation>($($arg),*).await,
        }
    };
}

async fn run_reconcile(args: &ReconcileArgs) -> Result<bool, BoxError> {
    let (client, namespace) = client(&args.target).await?;
    let name = args.target.name.clone().unwrap_or_default();
    let timeout = args.target.timeout;
    if args.with_source {
        let object: Value = with_kind!(args.target.kind, read(&client, &namespace, &name))?;
        if let Some((kind, source_ns, source)) = source_of(args.target.kind, &object, &namespace) {
            let ready = with_kind!(kind, request(&client, &source_ns, &source, timeout, None))?;
            if !ready {
                return Ok(false);
            }
        }
    }
    with_kind!(
        args.target.kind,
        request(&client, &namespace, &name, timeout, None)
    )
}

async fn run_suspend(args: &SuspendArgs, verb: Verb) -> Result<bool, BoxError> {
    let (client, namespace) = client(&args.target).await?;
    let names = match (&args.target.name, args.all) {
        (Some(name), _) => vec![name.clone()],
        (None, _) => with_kind!(args.target.kind, names(&client, &namespace))?,
    };
    let mut all_ready = true;
    for name in names {
        all_ready &= match verb {
            Verb::Suspend => with_kind!(args.target.kind, set_suspend(&client, &namespace, &name))?,
            Verb::Resume => with_kind!(
                args.target.kind,
                request(
                    &client,
                    &namespace,
                    &name,
                    args.target.timeout,
                    Some(json!({ "spec": { "suspend": false } }))
                )
            )?,
        };
    }
    Ok(all_ready)
}

/// The object as JSON.
async fn read<K>(client: &Client, namespace: &str, name: &str) -> Result<Value, BoxError>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + Debug
        + DeserializeOwned
        + Serialize,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let object = api
        .get_opt(name)
        .await?
        .ok_or_else(|| not_found::<K>(namespace, name))?;
    Ok(serde_json::to_value(object)?)
}

fn not_found<K: Resource<DynamicType = ()>>(namespace: &str, name: &str) -> BoxError {
    format!("{} '{namespace}/{name}' not found", K::kind(&())).into()
}

/// The names of every object of `K` in `namespace`.
async fn names<K>(client: &Client, namespace: &str) -> Result<Vec<String>, BoxError>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + Debug
        + DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect())
}

/// The source a `with-source` reconcile asks first: its kind, namespace and name.
fn source_of(kind: Kind, object: &Value, namespace: &str) -> Option<(Kind, String, String)> {
    let from_ref = |reference: &Value| {
        let kind = match reference.get("kind")?.as_str()? {
            "GitRepository" => Kind::GitRepository,
            "HelmRepository" => Kind::HelmRepository,
            "HelmChart" => Kind::HelmChart,
            _ => return None,
        };
        let ns = reference
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or(namespace)
            .to_owned();
        Some((kind, ns, reference.get("name")?.as_str()?.to_owned()))
    };
    match kind {
        Kind::Kustomization | Kind::HelmChart => from_ref(object.pointer("/spec/sourceRef")?),
        Kind::HelmRelease => {
            if let Some(reference) = object.pointer("/spec/chartRef") {
                return from_ref(reference);
            }
            let (ns, name) = object
                .pointer("/status/helmChart")?
                .as_str()?
                .split_once('/')?;
            Some((Kind::HelmChart, ns.to_owned(), name.to_owned()))
        }
        _ => None,
    }
}

/// `spec.suspend: true`.
async fn set_suspend<K>(client: &Client, namespace: &str, name: &str) -> Result<bool, BoxError>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + Debug
        + DeserializeOwned,
{
    let kind = K::kind(&());
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    if api.get_opt(name).await?.is_none() {
        return Err(not_found::<K>(namespace, name));
    }
    println!("► suspending {kind} {name} in {namespace} namespace");
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "suspend": true } })),
    )
    .await?;
    println!("✔ {kind} suspended");
    Ok(true)
}

/// Asks for a reconcile of `name` (with `extra` merged into the same patch: a resume) and waits
/// until the controller answers it; reports the Ready condition then. True when Ready.
pub(crate) async fn request<K>(
    client: &Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
    extra: Option<Value>,
) -> Result<bool, BoxError>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + Debug
        + DeserializeOwned
        + Serialize
        + Send
        + Sync
        + 'static
        + HasStatus<Status: ObjectStatus>
        + Reconciled,
{
    let kind = K::kind(&()).to_string();
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let object = api
        .get_opt(name)
        .await?
        .ok_or_else(|| not_found::<K>(namespace, name))?;
    if object.suspended() && extra.is_none() {
        return Err(format!("{kind} '{namespace}/{name}' is suspended: resume it first").into());
    }
    let token = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let mut patch = json!({ "metadata": { "annotations": {
        RECONCILE_REQUESTED_AT_ANNOTATION: token,
    } } });
    if let Some(extra) = extra {
        println!("► resuming {kind} {name} in {namespace} namespace");
        merge(&mut patch, extra);
    } else {
        println!("► annotating {kind} {name} in {namespace} namespace");
    }
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let object = tokio::time::timeout(timeout, answer(api, name, &token, &kind))
        .await
        .map_err(|_| {
            format!("{kind} '{namespace}/{name}' did not answer the reconcile within {timeout:?}")
        })??
        .ok_or_else(|| not_found::<K>(namespace, name))?;
    let ready = object.status().and_then(|s| s.ready().cloned());
    match ready {
        Some(condition) if condition.status == ConditionStatus::True => {
            println!("✔ {}", condition.message);
            Ok(true)
        }
        Some(condition) => {
            eprintln!("✗ {}: {}", condition.reason, condition.message);
            Ok(false)
        }
        None => {
            eprintln!("✗ {kind} '{namespace}/{name}' has no Ready condition");
            Ok(false)
        }
    }
}

/// Watches `name` until its status answers `token` (`lastHandledReconcileAt`), showing its
/// Ready message meanwhile; `None` when it was deleted.
async fn answer<K>(api: Api<K>, name: &str, token: &str, kind: &str) -> Result<Option<K>, BoxError>
where
    K: Resource<DynamicType = ()>
        + Clone
        + Debug
        + DeserializeOwned
        + Send
        + 'static
        + HasStatus<Status: ObjectStatus>,
{
    use futures::StreamExt as _;
    let mut progress = crate::term::Progress::start(&format!("waiting for {kind} reconciliation"));
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = std::pin::pin!(watcher(api, config));
    let outcome = loop {
        let Some(event) = events.next().await else {
            break Ok(None);
        };
        match event? {
            watcher::Event::Apply(object) | watcher::Event::InitApply(object) => {
                let status = object.status();
                if status.and_then(ObjectStatus::last_handled_reconcile_at) == Some(token) {
                    break Ok(Some(object));
                }
                if let Some(ready) = status.and_then(ObjectStatus::ready) {
                    progress.update(&ready.message);
                }
            }
            watcher::Event::Delete(_) => break Ok(None),
            watcher::Event::Init | watcher::Event::InitDone => {}
        }
    };
    progress.finish();
    outcome
}

fn merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                merge(t.entry(k).or_insert(Value::Null), v);
            }
        }
        (t, p) => *t = p,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_found_as_flux_finds_them() {
        let ks = json!({ "spec": { "sourceRef": { "kind": "GitRepository", "name": "app" } } });
        assert_eq!(
            source_of(Kind::Kustomization, &ks, "apps"),
            Some((Kind::GitRepository, "apps".into(), "app".into()))
        );
        let hr = json!({ "spec": {}, "status": { "helmChart": "infra/apps-web" } });
        assert_eq!(
            source_of(Kind::HelmRelease, &hr, "apps"),
            Some((Kind::HelmChart, "infra".into(), "apps-web".into()))
        );
        let by_ref = json!({ "spec": { "chartRef": { "kind": "HelmChart", "name": "c", "namespace": "x" } } });
        assert_eq!(
            source_of(Kind::HelmRelease, &by_ref, "apps"),
            Some((Kind::HelmChart, "x".into(), "c".into()))
        );
        let bucket = json!({ "spec": { "sourceRef": { "kind": "Bucket", "name": "b" } } });
        assert_eq!(source_of(Kind::Kustomization, &bucket, "apps"), None);
        assert_eq!(source_of(Kind::GitRepository, &ks, "apps"), None);
    }
}
