//! What the rollgate-on-Kubernetes tests and benchmark share: a Deployment to start from, the real
//! `rollgate` binary run against the test cluster, and an observer that watches ReplicaSets and pods.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, ReplicaSet, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Container, Pod, PodSpec, PodTemplateSpec, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::runtime::wait::await_condition;

use kube::{Api, Client, ResourceExt};
use tokio::sync::oneshot;

use crate::cluster::{self, Cluster, watch_fold};

pub const APP: &str = "web";

pub fn image(version: &str) -> String {
    format!("registry.invalid/rollgate/web:{version}")
}

/// A test's namespace, its APIs and a state directory for rollgate.
pub struct Bed {
    pub cluster: &'static Cluster,
    pub client: Client,
    pub ns: String,
    pub deployments: Api<Deployment>,
    pub replica_sets: Api<ReplicaSet>,
    pub pods: Api<Pod>,
    pub dir: tempfile::TempDir,
}

impl Bed {
    /// A namespace with Deployment `web` at `replicas` Ready replicas of version 1, or `None` when
    /// the cluster cannot run here (the skip is printed).
    pub async fn new(purpose: &str, replicas: i32, surge: &str, unavailable: &str) -> Option<Bed> {
        Bed::with(purpose, deployment(replicas, surge, unavailable)).await
    }

    /// A namespace with `web` as given (version 1), rolled out.
    pub async fn with(purpose: &str, web: Deployment) -> Option<Bed> {
        let replicas = web.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let cluster = cluster::shared()?;
        let client = cluster.client().await;
        let ns = cluster.namespace(&client, purpose).await;
        let bed = Bed {
            cluster,
            deployments: Api::namespaced(client.clone(), &ns),
            replica_sets: Api::namespaced(client.clone(), &ns),
            pods: Api::namespaced(client.clone(), &ns),
            client,
            ns,
            dir: tempfile::tempdir().expect("a temp dir"),
        };
        bed.deployments
            .create(&PostParams::default(), &web)
            .await
            .expect("creating the Deployment");
        bed.wait_deployment("version 1 rolled out", move |d| {
            rolled_out(d, replicas, &image("1"))
        })
        .await;
        Some(bed)
    }

