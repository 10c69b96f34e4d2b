//! `apply --dry-run` on the real control plane: the access reviews and the Deployment are read,
//! the plan printed, and nothing changes: the template, the ReplicaSets, the state dir.

use crate::kube_bed::{self, Bed, image, template_image};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_reads_the_cluster_and_changes_nothing() {
    let Some(bed) = Bed::new("dry-run", 2, "25%", "0").await else {
        return;
    };
    let rollout = bed.rollout(
        "web.yaml",
        "2",
        &format!("image: \"{}\"", image("2")),
        "  strategy:\n    rolling: {maxSurge: 1, maxUnavailable: 0}\n  progressDeadlineSeconds: 60\n",
    );
    let sets_before = bed.replica_sets().await.len();
    let out = bed
        .rollgate(&["apply", "--dry-run", "-f", rollout.to_str().unwrap()])
        .await;
    let stdout = kube_bed::stdout(&out);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("the kubeconfig's user may do every verb the rollout needs; the Deployment has 2 replicas"),
        "{stdout}"
    );
    assert!(
        stdout.contains("web: dry run: ready to apply, nothing changed"),
        "{stdout}"
    );
    let d = bed.deployment().await;
    let template = &d.spec.as_ref().unwrap().template;
    assert_eq!(template_image(template), Some(image("1").as_str()));
    assert_eq!(bed.replica_sets().await.len(), sets_before);
    assert!(
        !bed.path("state").join("web").exists(),
        "a dry run wrote state"
    );

    // A Deployment that is not there: the reason, exit 1, still nothing written.
    let missing = bed.rollout(
        "missing.yaml",
        "2",
        &format!("image: \"{}\"", image("2")),
        "  strategy:\n    rolling: {maxSurge: 1, maxUnavailable: 0}\n",
    );
    let text = std::fs::read_to_string(&missing)
        .unwrap()
        .replace("deployment: web", "deployment: nosuch");
    std::fs::write(&missing, text).unwrap();
    let out = bed
        .rollgate(&["apply", "--dry-run", "-f", missing.to_str().unwrap()])
        .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    assert!(
        !bed.path("state").join("web").exists(),
        "a dry run wrote state"
    );
    bed.finish().await;
}
