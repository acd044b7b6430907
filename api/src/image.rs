//! The image automation kinds (image.toolkit.fluxcd.io/v1): `ImageRepository` scans a
//! registry's tags, `ImagePolicy` picks the latest allowed tag, and `ImageUpdateAutomation`
//! writes the picks into git at the `$imagepolicy` markers.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    Condition, CrossNamespaceSourceReference, GoDuration, LocalObjectReference,
    meta::{AccessFrom, NamespacedObjectReference},
    source::GitRepositoryRef,
};

/// The API group of the image kinds.
pub const IMAGE_GROUP: &str = "image.toolkit.fluxcd.io";

/// The exclusion list Flux applies when `spec.exclusionList` is not set: cosign signatures.
pub const DEFAULT_EXCLUSION_LIST: &[&str] = &[r"^.*\.sig$"];

/// The desired state of an `ImageRepository`.
#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[kube(
    group = "image.toolkit.fluxcd.io",
    version = "v1",
    kind = "ImageRepository",
    plural = "imagerepositories",
    namespaced,
    status = "ImageRepositoryStatus",
    shortname = "imgrepo",
    shortname = "imagerepo",
    category = "all",
    category = "fluxcd",
    category = "fluxcd-images",
    doc = "ImageRepository is the Schema for the imagerepositories API.",
    printcolumn(name = "Image", type_ = "string", json_path = ".spec.image"),
    printcolumn(
        name = "Tags",
        type_ = "string",
        json_path = ".status.lastScanResult.tagCount"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].message"#
    ),
    printcolumn(
        name = "Last scan",
        type_ = "string",
        json_path = ".status.lastScanResult.scanTime",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ImageRepositorySpec {
    /// The image repository to scan, such as `ghcr.io/org/app` (no tag or digest).
    pub image: String,
    /// How often to scan the registry for tags.
    pub interval: GoDuration,
    /// Timeout of one scan; defaults to `interval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<GoDuration>,
    /// A `kubernetes.io/dockerconfigjson` Secret in the same namespace with the registry's
    /// credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,
    /// A Secret in the same namespace whose `ca.crt` (PEM) the registry's certificate must chain
    /// to, in addition to the system's trust store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_secret_ref: Option<LocalObjectReference>,
    /// A Secret in the same namespace with the HTTP(S) proxy the registry is reached through:
    /// `address` (such as `http://proxy:3128`), and optionally `username` and `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_secret_ref: Option<LocalObjectReference>,
    /// A ServiceAccount in the same namespace whose `kubernetes.io/dockerconfigjson`
    /// `imagePullSecrets` give the registry's credentials (after `secretRef`'s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub service_account_name: Option<String>,
    /// Which namespaces' ImagePolicies may use this repository; only its own when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_from: Option<AccessFrom>,
    /// Where registry credentials come from: `generic` (Secrets) or a cloud's workload
    /// identity (`aws`, `azure`, `gcp`), which Weir does not implement.
    #[serde(default)]
    pub provider: RegistryProvider,
    /// Talk to the registry over plain HTTP.
    #[serde(default)]
    pub insecure: bool,
    /// Regular expressions; tags matching any are not recorded. Defaults to `^.*\.sig$`.
    #[serde(default = "default_exclusion_list")]
    #[schemars(length(max = 25))]
    pub exclusion_list: Vec<String>,
    /// Stop scanning.
    #[serde(default)]
    pub suspend: bool,
}

/// Where an ImageRepository's registry credentials come from.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RegistryProvider {
    /// `secretRef` and the ServiceAccount's pull secrets.
    #[default]
    Generic,
    /// Amazon ECR, through the node's or pod's AWS identity.
    Aws,
    /// Azure Container Registry, through Azure workload identity.
    Azure,
    /// Google Artifact Registry, through the GCP metadata server.
    Gcp,
}

impl RegistryProvider {
    /// The name as written in `spec.provider`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Generic => "generic",
            Self::Aws => "aws",
            Self::Azure => "azure",
            Self::Gcp => "gcp",
        }
    }
}

