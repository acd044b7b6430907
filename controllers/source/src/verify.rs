//! `spec.verify`: the signatures of the commit and/or the annotated tag checked out, checked
//! against the public keys of a Secret after the fetch and before anything is archived, so a
//! source that fails verification never becomes an artifact (the last good one stays).
//!
//! As Flux does: the Secret's keys ending in `.sshpub` hold SSH public keys in
//! `authorized_keys` form, every other key (`.asc` by convention) an armored OpenPGP key ring.
//! A commit's signature is its `gpgsig` header; a tag's is the armored block at the end of its
//! message. Mode `HEAD` (or `head`) verifies the commit, `Tag` the annotated tag (only a tag
//! ref has one: a branch or commit ref stalls with `InvalidVerificationMode`), `TagAndHEAD`
//! both. `SourceVerified` is True with the keys that verified each object, False with
//! `VerificationError` (the Secret), `InvalidGitObject` (an unsigned tag),
//! `InvalidTagSignature` or `InvalidCommitSignature`; Ready carries the same reason. The
//! no-change short cut is taken only when `status.sourceVerificationMode` already covers the
//! mode asked for.
//!
//! Where Weir differs: a `name` ref under `refs/tags/` verifies its annotated tag (Flux sees only
//! the tag's name there and reports it unsigned). OpenPGP signatures are checked
//! cryptographically against the primary key and its bound subkeys, then, as go-crypto (Flux's
//! OpenPGP library) does, rejected when the key (or the subkey that signed) is revoked or
//! expired, or the signature expired, at the time of verification. Flux reports such a
//! signature as matching no key; Weir says which key and why (`InvalidCommitSignature` or
//! `InvalidTagSignature` all the same), naming the key by its fingerprint.

use std::{collections::BTreeMap, fmt::Write as _};

use git2::{Oid, Repository};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use pgp::{
    composed::{Deserializable, DetachedSignature, SignedPublicKey},
    types::KeyDetails,
};
use weir_api::{
    ConditionStatus, GitRepository, GitRepositoryStatus, condition, reasons,
    source::{GitRepositoryVerification, GitVerificationMode},
    types,
};
use weir_runtime::Disposition;

use crate::error::SourceError;

/// Secret keys ending in this hold OpenPGP key rings (and so does any key without `.sshpub`).
pub const PGP_KEY_SUFFIX: &str = ".asc";
/// Secret keys ending in this hold SSH public keys, one `authorized_keys` line each.
pub const SSH_KEY_SUFFIX: &str = ".sshpub";
/// The sshsig namespace git signs commits and tags in.
const SSH_NAMESPACE: &str = "git";

/// The first lines of the signature armors git writes, as git recognises them.
const ARMOR_STARTS: [(&str, SignatureKind); 4] = [
    ("-----BEGIN PGP SIGNATURE-----", SignatureKind::OpenPgp),
    ("-----BEGIN PGP MESSAGE-----", SignatureKind::OpenPgp),
    ("-----BEGIN SSH SIGNATURE-----", SignatureKind::Ssh),
    ("-----BEGIN SIGNED MESSAGE-----", SignatureKind::X509),
];

/// How a signature is armored, named as Flux names it in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureKind {
    OpenPgp,
    Ssh,
    X509,
    Empty,
    Unknown,
}

impl SignatureKind {
    /// Recognises the armor's first line, as git does.
    #[must_use]
    pub fn of(signature: &str) -> Self {
        let signature = signature.trim_start();
        if signature.is_empty() {
            return Self::Empty;
        }
        ARMOR_STARTS
            .iter()
            .find(|(start, _)| signature.starts_with(start))
            .map_or(Self::Unknown, |(_, kind)| *kind)
    }

    fn name(self) -> &'static str {
        match self {
            Self::OpenPgp => "openpgp",
            Self::Ssh => "ssh",
            Self::X509 => "x509",
            Self::Empty => "empty",
            Self::Unknown => "unknown",
        }
    }
}

/// Why an OpenPGP signature did not verify.
#[derive(Debug, thiserror::Error)]
pub enum PgpFailure {
    #[error("unable to read the armored signature")]
    Signature(#[source] pgp::errors::Error),
    #[error("unable to read armored key ring")]
    KeyRing(#[source] pgp::errors::Error),
    #[error("unable to verify payload with any of the given key rings: no matching key")]
    NoMatchingKey,
    /// The signature matched a key that is not valid now.
    #[error("unable to verify payload with any of the given key rings: {0}")]
    Rejected(KeyRejection),
}

/// Why a signature made by a trusted key is not accepted: the checks go-crypto (Flux's OpenPGP
/// library) makes once a signature matched, in its order: revocation, key expiry, signature
/// expiry, each at the time of verification. Keys are named by their fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyRejection {
    #[error("signature made by revoked key {key}")]
    KeyRevoked { key: String },
    #[error("signature made by revoked subkey {subkey} of key {key}")]
    SubkeyRevoked { key: String, subkey: String },
    #[error("signature made by expired key {key} (expired {at})")]
    KeyExpired { key: String, at: String },
    #[error("signature made by expired subkey {subkey} of key {key} (expired {at})")]
    SubkeyExpired {
        key: String,
        subkey: String,
        at: String,
    },
    #[error("signature made by key {key} expired {at}")]
    SignatureExpired { key: String, at: String },
}

/// Why an SSH signature did not verify.
#[derive(Debug, thiserror::Error)]
pub enum SshFailure {
    #[error("unable to unarmor SSH signature")]
    Signature(#[source] ssh_key::Error),
    #[error("unable to parse authorized keys")]
    AuthorizedKeys(#[source] ssh_key::Error),
    #[error("unable to verify payload with any of the given authorized keys: no matching key")]
    NoMatchingKey,
}

/// Why a commit's or tag's signature did not verify.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error(
        "PGP signature detected but no PGP public keys found in secret (keys with {PGP_KEY_SUFFIX} suffix)"
    )]
    NoPgpKeys,
    #[error(
        "SSH signature detected but no SSH public keys found in secret (keys with {SSH_KEY_SUFFIX} suffix)"
    )]
    NoSshKeys,
    #[error("unsupported signature type: {}", .0.name())]
    Unsupported(SignatureKind),
    #[error("unable to verify Git {object}")]
    Pgp {
        object: &'static str,
        #[source]
        source: PgpFailure,
    },
    #[error("unable to verify Git {object} SSH signature")]
    Ssh {
        object: &'static str,
        #[source]
        source: SshFailure,
    },
}

