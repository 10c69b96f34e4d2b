//! Blue-green on a Deployment: the new set comes up behind `web-preview` while `web-active` stays
//! pinned to the stable pods by pod-template-hash; the switch is one patch of that selector; at rest
//! both Services select the app's pods as written.

use std::collections::BTreeMap;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tokio::sync::oneshot;

use crate::kube_bed::{self, APP, Bed, image};

const N: i32 = 4;
const PREVIEW: i32 = 2;

fn selector(svc: &Service) -> BTreeMap<String, String> {
    svc.spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_previews_then_switches_the_active_service_in_one_patch() {
    let Some(bed) = Bed::new("blue-green", N, "25%", "0").await else {
        return;
    };
    let services: Api<Service> = Api::namespaced(bed.client.clone(), &bed.ns);
    kube_bed::service(&services, "web-active").await;
    kube_bed::service(&services, "web-preview").await;
    let stable_hash = bed.replica_sets().await[0]
        .labels()
        .get("pod-template-hash")
        .cloned()
        .expect("the Deployment's ReplicaSet has a hash");
    let rollout = bed.rollout(
        "web.yaml",
        "2",
        &format!("image: \"{}\"", image("2")),
        &format!(
            "  strategy:\n    blueGreen: {{autoPromotionEnabled: false, previewReplicaCount: {PREVIEW}, scaleDownDelaySeconds: 1}}\n  progressDeadlineSeconds: 60\n"
        ),
    );
    let observer = bed.observe().await;
    let out = bed
        .rollgate(&["apply", "-f", rollout.to_str().unwrap()])
        .await;
    assert_eq!(out.status.code(), Some(3), "paused for promotion");

    // Behind the preview: the new set at previewReplicaCount, Ready, and only the preview sees it.
    let sets = bed.replica_sets().await;
    let new = sets
        .iter()
        .find(|rs| rs.labels().get("pod-template-hash") != Some(&stable_hash))
        .expect("a new ReplicaSet");
    let new_hash = new.labels()["pod-template-hash"].clone();
    assert_eq!(new.spec.as_ref().and_then(|s| s.replicas), Some(PREVIEW));
    assert_eq!(
        new.status.as_ref().and_then(|s| s.ready_replicas),
        Some(PREVIEW)
    );
    let active = services.get("web-active").await.expect("web-active");
    let preview = services.get("web-preview").await.expect("web-preview");
    assert_eq!(
        selector(&active).get("pod-template-hash"),
        Some(&stable_hash),
        "active pinned to the stable pods"
    );
    assert_eq!(
        selector(&preview).get("pod-template-hash"),
        Some(&new_hash),
        "preview pinned to the new pods"
    );

    // Watch the active Service's selector through the promotion.
    let (stop, mut stopped) = oneshot::channel::<()>();
    let (listed, listed_rx) = oneshot::channel::<()>();
    let watch_api = services.clone();
    let seen = tokio::spawn(async move {
        let config = watcher::Config::default().fields("metadata.name=web-active");
        let mut events = watcher(watch_api, config).boxed();
        let mut listed = Some(listed);
        let mut hashes: Vec<Option<String>> = Vec::new();
        loop {
            tokio::select! {
                _ = &mut stopped => return hashes,
                e = events.next() => {
                    match e.expect("watch").expect("watching web-active") {
                        watcher::Event::Apply(s) | watcher::Event::InitApply(s) => {
                            let h = selector(&s).get("pod-template-hash").cloned();
                            if hashes.last() != Some(&h) {
                                hashes.push(h);
                            }
                        }
                        watcher::Event::InitDone => {
                            if let Some(l) = listed.take() {
                                let _ = l.send(());
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    });
    listed_rx.await.expect("web-active listed");
    let out = bed.rollgate(&["promote", "web"]).await;
    assert!(out.status.success(), "promoted to the end");
    bed.wait_deployment("version 2 rolled out", |d| {
        kube_bed::rolled_out(d, N, &image("2"))
    })
    .await;
    let _ = stop.send(());
    let hashes = seen.await.expect("Service watch");
    let (sets, pods) = observer.stop().await;

    assert_eq!(
        hashes,
        vec![Some(stable_hash.clone()), Some(new_hash.clone()), None],
        "active: stable, then the new pods in one switch, then unpinned at rest"
    );
    kube_bed::assert_at_rest(&bed).await;
    for name in ["web-active", "web-preview"] {
        let svc = services.get(name).await.expect("Service");
        assert_eq!(
            selector(&svc),
            [("app".to_string(), APP.to_string())].into(),
            "{name} selects the app as written"
        );
    }
    assert!(sets.max_replicas_sum <= 2 * N, "{sets:?}");
    assert!(pods.min_ready.expect("pods") >= N, "{pods:?}");
    let created = pods.pods_by_image.get(&image("2")).map_or(0, |s| s.len());
    assert_eq!(created, N as usize, "each new pod created once: {pods:?}");
    bed.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_preview_that_never_gets_ready_rolls_back_and_unpins() {
    let Some(bed) = Bed::new("blue-green-never-ready", N, "25%", "0").await else {
        return;
    };
    let services: Api<Service> = Api::namespaced(bed.client.clone(), &bed.ns);
    kube_bed::service(&services, "web-active").await;
    kube_bed::service(&services, "web-preview").await;
    let before = bed.deployment().await;
    let sets_before: Vec<String> = bed
        .replica_sets()
        .await
        .iter()
        .map(|rs| rs.name_any())
        .collect();
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
        "  strategy:\n    blueGreen: {autoPromotionEnabled: true, scaleDownDelaySeconds: 1}\n  progressDeadlineSeconds: 4\n  rollback: {auto: true}\n",
    );
    let observer = bed.observe().await;
    let out = bed
        .rollgate(&["apply", "-f", rollout.to_str().unwrap()])
        .await;
    let (_, pods) = observer.stop().await;
    assert_eq!(out.status.code(), Some(1), "rolled back");
    assert!(kube_bed::stdout(&out).contains("progressDeadlineSeconds"));
    bed.wait_deployment("version 1 at N", |d| {
        kube_bed::rolled_out(d, N, &image("1"))
    })
    .await;
    kube_bed::assert_at_rest(&bed).await;
    assert_eq!(
        serde_json::to_value(&bed.deployment().await.spec.unwrap().template).unwrap(),
        serde_json::to_value(&before.spec.unwrap().template).unwrap(),
        "the template is unchanged"
    );
    let sets_after: Vec<String> = bed
        .replica_sets()
        .await
        .iter()
        .map(|rs| rs.name_any())
        .collect();
    assert_eq!(
        sets_after, sets_before,
        "the preview's ReplicaSet is removed"
    );
    for name in ["web-active", "web-preview"] {
        let svc = services.get(name).await.expect("Service");
        assert_eq!(
            selector(&svc),
            [("app".to_string(), APP.to_string())].into(),
            "{name} is unpinned"
        );
    }
    assert!(pods.min_ready.expect("pods") >= N, "{pods:?}");
    assert!(
        pods.pods_by_image.contains_key(&image("3")),
        "the preview was tried: {pods:?}"
    );
    bed.finish().await;
}
