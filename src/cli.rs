//! Command-line arguments (clap). No I/O here: `run` executes, `output` prints.

pub mod output;
pub mod run;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Exit codes, documented in the README.
pub mod exit {
    pub const OK: u8 = 0;
    /// The rollout failed or was rolled back.
    pub const FAILED: u8 = 1;
    /// Invalid input or usage.
    pub const INPUT: u8 = 2;
    /// Paused, waiting for promotion.
    pub const PAUSED: u8 = 3;
    /// Interrupted (Ctrl-C).
    pub const INTERRUPTED: u8 = 130;
}

#[derive(Debug, Parser)]
#[command(name = "rollgate", version, about = "Health-gated rolling, canary and blue-green rollouts", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check manifests without changing anything.
    Validate(InputArgs),
    /// Show the steps a rollout would take, offline.
    Plan(PlanArgs),
}

#[derive(Debug, Args)]
pub struct InputArgs {
    /// Manifest files; later files deep-merge over earlier ones.
    #[arg(short = 'f', long = "file", required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Also load `<file>.<ENV>.yaml` next to each file, when it exists.
    #[arg(long, value_name = "ENV")]
    pub env: Option<String>,
    /// Treat warnings as errors.
    #[arg(long)]
    pub strict: bool,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Instance count for a Kubernetes target, without asking the cluster.
    #[arg(long, value_name = "N")]
    pub replicas: Option<u32>,
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}
