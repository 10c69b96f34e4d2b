//! Running the real `rollgate` binary on a manifest written to a temporary directory.

use std::process::Command;

pub const BASE: &str = r#"apiVersion: rollgate.dev/v1
kind: Rollout
metadata:
  name: web
spec:
  version: "2.0.0"
  target:
    kubernetes: {namespace: default, deployment: web}
  strategy:
    rolling:
      maxSurge: 1
      maxUnavailable: 0
"#;

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// `rollgate ARGS` in a fresh directory holding `web.yaml` = `manifest`.
pub fn rollgate(manifest: &str, args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("web.yaml"), manifest).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rollgate"))
        .current_dir(dir.path())
        .args(args)
        .output()
        .expect("rollgate runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `rollgate plan -f web.yaml --replicas N -o json`, which must succeed.
pub fn plan_json(manifest: &str, n: u32) -> serde_json::Value {
    let run = rollgate(
        manifest,
        &[
            "plan",
            "-f",
            "web.yaml",
            "--replicas",
            &n.to_string(),
            "-o",
            "json",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    serde_json::from_str(&run.stdout).unwrap()
}

/// The error line of a manifest that `plan` must refuse as bad input (exit code 2).
pub fn input_error(manifest: &str) -> String {
    let run = rollgate(
        manifest,
        &["plan", "-f", "web.yaml", "--replicas", "4", "-o", "json"],
    );
    assert_eq!(run.code, 2, "stdout: {} stderr: {}", run.stdout, run.stderr);
    assert_eq!(run.stdout, "");
    run.stderr.trim_end().to_string()
}
