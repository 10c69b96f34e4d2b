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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodTemplateSpec, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::core::{Selector, SelectorExt};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, ResourceExt};
use sha2::{Digest, Sha256};

use super::{Change, Instance, Result, Sink, Target, TargetError};
use crate::health::Probe;
use crate::plan::{Step, StepKind};
use crate::spec::{Check, KubernetesTarget, RunOn};

/// Pod-template annotation naming the version a pod runs.
pub const VERSION_ANNOTATION: &str = "rollgate.dev/version";
/// Deployment annotation holding N while a rollout has its `spec.replicas` reduced.
pub const REPLICAS_ANNOTATION: &str = "rollgate.dev/replicas";
/// Deployment annotation while a rollout runs beside a HorizontalPodAutoscaler: the HPA's name.
/// The HPA keeps `spec.replicas`; the stable ReplicaSets are lent to the holder, scaled by rollgate.
pub const HPA_ANNOTATION: &str = "rollgate.dev/hpa";
/// ReplicaSet annotation: one of the Deployment's own, lent to the holder beside an HPA.
pub const LENT_ANNOTATION: &str = "rollgate.dev/lent";
/// The field manager of every write.
pub const FIELD_MANAGER: &str = "rollgate";
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
    config_maps: Api<ConfigMap>,
    services: Api<Service>,
    /// Blue-green: `<deployment>-active` and `<deployment>-preview` are pinned by pod-template-hash.
    blue_green: bool,
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
}

/// Retries of requests and watches: 100 ms doubling to 2 s, so a restarted API server is found
/// again within 2 s of answering (kube's watcher default grows to 30 s, most of a step).
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MOST: Duration = Duration::from_secs(2);
/// How long a request keeps retrying outside a step (before the first), and at least how long
/// during a rollback: a rollback is the way back to safety.
const PATIENCE_OUTSIDE_STEPS: Duration = Duration::from_secs(60);

/// The API server's reachability, as requests and watches find it. A loss is reported once, when
/// it begins, and its end once, with how long it lasted: a restarting API server costs a pause, and
/// the output says so, instead of failing the step.
struct Reach {
    lost: std::sync::Mutex<Option<(tokio::time::Instant, String)>>,
    /// How long a request retries connection errors and "unavailable" answers: the step's
    /// progressDeadlineSeconds while a step runs.
    patience_ms: AtomicU64,
    /// Whether that patience is a step's progressDeadlineSeconds (for the reason of a failure).
    in_step: std::sync::atomic::AtomicBool,
}

impl Default for Reach {
    fn default() -> Self {
        Reach {
            lost: std::sync::Mutex::default(),
            patience_ms: AtomicU64::new(PATIENCE_OUTSIDE_STEPS.as_millis() as u64),
            in_step: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl Reach {
    fn set_patience(&self, patience: Duration, in_step: bool) {
        let ms = u64::try_from(patience.as_millis()).unwrap_or(u64::MAX);
        self.patience_ms.store(ms, Ordering::Relaxed);
        self.in_step.store(in_step, Ordering::Relaxed);
    }

    /// How long a request retries now, in words: "progressDeadlineSeconds (5s)" during a step.
    fn patience_text(&self) -> String {
        let secs = self.patience_ms.load(Ordering::Relaxed) as f64 / 1000.0;
        if self.in_step.load(Ordering::Relaxed) {
            format!("progressDeadlineSeconds ({secs:.0}s)")
        } else {
            format!("{secs:.0}s")
        }
    }

    fn lost(&self, e: &dyn std::error::Error) {
        let mut lost = self.lost.lock().expect("reach lock");
        if lost.is_none() {
            // kube's errors repeat their source in their text: the first and the root suffice.
            let mut root = e;
            while let Some(source) = root.source() {
                root = source;
            }
            let why = if std::ptr::addr_eq(root, e) {
                e.to_string()
            } else {
                format!("{e} ({root})")
            };
            eprintln!("warning: lost the Kubernetes API server: {why}; retrying");
            *lost = Some((tokio::time::Instant::now(), why));
        }
    }

    fn regained(&self) {
        if let Some((since, _)) = self.lost.lock().expect("reach lock").take() {
            eprintln!(
                "the Kubernetes API server answers again, after {:.1}s",
                since.elapsed().as_secs_f64()
            );
        }
    }

    /// Since when, and why, the API server has been out of reach.
    fn outage(&self) -> Option<(tokio::time::Instant, String)> {
        self.lost.lock().expect("reach lock").clone()
    }

    /// Runs `request` until the API server answers it, retrying what a restart causes (no
    /// connection, a connection cut, 429 / 5xx) for the current patience. Requests are retried
    /// whole, so each is idempotent or handles its own replay (409 on create, 404 on delete).
    async fn call<T, F, Fut>(&self, mut request: F) -> kube::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = kube::Result<T>>,
    {
        let patience = Duration::from_millis(self.patience_ms.load(Ordering::Relaxed));
        let started = tokio::time::Instant::now();
        let mut pause = RETRY_FIRST;
        loop {
            match request().await {
                Err(e) if transient(&e) && started.elapsed() + pause < patience => {
                    self.lost(&e);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_MOST);
                }
                Err(e) if transient(&e) => return Err(e),
                answered => {
                    self.regained();
                    return answered;
                }
            }
        }
    }
}

/// Whether an error is the API server being away (restarting, overloaded) rather than an answer.
fn transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => matches!(s.code, 429 | 500 | 502 | 503 | 504),
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => true,
        _ => false,
    }
}

/// The watches' backoff after an error (see `RETRY_FIRST`); reset by the next event.
struct WatchRetry(Duration);

impl Iterator for WatchRetry {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let pause = self.0;
        self.0 = (pause * 2).min(RETRY_MOST);
        Some(pause)
    }
}

impl kube::runtime::utils::Backoff for WatchRetry {
    fn reset(&mut self) {
        self.0 = RETRY_FIRST;
    }
}

/// Watched copies of the Deployment's ReplicaSets and pods: a step reads them without a request.
struct Cache {
    uid: String,
    /// The Deployment itself: its status is what the hand-over waits on.
    deployment: reflector::Store<Deployment>,
    sets: reflector::Store<ReplicaSet>,
    pods: reflector::Store<Pod>,
    /// Bumped on every watch event.
    changes: tokio::sync::watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Cache {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the cluster holds for the Deployment right now.
struct View {
    deployment: Deployment,
    uid: String,
    selector: Selector,
    /// The ConfigMap that holds the in-flight ReplicaSet, if a rollout is under way.
    holder: Option<ConfigMap>,
    sets: Vec<ReplicaSet>,
}

impl View {
    fn owned_by<'a>(&'a self, uid: &'a str) -> impl Iterator<Item = &'a ReplicaSet> + 'a {
        self.sets
            .iter()
            .filter(move |rs| controller_uid(rs) == Some(uid))
    }

    fn holder_uid(&self) -> Option<&str> {
        self.holder.as_ref()?.metadata.uid.as_deref()
    }

    /// The ReplicaSet rollgate holds for `version`.
    fn held(&self, version: &str, container: Option<&str>) -> Option<&ReplicaSet> {
        let uid = self.holder_uid()?;
        self.owned_by(uid)
            .find(|rs| !lent(rs) && rs_version(rs, container).as_deref() == Some(version))
    }

    /// The stable ReplicaSets: the Deployment's own, and those lent to the holder beside an HPA.
    fn stable(&self) -> impl Iterator<Item = &ReplicaSet> + '_ {
        let holder = self.holder_uid();
        self.sets.iter().filter(move |rs| {
            let owner = controller_uid(rs);
            owner == Some(self.uid.as_str()) || (owner.is_some() && owner == holder && lent(rs))
        })
    }
}

fn lent(rs: &ReplicaSet) -> bool {
    rs.annotations().contains_key(LENT_ANNOTATION)
}

