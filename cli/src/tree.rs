//! `weir tree kustomization|helmrelease <name>`: the objects a Kustomization or HelmRelease
//! applied, as a tree, as `flux tree` draws it. Nested Kustomizations and HelmReleases are
//! expanded (each once: Flux's own `flux-system` lists itself). A Kustomization's objects are its
//! `status.inventory`; a HelmRelease's are its `status.inventory` (Weir records it, Flux does
//! not), else the manifest of the latest release in Helm's storage, as `flux tree` reads it.
//!
//! Beyond Flux: a locked workload or HelmRelease is marked `[locked by …]` and a rolled-back
//! Kustomization or HelmRelease `[rolled back to …]` (the `weir.dev/` labels and annotations of
//! `weir_api::control`), which costs one read of each lockable object in the tree.

use std::{collections::BTreeSet, process::ExitCode};

use kube::{
    Api, Client, ResourceExt,
    api::{ApiResource, DynamicObject, GroupVersionKind},
};
use serde::Serialize;
use serde_json::Value;
use weir_api::{
    HelmRelease, Kustomization,
    control::{LOCKABLE_KINDS, Lock, ROLLBACK_TO},
    kustomize::{KUSTOMIZE_GROUP, ObjMetadata, ResourceInventory, ResourceRef},
};

use crate::{
    common::{AppliedObject, HELM_GROUP, Output, block_on, not_found},
    get::BoxError,
};

/// Flags of `weir tree`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub object: AppliedObject,
    /// How to print the tree.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// One object of the tree, and the objects it applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    pub kind: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub group: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock: Option<LockView>,
    /// `weir.dev/rollback-to`, on a rolled-back Kustomization or HelmRelease.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rolled_back_to: Option<String>,
    /// Why this object could not be read or expanded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<Node>,
}

/// A lock, for JSON and YAML.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LockView {
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// One line: `locked by alice: incident 42 (until …)`.
    pub description: String,
}

impl From<&Lock> for LockView {
    fn from(lock: &Lock) -> Self {
        let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
            t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        };
        Self {
            reason: lock.reason.clone(),
            by: lock.by.clone(),
            at: time(lock.at),
            expires: time(lock.expires),
            description: lock.describe(),
        }
    }
}

impl Node {
    fn leaf(meta: &ObjMetadata) -> Self {
        Self {
            kind: meta.kind.clone(),
            group: meta.group.clone(),
            namespace: meta.namespace.clone(),
            name: meta.name.clone(),
            lock: None,
            rolled_back_to: None,
            error: None,
            resources: vec![],
        }
    }

    /// `Kind/namespace/name`, or `Kind/name` when cluster-scoped, as `flux tree` names objects.
    #[must_use]
    pub fn label(&self) -> String {
        if self.namespace.is_empty() {
            format!("{}/{}", self.kind, self.name)
        } else {
            format!("{}/{}/{}", self.kind, self.namespace, self.name)
        }
    }

    /// The label and its marks: lock, rollback, error.
    fn line(&self) -> String {
        let mut line = self.label();
        if let Some(lock) = &self.lock {
            line.extend([" [", lock.description.as_str(), "]"]);
        }
        if let Some(to) = &self.rolled_back_to {
            line.extend([" [rolled back to ", to.as_str(), "]"]);
        }
        if let Some(error) = &self.error {
            line.extend([" [", error.as_str(), "]"]);
        }
        line
    }
}

/// Runs `weir tree`.
pub fn run(args: &Args) -> ExitCode {
    block_on("tree", async {
        let (client, root) = args.object.connect().await?;
        let tree = build(&client, &root).await?;
        render(&tree, args.output)
    })
}

/// The tree as `output` says.
pub fn render(tree: &Node, output: Output) -> Result<String, BoxError> {
    Ok(crate::common::structured(tree, output)?.unwrap_or_else(|| draw(tree)))
}

/// The tree drawn as `flux tree` draws it.
#[must_use]
pub fn draw(tree: &Node) -> String {
    let mut out = tree.line();
    out.push('\n');
    draw_children(&tree.resources, "", &mut out);
    out
}

