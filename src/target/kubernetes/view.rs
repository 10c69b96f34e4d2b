//! View: the Deployment, its ReplicaSets and pods as the cluster holds them (watched, or read at
//! once), and what is derived from them: N, versions, the held and the stable ReplicaSets.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodTemplateSpec};
use kube::api::{ListParams, ObjectMeta};
use kube::core::Selector;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, ResourceExt};

use super::pod_facts::PodFacts;
use super::reach::{RETRY_FIRST, WatchRetry};
use super::watched_pod::WatchedPod;
use super::{
    HASH_LABEL, IMAGE_ANNOTATION, Kubernetes, LENT_ANNOTATION, REPLICAS_ANNOTATION,
    VERSION_ANNOTATION,
};
use crate::target::{Instance, Result};

/// Watched copies of the Deployment's ReplicaSets and pods: a step reads them without a request.
pub(super) struct Cache {
    pub(super) uid: String,
    /// The Deployment itself: its status is what the hand-over waits on.
    pub(super) deployment: reflector::Store<Deployment>,
    pub(super) sets: reflector::Store<ReplicaSet>,
    pub(super) pods: reflector::Store<WatchedPod>,
    /// Bumped on every watch event.
    pub(super) changes: tokio::sync::watch::Receiver<u64>,
    /// The pods that failed or are going away, folded from the pod watch's events.
    pub(super) pod_facts: Arc<Mutex<PodFacts>>,
    /// Bumped on every event of the Deployment and its ReplicaSets, and on a pod's only when it
    /// changed `pod_facts`: what a step's counts and its pod checks depend on.
    pub(super) moves: tokio::sync::watch::Receiver<u64>,
    /// The pod-template-hash the pod watch is kept to, once a step keeps it to the new pods
    /// (`pod_watch`).
    pub(super) narrow: tokio::sync::watch::Sender<Option<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Cache {
    fn drop(&mut self) {
        self.task.abort();
        // `RUST_LOG=rollgate=debug`: what the watches cost this command (list items included).
        tracing::debug!(
            events = *self.changes.borrow(),
            "the run's watches delivered"
        );
    }
}

/// What the cluster holds for the Deployment right now.
pub(super) struct View {
    pub(super) deployment: Deployment,
    pub(super) uid: String,
    pub(super) selector: Selector,
    /// The ConfigMap that holds the in-flight ReplicaSet, if a rollout is under way.
    pub(super) holder: Option<ConfigMap>,
    pub(super) sets: Vec<ReplicaSet>,
}

impl View {
    pub(super) fn owned_by<'a>(
        &'a self,
        uid: &'a str,
    ) -> impl Iterator<Item = &'a ReplicaSet> + 'a {
        self.sets
            .iter()
            .filter(move |rs| controller_uid(rs) == Some(uid))
    }

    pub(super) fn holder_uid(&self) -> Option<&str> {
        self.holder.as_ref()?.metadata.uid.as_deref()
    }

    /// The ReplicaSet rollgate holds for `version`.
    pub(super) fn held(&self, version: &str, container: Option<&str>) -> Option<&ReplicaSet> {
        held_in(&self.sets, self.holder_uid()?, version, container)
    }

    /// The stable ReplicaSets: the Deployment's own, and those lent to the holder beside an HPA.
    pub(super) fn stable(&self) -> impl Iterator<Item = &ReplicaSet> + '_ {
        stable_in(&self.sets, &self.uid, self.holder_uid())
    }
}

/// Among `sets`, the one the holder (`holder_uid`) holds for `version`: not a lent one.
pub(super) fn held_in<'a>(
    sets: impl IntoIterator<Item = &'a ReplicaSet>,
    holder_uid: &str,
    version: &str,
    container: Option<&str>,
) -> Option<&'a ReplicaSet> {
    sets.into_iter().find(|rs| {
        controller_uid(rs) == Some(holder_uid)
            && !lent(rs)
            && rs_version(rs, container).as_deref() == Some(version)
    })
}

/// The uid of the holder ConfigMap `name`, as the ReplicaSets among `sets` that it controls name it.
pub(super) fn holder_uid_in<'a>(
    sets: impl IntoIterator<Item = &'a ReplicaSet>,
    name: &str,
) -> Option<String> {
    sets.into_iter().find_map(|rs| {
        rs.metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true) && o.kind == "ConfigMap" && o.name == name)
            .map(|o| o.uid.clone())
    })
}

