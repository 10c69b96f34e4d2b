//! The rollgate host agent binary: parse the command line, run the agent.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 invalid configuration or usage,
//! 130 stopped by a second interrupt.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use rollgate::agent::{config, manager::Agent, server::Server, store};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "rollgate-agent",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("ROLLGATE_GIT_COMMIT"), ")"),
    about = "rollgate host agent: stages, installs, runs and switches service versions"
)]
struct Cli {
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log filter (tracing env-filter syntax).
    #[arg(
        long,
        global = true,
        env = "ROLLGATE_AGENT_LOG",
        default_value = "info"
    )]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the agent in the foreground.
    Run(RunArgs),
    /// Validate a configuration; errors name file:line:column and the field.
    CheckConfig {
        /// Config file(s); later ones overlay earlier ones.
        #[arg(short = 'f', long = "file", required = true)]
        files: Vec<PathBuf>,
        /// Also read `<file>.<env>.yaml` overlays.
        #[arg(long)]
        env: Option<String>,
    },
    /// Install, remove or run the agent as a system service.
    Service {
        #[command(subcommand)]
        action: ServiceAction,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Config file(s); later ones overlay earlier ones.
    #[arg(short = 'c', long = "config", required = true)]
    config: Vec<PathBuf>,
    /// Also read `<file>.<env>.yaml` overlays.
    #[arg(long)]
    env: Option<String>,
    /// Override `listen:` (port 0 picks a free port).
    #[arg(long)]
    listen: Option<String>,
    /// Also write the bound URL here (it is always written to `<dataDir>/agent.addr`).
    #[arg(long)]
    addr_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum ServiceAction {
    /// Register the agent: a systemd unit (Type=notify) on Linux, an SCM service on Windows.
    Install {
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
        /// Where the systemd unit is written.
        #[arg(long, default_value = "/etc/systemd/system")]
        unit_dir: PathBuf,
        /// Only write the unit; do not enable and start it.
        #[arg(long)]
        no_start: bool,
    },
    /// Stop and remove the registration.
    Uninstall {
        #[arg(long, default_value = "/etc/systemd/system")]
        unit_dir: PathBuf,
    },
    /// What the service manager runs: like `run`, plus readiness notification.
    Run(RunArgs),
}

fn init_logging(format: LogFormat, level: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Under systemd, stderr goes to the journal, which stamps each line itself and reads its
    // priority from a `<N>` prefix.
    let journald = rollgate::agent::journald::stderr_is_journal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match (format, journald) {
        (LogFormat::Json, _) => builder.json().init(),
        (LogFormat::Text, true) => builder
            .without_time()
            .with_writer(rollgate::agent::journald::JournalStderr)
            .init(),
        (LogFormat::Text, false) => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, &cli.log_level);
    match cli.command {
        Command::CheckConfig { files, env } => match config::load(&files, env.as_deref()) {
            Ok(c) => {
                println!(
                    "{}: ok ({} service(s), listen {})",
                    files
                        .iter()
                        .map(|f| f.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    c.services.len(),
                    c.listen
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Run(args) => run_blocking(args, false),
        Command::Service { action } => match action {
            ServiceAction::Run(args) => {
                #[cfg(windows)]
                {
                    return windows::run_dispatcher(args);
                }
                #[cfg(not(windows))]
                run_blocking(args, true)
            }
            ServiceAction::Install {
                config,
                unit_dir,
                no_start,
            } => report(install(&config, &unit_dir, no_start)),
            ServiceAction::Uninstall { unit_dir } => report(uninstall(&unit_dir)),
        },
    }
}

fn report(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_blocking(args: RunArgs, notify: bool) -> ExitCode {
    let config = match config::load(&args.config, args.env.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // One worker thread is plenty for an agent (unpacking runs on the blocking pool) and
    // keeps the idle footprint small.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(8)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cancel = CancellationToken::new();
    let result = runtime.block_on(run(config, args, notify, cancel));
    // Do not wait for stray blocking tasks (a stuck download) past the grace period.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    config: config::AgentConfig,
    args: RunArgs,
    notify: bool,
    cancel: CancellationToken,
) -> anyhow::Result<ExitCode> {
    let mut signals = Signals::new();
    let grace = config.shutdown_grace.0;
    let listen = args.listen.clone().unwrap_or_else(|| config.listen.clone());
    let data_dir = config.data_dir.clone();
    let agent = Agent::open(config).context("opening the agent's data dir")?;
    let server = Server::bind(agent.clone(), &listen).await?;
    let url = server.url();
    store::write_atomic(&data_dir.join("agent.addr"), url.as_bytes())?;
    if let Some(path) = &args.addr_file {
        store::write_atomic(path, url.as_bytes())?;
    }
    println!("rollgate-agent listening on {url}");
    tracing::info!(%url, data_dir = %data_dir.display(), "listening");
    let reconcile = {
        let agent = agent.clone();
        tokio::spawn(async move { agent.reconcile().await })
    };
    agent.spawn_health_loop();
    if notify {
        sd_notify("READY=1");
    }
    let serving = tokio::spawn(server.serve(cancel.clone(), grace));
    signals.recv().await;
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "stopping: finishing operations in flight"
    );
    if notify {
        sd_notify("STOPPING=1");
    }
    cancel.cancel();
    tokio::spawn(async move {
        signals.recv().await;
        tracing::warn!("second interrupt: aborting now");
        std::process::exit(130);
    });
    let _ = reconcile.await;
    agent.shutdown(grace).await;
    let _ = serving.await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM and Ctrl-C, registered up front so a signal right after READY=1 is not lost.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Self {
        Signals {
            #[cfg(unix)]
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok(),
        }
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(term) = self.term.as_mut() {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Sends a state line to systemd's `$NOTIFY_SOCKET` (sd_notify without libsystemd).
fn sd_notify(state: &str) {
    #[cfg(target_os = "linux")]
    {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr, UnixDatagram};
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return;
        };
        let path = path.to_string_lossy().into_owned();
        let Ok(sock) = UnixDatagram::unbound() else {
            return;
        };
        let sent = if let Some(name) = path.strip_prefix('@') {
            SocketAddr::from_abstract_name(name.as_bytes())
                .and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr))
        } else {
            sock.send_to(state.as_bytes(), &path)
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, "sd_notify failed");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = state;
}

const AGENT_UNIT: &str = "rollgate-agent.service";

fn install(config: &Path, unit_dir: &Path, no_start: bool) -> anyhow::Result<()> {
    let config =
        std::fs::canonicalize(config).with_context(|| format!("config {}", config.display()))?;
    let loaded = config::load(std::slice::from_ref(&config), None)?;
    let exe = std::env::current_exe().context("locating this executable")?;
    #[cfg(windows)]
    {
        let _ = (unit_dir, no_start, loaded);
        return windows::install(&exe, &config);
    }
    #[cfg(not(windows))]
    {
        let text = rollgate::agent::backend::systemd::agent_unit_text(&exe, &config, &loaded);
        // The unit's ReadWritePaths= needs the data dir before the agent starts.
        std::fs::create_dir_all(&loaded.data_dir)
            .with_context(|| format!("creating {}", loaded.data_dir.display()))?;
        let path = unit_dir.join(AGENT_UNIT);
        store::write_atomic(&path, text.as_bytes())?;
        println!("wrote {}", path.display());
        if !no_start {
            systemctl(&["daemon-reload"])?;
            systemctl(&["enable", "--now", AGENT_UNIT])?;
            println!("enabled and started {AGENT_UNIT}");
        }
        Ok(())
    }
}

fn uninstall(unit_dir: &Path) -> anyhow::Result<()> {
    #[cfg(windows)]
    {
        let _ = unit_dir;
        return windows::uninstall();
    }
    #[cfg(not(windows))]
    {
        let path = unit_dir.join(AGENT_UNIT);
        if Path::new("/run/systemd/system").is_dir() {
            let _ = systemctl(&["disable", "--now", AGENT_UNIT]);
        }
        match std::fs::remove_file(&path) {
            Ok(()) => println!("removed {}", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                println!("{} was not installed", path.display())
            }
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
        if Path::new("/run/systemd/system").is_dir() {
            systemctl(&["daemon-reload"])?;
        }
        Ok(())
    }
}

#[cfg(not(windows))]
fn systemctl(args: &[&str]) -> anyhow::Result<()> {
    let status = std::process::Command::new("systemctl")
        .args(args)
        .status()
        .with_context(|| format!("running systemctl {}", args.join(" ")))?;
    anyhow::ensure!(
        status.success(),
        "systemctl {} failed: {status}",
        args.join(" ")
    );
    Ok(())
}

/// The agent as a Windows service: SCM registration and the service dispatcher.
/// Not compiled on the Linux CI; kept to the calls the `windows-service` crate documents.
#[cfg(windows)]
#[allow(unsafe_code)] // define_windows_service! expands to an `extern "system"` entry point.
mod windows {
    use std::ffi::OsString;
    use std::path::Path;
    use std::process::ExitCode;
    use std::sync::OnceLock;
    use std::time::Duration;

    use windows_service::service::{
        ServiceAccess, ServiceControl, ServiceControlAccept, ServiceErrorControl, ServiceExitCode,
        ServiceInfo, ServiceStartType, ServiceState, ServiceStatus, ServiceType,
    };
    use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
    use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
    use windows_service::{define_windows_service, service_dispatcher};

    const NAME: &str = "rollgate-agent";
    static ARGS: OnceLock<super::RunArgs> = OnceLock::new();

    pub fn install(exe: &Path, config: &Path) -> anyhow::Result<()> {
        let manager = ServiceManager::local_computer(
            None::<&str>,
            ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE,
        )?;
        let info = ServiceInfo {
            name: OsString::from(NAME),
            display_name: OsString::from("rollgate host agent"),
            service_type: ServiceType::OWN_PROCESS,
            start_type: ServiceStartType::AutoStart,
            error_control: ServiceErrorControl::Normal,
            executable_path: exe.to_path_buf(),
            launch_arguments: vec![
                OsString::from("service"),
                OsString::from("run"),
                OsString::from("--config"),
                config.as_os_str().to_owned(),
            ],
            dependencies: vec![],
            account_name: None,
            account_password: None,
        };
        let service =
            manager.create_service(&info, ServiceAccess::CHANGE_CONFIG | ServiceAccess::START)?;
        service
            .set_description("Stages, installs, runs and switches service versions for rollgate")?;
        service.start(&[] as &[&std::ffi::OsStr])?;
        println!("installed and started the {NAME} service");
        Ok(())
    }

    pub fn uninstall() -> anyhow::Result<()> {
        let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)?;
        let service = manager.open_service(
            NAME,
            ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE,
        )?;
        if service.query_status()?.current_state != ServiceState::Stopped {
            let _ = service.stop();
        }
        service.delete()?;
        println!("removed the {NAME} service");
        Ok(())
    }

    define_windows_service!(ffi_service_main, service_main);

    pub fn run_dispatcher(args: super::RunArgs) -> ExitCode {
        let _ = ARGS.set(args);
        match service_dispatcher::start(NAME, ffi_service_main) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: not started by the service control manager: {e}");
                ExitCode::FAILURE
            }
        }
    }

    fn service_main(_arguments: Vec<OsString>) {
        let Some(args) = ARGS.get() else { return };
        let args = super::RunArgs {
            config: args.config.clone(),
            env: args.env.clone(),
            listen: args.listen.clone(),
            addr_file: args.addr_file.clone(),
        };
        let cancel = tokio_util::sync::CancellationToken::new();
        let stop = cancel.clone();
        let handler = move |control| match control {
            ServiceControl::Stop | ServiceControl::Shutdown => {
                stop.cancel();
                ServiceControlHandlerResult::NoError
            }
            ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
            _ => ServiceControlHandlerResult::NotImplemented,
        };
        let Ok(status) = service_control_handler::register(NAME, handler) else {
            return;
        };
        let set = |state, accept, wait: Duration| {
            let _ = status.set_service_status(ServiceStatus {
                service_type: ServiceType::OWN_PROCESS,
                current_state: state,
                controls_accepted: accept,
                exit_code: ServiceExitCode::Win32(0),
                checkpoint: 0,
                wait_hint: wait,
                process_id: None,
            });
        };
        set(
            ServiceState::Running,
            ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN,
            Duration::ZERO,
        );
        let Ok(config) = super::config::load(&args.config, args.env.as_deref()) else {
            set(
                ServiceState::Stopped,
                ServiceControlAccept::empty(),
                Duration::ZERO,
            );
            return;
        };
        let grace = config.shutdown_grace.0;
        let Ok(runtime) = tokio::runtime::Runtime::new() else {
            return;
        };
        let waiter = cancel.clone();
        runtime.block_on(async move {
            let agent = tokio::spawn(super::run_until(config, args, waiter));
            cancel.cancelled().await;
            set(
                ServiceState::StopPending,
                ServiceControlAccept::empty(),
                grace + Duration::from_secs(5),
            );
            let _ = agent.await;
        });
        set(
            ServiceState::Stopped,
            ServiceControlAccept::empty(),
            Duration::ZERO,
        );
    }
}

/// Runs the agent until `cancel` fires (the Windows service's stop control).
#[cfg(windows)]
async fn run_until(
    config: config::AgentConfig,
    args: RunArgs,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let grace = config.shutdown_grace.0;
    let listen = args.listen.clone().unwrap_or_else(|| config.listen.clone());
    let agent = Agent::open(config)?;
    let server = Server::bind(agent.clone(), &listen).await?;
    let serving = tokio::spawn(server.serve(cancel.clone(), grace));
    agent.reconcile().await;
    agent.spawn_health_loop();
    cancel.cancelled().await;
    agent.shutdown(grace).await;
    let _ = serving.await;
    Ok(())
}
