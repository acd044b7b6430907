//! Validation and planning: every object of a set is dry-run with server-side apply (strict
//! field validation) before anything is written, and the dry run's result, compared with the
//! live object, says whether applying would change anything.

use std::collections::HashSet;

use kube::{
    Api, ResourceExt as _,
    api::{DynamicObject, Patch, PatchParams, ValidationDirective},
};
use serde_json::Value;
use weir_api::kustomize::annotations;

use crate::{ApplySet, Change, ManifestFields as _, Refusal, Target, drift, error::is_code};

/// The outcome of validating part of a set.
#[derive(Debug, Default)]
pub(crate) struct Validated {
    pub(crate) plans: Vec<Plan>,
    pub(crate) deferred: Vec<usize>,
    pub(crate) skipped: Vec<usize>,
    /// Failures of objects whose CRD is in the set: deferred when that CRD changes (the
    /// failure may be the old schema's), errors otherwise.
    pending: Vec<(usize, Refusal)>,
}

/// One object's plan after validation.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) index: usize,
    pub(crate) change: Change,
    pub(crate) recreate: bool,
    /// What to apply in place of the target's object (ignored fields left to the cluster).
    pub(crate) payload: Option<Value>,
    /// Who drifted a configured object (`kubectl-scale changed .spec.replicas`).
    pub(crate) drift: Vec<String>,
}

