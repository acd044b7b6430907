//! The CustomResourceDefinitions of a chart's `crds/` directory, applied by the controller
//! where a HelmRelease's CRD policy asks for more than Helm does.
//!
//! Flux's policies: `Skip` leaves the CRDs alone, `Create` creates those that do not exist,
//! `CreateReplace` also replaces (here: server-side applies, field manager `helm` as Helm 4's
//! own, forced) those that do; none is ever deleted. Helm itself only creates CRDs, and only
//! on install, so the controller applies them before an install with `CreateReplace` and before
//! an upgrade with `Create` or `CreateReplace`, as Flux's helm-controller does, with the same
//! access Helm gets (impersonating `spec.serviceAccountName` when set), and waits for each CRD
//! it wrote to be Established.
//!
//! Where Weir deviates: only the top-level chart's `crds/` are read. Helm (and Flux) also take
//! the CRDs of the subcharts its values enable (`dependencies[].condition`, `tags`); Weir does
//! not evaluate those, so it never writes a disabled subchart's CRDs. On install Helm still
//! creates a subchart's missing CRDs itself (see `actions::install`).

use std::{
    collections::BTreeMap,
    io::Read,
    path::{Component, Path},
    time::Duration,
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::wait::{Condition, await_condition, conditions},
};
use serde::Deserialize;

use crate::helm::KubeAccess;

/// The field manager CRDs are applied under: Helm 4's own, so that Helm and Weir (and Flux)
/// share the fields of the CRDs they apply.
pub const FIELD_MANAGER: &str = "helm";

/// The most a chart archive may decompress to (Helm's `MaxDecompressedChartSize`).
const MAX_CHART_BYTES: u64 = 100 * 1024 * 1024;
/// The most one file of `crds/` may hold (Helm's `MaxDecompressedFileSize`).
const MAX_FILE_BYTES: u64 = 5 * 1024 * 1024;

/// Which CRDs of a chart are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Those that do not exist yet.
    Create,
    /// All of them: new ones created, existing ones replaced.
    CreateReplace,
}

/// One CRD of a chart, as its file has it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChartCrd {
    pub name: String,
    /// Its file in the chart (`crds/…`).
    pub file: String,
    /// The object as written in the file.
    pub object: serde_json::Value,
}

/// Why a chart's CRDs could not be read or applied; each names the CRD or the file.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    #[error("cannot read the chart archive (at most {MAX_CHART_BYTES} bytes decompressed)")]
    Archive(#[source] std::io::Error),
    #[error("{file} in the chart is larger than {MAX_FILE_BYTES} bytes")]
    TooLarge { file: String },
    #[error("cannot parse {file} in the chart")]
    Parse {
        file: String,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("a CustomResourceDefinition in {file} of the chart has no metadata.name")]
    Unnamed { file: String },
    #[error("cannot read CustomResourceDefinition '{name}' ({file} in the chart)")]
    Read {
        name: String,
        file: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot apply CustomResourceDefinition '{name}' ({file} in the chart)")]
    Apply {
        name: String,
        file: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot watch CustomResourceDefinition '{name}' ({file} in the chart)")]
    Watch {
        name: String,
        file: String,
        #[source]
        source: kube::runtime::wait::Error,
    },
    #[error(
        "CustomResourceDefinition '{name}' ({file} in the chart) is not Established after {timeout:?}"
    )]
    NotEstablished {
        name: String,
        file: String,
        timeout: Duration,
    },
    #[error("cannot connect as '{user}' to apply the chart's CRDs")]
    Impersonation {
        user: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("reading the chart's CRDs stopped")]
    Interrupted(#[source] tokio::task::JoinError),
}

/// The CRDs of the top-level chart's `crds/` directory (any depth, `.yaml`, `.yml` or `.json`,
/// multi-document), in the archive's order; other kinds and the subcharts' `crds/` are left out.
pub fn read(archive: impl Read) -> Result<Vec<ChartCrd>, CrdError> {
    let decoder = flate2::read::GzDecoder::new(archive).take(MAX_CHART_BYTES);
    let mut tar = tar::Archive::new(decoder);
    let mut crds = vec![];
    for entry in tar.entries().map_err(CrdError::Archive)? {
        let entry = entry.map_err(CrdError::Archive)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let Some(file) = crd_file(&entry.path().map_err(CrdError::Archive)?) else {
            continue;
        };
        let mut bytes = vec![];
        entry
            .take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(CrdError::Archive)?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(CrdError::TooLarge { file });
        }
        crds.extend(parse(&file, &bytes)?);
    }
    Ok(crds)
}

