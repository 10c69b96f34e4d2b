//! The host-fleet target: each host runs `rollgate-agent`; rollgate drives it over HTTPS.

use std::path::PathBuf;
use std::time::Duration;

use futures_util::future::join_all;
use sha2::{Digest, Sha256};

mod preflight;
mod traffic;
mod view;
mod waves;

use view::HostView;
use waves::split_by_zone_wants;
pub use waves::{capacity, split_by_zone, step_hosts, wave_order};

use super::{Change, Instance, Result, Sink, Target, TargetError};
use crate::agent::api::{
    ActivateRequest, CheckSpec, HealthCheckRequest, OperationState, SlotRequest, StageRequest,
    UploadParams,
};
use crate::agent::client::{AgentClient, ClientAuth};
use crate::health::Probe;
use crate::health::run::cli_probe;
use crate::plan::{Step, StepEnd};
use crate::spec::{AgentAuth, Check, HostsTarget, RunOn};

/// How long one call to an agent rides out network trouble (a host briefly cut off, lost packets)
/// before it fails. A step's calls are bounded by the step's deadline as well, whichever is first.
pub const RETRY_WINDOW: Duration = Duration::from_secs(30);

/// A fleet of agents serving one service.
pub struct Hosts {
    spec: HostsTarget,
    /// Hosts in wave order.
    order: Vec<String>,
    service: String,
    clients: Vec<(String, String, AgentClient)>,
    artifact: Option<Artifact>,
    http: reqwest::Client,
    /// Salts staging request ids: a retry within this run is a replay, while a later run (a
    /// `resume` after a crash) asks afresh instead of being answered with an earlier, failed try.
    run_salt: String,
    /// A traffic-weighted canary (`trafficRouting.trafficSwitch`): the hook gets weights per version,
    /// and the canary's share it was last given.
    weighted: Option<std::sync::Mutex<u32>>,
}

enum Artifact {
    File { path: PathBuf, sha256: String },
    Url { url: String, sha256: String },
}

/// A request id for one mutation. The agent keeps request ids across all its services, so the
/// service is part of it: two apps rolled at once on the same hosts never share one.
fn request_id(kind: &str, service: &str, instance: &str, version: &str, salt: &str) -> String {
    format!("{kind}-{service}-{instance}-{version}-{salt}")
}

impl Hosts {
    /// Connects (lazily) to every host of `spec`, ordered for waves with `first_group` first.
    pub fn new(spec: &HostsTarget, first_group: Option<&str>) -> Result<Self> {
        let auth = client_auth(spec.auth.as_ref())?;
        let mut clients = Vec::new();
        for h in &spec.hosts {
            // TLS with a CA, and for a token to anything but loopback (never plain HTTP).
            let plain_ok =
                auth.token.is_none() || crate::agent::api::is_loopback_address(&h.address);
            let scheme = if auth.ca_pem.is_some() || !plain_ok {
                "https"
            } else {
                "http"
            };
            let url = format!("{scheme}://{}", h.address);
            let client = AgentClient::new(&url, &auth)
                .map_err(|e| TargetError::Setup(format!("{}: {e}", h.name)))?
                .retrying(RETRY_WINDOW);
            clients.push((h.name.clone(), h.address.clone(), client));
        }
        let artifact = match &spec.artifact {
            None => None,
            Some(a) => match (&a.file, &a.url) {
                (Some(path), _) => {
                    let bytes = std::fs::read(path).map_err(|e| {
                        TargetError::Setup(format!("artifact {}: {e}", path.display()))
                    })?;
                    let sha256 = hex::encode(Sha256::digest(&bytes));
                    if let Some(expected) = &a.sha256
                        && !expected.eq_ignore_ascii_case(&sha256)
                    {
                        return Err(TargetError::Setup(format!(
                            "artifact {}: sha256 is {sha256}, the manifest says {expected}",
                            path.display()
                        )));
                    }
                    Some(Artifact::File {
                        path: path.clone(),
                        sha256,
                    })
                }
                (None, Some(url)) => Some(Artifact::Url {
                    url: url.clone(),
                    sha256: a.sha256.clone().unwrap_or_default(),
                }),
                (None, None) => None,
            },
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| TargetError::Setup(e.to_string()))?;
        Ok(Hosts {
            spec: spec.clone(),
            order: wave_order(spec, first_group),
            service: spec.service.clone(),
            clients,
            artifact,
            http,
            run_salt: format!("{:x}", crate::state::now_ms()),
            weighted: None,
        })
    }

