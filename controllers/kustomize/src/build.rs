//! Building a Kustomization's path into objects.
//!
//! A plain directory (no kustomization file, no spec-level kustomize fields) is built natively:
//! every YAML file below it, recursively, sorted by path. Otherwise the real `kustomize` binary
//! builds a generated wrapper kustomization that points at the path and carries the spec's
//! `targetNamespace`, `namePrefix`, `nameSuffix`, `commonMetadata`, `images`, `patches` and
//! `components`, so they get kustomize's exact semantics. kustomize runs with the root-only load
//! restrictor, no plugins or exec functions, an empty environment, no `git` on `PATH` and an
//! unreachable proxy, so a build cannot reach the network. The wrapper asks kustomize for origin
//! annotations, which tell each object's file; they are removed before anything is applied.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use serde_json::{Map, Value, json};
use weir_api::KustomizationSpec;

use crate::fetch::contained_path;

/// The annotation kustomize records an object's origin in.
const ORIGIN_ANNOTATION: &str = "config.kubernetes.io/origin";
/// The names kustomize accepts for a kustomization file.
const KUSTOMIZATION_FILES: &[&str] = &["kustomization.yaml", "kustomization.yml", "Kustomization"];
/// The artifact is extracted to `<work>/src`; the wrapper lives in `<work>/wrapper`.
pub const SOURCE_DIR: &str = "src";
const WRAPPER_DIR: &str = "wrapper";

/// One built object and the file it came from (relative to the artifact root).
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub object: Value,
    pub file: String,
}

/// Why the build failed; every message names the file when one is known.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("path {0:?} not found in the artifact")]
    PathNotFound(String),
    #[error("path {0:?} leaves the artifact")]
    UnsafePath(String),
    #[error("{file}: invalid YAML: {message}")]
    InvalidYaml { file: String, message: String },
    #[error("{file}: document {index} is not a Kubernetes object: {why}")]
    NotAnObject {
        file: String,
        index: usize,
        why: String,
    },
    #[error("{id} is defined twice, in {first} and {second}")]
    Duplicate {
        id: String,
        first: String,
        second: String,
    },
    #[error("kustomize build failed: {0}")]
    Kustomize(String),
    #[error("kustomize build timed out after {0:?}")]
    Timeout(Duration),
    #[error("build I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// How a path is built.
#[derive(Debug)]
pub enum BuildPlan {
    /// A plain directory, read natively: the objects.
    Native(Vec<Manifest>),
    /// kustomize builds a private copy of the artifact; `generated` is the kustomization to
    /// write for a plain directory (one that also needs kustomize).
    Kustomize {
        relative_path: PathBuf,
        generated: Option<Collected>,
    },
}

/// Decides how to build `spec.path` of the extracted artifact `tree`, reading (never writing)
/// it; plain directories are read right away.
pub fn plan(tree: &Path, spec: &KustomizationSpec) -> Result<BuildPlan, BuildError> {
    let path = spec.path.as_deref().unwrap_or("./");
    // A leading `/` means the artifact root, as in Flux.
    let dir = contained_path(tree, Path::new(path.trim_start_matches('/')))
        .map_err(|_| BuildError::UnsafePath(path.to_owned()))?;
    if !dir.is_dir() {
        return Err(BuildError::PathNotFound(path.to_owned()));
    }
    let relative_path = dir
        .strip_prefix(tree)
        .unwrap_or(Path::new(""))
        .to_path_buf();
    if has_kustomization(&dir) {
        return Ok(BuildPlan::Kustomize {
            relative_path,
            generated: None,
        });
    }
    let collected = collect_yaml(tree, &dir)?;
    if collected.kustomization_dirs.is_empty() && !uses_kustomize_fields(spec) {
        return Ok(BuildPlan::Native(collected.manifests));
    }
    Ok(BuildPlan::Kustomize {
        relative_path,
        generated: Some(collected),
    })
}

