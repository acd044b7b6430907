//! Checking, before a build, that no kustomization loads anything from outside its artifact.
//!
//! Flux lets a build load any file inside the artifact root (an overlay may use `../base` or
//! `../../common/x.yaml`) and nothing outside it. kustomize's own restrictor cannot say that:
//! `LoadRestrictionsRootOnly` confines each kustomization to its own directory, which breaks
//! every overlay. So Weir runs kustomize with `LoadRestrictionsNone` and checks here every path
//! named by every kustomization the build can reach. A path must stay inside the root as
//! written (`.` and `..` resolved, never above the root, never absolute) and on disk (a symlink
//! inside the artifact must not lead out of it). Remote bases and URLs are refused, since builds
//! have no network. Missing files are left to kustomize, which reports them itself.
//!
//! Paths are resolved as kustomize resolves them: against the directory of the kustomization
//! that names them, and a followed directory is entered at its real location (kustomize
//! evaluates symlinks of a kustomization directory). The configs of generators, transformers
//! and validators are loaded by the kustomization that lists them, so their paths resolve
//! against its directory, not the config file's.
//!
//! One gap remains: a generator, transformer or validator given as a directory is built by
//! kustomize, and its patches or replacements could rewrite a config's paths; only its
//! resources' files are read here. Seeing those rewrites would take the build itself.

use std::{
    collections::HashSet,
    fs,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use serde_json::Value;

use crate::fetch::contained_path;

/// The names kustomize accepts for a kustomization file, in its order of preference.
pub(crate) const KUSTOMIZATION_FILES: &[&str] =
    &["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// Why a kustomization may not be built. Files are named relative to the artifact root.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("{file}: {field}: {value} is outside the artifact")]
    Outside {
        file: String,
        field: String,
        value: String,
    },
    #[error("{file}: {field}: remote bases are not supported: {value}")]
    Remote {
        file: String,
        field: String,
        value: String,
    },
    #[error("{file} links outside the artifact")]
    LinksOutside { file: String },
    #[error("cannot read {file}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: invalid YAML")]
    InvalidYaml {
        file: String,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("the build directory {dir} is not inside the artifact")]
    NotInArtifact { dir: String },
}

/// What kustomize does with a path-carrying value, which decides what is checked.
#[derive(Debug, Clone, Copy)]
enum Reference {
    /// A file or directory read as it is.
    File,
    /// A generator source, `[key=]path`.
    KeyedFile,
    /// A strategic-merge patch: a file, unless the patch is written inline.
    PatchOrFile,
    /// A resource, component or base: a file, or a directory whose kustomization is followed.
    Kustomization,
    /// A generator, transformer or validator: its configs inline, in a file, or built from a
    /// directory's kustomization; the configs' own paths are checked too.
    PluginConfig,
}

/// The fields of a kustomization (kustomize v5) that name something to load, relative to its
/// directory; `[]` stands for every item of a list.
const KUSTOMIZATION_FIELDS: &[(&str, Reference)] = &[
    ("resources[]", Reference::Kustomization),
    ("components[]", Reference::Kustomization),
    ("bases[]", Reference::Kustomization),
    ("crds[]", Reference::File),
    ("configurations[]", Reference::File),
    ("openapi.path", Reference::File),
    ("helmGlobals.chartHome", Reference::File),
    ("helmCharts[].valuesFile", Reference::File),
    ("helmCharts[].additionalValuesFiles[]", Reference::File),
    // The deprecated form kustomize still converts into `helmGlobals` and `helmCharts`.
    ("helmChartInflationGenerator[].chartHome", Reference::File),
    ("helmChartInflationGenerator[].values", Reference::File),
    ("patches[].path", Reference::File),
    ("patchesJson6902[].path", Reference::File),
    ("patchesStrategicMerge[]", Reference::PatchOrFile),
    ("replacements[].path", Reference::File),
    ("configMapGenerator[].files[]", Reference::KeyedFile),
    ("configMapGenerator[].envs[]", Reference::File),
    ("configMapGenerator[].env", Reference::File),
    ("secretGenerator[].files[]", Reference::KeyedFile),
    ("secretGenerator[].envs[]", Reference::File),
    ("secretGenerator[].env", Reference::File),
    ("generators[]", Reference::PluginConfig),
    ("transformers[]", Reference::PluginConfig),
    ("validators[]", Reference::PluginConfig),
];

/// The path-carrying fields of kustomize's builtin plugin configs. They are checked in every
/// config whatever its kind: a kind that is not builtin cannot run (plugins are off), so the
/// stricter reading costs nothing.
const PLUGIN_CONFIG_FIELDS: &[(&str, Reference)] = &[
    // PatchTransformer, PatchJson6902Transformer.
    ("path", Reference::File),
    // PatchStrategicMergeTransformer.
    ("paths[]", Reference::PatchOrFile),
    // ReplacementTransformer.
    ("replacements[].path", Reference::File),
    // ConfigMapGenerator, SecretGenerator.
    ("files[]", Reference::KeyedFile),
    ("envs[]", Reference::File),
    ("env", Reference::File),
    // HelmChartInflationGenerator.
    ("chartHome", Reference::File),
    ("valuesFile", Reference::File),
    ("additionalValuesFiles[]", Reference::File),
];

/// Checks every path the kustomization in `dir` (and, recursively, every kustomization it loads)
/// refers to stays inside `root`, the extracted artifact. `dir` is inside `root`.
///
/// Returns the paths (relative to the root, `..` resolved) that the kustomization in `dir`
/// itself names, its plugin configs' paths included: what a build of `dir` loads first. Paths
/// named by the kustomizations it reaches are not listed: kustomize enters each of those at its
/// real location.
pub fn check(root: &Path, dir: &Path) -> Result<Vec<PathBuf>, ReferenceError> {
    let root = fs::canonicalize(root).map_err(|source| ReferenceError::Read {
        file: root.display().to_string(),
        source,
    })?;
    let dir = match fs::canonicalize(dir) {
        Ok(dir) => dir,
        // kustomize names a missing build directory itself.
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(source) => {
            return Err(ReferenceError::Read {
                file: dir.display().to_string(),
                source,
            });
        }
    };
    if !dir.starts_with(&root) {
        return Err(ReferenceError::NotInArtifact {
            dir: dir.display().to_string(),
        });
    }
    let mut checker = Checker {
        root,
        top: dir.clone(),
        loads: vec![],
        visited: HashSet::new(),
    };
    checker.check_dir(&dir)?;
    Ok(checker.loads)
}

/// The name of `dir`'s kustomization file, if it has one.
pub(crate) fn kustomization_file(dir: &Path) -> Option<&'static str> {
    KUSTOMIZATION_FILES
        .iter()
        .copied()
        .find(|name| dir.join(name).is_file())
}