/// The path in the chart (`crds/…`) of an archive entry `<chart>/crds/…` with a manifest's
/// extension, as Helm's `CRDObjects` selects them.
fn crd_file(path: &Path) -> Option<String> {
    let mut parts = path.components().filter_map(|c| match c {
        Component::Normal(part) => part.to_str(),
        _ => None,
    });
    let _chart = parts.next()?;
    let rest: Vec<&str> = parts.collect();
    let manifest = Path::new(rest.last()?)
        .extension()
        .is_some_and(|e| e == "yaml" || e == "yml" || e == "json");
    (rest.len() >= 2 && rest[0] == "crds" && manifest).then(|| rest.join("/"))
}

/// The CRDs among the documents of one file.
fn parse(file: &str, bytes: &[u8]) -> Result<Vec<ChartCrd>, CrdError> {
    let mut crds = vec![];
    for document in serde_yaml_ng::Deserializer::from_slice(bytes) {
        let object =
            serde_json::Value::deserialize(document).map_err(|source| CrdError::Parse {
                file: file.to_owned(),
                source,
            })?;
        if object.get("kind").and_then(serde_json::Value::as_str)
            != Some("CustomResourceDefinition")
        {
            continue;
        }
        let Some(name) = object
            .pointer("/metadata/name")
            .and_then(serde_json::Value::as_str)
            .filter(|n| !n.is_empty())
        else {
            return Err(CrdError::Unnamed {
                file: file.to_owned(),
            });
        };
        crds.push(ChartCrd {
            name: name.to_owned(),
            file: file.to_owned(),
            object,
        });
    }
    Ok(crds)
}

/// Reads the CRDs of the chart archive at `path` (off the async runtime).
pub async fn read_chart(path: &Path) -> Result<Vec<ChartCrd>, CrdError> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path).map_err(CrdError::Archive)?;
        read(std::io::BufReader::new(file))
    })
    .await
    .map_err(CrdError::Interrupted)?
}

/// Writes `crds` as `policy` says with `client`, then waits up to `timeout` for each written
/// one to be Established. Returns the names of those written.
pub async fn apply(
    client: &Client,
    crds: &[ChartCrd],
    policy: Policy,
    timeout: Duration,
) -> Result<Vec<String>, CrdError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut written = vec![];
    for crd in crds {
        if policy == Policy::Create {
            let existing = api
                .get_opt(&crd.name)
                .await
                .map_err(|source| CrdError::Read {
                    name: crd.name.clone(),
                    file: crd.file.clone(),
                    source,
                })?;
            if existing.is_some() {
                continue;
            }
        }
        let applied = api
            .patch(&crd.name, &params, &Patch::Apply(&crd.object))
            .await
            .map_err(|source| CrdError::Apply {
                name: crd.name.clone(),
                file: crd.file.clone(),
                source,
            })?;
        written.push((crd, applied));
    }
    for (crd, applied) in &written {
        if !conditions::is_crd_established().matches_object(Some(applied)) {
            wait_established(&api, crd, timeout).await?;
        }
    }
    Ok(written
        .into_iter()
        .map(|(crd, _)| crd.name.clone())
        .collect())
}

/// Waits on a watch of the CRD (kube-runtime's `await_condition`) until it is Established.
async fn wait_established(
    api: &Api<CustomResourceDefinition>,
    crd: &ChartCrd,
    timeout: Duration,
) -> Result<(), CrdError> {
    let established = await_condition(api.clone(), &crd.name, conditions::is_crd_established());
    match tokio::time::timeout(timeout, established).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(source)) => Err(CrdError::Watch {
            name: crd.name.clone(),
            file: crd.file.clone(),
            source,
        }),
        Err(_elapsed) => Err(CrdError::NotEstablished {
            name: crd.name.clone(),
            file: crd.file.clone(),
            timeout,
        }),
    }
}

/// Clients that impersonate a user, one per user, so that connections are reused from one
/// reconcile to the next.
#[derive(Default)]
pub struct Clients {
    impersonating: tokio::sync::Mutex<BTreeMap<String, Client>>,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients").finish_non_exhaustive()
    }
}