/// Runs kustomize on a private copy of the artifact extracted at `<work>/src`.
pub async fn kustomize_build(
    work: &Path,
    spec: &KustomizationSpec,
    relative_path: &Path,
    generated: Option<&Collected>,
    kustomize: &Path,
    timeout: Duration,
) -> Result<Vec<Manifest>, BuildError> {
    let root = work.join(SOURCE_DIR);
    if let Some(collected) = generated {
        write_generated_kustomization(&root.join(relative_path), collected)?;
    }
    let wrapper = work.join(WRAPPER_DIR);
    std::fs::create_dir_all(&wrapper)?;
    let wrapper_doc = wrapper_kustomization(spec, relative_path, &root)?;
    std::fs::write(
        wrapper.join("kustomization.yaml"),
        serde_yaml_ng::to_string(&wrapper_doc).map_err(|e| BuildError::Kustomize(e.to_string()))?,
    )?;
    let output = run_kustomize(kustomize, &wrapper, work, timeout).await?;
    parse_kustomize_output(&output)
}

/// The binary at `path`, or for a bare name the first match on this process's `PATH` (builds
/// run with an empty environment, so the name must be resolved beforehand).
#[must_use]
pub fn find_binary(path: &Path) -> Option<PathBuf> {
    if path.components().count() > 1 {
        return path.is_file().then(|| path.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(path))
        .find(|candidate| candidate.is_file())
}

fn has_kustomization(dir: &Path) -> bool {
    KUSTOMIZATION_FILES.iter().any(|f| dir.join(f).is_file())
}

/// Whether the spec asks for anything only kustomize does.
fn uses_kustomize_fields(spec: &KustomizationSpec) -> bool {
    spec.target_namespace.is_some()
        || spec.name_prefix.is_some()
        || spec.name_suffix.is_some()
        || spec.common_metadata.is_some()
        || !spec.images.is_empty()
        || !spec.patches.is_empty()
        || !spec.components.is_empty()
}

/// What a plain directory holds.
#[derive(Debug, Default)]
pub struct Collected {
    pub manifests: Vec<Manifest>,
    /// Files (relative to the directory) holding objects.
    pub files: Vec<String>,
    /// Subdirectories with their own kustomization file, built by kustomize as a whole.
    pub kustomization_dirs: Vec<String>,
}

/// Reads every `.yaml`/`.yml` file below `dir`, sorted by path. Subdirectories with a
/// kustomization file are listed, not read. Files are named relative to `root`.
pub fn collect_yaml(root: &Path, dir: &Path) -> Result<Collected, BuildError> {
    let mut collected = Collected::default();
    let mut seen: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut files: Vec<PathBuf> = vec![];
    while let Some(d) = stack.pop() {
        // Symlinked directories are not followed: they could loop.
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&d)?
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_type()
                    .is_ok_and(|t| !t.is_symlink() || e.path().is_file())
            })
            .map(|e| e.path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                if p != dir && has_kustomization(&p) {
                    collected.kustomization_dirs.push(relative(dir, &p));
                } else {
                    stack.push(p);
                }
            } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(p);
            }
        }
    }
    files.sort();
    for path in files {
        let file = relative(root, &path);
        let text = std::fs::read_to_string(&path)?;
        let mut any = false;
        for (index, object) in parse_documents(&text, &file)?.into_iter().enumerate() {
            let object = check_object(object, &file, index + 1)?;
            let id = object_key(&object);
            if let Some(first) = seen.insert(id.clone(), file.clone()) {
                return Err(BuildError::Duplicate {
                    id,
                    first,
                    second: file,
                });
            }
            any = true;
            collected.manifests.push(Manifest {
                object,
                file: file.clone(),
            });
        }
        if any {
            collected.files.push(relative(dir, &path));
        }
    }
    Ok(collected)
}

