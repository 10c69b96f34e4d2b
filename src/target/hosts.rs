//! The host-fleet target: each host runs `rollgate-agent`; rollgate drives it over HTTPS.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::future::join_all;
use sha2::{Digest, Sha256};

use super::{Change, Instance, Result, Sink, Target, TargetError};
use crate::agent::api::{
    ActivateRequest, CheckSpec, HealthCheckRequest, OperationState, StageRequest, UploadParams,
};
use crate::agent::client::{AgentClient, ClientAuth};
use crate::health::Probe;
use crate::plan::Step;
use crate::spec::{AgentAuth, Check, HostsTarget, RunOn};

/// A fleet of agents serving one service.
pub struct Hosts {
    spec: HostsTarget,
    /// Hosts in wave order.
    order: Vec<String>,
    service: String,
    clients: Vec<(String, String, AgentClient)>,
    artifact: Option<Artifact>,
    http: reqwest::Client,
}

enum Artifact {
    File { path: PathBuf, sha256: String },
    Url { url: String, sha256: String },
}

fn request_id(kind: &str, instance: &str, version: &str, salt: &str) -> String {
    format!("{kind}-{instance}-{version}-{salt}")
}

impl Hosts {
    /// Connects (lazily) to every host of `spec`; `rollout` salts request ids so retries of the same
    /// rollout are idempotent and a new rollout is not mistaken for an old one.
    pub fn new(spec: &HostsTarget, first_group: Option<&str>) -> Result<Self> {
        let auth = client_auth(spec.auth.as_ref())?;
        let scheme = if auth.ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
        let mut clients = Vec::new();
        for h in &spec.hosts {
            let url = format!("{scheme}://{}", h.address);
            let client = AgentClient::new(&url, &auth)
                .map_err(|e| TargetError::Setup(format!("{}: {e}", h.name)))?;
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
        })
    }

    fn client(&self, name: &str) -> Result<&AgentClient> {
        self.clients
            .iter()
            .find(|(n, ..)| n == name)
            .map(|(.., c)| c)
            .ok_or_else(|| TargetError::Setup(format!("no host named {name}")))
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
        let status = client.service(&self.service).await.map_err(unreachable)?;
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
                    request_id: request_id("stage", name, version, &sha256[..12]),
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
                    request_id: request_id("stage", name, version, &sha256[..12.min(sha256.len())]),
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

    async fn switch_one(
        &self,
        name: &str,
        version: &str,
        deadline: Duration,
        salt: &str,
    ) -> Result<()> {
        self.stage_one(name, version).await?;
        let client = self.client(name)?;
        let unreachable = |source| TargetError::AgentUnreachable {
            instance: name.to_string(),
            source,
        };
        let req = ActivateRequest {
            request_id: request_id("activate", name, version, salt),
            version: version.to_string(),
            slot: 0,
            timeout_ms: Some(deadline.as_millis() as u64),
        };
        let op = client
            .activate(&self.service, &req)
            .await
            .map_err(unreachable)?;
        let op = client
            .wait_operation(&op.id, deadline + Duration::from_secs(5))
            .await
            .map_err(unreachable)?;
        match op.state {
            OperationState::Succeeded => Ok(()),
            _ => Err(TargetError::Rejected {
                instance: name.to_string(),
                message: format!(
                    "activating {version} failed: {}",
                    op.error.unwrap_or_else(|| "no reason given".into())
                ),
            }),
        }
    }
}

impl Hosts {
    /// Switches `hosts` at once, reporting each change before and after; fails with the first reason.
    async fn switch_all(
        &self,
        hosts: &[String],
        version: &str,
        deadline: Duration,
        sink: Sink<'_>,
    ) -> std::result::Result<(), String> {
        for h in hosts {
            sink(Change::Changing {
                instance: h.clone(),
                version: version.to_string(),
            });
        }
        let salt = format!("{:x}", crate::state::now_ms());
        let calls = hosts.iter().map(|name| {
            let salt = salt.clone();
            async move {
                (
                    name.clone(),
                    self.switch_one(name, version, deadline, &salt).await,
                )
            }
        });
        let mut failure = None;
        for (h, r) in join_all(calls).await {
            let (ok, detail) = match &r {
                Ok(()) => (true, "ready".to_string()),
                Err(e) => (false, crate::engine::error_chain(e)),
            };
            if !ok && failure.is_none() {
                failure = Some(detail.clone());
            }
            sink(Change::Changed {
                instance: h,
                version: version.to_string(),
                ok,
                detail,
            });
        }
        failure.map_or(Ok(()), Err)
    }
}

