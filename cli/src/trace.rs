//! `weir trace <kind>/<name>`: which Kustomization or HelmRelease manages a live object, at which
//! revision, and from which source, as `flux trace` shows it: one section per object of the
//! chain, the object first, each with its Ready status and message.
//!
//! The manager is found as Flux finds it: the labels `kustomize.toolkit.fluxcd.io/name|namespace`
//! or `helm.toolkit.fluxcd.io/name|namespace`. Weir's helm controller leaves Helm's own
//! annotations (`meta.helm.sh/release-name|namespace`) as the mark of a release's objects, so
//! those lead to the HelmRelease whose release they name. Beyond Flux: the chain goes on up while
//! a manager is itself managed (a Kustomization applied by another), and locks and rollbacks
//! (`weir.dev/`) are shown where they are set.
//!
//! The kind is resolved by discovery, as kubectl resolves it: a kind, plural, singular or short
//! name (`deploy`, `ks`), optionally qualified by its group (`deployment.apps`). An unknown kind
//! or object, or an object Weir does not manage, is an error (exit code 1).

use std::{collections::BTreeSet, process::ExitCode};

use kube::{
    Api, Client, ResourceExt,
    api::{ApiResource, DynamicObject},
    core::object::HasStatus,
};
use serde_json::Value;
use weir_api::{
    GitRepository, HelmChart, HelmRelease, HelmRepository, Kustomization,
    control::Lock,
    kustomize::annotations::{NAME_LABEL, NAMESPACE_LABEL},
    status::ObjectStatus,
};

use crate::{
    common::Cluster,
    get::{ArtifactStatus, BoxError},
};

/// Label: the name of the HelmRelease whose release made the object (Flux's).
pub(crate) const HELM_NAME_LABEL: &str = "helm.toolkit.fluxcd.io/name";
/// Label: the namespace of that HelmRelease (Flux's).
pub(crate) const HELM_NAMESPACE_LABEL: &str = "helm.toolkit.fluxcd.io/namespace";
/// Helm's annotation on a release's objects: the release's name.
const HELM_RELEASE_NAME: &str = "meta.helm.sh/release-name";
/// Helm's annotation on a release's objects: the release's namespace.
const HELM_RELEASE_NAMESPACE: &str = "meta.helm.sh/release-namespace";
/// How many managers up the chain is followed at most.
const MAX_DEPTH: usize = 8;

/// Flags of `weir trace`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The object: `<kind>/<name>` (such as `deployment/app`), or the kind with the name after it.
    pub object: String,
    /// The object's name, when the first argument is only its kind.
    pub name: Option<String>,
    /// How to print the chain: `json` and `yaml` give a list of objects, one per section.
    #[arg(short = 'o', long, value_enum, default_value_t = crate::common::Output::Table)]
    pub output: crate::common::Output,
    #[command(flatten)]
    pub cluster: Cluster,
}

