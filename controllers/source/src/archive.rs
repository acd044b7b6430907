//! The artifact: a reproducible tar.gz of a commit's tree, without ignored paths. The same tree
//! and rules always give the same bytes: entries sorted, modes fixed, times and owners zeroed.

use std::{
    collections::BTreeSet,
    io::Write,
    path::{Path, PathBuf},
};

use flate2::{Compression, GzBuilder};
use git2::{ObjectType, Oid, Repository, Tree, TreeWalkMode, TreeWalkResult};
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use sha2::{Digest, Sha256};

/// Flux's default exclusions: VCS metadata, CI configuration and file types Kubernetes never
/// uses. Applied before the repository's `.sourceignore` files and `spec.ignore`.
pub const DEFAULT_IGNORE: &str = "\
.git/
.gitignore
.gitmodules
.gitattributes
*.jpg
*.jpeg
*.gif
*.png
*.wmv
*.flv
*.tar.gz
*.zip
.github/
.circleci/
.travis.yml
.gitlab-ci.yml
appveyor.yml
.drone.yml
cloudbuild.yaml
codeship-services.yml
codeship-steps.yml
**/.goreleaser.yml
**/.sops.yaml
**/.flux.yaml
";

/// The name of ignore files honoured at any depth of the repository.
pub const SOURCEIGNORE: &str = ".sourceignore";

/// A virtual root so ignore rules match on repository-relative paths.
const ROOT: &str = "/repo";

/// Why the archive could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("reading the git tree: {0}")]
    Git(String),
    #[error("invalid ignore rule in {file}: {message}")]
    IgnoreRule { file: String, message: String },
    #[error("writing the archive: {0}")]
    Io(#[from] std::io::Error),
}

/// Ignore rules: layers from the outermost (defaults, root `.sourceignore`, `spec.ignore`) to
/// nested `.sourceignore` files; a nearer layer's verdict wins, as in git.
struct IgnoreRules {
    layers: Vec<(PathBuf, Gitignore)>,
}

impl IgnoreRules {
    fn is_ignored(&self, path: &str, is_dir: bool) -> bool {
        let full = Path::new(ROOT).join(path);
        let mut ignored = false;
        for (dir, rules) in &self.layers {
            if !full.starts_with(dir) {
                continue;
            }
            let m = rules.matched_path_or_any_parents(&full, is_dir);
            if m.is_ignore() {
                ignored = true;
            } else if m.is_whitelist() {
                ignored = false;
            }
        }
        ignored
    }
}

fn layer(dir: &Path, sources: &[(&str, &str)]) -> Result<Gitignore, ArchiveError> {
    let mut builder = GitignoreBuilder::new(dir);
    for (file, text) in sources {
        for line in text.lines() {
            builder
                .add_line(Some(PathBuf::from(file)), line)
                .map_err(|e| ArchiveError::IgnoreRule {
                    file: (*file).to_owned(),
                    message: e.to_string(),
                })?;
        }
    }
    builder.build().map_err(|e| ArchiveError::IgnoreRule {
        file: "ignore rules".to_owned(),
        message: e.to_string(),
    })
}

/// A file of the tree that goes into the archive.
struct FileEntry {
    path: String,
    oid: Oid,
    executable: bool,
}

/// The archive's digest and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveSummary {
    /// `sha256:<hex>` of the tar.gz bytes.
    pub digest: String,
    pub size: u64,
    pub files: usize,
}

