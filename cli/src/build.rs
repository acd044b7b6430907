//! `weir build kustomization` and `weir diff kustomization`: what applying a Kustomization
//! would produce and change, as `flux build|diff kustomization` show it, through the
//! controller's own code (`weir_kustomize::local`: the same build, `postBuild` substitution and
//! owner labels) and weir-ssa's server-side dry run, with the user's kubeconfig (so RBAC
//! decides what may be read and dry-run).
//!
//! - The manifests come from `--path` (a local directory standing for `spec.path`) or, without
//!   it, from the source's current artifact. The spec is the cluster's Kustomization, or the
//!   one of `--kustomization-file`; a Kustomization that does not exist yet needs `--path`
//!   (and takes Flux's defaults without a file).
//! - `build` prints the objects as the controller applies them, after the whole set passed a
//!   server-side dry run. `diff` prints, per object, `► Kind/namespace/name created|drifted|
//!   deleted`, a drifted object followed by a unified diff of the live object and the dry run's
//!   result (fields the server owns, `status` and `spec.ignore` paths left out); `deleted` when
//!   `spec.prune` would delete it.
//! - The values of Secrets are never printed: each is shown as `***`, in a diff `*** (changed)`
//!   when the value would change. Error messages are masked with the controller's redactor.
//! - Exit codes, as `flux diff`: `diff` 0 without differences, 1 with, 2 on an error or bad
//!   usage; `build` 0, or 1 on an error (2 on bad usage).

use std::{
    collections::{BTreeSet, HashMap},
    path::PathBuf,
    process::ExitCode,
};

use clap::ValueEnum;
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client,
    api::{DynamicObject, Patch, PatchParams, ValidationDirective},
};
use serde_json::{Value, json};
use weir_api::Kustomization;
use weir_kustomize::{APPLY_FIELD_MANAGER, local};
use weir_runtime::Redactor;
use weir_ssa::{ApplySet, Change, IgnoreRules, Target, drift};

use crate::get::BoxError;

/// The kinds these commands build (flux's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    #[value(name = "kustomization", alias = "ks")]
    Kustomization,
}

/// Flags of `weir build` and `weir diff`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The kind (only Kustomizations are built).
    #[arg(value_enum)]
    pub kind: Kind,
    /// The Kustomization's name.
    pub name: String,
    /// A local directory standing for the Kustomization's `spec.path`; without it, the
    /// source's current artifact is built.
    #[arg(long)]
    pub path: Option<PathBuf>,
    /// A Kustomization manifest whose spec is used in place of the cluster's (for one that
    /// does not exist yet, too).
    #[arg(long)]
    pub kustomization_file: Option<PathBuf>,
    /// The `kustomize` binary (looked up on `PATH` when a bare name).
    #[arg(long, default_value = "kustomize")]
    pub kustomize_path: PathBuf,
    /// How to reach the cluster, and the namespace.
    #[command(flatten)]
    pub cluster: crate::common::Cluster,
}

/// Which command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Build,
    Diff,
}

impl Mode {
    fn word(self) -> &'static str {
        match self {
            Self::Build => "build",
            Self::Diff => "diff",
        }
    }

    /// The exit code of an error: `diff` keeps 1 for "differences found".
    fn failure(self) -> ExitCode {
        match self {
            Self::Build => ExitCode::FAILURE,
            Self::Diff => ExitCode::from(2),
        }
    }
}

/// `weir build kustomization`.
pub fn build(args: &Args) -> ExitCode {
    run(args, Mode::Build)
}

/// `weir diff kustomization`.
pub fn diff(args: &Args) -> ExitCode {
    run(args, Mode::Diff)
}

fn run(args: &Args, mode: Mode) -> ExitCode {
    let Some(runtime) = crate::common::runtime() else {
        return mode.failure();
    };
    let mut redactor = Redactor::default();
    match runtime.block_on(output(args, mode, &mut redactor)) {
        Ok((text, differs)) => {
            if let Err(error) = write_stdout(&text) {
                eprintln!("✗ cannot write the output: {error}");
                return mode.failure();
            }
            match (mode, differs) {
                (Mode::Diff, true) => ExitCode::FAILURE,
                (Mode::Diff, false) => {
                    eprintln!("✔ no changes");
                    ExitCode::SUCCESS
                }
                (Mode::Build, _) => ExitCode::SUCCESS,
            }
        }
        Err(error) => {
            eprintln!(
                "✗ weir {} kustomization {}: {}",
                mode.word(),
                args.name,
                redactor.redact(&weir_runtime::chain(&*error))
            );
            mode.failure()
        }
    }
}