/// One object of the chain: its fields, in order.
pub type Section = Vec<(&'static str, String)>;

/// Runs `weir trace`.
pub fn run(args: &Args) -> ExitCode {
    let (kind, name) = match (args.object.split_once('/'), &args.name) {
        (Some((kind, name)), None) if !kind.is_empty() && !name.is_empty() => (kind, name),
        (None, Some(name)) => (args.object.as_str(), name.as_str()),
        _ => {
            eprintln!("weir trace: name the object as <kind>/<name> or <kind> <name>");
            return ExitCode::from(2);
        }
    };
    crate::common::block_on("trace", async {
        let (client, namespace) = args.cluster.connect().await?;
        let sections = trace(&client, kind, name, &namespace).await?;
        let objects: Vec<serde_json::Map<String, Value>> = sections
            .iter()
            .map(|section| {
                section
                    .iter()
                    .map(|(key, value)| ((*key).to_owned(), Value::String(value.clone())))
                    .collect()
            })
            .collect();
        Ok(crate::common::structured(&objects, args.output)?.unwrap_or_else(|| render(&sections)))
    })
}

async fn trace(
    client: &Client,
    kind: &str,
    name: &str,
    namespace: &str,
) -> Result<Vec<Section>, BoxError> {
    let (resource, namespaced) = resolve_kind(client, kind).await?;
    let api: Api<DynamicObject> = if namespaced {
        Api::namespaced_with(client.clone(), namespace, &resource)
    } else {
        Api::all_with(client.clone(), &resource)
    };
    let object = api.get_opt(name).await?.ok_or_else(|| {
        crate::common::not_found(
            &resource.kind,
            if namespaced { namespace } else { "" },
            name,
        )
    })?;
    let mut sections = vec![object_section(&resource.kind, &object)];
    let mut manager = manager_of(client, &object).await?;
    // A Kustomization or HelmRelease traced itself: the chain starts with its own source.
    if manager.is_none() && matches!(resource.kind.as_str(), "Kustomization" | "HelmRelease") {
        sections.clear();
        manager = Some(Manager {
            kind: resource.kind.clone(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        });
    }
    let Some(mut manager) = manager else {
        return Err(format!(
            "{} '{}' is not managed by Weir: it has no {NAME_LABEL} or {HELM_NAME_LABEL} label \
             and is not part of a Helm release",
            resource.kind,
            qualified(if namespaced { namespace } else { "" }, name)
        )
        .into());
    };
    let mut seen = BTreeSet::new();
    while seen.insert(manager.clone()) && seen.len() <= MAX_DEPTH {
        let (chain, parent) = manager_sections(client, &manager).await?;
        // A source shared along the chain is shown once.
        for section in chain {
            if !sections.contains(&section) {
                sections.push(section);
            }
        }
        match parent {
            Some(parent) => manager = parent,
            None => break,
        }
    }
    Ok(sections)
}

fn qualified(namespace: &str, name: &str) -> String {
    if namespace.is_empty() {
        name.to_owned()
    } else {
        format!("{namespace}/{name}")
    }
}

/// A Kustomization or HelmRelease that manages an object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Manager {
    kind: String,
    namespace: String,
    name: String,
}

/// The manager the labels (or Helm's annotations) of an object name, if any.
async fn manager_of(client: &Client, object: &DynamicObject) -> Result<Option<Manager>, BoxError> {
    let labels = object.labels();
    if let Some(manager) = manager_by_labels(labels) {
        return Ok(Some(manager));
    }
    let annotations = object.annotations();
    let (Some(release), Some(release_namespace)) = (
        annotations.get(HELM_RELEASE_NAME),
        annotations.get(HELM_RELEASE_NAMESPACE),
    ) else {
        return Ok(None);
    };
    let all: Api<HelmRelease> = Api::all(client.clone());
    let list = match all.list(&kube::api::ListParams::default()).await {
        Ok(list) => list.items,
        // Without the right to list every namespace, look where the release is.
        Err(kube::Error::Api(e)) if e.code == 403 => {
            Api::<HelmRelease>::namespaced(client.clone(), release_namespace)
                .list(&kube::api::ListParams::default())
                .await?
                .items
        }
        Err(error) => return Err(error.into()),
    };
    Ok(list
        .iter()
        .find(|hr| hr.release_name() == *release && hr.release_namespace() == *release_namespace)
        .map(|hr| Manager {
            kind: "HelmRelease".to_owned(),
            namespace: hr.namespace().unwrap_or_default(),
            name: hr.name_any(),
        }))
}

/// The manager Flux's labels name: a Kustomization's first, as Flux looks.
fn manager_by_labels(labels: &std::collections::BTreeMap<String, String>) -> Option<Manager> {
    [
        ("Kustomization", NAME_LABEL, NAMESPACE_LABEL),
        ("HelmRelease", HELM_NAME_LABEL, HELM_NAMESPACE_LABEL),
    ]
    .into_iter()
    .find_map(|(kind, name, namespace)| {
        Some(Manager {
            kind: kind.to_owned(),
            name: labels.get(name)?.clone(),
            namespace: labels.get(namespace)?.clone(),
        })
    })
}

/// The sections of a manager and its sources, and the manager's own manager.
async fn manager_sections(
    client: &Client,
    manager: &Manager,
) -> Result<(Vec<Section>, Option<Manager>), BoxError> {
    let ns = manager.namespace.as_str();
    if manager.kind == "Kustomization" {
        let ks = Api::<Kustomization>::namespaced(client.clone(), ns)
            .get_opt(&manager.name)
            .await?
            .ok_or_else(|| crate::common::not_found("Kustomization", ns, &manager.name))?;
        let source_ns = ks.spec.source_ref.namespace.as_deref().unwrap_or(ns);
        let source = Api::<GitRepository>::namespaced(client.clone(), source_ns)
            .get_opt(&ks.spec.source_ref.name)
            .await?;
        let source = source.map_or_else(
            || missing("GitRepository", source_ns, &ks.spec.source_ref.name),
            |repo| git_repository_section(&repo),
        );
        let parent = manager_by_labels(ks.labels());
        return Ok((vec![kustomization_section(&ks), source], parent));
    }
    let hr = Api::<HelmRelease>::namespaced(client.clone(), ns)
        .get_opt(&manager.name)
        .await?
        .ok_or_else(|| crate::common::not_found("HelmRelease", ns, &manager.name))?;
    let mut sections = vec![helm_release_section(&hr)];
    let (chart_ns, chart_name) = helm_chart_of(&hr);
    match Api::<HelmChart>::namespaced(client.clone(), &chart_ns)
        .get_opt(&chart_name)
        .await?
    {
        None => sections.push(missing("HelmChart", &chart_ns, &chart_name)),
        Some(chart) => {
            sections.push(helm_chart_section(&chart));
            let source = &chart.spec.source_ref;
            sections.push(match source.kind.as_str() {
                "HelmRepository" => Api::<HelmRepository>::namespaced(client.clone(), &chart_ns)
                    .get_opt(&source.name)
                    .await?
                    .map_or_else(
                        || missing("HelmRepository", &chart_ns, &source.name),
                        |repo| helm_repository_section(&repo),
                    ),
                _ => Api::<GitRepository>::namespaced(client.clone(), &chart_ns)
                    .get_opt(&source.name)
                    .await?
                    .map_or_else(
                        || missing("GitRepository", &chart_ns, &source.name),
                        |repo| git_repository_section(&repo),
                    ),
            });
        }
    }
    Ok((sections, manager_by_labels(hr.labels())))
}

/// The HelmChart of a HelmRelease: `spec.chartRef`, else the one its status names, else the one
/// the helm controller makes from `spec.chart`.
fn helm_chart_of(hr: &HelmRelease) -> (String, String) {
    let own = hr.namespace().unwrap_or_default();
    if let Some(reference) = &hr.spec.chart_ref {
        let ns = reference.namespace.clone().unwrap_or(own);
        return (ns, reference.name.clone());
    }
    if let Some((ns, name)) = hr
        .status
        .as_ref()
        .and_then(|s| s.helm_chart.as_deref())
        .and_then(|c| c.split_once('/'))
    {
        return (ns.to_owned(), name.to_owned());
    }
    (own, hr.helm_chart_name())
}

/// Resolves a kind as kubectl does, by discovery: core first, then each group in the server's
/// order, preferred versions only. Returns the resource and whether it is namespaced.
pub(crate) async fn resolve_kind(
    client: &Client,
    word: &str,
) -> Result<(ApiResource, bool), BoxError> {
    let word = word.to_lowercase();
    let (name, group) = match word.split_once('.') {
        Some((name, group)) => (name.to_owned(), Some(group.to_owned())),
        None => (word.clone(), None),
    };
    let mut lists = vec![];
    if group.as_deref().is_none_or(str::is_empty) {
        lists.push(client.list_core_api_resources("v1").await?);
        if let Some(found) = find_kind(&lists, &name) {
            return Ok(found);
        }
    }
    for api_group in client.list_api_groups().await?.groups {
        if group.as_deref().is_some_and(|g| g != api_group.name) {
            continue;
        }
        let Some(version) = api_group
            .preferred_version
            .or_else(|| api_group.versions.first().cloned())
        else {
            continue;
        };
        // An aggregated API that is down hides only its own kinds.
        if let Ok(list) = client
            .list_api_group_resources(&version.group_version)
            .await
        {
            lists.push(list);
        }
        if let Some(found) = find_kind(&lists, &name) {
            return Ok(found);
        }
    }
    find_kind(&lists, &name).ok_or_else(|| {
        format!("unknown kind '{word}': the server has no such resource type").into()
    })
}

/// The resource of `lists` whose kind, plural, singular or short name is `name` (lowercase).
fn find_kind(
    lists: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList],
    name: &str,
) -> Option<(ApiResource, bool)> {
    lists.iter().find_map(|list| {
        let found = list.resources.iter().find(|r| {
            !r.name.contains('/')
                && (r.name == name
                    || r.singular_name == name
                    || r.kind.to_lowercase() == name
                    || r.short_names.iter().flatten().any(|s| s == name))
        })?;
        let (group, version) = list
            .group_version
            .rsplit_once('/')
            .unwrap_or(("", list.group_version.as_str()));
        Some((
            ApiResource {
                group: group.to_owned(),
                version: version.to_owned(),
                api_version: list.group_version.clone(),
                kind: found.kind.clone(),
                plural: found.name.clone(),
            },
            found.namespaced,
        ))
    })
}