/// Writes the tree of `commit` as tar.gz to `out`, honouring the default exclusions, every
/// `.sourceignore` in the tree and `extra_ignore` (spec.ignore). Symlinks and submodules are
/// left out, as Flux does: an artifact never points outside itself.
pub fn write_archive(
    repo: &Repository,
    commit: Oid,
    extra_ignore: Option<&str>,
    out: impl Write,
) -> Result<ArchiveSummary, ArchiveError> {
    let git = |e: git2::Error| ArchiveError::Git(e.message().to_owned());
    let tree = repo
        .find_commit(commit)
        .and_then(|c| c.tree())
        .map_err(git)?;
    let (files, ignore_files) = collect(&tree)?;

    // The root layer: defaults, the root .sourceignore, then spec.ignore (which may re-include).
    let root_ignore = read_blob(
        repo,
        ignore_files
            .iter()
            .find(|(dir, _)| dir.is_empty())
            .map(|(_, oid)| *oid),
    )?;
    let mut root_sources = vec![("default exclusions", DEFAULT_IGNORE)];
    if let Some(text) = root_ignore.as_deref() {
        root_sources.push((SOURCEIGNORE, text));
    }
    if let Some(text) = extra_ignore {
        root_sources.push(("spec.ignore", text));
    }
    let mut layers = vec![(PathBuf::from(ROOT), layer(Path::new(ROOT), &root_sources)?)];
    for (dir, oid) in ignore_files.iter().filter(|(dir, _)| !dir.is_empty()) {
        let text = read_blob(repo, Some(*oid))?.unwrap_or_default();
        let file = format!("{dir}/{SOURCEIGNORE}");
        let abs = Path::new(ROOT).join(dir);
        layers.push((abs.clone(), layer(&abs, &[(&file, &text)])?));
    }
    // Outer layers first, so nearer ones decide last.
    layers.sort_by_key(|(dir, _)| dir.components().count());
    let rules = IgnoreRules { layers };

    let kept: Vec<&FileEntry> = files
        .iter()
        .filter(|f| !rules.is_ignored(&f.path, false))
        .collect();
    let dirs: BTreeSet<&str> = kept
        .iter()
        .flat_map(|f| f.path.match_indices('/').map(|(i, _)| &f.path[..i]))
        .collect();

    let hashing = HashingWriter {
        inner: out,
        hasher: Sha256::new(),
        size: 0,
    };
    let gz = GzBuilder::new()
        .mtime(0)
        .write(hashing, Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);

    // One sorted sequence of directories and files: a directory sorts before what it holds.
    let mut entries: Vec<(String, Option<&FileEntry>)> =
        dirs.iter().map(|d| (format!("{d}/"), None)).collect();
    entries.extend(kept.iter().map(|f| (f.path.clone(), Some(*f))));
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (path, file) in &entries {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        match file {
            None => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                tar.append_data(&mut header, path, std::io::empty())?;
            }
            Some(f) => {
                let blob = repo.find_blob(f.oid).map_err(git)?;
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(if f.executable { 0o755 } else { 0o644 });
                header.set_size(blob.content().len() as u64);
                tar.append_data(&mut header, path, blob.content())?;
            }
        }
    }
    let gz = tar.into_inner()?;
    let hashing = gz.finish()?;
    let HashingWriter {
        mut inner,
        hasher,
        size,
    } = hashing;
    inner.flush()?;
    Ok(ArchiveSummary {
        digest: format!("sha256:{}", hex::encode(hasher.finalize())),
        size,
        files: kept.len(),
    })
}

/// Regular files of the tree, and the `.sourceignore` files with their directories.
/// The `.sourceignore` files of a tree: their directory (empty for the root) and blob.
type IgnoreFiles = Vec<(String, Oid)>;

fn collect(tree: &Tree<'_>) -> Result<(Vec<FileEntry>, IgnoreFiles), ArchiveError> {
    let mut files = vec![];
    let mut ignore_files = vec![];
    let mut bad_name = None;
    tree.walk(TreeWalkMode::PreOrder, |dir, entry| {
        if entry.kind() != Some(ObjectType::Blob) {
            return TreeWalkResult::Ok; // trees are walked into; submodules (commits) skipped
        }
        let Ok(name) = entry.name() else {
            bad_name = Some(format!("{dir}<non-UTF-8 name>"));
            return TreeWalkResult::Abort;
        };
        // Git forbids these names, but a crafted tree could carry them.
        if name == ".." || name == "." || name.contains('/') {
            bad_name = Some(format!("{dir}{name}"));
            return TreeWalkResult::Abort;
        }
        let path = format!("{dir}{name}");
        match entry.filemode() {
            0o100_644 | 0o100_664 => files.push(FileEntry {
                path,
                oid: entry.id(),
                executable: false,
            }),
            0o100_755 => files.push(FileEntry {
                path,
                oid: entry.id(),
                executable: true,
            }),
            _ => return TreeWalkResult::Ok, // symlinks (0o120000) are left out
        }
        if name == SOURCEIGNORE {
            ignore_files.push((dir.trim_end_matches('/').to_owned(), entry.id()));
        }
        TreeWalkResult::Ok
    })
    .map_err(|e| ArchiveError::Git(e.message().to_owned()))?;
    if let Some(name) = bad_name {
        return Err(ArchiveError::Git(format!(
            "the tree holds an unusable path {name:?}"
        )));
    }
    Ok((files, ignore_files))
}