/// One walk over the kustomizations a build reaches.
struct Checker {
    /// The artifact root, symlinks resolved, so that real paths can be compared with it.
    root: PathBuf,
    /// The directory being built, and what its kustomization names (relative to the root).
    top: PathBuf,
    loads: Vec<PathBuf>,
    /// Kustomization directories already checked: kustomize reports cycles, Weir only must not
    /// follow one forever.
    visited: HashSet<PathBuf>,
}

/// Where a value is written (for messages) and the directory it is relative to.
struct Origin<'a> {
    file: &'a str,
    base: &'a Path,
}

/// A parsed kustomization file.
struct Loaded {
    file: String,
    value: Value,
}

impl Checker {
    /// Checks the kustomization in `dir` (a real path inside the root), once.
    fn check_dir(&mut self, dir: &Path) -> Result<(), ReferenceError> {
        if !self.visited.insert(dir.to_path_buf()) {
            return Ok(());
        }
        let Some(kustomization) = self.read_kustomization(dir)? else {
            // A directory without one is kustomize's error to report.
            return Ok(());
        };
        let origin = Origin {
            file: &kustomization.file,
            base: dir,
        };
        for &(pattern, reference) in KUSTOMIZATION_FIELDS {
            for (field, value) in values(&kustomization.value, pattern, "") {
                self.check_reference(&origin, &field, value, reference)?;
            }
        }
        Ok(())
    }

