//! `weir`: Weir's one binary. It runs the controllers and carries the user commands.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod control;
mod controllers;
mod get;
mod metrics;

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
        Command::Controllers(args) => controllers::run(&args),
        Command::Get(args) => get::run(&args),
        Command::Reconcile(args) => control::reconcile(&args),
        Command::Suspend(args) => control::suspend(&args, control::Verb::Suspend),
        Command::Resume(args) => control::suspend(&args, control::Verb::Resume),
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
