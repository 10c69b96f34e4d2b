//! The agent's core: services, their persisted desired state, and the operations on them.
//!
//! Every mutating call becomes an [`Operation`] journaled in `operations.log` and keyed by its
//! request id, so a replay returns the same operation instead of acting twice. A slot's
//! desired state (active, previous, running) lives in `services/<name>/state.json`, replaced
//! atomically, so after a `kill -9` the agent finds the slot on the old or the new version.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::api::{
    ActivateRequest, CheckSpec, HealthCheckRequest, HealthReport, HostInfo, Operation,
    OperationKind, OperationState, PruneRequest, RollbackRequest, RunState, ServiceStatus,
    SlotRequest, SlotStatus, StageRequest, UploadParams,
};
use super::backend::{Backends, Observed, RunSpec, supervisor::Supervisor, systemd::Systemd};
use super::config::{AgentConfig, ServiceConfig, expand_slot};
use super::journal::{Journal, OpRecord, load_journal};
use super::stage::{self, ServiceDirs, StageError};
use super::store::{self, StoreError};
use super::{health, now_unix_ms};
use crate::error_chain;

mod readiness;
mod slots;
mod staging;

pub use slots::prune_victims;

/// Why a call was refused before any operation started.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("no service named {0:?} on this agent")]
    UnknownService(String),
    #[error("no operation {0:?}")]
    UnknownOperation(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("request id {0:?} was already used for a different request")]
    RequestIdReused(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("the agent is shutting down")]
    ShuttingDown,
    #[error("agent state could not be saved")]
    Store(#[from] StoreError),
    #[error("preparing {path}")]
    Prepare {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = ManagerError> = std::result::Result<T, E>;

/// Persisted desired state of one slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct SlotState {
    pub active: Option<String>,
    pub previous: Option<String>,
    pub desired_running: bool,
}

/// Persisted desired state of one service (`state.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct DesiredState {
    pub slots: Vec<SlotState>,
}

struct Service {
    config: ServiceConfig,
    dirs: ServiceDirs,
    desired: Mutex<DesiredState>,
    /// Serializes the operations on this service.
    lock: tokio::sync::Mutex<()>,
    health: Mutex<Vec<Option<HealthReport>>>,
}

type OpResult = std::result::Result<(String, Vec<String>), String>;