fn client_auth(auth: Option<&AgentAuth>) -> Result<ClientAuth> {
    let Some(a) = auth else {
        return Ok(ClientAuth::default());
    };
    let mut out = match (&a.ca, &a.cert, &a.key) {
        (Some(ca), Some(cert), Some(key)) => {
            ClientAuth::mtls_files(ca, cert, key).map_err(|e| TargetError::Setup(e.to_string()))?
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
    async fn instances(&self) -> Result<Vec<Instance>> {
        let calls = self.clients.iter().map(|(name, _, client)| async move {
            let status = client.service(&self.service).await.map_err(|source| {
                TargetError::AgentUnreachable {
                    instance: name.clone(),
                    source,
                }
            })?;
            let slot = status.slots.first();
            Ok(Instance {
                name: name.clone(),
                version: slot.and_then(|s| s.active.clone()),
                previous: slot.and_then(|s| s.previous.clone()),
                installed: status.versions.iter().map(|v| v.version.clone()).collect(),
            })
        });
        join_all(calls).await.into_iter().collect()
    }

    async fn prepare(&self, version: &str) -> Result<()> {
        let results = join_all(self.order.iter().map(|name| self.stage_one(name, version))).await;
        results.into_iter().collect()
    }

    async fn scale(
        &self,
        step: &Step,
        version: &str,
        deadline: Duration,
        sink: Sink<'_>,
    ) -> std::result::Result<(), String> {
        // In place: the first `new` hosts in wave order must serve `version`.
        let instances = self
            .instances()
            .await
            .map_err(|e| crate::engine::error_chain(&e))?;
        let on_new: std::collections::HashSet<&str> = instances
            .iter()
            .filter(|i| i.version.as_deref() == Some(version))
            .map(|i| i.name.as_str())
            .collect();
        let want = (step.new as usize).min(self.order.len());
        let wave: Vec<String> = self.order[..want]
            .iter()
            .filter(|h| !on_new.contains(h.as_str()))
            .cloned()
            .collect();
        for part in split_by_zone(&self.spec, &wave) {
            self.switch_all(&part, version, deadline, sink).await?;
        }
        Ok(())
    }

    async fn restore(
        &self,
        version: &str,
        deadline: Duration,
        sink: Sink<'_>,
    ) -> std::result::Result<(), String> {
        let instances = self
            .instances()
            .await
            .map_err(|e| crate::engine::error_chain(&e))?;
        let back: Vec<String> = instances
            .iter()
            .filter(|i| i.version.as_deref() != Some(version))
            .map(|i| i.name.clone())
            .collect();
        self.switch_all(&back, version, deadline, sink).await
    }

    async fn probe(&self, check: &Check, instance: &str) -> Probe {
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
        let req = HealthCheckRequest {
            slot: 0,
            check: Some(spec),
            timeout_ms: Some(timeout.as_millis() as u64),
        };
        match client.check_health(&self.service, &req).await {
            Ok(report) if report.healthy => Probe::Pass,
            Ok(report) => Probe::Fail(report.detail),
            Err(e) => Probe::Fail(format!("agent: {e}")),
        }
    }
}

/// A probe run from where rollgate runs.
pub async fn cli_probe(
    http: &reqwest::Client,
    check: &Check,
    fill: &(dyn Fn(&str) -> String + Sync),
    timeout: Duration,
) -> Probe {
    if let Some(h) = &check.http {
        let url = fill(&h.url);
        return match http.get(&url).timeout(timeout).send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let body = resp.text().await.unwrap_or_default();
                if status != h.expect_status {
                    Probe::Fail(format!(
                        "GET {url}: status {status}, expected {}",
                        h.expect_status
                    ))
                } else if let Some(want) = &h.body_contains
                    && !body.contains(want.as_str())
                {
                    Probe::Fail(format!("GET {url}: body lacks {want:?}"))
                } else {
                    Probe::Pass
                }
            }
            Err(e) => Probe::Fail(format!("GET {url}: {e}")),
        };
    }
    if let Some(t) = &check.tcp {
        let addr = fill(&t.address);
        return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr)).await {
            Ok(Ok(_)) => Probe::Pass,
            Ok(Err(e)) => Probe::Fail(format!("connect {addr}: {e}")),
            Err(_) => Probe::Fail(format!("connect {addr}: timed out after {timeout:?}")),
        };
    }
    if let Some(c) = &check.command {
        let args: Vec<String> = c.run.iter().map(|a| fill(a)).collect();
        let run = tokio::process::Command::new(&args[0])
            .args(&args[1..])
            .kill_on_drop(true)
            .output();
        return match tokio::time::timeout(timeout, run).await {
            Ok(Ok(out)) if out.status.success() => Probe::Pass,
            Ok(Ok(out)) => Probe::Fail(format!("{}: {}", args[0], out.status)),
            Ok(Err(e)) => Probe::Fail(format!("{}: {e}", args[0])),
            Err(_) => Probe::Fail(format!("{}: timed out after {timeout:?}", args[0])),
        };
    }
    Probe::Fail("check has no probe".into())
}

