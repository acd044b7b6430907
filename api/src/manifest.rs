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

/// Converts a JSON value into `T`, naming the field on error. A field the types do not know is
/// an error here, where manifests are validated; the controllers read objects from the cluster
/// tolerantly instead (the types do not deny unknown fields), so that one object written by a
/// newer Flux cannot blind a watch.
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ManifestError> {
    let mut unknown = None;
    let parsed = serde_path_to_error::deserialize(serde_ignored::Deserializer::new(
        value,
        &mut |path: serde_ignored::Path<'_>| {
            // A custom resource's type reads its `apiVersion` and `kind` by skipping them.
            let skipped = matches!(&path, serde_ignored::Path::Map { parent, key }
                if matches!(**parent, serde_ignored::Path::Root)
                    && (key == "apiVersion" || key == "kind"));
            if !skipped {
                unknown.get_or_insert_with(|| field_path(&path));
            }
        },
    ))
    .map_err(|e| ManifestError {
        path: e.path().to_string(),
        message: e.inner().to_string(),
    })?;
    match unknown {
        None => Ok(parsed),
        Some(path) => {
            let field = path
                .rsplit(['.', '['])
                .next()
                .unwrap_or_default()
                .to_owned();
            Err(ManifestError {
                path,
                message: format!("unknown field `{field}`"),
            })
        }
    }
}

/// `path` written as [`serde_path_to_error`] writes paths: `spec.patches[0].target`.
fn field_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => match field_path(parent) {
            p if p.is_empty() => key.clone(),
            p => format!("{p}.{key}"),
        },
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => field_path(parent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_named_with_their_path() {
        #[derive(Debug, serde::Deserialize)]
        struct Item {
            #[allow(dead_code)]
            name: String,
        }
        #[derive(Debug, serde::Deserialize)]
        struct Doc {
            #[allow(dead_code)]
            items: Vec<Item>,
        }
        let e = from_value::<Doc>(
            serde_json::json!({"items": [{"name": "a"}, {"name": "b", "nmae": "c"}]}),
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "items[1].nmae: unknown field `nmae`");
        assert!(from_value::<Doc>(serde_json::json!({"items": [{"name": "a"}]})).is_ok());
        // Read as the controllers read objects, the same document is accepted.
        assert!(
            serde_json::from_value::<Doc>(serde_json::json!({"items": [], "extra": 1})).is_ok()
        );
    }
}
