//! Case 5 of the test bed: a host is cut off the network (its link goes down) while its wave switches
//! it. The wave fails within progressDeadlineSeconds and the rollback puts the reachable hosts back.
//!
//! What happens to the cut-off host: its agent is alive and keeps doing what it was last told (the
//! activation of v2 it had received), but nobody can reach it. After the link comes back,
//! `rollgate resume` (or `rollgate rollback`) brings it in line with the rest of the fleet.
//!
//! KNOWN BUGS (this test fails until they are fixed; found by it, not fixed here):
//! - the wave is not bounded by progressDeadlineSeconds: the hosts target waits for the cut-off
//!   agent's operation with a long-poll whose HTTP timeout is `wait + 30s`, and the engine puts no
//!   deadline around the step, so the wave fails only when TCP gives up (about 30 s, not 5 s);
//! - the rollback needs every agent to answer before it touches any host (`Hosts::restore` reads
//!   every host's view first), so with one host unreachable no host is rolled back at all.

use std::time::{Duration, Instant};

use rollgate::state::Event;

use crate::fleet::{APP, Fleet, Running, text};
use crate::netns::root_or_skip;

#[test]
fn netns_host_cut_off_mid_wave_fails_the_wave_in_time_and_rolls_back() {
    if !root_or_skip("netns_host_cut_off_mid_wave") {
        return;
    }
    const N: usize = 6;
    const DEADLINE: u64 = 5;
    let fleet = Fleet::start(N);
    fleet.install("1.0.0");
    let v2 = fleet.artifact("2.0.0", "");
    let manifest = fleet.manifest(
        "2.0.0",
        &v2,
        "    rolling: {maxSurge: 0, maxUnavailable: 1}\n",
        DEADLINE,
    );
    let mut run =
        Running::spawn(fleet.rollgate(&["apply", "-f", manifest.to_str().unwrap(), "-o", "json"]));
    let changing = |e: &Event| matches!(e, Event::InstanceChanging { .. });
    run.wait_for(Duration::from_secs(60), changing);
    run.wait_for(Duration::from_secs(60), changing);
    let third = run.wait_for(Duration::from_secs(60), changing);
    let Event::InstanceChanging {
        instance: victim, ..
    } = third.event
    else {
        unreachable!()
    };
    std::thread::sleep(Duration::from_millis(100));
    let v = fleet.index(&victim);
    fleet.hosts[v].net.cut();
    let cut_at = Instant::now();

    // The wave fails within the step's deadline (plus a little slack for the journal and the CLI).
    let failed = run.wait_for(Duration::from_secs(120), |e| {
        matches!(
            e,
            Event::InstanceChanged { ok: false, .. } | Event::RollbackStarted { .. }
        )
    });
    let wave_failed_after = cut_at.elapsed();
    eprintln!(
        "netns_cut_off: {victim} cut off; the wave failed {:.1}s later: {}",
        wave_failed_after.as_secs_f64(),
        rollgate::cli::output::describe(&failed.event)
    );
    let code = run.finish(Duration::from_secs(180));
    let took = cut_at.elapsed();
    let log = run.describe();
    eprintln!(
        "netns_cut_off: rollgate exited {code:?} {:.1}s after the cut\n{log}{}",
        took.as_secs_f64(),
        run.output()
    );
    assert!(
        wave_failed_after <= Duration::from_secs(DEADLINE + 3),
        "KNOWN BUG: the wave failed {wave_failed_after:?} after the cut; progressDeadlineSeconds is {DEADLINE}\n{log}"
    );
    assert_eq!(code, Some(1), "rolled back\n{log}");
    assert!(
        run.records
            .iter()
            .any(|r| matches!(&r.event, Event::RollbackStarted { to, .. } if to == "1.0.0")),
        "an automatic rollback to 1.0.0\n{log}"
    );
    // The reachable hosts are back on 1.0.0, serving.
    for i in (0..N).filter(|&i| i != v) {
        let active = fleet.agent_status(i).slots[0].active.clone();
        assert_eq!(
            active.as_deref(),
            Some("1.0.0"),
            "KNOWN BUG: {} not rolled back while {victim} is cut off (the rollback needs every agent)\n{log}{}",
            fleet.hosts[i].name,
            run.output()
        );
    }

    // Reconnected, the host is brought in line: every host on 1.0.0, no lock left.
    fleet.hosts[v].net.reconnect();
    fleet.wait_agent(v, Duration::from_secs(20));
    eprintln!(
        "netns_cut_off: {victim} after reconnecting: active {:?}",
        fleet.agent_status(v).slots[0].active
    );
    let out = fleet.run(&["resume", APP, "-o", "plain"]);
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "resume: {}",
        text(&out)
    );
    fleet.assert_serving("1.0.0");
    assert!(!fleet.lock_file().exists(), "no lock leaked");
}
