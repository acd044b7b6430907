//! Building a Kustomization's path into objects.
//!
//! A plain directory (no kustomization file, no kustomization subdirectories) whose spec asks
//! for no more than `targetNamespace` is built natively: every YAML file below it, recursively,
//! sorted by path, with kustomize's namespace transformer applied in-process (see
//! [`crate::native`]) — no process, no copy. Otherwise the real `kustomize` binary builds the
//! path's own kustomization (or the one Flux generates for a plain directory) with the spec's
//! fields merged in as Flux merges them (see [`crate::generator`]), in a private view of the
//! shared artifact (see [`crate::view`]).
//!
//! Load rules are Flux's: a build may load any file inside the artifact root, and nothing
//! outside it. kustomize runs with no load restrictor, so every kustomization the build can
//! reach is checked first (see [`crate::references`]); it also runs with no plugins or exec
//! functions, an empty environment, no `git` on `PATH` and an unreachable proxy, so a build
//! cannot reach the network. Origin annotations tell each object's file; they are removed
//! before anything is applied unless the kustomization asked for them.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use serde_json::{Map, Value};
use weir_api::KustomizationSpec;

use crate::{
    fetch::contained_path,
    generator,
    references::{self, kustomization_file},
    view,
};

/// The annotation kustomize records an object's origin in.
const ORIGIN_ANNOTATION: &str = "config.kubernetes.io/origin";
/// The private view of the artifact is laid out in `<work>/src`.
pub const SOURCE_DIR: &str = "src";

