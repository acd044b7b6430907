//! The pure parts of a HelmChart build: the chart versions an index lists, the highest one in a
//! range, where its archive is, what makes bytes a chart archive, values files merged as Flux
//! merges them, and an archive with its `values.yaml` replaced.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
};

use serde_yaml_ng::{Mapping, Value};
use url::Url;
use weir_runtime::semver_range::{self, Range};

/// The largest chart archive accepted, in bytes: Flux's default (`--helm-chart-max-size`).
pub const MAX_CHART_SIZE: u64 = 10 << 20;
/// The most a chart archive may extract to: a small archive must not fill memory.
const MAX_EXTRACTED_SIZE: u64 = 100 << 20;

/// One version of a chart as an index lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct ChartVersion {
    pub version: String,
    #[serde(default)]
    pub urls: Vec<String>,
}

#[derive(Debug, serde::Deserialize)]
struct Index {
    #[serde(default)]
    entries: BTreeMap<String, Option<Vec<ChartVersion>>>,
}

/// Why a chart reference resolves to no chart version.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("cannot load the repository index")]
    Index(#[source] serde_yaml_ng::Error),
    #[error("invalid version/constraint format '{range}'")]
    Range {
        range: String,
        #[source]
        source: semver_range::RangeError,
    },
    #[error("no '{chart}' chart with version matching '{range}' found")]
    NoMatch { chart: String, range: String },
}

/// The highest version of `chart` in `index` within `range` (Masterminds' syntax: a
/// pre-release only when the range names one), as Helm's repository lookup picks it.
pub fn select_version(
    index: &[u8],
    chart: &str,
    range: &str,
) -> Result<ChartVersion, ReferenceError> {
    let parsed = Range::parse(range).map_err(|source| ReferenceError::Range {
        range: range.to_owned(),
        source,
    })?;
    let index: Index = serde_yaml_ng::from_slice(index).map_err(ReferenceError::Index)?;
    let versions = index
        .entries
        .get(chart)
        .cloned()
        .flatten()
        .unwrap_or_default();
    versions
        .into_iter()
        .filter_map(|v| semver_range::parse_version(&v.version).map(|parsed| (parsed, v)))
        .filter(|(version, _)| parsed.matches(version))
        .max_by(|(a, _), (b, _)| a.cmp_precedence(b))
        .map(|(_, v)| v)
        .ok_or_else(|| ReferenceError::NoMatch {
            chart: chart.to_owned(),
            range: range.to_owned(),
        })
}

/// The URL of a chart archive: the index entry's first URL, resolved against the repository
/// URL (with a trailing slash, its query kept) when relative, as Flux resolves it.
pub fn chart_url(repository: &str, entry: &ChartVersion, chart: &str) -> Result<Url, UrlError> {
    let first = entry.urls.first().ok_or_else(|| UrlError::Missing {
        chart: chart.to_owned(),
        version: entry.version.clone(),
    })?;
    match Url::parse(first) {
        Ok(url) => Ok(url),
        Err(url::ParseError::RelativeUrlWithoutBase) => {
            let mut base = Url::parse(repository).map_err(UrlError::Parse)?;
            let query = base.query().map(str::to_owned);
            let path = format!("{}/", base.path().trim_end_matches('/'));
            base.set_path(&path);
            let mut url = base.join(first).map_err(UrlError::Parse)?;
            url.set_query(query.as_deref());
            Ok(url)
        }
        Err(e) => Err(UrlError::Parse(e)),
    }
}

/// Why an index entry gives no chart URL.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("chart '{chart}' version '{version}' has no downloadable URL")]
    Missing { chart: String, version: String },
    #[error("cannot parse the chart URL")]
    Parse(#[source] url::ParseError),
}

