//! Downloading a source's artifact: fetched by URL, verified against its `sha256:` digest,
//! cached by digest, and extracted with path-traversal and symlink-escape checks.

use std::{
    io::Read,
    path::{Component, Path, PathBuf},
};

use sha2::{Digest, Sha256};
use weir_api::Artifact;

/// How many verified artifacts stay cached on disk.
const CACHE_ENTRIES: usize = 64;

/// Bounds on fetching one artifact (`--artifact-fetch-timeout`, `--artifact-max-size`,
/// `--artifact-max-untar-size`). A download is streamed to disk as it is hashed, never held
/// whole in memory, and stops at the first byte past the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The whole download, from request to last byte.
    pub timeout: std::time::Duration,
    /// The compressed artifact.
    pub max_size: u64,
    /// The files it extracts to, together (a small archive must not fill the disk).
    pub max_untar_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: std::time::Duration::from_secs(5 * 60),
            max_size: 512 << 20,
            max_untar_size: 2 << 30,
        }
    }
}

/// Why an artifact could not be fetched or extracted.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("artifact has no digest")]
    NoDigest,
    #[error("unsupported digest {0:?}: only sha256 is supported")]
    UnsupportedDigest(String),
    #[error("failed to download artifact from {url}")]
    Download {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("failed to download artifact from {url}: HTTP status {status}")]
    DownloadStatus {
        url: String,
        status: reqwest::StatusCode,
    },
    #[error("artifact from {url} is larger than the limit of {limit} bytes (--artifact-max-size)")]
    TooLarge { url: String, limit: u64 },
    #[error(
        "downloading the artifact from {url} took longer than {after:?} (--artifact-fetch-timeout)"
    )]
    Timeout {
        url: String,
        after: std::time::Duration,
    },
    #[error("artifact digest mismatch: expected {expected}, got sha256:{actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("unsafe path in artifact: {0}")]
    UnsafePath(String),
    #[error("cannot extract artifact")]
    Extract(#[source] std::io::Error),
    #[error("cannot extract artifact")]
    ExtractTask(#[source] tokio::task::JoinError),
    /// What is wrong with the archive, in Weir's words.
    #[error("cannot extract artifact: {0}")]
    Unextractable(String),
    #[error("artifact cache")]
    Cache(#[source] std::io::Error),
}

/// Downloads and caches artifacts. One per controller.
#[derive(Debug, Clone)]
pub struct ArtifactFetcher {
    http: reqwest::Client,
    cache_dir: PathBuf,
    limits: Limits,
}

impl ArtifactFetcher {
    /// Caches artifacts under `cache_dir` (created when missing).
    pub fn new(cache_dir: PathBuf, limits: Limits) -> Result<Self, FetchError> {
        std::fs::create_dir_all(&cache_dir).map_err(FetchError::Cache)?;
        Ok(Self {
            http: reqwest::Client::new(),
            cache_dir,
            limits,
        })
    }

    /// The path of the verified tarball of `artifact`, downloading it unless already cached.
    pub async fn fetch(&self, artifact: &Artifact) -> Result<PathBuf, FetchError> {
        let digest = artifact.digest.as_deref().ok_or(FetchError::NoDigest)?;
        let expected = digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| FetchError::UnsupportedDigest(digest.to_owned()))?;
        let cached = self.cache_dir.join(format!("{expected}.tar.gz"));
        if cached.is_file() {
            return Ok(cached);
        }
        // Written then renamed, so a cached file is always complete and verified.
        let temp = tokio::time::timeout(self.limits.timeout, self.download(&artifact.url))
            .await
            .map_err(|_| FetchError::Timeout {
                url: artifact.url.clone(),
                after: self.limits.timeout,
            })??;
        let (temp, actual) = temp;
        if actual != expected {
            return Err(FetchError::DigestMismatch {
                expected: digest.to_owned(),
                actual,
            });
        }
        temp.persist(&cached)
            .map_err(|e| FetchError::Cache(e.error))?;
        self.trim_cache();
        Ok(cached)
    }

    /// Streams `url` into a temporary file of the cache, hashing as it goes; stops past
    /// `max_size`. Returns the file and its hex sha256.
    async fn download(&self, url: &str) -> Result<(tempfile::NamedTempFile, String), FetchError> {
        let download = |source| FetchError::Download {
            url: url.to_owned(),
            source,
        };
        let too_large = || FetchError::TooLarge {
            url: url.to_owned(),
            limit: self.limits.max_size,
        };
        let mut response = self.http.get(url).send().await.map_err(download)?;
        if !response.status().is_success() {
            return Err(FetchError::DownloadStatus {
                url: url.to_owned(),
                status: response.status(),
            });
        }
        if response
            .content_length()
            .is_some_and(|n| n > self.limits.max_size)
        {
            return Err(too_large());
        }
        let mut temp =
            tempfile::NamedTempFile::new_in(&self.cache_dir).map_err(FetchError::Cache)?;
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        while let Some(chunk) = response.chunk().await.map_err(download)? {
            size += chunk.len() as u64;
            if size > self.limits.max_size {
                return Err(too_large());
            }
            hasher.update(&chunk);
            std::io::Write::write_all(&mut temp, &chunk).map_err(FetchError::Cache)?;
        }
        Ok((temp, hex::encode(hasher.finalize())))
    }

    /// The verified tarball of `artifact` and its tree, extracted once per digest and shared by
    /// every build of that artifact: the tree must never be written to.
    pub async fn extracted(&self, artifact: &Artifact) -> Result<Artifacts, FetchError> {
        let tarball = self.fetch(artifact).await?;
        let tree = tarball.with_extension("").with_extension("");
        if !tree.is_dir() {
            let (from, to, cache) = (tarball.clone(), tree.clone(), self.cache_dir.clone());
            let max_untar = self.limits.max_untar_size;
            tokio::task::spawn_blocking(move || {
                let temp = tempfile::Builder::new()
                    .prefix(".extract-")
                    .tempdir_in(&cache)
                    .map_err(FetchError::Cache)?;
                extract(&from, temp.path(), max_untar)?;
                // Another reconcile may have won the race: its tree is the same.
                if std::fs::rename(temp.path(), &to).is_ok() {
                    std::mem::forget(temp);
                }
                Ok::<(), FetchError>(())
            })
            .await
            .map_err(FetchError::ExtractTask)??;
        }
        Ok(Artifacts { tree })
    }

    /// Keeps the newest [`CACHE_ENTRIES`] artifacts (tarballs and trees); extractions in
    /// progress are left alone.
    fn trim_cache(&self) {
        let Ok(dir) = std::fs::read_dir(&self.cache_dir) else {
            return;
        };
        let mut entries: Vec<(std::time::SystemTime, PathBuf)> = dir
            .filter_map(Result::ok)
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        let keep = 2 * CACHE_ENTRIES;
        if entries.len() <= keep {
            return;
        }
        entries.sort();
        for (_, path) in &entries[..entries.len() - keep] {
            let _ = if path.is_dir() {
                std::fs::remove_dir_all(path)
            } else {
                std::fs::remove_file(path)
            };
        }
    }
}

/// A cached artifact: the tree extracted from its verified tarball.
#[derive(Debug, Clone)]
pub struct Artifacts {
    pub tree: PathBuf,
}

/// Joins a relative archive path onto `root`, refusing absolute paths and `..` that climbs out.
pub fn contained_path(root: &Path, relative: &Path) -> Result<PathBuf, FetchError> {
    let mut out = root.to_path_buf();
    let mut depth = 0usize;
    for component in relative.components() {
        match component {
            Component::Normal(part) => {
                out.push(part);
                depth += 1;
            }
            Component::CurDir => {}
            Component::ParentDir if depth > 0 => {
                out.pop();
                depth -= 1;
            }
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(FetchError::UnsafePath(relative.display().to_string()));
            }
        }
    }
    Ok(out)
}

