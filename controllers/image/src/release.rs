//! What `weir release` (a manual release, as `fluxctl release` did) needs from the image side:
//! the image a release names, whether its registry has that tag, and the edit of a workload's
//! image fields in its YAML.
//!
//! The edit works on text, as the setters do: only the image value changes; every other byte of
//! the file (comments, quoting, indentation, other documents, line endings) stays. It writes the
//! field whether or not it carries an `$imagepolicy` marker (as `fluxctl release` did) and
//! reports the marker, since image automation may move a marked field again.

use oci_client::{Reference, errors::OciDistributionError, errors::OciErrorCode};
use serde_json::Value;
use weir_api::ImageRepository;

use crate::{
    error::ImageError,
    scan,
    setters::{self, Change, MarkerError, ObjectId},
};

/// The image of a release: `repository:tag`, the tag given explicitly.
#[derive(Debug, Clone)]
pub struct ReleaseImage {
    /// The repository as given (`reg.example/app`).
    pub repository: String,
    pub tag: String,
    reference: Reference,
}

impl ReleaseImage {
    /// Parses `repository:tag`. A missing tag (which registries read as `latest`) or a digest is
    /// refused: a release names the tag it deploys.
    pub fn parse(image: &str) -> Result<Self, String> {
        if image.contains("://") {
            return Err(format!("{image:?}: give the image without a scheme"));
        }
        if image.contains('@') {
            return Err(format!(
                "{image:?}: give a tag (repository:tag), not a digest"
            ));
        }
        let (repository, tag) = image
            .rsplit_once(':')
            .filter(|(_, tag)| !tag.contains('/') && !tag.is_empty())
            .ok_or_else(|| format!("{image:?}: give the tag to release (repository:tag)"))?;
        let reference: Reference = image
            .parse()
            .map_err(|e| format!("{image:?} is not an image reference: {e}"))?;
        Ok(Self {
            repository: repository.to_owned(),
            tag: tag.to_owned(),
            reference,
        })
    }

    /// `repository:tag` as given.
    #[must_use]
    pub fn reference(&self) -> String {
        format!("{}:{}", self.repository, self.tag)
    }

    /// `registry/repository` with the registry explicit, as an ImageRepository's status names it.
    #[must_use]
    pub fn canonical_name(&self) -> String {
        scan::canonical_name(&self.reference)
    }

    /// Whether `image` (any reference, with or without tag or digest) is of this repository,
    /// once both are normalized (`nginx` is `docker.io/library/nginx`).
    #[must_use]
    pub fn same_repository(&self, image: &str) -> bool {
        image.parse::<Reference>().is_ok_and(|r| {
            r.registry() == self.reference.registry()
                && r.repository() == self.reference.repository()
        })
    }

    /// Whether `image` is this repository at this tag (its digest, if any, aside).
    #[must_use]
    pub fn is_running_in(&self, image: &str) -> bool {
        self.same_repository(image)
            && image
                .parse::<Reference>()
                .is_ok_and(|r| r.tag() == Some(self.tag.as_str()))
    }

    /// `image` (this repository, as the file spells it) with this tag and no digest: a digest
    /// would pin the old image.
    fn retag(&self, image: &str) -> String {
        let name = image.split_once('@').map_or(image, |(name, _)| name);
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let name = match name[last_slash..].rfind(':') {
            Some(colon) => &name[..last_slash + colon],
            None => name,
        };
        format!("{name}:{}", self.tag)
    }
}

/// The workload a release is for, as its YAML document names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl Workload {
    /// Whether a document is this workload: same kind and name, and same namespace when the
    /// document gives one (a Kustomization's `targetNamespace` may set it otherwise).
    fn is(&self, object: &ObjectId) -> bool {
        object.kind == self.kind
            && object.name == self.name
            && (object.namespace.is_empty() || object.namespace == self.namespace)
    }
}

/// What [`set_image`] did to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageEdit {
    /// The new text (the old one, byte for byte, when nothing changed).
    pub text: String,
    /// Every rewritten image field; `setter` is the field's `$imagepolicy` marker, empty when it
    /// has none.
    pub changes: Vec<Change>,
    /// How many image fields of the workload name the repository, changed or already at the tag.
    pub matched: usize,
}

