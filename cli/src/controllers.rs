//! `weir controllers`: runs the selected controllers in one process. Controllers share no
//! memory; each talks only to the API server.

use std::process::ExitCode;

use clap::ValueEnum;

/// The controllers this binary can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Controller {}

/// Flags of `weir controllers`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Controllers to run, comma-separated; all of them when omitted.
    #[arg(long, value_delimiter = ',', value_enum)]
    pub controllers: Vec<Controller>,
}

/// Runs the selected controllers until interrupted.
pub fn run(args: &Args) -> ExitCode {
    if args.controllers.is_empty() && Controller::value_variants().is_empty() {
        eprintln!("weir controllers: this build has no controllers yet; nothing to run");
        return ExitCode::from(2);
    }
    ExitCode::SUCCESS
}