/// The traced object's section.
fn object_section(kind: &str, object: &DynamicObject) -> Section {
    let value = serde_json::to_value(object).unwrap_or(Value::Null);
    let mut section = vec![
        ("Object", format!("{kind}/{}", object.name_any())),
        ("Namespace", object.namespace().unwrap_or_default()),
        ("Status", "Managed by Weir".to_owned()),
    ];
    // Objects without a Ready (or Available) condition, such as a ConfigMap, show none.
    if let Some((status, _, message)) = crate::common::ready(&value) {
        ready_fields(&mut section, Some((status, message)));
    }
    if let Some(lock) = Lock::read(object.labels(), object.annotations()) {
        section.push(("Lock", lock.describe()));
    }
    section
}

/// `Ready` and `Message`, or `Ready: Unknown` when the object has no such condition.
fn ready_fields(section: &mut Section, ready: Option<(String, String)>) {
    match ready {
        Some((status, message)) => {
            section.push(("Ready", status));
            if !message.is_empty() {
                section.push(("Message", message.replace('\n', " ")));
            }
        }
        None => section.push(("Ready", "Unknown".to_owned())),
    }
}

fn status_fields<S: ObjectStatus>(section: &mut Section, status: Option<&S>) {
    let ready = status
        .and_then(ObjectStatus::ready)
        .map(|c| (format!("{:?}", c.status), c.message.clone()));
    ready_fields(section, ready);
}

