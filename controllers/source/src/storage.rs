//! Artifact storage: files under `--storage-path`, written atomically, garbage-collected per
//! object, served read-only over HTTP.

use std::{
    fs,
    io::{self, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
};

use tokio::net::TcpListener;

/// Where artifacts live and the address they are advertised at.
#[derive(Debug, Clone)]
pub struct Storage {
    root: PathBuf,
    base_url: String,
    retention: usize,
}

impl Storage {
    /// `base_url` is `http://<storage-adv-addr>`; `retention` is how many artifacts of an object
    /// to keep, the current one included (at least 1).
    pub fn new(root: PathBuf, base_url: &str, retention: usize) -> io::Result<Self> {
        fs::create_dir_all(&root)?;
        Ok(Self {
            root,
            base_url: base_url.trim_end_matches('/').to_owned(),
            retention: retention.max(1),
        })
    }

    /// The directory of one object's artifacts, relative to the root: `<kind>/<namespace>/<name>`.
    pub fn object_dir(kind: &str, namespace: &str, name: &str) -> io::Result<String> {
        for part in [kind, namespace, name] {
            if part.is_empty() || part == "." || part == ".." || part.contains(['/', '\\']) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("unusable path segment {part:?}"),
                ));
            }
        }
        Ok(format!("{}/{namespace}/{name}", kind.to_lowercase()))
    }

    /// The absolute path of a stored artifact.
    #[must_use]
    pub fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    /// The URL an artifact is served at.
    #[must_use]
    pub fn url(&self, relative: &str) -> String {
        format!("{}/{relative}", self.base_url)
    }

    /// Whether the artifact's file is present.
    #[must_use]
    pub fn exists(&self, relative: &str) -> bool {
        self.path(relative).is_file()
    }

    /// Writes an artifact with `write`, into a temporary file renamed into place when complete,
    /// so the HTTP server never serves a half-written file.
    pub fn write_atomic<T, E: From<io::Error>>(
        &self,
        relative: &str,
        write: impl FnOnce(&mut fs::File) -> Result<T, E>,
    ) -> Result<T, E> {
        let target = self.path(relative);
        let dir = target
            .parent()
            .ok_or_else(|| io::Error::other("artifact path has no directory"))?;
        fs::create_dir_all(dir)?;
        let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
        let out = write(tmp.as_file_mut())?;
        tmp.as_file_mut().flush()?;
        tmp.as_file().sync_all()?;
        tmp.persist(&target).map_err(|e| e.error)?;
        Ok(out)
    }

    /// Points `<object_dir>/<link>` at the artifact `current` (in the same directory), replacing
    /// what it pointed at in one rename, so the link always serves a whole artifact. Garbage
    /// collection leaves links alone.
    pub fn link_latest(&self, object_dir: &str, current: &str, link: &str) -> io::Result<()> {
        let dir = self.path(object_dir);
        let target = Path::new(current)
            .file_name()
            .ok_or_else(|| io::Error::other("artifact path has no file name"))?;
        let tmp = dir.join(format!(".tmp-link-{link}"));
        match fs::remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::os::unix::fs::symlink(target, &tmp)?;
        fs::rename(&tmp, dir.join(link))
    }

    /// Removes the object's older artifacts, keeping `current` and the newest others up to the
    /// retention count. Returns what was removed.
    pub fn collect_garbage(&self, object_dir: &str, current: &str) -> io::Result<Vec<PathBuf>> {
        let dir = self.path(object_dir);
        let current = self.path(current);
        let mut others = vec![];
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            if path == current || !entry.file_type()?.is_file() {
                continue;
            }
            let modified = entry.metadata()?.modified()?;
            others.push((modified, path));
        }
        others.sort_by_key(|(modified, _)| std::cmp::Reverse(*modified));
        let mut removed = vec![];
        for (_, path) in others.into_iter().skip(self.retention - 1) {
            fs::remove_file(&path)?;
            removed.push(path);
        }
        Ok(removed)
    }

    /// Removes every artifact of an object.
    pub fn remove_object(&self, object_dir: &str) -> io::Result<()> {
        match fs::remove_dir_all(self.path(object_dir)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Removes every artifact of `obj` (deleted), logging the directory it removed.
    pub fn remove_artifacts_of<K: kube::Resource<DynamicType = ()>>(
        &self,
        obj: &K,
    ) -> io::Result<()> {
        use kube::ResourceExt as _;
        let dir = Self::object_dir(
            &K::kind(&()),
            &obj.namespace().unwrap_or_default(),
            &obj.name_any(),
        )?;
        self.remove_object(&dir)?;
        tracing::info!(dir, "removed artifacts");
        Ok(())
    }

    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// Serves the storage root read-only over HTTP until the listener fails.
pub async fn serve(root: PathBuf, listener: TcpListener) -> io::Result<()> {
    let app = axum::Router::new().fallback_service(tower_http::services::ServeDir::new(root));
    axum::serve(listener, app).await
}

/// Binds the storage server's address; port 0 picks a free port.
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_refuse_traversal() {
        assert!(Storage::object_dir("GitRepository", "ns", "..").is_err());
        assert!(Storage::object_dir("GitRepository", "a/b", "x").is_err());
        assert_eq!(
            Storage::object_dir("GitRepository", "ns", "app").unwrap(),
            "gitrepository/ns/app"
        );
    }

    #[test]
    fn garbage_collection_keeps_the_current_and_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::new(dir.path().to_path_buf(), "http://x", 2).unwrap();
        for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
            let rel = format!("gitrepository/ns/app/{name}.tar.gz");
            s.write_atomic(&rel, |f| f.write_all(name.as_bytes()))
                .unwrap();
            let t =
                std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000 + i as u64);
            fs::File::options()
                .write(true)
                .open(s.path(&rel))
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        // The current one is the oldest: it stays, plus the newest other (retention 2).
        let removed = s
            .collect_garbage("gitrepository/ns/app", "gitrepository/ns/app/a.tar.gz")
            .unwrap();
        assert_eq!(removed.len(), 2);
        assert!(s.exists("gitrepository/ns/app/a.tar.gz"));
        assert!(s.exists("gitrepository/ns/app/d.tar.gz"));
        s.remove_object("gitrepository/ns/app").unwrap();
        assert!(!s.path("gitrepository/ns/app").exists());
        s.remove_object("gitrepository/ns/app").unwrap();
    }

    #[test]
    fn the_latest_link_follows_the_current_artifact_and_outlives_garbage_collection() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::new(dir.path().to_path_buf(), "http://x", 1).unwrap();
        let object = "helmrepository/ns/app";
        for name in ["index-a.yaml", "index-b.yaml"] {
            let rel = format!("{object}/{name}");
            s.write_atomic(&rel, |f| f.write_all(name.as_bytes()))
                .unwrap();
            s.link_latest(object, &rel, "index.yaml").unwrap();
            s.collect_garbage(object, &rel).unwrap();
            assert_eq!(
                fs::read_to_string(s.path(&format!("{object}/index.yaml"))).unwrap(),
                name
            );
        }
        assert!(!s.exists(&format!("{object}/index-a.yaml")));
    }
}
