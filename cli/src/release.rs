//! `weir release <workload> --image repo:tag`: Flux v1's `fluxctl release`, as a git commit.
//!
//! The workload's labels (`kustomize.toolkit.fluxcd.io/name|namespace`) name the Kustomization
//! that applies it; its `spec.sourceRef` names the GitRepository and its `spec.path` where to
//! look. Under that path, the YAML document of the workload (same kind and name, and namespace
//! when the document gives one) has its container image fields of the repository set to the tag
//! ([`weir_image::release::set_image`]: the value only, every other byte kept), whether or not a
//! field carries an `$imagepolicy` marker (as fluxctl did; the output says that automation may
//! move a marked field again unless the workload is locked). The commit is made and pushed by
//! the image automation's own code ([`weir_image::update::run_edit`]): with the GitRepository's
//! credentials, never forced, and on a moved branch fetched, edited and pushed again.
//! Then the GitRepository and the Kustomization are asked to reconcile (as `weir reconcile`
//! does) and the command waits until the workload's pod template has the image and, for a
//! Deployment, its rollout is complete.
//!
//! Refused, nothing pushed (exit 1): a workload no Kustomization manages (or not in its
//! inventory), a locked one (unless `--force`: the commit is made, and the lock keeps the
//! cluster on its images until unlocked), one the user may not patch (RBAC: a release changes
//! it), a tag the registry does not have (asked with the credentials of an ImageRepository
//! scanning the image when there is one, else anonymously; `--skip-tag-check` for a registry the
//! CLI cannot reach), a repository the workload does not run, no file that sets that image for
//! the workload, an image set over the field by kustomize (the Kustomization's `spec.images`, or
//! `images:` in a `kustomization.yaml` under the path), a suspended Kustomization or
//! GitRepository, or a source that does not follow a branch. Every read is made with the user's
//! kubeconfig, so pushing needs the right to read the source's Secret.
//!
//! Not handled: a workload whose file lies outside the path (a kustomize `resources: [../base]`)
//! is not found (a clear error, nothing pushed); image fields in flow style (`{image: …}`) are
//! not edited.
//!
//! The commit's author is the Kubernetes user (a SelfSubjectReview) with `--author-email`
//! (default: the user's name when it is an email address, else `release@weir.invalid`), and
//! its message ends with a `Released-by:` trailer. A `Released` Event on the workload records
//! the release. Exit codes: 0 released (or already released) and running, 1 refused or failed,
//! 2 usage.

use std::{
    cell::RefCell, collections::BTreeMap, fmt::Write as _, process::ExitCode, sync::Arc,
    time::Duration,
};

use k8s_openapi::api::{
    authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec},
    core::v1::ObjectReference,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DynamicObject, ListParams, PostParams},
    runtime::wait::await_condition,
};
use serde_json::Value;
use weir_api::{
    GitRepository, ImageRepository, Kustomization,
    control::{Lock, container_images, reasons},
    kustomize::{
        ObjMetadata,
        annotations::{NAME_LABEL, NAMESPACE_LABEL},
    },
    source::ResolvedRef,
};
use weir_git::credentials::CredentialsError;
use weir_image::{
    error::ImageError,
    release::{ReleaseImage, Workload, kustomize_override, set_image, tag_exists},
    setters::Change,
    update::{self, Checkout, UpdateOutcome, UpdateRequest},
};
use weir_runtime::Redactor;

use crate::{
    get::BoxError,
    workload::{self, Kind, block_on, parse_workload},
};

/// Pushes tried while the branch keeps moving, as the image automation tries.
const MAX_PUSH_ATTEMPTS: u32 = 5;
/// The author email when `--author-email` is not given and the user's name is no address.
const FALLBACK_AUTHOR_EMAIL: &str = "release@weir.invalid";
/// How long the registry may take to say whether it has the tag.
const TAG_CHECK_TIMEOUT: Duration = Duration::from_secs(60);