    /// The same, telling the `trafficSwitch` hook the weight of each version at every canary step.
    pub fn weighted(mut self, weighted: bool) -> Self {
        self.weighted = weighted.then(|| std::sync::Mutex::new(0));
        self
    }

    fn client(&self, name: &str) -> Result<&AgentClient> {
        self.clients
            .iter()
            .find(|(n, ..)| n == name)
            .map(|(.., c)| c)
            .ok_or_else(|| TargetError::Setup(format!("no host named {name}")))
    }

    /// The agent's status of the manifest's service; a 404 names the services the agent has.
    async fn service_of(&self, name: &str) -> Result<crate::agent::api::ServiceStatus> {
        let client = self.client(name)?;
        let unreachable = |source| TargetError::AgentUnreachable {
            instance: name.to_string(),
            source,
        };
        match client.service(&self.service).await {
            Ok(status) => Ok(status),
            Err(e) if e.status() == Some(404) => {
                let has = client.services().await.map_err(unreachable)?;
                Err(TargetError::NoService {
                    instance: name.to_string(),
                    address: self.address(name).to_string(),
                    service: self.service.clone(),
                    has: has.into_iter().map(|s| s.name).collect(),
                })
            }
            Err(e) => Err(unreachable(e)),
        }
    }

    fn address(&self, name: &str) -> &str {
        self.clients
            .iter()
            .find(|(n, ..)| n == name)
            .map_or("", |(_, a, _)| a.as_str())
    }

    async fn stage_one(&self, name: &str, version: &str) -> Result<()> {
        let client = self.client(name)?;
        let rejected = |message: String| TargetError::Rejected {
            instance: name.to_string(),
            message,
        };
        let unreachable = |source| TargetError::AgentUnreachable {
            instance: name.to_string(),
            source,
        };
        let status = self.service_of(name).await?;
        if status.versions.iter().any(|v| v.version == version) {
            return Ok(()); // already on disk: never download twice
        }
        let op = match &self.artifact {
            None => {
                return Err(rejected(format!(
                    "version {version} is not installed and the manifest names no artifact"
                )));
            }
            Some(Artifact::File { path, sha256 }) => {
                let params = UploadParams {
                    request_id: request_id(
                        "stage",
                        &self.service,
                        name,
                        version,
                        &format!("{}-{}", &sha256[..12], self.run_salt),
                    ),
                    sha256: sha256.clone(),
                    kind: None,
                    file_name: path.file_name().map(|f| f.to_string_lossy().into_owned()),
                };
                client
                    .stage_file(&self.service, version, path, &params)
                    .await
                    .map_err(unreachable)?
            }
            Some(Artifact::Url { url, sha256 }) => {
                let req = StageRequest {
                    request_id: request_id(
                        "stage",
                        &self.service,
                        name,
                        version,
                        &format!("{}-{}", &sha256[..12.min(sha256.len())], self.run_salt),
                    ),
                    version: version.to_string(),
                    url: url.clone(),
                    sha256: sha256.clone(),
                    kind: None,
                    file_name: None,
                };
                client
                    .stage_url(&self.service, &req)
                    .await
                    .map_err(unreachable)?
            }
        };
        crate::faults::point("stage", name);
        let op = client
            .wait_operation(&op.id, Duration::from_secs(600))
            .await
            .map_err(unreachable)?;
        match op.state {
            OperationState::Succeeded => Ok(()),
            _ => Err(rejected(format!(
                "staging {version} failed: {}",
                op.error.unwrap_or_default()
            ))),
        }
    }
}