/// Among `sets`, the stable ones: the Deployment's (`uid`) own, and those lent to the holder.
pub(super) fn stable_in<'a>(
    sets: impl IntoIterator<Item = &'a ReplicaSet> + 'a,
    uid: &'a str,
    holder_uid: Option<&'a str>,
) -> impl Iterator<Item = &'a ReplicaSet> + 'a {
    sets.into_iter().filter(move |rs| {
        let owner = controller_uid(rs);
        owner == Some(uid) || (owner.is_some() && owner == holder_uid && lent(rs))
    })
}

pub(super) fn lent(rs: &ReplicaSet) -> bool {
    rs.annotations().contains_key(LENT_ANNOTATION)
}

pub(super) fn controller_uid(rs: &ReplicaSet) -> Option<&str> {
    rs.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

pub(super) fn replicas(rs: &ReplicaSet) -> u32 {
    rs.spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(0)
        .max(0) as u32
}

/// Pods the ReplicaSet still has (terminating ones excluded, as its controller counts them). A
/// set scaled down holds its old pods until its controller has deleted them.
pub(super) fn pods_left(rs: &ReplicaSet) -> u32 {
    rs.status.as_ref().map_or(0, |s| s.replicas).max(0) as u32
}

pub(super) fn available(rs: &ReplicaSet) -> u32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
        .max(0) as u32
}

/// The version a pod template runs: its `rollgate.dev/version` annotation while the container
/// (the named one, or the first) still runs the image `rollgate.dev/image` says it was written for,
/// else that container's image tag. What runs outranks an annotation that `kubectl set image`
/// leaves unchanged.
pub fn template_version(t: &PodTemplateSpec, container: Option<&str>) -> Option<String> {
    let image = template_image(t, container);
    let annotations = t.metadata.as_ref().and_then(|m| m.annotations.as_ref());
    if let Some(v) = annotations.and_then(|a| a.get(VERSION_ANNOTATION)) {
        let written_for = annotations.and_then(|a| a.get(IMAGE_ANNOTATION));
        if written_for.is_none_or(|w| Some(w.as_str()) == image) {
            return Some(v.clone());
        }
    }
    image_tag(image?)
}

/// The image of the container a version is read from: the named one (a native sidecar too), or
/// the first.
pub(super) fn template_image<'a>(
    t: &'a PodTemplateSpec,
    container: Option<&str>,
) -> Option<&'a str> {
    let spec = t.spec.as_ref()?;
    let c = match container {
        Some(name) => spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .find(|c| c.name == name)?,
        None => spec.containers.first()?,
    };
    c.image.as_deref()
}

/// `registry:5000/web:1.2@sha256:...` is version `1.2`.
pub fn image_tag(image: &str) -> Option<String> {
    let image = image.split('@').next().unwrap_or(image);
    let name = image.rsplit('/').next().unwrap_or(image);
    name.split_once(':').map(|(_, tag)| tag.to_string())
}

pub(super) fn rs_version(rs: &ReplicaSet, container: Option<&str>) -> Option<String> {
    template_version(&rs.spec.as_ref()?.template.clone()?, container)
}

