//! What people do with `kubectl` after rollgate (issue 16): the Deployment controller completes
//! its own rollouts afterwards, and nothing rollgate leaves on the Deployment or its ReplicaSets
//! is read differently by the controller or by `kubectl` than what they would leave themselves.

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, ResourceExt};

use crate::kube_bed::{self, Bed, image};

const N: i32 = 3;

fn replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

/// Every ReplicaSet carries the controller's replica annotations at `n` (on the active one at
/// least), and none of rollgate's.
async fn assert_annotations_as_the_controller_leaves_them(bed: &Bed, n: i32, surge: i32) {
    for rs in bed.replica_sets().await {
        let a = rs.annotations();
        let name = rs.name_any();
        for key in [
            "rollgate.dev/replicas",
            "rollgate.dev/hpa",
            "rollgate.dev/lent",
        ] {
            assert!(!a.contains_key(key), "{name} keeps {key}: {a:?}");
        }
        let desired = a.get("deployment.kubernetes.io/desired-replicas");
        if replicas(&rs) > 0 || desired.is_some() {
            assert_eq!(
                desired.map(String::as_str),
                Some(n.to_string().as_str()),
                "{name}: desired-replicas, which the controller compares with the Deployment's replicas on every sync: {a:?}"
            );
            assert_eq!(
                a.get("deployment.kubernetes.io/max-replicas")
                    .map(String::as_str),
                Some((n + surge).to_string().as_str()),
                "{name}: max-replicas: {a:?}"
            );
        }
    }
}

/// Issue 16, bug 1: after `rollgate rollback` (which reuses the kept ReplicaSet of version 1) the
/// Deployment controller rolled out nothing again: the reused set kept `desired-replicas: "0"`, a
/// scaling event on every sync. `kubectl set image` and `kubectl rollout restart` must complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_rollback_kubectl_set_image_and_rollout_restart_complete() {
    let Some(bed) = Bed::new("after-rollback", N, "1", "0").await else {
        return;
    };
    let rollout = bed.rollout(
        "web.yaml",
        "2",
        &format!("image: \"{}\"", image("2")),
        "  strategy:\n    rolling: {maxSurge: 1, maxUnavailable: 0}\n  progressDeadlineSeconds: 60\n",
    );
    let out = bed
        .rollgate(&["apply", "-f", rollout.to_str().unwrap()])
        .await;
    assert!(out.status.success(), "rollgate apply");
    let out = bed.rollgate(&["rollback", "web"]).await;
    assert!(out.status.success(), "rollgate rollback");
    bed.wait_deployment("back on version 1", |d| {
        kube_bed::rolled_out(d, N, &image("1"))
    })
    .await;
    kube_bed::assert_at_rest(&bed).await;
    assert_annotations_as_the_controller_leaves_them(&bed, N, 1).await;

    bed.kubectl(&[
        "set",
        "image",
        "deployment/web",
        &format!("web={}", image("3")),
    ])
    .await;
    bed.wait_deployment("kubectl set image rolled out by the controller", |d| {
        kube_bed::rolled_out(d, N, &image("3"))
    })
    .await;
    bed.kubectl(&["rollout", "restart", "deployment/web"]).await;
    bed.wait_deployment(
        "kubectl rollout restart rolled out by the controller",
        |d| kube_bed::rolled_out(d, N, &image("3")),
    )
    .await;
    bed.finish().await;
}

/// Issue 16, bug 3: the paused Deployment's `rollgate.dev/replicas` was copied by the controller
/// onto its ReplicaSet, and `kubectl rollout undo` copied it back onto the Deployment; after
/// `kubectl scale --replicas=5` the next rollgate rollout ended at the stale 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_rollout_undo_and_scale_the_next_rollout_keeps_the_new_count() {
    let Some(bed) = Bed::new("after-undo", N, "1", "0").await else {
        return;
    };
    let rest = "  strategy:\n    rolling: {maxSurge: 1, maxUnavailable: 0}\n  progressDeadlineSeconds: 60\n";
    let rollout = bed.rollout("web.yaml", "2", &format!("image: \"{}\"", image("2")), rest);
    let out = bed
        .rollgate(&["apply", "-f", rollout.to_str().unwrap()])
        .await;
    assert!(out.status.success(), "rollgate apply");
    assert_annotations_as_the_controller_leaves_them(&bed, N, 1).await;
    bed.kubectl(&["rollout", "undo", "deployment/web"]).await;
    bed.wait_deployment("kubectl rollout undo rolled out", |d| {
        kube_bed::rolled_out(d, N, &image("1"))
    })
    .await;
    let d = bed.deployment().await;
    assert!(
        !d.annotations().contains_key("rollgate.dev/replicas"),
        "kubectl rollout undo brought back rollgate's annotation: {:?}",
        d.annotations()
    );
    bed.kubectl(&["scale", "deployment/web", "--replicas=5"])
        .await;
    bed.wait_deployment("scaled to 5", |d| kube_bed::rolled_out(d, 5, &image("1")))
        .await;
    let rollout = bed.rollout("web.yaml", "3", &format!("image: \"{}\"", image("3")), rest);
    let out = bed
        .rollgate(&["apply", "-f", rollout.to_str().unwrap()])
        .await;
    assert!(out.status.success(), "rollgate apply");
    bed.wait_deployment("version 3 at the 5 kubectl scaled to", |d| {
        kube_bed::rolled_out(d, 5, &image("3"))
    })
    .await;
    kube_bed::assert_at_rest(&bed).await;
    assert_annotations_as_the_controller_leaves_them(&bed, 5, 1).await;
    bed.finish().await;
}

