//! The pure parts of a HelmRepository fetch: where the index is, how large it may be, what
//! makes it a Helm repository index, and how its size reads in an Event.

use std::collections::BTreeMap;

use url::Url;

/// The largest index accepted, in bytes: Flux's default (`--helm-index-max-size`, 50 MiB).
pub const MAX_INDEX_SIZE: u64 = 50 << 20;

/// Why a HelmRepository URL gives no index URL.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("'oci' URL scheme cannot be used with 'default' HelmRepository type")]
    Oci,
    #[error("cannot parse the URL")]
    Parse(#[source] url::ParseError),
    #[error("scheme '{0}' is neither http nor https")]
    Scheme(String),
}

/// The index URL of a repository URL, by Flux's rule: `index.yaml` joined to the URL's path as
/// Go's `path.Join` joins it (`.` and `..` resolved, repeated and trailing slashes dropped), the
/// query kept.
pub fn index_url(repository: &str) -> Result<Url, UrlError> {
    let mut url = Url::parse(repository).map_err(UrlError::Parse)?;
    match url.scheme() {
        "http" | "https" => {}
        "oci" => return Err(UrlError::Oci),
        other => return Err(UrlError::Scheme(other.to_owned())),
    }
    let mut segments: Vec<&str> = vec![];
    for segment in url.path().split('/').chain(["index.yaml"]) {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let path = format!("/{}", segments.join("/"));
    url.set_path(&path);
    Ok(url)
}

/// Why fetched bytes are not a Helm repository index (Helm's own words where it has them).
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("empty index.yaml file")]
    Empty,
    #[error("index exceeds the maximum index file size of {MAX_INDEX_SIZE} bytes")]
    TooLarge,
    #[error("cannot parse the index as YAML or JSON")]
    Parse(#[source] serde_yaml_ng::Error),
    #[error("no API version specified")]
    NoApiVersion,
}

/// The part of a Helm repository index (`repo.IndexFile`) that makes it one: an `apiVersion`,
/// and `entries` mapping chart names to lists of chart versions. Other fields are read past.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexFile {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    entries: Option<BTreeMap<String, Option<Vec<serde_yaml_ng::Value>>>>,
}

/// What a valid index holds, for logs and Events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexSummary {
    /// Charts in `entries`.
    pub charts: usize,
    /// Chart versions over all charts.
    pub versions: usize,
}

/// Checks that `bytes` are a Helm repository index as Helm loads one (JSON or YAML, with an
/// `apiVersion`), within [`MAX_INDEX_SIZE`].
pub fn validate(bytes: &[u8]) -> Result<IndexSummary, IndexError> {
    if bytes.is_empty() {
        return Err(IndexError::Empty);
    }
    if bytes.len() as u64 > MAX_INDEX_SIZE {
        return Err(IndexError::TooLarge);
    }
    let index: IndexFile = serde_yaml_ng::from_slice(bytes).map_err(IndexError::Parse)?;
    if index.api_version.as_deref().is_none_or(str::is_empty) {
        return Err(IndexError::NoApiVersion);
    }
    let entries = index.entries.unwrap_or_default();
    Ok(IndexSummary {
        charts: entries.len(),
        versions: entries.values().flatten().map(Vec::len).sum(),
    })
}

/// A size as Docker's `units.HumanSize` writes it (which Flux's Events use): decimal units, four
/// significant digits, trailing zeros dropped (`1.234kB`, `52MB`, `12B`).
#[must_use]
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 9] = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    // Exact enough for four significant digits.
    #[allow(clippy::cast_precision_loss)]
    let mut size = bytes as f64;
    let mut unit = 0;
    while size >= 1000.0 && unit < UNITS.len() - 1 {
        size /= 1000.0;
        unit += 1;
    }
    let integer_digits = if size >= 100.0 {
        3
    } else if size >= 10.0 {
        2
    } else {
        1
    };
    let text = format!("{size:.*}", 4 - integer_digits);
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        &text
    };
    format!("{text}{}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_url_joins_as_go_path_join() {
        for (repository, index) in [
            (
                "https://charts.example",
                "https://charts.example/index.yaml",
            ),
            (
                "https://charts.example/",
                "https://charts.example/index.yaml",
            ),
            (
                "https://charts.example/stable",
                "https://charts.example/stable/index.yaml",
            ),
            (
                "https://charts.example/stable//",
                "https://charts.example/stable/index.yaml",
            ),
            (
                "http://127.0.0.1:8080/a/./b/../c",
                "http://127.0.0.1:8080/a/c/index.yaml",
            ),
            (
                "https://charts.example/x?token=t",
                "https://charts.example/x/index.yaml?token=t",
            ),
        ] {
            assert_eq!(
                index_url(repository).unwrap().as_str(),
                index,
                "{repository}"
            );
        }
        assert!(matches!(
            index_url("oci://ghcr.io/charts"),
            Err(UrlError::Oci)
        ));
        assert!(matches!(index_url("https://"), Err(UrlError::Parse(_))));
        assert!(matches!(
            index_url("ftp://charts.example"),
            Err(UrlError::Scheme(_))
        ));
    }

    #[test]
    fn an_index_has_an_api_version_and_entries() {
        let index = b"apiVersion: v1\nentries:\n  app:\n  - name: app\n    version: 1.0.0\n  - name: app\n    version: 1.1.0\n  other:\n  - name: other\n    version: 0.1.0\ngenerated: \"2024-01-01T00:00:00Z\"\n";
        assert_eq!(
            validate(index).unwrap(),
            IndexSummary {
                charts: 2,
                versions: 3
            }
        );
        // JSON, as Helm reads it too; and an index without entries yet.
        assert_eq!(
            validate(br#"{"apiVersion":"v1","entries":{"app":[{"version":"1.0.0"}]}}"#).unwrap(),
            IndexSummary {
                charts: 1,
                versions: 1
            }
        );
        assert_eq!(validate(b"apiVersion: v1\n").unwrap().charts, 0);
    }

    #[test]
    fn what_is_not_an_index_is_refused_with_helms_words() {
        assert!(matches!(validate(b""), Err(IndexError::Empty)));
        assert!(matches!(
            validate(b"entries: {}\n"),
            Err(IndexError::NoApiVersion)
        ));
        let html = b"<!DOCTYPE html>\n<html><body>Not Found</body></html>\n";
        assert!(matches!(validate(html), Err(IndexError::Parse(_))));
        assert!(matches!(
            validate(b"apiVersion: v1\nentries: [1, 2]\n"),
            Err(IndexError::Parse(_))
        ));
        assert_eq!(
            IndexError::NoApiVersion.to_string(),
            "no API version specified"
        );
    }

    #[test]
    fn the_size_limit_is_fluxs_default() {
        assert_eq!(MAX_INDEX_SIZE, 52_428_800);
        let mut big = b"apiVersion: v1\n#".to_vec();
        big.resize(usize::try_from(MAX_INDEX_SIZE).unwrap() + 1, b'x');
        assert!(matches!(validate(&big), Err(IndexError::TooLarge)));
        assert!(
            IndexError::TooLarge
                .to_string()
                .contains("maximum index file size of 52428800 bytes")
        );
    }

    #[test]
    fn sizes_read_as_docker_units_write_them() {
        for (bytes, text) in [
            (0, "0B"),
            (12, "12B"),
            (999, "999B"),
            (1000, "1kB"),
            (1234, "1.234kB"),
            (12_345, "12.35kB"),
            (123_456, "123.5kB"),
            (52_428_800, "52.43MB"),
        ] {
            assert_eq!(human_size(bytes), text, "{bytes}");
        }
    }
}
