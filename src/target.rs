//! The seam between the engine and what it deploys to: a host fleet or a Kubernetes Deployment.

pub mod hosts;
pub mod kubernetes;

use std::time::Duration;

use crate::health::Probe;
use crate::plan::{Capacity, Step, StepEnd};
use crate::spec::{Check, Manifest, TargetSpec};

/// One instance as the target sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub name: String,
    /// The version it serves now, if any.
    pub version: Option<String>,
    /// The version it served before, kept for an instant rollback.
    pub previous: Option<String>,
    /// Versions already on the instance (no download needed).
    pub installed: Vec<String>,
    /// Versions running on it now: two during a blue-green preview on a two-slot host.
    pub running: Vec<String>,
}

impl Instance {
    /// Whether the instance runs `version` (on any slot).
    pub fn serves(&self, version: &str) -> bool {
        self.running.iter().any(|v| v == version)
    }
}

/// A change to one instance, reported to the engine so the journal knows it before and after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Changing {
        instance: String,
        version: String,
    },
    Changed {
        instance: String,
        version: String,
        ok: bool,
        detail: String,
    },
    /// Several changes, journaled with one flush.
    Many(Vec<Change>),
}

/// Where the target reports changes: the engine journals each one (and gives the cluster's copy of
/// the journal a moment to have it) before the returned future completes. An error means the
/// journal could not be written: the target must not make the change.
pub type Sink<'a> = &'a dyn Report;

/// The engine's side of [`Sink`].
pub trait Report: Sync {
    fn report(&self, change: Change) -> futures_util::future::BoxFuture<'_, Result<()>>;
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("{instance}: agent unreachable")]
    AgentUnreachable {
        instance: String,
        #[source]
        source: crate::agent::client::ClientError,
    },
    /// The agent answered 404 for the manifest's service (issue 20: this was "agent unreachable").
    #[error("{instance}: agent at {address} has no service {service:?} (it has: {})", if has.is_empty() { "none".to_string() } else { has.join(", ") })]
    NoService {
        instance: String,
        address: String,
        service: String,
        has: Vec<String>,
    },
    #[error("{instance}: {message}")]
    Rejected { instance: String, message: String },
    #[error("target setup: {0}")]
    Setup(String),
    /// A step or switch that did not complete, in the target's words.
    #[error("{0}")]
    Failed(String),
    /// The engine could not journal a change: nothing more may change.
    #[error("journal: {0}")]
    Journal(String),
    /// What the rollout changes was deleted by someone else mid-rollout (a Kubernetes
    /// Deployment): there is nothing to roll back; the target has removed what it made.
    #[error("{0}")]
    Gone(String),
}

pub type Result<T, E = TargetError> = std::result::Result<T, E>;

/// The known targets.
// One per process: boxing the larger variant would save nothing.
#[allow(clippy::large_enum_variant)]
pub enum AnyTarget {
    Hosts(hosts::Hosts),
    Kubernetes(kubernetes::Kubernetes),
}

impl AnyTarget {
    /// The target `m` names, decided once. A Kubernetes target gets its clients from `clients`
    /// (called only for one): the client for everything, whose writes go out only while this
    /// process holds the app's Lease, and one that sends each request once, for probes.
    pub async fn for_manifest<E: From<TargetError>>(
        m: &Manifest,
        clients: impl AsyncFnOnce() -> std::result::Result<(kube::Client, kube::Client), E>,
    ) -> std::result::Result<AnyTarget, E> {
        match &m.rollout.spec.target {
            TargetSpec::Hosts(h) => {
                let first_group = match &m.strategy {
                    crate::spec::Strategy::Canary(c) => c.first_group.as_deref(),
                    _ => None,
                };
                let weighted = match &m.strategy {
                    crate::spec::Strategy::Canary(c) => {
                        c.traffic_routing.as_ref().is_some_and(|t| t.traffic_switch)
                    }
                    _ => false,
                };
                Ok(AnyTarget::Hosts(
                    hosts::Hosts::new(h, first_group)?.weighted(weighted),
                ))
            }
            TargetSpec::Kubernetes(k) => {
                // A relative `manifest:` path starts at the folder of the first manifest file.
                let base = m
                    .sources
                    .files
                    .first()
                    .and_then(|s| s.file.parent())
                    .map(std::path::Path::to_path_buf)
                    .unwrap_or_default();
                let blue_green = matches!(m.strategy, crate::spec::Strategy::BlueGreen(_));
                let gateway = match &m.strategy {
                    crate::spec::Strategy::Canary(c) => c
                        .traffic_routing
                        .as_ref()
                        .and_then(|t| t.gateway_api.as_ref()),
                    _ => None,
                };
                let (client, probes) = clients().await?;
                Ok(AnyTarget::Kubernetes(
                    kubernetes::Kubernetes::with_client(
                        k,
                        &base,
                        m.strategy.min_ready_seconds(),
                        blue_green,
                        client,
                    )?
                    .probing_pods(&m.rollout.spec.checks, probes)
                    .routing_traffic(gateway),
                ))
            }
        }
    }