/// Sets the image fields (`image: …` of the pod template's containers) of `workload` in `text`
/// whose repository is `image`'s to `image`'s tag, keeping the file's spelling of the repository.
/// A field in flow style (`{image: …}`) is not found; a malformed marker on a field is an error.
pub fn set_image(
    file: &str,
    text: &str,
    workload: &Workload,
    image: &ReleaseImage,
) -> Result<ImageEdit, MarkerError> {
    let docs = setters::documents(text);
    let doc_of = |number: usize| docs.iter().rposition(|(first, _)| *first <= number);
    let mut bodies = vec![String::new(); docs.len()];
    for (i, line) in text.split_inclusive('\n').enumerate() {
        // The separator that ends a document is no part of it.
        let separator = line.trim_end() == "---" || line.starts_with("--- ");
        if let Some(d) = doc_of(i + 1).filter(|d| !separator && workload.is(&docs[*d].1)) {
            // As `setters::documents` reads them: without carriage returns.
            bodies[d].push_str(line.trim_end_matches(['\r', '\n']));
            bodies[d].push('\n');
        }
    }
    let images: Vec<Vec<String>> = bodies.iter().map(|b| container_images(b)).collect();
    let mut out = String::with_capacity(text.len());
    let mut changes = vec![];
    let mut matched = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let number = i + 1;
        let Some(d) = doc_of(number).filter(|d| workload.is(&docs[*d].1)) else {
            out.push_str(line);
            continue;
        };
        let Some((start, end, setter)) = image_field(file, line, number)? else {
            out.push_str(line);
            continue;
        };
        let old_value = &line[start..end];
        if !image.same_repository(old_value) || !images[d].iter().any(|i| i == old_value) {
            out.push_str(line);
            continue;
        }
        matched += 1;
        let new_value = image.retag(old_value);
        if new_value == old_value {
            out.push_str(line);
            continue;
        }
        out.push_str(&line[..start]);
        out.push_str(&new_value);
        out.push_str(&line[end..]);
        changes.push(Change {
            line: number,
            setter,
            old_value: old_value.to_owned(),
            new_value,
            object: docs[d].1.clone(),
        });
    }
    Ok(ImageEdit {
        text: out,
        changes,
        matched,
    })
}

/// The value span of an `image:` (or `- image:`) line, quotes excluded, and its marker's setter
/// (empty without one).
fn image_field(
    file: &str,
    line: &str,
    number: usize,
) -> Result<Option<(usize, usize, String)>, MarkerError> {
    let key = line.trim_start();
    let key = key.strip_prefix("- ").map_or(key, str::trim_start);
    if !key.starts_with("image:") {
        return Ok(None);
    }
    let (before, setter) = match setters::find_marker(line, file, number)? {
        Some(marker) => (&line[..marker.comment_start], marker.setter),
        // An image reference holds no `#` or blank: the first ` #` starts a comment.
        None => (
            line.find(" #")
                .or_else(|| line.find("\t#"))
                .map_or(line, |c| &line[..c]),
            String::new(),
        ),
    };
    let Some((start, end)) = setters::value_span(before) else {
        return Ok(None);
    };
    let (start, end) = setters::unquoted(before, start, end);
    Ok(Some((start, end, setter)))
}

/// The images of every container list (`containers`, `initContainers`, `ephemeralContainers`)
/// in a YAML document, at any depth (a CronJob's are under `jobTemplate`).
fn container_images(body: &str) -> Vec<String> {
    fn walk(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    if matches!(
                        key.as_str(),
                        "containers" | "initContainers" | "ephemeralContainers"
                    ) && let Value::Array(list) = v
                    {
                        out.extend(
                            list.iter()
                                .filter_map(|c| c.get("image")?.as_str().map(str::to_owned)),
                        );
                    }
                    walk(v, out);
                }
            }
            Value::Array(list) => list.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = vec![];
    if let Ok(value) = serde_yaml_ng::from_str::<Value>(body) {
        walk(&value, &mut out);
    }
    out
}

/// The `images:` entry of a kustomize `kustomization.yaml` (its `text`) naming `image`'s
/// repository, if it has one: kustomize sets that image over the workloads' own fields, so a
/// release that edits a field would change nothing.
#[must_use]
pub fn kustomize_override(text: &str, image: &ReleaseImage) -> Option<String> {
    let config: Value = serde_yaml_ng::from_str(text).ok()?;
    let api_version = config.get("apiVersion").and_then(Value::as_str);
    if api_version.is_some_and(|v| !v.starts_with("kustomize.config.k8s.io/")) {
        return None;
    }
    config
        .get("images")?
        .as_array()?
        .iter()
        .filter_map(|entry| entry.get("name")?.as_str())
        .find(|name| image.same_repository(name))
        .map(str::to_owned)
}