/// Flags of `weir release`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The workload, as `kind/name`: deployment/ (deploy/), statefulset/ (sts/), daemonset/
    /// (ds/) or cronjob/ (cj/).
    pub workload: String,
    /// The image to release, as `repository:tag`.
    #[arg(long, value_parser = ReleaseImage::parse)]
    pub image: ReleaseImage,
    /// The commit message (default: `Release <image> to <kind>/<namespace>/<name>`).
    #[arg(short = 'm', long)]
    pub message: Option<String>,
    /// Release a locked workload: the commit is made; the lock keeps the cluster on its images
    /// until `weir unlock`.
    #[arg(long)]
    pub force: bool,
    /// Show the change as a diff; commit and push nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask the registry whether it has the tag (for a registry the CLI cannot reach).
    #[arg(long)]
    pub skip_tag_check: bool,
    /// The commit author's email (default: the user's name when it is an email address, else
    /// `release@weir.invalid`).
    #[arg(long, env = "WEIR_AUTHOR_EMAIL")]
    pub author_email: Option<String>,
    /// How to reach the cluster, and the namespace.
    #[command(flatten)]
    pub cluster: crate::common::Cluster,
    /// How long to wait, after the push, for the cluster to run the image.
    #[arg(long, default_value = "5m", value_parser = crate::controllers::parse_duration)]
    pub timeout: Duration,
}

/// `kind/name` of a workload (not a HelmRelease: its chart is what a release would change),
/// split and checked.
fn parse(text: &str) -> Result<(Kind, String), String> {
    parse_workload(text, Kind::WORKLOADS, None)
}

/// `weir release`.
pub fn release(args: &Args) -> ExitCode {
    let workload = match parse(&args.workload) {
        Ok(workload) => workload,
        Err(message) => {
            eprintln!("weir release: {message}");
            return ExitCode::from(2);
        }
    };
    block_on(run(args, workload))
}

/// The live workload.
struct Target {
    kind: Kind,
    api: Api<DynamicObject>,
    object: DynamicObject,
    namespace: String,
    name: String,
}

impl Target {
    /// `Deployment/apps/web`.
    fn title(&self) -> String {
        format!(
            "{}/{}/{}",
            self.kind.resource().kind,
            self.namespace,
            self.name
        )
    }

    fn reference(&self) -> ObjectReference {
        workload::reference(self.kind, &self.object)
    }
}

/// Where the workload comes from: its Kustomization and that one's GitRepository.
struct Origin {
    kustomization: Kustomization,
    source: GitRepository,
    branch: String,
    path: String,
}

async fn run(args: &Args, (kind, name): (Kind, String)) -> Result<(), BoxError> {
    let (client, namespace) = args.cluster.connect().await?;
    let target = fetch(&client, kind, &namespace, &name).await?;
    let locked = check_workload(&client, &target, &args.image, args.force).await?;
    let origin = origin(&client, &target, &args.image).await?;
    if !args.skip_tag_check {
        check_tag(&client, &args.image, &target, &origin).await?;
    }
    let user = crate::audit::whoami(&client).await?;
    let (request, redactor) = push_request(&client, &origin, &user, args).await?;
    let request = Arc::new(request);
    let workload = Workload {
        kind: target.kind.resource().kind,
        namespace: target.namespace.clone(),
        name: target.name.clone(),
    };
    let found = preview(&request, &redactor, &workload, &args.image).await?;
    let source = format!("{}@{}", request.url, origin.branch);
    if found.is_empty() {
        return Err(format!(
            "no file under '{}' in {source} sets an image of {} for {}: nothing pushed",
            display_path(&origin.path),
            args.image.repository,
            target.title()
        )
        .into());
    }
    let changed = show(&found, args.dry_run);
    if !changed {
        println!(
            "✔ {source} already sets {} for {}: nothing to commit",
            args.image.reference(),
            target.title()
        );
    }
    if args.dry_run {
        println!("dry run: nothing committed or pushed");
        return Ok(());
    }
    if changed {
        let git = (request, &redactor);
        push(&client, &target, git, workload, args, &user).await?;
    }
    if let Some(lock) = locked {
        println!(
            "! {} is {}: the cluster keeps its images until `weir unlock`",
            target.title(),
            lock.describe()
        );
        return Ok(());
    }
    converge(&client, &target, &origin, &args.image, args.timeout).await
}

