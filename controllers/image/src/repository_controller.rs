//! The ImageRepository reconcile: `image → credentials → list tags → exclude → record`, then
//! status once.

use std::sync::{Arc, atomic::Ordering};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, ResourceExt,
    runtime::{
        controller::Action,
        finalizer::{Event as FinalizerEvent, finalizer},
    },
};
use weir_api::{ImageRepository, image::ScanResult, meta::handled_reconcile_at, reasons};
use weir_runtime::{ControllerError, Redactor, schedule, status::apply_status};

use crate::{
    Context, FIELD_MANAGER, FINALIZER, error::ImageError, failed, object_key, scan,
    store::ScannedTags, succeeded,
};

#[tracing::instrument(skip_all, fields(object = %object_key(&*repo)))]
pub(crate) async fn reconcile(
    repo: Arc<ImageRepository>,
    ctx: Arc<Context>,
) -> Result<Action, ControllerError> {
    let api: Api<ImageRepository> =
        Api::namespaced(ctx.client.clone(), &repo.namespace().unwrap_or_default());
    let observed = repo.clone();
    let reconciled = finalizer(&api, FINALIZER, repo, |event| async {
        match event {
            FinalizerEvent::Apply(repo) => apply(&api, &repo, &ctx).await,
            FinalizerEvent::Cleanup(repo) => {
                ctx.store
                    .remove(&repo.namespace().unwrap_or_default(), &repo.name_any());
                Ok(Action::await_change())
            }
        }
    });
    Ok(weir_runtime::metrics::measured(&*observed, reconciled).await?)
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
    let reference = scan::parse_image(&repo.spec.image)?;
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
            canonical_image_name: canonical,
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
    if repo.spec.suspend {
        return Ok(Action::await_change());
    }
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
