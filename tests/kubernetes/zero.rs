//! A Deployment with no pod to show: scaled to zero, its template is still what it will run. A
//! rollout writes the new template (there is nothing to wait on), and "nothing to do" is said only
//! when the template already declares the version, never because no pod was seen.

use crate::kube_bed::{self, Bed, image};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_zero_pods_a_rollout_still_writes_the_template() {
    let Some(bed) = Bed::new("zero", 1, "25%", "0").await else {
        return;
    };
    bed.kubectl(&["scale", "deployment/web", "--replicas=0"])
        .await;
    bed.wait_deployment("scaled to zero", |d| {
        let s = d.status.clone().unwrap_or_default();
        s.observed_generation >= d.metadata.generation && s.replicas.unwrap_or(0) == 0
    })
    .await;
    let rollout = bed.rollout(
        "web.yaml",
        "2",
        &format!("image: \"{}\"", image("2")),
        "  strategy:\n    rolling: {maxSurge: \"25%\", maxUnavailable: 0}\n  progressDeadlineSeconds: 60\n",
    );
    let apply = ["apply", "-f", rollout.to_str().unwrap()];
    let out = bed.rollgate(&apply).await;
    assert!(out.status.success(), "rollgate apply failed");
    let said = kube_bed::stdout(&out);
    assert!(
        !said.contains("nothing to do"),
        "zero pods taken for every pod on version 2: {said}"
    );
    let d = bed.deployment().await;
    let spec = d.spec.clone().expect("a spec");
    assert_eq!(
        kube_bed::template_image(&spec.template),
        Some(image("2").as_str()),
        "the template is not version 2"
    );
    assert_eq!(spec.replicas, Some(0), "the rollout changed N");
    kube_bed::assert_at_rest(&bed).await;

    // Now the template declares 2: the same apply has nothing to do.
    let again = bed.rollgate(&apply).await;
    assert!(again.status.success(), "the second apply failed");
    assert!(
        kube_bed::stdout(&again).contains("already declares 2 and runs no instance; nothing to do"),
        "the second apply did not say there was nothing to do"
    );
    // Scaled up, the Deployment's own controller makes pods of version 2.
    bed.kubectl(&["scale", "deployment/web", "--replicas=2"])
        .await;
    bed.wait_deployment("version 2 at two pods", |d| {
        kube_bed::rolled_out(d, 2, &image("2"))
    })
    .await;
    bed.finish().await;
}