async fn fetch(
    client: &Client,
    kind: Kind,
    namespace: &str,
    name: &str,
) -> Result<Target, BoxError> {
    let title = format!("{}/{namespace}/{name}", kind.resource().kind);
    let (api, object) = workload::fetch(client, kind, namespace, name, &title).await?;
    Ok(Target {
        kind,
        api,
        object,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    })
}

/// Refuses a locked workload (unless `force`; the lock is returned then), one the user may not
/// patch, and one that runs no image of the repository.
async fn check_workload(
    client: &Client,
    target: &Target,
    image: &ReleaseImage,
    force: bool,
) -> Result<Option<Lock>, BoxError> {
    let title = target.title();
    let lock = Lock::read(target.object.labels(), target.object.annotations())
        .filter(|l| !l.expired(chrono::Utc::now()));
    if let (Some(lock), false) = (&lock, force) {
        return Err(format!(
            "{title} is {}: unlock it (weir unlock) or release with --force; nothing pushed",
            lock.describe()
        )
        .into());
    }
    may_patch(client, target).await?;
    let live = serde_json::to_value(&target.object)?;
    let images = container_images(&target.kind.resource().kind, &live);
    if !images.iter().any(|(_, i)| image.same_repository(i)) {
        let running: Vec<&str> = images.iter().map(|(_, i)| i.as_str()).collect();
        return Err(format!(
            "{title} runs no image of {} (it runs {}); nothing pushed",
            image.repository,
            running.join(", ")
        )
        .into());
    }
    Ok(lock)
}

/// Refuses a user who may not patch the workload: a release changes it, so RBAC on the object
/// decides, as for `weir lock`.
async fn may_patch(client: &Client, target: &Target) -> Result<(), BoxError> {
    let resource = target.kind.resource();
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                group: Some(resource.group),
                resource: Some(resource.plural),
                namespace: Some(target.namespace.clone()),
                name: Some(target.name.clone()),
                verb: Some("patch".to_owned()),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    let review = Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| format!("cannot ask the API server what you may do: {e}"))?;
    if review.status.is_some_and(|s| s.allowed) {
        Ok(())
    } else {
        Err(format!(
            "you may not patch {} (RBAC), so you may not release it; nothing pushed",
            target.title()
        )
        .into())
    }
}

/// The Kustomization that applied the workload (its labels, checked against its inventory), its
/// GitRepository, branch and path.
async fn origin(
    client: &Client,
    target: &Target,
    image: &ReleaseImage,
) -> Result<Origin, BoxError> {
    let title = target.title();
    let labels = target.object.labels();
    let (Some(ks_name), Some(ks_ns)) = (labels.get(NAME_LABEL), labels.get(NAMESPACE_LABEL)) else {
        return Err(format!(
            "{title} is not managed by a Kustomization (no {NAME_LABEL} and {NAMESPACE_LABEL} \
             labels), so no file in git is known to set its image; nothing pushed"
        )
        .into());
    };
    let kustomization = Api::<Kustomization>::namespaced(client.clone(), ks_ns)
        .get_opt(ks_name)
        .await?
        .ok_or_else(|| {
            format!("{title} names Kustomization '{ks_ns}/{ks_name}', which does not exist")
        })?;
    check_kustomization(&kustomization, target, image)?;
    let reference = &kustomization.spec.source_ref;
    let source_ns = reference.namespace.as_deref().unwrap_or(ks_ns);
    let source = Api::<GitRepository>::namespaced(client.clone(), source_ns)
        .get_opt(&reference.name)
        .await?
        .ok_or_else(|| {
            format!(
                "GitRepository '{source_ns}/{}' of Kustomization '{ks_ns}/{ks_name}' not found",
                reference.name
            )
        })?;
    if source.spec.suspend {
        return Err(format!(
            "GitRepository '{source_ns}/{}' is suspended: resume it first; nothing pushed",
            reference.name
        )
        .into());
    }
    let ResolvedRef::Branch(branch) = source.spec.resolved_ref() else {
        return Err(format!(
            "GitRepository '{source_ns}/{}' does not follow a branch (its ref is a tag, semver \
             range, commit or name), so a release has no branch to push to",
            reference.name
        )
        .into());
    };
    let branch = branch.to_owned();
    let path = update::normalize_path(kustomization.spec.path.as_deref())?;
    Ok(Origin {
        kustomization,
        source,
        branch,
        path,
    })
}