fn draw_children(children: &[Node], prefix: &str, out: &mut String) {
    for (i, child) in children.iter().enumerate() {
        let last = i + 1 == children.len();
        out.push_str(prefix);
        out.push_str(if last { "└── " } else { "├── " });
        out.push_str(&child.line());
        out.push('\n');
        let deeper = format!("{prefix}{}", if last { "    " } else { "│   " });
        draw_children(&child.resources, &deeper, out);
    }
}

/// The tree under `root`, a Kustomization or HelmRelease; an error when it does not exist.
pub(crate) async fn build(client: &Client, root: &ObjMetadata) -> Result<Node, BoxError> {
    let mut seen = BTreeSet::new();
    let mut node = Node::leaf(root);
    if expand(client, &mut node, &mut seen).await? {
        Ok(node)
    } else {
        Err(not_found(&root.kind, &root.namespace, &root.name))
    }
}

/// Fills in `node`'s marks and, for a Kustomization or HelmRelease seen for the first time, its
/// objects, recursively. False when the object does not exist. Errors reading anything but the
/// root become the node's `error`, so one unreadable object does not hide the rest.
fn expand<'a>(
    client: &'a Client,
    node: &'a mut Node,
    seen: &'a mut BTreeSet<(String, String, String)>,
) -> std::pin::Pin<Box<dyn Future<Output = Result<bool, BoxError>> + 'a>> {
    Box::pin(async move {
        let key = (node.kind.clone(), node.namespace.clone(), node.name.clone());
        let first = seen.insert(key);
        let entries = match read(client, node, first).await? {
            Read::Missing => return Ok(false),
            Read::Leaf => return Ok(true),
            Read::Applier(_) if !first => return Ok(true),
            Read::Applier(entries) => entries,
        };
        for entry in entries {
            let mut child = match ObjMetadata::parse(&entry.id) {
                Some(meta) => Node::leaf(&meta),
                None => Node {
                    error: Some("unreadable inventory id".to_owned()),
                    ..Node::leaf(&ObjMetadata {
                        namespace: String::new(),
                        name: entry.id.clone(),
                        group: String::new(),
                        kind: "?".to_owned(),
                    })
                },
            };
            match expand(client, &mut child, seen).await {
                Ok(true) => {}
                Ok(false) => child.error = Some("not found".to_owned()),
                Err(error) => child.error = Some(weir_runtime::chain(&*error)),
            }
            node.resources.push(child);
        }
        Ok(true)
    })
}

/// What reading one object of the tree found.
enum Read {
    Missing,
    /// An object that applies no others.
    Leaf,
    /// A Kustomization or HelmRelease, and its inventory (read only the first time it is seen).
    Applier(Vec<ResourceRef>),
}

/// Reads the object `node` names and sets its marks: a rollback on a Kustomization or
/// HelmRelease, a lock on a HelmRelease or workload.
async fn read(client: &Client, node: &mut Node, first: bool) -> Result<Read, BoxError> {
    match (node.group.as_str(), node.kind.as_str()) {
        (KUSTOMIZE_GROUP, "Kustomization") => {
            let api: Api<Kustomization> = Api::namespaced(client.clone(), &node.namespace);
            let Some(ks) = api.get_opt(&node.name).await? else {
                return Ok(Read::Missing);
            };
            node.rolled_back_to = ks.annotations().get(ROLLBACK_TO).cloned();
            let inventory = ks.status.and_then(|s| s.inventory);
            Ok(Read::Applier(
                inventory.map(|i| i.entries).unwrap_or_default(),
            ))
        }
        (HELM_GROUP, "HelmRelease") => {
            let api: Api<HelmRelease> = Api::namespaced(client.clone(), &node.namespace);
            let Some(hr) = api.get_opt(&node.name).await? else {
                return Ok(Read::Missing);
            };
            node.rolled_back_to = hr.annotations().get(ROLLBACK_TO).cloned();
            node.lock = Lock::read(hr.labels(), hr.annotations()).map(|l| LockView::from(&l));
            if !first {
                return Ok(Read::Applier(vec![]));
            }
            Ok(Read::Applier(
                match helm_release_inventory(client, &hr).await {
                    Ok(inventory) => inventory.entries,
                    Err(error) => {
                        node.error = Some(weir_runtime::chain(&*error));
                        vec![]
                    }
                },
            ))
        }
        (group, kind) if is_lockable(group, kind) => {
            if let Some(object) = read_workload(client, node).await? {
                node.lock =
                    Lock::read(object.labels(), object.annotations()).map(|l| LockView::from(&l));
            }
            Ok(Read::Leaf)
        }
        _ => Ok(Read::Leaf),
    }
}

