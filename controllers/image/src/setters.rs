//! Rewriting the values marked with `$imagepolicy` setter comments, as text: only the marked
//! value changes; every other byte of the file (comments, ordering, quoting, indentation, other
//! documents, line endings) stays as it was. YAML is never re-serialized.
//!
//! ```yaml
//! image: reg/app:1.0.0 # {"$imagepolicy": "apps:app"}        # the whole reference
//! tag: "1.0.0" # {"$imagepolicy": "apps:app:tag"}             # the tag only
//! repository: reg/app # {"$imagepolicy": "apps:app:name"}     # the image name only
//! digest: sha256:... # {"$imagepolicy": "apps:app:digest"}    # the digest only
//! ```

use std::collections::BTreeMap;

use weir_api::ImageRef;

/// A malformed marker, naming the file and line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: malformed $imagepolicy marker: {why}")]
pub struct MarkerError {
    pub file: String,
    pub line: usize,
    pub why: String,
}

/// The object a change was made in: the YAML document's `apiVersion`, `kind` and metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectId {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

/// One rewritten value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// 1-based line number.
    pub line: usize,
    /// The marker's reference, such as `apps:app` or `apps:app:tag`.
    pub setter: String,
    pub old_value: String,
    pub new_value: String,
    pub object: ObjectId,
}

/// Which part of the image a marker sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    Full,
    Tag,
    Name,
    Digest,
}

/// The marker on a line: its policy (`ns:name`), part and where the comment starts.
pub(crate) struct Marker {
    policy: String,
    part: Part,
    pub(crate) setter: String,
    pub(crate) comment_start: usize,
}

pub(crate) fn find_marker(
    line: &str,
    file: &str,
    number: usize,
) -> Result<Option<Marker>, MarkerError> {
    let Some(key) = line.find("\"$imagepolicy\"") else {
        return Ok(None);
    };
    let err = |why: String| MarkerError {
        file: file.to_owned(),
        line: number,
        why,
    };
    let Some(hash) = line[..key].rfind('#') else {
        return Err(err("the marker is not in a comment".into()));
    };
    let json = line[hash + 1..].trim();
    if !line[hash + 1..key].trim().starts_with('{') {
        return Err(err(
            "expected # {\"$imagepolicy\": \"<namespace>:<name>\"}".into()
        ));
    }
    let parsed: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(json).map_err(|e| err(format!("{json}: {e}")))?;
    let setter = parsed
        .get("$imagepolicy")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| err(format!("{json}: the value must be a string")))?;
    let parts: Vec<&str> = setter.split(':').collect();
    let (policy, part) = match parts.as_slice() {
        [ns, name] if !ns.is_empty() && !name.is_empty() => (format!("{ns}:{name}"), Part::Full),
        [ns, name, field] if !ns.is_empty() && !name.is_empty() => (
            format!("{ns}:{name}"),
            match *field {
                "tag" => Part::Tag,
                "name" => Part::Name,
                "digest" => Part::Digest,
                other => {
                    return Err(err(format!(
                        "{setter:?}: unknown field '{other}' (tag, name or digest)"
                    )));
                }
            },
        ),
        _ => {
            return Err(err(format!(
                "{setter:?}: expected <namespace>:<name>[:tag|:name|:digest]"
            )));
        }
    };
    Ok(Some(Marker {
        policy,
        part,
        setter: setter.to_owned(),
        comment_start: hash,
    }))
}

/// Where the value sits in `before` (the line up to the comment): after `key: ` or `- `;
/// `None` when there is no value there.
pub(crate) fn value_span(before: &str) -> Option<(usize, usize)> {
    let end = before.trim_end().len();
    let start = if let Some(i) = before.find(": ") {
        i + 2
    } else {
        let indent = before.len() - before.trim_start().len();
        before[indent..].strip_prefix("- ").map(|_| indent + 2)?
    };
    let start = start + (before[start..].len() - before[start..].trim_start().len());
    (start < end).then_some((start, end))
}

