//! The git side of an ImageUpdateAutomation against a bare repository on disk (libgit2's local
//! transport): which commit each `git.checkout.ref` kind starts from, where the commit goes,
//! the revision Flux records, `git.push.refspec`, and signed commits. Push options need a
//! server that reads them: the end-to-end tests cover those.

// A test's helpers fail the test by panicking; that is their job.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{collections::BTreeMap, time::Duration};

use git2::{Oid, Repository, Signature};
use pgp::composed::{Deserializable, DetachedSignature};
use tempfile::TempDir;
use weir_api::{ImageRef, image::SigningKeyType};
use weir_git::Credentials;
use weir_image::{
    error::ImageError,
    signing::CommitSigner,
    update::{self, Checkout, UpdateOutcome, UpdateRequest},
};

const MARKED: &str = "image: reg/app:1.0.0 # {\"$imagepolicy\": \"apps:app\"}\n";

/// A bare repository whose commits each hold `deploy.yaml`.
struct Remote {
    _dir: TempDir,
    repo: Repository,
}

impl Remote {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        repo.set_head("refs/heads/main").unwrap();
        Self { _dir: dir, repo }
    }

    fn url(&self) -> String {
        self.repo.path().display().to_string()
    }

    /// Commits `deploy.yaml` with `content` (and `note` in NOTE) on `refname`.
    fn commit(&self, refname: &str, content: &str, note: &str) -> Oid {
        let repo = &self.repo;
        let mut tree = repo.treebuilder(None).unwrap();
        tree.insert(
            "deploy.yaml",
            repo.blob(content.as_bytes()).unwrap(),
            0o100_644,
        )
        .unwrap();
        tree.insert("NOTE", repo.blob(note.as_bytes()).unwrap(), 0o100_644)
            .unwrap();
        let tree = repo.find_tree(tree.write().unwrap()).unwrap();
        let parent = repo
            .refname_to_id(refname)
            .ok()
            .map(|id| repo.find_commit(id).unwrap());
        let sig = Signature::now("Test", "test@weir.invalid").unwrap();
        let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
        repo.commit(Some(refname), &sig, &sig, note, &tree, &parents)
            .unwrap()
    }

    fn tag(&self, name: &str, commit: Oid) {
        self.repo
            .reference(&format!("refs/tags/{name}"), commit, false, "tag")
            .unwrap();
    }

    fn head(&self, refname: &str) -> Option<Oid> {
        self.repo.refname_to_id(refname).ok()
    }

    fn parent_of(&self, commit: Oid) -> Oid {
        self.repo.find_commit(commit).unwrap().parent_id(0).unwrap()
    }
}

fn request(url: String, checkout: Checkout, push_branch: &str, switch: bool) -> UpdateRequest {
    UpdateRequest {
        url,
        credentials: Credentials::default(),
        timeout: Duration::from_secs(30),
        checkout,
        push_branch: push_branch.to_owned(),
        switch_branch: switch,
        push_refspec: None,
        push_options: vec![],
        signer: None,
        path: String::new(),
        policies: BTreeMap::from([(
            "apps:app".to_owned(),
            ImageRef {
                name: "reg/app".into(),
                tag: "2.0.0".into(),
                digest: None,
            },
        )]),
        author_name: "Weir Bot".into(),
        author_email: "bot@weir.invalid".into(),
        template: None,
        automation: ("apps".into(), "auto".into()),
        max_attempts: 2,
        retry_delay: Duration::from_millis(10),
    }
}

fn pushed(outcome: &UpdateOutcome) -> (Oid, String) {
    match outcome {
        UpdateOutcome::Pushed {
            commit, revision, ..
        } => (Oid::from_str(commit).unwrap(), revision.clone()),
        UpdateOutcome::NoChange { .. } => panic!("nothing pushed: {outcome:?}"),
    }
}

#[test]
fn a_tag_checkout_commits_on_the_tag_and_then_works_on_the_push_branch() {
    let remote = Remote::new();
    let tagged = remote.commit("refs/heads/main", MARKED, "tagged");
    remote.tag("v1.0.0", tagged);
    let later = remote.commit("refs/heads/main", MARKED, "later");
    let req = request(remote.url(), Checkout::Tag("v1.0.0".into()), "auto", true);
    let (commit, revision) = pushed(&update::run(&req, &|| {}).unwrap());
    assert_eq!(remote.head("refs/heads/auto"), Some(commit));
    assert_eq!(remote.parent_of(commit), tagged, "the tag, not main's head");
    assert_eq!(revision, format!("auto@sha1:{commit}"));
    assert_eq!(
        remote.head("refs/heads/main"),
        Some(later),
        "main untouched"
    );

    // The push branch exists now: nothing is left to change on it.
    match update::run(&req, &|| {}).unwrap() {
        UpdateOutcome::NoChange { head, revision } => {
            assert_eq!(head, commit.to_string());
            assert_eq!(revision, format!("v1.0.0@sha1:{tagged}"));
        }
        other @ UpdateOutcome::Pushed { .. } => panic!("{other:?}"),
    }
}

