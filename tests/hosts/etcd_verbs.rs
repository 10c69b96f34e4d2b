//! `pause`, `abort` and `retry` on a host fleet whose team state is on etcd, each from the machine
//! that did not start the rollout: what one machine does, the other sees and acts on.

use std::time::Duration;

use rollgate::state::Event;

use super::etcd_team::{CANARY_TIMED, at_pause};
use crate::etcd3::{Machine, bed};
use crate::fleet::text;

#[test]
fn etcd_paused_from_another_machine_aborted_there_and_a_failure_retried_from_the_first() {
    let Some((etcd, fleet)) = bed("etcd_pause_abort_retry", 24560) else {
        return;
    };
    let one = Machine::new(&fleet, &etcd, "one", false);
    let two = Machine::new(&fleet, &etcd, "two", true);

    // Machine one runs a canary with a one-minute pause; machine two asks it to pause.
    let long = CANARY_TIMED.replace("duration: 6s", "duration: 60s");
    let (mut run, _) = at_pause(&fleet, &one, &long);
    let out = two.run(&["pause", "web", "-o", "plain"]);
    assert_eq!(out.status.code(), Some(0), "pause from two: {}", text(&out));
    assert!(text(&out).contains("request sent"), "{}", text(&out));
    assert_eq!(
        run.finish(Duration::from_secs(30)),
        Some(3),
        "the run on one pauses (exit 3), long before its minute: {}",
        run.output()
    );
    let paused = run
        .records
        .iter()
        .find_map(|r| match &r.event {
            Event::Paused { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("a paused record: {}", run.describe()));
    assert!(
        paused.contains("paused by") && paused.contains("machine-two"),
        "{paused}"
    );

    // Machine two aborts the paused rollout: it takes the lock, rolls back, and machine one's
    // history (from etcd) says so.
    let out = two.run(&["abort", "web", "-o", "plain"]);
    assert_eq!(out.status.code(), Some(0), "abort from two: {}", text(&out));
    assert!(
        text(&out).contains("aborted and rolled back"),
        "{}",
        text(&out)
    );
    fleet.assert_serving("1.0.0");
    let last = one.history().pop().unwrap();
    assert_eq!(last["to"], "2.0.0", "{last}");
    assert_eq!(last["outcome"], "aborted", "{last}");
    assert!(last.to_string().contains("machine-two"), "{last}");
    assert!(
        etcd.keys("/rollgate/web/lock").is_empty(),
        "the abort released the lock"
    );

    // A failure: version 3.0.0's health depends on a file, failing at first. Machine two rolls
    // it, it fails and is rolled back; the file fixed, machine one retries: the rollout's manifest
    // comes from etcd, and the retry succeeds.
    let health = fleet.dir.join("health-status");
    std::fs::write(&health, "500").unwrap();
    let v3 = fleet.artifact(
        "3.0.0",
        &format!("--health-status \"$(cat '{}')\"", health.display()),
    );
    let m3 = fleet.manifest(
        "3.0.0",
        &v3,
        "    rolling: {maxSurge: 0, maxUnavailable: 1}\n",
        10,
    );
    let out = two.run(&["apply", "-f", m3.to_str().unwrap(), "-o", "plain"]);
    assert_eq!(out.status.code(), Some(1), "3.0.0 fails: {}", text(&out));
    fleet.assert_serving("1.0.0");
    let failed = one.history().pop().unwrap();
    assert_eq!(failed["to"], "3.0.0", "{failed}");
    assert_ne!(failed["outcome"], "succeeded", "{failed}");
    // The manifest must come from etcd: machine one never had it.
    std::fs::remove_file(&m3).unwrap();

    std::fs::write(&health, "200").unwrap();
    let out = one.run(&["retry", "web", "-o", "plain"]);
    assert_eq!(out.status.code(), Some(0), "retry from one: {}", text(&out));
    fleet.assert_serving("3.0.0");
    let h = two.history();
    let last = &h[h.len() - 1];
    assert_eq!(
        (last["to"].as_str(), last["outcome"].as_str()),
        (Some("3.0.0"), Some("succeeded")),
        "{last}"
    );
    assert_ne!(
        last["id"], failed["id"],
        "the retry is a rollout of its own"
    );
    assert_eq!(h[h.len() - 2]["id"], failed["id"], "after the failed one");
    // Retrying a success is refused, from either machine.
    let out = two.run(&["retry", "web", "-o", "plain"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("nothing to retry"), "{}", text(&out));
}