fn relative(base: &Path, path: &Path) -> String {
    path.strip_prefix(base)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

/// The YAML documents of a file, empty ones dropped; `kind: List` expanded into its items.
fn parse_documents(text: &str, file: &str) -> Result<Vec<Value>, BuildError> {
    let mut out = vec![];
    for document in serde_yaml_ng::Deserializer::from_str(text) {
        let value: Value =
            serde::Deserialize::deserialize(document).map_err(|e| BuildError::InvalidYaml {
                file: file.to_owned(),
                message: e.to_string(),
            })?;
        match value {
            Value::Null => {}
            Value::Object(ref map)
                if map.get("kind").and_then(Value::as_str) == Some("List")
                    && map.get("items").is_some_and(Value::is_array) =>
            {
                if let Some(Value::Array(items)) = map.get("items") {
                    out.extend(items.iter().cloned());
                }
            }
            other => out.push(other),
        }
    }
    Ok(out)
}

/// Checks that a document has `apiVersion`, `kind` and `metadata.name`.
fn check_object(object: Value, file: &str, index: usize) -> Result<Value, BuildError> {
    let bad = |why: &str| BuildError::NotAnObject {
        file: file.to_owned(),
        index,
        why: why.to_owned(),
    };
    if !object.is_object() {
        return Err(bad("not a mapping"));
    }
    for (pointer, name) in [
        ("/apiVersion", "apiVersion"),
        ("/kind", "kind"),
        ("/metadata/name", "metadata.name"),
    ] {
        if object
            .pointer(pointer)
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(bad(&format!("{name} is missing")));
        }
    }
    Ok(object)
}