/// A step of a plan made for `planned` instances, sized for `now` (an HPA changed the count):
/// each count scaled by now/planned, and a step's old and new that made `planned` make `now`. Pure.
fn resize(step: &Step, planned: u32, now: u32) -> Step {
    if planned == now || planned == 0 {
        return step.clone();
    }
    let scale = |x: u32| {
        u32::try_from((u64::from(x) * u64::from(now) + u64::from(planned) / 2) / u64::from(planned))
            .unwrap_or(u32::MAX)
    };
    let mut s = step.clone();
    s.new = scale(step.new).min(now);
    if step.new > 0 && now > 0 {
        s.new = s.new.max(1);
    }
    s.old = if step.old + step.new == planned {
        now - s.new
    } else {
        scale(step.old).min(now)
    };
    s.max_total = scale(step.max_total).max(s.old + s.new);
    s.min_available = scale(step.min_available).min(s.max_total);
    s
}

fn controller_uid(rs: &ReplicaSet) -> Option<&str> {
    rs.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

fn replicas(rs: &ReplicaSet) -> u32 {
    rs.spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(0)
        .max(0) as u32
}

fn available(rs: &ReplicaSet) -> u32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
        .max(0) as u32
}

/// The version a pod template runs: its `rollgate.dev/version` annotation, else the image tag of
/// the container (the named one, or the first).
pub fn template_version(t: &PodTemplateSpec, container: Option<&str>) -> Option<String> {
    if let Some(v) = t
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(VERSION_ANNOTATION))
    {
        return Some(v.clone());
    }
    let spec = t.spec.as_ref()?;
    let c = match container {
        Some(name) => spec.containers.iter().find(|c| c.name == name)?,
        None => spec.containers.first()?,
    };
    image_tag(c.image.as_deref()?)
}

/// `registry:5000/web:1.2@sha256:...` is version `1.2`.
pub fn image_tag(image: &str) -> Option<String> {
    let image = image.split('@').next().unwrap_or(image);
    let name = image.rsplit('/').next().unwrap_or(image);
    name.split_once(':').map(|(_, tag)| tag.to_string())
}

fn rs_version(rs: &ReplicaSet, container: Option<&str>) -> Option<String> {
    template_version(&rs.spec.as_ref()?.template.clone()?, container)
}

fn pod_version(p: &Pod, container: Option<&str>) -> Option<String> {
    let t = PodTemplateSpec {
        metadata: Some(p.metadata.clone()),
        spec: p.spec.clone(),
    };
    template_version(&t, container).or_else(|| p.labels().get(HASH_LABEL).cloned())
}

/// Why a pod will not become available by waiting: it crashed, or its image cannot be pulled.
pub fn pod_failure(p: &Pod) -> Option<String> {
    let status = p.status.as_ref()?;
    if status.phase.as_deref() == Some("Failed") {
        return Some("phase Failed".into());
    }
    for c in status.container_statuses.iter().flatten() {
        let waiting = c
            .state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .and_then(|w| w.reason.clone());
        if let Some(reason) = &waiting
            && matches!(
                reason.as_str(),
                "CrashLoopBackOff"
                    | "ErrImagePull"
                    | "ImagePullBackOff"
                    | "InvalidImageName"
                    | "CreateContainerConfigError"
                    | "CreateContainerError"
                    | "RunContainerError"
            )
        {
            return Some(format!("container {} {reason}", c.name));
        }
        if c.restart_count > 0 {
            return Some(format!(
                "container {} restarted {} times",
                c.name, c.restart_count
            ));
        }
    }
    None
}

fn owner_ref(kind: &str, api_version: &str, name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name: name.into(),
        uid: uid.into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
}

/// Where a step stands, as far as it can progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    old: u32,
    old_available: u32,
    new: u32,
    new_available: u32,
}

/// The next sizes of (old, new) towards `step`, within its bounds: first remove what keeps
/// `min_available` ready, then add what stays within `max_total`. Pure.
fn next_sizes(step: &Step, c: Counts) -> (u32, u32) {
    let shrink = |current: u32, target: u32, other_available: u32| {
        if target >= current {
            current
        } else {
            target
                .max(step.min_available.saturating_sub(other_available))
                .min(current)
        }
    };
    let old = shrink(c.old, step.old, c.new_available);
    let new = shrink(c.new, step.new, c.old_available);
    let grow = |current: u32, target: u32, room: u32| {
        if target <= current {
            current
        } else {
            target.min(current + room)
        }
    };
    let room = step
        .max_total
        .saturating_sub(c.old.max(old) + c.new.max(new));
    let new = grow(new, step.new, room);
    let room = step
        .max_total
        .saturating_sub(c.old.max(old) + c.new.max(new));
    let old = grow(old, step.old, room);
    (old, new)
}

