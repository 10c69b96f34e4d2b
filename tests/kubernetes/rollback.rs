//! Failing versions roll back on their own, and `rollgate rollback` returns after a completed
//! rollout; the Deployment ends where it started.

use k8s_openapi::api::apps::v1::Deployment;

use crate::kube_bed::{self, Bed, image};

const N: i32 = 6;

fn template(d: &Deployment) -> serde_json::Value {
    serde_json::to_value(&d.spec.as_ref().expect("a spec").template).expect("json")
}

/// Runs a rollout to `version` from `manifest:` and checks it was rolled back automatically and
/// left the Deployment exactly as it was, with availability never below N.
async fn rolls_back(bed: &Bed, version: &str, rest: &str, expect: &str) {
    let before = bed.deployment().await;
    let sets_before: Vec<String> = bed
        .replica_sets()
        .await
        .iter()
        .map(|rs| rs.metadata.name.clone().unwrap_or_default())
        .collect();
    let observer = bed.observe().await;
    let rollout = bed.rollout(
        "web.yaml",
        version,
        &format!("manifest: deployment-{version}.yaml"),
        rest,
    );
    let out = bed
        .rollgate(&["apply", "-f", rollout.to_str().unwrap()])
        .await;
    let (sets, pods) = observer.stop().await;
    let text = kube_bed::stdout(&out);
    assert_eq!(out.status.code(), Some(1), "exit code 1 for a rollback");
    assert!(text.contains("rolled back"), "stdout: {text}");
    assert!(text.contains(expect), "the reason names {expect:?}: {text}");

    bed.wait_deployment("version 1 back at N", |d| {
        kube_bed::rolled_out(d, N, &image("1"))
    })
    .await;
    kube_bed::assert_at_rest(bed).await;
    let after = bed.deployment().await;
    assert_eq!(
        template(&after),
        template(&before),
        "the Deployment's template changed"
    );
    let sets_after: Vec<String> = bed
        .replica_sets()
        .await
        .iter()
        .map(|rs| rs.metadata.name.clone().unwrap_or_default())
        .collect();
    assert_eq!(sets_after, sets_before, "the new ReplicaSet is removed");
    let min_ready = pods.min_ready.expect("pods were observed");
    assert!(
        min_ready >= N,
        "only {min_ready} pods Ready at one point (maxUnavailable 0): {pods:?}"
    );
    assert!(
        sets.max_replicas_sum <= N + 2,
        "more than N + maxSurge requested: {sets:?}"
    );
    assert!(
        pods.pods_by_image.contains_key(&image(version)),
        "pods of {version} were never created, so nothing was tried: {pods:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_ready_version_rolls_back_automatically() {
    let Some(bed) = Bed::new("never-ready", N, "25%", "0").await else {
        return;
    };
    kube_bed::template_file(
        bed.dir.path(),
        "3",
        &[(crate::cluster::NEVER_READY_LABEL, "true")],
        &[],
    );
    rolls_back(
        &bed,
        "3",
        "  strategy:\n    rolling: {maxSurge: \"25%\", maxUnavailable: 0}\n  progressDeadlineSeconds: 4\n  rollback: {auto: true}\n",
        "progressDeadlineSeconds",
    )
    .await;
    bed.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_that_crashes_after_ready_rolls_back_automatically() {
    let Some(bed) = Bed::new("crashing", N, "25%", "0").await else {
        return;
    };
    // Ready, then the container crashes a second later, before minReadySeconds makes it available.
    kube_bed::template_file(
        bed.dir.path(),
        "4",
        &[],
        &[(crate::cluster::FAIL_AFTER_ANNOTATION, "1s")],
    );
    rolls_back(
        &bed,
        "4",
        "  strategy:\n    rolling: {maxSurge: \"25%\", maxUnavailable: 0, minReadySeconds: 3}\n  progressDeadlineSeconds: 30\n  rollback: {auto: true}\n",
        "CrashLoopBackOff",
    )
    .await;
    bed.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_command_after_completion_returns_to_the_previous_template() {
    let Some(bed) = Bed::new("rollback-cmd", N, "25%", "0").await else {
        return;
    };
    let before = bed.deployment().await;
    let rollout = bed.rollout(
        "web.yaml",
        "2",
        &format!("image: \"{}\"", image("2")),
        "  strategy:\n    rolling: {maxSurge: \"25%\", maxUnavailable: 0}\n  progressDeadlineSeconds: 60\n",
    );
    let out = bed
        .rollgate(&["apply", "-f", rollout.to_str().unwrap()])
        .await;
    assert!(out.status.success(), "rollgate apply");
    let sets_before: Vec<String> = bed
        .replica_sets()
        .await
        .iter()
        .map(|rs| rs.metadata.name.clone().unwrap_or_default())
        .collect();

    let observer = bed.observe().await;
    let out = bed.rollgate(&["rollback", "web"]).await;
    let (sets, pods) = observer.stop().await;
    assert!(out.status.success(), "rollgate rollback");
    bed.wait_deployment("back on version 1", |d| {
        kube_bed::rolled_out(d, N, &image("1"))
    })
    .await;
    kube_bed::assert_at_rest(&bed).await;
    let mut after = template(&bed.deployment().await);
    // The version annotation is rollgate's only addition; the rest is the template from before.
    let mut expected = template(&before);
    for t in [&mut after, &mut expected] {
        if let Some(a) = t.pointer_mut("/metadata/annotations") {
            a.as_object_mut().unwrap().remove("rollgate.dev/version");
            if a.as_object().unwrap().is_empty() {
                t.as_object_mut().unwrap()["metadata"]
                    .as_object_mut()
                    .unwrap()
                    .remove("annotations");
            }
        }
    }
    assert_eq!(after, expected, "the template is the one from before");
    let sets_after: Vec<String> = bed
        .replica_sets()
        .await
        .iter()
        .map(|rs| rs.metadata.name.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        sets_after, sets_before,
        "the previous ReplicaSet is scaled back up, none is created"
    );
    // The previous set comes back at once (surge 100%) and nothing goes unavailable.
    assert!(
        sets.max_replicas_sum <= 2 * N,
        "the rollback's bounds: {sets:?}"
    );
    assert!(
        pods.min_ready.expect("pods") >= N,
        "unavailable 0: {pods:?}"
    );
    bed.finish().await;
}
