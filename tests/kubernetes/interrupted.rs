//! Rollouts cut short: `abort` at a pause restores the Deployment; `resume` after the CLI was killed
//! mid-step finishes from what the cluster holds, keeping the pods already created.

use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::ResourceExt;
use kube::runtime::watcher;

use crate::kube_bed::{self, Bed, image};

const N: i32 = 6;

fn template(d: &Deployment) -> serde_json::Value {
    serde_json::to_value(&d.spec.as_ref().expect("a spec").template).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_at_a_pause_restores_the_deployment() {
    let Some(bed) = Bed::new("abort", N, "25%", "0").await else {
        return;
    };
    let before = bed.deployment().await;
    let sets_before: Vec<String> = bed
        .replica_sets()
        .await
        .iter()
        .map(|r| r.name_any())
        .collect();
    let rollout = bed.rollout(
        "web.yaml",
        "2",
        &format!("image: \"{}\"", image("2")),
        "  strategy:\n    canary: {maxSurge: 1, maxUnavailable: 0, steps: [{setWeight: 50}, {pause: {}}]}\n  progressDeadlineSeconds: 60\n",
    );
    let out = bed
        .rollgate(&["apply", "-f", rollout.to_str().unwrap()])
        .await;
    assert_eq!(out.status.code(), Some(3), "paused");
    let observer = bed.observe().await;
    let out = bed.rollgate(&["abort", "web"]).await;
    let (_, pods) = observer.stop().await;
    assert_eq!(out.status.code(), Some(0), "a successful abort exits 0");
    assert!(kube_bed::stdout(&out).contains("aborted"));
    bed.wait_deployment("version 1 back at N", |d| {
        kube_bed::rolled_out(d, N, &image("1"))
    })
    .await;
    kube_bed::assert_at_rest(&bed).await;
    assert_eq!(template(&bed.deployment().await), template(&before));
    let sets_after: Vec<String> = bed
        .replica_sets()
        .await
        .iter()
        .map(|r| r.name_any())
        .collect();
    assert_eq!(
        sets_after, sets_before,
        "the canary's ReplicaSet is removed"
    );
    // The stable set came back to N before the canary went: never fewer Ready than at the pause.
    assert!(pods.min_ready.expect("pods") >= N / 2, "{pods:?}");
    bed.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_the_cli_is_killed_keeps_the_pods_already_created() {
    let Some(bed) = Bed::new("killed", N, "25%", "0").await else {
        return;
    };
    // Each new pod takes 2 s to be Ready, so the kill lands mid-step.
    kube_bed::template_file(
        bed.dir.path(),
        "2",
        &[],
        &[(crate::cluster::READY_DELAY_ANNOTATION, "2s")],
    );
    let rollout = bed.rollout(
        "web.yaml",
        "2",
        "manifest: deployment-2.yaml",
        "  strategy:\n    rolling: {maxSurge: 1, maxUnavailable: 0}\n  progressDeadlineSeconds: 60\n",
    );
    let observer = bed.observe().await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_rollgate"))
        .args(["apply", "-f", rollout.to_str().unwrap()])
        .current_dir(bed.dir.path())
        .env("KUBECONFIG", bed.cluster.kubeconfig())
        .env("ROLLGATE_STATE", bed.path("state"))
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("starting rollgate");
    // Kill it once the new ReplicaSet has grown past its first step (by watch, not by time).
    let mut grown = watcher(bed.replica_sets.clone(), watcher::Config::default())
        .filter_map(|e| async move {
            match e {
                Ok(watcher::Event::Apply(rs)) | Ok(watcher::Event::InitApply(rs)) => Some(rs),
                _ => None,
            }
        })
        .filter(|rs: &ReplicaSet| {
            let grown = rs.name_any().contains("-rg")
                && rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0) >= 2;
            async move { grown }
        })
        .boxed();
    tokio::time::timeout(Duration::from_secs(60), grown.next())
        .await
        .expect("the new ReplicaSet grew within 60s");
    child.start_kill().expect("killing rollgate");
    let status = child.wait().await.expect("rollgate exits");
    assert!(!status.success(), "killed: {status}");

    let out = bed.rollgate(&["resume", "web"]).await;
    assert!(out.status.success(), "rollgate resume");
    bed.wait_deployment("version 2 rolled out", |d| {
        kube_bed::rolled_out(d, N, &image("2"))
    })
    .await;
    let (sets, pods) = observer.stop().await;
    kube_bed::assert_at_rest(&bed).await;
    assert!(
        sets.max_replicas_sum <= N + 1,
        "maxSurge 1 across the kill: {sets:?}"
    );
    assert!(
        pods.min_ready.expect("pods") >= N,
        "maxUnavailable 0 across the kill: {pods:?}"
    );
    let created = pods.pods_by_image.get(&image("2")).map_or(0, |s| s.len());
    assert_eq!(
        created, N as usize,
        "pods of version 2 created once each: {pods:?}"
    );
    bed.finish().await;
}