/// `Rolled back`: to what, by whom, when and why, from the `weir.dev/` annotations.
fn rollback_field(section: &mut Section, annotations: &std::collections::BTreeMap<String, String>) {
    if let Some(line) = crate::history::rollback_description(annotations) {
        let line = line
            .strip_prefix("rolled back ")
            .unwrap_or(&line)
            .to_owned();
        section.push(("Rolled back", line));
    }
}

fn kustomization_section(ks: &Kustomization) -> Section {
    let status = ks.status.as_ref();
    let mut section = vec![
        ("Kustomization", ks.name_any()),
        ("Namespace", ks.namespace().unwrap_or_default()),
        (
            "Path",
            ks.spec.path.clone().unwrap_or_else(|| "./".to_owned()),
        ),
        (
            "Revision",
            status
                .and_then(|s| s.last_applied_revision.clone())
                .unwrap_or_default(),
        ),
    ];
    if ks.spec.suspend {
        section.push(("Suspended", "True".to_owned()));
    }
    status_fields(&mut section, status);
    rollback_field(&mut section, ks.annotations());
    section
}

fn helm_release_section(hr: &HelmRelease) -> Section {
    let status = hr.status.as_ref();
    let latest = status.and_then(|s| s.history.first());
    let mut section = vec![
        ("HelmRelease", hr.name_any()),
        ("Namespace", hr.namespace().unwrap_or_default()),
        (
            "Revision",
            latest
                .map(|s| s.chart_version.clone())
                .or_else(|| status.and_then(|s| s.last_attempted_revision.clone()))
                .unwrap_or_default(),
        ),
    ];
    if let Some(latest) = latest {
        section.push((
            "Release",
            format!(
                "{}/{} v{} ({})",
                latest.namespace, latest.name, latest.version, latest.status
            ),
        ));
    }
    if hr.spec.suspend {
        section.push(("Suspended", "True".to_owned()));
    }
    status_fields(&mut section, status);
    rollback_field(&mut section, hr.annotations());
    if let Some(lock) = Lock::read(hr.labels(), hr.annotations()) {
        section.push(("Lock", lock.describe()));
    }
    section
}

