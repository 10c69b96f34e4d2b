//! Service backends: what actually starts, stops and observes a service slot's process.
//!
//! The set is closed (supervisor, systemd, Windows SCM), so [`Backends`] dispatches by
//! [`BackendKind`] over concrete types that each implement [`ServiceBackend`].

pub mod scm_plan;
pub mod supervisor;
pub mod systemd;
#[cfg(windows)]
pub mod windows_scm;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use super::api::{BackendInfo, BackendKind, ExitInfo, RunState};
use super::config::{LogConfig, StartType};
use super::recovery::Recovery;

/// A backend operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("backend {kind} is not available here: {reason}")]
    Unavailable { kind: BackendKind, reason: String },
    #[error("starting {what}")]
    StartFailed {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("stopping {what}")]
    StopFailed {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed: {detail}")]
    CommandFailed { command: String, detail: String },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = BackendError> = std::result::Result<T, E>;

/// Everything a backend needs to run one slot of a service at one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSpec {
    pub service: String,
    pub slot: u32,
    pub version: String,
    /// Absolute path of the program inside the version dir.
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// The version dir; the working directory.
    pub cwd: PathBuf,
    pub recovery: Recovery,
    pub stop_timeout: Duration,
    pub user: Option<String>,
    pub description: Option<String>,
    pub start_type: StartType,
    pub dependencies: Vec<String>,
    pub log_dir: PathBuf,
    pub logs: LogConfig,
    /// Where the supervisor keeps pid files.
    pub run_dir: PathBuf,
}

impl RunSpec {
    /// `service/slot`, for messages.
    pub fn what(&self) -> String {
        format!("{}/{}", self.service, self.slot)
    }
}

/// What a backend sees of one slot.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    pub state: RunState,
    pub pid: Option<u32>,
    pub uptime_ms: Option<u64>,
    pub last_exit: Option<ExitInfo>,
    pub restarts: u32,
    pub consecutive_failures: u32,
    pub crash_loop: bool,
    pub next_restart_unix_ms: Option<u64>,
    /// Why the slot failed, when the backend knows (spawn error, recovery command run).
    pub detail: Option<String>,
}

/// The seam between the agent and a process manager.
pub trait ServiceBackend {
    fn kind(&self) -> BackendKind;
    /// `Err(reason)` when this backend cannot be used on this host.
    fn availability(&self) -> std::result::Result<(), String>;
    /// (Re)starts the slot on `spec`'s version. The slot is stopped first if running.
    fn start(&self, spec: &RunSpec) -> impl Future<Output = Result<()>> + Send;
    /// Stops the slot gracefully, killing it after `timeout`.
    fn stop(
        &self,
        service: &str,
        slot: u32,
        timeout: Duration,
    ) -> impl Future<Output = Result<()>> + Send;
    fn observe(&self, service: &str, slot: u32) -> impl Future<Output = Observed> + Send;

    fn info(&self) -> BackendInfo {
        let availability = self.availability();
        BackendInfo {
            kind: self.kind(),
            available: availability.is_ok(),
            reason: availability.err(),
        }
    }
}

/// The backends of this host.
pub struct Backends {
    pub supervisor: supervisor::Supervisor,
    pub systemd: systemd::Systemd,
    #[cfg(windows)]
    pub scm: windows_scm::WindowsScm,
}

impl Backends {
    pub fn infos(&self) -> Vec<BackendInfo> {
        let mut out = vec![self.supervisor.info(), self.systemd.info()];
        #[cfg(windows)]
        out.push(self.scm.info());
        #[cfg(not(windows))]
        out.push(BackendInfo {
            kind: BackendKind::WindowsScm,
            available: false,
            reason: Some("not Windows".to_string()),
        });
        out
    }

    fn check(&self, kind: BackendKind) -> Result<()> {
        let reason = match kind {
            BackendKind::Supervisor => self.supervisor.availability(),
            BackendKind::Systemd => self.systemd.availability(),
            #[cfg(windows)]
            BackendKind::WindowsScm => self.scm.availability(),
            #[cfg(not(windows))]
            BackendKind::WindowsScm => Err("not Windows".to_string()),
        };
        reason.map_err(|reason| BackendError::Unavailable { kind, reason })
    }

    pub async fn start(&self, kind: BackendKind, spec: &RunSpec) -> Result<()> {
        self.check(kind)?;
        match kind {
            BackendKind::Supervisor => self.supervisor.start(spec).await,
            BackendKind::Systemd => self.systemd.start(spec).await,
            #[cfg(windows)]
            BackendKind::WindowsScm => self.scm.start(spec).await,
            #[cfg(not(windows))]
            BackendKind::WindowsScm => unreachable!("checked above"),
        }
    }

    pub async fn stop(
        &self,
        kind: BackendKind,
        service: &str,
        slot: u32,
        timeout: Duration,
    ) -> Result<()> {
        self.check(kind)?;
        match kind {
            BackendKind::Supervisor => self.supervisor.stop(service, slot, timeout).await,
            BackendKind::Systemd => self.systemd.stop(service, slot, timeout).await,
            #[cfg(windows)]
            BackendKind::WindowsScm => self.scm.stop(service, slot, timeout).await,
            #[cfg(not(windows))]
            BackendKind::WindowsScm => unreachable!("checked above"),
        }
    }

    pub async fn observe(&self, kind: BackendKind, service: &str, slot: u32) -> Observed {
        match kind {
            BackendKind::Supervisor => self.supervisor.observe(service, slot).await,
            BackendKind::Systemd if self.systemd.availability().is_ok() => {
                self.systemd.observe(service, slot).await
            }
            #[cfg(windows)]
            BackendKind::WindowsScm => self.scm.observe(service, slot).await,
            _ => Observed::default(),
        }
    }
}
