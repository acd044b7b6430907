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
    /// Show the state of sources, Kustomizations and image automation, as `flux get` does.
    Get(get::Args),
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
    }
}
