//! Integration tests against the real Kubernetes control plane of `tests/cluster` (kwok fakes the nodes).
// tests/support uses nix (signals, process groups) throughout: Unix only.
#![cfg(unix)]

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/faults.rs"]
mod faults;
#[path = "support/kube_bed.rs"]
mod kube_bed;
#[path = "support/prometheus.rs"]
mod prometheus;

/// rollgate itself on the cluster: the real binary, watched through ReplicaSets and pods.
mod kubernetes {
    mod after_kubectl;
    mod approvals;
    mod bench;
    mod blue_green;
    mod bounds;
    mod canary;
    mod dashboard;
    mod dry_run;
    mod failures;
    mod faults;
    mod hpa;
    mod interrupted;
    mod metrics;
    mod pause_watch;
    mod pod_security;
    mod pod_watch;
    mod probes;
    mod rbac;
    mod rollback;
    mod rolling;
    mod team_state;
    mod traffic;
    mod zero;
}

mod smoke {
    //! Proves the test cluster is real: a Deployment is scheduled onto the fake
    //! nodes, turns Ready, and is rolled by the real Deployment controller within
    //! its maxSurge/maxUnavailable bounds, as the real kubectl sees it.

    use std::collections::{BTreeMap, BTreeSet};
    use std::time::Duration;

    use k8s_openapi::api::apps::v1::{
        Deployment, DeploymentSpec, DeploymentStrategy, ReplicaSet, RollingUpdateDeployment,
    };
    use k8s_openapi::api::core::v1::{Container, Node, Pod, PodSpec, PodTemplateSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use kube::api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams};
    use kube::runtime::wait::{Condition, await_condition};

    use kube::{Api, Client, Resource, ResourceExt};
    use tokio::sync::oneshot;

    use crate::cluster::{self, watch_fold};

    const REPLICAS: i32 = 5;
    const MAX_SURGE: i32 = 2;
    const MAX_UNAVAILABLE: i32 = 1;
    const OLD_IMAGE: &str = "registry.invalid/rollgate/web:1";
    const NEW_IMAGE: &str = "registry.invalid/rollgate/web:2";
    const APP: &str = "web";

