//! `dependsOn` across kinds: whether each dependency (a Kustomization or a HelmRelease) is
//! ready — Ready=True at its current generation, or its `readyExpr` true — and, when one is not,
//! whether the dependencies form a cycle, which no wait would ever end.
//!
//! Dependencies are read as JSON through the API (any kind alike), so that a Kustomization may
//! depend on a HelmRelease and a HelmRelease on a Kustomization.

use std::collections::BTreeSet;
use std::sync::Arc;

use kube::api::{ApiResource, DynamicObject};
use kube::{Api, Client};
use serde_json::Value;
use weir_api::kustomize::{DependencyKind, DependencyReference};

use crate::health::{cel_env, to_cel};

/// The most objects a cycle search reads: dependency graphs are small; a bound keeps a huge one
/// from costing a reconcile more than this many reads.
const MAX_VISITS: usize = 256;

/// One object of a dependency graph.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Node {
    pub kind: DependencyKind,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.kind.as_str(), self.namespace, self.name)
    }
}

impl Node {
    /// The dependency `reference` of an object of `kind` in `namespace`.
    #[must_use]
    pub fn of(kind: DependencyKind, namespace: &str, reference: &DependencyReference) -> Self {
        Self {
            kind: reference.kind.unwrap_or(kind),
            namespace: reference
                .namespace
                .clone()
                .unwrap_or_else(|| namespace.to_owned()),
            name: reference.name.clone(),
        }
    }

    /// `namespace/name`, as messages name a dependency of the same kind.
    #[must_use]
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Why dependencies hold a reconcile back.
#[derive(Debug, thiserror::Error)]
pub enum DependencyError {
    /// `dependsOn[index]` is missing or not ready; `why` says what its `readyExpr` returned.
    #[error("dependency '{key}' is not ready{}", why.as_deref().map(|w| format!(": dependsOn[{index}].readyExpr {w}")).unwrap_or_default())]
    NotReady {
        key: String,
        index: usize,
        why: Option<String>,
    },
    #[error("invalid dependsOn[{index}].readyExpr")]
    Expr {
        index: usize,
        #[source]
        source: cel::ParseErrors,
    },
    /// The dependencies lead back to the object itself: every name in the cycle, in order.
    #[error("dependency cycle: {0}")]
    Cycle(String),
    #[error("cannot read dependency '{key}'")]
    Kube {
        key: String,
        #[source]
        source: kube::Error,
    },
}

fn api_resource(kind: DependencyKind) -> ApiResource {
    let (group, version) = kind.api_version().split_once('/').unwrap_or(("", ""));
    ApiResource {
        group: group.to_owned(),
        version: version.to_owned(),
        api_version: kind.api_version().to_owned(),
        kind: kind.as_str().to_owned(),
        plural: kind.plural().to_owned(),
    }
}

/// Reads `node` as JSON; `None` when it does not exist.
pub async fn get(client: &Client, node: &Node) -> Result<Option<Value>, DependencyError> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &node.namespace, &api_resource(node.kind));
    let found = api
        .get_opt(&node.name)
        .await
        .map_err(|source| DependencyError::Kube {
            key: node.to_string(),
            source,
        })?;
    Ok(found.and_then(|object| serde_json::to_value(object).ok()))
}

/// Whether `object` is Ready=True at its current generation, as Flux checks a dependency.
#[must_use]
pub fn is_ready(object: &Value) -> bool {
    let generation = object
        .pointer("/metadata/generation")
        .and_then(Value::as_i64);
    let status = object.get("status");
    let observed = status
        .and_then(|s| s.get("observedGeneration"))
        .and_then(Value::as_i64);
    let ready = status
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
        .and_then(|conditions| {
            conditions
                .iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
        });
    observed == generation
        && ready.is_some_and(|c| {
            c.get("status").and_then(Value::as_str) == Some("True")
                && c.get("observedGeneration")
                    .and_then(Value::as_i64)
                    .is_none_or(|g| Some(g) == generation)
        })
}