/// `Kind/namespace/name` of an object as written in the source.
#[must_use]
pub fn object_key(object: &Value) -> String {
    let s = |p: &str| {
        object
            .pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    let namespace = s("/metadata/namespace");
    if namespace.is_empty() {
        format!("{}/{}", s("/kind"), s("/metadata/name"))
    } else {
        format!("{}/{}/{}", s("/kind"), namespace, s("/metadata/name"))
    }
}

/// Writes the kustomization Flux generates for a plain directory: its files and its
/// kustomization subdirectories as resources.
fn write_generated_kustomization(dir: &Path, collected: &Collected) -> Result<(), BuildError> {
    let resources: Vec<&String> = collected
        .files
        .iter()
        .chain(&collected.kustomization_dirs)
        .collect();
    let doc = json!({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": resources,
    });
    std::fs::write(
        dir.join("kustomization.yaml"),
        serde_yaml_ng::to_string(&doc).map_err(|e| BuildError::Kustomize(e.to_string()))?,
    )?;
    Ok(())
}

/// The wrapper kustomization: the path as its one resource, plus the spec's kustomize fields.
fn wrapper_kustomization(
    spec: &KustomizationSpec,
    relative_path: &Path,
    root: &Path,
) -> Result<Value, BuildError> {
    let source = Path::new("..").join(SOURCE_DIR).join(relative_path);
    let mut doc = Map::new();
    doc.insert(
        "apiVersion".into(),
        json!("kustomize.config.k8s.io/v1beta1"),
    );
    doc.insert("kind".into(), json!("Kustomization"));
    doc.insert("resources".into(), json!([source.to_string_lossy()]));
    doc.insert("buildMetadata".into(), json!(["originAnnotations"]));
    if let Some(ns) = &spec.target_namespace {
        doc.insert("namespace".into(), json!(ns));
    }
    if let Some(prefix) = &spec.name_prefix {
        doc.insert("namePrefix".into(), json!(prefix));
    }
    if let Some(suffix) = &spec.name_suffix {
        doc.insert("nameSuffix".into(), json!(suffix));
    }
    if let Some(meta) = &spec.common_metadata {
        if !meta.labels.is_empty() {
            doc.insert(
                "labels".into(),
                json!([{ "pairs": meta.labels, "includeSelectors": false }]),
            );
        }
        if !meta.annotations.is_empty() {
            doc.insert("commonAnnotations".into(), json!(meta.annotations));
        }
    }
    if !spec.images.is_empty() {
        doc.insert(
            "images".into(),
            serde_json::to_value(&spec.images).unwrap_or_default(),
        );
    }
    if !spec.patches.is_empty() {
        doc.insert(
            "patches".into(),
            serde_json::to_value(&spec.patches).unwrap_or_default(),
        );
    }
    if !spec.components.is_empty() {
        let mut components = vec![];
        for component in &spec.components {
            let joined = relative_path.join(component);
            contained_path(root, &joined).map_err(|_| BuildError::UnsafePath(component.clone()))?;
            components.push(
                Path::new("..")
                    .join(SOURCE_DIR)
                    .join(joined)
                    .to_string_lossy()
                    .into_owned(),
            );
        }
        doc.insert("components".into(), json!(components));
    }
    Ok(Value::Object(doc))
}

/// Runs `kustomize build` on `dir` without plugins, exec functions, environment or network.
async fn run_kustomize(
    kustomize: &Path,
    dir: &Path,
    work: &Path,
    timeout: Duration,
) -> Result<String, BuildError> {
    let mut command = tokio::process::Command::new(kustomize);
    command
        .arg("build")
        .arg("--load-restrictor")
        .arg("LoadRestrictionsRootOnly")
        .arg(dir)
        .env_clear()
        .env("HOME", work)
        .env("PATH", "")
        .env("HTTP_PROXY", "http://127.0.0.1:9")
        .env("HTTPS_PROXY", "http://127.0.0.1:9")
        .current_dir(work)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(timeout, command.output())
        .await
        .map_err(|_| BuildError::Timeout(timeout))??;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        // kustomize names files by their absolute paths in the work directory; show them
        // relative to the artifact root.
        let src = format!("{}/", work.join(SOURCE_DIR).display());
        let wrapper = format!("{}/", work.join(WRAPPER_DIR).display());
        return Err(BuildError::Kustomize(
            stderr
                .trim()
                .replace(&src, "")
                .replace(&wrapper, "")
                .replace(&format!("../{SOURCE_DIR}/"), ""),
        ));
    }
    String::from_utf8(output.stdout).map_err(|e| BuildError::Kustomize(e.to_string()))
}

/// The objects of kustomize's output, with their origin file taken from (and removed from)
/// the origin annotation.
fn parse_kustomize_output(output: &str) -> Result<Vec<Manifest>, BuildError> {
    let documents = parse_documents(output, "kustomize output")?;
    let mut manifests = Vec::with_capacity(documents.len());
    for (index, mut object) in documents.into_iter().enumerate() {
        let file = take_origin(&mut object).unwrap_or_else(|| "kustomization".to_owned());
        let object = check_object(object, &file, index + 1)?;
        manifests.push(Manifest { object, file });
    }
    Ok(manifests)
}

