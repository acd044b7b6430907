//! `spec.ignore` (Flux 2.9): JSON pointers, per selected object, that drift detection and apply
//! leave to the cluster. A live object differing from git only at ignored paths is not
//! reapplied; when something else changed, each drifted ignored field is left out of the apply
//! when another field manager's apply owns it (an HPA's `/spec/replicas`), or applied with the
//! live value when Weir owns it alone, so neither the other manager's value nor the cluster's is
//! overwritten by git's.

use std::collections::BTreeMap;

use kube::core::{Expression, Selector as LabelSelector, SelectorExt as _};
use regex::Regex;
use serde_json::Value;
use weir_api::kustomize::{IgnoreRule, Selector};

/// Why a `spec.ignore` rule does not compile: the field at fault and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{field}")]
pub struct IgnoreRuleError {
    /// The field, as `ignore[1].target.name`.
    pub field: String,
    /// What is wrong with it.
    #[source]
    pub problem: IgnoreProblem,
}

/// What is wrong with a field of a `spec.ignore` rule.
#[derive(Debug, thiserror::Error)]
pub enum IgnoreProblem {
    /// In Weir's words: not a JSON pointer, not a label selector.
    #[error("{0}")]
    Invalid(String),
    /// The regular expression does not compile.
    #[error(transparent)]
    Pattern(regex::Error),
}

/// The compiled `spec.ignore` rules.
#[derive(Debug, Default)]
pub struct IgnoreRules(Vec<Rule>);

#[derive(Debug)]
struct Rule {
    target: Option<Target>,
    paths: Vec<String>,
}

#[derive(Debug)]
struct Target {
    group: Option<String>,
    version: Option<String>,
    kind: Option<String>,
    name: Option<Regex>,
    namespace: Option<Regex>,
    labels: Option<LabelSelector>,
    annotations: Option<LabelSelector>,
}

impl IgnoreRules {
    /// Compiles `rules`; an error names the field (`ignore[1].target.labelSelector`).
    pub fn compile(rules: &[IgnoreRule]) -> Result<Self, IgnoreRuleError> {
        let mut out = Vec::with_capacity(rules.len());
        for (i, rule) in rules.iter().enumerate() {
            for (j, path) in rule.paths.iter().enumerate() {
                if !path.starts_with('/') {
                    return Err(IgnoreRuleError {
                        field: format!("ignore[{i}].paths[{j}]"),
                        problem: IgnoreProblem::Invalid(format!(
                            "{path:?} is not a JSON pointer (RFC 6901): it must start with '/'"
                        )),
                    });
                }
            }
            let target = rule
                .target
                .as_ref()
                .map(|t| {
                    Target::compile(t).map_err(|(field, problem)| IgnoreRuleError {
                        field: format!("ignore[{i}].target.{field}"),
                        problem,
                    })
                })
                .transpose()?;
            out.push(Rule {
                target,
                paths: rule.paths.clone(),
            });
        }
        Ok(Self(out))
    }

    /// The ignored paths of `object`.
    #[must_use]
    pub fn paths_for(&self, object: &Value) -> Vec<&str> {
        self.0
            .iter()
            .filter(|r| r.target.as_ref().is_none_or(|t| t.matches(object)))
            .flat_map(|r| r.paths.iter().map(String::as_str))
            .collect()
    }
}

impl Target {
    /// The compiled selector, or the field at fault (`name`) and what is wrong with it.
    fn compile(s: &Selector) -> Result<Self, (&'static str, IgnoreProblem)> {
        let regex = |field: &'static str, v: &Option<String>| {
            v.as_deref()
                .filter(|v| !v.is_empty())
                .map(|v| {
                    Regex::new(&format!("^(?:{v})$"))
                        .map_err(|e| (field, IgnoreProblem::Pattern(e)))
                })
                .transpose()
        };
        let selector = |field: &'static str, v: &Option<String>| {
            v.as_deref()
                .filter(|v| !v.trim().is_empty())
                .map(|v| {
                    parse_selector(v)
                        .map_err(|e| (field, IgnoreProblem::Invalid(format!("{v:?}: {e}"))))
                })
                .transpose()
        };
        let non_empty = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
        Ok(Self {
            group: s.group.clone(),
            version: non_empty(&s.version),
            kind: non_empty(&s.kind),
            name: regex("name", &s.name)?,
            namespace: regex("namespace", &s.namespace)?,
            labels: selector("labelSelector", &s.label_selector)?,
            annotations: selector("annotationSelector", &s.annotation_selector)?,
        })
    }

    /// kustomize's selector rules: group, version and kind exact (an empty group is the core
    /// group only when given), name and namespace anchored regular expressions.
    fn matches(&self, object: &Value) -> bool {
        let text = |pointer: &str| object.pointer(pointer).and_then(Value::as_str);
        let api_version = text("/apiVersion").unwrap_or_default();
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let map = |pointer: &str| -> BTreeMap<String, String> {
            object
                .pointer(pointer)
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                        .collect()
                })
                .unwrap_or_default()
        };
        self.group.as_deref().is_none_or(|g| g == group)
            && self.version.as_deref().is_none_or(|v| v == version)
            && self
                .kind
                .as_deref()
                .is_none_or(|k| Some(k) == text("/kind"))
            && self
                .name
                .as_ref()
                .is_none_or(|r| r.is_match(text("/metadata/name").unwrap_or_default()))
            && self
                .namespace
                .as_ref()
                .is_none_or(|r| r.is_match(text("/metadata/namespace").unwrap_or_default()))
            && self
                .labels
                .as_ref()
                .is_none_or(|s| s.matches(&map("/metadata/labels")))
            && self
                .annotations
                .as_ref()
                .is_none_or(|s| s.matches(&map("/metadata/annotations")))
    }
}