fn read_blob(repo: &Repository, oid: Option<Oid>) -> Result<Option<String>, ArchiveError> {
    let Some(oid) = oid else { return Ok(None) };
    let blob = repo
        .find_blob(oid)
        .map_err(|e| ArchiveError::Git(e.message().to_owned()))?;
    Ok(Some(String::from_utf8_lossy(blob.content()).into_owned()))
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A repository with one commit holding `files` (path, content, executable).
    fn repo_with(files: &[(&str, &str, bool)]) -> (tempfile::TempDir, Repository, Oid) {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let oid = {
            let mut index = git2::Index::new().unwrap();
            for (path, content, exec) in files {
                let blob = repo.blob(content.as_bytes()).unwrap();
                let mut e = git2::IndexEntry {
                    ctime: git2::IndexTime::new(0, 0),
                    mtime: git2::IndexTime::new(0, 0),
                    dev: 0,
                    ino: 0,
                    mode: if *exec { 0o100_755 } else { 0o100_644 },
                    uid: 0,
                    gid: 0,
                    file_size: 0,
                    id: blob,
                    flags: 0,
                    flags_extended: 0,
                    path: path.as_bytes().to_vec(),
                };
                e.flags = u16::try_from(path.len()).unwrap() & 0xfff;
                index.add(&e).unwrap();
            }
            let tree_id = index.write_tree_to(&repo).unwrap();
            let tree = repo.find_tree(tree_id).unwrap();
            let sig = git2::Signature::new("t", "t@example.com", &git2::Time::new(0, 0)).unwrap();
            repo.commit(None, &sig, &sig, "c", &tree, &[]).unwrap()
        };
        (dir, repo, oid)
    }

    fn listing(bytes: &[u8]) -> Vec<(String, u32)> {
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
        ar.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    e.header().mode().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn same_tree_gives_the_same_digest() {
        let files = [
            ("deploy/app.yaml", "kind: ConfigMap\n", false),
            ("run.sh", "#!/bin/sh\n", true),
        ];
        let (_d1, r1, c1) = repo_with(&files);
        let (_d2, r2, c2) = repo_with(&files);
        let (mut a, mut b) = (vec![], vec![]);
        let s1 = write_archive(&r1, c1, None, &mut a).unwrap();
        let s2 = write_archive(&r2, c2, None, &mut b).unwrap();
        assert_eq!(s1, s2);
        assert_eq!(a, b);
        assert_eq!(s1.size, a.len() as u64);
        assert_eq!(
            s1.digest,
            format!("sha256:{}", hex::encode(Sha256::digest(&a)))
        );
        assert_eq!(
            listing(&a),
            [
                ("deploy/".into(), 0o755),
                ("deploy/app.yaml".into(), 0o644),
                ("run.sh".into(), 0o755)
            ]
        );
    }

    #[test]
    fn default_exclusions_sourceignore_and_spec_ignore_apply() {
        let (_d, repo, c) = repo_with(&[
            (".github/workflows/ci.yaml", "x", false),
            (".gitignore", "x", false),
            ("logo.png", "x", false),
            ("apps/app.yaml", "x", false),
            ("apps/secret.yaml", "x", false),
            ("apps/.sourceignore", "secret.yaml\n", false),
            (".sourceignore", "docs/\n", false),
            ("docs/readme.md", "x", false),
            ("tmp/scratch.yaml", "x", false),
            ("tmp/keep.yaml", "x", false),
        ]);
        let mut out = vec![];
        write_archive(&repo, c, Some("/tmp/*\n!/tmp/keep.yaml\n"), &mut out).unwrap();
        let names: Vec<String> = listing(&out).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                ".sourceignore",
                "apps/",
                "apps/.sourceignore",
                "apps/app.yaml",
                "tmp/",
                "tmp/keep.yaml"
            ]
        );
    }

    #[test]
    fn archive_content_matches_the_tree() {
        let (_d, repo, c) = repo_with(&[("a.yaml", "hello: world\n", false)]);
        let mut out = vec![];
        write_archive(&repo, c, None, &mut out).unwrap();
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&out[..]));
        let mut e = ar.entries().unwrap().next().unwrap().unwrap();
        let mut s = String::new();
        e.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello: world\n");
        assert_eq!(e.header().mtime().unwrap(), 0);
        assert_eq!(e.header().uid().unwrap(), 0);
    }
}