/// Whether the registry has the release's tag: a manifest `HEAD` (a `GET` when the registry
/// sends no digest), with the access `repository` (an ImageRepository scanning this image) gives
/// (its credentials, CA and proxy), else anonymously; a local registry is asked over HTTPS, then
/// plain HTTP, as a scan does. `client` reads the ImageRepository's Secrets.
pub async fn tag_exists(
    client: &kube::Client,
    repository: Option<&ImageRepository>,
    image: &ReleaseImage,
) -> Result<bool, ImageError> {
    let (repo, namespace) = if let Some(r) = repository {
        (r.clone(), r.metadata.namespace.clone().unwrap_or_default())
    } else {
        // No Secrets, so none is read: anonymous.
        let spec = serde_json::from_value(serde_json::json!({
            "image": image.canonical_name(),
            "interval": "1m",
        }))
        .map_err(|_| ImageError::InvalidImage {
            image: image.reference(),
            why: "not a repository an ImageRepository could scan",
        })?;
        (ImageRepository::new("weir-release", spec), String::new())
    };
    let (access, _) = scan::registry_access(client, &repo, &namespace, &image.reference).await?;
    match access
        .client()?
        .fetch_manifest_digest(&image.reference, &access.auth)
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if not_found(&e) => Ok(false),
        Err(e) => Err(scan::registry_error(&image.reference(), e)),
    }
}

