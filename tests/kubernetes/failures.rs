//! Canary and blue-green to a version whose pods never become Ready, and to one whose pods crash
//! after running: the rollback is automatic and the Deployment ends where it started (template,
//! replicas, Ready pods, its own ReplicaSets only, no helper object, Services unpinned).
//! The rolling cases are in `rollback.rs`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use kube::{Api, ResourceExt};

use crate::cluster::{FAIL_AFTER_ANNOTATION, NEVER_READY_LABEL};
use crate::faults;
use crate::kube_bed::{self, APP, Bed, image};

const N: i32 = 4;

async fn services(bed: &Bed) -> Api<Service> {
    let api: Api<Service> = Api::namespaced(bed.client.clone(), &bed.ns);
    for name in ["web-active", "web-preview"] {
        kube_bed::service(&api, name).await;
    }
    api
}

fn selector(svc: &Service) -> BTreeMap<String, String> {
    svc.spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default()
}

/// What a Deployment is, for "ends where it started": its template, replicas, and ReplicaSets.
async fn snapshot(bed: &Bed) -> (serde_json::Value, Option<i32>, Vec<(String, Option<i32>)>) {
    let d = bed.deployment().await;
    let spec = d.spec.expect("a spec");
    let mut sets: Vec<(String, Option<i32>)> = bed
        .replica_sets()
        .await
        .iter()
        .map(|rs| (rs.name_any(), rs.spec.as_ref().and_then(|s| s.replicas)))
        .collect();
    sets.sort();
    (
        serde_json::to_value(&spec.template).expect("json"),
        spec.replicas,
        sets,
    )
}

/// A failing version and what its rollback must show.
struct Failing<'a> {
    version: &'a str,
    /// Pod-template labels and annotations: the kwok test controls.
    labels: &'a [(&'a str, &'a str)],
    annotations: &'a [(&'a str, &'a str)],
    /// The manifest from `strategy:` on.
    rest: &'a str,
    /// What the rollback's reason names.
    expect: &'a str,
    /// The fault-matrix row.
    fault: &'a str,
    min_ready_floor: i32,
}

