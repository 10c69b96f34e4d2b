//! `rollgate demo`: install v1, canary to v2, and a bad v3 that is rolled back automatically.

use std::process::Command;

#[test]
fn demo_rolls_v2_out_and_rolls_bad_v3_back() {
    let dir = tempfile::tempdir().unwrap();
    let demo_dir = dir.path().join("demo");
    let out = Command::new(env!("CARGO_BIN_EXE_rollgate"))
        .args(["demo", "--hosts", "4", "-o", "plain", "--keep", "--dir"])
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
    // It says where its files are, and kept them.
    assert!(
        stdout.contains(&format!("demo: its files are in {}", demo_dir.display())),
        "{stdout}"
    );

    // The demo's manifests are valid against `rollgate schema` (tests/cli/schema.rs has the rest).
    let schema = Command::new(env!("CARGO_BIN_EXE_rollgate"))
        .arg("schema")
        .output()
        .unwrap();
    let schema: serde_json::Value = serde_json::from_slice(&schema.stdout).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    for v in ["1.0.0", "2.0.0", "3.0.0"] {
        let text = std::fs::read_to_string(demo_dir.join(format!("web-{v}.yaml"))).unwrap();
        let doc: serde_json::Value = serde_yaml::from_str(&text).unwrap();
        let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert_eq!(errors, Vec::<String>::new(), "web-{v}.yaml");
    }

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

/// Without `--keep` the demo removes what it wrote, and says so; a `--dir` that held other files
/// keeps them.
#[test]
fn demo_removes_its_files_unless_kept() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mine.txt"), "not the demo's").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rollgate"))
        .args(["demo", "--hosts", "1", "-o", "plain", "--dir"])
        .arg(dir.path())
        .env_remove("ROLLGATE_STATE")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!(
            "demo: removed its files from {} (--keep keeps them)",
            dir.path().display()
        )),
        "{stdout}"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec!["mine.txt".to_string()]);
}