/// The object of each line: `(first line, identity)` per YAML document.
pub(crate) fn documents(text: &str) -> Vec<(usize, ObjectId)> {
    let mut out = vec![];
    let mut start = 1;
    let mut body = String::new();
    let mut push = |start: usize, body: &str| {
        // A document that is not valid YAML still gets its markers rewritten; its changes are
        // attributed to an unnamed object.
        let value: serde_json::Value = serde_yaml_ng::from_str(body).unwrap_or_default();
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
        out.push((
            start,
            ObjectId {
                api_version: text(&value["apiVersion"]),
                kind: text(&value["kind"]),
                namespace: text(&value["metadata"]["namespace"]),
                name: text(&value["metadata"]["name"]),
            },
        ));
    };
    for (i, line) in text.lines().enumerate() {
        if line.trim_end() == "---" || line.starts_with("--- ") {
            push(start, &body);
            body.clear();
            start = i + 2;
        } else {
            body.push_str(line);
            body.push('\n');
        }
    }
    push(start, &body);
    out
}

/// Rewrites the marked values of `text` (the file `file`) from `policies` (by `ns:name`).
/// Markers naming other policies are left alone. Returns the new text and what changed; the
/// text is returned unchanged (byte for byte) when nothing did.
pub fn apply_setters(
    file: &str,
    text: &str,
    policies: &BTreeMap<String, ImageRef>,
) -> Result<(String, Vec<Change>), MarkerError> {
    apply_setters_where(file, text, policies, |_| true)
}

/// [`apply_setters`], making only the changes `keep` accepts (Weir's locks leave the markers of
/// a locked workload alone); a change it refuses leaves its line as it was.
pub fn apply_setters_where(
    file: &str,
    text: &str,
    policies: &BTreeMap<String, ImageRef>,
    mut keep: impl FnMut(&Change) -> bool,
) -> Result<(String, Vec<Change>), MarkerError> {
    if !text.contains("$imagepolicy") {
        return Ok((text.to_owned(), vec![]));
    }
    let docs = documents(text);
    let mut out = String::with_capacity(text.len());
    let mut changes = vec![];
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let number = i + 1;
        let Some(marker) = find_marker(line, file, number)? else {
            out.push_str(line);
            continue;
        };
        let Some(image) = policies.get(&marker.policy) else {
            out.push_str(line);
            continue;
        };
        let new_value = match marker.part {
            Part::Full => image.reference(),
            Part::Tag => image.tag.clone(),
            Part::Name => image.name.clone(),
            Part::Digest => image.digest.clone().ok_or_else(|| MarkerError {
                file: file.to_owned(),
                line: number,
                why: format!(
                    "{:?} asks for a digest and ImagePolicy {} has none (set digestReflectionPolicy)",
                    marker.setter, marker.policy
                ),
            })?,
        };
        let before = &line[..marker.comment_start];
        let Some((mut start, mut end)) = value_span(before) else {
            return Err(MarkerError {
                file: file.to_owned(),
                line: number,
                why: "the marker is not on a `key: value` or `- value` line".into(),
            });
        };
        (start, end) = unquoted(before, start, end);
        let old_value = &before[start..end];
        if old_value == new_value {
            out.push_str(line);
            continue;
        }
        let object = docs
            .iter()
            .rev()
            .find(|(first, _)| *first <= number)
            .map(|(_, o)| o.clone())
            .unwrap_or_default();
        let change = Change {
            line: number,
            setter: marker.setter,
            old_value: old_value.to_owned(),
            new_value,
            object,
        };
        if !keep(&change) {
            out.push_str(line);
            continue;
        }
        out.push_str(&line[..start]);
        out.push_str(&change.new_value);
        out.push_str(&line[end..]);
        changes.push(change);
    }
    Ok((out, changes))
}

