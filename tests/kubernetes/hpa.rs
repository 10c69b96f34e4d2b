//! A HorizontalPodAutoscaler targets the Deployment: rollgate never writes `spec.replicas` (the
//! HPA's) during the rollout, scales the lent stable ReplicaSet itself, sizes each step for the
//! HPA's count at the step boundary, and ends (or rolls back) at the HPA's count.
//!
//! The HPA is a real autoscaling/v2 object and the real HPA controller of kube-controller-manager
//! acts on it. There is no metrics-server here, so its decision is forced through its bounds: raising
//! `minReplicas` above the current count makes the controller scale the Deployment up, exactly as
//! it does on a metric. The rollback case writes the scale subresource, as the controller would.

use std::collections::BTreeMap;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::core::v1::Service;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tokio::sync::oneshot;

use crate::kube_bed::{self, APP, Bed, image};

const N: i32 = 4;

async fn hpa(bed: &Bed, min: i32) -> Api<HorizontalPodAutoscaler> {
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(bed.client.clone(), &bed.ns);
    let hpa = HorizontalPodAutoscaler {
        metadata: ObjectMeta {
            name: Some(APP.into()),
            ..ObjectMeta::default()
        },
        spec: HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: APP.into(),
            },
            min_replicas: Some(min),
            max_replicas: 10,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(50),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            ..HorizontalPodAutoscalerSpec::default()
        },
        ..HorizontalPodAutoscaler::default()
    };
    api.create(&PostParams::default(), &hpa)
        .await
        .expect("creating the HPA");
    api
}

/// Records every value the Deployment's `spec.replicas` takes until stopped.
async fn watch_replicas(bed: &Bed) -> (oneshot::Sender<()>, tokio::task::JoinHandle<Vec<i32>>) {
    let (stop, mut stopped) = oneshot::channel::<()>();
    let (listed, listed_rx) = oneshot::channel::<()>();
    let api = bed.deployments.clone();
    let task = tokio::spawn(async move {
        let config = watcher::Config::default().fields(&format!("metadata.name={APP}"));
        let mut events = watcher(api, config).boxed();
        let mut listed = Some(listed);
        let mut seen: Vec<i32> = Vec::new();
        loop {
            tokio::select! {
                _ = &mut stopped => return seen,
                e = events.next() => match e.expect("watch").expect("watching web") {
                    watcher::Event::Apply(d) | watcher::Event::InitApply(d) => {
                        let r = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(-1);
                        if seen.last() != Some(&r) {
                            seen.push(r);
                        }
                    }
                    watcher::Event::InitDone => {
                        if let Some(l) = listed.take() {
                            let _ = l.send(());
                        }
                    }
                    _ => {}
                },
            }
        }
    });
    listed_rx.await.expect("web listed");
    (stop, task)
}

/// ReplicaSets by image: (spec.replicas, ready, lent).
async fn sets(bed: &Bed) -> BTreeMap<String, (i32, i32, bool)> {
    bed.replica_sets()
        .await
        .iter()
        .map(|rs| {
            let img = rs
                .spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .and_then(kube_bed::template_image)
                .unwrap_or_default()
                .to_string();
            let replicas = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
            let ready = rs
                .status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0);
            (
                img,
                (
                    replicas,
                    ready,
                    rs.annotations().contains_key("rollgate.dev/lent"),
                ),
            )
        })
        .collect()
}

