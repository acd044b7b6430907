//! The ImageRepository reconcile: `image → credentials → list tags → exclude → record`, then
//! status once.

use std::sync::{Arc, atomic::Ordering};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{Api, ResourceExt, runtime::controller::Action};
use weir_api::{ImageRepository, image::ScanResult, meta::handled_reconcile_at, reasons};
use weir_runtime::{
    ControllerError, Redactor, controller::Reconciler, schedule, status::apply_status,
};

use crate::{
    Context, FIELD_MANAGER, error::ImageError, failed, scan, store::ScannedTags, succeeded,
};

impl Reconciler<ImageRepository> for Context {
    async fn apply(
        &self,
        api: &Api<ImageRepository>,
        repo: Arc<ImageRepository>,
    ) -> Result<Action, ControllerError> {
        apply(api, &repo, self).await
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
        scan::registry_access(&ctx.client, repo, &namespace, &reference).await?;
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

/// One reconcile of a live ImageRepository. Sets Ready (and Reconciling/Stalled on failure);
/// keeps the last scan result when a scan fails.
async fn apply(
    api: &Api<ImageRepository>,
    repo: &ImageRepository,
    ctx: &Context,
) -> Result<Action, ControllerError> {
    ctx.metrics.scans.fetch_add(1, Ordering::Relaxed);
    let previous = repo.status.clone();
    let mut status = previous.clone().unwrap_or_default();
    status.observed_generation = repo.metadata.generation;
    status.last_handled_reconcile_at = handled_reconcile_at(
        repo.annotations().into(),
        previous
            .as_ref()
            .and_then(|s| s.last_handled_reconcile_at.as_deref()),
    );
    let mut redactor = Redactor::default();
    let result = scan_repository(repo, ctx, &mut redactor).await;
    let action = match result {
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
            succeeded(repo, ctx, &mut status.conditions, &message);
            if changed {
                ctx.events
                    .normal(repo, reasons::SUCCEEDED, "Scan", &message)
                    .await;
            }
            Action::requeue(schedule::jittered(repo.spec.interval.as_std()))
        }
        Err(error) => {
            failed(
                repo,
                ctx,
                &mut status.conditions,
                &error,
                &redactor,
                repo.spec.interval.as_std(),
                "Scan",
            )
            .await
        }
    };
    apply_status(api, repo, previous.as_ref(), &status, FIELD_MANAGER).await?;
    Ok(action)
}