    fn deployment() -> Deployment {
        let labels: BTreeMap<String, String> = [("app".to_owned(), APP.to_owned())].into();
        Deployment {
            metadata: ObjectMeta {
                name: Some(APP.to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(REPLICAS),
                selector: LabelSelector {
                    match_labels: Some(labels.clone()),
                    ..LabelSelector::default()
                },
                strategy: Some(DeploymentStrategy {
                    type_: Some("RollingUpdate".to_owned()),
                    rolling_update: Some(RollingUpdateDeployment {
                        max_surge: Some(IntOrString::Int(MAX_SURGE)),
                        max_unavailable: Some(IntOrString::Int(MAX_UNAVAILABLE)),
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
                            image: Some(OLD_IMAGE.to_owned()),
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

    fn is_ready(pod: &Pod) -> bool {
        pod.metadata.deletion_timestamp.is_none()
            && pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    }

    fn image(pod: &Pod) -> Option<&str> {
        pod.spec.as_ref()?.containers.first()?.image.as_deref()
    }

    /// The Deployment has rolled out its current template: every replica updated,
    /// available, and nothing of older revisions left.
    fn rolled_out(deployment: Option<&Deployment>) -> bool {
        let Some(d) = deployment else { return false };
        let (Some(generation), Some(status)) = (d.metadata.generation, d.status.as_ref()) else {
            return false;
        };
        status.observed_generation >= Some(generation)
            && status.updated_replicas == Some(REPLICAS)
            && status.replicas == Some(REPLICAS)
            && status.available_replicas == Some(REPLICAS)
            && status.ready_replicas == Some(REPLICAS)
    }

    async fn wait_for<K>(api: Api<K>, name: &str, what: &str, condition: impl Condition<K>)
    where
        K: Clone + std::fmt::Debug + Send + serde::de::DeserializeOwned + Resource + 'static,
    {
        tokio::time::timeout(
            Duration::from_secs(120),
            await_condition(api, name, condition),
        )
        .await
        .unwrap_or_else(|_| panic!("{what}: not within 120s"))
        .unwrap_or_else(|e| panic!("{what}: watch failed: {e}"));
    }

    /// What was seen of the objects of one kind while the rollout ran.
    #[derive(Debug, Default)]
    struct Seen {
        snapshots: usize,
        /// Over ReplicaSets: the largest sum of `spec.replicas`.
        max_replicas_sum: i32,
        /// Over pods: the fewest Ready pods (not terminating).
        min_ready: Option<i32>,
        /// Over pods: Ready pods of the old and the new image at the same time.
        old_and_new_ready_together: bool,
    }

    fn observe_replica_sets(seen: &mut Seen, sets: &[std::sync::Arc<ReplicaSet>]) {
        seen.snapshots += 1;
        let sum = sets
            .iter()
            .filter_map(|rs| rs.spec.as_ref()?.replicas)
            .sum();
        seen.max_replicas_sum = seen.max_replicas_sum.max(sum);
    }

    fn observe_pods(seen: &mut Seen, pods: &[std::sync::Arc<Pod>]) {
        seen.snapshots += 1;
        let ready: Vec<_> = pods.iter().filter(|p| is_ready(p)).collect();
        let count = i32::try_from(ready.len()).expect("a handful of pods");
        seen.min_ready = Some(seen.min_ready.map_or(count, |m| m.min(count)));
        let ready_with = |img: &str| ready.iter().any(|p| image(p) == Some(img));
        if ready_with(OLD_IMAGE) && ready_with(NEW_IMAGE) {
            seen.old_and_new_ready_together = true;
        }
    }

    async fn fake_node_names(client: &Client) -> BTreeSet<String> {
        let (key, value) = cluster::FAKE_NODE_ANNOTATION;
        Api::<Node>::all(client.clone())
            .list(&ListParams::default())
            .await
            .expect("listing nodes")
            .into_iter()
            .filter(|n| n.annotations().get(key).map(String::as_str) == Some(value))
            .map(|n| n.name_any())
            .collect()
    }

    async fn app_pods(pods: &Api<Pod>) -> Vec<Pod> {
        pods.list(&ListParams::default().labels(&format!("app={APP}")))
            .await
            .expect("listing pods")
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deployment_rolls_within_max_surge_and_max_unavailable() {
        let Some(cluster) = cluster::shared() else {
            return;
        };
        let client = cluster.client().await;
        let ns = cluster.namespace(&client, "smoke").await;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);

        let fake_nodes = fake_node_names(&client).await;
        assert!(
            !fake_nodes.is_empty(),
            "the cluster has no kwok-managed nodes"
        );

        // 1-2. Five replicas, scheduled onto the fake nodes, all Ready.
        deployments
            .create(&PostParams::default(), &deployment())
            .await
            .expect("creating the Deployment");
        wait_for(
            deployments.clone(),
            APP,
            "5 Ready replicas of image 1",
            rolled_out,
        )
        .await;
        let running = app_pods(&pods).await;
        assert_eq!(running.len(), REPLICAS as usize, "pods: {running:#?}");
        for pod in &running {
            assert!(is_ready(pod), "pod {} is not Ready", pod.name_any());
            let node = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .unwrap_or_default();
            assert!(
                fake_nodes.contains(node),
                "pod {} is on {node:?}, not a fake node",
                pod.name_any()
            );
        }

        // Watch ReplicaSets and pods from a full list taken before the change.
        let (rs_listed, rs_listed_rx) = oneshot::channel();
        let (pods_listed, pods_listed_rx) = oneshot::channel();
        let (stop_rs, stop_rs_rx) = oneshot::channel();
        let (stop_pods, stop_pods_rx) = oneshot::channel();
        let rs_seen = watch_fold(
            replica_sets.clone(),
            APP,
            rs_listed,
            stop_rs_rx,
            observe_replica_sets,
        );
        let pods_seen = watch_fold(pods.clone(), APP, pods_listed, stop_pods_rx, observe_pods);
        rs_listed_rx.await.expect("ReplicaSet observer listed");
        pods_listed_rx.await.expect("pod observer listed");

        // 3. Change the image; kubectl follows the rollout from the start.
        let patch = serde_json::json!({
            "spec": {"template": {"spec": {"containers": [{"name": APP, "image": NEW_IMAGE}]}}}
        });
        deployments
            .patch(APP, &PatchParams::default(), &Patch::Strategic(patch))
            .await
            .expect("changing the image");
        let rollout_status = cluster
            .kubectl()
            .args([
                "-n",
                &ns,
                "rollout",
                "status",
                &format!("deployment/{APP}"),
                "--timeout=120s",
            ])
            .kill_on_drop(true)
            .output();

        // 4. The Deployment controller rolls it.
        let (status, _) = tokio::join!(
            rollout_status,
            wait_for(deployments.clone(), APP, "rollout to image 2", rolled_out)
        );
        let status = status.expect("running kubectl rollout status");
        let _ = stop_rs.send(());
        let _ = stop_pods.send(());
        let rs_seen = rs_seen.await.expect("ReplicaSet observer");
        let pods_seen = pods_seen.await.expect("pod observer");

        assert!(
            rs_seen.max_replicas_sum <= REPLICAS + MAX_SURGE,
            "ReplicaSets asked for {} pods at once, more than {REPLICAS} + maxSurge {MAX_SURGE}: {rs_seen:?}",
            rs_seen.max_replicas_sum
        );
        assert!(
            rs_seen.max_replicas_sum > REPLICAS,
            "the rollout never surged above {REPLICAS}, so it was not a rolling update: {rs_seen:?}"
        );
        let min_ready = pods_seen.min_ready.expect("pods were observed");
        assert!(
            min_ready >= REPLICAS - MAX_UNAVAILABLE,
            "only {min_ready} pods were Ready at one point, fewer than {REPLICAS} - maxUnavailable {MAX_UNAVAILABLE}: {pods_seen:?}"
        );
        assert!(
            pods_seen.old_and_new_ready_together,
            "old and new pods were never Ready side by side: {pods_seen:?}"
        );

        // 5. kubectl agrees.
        let stdout = String::from_utf8_lossy(&status.stdout);
        assert!(
            status.status.success() && stdout.contains("successfully rolled out"),
            "kubectl rollout status: {}\nstdout: {stdout}\nstderr: {}",
            status.status,
            String::from_utf8_lossy(&status.stderr)
        );

        let rolled = app_pods(&pods).await;
        assert_eq!(
            rolled.len(),
            REPLICAS as usize,
            "pods after the rollout: {rolled:#?}"
        );
        for pod in &rolled {
            assert_eq!(
                image(pod),
                Some(NEW_IMAGE),
                "pod {} kept the old image",
                pod.name_any()
            );
        }
        println!(
            "smoke: rollout seen in {} ReplicaSet and {} pod snapshots; at most {} pods requested, at least {min_ready} Ready",
            rs_seen.snapshots, pods_seen.snapshots, rs_seen.max_replicas_sum
        );
    }
}