impl Kubernetes {
    /// Connects with the kubeconfig (`KUBECONFIG`, else `~/.kube/config`, else in-cluster).
    pub async fn new(
        spec: &KubernetesTarget,
        base_dir: &Path,
        min_ready_seconds: u64,
        blue_green: bool,
    ) -> Result<Self> {
        let config = kube::Config::infer()
            .await
            .map_err(|e| TargetError::Setup(format!("kubeconfig: {e}")))?;
        let client = Client::try_from(config)
            .map_err(|e| TargetError::Setup(format!("kubernetes client: {e}")))?;
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
            config_maps: Api::namespaced(client.clone(), ns),
            services: Api::namespaced(client, ns),
            blue_green,
            http,
            cache: tokio::sync::OnceCell::new(),
            reach: Arc::default(),
            held_name: std::sync::Mutex::default(),
            access: tokio::sync::OnceCell::new(),
            selector: std::sync::OnceLock::new(),
        })
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

    fn fail(&self, what: &str, e: impl std::fmt::Display + 'static) -> TargetError {
        // The API server's refusal names the verb and the resource; say where the grant lives.
        let message = match (&e as &dyn std::any::Any).downcast_ref::<kube::Error>() {
            Some(kube::Error::Api(s)) if s.code == 403 => format!(
                "{what}: forbidden: {} (the Role rollgate needs is manifests/kubernetes/rbac.yaml)",
                s.message
            ),
            // The request retried for as long as it may: say so, not only the last error.
            Some(k) if transient(k) => {
                let away = match self.reach.outage() {
                    Some((since, why)) => format!(
                        "out of reach for {:.0}s: {why}",
                        since.elapsed().as_secs_f64()
                    ),
                    None => format!("out of reach: {e}"),
                };
                format!(
                    "{what}: no answer from the Kubernetes API server within {}; {away}",
                    self.reach.patience_text()
                )
            }
            _ => format!("{what}: {e}"),
        };
        TargetError::Rejected {
            instance: format!(
                "deployment {}/{}",
                self.spec.namespace, self.spec.deployment
            ),
            message,
        }
    }

    /// Asks the API server (one SelfSubjectAccessReview per verb, which any user may make) whether
    /// the kubeconfig's user may do everything a rollout does, and names each verb it may not.
    async fn check_access(&self) -> Result<()> {
        let reviews: Api<SelfSubjectAccessReview> =
            Api::all(self.deployments.clone().into_client());
        let ns = &self.spec.namespace;
        let asks = required_access(self.blue_green)
            .into_iter()
            .map(|(group, resource, verb)| {
                let reviews = reviews.clone();
                let review = SelfSubjectAccessReview {
                    spec: SelfSubjectAccessReviewSpec {
                        resource_attributes: Some(ResourceAttributes {
                            group: Some(group.into()),
                            resource: Some(resource.into()),
                            verb: Some(verb.into()),
                            namespace: Some(ns.clone()),
                            ..ResourceAttributes::default()
                        }),
                        ..SelfSubjectAccessReviewSpec::default()
                    },
                    ..SelfSubjectAccessReview::default()
                };
                async move {
                    let answer = reviews.create(&PostParams::default(), &review).await;
                    (group, resource, verb, answer)
                }
            });
        let mut denied = Vec::new();
        for (group, resource, verb, answer) in futures_util::future::join_all(asks).await {
            match answer {
                Ok(r) if r.status.as_ref().is_some_and(|s| !s.allowed) => {
                    let resource = if group.is_empty() {
                        resource.to_string()
                    } else {
                        format!("{resource}.{group}")
                    };
                    denied.push(format!("{verb} {resource}"));
                }
                Ok(_) => {}
                // A server that answers no reviews: the requests themselves will say what fails.
                Err(_) => return Ok(()),
            }
        }
        if denied.is_empty() {
            return Ok(());
        }
        Err(self.fail(
            "checking access",
            format!(
                "forbidden: the kubeconfig's user may not {} in namespace {ns}; nothing was changed (the Role rollgate needs is manifests/kubernetes/rbac.yaml)",
                denied.join(", ")
            ),
        ))
    }

    /// The HorizontalPodAutoscaler (autoscaling/v2) that scales the Deployment, if any.
    async fn autoscaler(&self) -> Result<Option<String>> {
        let hpas: Api<HorizontalPodAutoscaler> =
            Api::namespaced(self.deployments.clone().into_client(), &self.spec.namespace);
        let lp = ListParams::default();
        let all = self
            .reach
            .call(|| hpas.list(&lp))
            .await
            .map_err(|e| self.fail("listing HorizontalPodAutoscalers", e))?;
        Ok(all
            .items
            .into_iter()
            .find(|h| {
                h.spec.scale_target_ref.kind == "Deployment"
                    && h.spec.scale_target_ref.name == self.name()
            })
            .map(|h| h.name_any()))
    }

    /// The Deployment's pod template as the cluster holds it; `None` when there is no Deployment.
    pub async fn live_template(&self) -> Result<Option<PodTemplateSpec>> {
        let d = self
            .deployments
            .get_opt(self.name())
            .await
            .map_err(|e| self.fail("reading it", e))?;
        Ok(d.and_then(|d| d.spec).map(|s| s.template))
    }

    /// Starts the watches on first use and returns once both have listed.
    async fn cache(&self) -> Result<&Cache> {
        self.cache
            .get_or_try_init(|| async {
                let d = self
                    .reach
                    .call(|| self.deployments.get(self.name()))
                    .await
                    .map_err(|e| self.fail("reading it", e))?;
                let selector = self.selector_of(&d)?;
                let config = watcher::Config::default().labels_from(&selector);
                let (deployment, deployment_w) = reflector::store::<Deployment>();
                let (sets, sets_w) = reflector::store::<ReplicaSet>();
                let (pods, pods_w) = reflector::store::<Pod>();
                let by_name =
                    watcher::Config::default().fields(&format!("metadata.name={}", self.name()));
                let deployment_events =
                    reflector(deployment_w, watcher(self.deployments.clone(), by_name))
                        .backoff(WatchRetry(RETRY_FIRST))
                        .map(|e| e.map(drop))
                        .boxed();
                let set_events =
                    reflector(sets_w, watcher(self.replica_sets.clone(), config.clone()))
                        .backoff(WatchRetry(RETRY_FIRST))
                        .map(|e| e.map(drop))
                        .boxed();
                let pod_events = reflector(pods_w, watcher(self.pods.clone(), config))
                    .backoff(WatchRetry(RETRY_FIRST))
                    .map(|e| e.map(drop))
                    .boxed();
                let (tx, changes) = tokio::sync::watch::channel(0u64);
                let reach = self.reach.clone();
                let task = tokio::spawn(async move {
                    // An error is retried (the watcher lists again) after a backoff; the store
                    // keeps the last full list meanwhile.
                    let mut events = futures_util::stream::select_all([
                        deployment_events,
                        set_events,
                        pod_events,
                    ]);
                    while let Some(event) = events.next().await {
                        match event {
                            Ok(()) => {
                                reach.regained();
                                tx.send_modify(|n| *n += 1);
                            }
                            Err(e) => reach.lost(&e),
                        }
                    }
                });
                let listed = async {
                    deployment.wait_until_ready().await.ok();
                    sets.wait_until_ready().await.ok();
                    pods.wait_until_ready().await.ok();
                };
                tokio::time::timeout(Duration::from_secs(60), listed)
                    .await
                    .map_err(|_| self.fail("watching", "no list of ReplicaSets and pods in 60s"))?;
                Ok(Cache {
                    uid: d.metadata.uid.clone().unwrap_or_default(),
                    deployment,
                    sets,
                    pods,
                    changes,
                    task,
                })
            })
            .await
    }

    fn active_service(&self) -> String {
        format!("{}-active", self.spec.deployment)
    }

    fn preview_service(&self) -> String {
        format!("{}-preview", self.spec.deployment)
    }

    /// Points `service` at the pods of one ReplicaSet (its pod-template-hash), or at every pod of
    /// the app with `None`. One patch; a Service that does not exist is not an error.
    async fn pin(&self, service: &str, hash: Option<&str>) -> Result<()> {
        let patch = Patch::Merge(serde_json::json!({"spec": {"selector": {HASH_LABEL: hash}}}));
        let pp = params();
        match self
            .reach
            .call(|| self.services.patch(service, &pp, &patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(self.fail(&format!("pointing Service {service}"), e)),
        }
    }

    async fn pinned(&self, service: &str) -> Result<Option<String>> {
        let svc = self
            .reach
            .call(|| self.services.get_opt(service))
            .await
            .map_err(|e| self.fail(&format!("reading Service {service}"), e))?;
        Ok(svc
            .and_then(|s| s.spec?.selector)
            .and_then(|sel| sel.get(HASH_LABEL).cloned()))
    }

    async fn view(&self) -> Result<View> {
        // The three reads go out together once the selector is known (it is immutable in
        // apps/v1): one round trip instead of three.
        let holder_name = self.holder_name();
        let read = async {
            self.reach
                .call(|| self.deployments.get(self.name()))
                .await
                .map_err(|e| self.fail("reading it", e))
        };
        let read_holder = async {
            self.reach
                .call(|| self.config_maps.get_opt(&holder_name))
                .await
                .map_err(|e| self.fail("reading the rollout holder", e))
        };
        let list = |selector: Selector| async move {
            let listed = ListParams::default().labels_from(&selector);
            self.reach
                .call(|| self.replica_sets.list(&listed))
                .await
                .map(|l| l.items)
                .map_err(|e| self.fail("listing ReplicaSets", e))
        };
        let (deployment, holder, sets) = match self.selector.get() {
            Some(selector) => futures_util::try_join!(read, read_holder, list(selector.clone()))?,
            None => {
                let (deployment, holder) = futures_util::try_join!(read, read_holder)?;
                let sets = list(self.selector_of(&deployment)?).await?;
                (deployment, holder, sets)
            }
        };
        let uid = deployment.metadata.uid.clone().unwrap_or_default();
        let selector = self.selector_of(&deployment)?;
        Ok(View {
            deployment,
            uid,
            selector,
            holder,
            sets,
        })
    }

    /// The Deployment's selector, remembered for the next `view`.
    fn selector_of(&self, d: &Deployment) -> Result<Selector> {
        let selector = d
            .spec
            .as_ref()
            .map(|s| s.selector.clone())
            .unwrap_or_default();
        let selector = Selector::try_from(selector).map_err(|e| self.fail("its selector", e))?;
        let _ = self.selector.set(selector.clone());
        Ok(selector)
    }

    fn n_of(d: &Deployment) -> u32 {
        d.annotations()
            .get(REPLICAS_ANNOTATION)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).max(0) as u32)
    }

    /// The pod template of `version`: the Deployment's with the new image, or the manifest's.
    fn new_template(&self, d: &Deployment, version: &str) -> Result<PodTemplateSpec> {
        let mut t = match &self.spec.manifest {
            Some(path) => manifest_template(&self.base_dir.join(path))?,
            None => d
                .spec
                .as_ref()
                .map(|s| s.template.clone())
                .unwrap_or_default(),
        };
        if let Some(image) = &self.spec.image {
            let containers = &mut t
                .spec
                .as_mut()
                .ok_or_else(|| self.fail("its template", "has no pod spec"))?
                .containers;
            let c = match self.container() {
                Some(name) => containers
                    .iter_mut()
                    .find(|c| c.name == name)
                    .ok_or_else(|| {
                        self.fail(
                            "spec.target.kubernetes.container",
                            format!("no container {name}"),
                        )
                    })?,
                None if containers.len() == 1 => &mut containers[0],
                None => {
                    return Err(self.fail(
                        "spec.target.kubernetes.image",
                        "the pod has several containers: name one with container:",
                    ));
                }
            };
            c.image = Some(image.clone());
        }
        let meta = t.metadata.get_or_insert_with(ObjectMeta::default);
        meta.annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(VERSION_ANNOTATION.into(), version.into());
        if let Some(labels) = &mut meta.labels {
            labels.remove(HASH_LABEL);
        }
        Ok(t)
    }

    async fn patch_deployment(&self, patch: serde_json::Value) -> Result<Deployment> {
        let (pp, patch) = (params(), Patch::Merge(patch));
        self.reach
            .call(|| self.deployments.patch(self.name(), &pp, &patch))
            .await
            .map_err(|e| self.fail("patching it", e))
    }

    /// Replaces the Deployment's template exactly (a merge patch would keep stale keys), with
    /// `replicas`, still paused, and without the N annotation. Retries a write that races.
    /// `read` is a recent copy to try first (one round trip fewer when nothing changed since).
    async fn set_template(
        &self,
        template: PodTemplateSpec,
        replicas: u32,
        mut read: Option<Deployment>,
    ) -> Result<Deployment> {
        let mut attempts = 0;
        loop {
            let mut d = match read.take() {
                Some(d) => d,
                None => self
                    .reach
                    .call(|| self.deployments.get(self.name()))
                    .await
                    .map_err(|e| self.fail("reading it", e))?,
            };
            if let Some(a) = d.metadata.annotations.as_mut() {
                a.remove(REPLICAS_ANNOTATION);
                a.remove(HPA_ANNOTATION);
            }
            let spec = d.spec.get_or_insert_with(Default::default);
            spec.template = template.clone();
            spec.replicas = Some(replicas as i32);
            spec.paused = Some(true);
            let post = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PostParams::default()
            };
            // A replace whose answer was lost and that is sent again conflicts: read, then again.
            match self
                .reach
                .call(|| self.deployments.replace(self.name(), &post, &d))
                .await
            {
                Ok(d) => return Ok(d),
                Err(kube::Error::Api(s)) if s.code == 409 && attempts < 5 => attempts += 1,
                Err(e) => return Err(self.fail("setting its template", e)),
            }
        }
    }

    /// Gives `rs` to a new controlling owner (one write, so no controller sees it ownerless),
    /// marked as lent or not.
    async fn give(&self, rs: &ReplicaSet, owner: OwnerReference, lend: bool) -> Result<()> {
        let mark = lend.then_some("true");
        let patch = Patch::Merge(serde_json::json!({"metadata": {
            "ownerReferences": [owner],
            "annotations": {LENT_ANNOTATION: mark},
        }}));
        let (pp, name) = (params(), rs.name_any());
        self.reach
            .call(|| self.replica_sets.patch(&name, &pp, &patch))
            .await
            .map(drop)
            .map_err(|e| self.fail(&format!("handing over ReplicaSet {}", rs.name_any()), e))
    }

    async fn ensure_holder(&self, view: &View) -> Result<ConfigMap> {
        if let Some(cm) = &view.holder {
            return Ok(cm.clone());
        }
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(self.holder_name()),
                annotations: Some(
                    [(
                        "rollgate.dev/purpose".to_string(),
                        format!(
                            "holds the new ReplicaSet of {} while rollgate rolls it out; gone when the rollout ends",
                            self.name()
                        ),
                    )]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        };
        let post = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        match self
            .reach
            .call(|| self.config_maps.create(&post, &cm))
            .await
        {
            // Created by this very request, sent again after its answer was lost.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let name = self.holder_name();
                self.reach
                    .call(|| self.config_maps.get(&name))
                    .await
                    .map_err(|e| self.fail("reading the rollout holder", e))
            }
            created => created.map_err(|e| self.fail("creating the rollout holder", e)),
        }
    }

    fn holder_ref(&self, cm: &ConfigMap) -> OwnerReference {
        owner_ref(
            "ConfigMap",
            "v1",
            &self.holder_name(),
            cm.metadata.uid.as_deref().unwrap_or_default(),
        )
    }

    fn deployment_ref(&self, view: &View) -> OwnerReference {
        owner_ref("Deployment", "apps/v1", self.name(), &view.uid)
    }

    /// Hands the held ReplicaSet of `version` (now at N) to the Deployment; see the module docs.
    async fn hand_over(&self, version: &str, n: u32, deadline: Duration) -> Result<()> {
        let view = self.view().await?;
        let Some(new) = view.held(version, self.container()).cloned() else {
            let current = view
                .deployment
                .spec
                .as_ref()
                .and_then(|s| template_version(&s.template, self.container()));
            if current.as_deref() == Some(version) {
                return Ok(()); // already handed over
            }
            return Err(self.fail("handing over", self.missing_held(&view, version)));
        };
        let holder = view.holder.clone().expect("held implies a holder");
        // What the holder has once the Deployment gave it its own (below): given back in step 3.
        let held: Vec<ReplicaSet> = view
            .owned_by(&view.uid)
            .chain(view.owned_by(view.holder_uid().unwrap_or_default()))
            .filter(|rs| rs.name_any() != new.name_any())
            .cloned()
            .collect();
        // 1. The Deployment, paused, gives away its ReplicaSets: it owns none, so it scales none.
        let href = self.holder_ref(&holder);
        futures_util::future::try_join_all(
            view.owned_by(&view.uid)
                .map(|rs| self.give(rs, href.clone(), false)),
        )
        .await?;
        // 2. The identical template and N.
        let mut template = new
            .spec
            .as_ref()
            .and_then(|s| s.template.clone())
            .unwrap_or_default();
        if let Some(labels) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
            labels.remove(HASH_LABEL);
        }
        let generation = self
            .set_template(template, n, Some(view.deployment.clone()))
            .await?
            .metadata
            .generation;
        // 3. The new ReplicaSet first (the only active one, already at N), then the rest.
        let dref = self.deployment_ref(&view);
        self.give(&new, dref.clone(), false).await?;
        futures_util::future::try_join_all(
            held.iter().map(|rs| self.give(rs, dref.clone(), false)),
        )
        .await?;
        // 4. Once its controller counts that ReplicaSet as its new one (so its cache has the
        //    adoption and it will not create another), unpaused.
        self.wait_status(deadline, "adopting the new ReplicaSet", move |d| {
            let s = d.status.as_ref();
            s.and_then(|s| s.observed_generation) >= generation
                && s.and_then(|s| s.updated_replicas).unwrap_or(0) == n as i32
        })
        .await?;
        let (unpaused, ()) = futures_util::try_join!(
            self.patch_deployment(serde_json::json!({"spec": {"paused": false}})),
            self.delete_holder(),
        )?;
        if self.blue_green {
            // One ReplicaSet is left: the Services select the app's pods as the user wrote them.
            self.pin(&self.active_service(), None).await?;
            self.pin(&self.preview_service(), None).await?;
        }
        self.wait_rolled_out(n, unpaused.metadata.generation, deadline)
            .await
    }

    /// Waits (by watch) until the Deployment reports its template rolled out at `n`, at
    /// `generation` (the last write's) or later.
    async fn wait_rolled_out(
        &self,
        n: u32,
        generation: Option<i64>,
        deadline: Duration,
    ) -> Result<()> {
        let n = n as i32;
        self.wait_status(deadline, "rolling out at N", move |d| {
            let (Some(g), Some(s)) = (d.metadata.generation, d.status.as_ref()) else {
                return false;
            };
            s.observed_generation >= Some(g)
                && s.observed_generation >= generation
                && s.updated_replicas.unwrap_or(0) == n
                && s.replicas.unwrap_or(0) == n
                && s.available_replicas.unwrap_or(0) == n
        })
        .await
    }

    /// Waits (by the run's watch) until the Deployment meets `cond`, at most `deadline`. The
    /// watched copy may trail a write just made: `cond` compares generations with the write's.
    async fn wait_status(
        &self,
        deadline: Duration,
        what: &str,
        cond: impl Fn(&Deployment) -> bool + Send + 'static,
    ) -> Result<()> {
        let cache = self.cache().await?;
        let mut changes = cache.changes.clone();
        let done = async {
            loop {
                changes.borrow_and_update();
                if cache.deployment.state().iter().any(|d| cond(d)) {
                    return true;
                }
                if changes.changed().await.is_err() {
                    return false;
                }
            }
        };
        match tokio::time::timeout(deadline, done).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.fail(what, "the watch ended")),
            Err(_) => Err(self.fail(
                what,
                format!(
                    "not done within {}s{}",
                    deadline.as_secs(),
                    self.outage_note()
                ),
            )),
        }
    }

    /// Appended to a timeout's reason while the API server is out of reach.
    fn outage_note(&self) -> String {
        self.reach
            .outage()
            .map_or_else(String::new, |(since, why)| {
                format!(
                    " (the Kubernetes API server has been out of reach for {:.0}s: {why})",
                    since.elapsed().as_secs_f64()
                )
            })
    }

    /// Deletes the holder ConfigMap; one already gone is fine (a retried delete, or a rollback
    /// after someone else deleted it).
    async fn delete_holder(&self) -> Result<()> {
        let (name, dp) = (self.holder_name(), DeleteParams::background());
        match self
            .reach
            .call(|| self.config_maps.delete(&name, &dp))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(self.fail("deleting the rollout holder", e)),
        }
    }

    /// Why the held ReplicaSet of `version` is not in `view`: someone else deleted it, or its
    /// holder (whose garbage collection deletes it).
    fn missing_held(&self, view: &View, version: &str) -> String {
        let ns = &self.spec.namespace;
        let name = self.held_name.lock().expect("held lock").clone();
        let rs = match &name {
            Some(name) => format!("ReplicaSet {ns}/{name} (version {version})"),
            None => format!("the ReplicaSet of version {version}"),
        };
        let holder = format!("ConfigMap {ns}/{}", self.holder_name());
        // Deleted with `--cascade=orphan`, the holder lingers until its dependents are let go.
        let holder_gone = view
            .holder
            .as_ref()
            .is_none_or(|cm| cm.metadata.deletion_timestamp.is_some());
        let still_there = view
            .sets
            .iter()
            .any(|s| Some(s.name_any()) == name && s.metadata.deletion_timestamp.is_none());
        match (holder_gone, still_there) {
            (true, false) => format!(
                "{holder}, which holds {rs} during the rollout, was deleted by someone else (not rollgate); garbage collection deletes {rs} and its pods with it, and rollgate does not recreate them"
            ),
            (true, true) => format!(
                "{holder}, which holds {rs} during the rollout, was deleted by someone else (not rollgate), leaving {rs} without its holder; rollgate does not use it further"
            ),
            (false, true) => format!(
                "{rs} was taken from {holder} by someone else (not rollgate) during the rollout; rollgate does not use it further"
            ),
            (false, false) => format!(
                "{rs} was deleted by someone else (not rollgate) during the rollout; rollgate does not recreate it"
            ),
        }
    }

    /// Pauses the Deployment, records N, and holds a ReplicaSet of `version`: an existing one of
    /// the Deployment's (a rollback), or a new one of the new template.
    async fn prepare_held(&self, version: &str) -> Result<()> {
        let view = self.view().await?;
        let d = &view.deployment;
        let container = self.container();
        let current = d
            .spec
            .as_ref()
            .and_then(|s| template_version(&s.template, container));
        if view.held(version, container).is_some() || current.as_deref() == Some(version) {
            return Ok(()); // prepared already, or nothing to prepare
        }
        let active = view
            .owned_by(&view.uid)
            .filter(|rs| replicas(rs) > 0)
            .count();
        if active > 1 {
            return Err(self.fail(
                "prepare",
                "a rollout of its own is under way (several active ReplicaSets): wait for it, or undo it",
            ));
        }
        let n = Self::n_of(d);
        let hpa = self.autoscaler().await?;
        // Paused, the Deployment only ever scales its one active ReplicaSet to spec.replicas.
        self.patch_deployment(serde_json::json!({
            "metadata": {"annotations": {REPLICAS_ANNOTATION: n.to_string(), HPA_ANNOTATION: hpa}},
            "spec": {"paused": true},
        }))
        .await?;
        let holder = self.ensure_holder(&view).await?;
        if hpa.is_some() {
            // The HPA keeps spec.replicas. Lent to the holder, the stable ReplicaSets are scaled by
            // rollgate alone: the Deployment controller, owning none, scales none.
            for rs in view.owned_by(&view.uid) {
                self.give(rs, self.holder_ref(&holder), true).await?;
            }
        }
        // A version the Deployment still keeps (a rollback) is reused: its ReplicaSet exists.
        if let Some(rs) = view
            .owned_by(&view.uid)
            .find(|rs| replicas(rs) == 0 && rs_version(rs, container).as_deref() == Some(version))
        {
            *self.held_name.lock().expect("held lock") = Some(rs.name_any());
            return self.give(rs, self.holder_ref(&holder), false).await;
        }
        let mut template = self.new_template(d, version)?;
        let json = serde_json::to_vec(&template).unwrap_or_default();
        let hash = format!("rg{}", &hex::encode(Sha256::digest(&json))[..8]);
        let labels = template
            .metadata
            .get_or_insert_with(ObjectMeta::default)
            .labels
            .get_or_insert_with(BTreeMap::new);
        if !view.selector.matches(labels) {
            return Err(self.fail(
                "the new pod template",
                "its labels do not match the Deployment's selector",
            ));
        }
        labels.insert(HASH_LABEL.into(), hash.clone());
        let labels = labels.clone();
        let mut selector: LabelSelector = d
            .spec
            .as_ref()
            .map(|s| s.selector.clone())
            .unwrap_or_default();
        selector
            .match_labels
            .get_or_insert_with(BTreeMap::new)
            .insert(HASH_LABEL.into(), hash.clone());
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(format!("{}-{hash}", self.name())),
                labels: Some(labels),
                annotations: Some([(VERSION_ANNOTATION.to_string(), version.to_string())].into()),
                owner_references: Some(vec![self.holder_ref(&holder)]),
                ..ObjectMeta::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(0),
                min_ready_seconds: Some(self.min_ready_seconds),
                selector,
                template: Some(template),
            }),
            status: None,
        };
        *self.held_name.lock().expect("held lock") = Some(rs.name_any());
        let post = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        match self
            .reach
            .call(|| self.replica_sets.create(&post, &rs))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // Left by an earlier attempt of this version (or by this create, sent again after
                // its answer was lost): hold it again.
                let name = rs.name_any();
                let existing = self
                    .reach
                    .call(|| self.replica_sets.get(&name))
                    .await
                    .map_err(|e| self.fail("reading the new ReplicaSet", e))?;
                self.give(&existing, self.holder_ref(&holder), false).await
            }
            Err(e) => Err(self.fail("creating the new ReplicaSet", e)),
        }
    }

    /// Moves towards `step`'s counts on every watch event until they hold, a pod fails, or nothing
    /// progresses for `deadline`.
    async fn converge(
        &self,
        step: &Step,
        version: &str,
        deadline: Duration,
        sink: Sink<'_>,
    ) -> std::result::Result<(), String> {
        let err = |e: TargetError| crate::engine::error_chain(&e);
        let cache = self.cache().await.map_err(err)?;
        let mut changes = cache.changes.clone();
        let holder = self.holder_name();
        let container = self.container();
        let mut last: Option<Counts> = None;
        let mut last_progress = tokio::time::Instant::now();
        let mut old_set: Option<u32> = None;
        let mut new_set: Option<u32> = None;
        let mut first: Option<Counts> = None;
        let mut announced: Option<String> = None;
        loop {
            changes.borrow_and_update();
            let all = cache.sets.state();
            let held = all.iter().find(|rs| {
                rs.metadata.owner_references.iter().flatten().any(|o| {
                    o.controller == Some(true) && o.kind == "ConfigMap" && o.name == holder
                }) && !lent(rs)
                    && rs_version(rs, container).as_deref() == Some(version)
                    && rs.metadata.deletion_timestamp.is_none()
            });
            if held.is_none() {
                // Not in the watched copy: not seen yet (the watch lags behind `prepare`), or gone
                // because someone else deleted it or its holder. The API server says which; a
                // ReplicaSet gone is never recreated behind the user's back.
                let view = self.view().await.map_err(err)?;
                let there = view
                    .held(version, container)
                    .is_some_and(|rs| rs.metadata.deletion_timestamp.is_none());
                if !there {
                    let why = self.missing_held(&view, version);
                    let instance = self.held_name.lock().expect("held lock").clone();
                    sink(Change::Changed {
                        instance: instance.unwrap_or_else(|| self.name().into()),
                        version: version.into(),
                        ok: false,
                        detail: why.clone(),
                    });
                    return Err(why);
                }
            }
            if let Some(new) = held {
                let new_name = new.name_any();
                self.held_name
                    .lock()
                    .expect("held lock")
                    .get_or_insert_with(|| new_name.clone());
                let new_uid = new.metadata.uid.clone().unwrap_or_default();
                let holder_uid = new
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .find(|o| o.controller == Some(true))
                    .map(|o| o.uid.clone());
                let olds: Vec<_> = all
                    .iter()
                    .filter(|rs| {
                        let owner = controller_uid(rs);
                        owner == Some(cache.uid.as_str())
                            || (owner.is_some() && owner == holder_uid.as_deref() && lent(rs))
                    })
                    .collect();
                let c = Counts {
                    old: olds.iter().map(|rs| replicas(rs)).sum(),
                    old_available: olds.iter().map(|rs| available(rs)).sum(),
                    new: replicas(new),
                    new_available: available(new),
                };
                // A new pod that crashed or cannot pull its image will not get better by waiting.
                for p in cache.pods.state() {
                    let ours = p
                        .metadata
                        .owner_references
                        .iter()
                        .flatten()
                        .any(|o| o.uid == new_uid);
                    if ours && let Some(why) = pod_failure(&p) {
                        let why = format!("pod {} of {version}: {why}", p.name_any());
                        sink(Change::Changed {
                            instance: new_name.clone(),
                            version: version.into(),
                            ok: false,
                            detail: why.clone(),
                        });
                        return Err(why);
                    }
                }
                if last != Some(c) {
                    last = Some(c);
                    last_progress = tokio::time::Instant::now();
                }
                // An old set that grows (a restore) must be available too; one that shrinks need not.
                let old_grew = step.old > first.get_or_insert(c).old;
                let old_ready = c.old == step.old && (!old_grew || c.old_available >= step.old);
                if c.new == step.new && c.new_available >= step.new && old_ready {
                    if announced.is_some() {
                        sink(Change::Changed {
                            instance: new_name.clone(),
                            version: version.into(),
                            ok: true,
                            detail: format!("{} of {version} available, {} old", c.new, c.old),
                        });
                    }
                    return Ok(());
                }
                let (old, new_size) = next_sizes(step, c);
                if old != c.old && old_set != Some(old) {
                    let lent_sets: Vec<_> = olds.iter().filter(|rs| lent(rs)).collect();
                    match lent_sets
                        .iter()
                        .find(|rs| replicas(rs) > 0)
                        .or(lent_sets.first())
                    {
                        // Beside an HPA the stable ReplicaSet itself: spec.replicas is the HPA's.
                        Some(rs) => {
                            let rs_name = rs.name_any();
                            let (pp, patch) = (
                                params(),
                                Patch::Merge(serde_json::json!({"spec": {"replicas": old}})),
                            );
                            self.reach
                                .call(|| self.replica_sets.patch(&rs_name, &pp, &patch))
                                .await
                                .map_err(|e| err(self.fail(&format!("scaling {rs_name}"), e)))?;
                        }
                        None => {
                            self.patch_deployment(serde_json::json!({"spec": {"replicas": old}}))
                                .await
                                .map_err(err)?;
                        }
                    }
                    old_set = Some(old);
                }
                if new_size != c.new && new_set != Some(new_size) {
                    if announced.is_none() {
                        sink(Change::Changing {
                            instance: new_name.clone(),
                            version: version.into(),
                        });
                        announced = Some(new_name.clone());
                    }
                    let pp = params();
                    let patch = Patch::Merge(serde_json::json!({"spec": {"replicas": new_size}}));
                    self.reach
                        .call(|| self.replica_sets.patch(&new_name, &pp, &patch))
                        .await
                        .map_err(|e| err(self.fail(&format!("scaling {new_name}"), e)))?;
                    new_set = Some(new_size);
                }
            }
            match tokio::time::timeout_at(last_progress + deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(format!("the watch of {} ended", self.name())),
                Err(_) => {
                    let c = last.map_or(0, |c| c.new_available);
                    let why = format!(
                        "no progress within progressDeadlineSeconds ({}s): {c} of {} pods of {version} available{}",
                        deadline.as_secs(),
                        step.new,
                        self.outage_note()
                    );
                    sink(Change::Changed {
                        instance: announced.unwrap_or_else(|| self.name().into()),
                        version: version.into(),
                        ok: false,
                        detail: why.clone(),
                    });
                    return Err(why);
                }
            }
        }
    }
}