fn default_exclusion_list() -> Vec<String> {
    DEFAULT_EXCLUSION_LIST
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
}

impl ImageRepositorySpec {
    /// The scan timeout: `spec.timeout`, or `spec.interval` when not set.
    #[must_use]
    pub fn scan_timeout(&self) -> std::time::Duration {
        self.timeout.as_ref().unwrap_or(&self.interval).as_std()
    }
}

/// The observed state of an `ImageRepository`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageRepositoryStatus {
    /// The last generation reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions of the object.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The image name with the registry host made explicit, such as
    /// `index.docker.io/library/nginx`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canonical_image_name: Option<String>,
    /// The result of the last successful scan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scan_result: Option<ScanResult>,
    /// The exclusion list the last scan applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub observed_exclusion_list: Vec<String>,
    /// The last `reconcile.fluxcd.io/requestedAt` value handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,
}

/// What a scan found.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScanResult {
    /// A digest of the recorded tag list (`sha256:<hex>`); it changes exactly when the list does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// How many tags were recorded (after the exclusion list).
    pub tag_count: i64,
    /// When the scan finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan_time: Option<Time>,
    /// Up to ten tags, in descending alphabetical order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latest_tags: Vec<String>,
}

/// The desired state of an `ImagePolicy`.
#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[kube(
    group = "image.toolkit.fluxcd.io",
    version = "v1",
    kind = "ImagePolicy",
    plural = "imagepolicies",
    namespaced,
    status = "ImagePolicyStatus",
    shortname = "imgpol",
    shortname = "imagepol",
    category = "all",
    category = "fluxcd",
    category = "fluxcd-images",
    doc = "ImagePolicy is the Schema for the imagepolicies API.",
    printcolumn(name = "Image", type_ = "string", json_path = ".status.latestRef.name"),
    printcolumn(name = "Tag", type_ = "string", json_path = ".status.latestRef.tag"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].message"#
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ImagePolicySpec {
    /// The ImageRepository whose tags are chosen from; in another namespace only when its
    /// `spec.accessFrom` admits this policy's namespace.
    pub image_repository_ref: NamespacedObjectReference,
    /// How to order the tags to find the latest.
    pub policy: ImagePolicyChoice,
    /// Which tags take part, and which part of each tag is compared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_tags: Option<TagFilter>,
    /// Whether to look up and record the digest of the chosen tag.
    #[serde(default)]
    pub digest_reflection_policy: ReflectionPolicy,
    /// How often to look the digest up again; required with `digestReflectionPolicy: Always`
    /// and only allowed with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<GoDuration>,
    /// Stop evaluating the policy: `latestRef` and the conditions stay as they are.
    #[serde(default)]
    pub suspend: bool,
}

/// Exactly one way of ordering tags.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum ImagePolicyChoice {
    /// The highest version matching a semver range.
    Semver(SemVerPolicy),
    /// The last (or first) tag in alphabetical order.
    Alphabetical(AlphabeticalPolicy),
    /// The highest (or lowest) number.
    Numerical(NumericalPolicy),
}

/// Tags parsed as semantic versions, the highest in the range chosen.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SemVerPolicy {
    /// A range in Masterminds' constraint syntax, such as `>=1.0.0 <2.0.0` or `5.1.x`.
    pub range: String,
}

/// Tags ordered alphabetically.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AlphabeticalPolicy {
    /// `asc` picks the last tag (Z over A); `desc` the first.
    #[serde(default)]
    pub order: SortOrder,
}

/// Tags ordered as numbers.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NumericalPolicy {
    /// `asc` picks the highest number; `desc` the lowest.
    #[serde(default)]
    pub order: SortOrder,
}

/// The order in which tags are compared; the last in that order is the latest.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SortOrder {
    #[default]
    Asc,
    Desc,
}