    fn check_reference(
        &mut self,
        origin: &Origin<'_>,
        field: &str,
        value: &str,
        reference: Reference,
    ) -> Result<(), ReferenceError> {
        match reference {
            Reference::File => {
                self.resolve(origin, field, value, value)?;
            }
            Reference::KeyedFile => {
                let path = value.split_once('=').map_or(value, |(_, path)| path);
                self.resolve(origin, field, value, path)?;
            }
            Reference::PatchOrFile if !is_inline(value) => {
                self.resolve(origin, field, value, value)?;
            }
            Reference::PatchOrFile => {}
            Reference::Kustomization => {
                if let Some(path) = self.resolve(origin, field, value, value)?
                    && path.is_dir()
                {
                    self.check_dir(&path)?;
                }
            }
            Reference::PluginConfig => self.check_plugin_entry(origin, field, value)?,
        }
        Ok(())
    }

    /// Refuses `path` (written as `value` in `field`) when it is remote or leaves the artifact,
    /// as written or on disk; returns its real path when it exists.
    fn resolve(
        &mut self,
        origin: &Origin<'_>,
        field: &str,
        value: &str,
        path: &str,
    ) -> Result<Option<PathBuf>, ReferenceError> {
        let (file, field, value) = (origin.file.to_owned(), field.to_owned(), value.to_owned());
        if is_remote(path) {
            return Err(ReferenceError::Remote { file, field, value });
        }
        let outside = || ReferenceError::Outside { file, field, value };
        let Ok(base) = origin.base.strip_prefix(&self.root) else {
            return Err(outside());
        };
        let Ok(lexical) = contained_path(&self.root, &base.join(path)) else {
            return Err(outside());
        };
        // The system resolves a `..` after a symlink from the symlink's target, so `link/../x`
        // is not `x` when `link` leads elsewhere: both readings must stay inside.
        let as_written = origin.base.join(path);
        for candidate in [&as_written, &lexical] {
            if let Ok(real) = fs::canonicalize(candidate)
                && !real.starts_with(&self.root)
            {
                return Err(outside());
            }
        }
        if origin.base == self.top
            && let Ok(relative) = lexical.strip_prefix(&self.root)
        {
            self.loads.push(relative.to_path_buf());
        }
        Ok(fs::canonicalize(&lexical).ok())
    }

    /// Checks one entry of `generators`, `transformers` or `validators`: inline configs, a
    /// config file, or a directory whose kustomization builds the configs.
    fn check_plugin_entry(
        &mut self,
        origin: &Origin<'_>,
        field: &str,
        value: &str,
    ) -> Result<(), ReferenceError> {
        if is_inline(value) {
            let documents = parse_documents(value, origin.file)?;
            return self.check_plugin_configs(origin, field, &documents);
        }
        let Some(path) = self.resolve(origin, field, value, value)? else {
            return Ok(());
        };
        let files = if path.is_dir() {
            self.check_dir(&path)?;
            let mut files = vec![];
            self.config_files(&path, &mut HashSet::new(), &mut files)?;
            files
        } else {
            vec![path]
        };
        for path in files {
            let file = self.relative(&path);
            let text = fs::read_to_string(&path).map_err(|source| ReferenceError::Read {
                file: file.clone(),
                source,
            })?;
            let documents = parse_documents(&text, &file)?;
            let config_origin = Origin {
                file: &file,
                base: origin.base,
            };
            self.check_plugin_configs(&config_origin, "", &documents)?;
        }
        Ok(())
    }

    /// Checks the paths of plugin configs, named under `prefix` (and their document's index
    /// when there are several).
    fn check_plugin_configs(
        &mut self,
        origin: &Origin<'_>,
        prefix: &str,
        documents: &[Value],
    ) -> Result<(), ReferenceError> {
        for (index, document) in documents.iter().enumerate() {
            let prefix = match (documents.len(), prefix) {
                (1, prefix) => prefix.to_owned(),
                (_, "") => format!("documents[{index}]"),
                (_, prefix) => format!("{prefix}.documents[{index}]"),
            };
            for &(pattern, reference) in PLUGIN_CONFIG_FIELDS {
                for (field, value) in values(document, pattern, &prefix) {
                    self.check_reference(origin, &field, value, reference)?;
                }
            }
        }
        Ok(())
    }

