//! A traffic-weighted canary through the Gateway API: the standard channel's HTTPRoute CRD (from
//! the pinned `sigs.k8s.io/gateway-api` Go module) installed in the test API server, and every
//! weight rollgate writes to a route's backendRefs watched. No Gateway data plane runs here: the
//! objects are verified, not the traffic (README "Traffic-weighted canary").

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DynamicObject, PostParams};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tokio::sync::OnceCell;

use crate::kube_bed::{self, Bed, image};

/// The Gateway API release whose standard-channel HTTPRoute CRD the tests install.
const GATEWAY_API: &str = "v1.2.1";
const N: i32 = 10;
const ROUTING: &str = "      trafficRouting:\n        gatewayAPI: {httpRoute: web, stableService: web-stable, canaryService: web-canary}\n";

static CRD: OnceCell<()> = OnceCell::const_new();

/// The HTTPRoute CRD of `GATEWAY_API`, read from the Go module cache (`go mod download`, through
/// the Go module proxy the cluster's components are built from).
fn http_route_crd() -> CustomResourceDefinition {
    let out = std::process::Command::new("go")
        .args(["mod", "download", "-json"])
        .arg(format!("sigs.k8s.io/gateway-api@{GATEWAY_API}"))
        .env("GOFLAGS", "-mod=mod")
        .current_dir(std::env::temp_dir())
        .output()
        .expect("running go mod download");
    assert!(
        out.status.success(),
        "go mod download sigs.k8s.io/gateway-api@{GATEWAY_API}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("go mod JSON");
    let dir = info["Dir"].as_str().expect("the module's directory");
    let path = format!("{dir}/config/crd/standard/gateway.networking.k8s.io_httproutes.yaml");
    let text = std::fs::read_to_string(&path).expect("reading the HTTPRoute CRD");
    serde_yaml::from_str(&text).expect("the HTTPRoute CRD parses")
}

/// Installs the CRD once per test process (and once per cluster: an existing one is kept) and
/// waits until the API server serves HTTPRoutes.
async fn install_crd(client: &kube::Client) {
    CRD.get_or_init(|| async {
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        let crd = http_route_crd();
        match crds.create(&PostParams::default(), &crd).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => panic!("creating the HTTPRoute CRD: {e}"),
        }
        let established = kube::runtime::conditions::is_crd_established();
        tokio::time::timeout(
            Duration::from_secs(60),
            kube::runtime::wait::await_condition(crds, &crd.name_any(), established),
        )
        .await
        .expect("the HTTPRoute CRD established within 60s")
        .expect("watching the CRD");
    })
    .await;
}

fn routes(bed: &Bed) -> Api<DynamicObject> {
    Api::namespaced_with(
        bed.client.clone(),
        &bed.ns,
        &rollgate::target::kubernetes::http_route_resource(),
    )
}

/// Services `web-stable` and `web-canary` selecting the app, and HTTPRoute `web` naming both
/// (the canary at weight 0) beside a third backend rollgate must leave alone.
async fn set_up(bed: &Bed) {
    install_crd(&bed.client).await;
    let services: Api<Service> = Api::namespaced(bed.client.clone(), &bed.ns);
    for name in ["web-stable", "web-canary", "other"] {
        kube_bed::service(&services, name).await;
    }
    let route: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "web"},
        "spec": {
            "parentRefs": [{"name": "gateway"}],
            "rules": [
                {"backendRefs": [
                    {"name": "web-stable", "port": 80},
                    {"name": "web-canary", "port": 80, "weight": 0}
                ]},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/other"}}],
                 "backendRefs": [{"name": "other", "port": 80, "weight": 3}]}
            ]
        }
    }))
    .expect("an HTTPRoute");
    routes(bed)
        .create(&PostParams::default(), &route)
        .await
        .expect("creating the HTTPRoute (the CRD is served)");
}

/// (stable, canary) weights of the route's first rule, and the other rule's weight.
fn weights(route: &DynamicObject) -> ((u64, u64), u64) {
    let v = serde_json::to_value(route).unwrap();
    let refs = &v["spec"]["rules"][0]["backendRefs"];
    let w = |i: usize| refs[i]["weight"].as_u64().unwrap_or(1);
    let other = v["spec"]["rules"][1]["backendRefs"][0]["weight"]
        .as_u64()
        .unwrap_or(1);
    ((w(0), w(1)), other)
}

