//! `spec.postRenderers`: Helm 4 runs post-renderers only as plugins, so Weir gives each Helm a
//! plugin `weir-post-render` (in its private plugin directory) whose command is the `weir`
//! binary's hidden `helm-post-render` subcommand. Helm pipes the rendered manifests through it;
//! it applies each post-renderer in order with the real `kustomize` (the manifests as the one
//! resource of a kustomization holding the patches and images), with an empty environment and
//! no plugins, and writes the result back.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};
use weir_api::helm_release::PostRenderer;

/// The plugin's name, as `--post-renderer` takes it.
pub const PLUGIN_NAME: &str = "weir-post-render";
/// The hidden `weir` subcommand the plugin runs.
pub const SUBCOMMAND: &str = "helm-post-render";
/// The most bytes of rendered manifests read from Helm.
const MAX_INPUT: u64 = 64 * 1024 * 1024;

/// Why post-rendering failed (printed to Helm, which reports it as the action's error).
#[derive(Debug, thiserror::Error)]
pub enum PostRenderError {
    #[error("cannot read the post-renderers from {path}")]
    Spec {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the post-renderers in {path} are not valid")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("post-rendering: {0}")]
    Io(#[source] std::io::Error),
    #[error("the rendered manifests are larger than {MAX_INPUT} bytes")]
    TooLarge,
    #[error("postRenderers[{index}]: kustomize build failed: {message}")]
    Kustomize { index: usize, message: String },
}

/// `plugin.yaml` of the plugin that runs `weir` at `weir_binary`.
#[must_use]
pub fn plugin_yaml(weir_binary: &Path) -> String {
    let command = serde_json::to_string(&weir_binary.display().to_string()).unwrap_or_default();
    format!(
        "apiVersion: v1\ntype: postrenderer/v1\nname: {PLUGIN_NAME}\nversion: 0.1.0\nruntime: subprocess\nruntimeConfig:\n  platformCommand:\n    - command: {command}\n      args: [{SUBCOMMAND}]\n"
    )
}

/// The digest of `renderers` (`sha256:<hex>` of their JSON), recorded in
/// `status.observedPostRenderersDigest`; `None` without post-renderers.
#[must_use]
pub fn digest(renderers: &[PostRenderer]) -> Option<String> {
    if renderers.is_empty() {
        return None;
    }
    let json = serde_json::to_vec(renderers).unwrap_or_default();
    Some(format!("sha256:{}", hex::encode(Sha256::digest(json))))
}

/// Where the subcommand leaves its error for the controller, beside the renderers file: Helm 4
/// reports only that a post-renderer plugin failed, not what it said.
#[must_use]
pub fn error_path(spec: &Path) -> PathBuf {
    spec.with_extension("error")
}

/// Runs [`run`] on stdin and stdout as the `helm-post-render` subcommand; an error is also left
/// at [`error_path`] for the controller to report.
pub fn run_as_plugin(spec: &Path, kustomize: &Path) -> Result<(), PostRenderError> {
    let (mut stdin, mut stdout) = (std::io::stdin().lock(), std::io::stdout().lock());
    let result = run(spec, kustomize, &mut stdin, &mut stdout);
    if let Err(error) = &result {
        let _ = std::fs::write(error_path(spec), weir_runtime::chain(error));
    }
    result
}

/// The `helm-post-render` subcommand: reads the rendered manifests from `input`, applies the
/// post-renderers written at `spec` with the `kustomize` binary, writes the result to `output`.
pub fn run(
    spec: &Path,
    kustomize: &Path,
    input: &mut impl Read,
    output: &mut impl Write,
) -> Result<(), PostRenderError> {
    let text = std::fs::read(spec).map_err(|source| PostRenderError::Spec {
        path: spec.to_owned(),
        source,
    })?;
    let renderers: Vec<PostRenderer> =
        serde_json::from_slice(&text).map_err(|source| PostRenderError::Parse {
            path: spec.to_owned(),
            source,
        })?;
    let mut manifests = Vec::new();
    input
        .take(MAX_INPUT + 1)
        .read_to_end(&mut manifests)
        .map_err(PostRenderError::Io)?;
    if manifests.len() as u64 > MAX_INPUT {
        return Err(PostRenderError::TooLarge);
    }
    for (index, renderer) in renderers.iter().enumerate() {
        let Some(kustomize_spec) = &renderer.kustomize else {
            continue;
        };
        manifests = kustomize_build(kustomize, &manifests, kustomize_spec, index)?;
    }
    output.write_all(&manifests).map_err(PostRenderError::Io)
}

/// One kustomize pass over `manifests`.
fn kustomize_build(
    kustomize: &Path,
    manifests: &[u8],
    spec: &weir_api::helm_release::KustomizePostRenderer,
    index: usize,
) -> Result<Vec<u8>, PostRenderError> {
    let dir = tempfile::tempdir().map_err(PostRenderError::Io)?;
    std::fs::write(dir.path().join("manifests.yaml"), manifests).map_err(PostRenderError::Io)?;
    let kustomization = serde_json::json!({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["manifests.yaml"],
        "patches": spec.patches,
        "images": spec.images,
    });
    // JSON is YAML: kustomize reads it as it is.
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        serde_json::to_vec_pretty(&kustomization).unwrap_or_default(),
    )
    .map_err(PostRenderError::Io)?;
    let out = Command::new(kustomize)
        .arg("build")
        .arg(dir.path())
        .env_clear()
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .map_err(PostRenderError::Io)?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let message = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no output")
            .trim()
            .replace(&dir.path().display().to_string(), "");
        return Err(PostRenderError::Kustomize { index, message });
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_plugin_runs_weirs_subcommand() {
        let yaml = plugin_yaml(Path::new("/usr/local/bin/weir"));
        let parsed: serde_json::Value = serde_yaml_ng::from_str(&yaml).unwrap();
        assert_eq!(parsed["type"], "postrenderer/v1");
        assert_eq!(parsed["name"], PLUGIN_NAME);
        assert_eq!(
            parsed["runtimeConfig"]["platformCommand"][0]["command"],
            "/usr/local/bin/weir"
        );
        assert_eq!(
            parsed["runtimeConfig"]["platformCommand"][0]["args"][0],
            SUBCOMMAND
        );
    }

    #[test]
    fn digests_change_with_the_renderers() {
        assert_eq!(digest(&[]), None);
        let one: Vec<PostRenderer> = serde_json::from_value(serde_json::json!([
            { "kustomize": { "images": [{ "name": "app", "newTag": "2" }] } }
        ]))
        .unwrap();
        let two: Vec<PostRenderer> = serde_json::from_value(serde_json::json!([
            { "kustomize": { "images": [{ "name": "app", "newTag": "3" }] } }
        ]))
        .unwrap();
        assert!(digest(&one).unwrap().starts_with("sha256:"));
        assert_ne!(digest(&one), digest(&two));
    }

    /// With the pinned kustomize (skipped when the tools are not built).
    #[test]
    fn patches_and_images_are_applied_in_order() {
        let kustomize =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/bin/current/kustomize");
        if !kustomize.exists() {
            eprintln!("skipped: {} not built (make tools)", kustomize.display());
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let spec = dir.path().join("renderers.json");
        std::fs::write(
            &spec,
            serde_json::to_vec(&serde_json::json!([
                { "kustomize": { "images": [{ "name": "registry.invalid/app", "newTag": "2" }] } },
                { "kustomize": { "patches": [{
                    "patch": "- op: add\n  path: /metadata/labels/post\n  value: rendered\n",
                    "target": { "kind": "Deployment" },
                }] } },
            ]))
            .unwrap(),
        )
        .unwrap();
        let input = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  labels: {app: web}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers:\n        - name: app\n          image: registry.invalid/app:1\n";
        let mut out = Vec::new();
        run(&spec, &kustomize, &mut input.as_bytes(), &mut out).unwrap();
        let rendered: serde_json::Value = serde_yaml_ng::from_slice(&out).unwrap();
        assert_eq!(rendered["metadata"]["labels"]["post"], "rendered");
        assert_eq!(
            rendered["spec"]["template"]["spec"]["containers"][0]["image"],
            "registry.invalid/app:2"
        );

        // A patch that does not apply names the post-renderer.
        std::fs::write(
            &spec,
            br#"[{"kustomize":{"patches":[{"patch":"- op: replace\n  path: /spec/nothing/here\n  value: 1\n","target":{"kind":"Deployment"}}]}}]"#,
        )
        .unwrap();
        let error = run(&spec, &kustomize, &mut input.as_bytes(), &mut Vec::new()).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("postRenderers[0]: kustomize build failed"),
            "{error}"
        );
    }
}
