//! The Kubernetes target: a plain Deployment, rolled by shifting replicas between its stable
//! ReplicaSet and a rollgate-held ReplicaSet of the new template, then handed back to the Deployment.
//!
//! How it works, and why in this order:
//!
//! - At rest the user's Deployment owns everything. `prepare` pauses it, records N in the
//!   `rollgate.dev/replicas` annotation, and creates the new ReplicaSet (the Deployment's template
//!   with the new image and a `rollgate.dev/version` annotation) with a controller reference to a
//!   `<deployment>-rollgate` ConfigMap, so no controller but the ReplicaSet's own touches its size.
//! - During a step the old count is the Deployment's `spec.replicas` (its controller scales its
//!   only active ReplicaSet to it, paused or not) and the new count is the ReplicaSet's
//!   `spec.replicas`. Counts move as Kubernetes' rolling update moves them: remove what availability
//!   allows, add what maxSurge allows, re-evaluate on every watch event.
//! - The hand-over, once everything is new: the Deployment (paused) gives its ReplicaSets to the
//!   ConfigMap, so that it owns none and its controller has nothing to scale; it gets the new
//!   template and N; then the new ReplicaSet, and after it the old ones, are given back; then it is
//!   unpaused. Its controller finds a ReplicaSet equal to its template (ignoring
//!   `pod-template-hash`), adopts it as its new ReplicaSet, and creates no pod.
//!
//! The `impl` is split by concern, one file each: `reach` (requests, retries, the API server's
//! reachability), `view` (the watched cache and what it derives), `pod_watch` (the pod watch, kept
//! to the new ReplicaSet's pods once a step moves forward), `sizes` (a step's counts),
//! `hand_over` (prepare, hand-over), `restore`, `traffic` (blue-green Services), `gateway`
//! (a traffic-weighted canary's HTTPRoutes and Services), `access` (the
//! access reviews), `pod_security` (the recommended securityContext), `probe` (checks on pods).

mod access;
mod gateway;
mod gone;
mod hand_over;
mod paused;
mod pod_facts;
mod pod_security;
mod pod_watch;
mod prepare;
mod probe;
mod reach;
mod restore;
mod settings;
mod sizes;
mod traffic;
mod view;
mod watched_pod;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use kube::core::Selector;
use kube::{Api, Client};

use super::{Instance, Result, Sink, Target, TargetError};
use crate::health::Probe;
use crate::plan::{Step, StepEnd};
use crate::spec::{Check, KubernetesTarget};

pub use crate::kube::FIELD_MANAGER;
pub use access::{required_access, required_access_routed};
pub use gateway::{canary_share, http_route_resource, with_weights};
pub use hand_over::{container_problem, deployment_problem, manifest_template};
pub use pod_security::{SecurityWarning, pod_security_warnings};
use pod_watch::names_every_pod;
pub use settings::deployment_settings;
pub use view::{image_tag, pod_failure, template_version};

use reach::Reach;
use view::Cache;

/// Pod-template annotation naming the version a pod runs.
pub const VERSION_ANNOTATION: &str = "rollgate.dev/version";
/// Pod-template annotation: the image (of the container a version is read from) that
/// `rollgate.dev/version` was written for; once the image differs, the image tag is the version.
pub const IMAGE_ANNOTATION: &str = "rollgate.dev/image";
/// Deployment annotation holding N while a rollout has its `spec.replicas` reduced.
pub const REPLICAS_ANNOTATION: &str = "rollgate.dev/replicas";
/// Deployment annotation while a rollout runs beside a HorizontalPodAutoscaler: the HPA's name.
/// The HPA keeps `spec.replicas`; the stable ReplicaSets are lent to the holder, scaled by rollgate.
pub const HPA_ANNOTATION: &str = "rollgate.dev/hpa";
/// ReplicaSet annotation: one of the Deployment's own, lent to the holder beside an HPA.
pub const LENT_ANNOTATION: &str = "rollgate.dev/lent";
/// Deployment annotation while a rollout runs on a Deployment that was paused before it: the
/// rollout leaves it paused, as it found it.
pub const PAUSED_ANNOTATION: &str = "rollgate.dev/paused";
const HASH_LABEL: &str = "pod-template-hash";

