//! Command-line arguments (clap) and the dispatch to `run` (commands) and `demo`; `output` prints.

pub mod approve;
pub mod artifact;
mod controls;
pub mod dashboard;
pub mod demo;
pub mod dry_run;
pub mod generate;
pub mod inspect;
pub mod list;
pub mod output;
pub mod pause_watch;
pub mod pki;
mod rollback;
pub mod run;
pub mod schema;
pub mod security;
pub mod watch;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::engine::Interrupts;
use crate::error_chain;
use crate::spec::InputError;

/// Runs a command and returns the process exit code. Errors are printed here.
pub fn run(cli: Cli) -> u8 {
    let result = match check_output(&cli.command) {
        Err(e) => Err(e),
        Ok(()) => dispatch(cli),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            e.code()
        }
    }
}

fn dispatch(cli: Cli) -> Result<u8, CliError> {
    match cli.command {
        Command::Demo(args) => match runtime() {
            Ok(runtime) => runtime.block_on(demo::run(&args)),
            Err(e) => Err(CliError::Failed(format!("starting a tokio runtime: {e}"))),
        },
        command => run::command(command, cli.context, cli.namespace, cli.state),
    }
}

/// The runtime a command runs on: one thread. A run mostly waits on the network (watch events,
/// agents' answers), and on a multi-threaded runtime each event crossed threads: the command's
/// own future runs on the calling thread, the connections and watches on the workers. Measured
/// on 2 cores (`ROLLGATE_BENCH=pods ROLLGATE_BENCH_PODS=1000 cargo bench --bench rollgate`), a
/// 1,000-pod rollout's CLI CPU 1.00-1.09 s -> 0.73-0.78 s; the fan-out to 200-1,000 agents was
/// no slower and its CPU per host lower (README "A thousand pods", "A thousand agents").
pub(crate) fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Counts Ctrl-C / SIGTERM for a run: the first asks it to pause after the current step, the
/// second exits at once (`resume` continues from the journal).
pub(crate) fn install_interrupts() -> Interrupts {
    let interrupts = Interrupts::default();
    let handle = interrupts.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        loop {
            #[cfg(unix)]
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            #[cfg(not(unix))]
            let _ = tokio::signal::ctrl_c().await;
            if handle.raise() >= 2 {
                eprintln!(
                    "second interrupt: stopping now; `rollgate resume` continues from the journal"
                );
                std::process::exit(i32::from(exit::INTERRUPTED));
            }
            eprintln!(
                "interrupt: finishing the current step, then pausing (Ctrl-C again to stop at once)"
            );
        }
    });
    interrupts
}

/// Errors at the command line's edge, each with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    pub fn code(&self) -> u8 {
        match self {
            CliError::Input(_) => exit::INPUT,
            CliError::Failed(_) => exit::FAILED,
        }
    }
}

/// A failure, printed with its sources.
pub(crate) fn failed(e: impl std::error::Error) -> CliError {
    CliError::Failed(error_chain(&e))
}

impl From<crate::target::TargetError> for CliError {
    fn from(e: crate::target::TargetError) -> Self {
        failed(e)
    }
}

impl From<crate::kube::KubeError> for CliError {
    /// An unknown `--context` is a usage error.
    fn from(e: crate::kube::KubeError) -> Self {
        match e {
            crate::kube::KubeError::UnknownContext { .. } => {
                InputError::general(e.to_string()).into()
            }
            e => failed(e),
        }
    }
}

impl From<crate::state::mirror::ClusterError> for CliError {
    fn from(e: crate::state::mirror::ClusterError) -> Self {
        match e {
            crate::state::mirror::ClusterError::Kube(e) => e.into(),
            e => failed(e),
        }
    }
}