/// Writes `text` to stdout; a reader that stopped reading is not an error.
fn write_stdout(text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// What to print, and whether applying would change anything.
async fn output(
    args: &Args,
    mode: Mode,
    redactor: &mut Redactor,
) -> Result<(String, bool), BoxError> {
    let config = crate::get::user_config(
        args.cluster.kubeconfig.as_deref(),
        args.cluster.context.as_deref(),
    )
    .await?;
    let namespace = args
        .cluster
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = weir_runtime::client::new(config.clone())?;
    let live = Api::<Kustomization>::namespaced(client.clone(), &namespace)
        .get_opt(&args.name)
        .await
        .map_err(|e| format!("cannot read Kustomization '{namespace}/{}': {e}", args.name))?;
    let ks = spec_of(args, &namespace, live.as_ref())?;
    if let Some(path) = &args.path
        && !path.is_dir()
    {
        return Err(format!("--path {}: no such directory", path.display()).into());
    }
    let cache = tempfile::tempdir()?;
    let ctx = local::context(
        client,
        config,
        &args.kustomize_path,
        cache.path().join("artifacts"),
    )?;
    let targets = local::render(&ks, &ctx, args.path.as_deref(), redactor).await?;
    let ignore = IgnoreRules::compile(&ks.spec.ignore)
        .map_err(|e| format!("Kustomization spec.{}", weir_runtime::chain(&e)))?;
    let set = ApplySet {
        client: &ctx.base.client,
        counter: ctx.metrics.as_ref(),
        field_manager: APPLY_FIELD_MANAGER,
        force: ks.spec.force,
        timeout: ks.spec.timeout(),
        ignore: &ignore,
    };
    let changes = dry_run(&set, &targets).await?;
    match mode {
        Mode::Build => Ok((manifests(&targets)?, false)),
        Mode::Diff => {
            let inventory = live
                .as_ref()
                .and_then(|l| l.status.as_ref())
                .and_then(|s| s.inventory.as_ref());
            let pruned = local::pruned(&ks, inventory, &ctx, &targets).await?;
            differences(&set, &targets, &changes, &pruned).await
        }
    }
}

/// The Kustomization to build: `--kustomization-file`'s, else the cluster's, else (with
/// `--path`) one with Flux's defaults.
fn spec_of(
    args: &Args,
    namespace: &str,
    live: Option<&Kustomization>,
) -> Result<Kustomization, BoxError> {
    let name = &args.name;
    if live.is_none() && args.path.is_none() {
        return Err(format!(
            "Kustomization '{namespace}/{name}' not found; to build one that does not exist \
             yet, give --path (and --kustomization-file for its spec)"
        )
        .into());
    }
    if let Some(file) = &args.kustomization_file {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("--kustomization-file {}: {e}", file.display()))?;
        return kustomization_from_file(&text, name, namespace)
            .map_err(|e| format!("--kustomization-file {}: {e}", file.display()).into());
    }
    if let Some(live) = live {
        return Ok(live.clone());
    }
    kustomization_from_value(json!({
        "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
        "kind": "Kustomization",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "sourceRef": {"kind": "GitRepository", "name": name},
            "interval": "10m",
            "path": "./",
            "prune": false,
        },
    }))
}

/// A Kustomization manifest (one YAML document), checked to be the one named on the command
/// line; its namespace defaults to the command's.
fn kustomization_from_file(
    text: &str,
    name: &str,
    namespace: &str,
) -> Result<Kustomization, String> {
    let mut value: Value =
        serde_yaml_ng::from_str(text).map_err(|e| format!("invalid YAML: {e}"))?;
    let field = |pointer: &str| {
        value
            .pointer(pointer)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let api_version = field("/apiVersion").unwrap_or_default();
    if field("/kind").as_deref() != Some("Kustomization")
        || !api_version.starts_with("kustomize.toolkit.fluxcd.io/")
    {
        return Err(format!(
            "not a Flux Kustomization (apiVersion {api_version:?}, kind {:?})",
            field("/kind").unwrap_or_default()
        ));
    }
    match field("/metadata/name") {
        Some(n) if n != name => {
            return Err(format!("metadata.name is {n:?}, not {name:?}"));
        }
        _ => {}
    }
    match field("/metadata/namespace") {
        Some(n) if n != namespace => {
            return Err(format!(
                "metadata.namespace is {n:?}, not {namespace:?} (set -n)"
            ));
        }
        _ => {}
    }
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("name".into(), name.into());
        meta.insert("namespace".into(), namespace.into());
    }
    kustomization_from_value(value).map_err(|e| e.to_string())
}

fn kustomization_from_value(value: Value) -> Result<Kustomization, BoxError> {
    // Strictly, as `weir` validates manifests: an unknown (misspelt) field is named.
    weir_api::manifest::from_value(value).map_err(|e| format!("invalid Kustomization: {e}").into())
}