/// Parses a Kubernetes label selector string (`app=web,tier!=db,env in (a,b),!legacy,canary`)
/// into kube's [`LabelSelector`], which does the matching. (kube parses structured selectors
/// only; this is the string form's small grammar.)
fn parse_selector(text: &str) -> Result<LabelSelector, String> {
    let mut expressions = vec![];
    for term in split_terms(text)? {
        let term = term.trim();
        let words: Vec<&str> = term.split_whitespace().collect();
        let set = |rest: &str| -> Result<Vec<String>, String> {
            let inner = rest
                .trim()
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| format!("{term:?}: the values must be in parentheses"))?;
            Ok(inner
                .split(',')
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .collect())
        };
        let expression = if let Some(key) = term.strip_prefix('!') {
            Expression::DoesNotExist(key_of(key.trim())?)
        } else if let Some((key, value)) = term.split_once("!=") {
            Expression::NotEqual(key_of(key.trim())?, value.trim().to_owned())
        } else if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
            Expression::Equal(key_of(key.trim())?, value.trim().to_owned())
        } else if words.len() >= 2 && words[1] == "in" {
            let rest = term[term.find(" in").unwrap_or_default() + 3..].to_owned();
            Expression::In(key_of(words[0])?, set(&rest)?.into_iter().collect())
        } else if words.len() >= 2 && words[1] == "notin" {
            let rest = term[term.find(" notin").unwrap_or_default() + 6..].to_owned();
            Expression::NotIn(key_of(words[0])?, set(&rest)?.into_iter().collect())
        } else if words.len() == 1 {
            Expression::Exists(key_of(words[0])?)
        } else {
            return Err(format!("cannot parse {term:?}"));
        };
        expressions.push(expression);
    }
    Ok(expressions.into_iter().collect())
}

/// The terms of a selector: split at commas outside parentheses.
fn split_terms(text: &str) -> Result<Vec<&str>, String> {
    let (mut terms, mut depth, mut start) = (vec![], 0_i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if depth < 0 {
            return Err("unbalanced ')'".to_owned());
        }
    }
    if depth != 0 {
        return Err("unbalanced '('".to_owned());
    }
    terms.push(&text[start..]);
    Ok(terms)
}

fn key_of(key: &str) -> Result<String, String> {
    let valid = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if valid {
        Ok(key.to_owned())
    } else {
        Err(format!("{key:?} is not a label key"))
    }
}

/// `object` without the values at `paths` (drift detection compares what is left).
#[must_use]
pub fn without_paths(mut object: Value, paths: &[&str]) -> Value {
    for path in paths {
        remove_pointer(&mut object, path);
    }
    object
}

/// What the apply of `desired` sends, given the live object and the dry run's result: each
/// ignored path whose value differs between `live` and `dry_run` is left out when another
/// field manager's apply (not `manager`) owns it, and set to the live value otherwise.
#[must_use]
pub fn payload(
    desired: &Value,
    live: &Value,
    dry_run: &Value,
    paths: &[&str],
    manager: &str,
) -> Value {
    let mut out = desired.clone();
    for path in paths {
        let (now, planned) = (live.pointer(path), dry_run.pointer(path));
        if now == planned {
            continue;
        }
        match now {
            Some(value) if !owned_by_other_apply(live, path, manager) => {
                set_pointer(&mut out, path, value.clone());
            }
            _ => remove_pointer(&mut out, path),
        }
    }
    out
}

/// Whether an apply manager other than `manager` owns the field at `path` of `live`, by its
/// `managedFields` (object fields only: a path through a list is taken as Weir's alone).
fn owned_by_other_apply(live: &Value, path: &str, manager: &str) -> bool {
    let segments: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(|s| format!("f:{}", s.replace("~1", "/").replace("~0", "~")))
        .collect();
    live.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|entry| {
            entry["operation"] == "Apply"
                && entry["manager"] != manager
                && entry
                    .get("subresource")
                    .is_none_or(|s| s.as_str() == Some(""))
        })
        .any(|entry| {
            let mut fields = &entry["fieldsV1"];
            segments.iter().all(|segment| match fields.get(segment) {
                Some(next) => {
                    fields = next;
                    true
                }
                None => false,
            })
        })
}