/// Why `spec.verify` failed; each sets `SourceVerified=False` with Flux's reason.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("public keys secret error: secret '{namespace}/{name}' not found")]
    SecretNotFound { namespace: String, name: String },
    #[error("public keys secret error: cannot read secret '{name}'")]
    SecretUnreadable {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot verify tag object's signature if a tag reference is not specified")]
    NoTagToVerify,
    #[error("cannot verify signature of tag '{0}' since it is not signed")]
    UnsignedTag(String),
    #[error("signature verification of tag '{tag}' failed")]
    TagSignature {
        tag: String,
        #[source]
        source: SignatureError,
    },
    #[error("signature verification of commit '{commit}' failed")]
    CommitSignature {
        commit: String,
        #[source]
        source: SignatureError,
    },
}

impl VerifyError {
    /// Flux's reason for `SourceVerified=False` and Ready.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::SecretNotFound { .. } | Self::SecretUnreadable { .. } => {
                reasons::VERIFICATION_ERROR
            }
            Self::NoTagToVerify => reasons::INVALID_VERIFICATION_MODE,
            Self::UnsignedTag(_) => reasons::INVALID_GIT_OBJECT,
            Self::TagSignature { .. } => reasons::INVALID_TAG_SIGNATURE,
            Self::CommitSignature { .. } => reasons::INVALID_COMMIT_SIGNATURE,
        }
    }

    /// A tag mode with a ref that checks out no tag stalls: only a change of the spec fixes it.
    /// The rest is retried, as the upstream objects and the Secret can change at any time.
    #[must_use]
    pub fn disposition(&self) -> Disposition {
        match self {
            Self::NoTagToVerify => Disposition::Stalled,
            Self::SecretNotFound { .. }
            | Self::SecretUnreadable { .. }
            | Self::UnsignedTag(_)
            | Self::TagSignature { .. }
            | Self::CommitSignature { .. } => Disposition::Transient,
        }
    }
}

/// The public keys of the `spec.verify` Secret, sorted by their Secret key.
#[derive(Debug, Default, Clone)]
pub struct TrustedKeys {
    key_rings: Vec<String>,
    authorized_keys: Vec<String>,
}

impl TrustedKeys {
    /// Sorts a Secret's data into OpenPGP key rings and SSH `authorized_keys`, as Flux does.
    #[must_use]
    pub fn from_secret_data(data: &BTreeMap<String, Vec<u8>>) -> Self {
        let mut keys = Self::default();
        for (name, value) in data {
            let text = String::from_utf8_lossy(value).into_owned();
            if name.ends_with(SSH_KEY_SUFFIX) {
                keys.authorized_keys.push(text);
            } else {
                keys.key_rings.push(text);
            }
        }
        keys
    }

    /// Verifies `signature` over `payload` (of a git `object`, "commit" or "tag"), and returns
    /// what names the key that made it: the OpenPGP primary key's ID, or the SSH key's SHA256
    /// fingerprint.
    pub fn verify(
        &self,
        object: &'static str,
        signature: &str,
        payload: &[u8],
    ) -> Result<String, SignatureError> {
        match SignatureKind::of(signature) {
            SignatureKind::OpenPgp if self.key_rings.is_empty() => Err(SignatureError::NoPgpKeys),
            SignatureKind::OpenPgp => verify_pgp(signature, payload, &self.key_rings)
                .map_err(|source| SignatureError::Pgp { object, source }),
            SignatureKind::Ssh if self.authorized_keys.is_empty() => Err(SignatureError::NoSshKeys),
            SignatureKind::Ssh => verify_ssh(signature, payload, &self.authorized_keys)
                .map_err(|source| SignatureError::Ssh { object, source }),
            other => Err(SignatureError::Unsupported(other)),
        }
    }
}

/// The first key ring whose primary key or bound subkey made the signature and is valid now
/// (see [`KeyRejection`]). A ring that does not parse is reported only when no ring parsed; a
/// matching key that is not valid is reported over no match at all.
fn verify_pgp(signature: &str, payload: &[u8], key_rings: &[String]) -> Result<String, PgpFailure> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    verify_pgp_at(signature, payload, key_rings, now)
}

/// [`verify_pgp`] with validity judged at `now` (seconds since the epoch).
fn verify_pgp_at(
    signature: &str,
    payload: &[u8],
    key_rings: &[String],
    now: u64,
) -> Result<String, PgpFailure> {
    let (signature, _) = DetachedSignature::from_armor_single(signature.trim().as_bytes())
        .map_err(PgpFailure::Signature)?;
    let mut unreadable = None;
    let mut rejected = None;
    let mut read_any = false;
    for ring in key_rings {
        let keys = match SignedPublicKey::from_armor_many(ring.as_bytes()) {
            Ok((keys, _)) => keys,
            Err(e) => {
                unreadable.get_or_insert(e);
                continue;
            }
        };
        for key in keys {
            let key = match key {
                Ok(key) => key,
                Err(e) => {
                    unreadable.get_or_insert(e);
                    continue;
                }
            };
            read_any = true;
            let signer = if signature.verify(&key.primary_key, payload).is_ok() {
                Some(None)
            } else {
                key.public_subkeys
                    .iter()
                    .find(|sub| {
                        sub.verify_bindings(&key.primary_key).is_ok()
                            && signature.verify(&sub.key, payload).is_ok()
                    })
                    .map(Some)
            };
            let Some(subkey) = signer else { continue };
            match validity::check(&key, subkey, &signature.signature, now) {
                Ok(()) => return Ok(hex::encode_upper(key.primary_key.legacy_key_id())),
                Err(rejection) => {
                    rejected.get_or_insert(rejection);
                }
            }
        }
    }
    match (rejected, unreadable) {
        (Some(rejection), _) => Err(PgpFailure::Rejected(rejection)),
        (None, Some(e)) if !read_any => Err(PgpFailure::KeyRing(e)),
        _ => Err(PgpFailure::NoMatchingKey),
    }
}