/// Decides the first pass's pending failures: objects whose defining CRD changes in this set
/// are validated again after it is applied; the others' failures stand.
pub(crate) fn settle_pending(
    targets: &[Target],
    first_pass: &mut Validated,
) -> Result<(), Vec<Refusal>> {
    let changing_crds: HashSet<&str> = first_pass
        .plans
        .iter()
        .filter(|p| p.change != Change::Unchanged)
        .map(|p| &targets[p.index])
        .filter(|t| t.meta.kind == "CustomResourceDefinition")
        .map(|t| t.meta.name.as_str())
        .collect();
    let mut errors = vec![];
    for (index, refusal) in std::mem::take(&mut first_pass.pending) {
        let crd = targets[index].defining_crd.as_deref().unwrap_or_default();
        if changing_crds.contains(crd) {
            first_pass.deferred.push(index);
        } else {
            errors.push(refusal);
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Whether the server refused a change of immutable fields (which `force` answers by
/// recreating the object). Other invalid objects are errors: deleting them first would lose
/// the live object for nothing.
fn is_immutable_change(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 422
        && (s.message.contains("immutable") || s.message.contains("Forbidden: updates to")))
}

/// What an apply can change: without `managedFields` (a no-op apply may still touch them),
/// `status` (not applied, and moved by controllers between the read and the dry run),
/// `resourceVersion` (which moves with it) and `generation` (which the server bumps with any
/// spec change, an ignored path's included: the spec itself says whether something changed).
fn comparable(mut v: Value) -> Value {
    if let Some(object) = v.as_object_mut() {
        object.remove("status");
    }
    if let Some(meta) = v.pointer_mut("/metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
        meta.remove("resourceVersion");
        meta.remove("generation");
    }
    v
}

/// An object as JSON, to compare; a failure is kube's, as if the server's answer did not parse.
fn to_json(object: DynamicObject) -> Result<Value, kube::Error> {
    serde_json::to_value(object).map_err(kube::Error::SerdeError)
}

impl ApplySet<'_> {
    pub(crate) fn api(&self, target: &Target) -> Api<DynamicObject> {
        self.api_for(&target.resource, target.namespaced, &target.meta.namespace)
    }

    /// Server-side apply with this set's field manager, forced, with strict field validation.
    pub(crate) fn params(&self, dry_run: bool) -> PatchParams {
        let mut params = PatchParams::apply(self.field_manager).force();
        params.dry_run = dry_run;
        params.field_validation = Some(ValidationDirective::Strict);
        params
    }

    fn wants_force(&self, target: &Target) -> bool {
        self.force || target.object.annotation(annotations::FORCE) == Some("enabled")
    }

    /// Plans the objects at `indices`. With `set_namespaces`, objects whose kind comes from a
    /// CRD of the set, or whose namespace is created by the set and does not exist yet, are
    /// deferred instead of failing. Every failure is collected, naming object and file.
    pub(crate) async fn validate(
        &self,
        targets: &[Target],
        indices: impl Iterator<Item = usize>,
        set_namespaces: Option<&HashSet<&str>>,
    ) -> Result<Validated, Vec<Refusal>> {
        let mut out = Validated::default();
        let mut errors = vec![];
        for index in indices {
            let target = &targets[index];
            if target.kind_from_set && set_namespaces.is_some() {
                out.deferred.push(index);
                continue;
            }
            match self.plan(index, target).await {
                Ok(Some(plan)) => out.plans.push(plan),
                Ok(None) => out.skipped.push(index),
                Err(e)
                    if is_code(&e, 404)
                        && target.namespaced
                        && set_namespaces
                            .is_some_and(|s| s.contains(target.meta.namespace.as_str())) =>
                {
                    out.deferred.push(index);
                }
                Err(source) => {
                    let refusal = Refusal::Server {
                        object: target.display(),
                        file: target.file.clone(),
                        source: source.into(),
                    };
                    if set_namespaces.is_some() && target.defining_crd.is_some() {
                        out.pending.push((index, refusal));
                    } else {
                        errors.push(refusal);
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }

    /// Reads the live object and dry-runs the apply: `None` when annotations say to leave it
    /// alone, otherwise whether applying would change anything.
    async fn plan(&self, index: usize, target: &Target) -> Result<Option<Plan>, kube::Error> {
        let api = self.api(target);
        self.counter.request();
        let live = match api.get_opt(&target.meta.name).await {
            Ok(live) => live,
            // The namespace may not exist yet; the dry run says so more precisely.
            Err(e) if is_code(&e, 404) => None,
            Err(e) => return Err(e),
        };
        if Self::left_alone(target, live.as_ref()) {
            return Ok(None);
        }
        self.counter.request();
        let dry_run = api
            .patch(
                &target.meta.name,
                &self.params(true),
                &Patch::Apply(&target.object),
            )
            .await;
        let result = match dry_run {
            Ok(result) => result,
            Err(e) if is_immutable_change(&e) && live.is_some() && self.wants_force(target) => {
                // Recreate only an object the server would accept as new; anything else stays
                // an error, and the live object stays.
                self.validate_as_new(&api, target).await?;
                return Ok(Some(Plan {
                    index,
                    change: Change::Configured,
                    recreate: true,
                    payload: None,
                    drift: vec![],
                }));
            }
            Err(e) => return Err(e),
        };
        let (change, payload, drift) = match live {
            None => (Change::Created, None, vec![]),
            Some(live) => {
                let live = to_json(live)?;
                let (change, payload) = self.compare(target, &live, to_json(result)?);
                let drift = if change == Change::Configured {
                    crate::attribution::drift_attribution(&live, &target.object, self.field_manager)
                } else {
                    vec![]
                };
                (change, payload, drift)
            }
        };
        Ok(Some(Plan {
            index,
            change,
            recreate: false,
            payload,
            drift,
        }))
    }

    /// Whether annotations say to leave the object alone: `ssa: Ignore` on either side,
    /// `ssa: IfNotPresent` once it exists, `reconcile: disabled` on either side once it exists.
    fn left_alone(target: &Target, live: Option<&DynamicObject>) -> bool {
        fn live_annotation<'a>(l: &'a DynamicObject, key: &str) -> Option<&'a str> {
            l.annotations().get(key).map(String::as_str)
        }
        let ssa = target.object.annotation(annotations::SSA);
        ssa == Some("Ignore")
            || live.is_some_and(|l| {
                live_annotation(l, annotations::RECONCILE) == Some("disabled")
                    || ssa == Some("IfNotPresent")
                    || live_annotation(l, annotations::SSA) == Some("Ignore")
            })
            || (live.is_some()
                && target.object.annotation(annotations::RECONCILE) == Some("disabled"))
    }

    /// Compares the dry run's result with the live object, without the ignored paths; when
    /// something else changed, the payload leaves the drifted ignored fields to the cluster.
    fn compare(&self, target: &Target, live: &Value, result: Value) -> (Change, Option<Value>) {
        let ignored = self.ignore.paths_for(&target.object);
        if ignored.is_empty() {
            let change = if comparable(result) == comparable(live.clone()) {
                Change::Unchanged
            } else {
                Change::Configured
            };
            (change, None)
        } else if drift::without_paths(comparable(result.clone()), &ignored)
            == drift::without_paths(comparable(live.clone()), &ignored)
        {
            (Change::Unchanged, None)
        } else {
            let payload =
                drift::payload(&target.object, live, &result, &ignored, self.field_manager);
            (Change::Configured, Some(payload))
        }
    }

    /// Dry-runs creating the object under a scratch name, so a forced recreation never
    /// deletes a live object for a replacement the server would refuse.
    async fn validate_as_new(
        &self,
        api: &Api<DynamicObject>,
        target: &Target,
    ) -> Result<(), kube::Error> {
        let name = &target.meta.name;
        let prefix: String = name.chars().take(40).collect();
        let scratch = format!("{}-weir-force-check", prefix.trim_end_matches(['-', '.']));
        let mut object = target.object.clone();
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("name".into(), Value::String(scratch.clone()));
        }
        self.counter.request();
        match api
            .patch(&scratch, &self.params(true), &Patch::Apply(&object))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(mut status)) => {
                status.message = status.message.replace(&scratch, name);
                Err(kube::Error::Api(status))
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn status_and_resource_version_do_not_count_as_changes() {
        let a = json!({"metadata": {"resourceVersion": "1"}, "spec": {"x": 1}, "status": {"r": 1}});
        let b = json!({"metadata": {"resourceVersion": "2"}, "spec": {"x": 1}, "status": {"r": 2}});
        assert_eq!(comparable(a.clone()), comparable(b));
        let c = json!({"metadata": {"resourceVersion": "1"}, "spec": {"x": 2}});
        assert_ne!(comparable(a), comparable(c));
    }

    #[test]
    fn managed_fields_do_not_count_as_changes() {
        let a = json!({"metadata": {"name": "a", "managedFields": [{"manager": "x"}]}, "data": {"k": "v"}});
        let b = json!({"metadata": {"name": "a", "managedFields": [{"manager": "y"}]}, "data": {"k": "v"}});
        assert_eq!(comparable(a), comparable(b));
    }
}