/// What a rollout asks of the API server, as (API group, resource, verb). The Role in
/// `manifests/kubernetes/rbac.yaml` grants these; blue-green also points Services.
pub fn required_access(blue_green: bool) -> Vec<(&'static str, &'static str, &'static str)> {
    let mut out = Vec::new();
    let mut grant = |group: &'static str, resource: &'static str, verbs: &[&'static str]| {
        out.extend(verbs.iter().map(|verb| (group, resource, *verb)));
    };
    grant(
        "apps",
        "deployments",
        &["get", "list", "watch", "patch", "update"],
    );
    grant(
        "apps",
        "replicasets",
        &["get", "list", "watch", "create", "patch", "delete"],
    );
    grant("", "pods", &["get", "list", "watch"]);
    // The holder (get, create, delete) and the app's journal and controls `rollgate-<app>`
    // (get, create, update, and list + watch for control requests from other machines).
    grant(
        "",
        "configmaps",
        &["get", "list", "watch", "create", "update", "delete"],
    );
    // The app's lock: the Lease `rollgate-<app>`, renewed by update, released by delete.
    grant(
        "coordination.k8s.io",
        "leases",
        &["get", "create", "update", "delete"],
    );
    grant("autoscaling", "horizontalpodautoscalers", &["list"]);
    if blue_green {
        grant("", "services", &["get", "patch"]);
    }
    out
}