/// Whether an OpenPGP key that made a signature is valid at a time, as go-crypto judges it.
///
/// Where Weir differs: go-crypto reads the primary key's expiry from its primary identity's
/// self-signature; Weir reads it from the newest valid self-signature (a user ID certification
/// or a direct key signature), which is the same for keys `gpg` makes and updates. A revoked
/// user ID, a designated revoker's revocation and the expiry of self-signatures are not checked.
mod validity {
    use pgp::{
        composed::{SignedPublicKey, SignedPublicSubKey},
        packet::{Signature, SignatureType},
        types::{KeyDetails, Tag},
    };

    use super::KeyRejection;

    fn created(signature: &Signature) -> u64 {
        signature.created().map_or(0, |t| u64::from(t.as_secs()))
    }

    /// When a key created at `created` expires by `binding`'s key expiration time, if it does.
    fn expiry(created: u64, binding: &Signature) -> Option<u64> {
        binding
            .key_expiration_time()
            .map(|d| u64::from(d.as_secs()))
            .filter(|d| *d != 0)
            .map(|d| created + d)
    }

    /// An RFC 3339 time.
    fn time(secs: u64) -> String {
        i64::try_from(secs)
            .ok()
            .and_then(|s| k8s_openapi::jiff::Timestamp::from_second(s).ok())
            .map_or_else(|| secs.to_string(), |t| t.to_string())
    }

    fn fingerprint(key: &impl KeyDetails) -> String {
        format!("{:X}", key.fingerprint())
    }

    /// The newest self-signature binding the primary key: a user ID certification or a direct
    /// key signature made by the primary key itself.
    fn newest_self_signature(key: &SignedPublicKey, now: u64) -> Option<&Signature> {
        let primary = &key.primary_key;
        let certifications = key.details.users.iter().flat_map(|user| {
            user.signatures.iter().filter(move |s| {
                s.typ() != Some(SignatureType::CertRevocation)
                    && s.verify_certification(primary, Tag::UserId, &user.id)
                        .is_ok()
            })
        });
        let direct = key
            .details
            .direct_signatures
            .iter()
            .filter(|s| s.verify_key(primary).is_ok());
        certifications
            .chain(direct)
            .filter(|s| created(s) <= now)
            .max_by_key(|s| created(s))
    }

    /// Checks `key` (and `subkey`, when it made the signature) and `signature` at `now`.
    pub(super) fn check(
        key: &SignedPublicKey,
        subkey: Option<&SignedPublicSubKey>,
        signature: &Signature,
        now: u64,
    ) -> Result<(), KeyRejection> {
        let primary = &key.primary_key;
        let name = fingerprint(primary);
        let revoked = key
            .details
            .revocation_signatures
            .iter()
            .any(|s| created(s) <= now && s.verify_key(primary).is_ok());
        if revoked {
            return Err(KeyRejection::KeyRevoked { key: name });
        }
        if let Some(sub) = subkey {
            let revoked = sub.signatures.iter().any(|s| {
                s.typ() == Some(SignatureType::SubkeyRevocation)
                    && created(s) <= now
                    && s.verify_subkey_binding(primary, &sub.key).is_ok()
            });
            if revoked {
                return Err(KeyRejection::SubkeyRevoked {
                    key: name,
                    subkey: fingerprint(&sub.key),
                });
            }
        }
        let created_at = u64::from(primary.created_at().as_secs());
        if let Some(at) = newest_self_signature(key, now)
            .and_then(|s| expiry(created_at, s))
            .filter(|at| *at <= now)
        {
            return Err(KeyRejection::KeyExpired {
                key: name,
                at: time(at),
            });
        }
        if let Some(sub) = subkey {
            let binding = sub
                .signatures
                .iter()
                .filter(|s| s.typ() == Some(SignatureType::SubkeyBinding) && created(s) <= now)
                .max_by_key(|s| created(s));
            let sub_created = u64::from(sub.key.created_at().as_secs());
            if let Some(at) = binding
                .and_then(|s| expiry(sub_created, s))
                .filter(|at| *at <= now)
            {
                return Err(KeyRejection::SubkeyExpired {
                    key: name,
                    subkey: fingerprint(&sub.key),
                    at: time(at),
                });
            }
        }
        if let Some(at) = signature
            .signature_expiration_time()
            .map(|d| u64::from(d.as_secs()))
            .filter(|d| *d != 0)
            .map(|d| created(signature) + d)
            .filter(|at| *at <= now)
        {
            return Err(KeyRejection::SignatureExpired {
                key: name,
                at: time(at),
            });
        }
        Ok(())
    }
}

/// The first `authorized_keys` line whose key made the signature in git's namespace. A value
/// with a line that does not parse is skipped, and reported only when no value parsed.
fn verify_ssh(
    signature: &str,
    payload: &[u8],
    authorized_keys: &[String],
) -> Result<String, SshFailure> {
    let signature = ssh_key::SshSig::from_pem(signature.trim()).map_err(SshFailure::Signature)?;
    let mut unreadable = None;
    let mut read_any = false;
    for value in authorized_keys {
        let keys: Result<Vec<ssh_key::PublicKey>, _> = value
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| l.parse::<ssh_key::authorized_keys::Entry>().map(Into::into))
            .collect();
        let keys = match keys {
            Ok(keys) => keys,
            Err(e) => {
                unreadable.get_or_insert(e);
                continue;
            }
        };
        read_any = true;
        if let Some(key) = keys
            .iter()
            .find(|k| k.verify(SSH_NAMESPACE, payload, &signature).is_ok())
        {
            return Ok(key.fingerprint(ssh_key::HashAlg::Sha256).to_string());
        }
    }
    match unreadable {
        Some(e) if !read_any => Err(SshFailure::AuthorizedKeys(e)),
        _ => Err(SshFailure::NoMatchingKey),
    }
}