/// Which tags take part in a policy, and what of each is compared.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TagFilter {
    /// A regular expression a tag must match; it may name groups for `extract`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// What of a matching tag is compared, such as `$ts` for the group `(?P<ts>...)`; the whole
    /// tag when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extract: Option<String>,
}

/// When the digest of the chosen tag is looked up.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReflectionPolicy {
    /// Never: `latestRef.digest` stays empty.
    #[default]
    Never,
    /// Looked up once per chosen tag, and kept while the tag stays chosen.
    IfNotPresent,
    /// Looked up again every `spec.interval`, so a tag pushed again is followed.
    Always,
}

/// The observed state of an `ImagePolicy`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImagePolicyStatus {
    /// The last generation reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions of the object.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The latest image the policy chose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_ref: Option<ImageRef>,
    /// The image chosen before `latestRef`, when it changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_previous_ref: Option<ImageRef>,
    /// The last `reconcile.fluxcd.io/requestedAt` value handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,
}

/// An image: repository name, tag and optionally digest.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ImageRef {
    /// The image repository, such as `ghcr.io/org/app`.
    pub name: String,
    /// The tag.
    pub tag: String,
    /// The manifest digest (`sha256:<hex>`), when digest reflection is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

impl ImageRef {
    /// `name:tag`, or `name:tag@digest` when the digest is known.
    #[must_use]
    pub fn reference(&self) -> String {
        match &self.digest {
            Some(d) => format!("{}:{}@{d}", self.name, self.tag),
            None => format!("{}:{}", self.name, self.tag),
        }
    }
}

/// The desired state of an `ImageUpdateAutomation`.
#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[kube(
    group = "image.toolkit.fluxcd.io",
    version = "v1",
    kind = "ImageUpdateAutomation",
    plural = "imageupdateautomations",
    namespaced,
    status = "ImageUpdateAutomationStatus",
    shortname = "iua",
    shortname = "imgupd",
    shortname = "imgauto",
    category = "all",
    category = "fluxcd",
    category = "fluxcd-images",
    doc = "ImageUpdateAutomation is the Schema for the imageupdateautomations API.",
    printcolumn(
        name = "Last run",
        type_ = "string",
        json_path = ".status.lastAutomationRunTime"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].message"#
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ImageUpdateAutomationSpec {
    /// The GitRepository whose URL and credentials the automation clones and pushes with.
    pub source_ref: CrossNamespaceSourceReference,
    /// How to check out, commit and push.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitSpec>,
    /// How often to run the automation.
    pub interval: GoDuration,
    /// Which ImagePolicies (in the same namespace) take part; all when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_selector: Option<LabelSelector>,
    /// How the files are updated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateStrategy>,
    /// Stop running the automation.
    #[serde(default)]
    pub suspend: bool,
}

/// Git settings of an automation.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GitSpec {
    /// What to check out; the GitRepository's `spec.ref` (or its default branch) when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkout: Option<GitCheckoutSpec>,
    /// How to write the commit.
    pub commit: CommitSpec,
    /// Where to push; the checked-out branch when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<PushSpec>,
}

/// What to check out.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GitCheckoutSpec {
    /// The branch, tag, semver range, reference name or commit to check out, with the
    /// GitRepository's precedence: `commit`, then `name`, then `semver`, then `tag`, then
    /// `branch`. Without `git.push.branch`, `branch` must be set: it is where commits go.
    #[serde(rename = "ref")]
    pub reference: GitRepositoryRef,
}

/// How an automation writes its commits.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CommitSpec {
    /// The commit's author (and committer).
    pub author: CommitUser,
    /// Sign the commit with the key in this Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<SigningKey>,
    /// A Go text/template for the commit message over `.AutomationObject` and `.Changed`;
    /// a fixed message naming the automation when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_template: Option<String>,
    /// Values the template reads as `.Values.<key>`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub message_template_values: BTreeMap<String, String>,
}

