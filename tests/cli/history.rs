//! `history` and a rollout without an outcome: still run by a live process, or interrupted.

use crate::cli::support::*;

const STARTED: &str = r#"{"atMs":1795799621367,"event":"started","rollout":"web-1","from":"1.0.0","to":"2.0.0","strategy":"rolling","actor":{"user":"ann","host":"box"},"steps":2}
{"atMs":1795799621384,"event":"stepStarted","rollout":"web-1","step":0,"kind":"scale","note":"replace a wave"}
"#;

const MANIFEST: &str = r#"apiVersion: rollgate.dev/v1
kind: Rollout
metadata: {name: web}
spec:
  version: "2.0.0"
  target:
    hosts:
      service: web
      artifact: {file: web.tar.gz}
      hosts: [{name: a, address: "127.0.0.1:7443"}]
  strategy:
    rolling: {maxSurge: 0, maxUnavailable: 1}
"#;

/// A store in which rollout `web-1` started and never finished.
fn unfinished() -> tempfile::TempDir {
    let state = tempfile::tempdir().unwrap();
    let file = state.path().join("web.yaml");
    std::fs::write(&file, MANIFEST).unwrap();
    let m = rollgate::spec::Manifest::load(&[file], None).unwrap();
    let store = rollgate::state::Store::at(state.path());
    store.save_manifest("web", "web-1", &m.rollout).unwrap();
    std::fs::write(state.path().join("web/journal.jsonl"), STARTED).unwrap();
    state
}

fn history(state: &std::path::Path) -> Run {
    let run = rollgate(
        state,
        &["history", "web"],
        &[
            ("ROLLGATE_STATE", state.to_str().unwrap()),
            ("HOSTNAME", "box"),
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    run
}

#[test]
fn an_unfinished_rollout_nobody_runs_reads_as_interrupted() {
    let state = unfinished();
    let app = state.path().join("web");

    // No lock: the process that ran it is gone.
    let out = history(state.path()).stdout;
    assert!(
        out.contains("web-1  1.0.0 -> 2.0.0  rolling  interrupted: no process is running it; `rollgate resume` continues it"),
        "{out}"
    );

    // A lock from a live process on this machine (this test's own pid): in progress, by whom.
    let me = std::process::id();
    std::fs::write(
        app.join("lock"),
        format!("ann@box pid {me} since 1795799621367"),
    )
    .unwrap();
    let out = history(state.path()).stdout;
    assert!(
        out.contains(&format!("rolling  in progress (ann@box pid {me}, for ")),
        "{out}"
    );

    // A lock left by a pid that no longer exists on this machine is stale: interrupted again.
    std::fs::write(app.join("lock"), "ann@box pid 4000000 since 1795799621367").unwrap();
    let out = history(state.path()).stdout;
    assert!(out.contains("rolling  interrupted: "), "{out}");
}