fn take_origin(object: &mut Value) -> Option<String> {
    let annotations = object
        .pointer_mut("/metadata/annotations")?
        .as_object_mut()?;
    let origin = annotations.remove(ORIGIN_ANNOTATION);
    if annotations.is_empty()
        && let Some(meta) = object
            .pointer_mut("/metadata")
            .and_then(Value::as_object_mut)
    {
        meta.remove("annotations");
    }
    let origin: Value = serde_yaml_ng::from_str(origin?.as_str()?).ok()?;
    let path = origin.get("path")?.as_str()?;
    let prefix = format!("../{SOURCE_DIR}/");
    Some(path.strip_prefix(&prefix).unwrap_or(path).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, files: &[(&str, &str)]) {
        for (path, content) in files {
            let p = root.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
    }

    const CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n";

    #[test]
    fn plain_directories_are_collected_recursively_in_path_order() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            &[
                (
                    "apps/b/two.yaml",
                    "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n",
                ),
                (
                    "apps/a.yml",
                    &format!(
                        "{CM}---\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Secret\n  metadata: {{name: s}}\n"
                    ),
                ),
                ("apps/README.md", "not yaml"),
            ],
        );
        let c = collect_yaml(dir.path(), &dir.path().join("apps")).unwrap();
        let got: Vec<_> = c
            .manifests
            .iter()
            .map(|m| (object_key(&m.object), m.file.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("ConfigMap/a".to_owned(), "apps/a.yml"),
                ("Secret/s".to_owned(), "apps/a.yml"),
                ("Service/s".to_owned(), "apps/b/two.yaml"),
            ]
        );
        assert_eq!(c.files, ["a.yml", "b/two.yaml"]);
    }

    #[test]
    fn bad_files_are_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &[("x/bad.yaml", "kind: [unclosed\n")]);
        let e = collect_yaml(dir.path(), dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("x/bad.yaml: invalid YAML"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &[("values.yaml", "replicas: 3\n")]);
        let e = collect_yaml(dir.path(), dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("values.yaml: document 1") && e.contains("apiVersion"),
            "{e}"
        );

        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &[("a.yaml", CM), ("b.yaml", CM)]);
        let e = collect_yaml(dir.path(), dir.path())
            .unwrap_err()
            .to_string();
        assert_eq!(e, "ConfigMap/a is defined twice, in a.yaml and b.yaml");
    }

    #[test]
    fn subdirectories_with_a_kustomization_are_listed_not_read() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            &[
                ("a.yaml", CM),
                ("base/kustomization.yaml", "resources: []\n"),
                ("base/x.yaml", "junk: 1\n"),
            ],
        );
        let c = collect_yaml(dir.path(), dir.path()).unwrap();
        assert_eq!(c.kustomization_dirs, ["base"]);
        assert_eq!(c.manifests.len(), 1);
    }

    #[test]
    fn binaries_are_found_by_path_or_on_path() {
        assert_eq!(
            find_binary(Path::new("sh")).map(|p| p.is_absolute()),
            Some(true)
        );
        assert!(find_binary(Path::new("no-such-binary-weir")).is_none());
        assert!(find_binary(Path::new("/no/such/kustomize")).is_none());
    }

    #[test]
    fn origin_annotations_name_the_file_and_are_removed() {
        let out = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  annotations:\n    config.kubernetes.io/origin: |\n      path: ../src/apps/cm.yaml\n";
        let m = parse_kustomize_output(out).unwrap();
        assert_eq!(m[0].file, "apps/cm.yaml");
        assert!(m[0].object.pointer("/metadata/annotations").is_none());
    }

    #[test]
    fn the_wrapper_carries_the_spec_fields_and_refuses_escaping_components() {
        let spec: KustomizationSpec = serde_json::from_value(json!({
            "sourceRef": {"kind": "GitRepository", "name": "r"}, "interval": "1m", "prune": true,
            "targetNamespace": "t", "namePrefix": "p-",
            "images": [{"name": "nginx", "newTag": "2"}],
            "commonMetadata": {"labels": {"team": "a"}},
            "components": ["../comp"]
        }))
        .unwrap();
        let root = Path::new("/w/src");
        let doc = wrapper_kustomization(&spec, Path::new("apps"), root).unwrap();
        assert_eq!(doc["resources"], json!(["../src/apps"]));
        assert_eq!(doc["namespace"], json!("t"));
        assert_eq!(doc["images"], json!([{"name": "nginx", "newTag": "2"}]));
        assert_eq!(doc["components"], json!(["../src/apps/../comp"]));
        assert_eq!(doc["labels"][0]["includeSelectors"], json!(false));
        let mut escaping = spec.clone();
        escaping.components = vec!["../../etc".to_owned()];
        assert!(wrapper_kustomization(&escaping, Path::new("apps"), root).is_err());
    }
}