impl Target for Kubernetes {
    async fn size(&self) -> Result<u32> {
        // Before anything reads or changes the Deployment: the first thing every command asks.
        self.access.get_or_try_init(|| self.check_access()).await?;
        let d = self
            .reach
            .call(|| self.deployments.get(self.name()))
            .await
            .map_err(|e| self.fail("reading it", e))?;
        Ok(Self::n_of(&d))
    }

    fn capacity(&self) -> crate::plan::Capacity {
        crate::plan::Capacity::Elastic
    }

    async fn instances(&self) -> Result<Vec<Instance>> {
        let cache = self.cache().await?;
        let mut installed: Vec<String> = cache
            .sets
            .state()
            .iter()
            .filter_map(|rs| rs_version(rs, self.container()))
            .collect();
        installed.sort();
        installed.dedup();
        let mut out: Vec<Instance> = cache
            .pods
            .state()
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(|p| {
                let version = pod_version(p, self.container());
                Instance {
                    name: p.name_any(),
                    version: version.clone(),
                    previous: None,
                    installed: installed.clone(),
                    running: version.into_iter().collect(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn prepare(&self, version: &str) -> Result<()> {
        self.prepare_held(version).await?;
        if self.blue_green {
            // Active stays on the stable pods, preview shows the new ones, each by its hash.
            let view = self.view().await?;
            let hash = |rs: &ReplicaSet| rs.labels().get(HASH_LABEL).cloned();
            let stable = view.stable().find(|rs| replicas(rs) > 0).and_then(hash);
            let new = view.held(version, self.container()).and_then(hash);
            if let (Some(stable), Some(new)) = (stable, new) {
                if self.pinned(&self.active_service()).await?.is_none() {
                    self.pin(&self.active_service(), Some(&stable)).await?;
                }
                self.pin(&self.preview_service(), Some(&new)).await?;
            }
        }
        Ok(())
    }

    async fn scale(
        &self,
        step: &Step,
        version: &str,
        deadline: Duration,
        sink: Sink<'_>,
    ) -> std::result::Result<(), String> {
        // A request that finds no API server keeps trying as long as the step may.
        self.reach.set_patience(deadline, true);
        // The Deployment from the run's watch: a copy from before `prepare` still has spec.replicas
        // at N, and a later one has the annotation, so no request is needed between steps.
        let cache = self
            .cache()
            .await
            .map_err(|e| crate::engine::error_chain(&e))?;
        let watched = cache
            .deployment
            .state()
            .first()
            .map(|d| Deployment::clone(d));
        let d = match watched {
            Some(d) => d,
            None => self
                .reach
                .call(|| self.deployments.get(self.name()))
                .await
                .map_err(|e| crate::engine::error_chain(&self.fail("reading it", e)))?,
        };
        let planned = Self::n_of(&d);
        // Beside an HPA, N is its count at the step boundary: the step is sized for it.
        let (step, n) = if d.annotations().contains_key(HPA_ANNOTATION) {
            let now = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0).max(0) as u32;
            (resize(step, planned, now), now)
        } else {
            (step.clone(), planned)
        };
        let step = &step;
        self.converge(step, version, deadline, sink).await?;
        if step.old == 0 && step.new >= n {
            self.hand_over(version, n, deadline)
                .await
                .map_err(|e| crate::engine::error_chain(&e))?;
        }
        Ok(())
    }

    async fn restore(
        &self,
        version: &str,
        deadline: Duration,
        sink: Sink<'_>,
    ) -> std::result::Result<(), String> {
        let err = |e: TargetError| crate::engine::error_chain(&e);
        // The way back to safety waits longer for an API server that is away.
        self.reach
            .set_patience(deadline.max(PATIENCE_OUTSIDE_STEPS), false);
        let view = self.view().await.map_err(err)?;
        let d = &view.deployment;
        let hpa = d.annotations().contains_key(HPA_ANNOTATION);
        let n = match hpa {
            true => d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0).max(0) as u32,
            false => Self::n_of(d),
        };
        let current = d
            .spec
            .as_ref()
            .and_then(|s| template_version(&s.template, self.container()));
        if current.as_deref() != Some(version) {
            // Already handed over: go back the way a rollout goes, all at once.
            self.prepare(version).await.map_err(err)?;
            let mut step = Step::hold(StepKind::Scale, 0, n, "restore");
            step.min_available = n;
            step.max_total = 2 * n;
            return self.scale(&step, version, deadline, sink).await;
        }
        // The stable ReplicaSet is the Deployment's own: back to N at once, then the new one goes.
        sink(Change::Changing {
            instance: self.name().into(),
            version: version.into(),
        });
        if hpa {
            // Beside an HPA, the lent ReplicaSets go back: the paused Deployment scales its one
            // active ReplicaSet to spec.replicas, the HPA's count.
            let dref = self.deployment_ref(&view);
            for rs in view.sets.iter().filter(|rs| lent(rs)) {
                self.give(rs, dref.clone(), false).await.map_err(err)?;
            }
        } else {
            self.patch_deployment(serde_json::json!({"spec": {"replicas": n}}))
                .await
                .map_err(err)?;
        }
        let waited = self
            .wait_status(deadline, "bringing the stable pods back", move |d| {
                d.status
                    .as_ref()
                    .is_some_and(|s| s.available_replicas.unwrap_or(0) >= n as i32)
            })
            .await;
        // A blue-green switch back is one patch, while the stable set still runs.
        if self.blue_green {
            let stable = view
                .stable()
                .find(|rs| rs_version(rs, self.container()).as_deref() == Some(version))
                .and_then(|rs| rs.labels().get(HASH_LABEL).cloned());
            if stable.is_some()
                && self
                    .pinned(&self.active_service())
                    .await
                    .map_err(err)?
                    .is_some()
            {
                self.pin(&self.active_service(), stable.as_deref())
                    .await
                    .map_err(err)?;
            }
        }
        if let Some(holder) = view.holder_uid() {
            // Not the lent ones: they are the Deployment's again.
            for rs in view.owned_by(holder).filter(|rs| !lent(rs)) {
                let (name, dp) = (rs.name_any(), DeleteParams::background());
                match self
                    .reach
                    .call(|| self.replica_sets.delete(&name, &dp))
                    .await
                {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(err(self.fail("removing the new ReplicaSet", e))),
                }
            }
            self.delete_holder().await.map_err(err)?;
        }
        // A ReplicaSet rollgate made that someone else took out of the holder (the holder deleted
        // with its dependents orphaned, and the Deployment adopting them) goes too.
        let made = self
            .held_name
            .lock()
            .expect("held lock")
            .clone()
            .filter(|n| n.starts_with(&format!("{}-rg", self.name())));
        if let Some(name) = made
            && let Some(rs) = view.sets.iter().find(|rs| rs.name_any() == name)
            && rs_version(rs, self.container()).as_deref() != Some(version)
            && controller_uid(rs) != view.holder_uid()
        {
            let dp = DeleteParams::background();
            match self
                .reach
                .call(|| self.replica_sets.delete(&name, &dp))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(err(self.fail("removing the new ReplicaSet", e))),
            }
        }
        self.patch_deployment(serde_json::json!({
            "metadata": {"annotations": {REPLICAS_ANNOTATION: null, HPA_ANNOTATION: null}},
            "spec": {"paused": false},
        }))
        .await
        .map_err(err)?;
        if self.blue_green {
            self.pin(&self.active_service(), None).await.map_err(err)?;
            self.pin(&self.preview_service(), None).await.map_err(err)?;
        }
        let (ok, detail) = match waited {
            Ok(()) => (true, format!("{n} of {version} available")),
            Err(e) => (false, format!("{version} not back at {n}: {}", err(e))),
        };
        sink(Change::Changed {
            instance: self.name().into(),
            version: version.into(),
            ok,
            detail: detail.clone(),
        });
        if ok { Ok(()) } else { Err(detail) }
    }

    async fn switch_traffic(&self, version: &str) -> std::result::Result<(), String> {
        // Rolling and canary need no switch: a Service that selects the app spreads traffic by
        // replica ratio. Blue-green: one patch of the active Service's pod-template-hash.
        let err = |e: TargetError| crate::engine::error_chain(&e);
        let view = self.view().await.map_err(err)?;
        let Some(hash) = view
            .sets
            .iter()
            .filter(|rs| replicas(rs) > 0)
            .find(|rs| rs_version(rs, self.container()).as_deref() == Some(version))
            .and_then(|rs| rs.labels().get(HASH_LABEL).cloned())
        else {
            return Err(format!("no running ReplicaSet of {version} to switch to"));
        };
        self.pin(&self.active_service(), Some(&hash))
            .await
            .map_err(err)
    }

    async fn probe(&self, check: &Check, instance: &str, _version: &str) -> Probe {
        if check.run_on != RunOn::Cli {
            return Probe::Pass; // host-side checks need an agent; pods have none
        }
        // From the watched copy: no request, and no failed probe while the API server restarts.
        let cache = match self.cache().await {
            Ok(cache) => cache,
            Err(e) => return Probe::Fail(format!("pod {instance}: {e}")),
        };
        let pod = cache
            .pods
            .state()
            .into_iter()
            .find(|p| p.name_any() == instance);
        let Some(pod) = pod else {
            return Probe::Fail(format!("pod {instance} is gone"));
        };
        let ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_default();
        let fill = |s: &str| s.replace("{host}", &ip).replace("{instance}", instance);
        super::hosts::cli_probe(&self.http, check, &fill, check.timeout.0).await
    }
}

/// The pod template of a Deployment YAML file (`spec.target.kubernetes.manifest`).
pub fn manifest_template(path: &Path) -> Result<PodTemplateSpec> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| TargetError::Setup(format!("{}: {e}", path.display())))?;
    let from: Deployment = serde_yaml::from_str(&text)
        .map_err(|e| TargetError::Setup(format!("{}: not a Deployment: {e}", path.display())))?;
    from.spec
        .map(|s| s.template)
        .ok_or_else(|| TargetError::Setup(format!("{}: no spec.template", path.display())))
}