impl From<crate::hold::HoldError> for CliError {
    fn from(e: crate::hold::HoldError) -> Self {
        match e {
            crate::hold::HoldError::Usage(why) => InputError::general(why).into(),
            crate::hold::HoldError::Kube(e) => e.into(),
            crate::hold::HoldError::Cluster(e) => e.into(),
            e => failed(e),
        }
    }
}

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
    /// Host fleets: the team state on etcd, over the manifest's `spec.state`:
    /// `etcd://HOST:PORT[,HOST:PORT...]/PREFIX`, or `etcd+https://...?ca=FILE&cert=FILE&key=FILE`.
    #[arg(long, global = true, value_name = "URL", env = "ROLLGATE_STATE_URL")]
    pub state: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check manifests without changing anything.
    Validate(ValidateArgs),
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
    /// Every app this machine's state dir knows: its version, its last rollout's outcome and when.
    List {
        /// `json`: one object a line; `yaml`: one list.
        #[arg(short = 'o', long, value_enum, default_value_t = Progress::Auto)]
        output: Progress,
    },
    /// The audit trail of an app's rollouts (`-o json`: one JSON array of them).
    History(HistoryArgs),
    /// While a rollout waits at a pause: watch the new version's pods, roll back if they fail.
    Watch(AppArgs),
    /// A live web view of this machine's rollouts, with promote/pause/resume/abort/rollback.
    Dashboard(DashboardArgs),
    /// Certificates for mTLS between rollgate and its agents.
    #[command(subcommand)]
    Pki(PkiCommand),
    /// A real local rollout: agents on loopback, v1 -> v2 by canary, then a bad v3 rolled back.
    Demo(DemoArgs),
    /// Print shell completions: `rollgate completion bash > /etc/bash_completion.d/rollgate`.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `rollgate man > rollgate.1`.
    Man,
    /// Build artifacts for host fleets (README "Artifacts").
    #[command(subcommand)]
    Artifact(ArtifactCommand),
    /// Print a JSON Schema (for editors: README "Editor support").
    Schema {
        #[arg(value_enum, default_value_t = SchemaKind::Manifest)]
        kind: SchemaKind,
    },
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub input: InputArgs,
    #[arg(short = 'o', long, value_enum, default_value_t = Progress::Auto)]
    pub output: Progress,
    /// Check everything short of changing anything (agents, versions or artifacts, access on
    /// Kubernetes) and print the plan; nothing is journaled. Exit codes as `apply`.
    #[arg(long)]
    pub dry_run: bool,
    /// At a pause that one `promote` ends, keep running (and holding the app's lock) until a
    /// `promote` or `abort` from anywhere, acted on at once; instead of exit 3. A pause that needs
    /// several or signed approvals still ends with exit 3; Ctrl-C while waiting leaves it paused
    /// (exit 3).
    #[arg(long, conflicts_with = "dry_run")]
    pub wait: bool,
}

/// `-o` on the commands that stream a rollout or read its state: the same four words as `plan`'s
/// and `validate`'s [`Format`] (README "Conventions").
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Progress {
    /// For people: progress bars (and `status --watch` redraws) on a terminal, plain lines
    /// otherwise. `auto` is the same.
    #[value(name = "table", alias = "auto")]
    Auto,
    /// Plain lines, never a progress bar or a redraw.
    Plain,
    /// JSON only on stdout, one object a line (`history`: one array); messages go to stderr.
    Json,
    /// `status`, `history`: YAML. The commands that stream a rollout refuse it (use `json`).
    Yaml,
}

/// Refuses `-o yaml` on the commands that stream journal records: they print JSON lines.
fn check_output(command: &Command) -> Result<(), CliError> {
    let (name, output) = match command {
        Command::Apply(a) => ("apply", a.output),
        Command::Resume(a) | Command::Pause(a) | Command::Abort(a) | Command::Retry(a) => {
            ("this command", a.output)
        }
        Command::Promote(p) => ("promote", p.app.output),
        Command::Rollback(r) => ("rollback", r.app.output),
        Command::Demo(d) => ("demo", d.output),
        _ => return Ok(()),
    };
    if output == Progress::Yaml {
        return Err(InputError::general(format!(
            "-o yaml: {name} streams the rollout's journal records as they happen; expected -o table, plain or json (one JSON object a line)"
        ))
        .into());
    }
    Ok(())
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
    #[command(flatten)]
    pub signer: SignerArgs,
}