/// The agent: owns the services, the backends and the operation journal.
pub struct Agent {
    config: AgentConfig,
    services: BTreeMap<String, Arc<Service>>,
    backends: Backends,
    journal: Mutex<Journal>,
    changes: watch::Sender<u64>,
    tasks: TaskTracker,
    cancel: CancellationToken,
    seq: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Agent {
    /// Opens the data dir: loads desired state and the journal, clears interrupted staging.
    pub fn open(config: AgentConfig) -> Result<Arc<Agent>> {
        let (changes, _) = watch::channel(0u64);
        std::fs::create_dir_all(&config.data_dir).map_err(|source| ManagerError::Prepare {
            path: config.data_dir.clone(),
            source,
        })?;
        // The data dir holds the journal, state and logs: the agent's alone. A service run as
        // another user must still reach its version dir inside, so then others may pass
        // through (0711) but not list it.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = if config.services.iter().any(|s| s.user.is_some()) {
                0o711
            } else {
                0o700
            };
            std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(mode))
                .map_err(|source| ManagerError::Prepare {
                    path: config.data_dir.clone(),
                    source,
                })?;
        }
        let mut services = BTreeMap::new();
        for sc in &config.services {
            let dirs = ServiceDirs::new(&config.data_dir, &sc.name);
            dirs.prepare().map_err(|source| ManagerError::Prepare {
                path: dirs.root.clone(),
                source,
            })?;
            let mut desired: DesiredState =
                store::read_json(&dirs.state_file())?.unwrap_or_default();
            desired
                .slots
                .resize(sc.slots() as usize, SlotState::default());
            services.insert(
                sc.name.clone(),
                Arc::new(Service {
                    config: sc.clone(),
                    dirs,
                    desired: Mutex::new(desired),
                    lock: tokio::sync::Mutex::new(()),
                    health: Mutex::new(vec![None; sc.slots() as usize]),
                }),
            );
        }
        let journal = load_journal(&config.data_dir)?;
        let backends = Backends {
            supervisor: Supervisor::new(changes.clone()),
            systemd: Systemd {
                unit_dir: config.systemd_unit_dir.clone(),
            },
            #[cfg(windows)]
            scm: super::backend::windows_scm::WindowsScm,
        };
        Ok(Arc::new(Agent {
            config,
            services,
            backends,
            journal: Mutex::new(journal),
            changes,
            tasks: TaskTracker::new(),
            cancel: CancellationToken::new(),
            seq: AtomicU64::new(0),
        }))
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    fn bump(&self) {
        self.changes.send_modify(|g| *g += 1);
    }

    fn service(&self, name: &str) -> Result<&Arc<Service>> {
        self.services
            .get(name)
            .ok_or_else(|| ManagerError::UnknownService(name.to_string()))
    }

    /// Brings every slot back to its persisted desired state (agent start).
    pub async fn reconcile(self: &Arc<Self>) {
        for svc in self.services.values() {
            let _guard = svc.lock.lock().await;
            let slots = lock(&svc.desired).slots.clone();
            for (i, s) in slots.iter().enumerate() {
                let slot = i as u32;
                let Some(version) = &s.active else { continue };
                if !s.desired_running {
                    continue;
                }
                if stage::read_meta(&svc.dirs, version).is_none() {
                    tracing::error!(service = %svc.config.name, slot, version, "active version is not installed; not starting");
                    continue;
                }
                let observed = self
                    .backends
                    .observe(svc.config.backend, &svc.config.name, slot)
                    .await;
                if observed.state == RunState::Running {
                    continue;
                }
                tracing::info!(service = %svc.config.name, slot, version, "starting to match desired state");
                if let Err(e) = self
                    .backends
                    .start(svc.config.backend, &self.run_spec(svc, slot, version))
                    .await
                {
                    tracing::error!(service = %svc.config.name, slot, error = %error_chain(&e), "could not start");
                }
            }
        }
        self.bump();
    }

    /// Runs each service's health check every 10 s in the background until shutdown.
    pub fn spawn_health_loop(self: &Arc<Self>) {
        let agent = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = agent.cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                }
                for svc in agent.services.values() {
                    for slot in 0..svc.config.slots() {
                        let running = agent
                            .backends
                            .observe(svc.config.backend, &svc.config.name, slot)
                            .await
                            .state
                            == RunState::Running;
                        if running {
                            agent.check_slot(svc, slot).await;
                        }
                    }
                }
            }
        });
    }

    /// Stops accepting operations, waits up to `grace` for those in flight, stops the
    /// supervised services. Desired state stays on disk, so the next start restores them.
    pub async fn shutdown(&self, grace: Duration) {
        self.cancel.cancel();
        self.tasks.close();
        let deadline = tokio::time::Instant::now() + grace;
        if tokio::time::timeout_at(deadline, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "shutdown grace period ran out with operations in flight; marking them interrupted"
            );
            let running: Vec<String> = lock(&self.journal)
                .ops
                .values()
                .filter(|r| r.op.state == OperationState::Running)
                .map(|r| r.op.id.clone())
                .collect();
            for id in running {
                self.finish(&id, Err("interrupted by agent shutdown".to_string()));
            }
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let stop_timeout = left.max(Duration::from_secs(1));
        if tokio::time::timeout(
            stop_timeout + Duration::from_secs(1),
            self.backends.supervisor.stop_all(stop_timeout),
        )
        .await
        .is_err()
        {
            tracing::warn!("shutdown grace period ran out while stopping services");
        }
    }

    pub fn host_info(&self) -> HostInfo {
        HostInfo {
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            hostname: hostname(),
            os: std::env::consts::OS.to_string(),
            arch: std::env::consts::ARCH.to_string(),
            backends: self.backends.infos(),
            services: self.services.keys().cloned().collect(),
        }
    }

    pub fn generation(&self) -> u64 {
        *self.changes.borrow()
    }

    /// Status of one service.
    pub async fn status(&self, name: &str) -> Result<ServiceStatus> {
        let svc = self.service(name)?;
        let generation = self.generation();
        let desired = lock(&svc.desired).clone();
        let mut slots = Vec::new();
        for (i, d) in desired.slots.iter().enumerate() {
            let slot = i as u32;
            let o = self
                .backends
                .observe(svc.config.backend, &svc.config.name, slot)
                .await;
            slots.push(SlotStatus {
                slot,
                port: svc.config.port(slot),
                active: d.active.clone(),
                previous: d.previous.clone(),
                desired_running: d.desired_running,
                state: o.state,
                pid: o.pid,
                uptime_ms: o.uptime_ms,
                last_exit: o.last_exit,
                restarts: o.restarts,
                consecutive_failures: o.consecutive_failures,
                crash_loop: o.crash_loop,
                next_restart_unix_ms: o.next_restart_unix_ms,
                health: lock(&svc.health).get(i).cloned().flatten(),
            });
        }
        Ok(ServiceStatus {
            name: name.to_string(),
            backend: svc.config.backend,
            versions: stage::installed(&svc.dirs),
            slots,
            generation,
        })
    }

    pub async fn list(&self) -> Vec<ServiceStatus> {
        let mut out = Vec::new();
        for name in self.services.keys() {
            if let Ok(s) = self.status(name).await {
                out.push(s);
            }
        }
        out
    }

    /// Long-poll: answers when the generation differs from `since`, or after `wait`.
    pub async fn watch(
        &self,
        name: &str,
        since: Option<u64>,
        wait: Duration,
    ) -> Result<ServiceStatus> {
        self.service(name)?;
        if let Some(since) = since {
            let mut rx = self.changes.subscribe();
            // Shutdown ends long-polls early so connections can close within the grace period.
            tokio::select! {
                _ = tokio::time::timeout(wait, rx.wait_for(|g| *g != since)) => {}
                _ = self.cancel.cancelled() => {}
            }
        }
        self.status(name).await
    }

    pub fn operation(&self, id: &str) -> Result<Operation> {
        lock(&self.journal)
            .ops
            .get(id)
            .map(|r| r.op.clone())
            .ok_or_else(|| ManagerError::UnknownOperation(id.to_string()))
    }

    /// Long-poll: answers when the operation is done, or after `wait`.
    pub async fn wait_operation(&self, id: &str, wait: Duration) -> Result<Operation> {
        let mut rx = self.changes.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let op = self.operation(id)?;
            if op.state.is_done() {
                return Ok(op);
            }
            rx.borrow_and_update();
            tokio::select! {
                changed = tokio::time::timeout_at(deadline, rx.changed()) => {
                    if changed.is_err() {
                        return self.operation(id);
                    }
                }
                _ = self.cancel.cancelled() => return self.operation(id),
            }
        }
    }

    // ---- operations ----

    fn begin(
        &self,
        kind: OperationKind,
        service: &str,
        slot: Option<u32>,
        version: Option<&str>,
        request_id: &str,
        fingerprint: String,
    ) -> Result<(Operation, bool)> {
        if request_id.is_empty() || request_id.len() > 200 {
            return Err(ManagerError::BadRequest(
                "requestId must be 1 to 200 characters".into(),
            ));
        }
        let mut journal = lock(&self.journal);
        if let Some(id) = journal.by_request.get(request_id) {
            let rec = &journal.ops[id];
            if rec.fingerprint == fingerprint {
                return Ok((rec.op.clone(), false));
            }
            return Err(ManagerError::RequestIdReused(request_id.to_string()));
        }
        if self.cancel.is_cancelled() {
            return Err(ManagerError::ShuttingDown);
        }
        let id = format!(
            "op-{}-{}",
            now_unix_ms(),
            self.seq.fetch_add(1, Ordering::Relaxed)
        );
        let op = Operation {
            id: id.clone(),
            request_id: request_id.to_string(),
            kind,
            service: service.to_string(),
            slot,
            version: version.map(str::to_string),
            state: OperationState::Running,
            message: None,
            error: None,
            removed: Vec::new(),
            created_unix_ms: now_unix_ms(),
            finished_unix_ms: None,
        };
        let rec = OpRecord {
            op: op.clone(),
            fingerprint,
        };
        journal.log.append(&rec)?;
        journal.ops.insert(id.clone(), rec);
        journal.by_request.insert(request_id.to_string(), id);
        drop(journal);
        self.bump();
        Ok((op, true))
    }

    fn finish(&self, id: &str, result: OpResult) {
        let mut journal = lock(&self.journal);
        let Some(rec) = journal.ops.get_mut(id) else {
            return;
        };
        if rec.op.state.is_done() {
            return;
        }
        match result {
            Ok((message, removed)) => {
                rec.op.state = OperationState::Succeeded;
                rec.op.message = Some(cut_text(message));
                rec.op.removed = removed;
            }
            Err(error) => {
                let error = cut_text(error);
                tracing::warn!(op = id, %error, "operation failed");
                rec.op.state = OperationState::Failed;
                rec.op.error = Some(error);
            }
        }
        rec.op.finished_unix_ms = Some(now_unix_ms());
        if let Err(e) = journal.record(id) {
            tracing::error!(op = id, error = %error_chain(&e), "could not journal operation result");
        }
        drop(journal);
        self.bump();
    }

    fn spawn_op<F>(self: &Arc<Self>, op: &Operation, work: F)
    where
        F: std::future::Future<Output = OpResult> + Send + 'static,
    {
        let agent = self.clone();
        let id = op.id.clone();
        self.tasks.spawn(async move {
            let result = work.await;
            agent.finish(&id, result);
        });
    }

    /// What a request asked for, as a sha256: the journal keeps it to recognise a replay, and
    /// must not keep the request itself (a stage URL can carry credentials).
    fn fingerprint<T: Serialize>(kind: OperationKind, service: &str, body: &T) -> String {
        use sha2::Digest;
        let mut value = serde_json::to_value(body).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            map.remove("requestId");
        }
        hex::encode(sha2::Sha256::digest(format!("{kind:?}|{service}|{value}")))
    }

    fn check_version(version: &str) -> Result<()> {
        if super::api::valid_name(version) {
            Ok(())
        } else {
            Err(ManagerError::BadRequest(format!(
                "version {version:?} must be letters, digits, '.', '_', '-' or '+' (at most 128)"
            )))
        }
    }

    /// An activation holds its service's lock while it waits: its wait is bounded, so a stop or
    /// a rollback never waits on it for long.
    fn check_timeout(timeout_ms: Option<u64>) -> Result<()> {
        match timeout_ms {
            Some(ms) if ms > MAX_ACTIVATE_MS => Err(ManagerError::BadRequest(format!(
                "timeoutMs {ms} is more than the {MAX_ACTIVATE_MS} ms (10 min) an activation may wait"
            ))),
            _ => Ok(()),
        }
    }

    fn valid_slot(svc: &Service, slot: u32) -> Result<()> {
        if slot < svc.config.slots() {
            Ok(())
        } else {
            Err(ManagerError::BadRequest(format!(
                "service {} has {} slot(s); slot {slot} does not exist",
                svc.config.name,
                svc.config.slots()
            )))
        }
    }

    fn run_spec(&self, svc: &Service, slot: u32, version: &str) -> RunSpec {
        let c = &svc.config;
        let dir = svc.dirs.version(version);
        let port = c.port(slot);
        let x = |s: &str| expand_slot(s, port, slot, version, &dir);
        let mut env: BTreeMap<String, String> =
            c.env.iter().map(|(k, v)| (k.clone(), x(v))).collect();
        env.insert("ROLLGATE_SERVICE".into(), c.name.clone());
        env.insert("ROLLGATE_SLOT".into(), slot.to_string());
        env.insert("ROLLGATE_VERSION".into(), version.to_string());
        if let Some(p) = port {
            env.insert("PORT".into(), p.to_string());
        }
        RunSpec {
            service: c.name.clone(),
            slot,
            version: version.to_string(),
            program: dir.join(&c.command),
            args: c.args.iter().map(|a| x(a)).collect(),
            env,
            cwd: dir,
            recovery: c.recovery.clone(),
            stop_timeout: c.stop_timeout.0,
            user: c.user.clone(),
            description: c.description.clone(),
            start_type: c.start_type,
            dependencies: c.dependencies.clone(),
            log_dir: svc.dirs.logs(),
            logs: c.logs.clone(),
            run_dir: svc.dirs.run(),
        }
    }
}

/// Longest an activation or rollback may wait for running and healthy (`timeoutMs`).
pub const MAX_ACTIVATE_MS: u64 = 10 * 60 * 1000;

/// Longest error or message text an operation keeps (and the log shows).
const MAX_TEXT: usize = 4096;

/// `text`, cut to [`MAX_TEXT`] bytes with a note saying so: an error can quote what a caller
/// sent, and it is stored, logged and answered.
fn cut_text(text: String) -> String {
    if text.len() <= MAX_TEXT {
        return text;
    }
    let mut end = MAX_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… (cut: {} more bytes)", &text[..end], text.len() - end)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_string())
}

impl From<StageError> for ManagerError {
    fn from(e: StageError) -> Self {
        ManagerError::BadRequest(error_chain(&e))
    }
}
