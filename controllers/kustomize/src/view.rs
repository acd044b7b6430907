//! A private view of a shared extracted artifact, for a kustomize build that needs its own
//! kustomization file.
//!
//! Flux writes the merged kustomization into a private extraction of the whole artifact, so a
//! build costs as much as the repository is large, and 1000 Kustomizations of one repository
//! cost 1000 extractions. Weir's view is made of the directories from the artifact root down to
//! the build directory: the build directory holds a symlink per shared entry and its own
//! kustomization file, and each directory above it holds symlinks only to the entries the
//! build directory's kustomization names (`../base`, `../../common`), as
//! [`crate::references::check`] lists them. kustomize resolves `../base` against the view and
//! finds the shared `base`, then enters every directory it follows at its real location, so
//! what the base names is found in the shared tree. A build costs the build directory's entries
//! and what its kustomization names, never the repository's breadth; the shared tree is never
//! written.

use std::{
    collections::BTreeSet,
    ffi::{OsStr, OsString},
    path::{Component, Path, PathBuf},
};

/// Lays out in `view` (an empty or missing directory) the view of `shared` for building the
/// directory `relative` (a path inside `shared` without `..`), leaving out the build
/// directory's entry named `replaced`, which the caller writes. `loads` are the paths (relative
/// to `shared`, without `..`) the build directory's kustomization names. Returns the build
/// directory in the view.
pub fn lay_out(
    shared: &Path,
    relative: &Path,
    view: &Path,
    replaced: &OsStr,
    loads: &[PathBuf],
) -> std::io::Result<PathBuf> {
    let chain: Vec<&OsStr> = normal_components(relative).collect();
    // A kustomization naming a directory on its own path (`..`) loads all of it: from there
    // down, every entry is linked.
    let whole_from = loads
        .iter()
        .filter_map(|load| {
            let load: Vec<&OsStr> = normal_components(load).collect();
            (load.len() < chain.len() && chain.starts_with(&load)).then_some(load.len())
        })
        .min();
    let mut from = shared.to_path_buf();
    let mut to = view.to_path_buf();
    std::fs::create_dir_all(&to)?;
    for (depth, next) in chain.iter().enumerate() {
        if whole_from.is_some_and(|level| depth >= level) {
            link_entries(&from, &to, next)?;
        } else {
            for name in needed_entries(&chain, depth, loads) {
                std::os::unix::fs::symlink(from.join(&name), to.join(&name))?;
            }
        }
        from.push(next);
        to.push(next);
        std::fs::create_dir(&to)?;
    }
    link_entries(&from, &to, replaced)?;
    Ok(to)
}

fn normal_components(path: &Path) -> impl Iterator<Item = &OsStr> {
    path.components().filter_map(|c| match c {
        Component::Normal(name) => Some(name),
        _ => None,
    })
}

/// The entries of the directory at `depth` of `chain` that `loads` go through, the next
/// directory of the chain excepted.
fn needed_entries(chain: &[&OsStr], depth: usize, loads: &[PathBuf]) -> BTreeSet<OsString> {
    let above = &chain[..depth];
    loads
        .iter()
        .filter_map(|load| {
            let load: Vec<&OsStr> = normal_components(load).collect();
            if !load.starts_with(above) {
                return None;
            }
            let entry = *load.get(depth)?;
            (entry != chain[depth]).then(|| entry.to_os_string())
        })
        .collect()
}

/// Symlinks every entry of `from` into `to` but `except`.
fn link_entries(from: &Path, to: &Path, except: &OsStr) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let name = entry?.file_name();
        if name != except {
            std::os::unix::fs::symlink(from.join(&name), to.join(&name))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_view_links_what_the_kustomization_names_and_owns_only_its_file() {
        let shared = tempfile::tempdir().unwrap();
        for (path, content) in [
            ("apps/web/kustomization.yaml", "resources: [../base]\n"),
            ("apps/web/patch.yaml", "p"),
            ("apps/base/deploy.yaml", "d"),
            ("apps/other/x.yaml", "x"),
            ("common/c.yaml", "c"),
        ] {
            let p = shared.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        let view = tempfile::tempdir().unwrap();
        let dir = lay_out(
            shared.path(),
            Path::new("apps/web"),
            &view.path().join("src"),
            OsStr::new("kustomization.yaml"),
            &[
                "apps/base".into(),
                "common/c.yaml".into(),
                "apps/web/patch.yaml".into(),
            ],
        )
        .unwrap();
        assert_eq!(dir, view.path().join("src/apps/web"));
        assert!(
            !dir.join("kustomization.yaml").exists(),
            "left to the caller"
        );
        // Reached through the view, read from the shared tree.
        assert_eq!(
            std::fs::read_to_string(dir.join("patch.yaml")).unwrap(),
            "p"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("../base/deploy.yaml")).unwrap(),
            "d"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("../../common/c.yaml")).unwrap(),
            "c"
        );
        for linked in ["src/common", "src/apps/base", "src/apps/web/patch.yaml"] {
            let meta = std::fs::symlink_metadata(view.path().join(linked)).unwrap();
            assert!(meta.file_type().is_symlink(), "{linked} is a link");
        }
        // What the kustomization does not name is not laid out: the view costs what the build
        // loads, not the repository's breadth.
        assert!(std::fs::symlink_metadata(view.path().join("src/apps/other")).is_err());
        for own in ["src/apps", "src/apps/web"] {
            let meta = std::fs::symlink_metadata(view.path().join(own)).unwrap();
            assert!(meta.is_dir(), "{own} is the view's own directory");
        }
        // Writing the view's kustomization leaves the shared one alone.
        std::fs::write(dir.join("kustomization.yaml"), "merged").unwrap();
        assert_eq!(
            std::fs::read_to_string(shared.path().join("apps/web/kustomization.yaml")).unwrap(),
            "resources: [../base]\n"
        );
    }

    #[test]
    fn the_artifact_root_itself_can_be_the_build_directory() {
        let shared = tempfile::tempdir().unwrap();
        std::fs::write(shared.path().join("a.yaml"), "a").unwrap();
        let view = tempfile::tempdir().unwrap();
        let dir = lay_out(
            shared.path(),
            Path::new(""),
            view.path(),
            OsStr::new("kustomization.yaml"),
            &[],
        )
        .unwrap();
        assert_eq!(dir, view.path());
        assert_eq!(std::fs::read_to_string(dir.join("a.yaml")).unwrap(), "a");
    }

    #[test]
    fn a_kustomization_naming_its_parent_gets_all_of_it() {
        let shared = tempfile::tempdir().unwrap();
        for path in [
            "apps/kustomization.yaml",
            "apps/x.yaml",
            "apps/web/kustomization.yaml",
        ] {
            let p = shared.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "x").unwrap();
        }
        let view = tempfile::tempdir().unwrap();
        let dir = lay_out(
            shared.path(),
            Path::new("apps/web"),
            view.path(),
            OsStr::new("kustomization.yaml"),
            &["apps".into()],
        )
        .unwrap();
        for entry in ["../kustomization.yaml", "../x.yaml"] {
            assert!(dir.join(entry).exists(), "{entry}");
        }
    }
}
