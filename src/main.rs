//! The `rollgate` command line.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = rollgate::cli::Cli::parse();
    ExitCode::from(rollgate::cli::run(cli))
}
