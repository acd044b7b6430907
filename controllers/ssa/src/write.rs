//! Writing a validated set: definitions first (new CRDs waited for until Established), then
//! everything else, each object only when its plan changes it.

use std::{
    collections::{BTreeMap, HashSet},
    time::Instant,
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api,
    api::{DeleteParams, Patch},
    runtime::{conditions, wait::await_condition},
};

use crate::{
    ApplySet, Change, ChangeSet, Polls, Refusal, Refusals, SsaError, Target,
    error::is_code,
    kinds::is_definition,
    plan::{Plan, settle_pending},
};

/// Why applying stopped, and what was written before (the indices of those targets, to be kept
/// in an inventory so they can be pruned later).
#[derive(Debug)]
pub struct ApplyFailure {
    /// What failed.
    pub error: SsaError,
    /// The targets created or changed before the failure.
    pub applied: Vec<usize>,
}

impl ApplyFailure {
    fn after(error: SsaError, applied: &[usize]) -> Self {
        Self {
            error,
            applied: applied.to_vec(),
        }
    }
}

impl ApplySet<'_> {
    /// Validates the whole set, then applies what changed: definitions first (waiting for new
    /// CRDs to be Established), then everything else. Nothing is applied when any object fails
    /// validation, except objects whose kind or namespace is created by the set itself, which
    /// can only be validated once their definitions are applied.
    pub async fn apply(&self, targets: &[Target]) -> Result<ChangeSet, ApplyFailure> {
        let refused = |refusals: Vec<Refusal>| ApplyFailure {
            error: SsaError::Invalid(Refusals(refusals)),
            applied: vec![],
        };
        let set_namespaces: HashSet<&str> = targets
            .iter()
            .filter(|t| t.meta.group.is_empty() && t.meta.kind == "Namespace")
            .map(|t| t.meta.name.as_str())
            .collect();

        let mut changes: BTreeMap<usize, Change> = BTreeMap::new();
        let mut first_pass = self
            .validate(targets, 0..targets.len(), Some(&set_namespaces))
            .await
            .map_err(refused)?;
        settle_pending(targets, &mut first_pass).map_err(refused)?;
        changes.extend(first_pass.skipped.iter().map(|i| (*i, Change::Skipped)));

        let mut applied = vec![];
        // Stage one: definitions.
        let (first, rest): (Vec<Plan>, Vec<Plan>) = first_pass.plans.into_iter().partition(|p| {
            let m = &targets[p.index].meta;
            is_definition(&m.group, &m.kind)
        });
        self.write_definitions(targets, &first, &mut applied, &mut changes)
            .await?;

        // Objects that needed the definitions: validate now.
        let late = self
            .validate(targets, first_pass.deferred.into_iter(), None)
            .await
            .map_err(|refusals| ApplyFailure {
                error: SsaError::InvalidAfterDefinitions {
                    refusals: Refusals(refusals),
                    definitions: first.iter().map(|p| targets[p.index].display()).collect(),
                },
                applied: applied.clone(),
            })?;
        changes.extend(late.skipped.iter().map(|i| (*i, Change::Skipped)));

        // Stage two: everything else.
        let mut drift = BTreeMap::new();
        for plan in rest.iter().chain(&late.plans) {
            if !plan.drift.is_empty() {
                drift.insert(targets[plan.index].display(), plan.drift.clone());
            }
            self.write(&targets[plan.index], plan)
                .await
                .map_err(|error| ApplyFailure::after(error, &applied))?;
            if plan.change != Change::Unchanged {
                applied.push(plan.index);
            }
            changes.insert(plan.index, plan.change);
        }
        Ok(ChangeSet {
            entries: changes
                .into_iter()
                .map(|(i, c)| (targets[i].display(), c))
                .collect(),
            drift,
        })
    }

    /// What applying `targets` would change, without writing anything: each object dry-run
    /// and compared with the live one as [`Self::apply`] compares them (`ignore` paths and
    /// annotations respected). Drift detection of objects something else made (a Helm
    /// release's manifest) asks this.
    pub async fn diff(&self, targets: &[Target]) -> Result<ChangeSet, SsaError> {
        let validated = self
            .validate(targets, 0..targets.len(), None)
            .await
            .map_err(|refusals| SsaError::Invalid(Refusals(refusals)))?;
        let mut changes: BTreeMap<usize, Change> = BTreeMap::new();
        changes.extend(validated.skipped.iter().map(|i| (*i, Change::Skipped)));
        changes.extend(validated.plans.iter().map(|p| (p.index, p.change)));
        Ok(ChangeSet {
            entries: changes
                .into_iter()
                .map(|(i, c)| (targets[i].display(), c))
                .collect(),
            drift: validated
                .plans
                .iter()
                .filter(|p| !p.drift.is_empty())
                .map(|p| (targets[p.index].display(), p.drift.clone()))
                .collect(),
        })
    }

    /// Writes the planned definitions, then waits for the CRDs among those written to be
    /// Established.
    async fn write_definitions(
        &self,
        targets: &[Target],
        plans: &[Plan],
        applied: &mut Vec<usize>,
        changes: &mut BTreeMap<usize, Change>,
    ) -> Result<(), ApplyFailure> {
        let mut new_crds = vec![];
        for plan in plans {
            let target = &targets[plan.index];
            self.write(target, plan)
                .await
                .map_err(|error| ApplyFailure::after(error, applied))?;
            if plan.change != Change::Unchanged {
                applied.push(plan.index);
                if target.meta.kind == "CustomResourceDefinition" {
                    new_crds.push(target.meta.name.clone());
                }
            }
            changes.insert(plan.index, plan.change);
        }
        for name in &new_crds {
            self.wait_established(name)
                .await
                .map_err(|error| ApplyFailure::after(error, applied))?;
        }
        Ok(())
    }

    /// Applies one planned object (nothing when unchanged); recreates it when forced.
    async fn write(&self, target: &Target, plan: &Plan) -> Result<(), SsaError> {
        if plan.change == Change::Unchanged {
            return Ok(());
        }
        let api = self.api(target);
        let name = &target.meta.name;
        let err = |source: kube::Error| SsaError::Write {
            object: target.display(),
            file: target.file.clone(),
            source: source.into(),
        };
        if plan.recreate {
            self.counter.write();
            match api.delete(name, &DeleteParams::foreground()).await {
                Ok(_) => {}
                Err(e) if is_code(&e, 404) => {}
                Err(e) => return Err(err(e)),
            }
            let deadline = Instant::now() + self.timeout;
            let mut polls = Polls::new();
            while {
                self.counter.request();
                api.get_opt(name).await.map_err(err)?.is_some()
            } {
                if Instant::now() > deadline {
                    return Err(SsaError::RecreateTimeout {
                        object: target.display(),
                    });
                }
                polls.sleep().await;
            }
        }
        self.counter.write();
        let object = plan.payload.as_ref().unwrap_or(&target.object);
        api.patch(name, &self.params(false), &Patch::Apply(object))
            .await
            .map_err(err)?;
        Ok(())
    }

    /// Waits on a watch of the CRD (kube-runtime's `await_condition`) until it is Established,
    /// for at most the set's timeout.
    async fn wait_established(&self, name: &str) -> Result<(), SsaError> {
        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        // The watch's list and watch requests count as one.
        self.counter.request();
        let established = await_condition(crds, name, conditions::is_crd_established());
        match tokio::time::timeout(self.timeout, established).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(source)) => Err(SsaError::ReadDefinition {
                name: name.to_owned(),
                source,
            }),
            Err(_elapsed) => Err(SsaError::NotEstablished {
                name: name.to_owned(),
                timeout: self.timeout,
            }),
        }
    }
}