    /// Collects into `out` the files a directory's kustomization takes its resources from,
    /// through nested kustomizations: what kustomize builds a plugin directory's configs from.
    /// Their containment was checked when the directory itself was.
    fn config_files(
        &mut self,
        dir: &Path,
        seen: &mut HashSet<PathBuf>,
        out: &mut Vec<PathBuf>,
    ) -> Result<(), ReferenceError> {
        if !seen.insert(dir.to_path_buf()) {
            return Ok(());
        }
        let Some(kustomization) = self.read_kustomization(dir)? else {
            return Ok(());
        };
        let origin = Origin {
            file: &kustomization.file,
            base: dir,
        };
        for pattern in ["resources[]", "components[]", "bases[]"] {
            for (field, value) in values(&kustomization.value, pattern, "") {
                match self.resolve(&origin, &field, value, value)? {
                    Some(path) if path.is_dir() => self.config_files(&path, seen, out)?,
                    Some(path) => out.push(path),
                    None => {}
                }
            }
        }
        Ok(())
    }

    /// Reads and parses `dir`'s kustomization file, if it has one; the file itself must not be a
    /// symlink out of the artifact.
    fn read_kustomization(&self, dir: &Path) -> Result<Option<Loaded>, ReferenceError> {
        let Some(name) = kustomization_file(dir) else {
            return Ok(None);
        };
        let path = dir.join(name);
        let file = self.relative(&path);
        let read_error = |source| ReferenceError::Read {
            file: file.clone(),
            source,
        };
        let real = fs::canonicalize(&path).map_err(read_error)?;
        if !real.starts_with(&self.root) {
            return Err(ReferenceError::LinksOutside { file });
        }
        let text = fs::read_to_string(&real).map_err(read_error)?;
        let value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_yaml_ng::from_str(&text).map_err(|source| ReferenceError::InvalidYaml {
                file: file.clone(),
                source,
            })?
        };
        Ok(Some(Loaded { file, value }))
    }

    /// `path` relative to the root, for messages.
    fn relative(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .display()
            .to_string()
    }
}

/// The string values at `pattern` (fields separated by `.`, `[]` for every item of a list) in
/// `value`, each with its field's name under `prefix`, such as `helmCharts[0].valuesFile`.
/// Values of other shapes are skipped: kustomize reports them.
fn values<'v>(value: &'v Value, pattern: &str, prefix: &str) -> Vec<(String, &'v str)> {
    let segments: Vec<&str> = pattern.split('.').collect();
    let mut out = vec![];
    collect(value, &segments, prefix.to_owned(), &mut out);
    out
}

fn collect<'v>(
    value: &'v Value,
    segments: &[&str],
    name: String,
    out: &mut Vec<(String, &'v str)>,
) {
    let Some((segment, rest)) = segments.split_first() else {
        if let Some(text) = value.as_str() {
            out.push((name, text));
        }
        return;
    };
    let (key, each) = match segment.strip_suffix("[]") {
        Some(key) => (key, true),
        None => (*segment, false),
    };
    let Some(child) = value.get(key) else {
        return;
    };
    let name = if name.is_empty() {
        key.to_owned()
    } else {
        format!("{name}.{key}")
    };
    if !each {
        return collect(child, rest, name, out);
    }
    for (index, item) in child.as_array().into_iter().flatten().enumerate() {
        collect(item, rest, format!("{name}[{index}]"), out);
    }
}

/// Whether a value is YAML written in place of a path, as kustomize tells them apart: a
/// newline, or a mapping.
fn is_inline(entry: &str) -> bool {
    entry.contains('\n') || serde_yaml_ng::from_str::<Value>(entry).is_ok_and(|v| v.is_object())
}

/// Whether kustomize would fetch `path` from the network: a URL, a git remote, or a ref.
fn is_remote(path: &str) -> bool {
    path.contains("://")
        || path.contains("?ref=")
        || ["git@", "git::", "gh:", "github.com/"]
            .iter()
            .any(|prefix| path.starts_with(prefix))
}