/// What one host must end a step with.
#[derive(Debug, Clone, Copy)]
struct Want {
    /// Runs the new version.
    new: bool,
    /// Keeps other versions running (a blue-green preview, or a surge instance).
    keep_old: bool,
    /// Stops other versions before starting the new one (no room for an extra instance).
    stop_first: bool,
}

impl Hosts {
    /// Waits for an agent operation and turns its failure into a reason.
    async fn finish(
        &self,
        name: &str,
        op: crate::agent::api::Operation,
        what: &str,
        deadline: Duration,
    ) -> Result<()> {
        let client = self.client(name)?;
        let op = client
            .wait_operation(&op.id, deadline + Duration::from_secs(5))
            .await
            .map_err(|source| TargetError::AgentUnreachable {
                instance: name.to_string(),
                source,
            })?;
        match op.state {
            OperationState::Succeeded => Ok(()),
            _ => Err(TargetError::Rejected {
                instance: name.to_string(),
                message: format!(
                    "{what} failed: {}",
                    op.error.unwrap_or_else(|| "no reason given".into())
                ),
            }),
        }
    }

    /// Activates `version` on `slot` (graceful stop, switch, start) and waits until running and healthy.
    async fn activate(
        &self,
        name: &str,
        version: &str,
        slot: u32,
        deadline: Duration,
        salt: &str,
    ) -> Result<()> {
        self.stage_one(name, version).await?;
        self.activate_staged(name, version, slot, deadline, salt)
            .await
    }

    /// [`Hosts::activate`] for a version known to be on the host already.
    async fn activate_staged(
        &self,
        name: &str,
        version: &str,
        slot: u32,
        deadline: Duration,
        salt: &str,
    ) -> Result<()> {
        let client = self.client(name)?;
        let req = ActivateRequest {
            request_id: request_id(
                &format!("activate{slot}"),
                &self.service,
                name,
                version,
                salt,
            ),
            version: version.to_string(),
            slot,
            // The agent's own `health.startTimeout` and `failureThreshold` decide how long a
            // start may take; the step's deadline still bounds the wait here.
            timeout_ms: None,
        };
        let op = client
            .activate(&self.service, &req)
            .await
            .map_err(|source| TargetError::AgentUnreachable {
                instance: name.to_string(),
                source,
            })?;
        crate::faults::point("activate", name);
        self.finish(name, op, &format!("activating {version}"), deadline)
            .await
    }

    async fn stop_slot(&self, name: &str, slot: u32, deadline: Duration, salt: &str) -> Result<()> {
        let client = self.client(name)?;
        let req = SlotRequest {
            request_id: format!("stop{slot}-{}-{name}-{salt}", self.service),
            slot,
        };
        let op = client.stop(&self.service, &req).await.map_err(|source| {
            TargetError::AgentUnreachable {
                instance: name.to_string(),
                source,
            }
        })?;
        self.finish(name, op, &format!("stopping slot {slot}"), deadline)
            .await
    }

    /// Stops every running slot that does not run `version`.
    async fn stop_others(
        &self,
        name: &str,
        view: &HostView,
        version: &str,
        deadline: Duration,
        salt: &str,
    ) -> Result<()> {
        for s in view
            .running()
            .filter(|s| s.active.as_deref() != Some(version))
        {
            self.stop_slot(name, s.slot, deadline, salt).await?;
        }
        Ok(())
    }