/// Splits a raw tag object into what was signed and the signature: the signature starts at the
/// last line that opens a signature armor, as git finds it. `None` when the tag is unsigned.
#[must_use]
pub fn split_tag_signature(raw: &[u8]) -> Option<(&[u8], &str)> {
    let mut start = None;
    let mut offset = 0;
    for line in raw.split_inclusive(|b| *b == b'\n') {
        if ARMOR_STARTS
            .iter()
            .any(|(armor, _)| line.starts_with(armor.as_bytes()))
        {
            start = Some(offset);
        }
        offset += line.len();
    }
    let start = start?;
    let signature = std::str::from_utf8(&raw[start..]).ok()?;
    Some((&raw[..start], signature))
}

/// What a successful verification recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The mode, as recorded in `status.sourceVerificationMode`.
    pub mode: GitVerificationMode,
    /// `SourceVerified`'s message: each object verified and the key that signed it.
    pub message: String,
}

/// `spec.verify` with the keys of its Secret, ready to check a fetched repository.
#[derive(Debug, Clone)]
pub struct Verifier {
    mode: GitVerificationMode,
    keys: TrustedKeys,
}

impl Verifier {
    /// Reads the Secret of `spec.verify`; `None` without `spec.verify`.
    pub async fn load(
        client: &kube::Client,
        repo: &GitRepository,
    ) -> Result<Option<Self>, SourceError> {
        let Some(verification) = &repo.spec.verification else {
            return Ok(None);
        };
        let namespace = repo.namespace().unwrap_or_default();
        let name = &verification.secret_ref.name;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
        let secret = secrets
            .get_opt(name)
            .await
            .map_err(|source| VerifyError::SecretUnreadable {
                name: name.clone(),
                source,
            })?
            .ok_or_else(|| VerifyError::SecretNotFound {
                namespace,
                name: name.clone(),
            })?;
        let data = weir_runtime::secrets::data(secret);
        Ok(Some(Self::new(
            verification,
            TrustedKeys::from_secret_data(&data),
        )))
    }

    #[must_use]
    pub fn new(verification: &GitRepositoryVerification, keys: TrustedKeys) -> Self {
        Self {
            mode: verification.mode.effective(),
            keys,
        }
    }

    /// Verifies what the mode asks for in `repo`: the annotated tag `local_ref` points at (when
    /// it is under `refs/tags/`), then `commit`.
    pub fn verify(
        &self,
        repo: &Repository,
        commit: Oid,
        local_ref: Option<&str>,
    ) -> Result<Verified, SourceError> {
        let mut message = String::from("verified signature of");
        if self.mode.verifies_tag() {
            let (tag, key) = self.verify_tag(repo, local_ref)?;
            let _ = write!(message, "\n\t- tag '{tag}' with key '{key}'");
        }
        if self.mode.verifies_head() {
            let (signature, payload) = match repo.extract_signature(&commit, None) {
                Ok((signature, payload)) => (signature.to_vec(), payload.to_vec()),
                Err(e) if e.code() == git2::ErrorCode::NotFound => (vec![], vec![]),
                Err(e) => return Err(git_error(&e)),
            };
            let key = self
                .keys
                .verify("commit", &String::from_utf8_lossy(&signature), &payload)
                .map_err(|source| VerifyError::CommitSignature {
                    commit: commit.to_string(),
                    source,
                })?;
            let _ = write!(message, "\n\t- commit '{commit}' with key '{key}'");
        }
        Ok(Verified {
            mode: self.mode,
            message,
        })
    }

    /// Verifies the tag `local_ref` names; returns how Flux names the tag (`name@<tag object>`)
    /// and the key.
    fn verify_tag(
        &self,
        repo: &Repository,
        local_ref: Option<&str>,
    ) -> Result<(String, String), SourceError> {
        let Some(name) = local_ref.and_then(|r| r.strip_prefix("refs/tags/")) else {
            return Err(VerifyError::NoTagToVerify.into());
        };
        let target = repo
            .find_reference(&format!("refs/tags/{name}"))
            .map_err(|e| git_error(&e))?
            .target()
            .ok_or(VerifyError::NoTagToVerify)?;
        if repo.find_tag(target).is_err() {
            // A lightweight tag: there is no tag object to carry a signature.
            return Err(VerifyError::UnsignedTag(name.to_owned()).into());
        }
        let display = format!("{name}@{target}");
        let odb = repo.odb().map_err(|e| git_error(&e))?;
        let object = odb.read(target).map_err(|e| git_error(&e))?;
        let Some((payload, signature)) = split_tag_signature(object.data()) else {
            return Err(VerifyError::UnsignedTag(display).into());
        };
        let key = self
            .keys
            .verify("tag", signature, payload)
            .map_err(|source| VerifyError::TagSignature {
                tag: display.clone(),
                source,
            })?;
        Ok((display, key))
    }
}

fn git_error(e: &git2::Error) -> SourceError {
    SourceError::Git(weir_git::GitError::from(e))
}

/// Whether the no-change short cut must be skipped to verify: `spec.verify` is set and the mode
/// recorded in status does not cover it (Flux's rule: none recorded, or `HEAD` and `Tag`
/// swapped either way).
#[must_use]
pub fn required(repo: &GitRepository) -> bool {
    let Some(verification) = &repo.spec.verification else {
        return false;
    };
    let observed = repo
        .status
        .as_ref()
        .and_then(|s| s.source_verification_mode);
    let Some(observed) = observed.map(GitVerificationMode::effective) else {
        return true;
    };
    let wanted = verification.mode.effective();
    (observed == GitVerificationMode::Tag && wanted.verifies_head())
        || (observed == GitVerificationMode::Head && wanted.verifies_tag())
}