/// The Deployment rolled out at N on `image`, paused.
fn rolled_out_paused(d: &Deployment, image: &str) -> bool {
    let (Some(generation), Some(status), Some(spec)) =
        (d.metadata.generation, d.status.as_ref(), d.spec.as_ref())
    else {
        return false;
    };
    status.observed_generation >= Some(generation)
        && spec.paused == Some(true)
        && spec.replicas == Some(N)
        && kube_bed::template_image(&spec.template) == Some(image)
        && status.updated_replicas == Some(N)
        && status.replicas == Some(N)
        && status.available_replicas == Some(N)
}

async fn assert_no_rollgate_leftovers(bed: &Bed) {
    let d = bed.deployment().await;
    assert!(
        !d.annotations()
            .keys()
            .any(|k| k.starts_with("rollgate.dev/")),
        "rollgate annotations left on the Deployment: {:?}",
        d.annotations()
    );
    let holders: Api<ConfigMap> = Api::namespaced(bed.client.clone(), &bed.ns);
    assert!(
        holders.get_opt("web-rollgate").await.unwrap().is_none(),
        "the holder ConfigMap is left"
    );
}

/// Issue 16, bug 5: a paused Deployment. Without a staged change it is rolled (and rolled back)
/// and left paused; with a staged change (a template its controller has not rolled out) rollgate
/// refuses before changing anything, since both rolling and rolling back would release it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_deployment_stays_paused_and_one_with_a_staged_change_is_refused() {
    let Some(bed) = Bed::new("paused", N, "1", "0").await else {
        return;
    };
    bed.kubectl(&["rollout", "pause", "deployment/web"]).await;
    let rest = "  strategy:\n    rolling: {maxSurge: 1, maxUnavailable: 0}\n  progressDeadlineSeconds: 4\n  rollback: {auto: true}\n";
    let rollout = bed.rollout("web.yaml", "2", &format!("image: \"{}\"", image("2")), rest);
    let out = bed
        .rollgate(&["apply", "-f", rollout.to_str().unwrap()])
        .await;
    assert!(
        out.status.success(),
        "rollgate apply on a paused Deployment"
    );
    bed.wait_deployment("version 2 at N, still paused", |d| {
        rolled_out_paused(d, &image("2"))
    })
    .await;
    assert_no_rollgate_leftovers(&bed).await;

    // A failed rollout rolls back and leaves it paused too.
    kube_bed::template_file(
        bed.dir.path(),
        "3",
        &[(crate::cluster::NEVER_READY_LABEL, "true")],
        &[],
    );
    let rollout = bed.rollout("web.yaml", "3", "manifest: deployment-3.yaml", rest);
    let out = bed
        .rollgate(&["apply", "-f", rollout.to_str().unwrap()])
        .await;
    assert_eq!(out.status.code(), Some(1), "rolled back");
    assert!(kube_bed::stdout(&out).contains("rolled back"));
    bed.wait_deployment("version 2 back at N, still paused", |d| {
        rolled_out_paused(d, &image("2"))
    })
    .await;
    assert_no_rollgate_leftovers(&bed).await;

    // A staged change: refused, nothing changed.
    bed.kubectl(&[
        "set",
        "image",
        "deployment/web",
        &format!("web={}", image("9")),
    ])
    .await;
    let sets_before: Vec<(String, i32)> = bed
        .replica_sets()
        .await
        .iter()
        .map(|rs| (rs.name_any(), replicas(rs)))
        .collect();
    let rollout = bed.rollout("web.yaml", "4", &format!("image: \"{}\"", image("4")), rest);
    let out = bed
        .rollgate(&["apply", "-f", rollout.to_str().unwrap()])
        .await;
    let text = format!(
        "{}{}",
        kube_bed::stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "refused: {text}");
    assert!(
        text.contains("paused with a change of its pod template"),
        "the refusal says why: {text}"
    );
    let d = bed.deployment().await;
    let spec = d.spec.as_ref().unwrap();
    assert_eq!(spec.paused, Some(true), "still paused");
    assert_eq!(
        kube_bed::template_image(&spec.template),
        Some(image("9").as_str()),
        "the staged change is kept"
    );
    assert_no_rollgate_leftovers(&bed).await;
    let sets_after: Vec<(String, i32)> = bed
        .replica_sets()
        .await
        .iter()
        .map(|rs| (rs.name_any(), replicas(rs)))
        .collect();
    assert_eq!(sets_after, sets_before, "no ReplicaSet created or scaled");

    // Resumed, the controller releases the user's change as it would have.
    bed.kubectl(&["rollout", "resume", "deployment/web"]).await;
    bed.wait_deployment("the staged version 9 rolled out by the controller", |d| {
        kube_bed::rolled_out(d, N, &image("9"))
    })
    .await;
    bed.finish().await;
}

