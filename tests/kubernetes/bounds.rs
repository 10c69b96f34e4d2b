//! Issue 16, the rest: the Deployment deleted mid-rollout (bug 8), a rollback within the rollout's
//! bounds under a real pod ResourceQuota (bug 9), a quota or a LimitRange that forbids the new pods, and
//! `strategy: Recreate`. Each ends with nothing of rollgate's left behind.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, LimitRange, LimitRangeItem, LimitRangeSpec, Pod, ResourceQuota, ResourceQuotaSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::runtime::wait::await_condition;
use kube::{Api, ResourceExt};

use crate::cluster::{FAIL_AFTER_ANNOTATION, READY_DELAY_ANNOTATION};
use crate::kube_bed::{self, Bed, image};

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        kube_bed::stdout(out),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// No raw API error text: the API server's words only.
fn assert_no_debug_text(text: &str) {
    assert!(
        !text.contains("ApiError") && !text.contains("Status {"),
        "raw API error text: {text}"
    );
}

async fn holder_gone(bed: &Bed) -> bool {
    let holders: Api<ConfigMap> = Api::namespaced(bed.client.clone(), &bed.ns);
    holders.get_opt("web-rollgate").await.unwrap().is_none()
}

/// Waits until no ReplicaSet and no pod of `web` is left (garbage collection runs after the
/// deletes), at most 60 s.
async fn wait_nothing_left(bed: &Bed) {
    let pods: Api<Pod> = Api::namespaced(bed.client.clone(), &bed.ns);
    let lp = ListParams::default().labels("app=web");
    let started = Instant::now();
    loop {
        let sets = bed.replica_sets.list(&lp).await.unwrap().items;
        let left = pods.list(&lp).await.unwrap().items;
        if sets.is_empty() && left.is_empty() {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "left behind after 60s: ReplicaSets {:?}, pods {:?}",
            sets.iter().map(|r| r.name_any()).collect::<Vec<_>>(),
            left.iter().map(|p| p.name_any()).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until rollgate's ReplicaSet (`web-rg…`) exists, and returns its name.
async fn held_set(bed: &Bed) -> String {
    let started = Instant::now();
    loop {
        if let Some(rs) = bed
            .replica_sets()
            .await
            .into_iter()
            .find(|rs| rs.name_any().starts_with("web-rg"))
        {
            return rs.name_any();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no held ReplicaSet within 60s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Issue 16, bug 8: the Deployment deleted while a step waits for its new pods. The watch sees it
/// go; the held ReplicaSet, its pods and the holder ConfigMap are deleted; one line says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_deleted_mid_step_leaves_nothing_of_rollgates() {
    let Some(bed) = Bed::new("deleted-mid-step", 3, "1", "0").await else {
        return;
    };
    // New pods turn Ready only after 30 s: the first step is still waiting when it is deleted.
    kube_bed::template_file(bed.dir.path(), "2", &[], &[(READY_DELAY_ANNOTATION, "30s")]);
    let rollout = bed.rollout(
        "web.yaml",
        "2",
        "manifest: deployment-2.yaml",
        "  strategy:\n    rolling: {maxSurge: 1, maxUnavailable: 0}\n  progressDeadlineSeconds: 60\n  rollback: {auto: true}\n",
    );
    let started = Instant::now();
    let args = ["apply", "-f", rollout.to_str().unwrap()];
    let (out, deleted_at) = tokio::join!(bed.rollgate(&args), async {
        held_set(&bed).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        bed.kubectl(&["delete", "deployment/web", "--wait=false"])
            .await;
        started.elapsed()
    });
    let took = started.elapsed() - deleted_at;
    let text = text(&out);
    assert_eq!(out.status.code(), Some(1), "the rollout fails: {text}");
    assert!(
        text.contains("was deleted by someone else (not rollgate)")
            && text.contains("rollgate deleted what it had made for it")
            && text.contains("ConfigMap web-rollgate"),
        "one line says what happened and what was deleted: {text}"
    );
    assert_no_debug_text(&text);
    assert!(
        kube_bed::stdout(&out).contains("web: failed after") && !text.contains("rolling back"),
        "nothing to roll back: the rollout fails, once: {text}"
    );
    assert!(
        took < Duration::from_secs(20),
        "noticed {took:?} after the delete, not at the 60 s deadline"
    );
    assert!(holder_gone(&bed).await, "the holder ConfigMap is left");
    wait_nothing_left(&bed).await;
    println!("bounds: deleted Deployment noticed and cleaned up in {took:?}");
    bed.finish().await;
}

/// Issue 16, bug 8: the Deployment deleted while a canary waits at a manual pause; `abort` says
/// so in one line and deletes what rollgate made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_after_the_deployment_was_deleted_at_a_pause_cleans_up() {
    let Some(bed) = Bed::new("deleted-at-pause", 3, "1", "0").await else {
        return;
    };
    let rollout = bed.rollout(
        "web.yaml",
        "2",
        &format!("image: \"{}\"", image("2")),
        "  strategy:\n    canary: {maxSurge: 1, maxUnavailable: 0, steps: [{setWeight: 34}, {pause: {}}]}\n  progressDeadlineSeconds: 60\n",
    );
    let out = bed
        .rollgate(&["apply", "-f", rollout.to_str().unwrap()])
        .await;
    assert_eq!(out.status.code(), Some(3), "paused: {}", text(&out));
    let held = held_set(&bed).await;
    bed.kubectl(&["delete", "deployment/web"]).await;
    let out = bed.rollgate(&["abort", "web"]).await;
    let text = text(&out);
    assert!(!out.status.success(), "abort: {text}");
    assert!(
        text.contains("was deleted by someone else (not rollgate)")
            && text.contains(&format!("ReplicaSet {held}"))
            && text.contains("ConfigMap web-rollgate"),
        "abort says what happened and what it deleted: {text}"
    );
    assert_no_debug_text(&text);
    assert!(holder_gone(&bed).await, "the holder ConfigMap is left");
    wait_nothing_left(&bed).await;
    bed.finish().await;
}

/// A pod ResourceQuota of `pods` in the bed's namespace, once the quota controller has counted
/// what runs (admission refuses every pod of a quota it has not counted yet).
pub(super) async fn pod_quota(bed: &Bed, pods: i32) -> Api<ResourceQuota> {
    let quotas: Api<ResourceQuota> = Api::namespaced(bed.client.clone(), &bed.ns);
    let q = ResourceQuota {
        metadata: ObjectMeta {
            name: Some("pods".into()),
            ..ObjectMeta::default()
        },
        spec: Some(ResourceQuotaSpec {
            hard: Some([("pods".to_string(), Quantity(pods.to_string()))].into()),
            ..ResourceQuotaSpec::default()
        }),
        status: None,
    };
    quotas
        .create(&PostParams::default(), &q)
        .await
        .expect("creating the ResourceQuota");
    let counted = await_condition(quotas.clone(), "pods", |q: Option<&ResourceQuota>| {
        q.and_then(|q| q.status.as_ref())
            .and_then(|s| s.used.as_ref())
            .is_some_and(|u| u.contains_key("pods"))
    });
    tokio::time::timeout(Duration::from_secs(60), counted)
        .await
        .expect("the quota counted within 60s")
        .expect("watching the quota");
    quotas
}

/// Issue 16, bug 9: a canary whose new pods crash is rolled back; the stable set grew back to N
/// before the failed pods were deleted (6 pods for N=4 with maxSurge 1), so under a pod quota of
/// N + maxSurge the rollback waited out the deadline. It keeps the rollout's bounds now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_automatic_rollback_fits_a_pod_quota_of_n_plus_max_surge() {
    const N: i32 = 4;
    let Some(bed) = Bed::new("rollback-quota", N, "1", "0").await else {
        return;
    };
    pod_quota(&bed, N + 1).await;
    // Ready, then crashed 3 s later: during the canary's pause, noticed at the next step.
    kube_bed::template_file(bed.dir.path(), "2", &[], &[(FAIL_AFTER_ANNOTATION, "3s")]);
    let rollout = bed.rollout(
        "web.yaml",
        "2",
        "manifest: deployment-2.yaml",
        "  strategy:\n    canary: {maxSurge: 1, maxUnavailable: 0, steps: [{setWeight: 50}, {pause: {duration: 6s}}, {setWeight: 100}]}\n  progressDeadlineSeconds: 40\n  rollback: {auto: true}\n",
    );
    let observer = bed.observe().await;
    let started = Instant::now();
    let out = bed
        .rollgate(&["apply", "-f", rollout.to_str().unwrap()])
        .await;
    let took = started.elapsed();
    let (sets, _) = observer.stop().await;
    let text = text(&out);
    assert_eq!(out.status.code(), Some(1), "rolled back: {text}");
    assert!(
        kube_bed::stdout(&out).contains("rolled back"),
        "the rollback completed: {text}"
    );
    assert!(!text.contains("did not complete"), "{text}");
    assert!(
        sets.max_replicas_sum <= N + 1,
        "the ReplicaSets asked for {} pods at once, more than N + maxSurge = {}: {sets:?}",
        sets.max_replicas_sum,
        N + 1
    );
    bed.wait_deployment("back on version 1 at N", |d| {
        kube_bed::rolled_out(d, N, &image("1"))
    })
    .await;
    kube_bed::assert_at_rest(&bed).await;
    println!(
        "bounds: rollback under a pod quota of N + maxSurge in {took:?}, at most {} pods asked for",
        sets.max_replicas_sum
    );
    bed.finish().await;
}

/// Issue 16: a quota that forbids the surge pods. The held ReplicaSet says `FailedCreate:
/// exceeded quota` within a second; the step fails at once (nothing of the rollout is going away
/// to make room) instead of after progressDeadlineSeconds, says why, and the rollback fits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_that_forbids_the_surge_fails_the_step_at_once_and_says_why() {
    const N: i32 = 3;
    let Some(bed) = Bed::new("surge-quota", N, "1", "0").await else {
        return;
    };
    pod_quota(&bed, N).await;
    let rollout = bed.rollout(
        "web.yaml",
        "2",
        &format!("image: \"{}\"", image("2")),
        "  strategy:\n    rolling: {maxSurge: 1, maxUnavailable: 0}\n  progressDeadlineSeconds: 180\n  rollback: {auto: true}\n",
    );
    let started = Instant::now();
    let out = bed
        .rollgate(&["apply", "-f", rollout.to_str().unwrap()])
        .await;
    let took = started.elapsed();
    let text = text(&out);
    assert_eq!(out.status.code(), Some(1), "failed and rolled back: {text}");
    assert!(
        text.contains("exceeded quota") && text.contains("cannot create pods"),
        "the reason is the quota's: {text}"
    );
    assert!(
        took < Duration::from_secs(60),
        "failed after {took:?}, not at once (the deadline is 180 s)"
    );
    assert!(kube_bed::stdout(&out).contains("rolled back"), "{text}");
    bed.wait_deployment("still version 1 at N", |d| {
        kube_bed::rolled_out(d, N, &image("1"))
    })
    .await;
    kube_bed::assert_at_rest(&bed).await;
    println!("bounds: a quota that forbids the surge failed the rollout in {took:?}");
    bed.finish().await;
}

/// Issue 16: a LimitRange that forbids the new pods (the new template's memory limit is over its
/// maximum). The held ReplicaSet says `FailedCreate: ... forbidden: maximum memory usage per
/// Container is 64Mi` at once; the step fails at once with that reason (the deadline is 180 s),
/// the rollback puts version 1 back, and the Deployment is left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_range_that_forbids_the_new_pods_fails_the_step_at_once_and_says_why() {
    const N: i32 = 3;
    let Some(bed) = Bed::new("surge-limitrange", N, "1", "0").await else {
        return;
    };
    let limits: Api<LimitRange> = Api::namespaced(bed.client.clone(), &bed.ns);
    let range = LimitRange {
        metadata: ObjectMeta {
            name: Some("memory".into()),
            ..ObjectMeta::default()
        },
        spec: Some(LimitRangeSpec {
            limits: vec![LimitRangeItem {
                type_: "Container".into(),
                max: Some([("memory".to_string(), Quantity("64Mi".into()))].into()),
                ..LimitRangeItem::default()
            }],
        }),
    };
    limits
        .create(&PostParams::default(), &range)
        .await
        .expect("creating the LimitRange");
    let template = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata:\n      labels: {{app: web}}\n    spec:\n      containers: [{{name: web, image: \"{}\", resources: {{limits: {{memory: 128Mi}}}}}}]\n",
        image("2")
    );
    std::fs::write(bed.path("deployment-2.yaml"), template).expect("writing the template");
    let rollout = bed.rollout(
        "web.yaml",
        "2",
        "manifest: deployment-2.yaml",
        "  strategy:\n    rolling: {maxSurge: 1, maxUnavailable: 0}\n  progressDeadlineSeconds: 180\n  rollback: {auto: true}\n",
    );
    let started = Instant::now();
    let out = bed
        .rollgate(&["apply", "-f", rollout.to_str().unwrap()])
        .await;
    let took = started.elapsed();
    let text = text(&out);
    assert_eq!(out.status.code(), Some(1), "failed and rolled back: {text}");
    assert!(
        text.contains("maximum memory usage per Container is 64Mi"),
        "the reason is the LimitRange's: {text}"
    );
    assert_no_debug_text(&text);
    assert!(
        took < Duration::from_secs(60),
        "failed after {took:?}, not at once (the deadline is 180 s)"
    );
    assert!(kube_bed::stdout(&out).contains("rolled back"), "{text}");
    bed.wait_deployment("still version 1 at N", |d| {
        kube_bed::rolled_out(d, N, &image("1"))
    })
    .await;
    kube_bed::assert_at_rest(&bed).await;
    println!("bounds: a LimitRange that forbids the new pods failed the rollout in {took:?}");
    bed.finish().await;
}

/// Issue 16: `strategy: Recreate` was rolled as if it were RollingUpdate. Refused by `validate`
/// (it reads the live Deployment) and by `apply`, saying how to proceed; nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreate_deployment_is_refused_by_validate_and_apply() {
    let mut web: Deployment = kube_bed::deployment(3, "1", "0");
    if let Some(s) = web.spec.as_mut().and_then(|s| s.strategy.as_mut()) {
        s.type_ = Some("Recreate".into());
        s.rolling_update = None;
    }
    let Some(bed) = Bed::with("recreate", web).await else {
        return;
    };
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
        "  strategy:\n    rolling: {maxSurge: 1, maxUnavailable: 0}\n  progressDeadlineSeconds: 30\n",
    );
    let out = bed
        .rollgate(&["validate", "-f", rollout.to_str().unwrap()])
        .await;
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "validate: {said}");
    assert!(
        said.contains("strategy is Recreate") && said.contains("RollingUpdate"),
        "validate says why and how to proceed: {said}"
    );
    assert!(said.contains("web.yaml:"), "at the manifest's file: {said}");
    let out = bed
        .rollgate(&["apply", "-f", rollout.to_str().unwrap()])
        .await;
    let said = text(&out);
    assert!(!out.status.success(), "apply: {said}");
    assert!(said.contains("strategy is Recreate"), "apply: {said}");
    kube_bed::assert_at_rest(&bed).await;
    let d = bed.deployment().await;
    assert!(
        !d.annotations()
            .keys()
            .any(|k| k.starts_with("rollgate.dev/")),
        "annotated: {:?}",
        d.annotations()
    );
    let sets_after: Vec<String> = bed
        .replica_sets()
        .await
        .iter()
        .map(|r| r.name_any())
        .collect();
    assert_eq!(sets_after, sets_before, "no ReplicaSet made");
    bed.finish().await;
}

