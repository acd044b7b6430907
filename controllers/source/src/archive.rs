//! The artifact: a reproducible tar.gz of a commit's tree, without ignored paths. The same tree
//! and rules always give the same bytes: entries sorted, modes fixed, times and owners zeroed.

use std::{
    collections::{BTreeMap, BTreeSet},
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
    #[error("reading the git tree")]
    LibGit2(#[source] weir_git::LibGit2Error),
    #[error("reading the git tree: submodule {path}")]
    Submodule {
        path: String,
        #[source]
        source: weir_git::LibGit2Error,
    },
    #[error("invalid ignore rule in {file}")]
    IgnoreRule {
        file: String,
        #[source]
        source: ignore::Error,
    },
    #[error("writing the archive")]
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
                .map_err(|source| ArchiveError::IgnoreRule {
                    file: (*file).to_owned(),
                    source,
                })?;
        }
    }
    builder.build().map_err(|source| ArchiveError::IgnoreRule {
        file: "ignore rules".to_owned(),
        source,
    })
}

/// A file that goes into the archive.
struct FileEntry {
    path: String,
    content: Content,
    executable: bool,
}

/// Where a file's bytes are.
enum Content {
    /// A blob of the repository at this index of [`Sources::repos`] (0: the commit's own).
    Blob { repo: usize, oid: Oid },
    /// Bytes copied from an included artifact.
    Bytes(Vec<u8>),
}

/// The archive's digest and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveSummary {
    /// `sha256:<hex>` of the tar.gz bytes.
    pub digest: String,
    pub size: u64,
    pub files: usize,
}

/// A submodule's repository, fetched, and the commit the parent's tree pins it at.
pub struct Submodule {
    pub repo: Repository,
    pub commit: Oid,
}

impl std::fmt::Debug for Submodule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Submodule")
            .field("commit", &self.commit)
            .finish_non_exhaustive()
    }
}

/// A file copied into the artifact by `spec.include`: its path in the artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncludedFile {
    pub path: String,
    pub content: Vec<u8>,
    pub executable: bool,
}

/// What the artifact holds besides the commit's tree, and how the tree is cut.
#[derive(Debug, Default)]
pub struct ArchiveInput<'a> {
    /// `spec.ignore`.
    pub extra_ignore: Option<&'a str>,
    /// `spec.sparseCheckout`, normalized (no `./`, no trailing `/`): only the tree's files under
    /// these directories are kept. Empty keeps the whole tree.
    pub sparse: &'a [String],
    /// With `spec.recurseSubmodules`: each gitlink's path from the root, and its repository.
    /// A gitlink without one is left out, as without recursion.
    pub submodules: BTreeMap<String, Submodule>,
    /// `spec.include`'s files; each replaces a file of the tree at the same path.
    pub included: Vec<IncludedFile>,
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
    let input = ArchiveInput {
        extra_ignore,
        ..ArchiveInput::default()
    };
    write_artifact(repo, commit, &input, out)
}

/// [`write_archive`] with `input`: sparse directories, submodules and included files. The
/// ignore rules apply to all of them; a submodule's or include's own `.sourceignore` files
/// count like the tree's.
pub fn write_artifact(
    repo: &Repository,
    commit: Oid,
    input: &ArchiveInput<'_>,
    out: impl Write,
) -> Result<ArchiveSummary, ArchiveError> {
    let git = |e: git2::Error| ArchiveError::LibGit2(weir_git::LibGit2Error(e));
    let tree = repo
        .find_commit(commit)
        .and_then(|c| c.tree())
        .map_err(git)?;
    let mut repos = vec![repo];
    repos.extend(input.submodules.values().map(|s| &s.repo));
    let sources = Sources {
        repos,
        submodules: &input.submodules,
    };
    let mut files = vec![];
    sources.collect(&tree, "", 0, &mut files)?;
    if !input.sparse.is_empty() {
        files.retain(|f| {
            input.sparse.iter().any(|d| {
                f.path
                    .strip_prefix(d.as_str())
                    .is_some_and(|r| r.starts_with('/'))
            })
        });
    }
    let included: BTreeSet<&str> = input.included.iter().map(|f| f.path.as_str()).collect();
    files.retain(|f| !included.contains(f.path.as_str()));
    files.extend(input.included.iter().map(|f| FileEntry {
        path: f.path.clone(),
        content: Content::Bytes(f.content.clone()),
        executable: f.executable,
    }));
    let rules = sources.ignore_rules(&files, input.extra_ignore)?;
    let kept: Vec<&FileEntry> = files
        .iter()
        .filter(|f| !rules.is_ignored(&f.path, false))
        .collect();
    write_tar(&sources, &kept, out)
}

