//! The pod watch kept to the new ReplicaSet's pods once a step moves forward
//! (`src/target/kubernetes/pod_watch.rs`): what a step still needs of the old pods comes from
//! their ReplicaSets; a metric check that names every pod keeps it on every pod.

use std::time::Instant;

use crate::cluster::DELETE_DELAY_ANNOTATION;
use crate::kube_bed::{self, Bed, image};

/// Under a pod ResourceQuota of N + maxSurge, each new pod waits for an old one to be gone, and
/// here an old pod takes 12 s to go: longer than the 10 s a refused ReplicaSet is waited out when
/// nothing of the rollout is going away. Once the watch no longer sees the old pods, their going
/// away is counted from the ReplicaSets' `status.terminatingReplicas`; counted from the watched
/// pods, as before, it would read 0 and fail the step after 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_under_a_pod_quota_waits_for_old_pods_it_no_longer_watches() {
    const N: i32 = 2;
    let mut web = kube_bed::deployment(N, "1", "0");
    let template = web
        .spec
        .as_mut()
        .expect("a spec")
        .template
        .metadata
        .as_mut();
    template
        .expect("template metadata")
        .annotations
        .get_or_insert_with(Default::default)
        .insert(DELETE_DELAY_ANNOTATION.into(), "12s".into());
    let Some(bed) = Bed::with("narrow-quota", web).await else {
        return;
    };
    super::bounds::pod_quota(&bed, N + 1).await;
    let rollout = bed.rollout(
        "web.yaml",
        "2",
        &format!("image: \"{}\"", image("2")),
        "  strategy:\n    rolling: {maxSurge: 1, maxUnavailable: 0}\n  progressDeadlineSeconds: 60\n",
    );
    let started = Instant::now();
    let out = bed
        .rollgate_env(
            &["apply", "-f", rollout.to_str().unwrap()],
            &[("RUST_LOG", "rollgate::target::kubernetes::pod_watch=debug")],
        )
        .await;
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "rolled out: {stderr}");
    assert!(
        stderr.contains("pod watch kept to the new ReplicaSet's pods"),
        "the pod watch was kept to the new pods: {stderr}"
    );
    assert!(
        stderr.contains("cannot create pods") && stderr.contains("exceeded quota"),
        "the quota refused a new pod while an old one was going away: {stderr}"
    );
    bed.wait_deployment("version 2 at N", |d| {
        kube_bed::rolled_out(d, N, &image("2"))
    })
    .await;
    kube_bed::assert_at_rest(&bed).await;
    println!(
        "pod watch: a rollout under a pod quota of N + maxSurge, old pods 12 s going, in {took:?}"
    );
    bed.finish().await;
}

/// A metric check that names every pod (`{{hosts}}`) keeps the pod watch on every pod: the watch is
/// never narrowed, and each query the gates send, to a real nginx, names the old pods beside the
/// new ones (narrowed, the gates' queries would name the new pods only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metric_check_naming_every_pod_keeps_the_pod_watch_on_every_pod() {
    const N: i32 = 4;
    let Some(nginx) = super::probes::nginx() else {
        eprintln!(
            "skipped: nginx is not installed (tests/run.sh installs it from Debian's packages)"
        );
        return;
    };
    let dir = tempfile::tempdir().expect("a temp dir");
    let server = super::probes::Nginx::start(nginx, dir.path()).await;
    let Some(bed) = Bed::new("wide-hosts", N, "25%", "0").await else {
        return;
    };
    let rollout = bed.rollout(
        "web.yaml",
        "2",
        &format!("image: \"{}\"", image("2")),
        &format!(
            "  strategy:\n    canary:\n      maxSurge: 1\n      maxUnavailable: 0\n      steps:\n        - setWeight: 25\n        - analysis: {{checks: [every-pod]}}\n        - setWeight: 50\n        - analysis: {{checks: [every-pod]}}\n        - setWeight: 100\n  checks:\n    - name: every-pod\n      web: {{url: \"http://127.0.0.1:{port}/metric?hosts={{{{hosts}}}}\", jsonPath: \"$.n\"}}\n      successCondition: 'result == 1'\n      interval: 200ms\n      count: 2\n  progressDeadlineSeconds: 60\n",
            port = server.port
        ),
    );
    let out = bed
        .rollgate_env(
            &["apply", "-f", rollout.to_str().unwrap()],
            &[("RUST_LOG", "rollgate::target::kubernetes::pod_watch=debug")],
        )
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "rolled out: {stderr}");
    assert!(
        !stderr.contains("pod watch kept to the new ReplicaSet's pods"),
        "the pod watch stayed on every pod: {stderr}"
    );
    bed.wait_deployment("version 2 at N", |d| {
        kube_bed::rolled_out(d, N, &image("2"))
    })
    .await;
    kube_bed::assert_at_rest(&bed).await;

    // Each query named pods of two ReplicaSets: `web-<pod-template-hash>-<suffix>`.
    let queries: Vec<String> = server
        .requests()
        .into_iter()
        .filter_map(|(_, uri, _)| Some(uri.strip_prefix("/metric?hosts=")?.replace("%7C", "|")))
        .collect();
    assert!(
        queries.len() >= 4,
        "two gates, two queries each: {queries:?}"
    );
    for hosts in &queries {
        let hashes: std::collections::BTreeSet<&str> = hosts
            .split('|')
            .filter_map(|pod| pod.rsplit('-').nth(1))
            .collect();
        assert_eq!(
            hashes.len(),
            2,
            "the query named the old pods and the new ones: {hosts}"
        );
    }
    server.stop().await;
    bed.finish().await;
}