/// Refuses a Kustomization that does not list the workload in its inventory, is suspended, or
/// overrides the image with `spec.images` (a commit to the workload's file would change nothing).
fn check_kustomization(
    ks: &Kustomization,
    target: &Target,
    image: &ReleaseImage,
) -> Result<(), BoxError> {
    let ks_title = format!(
        "Kustomization '{}/{}'",
        ks.namespace().unwrap_or_default(),
        ks.name_any()
    );
    let resource = target.kind.resource();
    let id = ObjMetadata {
        namespace: target.namespace.clone(),
        name: target.name.clone(),
        group: resource.group,
        kind: resource.kind,
    }
    .id();
    let listed = ks
        .status
        .as_ref()
        .and_then(|s| s.inventory.as_ref())
        .is_some_and(|i| i.entries.iter().any(|e| e.id == id));
    if !listed {
        return Err(format!(
            "{} is not in the inventory of {ks_title}, which its labels name; nothing pushed",
            target.title()
        )
        .into());
    }
    if ks.spec.suspend {
        return Err(format!("{ks_title} is suspended: resume it first; nothing pushed").into());
    }
    if let Some(over) = ks
        .spec
        .images
        .iter()
        .find(|i| image.same_repository(&i.name))
    {
        return Err(format!(
            "{ks_title} overrides the image {} (spec.images), so the workload's file does not \
             decide it: change spec.images instead; nothing pushed",
            over.name
        )
        .into());
    }
    Ok(())
}

/// Refuses a tag the registry does not have.
async fn check_tag(
    client: &Client,
    image: &ReleaseImage,
    target: &Target,
    origin: &Origin,
) -> Result<(), BoxError> {
    let namespaces = [
        target.namespace.as_str(),
        &origin.kustomization.namespace().unwrap_or_default(),
    ];
    let scanner = image_repository(client, image, &namespaces).await;
    let with = scanner.as_ref().map_or_else(
        || "anonymously".to_owned(),
        |r| {
            format!(
                "with ImageRepository '{}/{}'",
                r.namespace().unwrap_or_default(),
                r.name_any()
            )
        },
    );
    let exists = tokio::time::timeout(
        TAG_CHECK_TIMEOUT,
        tag_exists(client, scanner.as_ref(), image),
    )
    .await
    .map_err(|_| format!("the registry did not answer within {TAG_CHECK_TIMEOUT:?}"))
    .and_then(|r| r.map_err(|e| weir_runtime::chain(&e)))
    .map_err(|why| {
        format!(
            "cannot check that {} exists (asked {with}): {why}; pass --skip-tag-check if the \
             CLI cannot reach the registry",
            image.reference()
        )
    })?;
    if exists {
        println!("✔ {} exists in its registry", image.reference());
        Ok(())
    } else {
        Err(format!(
            "the registry has no tag {} of {} (asked {with}); nothing pushed",
            image.tag, image.repository
        )
        .into())
    }
}