fn helm_chart_section(chart: &HelmChart) -> Section {
    let mut section = header("HelmChart", chart);
    section.extend([
        ("Chart", chart.spec.chart.clone()),
        ("Version", chart.spec.version.clone()),
    ]);
    artifact_fields(&mut section, chart);
    section
}

fn helm_repository_section(repo: &HelmRepository) -> Section {
    let mut section = header("HelmRepository", repo);
    section.push((
        "URL",
        weir_runtime::redact::strip_url_credentials(&repo.spec.url),
    ));
    artifact_fields(&mut section, repo);
    section
}

fn git_repository_section(repo: &GitRepository) -> Section {
    let mut section = header("GitRepository", repo);
    section.push((
        "URL",
        weir_runtime::redact::strip_url_credentials(&repo.spec.url),
    ));
    if let Some(reference) = &repo.spec.reference {
        for (key, value) in [
            ("Branch", &reference.branch),
            ("Tag", &reference.tag),
            ("Semver", &reference.semver),
            ("Ref", &reference.name),
            ("Commit", &reference.commit),
        ] {
            if let Some(value) = value.as_ref().filter(|v| !v.is_empty()) {
                section.push((key, value.clone()));
            }
        }
    }
    artifact_fields(&mut section, repo);
    section
}

/// The first fields of a section: `<kind>: <name>` and `Namespace`.
fn header(kind: &'static str, object: &impl ResourceExt) -> Section {
    vec![
        (kind, object.name_any()),
        ("Namespace", object.namespace().unwrap_or_default()),
    ]
}

/// A source's last fields: the `Revision` of its stored artifact, and its Ready fields.
fn artifact_fields<K>(section: &mut Section, source: &K)
where
    K: HasStatus<Status: ArtifactStatus + ObjectStatus>,
{
    section.push((
        "Revision",
        crate::get::artifact_revision(source).unwrap_or_default(),
    ));
    status_fields(section, source.status());
}

/// The section of a source that does not exist (or cannot be seen).
fn missing(kind: &'static str, namespace: &str, name: &str) -> Section {
    vec![
        (kind, name.to_owned()),
        ("Namespace", namespace.to_owned()),
        ("Status", "not found".to_owned()),
    ]
}