/// Records a reconcile that stored (or kept) an artifact: `SourceVerified=True` and the mode when
/// this reconcile verified; without `spec.verify`, no `SourceVerified` and no mode. A False
/// `SourceVerified` left by an earlier failure goes when nothing was verified now (the remote is
/// back at a verified revision).
pub fn record_success(
    status: &mut GitRepositoryStatus,
    repo: &GitRepository,
    verified: Option<&Verified>,
) {
    let generation = repo.metadata.generation;
    if repo.spec.verification.is_none() {
        status.source_verification_mode = None;
        condition::remove_condition(&mut status.conditions, types::SOURCE_VERIFIED);
    } else if let Some(verified) = verified {
        status.source_verification_mode = Some(verified.mode);
        condition::set_condition(
            &mut status.conditions,
            weir_api::Condition::new(
                types::SOURCE_VERIFIED,
                ConditionStatus::True,
                weir_api::reasons::SUCCEEDED,
                &verified.message,
            )
            .for_generation(generation),
        );
    } else if condition::find_condition(&status.conditions, types::SOURCE_VERIFIED)
        .is_some_and(|c| c.status == ConditionStatus::False)
    {
        condition::remove_condition(&mut status.conditions, types::SOURCE_VERIFIED);
    }
}

/// Clears what a failure makes stale: a failed verification means the fetch succeeded (no
/// `FetchFailed`); any other failure leaves nothing verified to report False about.
pub fn record_failure(status: &mut GitRepositoryStatus, error: &SourceError) {
    if error.condition_type() == types::SOURCE_VERIFIED {
        condition::remove_condition(&mut status.conditions, types::FETCH_FAILED);
    } else if condition::find_condition(&status.conditions, types::SOURCE_VERIFIED)
        .is_some_and(|c| c.status == ConditionStatus::False)
    {
        condition::remove_condition(&mut status.conditions, types::SOURCE_VERIFIED);
    }
}

#[cfg(test)]
mod tests {
    use std::{path::Path, process::Command};

    use super::*;

    /// Runs `program` and returns its stdout; fails the test on a non-zero exit.
    fn run(command: &mut Command) -> String {
        let out = command.output().unwrap();
        assert!(out.status.success(), "{command:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    /// `git` in `dir`, with no user or system configuration, as a fixed committer.
    fn git(dir: &Path) -> Command {
        let mut command = Command::new("git");
        command
            .current_dir(dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .args(["-c", "user.name=Weir", "-c", "user.email=weir@weir.invalid"]);
        command
    }

    /// A throwaway GnuPG home with one ed25519 signing key; its agent stops when dropped.
    struct Gpg {
        home: tempfile::TempDir,
        uid: String,
    }

    impl Gpg {
        /// An ed25519 signing key for `uid` in a new home, made with `gpg_args` first and
        /// expiring as `expire` says (`never`, `1y`).
        fn generate(uid: &str, gpg_args: &[&str], expire: &str) -> Self {
            // Short: gpg-agent's socket path must fit in a socket address.
            let home = tempfile::Builder::new()
                .prefix("gpg")
                .tempdir_in("/tmp")
                .unwrap();
            let gpg = Self {
                home,
                uid: uid.to_owned(),
            };
            run(gpg
                .command()
                .args(gpg_args)
                .args(["--passphrase", "", "--quick-gen-key", uid])
                .args(["ed25519", "sign", expire]));
            gpg
        }

        fn new(uid: &str) -> Self {
            Self::generate(uid, &[], "never")
        }

        /// A key made on 2020-01-01 that expired a year later. Its home's `gpg.conf` fakes the
        /// time to 2020-06-01, so what `gpg` signs with it there was signed while it was valid.
        fn expired(uid: &str) -> Self {
            let gpg = Self::generate(uid, &["--faked-system-time", "20200101T000000"], "1y");
            std::fs::write(
                gpg.home.path().join("gpg.conf"),
                "faked-system-time 20200601T000000\n",
            )
            .unwrap();
            gpg
        }

        /// Revokes the key: imports the revocation certificate `gpg` made with it (stored
        /// with its armor's first line escaped, so it is not imported by accident).
        fn revoke(&self) {
            let dir = self.home.path().join("openpgp-revocs.d");
            let certificate = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| p.extension().is_some_and(|e| e == "rev"))
                .unwrap();
            let text = std::fs::read_to_string(&certificate).unwrap();
            let path = self.home.path().join("revocation.asc");
            std::fs::write(&path, text.replace(":-----BEGIN", "-----BEGIN")).unwrap();
            run(self.command().arg("--import").arg(path));
        }

        /// The primary key's fingerprint, as `gpg` lists it.
        fn fingerprint(&self) -> String {
            let listing = run(self
                .command()
                .args(["--with-colons", "--list-keys", &self.uid]));
            listing
                .lines()
                .find_map(|l| l.strip_prefix("fpr:"))
                .and_then(|l| l.split(':').nth(8))
                .unwrap()
                .to_owned()
        }

        fn command(&self) -> Command {
            let mut command = Command::new("gpg");
            command.env("GNUPGHOME", self.home.path()).args([
                "--batch",
                "--pinentry-mode",
                "loopback",
            ]);
            command
        }

        fn public_key(&self) -> String {
            run(self.command().args(["--armor", "--export", &self.uid]))
        }

        /// The primary key's long ID, as `gpg` lists it.
        fn key_id(&self) -> String {
            let listing = run(self
                .command()
                .args(["--with-colons", "--list-keys", &self.uid]));
            listing
                .lines()
                .find_map(|l| l.strip_prefix("pub:"))
                .and_then(|l| l.split(':').nth(3))
                .unwrap()
                .to_owned()
        }

        /// `git -c …` options that sign with this key.
        fn sign_options(&self) -> Vec<String> {
            vec!["-c".into(), format!("user.signingkey={}", self.uid)]
        }
    }

    impl Drop for Gpg {
        fn drop(&mut self) {
            let _ = Command::new("gpgconf")
                .env("GNUPGHOME", self.home.path())
                .args(["--kill", "gpg-agent"])
                .status();
        }
    }

    /// An ed25519 SSH key made by `ssh-keygen`.
    struct SshKey {
        dir: tempfile::TempDir,
    }

    impl SshKey {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            run(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "signer", "-f"])
                .arg(dir.path().join("key")));
            Self { dir }
        }

        fn public_key(&self) -> String {
            std::fs::read_to_string(self.dir.path().join("key.pub")).unwrap()
        }

