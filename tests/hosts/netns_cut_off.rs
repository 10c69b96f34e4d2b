//! Case 5 of the test bed: a host is cut off the network (its link goes down) while its wave switches
//! it. The wave fails within progressDeadlineSeconds and the rollback puts every reachable host back.
//!
//! What happens to the cut-off host: its agent is alive and finishes what it was last told (the
//! activation of v2 it had received before the cut), so it serves v2 on its own while nobody can
//! reach it. The rollback reports it as not restored and the rollout stays unfinished; the lock
//! is released. Once the link is back, `rollgate resume` finishes the rollback on it.

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
    // Waves of one host (host1, host4, host2, ...): cut the third wave's host as it switches.
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
    let step_started_ms = run
        .records
        .iter()
        .rev()
        .find(|r| matches!(r.event, Event::StepStarted { .. }))
        .map(|r| r.at_ms)
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let v = fleet.index(&victim);
    fleet.hosts[v].net.cut();
    let cut_at = Instant::now();

    let failed = run.wait_for(Duration::from_secs(120), |e| {
        matches!(
            e,
            Event::InstanceChanged { ok: false, .. } | Event::RollbackStarted { .. }
        )
    });
    let wave_took = Duration::from_millis(failed.at_ms.saturating_sub(step_started_ms));
    let code = run.finish(Duration::from_secs(120));
    let log = run.describe();
    eprintln!(
        "netns_cut_off: {victim} cut off; its wave failed {:.1}s after it started ({}); rollgate exited {code:?} {:.1}s after the cut",
        wave_took.as_secs_f64(),
        rollgate::cli::output::describe(&failed.event).trim(),
        cut_at.elapsed().as_secs_f64(),
    );
    // Within progressDeadlineSeconds, plus the target's 2 s of grace and 2 s of slack for a busy
    // machine; not when TCP gives up on the cut-off host.
    assert!(
        wave_took <= Duration::from_secs(DEADLINE + 4),
        "the wave failed {wave_took:?} after it started; progressDeadlineSeconds is {DEADLINE}\n{log}"
    );
    assert_eq!(code, Some(1), "rolled back\n{log}{}", run.output());
    assert!(
        run.records
            .iter()
            .any(|r| matches!(&r.event, Event::RollbackStarted { to, .. } if to == "1.0.0")),
        "an automatic rollback to 1.0.0\n{log}"
    );
    // Every reachable host is back on 1.0.0 and serves it; the cut-off one is reported as not.
    for i in (0..N).filter(|&i| i != v) {
        let active = fleet.agent_status(i).slots[0].active.clone();
        assert_eq!(
            active.as_deref(),
            Some("1.0.0"),
            "{} rolled back while {victim} is cut off\n{log}{}",
            fleet.hosts[i].name,
            run.output()
        );
    }
    let served = fleet.served_versions();
    for (i, s) in served.iter().enumerate().filter(|(i, _)| *i != v) {
        assert_eq!(s.as_deref(), Ok("1.0.0"), "{}", fleet.hosts[i].name);
    }
    assert!(
        served[v].is_err(),
        "{victim} is unreachable: {:?}",
        served[v]
    );
    let after_rollback = run
        .records
        .iter()
        .skip_while(|r| !matches!(r.event, Event::RollbackStarted { .. }));
    assert!(
        after_rollback.clone().any(|r| matches!(
            &r.event,
            Event::InstanceChanged { instance, ok: false, .. } if *instance == victim
        )),
        "the rollback reports {victim} as not restored\n{log}"
    );
    assert!(
        !fleet.lock_file().exists(),
        "a failed rollback releases the lock"
    );

    // Reconnected, the host is brought in line by `resume`: every host on 1.0.0.
    fleet.hosts[v].net.reconnect();
    fleet.wait_agent(v, Duration::from_secs(20));
    let alone = fleet.agent_status(v).slots[0].active.clone();
    eprintln!("netns_cut_off: {victim} after reconnecting: active {alone:?}");
    let out = fleet.run(&["resume", APP, "-o", "plain"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "resume rolls back: {}",
        text(&out)
    );
    fleet.assert_serving("1.0.0");
    assert_eq!(fleet.last_rollout()["outcome"], "rolledBack");
    assert!(!fleet.lock_file().exists(), "no lock leaked");
}