fn spec_replicas(d: &Deployment) -> Option<i32> {
    d.spec.as_ref().and_then(|s| s.replicas)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_follows_the_hpa_and_never_fights_it() {
    let Some(bed) = Bed::new("hpa", N, "25%", "0").await else {
        return;
    };
    let hpas = hpa(&bed, N).await;
    let (stop, replicas_seen) = watch_replicas(&bed).await;
    let rollout = bed.rollout(
        "web.yaml",
        "2",
        &format!("image: \"{}\"", image("2")),
        "  strategy:\n    canary: {maxSurge: 1, maxUnavailable: 0, steps: [{setWeight: 25}, {pause: {}}, {setWeight: 50}, {pause: {}}]}\n  progressDeadlineSeconds: 60\n",
    );
    let rollout = rollout.to_str().unwrap();

    let out = bed.rollgate(&["apply", "-f", rollout]).await;
    assert_eq!(out.status.code(), Some(3), "paused at 25%");
    let d = bed.deployment().await;
    assert_eq!(
        spec_replicas(&d),
        Some(N),
        "spec.replicas is the HPA's: untouched"
    );
    assert_eq!(
        d.annotations().get("rollgate.dev/hpa").map(String::as_str),
        Some(APP),
        "the Deployment says which HPA rollgate follows"
    );
    let s = sets(&bed).await;
    let (replicas, _, lent) = s[&image("1")];
    assert_eq!(
        (replicas, lent),
        (3, true),
        "the stable set, lent, at 3: {s:?}"
    );
    assert_eq!(s[&image("2")], (1, 1, false), "one canary: {s:?}");

    // The HPA decides 6: its real controller scales the Deployment (its minimum is now 6).
    hpas.patch(
        APP,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"minReplicas": 6}})),
    )
    .await
    .expect("raising the HPA's minimum");
    bed.wait_deployment("the HPA scaled web to 6", |d| spec_replicas(d) == Some(6))
        .await;
    // The Deployment controller scales nothing: every ReplicaSet is lent or held.
    let s = sets(&bed).await;
    assert_eq!(s[&image("1")].0, 3, "{s:?}");
    assert_eq!(s[&image("2")].0, 1, "{s:?}");

    // The next step is sized for 6: 50% is 3 and 3.
    let out = bed.rollgate(&["promote", "web"]).await;
    assert_eq!(out.status.code(), Some(3), "paused at 50%");
    let s = sets(&bed).await;
    assert_eq!(s[&image("1")], (3, 3, true), "{s:?}");
    assert_eq!(s[&image("2")], (3, 3, false), "{s:?}");
    assert_eq!(spec_replicas(&bed.deployment().await), Some(6));

    let out = bed.rollgate(&["promote", "web"]).await;
    assert!(out.status.success(), "promoted to the end");
    bed.wait_deployment("version 2 rolled out at the HPA's 6", |d| {
        kube_bed::rolled_out(d, 6, &image("2"))
    })
    .await;
    kube_bed::assert_at_rest(&bed).await;
    let d = bed.deployment().await;
    assert!(!d.annotations().contains_key("rollgate.dev/hpa"));
    assert!(
        sets(&bed).await.values().all(|(_, _, lent)| !lent),
        "nothing is left lent"
    );
    let _ = stop.send(());
    let seen = replicas_seen.await.expect("watch task");
    assert_eq!(
        seen,
        vec![N, 6],
        "spec.replicas only ever took the HPA's values: no flapping"
    );
    bed.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_beside_an_hpa_returns_to_the_hpas_count() {
    let Some(bed) = Bed::new("hpa-abort", N, "25%", "0").await else {
        return;
    };
    hpa(&bed, 1).await;
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
    assert_eq!(out.status.code(), Some(3), "paused at 50%");
    let s = sets(&bed).await;
    let (replicas, _, lent) = s[&image("1")];
    assert_eq!(
        (replicas, lent),
        (2, true),
        "the stable set, lent, at 2: {s:?}"
    );

    // Scaled to 5 through the scale subresource, as the HPA controller writes it.
    bed.deployments
        .patch_scale(
            APP,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 5}})),
        )
        .await
        .expect("scaling web");
    let out = bed.rollgate(&["abort", "web"]).await;
    assert_eq!(out.status.code(), Some(0), "a successful abort exits 0");
    bed.wait_deployment("version 1 back at the HPA's 5", |d| {
        kube_bed::rolled_out(d, 5, &image("1"))
    })
    .await;
    kube_bed::assert_at_rest(&bed).await;
    let after = bed.deployment().await;
    assert_eq!(
        serde_json::to_value(&after.spec.as_ref().unwrap().template).unwrap(),
        serde_json::to_value(&before.spec.as_ref().unwrap().template).unwrap(),
        "the template is unchanged"
    );
    assert!(!after.annotations().contains_key("rollgate.dev/hpa"));
    let sets_after: Vec<String> = bed
        .replica_sets()
        .await
        .iter()
        .map(|r| r.name_any())
        .collect();
    assert_eq!(sets_after, sets_before, "the canary's ReplicaSet is gone");
    assert!(
        sets(&bed).await.values().all(|(_, _, lent)| !lent),
        "nothing is left lent"
    );
    bed.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_beside_an_hpa_previews_switches_and_ends_at_its_count() {
    let Some(bed) = Bed::new("hpa-blue-green", N, "25%", "0").await else {
        return;
    };
    hpa(&bed, 1).await;
    let services: Api<Service> = Api::namespaced(bed.client.clone(), &bed.ns);
    for name in ["web-active", "web-preview"] {
        kube_bed::service(&services, name).await;
    }
    let stable_hash = bed.replica_sets().await[0].labels()["pod-template-hash"].clone();
    let (stop, replicas_seen) = watch_replicas(&bed).await;
    let rollout = bed.rollout(
        "web.yaml",
        "2",
        &format!("image: \"{}\"", image("2")),
        "  strategy:\n    blueGreen: {autoPromotionEnabled: false, scaleDownDelaySeconds: 1}\n  progressDeadlineSeconds: 60\n",
    );
    let out = bed
        .rollgate(&["apply", "-f", rollout.to_str().unwrap()])
        .await;
    assert_eq!(out.status.code(), Some(3), "paused for promotion");
    let s = sets(&bed).await;
    assert_eq!(s[&image("1")].0, N, "{s:?}");
    assert!(s[&image("1")].2, "the stable set is lent: {s:?}");
    assert_eq!(s[&image("2")].0, N, "the preview at full size: {s:?}");
    let active = services.get("web-active").await.expect("web-active");
    assert_eq!(
        active
            .spec
            .and_then(|s| s.selector)
            .and_then(|s| s.get("pod-template-hash").cloned()),
        Some(stable_hash),
        "active stays on the stable pods"
    );

    // The HPA scales to 6 while the preview waits; promotion brings both sets to 6, then switches.
    bed.deployments
        .patch_scale(
            APP,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 6}})),
        )
        .await
        .expect("scaling web");
    let out = bed.rollgate(&["promote", "web"]).await;
    assert!(out.status.success(), "promoted to the end");
    bed.wait_deployment("version 2 at the HPA's 6", |d| {
        kube_bed::rolled_out(d, 6, &image("2"))
    })
    .await;
    kube_bed::assert_at_rest(&bed).await;
    for name in ["web-active", "web-preview"] {
        let svc = services.get(name).await.expect("Service");
        assert_eq!(
            svc.spec.and_then(|s| s.selector),
            Some([("app".to_string(), APP.to_string())].into()),
            "{name} unpinned at rest"
        );
    }
    let _ = stop.send(());
    assert_eq!(replicas_seen.await.expect("watch task"), vec![N, 6]);
    bed.finish().await;
}