/// Whether `weir lock` can lock objects of this group and kind.
pub(crate) fn is_lockable(group: &str, kind: &str) -> bool {
    LOCKABLE_KINDS.contains(&(group, kind))
}

/// The workload `node` names (a lockable kind, whose resource name is known), if it exists.
async fn read_workload(client: &Client, node: &Node) -> Result<Option<DynamicObject>, BoxError> {
    let version = match node.group.as_str() {
        "batch" | "apps" => "v1",
        _ => return Ok(None),
    };
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(&node.group, version, &node.kind));
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &node.namespace, &resource);
    Ok(api.get_opt(&node.name).await?)
}

/// A HelmRelease's objects: `status.inventory`, else those of its latest release's manifest.
async fn helm_release_inventory(
    client: &Client,
    hr: &HelmRelease,
) -> Result<ResourceInventory, BoxError> {
    if let Some(inventory) = hr.status.as_ref().and_then(|s| s.inventory.clone()) {
        return Ok(inventory);
    }
    let namespace = hr.storage_namespace();
    let Some(release) = weir_helm::storage::latest(client, &namespace, &hr.release_name()).await?
    else {
        return Ok(ResourceInventory::default());
    };
    let release_namespace = hr.release_namespace();
    let mut entries = vec![];
    for (meta, version) in manifest_objects(&release.manifest) {
        let namespace = match meta.namespace {
            Some(namespace) => namespace,
            None if namespaced(client, &meta.group, &version, &meta.kind).await => {
                release_namespace.clone()
            }
            None => String::new(),
        };
        let id = ObjMetadata {
            namespace,
            name: meta.name,
            group: meta.group,
            kind: meta.kind,
        };
        entries.push(ResourceRef {
            id: id.id(),
            v: version,
        });
    }
    entries.sort();
    entries.dedup();
    Ok(ResourceInventory { entries })
}

/// Whether a kind is namespaced, by discovery; namespaced when discovery cannot tell.
async fn namespaced(client: &Client, group: &str, version: &str, kind: &str) -> bool {
    let gvk = GroupVersionKind::gvk(group, version, kind);
    kube::discovery::pinned_kind(client, &gvk)
        .await
        .map_or(true, |(_, caps)| {
            caps.scope == kube::discovery::Scope::Namespaced
        })
}

/// An object's identity in a manifest; `namespace` as written, if written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ManifestObject {
    pub namespace: Option<String>,
    pub name: String,
    pub group: String,
    pub kind: String,
}

