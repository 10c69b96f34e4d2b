//! A canary with manual pauses: at each pause the Deployment's ReplicaSet and rollgate's hold
//! exactly the plan's counts, `promote` continues from another process, and the finished rollout
//! created each new pod once.

use crate::kube_bed::{self, Bed, image};

const N: i32 = 8;

/// The plan's (old, new) at each pause, from `rollgate plan -o json`.
async fn pauses(bed: &Bed, rollout: &str) -> Vec<(i32, i32)> {
    let out = bed
        .rollgate(&[
            "plan",
            "-f",
            rollout,
            "--replicas",
            &N.to_string(),
            "-o",
            "json",
        ])
        .await;
    assert!(out.status.success(), "rollgate plan");
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
    plan["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter(|s| s["kind"] == "pause")
        .map(|s| {
            (
                s["old"].as_i64().unwrap() as i32,
                s["new"].as_i64().unwrap() as i32,
            )
        })
        .collect()
}

/// (old, new): replicas of the Deployment's own ReplicaSets and of the rest; and Ready pods of
/// each version.
async fn counts(bed: &Bed) -> ((i32, i32), (i32, i32)) {
    let d = bed.deployment().await;
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let mut sets = (0, 0);
    for rs in bed.replica_sets().await {
        let n = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        if kube_bed::controller_uid(&rs) == Some(uid.as_str()) {
            sets.0 += n;
        } else {
            sets.1 += n;
        }
    }
    let mut ready = (0, 0);
    let pods = bed
        .pods
        .list(&Default::default())
        .await
        .expect("listing pods");
    for p in pods.items.iter().filter(|p| kube_bed::is_ready(p)) {
        if kube_bed::pod_image(p) == Some(image("2").as_str()) {
            ready.1 += 1;
        } else {
            ready.0 += 1;
        }
    }
    (sets, ready)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_pauses_at_the_planned_weights_and_promotes_to_the_deployment() {
    let Some(bed) = Bed::new("canary", N, "25%", "0").await else {
        return;
    };
    let rollout = bed.rollout(
        "web.yaml",
        "2",
        &format!("image: \"{}\"", image("2")),
        "  strategy:\n    canary: {maxSurge: 1, maxUnavailable: 0, steps: [{setWeight: 25}, {pause: {}}, {setWeight: 50}, {pause: {}}]}\n  progressDeadlineSeconds: 60\n",
    );
    let rollout = rollout.to_str().unwrap();
    let expected = pauses(&bed, rollout).await;
    assert_eq!(expected.len(), 2, "two pauses in the plan: {expected:?}");
    let observer = bed.observe().await;

    let out = bed.rollgate(&["apply", "-f", rollout]).await;
    assert_eq!(out.status.code(), Some(3), "paused at the first pause");
    let (sets, ready) = counts(&bed).await;
    assert_eq!(sets, expected[0], "ReplicaSet sizes at 25%");
    assert_eq!(ready, expected[0], "Ready pods of each version at 25%");

    let out = bed.rollgate(&["promote", "web"]).await;
    assert_eq!(out.status.code(), Some(3), "paused at the second pause");
    let (sets, ready) = counts(&bed).await;
    assert_eq!(sets, expected[1], "ReplicaSet sizes at 50%");
    assert_eq!(ready, expected[1], "Ready pods of each version at 50%");

    let out = bed.rollgate(&["promote", "web"]).await;
    assert!(out.status.success(), "promoted to the end");
    bed.wait_deployment("version 2 rolled out", |d| {
        kube_bed::rolled_out(d, N, &image("2"))
    })
    .await;
    let (sets, pods) = observer.stop().await;
    kube_bed::assert_at_rest(&bed).await;
    assert!(sets.max_replicas_sum <= N + 1, "maxSurge 1: {sets:?}");
    assert!(
        pods.min_ready.expect("pods") >= N,
        "maxUnavailable 0: {pods:?}"
    );
    let created = pods.pods_by_image.get(&image("2")).map_or(0, |s| s.len());
    assert_eq!(created, N as usize, "each new pod created once: {pods:?}");
    bed.finish().await;
}