impl Clients {
    /// The client Helm's access `kube` amounts to: `own` (the controller's) without
    /// impersonation, else one made from the same kubeconfig Helm connects with (`KUBECONFIG`
    /// or the pod's service account when none is set) acting as the impersonated user.
    pub async fn for_access(&self, own: &Client, kube: &KubeAccess) -> Result<Client, CrdError> {
        let Some(impersonate) = &kube.impersonate else {
            return Ok(own.clone());
        };
        let mut clients = self.impersonating.lock().await;
        if let Some(client) = clients.get(&impersonate.user) {
            return Ok(client.clone());
        }
        let err = |source: Box<dyn std::error::Error + Send + Sync>| CrdError::Impersonation {
            user: impersonate.user.clone(),
            source,
        };
        let mut config = match &kube.kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(path).map_err(|e| err(Box::new(e)))?;
                kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                    .await
                    .map_err(|e| err(Box::new(e)))?
            }
            None => kube::Config::infer().await.map_err(|e| err(Box::new(e)))?,
        };
        config.auth_info.impersonate = Some(impersonate.user.clone());
        config.auth_info.impersonate_groups =
            (!impersonate.groups.is_empty()).then(|| impersonate.groups.clone());
        let client = weir_runtime::client::new(config).map_err(|e| err(Box::new(e)))?;
        clients.insert(impersonate.user.clone(), client.clone());
        Ok(client)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use pretty_assertions::assert_eq;

    use super::*;

    fn crd(name: &str) -> String {
        format!(
            "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: {name}\nspec:\n  group: e2e.weir.dev\n"
        )
    }

    /// A gzipped tar of `files` (path, content), as `helm package` lays a chart out.
    fn archive(files: &[(&str, String)]) -> Vec<u8> {
        let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
            vec![],
            flate2::Compression::default(),
        ));
        for (path, content) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(content.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, path, content.as_bytes())
                .unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap()
    }

    fn names(crds: &[ChartCrd]) -> Vec<(&str, &str)> {
        crds.iter()
            .map(|c| (c.name.as_str(), c.file.as_str()))
            .collect()
    }

    #[test]
    fn reads_the_crds_of_the_top_level_chart_only() {
        let chart = archive(&[
            ("app/Chart.yaml", "apiVersion: v2\nname: app\nversion: 1.0.0\n".into()),
            (
                "app/crds/widgets.yaml",
                format!("{}---\n# nothing\n---\n{}", crd("widgets.e2e.weir.dev"), crd("gadgets.e2e.weir.dev")),
            ),
            ("app/crds/nested/things.json", r#"{"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "things.e2e.weir.dev"}}"#.into()),
            ("app/crds/config.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: not-a-crd\n".into()),
            ("app/crds/README.md", crd("readme.e2e.weir.dev")),
            ("app/templates/crd.yaml", crd("templated.e2e.weir.dev")),
            ("app/charts/sub/crds/sub.yaml", crd("sub.e2e.weir.dev")),
        ]);
        let crds = read(chart.as_slice()).unwrap();
        assert_eq!(
            names(&crds),
            vec![
                ("widgets.e2e.weir.dev", "crds/widgets.yaml"),
                ("gadgets.e2e.weir.dev", "crds/widgets.yaml"),
                ("things.e2e.weir.dev", "crds/nested/things.json"),
            ]
        );
        assert_eq!(crds[0].object["spec"]["group"], "e2e.weir.dev");
    }

    #[test]
    fn a_chart_without_crds_has_none() {
        let chart = archive(&[("app/Chart.yaml", "name: app\n".into())]);
        assert_eq!(read(chart.as_slice()).unwrap(), vec![]);
    }

    #[test]
    fn a_bad_crd_file_is_named() {
        let chart = archive(&[("app/crds/bad.yaml", "kind: [\n".into())]);
        let error = read(chart.as_slice()).unwrap_err();
        assert_eq!(error.to_string(), "cannot parse crds/bad.yaml in the chart");
        let chart = archive(&[(
            "app/crds/unnamed.yaml",
            "kind: CustomResourceDefinition\nmetadata: {}\n".into(),
        )]);
        let error = read(chart.as_slice()).unwrap_err();
        assert!(matches!(error, CrdError::Unnamed { file } if file == "crds/unnamed.yaml"));
    }

    #[test]
    fn an_oversized_crd_file_is_refused() {
        let big = format!(
            "{}#{}\n",
            crd("big.e2e.weir.dev"),
            "x".repeat(5 * 1024 * 1024)
        );
        let chart = archive(&[("app/crds/big.yaml", big)]);
        let error = read(chart.as_slice()).unwrap_err();
        assert!(matches!(error, CrdError::TooLarge { file } if file == "crds/big.yaml"));
    }

    #[test]
    fn what_is_not_an_archive_is_an_error() {
        assert!(matches!(
            read(b"not gzip".as_slice()),
            Err(CrdError::Archive(_))
        ));
    }

    #[test]
    fn crd_files_are_those_helm_selects() {
        for (path, expected) in [
            ("app/crds/a.yaml", Some("crds/a.yaml")),
            ("app/crds/a.yml", Some("crds/a.yml")),
            ("app/crds/x/a.json", Some("crds/x/a.json")),
            ("./app/crds/a.yaml", Some("crds/a.yaml")),
            ("app/crds/a.txt", None),
            ("app/crds", None),
            ("app/templates/crds/a.yaml", None),
            ("app/charts/sub/crds/a.yaml", None),
            ("crds/a.yaml", None),
        ] {
            assert_eq!(crd_file(Path::new(path)).as_deref(), expected, "{path}");
        }
    }
}
