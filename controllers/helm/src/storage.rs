//! Helm's release storage, read (and narrowly written) from Rust.
//!
//! Helm 3 and Helm 4 keep each revision of a release in a Secret of type `helm.sh/release.v1`
//! named `sh.helm.release.v1.<release>.v<revision>` in the release's storage namespace, labelled
//! `owner=helm`, `name=<release>`, `status=<status>`, `version=<revision>` (plus `createdAt` or
//! `modifiedAt`, Unix seconds, and any custom release labels). Its `data.release` (after the
//! API's own base64) is standard base64 of gzip (best compression) of the release's JSON; a
//! payload without the gzip magic is read as plain JSON, for releases written before Helm
//! compressed them. Sources: helm/helm `pkg/storage/storage.go` (`makeKey`),
//! `pkg/storage/driver/secrets.go` (`newSecretsObject`, `Query`, `Update`),
//! `pkg/storage/driver/util.go` (`encodeRelease`, `decodeRelease`), and the JSON shape in
//! `pkg/release/v1/{release,info,hook}.go`, `pkg/chart/v2/{chart,metadata}.go`,
//! `pkg/release/common/status.go`.
//!
//! Weir reads what Helm wrote and writes only one thing back: [`unlock`], which marks a revision
//! left `pending-*` by a killed Helm as `failed`, as Flux's helm-controller does
//! (`internal/reconcile/unlock.go`). The [`Release`] type models the fields Weir reads and keeps
//! every other field in `rest`, so that rewrite loses nothing Helm stored.
//!
//! Where Weir deviates: Helm's own `Update` is an unconditional PUT; [`unlock`] writes only if
//! the Secret is unchanged since it was read (its resourceVersion), so a Helm running at the same
//! time always wins. Decompression is capped at [`MAX_DECOMPRESSED_BYTES`] (Helm reads without
//! limit). Errors name the Secret and what failed, never the release's contents (values and
//! manifests carry secrets).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The `type` of every Secret Helm stores a release revision in.
pub const SECRET_TYPE: &str = "helm.sh/release.v1";

/// The key of the release payload in the Secret's `data`.
pub const DATA_KEY: &str = "release";

/// The most bytes a release payload may decompress to. Helm sets no limit; a Secret holds at
/// most 1 MiB and release JSON compresses about tenfold, so a payload past this is hostile.
pub const MAX_DECOMPRESSED_BYTES: u64 = 64 * 1024 * 1024;

/// Helm's prefix of the storage object's name (`HelmStorageType` in `pkg/storage/storage.go`).
const NAME_PREFIX: &str = "sh.helm.release.v1";

/// The first bytes of a gzip stream with the deflate method, as Helm's `decodeRelease` checks.
const GZIP_MAGIC: [u8; 3] = [0x1f, 0x8b, 0x08];

/// Release statuses as Helm writes them (`pkg/release/common/status.go`).
pub mod status {
    /// The state of the release is uncertain.
    pub const UNKNOWN: &str = "unknown";
    /// The release's resources are applied.
    pub const DEPLOYED: &str = "deployed";
    /// The release was uninstalled (kept with `--keep-history`).
    pub const UNINSTALLED: &str = "uninstalled";
    /// A newer revision replaced this one.
    pub const SUPERSEDED: &str = "superseded";
    /// The install, upgrade or rollback of this revision failed.
    pub const FAILED: &str = "failed";
    /// An uninstall is under way.
    pub const UNINSTALLING: &str = "uninstalling";
    /// An install is under way.
    pub const PENDING_INSTALL: &str = "pending-install";
    /// An upgrade is under way.
    pub const PENDING_UPGRADE: &str = "pending-upgrade";
    /// A rollback is under way.
    pub const PENDING_ROLLBACK: &str = "pending-rollback";
}

/// Whether `status` is one of Helm's transitional states (Helm's `Status.IsPending`). A revision
/// left in one by a killed Helm blocks every further Helm operation on the release until
/// [`unlock`]ed.
#[must_use]
pub fn is_pending(status: &str) -> bool {
    matches!(
        status,
        status::PENDING_INSTALL | status::PENDING_UPGRADE | status::PENDING_ROLLBACK
    )
}

/// The description Flux's helm-controller writes on a revision it unlocks from the pending
/// `status` (`internal/reconcile/unlock.go`), for [`unlock`]'s `message`.
#[must_use]
pub fn unlock_message(status: &str) -> String {
    format!("Release unlocked from stale '{status}' state")
}

/// The name of the Secret that stores `revision` of `release` (Helm's `makeKey`).
#[must_use]
pub fn secret_name(release: &str, revision: i64) -> String {
    format!("{NAME_PREFIX}.{release}.v{revision}")
}

