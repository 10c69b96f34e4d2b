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

/// What a start or stop request does to its slot.
#[derive(Debug, Clone, Copy)]
enum SlotAction {
    Start,
    Stop,
}

type OpResult = std::result::Result<(String, Vec<String>), String>;

/// Fails an upload's operation if the upload is dropped before its body is received.
struct UploadCutOff<'a> {
    agent: &'a Agent,
    id: &'a str,
    path: &'a Path,
    armed: bool,
}

impl Drop for UploadCutOff<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(self.path);
            self.agent.finish(
                self.id,
                Err(
                    "the upload ended before the whole artifact arrived (the caller went away)"
                        .into(),
                ),
            );
        }
    }
}

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

    /// What an artifact may unpack to, from `limits`.
    fn caps(&self) -> super::archive::Caps {
        super::archive::Caps {
            bytes: self.config.limits.unpacked_bytes(),
            entries: self.config.limits.archive_entries,
        }
    }

    fn binary_name(svc: &Service, file_name: Option<&str>) -> String {
        file_name
            .map(str::to_string)
            .unwrap_or_else(|| svc.config.command.clone())
    }

    /// Stages an artifact the agent downloads itself.
    pub fn stage_url(self: &Arc<Self>, service: &str, req: StageRequest) -> Result<Operation> {
        let svc = self.service(service)?.clone();
        Self::check_version(&req.version)?;
        stage::check_sha(&req.sha256).map_err(|e| ManagerError::BadRequest(e.to_string()))?;
        let (op, new) = self.begin(
            OperationKind::Stage,
            service,
            None,
            Some(&req.version),
            &req.request_id,
            Self::fingerprint(OperationKind::Stage, service, &req),
        )?;
        if new {
            let limit = self.config.limits.artifact_bytes;
            let allowed = self.config.allowed_artifact_hosts.clone();
            let caps = self.caps();
            let path = svc.dirs.staging().join(format!("{}.artifact", op.id));
            self.spawn_op(&op, async move {
                let received = stage::download(&req.url, &path, limit, allowed.as_deref()).await;
                let result = match received {
                    Ok((sha, size)) => {
                        install(
                            &svc,
                            &req.version,
                            &path,
                            &req.sha256,
                            &sha,
                            size,
                            req.kind,
                            Self::binary_name(&svc, req.file_name.as_deref()),
                            caps,
                        )
                        .await
                    }
                    Err(e) => Err(error_chain(&e)),
                };
                let _ = std::fs::remove_file(&path);
                result
            });
        }
        Ok(op)
    }

    /// Stages an uploaded artifact. The body is received here, before answering; the
    /// install runs as the operation. A replay does not read the body again.
    pub async fn stage_upload<S, B, E>(
        self: &Arc<Self>,
        service: &str,
        version: &str,
        params: UploadParams,
        body: S,
    ) -> Result<Operation>
    where
        S: futures_util::Stream<Item = std::result::Result<B, E>> + Unpin,
        B: AsRef<[u8]>,
        E: std::fmt::Display,
    {
        let svc = self.service(service)?.clone();
        Self::check_version(version)?;
        stage::check_sha(&params.sha256).map_err(|e| ManagerError::BadRequest(e.to_string()))?;
        let (op, new) = self.begin(
            OperationKind::Stage,
            service,
            None,
            Some(version),
            &params.request_id,
            format!(
                "{}|{version}",
                Self::fingerprint(OperationKind::Stage, service, &params)
            ),
        )?;
        if !new {
            return Ok(op);
        }
        let path = svc.dirs.staging().join(format!("{}.artifact", op.id));
        // When the caller goes away mid-body, the server drops this future: the guard then fails
        // the operation and removes the partial file, so a replay is not answered with an
        // operation that never ends.
        let mut cut_off = UploadCutOff {
            agent: self,
            id: &op.id,
            path: &path,
            armed: true,
        };
        let received = stage::receive(body, &path, self.config.limits.artifact_bytes).await;
        cut_off.armed = false;
        drop(cut_off);
        match received {
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                self.finish(&op.id, Err(error_chain(&e)));
            }
            Ok((sha, size)) => {
                let version = version.to_string();
                let binary = Self::binary_name(&svc, params.file_name.as_deref());
                let caps = self.caps();
                self.spawn_op(&op, async move {
                    let r = install(
                        &svc,
                        &version,
                        &path,
                        &params.sha256,
                        &sha,
                        size,
                        params.kind,
                        binary,
                        caps,
                    )
                    .await;
                    let _ = std::fs::remove_file(&path);
                    r
                });
            }
        }
        self.operation(&op.id)
    }

    pub fn activate(self: &Arc<Self>, service: &str, req: ActivateRequest) -> Result<Operation> {
        let svc = self.service(service)?.clone();
        Self::check_version(&req.version)?;
        Self::check_timeout(req.timeout_ms)?;
        Self::valid_slot(&svc, req.slot)?;
        let (op, new) = self.begin(
            OperationKind::Activate,
            service,
            Some(req.slot),
            Some(&req.version),
            &req.request_id,
            Self::fingerprint(OperationKind::Activate, service, &req),
        )?;
        if new {
            let agent = self.clone();
            self.spawn_op(&op, async move {
                let _guard = svc.lock.lock().await;
                agent
                    .do_activate(&svc, req.slot, &req.version, req.timeout_ms)
                    .await
            });
        }
        Ok(op)
    }

    pub fn rollback(self: &Arc<Self>, service: &str, req: RollbackRequest) -> Result<Operation> {
        let svc = self.service(service)?.clone();
        Self::check_timeout(req.timeout_ms)?;
        Self::valid_slot(&svc, req.slot)?;
        if let Some(to) = &req.to {
            Self::check_version(to)?;
        }
        let (op, new) = self.begin(
            OperationKind::Rollback,
            service,
            Some(req.slot),
            req.to.as_deref(),
            &req.request_id,
            Self::fingerprint(OperationKind::Rollback, service, &req),
        )?;
        if new {
            let agent = self.clone();
            self.spawn_op(&op, async move {
                let _guard = svc.lock.lock().await;
                let target = match req.to.clone() {
                    Some(to) => to,
                    None => lock(&svc.desired).slots[req.slot as usize]
                        .previous
                        .clone()
                        .ok_or_else(|| "no previous version to roll back to".to_string())?,
                };
                agent
                    .do_activate(&svc, req.slot, &target, req.timeout_ms)
                    .await
                    .map(|(m, r)| (format!("rolled back to {target}: {m}"), r))
            });
        }
        Ok(op)
    }

    pub fn prune(self: &Arc<Self>, service: &str, req: PruneRequest) -> Result<Operation> {
        let svc = self.service(service)?.clone();
        let (op, new) = self.begin(
            OperationKind::Prune,
            service,
            None,
            None,
            &req.request_id,
            Self::fingerprint(OperationKind::Prune, service, &req),
        )?;
        if new {
            self.spawn_op(&op, async move {
                let _guard = svc.lock.lock().await;
                let protected: Vec<String> = lock(&svc.desired)
                    .slots
                    .iter()
                    .flat_map(|s| [s.active.clone(), s.previous.clone()])
                    .flatten()
                    .collect();
                // Removing a version is blocking file work (100k files took 2.6 s): off the
                // async workers, so the API keeps answering meanwhile.
                let dirs = svc.dirs.clone();
                tokio::task::spawn_blocking(move || {
                    let installed = stage::installed(&dirs);
                    let victims = prune_victims(&installed, &protected, req.keep);
                    let mut removed = Vec::new();
                    for v in victims {
                        stage::remove_version(&dirs, &v)
                            .map_err(|e| format!("removing version {v}: {e}"))?;
                        removed.push(v);
                    }
                    Ok((format!("removed {} version(s)", removed.len()), removed))
                })
                .await
                .map_err(|e| format!("prune: {e}"))?
            });
        }
        Ok(op)
    }

    pub fn stop(self: &Arc<Self>, service: &str, req: SlotRequest) -> Result<Operation> {
        self.slot_op(service, req, SlotAction::Stop)
    }

    pub fn start(self: &Arc<Self>, service: &str, req: SlotRequest) -> Result<Operation> {
        self.slot_op(service, req, SlotAction::Start)
    }

    fn slot_op(
        self: &Arc<Self>,
        service: &str,
        req: SlotRequest,
        action: SlotAction,
    ) -> Result<Operation> {
        let svc = self.service(service)?.clone();
        Self::valid_slot(&svc, req.slot)?;
        let kind = match action {
            SlotAction::Start => OperationKind::Start,
            SlotAction::Stop => OperationKind::Stop,
        };
        let (op, new) = self.begin(
            kind,
            service,
            Some(req.slot),
            None,
            &req.request_id,
            Self::fingerprint(kind, service, &req),
        )?;
        if new {
            let agent = self.clone();
            self.spawn_op(&op, async move {
                let _guard = svc.lock.lock().await;
                let slot = req.slot;
                match action {
                    SlotAction::Start => {
                        let version = lock(&svc.desired).slots[slot as usize]
                            .active
                            .clone()
                            .ok_or_else(|| format!("slot {slot} has no active version to start"))?;
                        agent.do_activate(&svc, slot, &version, None).await
                    }
                    SlotAction::Stop => {
                        agent.set_desired(&svc, slot, |s| s.desired_running = false)?;
                        agent
                            .backends
                            .stop(
                                svc.config.backend,
                                &svc.config.name,
                                slot,
                                svc.config.stop_timeout.0,
                            )
                            .await
                            .map_err(|e| error_chain(&e))?;
                        Ok((format!("slot {slot} stopped"), vec![]))
                    }
                }
            });
        }
        Ok(op)
    }

    fn set_desired(
        &self,
        svc: &Service,
        slot: u32,
        f: impl FnOnce(&mut SlotState),
    ) -> std::result::Result<(), String> {
        let mut desired = lock(&svc.desired);
        let mut next = desired.clone();
        f(&mut next.slots[slot as usize]);
        store::write_json(&svc.dirs.state_file(), &next).map_err(|e| error_chain(&e))?;
        *desired = next;
        drop(desired);
        self.bump();
        Ok(())
    }

    /// Stop, switch, start, wait until running and healthy.
    async fn do_activate(
        &self,
        svc: &Service,
        slot: u32,
        version: &str,
        timeout_ms: Option<u64>,
    ) -> OpResult {
        if stage::read_meta(&svc.dirs, version).is_none() {
            return Err(format!(
                "version {version} is not installed; stage it first"
            ));
        }
        let name = &svc.config.name;
        let kind = svc.config.backend;
        let current = lock(&svc.desired).slots[slot as usize].clone();
        let timeout = timeout_ms
            .map(Duration::from_millis)
            .or(svc.config.health.as_ref().map(|h| h.start_timeout.0))
            .unwrap_or(Duration::from_secs(60));
        // Already there and healthy: a new request for the same version does not bounce it.
        if current.active.as_deref() == Some(version) && current.desired_running {
            let o = self.backends.observe(kind, name, slot).await;
            if o.state == RunState::Running && self.check_slot(svc, slot).await.healthy {
                return Ok((format!("slot {slot} already running {version}"), vec![]));
            }
        }
        // 1. graceful stop
        self.backends
            .stop(kind, name, slot, svc.config.stop_timeout.0)
            .await
            .map_err(|e| format!("stopping the running version: {}", error_chain(&e)))?;
        // 2. switch: one atomic write decides old or new after a crash
        let from = current.active.clone();
        self.set_desired(svc, slot, |s| {
            if s.active.as_deref() != Some(version) {
                s.previous = s.active.take();
            }
            s.active = Some(version.to_string());
            s.desired_running = true;
        })?;
        lock(&svc.health)[slot as usize] = None;
        tracing::info!(service = %name, slot, from = ?from, to = version, "switched; starting");
        // 3. start
        self.backends
            .start(kind, &self.run_spec(svc, slot, version))
            .await
            .map_err(|e| format!("starting version {version}: {}", error_chain(&e)))?;
        // 4. wait until running and healthy
        self.wait_ready(svc, slot, timeout).await?;
        Ok((
            format!(
                "slot {slot} running {version}{}",
                from.map(|f| format!(" (was {f})")).unwrap_or_default()
            ),
            vec![],
        ))
    }

    async fn wait_ready(
        &self,
        svc: &Service,
        slot: u32,
        timeout: Duration,
    ) -> std::result::Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let interval = svc
            .config
            .health
            .as_ref()
            .map(|h| h.interval.0)
            .unwrap_or(Duration::from_millis(250));
        let mut last = "not started yet".to_string();
        loop {
            let o = self
                .backends
                .observe(svc.config.backend, &svc.config.name, slot)
                .await;
            match o.state {
                RunState::Running => match svc.config.health {
                    Some(_) => {
                        let report = self.check_slot(svc, slot).await;
                        if report.healthy {
                            return Ok(());
                        }
                        last = format!("unhealthy: {}", report.detail);
                    }
                    // Without a check, running for a second counts as up.
                    None if o.uptime_ms.unwrap_or(0) >= 1000 => return Ok(()),
                    None => last = "running".into(),
                },
                RunState::Failed | RunState::Backoff => {
                    return Err(format!(
                        "service exited during start: {}{}",
                        describe_exit(&o),
                        stderr_tail(svc, slot)
                    ));
                }
                RunState::Stopped if o.last_exit.is_some() => {
                    return Err(format!(
                        "service stopped during start: {}{}",
                        describe_exit(&o),
                        stderr_tail(svc, slot)
                    ));
                }
                _ => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "not running and healthy within {} ms; last: {last}",
                    timeout.as_millis()
                ));
            }
            tokio::time::sleep(interval).await;
        }
    }

    async fn check_slot(&self, svc: &Service, slot: u32) -> HealthReport {
        let report = match &svc.config.health {
            Some(h) => {
                let version = lock(&svc.desired).slots[slot as usize]
                    .active
                    .clone()
                    .unwrap_or_default();
                let check = self.expand_check(svc, slot, &version, &h.check);
                health::run(
                    &check,
                    h.timeout.0,
                    &self.check_context(svc, slot, &version),
                )
                .await
            }
            None => HealthReport {
                healthy: true,
                detail: "no health check configured".into(),
                at_unix_ms: now_unix_ms(),
                elapsed_ms: 0,
            },
        };
        lock(&svc.health)[slot as usize] = Some(report.clone());
        self.bump();
        report
    }

    /// Runs the service's check (or an ad-hoc one) now.
    pub async fn check_health(
        &self,
        service: &str,
        req: HealthCheckRequest,
    ) -> Result<HealthReport> {
        let svc = self.service(service)?;
        Self::valid_slot(svc, req.slot)?;
        match req.check {
            None => Ok(self.check_slot(svc, req.slot).await),
            Some(check) => {
                if matches!(check, CheckSpec::Command { .. }) && !self.config.allow_remote_commands
                {
                    return Err(ManagerError::Forbidden(
                        "command checks from callers are disabled (allowRemoteCommands: false)"
                            .into(),
                    ));
                }
                let version = lock(&svc.desired).slots[req.slot as usize]
                    .active
                    .clone()
                    .unwrap_or_default();
                let check = self.expand_check(svc, req.slot, &version, &check);
                let timeout = Duration::from_millis(req.timeout_ms.unwrap_or(5000).min(60_000));
                let ctx = self.check_context(svc, req.slot, &version);
                Ok(health::run(&check, timeout, &ctx).await)
            }
        }
    }

    fn expand_check(
        &self,
        svc: &Service,
        slot: u32,
        version: &str,
        check: &CheckSpec,
    ) -> CheckSpec {
        let dir = svc.dirs.version(version);
        let port = svc.config.port(slot);
        let x = |s: &str| expand_slot(s, port, slot, version, &dir);
        match check {
            CheckSpec::Http {
                url,
                status,
                body_contains,
            } => CheckSpec::Http {
                url: x(url),
                status: *status,
                body_contains: body_contains.as_deref().map(x),
            },
            CheckSpec::Tcp { address } => CheckSpec::Tcp {
                address: x(address),
            },
            CheckSpec::Command { program, args } => CheckSpec::Command {
                program: x(program),
                args: args.iter().map(|a| x(a)).collect(),
            },
        }
    }

    /// A command check runs like the slot's service: its user, its dir, its environment.
    fn check_context(&self, svc: &Service, slot: u32, version: &str) -> health::CommandContext {
        let spec = self.run_spec(svc, slot, version);
        let cwd = if version.is_empty() || !spec.cwd.is_dir() {
            svc.dirs.root.clone()
        } else {
            spec.cwd
        };
        health::CommandContext {
            user: spec.user,
            cwd,
            env: spec.env,
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

#[allow(clippy::too_many_arguments)]
async fn install(
    svc: &Arc<Service>,
    version: &str,
    path: &std::path::Path,
    expected: &str,
    actual: &str,
    size: u64,
    kind: Option<super::api::ArtifactKind>,
    binary: String,
    caps: super::archive::Caps,
) -> OpResult {
    let _guard = svc.lock.lock().await;
    let dirs = svc.dirs.clone();
    let (version, path, expected, actual) = (
        version.to_string(),
        path.to_path_buf(),
        expected.to_string(),
        actual.to_string(),
    );
    let result = tokio::task::spawn_blocking(move || {
        stage::install(
            &dirs, &version, &path, &expected, &actual, kind, &binary, caps,
        )
    })
    .await
    .map_err(|e| e.to_string())?;
    match result {
        Ok(meta) => Ok((
            format!(
                "staged {} ({size} bytes, sha256 {})",
                meta.version, meta.sha256
            ),
            vec![],
        )),
        Err(e) => Err(error_chain(&e)),
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

/// Which versions a prune removes: all but the newest `keep`, never a protected one.
pub fn prune_victims(
    installed: &[super::api::InstalledVersion],
    protected: &[String],
    keep: usize,
) -> Vec<String> {
    let mut newest_first: Vec<&super::api::InstalledVersion> = installed.iter().collect();
    newest_first.reverse();
    newest_first
        .into_iter()
        .skip(keep)
        .filter(|v| !protected.contains(&v.version))
        .map(|v| v.version.clone())
        .collect()
}

/// The last lines the slot wrote to stderr, to say why it failed.
fn stderr_tail(svc: &Service, slot: u32) -> String {
    let path = svc.dirs.logs().join(format!("slot-{slot}.stderr.log"));
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return String::new();
    }
    let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
    let tail: String = tail.chars().take(400).collect();
    format!("; stderr: {tail}")
}

fn describe_exit(o: &Observed) -> String {
    let mut text = match &o.last_exit {
        Some(e) => match (e.code, e.signal) {
            (Some(c), _) => format!("exit code {c}"),
            (_, Some(s)) => format!("killed by signal {s}"),
            _ => "exited".to_string(),
        },
        None => "exited".to_string(),
    };
    if let Some(d) = &o.detail {
        text.push_str(&format!(" ({d})"));
    }
    text
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::api::InstalledVersion;

    fn v(name: &str, at: u64) -> InstalledVersion {
        InstalledVersion {
            version: name.into(),
            sha256: String::new(),
            staged_unix_ms: at,
        }
    }

    #[test]
    fn prune_keeps_newest_and_never_active_or_previous() {
        let installed = [v("1", 1), v("2", 2), v("3", 3), v("4", 4), v("5", 5)];
        assert_eq!(prune_victims(&installed, &[], 2), vec!["3", "2", "1"]);
        let protected = ["1".to_string(), "2".to_string()];
        assert_eq!(prune_victims(&installed, &protected, 2), vec!["3"]);
        assert_eq!(
            prune_victims(&installed, &protected, 0),
            vec!["5", "4", "3"]
        );
    }
}
