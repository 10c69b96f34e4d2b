//! The `rollgate` command line.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = rollgate::cli::Cli::parse();
    trace_from_env();
    ExitCode::from(rollgate::cli::run(cli))
}

/// `RUST_LOG=kube=debug` and the like: diagnostics (each API request with its timing) on stderr,
/// stamped to the microsecond. Nothing is set up without it.
fn trace_from_env() {
    let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG") else {
        return;
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .init();
}