/// The ImageRepository scanning the image whose credentials the tag check uses: one in the
/// first of `namespaces` that has one, else any the user may list.
async fn image_repository(
    client: &Client,
    image: &ReleaseImage,
    namespaces: &[&str],
) -> Option<ImageRepository> {
    let wanted = image.canonical_name();
    let scans = |r: &ImageRepository| {
        weir_image::scan::parse_image(&r.spec.image)
            .is_ok_and(|i| weir_image::scan::canonical_name(&i) == wanted)
    };
    for namespace in namespaces {
        let api = Api::<ImageRepository>::namespaced(client.clone(), namespace);
        if let Ok(list) = api.list(&ListParams::default()).await
            && let Some(found) = list.items.into_iter().find(|r| scans(r))
        {
            return Some(found);
        }
    }
    let all = Api::<ImageRepository>::all(client.clone());
    let list = all.list(&ListParams::default()).await.ok()?;
    list.items.into_iter().find(|r| scans(r))
}

/// What the image automation's git code needs for this release, and a redactor that knows the
/// credentials' secrets.
async fn push_request(
    client: &Client,
    origin: &Origin,
    user: &str,
    args: &Args,
) -> Result<(UpdateRequest, Redactor), BoxError> {
    let source = &origin.source;
    let access = weir_git::credentials::for_repository(client, source)
        .await
        .map_err(|e| credentials_error(e, source))?;
    let author_email = args.author_email.clone().unwrap_or_else(|| {
        if user.contains('@') {
            user.to_owned()
        } else {
            FALLBACK_AUTHOR_EMAIL.to_owned()
        }
    });
    let request = UpdateRequest {
        url: access.url,
        credentials: access.credentials,
        timeout: source.spec.timeout.as_std(),
        checkout: Checkout::Branch(origin.branch.clone()),
        push_branch: origin.branch.clone(),
        switch_branch: false,
        push_refspec: None,
        push_options: vec![],
        signer: None,
        path: origin.path.clone(),
        policies: BTreeMap::new(),
        author_name: user.to_owned(),
        author_email,
        template: None,
        automation: (String::new(), String::new()),
        max_attempts: MAX_PUSH_ATTEMPTS,
        retry_delay: Duration::from_millis(250),
    };
    Ok((request, access.redactor))
}

/// A git failure, every secret of the source's credentials masked.
fn git_failure(error: &ImageError, redactor: &Redactor) -> BoxError {
    redactor.redact(&weir_runtime::chain(error)).into()
}

/// A Secret the user may not read is said to be that: pushing uses the source's credentials.
fn credentials_error(error: CredentialsError, source: &GitRepository) -> BoxError {
    let namespace = source.namespace().unwrap_or_default();
    match &error {
        CredentialsError::SecretUnreadable {
            name,
            source: kube::Error::Api(status),
        }
        | CredentialsError::ProxySecretUnreadable {
            name,
            source: kube::Error::Api(status),
        } if status.code == 403 => format!(
            "you may not read Secret '{namespace}/{name}' of GitRepository '{namespace}/{}' \
             (RBAC), and a release pushes with the source's credentials; nothing pushed",
            source.name_any()
        )
        .into(),
        _ => Box::new(error),
    }
}

/// A file the release changes: its text before and after, and what changed.
struct Edited {
    file: String,
    before: String,
    after: String,
    changes: Vec<Change>,
}