/// An approver certificate and its key, to sign an approval (README "Change approval").
#[derive(Debug, Args)]
pub struct SignerArgs {
    /// The approver's private key (PEM); its contents are never printed.
    #[arg(long, env = "ROLLGATE_APPROVER_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// The approver's certificate (`rollgate pki issue --approver NAME`).
    #[arg(long, env = "ROLLGATE_APPROVER_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub app: AppArgs,
    /// Re-verify every signed record; exit 1 naming any that fails.
    #[arg(long)]
    pub verify: bool,
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
    /// Follow the rollout until it ends (exit with its state's code) or pauses (exit 3): redrawn in
    /// place on a terminal, a line per change otherwise (or with `-o plain`).
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// With `--watch`: give up after DUR (`90s`, `5m`), exit 1.
    #[arg(long, value_name = "DUR", requires = "watch", value_parser = parse_dur)]
    pub timeout: Option<crate::spec::Dur>,
    /// `json`: one object a line (each update, with `--watch`).
    #[arg(short = 'o', long, value_enum, default_value_t = Progress::Auto)]
    pub output: Progress,
}

fn parse_dur(s: &str) -> Result<crate::spec::Dur, String> {
    crate::spec::Dur::parse(s)
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
        #[arg(
            long,
            conflicts_with_all = ["client", "approver"],
            required_unless_present_any = ["client", "approver"]
        )]
        agent: Option<String>,
        /// A client certificate for rollgate.
        #[arg(long, conflicts_with = "approver")]
        client: Option<String>,
        /// A person's approver certificate, for signed `promote` (only the approver usage).
        #[arg(long, value_name = "NAME")]
        approver: Option<String>,
        /// Replace an existing certificate and key of that name.
        #[arg(long)]
        force: bool,
        /// Valid for this many days from now (default: until January 1st, three years on).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: Option<u32>,
    },
    /// List the certificates in DIR with their expiry; exit 1 if any expires within 30 days.
    Check {
        #[arg(default_value = "pki")]
        dir: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct DashboardArgs {
    /// Where to serve: an address and port (port 0 picks a free one; the URL is printed). Off
    /// loopback it needs --tls-cert/--tls-key and --client-ca or a token.
    #[arg(long, default_value = "127.0.0.1:7900", value_name = "ADDR")]
    pub listen: String,
    /// Serve HTTPS with this certificate (PEM), e.g. from `rollgate pki issue --agent HOST`.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Accept client certificates issued by this CA (PEM; the PKI's ca.pem, certificates from
    /// `rollgate pki issue --client NAME`). Needs --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,
    /// Accept `Authorization: Bearer TOKEN` with the token in this file (else
    /// ROLLGATE_DASHBOARD_TOKEN). Needs --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the demo keeps its agents, artifacts and state (default: a new temporary dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// How many local hosts (agents).
    #[arg(long, default_value_t = 4)]
    pub hosts: usize,
    /// Keep the demo's files (agents, artifacts, manifests, journal) instead of removing them.
    #[arg(long)]
    pub keep: bool,
    #[arg(short = 'o', long, value_enum, default_value_t = Progress::Auto)]
    pub output: Progress,
    /// Serve `rollgate dashboard` of the demo's state while it runs, and after it until Ctrl-C.
    #[arg(long)]
    pub dashboard: bool,
    /// Where `--dashboard` serves (loopback only).
    #[arg(
        long,
        default_value = "127.0.0.1:7900",
        value_name = "ADDR",
        requires = "dashboard"
    )]
    pub dashboard_listen: String,
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
    /// Instance count for a Kubernetes target, without asking the cluster (at most 1000000).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=i64::from(crate::plan::MAX_INSTANCES)))]
    pub replicas: Option<u32>,
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

#[derive(Debug, Subcommand)]
pub enum ArtifactCommand {
    /// Pack DIR's contents (the version dir: bin/..., config) into a .tar.gz; prints its sha256.
    Pack {
        /// The folder whose contents become the version dir on each host.
        dir: PathBuf,
        /// The archive to write, e.g. `web-2.0.0.tar.gz`.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: PathBuf,
    },
}

/// Which document `rollgate schema` describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SchemaKind {
    /// A rollout manifest (`-f` files).
    Manifest,
    /// A strategy preset file (`strategy.ref`).
    Strategy,
    /// The agent's configuration (`rollgate-agent run -c`).
    AgentConfig,
}

/// `-o` on `plan` and `validate`: the same four words as [`Progress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// For people (`auto` is the same).
    #[value(alias = "auto")]
    Table,
    Json,
    Yaml,
    /// As `table`: these commands draw nothing on a terminal that a pipe would not get.
    Plain,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// `json` / `yaml`: `app`, `valid`, `strategy`, `strategySource`, `files`.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}
