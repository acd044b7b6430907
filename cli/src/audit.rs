//! Who the user is, as the API server sees them, and the Events that record what they did
//! (locks, rollbacks, releases), shared by the control commands.

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Api, Client,
    api::PostParams,
    runtime::events::{Event, EventType, Recorder, Reporter},
};

use crate::get::BoxError;

/// The name the control commands write Events as.
pub const REPORTER: &str = "weir-cli";

/// The user's name as the API server authenticated them (a SelfSubjectReview), so a record says
/// who acted, whatever the kubeconfig calls its user.
pub async fn whoami(client: &Client) -> Result<String, BoxError> {
    let review: SelfSubjectReview = Api::all(client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .map_err(|e| format!("cannot ask the API server who you are (SelfSubjectReview): {e}"))?;
    review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| "the API server did not say who you are (SelfSubjectReview)".into())
}

/// Records a Normal Event about `object` with `reason` and `note`, as `weir-cli`. The change it
/// records is already made and visible on the object; an Event the user may not write is a
/// warning on stderr, not a failure.
pub async fn record(client: &Client, object: &ObjectReference, reason: &str, note: String) {
    let recorder = Recorder::new(client.clone(), Reporter::from(REPORTER));
    let event = Event {
        type_: EventType::Normal,
        reason: reason.to_owned(),
        note: Some(note),
        action: reason.to_owned(),
        secondary: None,
    };
    if let Err(error) = recorder.publish(&event, object).await {
        eprintln!("warning: the {reason} Event could not be recorded: {error}");
    }
}