/// The objects of a multi-document YAML manifest with their API version; documents that are
/// not objects (empty, comments, unparseable) are skipped.
pub(crate) fn manifest_objects(manifest: &str) -> Vec<(ManifestObject, String)> {
    use serde::Deserialize as _;
    serde_yaml_ng::Deserializer::from_str(manifest)
        .filter_map(|document| Value::deserialize(document).ok())
        .filter_map(|object| {
            let api_version = object.get("apiVersion")?.as_str()?;
            let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
            let metadata = object.get("metadata")?;
            Some((
                ManifestObject {
                    namespace: metadata
                        .get("namespace")
                        .and_then(Value::as_str)
                        .filter(|n| !n.is_empty())
                        .map(str::to_owned),
                    name: metadata.get("name")?.as_str()?.to_owned(),
                    group: group.to_owned(),
                    kind: object.get("kind")?.as_str()?.to_owned(),
                },
                version.to_owned(),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(kind: &str, namespace: &str, name: &str, resources: Vec<Node>) -> Node {
        Node {
            resources,
            ..Node::leaf(&ObjMetadata {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                group: String::new(),
                kind: kind.to_owned(),
            })
        }
    }

    fn sample() -> Node {
        let lock = Lock {
            reason: "incident 42".to_owned(),
            by: Some("alice".to_owned()),
            at: None,
            expires: None,
        };
        let web = Node {
            lock: Some(LockView::from(&lock)),
            ..node("Deployment", "apps", "web", vec![])
        };
        let child = Node {
            rolled_back_to: Some("main@sha1:0123abcd".to_owned()),
            ..node(
                "Kustomization",
                "apps",
                "child",
                vec![
                    node("ConfigMap", "apps", "a", vec![]),
                    node(
                        "HelmRelease",
                        "apps",
                        "db",
                        vec![node("StatefulSet", "apps", "db", vec![])],
                    ),
                ],
            )
        };
        let gone = Node {
            error: Some("not found".to_owned()),
            ..node("Kustomization", "apps", "gone", vec![])
        };
        node(
            "Kustomization",
            "flux-system",
            "root",
            vec![node("Namespace", "", "apps", vec![]), child, web, gone],
        )
    }

    #[test]
    fn trees_are_drawn_as_flux_tree_draws_them_with_locks_and_rollbacks_marked() {
        assert_eq!(
            draw(&sample()),
            "\
Kustomization/flux-system/root
├── Namespace/apps
├── Kustomization/apps/child [rolled back to main@sha1:0123abcd]
│   ├── ConfigMap/apps/a
│   └── HelmRelease/apps/db
│       └── StatefulSet/apps/db
├── Deployment/apps/web [locked by alice: incident 42]
└── Kustomization/apps/gone [not found]
"
        );
    }

    #[test]
    fn json_nests_resources_and_leaves_out_what_is_empty() {
        let json: Value = serde_json::from_str(&render(&sample(), Output::Json).unwrap()).unwrap();
        assert_eq!(json["name"], "root");
        assert_eq!(
            json["resources"][0],
            serde_json::json!({"kind": "Namespace", "name": "apps"})
        );
        assert_eq!(json["resources"][1]["rolledBackTo"], "main@sha1:0123abcd");
        assert_eq!(
            json["resources"][1]["resources"][1]["resources"][0]["kind"],
            "StatefulSet"
        );
        assert_eq!(json["resources"][2]["lock"]["by"], "alice");
        assert_eq!(json["resources"][2]["lock"]["reason"], "incident 42");
        let yaml = render(&sample(), Output::Yaml).unwrap();
        assert!(yaml.starts_with("kind: Kustomization\n"), "{yaml}");
    }

    #[test]
    fn a_manifest_names_its_objects_and_skips_what_is_not_one() {
        let manifest = "---\n# Source: chart/templates/sa.yaml\napiVersion: v1\nkind: ServiceAccount\n\
                        metadata:\n  name: app\n---\n\n---\napiVersion: apps/v1\nkind: Deployment\n\
                        metadata:\n  name: app\n  namespace: other\n---\nnot: an object\n";
        let objects = manifest_objects(manifest);
        assert_eq!(
            objects,
            vec![
                (
                    ManifestObject {
                        namespace: None,
                        name: "app".into(),
                        group: String::new(),
                        kind: "ServiceAccount".into()
                    },
                    "v1".to_owned()
                ),
                (
                    ManifestObject {
                        namespace: Some("other".into()),
                        name: "app".into(),
                        group: "apps".into(),
                        kind: "Deployment".into()
                    },
                    "v1".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn workloads_and_helm_releases_are_lockable() {
        assert!(is_lockable("apps", "Deployment"));
        assert!(!is_lockable("", "ConfigMap"));
    }
}