    /// Brings one host to `want`. With one slot per host, the new version replaces the old in place.
    async fn converge(
        &self,
        name: &str,
        version: &str,
        want: Want,
        known: Option<HostView>,
        deadline: Duration,
        salt: &str,
    ) -> Result<()> {
        // The view read when the step was planned saves a round trip per host on the hot path.
        let view = match known {
            Some(v) => v,
            None => self.view(name).await?,
        };
        if self.spec.slots_per_host < 2 {
            if want.new && !view.runs(version) {
                if !view.installed.iter().any(|v| v == version) {
                    self.stage_one(name, version).await?;
                }
                self.activate_staged(name, version, 0, deadline, salt)
                    .await?;
            }
            return Ok(());
        }
        if want.new && !view.runs(version) {
            if want.stop_first || view.idle_slot(version).is_none() {
                self.stop_others(name, &view, version, deadline, salt)
                    .await?;
            }
            let view = self.view(name).await?;
            let slot = view
                .idle_slot(version)
                .ok_or_else(|| TargetError::Rejected {
                    instance: name.to_string(),
                    message: "no free slot for the new version".into(),
                })?;
            self.activate(name, version, slot, deadline, salt).await?;
        }
        if !want.keep_old {
            let view = self.view(name).await?;
            if view.runs(version) || !want.new {
                self.stop_others(name, &view, version, deadline, salt)
                    .await?;
            }
        }
        Ok(())
    }

    /// Converges `hosts` at once, reporting each change before and after; fails with the first reason.
    async fn converge_all(
        &self,
        hosts: &[(String, Want)],
        known: &std::collections::HashMap<String, HostView>,
        version: &str,
        deadline: Duration,
        sink: Sink<'_>,
    ) -> Result<()> {
        // One journal flush for the whole wave, before any host is touched.
        sink.report(Change::Many(
            hosts
                .iter()
                .map(|(h, _)| Change::Changing {
                    instance: h.clone(),
                    version: version.to_string(),
                })
                .collect(),
        ))
        .await?;
        let salt = format!("{:x}", crate::state::now_ms());
        let calls = hosts.iter().map(|(name, want)| {
            let salt = salt.clone();
            async move {
                // Bounded: a host that stops answering fails within the deadline, not when TCP gives up.
                let result = match tokio::time::timeout(
                    deadline + Duration::from_secs(2),
                    self.converge(
                        name,
                        version,
                        *want,
                        known.get(name).cloned(),
                        deadline,
                        &salt,
                    ),
                )
                .await
                {
                    Ok(r) => r,
                    Err(_) => Err(TargetError::Rejected {
                        instance: name.clone(),
                        message: format!(
                            "no answer within progressDeadlineSeconds ({}s)",
                            deadline.as_secs()
                        ),
                    }),
                };
                (name.clone(), result)
            }
        });
        let mut failure = None;
        let mut changed = Vec::new();
        for (h, r) in join_all(calls).await {
            let (ok, detail) = match &r {
                Ok(()) => (true, "ready".to_string()),
                Err(e) => (false, crate::error_chain(e)),
            };
            if !ok && failure.is_none() {
                failure = Some(detail.clone());
            }
            changed.push(Change::Changed {
                instance: h,
                version: version.to_string(),
                ok,
                detail,
            });
        }
        sink.report(Change::Many(changed)).await?;
        failure.map_or(Ok(()), |why| Err(TargetError::Failed(why)))
    }
}

fn client_auth(auth: Option<&AgentAuth>) -> Result<ClientAuth> {
    let Some(a) = auth else {
        return Ok(ClientAuth::default());
    };
    let mut out = match (&a.ca, &a.cert, &a.key) {
        (Some(ca), Some(cert), Some(key)) => {
            // The whole chain: "reading client credentials from X" alone hides which I/O error it was.
            ClientAuth::mtls_files(ca, cert, key)
                .map_err(|e| TargetError::Setup(crate::error_chain(&e)))?
        }
        (Some(ca), None, None) => ClientAuth {
            ca_pem: Some(
                std::fs::read(ca)
                    .map_err(|e| TargetError::Setup(format!("{}: {e}", ca.display())))?,
            ),
            ..Default::default()
        },
        (None, None, None) => ClientAuth::default(),
        _ => {
            return Err(TargetError::Setup(
                "auth: ca, cert and key go together (or ca alone with a token)".into(),
            ));
        }
    };
    if let Some(path) = &a.token_file {
        let token = std::fs::read_to_string(path)
            .map_err(|e| TargetError::Setup(format!("token file {}: {e}", path.display())))?;
        out.token = Some(token.trim().to_string());
    } else if let Some(var) = &a.token_env {
        out.token = Some(
            std::env::var(var)
                .map_err(|_| TargetError::Setup(format!("token variable {var} is not set")))?,
        );
    }
    Ok(out)
}