#[test]
fn semver_checks_out_the_highest_matching_tag() {
    let remote = Remote::new();
    for (tag, note) in [("v1.0.0", "a"), ("v1.2.0", "b"), ("v2.0.0", "c")] {
        let c = remote.commit("refs/heads/main", MARKED, note);
        remote.tag(tag, c);
    }
    let v1_2 = remote.head("refs/tags/v1.2.0").unwrap();
    let req = request(
        remote.url(),
        Checkout::Semver("<2.0.0".into()),
        "auto",
        true,
    );
    let (commit, _) = pushed(&update::run(&req, &|| {}).unwrap());
    assert_eq!(remote.parent_of(commit), v1_2);

    let none = request(remote.url(), Checkout::Semver(">=3".into()), "x", true);
    let error = update::run(&none, &|| {}).unwrap_err();
    assert!(
        matches!(&error, ImageError::InvalidSource(m) if m.contains(">=3")),
        "{error}"
    );
}

#[test]
fn commit_and_name_checkouts_start_from_that_commit() {
    let remote = Remote::new();
    let first = remote.commit("refs/heads/main", MARKED, "first");
    remote.commit("refs/heads/main", MARKED, "second");
    let pull = remote.commit("refs/pull/1/head", MARKED, "pull request");

    let by_commit = Checkout::Commit {
        sha: first.to_string(),
        branch: None,
    };
    let req = request(remote.url(), by_commit, "from-commit", true);
    let (commit, _) = pushed(&update::run(&req, &|| {}).unwrap());
    assert_eq!(remote.parent_of(commit), first);

    let req = request(
        remote.url(),
        Checkout::Name("refs/pull/1/head".into()),
        "from-pull",
        true,
    );
    let (commit, _) = pushed(&update::run(&req, &|| {}).unwrap());
    assert_eq!(remote.parent_of(commit), pull);

    let missing = Checkout::Commit {
        sha: "0123456789012345678901234567890123456789".into(),
        branch: Some("main".into()),
    };
    let error = update::run(&request(remote.url(), missing, "main", false), &|| {}).unwrap_err();
    assert!(
        weir_runtime::chain(&error).contains("not found on branch 'main'"),
        "{error}"
    );
    let not_a_sha = Checkout::Commit {
        sha: "main~1".into(),
        branch: None,
    };
    let error = update::run(&request(remote.url(), not_a_sha, "x", true), &|| {}).unwrap_err();
    assert!(
        weir_runtime::chain(&error).contains("is not a commit SHA"),
        "{error}"
    );
}

#[test]
fn a_refspec_is_pushed_after_the_branch() {
    let remote = Remote::new();
    remote.commit("refs/heads/main", MARKED, "first");
    let mut req = request(remote.url(), Checkout::Branch("main".into()), "main", false);
    req.push_refspec = Some("refs/heads/main:refs/heads/auto/main".into());
    let (commit, _) = pushed(&update::run(&req, &|| {}).unwrap());
    assert_eq!(remote.head("refs/heads/main"), Some(commit));
    assert_eq!(remote.head("refs/heads/auto/main"), Some(commit));

    // `HEAD` of the clone is the push branch too.
    remote.commit("refs/heads/main", MARKED, "reset the marker");
    req.push_refspec = Some("HEAD:refs/for/main".into());
    let (commit, _) = pushed(&update::run(&req, &|| {}).unwrap());
    assert_eq!(remote.head("refs/for/main"), Some(commit));
}

#[test]
fn signed_commits_carry_a_signature_over_the_commit() {
    let remote = Remote::new();
    remote.commit("refs/heads/main", MARKED, "first");
    let key = include_bytes!("../testdata/signing-key.asc").to_vec();
    let signer = CommitSigner::from_secret_data(
        "apps/signing-key",
        &BTreeMap::from([("git.asc".to_owned(), key)]),
        SigningKeyType::Gpg,
    )
    .unwrap();
    let mut req = request(remote.url(), Checkout::Branch("main".into()), "main", false);
    req.signer = Some(signer);
    let (commit, _) = pushed(&update::run(&req, &|| {}).unwrap());

    let (armored, payload) = remote.repo.extract_signature(&commit, None).unwrap();
    let (signature, _) = DetachedSignature::from_string(armored.as_str().unwrap()).unwrap();
    let (key, _) =
        pgp::composed::SignedSecretKey::from_string(include_str!("../testdata/signing-key.asc"))
            .unwrap();
    signature
        .verify(&key.primary_key.public_key(), &payload)
        .unwrap();
    let body = remote.repo.find_commit(commit).unwrap();
    assert_eq!(body.author().name().unwrap(), "Weir Bot");
}