/// Objects of the set that cannot be dry-run yet, as the controller validates them only after
/// applying their definitions: those of a kind a CRD of the set defines, and those in a
/// Namespace the set creates. Each would be created.
async fn deferred(client: &Client, targets: &[Target]) -> Result<BTreeSet<usize>, BoxError> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut missing = BTreeSet::new();
    for t in targets {
        if t.meta.group.is_empty()
            && t.meta.kind == "Namespace"
            && namespaces.get_opt(&t.meta.name).await?.is_none()
        {
            missing.insert(t.meta.name.as_str());
        }
    }
    Ok(targets
        .iter()
        .enumerate()
        .filter(|(_, t)| {
            t.kind_from_set || (t.namespaced && missing.contains(t.meta.namespace.as_str()))
        })
        .map(|(i, _)| i)
        .collect())
}

/// Every object's change, by server-side dry run through weir-ssa ([`ApplySet::diff`], the
/// controller's comparison); deferred objects are `Created`.
async fn dry_run(set: &ApplySet<'_>, targets: &[Target]) -> Result<Vec<Change>, BoxError> {
    let later = deferred(set.client, targets).await?;
    let now: Vec<Target> = targets
        .iter()
        .enumerate()
        .filter(|(i, _)| !later.contains(i))
        .map(|(_, t)| t.clone())
        .collect();
    let planned: HashMap<String, Change> = set.diff(&now).await?.entries.into_iter().collect();
    Ok(targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if later.contains(&i) {
                Change::Created
            } else {
                planned
                    .get(&t.display())
                    .copied()
                    .unwrap_or(Change::Unchanged)
            }
        })
        .collect())
}

/// The objects as applied, as multi-document YAML, Secret values masked.
fn manifests(targets: &[Target]) -> Result<String, BoxError> {
    let mut out = String::new();
    for target in targets {
        let mut object = target.object.clone();
        if is_secret(target) {
            mask_secret(&mut object, None);
        }
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(&object)?);
    }
    Ok(out)
}

/// `flux diff`'s report: created and drifted objects in build order (drifted ones with their
/// unified diff), then those pruned; and whether there was any.
async fn differences(
    set: &ApplySet<'_>,
    targets: &[Target],
    changes: &[Change],
    pruned: &[String],
) -> Result<(String, bool), BoxError> {
    // Each entry ends with a newline (a diff's lines do).
    let mut entries: Vec<String> = vec![];
    for (target, change) in targets.iter().zip(changes) {
        match change {
            Change::Created => entries.push(format!("► {} created\n", target.display())),
            Change::Configured => {
                entries.push(format!("► {} drifted\n", target.display()));
                entries.push(drift_of(set, target).await?);
            }
            Change::Unchanged | Change::Skipped | Change::Deleted => {}
        }
    }
    entries.extend(pruned.iter().map(|object| format!("► {object} deleted\n")));
    let differs = !entries.is_empty();
    Ok((entries.concat(), differs))
}

/// The unified diff between the live object and the server-side dry run of applying the
/// target (with the controller's field manager and parameters).
async fn drift_of(set: &ApplySet<'_>, target: &Target) -> Result<String, BoxError> {
    let api: Api<DynamicObject> = if target.namespaced {
        Api::namespaced_with(set.client.clone(), &target.meta.namespace, &target.resource)
    } else {
        Api::all_with(set.client.clone(), &target.resource)
    };
    let name = &target.meta.name;
    let live = api.get_opt(name).await?;
    let mut params = PatchParams::apply(set.field_manager).force();
    params.dry_run = true;
    params.field_validation = Some(ValidationDirective::Strict);
    let merged = match api
        .patch(name, &params, &Patch::Apply(&target.object))
        .await
    {
        Ok(merged) => merged,
        // Planned as a forced recreation: the server refuses the change in place.
        Err(error) => {
            return Ok(format!(
                "  (recreated: {})\n",
                weir_ssa::error::server_message(&error)
            ));
        }
    };
    let ignored = set.ignore.paths_for(&target.object);
    let shown = |object: Option<DynamicObject>| -> Result<Value, BoxError> {
        let value = object.map(serde_json::to_value).transpose()?;
        Ok(drift::without_paths(
            comparable(value.unwrap_or(Value::Null)),
            &ignored,
        ))
    };
    let (mut old, mut new) = (shown(live)?, shown(Some(merged))?);
    if is_secret(target) {
        mask_secret(&mut new, Some(&old));
        mask_secret(&mut old, None);
    }
    Ok(unified(
        &target.display(),
        &serde_yaml_ng::to_string(&old)?,
        &serde_yaml_ng::to_string(&new)?,
    ))
}

/// `old` → `new` as a unified diff with three lines of context.
fn unified(object: &str, old: &str, new: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(
            &format!("{object} (cluster)"),
            &format!("{object} (applied)"),
        )
        .to_string()
}