/// The non-empty YAML documents of `text`, which comes from `file`.
fn parse_documents(text: &str, file: &str) -> Result<Vec<Value>, ReferenceError> {
    let mut documents = vec![];
    for document in serde_yaml_ng::Deserializer::from_str(text) {
        let value = Value::deserialize(document).map_err(|source| ReferenceError::InvalidYaml {
            file: file.to_owned(),
            source,
        })?;
        if !value.is_null() {
            documents.push(value);
        }
    }
    Ok(documents)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use std::os::unix::fs::symlink;

    use pretty_assertions::assert_eq;

    use super::*;

    /// A temporary directory holding the artifact root at `<tmp>/artifact`, so that files can be
    /// placed just outside it.
    struct Tree {
        tmp: tempfile::TempDir,
    }

    impl Tree {
        fn new(files: &[(&str, &str)]) -> Self {
            let tree = Self {
                tmp: tempfile::tempdir().unwrap(),
            };
            fs::create_dir_all(tree.root()).unwrap();
            tree.write(files);
            tree
        }

        /// Writes files at paths relative to the temporary directory.
        fn write(&self, files: &[(&str, &str)]) {
            for (path, content) in files {
                let path = self.tmp.path().join(path);
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                fs::write(path, content).unwrap();
            }
        }

        fn root(&self) -> PathBuf {
            self.tmp.path().join("artifact")
        }

        fn check(&self, dir: &str) -> Result<Vec<PathBuf>, ReferenceError> {
            check(&self.root(), &self.root().join(dir))
        }
    }

    /// The file, field and value of an `Outside` error; panics on any other result.
    fn outside(result: Result<Vec<PathBuf>, ReferenceError>) -> (String, String, String) {
        match result {
            Err(ReferenceError::Outside { file, field, value }) => (file, field, value),
            other => panic!("expected a path outside the artifact, got {other:?}"),
        }
    }

    fn owned(file: &str, field: &str, value: &str) -> (String, String, String) {
        (file.to_owned(), field.to_owned(), value.to_owned())
    }

    #[test]
    fn overlays_may_load_bases_and_files_anywhere_inside_the_artifact() {
        let tree = Tree::new(&[
            (
                "artifact/apps/overlay/kustomization.yaml",
                "resources:\n- ../base\n- ../../common/x.yaml\n- ./local.yaml\n",
            ),
            (
                "artifact/apps/base/kustomization.yaml",
                "resources: [app.yaml]\n",
            ),
            ("artifact/apps/base/app.yaml", ""),
            ("artifact/common/x.yaml", ""),
        ]);
        // What the overlay itself names, for its build's view; not what its base names.
        let loads = tree.check("apps/overlay").unwrap();
        assert_eq!(
            loads,
            [
                PathBuf::from("apps/base"),
                PathBuf::from("common/x.yaml"),
                PathBuf::from("apps/overlay/local.yaml"),
            ]
        );
    }

    #[test]
    fn climbing_above_the_artifact_names_file_field_and_value() {
        let tree = Tree::new(&[
            (
                "artifact/apps/overlay/kustomization.yaml",
                "resources:\n- app.yaml\n- ../base\n- ../../../outside\n",
            ),
            ("outside/kustomization.yaml", "resources: []\n"),
        ]);
        let error = tree.check("apps/overlay").unwrap_err();
        assert_eq!(
            error.to_string(),
            "apps/overlay/kustomization.yaml: resources[2]: ../../../outside is outside the artifact"
        );
    }

    #[test]
    fn absolute_paths_are_refused() {
        let tree = Tree::new(&[("artifact/app/kustomization.yaml", "crds:\n- /etc/passwd\n")]);
        assert_eq!(
            outside(tree.check("app")),
            owned("app/kustomization.yaml", "crds[0]", "/etc/passwd")
        );
    }

    #[test]
    fn an_escape_in_a_base_names_the_base_file() {
        let tree = Tree::new(&[
            (
                "artifact/apps/overlay/kustomization.yaml",
                "resources: [../base]\n",
            ),
            (
                "artifact/apps/base/kustomization.yml",
                "resources: [app.yaml, ../../../outside]\n",
            ),
        ]);
        assert_eq!(
            outside(tree.check("apps/overlay")),
            owned(
                "apps/base/kustomization.yml",
                "resources[1]",
                "../../../outside"
            )
        );
    }

    #[test]
    fn generator_files_with_a_key_must_stay_inside() {
        let tree = Tree::new(&[
            (
                "artifact/app/kustomization.yaml",
                "configMapGenerator:\n- name: a\n  files: [ok.txt]\n  envs: [../ok.env]\n\
                 - name: b\n  files: [key=../../secret.txt]\n",
            ),
            ("secret.txt", "secret"),
        ]);
        assert_eq!(
            outside(tree.check("app")),
            owned(
                "app/kustomization.yaml",
                "configMapGenerator[1].files[0]",
                "key=../../secret.txt"
            )
        );
    }

    #[test]
    fn secret_generator_env_files_must_stay_inside() {
        let tree = Tree::new(&[(
            "artifact/app/kustomization.yaml",
            "secretGenerator:\n- name: a\n  env: ../../x.env\n",
        )]);
        assert_eq!(
            outside(tree.check("app")),
            owned(
                "app/kustomization.yaml",
                "secretGenerator[0].env",
                "../../x.env"
            )
        );
    }

    #[test]
    fn patch_paths_must_stay_inside() {
        let tree = Tree::new(&[(
            "artifact/app/kustomization.yaml",
            "patches:\n- path: patch.yaml\n- path: ../../patch.yaml\n  target: {kind: Deployment}\n",
        )]);
        assert_eq!(
            outside(tree.check("app")),
            owned(
                "app/kustomization.yaml",
                "patches[1].path",
                "../../patch.yaml"
            )
        );
    }

    #[test]
    fn helm_values_files_must_stay_inside() {
        let tree = Tree::new(&[(
            "artifact/app/kustomization.yaml",
            "helmCharts:\n- name: c\n  valuesFile: values.yaml\n  additionalValuesFiles: [a.yaml, /tmp/b.yaml]\n",
        )]);
        assert_eq!(
            outside(tree.check("app")),
            owned(
                "app/kustomization.yaml",
                "helmCharts[0].additionalValuesFiles[1]",
                "/tmp/b.yaml"
            )
        );
    }

    /// Relative to the config file's own directory `../../x.yaml` would stay inside; kustomize
    /// resolves it against the kustomization's, where it leaves.
    #[test]
    fn transformer_config_paths_resolve_against_the_kustomization() {
        let tree = Tree::new(&[
            (
                "artifact/app/kustomization.yaml",
                "transformers: [configs/patch.yaml]\n",
            ),
            (
                "artifact/app/configs/patch.yaml",
                "apiVersion: builtin\nkind: PatchTransformer\nmetadata: {name: p}\n\
                 path: ../../x.yaml\ntarget: {kind: Deployment}\n",
            ),
        ]);
        assert_eq!(
            outside(tree.check("app")),
            owned("app/configs/patch.yaml", "path", "../../x.yaml")
        );
    }

    #[test]
    fn inline_generator_configs_are_checked_too() {
        let tree = Tree::new(&[(
            "artifact/app/kustomization.yaml",
            "generators:\n- |\n  apiVersion: builtin\n  kind: ConfigMapGenerator\n  \
             metadata: {name: c}\n  files: [a=../../x]\n",
        )]);
        assert_eq!(
            outside(tree.check("app")),
            owned(
                "app/kustomization.yaml",
                "generators[0].files[0]",
                "a=../../x"
            )
        );
    }

    #[test]
    fn configs_built_by_a_transformer_directory_resolve_against_the_kustomization() {
        let tree = Tree::new(&[
            (
                "artifact/app/kustomization.yaml",
                "transformers: [configs]\n",
            ),
            (
                "artifact/app/configs/kustomization.yaml",
                "resources: [patch.yaml]\n",
            ),
            (
                "artifact/app/configs/patch.yaml",
                "---\napiVersion: builtin\nkind: PatchTransformer\nmetadata: {name: p}\n\
                 path: p.yaml\n---\napiVersion: builtin\nkind: PatchTransformer\n\
                 metadata: {name: q}\npath: ../../q.yaml\n",
            ),
        ]);
        assert_eq!(
            outside(tree.check("app")),
            owned(
                "app/configs/patch.yaml",
                "documents[1].path",
                "../../q.yaml"
            )
        );
    }

    #[test]
    fn remote_bases_are_refused_naming_the_url() {
        let tree = Tree::new(&[(
            "artifact/app/kustomization.yaml",
            "resources:\n- https://github.com/x/y//base?ref=v1\n",
        )]);
        assert_eq!(
            tree.check("app").unwrap_err().to_string(),
            "app/kustomization.yaml: resources[0]: remote bases are not supported: \
             https://github.com/x/y//base?ref=v1"
        );
    }

    #[test]
    fn every_form_of_remote_reference_is_refused() {
        for remote in [
            "git@github.com:x/y.git",
            "github.com/x/y//base",
            "ssh://git@example.com/x/y",
            "base?ref=main",
        ] {
            let tree = Tree::new(&[(
                "artifact/app/kustomization.yaml",
                format!("components: [\"{remote}\"]\n").as_str(),
            )]);
            let result = tree.check("app");
            assert!(
                matches!(&result, Err(ReferenceError::Remote { value, .. }) if value == remote),
                "{remote}: {result:?}"
            );
        }
    }

    /// `link/x.yaml` is inside as written but its target is not; `link/../x` is `x` as written
    /// but the system climbs from the link's target.
    #[test]
    fn a_symlink_inside_the_artifact_cannot_lead_out_of_it() {
        let tree = Tree::new(&[("artifact/x.yaml", ""), ("x", "")]);
        let root = tree.tmp.path().join("artifact/root");
        fs::create_dir_all(&root).unwrap();
        symlink("..", root.join("link")).unwrap();
        for reference in ["link/x.yaml", "link/../x"] {
            fs::write(
                root.join("kustomization.yaml"),
                format!("resources: [\"{reference}\"]\n"),
            )
            .unwrap();
            assert_eq!(
                outside(check(&root, &root)),
                owned("kustomization.yaml", "resources[0]", reference)
            );
        }
    }

    #[test]
    fn a_kustomization_file_linking_outside_is_refused() {
        let tree = Tree::new(&[
            ("artifact/app/kustomization.yaml", "resources: [../base]\n"),
            ("outside.yaml", "resources: []\n"),
        ]);
        fs::create_dir_all(tree.root().join("base")).unwrap();
        symlink(
            tree.tmp.path().join("outside.yaml"),
            tree.root().join("base/kustomization.yaml"),
        )
        .unwrap();
        let result = tree.check("app");
        assert!(
            matches!(&result, Err(ReferenceError::LinksOutside { file }) if file == "base/kustomization.yaml"),
            "{result:?}"
        );
    }

    #[test]
    fn a_kustomization_cycle_terminates() {
        let tree = Tree::new(&[
            ("artifact/a/kustomization.yaml", "resources: [../b]\n"),
            ("artifact/b/kustomization.yaml", "resources: [../a]\n"),
        ]);
        tree.check("a").unwrap();
    }

    /// Read as paths, both inline patches would climb above the root.
    #[test]
    fn inline_patches_are_not_paths() {
        let tree = Tree::new(&[(
            "artifact/app/kustomization.yaml",
            "patches:\n- patch: |\n    - op: add\n      path: /../../../x\n      value: 1\n  \
             target: {kind: Deployment}\n\
             patchesStrategicMerge:\n- |\n  metadata:\n    name: ../../../../x\n\
             - '{\"a\": \"../../../../x\"}'\n",
        )]);
        tree.check("app").unwrap();
    }

    #[test]
    fn missing_files_are_left_to_kustomize() {
        let tree = Tree::new(&[(
            "artifact/app/kustomization.yaml",
            "resources: [missing.yaml, ../missing]\ntransformers: [missing.yaml]\n",
        )]);
        tree.check("app").unwrap();
    }

    #[test]
    fn an_invalid_kustomization_is_named_with_its_cause() {
        let tree = Tree::new(&[("artifact/app/Kustomization", "resources: [\n")]);
        let error = tree.check("app").unwrap_err();
        assert!(
            matches!(&error, ReferenceError::InvalidYaml { file, .. } if file == "app/Kustomization"),
            "{error:?}"
        );
        assert!(std::error::Error::source(&error).is_some());
    }
}