/// One Deployment, reached through the kubeconfig.
pub struct Kubernetes {
    spec: KubernetesTarget,
    /// Where a relative `manifest:` path starts.
    base_dir: PathBuf,
    min_ready_seconds: i32,
    deployments: Api<Deployment>,
    replica_sets: Api<ReplicaSet>,
    pods: Api<Pod>,
    /// The same pods as the run's watch reads them (only the fields rollgate reads).
    watched_pods: Api<watched_pod::WatchedPod>,
    config_maps: Api<ConfigMap>,
    services: Api<Service>,
    /// Blue-green: `<deployment>-active` and `<deployment>-preview` are pinned by pod-template-hash.
    blue_green: bool,
    /// A traffic-weighted canary: the HTTPRoutes and Services it weights.
    gateway: Option<crate::spec::GatewayApi>,
    /// For `runOn: host` checks, which probe pods through the API server (`get pods/proxy`): a
    /// client that sends each request once. `None` when the rollout has no such check.
    pod_prober: Option<Client>,
    http: reqwest::Client,
    /// ReplicaSets and pods of the Deployment, watched from first use to the end of the process.
    cache: tokio::sync::OnceCell<Cache>,
    /// Whether the API server answers, and how long a request keeps trying when it does not.
    reach: Arc<Reach>,
    /// The ReplicaSet held for the new version, once known: named when it goes missing.
    held_name: std::sync::Mutex<Option<String>>,
    /// Set once the API server said the kubeconfig's user may do what a rollout does.
    access: tokio::sync::OnceCell<()>,
    /// The Deployment's selector, once read (immutable in apps/v1).
    selector: std::sync::OnceLock<Selector>,
    /// The Deployment as `size` (or the command before it, see `seed`) last read it, and when:
    /// `size`'s answer, and the watches' selector and uid, while it is recent (a read fewer each).
    size_read: std::sync::Mutex<Option<(std::time::Instant, Deployment)>>,
    /// The widest maxSurge and maxUnavailable of the steps this process ran: a rollback keeps
    /// within them.
    bounds: std::sync::Mutex<Option<(u32, u32)>>,
    /// The Deployment's own progressDeadlineSeconds and minReadySeconds, once read.
    own: std::sync::OnceLock<settings::Own>,
    /// A metric check names every pod (`{{hosts}}`): the pod watch is never kept to the new pods.
    names_every_pod: bool,
}

impl Kubernetes {
    /// Connects with the kubeconfig (`KUBECONFIG`, else `~/.kube/config`, else in-cluster).
    pub async fn new(
        spec: &KubernetesTarget,
        base_dir: &Path,
        min_ready_seconds: u64,
        blue_green: bool,
    ) -> Result<Self> {
        let client = crate::kube::Kube::connect(None)
            .await
            .and_then(|k| k.client())
            .map_err(|e| TargetError::Setup(e.to_string()))?;
        Self::with_client(spec, base_dir, min_ready_seconds, blue_green, client)
    }

    /// The same with a client already made (for `--context`, and writes fenced by the app's Lease).
    pub fn with_client(
        spec: &KubernetesTarget,
        base_dir: &Path,
        min_ready_seconds: u64,
        blue_green: bool,
        client: Client,
    ) -> Result<Self> {
        let ns = spec.namespace.as_str();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| TargetError::Setup(e.to_string()))?;
        Ok(Kubernetes {
            spec: spec.clone(),
            base_dir: base_dir.to_path_buf(),
            min_ready_seconds: i32::try_from(min_ready_seconds).unwrap_or(i32::MAX),
            deployments: Api::namespaced(client.clone(), ns),
            replica_sets: Api::namespaced(client.clone(), ns),
            pods: Api::namespaced(client.clone(), ns),
            watched_pods: Api::namespaced(client.clone(), ns),
            config_maps: Api::namespaced(client.clone(), ns),
            services: Api::namespaced(client, ns),
            blue_green,
            gateway: None,
            pod_prober: None,
            http,
            cache: tokio::sync::OnceCell::new(),
            reach: Arc::default(),
            held_name: std::sync::Mutex::default(),
            access: tokio::sync::OnceCell::new(),
            selector: std::sync::OnceLock::new(),
            size_read: std::sync::Mutex::default(),
            bounds: std::sync::Mutex::default(),
            own: std::sync::OnceLock::new(),
            names_every_pod: false,
        })
    }

    /// The same, probing pods for `checks` with `client` (one that does not retry): a `runOn:
    /// host` http check goes through the API server's pod proxy, which the access review then
    /// asks for. A metric check that names every pod (`{{hosts}}`) keeps every pod watched.
    pub fn probing_pods(mut self, checks: &[Check], client: Client) -> Self {
        self.pod_prober = checks
            .iter()
            .any(crate::spec::on_pod::through_proxy)
            .then_some(client);
        self.names_every_pod = names_every_pod(checks);
        self
    }

    /// The same, weighting traffic through the Gateway API (`strategy.canary.trafficRouting`).
    pub fn routing_traffic(mut self, gateway: Option<&crate::spec::GatewayApi>) -> Self {
        self.gateway = gateway.cloned();
        self
    }

    fn name(&self) -> &str {
        &self.spec.deployment
    }

    /// The Deployment's namespace.
    pub fn namespace(&self) -> &str {
        &self.spec.namespace
    }

    fn holder_name(&self) -> String {
        format!("{}-rollgate", self.spec.deployment)
    }

    fn container(&self) -> Option<&str> {
        self.spec.container.as_deref()
    }
}