/// The span `start..end` of `line` without the quotes around it, when it is a quoted scalar.
pub(crate) fn unquoted(line: &str, start: usize, end: usize) -> (usize, usize) {
    let value = &line[start..end];
    if value.len() >= 2
        && ((value.starts_with('"') && value.ends_with('"'))
            || (value.starts_with('\'') && value.ends_with('\'')))
    {
        (start + 1, end - 1)
    } else {
        (start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    fn policies() -> BTreeMap<String, ImageRef> {
        BTreeMap::from([
            (
                "apps:app".to_owned(),
                ImageRef {
                    name: "reg.example/app".into(),
                    tag: "1.2.0".into(),
                    digest: None,
                },
            ),
            (
                "apps:db".to_owned(),
                ImageRef {
                    name: "reg.example/db".into(),
                    tag: "15.4".into(),
                    digest: Some("sha256:abc".into()),
                },
            ),
        ])
    }

    #[test]
    fn only_the_marked_values_change_byte_for_byte() {
        let before = r#"# top comment
apiVersion: apps/v1
kind: Deployment
metadata:
  name: app   # trailing comment kept
  namespace: apps
spec:
  template:
    spec:
      containers:
        - name: app
          image: reg.example/app:1.0.0 # {"$imagepolicy": "apps:app"}
        - image:   "reg.example/db:15.0"   # {"$imagepolicy": "apps:db"}
          name: db
---
# second document
apiVersion: v1
kind: ConfigMap
metadata: {name: versions}
data:
  tag: '1.0.0' # {"$imagepolicy": "apps:app:tag"}
  name: reg.example/old # {"$imagepolicy":"apps:app:name"}
  digest: none # {"$imagepolicy": "apps:db:digest"}
  other: reg.example/app:1.0.0 # {"$imagepolicy": "other:policy"}
list:
  - reg.example/app:0.1 # {"$imagepolicy": "apps:app"}
"#
        .replace('\n', "\r\n");
        let before = before.as_str();
        let after = before
            .replace(
                "reg.example/app:1.0.0 # {\"$imagepolicy\": \"apps:app\"}",
                "reg.example/app:1.2.0 # {\"$imagepolicy\": \"apps:app\"}",
            )
            .replace(
                "\"reg.example/db:15.0\"",
                "\"reg.example/db:15.4@sha256:abc\"",
            )
            .replace("'1.0.0'", "'1.2.0'")
            .replace("reg.example/old", "reg.example/app")
            .replace("digest: none", "digest: sha256:abc")
            .replace("reg.example/app:0.1", "reg.example/app:1.2.0");
        let (out, changes) = apply_setters("deploy.yaml", before, &policies()).unwrap();
        assert_eq!(out.as_bytes(), after.as_bytes());
        assert_eq!(changes.len(), 6);
        assert_eq!(changes[0].line, 12);
        assert_eq!(changes[0].old_value, "reg.example/app:1.0.0");
        assert_eq!(changes[0].object.kind, "Deployment");
        assert_eq!(changes[0].object.name, "app");
        assert_eq!(changes[2].object.name, "versions");
        assert_eq!(changes[2].setter, "apps:app:tag");
        // Applying again changes nothing.
        let (again, none) = apply_setters("deploy.yaml", &out, &policies()).unwrap();
        assert_eq!(again, out);
        assert!(none.is_empty());
    }

    #[test]
    fn malformed_markers_name_file_and_line() {
        for (line, want) in [
            ("image: x # {\"$imagepolicy\": apps:app}", "deploy.yaml:2"),
            (
                "image: x # {\"$imagepolicy\": \"apps\"}",
                "expected <namespace>:<name>",
            ),
            (
                "image: x # {\"$imagepolicy\": \"apps:app:size\"}",
                "unknown field 'size'",
            ),
            (
                "image: x # {\"$imagepolicy\": \"apps:app:digest\"}",
                "has none",
            ),
            ("\"$imagepolicy\": \"apps:app\"", "not in a comment"),
            (
                "image: # {\"$imagepolicy\": \"apps:app\"}",
                "not on a `key: value`",
            ),
        ] {
            let text = format!("kind: X\n{line}\n");
            let err = apply_setters("deploy.yaml", &text, &policies())
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{line}: {err}");
        }
    }

    #[test]
    fn files_without_markers_are_untouched() {
        let text = "a: 1\n# comment\n";
        let (out, changes) = apply_setters("f.yaml", text, &policies()).unwrap();
        assert_eq!(out, text);
        assert!(changes.is_empty());
    }
}