/// What makes bytes a chart archive, and what is wrong with one.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("cannot read the chart archive")]
    Read(#[source] std::io::Error),
    #[error("the chart archive extracts to more than {MAX_EXTRACTED_SIZE} bytes")]
    TooLarge,
    #[error("unsafe path '{0}' in the chart archive")]
    UnsafePath(String),
    #[error("Chart.yaml file is missing")]
    NoChartYaml,
    #[error("cannot load Chart.yaml")]
    ChartYaml(#[source] serde_yaml_ng::Error),
    #[error("chart '{found}' is not the chart '{expected}' asked for")]
    OtherChart { expected: String, found: String },
    #[error("chart version '{found}' is not the version '{expected}' the index lists")]
    OtherVersion { expected: String, found: String },
}

/// `Chart.yaml`'s identity.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct ChartMetadata {
    pub name: String,
    pub version: String,
}

/// A chart archive read into memory: its files under one top directory, in order.
#[derive(Debug)]
pub struct ChartArchive {
    /// The top directory (the chart's name, as `helm package` writes it).
    pub top: String,
    /// Every regular file: its path inside the archive and its content.
    files: Vec<(String, Vec<u8>)>,
    pub metadata: ChartMetadata,
}

impl ChartArchive {
    /// Reads a gzipped chart archive: regular files only, no absolute or `..` paths, one top
    /// directory holding `Chart.yaml`.
    pub fn read(bytes: &[u8]) -> Result<Self, ArchiveError> {
        let files = read_files(bytes)?;
        let (top, chart_yaml) = files
            .iter()
            .find_map(|(name, content)| {
                let (top, rest) = name.split_once('/')?;
                (rest == "Chart.yaml").then(|| (top.to_owned(), content))
            })
            .ok_or(ArchiveError::NoChartYaml)?;
        let metadata: ChartMetadata =
            serde_yaml_ng::from_slice(chart_yaml).map_err(ArchiveError::ChartYaml)?;
        Ok(Self {
            top,
            files,
            metadata,
        })
    }

    /// The chart in directory `dir` of a source's files (`dir` normalized, `""` the root), as
    /// `helm package` takes it: every file under it but those its `.helmignore` leaves out, under
    /// a top directory named by its `Chart.yaml`.
    pub fn from_dir(files: &[(String, Vec<u8>)], dir: &str) -> Result<Self, ArchiveError> {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let inside: Vec<(&str, &Vec<u8>)> = files
            .iter()
            .filter_map(|(name, content)| Some((name.strip_prefix(&prefix)?, content)))
            .collect();
        let chart_yaml = inside
            .iter()
            .find(|(name, _)| *name == "Chart.yaml")
            .map(|(_, content)| *content)
            .ok_or(ArchiveError::NoChartYaml)?;
        let metadata: ChartMetadata =
            serde_yaml_ng::from_slice(chart_yaml).map_err(ArchiveError::ChartYaml)?;
        let ignore = helmignore(
            inside
                .iter()
                .find(|(n, _)| *n == ".helmignore")
                .map(|(_, c)| *c),
        );
        let files = inside
            .into_iter()
            .filter(|(name, _)| !ignore.matched_path_or_any_parents(name, false).is_ignore())
            .map(|(name, content)| (format!("{}/{name}", metadata.name), content.clone()))
            .collect();
        Ok(Self {
            top: metadata.name.clone(),
            files,
            metadata,
        })
    }

    /// The dependencies `Chart.yaml` declares that `charts/` does not hold (by directory or
    /// archive name).
    pub fn missing_dependencies(&self) -> Result<Vec<String>, ArchiveError> {
        #[derive(serde::Deserialize)]
        struct Dependency {
            name: String,
        }
        #[derive(serde::Deserialize)]
        struct Dependencies {
            #[serde(default)]
            dependencies: Vec<Dependency>,
        }
        let chart_yaml = self.file("Chart.yaml").ok_or(ArchiveError::NoChartYaml)?;
        let declared: Dependencies =
            serde_yaml_ng::from_slice(chart_yaml).map_err(ArchiveError::ChartYaml)?;
        let vendored = format!("{}/charts/", self.top);
        Ok(declared
            .dependencies
            .into_iter()
            .map(|d| d.name)
            .filter(|name| {
                !self.files.iter().any(|(path, _)| {
                    path.strip_prefix(&vendored).is_some_and(|rest| {
                        rest.starts_with(&format!("{name}/"))
                            || (rest.starts_with(&format!("{name}-"))
                                && std::path::Path::new(rest)
                                    .extension()
                                    .is_some_and(|e| e.eq_ignore_ascii_case("tgz"))
                                && !rest.contains('/'))
                    })
                })
            })
            .collect())
    }

