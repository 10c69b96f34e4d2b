//! Case 4 of the test bed: a host's agent is killed (-9) while its wave switches it. The wave fails
//! at once, the rollout rolls every reachable host back, and once the agent is back (as systemd
//! would restart it) `rollgate resume` finishes the rollback on that host too.

use std::time::{Duration, Instant};

use rollgate::state::Event;

use crate::fleet::{APP, Fleet, Running, text};
use crate::netns::root_or_skip;

#[test]
fn netns_agent_killed_mid_wave_rolls_back() {
    if !root_or_skip("netns_agent_killed_mid_wave") {
        return;
    }
    const N: usize = 6;
    const DEADLINE: u64 = 5;
    let mut fleet = Fleet::start(N);
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
    // Waves of one host (host1, host4, host2, ...): kill the third wave's agent as it switches.
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
    let killed_at = Instant::now();
    let v = fleet.index(&victim);
    fleet.kill_agent(v);

    let code = run.finish(Duration::from_secs(120));
    let log = run.describe();
    eprintln!(
        "netns_agent_killed: {victim}'s agent killed; rollgate exited {code:?} {:.1}s later",
        killed_at.elapsed().as_secs_f64(),
    );
    assert!(
        killed_at.elapsed() <= Duration::from_secs(DEADLINE + 4),
        "a dead agent fails the wave within progressDeadlineSeconds\n{log}"
    );
    assert_eq!(code, Some(1), "rolled back\n{log}{}", run.output());
    assert!(
        run.records.iter().any(|r| matches!(
            &r.event,
            Event::InstanceChanged { instance, ok: false, .. } if *instance == victim
        )),
        "the victim's switch is journaled as failed\n{log}"
    );
    assert!(
        run.records
            .iter()
            .any(|r| matches!(&r.event, Event::RollbackStarted { to, .. } if to == "1.0.0")),
        "an automatic rollback to 1.0.0\n{log}"
    );
    // Every host still reachable is back on 1.0.0 without waiting for the dead agent.
    for i in (0..N).filter(|&i| i != v) {
        let active = fleet.agent_status(i).slots[0].active.clone();
        assert_eq!(
            active.as_deref(),
            Some("1.0.0"),
            "{} rolled back while {victim}'s agent is down\n{log}{}",
            fleet.hosts[i].name,
            run.output()
        );
    }
    assert!(
        !fleet.lock_file().exists(),
        "a failed rollback releases the lock"
    );

    // The agent comes back; resume finishes the rollback there, and every host serves 1.0.0.
    fleet.start_agent(v);
    fleet.wait_agent(v, Duration::from_secs(20));
    eprintln!(
        "netns_agent_killed: {victim} after its agent restarted: active {:?}",
        fleet.agent_status(v).slots[0].active
    );
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
