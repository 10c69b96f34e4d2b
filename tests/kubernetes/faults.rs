//! Faults under a Kubernetes rollout (issue 9 §1): rollgate's API server killed and restarted
//! mid-rollout, briefly and for longer than progressDeadlineSeconds; the held ReplicaSet, and its
//! holder ConfigMap, deleted by hand mid-rollout. Each case is recorded in the fault matrix.
//!
//! The API server faults take a second kube-apiserver on the cluster's etcd
//! (`cluster.sh extra-apiserver`) and point only rollgate at it: the controllers, the scheduler and
//! kwok keep working through the cluster's own, and so does the observer, so the bounds are
//! watched by someone who never lost the API.

use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::{WatchStreamExt, reflector, watcher};

use crate::faults;
use crate::kube_bed::{self, Bed, image};

const N: i32 = 6;

fn template(d: &Deployment) -> serde_json::Value {
    serde_json::to_value(&d.spec.as_ref().expect("a spec").template).expect("json")
}

async fn set_names(bed: &Bed) -> Vec<String> {
    bed.replica_sets()
        .await
        .iter()
        .map(|rs| rs.name_any())
        .collect()
}

/// Version 2 from `manifest:`, each new pod Ready 2 s after it starts, so that a fault lands
/// mid-step; maxSurge 2, maxUnavailable 0 (three steps).
fn rollout_2(bed: &Bed, progress_deadline: u32) -> std::path::PathBuf {
    kube_bed::template_file(
        bed.dir.path(),
        "2",
        &[],
        &[(crate::cluster::READY_DELAY_ANNOTATION, "2s")],
    );
    bed.rollout(
        "web.yaml",
        "2",
        "manifest: deployment-2.yaml",
        &format!(
            "  strategy:\n    rolling: {{maxSurge: 2, maxUnavailable: 0}}\n  progressDeadlineSeconds: {progress_deadline}\n  rollback: {{auto: true}}\n"
        ),
    )
}