    /// Sets the version in `Chart.yaml` (the metadata a `Revision` strategy adds), returning the
    /// new `Chart.yaml`.
    pub fn chart_yaml_with_version(&self, version: &str) -> Result<Vec<u8>, ArchiveError> {
        let chart_yaml = self.file("Chart.yaml").ok_or(ArchiveError::NoChartYaml)?;
        let mut value: Value =
            serde_yaml_ng::from_slice(chart_yaml).map_err(ArchiveError::ChartYaml)?;
        if let Value::Mapping(map) = &mut value {
            map.insert(Value::from("version"), Value::from(version));
        }
        serde_yaml_ng::to_string(&value)
            .map(String::into_bytes)
            .map_err(ArchiveError::ChartYaml)
    }

    /// Checks the archive is the chart and version the index entry promised.
    pub fn expect(&self, chart: &str, version: &str) -> Result<(), ArchiveError> {
        if self.metadata.name != chart {
            return Err(ArchiveError::OtherChart {
                expected: chart.to_owned(),
                found: self.metadata.name.clone(),
            });
        }
        if semver_range::parse_version(&self.metadata.version)
            != semver_range::parse_version(version)
        {
            return Err(ArchiveError::OtherVersion {
                expected: version.to_owned(),
                found: self.metadata.version.clone(),
            });
        }
        Ok(())
    }

    /// A file of the chart by its path relative to the chart's directory.
    #[must_use]
    pub fn file(&self, relative: &str) -> Option<&[u8]> {
        let wanted = format!("{}/{}", self.top, relative.trim_start_matches("./"));
        self.files
            .iter()
            .find(|(name, _)| *name == wanted)
            .map(|(_, content)| content.as_slice())
    }

    /// The archive again, gzipped, with the files of `replace` (paths relative to the chart)
    /// replaced or added. Entries keep their order; times are the epoch, so the same chart gives
    /// the same bytes.
    pub fn repack(&self, replace: &BTreeMap<&str, Vec<u8>>) -> Result<Vec<u8>, std::io::Error> {
        let mut out = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::default(),
        ));
        let mut pending: BTreeMap<String, &[u8]> = replace
            .iter()
            .map(|(rel, content)| (format!("{}/{rel}", self.top), content.as_slice()))
            .collect();
        for (name, content) in &self.files {
            let content = pending.remove(name).unwrap_or(content.as_slice());
            append(&mut out, name, content)?;
        }
        for (name, content) in pending {
            append(&mut out, &name, content)?;
        }
        let mut gz = out.into_inner()?;
        gz.flush()?;
        gz.finish()
    }
}

/// The regular files of a gzipped tarball, by path: no absolute or `..` paths, at most
/// [`MAX_EXTRACTED_SIZE`] together.
pub fn read_files(bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>, ArchiveError> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let mut files = vec![];
    let mut total = 0u64;
    for entry in archive.entries().map_err(ArchiveError::Read)? {
        let mut entry = entry.map_err(ArchiveError::Read)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path().map_err(ArchiveError::Read)?;
        let name = path.to_string_lossy().into_owned();
        if path.is_absolute()
            || path
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(ArchiveError::UnsafePath(name));
        }
        total += entry.size();
        if total > MAX_EXTRACTED_SIZE {
            return Err(ArchiveError::TooLarge);
        }
        let mut content = vec![];
        (&mut entry)
            .take(MAX_EXTRACTED_SIZE)
            .read_to_end(&mut content)
            .map_err(ArchiveError::Read)?;
        files.push((name, content));
    }
    Ok(files)
}

