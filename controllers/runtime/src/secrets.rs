//! Reading Secrets: their `data` as plain bytes, the form every controller's parser takes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;

/// The Secret's `data`, key → bytes (`stringData` is write-only: the API server merges it into
/// `data`).
#[must_use]
pub fn data(secret: Secret) -> BTreeMap<String, Vec<u8>> {
    secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect()
}