async fn now(bed: &Bed) -> (u64, u64) {
    weights(&routes(bed).get("web").await.expect("the route")).0
}

/// Every distinct (stable, canary) split the route goes through, with the resourceVersion of the
/// change (one etcd here: revisions order changes across objects).
type Seen = Arc<Mutex<Vec<((u64, u64), u64)>>>;

fn watch_route(bed: &Bed) -> (Seen, tokio::task::JoinHandle<()>) {
    let seen: Seen = Arc::default();
    let api = routes(bed);
    let into = seen.clone();
    let task = tokio::spawn(async move {
        let config = watcher::Config::default().fields("metadata.name=web");
        let mut events = watcher(api, config).boxed();
        while let Some(e) = events.next().await {
            if let Ok(watcher::Event::Apply(r) | watcher::Event::InitApply(r)) = e {
                let (split, other) = weights(&r);
                assert_eq!(other, 3, "the other rule keeps its weight");
                let rv = r
                    .resource_version()
                    .unwrap_or_default()
                    .parse()
                    .unwrap_or(0);
                let mut seen = into.lock().unwrap();
                if seen.last().map(|(s, _)| *s) != Some(split) {
                    seen.push((split, rv));
                }
            }
        }
    });
    (seen, task)
}

/// The canary ReplicaSet's spec.replicas over time (0 once deleted), with resourceVersions.
type Sizes = Arc<Mutex<Vec<(i32, u64)>>>;

fn watch_canary(bed: &Bed) -> (Sizes, tokio::task::JoinHandle<()>) {
    let seen: Sizes = Arc::default();
    let api = bed.replica_sets.clone();
    let into = seen.clone();
    let canary = image("2");
    let task = tokio::spawn(async move {
        let mut events = watcher(api, watcher::Config::default()).boxed();
        while let Some(e) = events.next().await {
            let (rs, gone) = match e {
                Ok(watcher::Event::Apply(rs) | watcher::Event::InitApply(rs)) => (rs, false),
                Ok(watcher::Event::Delete(rs)) => (rs, true),
                _ => continue,
            };
            if rs_image(&rs) == Some(canary.as_str()) {
                let n = match gone {
                    true => 0,
                    false => rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0),
                };
                let rv = rs
                    .resource_version()
                    .unwrap_or_default()
                    .parse()
                    .unwrap_or(0);
                let mut seen = into.lock().unwrap();
                if seen.last().map(|(x, _)| *x) != Some(n) {
                    seen.push((n, rv));
                }
            }
        }
    });
    (seen, task)
}

fn rs_image(rs: &ReplicaSet) -> Option<&str> {
    kube_bed::template_image(rs.spec.as_ref()?.template.as_ref()?)
}

fn selector(svc: &Service) -> BTreeMap<String, String> {
    svc.spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default()
}

/// The pod-template-hash each Service is pinned to: (stable, canary).
async fn pins(bed: &Bed) -> (Option<String>, Option<String>) {
    let services: Api<Service> = Api::namespaced(bed.client.clone(), &bed.ns);
    let pin = |s: Service| selector(&s).get("pod-template-hash").cloned();
    (
        pin(services.get("web-stable").await.unwrap()),
        pin(services.get("web-canary").await.unwrap()),
    )
}

/// The hash of the ReplicaSet running `version`'s image.
async fn hash_of(bed: &Bed, version: &str) -> Option<String> {
    bed.replica_sets()
        .await
        .iter()
        .find(|rs| rs_image(rs) == Some(image(version).as_str()))
        .and_then(|rs| rs.labels().get("pod-template-hash").cloned())
}

