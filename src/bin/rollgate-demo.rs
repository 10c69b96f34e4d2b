//! The demo service: a tiny HTTP server whose flags select healthy or broken behaviour.
//!
//! Used by the agent tests, the benchmarks and the README demo. Every flag can also be set
//! through its `DEMO_*` environment variable so an agent service definition can set them, or in
//! a file beside the binary named after it with `.args` appended (`bin/web.args` for `bin/web`),
//! whitespace-separated, so an artifact carries its version's behaviour without a wrapper script.
//! The command line's flags come after the file's and win.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "rollgate-demo",
    about = "Demo HTTP service for rollgate",
    disable_version_flag = true
)]
struct Args {
    /// Address to listen on; defaults to 127.0.0.1:$PORT, else 127.0.0.1:8080.
    #[arg(long, env = "DEMO_LISTEN")]
    listen: Option<String>,
    /// Version reported by `/` and `/version`; defaults to $ROLLGATE_VERSION.
    #[arg(long = "version", env = "DEMO_VERSION")]
    app_version: Option<String>,
    /// Sleep this long before listening (a slow start).
    #[arg(long, env = "DEMO_START_DELAY_MS", default_value_t = 0)]
    start_delay_ms: u64,
    /// Status `/health` answers (e.g. 500 for an unhealthy version).
    #[arg(long, env = "DEMO_HEALTH_STATUS", default_value_t = 200)]
    health_status: u16,
    /// Exit with `--exit-code` right at start.
    #[arg(long, env = "DEMO_CRASH_AT_START")]
    crash_at_start: bool,
    /// Exit with `--exit-code` after this many seconds.
    #[arg(long, env = "DEMO_EXIT_AFTER_SECS")]
    exit_after_secs: Option<u64>,
    /// Exit code for `--crash-at-start` and `--exit-after-secs`.
    #[arg(long, env = "DEMO_EXIT_CODE", default_value_t = 1)]
    exit_code: i32,
    /// Fraction of `/` requests answered with 500 (0.0 to 1.0).
    #[arg(long, env = "DEMO_ERROR_RATE", default_value_t = 0.0)]
    error_rate: f64,
    /// Ignore SIGTERM (to exercise the stop timeout's kill).
    #[arg(long, env = "DEMO_IGNORE_SIGTERM")]
    ignore_sigterm: bool,
}

struct Demo {
    version: String,
    health_status: StatusCode,
    error_rate: f64,
    requests: AtomicU64,
    errors: AtomicU64,
}

impl Demo {
    /// Deterministic error spread: request n fails when floor((n+1)·rate) > floor(n·rate).
    fn should_fail(&self, n: u64) -> bool {
        let rate = self.error_rate.clamp(0.0, 1.0);
        ((n + 1) as f64 * rate).floor() > (n as f64 * rate).floor()
    }
}

async fn root(State(d): State<Arc<Demo>>) -> (StatusCode, String) {
    let n = d.requests.fetch_add(1, Ordering::Relaxed);
    if d.should_fail(n) {
        d.errors.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("version {} failed this request\n", d.version),
        );
    }
    (StatusCode::OK, format!("version {}\n", d.version))
}

async fn health(State(d): State<Arc<Demo>>) -> (StatusCode, &'static str) {
    if d.health_status.is_success() {
        (d.health_status, "ok\n")
    } else {
        (d.health_status, "unhealthy\n")
    }
}

async fn version_text(State(d): State<Arc<Demo>>) -> String {
    format!("{}\n", d.version)
}

async fn metrics(State(d): State<Arc<Demo>>) -> ([(&'static str, &'static str); 1], String) {
    let v = d.version.replace('\\', "\\\\").replace('"', "\\\"");
    let body = format!(
        "# HELP demo_requests_total Requests to / served.\n# TYPE demo_requests_total counter\ndemo_requests_total{{version=\"{v}\"}} {}\n# HELP demo_errors_total Requests to / answered with 500.\n# TYPE demo_errors_total counter\ndemo_errors_total{{version=\"{v}\"}} {}\n",
        d.requests.load(Ordering::Relaxed),
        d.errors.load(Ordering::Relaxed),
    );
    ([("content-type", "text/plain; version=0.0.4")], body)
}