/// One revision of a Helm release as Helm stores it (`pkg/release/v1/release.go`).
///
/// Field names are Helm's JSON names. Fields Helm omits when empty are omitted here too; every
/// field this type does not name (`apply_method`, and whatever later Helms add) is kept in
/// `rest` and written back unchanged. `null` where an object or string is expected reads as
/// empty, as Go's decoder does.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Release {
    /// The release name.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub name: String,
    /// Status and timestamps of this revision.
    #[serde(default, deserialize_with = "nullable")]
    pub info: Info,
    /// The chart this revision was made from.
    #[serde(default, deserialize_with = "nullable")]
    pub chart: Chart,
    /// The user-supplied values (not merged with the chart's defaults); Helm omits it when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Map<String, Value>>,
    /// The rendered manifest, hooks excluded.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub manifest: String,
    /// The chart's hooks with their last execution.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub hooks: Vec<Hook>,
    /// The revision, from 1.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "is_zero"
    )]
    pub version: i64,
    /// The namespace the release's resources default to.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub namespace: String,
    /// Every other field, kept as read.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// A revision's status and timestamps (`pkg/release/v1/info.go`).
///
/// Timestamps stay the strings Helm wrote (RFC 3339 with nanoseconds from Helm 4, absent when
/// zero; Helm 3 wrote `""` for zero): Weir compares and displays them, and never rewrites them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Info {
    /// When revision 1 was deployed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_deployed: Option<String>,
    /// When this revision was deployed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_deployed: Option<String>,
    /// When the release was uninstalled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<String>,
    /// Helm's one-line log entry for this revision.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub description: String,
    /// One of [`status`].
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub status: String,
    /// The rendered NOTES.txt.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub notes: String,
    /// Every other field (`resources`), kept as read.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// The chart of a revision (`pkg/chart/v2/chart.go`): its metadata, and the templates, values,
/// schema and files Helm keeps in `rest`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Chart {
    /// The contents of Chart.yaml.
    #[serde(default, deserialize_with = "nullable")]
    pub metadata: ChartMetadata,
    /// Every other field, kept as read.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// Chart.yaml (`pkg/chart/v2/metadata.go`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChartMetadata {
    /// The chart name.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub name: String,
    /// The chart version (SemVer).
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub version: String,
    /// The version of the packaged application.
    #[serde(
        rename = "appVersion",
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub app_version: String,
    /// Every other field, kept as read.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// A hook of a revision (`pkg/release/v1/hook.go`); its manifest, weight and policies are in
/// `rest`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Hook {
    /// The hook object's name.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub name: String,
    /// The hook object's kind.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub kind: String,
    /// The chart-relative path of its template.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub path: String,
    /// The events it runs on (`pre-install`, `post-upgrade`, `test`, ...).
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub events: Vec<String>,
    /// Its last execution; Helm always writes it.
    #[serde(default, deserialize_with = "nullable")]
    pub last_run: HookExecution,
    /// Every other field, kept as read.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// The last execution of a hook (`HookExecution` in `pkg/release/v1/hook.go`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HookExecution {
    /// When it started; absent (or `""` from Helm 3) if it never ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When it completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    /// `Unknown`, `Running`, `Succeeded`, `Failed`, or empty if it never ran; Helm always writes it.
    #[serde(default, deserialize_with = "nullable")]
    pub phase: String,
    /// Every other field, kept as read.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// Reads `null` as the type's default, as Go's `encoding/json` leaves a field zero on `null`.