    /// A Deployment just read elsewhere in this command (the pod-security check): the target's
    /// first look at it, instead of reading it again.
    pub fn seed(&self, d: k8s_openapi::api::apps::v1::Deployment) {
        if let AnyTarget::Kubernetes(t) = self {
            t.seed(d);
        }
    }

    /// Starts what later looks at the target will read from (a Deployment's watches), beside other
    /// work such as taking the app's lock; reads only. A failure is said again by that look.
    pub async fn warm(&self) {
        if let AnyTarget::Kubernetes(t) = self {
            t.start_watching().await;
        }
    }
}

/// N and capacity of a target as its manifest gives them, for planning without reaching it: a
/// host fleet's size is the hosts it lists; a Kubernetes Deployment's is `replicas`.
pub fn offline_size(
    spec: &TargetSpec,
    replicas: Option<u32>,
) -> std::result::Result<(u32, Capacity), &'static str> {
    match (spec, replicas) {
        (TargetSpec::Hosts(_), Some(_)) => Err(
            "--replicas applies to kubernetes targets: a host fleet's size is the number of hosts it lists",
        ),
        (TargetSpec::Hosts(h), None) => Ok((
            u32::try_from(h.hosts.len()).unwrap_or(u32::MAX),
            hosts::capacity(h),
        )),
        (TargetSpec::Kubernetes(_), Some(n)) => Ok((n, Capacity::Elastic)),
        (TargetSpec::Kubernetes(_), None) => {
            Err("planning a kubernetes target offline needs its size: pass --replicas N")
        }
    }
}