/// Extracts the tar.gz at `archive` into `dest`. Entries must stay inside `dest`; symlinks and
/// hard links must point inside it too; device files and the like are skipped.
pub fn extract(archive: &Path, dest: &Path, max_size: u64) -> Result<(), FetchError> {
    let file = std::fs::File::open(archive).map_err(FetchError::Cache)?;
    extract_from(file, dest, max_size)
}

fn extract_from(reader: impl Read, dest: &Path, max_size: u64) -> Result<(), FetchError> {
    let extract_err = FetchError::Extract;
    let mut written: u64 = 0;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(reader));
    for entry in tar.entries().map_err(extract_err)? {
        let mut entry = entry.map_err(extract_err)?;
        let relative = entry.path().map_err(extract_err)?.into_owned();
        let target = contained_path(dest, &relative)?;
        refuse_symlinked_parents(dest, &target, &relative)?;
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            std::fs::create_dir_all(&target).map_err(extract_err)?;
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(extract_err)?;
        }
        if kind.is_symlink() || kind.is_hard_link() {
            let link = entry
                .link_name()
                .map_err(extract_err)?
                .ok_or_else(|| {
                    FetchError::Unextractable(format!("{} has no link target", relative.display()))
                })?
                .into_owned();
            // A symlink resolves against its own directory, a hard link against the root.
            let base = if kind.is_symlink() {
                relative.parent().unwrap_or(Path::new("")).join(&link)
            } else {
                link.clone()
            };
            contained_path(dest, &base).map_err(|_| {
                FetchError::UnsafePath(format!(
                    "{} links outside the artifact ({})",
                    relative.display(),
                    link.display()
                ))
            })?;
            if kind.is_hard_link() {
                written +=
                    std::fs::copy(contained_path(dest, &link)?, &target).map_err(extract_err)?;
                if written > max_size {
                    return Err(FetchError::Unextractable(format!(
                        "{} takes the extracted artifact past {max_size} bytes \
                         (--artifact-max-untar-size)",
                        relative.display()
                    )));
                }
            } else {
                #[cfg(unix)]
                std::os::unix::fs::symlink(&link, &target).map_err(extract_err)?;
            }
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        // The header's size is the archive's word; the bytes copied are counted too.
        let room = max_size.saturating_sub(written);
        if entry.header().size().map_err(extract_err)? > room {
            return Err(FetchError::Unextractable(format!(
                "{} would take the extracted artifact past {max_size} bytes \
                 (--artifact-max-untar-size)",
                relative.display()
            )));
        }
        let mut out = std::fs::File::create(&target).map_err(extract_err)?;
        written += std::io::copy(&mut (&mut entry).take(room), &mut out).map_err(extract_err)?;
    }
    Ok(())
}

