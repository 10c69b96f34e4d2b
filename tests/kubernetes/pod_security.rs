//! Pod-security warnings for an `image:` target come from the live Deployment's template:
//! `validate`, `plan` and `apply` print them naming the Deployment, container and field, and
//! `--strict` refuses with exit 2 before anything changes.

use kube::ResourceExt;
use kube::api::{Patch, PatchParams};

use crate::kube_bed::{self, Bed, image};

const N: i32 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_template_warnings_and_strict_refusal() {
    let Some(bed) = Bed::new("pod-security", N, "25%", "0").await else {
        return;
    };
    let rollout = bed.rollout(
        "web.yaml",
        "2",
        &format!("image: \"{}\"", image("2")),
        "  strategy:\n    rolling: {maxSurge: 1, maxUnavailable: 0}\n  progressDeadlineSeconds: 60\n",
    );
    let rollout = rollout.to_str().unwrap();
    let at = format!("deployment {}/web", bed.ns);
    let expected = [
        format!(
            "{at}: spec.template.spec.containers[0].securityContext.runAsNonRoot: container web: not set (recommended: true)"
        ),
        format!(
            "{at}: spec.template.spec.containers[0].securityContext.allowPrivilegeEscalation: container web: not set (recommended: false)"
        ),
        format!(
            "{at}: spec.template.spec.containers[0].securityContext.readOnlyRootFilesystem: container web: not set (recommended: true)"
        ),
    ];
    let warnings = |out: &std::process::Output, prefix: &str| -> Vec<String> {
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .map(str::to_string)
            .collect()
    };

    let out = bed.rollgate(&["validate", "-f", rollout]).await;
    assert!(out.status.success());
    assert_eq!(warnings(&out, "warning: "), expected);
    let out = bed
        .rollgate(&["plan", "-f", rollout, "--replicas", "2", "--strict"])
        .await;
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(warnings(&out, "error: ")[..3], expected);
    assert!(out.stdout.is_empty(), "no plan under --strict");

    // apply --strict: refused, nothing changed.
    let before = bed.deployment().await;
    let out = bed.rollgate(&["apply", "-f", rollout, "--strict"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(warnings(&out, "error: ")[..3], expected);
    assert_eq!(
        bed.deployment().await.resource_version(),
        before.resource_version(),
        "apply --strict changed the Deployment"
    );
    assert_eq!(bed.replica_sets().await.len(), 1, "no ReplicaSet was made");

    // Fixed in the live template, the warnings go: apply --strict runs.
    let hardened = serde_json::json!({"spec": {"template": {"spec": {
        "securityContext": {"runAsNonRoot": true},
        "containers": [{"name": "web", "securityContext": {
            "privileged": false, "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true}}]
    }}}});
    bed.deployments
        .patch("web", &PatchParams::default(), &Patch::Strategic(hardened))
        .await
        .expect("hardening the template");
    bed.wait_deployment("the hardened template rolled out", |d| {
        kube_bed::rolled_out(d, N, &image("1"))
    })
    .await;
    let out = bed.rollgate(&["apply", "-f", rollout, "--strict"]).await;
    assert!(out.status.success());
    assert!(warnings(&out, "warning: ").is_empty());
    bed.wait_deployment("version 2 rolled out", |d| {
        kube_bed::rolled_out(d, N, &image("2"))
    })
    .await;
    bed.finish().await;
}
