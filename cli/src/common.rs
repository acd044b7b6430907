//! What the read-only commands (`tree`, `trace`, `events`, `history`) share: the connection
//! flags, the object they read, running a command, tables and object status.

use std::{path::PathBuf, process::ExitCode};

use clap::ValueEnum;
use kube::Client;
use serde_json::Value;
use weir_api::kustomize::{KUSTOMIZE_GROUP, ObjMetadata};

use crate::get::BoxError;

/// The group of HelmRelease.
pub(crate) const HELM_GROUP: &str = "helm.toolkit.fluxcd.io";

/// How to reach the cluster, and the namespace to read: kubectl's flags.
#[derive(Debug, clap::Args)]
pub struct Cluster {
    /// The namespace (the kubeconfig's namespace when omitted).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// The kubeconfig file (`KUBECONFIG` or ~/.kube/config when omitted).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (its current context when omitted).
    #[arg(long)]
    pub context: Option<String>,
}

impl Cluster {
    /// A client, and the namespace the flags name (else the kubeconfig's).
    pub(crate) async fn connect(&self) -> Result<(Client, String), BoxError> {
        let (client, default_namespace) =
            crate::get::connect(self.kubeconfig.as_deref(), self.context.as_deref()).await?;
        Ok((client, self.namespace.clone().unwrap_or(default_namespace)))
    }
}

/// How a command prints what it found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

/// `value` as JSON or YAML, for `-o json|yaml`; `None` for a table, which each command draws
/// itself.
pub(crate) fn structured<T: serde::Serialize>(
    value: &T,
    output: Output,
) -> Result<Option<String>, BoxError> {
    Ok(match output {
        Output::Table => None,
        Output::Json => Some(serde_json::to_string_pretty(value)? + "\n"),
        Output::Yaml => Some(serde_yaml_ng::to_string(value)?),
    })
}

/// The kinds that have an inventory and a history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Applier {
    #[value(name = "kustomization", alias = "ks", alias = "kustomizations")]
    Kustomization,
    #[value(name = "helmrelease", alias = "hr", alias = "helmreleases")]
    HelmRelease,
}

impl Applier {
    pub(crate) fn kind(self) -> &'static str {
        match self {
            Self::Kustomization => "Kustomization",
            Self::HelmRelease => "HelmRelease",
        }
    }

    pub(crate) fn group(self) -> &'static str {
        match self {
            Self::Kustomization => KUSTOMIZE_GROUP,
            Self::HelmRelease => HELM_GROUP,
        }
    }
}

/// A Kustomization or HelmRelease, and where to read it.
#[derive(Debug, clap::Args)]
pub struct AppliedObject {
    /// The kind: kustomization (ks) or helmrelease (hr).
    #[arg(value_enum)]
    pub kind: Applier,
    /// Its name.
    pub name: String,
    #[command(flatten)]
    pub cluster: Cluster,
}

impl AppliedObject {
    /// A client, and the object's kind, group, name and namespace (the flags', else the
    /// kubeconfig's).
    pub(crate) async fn connect(&self) -> Result<(Client, ObjMetadata), BoxError> {
        let (client, namespace) = self.cluster.connect().await?;
        let object = ObjMetadata {
            namespace,
            name: self.name.clone(),
            group: self.kind.group().to_owned(),
            kind: self.kind.kind().to_owned(),
        };
        Ok((client, object))
    }
}

/// Runs `command` (a future printing nothing, returning its output) on a runtime of its own;
/// prints the output, or `weir <name>: <error>` on stderr with exit code 1.
pub(crate) fn block_on(
    name: &str,
    command: impl Future<Output = Result<String, BoxError>>,
) -> ExitCode {
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let result = runtime.block_on(command);
    // A git fetch past its deadline may still hold a blocking thread: do not wait for it.
    runtime.shutdown_background();
    match result {
        Ok(text) => print(name, &text),
        Err(error) => {
            eprintln!("weir {name}: {}", weir_runtime::chain(&*error));
            ExitCode::FAILURE
        }
    }
}

/// A single-threaded runtime for one command; `None`, said on stderr, when it cannot start.
pub(crate) fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => Some(runtime),
        Err(error) => {
            eprintln!("✗ cannot start the async runtime: {error}");
            None
        }
    }
}

/// Writes `text` to stdout; a reader that stopped reading (`| head`) is not an error.
pub(crate) fn print(name: &str, text: &str) -> ExitCode {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("weir {name}: cannot write the output: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `Kind 'namespace/name' not found`.
pub(crate) fn not_found(kind: &str, namespace: &str, name: &str) -> BoxError {
    if namespace.is_empty() {
        format!("{kind} '{name}' not found").into()
    } else {
        format!("{kind} '{namespace}/{name}' not found").into()
    }
}

/// Text tables: columns padded to their widest cell, three spaces apart, as kubectl prints.
#[must_use]
pub(crate) fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(&cell.replace('\n', " "));
            if i + 1 < row.len() {
                let pad = widths[i].saturating_sub(cell.chars().count()) + 3;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The Ready condition of any object as (status, reason, message): `status.conditions` of type
/// `Ready`, else `Available` (a Deployment's), else none.
pub(crate) fn ready(object: &Value) -> Option<(String, String, String)> {
    let conditions = object.pointer("/status/conditions")?.as_array()?;
    let find = |t: &str| {
        conditions
            .iter()
            .find(|c| c.get("type").and_then(Value::as_str) == Some(t))
    };
    let condition = find("Ready").or_else(|| find("Available"))?;
    let text = |key: &str| {
        condition
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    Some((text("status"), text("reason"), text("message")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_columns_and_ready_falls_back_to_available() {
        let rows = vec![
            vec!["A".to_owned(), "LONG HEADER".to_owned(), "C".to_owned()],
            vec![
                "wide cell".to_owned(),
                "x".to_owned(),
                "two\nlines".to_owned(),
            ],
        ];
        assert_eq!(
            table(&rows),
            "A           LONG HEADER   C\nwide cell   x             two lines\n"
        );
        let deployment = serde_json::json!({"status": {"conditions": [
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable", "message": "p"},
            {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable", "message": "up"},
        ]}});
        assert_eq!(
            ready(&deployment),
            Some((
                "True".into(),
                "MinimumReplicasAvailable".into(),
                "up".into()
            ))
        );
        assert_eq!(ready(&serde_json::json!({"status": {}})), None);
    }
}
