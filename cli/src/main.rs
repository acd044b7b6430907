//! `weir`: Weir's one binary. It runs the controllers and carries the user commands.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod audit;
mod build;
mod common;
mod control;
mod controllers;
mod events;
mod get;
mod history;
mod leader;
mod lock;
mod metrics;
mod release;
mod revert;
mod rollback;
mod term;
mod trace;
mod tree;
mod workload;

/// A GitOps engine for Kubernetes that speaks Flux's API.
#[derive(Debug, Parser)]
#[command(name = "weir", version = version_line(), propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the version and the git commit this binary was built from.
    Version,
    /// Print a shell completion script: `source <(weir completion bash)`.
    Completion {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Run Weir's controllers against the cluster of the current kubeconfig.
    Controllers(controllers::Args),
    /// Show the state of sources, HelmReleases, Kustomizations and image automation, as `flux get`
    /// does.
    Get(get::Args),
    /// Ask for a reconcile (`reconcile.fluxcd.io/requestedAt`), wait for it, and report Ready,
    /// as `flux reconcile` does.
    Reconcile(control::ReconcileArgs),
    /// Suspend reconciles of an object (`spec.suspend`), as `flux suspend` does.
    Suspend(control::SuspendArgs),
    /// Resume a suspended object and wait for its reconcile, as `flux resume` does.
    Resume(control::SuspendArgs),
    /// Pin a workload (or a HelmRelease) to the images it runs now, with a reason, until unlocked
    /// or `--expires`, as `fluxctl lock` did.
    Lock(lock::LockArgs),
    /// Release a lock made by `weir lock` (or by hand).
    Unlock(lock::UnlockArgs),
    /// Show the objects a Kustomization or HelmRelease applied as a tree, nested ones expanded,
    /// locks and rollbacks marked, as `flux tree` does.
    Tree(tree::Args),
    /// Show which Kustomization or HelmRelease, and which source, manage a live object, at which
    /// revision, as `flux trace` does.
    Trace(trace::Args),
    /// Show the Events of Weir's objects and the workloads they manage, as `flux events` does.
    Events(events::Args),
    /// Show the revisions a Kustomization or HelmRelease applied, with their commits, and every
    /// lock, rollback and manual release with who did it and why.
    History(history::Args),
    /// Print the objects applying a Kustomization would apply (from a local directory with
    /// `--path`, else its source), validated by server-side dry run, as `flux build` does.
    Build(build::Args),
    /// Show what applying a Kustomization would change, by server-side dry run: exit 1 when
    /// something would change, 0 when not, 2 on an error, as `flux diff` does.
    Diff(build::Args),
    /// Pin a Kustomization to an earlier applied revision (or a HelmRelease to an earlier Helm
    /// revision) until `--clear`, or with `--commit` write a revert commit to its source branch.
    Rollback(rollback::Args),
    /// Commit an image to git for a workload (its Kustomization's source), push it and wait until
    /// the cluster runs it, as `fluxctl release` did.
    Release(release::Args),
    /// Helm's post-renderer plugin for a HelmRelease's `spec.postRenderers` (run by Helm, not by
    /// people): reads rendered manifests on stdin, writes them post-rendered to stdout.
    #[command(name = "helm-post-render", hide = true)]
    HelmPostRender {
        /// The post-renderers, as JSON.
        renderers: std::path::PathBuf,
        /// The `kustomize` binary.
        kustomize: std::path::PathBuf,
    },
}

const fn version_line() -> &'static str {
    concat!(
        env!("CARGO_PKG_VERSION"),
        " (commit ",
        env!("WEIR_GIT_COMMIT"),
        ")"
    )
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("weir {}", version_line());
            ExitCode::SUCCESS
        }
        Command::Completion { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "weir", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Controllers(args) => controllers::run(&args),
        Command::Get(args) => get::run(&args),
        Command::Reconcile(args) => control::reconcile(&args),
        Command::Suspend(args) => control::suspend(&args, control::Verb::Suspend),
        Command::Resume(args) => control::suspend(&args, control::Verb::Resume),
        Command::Lock(args) => lock::lock(&args),
        Command::Unlock(args) => lock::unlock(&args),
        Command::Tree(args) => tree::run(&args),
        Command::Trace(args) => trace::run(&args),
        Command::Events(args) => events::run(&args),
        Command::History(args) => history::run(&args),
        Command::Build(args) => build::build(&args),
        Command::Diff(args) => build::diff(&args),
        Command::Rollback(args) => rollback::run(&args),
        Command::Release(args) => release::release(&args),
        Command::HelmPostRender {
            renderers,
            kustomize,
        } => match weir_helm::postrender::run_as_plugin(&renderers, &kustomize) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("Error: {}", weir_runtime::chain(&error));
                ExitCode::FAILURE
            }
        },
    }
}
