//! Pause steps that need approvals from distinct people, `promote` recording who approved, and
//! `rollback` after a completed rollout, from the versions kept on disk.

use std::path::Path;
use std::process::Command;

use rollgate::cli::demo::{LocalFleet, package_demo};

fn rollgate(state: &Path, user: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rollgate"))
        .args(args)
        .env("ROLLGATE_STATE", state)
        .env("ROLLGATE_USER", user)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn manifest(fleet: &LocalFleet, version: &str, artifact: &Path, steps: &str) -> String {
    format!(
        "apiVersion: rollgate.dev/v1\nkind: Rollout\nmetadata: {{name: web}}\nspec:\n  version: \"{version}\"\n  target:\n    hosts:\n      service: web\n      artifact: {{file: \"{artifact}\"}}\n      auth: {auth}\n      hosts:\n{hosts}  strategy:\n    canary:\n      maxUnavailable: 1\n      steps:\n{steps}  checks:\n    - name: health\n      http: {{url: \"http://127.0.0.1:{{port}}/health\"}}\n      interval: 100ms\n  progressDeadlineSeconds: 20\n",
        artifact = artifact.display(),
        auth = fleet.auth_yaml(),
        hosts = fleet.hosts_yaml("        "),
    )
}

/// Hosts that `rollgate status` lists on `version`.
fn hosts_on(status: &str, version: &str) -> usize {
    status
        .lines()
        .filter(|l| l.starts_with("  host") && l.split_whitespace().nth(1) == Some(version))
        .count()
}

fn history(state: &Path) -> serde_json::Value {
    let (code, out) = rollgate(state, "auditor", &["history", "web", "-o", "json"]);
    assert_eq!(code, 0, "{out}");
    serde_json::from_str(&out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_approvals_then_rollback_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = LocalFleet::start(dir.path(), 3, 1).await.unwrap();
    let artifacts = dir.path().join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let v1 = package_demo(&artifacts, "1.0.0", "").unwrap();
    let v2 = package_demo(&artifacts, "2.0.0", "").unwrap();
    let state = dir.path().join("state");
    let run = |user: &'static str, args: Vec<String>| {
        let state = state.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            rollgate(&state, user, &args)
        })
    };

    let m1 = dir.path().join("v1.yaml");
    std::fs::write(
        &m1,
        manifest(&fleet, "1.0.0", &v1, "        - setWeight: 100\n"),
    )
    .unwrap();
    let (code, out) = run(
        "ana",
        vec![
            "apply".into(),
            "-o".into(),
            "plain".into(),
            "-f".into(),
            m1.display().to_string(),
        ],
    )
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}");

    // v2 pauses after a third of the fleet until two different people approve.
    let m2 = dir.path().join("v2.yaml");
    std::fs::write(
        &m2,
        manifest(
            &fleet,
            "2.0.0",
            &v2,
            "        - setWeight: 34\n        - pause: {approvals: 2}\n        - setWeight: 100\n",
        ),
    )
    .unwrap();
    let (code, out) = run(
        "ana",
        vec![
            "apply".into(),
            "-o".into(),
            "plain".into(),
            "-f".into(),
            m2.display().to_string(),
        ],
    )
    .await
    .unwrap();
    assert_eq!(code, 3, "paused, waiting for promotion: {out}");
    let (code, out) = run("ana", vec!["status".into(), "web".into()])
        .await
        .unwrap();
    assert_eq!(code, 3, "status exits 3 while paused: {out}");
    assert_eq!(
        hosts_on(&out, "2.0.0"),
        1,
        "one instance of three on 2.0.0: {out}"
    );

    let (code, out) = run("bob", vec!["promote".into(), "web".into()])
        .await
        .unwrap();
    assert_eq!(code, 3, "one approval of two: {out}");
    assert!(out.contains("1 of 2 approvals"), "{out}");
    // The same person again does not count twice.
    let (code, out) = run("bob", vec!["promote".into(), "web".into()])
        .await
        .unwrap();
    assert_eq!(code, 3, "{out}");
    let (code, out) = run(
        "carol",
        vec!["promote".into(), "web".into(), "-o".into(), "plain".into()],
    )
    .await
    .unwrap();
    assert_eq!(
        code, 0,
        "two distinct approvals continue the rollout: {out}"
    );
    let h = history(&state);
    let last = &h.as_array().unwrap()[1];
    assert_eq!(last["outcome"], "succeeded");
    let approvals: Vec<&str> = last["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["actor"]["user"].as_str().unwrap())
        .collect();
    assert_eq!(
        approvals,
        ["bob", "bob", "carol"],
        "who approved is recorded: {last}"
    );

    // One-command rollback to 1.0.0, with the artifact gone: only what is on disk is used.
    std::fs::remove_file(&v1).unwrap();
    let (code, out) = run(
        "dave",
        vec!["rollback".into(), "web".into(), "-o".into(), "plain".into()],
    )
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("succeeded in"),
        "it says how long it took: {out}"
    );
    let (_, out) = run("dave", vec!["status".into(), "web".into()])
        .await
        .unwrap();
    assert_eq!(
        hosts_on(&out, "1.0.0"),
        3,
        "every host back on 1.0.0: {out}"
    );
    let h = history(&state);
    let rb = &h.as_array().unwrap()[2];
    assert_eq!(
        (
            rb["strategy"].as_str(),
            rb["outcome"].as_str(),
            rb["to"].as_str()
        ),
        (Some("rollback"), Some("succeeded"), Some("1.0.0"))
    );
    drop(fleet);
}