impl Target for Hosts {
    async fn size(&self) -> Result<u32> {
        Ok(u32::try_from(self.order.len()).unwrap_or(u32::MAX))
    }

    fn capacity(&self) -> crate::plan::Capacity {
        capacity(&self.spec)
    }

    async fn instances(&self) -> Result<Vec<Instance>> {
        Ok(self
            .views()
            .await?
            .iter()
            .map(|(name, v)| v.instance(name))
            .collect())
    }

    async fn prepare(&self, version: &str) -> Result<()> {
        let results = join_all(self.order.iter().map(|name| self.stage_one(name, version))).await;
        results.into_iter().collect()
    }

    /// A host changes in place and is done when healthy: every step ends `Ready`.
    async fn scale(
        &self,
        step: &Step,
        version: &str,
        _end: StepEnd,
        deadline: Duration,
        sink: Sink<'_>,
    ) -> Result<()> {
        self.scale_weighted(step, version, deadline, sink).await
    }

    async fn restore(&self, version: &str, deadline: Duration, sink: Sink<'_>) -> Result<()> {
        // A weighted canary: all traffic to the stable hosts before any host changes.
        if self.weighted.is_some() {
            self.call_weights_hook(version, 100)
                .await
                .map_err(TargetError::Failed)?;
        }
        self.restore_hosts(version, deadline, sink).await
    }

    async fn switch_traffic(&self, version: &str) -> Result<()> {
        self.call_switch_hook(version)
            .await
            .map_err(TargetError::Failed)
    }

    async fn probe(&self, check: &Check, instance: &str, version: &str) -> Probe {
        let host_ip = self
            .address(instance)
            .rsplit_once(':')
            .map_or("", |(h, _)| h)
            .to_string();
        let fill = |s: &str| {
            s.replace("{host}", &host_ip)
                .replace("{instance}", instance)
        };
        let timeout = check.timeout.0;
        if check.run_on == RunOn::Cli {
            return cli_probe(&self.http, check, &fill, timeout).await;
        }
        let spec = if let Some(h) = &check.http {
            CheckSpec::Http {
                url: fill(&h.url),
                status: h.expect_status,
                body_contains: h.body_contains.clone(),
            }
        } else if let Some(t) = &check.tcp {
            CheckSpec::Tcp {
                address: fill(&t.address),
            }
        } else if let Some(c) = &check.command {
            CheckSpec::Command {
                program: c.run[0].clone(),
                args: c.run[1..].to_vec(),
            }
        } else {
            return Probe::Fail("check has no probe".into());
        };
        let Ok(client) = self.client(instance) else {
            return Probe::Fail(format!("no host {instance}"));
        };
        // Probe the slot that runs the version under test.
        let slot = match self.view(instance).await {
            Ok(view) => view.slot_running(version).map_or(0, |s| s.slot),
            Err(e) => return Probe::Fail(crate::error_chain(&e)),
        };
        let req = HealthCheckRequest {
            slot,
            check: Some(spec),
            timeout_ms: Some(timeout.as_millis() as u64),
        };
        let probe = match client.check_health(&self.service, &req).await {
            Ok(report) if report.healthy => Probe::Pass,
            Ok(report) => Probe::Fail(report.detail),
            Err(e) => Probe::Fail(format!("agent: {e}")),
        };
        crate::faults::point("probe", instance);
        probe
    }
}

