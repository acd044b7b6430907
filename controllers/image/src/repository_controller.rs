//! The ImageRepository reconcile: `image → credentials → list tags → exclude → record`, then
//! status once.

use std::sync::{Arc, atomic::Ordering};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{Api, ResourceExt, runtime::controller::Action};
use weir_api::{ImageRepository, image::ScanResult, meta::pending_reconcile_request, reasons};
use weir_runtime::{
    ControllerError, Redactor,
    conclude::{Ending, Pass},
    controller::Reconciler,
    decision::StepResult,
    progress, schedule,
};

use crate::{Context, FIELD_MANAGER, error::ImageError, scan, store::ScannedTags};

/// One reconcile of a live ImageRepository. Marks a new generation or a requested scan
/// Reconciling first; sets Ready (and Reconciling/Stalled on failure); keeps the last scan
/// result when a scan fails.
impl Reconciler<ImageRepository> for Context {
    async fn apply(
        &self,
        api: &Api<ImageRepository>,
        repo: Arc<ImageRepository>,
    ) -> Result<Action, ControllerError> {
        let repo = &*repo;
        self.metrics.scans.fetch_add(1, Ordering::Relaxed);
        let mark = scan_progress(repo);
        let mut pass = Pass::begin_marked(api, repo, FIELD_MANAGER, mark.as_deref()).await;
        let status = &mut pass.status;
        let mut redactor = Redactor::default();
        let result = match scan_repository(repo, self, &mut redactor).await {
            Ok(scanned) => {
                let message = format!("successful scan: found {} tags", scanned.count);
                let changed = status
                    .last_scan_result
                    .as_ref()
                    .and_then(|r| r.revision.as_deref())
                    != Some(scanned.revision.as_str());
                status.canonical_image_name = Some(scanned.canonical);
                status.last_scan_result = Some(ScanResult {
                    revision: Some(scanned.revision),
                    tag_count: scanned.count as i64,
                    scan_time: Some(Time(Timestamp::now())),
                    latest_tags: scanned.latest,
                });
                status
                    .observed_exclusion_list
                    .clone_from(&repo.spec.exclusion_list);
                let result = StepResult::succeeded(reasons::SUCCEEDED, &message);
                if changed {
                    result.announcing(reasons::SUCCEEDED, message)
                } else {
                    result
                }
            }
            Err(error) => StepResult::failed(&error, &redactor),
        };
        let interval = repo.spec.interval.as_std();
        let ending = Ending::new("Scan", Some(schedule::jittered(interval)), Some(interval));
        Ok(pass.finish(self, &result, ending).await?)
    }

    /// The scanned tags go with the repository.
    async fn cleanup(&self, repo: Arc<ImageRepository>) -> Result<Action, ControllerError> {
        self.store
            .remove(&repo.namespace().unwrap_or_default(), &repo.name_any());
        Ok(Action::await_change())
    }
}

/// What a scan found, before it is written to status.
struct Scanned {
    canonical: String,
    count: usize,
    revision: String,
    latest: Vec<String>,
}

async fn scan_repository(
    repo: &ImageRepository,
    ctx: &Context,
    redactor: &mut Redactor,
) -> Result<Scanned, ImageError> {
    let namespace = repo.namespace().unwrap_or_default();
    let reference = ctx.mirrors.apply(scan::parse_image(&repo.spec.image)?);
    let canonical = scan::canonical_name(&reference);
    let excluded = scan::exclusions(&repo.spec.exclusion_list)?;
    let (access, secrets) =
        scan::registry_access(&ctx.base.client, repo, &namespace, &reference).await?;
    *redactor = secrets;
    let timeout = repo.spec.scan_timeout();
    let tags = tokio::time::timeout(
        timeout,
        scan::list_all_tags(
            &access,
            &reference,
            &excluded,
            ctx.tag_page_size,
            &ctx.metrics.tag_pages,
        ),
    )
    .await
    .map_err(|_| ImageError::ScanTimeout {
        image: canonical.clone(),
        after: timeout,
    })??;
    let scanned = Scanned {
        canonical: canonical.clone(),
        count: tags.len(),
        revision: scan::tags_revision(&tags),
        latest: scan::latest_tags(&tags),
    };
    ctx.store.put(
        &namespace,
        &repo.name_any(),
        ScannedTags {
            image: repo.spec.image.clone(),
            canonical_image_name: canonical,
            reference,
            tags: tags.into(),
            revision: scanned.revision.clone(),
            access,
        },
    );
    Ok(scanned)
}

/// Why a scan is work in progress before it starts, as Flux says it: a generation not handled
/// yet, or a requested reconcile. A scan of the interval is not: it writes nothing until done.
fn scan_progress(repo: &ImageRepository) -> Option<String> {
    let status = repo.status.as_ref();
    progress::new_generation(
        status.and_then(|s| s.observed_generation),
        repo.metadata.generation,
    )
    .or_else(|| {
        pending_reconcile_request(
            repo.metadata.annotations.as_ref(),
            status.and_then(|s| s.last_handled_reconcile_at.as_deref()),
        )
        .map(|_| "scanning: reconcile requested".to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_new_generation_or_a_request_marks_a_scan_in_progress() {
        let mut repo: ImageRepository = serde_json::from_value(serde_json::json!({
            "apiVersion": "image.toolkit.fluxcd.io/v1",
            "kind": "ImageRepository",
            "metadata": { "name": "app", "namespace": "a", "generation": 1 },
            "spec": { "image": "registry.invalid/app", "interval": "5m" },
        }))
        .unwrap();
        assert_eq!(
            scan_progress(&repo).as_deref(),
            Some("processing object: new generation 0 -> 1")
        );
        let status = repo.status.get_or_insert_default();
        status.observed_generation = Some(1);
        assert_eq!(scan_progress(&repo), None, "a scan of the interval");
        repo.metadata.annotations = Some(
            [(
                weir_api::meta::RECONCILE_REQUESTED_AT_ANNOTATION.to_owned(),
                "now".to_owned(),
            )]
            .into(),
        );
        assert_eq!(
            scan_progress(&repo).as_deref(),
            Some("scanning: reconcile requested")
        );
        repo.status.as_mut().unwrap().last_handled_reconcile_at = Some("now".to_owned());
        assert_eq!(scan_progress(&repo), None, "a request already handled");
    }
}