/// A chart's `.helmignore` rules (gitignore syntax, as Helm reads them).
fn helmignore(rules: Option<&Vec<u8>>) -> ignore::gitignore::Gitignore {
    let mut builder = ignore::gitignore::GitignoreBuilder::new("");
    for line in rules
        .map(|r| String::from_utf8_lossy(r).into_owned())
        .unwrap_or_default()
        .lines()
    {
        // A rule that does not parse is left out, as Helm skips what it cannot read.
        let _ = builder.add_line(None, line);
    }
    builder
        .build()
        .unwrap_or_else(|_| ignore::gitignore::Gitignore::empty())
}

fn append<W: Write>(out: &mut tar::Builder<W>, name: &str, content: &[u8]) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    out.append_data(&mut header, name, content)
}

/// Why values files do not merge.
#[derive(Debug, thiserror::Error)]
pub enum ValuesError {
    #[error("no values file found at path '{0}'")]
    Missing(String),
    #[error("failed to unmarshal values file '{file}'")]
    Parse {
        file: String,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("values file '{0}' is not a map")]
    NotAMap(String),
    #[error("cannot write the merged values")]
    Write(#[source] serde_yaml_ng::Error),
}

/// Merges the chart's values files in order, later files winning and maps merged key by key, as
/// Flux does; a missing file fails unless `ignore_missing`. Returns the merged YAML and the files
/// merged (the missing ones left out).
pub fn merge_values_files<'a>(
    read: impl Fn(&str) -> Option<&'a [u8]>,
    files: &[String],
    ignore_missing: bool,
) -> Result<(Vec<u8>, Vec<String>), ValuesError> {
    let mut merged = Mapping::new();
    let mut used = vec![];
    for file in files {
        let Some(content) = read(file) else {
            if ignore_missing {
                continue;
            }
            return Err(ValuesError::Missing(file.clone()));
        };
        let value: Value =
            serde_yaml_ng::from_slice(content).map_err(|source| ValuesError::Parse {
                file: file.clone(),
                source,
            })?;
        match value {
            Value::Mapping(map) => merge_maps(&mut merged, map),
            Value::Null => {}
            _ => return Err(ValuesError::NotAMap(file.clone())),
        }
        used.push(file.clone());
    }
    let yaml = serde_yaml_ng::to_string(&merged).map_err(ValuesError::Write)?;
    Ok((yaml.into_bytes(), used))
}