/// The sections as `flux trace` prints them: `Key:` padded to one column, `---` between.
#[must_use]
pub fn render(sections: &[Section]) -> String {
    let width = sections
        .iter()
        .flatten()
        .map(|(key, _)| key.chars().count() + 1)
        .max()
        .unwrap_or(0);
    let blocks: Vec<String> = sections
        .iter()
        .map(|section| {
            section
                .iter()
                .map(|(key, value)| {
                    let label = format!("{key}:");
                    format!("{label:<width$} {value}").trim_end().to_owned() + "\n"
                })
                .collect()
        })
        .collect();
    blocks.join("---\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_json<T: serde::de::DeserializeOwned>(value: Value) -> T {
        serde_json::from_value(value).unwrap()
    }

    fn ready(message: &str) -> Value {
        serde_json::json!([{"type": "Ready", "status": "True", "reason": "Succeeded",
            "message": message, "lastTransitionTime": "2026-12-01T10:00:00Z"}])
    }

    #[test]
    fn a_kustomization_chain_prints_as_flux_trace_prints_it() {
        let deployment: DynamicObject = from_json(serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "apps",
                "labels": {NAME_LABEL: "app", NAMESPACE_LABEL: "flux-system",
                    "weir.dev/locked": "true"},
                "annotations": {"weir.dev/lock-reason": "incident 42", "weir.dev/locked-by": "alice"}},
            "status": {"conditions": [{"type": "Available", "status": "True",
                "message": "Deployment has minimum availability."}]},
        }));
        let ks: Kustomization = from_json(serde_json::json!({
            "apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
            "metadata": {"name": "app", "namespace": "flux-system",
                "annotations": {"weir.dev/rollback-to": "main@sha1:0123",
                    "weir.dev/rolled-back-by": "bob", "weir.dev/rollback-reason": "bad deploy"}},
            "spec": {"sourceRef": {"kind": "GitRepository", "name": "app"}, "path": "./deploy",
                "interval": "10m", "prune": true},
            "status": {"lastAppliedRevision": "main@sha1:0123", "conditions": ready("Applied revision: main@sha1:0123")},
        }));
        let repo: GitRepository = from_json(serde_json::json!({
            "apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
            "metadata": {"name": "app", "namespace": "flux-system"},
            "spec": {"url": "https://bob:hunter2@git.example.com/app", "interval": "10m",
                "ref": {"branch": "main"}},
            "status": {"artifact": {"path": "a", "url": "u", "revision": "main@sha1:4567",
                "lastUpdateTime": "2026-12-01T10:00:00Z"}},
        }));
        let text = render(&[
            object_section("Deployment", &deployment),
            kustomization_section(&ks),
            git_repository_section(&repo),
        ]);
        assert_eq!(
            text,
            "\
Object:        Deployment/web
Namespace:     apps
Status:        Managed by Weir
Ready:         True
Message:       Deployment has minimum availability.
Lock:          locked by alice: incident 42
---
Kustomization: app
Namespace:     flux-system
Path:          ./deploy
Revision:      main@sha1:0123
Ready:         True
Message:       Applied revision: main@sha1:0123
Rolled back:   to main@sha1:0123 by bob: bad deploy
---
GitRepository: app
Namespace:     flux-system
URL:           https://git.example.com/app
Branch:        main
Revision:      main@sha1:4567
Ready:         Unknown
"
        );
    }

    #[test]
    fn a_helm_release_chain_names_its_chart_and_repository() {
        let hr: HelmRelease = from_json(serde_json::json!({
            "apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
            "metadata": {"name": "db", "namespace": "apps"},
            "spec": {"interval": "5m", "chart": {"spec": {"chart": "postgres",
                "sourceRef": {"kind": "HelmRepository", "name": "charts"}}}},
            "status": {"helmChart": "flux-system/apps-db", "conditions": ready("Helm install succeeded"),
                "history": [{"digest": "d", "name": "db", "namespace": "apps", "version": 2,
                    "status": "deployed", "chartName": "postgres", "chartVersion": "1.2.3",
                    "configDigest": "c", "firstDeployed": "t", "lastDeployed": "t"}]},
        }));
        assert_eq!(
            helm_chart_of(&hr),
            ("flux-system".to_owned(), "apps-db".to_owned())
        );
        let section = helm_release_section(&hr);
        assert_eq!(
            render(&[section]),
            "\
HelmRelease: db
Namespace:   apps
Revision:    1.2.3
Release:     apps/db v2 (deployed)
Ready:       True
Message:     Helm install succeeded
"
        );
    }

    #[test]
    fn managers_are_found_by_flux_labels_kustomization_first() {
        let labels = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert_eq!(
            manager_by_labels(&labels(&[
                (HELM_NAME_LABEL, "db"),
                (HELM_NAMESPACE_LABEL, "apps"),
                (NAME_LABEL, "infra"),
                (NAMESPACE_LABEL, "flux-system"),
            ])),
            Some(Manager {
                kind: "Kustomization".into(),
                namespace: "flux-system".into(),
                name: "infra".into()
            })
        );
        assert_eq!(
            manager_by_labels(&labels(&[
                (HELM_NAME_LABEL, "db"),
                (HELM_NAMESPACE_LABEL, "apps")
            ]))
            .map(|m| m.kind),
            Some("HelmRelease".into())
        );
        assert_eq!(
            manager_by_labels(&labels(&[(NAME_LABEL, "only-name")])),
            None
        );
    }

    #[test]
    fn kinds_resolve_by_kind_plural_singular_and_short_name() {
        let lists: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList> =
            from_json(serde_json::json!([{
                "groupVersion": "apps/v1",
                "resources": [
                    {"name": "deployments/scale", "singularName": "", "namespaced": true,
                        "kind": "Scale", "verbs": []},
                    {"name": "deployments", "singularName": "deployment", "namespaced": true,
                        "kind": "Deployment", "verbs": [], "shortNames": ["deploy"]},
                ],
            }]));
        for word in ["deployment", "deployments", "deploy"] {
            let (resource, namespaced) = find_kind(&lists, word).unwrap();
            assert_eq!(
                (
                    resource.api_version.as_str(),
                    resource.plural.as_str(),
                    namespaced
                ),
                ("apps/v1", "deployments", true)
            );
        }
        assert!(find_kind(&lists, "scale").is_none());
        assert!(find_kind(&lists, "pod").is_none());
    }
}