/// One built object and the file it came from (relative to the artifact root).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
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
    #[error("{file}: invalid YAML")]
    InvalidYaml {
        file: String,
        #[source]
        source: serde_yaml_ng::Error,
    },
    /// An object that did not serialize for variable substitution (a bug, not a bad file).
    #[error("{file}: cannot write {object} for substitution")]
    SubstitutionInput {
        file: String,
        object: String,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("{file}: invalid YAML after substitution in {object}")]
    SubstitutedYaml {
        file: String,
        object: String,
        #[source]
        source: serde_yaml_ng::Error,
    },
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
    #[error("{file}: {field} must be a list")]
    NotAList { file: String, field: String },
    #[error(transparent)]
    Reference(#[from] references::ReferenceError),
    #[error("cannot write the kustomization")]
    Serialize(#[source] serde_yaml_ng::Error),
    /// kustomize's own words (its stderr), file paths made relative to the artifact.
    #[error("kustomize build failed: {0}")]
    Kustomize(String),
    #[error("kustomize build printed output that is not UTF-8")]
    KustomizeOutput(#[source] std::string::FromUtf8Error),
    #[error("kustomize build timed out after {0:?}")]
    Timeout(Duration),
    #[error("build I/O")]
    Io(#[from] std::io::Error),
}

/// How a path is built.
#[derive(Debug)]
pub enum BuildPlan {
    /// A plain directory, read natively: the objects.
    Native(Vec<Manifest>),
    /// kustomize builds `relative_path` in a private view of the artifact: its kustomization
    /// file (`generated` is `None`), or the one generated for a plain directory.
    Kustomize {
        relative_path: PathBuf,
        generated: Option<Collected>,
        /// What the build directory's kustomization names (relative to the artifact root):
        /// the only entries outside the build directory its view needs.
        loads: Vec<PathBuf>,
    },
}

/// Decides how to build `spec.path` of the extracted artifact `tree`, reading (never writing)
/// it; plain directories are read right away, and every kustomization a kustomize build can
/// reach is checked to stay inside the artifact.
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
    if kustomization_file(&dir).is_some() {
        let mut loads = references::check(tree, &dir)?;
        loads.extend(check_components(tree, &relative_path, spec)?);
        return Ok(BuildPlan::Kustomize {
            relative_path,
            generated: None,
            loads,
        });
    }
    let mut collected = collect_yaml(tree, &dir)?;
    if collected.kustomization_dirs.is_empty() && natively_buildable(spec) {
        if let Some(namespace) = &spec.target_namespace {
            crate::native::set_namespace(&mut collected.manifests, namespace);
            // Moved into one namespace, two objects may become one, as kustomize reports too.
            check_unique(&collected.manifests)?;
        }
        return Ok(BuildPlan::Native(collected.manifests));
    }
    for sub in &collected.kustomization_dirs {
        references::check(tree, &dir.join(sub))?;
    }
    let loads = check_components(tree, &relative_path, spec)?;
    Ok(BuildPlan::Kustomize {
        relative_path,
        generated: Some(collected),
        loads,
    })
}

/// Each of the spec's components stays inside the artifact, and so does what it loads.
/// Returns their directories, relative to the artifact root.
fn check_components(
    tree: &Path,
    relative_path: &Path,
    spec: &KustomizationSpec,
) -> Result<Vec<PathBuf>, BuildError> {
    let mut dirs = vec![];
    for component in &spec.components {
        let dir = contained_path(tree, &relative_path.join(component))
            .map_err(|_| BuildError::UnsafePath(component.clone()))?;
        if spec.ignore_missing_components && !dir.exists() {
            continue;
        }
        if kustomization_file(&dir).is_some() {
            references::check(tree, &dir)?;
        }
        dirs.extend(dir.strip_prefix(tree).ok().map(Path::to_path_buf));
    }
    Ok(dirs)
}

/// What [`kustomize_build`] takes from a [`BuildPlan::Kustomize`].
#[derive(Debug, Clone, Copy)]
pub struct Planned<'a> {
    pub relative_path: &'a Path,
    pub generated: Option<&'a Collected>,
    pub loads: &'a [PathBuf],
}

/// Runs kustomize on `relative_path` of the shared artifact `tree`, in a private view laid out
/// in `<work>/src`; the spec's fields are merged into the build directory's kustomization.
pub async fn kustomize_build(
    work: &Path,
    tree: &Path,
    spec: &KustomizationSpec,
    planned: Planned<'_>,
    kustomize: &Path,
    timeout: Duration,
) -> Result<Vec<Manifest>, BuildError> {
    let Planned {
        relative_path,
        generated,
        loads,
    } = planned;
    let (name, mut doc) = match generated {
        Some(collected) => {
            let resources: Vec<&str> = collected
                .files
                .iter()
                .chain(&collected.kustomization_dirs)
                .map(String::as_str)
                .collect();
            (
                references::KUSTOMIZATION_FILES[0],
                generator::generated(&resources),
            )
        }
        None => read_kustomization(tree, relative_path)?,
    };
    let file = relative_path.join(name).to_string_lossy().into_owned();
    let present;
    let spec = if spec.ignore_missing_components {
        present = without_missing_components(tree, relative_path, spec);
        &present
    } else {
        spec
    };
    let remove_origin = generator::merge_spec(&mut doc, spec, &file)?;
    let view_root = work.join(SOURCE_DIR);
    let dir = view::lay_out(tree, relative_path, &view_root, name.as_ref(), loads)?;
    std::fs::write(
        dir.join(name),
        serde_yaml_ng::to_string(&doc).map_err(BuildError::Serialize)?,
    )?;
    let output = run_kustomize(kustomize, &dir, work, &[&view_root, tree], timeout).await?;
    parse_kustomize_output(&output, relative_path, remove_origin)
}

/// `spec` without the components its source lacks (`ignoreMissingComponents`); their paths
/// were checked to stay inside the artifact by [`plan`].
fn without_missing_components(
    tree: &Path,
    relative_path: &Path,
    spec: &KustomizationSpec,
) -> KustomizationSpec {
    let mut spec = spec.clone();
    spec.components.retain(|component| {
        contained_path(tree, &relative_path.join(component)).is_ok_and(|dir| dir.exists())
    });
    spec
}

/// The build directory's kustomization file: its name and its mapping.
fn read_kustomization(
    tree: &Path,
    relative_path: &Path,
) -> Result<(&'static str, Map<String, Value>), BuildError> {
    let dir = tree.join(relative_path);
    let name = kustomization_file(&dir)
        .ok_or_else(|| BuildError::PathNotFound(relative_path.display().to_string()))?;
    let file = relative_path.join(name).to_string_lossy().into_owned();
    let text = std::fs::read_to_string(dir.join(name))?;
    let value: Value =
        serde_yaml_ng::from_str(&text).map_err(|source| BuildError::InvalidYaml {
            file: file.clone(),
            source,
        })?;
    match value {
        Value::Object(doc) => Ok((name, doc)),
        Value::Null => Ok((name, Map::new())),
        _ => Err(BuildError::NotAnObject {
            file,
            index: 1,
            why: "a kustomization must be a mapping".to_owned(),
        }),
    }
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

/// Whether Weir builds a plain directory with this spec exactly as kustomize would, without
/// kustomize: namespaces are set natively, and `commonMetadata` is applied after every build
/// (as Flux does); prefixes, suffixes, images, patches, components and build metadata need
/// kustomize.
fn natively_buildable(spec: &KustomizationSpec) -> bool {
    spec.build_metadata.is_empty()
        && spec.name_prefix.is_none()
        && spec.name_suffix.is_none()
        && spec.images.is_empty()
        && spec.patches.is_empty()
        && spec.components.is_empty()
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
                if p != dir && kustomization_file(&p).is_some() {
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
    check_unique(&collected.manifests)?;
    Ok(collected)
}

/// No object may be defined twice; the error names both files.
fn check_unique(manifests: &[Manifest]) -> Result<(), BuildError> {
    let mut seen: std::collections::HashMap<String, &str> = std::collections::HashMap::new();
    for manifest in manifests {
        let id = object_key(&manifest.object);
        if let Some(first) = seen.insert(id.clone(), &manifest.file) {
            return Err(BuildError::Duplicate {
                id,
                first: first.to_owned(),
                second: manifest.file.clone(),
            });
        }
    }
    Ok(())
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
        let value: Value = serde::Deserialize::deserialize(document).map_err(|source| {
            BuildError::InvalidYaml {
                file: file.to_owned(),
                source,
            }
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

/// Runs `kustomize build` on `dir` without load restrictor (the references were checked),
/// plugins, exec functions, environment or network. Paths under `roots` are named relative to
/// them in errors.
async fn run_kustomize(
    kustomize: &Path,
    dir: &Path,
    work: &Path,
    roots: &[&Path],
    timeout: Duration,
) -> Result<String, BuildError> {
    let mut command = tokio::process::Command::new(kustomize);
    command
        .arg("build")
        .arg("--load-restrictor")
        .arg("LoadRestrictionsNone")
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
        // kustomize names files by their absolute paths; show them relative to the artifact.
        let mut message = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        for root in roots {
            message = message.replace(&format!("{}/", root.display()), "");
        }
        return Err(BuildError::Kustomize(message));
    }
    String::from_utf8(output.stdout).map_err(BuildError::KustomizeOutput)
}

/// The objects of kustomize's output for the build directory `relative_path`, with their
/// origin file taken from the origin annotation (removed when Weir asked for it).
fn parse_kustomize_output(
    output: &str,
    relative_path: &Path,
    remove_origin: bool,
) -> Result<Vec<Manifest>, BuildError> {
    let documents = parse_documents(output, "kustomize output")?;
    let mut manifests = Vec::with_capacity(documents.len());
    for (index, mut object) in documents.into_iter().enumerate() {
        let file = origin(&mut object, remove_origin)
            .and_then(|path| normalize(&relative_path.join(path)))
            .unwrap_or_else(|| relative_path.join("kustomization").display().to_string());
        let object = check_object(object, &file, index + 1)?;
        manifests.push(Manifest { object, file });
    }
    Ok(manifests)
}

/// The `path` of an object's origin annotation (relative to the build directory), the
/// annotation removed when `remove`.
fn origin(object: &mut Value, remove: bool) -> Option<String> {
    let annotations = object
        .pointer_mut("/metadata/annotations")?
        .as_object_mut()?;
    let origin = if remove {
        annotations.remove(ORIGIN_ANNOTATION)?
    } else {
        annotations.get(ORIGIN_ANNOTATION)?.clone()
    };
    if annotations.is_empty()
        && let Some(meta) = object
            .pointer_mut("/metadata")
            .and_then(Value::as_object_mut)
    {
        meta.remove("annotations");
    }
    let origin: Value = serde_yaml_ng::from_str(origin.as_str()?).ok()?;
    Some(origin.get("path")?.as_str()?.to_owned())
}

/// `path` with `.` and `..` resolved, as a relative path string; `None` if it climbs out.
fn normalize(path: &Path) -> Option<String> {
    let mut parts: Vec<&std::ffi::OsStr> = vec![];
    for component in path.components() {
        match component {
            std::path::Component::Normal(part) => parts.push(part),
            std::path::Component::ParentDir => {
                parts.pop()?;
            }
            _ => {}
        }
    }
    Some(parts.iter().collect::<PathBuf>().display().to_string())
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
        let e = weir_runtime::chain(&collect_yaml(dir.path(), dir.path()).unwrap_err());
        assert!(e.starts_with("x/bad.yaml: invalid YAML: "), "{e}");

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
    fn origin_annotations_name_the_file_relative_to_the_artifact_and_are_removed() {
        let out = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  annotations:\n    config.kubernetes.io/origin: |\n      path: ../base/cm.yaml\n";
        let m = parse_kustomize_output(out, Path::new("apps/web"), true).unwrap();
        assert_eq!(m[0].file, "apps/base/cm.yaml");
        assert!(m[0].object.pointer("/metadata/annotations").is_none());
        let kept = parse_kustomize_output(out, Path::new("apps/web"), false).unwrap();
        assert_eq!(kept[0].file, "apps/base/cm.yaml");
        assert!(
            kept[0]
                .object
                .pointer("/metadata/annotations/config.kubernetes.io~1origin")
                .is_some(),
            "asked for by the kustomization, so kept"
        );
    }
}
