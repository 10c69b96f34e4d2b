//! Command-line arguments (clap). No I/O here: `run` executes, `output` prints.

pub mod demo;
pub mod output;
pub mod run;
pub mod security;

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
#[command(name = "rollgate", version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("ROLLGATE_GIT_COMMIT"), ")"), about = "Health-gated rolling, canary and blue-green rollouts", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Kubernetes targets: the kubeconfig context to use (default: its current context).
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// Kubernetes targets: the namespace, over the manifest's; for commands that name only the app,
    /// where its state is looked up (default: the manifest's, else the context's, else `default`).
    #[arg(short = 'n', long, global = true, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check manifests without changing anything.
    Validate(InputArgs),
    /// Show the steps a rollout would take, offline.
    Plan(PlanArgs),
    /// Run a rollout.
    Apply(ApplyArgs),
    /// Continue a paused or interrupted rollout from its journal.
    Resume(AppArgs),
    /// Approve a pause (recording who approved) and continue; `--full` skips to all-new.
    Promote(PromoteArgs),
    /// Ask a running rollout to pause after its current step.
    Pause(AppArgs),
    /// Abort a rollout and roll it back.
    Abort(AppArgs),
    /// Retry a rollout that failed or was rolled back, with the same manifest.
    Retry(AppArgs),
    /// Put the previous (or given) version back on every instance.
    Rollback(RollbackArgs),
    /// The live state of an app's rollout.
    Status(StatusArgs),
    /// The audit trail of an app's rollouts.
    History(AppArgs),
    /// Certificates for mTLS between rollgate and its agents.
    #[command(subcommand)]
    Pki(PkiCommand),
    /// A real local rollout: agents on loopback, v1 -> v2 by canary, then a bad v3 rolled back.
    Demo(DemoArgs),
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub input: InputArgs,
    #[arg(short = 'o', long, value_enum, default_value_t = Progress::Auto)]
    pub output: Progress,
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Progress {
    /// Progress bars on a terminal, plain lines otherwise.
    Auto,
    Plain,
    /// One JSON event per line.
    Json,
}

#[derive(Debug, Args)]
pub struct AppArgs {
    /// The application (metadata.name).
    pub app: String,
    #[arg(short = 'o', long, value_enum, default_value_t = Progress::Auto)]
    pub output: Progress,
}

#[derive(Debug, Args)]
pub struct PromoteArgs {
    #[command(flatten)]
    pub app: AppArgs,
    /// Skip the remaining steps and go to all-new.
    #[arg(long)]
    pub full: bool,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub app: AppArgs,
    /// The version to return to; by default the one before the last rollout.
    #[arg(long, value_name = "VERSION")]
    pub to: Option<String>,
    /// Every instance at once, instead of waves of maxUnavailable.
    #[arg(long)]
    pub fast: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    pub app: String,
    /// Keep printing as the rollout changes.
    #[arg(long)]
    pub watch: bool,
}

#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Create a CA in DIR.
    Init {
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
    },
    /// Issue a certificate signed by the CA in DIR.
    Issue {
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
        /// An agent's server certificate for this host name or IP.
        #[arg(long, conflicts_with = "client", required_unless_present = "client")]
        agent: Option<String>,
        /// A client certificate for rollgate.
        #[arg(long)]
        client: Option<String>,
        /// Replace an existing certificate and key of that name.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the demo keeps its agents, artifacts and state (default: a new temporary dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// How many local hosts (agents).
    #[arg(long, default_value_t = 4)]
    pub hosts: usize,
    #[arg(short = 'o', long, value_enum, default_value_t = Progress::Auto)]
    pub output: Progress,
}

#[derive(Debug, Args)]
pub struct InputArgs {
    /// Manifest files; later files deep-merge over earlier ones.
    #[arg(short = 'f', long = "file", required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Also load `<file>.<ENV>.yaml` next to each file, when it exists.
    #[arg(long, value_name = "ENV")]
    pub env: Option<String>,
    /// Treat warnings (pod security) as errors: exit 2 and nothing done.
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
