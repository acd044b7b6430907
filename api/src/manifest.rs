//! Reading manifests into the typed API, with errors that name the offending field.

use serde::de::DeserializeOwned;

/// A manifest that does not fit the types; the message starts with the field's path.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ManifestError {
    /// Dotted path of the field, such as `spec.interval` (`.` for the document itself).
    pub path: String,
    /// What was wrong with it.
    pub message: String,
}

/// Parses one YAML document into `T`, naming the field on error.
/// YAML syntax errors carry their line and column; type errors carry the field's path.
pub fn from_yaml<T: DeserializeOwned>(yaml: &str) -> Result<T, ManifestError> {
    let value: serde_json::Value = serde_yaml_ng::from_str(yaml).map_err(|e| ManifestError {
        path: ".".to_owned(),
        message: e.to_string(),
    })?;
    from_value(value)
}

/// Converts a JSON value into `T`, naming the field on error.
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ManifestError> {
    serde_path_to_error::deserialize(value).map_err(|e| ManifestError {
        path: e.path().to_string(),
        message: e.inner().to_string(),
    })
}
