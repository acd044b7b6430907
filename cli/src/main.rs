//! `weir`: Weir's one binary. It runs the controllers and carries the user commands.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