async fn terminated(ignore_sigterm: bool) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => return,
            }
            if !ignore_sigterm {
                return;
            }
            eprintln!("rollgate-demo: ignoring SIGTERM as asked");
        }
    }
    #[cfg(windows)]
    {
        // The supervisor stops a Windows process group with CTRL_BREAK (CTRL_C is disabled in
        // a new process group).
        let _ = ignore_sigterm;
        match tokio::signal::windows::ctrl_break() {
            Ok(mut brk) => {
                tokio::select! {
                    _ = brk.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

/// The command line with the flags of `<binary>.args` (if there is one) inserted after the
/// program name.
fn command_line() -> Vec<std::ffi::OsString> {
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let file = std::env::current_exe().ok().map(|exe| {
        let mut name = exe.into_os_string();
        name.push(".args");
        std::path::PathBuf::from(name)
    });
    if let Some(text) = file.and_then(|f| std::fs::read_to_string(f).ok()) {
        let at = argv.len().min(1);
        argv.splice(
            at..at,
            text.split_whitespace().map(std::ffi::OsString::from),
        );
    }
    argv
}

fn main() -> std::process::ExitCode {
    // Started by the Windows SCM (the windows-scm backend), the demo speaks the service
    // protocol; anywhere else the dispatcher call fails at once and it runs as a console program.
    #[cfg(windows)]
    if let Some(code) = service::dispatch() {
        return code;
    }
    let args = Args::parse_from(command_line());
    let ignore = args.ignore_sigterm;
    match runtime() {
        Ok(rt) => rt.block_on(run(args, terminated(ignore), |_| {})),
        Err(e) => {
            eprintln!("rollgate-demo: starting the runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Serves until `stop`; `ready` is called once listening.
async fn run(
    args: Args,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(SocketAddr),
) -> std::process::ExitCode {
    let version = args
        .app_version
        .clone()
        .or_else(|| std::env::var("ROLLGATE_VERSION").ok())
        .unwrap_or_else(|| "dev".to_string());
    if args.crash_at_start {
        eprintln!("rollgate-demo {version}: crashing at start as asked");
        std::process::exit(args.exit_code);
    }
    if args.start_delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(args.start_delay_ms)).await;
    }
    let listen = args.listen.clone().unwrap_or_else(|| {
        format!(
            "127.0.0.1:{}",
            std::env::var("PORT").unwrap_or_else(|_| "8080".into())
        )
    });
    let addr: SocketAddr = match listen.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("rollgate-demo: --listen {listen:?}: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("rollgate-demo: binding {addr}: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let demo = Arc::new(Demo {
        version: version.clone(),
        health_status: StatusCode::from_u16(args.health_status).unwrap_or(StatusCode::OK),
        error_rate: args.error_rate,
        requests: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    if let Some(secs) = args.exit_after_secs {
        let code = args.exit_code;
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            eprintln!("rollgate-demo: exiting after {secs}s as asked");
            std::process::exit(code);
        });
    }
    let app = Router::new()
        .route("/", get(root))
        .route("/health", get(health))
        .route("/version", get(version_text))
        .route("/metrics", get(metrics))
        .with_state(demo);
    println!(
        "rollgate-demo {version} listening on {}",
        listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or(listen)
    );
    if let Ok(addr) = listener.local_addr() {
        ready(addr);
    }
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        eprintln!("rollgate-demo: {e}");
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}

/// The demo as a Windows service: RUNNING once listening, STOPPED with its exit code.
#[cfg(windows)]
#[allow(unsafe_code)] // define_windows_service! expands to an `extern "system"` entry point.
mod service {
    use std::ffi::OsString;
    use std::process::ExitCode;
    use std::time::Duration;

    use clap::Parser;
    use windows_service::service::{
        ServiceControl, ServiceControlAccept, ServiceExitCode, ServiceState, ServiceStatus,
        ServiceType,
    };
    use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
    use windows_service::{define_windows_service, service_dispatcher};

    define_windows_service!(ffi_service_main, service_main);

    /// Runs the demo as a service when the SCM started it; `None` otherwise.
    pub fn dispatch() -> Option<ExitCode> {
        // For an own-process service the name is not checked.
        service_dispatcher::start("rollgate-demo", ffi_service_main)
            .ok()
            .map(|()| ExitCode::SUCCESS)
    }

    fn service_main(_arguments: Vec<OsString>) {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let stop_tx = std::sync::Mutex::new(Some(stop_tx));
        let handler = move |control| match control {
            ServiceControl::Stop | ServiceControl::Shutdown => {
                if let Some(tx) = stop_tx.lock().ok().and_then(|mut t| t.take()) {
                    let _ = tx.send(());
                }
                ServiceControlHandlerResult::NoError
            }
            ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
            _ => ServiceControlHandlerResult::NotImplemented,
        };
        let Ok(handle) = service_control_handler::register("rollgate-demo", handler) else {
            return;
        };
        let set = |state: ServiceState, code: u32| {
            let _ = handle.set_service_status(ServiceStatus {
                service_type: ServiceType::OWN_PROCESS,
                current_state: state,
                controls_accepted: if state == ServiceState::Running {
                    ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN
                } else {
                    ServiceControlAccept::empty()
                },
                exit_code: if code == 0 {
                    ServiceExitCode::Win32(0)
                } else {
                    ServiceExitCode::ServiceSpecific(code)
                },
                checkpoint: 0,
                wait_hint: Duration::from_secs(10),
                process_id: None,
            });
        };
        set(ServiceState::StartPending, 0);
        let args = super::Args::parse_from(super::command_line());
        let stop = async move {
            let _ = stop_rx.await;
        };
        let code = match super::runtime() {
            Ok(rt) => rt.block_on(super::run(args, stop, |_| set(ServiceState::Running, 0))),
            Err(_) => ExitCode::FAILURE,
        };
        let code = if code == ExitCode::SUCCESS { 0 } else { 1 };
        set(ServiceState::Stopped, code);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_rate_spreads_failures_exactly() {
        let d = Demo {
            version: "v".into(),
            health_status: StatusCode::OK,
            error_rate: 0.25,
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        };
        let failed = (0..100).filter(|n| d.should_fail(*n)).count();
        assert_eq!(failed, 25);
    }
}