    /// Deletes the namespace of a test that passed (a failing one keeps it for inspection): the
    /// three fake nodes hold 330 pods, which repeated runs would otherwise fill.
    pub async fn finish(self) {
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
        let _ = namespaces.delete(&self.ns, &Default::default()).await;
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a Rollout manifest for `web` in this namespace and returns its path.
    pub fn rollout(&self, name: &str, version: &str, target: &str, rest: &str) -> PathBuf {
        let text = format!(
            "apiVersion: rollgate.dev/v1\nkind: Rollout\nmetadata: {{name: {APP}}}\nspec:\n  version: \"{version}\"\n  target:\n    kubernetes: {{namespace: {ns}, deployment: {APP}, {target}}}\n{rest}",
            ns = self.ns
        );
        let path = self.path(name);
        std::fs::write(&path, text).expect("writing the rollout");
        path
    }

    /// Runs the real `rollgate` with this cluster's kubeconfig and this test's state directory.
    pub async fn rollgate(&self, args: &[&str]) -> std::process::Output {
        self.rollgate_env(args, &[]).await
    }

    /// The same with more environment (`RUST_LOG` for a diagnostic a test reads).
    pub async fn rollgate_env(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_rollgate"))
            .args(args)
            .envs(env.iter().copied())
            .current_dir(self.dir.path())
            .env("KUBECONFIG", self.cluster.kubeconfig())
            .env("ROLLGATE_STATE", self.path("state"))
            .env("ROLLGATE_USER", "test")
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(240), out)
            .await
            .expect("rollgate finished within 240s")
            .expect("running rollgate");
        eprintln!(
            "rollgate {args:?}: {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Runs the control plane's kubectl in this namespace; panics when it fails.
    pub async fn kubectl(&self, args: &[&str]) -> String {
        let out = self
            .cluster
            .kubectl()
            .args(["-n", &self.ns])
            .args(args)
            .output()
            .await
            .expect("running kubectl");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub async fn wait_deployment(
        &self,
        what: &str,
        cond: impl Fn(&Deployment) -> bool + Send + 'static,
    ) {
        let done = await_condition(
            self.deployments.clone(),
            APP,
            move |d: Option<&Deployment>| d.is_some_and(&cond),
        );
        tokio::time::timeout(Duration::from_secs(120), done)
            .await
            .unwrap_or_else(|_| panic!("{what}: not within 120s"))
            .unwrap_or_else(|e| panic!("{what}: watch failed: {e}"));
    }

    pub async fn deployment(&self) -> Deployment {
        self.deployments.get(APP).await.expect("reading web")
    }

    pub async fn replica_sets(&self) -> Vec<ReplicaSet> {
        self.replica_sets
            .list(&ListParams::default())
            .await
            .expect("listing ReplicaSets")
            .items
    }

    /// Starts watching ReplicaSets and pods; returns once both have listed.
    pub async fn observe(&self) -> Observer {
        let (rs_listed, rs_listed_rx) = oneshot::channel();
        let (pods_listed, pods_listed_rx) = oneshot::channel();
        let (stop_rs, stop_rs_rx) = oneshot::channel();
        let (stop_pods, stop_pods_rx) = oneshot::channel();
        let sets = watch_fold(
            self.replica_sets.clone(),
            APP,
            rs_listed,
            stop_rs_rx,
            observe_sets,
        );
        let pods = watch_fold(
            self.pods.clone(),
            APP,
            pods_listed,
            stop_pods_rx,
            observe_pods,
        );
        rs_listed_rx.await.expect("ReplicaSet watch listed");
        pods_listed_rx.await.expect("pod watch listed");
        Observer {
            stops: vec![stop_rs, stop_pods],
            tasks: vec![sets, pods],
        }
    }
}

pub fn deployment(replicas: i32, surge: &str, unavailable: &str) -> Deployment {
    let labels: BTreeMap<String, String> = [("app".to_owned(), APP.to_owned())].into();
    let int_or = |s: &str| match s.parse::<i32>() {
        Ok(n) => IntOrString::Int(n),
        Err(_) => IntOrString::String(s.to_owned()),
    };
    Deployment {
        metadata: ObjectMeta {
            name: Some(APP.to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(int_or(surge)),
                    max_unavailable: Some(int_or(unavailable)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: APP.to_owned(),
                        image: Some(image("1")),
                        ..Container::default()
                    }],
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// A Deployment YAML whose pod template is `web` at `version` with extra labels and annotations
/// (the kwok test controls), for `manifest:`.
pub fn template_file(
    dir: &Path,
    version: &str,
    labels: &[(&str, &str)],
    annotations: &[(&str, &str)],
) -> PathBuf {
    let map = |kv: &[(&str, &str)]| {
        kv.iter()
            .map(|(k, v)| format!("{k}: \"{v}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let labels = if labels.is_empty() {
        format!("app: {APP}")
    } else {
        format!("app: {APP}, {}", map(labels))
    };
    let text = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {APP}}}\nspec:\n  selector: {{matchLabels: {{app: {APP}}}}}\n  template:\n    metadata:\n      labels: {{{labels}}}\n      annotations: {{{}}}\n    spec:\n      containers: [{{name: {APP}, image: \"{}\"}}]\n",
        map(annotations),
        image(version)
    );
    let path = dir.join(format!("deployment-{version}.yaml"));
    std::fs::write(&path, text).expect("writing the template");
    path
}

/// The Deployment has rolled out `image` at `replicas`, unpaused, with nothing else left.
pub fn rolled_out(d: &Deployment, replicas: i32, image: &str) -> bool {
    let (Some(generation), Some(status), Some(spec)) =
        (d.metadata.generation, d.status.as_ref(), d.spec.as_ref())
    else {
        return false;
    };
    status.observed_generation >= Some(generation)
        && spec.paused != Some(true)
        && spec.replicas == Some(replicas)
        && template_image(&spec.template) == Some(image)
        && status.updated_replicas == Some(replicas)
        && status.replicas == Some(replicas)
        && status.available_replicas == Some(replicas)
        && status.ready_replicas == Some(replicas)
}

pub fn template_image(t: &PodTemplateSpec) -> Option<&str> {
    t.spec.as_ref()?.containers.first()?.image.as_deref()
}

pub fn pod_image(p: &Pod) -> Option<&str> {
    p.spec.as_ref()?.containers.first()?.image.as_deref()
}

pub fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub fn controller_uid(rs: &ReplicaSet) -> Option<&str> {
    rs.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

/// What was seen while rollgate ran.
#[derive(Debug, Default)]
pub struct Seen {
    pub snapshots: usize,
    /// Over ReplicaSets: the largest sum of `spec.replicas`.
    pub max_replicas_sum: i32,
    /// Every ReplicaSet name seen.
    pub replica_sets: BTreeSet<String>,
    /// Over pods: the fewest Ready pods (not terminating).
    pub min_ready: Option<i32>,
    /// Over pods: every pod uid seen, by image.
    pub pods_by_image: BTreeMap<String, BTreeSet<String>>,
    /// Over pods: the most pods of one image Ready at once.
    pub max_ready_by_image: BTreeMap<String, i32>,
}

pub struct Observer {
    stops: Vec<oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<Seen>>,
}

impl Observer {
    /// Stops watching: what the ReplicaSet watch saw, then what the pod watch saw.
    pub async fn stop(self) -> (Seen, Seen) {
        for s in self.stops {
            let _ = s.send(());
        }
        let mut seen = Vec::new();
        for t in self.tasks {
            seen.push(t.await.expect("observer task"));
        }
        let pods = seen.pop().expect("two observers");
        let sets = seen.pop().expect("two observers");
        (sets, pods)
    }
}

fn observe_sets(seen: &mut Seen, sets: &[Arc<ReplicaSet>]) {
    seen.snapshots += 1;
    let sum = sets
        .iter()
        .filter_map(|rs| rs.spec.as_ref()?.replicas)
        .sum();
    seen.max_replicas_sum = seen.max_replicas_sum.max(sum);
    seen.replica_sets
        .extend(sets.iter().map(|rs| rs.name_any()));
}

fn observe_pods(seen: &mut Seen, pods: &[Arc<Pod>]) {
    seen.snapshots += 1;
    let ready: Vec<_> = pods.iter().filter(|p| is_ready(p)).collect();
    let count = i32::try_from(ready.len()).expect("a handful of pods");
    seen.min_ready = Some(seen.min_ready.map_or(count, |m| m.min(count)));
    for p in pods {
        let img = pod_image(p).unwrap_or_default().to_owned();
        seen.pods_by_image
            .entry(img)
            .or_default()
            .insert(p.uid().unwrap_or_default());
    }
    let mut by_image: BTreeMap<String, i32> = BTreeMap::new();
    for p in &ready {
        *by_image
            .entry(pod_image(p).unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    for (img, n) in by_image {
        let max = seen.max_ready_by_image.entry(img).or_default();
        *max = (*max).max(n);
    }
}

/// The Deployment is at rest where a rollout leaves it: unpaused, no rollgate annotation, no
/// holder ConfigMap, and every ReplicaSet its own.
pub async fn assert_at_rest(bed: &Bed) {
    let d = bed.deployment().await;
    assert_ne!(
        d.spec.as_ref().and_then(|s| s.paused),
        Some(true),
        "the Deployment is left paused"
    );
    assert!(
        !d.annotations().contains_key("rollgate.dev/replicas"),
        "the Deployment keeps rollgate's annotation: {:?}",
        d.annotations()
    );
    let holders: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(bed.client.clone(), &bed.ns);
    assert!(
        holders
            .get_opt("web-rollgate")
            .await
            .expect("reading ConfigMaps")
            .is_none(),
        "the holder ConfigMap is left behind"
    );
    let uid = d.metadata.uid.clone().unwrap_or_default();
    for rs in bed.replica_sets().await {
        assert_eq!(
            controller_uid(&rs),
            Some(uid.as_str()),
            "ReplicaSet {} is not the Deployment's",
            rs.name_any()
        );
    }
}

pub fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Creates Service `name` selecting the app's pods on port 80.
pub async fn service(api: &Api<Service>, name: &str) {
    let svc = Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            selector: Some([("app".to_string(), APP.to_string())].into()),
            ports: Some(vec![ServicePort {
                port: 80,
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    api.create(&PostParams::default(), &svc)
        .await
        .expect("creating a Service");
}