/// An object without what the server keeps for itself (`managedFields`, `resourceVersion`,
/// `generation`) and `status`, none of which an apply sets.
fn comparable(mut object: Value) -> Value {
    if let Some(map) = object.as_object_mut() {
        map.remove("status");
    }
    if let Some(meta) = object
        .pointer_mut("/metadata")
        .and_then(Value::as_object_mut)
    {
        for field in ["managedFields", "resourceVersion", "generation"] {
            meta.remove(field);
        }
    }
    object
}

fn is_secret(target: &Target) -> bool {
    target.meta.group.is_empty() && target.meta.kind == "Secret"
}

/// Replaces every value of a Secret's `data` and `stringData` with `***`; with `before` (the
/// same Secret as it is now), a value that differs from the one there is `*** (changed)`.
fn mask_secret(secret: &mut Value, before: Option<&Value>) {
    for field in ["data", "stringData"] {
        let Some(values) = secret.get_mut(field).and_then(Value::as_object_mut) else {
            continue;
        };
        for (key, value) in values {
            let previous = before.and_then(|b| b.get(field)?.get(key));
            let note = match previous {
                Some(previous) if *previous != *value => "*** (changed)",
                _ => "***",
            };
            *value = Value::String(note.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_values_are_masked_with_a_note_when_they_change() {
        let before =
            json!({"data": {"same": "c2FtZQ==", "gone": "eA=="}, "stringData": {"s": "a"}});
        let mut after = json!({"data": {"same": "c2FtZQ==", "new": "eQ==", "gone": "eg=="}, "stringData": {"s": "b"}});
        mask_secret(&mut after, Some(&before));
        assert_eq!(
            after,
            json!({"data": {"same": "***", "new": "***", "gone": "*** (changed)"},
                   "stringData": {"s": "*** (changed)"}})
        );
        let mut before = before;
        mask_secret(&mut before, None);
        let text = serde_yaml_ng::to_string(&before).unwrap();
        assert!(!text.contains("c2FtZQ") && !text.contains("eA=="), "{text}");
    }

    #[test]
    fn drift_is_a_unified_diff_of_the_changed_lines() {
        let old = serde_yaml_ng::to_string(&comparable(json!({
            "data": {"a": "1", "b": "2"},
            "metadata": {"name": "x", "resourceVersion": "7", "managedFields": [{"manager": "m"}]},
            "status": {"x": 1},
        })))
        .unwrap();
        let new = serde_yaml_ng::to_string(
            &json!({"data": {"a": "1", "b": "3"}, "metadata": {"name": "x"}}),
        )
        .unwrap();
        let text = unified("ConfigMap/ns/x", &old, &new);
        assert!(
            text.starts_with("--- ConfigMap/ns/x (cluster)\n+++ ConfigMap/ns/x (applied)\n@@"),
            "{text}"
        );
        assert!(text.contains("\n-  b: '2'\n+  b: '3'\n"), "{text}");
        assert!(
            !text.contains("resourceVersion") && !text.contains("managedFields"),
            "{text}"
        );
        assert!(unified("x", &old, &old).is_empty());
    }

    #[test]
    fn kustomization_files_must_be_the_named_kustomization() {
        let file = "apiVersion: kustomize.toolkit.fluxcd.io/v1
kind: Kustomization
metadata:
  name: app
spec:
  interval: 5m
  prune: true
  targetNamespace: web
  sourceRef:
    kind: GitRepository
    name: repo
";
        let ks = kustomization_from_file(file, "app", "team").unwrap();
        assert_eq!(ks.metadata.namespace.as_deref(), Some("team"));
        assert_eq!(ks.spec.target_namespace.as_deref(), Some("web"));
        assert!(ks.spec.prune);

        let e = kustomization_from_file(file, "other", "team").unwrap_err();
        assert_eq!(e, r#"metadata.name is "app", not "other""#);
        let e = kustomization_from_file("apiVersion: v1\nkind: ConfigMap\n", "app", "team")
            .unwrap_err();
        assert!(e.starts_with("not a Flux Kustomization"), "{e}");
        let e = kustomization_from_file("kind: [", "app", "team").unwrap_err();
        assert!(e.starts_with("invalid YAML"), "{e}");
        let e = kustomization_from_file(
            "apiVersion: kustomize.toolkit.fluxcd.io/v1\nkind: Kustomization\nspec: {}\n",
            "app",
            "team",
        )
        .unwrap_err();
        assert!(
            e.starts_with("invalid Kustomization") && e.contains("sourceRef"),
            "{e}"
        );
        let misspelt = file.replace("targetNamespace", "targetNamspace");
        let e = kustomization_from_file(&misspelt, "app", "team").unwrap_err();
        assert_eq!(
            e,
            "invalid Kustomization: spec.targetNamspace: unknown field `targetNamspace`"
        );
    }
}