fn split_pointer(path: &str) -> Option<(&str, String)> {
    let (parent, last) = path.rsplit_once('/')?;
    Some((parent, last.replace("~1", "/").replace("~0", "~")))
}

fn remove_pointer(object: &mut Value, path: &str) {
    let Some((parent, last)) = split_pointer(path) else {
        return;
    };
    match object.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.remove(&last);
        }
        Some(Value::Array(items)) => {
            if let Ok(i) = last.parse::<usize>()
                && i < items.len()
            {
                items.remove(i);
            }
        }
        _ => {}
    }
}

fn set_pointer(object: &mut Value, path: &str, value: Value) {
    let Some((parent, last)) = split_pointer(path) else {
        return;
    };
    match object.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.insert(last, value);
        }
        Some(Value::Array(items)) => {
            if let Ok(i) = last.parse::<usize>()
                && i < items.len()
            {
                items[i] = value;
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(value: Value) -> Result<IgnoreRules, String> {
        IgnoreRules::compile(&serde_json::from_value::<Vec<IgnoreRule>>(value).unwrap())
            .map_err(|e| weir_runtime::chain(&e))
    }

    fn deployment(name: &str, labels: Value) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": name, "namespace": "apps", "labels": labels },
            "spec": { "replicas": 1 },
        })
    }

    #[test]
    fn targets_select_by_kind_regex_and_label_selector() {
        let rules = rules(json!([
            { "paths": ["/spec/replicas"], "target": { "kind": "Deployment", "name": "web-.*" } },
            { "paths": ["/metadata/annotations"],
              "target": { "labelSelector": "tier in (front, edge),!legacy" } },
            { "paths": ["/data"] },
        ]))
        .unwrap();
        let web = deployment("web-1", json!({ "tier": "front" }));
        assert_eq!(
            rules.paths_for(&web),
            ["/spec/replicas", "/metadata/annotations", "/data"]
        );
        // Anchored: `xweb-1` is not `web-.*`; `legacy` excludes the second rule.
        let other = deployment("xweb-1", json!({ "tier": "edge", "legacy": "yes" }));
        assert_eq!(rules.paths_for(&other), ["/data"]);
        let cm =
            json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "web-1" } });
        assert_eq!(rules.paths_for(&cm), ["/data"]);
    }

    #[test]
    fn bad_rules_name_their_field() {
        let err = rules(json!([{ "paths": ["spec/replicas"] }])).unwrap_err();
        assert!(err.starts_with("ignore[0].paths[0]"), "{err}");
        let err =
            rules(json!([{ "paths": ["/a"] }, { "paths": ["/a"], "target": { "name": "(" } }]))
                .unwrap_err();
        assert!(
            err.starts_with("ignore[1].target.name: regex parse error"),
            "{err}"
        );
        let err = rules(json!([{ "paths": ["/a"], "target": { "labelSelector": "a in x" } }]))
            .unwrap_err();
        assert!(
            err.starts_with("ignore[0].target.labelSelector: \"a in x\": "),
            "{err}"
        );
    }

    #[test]
    fn label_selector_strings_parse_every_operator() {
        let selector = parse_selector("a=1,b==2,c!=3,d in (x, y),e notin (z),f,!g").unwrap();
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let good = [
            ("a", "1"),
            ("b", "2"),
            ("c", "4"),
            ("d", "y"),
            ("e", "w"),
            ("f", ""),
        ];
        assert!(selector.matches(&labels(&good)));
        let mut with_g = good.to_vec();
        with_g.push(("g", "1"));
        assert!(!selector.matches(&labels(&with_g)));
        assert!(!selector.matches(&labels(&[("a", "1")])));
    }

    #[test]
    fn another_appliers_field_is_left_out_and_weirs_own_keeps_the_live_value() {
        let desired = json!({ "spec": { "replicas": 1, "paused": false }, "data": { "a": "git" } });
        let dry_run = desired.clone();
        let live = json!({
            "metadata": { "managedFields": [
                { "manager": "hpa", "operation": "Apply", "fieldsV1": { "f:spec": { "f:replicas": {} } } },
                { "manager": "weir", "operation": "Apply", "fieldsV1": { "f:data": { "f:a": {} } } },
            ] },
            "spec": { "replicas": 5, "paused": false },
            "data": { "a": "edited" },
        });
        let out = payload(
            &desired,
            &live,
            &dry_run,
            &["/spec/replicas", "/data/a", "/spec/paused"],
            "weir",
        );
        assert_eq!(
            out,
            json!({ "spec": { "paused": false }, "data": { "a": "edited" } })
        );
        assert_eq!(
            without_paths(live, &["/spec/replicas", "/data/a", "/metadata"]),
            json!({ "spec": { "paused": false }, "data": {} })
        );
    }
}
