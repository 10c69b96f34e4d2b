//! Case 7 of the test bed: a second rollout of the same app while one runs is refused by the lock,
//! which names its holder; the first is not disturbed.

use std::time::Duration;

use rollgate::state::Event;

use crate::fleet::{Fleet, Running, text};
use crate::netns::root_or_skip;

#[test]
fn netns_second_concurrent_rollout_is_refused_by_the_lock() {
    if !root_or_skip("netns_second_concurrent_rollout") {
        return;
    }
    let fleet = Fleet::start(6);
    fleet.install("1.0.0");
    let v2 = fleet.artifact("2.0.0", "");
    // The second: the same app, another version, from the same state store.
    let v3 = fleet.artifact("3.0.0", "");
    let second = fleet.manifest(
        "3.0.0",
        &v3,
        "    rolling: {maxSurge: 0, maxUnavailable: 1}\n",
        5,
    );
    // A timed pause keeps the first rollout running while the second one tries.
    let first = fleet.manifest(
        "2.0.0",
        &v2,
        "    canary:\n      maxUnavailable: 1\n      steps:\n        - setWeight: 34\n        - pause: {duration: 5s}\n        - setWeight: 100\n",
        5,
    );
    let mut run =
        Running::spawn(fleet.rollgate(&["apply", "-f", first.to_str().unwrap(), "-o", "json"]));
    run.wait_for(
        Duration::from_secs(60),
        |e| matches!(e, Event::StepStarted { kind, .. } if *kind == rollgate::plan::StepKind::Pause),
    );
    let holder_pid = run.child.id();

    let out = fleet.run(&["apply", "-f", second.to_str().unwrap(), "-o", "plain"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr.contains("is locked by") && stderr.contains(&format!("pid {holder_pid}")),
        "the refusal names the holder (pid {holder_pid}): {}",
        text(&out)
    );
    let lock = std::fs::read_to_string(fleet.lock_file()).expect("the first still holds the lock");
    assert!(lock.contains(&format!("pid {holder_pid}")), "{lock}");

    // The refused rollout changed nothing: the first one finishes on 2.0.0 and releases the lock.
    let code = run.finish(Duration::from_secs(90));
    assert_eq!(code, Some(0), "{}{}", run.describe(), run.output());
    assert!(
        !run.records.iter().any(|r| matches!(
            &r.event,
            Event::InstanceChanging { version, .. } if version == "3.0.0"
        )),
        "{}",
        run.describe()
    );
    fleet.assert_serving("2.0.0");
    assert!(!fleet.lock_file().exists(), "the lock is released");
}
