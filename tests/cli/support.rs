//! Running the real binary on manifests written to a temporary directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn rollgate(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rollgate"));
    cmd.current_dir(dir).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("rollgate runs");
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Writes `files` into a fresh directory and returns it.
pub fn workdir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}