/// Issue 16, bug 6: a failure before the first step (an ambiguous `image:` target, a template the
/// API server rejects) leaves the Deployment as it was: not paused, no rollgate annotation, no
/// holder, no ReplicaSet; `kubectl set image` still rolls it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_before_the_first_step_leaves_the_deployment_as_it_was() {
    let mut web = kube_bed::deployment(N, "1", "0");
    let pod = web
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
        .unwrap();
    let mut sidecar = pod.containers[0].clone();
    sidecar.name = "sidecar".into();
    sidecar.image = Some("registry.invalid/rollgate/sidecar:1".into());
    pod.containers.push(sidecar);
    let Some(bed) = Bed::with("prepare-fails", web).await else {
        return;
    };
    let sets_before: Vec<String> = bed
        .replica_sets()
        .await
        .iter()
        .map(|rs| rs.name_any())
        .collect();
    let rest = "  strategy:\n    rolling: {maxSurge: 1, maxUnavailable: 0}\n  progressDeadlineSeconds: 30\n";
    let rollout = bed.rollout("web.yaml", "2", &format!("image: \"{}\"", image("2")), rest);
    let out = bed
        .rollgate(&["apply", "-f", rollout.to_str().unwrap()])
        .await;
    let text = format!(
        "{}{}",
        kube_bed::stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "an ambiguous target fails: {text}");
    assert!(
        text.contains("web, sidecar"),
        "the failure names the containers: {text}"
    );
    kube_bed::assert_at_rest(&bed).await;
    assert_no_rollgate_leftovers(&bed).await;
    // `validate` reads the live Deployment and says the same, as a usage error.
    let out = bed
        .rollgate(&["validate", "-f", rollout.to_str().unwrap()])
        .await;
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "validate: {text}");
    assert!(
        text.contains("web, sidecar"),
        "validate names the containers: {text}"
    );

    // A template the API server refuses (an invalid label value) fails after the pause: undone.
    kube_bed::template_file(bed.dir.path(), "5", &[("tier", "not valid!")], &[]);
    let rollout = bed.rollout("web.yaml", "5", "manifest: deployment-5.yaml", rest);
    let out = bed
        .rollgate(&["apply", "-f", rollout.to_str().unwrap()])
        .await;
    assert!(!out.status.success(), "a refused template fails");
    kube_bed::assert_at_rest(&bed).await;
    assert_no_rollgate_leftovers(&bed).await;
    let sets_after: Vec<String> = bed
        .replica_sets()
        .await
        .iter()
        .map(|rs| rs.name_any())
        .collect();
    assert_eq!(sets_after, sets_before, "no ReplicaSet left");

    bed.kubectl(&[
        "set",
        "image",
        "deployment/web",
        &format!("web={}", image("3")),
    ])
    .await;
    bed.wait_deployment("kubectl set image rolled out by the controller", |d| {
        kube_bed::rolled_out(d, N, &image("3"))
    })
    .await;
    bed.finish().await;
}