/// What the engine needs from a target. Implementations wait on events (long-polls, watches); the
/// engine decides deadlines.
pub trait Target: Sync {
    /// N: the instance count the plan is made for.
    fn size(&self) -> impl Future<Output = Result<u32>> + Send;
    /// Whether the target can add instances beside the running ones.
    fn capacity(&self) -> Capacity;
    /// Whether the target itself holds a changed instance `minReadySeconds` before counting it
    /// ready (Kubernetes does); otherwise the engine holds it.
    fn holds_min_ready(&self) -> bool {
        false
    }
    /// Labels a metric query may use besides the rollout's own (`namespace` on Kubernetes).
    fn metric_labels(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
    /// The progress deadline of a step, given the manifest's: a Deployment's own
    /// progressDeadlineSeconds where the manifest leaves it at the default (known once `size` ran).
    fn progress_deadline(&self, manifest: Duration) -> Duration {
        manifest
    }
    /// Every instance, in the target's natural order.
    fn instances(&self) -> impl Future<Output = Result<Vec<Instance>>> + Send;
    /// The version the target is declared to run, where it keeps one apart from what runs (a
    /// Deployment's pod template, which holds even at zero pods); `None` for a fleet, whose
    /// instances are all it has.
    fn declared(&self) -> impl Future<Output = Result<Option<String>>> + Send {
        async { Ok(None) }
    }
    /// Makes `version` available everywhere ahead of the waves, without touching what runs.
    fn prepare(&self, version: &str) -> impl Future<Output = Result<()>> + Send;
    /// Brings the target to the step's counts of old and new (`version`) instances and waits until
    /// the changed ones are ready, or with [`StepEnd::Requested`] until the new ones are asked
    /// for, if the target can let the next step begin before then. `Err` carries the reason the step failed.
    fn scale(
        &self,
        step: &Step,
        version: &str,
        end: StepEnd,
        deadline: Duration,
        sink: Sink<'_>,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Puts every instance back on `version` at once (a rollback from what is kept on disk).
    fn restore(
        &self,
        version: &str,
        deadline: Duration,
        sink: Sink<'_>,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Sends traffic to the instances running `version` (the blue-green switch).
    fn switch_traffic(&self, version: &str) -> impl Future<Output = Result<()>> + Send;
    /// One probe of `check` against `version` on `instance` (or from the CLI, for `runOn: cli`).
    fn probe(
        &self,
        check: &Check,
        instance: &str,
        version: &str,
    ) -> impl Future<Output = Probe> + Send;
    /// Why the instances running `version` are failing now, while a rollout waits at a manual
    /// pause (`rollgate watch`); with `wait`, after the next change the target sees (or a short
    /// while). Targets that cannot tell say `None` after a short wait.
    fn failing(
        &self,
        _version: &str,
        wait: bool,
    ) -> impl Future<Output = Result<Option<String>>> + Send {
        async move {
            if wait {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Ok(None)
        }
    }
}

impl Target for AnyTarget {
    async fn size(&self) -> Result<u32> {
        match self {
            AnyTarget::Hosts(t) => t.size().await,
            AnyTarget::Kubernetes(t) => t.size().await,
        }
    }

    fn capacity(&self) -> Capacity {
        match self {
            AnyTarget::Hosts(t) => t.capacity(),
            AnyTarget::Kubernetes(t) => t.capacity(),
        }
    }

    fn holds_min_ready(&self) -> bool {
        match self {
            AnyTarget::Hosts(t) => t.holds_min_ready(),
            AnyTarget::Kubernetes(t) => t.holds_min_ready(),
        }
    }

    fn metric_labels(&self) -> Vec<(&'static str, String)> {
        match self {
            AnyTarget::Hosts(t) => t.metric_labels(),
            AnyTarget::Kubernetes(t) => t.metric_labels(),
        }
    }

    fn progress_deadline(&self, manifest: Duration) -> Duration {
        match self {
            AnyTarget::Hosts(t) => t.progress_deadline(manifest),
            AnyTarget::Kubernetes(t) => t.progress_deadline(manifest),
        }
    }

    async fn instances(&self) -> Result<Vec<Instance>> {
        match self {
            AnyTarget::Hosts(t) => t.instances().await,
            AnyTarget::Kubernetes(t) => t.instances().await,
        }
    }

    async fn declared(&self) -> Result<Option<String>> {
        match self {
            AnyTarget::Hosts(t) => t.declared().await,
            AnyTarget::Kubernetes(t) => t.declared().await,
        }
    }

    async fn prepare(&self, version: &str) -> Result<()> {
        match self {
            AnyTarget::Hosts(t) => t.prepare(version).await,
            AnyTarget::Kubernetes(t) => t.prepare(version).await,
        }
    }

    async fn scale(
        &self,
        step: &Step,
        version: &str,
        end: StepEnd,
        deadline: Duration,
        sink: Sink<'_>,
    ) -> Result<()> {
        match self {
            AnyTarget::Hosts(t) => t.scale(step, version, end, deadline, sink).await,
            AnyTarget::Kubernetes(t) => t.scale(step, version, end, deadline, sink).await,
        }
    }

    async fn restore(&self, version: &str, deadline: Duration, sink: Sink<'_>) -> Result<()> {
        match self {
            AnyTarget::Hosts(t) => t.restore(version, deadline, sink).await,
            AnyTarget::Kubernetes(t) => t.restore(version, deadline, sink).await,
        }
    }

    async fn switch_traffic(&self, version: &str) -> Result<()> {
        match self {
            AnyTarget::Hosts(t) => t.switch_traffic(version).await,
            AnyTarget::Kubernetes(t) => t.switch_traffic(version).await,
        }
    }

    async fn probe(&self, check: &Check, instance: &str, version: &str) -> Probe {
        match self {
            AnyTarget::Hosts(t) => t.probe(check, instance, version).await,
            AnyTarget::Kubernetes(t) => t.probe(check, instance, version).await,
        }
    }

    async fn failing(&self, version: &str, wait: bool) -> Result<Option<String>> {
        match self {
            AnyTarget::Hosts(t) => t.failing(version, wait).await,
            AnyTarget::Kubernetes(t) => t.failing(version, wait).await,
        }
    }
}
