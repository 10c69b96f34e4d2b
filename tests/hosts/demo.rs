//! `rollgate demo`: install v1, canary to v2, and a bad v3 that is rolled back automatically.

use std::process::Command;

#[test]
fn demo_rolls_v2_out_and_rolls_bad_v3_back() {
    let dir = tempfile::tempdir().unwrap();
    let demo_dir = dir.path().join("demo");
    let out = Command::new(env!("CARGO_BIN_EXE_rollgate"))
        .args(["demo", "--hosts", "4", "-o", "plain", "--dir"])
        .arg(&demo_dir)
        .env_remove("ROLLGATE_STATE")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );

    // The journal, read back through `rollgate history`, tells the three outcomes.
    let out = Command::new(env!("CARGO_BIN_EXE_rollgate"))
        .args(["history", "web", "-o", "json"])
        .env("ROLLGATE_STATE", demo_dir.join("state"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let history: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rollouts = history.as_array().unwrap();
    assert_eq!(rollouts.len(), 3);
    let outcome = |i: usize| rollouts[i]["outcome"].as_str().unwrap().to_string();
    assert_eq!(
        (outcome(0), outcome(1), outcome(2)),
        ("succeeded".into(), "succeeded".into(), "rolledBack".into())
    );
    // The canary went to the internal ring first.
    let first_change = rollouts[1]["instances"][0][0].as_str().unwrap();
    assert_eq!(first_change, "host1", "{}", rollouts[1]);
    // After the rollback every instance that changed is back on 2.0.0.
    let last = &rollouts[2];
    assert_eq!(last["from"], "2.0.0");
    for inst in last["instances"].as_array().unwrap() {
        assert_eq!(inst[1], "2.0.0", "{last}");
        assert_eq!(inst[2], true, "{last}");
    }
    // Every service process and agent is gone afterwards.
    let ps = Command::new("pgrep")
        .args(["-f", &demo_dir.display().to_string()])
        .output()
        .unwrap();
    assert!(
        ps.stdout.is_empty(),
        "left behind: {}",
        String::from_utf8_lossy(&ps.stdout)
    );
}