impl Target for Kubernetes {
    async fn size(&self) -> Result<u32> {
        // Once the run's watch is up, its copy is as recent as a read (any copy gives N: see
        // `n_of`). The access is asked all the same (answered from memory once granted).
        if let Some(d) = self
            .cache
            .get()
            .and_then(|c| c.deployment.state().first().cloned())
        {
            self.access.get_or_try_init(|| self.check_access()).await?;
            return Ok(Self::n_of(&d));
        }
        // Before anything changes the Deployment: the first thing every command asks. The read
        // goes beside it (a read changes nothing; a refusal is still said first), unless the
        // command has just made one.
        let recent = self.recent_read();
        let recent_at = recent.as_ref().map(|(at, _)| *at);
        let read = async {
            match recent {
                Some((_, d)) => Ok(Some(d)),
                None => {
                    self.reach
                        .call(|| self.deployments.get_opt(self.name()))
                        .await
                }
            }
        };
        let (access, d) = tokio::join!(self.access.get_or_try_init(|| self.check_access()), read);
        access?;
        let d = d.map_err(|e| self.fail("reading it", e))?;
        match d {
            Some(d) => {
                let _ = self.own.set(settings::Own::of(&d));
                let n = Self::n_of(&d);
                let at = recent_at.unwrap_or_else(std::time::Instant::now);
                *self.size_read.lock().expect("size read lock") = Some((at, d));
                Ok(n)
            }
            // Deleted during a rollout (`abort`, `resume`): what rollgate made for it goes too.
            None if self.rollout_made().await? => Err(self.deployment_gone().await),
            None => Err(self.fail("reading it", "not found: it does not exist")),
        }
    }

    fn capacity(&self) -> crate::plan::Capacity {
        crate::plan::Capacity::Elastic
    }

    /// Kubernetes counts minReadySeconds in pod availability itself.
    fn holds_min_ready(&self) -> bool {
        true
    }

    fn metric_labels(&self) -> Vec<(&'static str, String)> {
        vec![("namespace", self.namespace().to_string())]
    }

    fn progress_deadline(&self, manifest: Duration) -> Duration {
        match self.own.get() {
            Some(own) => own.progress_deadline(manifest),
            None => manifest,
        }
    }

    async fn instances(&self) -> Result<Vec<Instance>> {
        self.instances_now().await
    }

    async fn declared(&self) -> Result<Option<String>> {
        self.declared_now().await
    }

    async fn prepare(&self, version: &str) -> Result<()> {
        self.check_routes().await?;
        self.prepare_held(version).await?;
        if self.blue_green {
            self.pin_preview(version).await?;
        }
        self.pin_canary(version).await
    }

    async fn scale(
        &self,
        step: &Step,
        version: &str,
        end: StepEnd,
        deadline: Duration,
        sink: Sink<'_>,
    ) -> Result<()> {
        self.scale_routed(step, version, end, deadline, sink).await
    }

    async fn restore(&self, version: &str, deadline: Duration, sink: Sink<'_>) -> Result<()> {
        self.restore_routed(version, deadline, sink).await
    }

    async fn switch_traffic(&self, version: &str) -> Result<()> {
        self.switch_to(version).await
    }

    async fn probe(&self, check: &Check, instance: &str, _version: &str) -> Probe {
        self.probe_pod(check, instance).await
    }

    async fn failing(&self, version: &str, wait: bool) -> Result<Option<String>> {
        self.failing_now(version, wait).await
    }
}
