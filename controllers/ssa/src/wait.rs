//! Waiting for health: objects are read until every one is current by the set's
//! [`HealthRules`], one fails, or the timeout passes.

use std::time::Instant;

use kube::api::ApiResource;
use weir_api::kustomize::ObjMetadata;

use crate::{
    ApplySet, Health, HealthRules, Polls, SsaError, error::server_message, object::display,
};

/// An object whose health decides readiness.
#[derive(Debug, Clone)]
pub struct HealthTarget {
    /// Its identity.
    pub meta: ObjMetadata,
    /// The resource its kind is served as.
    pub resource: ApiResource,
    /// Whether its kind is namespaced.
    pub namespaced: bool,
}

impl ApplySet<'_> {
    /// Waits until every object is healthy by `rules` (healthCheckExprs, else kstatus's), or
    /// the timeout passes; the error names each unhealthy object and what it lacks.
    pub async fn wait_healthy(
        &self,
        objects: &[HealthTarget],
        rules: &HealthRules,
    ) -> Result<(), SsaError> {
        let deadline = Instant::now() + self.timeout;
        let mut polls = Polls::new();
        let mut pending: Vec<&HealthTarget> = objects.iter().collect();
        loop {
            let mut still = vec![];
            let mut reasons = vec![];
            let mut failed = vec![];
            for object in pending {
                match self.health(object, rules).await {
                    Health::Current => {}
                    Health::InProgress(why) => {
                        reasons.push(format!("{} ({why})", display(&object.meta)));
                        still.push(object);
                    }
                    Health::Failed(why) => {
                        failed.push(format!("{} ({why})", display(&object.meta)));
                    }
                }
            }
            // As Flux by default: a failed object fails the check at once, without waiting for
            // the others or the timeout (nothing fixes it but a new revision).
            if !failed.is_empty() {
                return Err(SsaError::Stalled { objects: failed });
            }
            if still.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(SsaError::NotHealthy { objects: reasons });
            }
            pending = still;
            polls.sleep().await;
        }
    }

    /// The health of one object as read now; one that cannot be read is in progress.
    async fn health(&self, object: &HealthTarget, rules: &HealthRules) -> Health {
        let api = self.api_for(&object.resource, object.namespaced, &object.meta.namespace);
        self.counter.request();
        match api.get_opt(&object.meta.name).await {
            Ok(Some(live)) => match serde_json::to_value(live) {
                Ok(live) => rules.health(&live),
                Err(error) => Health::InProgress(format!("cannot read the object: {error}")),
            },
            Ok(None) => Health::InProgress("not found".to_owned()),
            Err(e) => Health::InProgress(server_message(&e)),
        }
    }
}