/// One recommended securityContext setting that a pod template does not meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityWarning {
    /// The field in a Deployment, like `spec.template.spec.containers[0].securityContext.privileged`.
    pub path: String,
    /// The container's name.
    pub container: String,
    /// What the setting is and what is recommended, like `not set (recommended: true)`.
    pub message: String,
}

impl std::fmt::Display for SecurityWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: container {}: {}",
            self.path, self.container, self.message
        )
    }
}

/// Where a pod template falls short of the recommended securityContext (runAsNonRoot true,
/// privileged false, allowPrivilegeEscalation false, readOnlyRootFilesystem true): one warning per
/// container and setting, at the field that sets it (or would). Pure: `validate`, `plan` and `apply`
/// print them.
pub fn pod_security_warnings(t: &PodTemplateSpec) -> Vec<SecurityWarning> {
    let Some(spec) = t.spec.as_ref() else {
        return Vec::new();
    };
    let pod_non_root = spec
        .security_context
        .as_ref()
        .and_then(|s| s.run_as_non_root);
    let shown = |v: Option<bool>| v.map_or("not set".to_string(), |b| b.to_string());
    let mut out = Vec::new();
    let kinds = [
        (
            "initContainers",
            spec.init_containers.as_deref().unwrap_or(&[]),
        ),
        ("containers", spec.containers.as_slice()),
    ];
    for (kind, containers) in kinds {
        for (i, c) in containers.iter().enumerate() {
            let at = format!("spec.template.spec.{kind}[{i}].securityContext");
            let sc = c.security_context.as_ref();
            let mut warn = |field: &str, path: String, message: String| {
                out.push(SecurityWarning {
                    path: format!("{path}.{field}"),
                    container: c.name.clone(),
                    message,
                });
            };
            // The container's setting wins over the pod's.
            let own = sc.and_then(|s| s.run_as_non_root);
            let (value, path) = match (own, pod_non_root) {
                (None, Some(v)) => (Some(v), "spec.template.spec.securityContext".to_string()),
                (v, _) => (v, at.clone()),
            };
            if value != Some(true) {
                warn(
                    "runAsNonRoot",
                    path,
                    format!("{} (recommended: true)", shown(value)),
                );
            }
            let privileged = sc.and_then(|s| s.privileged);
            if privileged == Some(true) {
                warn("privileged", at.clone(), "true (recommended: false)".into());
            }
            let escalation = sc.and_then(|s| s.allow_privilege_escalation);
            if escalation != Some(false) {
                warn(
                    "allowPrivilegeEscalation",
                    at.clone(),
                    format!("{} (recommended: false)", shown(escalation)),
                );
            }
            let read_only = sc.and_then(|s| s.read_only_root_filesystem);
            if read_only != Some(true) {
                warn(
                    "readOnlyRootFilesystem",
                    at.clone(),
                    format!("{} (recommended: true)", shown(read_only)),
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(old: u32, new: u32, min_available: u32, max_total: u32) -> Step {
        let mut s = Step::hold(StepKind::Scale, old, new, "");
        s.min_available = min_available;
        s.max_total = max_total;
        s
    }

    fn counts(old: u32, old_available: u32, new: u32, new_available: u32) -> Counts {
        Counts {
            old,
            old_available,
            new,
            new_available,
        }
    }

    #[test]
    fn surge_adds_first_then_removes_what_is_replaced() {
        // N=10, surge 3, unavailable 0: step to (7, 3).
        let s = step(7, 3, 10, 13);
        assert_eq!(next_sizes(&s, counts(10, 10, 0, 0)), (10, 3));
        assert_eq!(next_sizes(&s, counts(10, 10, 3, 1)), (9, 3));
        assert_eq!(next_sizes(&s, counts(10, 10, 3, 3)), (7, 3));
    }

    #[test]
    fn without_surge_removes_before_adding() {
        // N=4, surge 0, unavailable 1: step to (3, 1).
        let s = step(3, 1, 3, 4);
        assert_eq!(next_sizes(&s, counts(4, 4, 0, 0)), (3, 0));
        assert_eq!(next_sizes(&s, counts(3, 3, 0, 0)), (3, 1));
    }

    #[test]
    fn never_exceeds_max_total_while_old_shrinks_late() {
        let s = step(0, 10, 10, 13);
        // The old set has not shrunk yet: no room.
        assert_eq!(next_sizes(&s, counts(10, 10, 3, 3)), (7, 3));
        assert_eq!(next_sizes(&s, counts(7, 7, 3, 3)), (7, 6));
    }

    #[test]
    fn security_warnings_name_each_missing_setting() {
        let bare: PodTemplateSpec = serde_yaml::from_str(
            "spec: {containers: [{name: web, image: r/web:1, securityContext: {privileged: true}}]}",
        )
        .unwrap();
        let w = pod_security_warnings(&bare);
        assert_eq!(w.len(), 4, "{w:#?}");
        assert_eq!(
            w[1].to_string(),
            "spec.template.spec.containers[0].securityContext.privileged: container web: true (recommended: false)"
        );
        assert_eq!(
            w[0].to_string(),
            "spec.template.spec.containers[0].securityContext.runAsNonRoot: container web: not set (recommended: true)"
        );
        // A pod-level runAsNonRoot: false is reported where it is set.
        let pod_level: PodTemplateSpec = serde_yaml::from_str(
            "spec: {securityContext: {runAsNonRoot: false}, initContainers: [{name: init}], containers: [{name: web, securityContext: {runAsNonRoot: true, allowPrivilegeEscalation: false, readOnlyRootFilesystem: true}}]}",
        )
        .unwrap();
        let w: Vec<String> = pod_security_warnings(&pod_level)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            w,
            [
                "spec.template.spec.securityContext.runAsNonRoot: container init: false (recommended: true)",
                "spec.template.spec.initContainers[0].securityContext.allowPrivilegeEscalation: container init: not set (recommended: false)",
                "spec.template.spec.initContainers[0].securityContext.readOnlyRootFilesystem: container init: not set (recommended: true)",
            ]
        );
        let hardened: PodTemplateSpec = serde_yaml::from_str(
            "spec: {securityContext: {runAsNonRoot: true}, containers: [{name: web, securityContext: {privileged: false, allowPrivilegeEscalation: false, readOnlyRootFilesystem: true}}]}",
        )
        .unwrap();
        assert_eq!(pod_security_warnings(&hardened), Vec::new());
    }

    #[test]
    fn steps_follow_an_autoscaler_that_changed_n() {
        // Rolling N=4, surge 1: (3, 1) within 4..5; the HPA makes it 8.
        let r = resize(&step(3, 1, 4, 5), 4, 8);
        assert_eq!((r.old, r.new, r.min_available, r.max_total), (6, 2, 8, 10));
        // The last step ends at the new N exactly; a canary keeps at least one new instance.
        let r = resize(&step(0, 4, 4, 5), 4, 6);
        assert_eq!((r.old, r.new), (0, 6));
        let r = resize(&step(9, 1, 10, 11), 10, 3);
        assert_eq!((r.old, r.new), (2, 1));
        // Blue-green's preview (old N, new N): both follow.
        let r = resize(&step(4, 4, 4, 8), 4, 6);
        assert_eq!((r.old, r.new, r.max_total), (6, 6, 12));
        // Unchanged N: the step as planned.
        assert_eq!(resize(&step(3, 1, 4, 5), 4, 4), step(3, 1, 4, 5));
    }

    #[test]
    fn image_tags() {
        assert_eq!(image_tag("r/web:2").as_deref(), Some("2"));
        assert_eq!(
            image_tag("reg:5000/web:1.2@sha256:ab").as_deref(),
            Some("1.2")
        );
        assert_eq!(image_tag("reg:5000/web"), None);
    }
}
