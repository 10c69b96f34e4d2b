//! The rollgate host agent: it stages, installs, runs and switches service versions on a host.
//!
//! [`api`] holds the wire types shared by [`server`] and [`client`]; [`manager`] does the work
//! behind the routes; [`backend`] runs the processes (built-in supervisor, systemd, Windows SCM).

pub mod api;
pub mod archive;
pub mod backend;
pub mod client;
pub mod config;
pub mod daemon;
pub mod eventlog;
pub mod health;
mod journal;
pub mod journald;
pub mod manager;
pub mod recovery;
pub mod server;
pub mod stage;
pub mod store;
#[cfg(windows)]
pub mod win32;

/// Milliseconds since the Unix epoch, as carried on the wire.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