/// Merges `overlay` into `base`: a key whose values are both maps is merged, any other value of
/// `overlay` replaces `base`'s.
pub fn merge_maps(base: &mut Mapping, overlay: Mapping) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(Value::Mapping(existing)), Value::Mapping(more)) => merge_maps(existing, more),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INDEX: &str = "apiVersion: v1\nentries:\n  app:\n  - name: app\n    version: 1.2.0\n    urls: [app-1.2.0.tgz]\n  - name: app\n    version: 1.10.0\n    urls: [charts/app-1.10.0.tgz]\n  - name: app\n    version: 2.0.0-rc.1\n    urls: [app-2.0.0-rc.1.tgz]\n  - name: app\n    version: 0.9.0\n    urls: [https://cdn.example/app-0.9.0.tgz]\n  other:\n  - name: other\n    version: 3.0.0\n";

    fn pick(chart: &str, range: &str) -> Result<String, ReferenceError> {
        select_version(INDEX.as_bytes(), chart, range).map(|v| v.version)
    }

    #[test]
    fn the_highest_version_in_the_range_is_picked() {
        assert_eq!(
            pick("app", "*").unwrap(),
            "1.10.0",
            "by precedence, not text"
        );
        assert_eq!(pick("app", "1.x").unwrap(), "1.10.0");
        assert_eq!(pick("app", ">=1.0.0 <1.5.0").unwrap(), "1.2.0");
        assert_eq!(pick("app", "<1").unwrap(), "0.9.0");
        assert_eq!(pick("app", ">=2.0.0-0").unwrap(), "2.0.0-rc.1");
        assert_eq!(pick("other", "3.0.0").unwrap(), "3.0.0");
    }

    #[test]
    fn no_version_in_range_or_no_chart_names_both() {
        for (chart, range) in [("app", ">=3.0.0"), ("missing", "*")] {
            let err = pick(chart, range).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("no '{chart}' chart with version matching '{range}' found")
            );
        }
        assert!(matches!(
            pick("app", "not a range"),
            Err(ReferenceError::Range { .. })
        ));
    }

    #[test]
    fn chart_urls_resolve_against_the_repository_url() {
        let url = |repo: &str, version: &str| {
            let entry = select_version(INDEX.as_bytes(), "app", version).unwrap();
            chart_url(repo, &entry, "app").unwrap().to_string()
        };
        assert_eq!(
            url("http://charts.example/stable", "1.2.0"),
            "http://charts.example/stable/app-1.2.0.tgz"
        );
        assert_eq!(
            url("http://charts.example/stable/?t=1", "1.10.0"),
            "http://charts.example/stable/charts/app-1.10.0.tgz?t=1"
        );
        assert_eq!(
            url("http://charts.example", "0.9.0"),
            "https://cdn.example/app-0.9.0.tgz"
        );
        let bare = select_version(INDEX.as_bytes(), "other", "*").unwrap();
        assert!(matches!(
            chart_url("http://charts.example", &bare, "other"),
            Err(UrlError::Missing { .. })
        ));
    }

    fn chart(files: &[(&str, &str)]) -> Vec<u8> {
        let mut out = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::default(),
        ));
        for (name, content) in files {
            append(&mut out, name, content.as_bytes()).unwrap();
        }
        out.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn a_chart_archive_has_its_chart_yaml_under_one_directory() {
        let bytes = chart(&[
            (
                "app/Chart.yaml",
                "apiVersion: v2\nname: app\nversion: 1.2.0\n",
            ),
            ("app/values.yaml", "a: 1\n"),
        ]);
        let archive = ChartArchive::read(&bytes).unwrap();
        assert_eq!(archive.top, "app");
        archive.expect("app", "1.2.0").unwrap();
        assert!(archive.expect("other", "1.2.0").is_err());
        assert!(archive.expect("app", "1.3.0").is_err());
        assert!(matches!(
            ChartArchive::read(&chart(&[("app/values.yaml", "a: 1\n")])),
            Err(ArchiveError::NoChartYaml)
        ));
        assert!(ChartArchive::read(b"<html>not found</html>").is_err());
    }

    #[test]
    fn values_files_merge_in_order_maps_deeply_and_replace_the_values_yaml() {
        let bytes = chart(&[
            (
                "app/Chart.yaml",
                "apiVersion: v2\nname: app\nversion: 1.2.0\n",
            ),
            (
                "app/values.yaml",
                "message: base\nimage:\n  repository: app\n  tag: '1'\nlist: [a, b]\n",
            ),
            (
                "app/values-prod.yaml",
                "image:\n  tag: '2'\nlist: [c]\nreplicas: 3\n",
            ),
            ("app/templates/cm.yaml", "kind: ConfigMap\n"),
        ]);
        let archive = ChartArchive::read(&bytes).unwrap();
        let files = ["values.yaml".to_owned(), "values-prod.yaml".to_owned()];
        let (merged, used) = merge_values_files(|f| archive.file(f), &files, false).unwrap();
        assert_eq!(used, files);
        let merged: Value = serde_yaml_ng::from_slice(&merged).unwrap();
        let expected: Value = serde_yaml_ng::from_str(
            "message: base\nimage:\n  repository: app\n  tag: '2'\nlist: [c]\nreplicas: 3\n",
        )
        .unwrap();
        assert_eq!(merged, expected);

        // Only the listed files: the chart's values.yaml is not merged unless named.
        let only_prod = ["values-prod.yaml".to_owned()];
        let (merged, _) = merge_values_files(|f| archive.file(f), &only_prod, false).unwrap();
        let merged: Value = serde_yaml_ng::from_slice(&merged).unwrap();
        assert_eq!(merged.get("message"), None);

        let missing = ["values.yaml".to_owned(), "values-dev.yaml".to_owned()];
        let err = merge_values_files(|f| archive.file(f), &missing, false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no values file found at path 'values-dev.yaml'"
        );
        let (_, used) = merge_values_files(|f| archive.file(f), &missing, true).unwrap();
        assert_eq!(used, ["values.yaml"]);

        let replace = BTreeMap::from([("values.yaml", b"x: 1\n".to_vec())]);
        let repacked = ChartArchive::read(&archive.repack(&replace).unwrap()).unwrap();
        assert_eq!(repacked.file("values.yaml"), Some(&b"x: 1\n"[..]));
        assert_eq!(
            repacked.file("templates/cm.yaml"),
            Some(&b"kind: ConfigMap\n"[..])
        );
        assert_eq!(repacked.metadata, archive.metadata);
    }

    fn source(files: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        files
            .iter()
            .map(|(n, c)| ((*n).to_owned(), c.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn a_chart_directory_is_packaged_under_its_name_without_what_helmignore_leaves_out() {
        let files = source(&[
            ("README.md", "repo"),
            (
                "charts/app/Chart.yaml",
                "apiVersion: v2\nname: app\nversion: 0.3.0\n",
            ),
            ("charts/app/values.yaml", "a: 1\n"),
            ("charts/app/.helmignore", "*.bak\nci/\n"),
            ("charts/app/templates/cm.yaml", "kind: ConfigMap\n"),
            ("charts/app/templates/old.bak", "x"),
            ("charts/app/ci/test-values.yaml", "x"),
            (
                "charts/other/Chart.yaml",
                "apiVersion: v2\nname: other\nversion: 1.0.0\n",
            ),
        ]);
        let archive = ChartArchive::from_dir(&files, "charts/app").unwrap();
        assert_eq!(archive.top, "app");
        assert_eq!(archive.metadata.version, "0.3.0");
        let mut names: Vec<&str> = archive.files.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "app/.helmignore",
                "app/Chart.yaml",
                "app/templates/cm.yaml",
                "app/values.yaml"
            ]
        );
        assert!(matches!(
            ChartArchive::from_dir(&files, "charts/missing"),
            Err(ArchiveError::NoChartYaml)
        ));
        let chart_yaml = archive
            .chart_yaml_with_version("0.3.0+0123456789ab")
            .unwrap();
        let replace = BTreeMap::from([("Chart.yaml", chart_yaml)]);
        let packed = ChartArchive::read(&archive.repack(&replace).unwrap()).unwrap();
        assert_eq!(packed.metadata.version, "0.3.0+0123456789ab");
        assert_eq!(packed.metadata.name, "app");
    }

    #[test]
    fn dependencies_not_vendored_in_charts_are_named() {
        let chart_yaml = "apiVersion: v2\nname: app\nversion: 1.0.0\ndependencies:\n- name: db\n  version: 1.x\n  repository: https://charts.example\n- name: cache\n  version: 2.x\n  repository: https://charts.example\n- name: lib\n  version: 0.1.0\n  repository: file://../lib\n";
        let files = source(&[
            ("app/Chart.yaml", chart_yaml),
            ("app/charts/db-1.2.0.tgz", "x"),
            ("app/charts/lib/Chart.yaml", "name: lib\nversion: 0.1.0\n"),
        ]);
        let archive = ChartArchive::from_dir(&files, "app").unwrap();
        assert_eq!(archive.missing_dependencies().unwrap(), ["cache"]);
    }
}
