//! Building a Kustomization outside the controller, for `weir build kustomization` and
//! `weir diff kustomization`: the controller's own steps (build, `postBuild` substitution,
//! resolution with Flux's owner labels) run on a local directory or on the source's current
//! artifact, so what is printed is what the controller would apply.
//!
//! Deviations from a reconcile, on purpose: the objects are read and dry-run with the caller's
//! client (the user's kubeconfig, so RBAC decides) rather than an impersonated service
//! account, dependencies are not waited for, and nothing is written. A local directory is built
//! as the Kustomization's `spec.path` of an artifact whose root is the git work tree holding the
//! directory (or the directory itself outside git), so an overlay may load `../base` as it does
//! from the source, and nothing outside the repository.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use kube::{Api, Client, ResourceExt as _, api::DynamicObject};
use weir_api::{GitRepository, Kustomization, KustomizationSpec, kustomize::ResourceInventory};
use weir_runtime::{Redactor, controller::Base};
use weir_ssa::{ApplySet, KindCache, SsaError, Target, prune::Recorded};

use crate::{
    Config, Context, FeatureGates, Lockdown, StartError,
    build::{self, BuildError, BuildPlan, Manifest},
    error::KustomizeError,
    fetch::{self, ArtifactFetcher},
    inventory::{self, InventoryDiff},
    native, reconcile,
};

/// A controller context for building and diffing from the command line: `client` is the
/// user's. `kube_config` is only read to impersonate a service account, which these builds
/// never do. The kustomize binary is resolved on `PATH` when given by bare name.
pub fn context(
    client: Client,
    kube_config: kube::Config,
    kustomize_path: &Path,
    cache_dir: PathBuf,
) -> Result<Context, StartError> {
    let kustomize_path = build::find_binary(kustomize_path)
        .ok_or_else(|| StartError::KustomizeNotFound(kustomize_path.to_path_buf()))?;
    let fetcher = ArtifactFetcher::new(cache_dir.clone(), fetch::Limits::default())
        .map_err(StartError::Cache)?;
    Ok(Context {
        base: Base::new(client, crate::CONTROLLER_NAME),
        kube_config,
        config: Config {
            namespace: None,
            concurrency: 1,
            kustomize_path,
            cache_dir,
            dependency_requeue: Duration::from_secs(30),
            artifact_limits: fetch::Limits::default(),
            lockdown: Lockdown::default(),
            feature_gates: FeatureGates::default(),
            watches: None,
        },
        fetcher,
        kinds: KindCache::default(),
        metrics: std::sync::Arc::default(),
        builds: crate::built::BuildCache::default(),
        impersonated: std::sync::Mutex::default(),
        // No watches: a build reads the source it needs directly, and honours no rollback pin.
        sources: kube::runtime::reflector::store::Writer::default().as_reader(),
        locks: crate::lock::Locks::none(),
    })
}

/// Builds `spec.path` of the extracted artifact `tree` as the controller does: natively or
/// with kustomize (see [`build::plan`]), then `commonMetadata` on every object.
pub async fn build_tree(
    tree: &Path,
    spec: &KustomizationSpec,
    kustomize: &Path,
    timeout: Duration,
) -> Result<Vec<Manifest>, BuildError> {
    let mut manifests = match build::plan(tree, spec)? {
        BuildPlan::Native(manifests) => manifests,
        BuildPlan::Kustomize {
            relative_path,
            generated,
            loads,
        } => {
            let work = tempfile::tempdir()?;
            build::kustomize_build(
                work.path(),
                tree,
                spec,
                build::Planned {
                    relative_path: &relative_path,
                    generated: generated.as_ref(),
                    loads: &loads,
                },
                kustomize,
                timeout,
            )
            .await?
        }
    };
    if let Some(meta) = &spec.common_metadata {
        native::set_common_metadata(&mut manifests, &meta.labels, &meta.annotations);
    }
    Ok(manifests)
}

/// The artifact root a local directory is built in, and the directory's path from it: the
/// closest ancestor holding `.git` (a work tree, like the source's artifact), else the
/// directory itself.
pub fn local_root(dir: &Path) -> std::io::Result<(PathBuf, String)> {
    let dir = dir.canonicalize()?;
    if !dir.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            "not a directory",
        ));
    }
    let root = dir
        .ancestors()
        .find(|a| a.join(".git").exists())
        .unwrap_or(&dir)
        .to_path_buf();
    let relative = dir.strip_prefix(&root).unwrap_or(Path::new(""));
    Ok((root.clone(), format!("./{}", relative.display())))
}