/// Issue 16, bugs 2 and 4: after `kubectl set image` the pods ran 6-hotfix while the template kept
/// `rollgate.dev/version: 5`, and `apply` of 5 said "every instance already runs 5; nothing to
/// do". The image that runs outranks an annotation kubectl does not update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kubectl_set_image_the_running_image_is_the_version() {
    let Some(bed) = Bed::new("after-set-image", N, "1", "0").await else {
        return;
    };
    let rollout = bed.rollout(
        "web.yaml",
        "5",
        &format!("image: \"{}\"", image("5")),
        "  strategy:\n    rolling: {maxSurge: 1, maxUnavailable: 0}\n  progressDeadlineSeconds: 60\n",
    );
    let out = bed
        .rollgate(&["apply", "-f", rollout.to_str().unwrap()])
        .await;
    assert!(out.status.success(), "rollgate apply 5");
    bed.kubectl(&[
        "set",
        "image",
        "deployment/web",
        &format!("web={}", image("6-hotfix")),
    ])
    .await;
    bed.wait_deployment("kubectl set image rolled out by the controller", |d| {
        kube_bed::rolled_out(d, N, &image("6-hotfix"))
    })
    .await;
    let out = bed
        .rollgate(&["apply", "-f", rollout.to_str().unwrap()])
        .await;
    let text = kube_bed::stdout(&out);
    assert!(out.status.success(), "rollgate apply 5 again: {text}");
    assert!(!text.contains("nothing to do"), "{text}");
    bed.wait_deployment("version 5 again", |d| {
        kube_bed::rolled_out(d, N, &image("5"))
    })
    .await;
    kube_bed::assert_at_rest(&bed).await;
    bed.finish().await;
}

/// Issue 16, bug 4: `rollback` restored the wrong image when several ReplicaSets carried the same
/// `rollgate.dev/version` (after `kubectl set image`, the template keeps rollgate's annotation, so
/// the 5 and the 7-hotfix ReplicaSets both said 5). After 5, kubectl's 7-hotfix and rollgate's 8,
/// `rollback` puts back 7-hotfix, what ran before 8, and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_restores_the_image_that_ran_when_replica_sets_share_a_version_annotation() {
    let Some(bed) = Bed::new("rollback-same-annotation", N, "1", "0").await else {
        return;
    };
    let rest = "  strategy:\n    rolling: {maxSurge: 1, maxUnavailable: 0}\n  progressDeadlineSeconds: 60\n";
    let five = bed.rollout(
        "web5.yaml",
        "5",
        &format!("image: \"{}\"", image("5")),
        rest,
    );
    let out = bed.rollgate(&["apply", "-f", five.to_str().unwrap()]).await;
    assert!(out.status.success(), "rollgate apply 5");
    bed.kubectl(&[
        "set",
        "image",
        "deployment/web",
        &format!("web={}", image("7-hotfix")),
    ])
    .await;
    bed.wait_deployment("kubectl set image 7-hotfix rolled out", |d| {
        kube_bed::rolled_out(d, N, &image("7-hotfix"))
    })
    .await;
    let eight = bed.rollout(
        "web8.yaml",
        "8",
        &format!("image: \"{}\"", image("8")),
        rest,
    );
    let out = bed
        .rollgate(&["apply", "-f", eight.to_str().unwrap()])
        .await;
    assert!(out.status.success(), "rollgate apply 8");
    let text = kube_bed::stdout(&out);
    assert!(
        text.contains("from 7-hotfix to 8"),
        "8 replaced 7-hotfix: {text}"
    );
    // Two ReplicaSets of the Deployment carry version 5 in their template: the premise of the bug.
    let fives = bed
        .replica_sets()
        .await
        .iter()
        .filter(|rs| {
            rs.spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .and_then(|t| t.metadata.as_ref())
                .and_then(|m| m.annotations.as_ref())
                .and_then(|a| a.get("rollgate.dev/version"))
                .map(String::as_str)
                == Some("5")
        })
        .count();
    assert!(
        fives >= 2,
        "two ReplicaSets annotated 5 (the 5 and the 7-hotfix): {fives}"
    );

    let out = bed.rollgate(&["rollback", "web"]).await;
    let text = kube_bed::stdout(&out);
    assert!(out.status.success(), "rollback: {text}");
    assert!(
        text.contains("from 8 to 7-hotfix"),
        "the rollback names 7-hotfix: {text}"
    );
    bed.wait_deployment("7-hotfix back on every pod", |d| {
        kube_bed::rolled_out(d, N, &image("7-hotfix"))
    })
    .await;
    for p in bed
        .pods
        .list(&Default::default())
        .await
        .expect("listing pods")
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        assert_eq!(
            kube_bed::pod_image(p),
            Some(image("7-hotfix").as_str()),
            "every pod runs 7-hotfix"
        );
    }
    kube_bed::assert_at_rest(&bed).await;
    let status = kube_bed::stdout(&bed.rollgate(&["status", "web"]).await);
    assert!(
        status.contains("7-hotfix"),
        "status tells the truth: {status}"
    );
    // And the controller rolls out the next change itself.
    bed.kubectl(&[
        "set",
        "image",
        "deployment/web",
        &format!("web={}", image("9")),
    ])
    .await;
    bed.wait_deployment("kubectl set image 9 rolled out", |d| {
        kube_bed::rolled_out(d, N, &image("9"))
    })
    .await;
    bed.finish().await;
}