/// Fetches the branch and edits it without committing: every file that sets an image of the
/// repository for the workload, changed or already at the tag. Refuses a `kustomization.yaml`
/// under the path that sets the image with `images:` (kustomize's, which wins over the field).
async fn preview(
    request: &Arc<UpdateRequest>,
    redactor: &Redactor,
    workload: &Workload,
    image: &ReleaseImage,
) -> Result<Vec<Edited>, BoxError> {
    let image_name = image.repository.clone();
    let (request, workload, image) = (Arc::clone(request), workload.clone(), image.clone());
    let limit = request.timeout;
    let task = tokio::task::spawn_blocking(move || {
        let found = RefCell::new(vec![]);
        let overrides = RefCell::new(vec![]);
        update::preview(&request, &|file, text| {
            let config = ["kustomization.yaml", "kustomization.yml", "Kustomization"]
                .iter()
                .any(|name| file.rsplit('/').next() == Some(*name));
            if let Some(name) = config.then(|| kustomize_override(text, &image)).flatten() {
                overrides
                    .borrow_mut()
                    .push(format!("{file} (images: {name})"));
            }
            let edit = set_image(file, text, &workload, &image)?;
            if edit.matched > 0 {
                found.borrow_mut().push(Edited {
                    file: file.to_owned(),
                    before: text.to_owned(),
                    after: edit.text.clone(),
                    changes: edit.changes.clone(),
                });
            }
            Ok((edit.text, edit.changes))
        })?;
        Ok::<_, ImageError>((found.into_inner(), overrides.into_inner()))
    });
    let (found, overrides) = tokio::time::timeout(limit + Duration::from_secs(10), task)
        .await
        .map_err(|_| format!("fetching the source took longer than {limit:?}"))??
        .map_err(|e| git_failure(&e, redactor))?;
    if !overrides.is_empty() {
        return Err(format!(
            "kustomize sets the image of {} over the workload's field in {}: change it there; \
             nothing pushed",
            image_name,
            overrides.join(", ")
        )
        .into());
    }
    Ok(found)
}

/// Prints what the release changes: a diff, or (not a dry run) one line per field; warns about
/// marked fields. Whether anything changes.
fn show(found: &[Edited], dry_run: bool) -> bool {
    let mut changed = false;
    for edited in found {
        for change in &edited.changes {
            changed = true;
            if !dry_run {
                println!(
                    "► {}:{} {} -> {}",
                    edited.file, change.line, change.old_value, change.new_value
                );
            }
            if !change.setter.is_empty() {
                println!(
                    "! {}:{} is marked for ImagePolicy {}: image automation may move it again \
                     unless the workload is locked (weir lock)",
                    edited.file, change.line, change.setter
                );
            }
        }
        if dry_run && edited.before != edited.after {
            print!("{}", diff(&edited.file, &edited.before, &edited.after));
        }
    }
    changed
}

/// A unified diff of one file, as `git diff` shows it.
fn diff(file: &str, before: &str, after: &str) -> String {
    similar::TextDiff::from_lines(before, after)
        .unified_diff()
        .header(&format!("a/{file}"), &format!("b/{file}"))
        .to_string()
}

/// `path` as messages show it: `./` for the root.
fn display_path(path: &str) -> String {
    format!("./{path}")
}

/// The commit message: the user's (or `Release <image> to <workload>`), the changed fields, and
/// a `Released-by:` trailer.
fn commit_message(
    message: Option<&str>,
    image: &ReleaseImage,
    workload: &str,
    user: &str,
    changes: &[(String, Change)],
) -> String {
    let mut text = message.map_or_else(
        || format!("Release {} to {workload}", image.reference()),
        |m| m.trim_end().to_owned(),
    );
    text.push_str("\n\n");
    // Writing to a String cannot fail.
    for (file, change) in changes {
        let _ = writeln!(
            text,
            "- {file}:{} {} -> {}",
            change.line, change.old_value, change.new_value
        );
    }
    let _ = write!(text, "\nReleased-by: {user}\n");
    text
}