/// Refuses writing through a symlink extracted earlier: `dir -> .` followed by `dir/x -> ..`
/// would otherwise place a link one level above the root.
fn refuse_symlinked_parents(root: &Path, target: &Path, relative: &Path) -> Result<(), FetchError> {
    let mut dir = target.parent();
    while let Some(d) = dir {
        if d == root || !d.starts_with(root) {
            break;
        }
        if std::fs::symlink_metadata(d).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(FetchError::UnsafePath(format!(
                "{} is written through a symlink",
                relative.display()
            )));
        }
        dir = d.parent();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        let tar = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        gz.finish().unwrap()
    }

    fn header(kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h
    }

    /// Writes a raw name, bypassing the tar crate's own `..` refusal, as a hostile archive would.
    fn raw_name(h: &mut tar::Header, name: &str) {
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
    }

    #[test]
    fn files_and_inner_symlinks_are_extracted() {
        let data = archive(|b| {
            let mut h = header(tar::EntryType::Regular, 3);
            b.append_data(&mut h, "apps/a.yaml", &b"a: 1"[..3]).unwrap();
            let mut l = header(tar::EntryType::Symlink, 0);
            b.append_link(&mut l, "apps/b.yaml", "a.yaml").unwrap();
        });
        let dir = tempfile::tempdir().unwrap();
        extract_from(&data[..], dir.path(), u64::MAX).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("apps/b.yaml")).unwrap(),
            "a: "
        );
    }

    #[test]
    fn traversal_and_escaping_symlinks_are_refused() {
        let climbing = archive(|b| {
            let mut h = header(tar::EntryType::Regular, 1);
            raw_name(&mut h, "../evil.yaml");
            b.append(&h, &b"x"[..]).unwrap();
        });
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("root");
        assert!(matches!(
            extract_from(&climbing[..], &inner, u64::MAX),
            Err(FetchError::UnsafePath(_))
        ));
        assert!(!dir.path().join("evil.yaml").exists());

        let escaping = archive(|b| {
            let mut l = header(tar::EntryType::Symlink, 0);
            b.append_link(&mut l, "apps/passwd", "../../etc/passwd")
                .unwrap();
        });
        let err = extract_from(&escaping[..], &inner, u64::MAX).unwrap_err();
        assert!(err.to_string().contains("links outside"), "{err}");
    }

    /// Serves `body` to every HTTP request on a local port; returns the artifact URL.
    fn serve(body: Vec<u8>) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                let mut request = [0u8; 4096];
                let _ = std::io::Read::read(&mut stream, &mut request);
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                std::io::Write::write_all(&mut stream, head.as_bytes()).unwrap();
                std::io::Write::write_all(&mut stream, &body).unwrap();
            }
        });
        format!("http://{addr}/artifact.tar.gz")
    }

    fn artifact(url: String, digest: &str) -> Artifact {
        serde_json::from_value(serde_json::json!({
            "path": "a", "url": url, "revision": "main@sha1:0", "digest": digest,
            "lastUpdateTime": "2024-01-01T00:00:00Z"
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn artifacts_are_verified_by_digest_and_cached() {
        let data = archive(|b| {
            let mut h = header(tar::EntryType::Regular, 1);
            b.append_data(&mut h, "a.yaml", &b"x"[..]).unwrap();
        });
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
        let url = serve(data.clone());
        let cache = tempfile::tempdir().unwrap();
        let fetcher = ArtifactFetcher::new(cache.path().to_path_buf(), Limits::default()).unwrap();

        let path = fetcher
            .fetch(&artifact(url.clone(), &digest))
            .await
            .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
        // Cached by digest: a dead URL with the same digest still resolves.
        let again = fetcher
            .fetch(&artifact("http://127.0.0.1:9/gone".into(), &digest))
            .await
            .unwrap();
        assert_eq!(again, path);
        let extracted = fetcher
            .extracted(&artifact("http://127.0.0.1:9/gone".into(), &digest))
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(extracted.tree.join("a.yaml")).unwrap(),
            "x"
        );
        assert_eq!(
            extracted.tree,
            cache.path().join(&digest["sha256:".len()..])
        );

        let wrong = format!("sha256:{}", "0".repeat(64));
        let err = fetcher.fetch(&artifact(url, &wrong)).await.unwrap_err();
        assert!(matches!(err, FetchError::DigestMismatch { .. }), "{err}");
        let err = fetcher
            .fetch(&artifact("http://127.0.0.1:9/x".into(), "md5:abc"))
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::UnsupportedDigest(_)), "{err}");
    }

    /// Sends `head` for every request, then as many bytes of `body` as it has, then holds the
    /// connection open without a byte more.
    fn serve_raw(head: String, body: Vec<u8>) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut open = vec![];
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                let mut request = [0u8; 4096];
                let _ = std::io::Read::read(&mut stream, &mut request);
                let _ = std::io::Write::write_all(&mut stream, head.as_bytes());
                let _ = std::io::Write::write_all(&mut stream, &body);
                open.push(stream);
            }
        });
        format!("http://{addr}/artifact.tar.gz")
    }

    #[tokio::test]
    async fn downloads_are_bounded_in_size_and_time() {
        let digest = format!("sha256:{}", "0".repeat(64));
        let cache = tempfile::tempdir().unwrap();
        let limits = Limits {
            timeout: std::time::Duration::from_millis(300),
            max_size: 1000,
            max_untar_size: 1000,
        };
        let fetcher = ArtifactFetcher::new(cache.path().to_path_buf(), limits).unwrap();
        // Announced too large: refused before the body.
        let url = serve(vec![0; 1001]);
        let err = fetcher.fetch(&artifact(url, &digest)).await.unwrap_err();
        assert!(
            matches!(err, FetchError::TooLarge { limit: 1000, .. }),
            "{err}"
        );
        // Not announced (chunked, no length): stopped at the first byte past the limit.
        let chunked = format!("1f4\r\n{}\r\n", "x".repeat(500)).repeat(3) + "0\r\n\r\n";
        let url = serve_raw(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n".into(),
            chunked.into_bytes(),
        );
        let err = fetcher.fetch(&artifact(url, &digest)).await.unwrap_err();
        assert!(matches!(err, FetchError::TooLarge { .. }), "{err}");
        // A server that stops sending: the timeout ends it.
        let url = serve_raw(
            "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n".into(),
            vec![0; 10],
        );
        let err = fetcher.fetch(&artifact(url, &digest)).await.unwrap_err();
        assert!(matches!(err, FetchError::Timeout { .. }), "{err}");
        assert!(
            err.to_string().contains("--artifact-fetch-timeout"),
            "{err}"
        );
        // Nothing half-written is left in the cache.
        let left: Vec<_> = std::fs::read_dir(cache.path()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn extraction_stops_past_the_untar_limit() {
        let data = archive(|b| {
            for name in ["a.yaml", "b.yaml"] {
                let mut h = header(tar::EntryType::Regular, 600);
                b.append_data(&mut h, name, &[b'x'; 600][..]).unwrap();
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let err = extract_from(&data[..], dir.path(), 1000).unwrap_err();
        assert!(
            err.to_string().contains("b.yaml") && err.to_string().contains("1000 bytes"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        extract_from(&data[..], dir.path(), 1200).unwrap();
    }

    #[test]
    fn contained_paths_allow_inner_dot_dot_only() {
        let root = Path::new("/r");
        assert_eq!(
            contained_path(root, Path::new("a/../b")).unwrap(),
            Path::new("/r/b")
        );
        assert!(contained_path(root, Path::new("a/../../b")).is_err());
        assert!(contained_path(root, Path::new("/etc")).is_err());
    }
}
