//! Case 6 of the test bed: the CLI is killed (-9) in the middle of a wave; `rollgate resume APP`
//! continues from the journal, takes over the dead process's lock, and finishes the rollout.

use std::time::Duration;

use rollgate::state::Event;

use crate::fleet::{APP, Fleet, Running, text};
use crate::netns::root_or_skip;

#[test]
fn netns_cli_killed_mid_rollout_then_resume_completes() {
    if !root_or_skip("netns_cli_killed_mid_rollout") {
        return;
    }
    const N: usize = 6;
    let fleet = Fleet::start(N);
    fleet.install("1.0.0");
    let v2 = fleet.artifact("2.0.0", "");
    let manifest = fleet.manifest(
        "2.0.0",
        &v2,
        "    rolling: {maxSurge: 0, maxUnavailable: 1}\n",
        5,
    );
    let mut run =
        Running::spawn(fleet.rollgate(&["apply", "-f", manifest.to_str().unwrap(), "-o", "json"]));
    // Two waves done; kill it as the third wave's host starts changing.
    let changing = |e: &Event| matches!(e, Event::InstanceChanging { .. });
    for _ in 0..3 {
        run.wait_for(Duration::from_secs(60), changing);
    }
    std::thread::sleep(Duration::from_millis(100));
    run.kill9();
    let rollout_id = match &run.records[0].event {
        Event::Started { rollout, .. } => rollout.clone(),
        other => panic!("first record {other:?}"),
    };
    let lock = std::fs::read_to_string(fleet.lock_file()).expect("a kill -9 leaves the lock file");
    assert!(lock.contains(&format!("pid {}", run.child.id())), "{lock}");
    let before = fleet.agent_versions();
    let on_v2 = before
        .iter()
        .filter(|v| v.as_deref() == Some("2.0.0"))
        .count();
    assert!(
        (2..N).contains(&on_v2),
        "killed mid-rollout: {before:?}\n{}",
        run.describe()
    );

    let out = fleet.run(&["resume", APP, "-o", "plain"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "resume completes\n{}",
        text(&out)
    );
    fleet.assert_serving("2.0.0");
    assert!(!fleet.lock_file().exists(), "no lock leaked");

    // The history has one rollout, the resumed one, succeeded.
    let out = fleet.run(&["history", APP, "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let history: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rollouts = history.as_array().unwrap();
    let last = rollouts.last().unwrap();
    assert_eq!(last["id"], rollout_id.as_str(), "{history:#}");
    assert_eq!(last["outcome"], "succeeded", "{history:#}");
}
