//! A private view of a shared extracted artifact, for a kustomize build that needs its own
//! kustomization file.
//!
//! Flux writes the merged kustomization into a private extraction of the whole artifact, so a
//! build costs as much as the repository is large, and 1000 Kustomizations of one repository
//! cost 1000 extractions. Weir's view is made of the directories from the artifact root down to
//! the build directory, each holding a symlink per entry of its shared original (the next
//! directory on the way excepted), and the build directory's own kustomization file. kustomize
//! resolves `../base` against the view and finds the shared `base`; everything it reads is the
//! shared tree's, and the shared tree is never written. A build costs the entries along one
//! path, not the repository.

use std::{
    ffi::OsStr,
    path::{Component, Path, PathBuf},
};

/// Lays out in `view` (an empty or missing directory) the view of `shared` for building the
/// directory `relative` (a path inside `shared` without `..`), leaving out the build
/// directory's entry named `replaced`, which the caller writes. Returns the build directory in
/// the view.
pub fn lay_out(
    shared: &Path,
    relative: &Path,
    view: &Path,
    replaced: &OsStr,
) -> std::io::Result<PathBuf> {
    let mut from = shared.to_path_buf();
    let mut to = view.to_path_buf();
    std::fs::create_dir_all(&to)?;
    for component in relative.components() {
        let Component::Normal(next) = component else {
            continue;
        };
        link_entries(&from, &to, next)?;
        from.push(next);
        to.push(next);
        std::fs::create_dir(&to)?;
    }
    link_entries(&from, &to, replaced)?;
    Ok(to)
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
    fn the_view_links_every_shared_entry_and_owns_only_the_build_directorys_file() {
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
        for linked in [
            "src/common",
            "src/apps/base",
            "src/apps/other",
            "src/apps/web/patch.yaml",
        ] {
            let meta = std::fs::symlink_metadata(view.path().join(linked)).unwrap();
            assert!(meta.file_type().is_symlink(), "{linked} is a link");
        }
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
        )
        .unwrap();
        assert_eq!(dir, view.path());
        assert_eq!(std::fs::read_to_string(dir.join("a.yaml")).unwrap(), "a");
    }
}
