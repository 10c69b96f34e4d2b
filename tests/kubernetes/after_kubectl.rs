//! What people do with `kubectl` after rollgate (issue 16): the Deployment controller completes
//! its own rollouts afterwards, and nothing rollgate leaves on the Deployment or its ReplicaSets
//! is read differently by the controller or by `kubectl` than what they would leave themselves.

use k8s_openapi::api::apps::v1::ReplicaSet;
use kube::ResourceExt;

use crate::kube_bed::{self, Bed, image};

const N: i32 = 3;

fn replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

/// Every ReplicaSet carries the controller's replica annotations at `n` (on the active one at
/// least), and none of rollgate's.
async fn assert_annotations_as_the_controller_leaves_them(bed: &Bed, n: i32, surge: i32) {
    for rs in bed.replica_sets().await {
        let a = rs.annotations();
        let name = rs.name_any();
        for key in [
            "rollgate.dev/replicas",
            "rollgate.dev/hpa",
            "rollgate.dev/lent",
        ] {
            assert!(!a.contains_key(key), "{name} keeps {key}: {a:?}");
        }
        let desired = a.get("deployment.kubernetes.io/desired-replicas");
        if replicas(&rs) > 0 || desired.is_some() {
            assert_eq!(
                desired.map(String::as_str),
                Some(n.to_string().as_str()),
                "{name}: desired-replicas, which the controller compares with the Deployment's replicas on every sync: {a:?}"
            );
            assert_eq!(
                a.get("deployment.kubernetes.io/max-replicas")
                    .map(String::as_str),
                Some((n + surge).to_string().as_str()),
                "{name}: max-replicas: {a:?}"
            );
        }
    }
}

/// Issue 16, bug 1: after `rollgate rollback` (which reuses the kept ReplicaSet of version 1) the
/// Deployment controller rolled out nothing again: the reused set kept `desired-replicas: "0"`, a
/// scaling event on every sync. `kubectl set image` and `kubectl rollout restart` must complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_rollback_kubectl_set_image_and_rollout_restart_complete() {
    let Some(bed) = Bed::new("after-rollback", N, "1", "0").await else {
        return;
    };
    let rollout = bed.rollout(
        "web.yaml",
        "2",
        &format!("image: \"{}\"", image("2")),
        "  strategy:\n    rolling: {maxSurge: 1, maxUnavailable: 0}\n  progressDeadlineSeconds: 60\n",
    );
    let out = bed
        .rollgate(&["apply", "-f", rollout.to_str().unwrap()])
        .await;
    assert!(out.status.success(), "rollgate apply");
    let out = bed.rollgate(&["rollback", "web"]).await;
    assert!(out.status.success(), "rollgate rollback");
    bed.wait_deployment("back on version 1", |d| {
        kube_bed::rolled_out(d, N, &image("1"))
    })
    .await;
    kube_bed::assert_at_rest(&bed).await;
    assert_annotations_as_the_controller_leaves_them(&bed, N, 1).await;

    bed.kubectl(&[
        "set",
        "image",
        "deployment/web",
        &format!("web={}", image("3")),
    ])
    .await;
    bed.wait_deployment("kubectl set image rolled out by the controller", |d| {
        kube_bed::rolled_out(d, N, &image("3"))
    })
    .await;
    bed.kubectl(&["rollout", "restart", "deployment/web"]).await;
    bed.wait_deployment(
        "kubectl rollout restart rolled out by the controller",
        |d| kube_bed::rolled_out(d, N, &image("3")),
    )
    .await;
    bed.finish().await;
}

/// Issue 16, bug 3: the paused Deployment's `rollgate.dev/replicas` was copied by the controller
/// onto its ReplicaSet, and `kubectl rollout undo` copied it back onto the Deployment; after
/// `kubectl scale --replicas=5` the next rollgate rollout ended at the stale 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_rollout_undo_and_scale_the_next_rollout_keeps_the_new_count() {
    let Some(bed) = Bed::new("after-undo", N, "1", "0").await else {
        return;
    };
    let rest = "  strategy:\n    rolling: {maxSurge: 1, maxUnavailable: 0}\n  progressDeadlineSeconds: 60\n";
    let rollout = bed.rollout("web.yaml", "2", &format!("image: \"{}\"", image("2")), rest);
    let out = bed
        .rollgate(&["apply", "-f", rollout.to_str().unwrap()])
        .await;
    assert!(out.status.success(), "rollgate apply");
    assert_annotations_as_the_controller_leaves_them(&bed, N, 1).await;
    bed.kubectl(&["rollout", "undo", "deployment/web"]).await;
    bed.wait_deployment("kubectl rollout undo rolled out", |d| {
        kube_bed::rolled_out(d, N, &image("1"))
    })
    .await;
    let d = bed.deployment().await;
    assert!(
        !d.annotations().contains_key("rollgate.dev/replicas"),
        "kubectl rollout undo brought back rollgate's annotation: {:?}",
        d.annotations()
    );
    bed.kubectl(&["scale", "deployment/web", "--replicas=5"])
        .await;
    bed.wait_deployment("scaled to 5", |d| kube_bed::rolled_out(d, 5, &image("1")))
        .await;
    let rollout = bed.rollout("web.yaml", "3", &format!("image: \"{}\"", image("3")), rest);
    let out = bed
        .rollgate(&["apply", "-f", rollout.to_str().unwrap()])
        .await;
    assert!(out.status.success(), "rollgate apply");
    bed.wait_deployment("version 3 at the 5 kubectl scaled to", |d| {
        kube_bed::rolled_out(d, 5, &image("3"))
    })
    .await;
    kube_bed::assert_at_rest(&bed).await;
    assert_annotations_as_the_controller_leaves_them(&bed, 5, 1).await;
    bed.finish().await;
}