/// The repositories an artifact's files come from.
struct Sources<'a> {
    repos: Vec<&'a Repository>,
    submodules: &'a BTreeMap<String, Submodule>,
}

impl Sources<'_> {
    fn bytes<'c>(&self, content: &'c Content) -> Result<std::borrow::Cow<'c, [u8]>, ArchiveError> {
        match content {
            Content::Bytes(b) => Ok(std::borrow::Cow::Borrowed(b)),
            Content::Blob { repo, oid } => {
                let blob = self
                    .repos
                    .get(*repo)
                    .ok_or_else(|| ArchiveError::Git(format!("no repository for blob {oid}")))?
                    .find_blob(*oid)
                    .map_err(|e| ArchiveError::LibGit2(weir_git::LibGit2Error(e)))?;
                Ok(std::borrow::Cow::Owned(blob.content().to_vec()))
            }
        }
    }

    /// The layers of ignore rules: defaults, the root `.sourceignore` and `extra`, then each
    /// nested `.sourceignore` among `files`.
    fn ignore_rules(
        &self,
        files: &[FileEntry],
        extra: Option<&str>,
    ) -> Result<IgnoreRules, ArchiveError> {
        let mut root_sources = vec![("default exclusions".to_owned(), DEFAULT_IGNORE.to_owned())];
        let mut nested = vec![];
        for f in files
            .iter()
            .filter(|f| f.path == SOURCEIGNORE || f.path.ends_with(&format!("/{SOURCEIGNORE}")))
        {
            let text = String::from_utf8_lossy(&self.bytes(&f.content)?).into_owned();
            let dir = f.path.strip_suffix(SOURCEIGNORE).unwrap_or_default();
            if dir.is_empty() {
                root_sources.push((SOURCEIGNORE.to_owned(), text));
            } else {
                nested.push((dir.trim_end_matches('/').to_owned(), text));
            }
        }
        // spec.ignore comes after the root .sourceignore, so it may re-include.
        if let Some(text) = extra {
            root_sources.push(("spec.ignore".to_owned(), text.to_owned()));
        }
        let root: Vec<(&str, &str)> = root_sources
            .iter()
            .map(|(f, t)| (f.as_str(), t.as_str()))
            .collect();
        let mut layers = vec![(PathBuf::from(ROOT), layer(Path::new(ROOT), &root)?)];
        for (dir, text) in &nested {
            let file = format!("{dir}/{SOURCEIGNORE}");
            let abs = Path::new(ROOT).join(dir);
            layers.push((abs.clone(), layer(&abs, &[(&file, text)])?));
        }
        // Outer layers first, so nearer ones decide last.
        layers.sort_by_key(|(dir, _)| dir.components().count());
        Ok(IgnoreRules { layers })
    }

    /// Regular files of `tree` (of the repository at index `repo`) under `prefix`, and of the
    /// submodules whose gitlinks it holds.
    fn collect(
        &self,
        tree: &Tree<'_>,
        prefix: &str,
        repo: usize,
        files: &mut Vec<FileEntry>,
    ) -> Result<(), ArchiveError> {
        let mut bad_name = None;
        let mut gitlinks = vec![];
        tree.walk(TreeWalkMode::PreOrder, |dir, entry| {
            let Ok(name) = entry.name() else {
                bad_name = Some(format!("{prefix}{dir}<non-UTF-8 name>"));
                return TreeWalkResult::Abort;
            };
            // Git forbids these names, but a crafted tree could carry them.
            if name == ".." || name == "." || name.contains('/') {
                bad_name = Some(format!("{prefix}{dir}{name}"));
                return TreeWalkResult::Abort;
            }
            let path = format!("{prefix}{dir}{name}");
            if entry.kind() == Some(ObjectType::Commit) {
                gitlinks.push(path);
                return TreeWalkResult::Ok;
            }
            if entry.kind() != Some(ObjectType::Blob) {
                return TreeWalkResult::Ok; // trees are walked into
            }
            let executable = match entry.filemode() {
                0o100_644 | 0o100_664 => false,
                0o100_755 => true,
                _ => return TreeWalkResult::Ok, // symlinks (0o120000) are left out
            };
            files.push(FileEntry {
                path,
                content: Content::Blob {
                    repo,
                    oid: entry.id(),
                },
                executable,
            });
            TreeWalkResult::Ok
        })
        .map_err(|e| ArchiveError::LibGit2(weir_git::LibGit2Error(e)))?;
        if let Some(name) = bad_name {
            return Err(ArchiveError::Git(format!(
                "the tree holds an unusable path {name:?}"
            )));
        }
        for path in gitlinks {
            let Some((index, (_, sub))) = self
                .submodules
                .iter()
                .enumerate()
                .find(|(_, (p, _))| **p == path)
            else {
                continue;
            };
            let sub_tree = sub
                .repo
                .find_commit(sub.commit)
                .and_then(|c| c.tree())
                .map_err(|e| ArchiveError::Submodule {
                    path: path.clone(),
                    source: weir_git::LibGit2Error(e),
                })?;
            self.collect(&sub_tree, &format!("{path}/"), index + 1, files)?;
        }
        Ok(())
    }
}