fn nullable<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// Why a release payload could not be decoded or encoded. No variant carries the payload or the
/// parser's message, which can quote it.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The payload is empty (the Secret has no `data.release`).
    #[error("the payload is empty")]
    Empty,
    /// The payload is not standard base64. The base64 error is not kept as the source: it
    /// quotes a byte of the payload.
    #[error("the payload is not valid base64")]
    Base64,
    /// The payload starts like gzip but does not decompress.
    #[error("the payload is not valid gzip")]
    Gzip(#[source] std::io::Error),
    /// The payload decompresses past the limit.
    #[error("the payload decompresses to more than {limit} bytes")]
    TooLarge {
        /// The limit, [`MAX_DECOMPRESSED_BYTES`].
        limit: u64,
    },
    /// The decompressed payload is not a release's JSON. serde_json's message is not kept: it
    /// quotes the offending value.
    #[error(
        "the payload is not a Helm release: JSON {category} error at line {line}, column {column}"
    )]
    Json {
        /// `syntax`, `data` (a field of the wrong type) or `eof`.
        category: &'static str,
        /// 1-based line of the error in the decompressed JSON.
        line: usize,
        /// 1-based column of the error.
        column: usize,
    },
    /// The release could not be serialized (not expected: every field is plain JSON).
    #[error("the release could not be serialized")]
    Serialize(#[source] serde_json::Error),
    /// Compressing the release failed (not expected: it writes to memory).
    #[error("the release could not be compressed")]
    Compress(#[source] std::io::Error),
}

/// What failed reading or writing a release's Secrets. Secrets are named `namespace/name`.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The release name cannot be matched by a label selector, so Helm could not have stored it.
    #[error("release name {name:?} is not a valid label value")]
    InvalidReleaseName {
        /// The name asked for.
        name: String,
    },
    /// Listing the release's Secrets failed.
    #[error("listing the Secrets of Helm release {namespace}/{release}")]
    List {
        /// The storage namespace.
        namespace: String,
        /// The release name.
        release: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Reading a revision's Secret failed.
    #[error("reading Helm release Secret {secret}")]
    Get {
        /// `namespace/name` of the Secret.
        secret: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// A revision's Secret does not hold a decodable release.
    #[error("decoding Helm release Secret {secret}")]
    Decode {
        /// `namespace/name` of the Secret.
        secret: String,
        /// What was wrong with it.
        #[source]
        source: CodecError,
    },
    /// The release to write back could not be encoded.
    #[error("encoding the release for Helm release Secret {secret}")]
    Encode {
        /// `namespace/name` of the Secret.
        secret: String,
        /// What failed.
        #[source]
        source: CodecError,
    },
    /// [`unlock`] was asked to unlock a revision that is not pending.
    #[error("Helm release Secret {secret} is {status:?}, not pending: nothing to unlock")]
    NotPending {
        /// `namespace/name` of the Secret.
        secret: String,
        /// The revision's status.
        status: String,
    },
    /// The Secret changed or went away since it was read (Helm itself wrote it meanwhile):
    /// nothing was written; read the history again and decide again.
    #[error("Helm release Secret {secret} changed since it was read; not overwritten")]
    Conflict {
        /// `namespace/name` of the Secret.
        secret: String,
    },
    /// Writing the Secret failed.
    #[error("writing Helm release Secret {secret}")]
    Write {
        /// `namespace/name` of the Secret.
        secret: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

/// Decodes a Secret's `data.release` (the bytes after the API's base64): base64, then gzip if it
/// starts with the gzip magic (plain JSON otherwise, as Helm accepts), then the release JSON.
/// Like Go's base64 decoder, line breaks in the base64 text are ignored.
pub fn decode(data: &[u8]) -> Result<Release, CodecError> {
    let compact: Vec<u8>;
    let text = if data.iter().any(|b| matches!(b, b'\r' | b'\n')) {
        compact = data
            .iter()
            .copied()
            .filter(|b| !matches!(b, b'\r' | b'\n'))
            .collect();
        &compact[..]
    } else {
        data
    };
    if text.is_empty() {
        return Err(CodecError::Empty);
    }
    let raw = BASE64.decode(text).map_err(|_| CodecError::Base64)?;
    let json = if raw.starts_with(&GZIP_MAGIC) {
        gunzip_limited(&raw, MAX_DECOMPRESSED_BYTES)?
    } else {
        raw
    };
    serde_json::from_slice(&json).map_err(|e| CodecError::Json {
        category: match e.classify() {
            serde_json::error::Category::Io => "io",
            serde_json::error::Category::Syntax => "syntax",
            serde_json::error::Category::Data => "data",
            serde_json::error::Category::Eof => "eof",
        },
        line: e.line(),
        column: e.column(),
    })
}

/// Decompresses all gzip members of `gz` (as Go's reader does), failing past `limit` bytes
/// without reading further.
fn gunzip_limited(gz: &[u8], limit: u64) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    MultiGzDecoder::new(gz)
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(CodecError::Gzip)?;
    if out.len() as u64 > limit {
        return Err(CodecError::TooLarge { limit });
    }
    Ok(out)
}

/// Encodes a release as Helm's `encodeRelease` does: JSON, gzip at best compression, standard
/// base64. The result is the Secret's `data.release` before the API's own base64.
pub fn encode(release: &Release) -> Result<Vec<u8>, CodecError> {
    let json = serde_json::to_vec(release).map_err(CodecError::Serialize)?;
    let mut gz = GzEncoder::new(Vec::new(), Compression::best());
    gz.write_all(&json).map_err(CodecError::Compress)?;
    let compressed = gz.finish().map_err(CodecError::Compress)?;
    Ok(BASE64.encode(compressed).into_bytes())
}

/// Weir's digest of a stored release: `sha256:<hex>` over its canonical JSON (this type's
/// serialization with every object's keys sorted). Stable for a given stored release across
/// reads and Weir versions that model the same fields; not a digest Helm or Flux compute.
#[must_use]
pub fn release_digest(release: &Release) -> String {
    // Serializing this type to a Value cannot fail: every field is a string, number, or JSON.
    let value = serde_json::to_value(release).unwrap_or(Value::Null);
    sha256_digest(&canonical_json(&value))
}

/// `sha256:<hex>` of the values' JSON with every object's keys sorted; `null` counts as `{}`, so
/// a release without `config` and one with empty values digest the same.
///
/// Not byte-compatible with Flux's `configDigest`, which hashes a go-yaml encoding of the sorted
/// values (and the empty input for empty values; fluxcd/pkg `chartutil/digest.go`).
#[must_use]
pub fn config_digest(values: &Value) -> String {
    let empty = Value::Object(Map::new());
    let values = if values.is_null() { &empty } else { values };
    sha256_digest(&canonical_json(values))
}

fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Compact JSON with every object's keys in byte order, whatever order the map keeps.
fn canonical_json(value: &Value) -> Vec<u8> {
    fn write(value: &Value, out: &mut Vec<u8>) {
        match value {
            Value::Object(map) => {
                let sorted: BTreeMap<&String, &Value> = map.iter().collect();
                out.push(b'{');
                for (i, (key, item)) in sorted.into_iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    let _ = serde_json::to_writer(&mut *out, key);
                    out.push(b':');
                    write(item, out);
                }
                out.push(b'}');
            }
            Value::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write(item, out);
                }
                out.push(b']');
            }
            // Writing a string or scalar to a Vec cannot fail.
            scalar => {
                let _ = serde_json::to_writer(&mut *out, scalar);
            }
        }
    }
    let mut out = Vec::new();
    write(value, &mut out);
    out
}