/// Checks every dependency of `dependent` (an object of `kind`, as JSON, whose `dependsOn` is
/// `references`): each must exist and be ready (by its `readyExpr` when it has one). Returns
/// the dependencies as read, in order. When one is not ready and the dependencies lead back to
/// `dependent`, the cycle is the error instead.
pub async fn check(
    client: &Client,
    kind: DependencyKind,
    dependent: &Value,
    references: &[DependencyReference],
) -> Result<Vec<(Node, Value)>, DependencyError> {
    let namespace = dependent
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    // Compiled before any dependency is read: a bad expression fails whatever their state.
    let env = cel_env();
    let programs = references
        .iter()
        .enumerate()
        .map(|(index, reference)| {
            reference
                .ready_expr
                .as_deref()
                .filter(|e| !e.trim().is_empty())
                .map(|e| env.compile(e))
                .transpose()
                .map_err(|source| DependencyError::Expr { index, source })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut found = Vec::with_capacity(references.len());
    for (index, (reference, program)) in references.iter().zip(&programs).enumerate() {
        let node = Node::of(kind, &namespace, reference);
        let key = if node.kind == kind {
            node.key()
        } else {
            node.to_string()
        };
        let object = get(client, &node).await?;
        let refusal = match (&object, program) {
            (None, _) => Some(None),
            (Some(dep), Some(program)) => refusal(program, &env, dep, dependent).map(Some),
            (Some(dep), None) => (!is_ready(dep)).then_some(None),
        };
        if let Some(why) = refusal {
            let start = Node {
                kind,
                namespace: namespace.clone(),
                name: dependent
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            };
            if let Some(cycle) = find_cycle(client, &start, references).await? {
                let names: Vec<String> = cycle.iter().map(ToString::to_string).collect();
                return Err(DependencyError::Cycle(names.join(" -> ")));
            }
            return Err(DependencyError::NotReady { key, index, why });
        }
        if let Some(object) = object {
            found.push((node, object));
        }
    }
    Ok(found)
}

/// Why `program` does not say `dep` is ready (`None` when it does): it returned false,
/// something other than a bool, or failed to evaluate.
fn refusal(
    program: &cel::Program,
    env: &Arc<cel::Env>,
    dep: &Value,
    dependent: &Value,
) -> Option<String> {
    let mut context = cel::Context::with_env(Arc::clone(env));
    for (name, object) in [("dep", dep), ("self", dependent)] {
        context.add_variable_from_value(name, to_cel(object));
    }
    match program.execute(&context) {
        Ok(cel::Value::Bool(true)) => None,
        Ok(cel::Value::Bool(false)) => Some("is false".to_owned()),
        Ok(other) => Some(format!("returned {}, not a bool", other.type_of())),
        Err(error) => Some(format!("failed to evaluate: {error}")),
    }
}

/// The `dependsOn` of `object` (of `kind`), resolved to nodes.
#[must_use]
pub fn dependencies_of(kind: DependencyKind, object: &Value) -> Vec<Node> {
    let namespace = object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    object
        .pointer("/spec/dependsOn")
        .and_then(|d| serde_json::from_value::<Vec<DependencyReference>>(d.clone()).ok())
        .unwrap_or_default()
        .iter()
        .map(|reference| Node::of(kind, namespace, reference))
        .collect()
}

/// A path of dependencies from `start` (whose `dependsOn` is `references`) back to `start`,
/// searched depth first through what the API holds now; `None` when there is none (within
/// [`MAX_VISITS`] reads).
pub async fn find_cycle(
    client: &Client,
    start: &Node,
    references: &[DependencyReference],
) -> Result<Option<Vec<Node>>, DependencyError> {
    let first: Vec<Node> = references
        .iter()
        .map(|r| Node::of(start.kind, &start.namespace, r))
        .collect();
    let mut visited = BTreeSet::new();
    // Each entry: a path from start, and the dependencies of its last node left to follow.
    let mut stack: Vec<(Vec<Node>, Vec<Node>)> = vec![(vec![start.clone()], first)];
    while let Some((path, pending)) = stack.last_mut() {
        let Some(next) = pending.pop() else {
            stack.pop();
            continue;
        };
        if next == *start {
            let mut cycle = path.clone();
            cycle.push(next);
            return Ok(Some(cycle));
        }
        if !visited.insert(next.clone()) || visited.len() > MAX_VISITS {
            continue;
        }
        let Some(object) = get(client, &next).await? else {
            continue;
        };
        let mut longer = path.clone();
        longer.push(next.clone());
        stack.push((longer, dependencies_of(next.kind, &object)));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn ready_means_ready_true_at_the_current_generation() {
        let ready = json!({
            "metadata": { "generation": 2 },
            "status": { "observedGeneration": 2, "conditions": [
                { "type": "Ready", "status": "True", "observedGeneration": 2 }
            ] },
        });
        assert!(is_ready(&ready));
        let mut stale = ready.clone();
        stale["metadata"]["generation"] = json!(3);
        assert!(!is_ready(&stale));
        let mut failed = ready.clone();
        failed["status"]["conditions"][0]["status"] = json!("False");
        assert!(!is_ready(&failed));
        assert!(!is_ready(&json!({ "metadata": { "generation": 1 } })));
    }

    #[test]
    fn dependencies_default_to_the_dependents_kind_and_namespace() {
        let object = json!({
            "metadata": { "namespace": "apps", "name": "a" },
            "spec": { "dependsOn": [
                { "name": "b" },
                { "name": "c", "namespace": "infra", "kind": "HelmRelease" },
            ] },
        });
        let nodes = dependencies_of(DependencyKind::Kustomization, &object);
        assert_eq!(
            nodes.iter().map(ToString::to_string).collect::<Vec<_>>(),
            vec!["Kustomization/apps/b", "HelmRelease/infra/c"]
        );
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn ready_exprs_read_the_dependency_and_the_dependent() {
        let object = |labels: Value, status: Value| {
            json!({
                "metadata": { "name": "a", "namespace": "n", "generation": 2, "labels": labels },
                "status": status,
            })
        };
        let env = cel_env();
        let program = env
            .compile(
                "dep.metadata.generation == dep.status.observedGeneration && \
                 dep.metadata.labels['v'] == self.metadata.labels['v']",
            )
            .unwrap();
        let me = object(json!({ "v": "1" }), json!({}));
        let dep = object(json!({ "v": "1" }), json!({ "observedGeneration": 2 }));
        assert_eq!(refusal(&program, &env, &dep, &me), None);
        let older = object(json!({ "v": "0" }), json!({ "observedGeneration": 2 }));
        assert_eq!(
            refusal(&program, &env, &older, &me).as_deref(),
            Some("is false")
        );
        let unobserved = object(json!({ "v": "1" }), json!({}));
        let why = refusal(&program, &env, &unobserved, &me).unwrap();
        assert!(why.starts_with("failed to evaluate"), "{why}");
        let number = env.compile("dep.metadata.generation").unwrap();
        assert_eq!(
            refusal(&number, &env, &dep, &me).as_deref(),
            Some("returned int, not a bool")
        );
    }
}
