//! Pod-security warnings of `validate` and `plan` on a `manifest:` Deployment file (offline): each
//! names the file, line, column, field and container; `--strict` makes them errors, exit 2.

use super::support::{rollgate, workdir};

const ROLLOUT: &str = r#"apiVersion: rollgate.dev/v1
kind: Rollout
metadata:
  name: web
spec:
  version: "2.0.0"
  target:
    kubernetes: {namespace: default, deployment: web, manifest: deploy/web.yaml}
  strategy:
    rolling: {maxSurge: 1, maxUnavailable: 0}
"#;

/// Two containers: `web` privileged and without the rest, `sidecar` hardened but for a root user
/// at the pod level. `${HOME}` stays as written: rollgate does not template Deployment files.
const DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web}
    spec:
      securityContext:
        runAsNonRoot: false
      containers:
        - name: web
          image: registry/web:2.0.0
          args: ["${HOME}", "${1}"]
          securityContext:
            privileged: true
        - name: sidecar
          image: registry/proxy:1
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
"#;

const HARDENED: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web}
    spec:
      securityContext: {runAsNonRoot: true}
      containers:
        - name: web
          image: registry/web:2.0.0
          securityContext: {privileged: false, allowPrivilegeEscalation: false, readOnlyRootFilesystem: true}
"#;

const EXPECTED: [&str; 5] = [
    "deploy/web.yaml:11:23: spec.template.spec.securityContext.runAsNonRoot: container web: false (recommended: true)",
    "deploy/web.yaml:17:25: spec.template.spec.containers[0].securityContext.privileged: container web: true (recommended: false)",
    "deploy/web.yaml:16:11: spec.template.spec.containers[0].securityContext.allowPrivilegeEscalation: container web: not set (recommended: false)",
    "deploy/web.yaml:16:11: spec.template.spec.containers[0].securityContext.readOnlyRootFilesystem: container web: not set (recommended: true)",
    "deploy/web.yaml:11:23: spec.template.spec.securityContext.runAsNonRoot: container sidecar: false (recommended: true)",
];

/// No cluster: whatever kubeconfig the caller has is not used.
const OFFLINE: [(&str, &str); 1] = [("KUBECONFIG", "/nonexistent/rollgate-test-kubeconfig")];

fn dir(deployment: &str) -> tempfile::TempDir {
    let dir = workdir(&[("web.yaml", ROLLOUT)]);
    std::fs::create_dir(dir.path().join("deploy")).unwrap();
    std::fs::write(dir.path().join("deploy/web.yaml"), deployment).unwrap();
    dir
}

fn lines(stderr: &str, prefix: &str) -> Vec<String> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .map(str::to_string)
        .collect()
}

#[test]
fn validate_warns_at_each_field_and_container() {
    let dir = dir(DEPLOYMENT);
    let run = rollgate(dir.path(), &["validate", "-f", "web.yaml"], &OFFLINE);
    assert_eq!(run.code, 0, "warnings do not fail: {}", run.stderr);
    assert!(run.stdout.contains("web: valid"), "{}", run.stdout);
    assert_eq!(lines(&run.stderr, "warning: "), EXPECTED, "{}", run.stderr);
}

#[test]
fn strict_makes_them_errors_with_exit_code_2() {
    let dir = dir(DEPLOYMENT);
    let run = rollgate(
        dir.path(),
        &["validate", "-f", "web.yaml", "--strict"],
        &OFFLINE,
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert_eq!(run.stdout, "", "no `valid` line under --strict");
    let errors = lines(&run.stderr, "error: ");
    assert_eq!(errors[..5], EXPECTED, "{}", run.stderr);
    assert_eq!(
        errors[5], "5 pod-security warnings and --strict: nothing was done",
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("warning:"), "{}", run.stderr);
}

#[test]
fn plan_warns_on_stderr_and_keeps_its_json_clean() {
    let dir = dir(DEPLOYMENT);
    let args = ["plan", "-f", "web.yaml", "--replicas", "4", "-o", "json"];
    let run = rollgate(dir.path(), &args, &OFFLINE);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let plan: serde_json::Value = serde_json::from_str(&run.stdout).expect("stdout is the plan");
    assert_eq!(plan["replicas"], 4);
    assert_eq!(lines(&run.stderr, "warning: "), EXPECTED, "{}", run.stderr);

    let run = rollgate(dir.path(), &[&args[..], &["--strict"]].concat(), &OFFLINE);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert_eq!(run.stdout, "", "no plan under --strict");
    assert_eq!(lines(&run.stderr, "error: ").len(), 6, "{}", run.stderr);
}

#[test]
fn a_hardened_template_passes_strict_in_silence() {
    let dir = dir(HARDENED);
    for args in [
        &["validate", "-f", "web.yaml", "--strict"][..],
        &["plan", "-f", "web.yaml", "--replicas", "4", "--strict"][..],
    ] {
        let run = rollgate(dir.path(), args, &OFFLINE);
        assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
        assert_eq!(run.stderr, "", "{args:?}");
    }
}

#[test]
fn a_missing_or_broken_deployment_file_is_an_input_error() {
    let dir = workdir(&[("web.yaml", ROLLOUT)]);
    let run = rollgate(dir.path(), &["validate", "-f", "web.yaml"], &OFFLINE);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.starts_with(
            "error: web.yaml:8:65: spec.target.kubernetes.manifest: deploy/web.yaml: cannot read: "
        ),
        "{}",
        run.stderr
    );
    let dir = self::dir(&HARDENED.replace("selector:", "replicas: many\n  selector:"));
    let run = rollgate(dir.path(), &["validate", "-f", "web.yaml"], &OFFLINE);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert_eq!(
        run.stderr.trim_end(),
        "error: deploy/web.yaml:5:13: spec.replicas: invalid type: string \"many\", expected i32"
    );
}

#[test]
fn an_image_target_offline_says_its_live_template_was_not_checked() {
    let dir = workdir(&[(
        "web.yaml",
        &ROLLOUT.replace("manifest: deploy/web.yaml", "image: \"registry/web:2.0.0\""),
    )]);
    // Even --strict goes on: nothing was found, and `apply` checks the live template again.
    let run = rollgate(
        dir.path(),
        &["validate", "-f", "web.yaml", "--strict"],
        &OFFLINE,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    // Regression (issue 20): this note was 330 characters of error chain; now one short line.
    assert_eq!(
        run.stderr,
        "note: pod security not checked: deployment default/web not read (no kubeconfig: set KUBECONFIG or --context)\n"
    );
}

/// Regression (issue 20): with the cluster unreachable the note was 330 characters; one short line.
#[test]
fn an_unreachable_cluster_is_one_short_note() {
    let kubeconfig = "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"https://127.0.0.1:1\"}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\nusers: [{name: u, user: {token: x}}]\ncurrent-context: c\n";
    let dir = workdir(&[
        (
            "web.yaml",
            &ROLLOUT.replace("manifest: deploy/web.yaml", "image: \"registry/web:2.0.0\""),
        ),
        ("kubeconfig", kubeconfig),
    ]);
    let run = rollgate(
        dir.path(),
        &["validate", "-f", "web.yaml"],
        &[("KUBECONFIG", "kubeconfig")],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(
        run.stderr.starts_with(
            "note: pod security not checked: deployment default/web not read (cluster unreachable: "
        ),
        "{}",
        run.stderr
    );
    assert!(run.stderr.len() < 140, "short: {}", run.stderr);
}
