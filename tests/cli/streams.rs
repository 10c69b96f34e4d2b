//! Output and exit-code contracts on a real rollout: agents on loopback (mTLS), the real demo
//! service, and the real `rollgate` binary with its stdout a pipe.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rollgate::cli::demo::{LocalFleet, package_demo};

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn rollgate(state: &Path, args: &[&str]) -> Out {
    let out = Command::new(env!("CARGO_BIN_EXE_rollgate"))
        .args(args)
        .env("ROLLGATE_STATE", state)
        .env("ROLLGATE_USER", "ana")
        .output()
        .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs rollgate with its stdout a pipe whose reading end is already closed: every write to
/// stdout meets a broken pipe. Returns the exit code and stderr.
fn rollgate_closed_stdout(state: &Path, args: &[&str]) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rollgate"))
        .args(args)
        .env("ROLLGATE_STATE", state)
        .env("ROLLGATE_USER", "ana")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every stdout line is one JSON object; returns them.
fn json_lines(out: &Out) -> Vec<serde_json::Value> {
    assert!(!out.stdout.is_empty(), "no JSON on stdout: {}", out.stderr);
    out.stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}\n{}", out.stdout));
            assert!(v.is_object(), "{l}");
            v
        })
        .collect()
}

fn manifest(fleet: &LocalFleet, version: &str, artifact: &Path, steps: &str) -> String {
    format!(
        "apiVersion: rollgate.dev/v1\nkind: Rollout\nmetadata: {{name: web}}\nspec:\n  version: \"{version}\"\n  target:\n    hosts:\n      service: web\n      artifact: {{file: \"{artifact}\"}}\n      auth: {auth}\n      hosts:\n{hosts}  strategy:\n    canary:\n      maxUnavailable: 1\n      steps:\n{steps}  checks:\n    - name: health\n      http: {{url: \"http://127.0.0.1:{{port}}/health\"}}\n      interval: 100ms\n  progressDeadlineSeconds: 20\n",
        artifact = artifact.display(),
        auth = fleet.auth_yaml(),
        hosts = fleet.hosts_yaml("        "),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_output_exit_codes_and_closed_pipes() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = LocalFleet::start(dir.path(), 2, 1).await.unwrap();
    let artifacts = dir.path().join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let v1 = package_demo(&artifacts, "1.0.0", "").unwrap();
    let v2 = package_demo(&artifacts, "2.0.0", "").unwrap();
    let v3 = package_demo(&artifacts, "3.0.0", "").unwrap();
    let state = dir.path().join("state");
    let all = "        - setWeight: 100\n";
    let m1 = write(dir.path(), "v1.yaml", &manifest(&fleet, "1.0.0", &v1, all));
    let m2 = write(
        dir.path(),
        "v2.yaml",
        &manifest(
            &fleet,
            "2.0.0",
            &v2,
            "        - setWeight: 50\n        - pause: {}\n",
        ),
    );
    let m3 = write(dir.path(), "v3.yaml", &manifest(&fleet, "3.0.0", &v3, all));
    let run = |args: Vec<String>| {
        let state = state.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            rollgate(&state, &args)
        })
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    // Regression (issue 20): `apply -o json` ended its stdout with `web: succeeded in 1.6s`.
    let out = run(args(&["apply", "-o", "json", "-f", m1.to_str().unwrap()]))
        .await
        .unwrap();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let events = json_lines(&out);
    assert_eq!(events[0]["event"], "started", "{}", out.stdout);
    assert_eq!(events.last().unwrap()["event"], "finished");
    assert!(out.stderr.contains("web: succeeded in "), "{}", out.stderr);

    // `status` exits with the rollout's state; `-o json` is one object.
    let out = run(args(&["status", "web", "-o", "json"])).await.unwrap();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let status = json_lines(&out);
    assert_eq!(status.len(), 1, "{}", out.stdout);
    assert_eq!(status[0]["state"], "succeeded");
    assert_eq!(status[0]["rollout"]["to"], "1.0.0");
    assert_eq!(
        status[0]["instances"][0]["version"], "1.0.0",
        "{}",
        out.stdout
    );

    // `-o yaml` says the same as `-o json` (issue 20: one `-o` on every command).
    let out = run(args(&["status", "web", "-o", "yaml"])).await.unwrap();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let y: serde_json::Value = serde_yaml::from_str(&out.stdout).unwrap();
    assert_eq!(y["state"], "succeeded", "{}", out.stdout);
    assert_eq!(y["instances"], status[0]["instances"]);
    let json = run(args(&["history", "web", "-o", "json"])).await.unwrap();
    let yaml = run(args(&["history", "web", "-o", "yaml"])).await.unwrap();
    assert_eq!(yaml.code, 0, "{}", yaml.stderr);
    let j: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let y: serde_json::Value = serde_yaml::from_str(&yaml.stdout).unwrap();
    assert_eq!(j, y);

    // `pause` with nothing running says so and exits 1.
    let out = run(args(&["pause", "web"])).await.unwrap();
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains("no rollout is running; nothing to pause"),
        "{}",
        out.stderr
    );
    // `history` of an unknown app exits 1, as `status` does.
    for cmd in ["history", "status"] {
        let out = run(args(&[cmd, "nope"])).await.unwrap();
        assert_eq!(out.code, 1, "{cmd}: {}{}", out.stdout, out.stderr);
        assert!(out.stderr.contains("nope"), "{}", out.stderr);
    }

    // A paused canary: apply and status exit 3; a successful abort exits 0, and then status
    // exits 1 (aborted), with `-o json` still JSON only.
    let out = run(args(&["apply", "-o", "json", "-f", m2.to_str().unwrap()]))
        .await
        .unwrap();
    assert_eq!(out.code, 3, "{}", out.stderr);
    json_lines(&out);
    assert!(out.stderr.contains("web: paused"), "{}", out.stderr);
    let out = run(args(&["status", "web"])).await.unwrap();
    assert_eq!(out.code, 3, "paused: {}", out.stdout);
    let out = run(args(&["status", "web", "-o", "json"])).await.unwrap();
    assert_eq!(json_lines(&out)[0]["state"], "paused");
    let out = run(args(&["abort", "web", "-o", "json"])).await.unwrap();
    assert_eq!(out.code, 0, "a successful abort exits 0: {}", out.stderr);
    let events = json_lines(&out);
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "finished" && e["outcome"] == "aborted"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("aborted and rolled back"),
        "{}",
        out.stderr
    );
    let out = run(args(&["status", "web"])).await.unwrap();
    assert_eq!(out.code, 1, "aborted: {}", out.stdout);

    // `rollback --to` a version never deployed says so.
    let out = run(args(&["rollback", "web", "--to", "9.9.9"]))
        .await
        .unwrap();
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("version 9.9.9 was never deployed"),
        "{}",
        out.stderr
    );

    // Regression (issue 20): a closed stdout panicked (exit 101, "failed printing to stdout").
    // A rollout whose reader went away goes on to the end and exits with its own code.
    let state2 = state.clone();
    let m3 = m3.to_str().unwrap().to_string();
    let (code, stderr) = tokio::task::spawn_blocking(move || {
        rollgate_closed_stdout(&state2, &["apply", "-o", "json", "-f", &m3])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("web: succeeded"), "{stderr}");
    for cmd in [
        vec!["history", "web", "-o", "json"],
        vec!["history", "web"],
        vec!["status", "web"],
        vec!["status", "web", "-o", "json"],
    ] {
        let state = state.clone();
        let (code, stderr) =
            tokio::task::spawn_blocking(move || rollgate_closed_stdout(&state, &cmd))
                .await
                .unwrap();
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(stderr, "", "quietly");
    }
    // And through a shell, as people write it.
    #[cfg(unix)]
    for cmd in ["history web -o json", "status web", "history web"] {
        let state = state.clone();
        let script = format!(
            "set -o pipefail; \"$0\" {cmd} | head -1 >/dev/null; echo \"${{PIPESTATUS[0]}}\""
        );
        let out = tokio::task::spawn_blocking(move || {
            Command::new("bash")
                .args(["-c", &script, env!("CARGO_BIN_EXE_rollgate")])
                .env("ROLLGATE_STATE", &state)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stdout.trim(), "0", "{cmd}: {stderr}");
        assert!(!stderr.contains("panicked"), "{cmd}: {stderr}");
    }
    drop(fleet);
}