impl Hosts {
    /// Brings the fleet to the step's counts (the router's weight aside).
    pub(super) async fn scale_hosts(
        &self,
        step: &Step,
        version: &str,
        deadline: Duration,
        sink: Sink<'_>,
    ) -> Result<()> {
        // The first `new` hosts in wave order run `version`; the last `old` hosts keep the old one.
        let views = self.views().await?;
        let n = self.order.len();
        let running: usize = views.iter().map(|(_, v)| v.running().count()).sum();
        // Room for extra instances during the step (two slots per host): beyond it, stop old first.
        let mut room = (step.max_total as usize).saturating_sub(running);
        let mut todo = Vec::new();
        for (i, (name, view)) in views.iter().enumerate() {
            let new = i < step.new as usize;
            let keep_old = i >= n.saturating_sub(step.old as usize);
            let start = new && !view.runs(version);
            let stop = !keep_old && view.runs_other(version);
            if !start && !stop {
                continue;
            }
            let stop_first = start && room == 0;
            if start && !stop_first {
                room -= 1;
            }
            todo.push((
                name.clone(),
                Want {
                    new,
                    keep_old,
                    stop_first,
                },
            ));
        }
        // Hosts of later parts are untouched by earlier ones, so these views stay true for them.
        let known: std::collections::HashMap<String, HostView> = views.into_iter().collect();
        for part in split_by_zone_wants(&self.spec, &todo) {
            self.converge_all(&part, &known, version, deadline, sink)
                .await?;
        }
        Ok(())
    }

    /// Puts every host back on `version`, its traffic switched back once the old version runs.
    async fn restore_hosts(&self, version: &str, deadline: Duration, sink: Sink<'_>) -> Result<()> {
        // Every reachable host is restored even when some are not; those are reported and fail the
        // restore, so the journal and `resume` know which hosts still need it.
        let mut unreachable = Vec::new();
        let mut back = Vec::new();
        let mut known = std::collections::HashMap::new();
        for (name, view) in self.views_each(deadline).await {
            match view {
                Ok(v) if v.runs(version) && !v.runs_other(version) => {}
                Ok(v) => {
                    back.push((
                        name.clone(),
                        Want {
                            new: true,
                            keep_old: true,
                            stop_first: false,
                        },
                    ));
                    known.insert(name, v);
                }
                Err(e) => {
                    let detail = crate::error_chain(&e);
                    sink.report(Change::Changing {
                        instance: name.clone(),
                        version: version.to_string(),
                    })
                    .await?;
                    sink.report(Change::Changed {
                        instance: name.clone(),
                        version: version.to_string(),
                        ok: false,
                        detail: detail.clone(),
                    })
                    .await?;
                    unreachable.push(detail);
                }
            }
        }
        // Old version up first, then traffic back to it, then the new one stopped.
        let converged = self
            .converge_all(&back, &known, version, deadline, sink)
            .await;
        match self.weighted {
            Some(_) => self.call_weights_hook(version, 100).await,
            None => self.call_switch_hook(version).await,
        }
        .map_err(TargetError::Failed)?;
        let salt = format!("{:x}", crate::state::now_ms());
        for (name, view) in self.views_each(deadline).await {
            if let Ok(view) = view
                && view.runs(version)
                && view.runs_other(version)
            {
                self.stop_others(&name, &view, version, deadline, &salt)
                    .await?;
            }
        }
        converged?;
        if unreachable.is_empty() {
            Ok(())
        } else {
            Err(TargetError::Failed(unreachable.join("; ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: two apps rolled at once on one agent got `409 request_id_reused`, because the
    /// agent keeps request ids across services and the ids did not name the service.
    #[test]
    fn request_ids_of_two_services_never_collide() {
        assert_ne!(
            request_id("activate0", "web", "h1", "2.0.0", "18f"),
            request_id("activate0", "api", "h1", "2.0.0", "18f")
        );
    }
}