/// Orders hosts for waves: the first group's hosts first, then by the spread label, then by name.
pub fn wave_order(spec: &HostsTarget, first_group: Option<&str>) -> Vec<String> {
    let mut hosts: Vec<_> = spec.hosts.iter().collect();
    let label = spec.spread_by.as_deref();
    hosts.sort_by_key(|h| {
        let in_first = first_group.is_some_and(|g| h.groups.iter().any(|x| x == g));
        let zone = label
            .and_then(|l| h.labels.get(l))
            .cloned()
            .unwrap_or_default();
        (!in_first, zone, h.name.clone())
    });
    hosts.into_iter().map(|h| h.name.clone()).collect()
}

/// Splits a wave so that no part spans two values of the spread label: never down in two zones at once.
pub fn split_by_zone(spec: &HostsTarget, wave: &[String]) -> Vec<Vec<String>> {
    let Some(label) = spec.spread_by.as_deref() else {
        return vec![wave.to_vec()];
    };
    let zone_of: HashMap<&str, &str> = spec
        .hosts
        .iter()
        .map(|h| {
            (
                h.name.as_str(),
                h.labels.get(label).map_or("", String::as_str),
            )
        })
        .collect();
    let mut parts: Vec<Vec<String>> = Vec::new();
    let mut last_zone = None;
    for host in wave {
        let zone = zone_of.get(host.as_str()).copied();
        if parts.is_empty() || zone != last_zone {
            parts.push(Vec::new());
            last_zone = zone;
        }
        parts.last_mut().expect("pushed above").push(host.clone());
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet() -> HostsTarget {
        serde_yaml::from_str(
            "hosts:
  - {name: h3, address: 'a:1', labels: {zone: b}}
  - {name: h1, address: 'a:1', labels: {zone: a}}
  - {name: h2, address: 'a:1', labels: {zone: a}, groups: [internal]}
  - {name: h4, address: 'a:1', labels: {zone: b}, groups: [internal]}
spreadBy: zone",
        )
        .unwrap()
    }

    #[test]
    fn first_group_then_zones() {
        assert_eq!(
            wave_order(&fleet(), Some("internal")),
            ["h2", "h4", "h1", "h3"]
        );
        assert_eq!(wave_order(&fleet(), None), ["h1", "h2", "h3", "h4"]);
    }

    #[test]
    fn waves_never_span_two_zones() {
        let parts = split_by_zone(&fleet(), &["h1".into(), "h2".into(), "h3".into()]);
        assert_eq!(
            parts,
            vec![
                vec!["h1".to_string(), "h2".to_string()],
                vec!["h3".to_string()]
            ]
        );
    }
}