pub(super) fn pod_version(p: &Pod, container: Option<&str>) -> Option<String> {
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

/// How recent a read of the Deployment must be for `size` and the watches' start to use it.
const READ_FRESH: Duration = Duration::from_secs(5);

impl Kubernetes {
    /// The Deployment as this command has just read it elsewhere (the pod-security check).
    pub fn seed(&self, d: Deployment) {
        *self.size_read.lock().expect("size read lock") = Some((std::time::Instant::now(), d));
    }

    /// The last read of the Deployment, if it is recent, and when it was made.
    pub(super) fn recent_read(&self) -> Option<(std::time::Instant, Deployment)> {
        self.size_read
            .lock()
            .expect("size read lock")
            .clone()
            .filter(|(at, _)| at.elapsed() < READ_FRESH)
    }

    /// The HorizontalPodAutoscaler (autoscaling/v2) that scales the Deployment, if any.
    pub(super) async fn autoscaler(&self) -> Result<Option<String>> {
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
        Ok(self
            .live_deployment()
            .await?
            .and_then(|d| d.spec)
            .map(|s| s.template))
    }

    /// The Deployment as the cluster holds it now (a request that keeps trying while the API
    /// server is away, as every step's requests do).
    pub(super) async fn read_deployment(&self) -> Result<Deployment> {
        self.reach
            .call(|| self.deployments.get(self.name()))
            .await
            .map_err(|e| self.fail("reading it", e))
    }

    /// The Deployment as the cluster holds it; `None` when there is none.
    pub async fn live_deployment(&self) -> Result<Option<Deployment>> {
        self.deployments
            .get_opt(self.name())
            .await
            .map_err(|e| self.fail("reading it", e))
    }

    /// Starts the watches ahead of their first use (an error is met again by that use).
    pub async fn start_watching(&self) {
        let _ = self.cache().await;
    }

    /// Starts the watches on first use and returns once both have listed.
    pub(super) async fn cache(&self) -> Result<&Cache> {
        self.cache
            .get_or_try_init(|| async {
                // Its selector (immutable) and uid: from `size`'s read when it made one just now
                // (a Deployment deleted and made again since would have another uid).
                let earlier = self.recent_read().map(|(_, d)| d);
                let d = match earlier {
                    Some(d) => d,
                    None => self.read_deployment().await?,
                };
                let selector = self.selector_of(&d)?;
                let config = watcher::Config::default().labels_from(&selector);
                let (deployment, deployment_w) = reflector::store::<Deployment>();
                let (sets, sets_w) = reflector::store::<ReplicaSet>();
                let (pods, pods_w) = reflector::store::<WatchedPod>();
                let by_name =
                    watcher::Config::default().fields(&format!("metadata.name={}", self.name()));
                // Each event: whether it may move a step (see `Cache::moves`).
                let deployment_events =
                    reflector(deployment_w, watcher(self.deployments.clone(), by_name))
                        .backoff(WatchRetry(RETRY_FIRST))
                        .map(|e| e.map(|_| true))
                        .boxed();
                let set_events =
                    reflector(sets_w, watcher(self.replica_sets.clone(), config.clone()))
                        .backoff(WatchRetry(RETRY_FIRST))
                        .map(|e| e.map(|_| true))
                        .boxed();
                let pod_facts = Arc::new(Mutex::new(PodFacts::default()));
                let facts = pod_facts.clone();
                // Pods from the API server's watch cache as it stands (resourceVersion 0, which
                // kube sends only without a page size: the cache answers in one piece), not after
                // it caught up with etcd: right after pods changed, that wait took 15-65 ms of a
                // blue-green rollback's start, against 8 ms. Pods are only ever read here
                // (rollgate writes none), and the watch brings every later change.
                let mut from_cache = config.any_semantic();
                from_cache.page_size = None;
                let (narrow, narrowed) = tokio::sync::watch::channel(None);
                let pod_watch =
                    super::pod_watch::pods(self.watched_pods.clone(), from_cache, narrowed);
                let pod_events = reflector(pods_w, pod_watch)
                    .backoff(WatchRetry(RETRY_FIRST))
                    .map(move |e| e.map(|e| facts.lock().expect("pod facts lock").fold(&e)))
                    .boxed();
                let (tx, changes) = tokio::sync::watch::channel(0u64);
                let (moved, moves) = tokio::sync::watch::channel(0u64);
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
                            Ok(moves) => {
                                reach.regained();
                                tx.send_modify(|n| *n += 1);
                                if moves {
                                    moved.send_modify(|n| *n += 1);
                                }
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
                    pod_facts,
                    moves,
                    narrow,
                    task,
                })
            })
            .await
    }

    /// The view from the run's watch, without a request: the watched Deployment and ReplicaSets,
    /// and the holder as the ReplicaSets it controls name it (its uid is all a view uses of it).
    /// `None` when the watch has no Deployment, or it is not the one the watch began with.
    pub(super) async fn watched_view(&self) -> Result<Option<View>> {
        let cache = self.cache().await?;
        let Some(deployment) = cache
            .deployment
            .state()
            .first()
            .map(|d| Deployment::clone(d))
        else {
            return Ok(None);
        };
        if deployment.metadata.uid.as_deref() != Some(cache.uid.as_str()) {
            return Ok(None);
        }
        let sets: Vec<ReplicaSet> = cache
            .sets
            .state()
            .iter()
            .map(|rs| ReplicaSet::clone(rs))
            .collect();
        let holder = holder_uid_in(&sets, &self.holder_name()).map(|uid| ConfigMap {
            metadata: ObjectMeta {
                name: Some(self.holder_name()),
                uid: Some(uid),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        });
        let selector = self.selector_of(&deployment)?;
        Ok(Some(View {
            deployment,
            uid: cache.uid.clone(),
            selector,
            holder,
            sets,
        }))
    }

    pub(super) async fn view(&self) -> Result<View> {
        // The three reads go out together once the selector is known (it is immutable in
        // apps/v1): one round trip instead of three.
        let holder_name = self.holder_name();
        let read = self.read_deployment();
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
    pub(super) fn selector_of(&self, d: &Deployment) -> Result<Selector> {
        let selector = d
            .spec
            .as_ref()
            .map(|s| s.selector.clone())
            .unwrap_or_default();
        let selector = Selector::try_from(selector).map_err(|e| self.fail("its selector", e))?;
        let _ = self.selector.set(selector.clone());
        Ok(selector)
    }

    /// N: the Deployment's replicas, or while a rollout has them reduced (paused), the annotation
    /// that holds N. On a Deployment that is not paused the annotation is stale (`kubectl rollout
    /// undo` copies it back from a ReplicaSet) and `kubectl scale` may have changed N since.
    pub(super) fn n_of(d: &Deployment) -> u32 {
        let paused = d.spec.as_ref().and_then(|s| s.paused) == Some(true);
        d.annotations()
            .get(REPLICAS_ANNOTATION)
            .filter(|_| paused)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).max(0) as u32)
    }

    /// Waits (by watch) until the Deployment reports its template rolled out at `n`, at
    /// `generation` (the last write's) or later.
    pub(super) async fn wait_rolled_out(
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
    pub(super) async fn wait_status(
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
                let watched = cache.deployment.state();
                if watched.iter().any(|d| cond(d)) {
                    return Some(true);
                }
                // Deleted by someone else (the watch sees it go, the API server confirms).
                if watched.is_empty() && self.deployment_deleted().await.unwrap_or(false) {
                    return None;
                }
                if changes.changed().await.is_err() {
                    return Some(false);
                }
            }
        };
        match tokio::time::timeout(deadline, done).await {
            Ok(Some(true)) => Ok(()),
            Ok(None) => Err(self.deployment_gone().await),
            Ok(Some(false)) => Err(self.fail(what, "the watch ended")),
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

    /// The version of the Deployment's pod template, from the watched copy. While rollgate holds
    /// a rollout, the template is still the stable one.
    pub(super) async fn declared_now(&self) -> Result<Option<String>> {
        let cache = self.cache().await?;
        let watched = cache.deployment.state().first().cloned();
        let d = match watched {
            Some(d) => d,
            None => Arc::new(self.read_deployment().await?),
        };
        Ok(d.spec
            .as_ref()
            .and_then(|s| template_version(&s.template, self.container())))
    }

    /// Every pod of the Deployment, from the watched copy, with the version it runs.
    pub(super) async fn instances_now(&self) -> Result<Vec<Instance>> {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_annotation_counts_only_for_the_image_it_was_written_for() {
        let t = |image: &str, annotations: &str| -> PodTemplateSpec {
            serde_yaml::from_str(&format!(
                "metadata: {{annotations: {{{annotations}}}}}\nspec: {{containers: [{{name: web, image: \"{image}\"}}]}}"
            ))
            .unwrap()
        };
        let written = "rollgate.dev/version: \"5\", rollgate.dev/image: \"r/web:5-build\"";
        assert_eq!(
            template_version(&t("r/web:5-build", written), None).as_deref(),
            Some("5")
        );
        // `kubectl set image` changed the image, not the annotations.
        assert_eq!(
            template_version(&t("r/web:6-hotfix", written), None).as_deref(),
            Some("6-hotfix")
        );
        // Written by an older rollgate, without the image: the annotation counts.
        let older = "rollgate.dev/version: \"5\"";
        assert_eq!(
            template_version(&t("r/web:6", older), None).as_deref(),
            Some("5")
        );
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