/// Whether the registry said that the repository or the tag does not exist.
fn not_found(error: &OciDistributionError) -> bool {
    match error {
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|e| {
            matches!(
                e.code,
                OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown | OciErrorCode::NotFound
            )
        }),
        OciDistributionError::ServerError { code, .. } => *code == 404,
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    fn image(i: &str) -> ReleaseImage {
        ReleaseImage::parse(i).unwrap()
    }

    fn app() -> Workload {
        Workload {
            kind: "Deployment".into(),
            namespace: "apps".into(),
            name: "app".into(),
        }
    }

    #[test]
    fn a_release_names_a_tag() {
        let i = image("reg.example:5000/team/app:1.2.0");
        assert_eq!(i.repository, "reg.example:5000/team/app");
        assert_eq!(i.tag, "1.2.0");
        assert_eq!(i.reference(), "reg.example:5000/team/app:1.2.0");
        for bad in [
            "reg.example:5000/team/app",
            "app",
            "app@sha256:abc",
            "https://reg/app:1",
            "app:",
        ] {
            assert!(ReleaseImage::parse(bad).is_err(), "{bad}");
        }
        assert!(image("nginx:1.27").same_repository("docker.io/library/nginx:1.25"));
        assert!(image("nginx:1.27").same_repository("nginx"));
        assert!(!image("nginx:1.27").same_repository("reg.example/nginx:1.27"));
        assert!(image("nginx:1.27").is_running_in("docker.io/library/nginx:1.27"));
        assert!(!image("nginx:1.27").is_running_in("nginx:1.26"));
        assert_eq!(
            image("r:5000/app:2").retag("r:5000/app:1@sha256:abc"),
            "r:5000/app:2"
        );
        assert_eq!(image("r:5000/app:2").retag("r:5000/app"), "r:5000/app:2");
    }

    #[test]
    fn only_the_workloads_image_field_changes_byte_for_byte() {
        let before = r#"# the app
apiVersion: apps/v1
kind: Deployment
metadata:
  name: app   # kept
  namespace: apps
spec:
  template:
    spec:
      initContainers:
        - image: "reg.example/app:1.0.0"   # migrations
          name: migrate
      containers:
        - name: app
          image: reg.example/app:1.0.0 # {"$imagepolicy": "apps:app"}
        - name: sidecar
          image: reg.example/proxy:3.0
      # image: reg.example/app:0.1 (a comment, not a field)
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: other
  namespace: apps
spec:
  template:
    spec:
      containers:
        - name: app
          image: reg.example/app:1.0.0
"#
        .replace('\n', "\r\n");
        let after = before
            .replacen("\"reg.example/app:1.0.0\"", "\"reg.example/app:1.1.0\"", 1)
            .replacen(
                "image: reg.example/app:1.0.0 #",
                "image: reg.example/app:1.1.0 #",
                1,
            );
        let edit = set_image(
            "deploy.yaml",
            &before,
            &app(),
            &image("reg.example/app:1.1.0"),
        )
        .unwrap();
        assert_eq!(edit.text, after);
        assert_eq!(edit.matched, 2);
        assert_eq!(edit.changes.len(), 2);
        assert_eq!(edit.changes[0].line, 11);
        assert_eq!(edit.changes[0].setter, "");
        assert_eq!(edit.changes[1].line, 15);
        assert_eq!(edit.changes[1].setter, "apps:app");
        assert_eq!(edit.changes[1].old_value, "reg.example/app:1.0.0");
        assert_eq!(edit.changes[1].new_value, "reg.example/app:1.1.0");
        assert_eq!(edit.changes[1].object.name, "app");
        // Again: found, already there, nothing changes.
        let again = set_image(
            "deploy.yaml",
            &edit.text,
            &app(),
            &image("reg.example/app:1.1.0"),
        )
        .unwrap();
        assert_eq!(again.text, edit.text);
        assert_eq!((again.matched, again.changes.len()), (2, 0));
    }

    #[test]
    fn other_workloads_namespaces_and_repositories_are_not_found() {
        let text = "kind: Deployment\nmetadata:\n  name: app\n  namespace: prod\nspec:\n  template:\n    spec:\n      containers:\n      - image: reg.example/app:1\n";
        let edit = set_image("d.yaml", text, &app(), &image("reg.example/app:2")).unwrap();
        assert_eq!((edit.text.as_str(), edit.matched), (text, 0));
        let unnamespaced = text.replace("  namespace: prod\n", "");
        let edit = set_image("d.yaml", &unnamespaced, &app(), &image("reg.example/app:2")).unwrap();
        assert_eq!(edit.matched, 1);
        assert!(edit.text.contains("- image: reg.example/app:2\n"));
        let edit = set_image("d.yaml", &unnamespaced, &app(), &image("reg.example/db:2")).unwrap();
        assert_eq!(edit.matched, 0);
        let cronjob = "kind: CronJob\nmetadata: {name: app}\nspec:\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          containers:\n          - name: c\n            image: 'reg.example/app:1'\n";
        let job = Workload {
            kind: "CronJob".into(),
            ..app()
        };
        let edit = set_image("cj.yaml", cronjob, &job, &image("reg.example/app:2")).unwrap();
        assert!(
            edit.text.ends_with("image: 'reg.example/app:2'\n"),
            "{}",
            edit.text
        );
    }

    #[test]
    fn a_kustomize_images_entry_for_the_repository_is_an_override() {
        let i = image("reg.example/app:2");
        let config = "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
                      resources: [deploy.yaml]\nimages:\n- name: reg.example/db\n  newTag: '1'\n\
                      - name: reg.example/app\n  newTag: '1'\n";
        assert_eq!(
            kustomize_override(config, &i).as_deref(),
            Some("reg.example/app")
        );
        let other = config.replace("reg.example/app", "reg.example/web");
        assert_eq!(kustomize_override(&other, &i), None);
        let flux = config.replace(
            "kustomize.config.k8s.io/v1beta1",
            "kustomize.toolkit.fluxcd.io/v1",
        );
        assert_eq!(kustomize_override(&flux, &i), None);
        assert_eq!(kustomize_override("a: [", &i), None);
    }

    #[test]
    fn a_malformed_marker_on_the_field_is_an_error() {
        let text = "kind: Deployment\nmetadata:\n  name: app\nspec:\n  template:\n    spec:\n      containers:\n      - image: reg.example/app:1 # {\"$imagepolicy\": apps}\n";
        let err = set_image("d.yaml", text, &app(), &image("reg.example/app:2")).unwrap_err();
        assert!(err.to_string().contains("d.yaml:8"), "{err}");
    }

    #[test]
    fn missing_tags_and_repositories_are_told_apart_from_failures() {
        let envelope = |code| OciDistributionError::RegistryError {
            envelope: oci_client::errors::OciEnvelope {
                errors: vec![oci_client::errors::OciError {
                    code,
                    message: String::new(),
                    detail: Value::Null,
                }],
            },
            url: String::new(),
        };
        assert!(not_found(&envelope(OciErrorCode::ManifestUnknown)));
        assert!(not_found(&envelope(OciErrorCode::NameUnknown)));
        assert!(!not_found(&envelope(OciErrorCode::Denied)));
        assert!(!not_found(&OciDistributionError::UnauthorizedError {
            url: String::new()
        }));
    }
}