/// (stable, canary) replicas: the Deployment's own ReplicaSets, and rollgate's.
async fn replicas(bed: &Bed) -> (i32, i32) {
    let mut out = (0, 0);
    for rs in bed.replica_sets().await {
        let n = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        match rs_image(&rs) == Some(image("2").as_str()) {
            true => out.1 += n,
            false => out.0 += n,
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_canary_writes_1_10_50_keeps_them_through_pauses_and_rests_at_100_0() {
    let Some(bed) = Bed::new("traffic-weights", N, "25%", "0").await else {
        return;
    };
    set_up(&bed).await;
    let stable = hash_of(&bed, "1").await;
    let rollout = bed.rollout(
        "web.yaml",
        "2",
        &format!("image: \"{}\"", image("2")),
        &format!(
            "  strategy:\n    canary:\n      maxSurge: 1\n      maxUnavailable: 0\n{ROUTING}      steps: [{{setWeight: 1}}, {{pause: {{}}}}, {{setWeight: 10}}, {{pause: {{}}}}, {{setWeight: 50}}, {{pause: {{}}}}]\n  progressDeadlineSeconds: 60\n"
        ),
    );
    let rollout = rollout.to_str().unwrap();
    let plan = bed
        .rollgate(&["plan", "-f", rollout, "--replicas", &N.to_string()])
        .await;
    assert!(plan.status.success());
    let table = kube_bed::stdout(&plan);
    assert!(table.contains("TRAFFIC"), "{table}");
    for split in ["99/1", "90/10", "50/50"] {
        assert!(table.contains(split), "the plan shows {split}: {table}");
    }
    let (seen, watching) = watch_route(&bed);

    let out = bed.rollgate(&["apply", "-f", rollout]).await;
    assert_eq!(out.status.code(), Some(3), "paused at 1%");
    assert_eq!(now(&bed).await, (99, 1));
    let canary = hash_of(&bed, "2").await;
    assert!(canary.is_some() && canary != stable);
    assert_eq!(pins(&bed).await, (stable.clone(), canary.clone()), "pinned");
    // 1% of 10 replicas: one canary pod beside all 10 stable ones (maxSurge 1).
    assert_eq!(replicas(&bed).await, (10, 1));
    let status = kube_bed::stdout(&bed.rollgate(&["status", "web"]).await);
    assert!(
        status.contains("httproute/web stable 99% canary 1%"),
        "{status}"
    );
    let json = bed.rollgate(&["status", "web", "-o", "json"]).await;
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).expect("status JSON");
    assert_eq!(json["traffic"], "httproute/web stable 99% canary 1%");
    // Kept through the pause.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(now(&bed).await, (99, 1), "1% kept through the pause");

    let out = bed.rollgate(&["promote", "web"]).await;
    assert_eq!(out.status.code(), Some(3), "paused at 10%");
    assert_eq!(now(&bed).await, (90, 10));
    assert_eq!(replicas(&bed).await, (9, 1));
    let out = bed.rollgate(&["promote", "web"]).await;
    assert_eq!(out.status.code(), Some(3), "paused at 50%");
    assert_eq!(now(&bed).await, (50, 50));
    assert_eq!(replicas(&bed).await, (5, 5));
    assert_eq!(pins(&bed).await, (stable.clone(), canary.clone()));

    let out = bed.rollgate(&["promote", "web"]).await;
    assert!(out.status.success(), "promoted to the end");
    bed.wait_deployment("version 2 rolled out", |d| {
        kube_bed::rolled_out(d, N, &image("2"))
    })
    .await;
    kube_bed::assert_at_rest(&bed).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    watching.abort();
    let splits: Vec<(u64, u64)> = seen.lock().unwrap().iter().map(|(s, _)| *s).collect();
    assert_eq!(
        splits,
        [(1, 0), (99, 1), (90, 10), (50, 50), (0, 100), (100, 0)],
        "exactly the planned weights, then all to the canary, then at rest on the stable Service"
    );
    assert_eq!(pins(&bed).await, (None, None), "unpinned at rest");
    bed.finish().await;
}

/// Rolls to a 10% canary that `end` (an abort, or a failing check) rolls back, and checks that
/// the route went back to 100/0 before the canary ReplicaSet was scaled down, and rests unpinned.
async fn back_to_stable_first(purpose: &str, extra: &str, end: impl AsyncFnOnce(&Bed, &str)) {
    let Some(bed) = Bed::new(purpose, N, "25%", "0").await else {
        return;
    };
    set_up(&bed).await;
    let rollout = bed.rollout(
        "web.yaml",
        "2",
        &format!("image: \"{}\"", image("2")),
        &format!(
            "  strategy:\n    canary:\n      maxSurge: 1\n      maxUnavailable: 0\n{ROUTING}      steps: [{{setWeight: 10}}, {{pause: {{}}}}]\n  progressDeadlineSeconds: 60\n{extra}"
        ),
    );
    let (route_seen, route_task) = watch_route(&bed);
    let (canary_seen, canary_task) = watch_canary(&bed);
    end(&bed, rollout.to_str().unwrap()).await;
    bed.wait_deployment("version 1 at N", |d| {
        kube_bed::rolled_out(d, N, &image("1"))
    })
    .await;
    kube_bed::assert_at_rest(&bed).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    route_task.abort();
    canary_task.abort();
    assert_eq!(now(&bed).await, (100, 0), "all traffic on stable");
    assert_eq!(pins(&bed).await, (None, None), "unpinned at rest");
    let route = route_seen.lock().unwrap().clone();
    let canary = canary_seen.lock().unwrap().clone();
    let splits: Vec<(u64, u64)> = route.iter().map(|(s, _)| *s).collect();
    assert_eq!(splits, [(1, 0), (90, 10), (100, 0)], "{route:?}");
    let back = route.last().unwrap().1;
    let (peak, _) = canary.iter().copied().max().expect("a canary ReplicaSet");
    assert_eq!(peak, 1, "one canary pod at 10% of 10: {canary:?}");
    let top = canary.iter().position(|(n, _)| *n == peak).unwrap();
    let scaled_down = canary[top..]
        .iter()
        .find(|(n, _)| *n < peak)
        .map(|(_, rv)| *rv)
        .expect("the canary ReplicaSet scaled down or deleted");
    assert!(
        back < scaled_down,
        "100% on stable (rv {back}) before the canary is scaled down (rv {scaled_down}): {route:?} {canary:?}"
    );
    bed.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_puts_all_traffic_on_stable_before_scaling_the_canary_down() {
    back_to_stable_first("traffic-abort", "", async |bed: &Bed, rollout: &str| {
        let out = bed.rollgate(&["apply", "-f", rollout]).await;
        assert_eq!(out.status.code(), Some(3), "paused at the manual pause");
        assert_eq!(now(bed).await, (90, 10));
        let out = bed.rollgate(&["abort", "web"]).await;
        assert!(out.status.code().is_some(), "abort ran: {:?}", out.status);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_check_puts_all_traffic_on_stable_before_scaling_the_canary_down() {
    back_to_stable_first(
        "traffic-check",
        "  checks:\n    - {name: errors, command: {run: [sh, -c, \"exit 1\"]}, runOn: cli, interval: 200ms, failureLimit: 1}\n  rollback: {auto: true}\n",
        async |bed: &Bed, rollout: &str| {
            let out = bed.rollgate(&["apply", "-f", rollout]).await;
            assert_ne!(out.status.code(), Some(0), "the check failed the rollout");
            assert!(kube_bed::stdout(&out).contains("errors"));
        },
    )
    .await;
}

/// The access review asks for the HTTPRoute verbs only when a manifest uses gatewayAPI: the
/// ServiceAccount of rbac.yaml without its optional `rollgate-traffic` binding is refused before
/// anything changes, naming the verb; with it, the canary runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_review_asks_for_httproutes_only_when_a_manifest_routes() {
    use super::rbac::{client_for, kubectl, rollgate_as, service_account, until_may};
    let Some(bed) = Bed::new("traffic-rbac", 2, "25%", "0").await else {
        return;
    };
    set_up(&bed).await;
    let (kubeconfig, _) = service_account(&bed).await;
    let sa = client_for(&kubeconfig).await;
    kubectl(
        &bed,
        &["-n", &bed.ns, "delete", "rolebinding", "rollgate-traffic"],
        None,
    )
    .await;
    let patch = ("gateway.networking.k8s.io", "httproutes", "patch");
    until_may(&sa, &bed.ns, patch, false).await;
    let routed = bed.rollout(
        "routed.yaml",
        "2",
        &format!("image: \"{}\"", image("2")),
        &format!(
            "  strategy:\n    canary:\n      maxSurge: 1\n      maxUnavailable: 0\n{ROUTING}      steps: [{{setWeight: 10}}, {{pause: {{}}}}]\n  progressDeadlineSeconds: 60\n"
        ),
    );
    let before = bed.deployment().await;
    let out = rollgate_as(
        &bed,
        &kubeconfig,
        &["apply", "-f", routed.to_str().unwrap()],
    )
    .await;
    assert_ne!(out.status.code(), Some(0));
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    for verb in [
        "get httproutes.gateway.networking.k8s.io",
        "patch httproutes.gateway.networking.k8s.io",
    ] {
        assert!(said.contains(verb), "names {verb}: {said}");
    }
    assert_eq!(
        bed.deployment().await.metadata.resource_version,
        before.metadata.resource_version,
        "nothing changed"
    );
    assert_eq!(now(&bed).await, (1, 0), "the route untouched");

    // A manifest without gatewayAPI does not ask for them (a plain canary to the same point).
    let plain = bed.rollout(
        "plain.yaml",
        "2",
        &format!("image: \"{}\"", image("2")),
        "  strategy:\n    canary: {maxSurge: 1, maxUnavailable: 0, steps: [{setWeight: 50}, {pause: {}}]}\n  progressDeadlineSeconds: 60\n",
    );
    let out = rollgate_as(&bed, &kubeconfig, &["apply", "-f", plain.to_str().unwrap()]).await;
    assert_eq!(
        out.status.code(),
        Some(3),
        "a plain canary runs with the base Role"
    );
    let out = rollgate_as(&bed, &kubeconfig, &["abort", "web"]).await;
    assert!(out.status.code().is_some());
    bed.wait_deployment("version 1 at N", |d| {
        kube_bed::rolled_out(d, 2, &image("1"))
    })
    .await;

    // The optional binding back: the routed canary goes through.
    service_account(&bed).await;
    until_may(&sa, &bed.ns, patch, true).await;
    let out = rollgate_as(
        &bed,
        &kubeconfig,
        &["apply", "-f", routed.to_str().unwrap()],
    )
    .await;
    assert_eq!(out.status.code(), Some(3), "paused at 10%");
    assert_eq!(now(&bed).await, (90, 10));
    let out = rollgate_as(&bed, &kubeconfig, &["abort", "web"]).await;
    assert!(out.status.code().is_some());
    assert_eq!(now(&bed).await, (100, 0));
    bed.finish().await;
}

/// A route that does not name the canary Service, or a route that is missing, is refused before
/// anything changes, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_without_the_canary_service_is_refused_before_anything_changes() {
    let Some(bed) = Bed::new("traffic-refused", 2, "25%", "0").await else {
        return;
    };
    set_up(&bed).await;
    for (routing, named) in [
        (
            "gatewayAPI: {httpRoute: web, stableService: web-stable, canaryService: web-gone}",
            "no backendRef naming Service \"web-gone\"",
        ),
        (
            "gatewayAPI: {httpRoutes: [web, missing], stableService: web-stable, canaryService: web-canary}",
            "HTTPRoute missing",
        ),
    ] {
        let rollout = bed.rollout(
            "web.yaml",
            "2",
            &format!("image: \"{}\"", image("2")),
            &format!(
                "  strategy:\n    canary:\n      maxUnavailable: 1\n      trafficRouting: {{{routing}}}\n      steps: [{{setWeight: 10}}, {{pause: {{}}}}]\n"
            ),
        );
        let before = bed.deployment().await;
        let out = bed
            .rollgate(&["apply", "-f", rollout.to_str().unwrap()])
            .await;
        assert_eq!(out.status.code(), Some(1), "refused");
        let said = format!(
            "{}{}",
            kube_bed::stdout(&out),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            said.contains(named) && said.contains("nothing was changed"),
            "{said}"
        );
        assert_eq!(
            bed.deployment().await.metadata.resource_version,
            before.metadata.resource_version,
            "the Deployment untouched"
        );
        assert_eq!(bed.replica_sets().await.len(), 1, "no ReplicaSet made");
        assert_eq!(now(&bed).await, (1, 0), "the route untouched");
    }
    bed.finish().await;
}
