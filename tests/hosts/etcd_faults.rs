//! Faults of the etcd cluster under a host-fleet rollout that keeps its team state there, each a
//! row of the fault matrix: one member of three cut off (the one the runner asks first), and the
//! whole cluster down for less than the write window. (The leader killed and the whole cluster down
//! for longer are in `etcd_team.rs`.)

use std::time::{Duration, Instant};

use rollgate::state::Event;

use super::etcd_team::{BED, CANARY_TIMED};
use crate::etcd3::{Etcd3, Machine, lost, unknown};
use crate::faults;
use crate::fleet::{APP, Fleet, Running};
use crate::netns::root_or_skip;

/// Steps whose `stepStarted` record came after `after` (a step index).
fn steps_started_after(run: &Running, after: usize) -> usize {
    run.records
        .iter()
        .filter(|r| matches!(r.event, Event::StepStarted { step, .. } if step > after))
        .count()
}

#[test]
fn etcd_one_member_cut_off_mid_rollout_is_ridden_out_and_loses_no_record() {
    if !root_or_skip("etcd_member_cut_off") {
        return;
    }
    let Some(etcd) = Etcd3::up(24520) else {
        return;
    };
    let fleet = Fleet::start(3);
    fleet.install("1.0.0");
    let one = Machine::new(&fleet, &etcd, "one", false);

    let v2 = fleet.artifact("2.0.0", "");
    let m2 = fleet.manifest("2.0.0", &v2, CANARY_TIMED, 10);
    let mut run = Running::spawn(one.command(&["apply", "-f", m2.to_str().unwrap(), "-o", "json"]));
    let first = run.wait_for(Duration::from_secs(60), |e| {
        matches!(e, Event::StepStarted { .. })
    });
    let Event::StepStarted { step: cut_at, .. } = first.event else {
        unreachable!()
    };
    // Member 0 is the runner's first endpoint, the one its requests go to while it answers.
    // SIGSTOP: it answers neither its peers nor the runner, its connections stay open (a request
    // to it waits for the client's deadline), and the other two go on as a quorum.
    let leader = etcd.leader();
    etcd.stop(0);
    let cut = Instant::now();
    let code = run.finish(Duration::from_secs(120));
    eprintln!(
        "member 0 (leader: {}) cut off; the rollout ended {:?} later, exit {code:?}",
        leader == 0,
        cut.elapsed()
    );

    // Still without member 0: the two others hold every record, in order.
    let id = first.event.rollout();
    let local = one.journal_of(APP, id);
    let stored = etcd.journal_of(APP, id);
    etcd.cont(0);
    faults::record(faults::Case {
        bed: BED,
        fault: "one etcd member of three (the runner's first endpoint) SIGSTOPped at the first step, until the end",
        outcome: if code == Some(0) {
            "ridden out, completed"
        } else {
            "stopped"
        },
        lost: lost(&local, &stored),
        unknown: unknown(&fleet, "2.0.0"),
    });
    assert_eq!(code, Some(0), "{}", run.output());
    assert!(
        steps_started_after(&run, cut_at) >= 2,
        "the rollout went on with a member cut off: {}",
        run.describe()
    );
    fleet.assert_serving("2.0.0");
    assert!(local.len() > 5, "{local:?}");
    assert_eq!(stored, local, "no record lost, none out of order");
    let last = one.history().pop().unwrap();
    assert_eq!(
        (last["to"].as_str(), last["outcome"].as_str()),
        (Some("2.0.0"), Some("succeeded"))
    );
    assert!(
        etcd.keys(&format!("/rollgate/{APP}/lock")).is_empty(),
        "the lock was released"
    );
}

#[test]
fn etcd_the_whole_cluster_down_for_less_than_the_write_window_is_ridden_out() {
    if !root_or_skip("etcd_cluster_down_briefly") {
        return;
    }
    let Some(etcd) = Etcd3::up(24540) else {
        return;
    };
    let fleet = Fleet::start(3);
    fleet.install("1.0.0");
    let one = Machine::new(&fleet, &etcd, "one", false);

    let v2 = fleet.artifact("2.0.0", "");
    let m2 = fleet.manifest("2.0.0", &v2, CANARY_TIMED, 10);
    let mut run = Running::spawn(one.command(&["apply", "-f", m2.to_str().unwrap(), "-o", "json"]));
    // Down while the first step changes hosts (its records are written, its end awaits them),
    // through the pause that follows.
    let first = run.wait_for(Duration::from_secs(60), |e| {
        matches!(e, Event::StepStarted { .. })
    });
    etcd.must("kill-all");
    let down = Instant::now();
    // Down long enough that renewals and appends fail, short enough that the lease lives on.
    std::thread::sleep(Duration::from_secs(2));
    etcd.must("start-all");
    let outage = down.elapsed();
    let code = run.finish(Duration::from_secs(90));
    eprintln!("etcd down (every member SIGKILLed, restarted, healthy again) for {outage:?}");
    // Longer, and the run must stop (the other test); this one is about shorter outages.
    assert!(
        outage < rollgate::kube::WRITE_WINDOW / 2,
        "etcd took {outage:?} to come back: not a short outage"
    );

    let id = first.event.rollout();
    let local = one.journal_of(APP, id);
    let stored = etcd.journal_of(APP, id);
    faults::record(faults::Case {
        bed: BED,
        fault: &format!(
            "the whole etcd cluster SIGKILLed at the first step and restarted, down {:.1} s (< the 10 s write window)",
            outage.as_secs_f64()
        ),
        outcome: if code == Some(0) {
            "ridden out, completed"
        } else {
            "stopped"
        },
        lost: lost(&local, &stored),
        unknown: unknown(&fleet, "2.0.0"),
    });
    assert_eq!(code, Some(0), "ridden out: {}", run.output());
    fleet.assert_serving("2.0.0");
    assert!(local.len() > 5, "{local:?}");
    assert_eq!(stored, local, "no record lost, none out of order");
    let last = one.history().pop().unwrap();
    assert_eq!(
        (last["to"].as_str(), last["outcome"].as_str()),
        (Some("2.0.0"), Some("succeeded"))
    );
}