/// Writes `files` as a reproducible tar.gz: directories and files in one sorted sequence.
fn write_tar(
    sources: &Sources<'_>,
    files: &[&FileEntry],
    out: impl Write,
) -> Result<ArchiveSummary, ArchiveError> {
    let dirs: BTreeSet<&str> = files
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

    // A directory sorts before what it holds.
    let mut entries: Vec<(String, Option<&FileEntry>)> =
        dirs.iter().map(|d| (format!("{d}/"), None)).collect();
    entries.extend(files.iter().map(|f| (f.path.clone(), Some(*f))));
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
                let content = sources.bytes(&f.content)?;
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(if f.executable { 0o755 } else { 0o644 });
                header.set_size(content.len() as u64);
                tar.append_data(&mut header, path, &content[..])?;
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
        files: files.len(),
    })
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
    fn sparse_dirs_includes_and_submodules_shape_the_artifact() {
        let (_sd, sub, sub_commit) = repo_with(&[("lib.yaml", "lib", false)]);
        let (_d, repo, c) = repo_with(&[
            ("apps/a.yaml", "a", false),
            ("apps/shared/old.yaml", "tree", false),
            ("infra/i.yaml", "i", false),
            ("docs/d.md", "d", false),
            ("root.yaml", "r", false),
        ]);
        let names = |input: &ArchiveInput<'_>| {
            let mut out = vec![];
            write_artifact(&repo, c, input, &mut out).unwrap();
            listing(&out)
                .into_iter()
                .map(|(n, _)| n)
                .filter(|n| !n.ends_with('/'))
                .collect::<Vec<_>>()
        };
        let sparse = ["apps".to_owned(), "infra".to_owned()];
        let input = ArchiveInput {
            sparse: &sparse,
            ..ArchiveInput::default()
        };
        assert_eq!(
            names(&input),
            ["apps/a.yaml", "apps/shared/old.yaml", "infra/i.yaml"]
        );

        let input = ArchiveInput {
            extra_ignore: Some("*.png\n"),
            included: vec![
                IncludedFile {
                    path: "apps/shared/old.yaml".into(),
                    content: b"included".to_vec(),
                    executable: false,
                },
                IncludedFile {
                    path: "apps/shared/logo.png".into(),
                    content: b"x".to_vec(),
                    executable: false,
                },
            ],
            ..ArchiveInput::default()
        };
        let mut out = vec![];
        write_artifact(&repo, c, &input, &mut out).unwrap();
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&out[..]));
        let mut seen = BTreeMap::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let mut text = String::new();
            e.read_to_string(&mut text).unwrap();
            seen.insert(e.path().unwrap().to_string_lossy().into_owned(), text);
        }
        assert_eq!(seen["apps/shared/old.yaml"], "included");
        assert!(!seen.contains_key("apps/shared/logo.png"));

        // A gitlink, archived only when its repository is given.
        let (_gd, parent, pc) = repo_with(&[("main.yaml", "m", false)]);
        let tree = parent.find_commit(pc).unwrap().tree().unwrap();
        let mut builder = parent.treebuilder(Some(&tree)).unwrap();
        builder.insert("vendor", sub_commit, 0o160_000).unwrap();
        let tree = parent.find_tree(builder.write().unwrap()).unwrap();
        let sig = git2::Signature::new("t", "t@example.com", &git2::Time::new(0, 0)).unwrap();
        let with_link = parent.commit(None, &sig, &sig, "link", &tree, &[]).unwrap();
        let archived = |input: &ArchiveInput<'_>| {
            let mut out = vec![];
            write_artifact(&parent, with_link, input, &mut out).unwrap();
            listing(&out)
                .into_iter()
                .map(|(n, _)| n)
                .collect::<Vec<_>>()
        };
        assert_eq!(archived(&ArchiveInput::default()), ["main.yaml"]);
        let mut submodules = BTreeMap::new();
        submodules.insert(
            "vendor".to_owned(),
            Submodule {
                repo: sub,
                commit: sub_commit,
            },
        );
        let input = ArchiveInput {
            submodules,
            ..ArchiveInput::default()
        };
        assert_eq!(
            archived(&input),
            ["main.yaml", "vendor/", "vendor/lib.yaml"]
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