/// `rollgate apply -o json -f rollout`, with `kubeconfig`, running in the background.
fn spawn_apply(
    bed: &Bed,
    rollout: &std::path::Path,
    kubeconfig: &std::path::Path,
) -> tokio::task::JoinHandle<std::process::Output> {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_rollgate"))
        .args(["apply", "-o", "json", "-f", rollout.to_str().unwrap()])
        .current_dir(bed.dir.path())
        .env("KUBECONFIG", kubeconfig)
        .env("ROLLGATE_STATE", bed.path("state"))
        .env("ROLLGATE_USER", "test")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting rollgate");
    tokio::spawn(async move {
        let out = tokio::time::timeout(Duration::from_secs(240), child.wait_with_output())
            .await
            .expect("rollgate finished within 240s")
            .expect("running rollgate");
        eprintln!(
            "rollgate apply: {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    })
}

/// Returns the name of rollgate's new ReplicaSet once it asks for at least `replicas` pods (by
/// watch, through the cluster's own API server).
async fn new_set_grown(bed: &Bed, replicas: i32) -> String {
    let mut grown = watcher(bed.replica_sets.clone(), watcher::Config::default())
        .applied_objects()
        .filter_map(|rs: Result<ReplicaSet, _>| async move {
            let rs = rs.ok()?;
            let grown = rs.name_any().contains("-rg")
                && rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0) >= replicas;
            grown.then(|| rs.name_any())
        })
        .boxed();
    tokio::time::timeout(Duration::from_secs(60), grown.next())
        .await
        .expect("the new ReplicaSet grew within 60s")
        .expect("watch streams do not end")
}

/// Waits (by watch) until no pod of `image` is left: garbage collection after a deletion.
async fn no_pods_of(bed: &Bed, image: &str) {
    let (reader, writer) = reflector::store::<Pod>();
    let mut events = reflector(
        writer,
        watcher(bed.pods.clone(), watcher::Config::default()),
    )
    .boxed();
    let gone = async {
        while let Some(event) = events.next().await {
            // The store holds the previous full list until InitDone.
            if matches!(
                event,
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) | Err(_)
            ) {
                continue;
            }
            if !reader
                .state()
                .iter()
                .any(|p| kube_bed::pod_image(p) == Some(image))
            {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), gone)
        .await
        .unwrap_or_else(|_| panic!("pods of {image} still there after 60s"));
}

/// The JSON-lines journal records rollgate printed.
fn records(out: &std::process::Output) -> Vec<serde_json::Value> {
    kube_bed::stdout(out)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Objects the rollout leaves that it should not: ReplicaSets not the Deployment's, the holder,
/// pods of `image`.
async fn leftovers(bed: &Bed, image: &str) -> u32 {
    let d = bed.deployment().await;
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let foreign = bed
        .replica_sets()
        .await
        .iter()
        .filter(|rs| kube_bed::controller_uid(rs) != Some(uid.as_str()))
        .count();
    let holders: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(bed.client.clone(), &bed.ns);
    let holder = holders
        .get_opt("web-rollgate")
        .await
        .expect("reading ConfigMaps")
        .is_some();
    let pods = bed
        .pods
        .list(&Default::default())
        .await
        .expect("listing pods")
        .items
        .iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none() && kube_bed::pod_image(p) == Some(image)
        })
        .count();
    (foreign + usize::from(holder) + pods) as u32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_restarted_mid_rollout_is_ridden_out() {
    let Some(bed) = Bed::new("apiserver-restart", N, "25%", "0").await else {
        return;
    };
    let api = bed.cluster.extra_apiserver(32543).await;
    let rollout = rollout_2(&bed, 60);
    let observer = bed.observe().await;
    let apply = spawn_apply(&bed, &rollout, api.kubeconfig());

    // Mid-step: the first wave is asked for; its pods take 2 s to be Ready.
    new_set_grown(&bed, 2).await;
    api.kill().await;
    // The outage: the restart below takes a few seconds more.
    tokio::time::sleep(Duration::from_secs(3)).await;
    api.restart().await;

    let out = apply.await.expect("the rollgate task");
    let (sets, pods) = observer.stop().await;
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the rollout rode out the restart: {err}"
    );
    assert!(
        err.contains("lost the Kubernetes API server"),
        "rollgate says it lost the API server: {err}"
    );
    assert!(
        err.contains("the Kubernetes API server answers again"),
        "and that it came back: {err}"
    );
    let journal = records(&out);
    assert!(
        journal
            .iter()
            .all(|r| r["event"] != "instanceChanged" || r["ok"] == true),
        "no step failed: {journal:#?}"
    );
    assert!(
        journal
            .iter()
            .any(|r| r["event"] == "finished" && r["outcome"] == "succeeded"),
        "{journal:#?}"
    );

    bed.wait_deployment("version 2 rolled out", |d| {
        kube_bed::rolled_out(d, N, &image("2"))
    })
    .await;
    kube_bed::assert_at_rest(&bed).await;
    assert!(
        sets.max_replicas_sum <= N + 2,
        "maxSurge 2 across the restart: {sets:?}"
    );
    assert!(
        pods.min_ready.expect("pods") >= N,
        "maxUnavailable 0 across the restart: {pods:?}"
    );
    let created = pods.pods_by_image.get(&image("2")).map_or(0, |s| s.len());
    assert_eq!(
        created, N as usize,
        "pods of version 2 created once each: {pods:?}"
    );
    faults::record(faults::Case {
        bed: "kubernetes",
        fault: "rollgate's kube-apiserver kill -9 mid-step, restarted 3 s later (ready ~6-7 s after the kill; progressDeadlineSeconds 60)",
        outcome: "watches and requests resumed; lost/regained reported on stderr; completed within bounds",
        lost: 0,
        unknown: leftovers(&bed, &image("1")).await,
    });
    drop(api);
    bed.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_away_longer_than_progress_deadline_rolls_back() {
    let Some(bed) = Bed::new("apiserver-outage", N, "25%", "0").await else {
        return;
    };
    let api = bed.cluster.extra_apiserver(32553).await;
    let before = bed.deployment().await;
    let sets_before = set_names(&bed).await;
    let rollout = rollout_2(&bed, 5);
    let observer = bed.observe().await;
    let apply = spawn_apply(&bed, &rollout, api.kubeconfig());

    new_set_grown(&bed, 2).await;
    api.kill().await;
    // Longer than progressDeadlineSeconds (5 s): the step fails while the API is away, and the
    // rollback waits for it.
    tokio::time::sleep(Duration::from_secs(10)).await;
    api.restart().await;

    let out = apply.await.expect("the rollgate task");
    let (sets, pods) = observer.stop().await;
    let err = stderr(&out);
    let journal = records(&out);
    assert_eq!(out.status.code(), Some(1), "rolled back: {err}");
    let finished = journal
        .iter()
        .find(|r| r["event"] == "finished")
        .unwrap_or_else(|| panic!("a finished record: {journal:#?}"));
    assert_eq!(finished["outcome"], "rolledBack", "{finished}");
    let why = finished["detail"].as_str().unwrap_or_default();
    assert!(
        why.contains("progressDeadlineSeconds") && why.contains("out of reach"),
        "the reason says the API server was away past the deadline: {why}"
    );
    assert!(
        err.contains("the Kubernetes API server answers again"),
        "the rollback waited for the API server: {err}"
    );

    bed.wait_deployment("version 1 back at N", |d| {
        kube_bed::rolled_out(d, N, &image("1"))
    })
    .await;
    kube_bed::assert_at_rest(&bed).await;
    assert_eq!(template(&bed.deployment().await), template(&before));
    no_pods_of(&bed, &image("2")).await;
    assert_eq!(
        set_names(&bed).await,
        sets_before,
        "the new ReplicaSet is gone"
    );
    assert!(sets.max_replicas_sum <= N + 2, "maxSurge 2: {sets:?}");
    assert!(
        pods.min_ready.expect("pods") >= N,
        "maxUnavailable 0: {pods:?}"
    );
    faults::record(faults::Case {
        bed: "kubernetes",
        fault: "rollgate's kube-apiserver kill -9 mid-step, away 10 s + restart (progressDeadlineSeconds 5)",
        outcome: "step failed at the deadline naming the outage; rollback waited for the API server; back to the stable ReplicaSet",
        lost: 0,
        unknown: leftovers(&bed, &image("2")).await,
    });
    drop(api);
    bed.finish().await;
}

/// Runs version 2, deletes `what` with the real kubectl once the first wave is asked for, and
/// checks rollgate names it, rolls back, and leaves the Deployment as it was. Returns rollgate's
/// reason.
async fn deleted_by_hand(bed: &Bed, what: impl Fn(&str) -> Vec<String>) -> String {
    let before = bed.deployment().await;
    let sets_before = set_names(bed).await;
    let rollout = rollout_2(bed, 60);
    let observer = bed.observe().await;
    let apply = spawn_apply(bed, &rollout, bed.cluster.kubeconfig());

    let held = new_set_grown(bed, 2).await;
    let args = what(&held);
    let deleted = bed
        .cluster
        .kubectl()
        .args(["-n", &bed.ns, "delete"])
        .args(&args)
        .output()
        .await
        .expect("kubectl delete");
    assert!(
        deleted.status.success(),
        "kubectl delete {args:?}: {}",
        String::from_utf8_lossy(&deleted.stderr)
    );

    let out = apply.await.expect("the rollgate task");
    let (sets, pods) = observer.stop().await;
    let journal = records(&out);
    assert_eq!(out.status.code(), Some(1), "rolled back: {journal:#?}");
    let finished = journal
        .iter()
        .find(|r| r["event"] == "finished")
        .unwrap_or_else(|| panic!("a finished record: {journal:#?}"));
    assert_eq!(finished["outcome"], "rolledBack", "{finished}");
    let why = finished["detail"].as_str().unwrap_or_default().to_string();
    assert!(
        why.contains("deleted by someone else"),
        "the reason says someone else deleted it: {why}"
    );
    assert!(
        why.contains(&held),
        "the reason names ReplicaSet {held}: {why}"
    );

    bed.wait_deployment("version 1 back at N", |d| {
        kube_bed::rolled_out(d, N, &image("1"))
    })
    .await;
    no_pods_of(bed, &image("2")).await;
    kube_bed::assert_at_rest(bed).await;
    assert_eq!(template(&bed.deployment().await), template(&before));
    assert_eq!(set_names(bed).await, sets_before, "nothing recreated");
    // Nothing was recreated behind the user's back: the first wave's pods only, and the deleted
    // ReplicaSet never came back under another name.
    let created = pods.pods_by_image.get(&image("2")).map_or(0, |s| s.len());
    assert!(
        created <= 2,
        "pods of version 2 created after the deletion: {pods:?}"
    );
    let ours: Vec<_> = sets
        .replica_sets
        .iter()
        .filter(|n| n.contains("-rg"))
        .collect();
    assert_eq!(ours, vec![&held], "one new ReplicaSet in all: {sets:?}");
    assert!(
        pods.min_ready.expect("pods") >= N,
        "maxUnavailable 0 through the rollback: {pods:?}"
    );
    why
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_replica_set_deleted_by_hand_rolls_back() {
    let Some(bed) = Bed::new("rs-deleted", N, "25%", "0").await else {
        return;
    };
    let why = deleted_by_hand(&bed, |held| vec!["replicaset".into(), held.into()]).await;
    assert!(why.contains("ReplicaSet"), "{why}");
    faults::record(faults::Case {
        bed: "kubernetes",
        fault: "the held ReplicaSet deleted by hand (kubectl delete rs) mid-step",
        outcome: "detected at once, named as deleted by someone else; rolled back to the stable ReplicaSet, nothing recreated",
        lost: 0,
        unknown: leftovers(&bed, &image("2")).await,
    });
    bed.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holder_config_map_deleted_by_hand_rolls_back() {
    let Some(bed) = Bed::new("holder-deleted", N, "25%", "0").await else {
        return;
    };
    let why = deleted_by_hand(&bed, |_| vec!["configmap".into(), "web-rollgate".into()]).await;
    assert!(
        why.contains("ConfigMap") && why.contains("web-rollgate"),
        "the reason names the holder: {why}"
    );
    faults::record(faults::Case {
        bed: "kubernetes",
        fault: "the holder ConfigMap deleted by hand (kubectl delete configmap) mid-step; garbage collection deletes the held ReplicaSet",
        outcome: "detected when the ReplicaSet went, named the ConfigMap; rolled back to the stable ReplicaSet, nothing recreated",
        lost: 0,
        unknown: leftovers(&bed, &image("2")).await,
    });
    bed.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holder_config_map_deleted_with_orphans_rolls_back() {
    let Some(bed) = Bed::new("holder-orphaned", N, "25%", "0").await else {
        return;
    };
    // The held ReplicaSet outlives its holder, loses its owner, and the Deployment may adopt it.
    let why = deleted_by_hand(&bed, |_| {
        vec![
            "configmap".into(),
            "web-rollgate".into(),
            "--cascade=orphan".into(),
        ]
    })
    .await;
    assert!(
        why.contains("ConfigMap") && why.contains("web-rollgate"),
        "the reason names the holder: {why}"
    );
    faults::record(faults::Case {
        bed: "kubernetes",
        fault: "the holder ConfigMap deleted by hand with --cascade=orphan mid-step; the held ReplicaSet is let go (and adopted by the Deployment)",
        outcome: "detected when the ReplicaSet left the holder, named the ConfigMap; rolled back, the orphaned ReplicaSet removed",
        lost: 0,
        unknown: leftovers(&bed, &image("2")).await,
    });
    bed.finish().await;
}