/// Every stored revision of `release` in `namespace`, newest first.
///
/// Lists Secrets labelled `owner=helm,name=<release>`, as Helm's `History` does. A Secret that
/// does not decode is skipped with a warning, as Helm skips it, so Weir sees the history
/// `helm history` shows.
pub async fn history(
    client: &kube::Client,
    namespace: &str,
    release: &str,
) -> Result<Vec<Release>, StorageError> {
    if !is_label_value(release) {
        return Err(StorageError::InvalidReleaseName {
            name: release.to_owned(),
        });
    }
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let params = ListParams::default().labels(&format!("owner=helm,name={release}"));
    let list = api
        .list(&params)
        .await
        .map_err(|source| StorageError::List {
            namespace: namespace.to_owned(),
            release: release.to_owned(),
            source,
        })?;
    Ok(decode_history(namespace, list.items))
}

/// The newest stored revision of `release` in `namespace`, if any.
pub async fn latest(
    client: &kube::Client,
    namespace: &str,
    release: &str,
) -> Result<Option<Release>, StorageError> {
    Ok(history(client, namespace, release)
        .await?
        .into_iter()
        .next())
}

/// Marks a revision left pending by a killed Helm as `failed` with `message` (use
/// [`unlock_message`]), the way Flux's helm-controller unlocks it, and returns it as written.
///
/// `release` is the revision as read by [`history`]. Its Secret is read again and written only
/// if it still holds exactly that release, with a PUT conditional on the resourceVersion read:
/// if Helm wrote the Secret in between, nothing is written and the error is
/// [`StorageError::Conflict`]. The write changes `data.release` and the `status` label and sets
/// `modifiedAt`, as Helm's `Update` does; every other label, annotation and data key is kept.
pub async fn unlock(
    client: &kube::Client,
    namespace: &str,
    release: &Release,
    message: &str,
) -> Result<Release, StorageError> {
    if !is_pending(&release.info.status) {
        return Err(StorageError::NotPending {
            secret: format!(
                "{namespace}/{}",
                secret_name(&release.name, release.version)
            ),
            status: release.info.status.clone(),
        });
    }
    fail(client, namespace, release, message).await
}

/// Marks the revision `release` failed with `message`, whatever its status, under the same
/// conditional write as [`unlock`]: a release Helm deployed whose objects then failed Weir's own
/// health checks (`healthCheckExprs`), so the next decision sees the failure Helm did not.
pub async fn fail(
    client: &kube::Client,
    namespace: &str,
    release: &Release,
    message: &str,
) -> Result<Release, StorageError> {
    let name = secret_name(&release.name, release.version);
    let id = format!("{namespace}/{name}");
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = match api.get(&name).await {
        Ok(secret) => secret,
        Err(kube::Error::Api(status)) if status.is_not_found() => {
            return Err(StorageError::Conflict { secret: id });
        }
        Err(source) => return Err(StorageError::Get { secret: id, source }),
    };
    let (secret, unlocked) = mark_failed(&id, secret, release, message, unix_now())?;
    match api.replace(&name, &PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(
                secret = %id,
                from = %release.info.status,
                "marked Helm release revision failed"
            );
            Ok(unlocked)
        }
        Err(kube::Error::Api(status)) if status.is_conflict() || status.is_not_found() => {
            Err(StorageError::Conflict { secret: id })
        }
        Err(source) => Err(StorageError::Write { secret: id, source }),
    }
}

/// Decodes listed Secrets into revisions, newest first, skipping (with a warning) those that do
/// not decode.
fn decode_history(namespace: &str, secrets: Vec<Secret>) -> Vec<Release> {
    let mut releases: Vec<Release> = secrets
        .into_iter()
        .filter_map(|secret| {
            let name = secret.metadata.name.clone().unwrap_or_default();
            match decode_secret(&secret) {
                Ok(release) => Some(release),
                Err(error) => {
                    tracing::warn!(
                        %error,
                        secret = %format_args!("{namespace}/{name}"),
                        "skipping Helm release Secret that does not decode"
                    );
                    None
                }
            }
        })
        .collect();
    releases.sort_by_key(|release| std::cmp::Reverse(release.version));
    releases
}

/// Decodes a Secret's `data.release`; a missing key is an empty payload.
fn decode_secret(secret: &Secret) -> Result<Release, CodecError> {
    let data = secret
        .data
        .as_ref()
        .and_then(|data| data.get(DATA_KEY))
        .map_or(&[][..], |bytes| &bytes.0[..]);
    decode(data)
}

