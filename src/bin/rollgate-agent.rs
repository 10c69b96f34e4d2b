//! The rollgate host agent binary: parse the command line, run the agent.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 invalid configuration or usage,
//! 130 stopped by a second interrupt.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use rollgate::agent::{config, daemon};

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
    /// Check a configuration as `run` does, short of binding the port: the fields (errors name
    /// file:line:column and the field), the listen address and its authentication, the token
    /// source, the certificates and key.
    CheckConfig {
        /// Config file(s); later ones overlay earlier ones (`-f`/`--file` also work).
        #[arg(
            short = 'c',
            long = "config",
            short_alias = 'f',
            alias = "file",
            required = true
        )]
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

fn init_logging(format: LogFormat, level: &str, event_log: bool) {
    use std::io::IsTerminal;
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Under systemd, stderr goes to the journal, which stamps each line itself and reads its
    // priority from a `<N>` prefix.
    let journald = rollgate::agent::journald::stderr_is_journal();
    let fmt = tracing_subscriber::fmt::layer().with_ansi(std::io::stderr().is_terminal());
    let fmt = match (format, journald) {
        (LogFormat::Json, _) => fmt.with_writer(std::io::stderr).json().boxed(),
        (LogFormat::Text, true) => fmt
            .without_time()
            .with_writer(rollgate::agent::journald::JournalStderr)
            .boxed(),
        (LogFormat::Text, false) => fmt.with_writer(std::io::stderr).boxed(),
    };
    // The agent as a Windows service also writes to the Application Event Log.
    #[cfg(windows)]
    let event_log = event_log.then_some(rollgate::agent::eventlog::EventLogLayer);
    #[cfg(not(windows))]
    let event_log = event_log.then_some(tracing_subscriber::layer::Identity::new());
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(event_log)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let as_windows_service = cfg!(windows)
        && matches!(
            cli.command,
            Command::Service {
                action: ServiceAction::Run(_)
            }
        );
    init_logging(cli.log_format, &cli.log_level, as_windows_service);
    match cli.command {
        Command::CheckConfig { files, env } => match check_config(&files, env.as_deref()) {
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
                eprintln!("error: {e:#}");
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

/// Loads a configuration and runs every check `run` runs before it binds.
fn check_config(files: &[PathBuf], env: Option<&str>) -> anyhow::Result<config::AgentConfig> {
    let c = config::load(files, env)?;
    let checked = runtime()?.block_on(rollgate::agent::server::Server::check(&c, &c.listen));
    checked?;
    if c.data_dir.exists() && !c.data_dir.is_dir() {
        anyhow::bail!("dataDir {} is not a directory", c.data_dir.display());
    }
    Ok(c)
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

/// The lifecycle's overrides from the command line.
fn options(args: &RunArgs) -> daemon::Options {
    daemon::Options {
        listen: args.listen.clone(),
        addr_file: args.addr_file.clone(),
    }
}

/// The agent's runtime: one worker thread is plenty for an agent (unpacking runs on the
/// blocking pool) and keeps the idle footprint small.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(8)
        .enable_all()
        .build()
}

fn run_blocking(args: RunArgs, notify: bool) -> ExitCode {
    let config = match config::load(&args.config, args.env.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut hooks = Foreground { notify };
    let result = runtime.block_on(async {
        let mut signals = Signals::new();
        let stop = async move {
            signals.recv().await;
            tokio::spawn(async move {
                signals.recv().await;
                tracing::warn!("second interrupt: aborting now");
                std::process::exit(130);
            });
        };
        daemon::run(config, options(&args), stop, &mut hooks).await
    });
    // Do not wait for stray blocking tasks (a stuck download) past the grace period.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = e.exit_code();
            let e = anyhow::Error::from(e);
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::from(code)
        }
    }
}

/// The foreground agent's announcements: a line on stdout, and systemd's notifications when
/// run by systemd (`service run`).
struct Foreground {
    notify: bool,
}

impl daemon::Hooks for Foreground {
    fn ready(&mut self, url: &str) {
        println!("rollgate-agent listening on {url}");
        if self.notify {
            sd_notify("READY=1");
        }
    }

    fn stopping(&mut self, _grace: std::time::Duration) {
        if self.notify {
            sd_notify("STOPPING=1");
        }
    }
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

#[cfg(not(windows))]
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
        rollgate::agent::store::write_atomic(&path, text.as_bytes())?;
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
/// Built and run under Wine by `tests/windows/run.sh`.
#[cfg(windows)]
#[allow(unsafe_code)] // define_windows_service! expands to an `extern "system"` entry point.
mod windows {
    use std::ffi::OsString;
    use std::path::Path;
    use std::process::ExitCode;
    use std::sync::OnceLock;
    use std::time::Duration;

    use anyhow::Context;
    use rollgate::agent::{config, daemon, eventlog, win32};
    use tokio_util::sync::CancellationToken;
    use windows_service::service::{
        ServiceAccess, ServiceControl, ServiceControlAccept, ServiceErrorControl, ServiceExitCode,
        ServiceInfo, ServiceStartType, ServiceState, ServiceStatus, ServiceType,
    };
    use windows_service::service_control_handler::{
        self, ServiceControlHandlerResult, ServiceStatusHandle,
    };
    use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
    use windows_service::{define_windows_service, service_dispatcher};

    const NAME: &str = "rollgate-agent";
    /// Renders any event id as its one string (.NET's generic message table, present on every
    /// Windows with .NET Framework 4); the entries' text is the agent's log line.
    const EVENT_MESSAGE_FILE: &str =
        r"%SystemRoot%\Microsoft.NET\Framework64\v4.0.30319\EventLogMessages.dll";
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
        win32::register_event_source(eventlog::SOURCE, EVENT_MESSAGE_FILE)
            .context("registering the Event Log source")?;
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
            // The agent drains within its shutdown grace; the SCM deletes a service only
            // once it has stopped.
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while service.query_status()?.current_state != ServiceState::Stopped {
                anyhow::ensure!(
                    std::time::Instant::now() < deadline,
                    "the {NAME} service did not stop within 120s"
                );
                std::thread::sleep(Duration::from_millis(250));
            }
        }
        service.delete()?;
        win32::deregister_event_source(eventlog::SOURCE)
            .context("removing the Event Log source")?;
        println!("removed the {NAME} service and its Event Log source");
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

    /// The SCM's entry point: everything that can fail is in [`run_service`], whose error is
    /// logged here (the SCM has already been told STOPPED with its exit code).
    fn service_main(_arguments: Vec<OsString>) {
        match run_service() {
            Ok(()) => tracing::info!(
                event_id = eventlog::ids::STOPPED,
                "the {NAME} service stopped"
            ),
            Err(e) => tracing::error!(
                event_id = eventlog::ids::FAILED,
                "the {NAME} service could not serve: {e:#}"
            ),
        }
    }

    /// A service status reporter: the checkpoint advances with each pending report.
    struct Status {
        handle: ServiceStatusHandle,
        checkpoint: u32,
    }

    impl Status {
        fn set(&mut self, state: ServiceState, exit_code: ServiceExitCode, wait_hint: Duration) {
            let pending = matches!(
                state,
                ServiceState::StartPending | ServiceState::StopPending
            );
            self.checkpoint = if pending { self.checkpoint + 1 } else { 0 };
            let controls_accepted = if state == ServiceState::Running {
                ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN
            } else {
                ServiceControlAccept::empty()
            };
            if let Err(e) = self.handle.set_service_status(ServiceStatus {
                service_type: ServiceType::OWN_PROCESS,
                current_state: state,
                controls_accepted,
                exit_code,
                checkpoint: self.checkpoint,
                wait_hint,
                process_id: None,
            }) {
                tracing::warn!("reporting {state:?} to the service control manager: {e}");
            }
        }
    }

    impl daemon::Hooks for Status {
        fn ready(&mut self, url: &str) {
            tracing::info!(event_id = eventlog::ids::STARTED, %url, "the {NAME} service is running");
            self.set(
                ServiceState::Running,
                ServiceExitCode::Win32(0),
                Duration::ZERO,
            );
        }

        fn stopping(&mut self, grace: Duration) {
            self.set(
                ServiceState::StopPending,
                ServiceExitCode::Win32(0),
                grace + Duration::from_secs(10),
            );
        }
    }

    /// START_PENDING while the config is loaded and the port bound, RUNNING once listening,
    /// STOPPED at the end: with exit code 0 after a stop, with a service-specific exit code
    /// (2: the configuration, 1: anything else) when it could not serve.
    fn run_service() -> anyhow::Result<()> {
        let args = ARGS
            .get()
            .context("service_main ran without the service's arguments")?;
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let handler = move |control| match control {
            ServiceControl::Stop | ServiceControl::Shutdown => {
                stop.cancel();
                ServiceControlHandlerResult::NoError
            }
            ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
            _ => ServiceControlHandlerResult::NotImplemented,
        };
        let handle = service_control_handler::register(NAME, handler)
            .context("registering the service control handler")?;
        // The supervisor stops its services with CTRL_BREAK, which needs a shared console.
        win32::ensure_console();
        let mut status = Status {
            handle,
            checkpoint: 0,
        };
        status.set(
            ServiceState::StartPending,
            ServiceExitCode::Win32(0),
            Duration::from_secs(30),
        );
        let result = serve(args, cancel, &mut status);
        let exit_code = match &result {
            Ok(()) => ServiceExitCode::Win32(0),
            Err((code, _)) => ServiceExitCode::ServiceSpecific(u32::from(*code)),
        };
        status.set(ServiceState::Stopped, exit_code, Duration::ZERO);
        result.map_err(|(_, e)| e)
    }

    fn serve(
        args: &super::RunArgs,
        cancel: CancellationToken,
        status: &mut Status,
    ) -> Result<(), (u8, anyhow::Error)> {
        let config = config::load(&args.config, args.env.as_deref()).map_err(|e| {
            (
                2,
                anyhow::Error::from(e).context("loading the configuration"),
            )
        })?;
        let runtime = super::runtime()
            .map_err(|e| (1, anyhow::Error::from(e).context("starting the runtime")))?;
        let result = runtime.block_on(daemon::run(
            config,
            super::options(args),
            cancel.cancelled_owned(),
            status,
        ));
        runtime.shutdown_timeout(Duration::from_secs(1));
        result.map_err(|e| (e.exit_code(), anyhow::Error::from(e)))
    }
}