        fn fingerprint(&self) -> String {
            let out = run(Command::new("ssh-keygen")
                .args(["-l", "-E", "sha256", "-f"])
                .arg(self.dir.path().join("key.pub")));
            out.split_whitespace().nth(1).unwrap().to_owned()
        }

        fn sign_options(&self) -> Vec<String> {
            vec![
                "-c".into(),
                "gpg.format=ssh".into(),
                "-c".into(),
                format!("user.signingkey={}", self.dir.path().join("key").display()),
            ]
        }
    }

    /// A work tree whose commits and tags are signed with `sign` (`git -c` options) when given;
    /// `gpg` is the GnuPG home git's `gpg` runs in.
    struct Repo {
        dir: tempfile::TempDir,
    }

    impl Repo {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            run(git(dir.path()).args(["init", "-q", "--initial-branch", "main"]));
            Self { dir }
        }

        fn git(&self, sign: Option<&[String]>, gpg: Option<&Gpg>) -> Command {
            let mut command = git(self.dir.path());
            command.args(sign.unwrap_or_default());
            if let Some(gpg) = gpg {
                command.env("GNUPGHOME", gpg.home.path());
            }
            command
        }

        fn commit(&self, sign: Option<&[String]>, gpg: Option<&Gpg>) -> Oid {
            let signed: &[&str] = if sign.is_some() { &["-S"] } else { &[] };
            run(self
                .git(sign, gpg)
                .args(["commit", "-q", "--allow-empty", "-m", "a commit"])
                .args(signed));
            self.rev_parse("HEAD")
        }

        fn tag(&self, name: &str, sign: Option<&[String]>, gpg: Option<&Gpg>) {
            let kind = if sign.is_some() { "-s" } else { "-a" };
            run(self.git(sign, gpg).args(["tag", kind, "-m", "a tag", name]));
        }

        fn rev_parse(&self, rev: &str) -> Oid {
            let out = run(git(self.dir.path()).args(["rev-parse", rev]));
            Oid::from_str(out.trim()).unwrap()
        }

        fn open(&self) -> Repository {
            Repository::open(self.dir.path()).unwrap()
        }
    }

    fn verifier(mode: GitVerificationMode, data: &[(&str, String)]) -> Verifier {
        let data = data
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone().into_bytes()))
            .collect();
        let verification = GitRepositoryVerification {
            mode,
            secret_ref: weir_api::LocalObjectReference {
                name: "keys".to_owned(),
            },
        };
        Verifier::new(&verification, TrustedKeys::from_secret_data(&data))
    }

    fn failure(result: Result<Verified, SourceError>) -> (&'static str, String) {
        match result {
            Err(SourceError::Verification(e)) => (e.reason(), weir_runtime::chain(&e)),
            other => panic!("expected a verification failure, got {other:?}"),
        }
    }

    #[test]
    fn signature_kinds_are_told_by_their_armor() {
        for (signature, kind) in [
            ("-----BEGIN PGP SIGNATURE-----\n…", SignatureKind::OpenPgp),
            ("\n-----BEGIN PGP MESSAGE-----\n…", SignatureKind::OpenPgp),
            ("-----BEGIN SSH SIGNATURE-----\n…", SignatureKind::Ssh),
            ("-----BEGIN SIGNED MESSAGE-----\n…", SignatureKind::X509),
            ("", SignatureKind::Empty),
            ("garbage", SignatureKind::Unknown),
        ] {
            assert_eq!(SignatureKind::of(signature), kind, "{signature}");
        }
    }

    #[test]
    fn a_tags_signature_is_its_last_armored_block() {
        let raw = b"object 1\ntype commit\ntag v1\n\nnotes:\n-----BEGIN SSH SIGNATURE-----\n\
            quoted\n-----END SSH SIGNATURE-----\n-----BEGIN PGP SIGNATURE-----\nsig\n\
            -----END PGP SIGNATURE-----\n";
        let (payload, signature) = split_tag_signature(raw).unwrap();
        assert!(payload.ends_with(b"-----END SSH SIGNATURE-----\n"));
        assert!(signature.starts_with("-----BEGIN PGP SIGNATURE-----\nsig"));
        assert_eq!(split_tag_signature(b"object 1\ntag v1\n\nunsigned\n"), None);
    }

    #[test]
    fn secret_keys_are_sorted_by_suffix_as_flux_does() {
        let data = [
            ("alice.asc", "pgp"),
            ("bob.sshpub", "ssh"),
            ("legacy", "pgp too"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
        .collect();
        let keys = TrustedKeys::from_secret_data(&data);
        assert_eq!(keys.key_rings, ["pgp", "pgp too"]);
        assert_eq!(keys.authorized_keys, ["ssh"]);
    }

    #[test]
    fn ssh_signed_commits_verify_against_their_key_only() {
        let (signer, stranger) = (SshKey::new(), SshKey::new());
        let repo = Repo::new();
        let commit = repo.commit(Some(&signer.sign_options()), None);
        let keys = format!("# a comment\n{}\n", stranger.public_key()) + &signer.public_key();
        let verified = verifier(GitVerificationMode::Head, &[("keys.sshpub", keys)])
            .verify(&repo.open(), commit, Some("refs/heads/main"))
            .unwrap();
        assert_eq!(
            verified.message,
            format!(
                "verified signature of\n\t- commit '{commit}' with key '{}'",
                signer.fingerprint()
            )
        );
        assert_eq!(verified.mode, GitVerificationMode::Head);

        let (reason, message) = failure(
            verifier(
                GitVerificationMode::Head,
                &[("a.sshpub", stranger.public_key())],
            )
            .verify(&repo.open(), commit, None),
        );
        assert_eq!(reason, reasons::INVALID_COMMIT_SIGNATURE);
        assert!(message.contains("no matching key"), "{message}");
        // An SSH signature with OpenPGP keys only is named for what is missing.
        let (_, message) = failure(
            verifier(
                GitVerificationMode::Head,
                &[("a.asc", stranger.public_key())],
            )
            .verify(&repo.open(), commit, None),
        );
        assert!(message.ends_with("(keys with .sshpub suffix)"), "{message}");
    }

    #[test]
    fn gpg_signed_commits_verify_and_name_the_primary_key() {
        let (signer, stranger) = (Gpg::new("Signer <s@weir.invalid>"), Gpg::new("X <x@x>"));
        let repo = Repo::new();
        let commit = repo.commit(Some(&signer.sign_options()), Some(&signer));
        let verified = verifier(
            GitVerificationMode::LegacyHead,
            &[
                ("stranger.asc", stranger.public_key()),
                ("signer.asc", signer.public_key()),
            ],
        )
        .verify(&repo.open(), commit, None)
        .unwrap();
        assert!(
            verified
                .message
                .ends_with(&format!("with key '{}'", signer.key_id())),
            "{}",
            verified.message
        );
        assert_eq!(
            verified.mode,
            GitVerificationMode::Head,
            "head is recorded as HEAD"
        );
        repo.tag("v1.0.0", Some(&signer.sign_options()), Some(&signer));
        let tag = verifier(
            GitVerificationMode::Tag,
            &[("signer.asc", signer.public_key())],
        )
        .verify(&repo.open(), commit, Some("refs/tags/v1.0.0"))
        .unwrap();
        assert!(tag.message.contains("- tag 'v1.0.0@"), "{}", tag.message);

        let (reason, message) = failure(
            verifier(
                GitVerificationMode::Head,
                &[("s.asc", stranger.public_key())],
            )
            .verify(&repo.open(), commit, None),
        );
        assert_eq!(reason, reasons::INVALID_COMMIT_SIGNATURE);
        assert_eq!(
            message,
            format!(
                "signature verification of commit '{commit}' failed: unable to verify Git \
                 commit: unable to verify payload with any of the given key rings: no matching key"
            )
        );
    }

    /// The commit's signature and what it signed.
    fn commit_signature(repo: &Repo, commit: Oid) -> (String, Vec<u8>) {
        let (signature, payload) = repo.open().extract_signature(&commit, None).unwrap();
        (
            String::from_utf8(signature.to_vec()).unwrap(),
            payload.to_vec(),
        )
    }

    #[test]
    fn signatures_by_expired_keys_are_rejected_naming_the_key() {
        let old = Gpg::expired("Old <old@weir.invalid>");
        let stranger = Gpg::new("X <x@x>");
        let repo = Repo::new();
        let commit = repo.commit(Some(&old.sign_options()), Some(&old));
        let rings = [stranger.public_key(), old.public_key()];
        let (signature, payload) = commit_signature(&repo, commit);
        // 2020-06-01: the key was valid when it signed, and is judged at the time given.
        assert_eq!(
            verify_pgp_at(&signature, &payload, &rings, 1_590_969_600).unwrap(),
            old.key_id()
        );

        let keys = [
            ("stranger.asc", rings[0].clone()),
            ("old.asc", rings[1].clone()),
        ];
        let (reason, message) =
            failure(verifier(GitVerificationMode::Head, &keys).verify(&repo.open(), commit, None));
        assert_eq!(reason, reasons::INVALID_COMMIT_SIGNATURE);
        assert_eq!(
            message,
            format!(
                "signature verification of commit '{commit}' failed: unable to verify Git \
                 commit: unable to verify payload with any of the given key rings: signature \
                 made by expired key {} (expired 2020-12-31T00:00:00Z)",
                old.fingerprint()
            )
        );
    }

    #[test]
    fn signatures_by_revoked_keys_are_rejected_naming_the_key() {
        let signer = Gpg::new("Gone <gone@weir.invalid>");
        let repo = Repo::new();
        let commit = repo.commit(Some(&signer.sign_options()), Some(&signer));
        repo.tag("v1.0.0", Some(&signer.sign_options()), Some(&signer));
        let before = [("gone.asc", signer.public_key())];
        verifier(GitVerificationMode::TagAndHead, &before)
            .verify(&repo.open(), commit, Some("refs/tags/v1.0.0"))
            .unwrap();

        signer.revoke();
        let after = [("gone.asc", signer.public_key())];
        let expected = format!("signature made by revoked key {}", signer.fingerprint());
        let (reason, message) =
            failure(verifier(GitVerificationMode::Head, &after).verify(&repo.open(), commit, None));
        assert_eq!(reason, reasons::INVALID_COMMIT_SIGNATURE);
        assert!(
            message.ends_with(&format!("any of the given key rings: {expected}")),
            "{message}"
        );
        let (reason, message) = failure(verifier(GitVerificationMode::Tag, &after).verify(
            &repo.open(),
            commit,
            Some("refs/tags/v1.0.0"),
        ));
        assert_eq!(reason, reasons::INVALID_TAG_SIGNATURE);
        assert!(message.ends_with(&expected), "{message}");
    }

    #[test]
    fn unsigned_and_tampered_commits_fail() {
        let signer = SshKey::new();
        let keys = [("k.sshpub", signer.public_key())];
        let repo = Repo::new();
        let unsigned = repo.commit(None, None);
        let (reason, message) = failure(verifier(GitVerificationMode::Head, &keys).verify(
            &repo.open(),
            unsigned,
            None,
        ));
        assert_eq!(reason, reasons::INVALID_COMMIT_SIGNATURE);
        assert!(
            message.ends_with("unsupported signature type: empty"),
            "{message}"
        );

        // The signed commit's message changed, its signature kept: a new object git would
        // accept, whose signature no longer matches it.
        let original = repo.commit(Some(&signer.sign_options()), None);
        let raw = run(git(repo.dir.path()).args(["cat-file", "commit", &original.to_string()]));
        let forged = raw.replace("a commit", "a forged commit");
        let path = repo.dir.path().join("forged");
        std::fs::write(&path, forged).unwrap();
        let out = run(git(repo.dir.path())
            .args(["hash-object", "-t", "commit", "-w"])
            .arg(&path));
        let tampered = Oid::from_str(out.trim()).unwrap();
        let (reason, message) = failure(verifier(GitVerificationMode::Head, &keys).verify(
            &repo.open(),
            tampered,
            None,
        ));
        assert_eq!(reason, reasons::INVALID_COMMIT_SIGNATURE);
        assert!(message.contains("no matching key"), "{message}");
    }

    #[test]
    fn tags_verify_in_tag_modes_and_only_tag_refs_have_one() {
        let signer = SshKey::new();
        let keys = [("k.sshpub", signer.public_key())];
        let repo = Repo::new();
        let commit = repo.commit(Some(&signer.sign_options()), None);
        repo.tag("signed", Some(&signer.sign_options()), None);
        repo.tag("unsigned", None, None);
        run(git(repo.dir.path()).args(["tag", "light"]));
        let object = repo.rev_parse("refs/tags/signed");
        let both = verifier(GitVerificationMode::TagAndHead, &keys)
            .verify(&repo.open(), commit, Some("refs/tags/signed"))
            .unwrap();
        let key = signer.fingerprint();
        assert_eq!(
            both.message,
            format!(
                "verified signature of\n\t- tag 'signed@{object}' with key '{key}'\n\t- \
                 commit '{commit}' with key '{key}'"
            )
        );
        let tag = verifier(GitVerificationMode::Tag, &keys);
        let unsigned = repo.rev_parse("refs/tags/unsigned");
        for (local_ref, expected) in [
            (
                Some("refs/tags/unsigned"),
                (
                    reasons::INVALID_GIT_OBJECT,
                    format!(
                        "cannot verify signature of tag 'unsigned@{unsigned}' since it is not signed"
                    ),
                ),
            ),
            (
                Some("refs/tags/light"),
                (
                    reasons::INVALID_GIT_OBJECT,
                    "cannot verify signature of tag 'light' since it is not signed".to_owned(),
                ),
            ),
            (
                Some("refs/heads/main"),
                (
                    reasons::INVALID_VERIFICATION_MODE,
                    "cannot verify tag object's signature if a tag reference is not specified"
                        .to_owned(),
                ),
            ),
        ] {
            assert_eq!(
                failure(tag.verify(&repo.open(), commit, local_ref)),
                expected
            );
        }
    }

    fn object(
        verify: Option<GitVerificationMode>,
        observed: Option<GitVerificationMode>,
    ) -> GitRepository {
        let mut repo: GitRepository = weir_api::manifest::from_value(serde_json::json!({
            "apiVersion": "source.toolkit.fluxcd.io/v1",
            "kind": "GitRepository",
            "metadata": { "name": "app", "namespace": "default", "generation": 2 },
            "spec": { "url": "https://example.invalid/app", "interval": "1m" },
        }))
        .unwrap();
        repo.spec.verification = verify.map(|mode| GitRepositoryVerification {
            mode,
            secret_ref: weir_api::LocalObjectReference {
                name: "keys".to_owned(),
            },
        });
        repo.status = Some(GitRepositoryStatus {
            source_verification_mode: observed,
            ..GitRepositoryStatus::default()
        });
        repo
    }

    #[test]
    fn the_short_cut_waits_for_a_verification_covering_the_mode() {
        use GitVerificationMode::{Head, LegacyHead, Tag, TagAndHead};
        for (verify, observed, expected) in [
            (None, None, false),
            (None, Some(Head), false),
            (Some(Head), None, true),
            (Some(Head), Some(Head), false),
            (Some(LegacyHead), Some(Head), false),
            (Some(Tag), Some(Head), true),
            (Some(Head), Some(Tag), true),
            (Some(TagAndHead), Some(Tag), true),
            (Some(TagAndHead), Some(TagAndHead), false),
            // Flux's rule: a TagAndHEAD verification covers either half.
            (Some(Tag), Some(TagAndHead), false),
        ] {
            assert_eq!(
                required(&object(verify, observed)),
                expected,
                "{verify:?} after {observed:?}"
            );
        }
    }

    fn source_verified(status: &GitRepositoryStatus) -> Option<(ConditionStatus, String)> {
        condition::find_condition(&status.conditions, types::SOURCE_VERIFIED)
            .map(|c| (c.status, c.reason.clone()))
    }

    #[test]
    fn outcomes_set_or_clear_source_verified() {
        let verified = Verified {
            mode: GitVerificationMode::Head,
            message: "verified signature of".to_owned(),
        };
        let repo = object(Some(GitVerificationMode::Head), None);
        let mut status = GitRepositoryStatus::default();
        record_success(&mut status, &repo, Some(&verified));
        assert_eq!(
            status.source_verification_mode,
            Some(GitVerificationMode::Head)
        );
        assert_eq!(
            source_verified(&status),
            Some((ConditionStatus::True, reasons::SUCCEEDED.to_owned()))
        );

        // A bad signature: False, and the fetch that found it succeeded.
        let bad = SourceError::from(VerifyError::UnsignedTag("v1".to_owned()));
        status.conditions.push(weir_api::Condition::new(
            types::FETCH_FAILED,
            ConditionStatus::True,
            reasons::GIT_OPERATION_FAILED,
            "",
        ));
        record_failure(&mut status, &bad);
        assert!(condition::find_condition(&status.conditions, types::FETCH_FAILED).is_none());
        condition::set_condition(
            &mut status.conditions,
            weir_api::Condition::new(types::SOURCE_VERIFIED, bad.condition_status(), "Bad", ""),
        );
        // Then a fetch failure: nothing was verified, so no False is left standing.
        let mut after_fetch_failure = status.clone();
        record_failure(&mut after_fetch_failure, &SourceError::NothingToCheckOut);
        assert_eq!(source_verified(&after_fetch_failure), None);
        // Or the remote went back to the verified revision: nothing verified now, no False.
        let mut back = status.clone();
        record_success(&mut back, &repo, None);
        assert_eq!(source_verified(&back), None);
        assert_eq!(
            back.source_verification_mode,
            Some(GitVerificationMode::Head)
        );
        // Or spec.verify went away: no condition, no mode.
        record_success(&mut status, &object(None, None), None);
        assert_eq!(
            (source_verified(&status), status.source_verification_mode),
            (None, None)
        );
    }
}
