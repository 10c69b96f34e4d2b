//! Faults of the etcd cluster under a host-fleet rollout that keeps its team state there, each a
//! row of the fault matrix: one member of three cut off (the one the runner asks first), and the
//! whole cluster down for less than the write window. (The leader killed and the whole cluster down
//! for longer are in `etcd_team.rs`.)

use std::time::{Duration, Instant};

use rollgate::state::Event;

use super::etcd_team::{BED, CANARY_TIMED};
use crate::etcd3::{Etcd3, Machine, bed, lost, unknown};
use crate::faults;
use crate::fleet::APP;

/// Machine one rolls 2.0.0 (a canary with a timed pause); once its first step has started,
/// `inject` makes the fault and says what it was (for the fault matrix); once the run has ended
/// and etcd's journal is read, `heal` undoes what is left of it. Then the row, and the checks that
/// the fault was ridden out: completed, steps went on after the fault, every record in etcd.
fn ridden_out(
    etcd: &Etcd3,
    fleet: &crate::fleet::Fleet,
    inject: impl FnOnce() -> String,
    heal: impl FnOnce(),
) {
    let one = Machine::new(fleet, etcd, "one", false);
    let v2 = fleet.artifact("2.0.0", "");
    let m2 = fleet.manifest("2.0.0", &v2, CANARY_TIMED, 10);
    let mut run = one.apply(&m2);
    let first = run.wait_for(Duration::from_secs(60), |e| {
        matches!(e, Event::StepStarted { .. })
    });
    let Event::StepStarted { step: at, .. } = first.event else {
        unreachable!()
    };
    let fault = inject();
    let injected = Instant::now();
    let code = run.finish(Duration::from_secs(120));
    eprintln!(
        "{fault}: the rollout ended {:?} later, exit {code:?}",
        injected.elapsed()
    );

    let id = first.event.rollout();
    let local = one.journal_of(APP, id);
    let stored = etcd.journal_of(APP, id);
    heal();
    faults::record(faults::Case {
        bed: BED,
        fault: &fault,
        outcome: if code == Some(0) {
            "ridden out, completed"
        } else {
            "stopped"
        },
        lost: lost(&local, &stored),
        unknown: unknown(fleet, "2.0.0"),
    });
    assert_eq!(code, Some(0), "ridden out: {}", run.output());
    let later = run
        .records
        .iter()
        .filter(|r| matches!(r.event, Event::StepStarted { step, .. } if step > at))
        .count();
    assert!(later >= 2, "the rollout went on: {}", run.describe());
    fleet.assert_serving("2.0.0");
    assert!(local.len() > 5, "{local:?}");
    assert_eq!(stored, local, "no record lost, none out of order");
    one.assert_last("2.0.0", "succeeded");
    assert!(
        etcd.keys(&format!("/rollgate/{APP}/lock")).is_empty(),
        "the lock was released"
    );
}

#[test]
fn etcd_one_member_cut_off_mid_rollout_is_ridden_out_and_loses_no_record() {
    let Some((etcd, fleet)) = bed("etcd_member_cut_off", 24520) else {
        return;
    };
    // Member 0 is the runner's first endpoint, the one its requests go to while it answers.
    // SIGSTOP: it answers neither its peers nor the runner, its connections stay open (a request
    // to it waits for the client's deadline), and the other two go on as a quorum. The journal is
    // read from those two, before member 0 is let go.
    ridden_out(
        &etcd,
        &fleet,
        || {
            let leader = etcd.leader() == 0;
            etcd.stop(0);
            format!(
                "one etcd member of three SIGSTOPped at the first step, until the end (the runner's first endpoint; the leader: {})",
                if leader { "yes" } else { "no" }
            )
        },
        || etcd.cont(0),
    );
}

#[test]
fn etcd_the_whole_cluster_down_for_less_than_the_write_window_is_ridden_out() {
    let Some((etcd, fleet)) = bed("etcd_cluster_down_briefly", 24540) else {
        return;
    };
    // Down early in the rollout (from its first step or pause), right after a
    // keep-alive: the runner may write for 10 s from that keep-alive's start. Down 2 s plus the
    // restart (an election): long enough that renewals and appends fail, short enough that the
    // fence stays open, however long the restart takes on a loaded machine (up to ~7 s).
    ridden_out(
        &etcd,
        &fleet,
        || {
            etcd.await_keep_alive(&format!("/rollgate/{APP}/lock"));
            etcd.must("kill-all");
            let down = Instant::now();
            std::thread::sleep(Duration::from_secs(2));
            etcd.must("start-all");
            let outage = down.elapsed();
            // Longer, and the run must stop (`etcd_team.rs`); this test is about shorter ones.
            assert!(
                outage < rollgate::kube::WRITE_WINDOW - Duration::from_secs(2),
                "etcd took {outage:?} to come back: not a short outage"
            );
            format!(
                "the whole etcd cluster SIGKILLed early in the rollout, just after a keep-alive, and restarted: down {:.1} s (< the 10 s write window)",
                outage.as_secs_f64()
            )
        },
        || {},
    );
}