/// A git identity.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CommitUser {
    /// The name; `FluxBot` when not set, as in Flux.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The email address.
    pub email: String,
}

/// The key commits are signed with.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SigningKey {
    /// A Secret in the automation's namespace. For `gpg`: `git.asc`, an ASCII-armored OpenPGP
    /// secret key, and `passphrase` when that key is protected by one. For `ssh`: `identity`,
    /// an OpenSSH private key, and `password` when it is protected.
    pub secret_ref: LocalObjectReference,
    /// The format of the key; `gpg` when not set.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub key_type: Option<SigningKeyType>,
}

/// The format of a commit signing key.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SigningKeyType {
    /// An OpenPGP key (`git.asc`): the commit gets a `gpgsig` header `git verify-commit`
    /// checks against the public key.
    #[default]
    Gpg,
    /// An SSH key (`identity`): an sshsig signature in git's `git` namespace, which
    /// `git verify-commit` checks against `gpg.ssh.allowedSignersFile`.
    Ssh,
}

/// Where commits are pushed.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PushSpec {
    /// The branch to push to; created from the checked-out commit when it does not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// A refspec (`src:dst`, such as `refs/heads/main:refs/heads/auto/main` or
    /// `HEAD:refs/for/main`) the commit is also pushed with, after the push to the branch. Its
    /// source names refs of the clone, where the push branch holds the new commit and `HEAD`
    /// points at it. No force (`+`) and no deletion (`:dst`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^$|^[^+:]"))]
    pub refspec: Option<String>,
    /// Push options (`git push -o key=value`) sent with every push, for servers that act on
    /// them (such as GitLab's `merge_request.create`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

/// How an automation updates files.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UpdateStrategy {
    /// The only strategy: rewrite the values marked with `$imagepolicy` setter comments.
    #[serde(default)]
    pub strategy: UpdateStrategyName,
    /// The directory (relative to the repository root) whose YAML files are updated; the root
    /// when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// The update strategies Weir implements.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UpdateStrategyName {
    #[default]
    Setters,
}

/// The observed state of an `ImageUpdateAutomation`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageUpdateAutomationStatus {
    /// The last generation reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions of the object.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// When the automation last ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_automation_run_time: Option<Time>,
    /// The commit last pushed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_push_commit: Option<String>,
    /// When a commit was last pushed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_push_time: Option<Time>,
    /// The policies of the last run and the image each chose, by policy name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub observed_policies: BTreeMap<String, ImageRef>,
    /// The source revision the last run saw, as Flux writes it: `<ref>@sha1:<commit>` (such as
    /// `main@sha1:…` or `v1.2.0@sha1:…`; `sha1:…` for a commit checked out without a branch),
    /// and after a push the pushed commit on the push branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_source_revision: Option<String>,
    /// The last `reconcile.fluxcd.io/requestedAt` value handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_refs_prefer_the_digest() {
        let mut r = ImageRef {
            name: "reg/app".into(),
            tag: "1.0.0".into(),
            digest: None,
        };
        assert_eq!(r.reference(), "reg/app:1.0.0");
        r.digest = Some("sha256:ab".into());
        assert_eq!(r.reference(), "reg/app:1.0.0@sha256:ab");
    }

    #[test]
    fn policy_choice_is_one_of() {
        let p: ImagePolicyChoice =
            serde_json::from_value(serde_json::json!({"semver": {"range": "1.x"}})).unwrap();
        assert_eq!(
            p,
            ImagePolicyChoice::Semver(SemVerPolicy {
                range: "1.x".into()
            })
        );
        let p: ImagePolicyChoice =
            serde_json::from_value(serde_json::json!({"numerical": {}})).unwrap();
        assert_eq!(p, ImagePolicyChoice::Numerical(NumericalPolicy::default()));
        assert!(
            serde_json::from_value::<ImagePolicyChoice>(serde_json::json!({
                "semver": {"range": "1.x"}, "alphabetical": {}
            }))
            .is_err()
        );
    }
}