/// What applying `ks` would apply: built from the local directory `dir` (its `spec.path`
/// replaced by it), or without one from its source's current artifact; its `postBuild`
/// variables substituted (read from the cluster with the context's client); every object's kind
/// resolved and Flux's owner labels set, as a reconcile does; in build order.
/// The values of the set's Secrets and of `substituteFrom` Secrets are registered with
/// `redactor`, for the caller to mask messages with (the error's too).
pub async fn render(
    ks: &Kustomization,
    ctx: &Context,
    dir: Option<&Path>,
    redactor: &mut Redactor,
) -> Result<Vec<Target>, KustomizeError> {
    let timeout = ks.spec.timeout();
    let kustomize = &ctx.config.kustomize_path;
    let built = if let Some(dir) = dir {
        let (root, path) = local_root(dir).map_err(|e| KustomizeError::Build(e.into()))?;
        let spec = KustomizationSpec {
            path: Some(path),
            ..ks.spec.clone()
        };
        build_tree(&root, &spec, kustomize, timeout).await
    } else {
        let artifact = source_artifact(ks, ctx).await?;
        let extracted = ctx
            .fetcher
            .extracted(&artifact)
            .await
            .map_err(KustomizeError::Fetch)?;
        build_tree(&extracted.tree, &ks.spec, kustomize, timeout).await
    };
    let manifests = built.map_err(KustomizeError::Build)?;
    let manifests = reconcile::substitute_variables(ks, ctx, manifests, redactor).await?;
    for manifest in &manifests {
        reconcile::register_secret_values(&manifest.object, redactor);
    }
    reconcile::resolve(ks, ctx, &ctx.base.client, manifests).await
}

/// The objects (`Kind/namespace/name`) that applying `targets` would prune: with `spec.prune`,
/// the entries of the live Kustomization's inventory that left the set and whose live object
/// still carries its owner labels and no annotation keeping it ([`ApplySet::prunable`], the
/// rule the prune itself follows). Only read, never deleted.
pub async fn pruned(
    ks: &Kustomization,
    inventory: Option<&ResourceInventory>,
    ctx: &Context,
    targets: &[Target],
) -> Result<Vec<String>, KustomizeError> {
    if !ks.spec.prune {
        return Ok(vec![]);
    }
    let new = inventory::inventory(
        targets
            .iter()
            .map(|t| inventory::entry(&t.meta, &t.api_version)),
    );
    let (name, namespace) = (ks.name_any(), ks.namespace().unwrap_or_default());
    let owner = reconcile::owner_labels(&name, &namespace);
    let client = &ctx.base.client;
    let mut out = vec![];
    for Recorded { meta, version } in InventoryDiff::between(inventory, &new).to_prune() {
        let object = weir_ssa::object::display(&meta);
        let served = KindCache::resolve_served(
            client,
            ctx.metrics.as_ref(),
            &meta.group,
            &version,
            &meta.kind,
        )
        .await
        .map_err(|source| {
            KustomizeError::Prune(SsaError::PruneDiscovery {
                object: object.clone(),
                source: source.into(),
            })
        })?;
        let Some((resource, namespaced)) = served else {
            continue;
        };
        let api: Api<DynamicObject> = if namespaced {
            Api::namespaced_with(client.clone(), &meta.namespace, &resource)
        } else {
            Api::all_with(client.clone(), &resource)
        };
        let live = api
            .get_opt(&meta.name)
            .await
            .map_err(KustomizeError::Kube)?;
        if live.is_some_and(|live| ApplySet::prunable(&live, &owner)) {
            out.push(object);
        }
    }
    Ok(out)
}

/// The current artifact of the Kustomization's source.
async fn source_artifact(
    ks: &Kustomization,
    ctx: &Context,
) -> Result<weir_api::Artifact, KustomizeError> {
    let reference = &ks.spec.source_ref;
    let namespace = reference
        .namespace
        .clone()
        .or_else(|| ks.namespace())
        .unwrap_or_default();
    let key = format!("{}/{namespace}/{}", reference.kind.as_str(), reference.name);
    // Not retried here: the duration only shapes the controller's requeue.
    let retry = Duration::ZERO;
    let source = Api::<GitRepository>::namespaced(ctx.base.client.clone(), &namespace)
        .get_opt(&reference.name)
        .await
        .map_err(KustomizeError::Kube)?
        .ok_or_else(|| KustomizeError::SourceNotFound(key.clone(), retry))?;
    source
        .status
        .and_then(|s| s.artifact)
        .ok_or(KustomizeError::ArtifactNotReady(key, retry))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_in_a_git_work_tree_is_built_from_the_work_trees_root() {
        let repo = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(repo.path().join(".git")).unwrap();
        std::fs::create_dir_all(repo.path().join("apps/web")).unwrap();
        let (root, path) = local_root(&repo.path().join("apps/web")).unwrap();
        assert_eq!(root, repo.path().canonicalize().unwrap());
        assert_eq!(path, "./apps/web");

        let plain = tempfile::tempdir().unwrap();
        let (root, path) = local_root(plain.path()).unwrap();
        assert_eq!(root, plain.path().canonicalize().unwrap());
        assert_eq!(path, "./");

        assert!(local_root(&plain.path().join("missing")).is_err());
    }

    #[tokio::test]
    async fn spec_level_fields_are_applied_to_a_native_build() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("cm.yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n",
        )
        .unwrap();
        let spec: KustomizationSpec = serde_json::from_value(serde_json::json!({
            "sourceRef": {"kind": "GitRepository", "name": "x"},
            "interval": "10m",
            "prune": true,
            "targetNamespace": "apps",
            "commonMetadata": {"labels": {"team": "web"}},
        }))
        .unwrap();
        let built = build_tree(
            dir.path(),
            &spec,
            Path::new("kustomize"),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        assert_eq!(built.len(), 1);
        let object = &built[0].object;
        assert_eq!(object.pointer("/metadata/namespace").unwrap(), "apps");
        assert_eq!(object.pointer("/metadata/labels/team").unwrap(), "web");
        assert_eq!(built[0].file, "cm.yaml");
    }
}