/// Commits and pushes the release (again on a moved branch), then records it in an Event.
async fn push(
    client: &Client,
    target: &Target,
    (request, redactor): (Arc<UpdateRequest>, &Redactor),
    workload: Workload,
    args: &Args,
    user: &str,
) -> Result<(), BoxError> {
    let title = target.title();
    let (image, message, who) = (args.image.clone(), args.message.clone(), user.to_owned());
    let subject = title.clone();
    let limit = request
        .timeout
        .saturating_mul(MAX_PUSH_ATTEMPTS + 1)
        .saturating_add(Duration::from_secs(10));
    let task = tokio::task::spawn_blocking(move || {
        update::run_edit(
            &request,
            &|| eprintln!("◎ the branch moved: pushing again on its new head"),
            &|file, text| {
                let edit = set_image(file, text, &workload, &image)?;
                Ok((edit.text, edit.changes))
            },
            &|changes| {
                Ok(commit_message(
                    message.as_deref(),
                    &image,
                    &subject,
                    &who,
                    changes,
                ))
            },
        )
    });
    let outcome = tokio::time::timeout(limit, task)
        .await
        .map_err(|_| format!("the push took longer than {limit:?}"))??
        .map_err(|e| git_failure(&e, redactor))?;
    let UpdateOutcome::Pushed { commit, branch, .. } = outcome else {
        println!("✔ the branch already has the image: nothing to commit");
        return Ok(());
    };
    println!("✔ pushed commit {commit} to branch {branch}");
    let mut note = format!(
        "{user} released {} to {title} in commit {commit} on branch {branch}",
        args.image.reference()
    );
    if let Some(why) = args.message.as_deref().and_then(|m| m.lines().next()) {
        let _ = write!(note, ": {why}");
    }
    crate::audit::record(client, &target.reference(), reasons::RELEASED, note).await;
    Ok(())
}

/// Asks the GitRepository and the Kustomization to reconcile, then waits until the workload runs
/// the image.
async fn converge(
    client: &Client,
    target: &Target,
    origin: &Origin,
    image: &ReleaseImage,
    timeout: Duration,
) -> Result<(), BoxError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
    let source_ns = origin.source.namespace().unwrap_or_default();
    let ks_ns = origin.kustomization.namespace().unwrap_or_default();
    let requests = [
        crate::control::request::<GitRepository>(
            client,
            &source_ns,
            &origin.source.name_any(),
            left(),
            None,
        )
        .await?,
        crate::control::request::<Kustomization>(
            client,
            &ks_ns,
            &origin.kustomization.name_any(),
            left(),
            None,
        )
        .await?,
    ];
    if requests.contains(&false) {
        return Err(format!(
            "the release is pushed, but {} does not run it: its source or Kustomization is not \
             Ready",
            target.title()
        )
        .into());
    }
    wait_running(target, image, left()).await
}

/// Waits until the workload's pod template has the image and, for a Deployment, its rollout is
/// complete.
async fn wait_running(
    target: &Target,
    image: &ReleaseImage,
    timeout: Duration,
) -> Result<(), BoxError> {
    let title = target.title();
    let kind = target.kind;
    let progress = RefCell::new(crate::term::Progress::start(&format!(
        "waiting for {title} to run {}",
        image.reference()
    )));
    let condition = |object: Option<&DynamicObject>| {
        let Some(object) = object else {
            return false;
        };
        let state = running(kind, object, image);
        if let Err(why) = &state {
            progress.borrow_mut().update(why);
        }
        state.is_ok()
    };
    let outcome = tokio::time::timeout(
        timeout,
        await_condition(target.api.clone(), &target.name, condition),
    )
    .await;
    progress.into_inner().finish();
    match outcome {
        Ok(Ok(Some(_))) => {
            println!("✔ {title} runs {}", image.reference());
            Ok(())
        }
        Ok(Ok(None)) => Err(format!("{title} was deleted").into()),
        Ok(Err(e)) => Err(format!("watching {title}: {e}").into()),
        Err(_) => Err(format!(
            "the release is pushed, but {title} did not run {} within {timeout:?}",
            image.reference()
        )
        .into()),
    }
}