/// The Secret to write back for an unlock, and the release it holds: checks the Secret still
/// holds `expected` (else [`StorageError::Conflict`]), sets status `failed` and `message`, and
/// keeps the Secret's resourceVersion so the write is conditional.
fn mark_failed(
    id: &str,
    mut secret: Secret,
    expected: &Release,
    message: &str,
    now_unix: u64,
) -> Result<(Secret, Release), StorageError> {
    let conflict = || StorageError::Conflict {
        secret: id.to_owned(),
    };
    if secret.metadata.resource_version.is_none() {
        return Err(conflict());
    }
    let mut release = decode_secret(&secret).map_err(|source| StorageError::Decode {
        secret: id.to_owned(),
        source,
    })?;
    if release != *expected {
        return Err(conflict());
    }
    status::FAILED.clone_into(&mut release.info.status);
    message.clone_into(&mut release.info.description);
    let payload = encode(&release).map_err(|source| StorageError::Encode {
        secret: id.to_owned(),
        source,
    })?;
    secret
        .data
        .get_or_insert_with(BTreeMap::new)
        .insert(DATA_KEY.to_owned(), ByteString(payload));
    let labels = secret.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert("status".to_owned(), status::FAILED.to_owned());
    labels.insert("modifiedAt".to_owned(), now_unix.to_string());
    Ok((secret, release))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// A Kubernetes label value: at most 63 characters, alphanumerics with `-`, `_`, `.` inside.
/// Empty is a valid label value but never a release name.
fn is_label_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    bytes.len() <= 63
        && first.is_ascii_alphanumeric()
        && last.is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use pretty_assertions::assert_eq;
    use serde_json::json;

    /// `helm install web ./demo -n apps --dry-run=client --set greeting=hi --set nested.b=2
    /// --set nested.a=1 -o json` from Helm v4.3.2: the release JSON exactly as Helm marshals it
    /// for storage (a chart with a ConfigMap, a pre-install/pre-upgrade hook and NOTES.txt).
    const HELM_4_RELEASE_JSON: &str = r#"{"name":"web","info":{"first_deployed":"2026-12-07T22:14:03.117821612Z","last_deployed":"2026-12-07T22:14:03.117821612Z","description":"Dry run complete","status":"pending-install","notes":"Thanks for installing web\n"},"chart":{"metadata":{"name":"demo","version":"1.2.3","description":"storage fixture","apiVersion":"v2","appVersion":"4.5.6"},"lock":null,"templates":[{"name":"templates/NOTES.txt","data":"VGhhbmtzIGZvciBpbnN0YWxsaW5nIHt7IC5SZWxlYXNlLk5hbWUgfX0K","modtime":"2026-12-07T22:14:03.085136048Z"},{"name":"templates/cm.yaml","data":"YXBpVmVyc2lvbjogdjEKa2luZDogQ29uZmlnTWFwCm1ldGFkYXRhOgogIG5hbWU6IHt7IC5SZWxlYXNlLk5hbWUgfX0tY20KZGF0YToKICBncmVldGluZzoge3sgLlZhbHVlcy5ncmVldGluZyB8IHF1b3RlIH19Cg==","modtime":"2026-12-07T22:14:03.084184459Z"},{"name":"templates/hook.yaml","data":"YXBpVmVyc2lvbjogdjEKa2luZDogQ29uZmlnTWFwCm1ldGFkYXRhOgogIG5hbWU6IHt7IC5SZWxlYXNlLk5hbWUgfX0taG9vawogIGFubm90YXRpb25zOgogICAgImhlbG0uc2gvaG9vayI6IHByZS1pbnN0YWxsLHByZS11cGdyYWRlCiAgICAiaGVsbS5zaC9ob29rLXdlaWdodCI6ICI1IgogICAgImhlbG0uc2gvaG9vay1kZWxldGUtcG9saWN5IjogYmVmb3JlLWhvb2stY3JlYXRpb24KZGF0YToge30K","modtime":"2026-12-07T22:14:03.085136048Z"}],"values":{"greeting":"hello"},"schema":null,"schemamodtime":"0001-01-01T00:00:00Z","files":null,"modtime":"2026-12-07T22:14:03.08219926Z"},"config":{"greeting":"hi","nested":{"a":1,"b":2}},"manifest":"---\n# Source: demo/templates/cm.yaml\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web-cm\ndata:\n  greeting: \"hi\"\n\n","hooks":[{"name":"web-hook","kind":"ConfigMap","path":"demo/templates/hook.yaml","manifest":"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web-hook\n  annotations:\n    \"helm.sh/hook\": pre-install,pre-upgrade\n    \"helm.sh/hook-weight\": \"5\"\n    \"helm.sh/hook-delete-policy\": before-hook-creation\ndata: {}\n","events":["pre-install","pre-upgrade"],"last_run":{"phase":""},"weight":5,"delete_policies":["before-hook-creation"]}],"version":1,"namespace":"apps","apply_method":"ssa"}"#;

    /// [`HELM_4_RELEASE_JSON`] encoded by Go's own `compress/gzip` (BestCompression) and
    /// `encoding/base64` (StdEncoding), the calls Helm's `encodeRelease` makes.
    const HELM_4_RELEASE_DATA: &str = concat!(
        "H4sIAAAAAAAC/7yVbXObRhDHvwqzfQsKICFbN5MXsRJjYteZ2ooeKB7PASc46x4Y7pCNPfrunUNPaaO0TV90hhdw7N7+",
        "dm/3f28gMCeA4JmkYAMVSwnoDZa0VvoxJxWTLckBge/6Q8fzHfds4vvIGyC33/O8s3PfG3p+DDYw/JMOOVFZTStNpQAE",
        "H+vWqhthZZJXjGgCNiiNdaMAQUVETkXhUKE0ZgxsEFIT82dSYrFS1lLW1u4nFYX1TNJEwMaGrMS1NulwonGONTbvu3xz",
        "wiXYsCa12hJ4Pb/X/45LaVnjglhL+qKb2mDhik4PTmu/W6mOK4Ne0Bua4ExmK0CiYcwGTXjFcMf8+4HgsPju9svk031P",
        "v2gTvsOEaViWKdevURivM3pRpeLWXcxeFJ4FIrrSZ9E4uI9nL2wxv2U3q6BMZ1+L5dy9Bhu4zDXtIpw6A/c88PpDd3Ae",
        "w8Y+wZLxXos5O5Is5hfVlE/bzGfr9EkW+dOna+yzJv4oi9/8URNzJiazy+cx91geXq4W87vySyGLKOyohn9Dqxe+ex2H",
        "l+5iIq+j8YXI+JTlIWviV1mQvipuWFymV1OWtcHxX3txHl1demn/jkVX3mhcvH//L7IeeOeDQTD6QdallKv/MW8cjtb4",
        "2dheNikfuYv5XZX6wWvnP/5QRLxkaeg2mV+sO9s2GkZXF2187x064Wb77WVh3i5md2xMPxhfisOpSu+DVzweydQf1Tfz",
        "nOFZLvNxNIzGkRf9MIa3Mqx5+FVn4Ujh2W0QPcliwac87X9mN7NynfpKL/qf2ZZ3sD+7gvR/svMebFhj1piBeIOiJkRT",
        "UQCCkjAmzfSorCQc7+dn+3Xc3nVdz+meieui7jGSsqTM7Lj1+ScY3xuN/GHc6YQUS1r8FYUaoSFKGzl7AwzIsyEF5G82",
        "NnAs6JIoDQgcx0nEL9a9bOqMIMvoyrvvxikRR9lA1tpLxIqKHFnjLvKvuErEXqNQIizLNCgyQuZkPBGH5T0eshIoaQKJ",
        "SATYYLr3T9JiHM0i2GDiAIJDILChwrrcKeC70yPwTXr/ldtsZ1awEFJjo6aqs7AMOmG8p8ouZALIqmqyF3fbvDdVUeOc",
        "nDJ3ngktSm28EghMBU7Y5MRcIU4lGc1aY5qSpaxJx+RkNelwdmW13jZdDcmaCG2KCN/QmGIdeeBhd83VjTAtUZVYmWqb",
        "FtpiAQrMBWKiP3bRaSf5cCo+PHRTsL84PLs7PFXhjHRlr9T2amHtIye6lOYUlcKw+SMAAP//KbhKvbMHAAA=",
    );

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(bytes).unwrap();
        gz.finish().unwrap()
    }

    fn release(name: &str, version: i64, status: &str) -> Release {
        Release {
            name: name.to_owned(),
            version,
            namespace: "apps".to_owned(),
            info: Info {
                status: status.to_owned(),
                ..Info::default()
            },
            ..Release::default()
        }
    }

    fn stored(namespace: &str, release: &Release) -> Secret {
        let name = secret_name(&release.name, release.version);
        Secret {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(namespace.to_owned()),
                resource_version: Some("42".to_owned()),
                labels: Some(BTreeMap::from([
                    ("owner".to_owned(), "helm".to_owned()),
                    ("name".to_owned(), release.name.clone()),
                    ("status".to_owned(), release.info.status.clone()),
                    ("version".to_owned(), release.version.to_string()),
                    ("createdAt".to_owned(), "1700000000".to_owned()),
                    ("team".to_owned(), "payments".to_owned()),
                ])),
                ..ObjectMeta::default()
            },
            type_: Some(SECRET_TYPE.to_owned()),
            data: Some(BTreeMap::from([(
                DATA_KEY.to_owned(),
                ByteString(encode(release).unwrap()),
            )])),
            ..Secret::default()
        }
    }

    #[test]
    fn a_release_helm_4_stored_decodes_with_every_field() {
        let release = decode(HELM_4_RELEASE_DATA.as_bytes()).unwrap();

        assert_eq!(release.name, "web");
        assert_eq!(release.namespace, "apps");
        assert_eq!(release.version, 1);
        assert_eq!(release.info.status, status::PENDING_INSTALL);
        assert_eq!(release.info.description, "Dry run complete");
        assert_eq!(release.info.notes, "Thanks for installing web\n");
        assert_eq!(
            release.info.first_deployed.as_deref(),
            Some("2026-12-07T22:14:03.117821612Z")
        );
        assert_eq!(release.info.deleted, None);
        assert_eq!(release.chart.metadata.name, "demo");
        assert_eq!(release.chart.metadata.version, "1.2.3");
        assert_eq!(release.chart.metadata.app_version, "4.5.6");
        assert_eq!(release.chart.metadata.rest["apiVersion"], json!("v2"));
        assert_eq!(release.chart.rest["values"], json!({"greeting": "hello"}));
        assert_eq!(
            Value::Object(release.config.clone().unwrap()),
            json!({"greeting": "hi", "nested": {"a": 1, "b": 2}})
        );
        assert!(release.manifest.contains("name: web-cm"));
        let hook = &release.hooks[0];
        assert_eq!(
            (hook.name.as_str(), hook.kind.as_str(), hook.path.as_str()),
            ("web-hook", "ConfigMap", "demo/templates/hook.yaml")
        );
        assert_eq!(hook.events, ["pre-install", "pre-upgrade"]);
        assert_eq!(hook.last_run, HookExecution::default());
        assert_eq!(hook.rest["weight"], json!(5));
        assert_eq!(release.rest["apply_method"], json!("ssa"));
    }

    #[test]
    fn encoding_a_decoded_release_loses_nothing() {
        let release = decode(HELM_4_RELEASE_DATA.as_bytes()).unwrap();

        let encoded = encode(&release).unwrap();

        let gz = BASE64.decode(&encoded).unwrap();
        assert!(gz.starts_with(&GZIP_MAGIC));
        let rewritten: Value =
            serde_json::from_slice(&gunzip_limited(&gz, 1 << 20).unwrap()).unwrap();
        let original: Value = serde_json::from_str(HELM_4_RELEASE_JSON).unwrap();
        assert_eq!(rewritten, original);
        assert_eq!(decode(&encoded).unwrap(), release);
    }

    #[test]
    fn helm_3_empty_timestamps_and_nulls_survive_a_rewrite() {
        let json = json!({
            "name": "old",
            "info": {"first_deployed": "", "last_deployed": "", "deleted": "", "status": "deployed"},
            "chart": {"metadata": null, "templates": null},
            "hooks": [{"name": "h", "last_run": {"started_at": "", "completed_at": "", "phase": ""}}],
            "version": 3,
        });
        let data = BASE64.encode(gzip(json.to_string().as_bytes()));

        let release = decode(data.as_bytes()).unwrap();

        assert_eq!(release.info.deleted.as_deref(), Some(""));
        assert_eq!(release.chart.metadata, ChartMetadata::default());
        assert_eq!(release.hooks[0].last_run.started_at.as_deref(), Some(""));
        assert_eq!(decode(&encode(&release).unwrap()).unwrap(), release);
    }

    #[test]
    fn uncompressed_json_and_wrapped_base64_decode_as_helm_reads_them() {
        let plain =
            BASE64.encode(r#"{"name":"legacy","version":2,"info":{"status":"superseded"}}"#);
        let wrapped = format!("{}\n{}\r\n", &plain[..10], &plain[10..]);

        let release = decode(wrapped.as_bytes()).unwrap();

        assert_eq!((release.name.as_str(), release.version), ("legacy", 2));
        assert_eq!(release.info.status, status::SUPERSEDED);
    }

    #[test]
    fn garbage_is_rejected_with_what_was_wrong() {
        let not_gzip = BASE64.encode([0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 0xff, 1, 2, 3]);
        let not_json = BASE64.encode(gzip(b"hunter2 is the password"));
        let wrong_type = BASE64.encode(gzip(br#"{"version":"hunter2"}"#));
        let cases: [(&[u8], &str); 5] = [
            (b"not base64!", "Base64"),
            (not_gzip.as_bytes(), "Gzip"),
            (not_json.as_bytes(), "Json"),
            (wrong_type.as_bytes(), "Json"),
            (b"", "Empty"),
        ];
        for (data, want) in cases {
            let error = decode(data).unwrap_err();
            let got = format!("{error:?}");
            assert!(got.starts_with(want), "{want}: got {got}");
            assert!(!error.to_string().contains("hunter2"), "{error}");
        }
    }

    #[test]
    fn decompression_stops_past_the_limit() {
        let bomb = gzip(&vec![b' '; 4096]);

        let error = gunzip_limited(&bomb, 1024).unwrap_err();

        assert!(
            matches!(error, CodecError::TooLarge { limit: 1024 }),
            "{error:?}"
        );
        assert_eq!(gunzip_limited(&bomb, 4096).unwrap().len(), 4096);
    }

    #[test]
    fn a_payload_past_the_real_limit_is_rejected() {
        // 64 MiB + 1 of spaces compresses to ~64 KiB: what a hostile Secret could hold.
        let size = usize::try_from(MAX_DECOMPRESSED_BYTES).unwrap() + 1;
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        let chunk = vec![b' '; 1 << 20];
        for _ in 0..64 {
            gz.write_all(&chunk).unwrap();
        }
        gz.write_all(b" ").unwrap();
        let data = BASE64.encode(gz.finish().unwrap());
        assert!(data.len() < size / 64);

        let error = decode(data.as_bytes()).unwrap_err();

        assert!(matches!(error, CodecError::TooLarge { .. }), "{error:?}");
    }

    #[test]
    fn only_helm_transitional_states_are_pending() {
        for (status, pending) in [
            (status::PENDING_INSTALL, true),
            (status::PENDING_UPGRADE, true),
            (status::PENDING_ROLLBACK, true),
            (status::DEPLOYED, false),
            (status::FAILED, false),
            (status::SUPERSEDED, false),
            (status::UNINSTALLED, false),
            (status::UNINSTALLING, false),
            (status::UNKNOWN, false),
            ("", false),
        ] {
            assert_eq!(is_pending(status), pending, "{status}");
        }
    }

    #[test]
    fn unlock_message_is_flux_helm_controllers() {
        assert_eq!(
            unlock_message(status::PENDING_UPGRADE),
            "Release unlocked from stale 'pending-upgrade' state"
        );
    }

    #[test]
    fn secret_names_are_helms_keys() {
        assert_eq!(secret_name("web", 12), "sh.helm.release.v1.web.v12");
    }

    #[test]
    fn config_digest_ignores_key_order_and_counts_null_as_empty() {
        let a: Value =
            serde_json::from_str(r#"{"b":{"y":1,"x":[2,{"q":1,"p":0}]},"a":"<&>"}"#).unwrap();
        let b: Value =
            serde_json::from_str(r#"{"a":"<&>","b":{"x":[2,{"p":0,"q":1}],"y":1}}"#).unwrap();

        assert_eq!(config_digest(&a), config_digest(&b));
        assert_ne!(config_digest(&a), config_digest(&json!({"a": "<&>"})));
        // sha256 of `{}`.
        let empty = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
        assert_eq!(config_digest(&Value::Null), empty);
        assert_eq!(config_digest(&json!({})), empty);
        assert_eq!(
            canonical_json(&b),
            br#"{"a":"<&>","b":{"x":[2,{"p":0,"q":1}],"y":1}}"#
        );
    }

    #[test]
    fn release_digest_is_stable_across_a_rewrite_and_follows_changes() {
        let release = decode(HELM_4_RELEASE_DATA.as_bytes()).unwrap();
        let reread = decode(&encode(&release).unwrap()).unwrap();
        let mut failed = release.clone();
        failed.info.status = status::FAILED.to_owned();

        assert_eq!(release_digest(&release), release_digest(&reread));
        assert_ne!(release_digest(&release), release_digest(&failed));
        assert!(release_digest(&release).starts_with("sha256:"));
        assert_eq!(release_digest(&release).len(), "sha256:".len() + 64);
    }

    #[test]
    fn history_is_newest_first_and_skips_what_does_not_decode() {
        let mut corrupt = stored("apps", &release("web", 4, status::FAILED));
        corrupt.data = Some(BTreeMap::from([(
            DATA_KEY.to_owned(),
            ByteString(b"!!".to_vec()),
        )]));
        let mut empty = stored("apps", &release("web", 5, status::FAILED));
        empty.data = None;
        let secrets = vec![
            stored("apps", &release("web", 2, status::SUPERSEDED)),
            corrupt,
            stored("apps", &release("web", 10, status::PENDING_UPGRADE)),
            empty,
            stored("apps", &release("web", 1, status::SUPERSEDED)),
        ];

        let versions: Vec<i64> = decode_history("apps", secrets)
            .iter()
            .map(|r| r.version)
            .collect();

        assert_eq!(versions, [10, 2, 1]);
    }

    #[test]
    fn unlocking_marks_the_revision_failed_and_keeps_the_rest_of_the_secret() {
        let mut pending = decode(HELM_4_RELEASE_DATA.as_bytes()).unwrap();
        pending.info.status = status::PENDING_UPGRADE.to_owned();
        let secret = stored("apps", &pending);
        let message = unlock_message(status::PENDING_UPGRADE);

        let (written, unlocked) =
            mark_failed("apps/x", secret.clone(), &pending, &message, 1_800_000_000).unwrap();

        assert_eq!(unlocked.info.status, status::FAILED);
        assert_eq!(unlocked.info.description, message);
        let mut expected = pending.clone();
        expected.info.status = status::FAILED.to_owned();
        expected.info.description = message;
        assert_eq!(unlocked, expected);
        assert_eq!(decode_secret(&written).unwrap(), unlocked);
        let labels = written.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["status"], "failed");
        assert_eq!(labels["modifiedAt"], "1800000000");
        assert_eq!(labels["team"], "payments");
        assert_eq!(labels["createdAt"], "1700000000");
        assert_eq!(labels["version"], "1");
        assert_eq!(written.metadata.resource_version.as_deref(), Some("42"));
        assert_eq!(written.type_, secret.type_);
    }

    #[test]
    fn unlocking_a_revision_helm_changed_since_it_was_read_is_a_conflict() {
        let pending = release("web", 3, status::PENDING_INSTALL);
        let deployed = release("web", 3, status::DEPLOYED);
        let mut without_version = stored("apps", &pending);
        without_version.metadata.resource_version = None;

        for secret in [stored("apps", &deployed), without_version] {
            let error = mark_failed("apps/x", secret, &pending, "m", 0).unwrap_err();
            assert!(matches!(error, StorageError::Conflict { .. }), "{error:?}");
        }
    }

    #[test]
    fn release_names_must_be_label_values() {
        for (name, ok) in [
            ("web", true),
            ("my-app.v2_x", true),
            ("", false),
            ("-web", false),
            ("web,owner=x", false),
            (&"a".repeat(64), false),
        ] {
            assert_eq!(is_label_value(name), ok, "{name}");
        }
    }
}
