//! The benchmark of issue 6, not a timed test: `cargo test --test kubernetes bench -- --ignored
//! --nocapture` prints rollgate's times against kubectl's on the same cluster.
//!
//! N=20, maxSurge 25%, maxUnavailable 0, every pod Ready exactly 1 s after it is scheduled (kwok's
//! `rollgate.dev/ready-delay`). A rollout: `rollgate apply` with no gates against `kubectl set image`
//! plus `kubectl rollout status`. A rollback after it: `rollgate rollback` against `kubectl rollout
//! undo` plus `kubectl rollout status`; and, for the same undo, `rollgate apply` of the previous
//! version with maxSurge 100% (the previous ReplicaSet scaled back at once). Each pair runs in
//! fresh namespaces, three times; medians.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;

use super::common::{self, APP, Bed, image};

const N: i32 = 20;
const RUNS: usize = 3;

/// A fresh namespace with `web` at N ready replicas of version 1, each pod Ready 1 s after it starts.
async fn bed(purpose: &str) -> Option<Bed> {
    let mut d: Deployment = common::deployment(N, "25%", "0");
    let spec = d.spec.as_mut().unwrap();
    spec.template
        .metadata
        .as_mut()
        .unwrap()
        .annotations
        .get_or_insert_with(Default::default)
        .insert(crate::cluster::READY_DELAY_ANNOTATION.into(), "1s".into());
    Bed::with(purpose, d).await
}

async fn kubectl(bed: &Bed, args: &[&str]) -> Duration {
    let started = Instant::now();
    let out = bed
        .cluster
        .kubectl()
        .args(["-n", &bed.ns])
        .args(args)
        .output()
        .await
        .expect("kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed()
}

async fn rollgate(bed: &Bed, args: &[&str]) -> Duration {
    let started = Instant::now();
    let out = bed.rollgate(args).await;
    assert!(out.status.success(), "rollgate {args:?}");
    started.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run with --ignored --nocapture"]
async fn bench_rollgate_against_kubectl() {
    let deploy = format!("deployment/{APP}");
    let status = ["rollout", "status", deploy.as_str(), "--timeout=300s"];
    let (mut k_roll, mut k_undo, mut r_roll, mut r_back) = (vec![], vec![], vec![], vec![]);
    let mut r_fast = vec![];
    for run in 0..RUNS {
        let Some(k) = bed(&format!("bench-kubectl-{run}")).await else {
            return;
        };
        let started = Instant::now();
        kubectl(
            &k,
            &["set", "image", &deploy, &format!("{APP}={}", image("2"))],
        )
        .await;
        kubectl(&k, &status).await;
        k_roll.push(started.elapsed());
        let started = Instant::now();
        kubectl(&k, &["rollout", "undo", &deploy]).await;
        kubectl(&k, &status).await;
        k_undo.push(started.elapsed());

        let Some(r) = bed(&format!("bench-rollgate-{run}")).await else {
            return;
        };
        let rollout = r.rollout(
            "web.yaml",
            "2",
            &format!("image: \"{}\"", image("2")),
            "  strategy:\n    rolling: {maxSurge: \"25%\", maxUnavailable: 0}\n",
        );
        r_roll.push(rollgate(&r, &["apply", "-f", rollout.to_str().unwrap()]).await);
        r_back.push(rollgate(&r, &["rollback", APP]).await);
        // What the Kubernetes target does when asked to go back at once (the automatic rollback's
        // way, and what `rollback` would do with maxSurge 100%): the previous ReplicaSet is reused.
        rollgate(&r, &["apply", "-f", rollout.to_str().unwrap()]).await;
        let back = r.rollout(
            "back.yaml",
            "1",
            &format!("image: \"{}\"", image("1")),
            "  strategy:\n    rolling: {maxSurge: \"100%\", maxUnavailable: 0}\n",
        );
        r_fast.push(rollgate(&r, &["apply", "-f", back.to_str().unwrap()]).await);
        k.finish().await;
        r.finish().await;
        println!(
            "run {run}: kubectl rollout {:?} undo {:?}; rollgate apply {:?} rollback {:?} back at 100% surge {:?}",
            k_roll[run], k_undo[run], r_roll[run], r_back[run], r_fast[run]
        );
    }
    let (k_roll, k_undo, r_roll, r_back, r_fast) = (
        median(k_roll),
        median(k_undo),
        median(r_roll),
        median(r_back),
        median(r_fast),
    );
    println!(
        "N={N}, maxSurge 25%, maxUnavailable 0, ready after 1s, medians of {RUNS}:\n  rollout:  rollgate apply {r_roll:?} / kubectl set image + rollout status {k_roll:?} = {:.2}\n  rollback: rollgate rollback {r_back:?} / kubectl rollout undo + rollout status {k_undo:?} = {:.2}\n  back to the previous version at maxSurge 100%: rollgate apply {r_fast:?} / kubectl rollout undo + rollout status = {:.2}",
        r_roll.as_secs_f64() / k_roll.as_secs_f64(),
        r_back.as_secs_f64() / k_undo.as_secs_f64(),
        r_fast.as_secs_f64() / k_undo.as_secs_f64(),
    );
}