/// Issue 16: the Deployment's own minReadySeconds and progressDeadlineSeconds were ignored
/// (podinfo's 3 s: four waves in 4.1 s). Where the rollout manifest leaves them at their defaults
/// they apply, and `plan` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deployments_min_ready_and_progress_deadline_apply_when_the_manifest_leaves_them() {
    const N: i32 = 2;
    let mut web = kube_bed::deployment(N, "1", "0");
    if let Some(s) = web.spec.as_mut() {
        s.min_ready_seconds = Some(3);
        s.progress_deadline_seconds = Some(8);
    }
    let Some(bed) = Bed::with("own-settings", web).await else {
        return;
    };
    let rest = "  strategy:\n    rolling: {maxSurge: 1, maxUnavailable: 0}\n";
    let rollout = bed.rollout("web.yaml", "2", &format!("image: \"{}\"", image("2")), rest);
    let out = bed
        .rollgate(&["plan", "-f", rollout.to_str().unwrap(), "--replicas", "2"])
        .await;
    let said = text(&out);
    assert!(out.status.success(), "plan: {said}");
    assert!(
        said.contains("minReadySeconds 3 (the Deployment's")
            && said.contains("progressDeadlineSeconds 8 (the Deployment's"),
        "plan says which settings apply: {said}"
    );
    // Two waves, each new pod held 3 s after Ready before it counts as available.
    let started = Instant::now();
    let out = bed
        .rollgate(&["apply", "-f", rollout.to_str().unwrap()])
        .await;
    let rolled = started.elapsed();
    assert!(out.status.success(), "apply: {}", text(&out));
    assert!(
        rolled >= Duration::from_secs(6),
        "two waves in {rolled:?}: the Deployment's minReadySeconds 3 was skipped"
    );
    bed.wait_deployment("version 2 at N", |d| {
        kube_bed::rolled_out(d, N, &image("2"))
    })
    .await;
    // A version that never turns Ready fails at the Deployment's 8 s, not the default 600 s.
    kube_bed::template_file(
        bed.dir.path(),
        "3",
        &[(crate::cluster::NEVER_READY_LABEL, "true")],
        &[],
    );
    let rollout = bed.rollout(
        "web.yaml",
        "3",
        "manifest: deployment-3.yaml",
        &format!("{rest}  rollback: {{auto: true}}\n"),
    );
    let started = Instant::now();
    let out = bed
        .rollgate(&["apply", "-f", rollout.to_str().unwrap()])
        .await;
    let took = started.elapsed();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "rolled back: {said}");
    assert!(
        said.contains("progressDeadlineSeconds (8s)"),
        "the Deployment's deadline applied: {said}"
    );
    assert!(took < Duration::from_secs(60), "failed after {took:?}");
    bed.wait_deployment("back on version 2", |d| {
        kube_bed::rolled_out(d, N, &image("2"))
    })
    .await;
    kube_bed::assert_at_rest(&bed).await;
    println!(
        "bounds: N=2 with the Deployment's minReadySeconds 3 rolled in {rolled:?}; its progressDeadlineSeconds 8 failed a never-ready version in {took:?}"
    );
    bed.finish().await;
}