/// Whether the workload runs the image (`Ok`), else what it waits for.
fn running(kind: Kind, object: &DynamicObject, image: &ReleaseImage) -> Result<(), String> {
    let value = serde_json::to_value(object).map_err(|e| e.to_string())?;
    let images = container_images(&kind.resource().kind, &value);
    if !images.iter().any(|(_, i)| image.is_running_in(i)) {
        return Err("waiting for the pod template to have the image".to_owned());
    }
    if kind == Kind::Deployment {
        return rollout(&value, object.metadata.generation);
    }
    Ok(())
}

/// A Deployment's rollout, as `kubectl rollout status` reads it.
fn rollout(deployment: &Value, generation: Option<i64>) -> Result<(), String> {
    let number = |pointer: &str| deployment.pointer(pointer).and_then(Value::as_i64);
    let observed = number("/status/observedGeneration");
    if observed < generation {
        return Err("waiting for the rollout to be observed".to_owned());
    }
    let wanted = number("/spec/replicas").unwrap_or(1);
    let updated = number("/status/updatedReplicas").unwrap_or(0);
    let replicas = number("/status/replicas").unwrap_or(0);
    let available = number("/status/availableReplicas").unwrap_or(0);
    if updated < wanted {
        return Err(format!("{updated} of {wanted} replicas updated"));
    }
    if replicas > updated {
        return Err(format!(
            "{} old replicas pending termination",
            replicas - updated
        ));
    }
    if available < updated {
        return Err(format!(
            "{available} of {updated} updated replicas available"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_message_says_what_and_who_with_a_trailer() {
        let image = ReleaseImage::parse("reg/app:1.1.0").unwrap();
        let change = Change {
            line: 7,
            setter: String::new(),
            old_value: "reg/app:1.0.0".into(),
            new_value: "reg/app:1.1.0".into(),
            object: weir_image::setters::ObjectId::default(),
        };
        let changes = [("apps/deploy.yaml".to_owned(), change)];
        assert_eq!(
            commit_message(None, &image, "Deployment/apps/web", "alice", &changes),
            "Release reg/app:1.1.0 to Deployment/apps/web\n\n\
             - apps/deploy.yaml:7 reg/app:1.0.0 -> reg/app:1.1.0\n\nReleased-by: alice\n"
        );
        assert!(
            commit_message(Some("hotfix\n"), &image, "w", "bob", &changes)
                .starts_with("hotfix\n\n- apps/deploy.yaml:7")
        );
    }

    #[test]
    fn a_dry_run_diff_is_a_unified_diff() {
        let before = "a: 1\nimage: reg/app:1\nb: 2\n";
        let after = "a: 1\nimage: reg/app:2\nb: 2\n";
        assert_eq!(
            diff("apps/d.yaml", before, after),
            "--- a/apps/d.yaml\n+++ b/apps/d.yaml\n@@ -1,3 +1,3 @@\n a: 1\n\
             -image: reg/app:1\n+image: reg/app:2\n b: 2\n"
        );
    }

    #[test]
    fn a_rollout_is_complete_as_kubectl_says() {
        let deployment = |observed: i64, updated: i64, replicas: i64, available: i64| {
            json!({
                "spec": { "replicas": 2 },
                "status": {
                    "observedGeneration": observed, "updatedReplicas": updated,
                    "replicas": replicas, "availableReplicas": available,
                },
            })
        };
        assert!(rollout(&deployment(3, 2, 2, 2), Some(3)).is_ok());
        assert!(rollout(&deployment(2, 2, 2, 2), Some(3)).is_err());
        assert_eq!(
            rollout(&deployment(3, 1, 3, 1), Some(3)),
            Err("1 of 2 replicas updated".to_owned())
        );
        assert_eq!(
            rollout(&deployment(3, 2, 3, 2), Some(3)),
            Err("1 old replicas pending termination".to_owned())
        );
        assert_eq!(
            rollout(&deployment(3, 2, 2, 1), Some(3)),
            Err("1 of 2 updated replicas available".to_owned())
        );
    }
}