/// Rolls `web` to `version` (a `manifest:` template made with `labels`/`annotations`) with
/// `strategy`, and checks the automatic rollback left everything as it was. At least
/// `min_ready_floor` pods are Ready throughout: N (maxUnavailable 0), less the new pods that were
/// available and then crashed.
async fn rolls_back(bed: &Bed, case: Failing<'_>) {
    let Failing {
        version,
        labels,
        annotations,
        rest,
        expect,
        fault,
        min_ready_floor,
    } = case;
    let blue_green = rest.contains("blueGreen");
    let services = if blue_green {
        Some(services(bed).await)
    } else {
        None
    };
    let before = snapshot(bed).await;
    kube_bed::template_file(bed.dir.path(), version, labels, annotations);
    let rollout = bed.rollout(
        "web.yaml",
        version,
        &format!("manifest: deployment-{version}.yaml"),
        rest,
    );
    let observer = bed.observe().await;
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
    let after = snapshot(bed).await;
    assert_eq!(after.0, before.0, "the Deployment's template changed");
    assert_eq!(after.1, before.1, "the Deployment's replicas changed");
    assert_eq!(
        after.2, before.2,
        "ReplicaSets (name, replicas): the new one is removed, the old one at N"
    );
    let d = bed.deployment().await;
    let status = d.status.expect("a status");
    assert_eq!(status.ready_replicas, Some(N), "Ready replicas at the end");
    let ready_old = bed
        .pods
        .list(&Default::default())
        .await
        .expect("listing pods")
        .items
        .iter()
        .filter(|p| kube_bed::is_ready(p) && kube_bed::pod_image(p) == Some(image("1").as_str()))
        .count();
    assert_eq!(ready_old, N as usize, "Ready pods of version 1 at the end");
    if let Some(api) = &services {
        for name in ["web-active", "web-preview"] {
            let svc = api.get(name).await.expect("Service");
            assert_eq!(
                selector(&svc),
                [("app".to_string(), APP.to_string())].into(),
                "{name} is unpinned"
            );
        }
    }
    let min_ready = pods.min_ready.expect("pods were observed");
    assert!(
        min_ready >= min_ready_floor,
        "only {min_ready} pods Ready at one point, fewer than {min_ready_floor}: {pods:?}"
    );
    assert!(sets.max_replicas_sum <= 2 * N, "{sets:?}");
    assert!(
        pods.pods_by_image.contains_key(&image(version)),
        "pods of {version} were never created, so nothing was tried: {pods:?}"
    );
    faults::record(faults::Case {
        bed: "kubernetes",
        fault,
        outcome: "rolled back automatically; Deployment as before",
        lost: 0,
        unknown: 0,
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_to_a_never_ready_version_rolls_back() {
    let Some(bed) = Bed::new("canary-never-ready", N, "25%", "0").await else {
        return;
    };
    rolls_back(
        &bed,
        Failing {
            version: "3",
            labels: &[(NEVER_READY_LABEL, "true")],
            annotations: &[],
            rest: "  strategy:\n    canary: {maxSurge: 1, maxUnavailable: 0, steps: [{setWeight: 25}, {pause: {duration: 1s}}, {setWeight: 50}]}\n  progressDeadlineSeconds: 4\n  rollback: {auto: true}\n",
            expect: "progressDeadlineSeconds",
            fault: "canary to pods that never become Ready",
            min_ready_floor: N,
        },
    )
    .await;
    bed.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_whose_pods_crash_after_running_rolls_back() {
    let Some(bed) = Bed::new("canary-crashing", N, "25%", "0").await else {
        return;
    };
    // The first canary pod becomes available (minReadySeconds 0) and the step passes; it crashes a
    // second later, during the pause, and the next step finds it in CrashLoopBackOff.
    rolls_back(
        &bed,
        Failing {
            version: "4",
            labels: &[],
            annotations: &[(FAIL_AFTER_ANNOTATION, "1s")],
            rest: "  strategy:\n    canary: {maxSurge: 1, maxUnavailable: 0, steps: [{setWeight: 25}, {pause: {duration: 5s}}, {setWeight: 50}, {pause: {duration: 5s}}]}\n  progressDeadlineSeconds: 30\n  rollback: {auto: true}\n",
            expect: "CrashLoopBackOff",
            fault: "canary whose pods crash after running (past their first step)",
            // The one canary pod (25% of 4) was available, then crashed.
            min_ready_floor: N - 1,
        },
    )
    .await;
    bed.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_whose_pods_crash_after_the_switch_rolls_back_and_switches_back() {
    let Some(bed) = Bed::new("blue-green-crashing", N, "25%", "0").await else {
        return;
    };
    // The new set comes up Ready and available; it crashes during the 5 s before promotion; the
    // switch happens, and the scale-down of the old set finds the crash: traffic goes back.
    rolls_back(
        &bed,
        Failing {
            version: "4",
            labels: &[],
            annotations: &[(FAIL_AFTER_ANNOTATION, "1s")],
            rest: "  strategy:\n    blueGreen: {autoPromotionEnabled: true, autoPromotionSeconds: 5, scaleDownDelaySeconds: 1}\n  progressDeadlineSeconds: 30\n  rollback: {auto: true}\n",
            expect: "CrashLoopBackOff",
            fault: "blue-green whose pods crash after running (after the switch)",
            min_ready_floor: N,
        },
    )
    .await;
    bed.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_whose_pods_crash_before_available_rolls_back() {
    let Some(bed) = Bed::new("blue-green-crash-early", N, "25%", "0").await else {
        return;
    };
    rolls_back(
        &bed,
        Failing {
            version: "5",
            labels: &[],
            annotations: &[(FAIL_AFTER_ANNOTATION, "1s")],
            rest: "  strategy:\n    blueGreen: {autoPromotionEnabled: true, scaleDownDelaySeconds: 1, minReadySeconds: 3}\n  progressDeadlineSeconds: 30\n  rollback: {auto: true}\n",
            expect: "CrashLoopBackOff",
            fault: "blue-green whose preview crashes after Ready, before minReadySeconds",
            min_ready_floor: N,
        },
    )
    .await;
    bed.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_to_a_never_ready_version_with_a_preview_count_rolls_back() {
    let Some(bed) = Bed::new("blue-green-never-ready-2", N, "25%", "0").await else {
        return;
    };
    rolls_back(
        &bed,
        Failing {
            version: "3",
            labels: &[(NEVER_READY_LABEL, "true")],
            annotations: &[],
            rest: "  strategy:\n    blueGreen: {autoPromotionEnabled: true, previewReplicaCount: 2, scaleDownDelaySeconds: 1}\n  progressDeadlineSeconds: 4\n  rollback: {auto: true}\n",
            expect: "progressDeadlineSeconds",
            fault: "blue-green (preview 2 of 4) to pods that never become Ready",
            min_ready_floor: N,
        },
    )
    .await;
    bed.finish().await;
}
