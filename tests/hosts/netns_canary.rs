//! Case 2 of the test bed: a canary to a v3 whose `/health` answers 500 fails its gate and is rolled
//! back automatically; every host serves v2 again, as the agents, `rollgate status` and the
//! independent probe all show.

use std::time::Duration;

use rollgate::state::{Event, Outcome};

use crate::fleet::{APP, Fleet, Probe, Running, status_versions, text};
use crate::netns::root_or_skip;

#[test]
fn netns_canary_to_failing_v3_rolls_back_to_v2_everywhere() {
    if !root_or_skip("netns_canary_to_failing_v3") {
        return;
    }
    const N: usize = 6;
    let fleet = Fleet::start(N);
    fleet.install("2.0.0");
    // v3 serves `/` (the agent's readiness check passes) but its `/health` answers 500: the
    // manifest's health gate is what must catch it.
    let v3 = fleet.artifact("3.0.0", "--health-status 500");
    let manifest = fleet.manifest(
        "3.0.0",
        &v3,
        "    canary:\n      maxUnavailable: 2\n      firstGroup: internal\n      steps:\n        - setWeight: 34\n        - analysis: {}\n        - setWeight: 100\n",
        5,
    );

    let probe = Probe::start(fleet.service_addrs(), Duration::from_millis(50));
    std::thread::sleep(Duration::from_millis(300));
    let mut run =
        Running::spawn(fleet.rollgate(&["apply", "-f", manifest.to_str().unwrap(), "-o", "json"]));
    let code = run.finish(Duration::from_secs(90));
    std::thread::sleep(Duration::from_millis(300));
    let report = probe.stop();
    let log = run.describe();
    assert_eq!(
        code,
        Some(1),
        "exit code of a rolled-back rollout\n{log}{}",
        run.output()
    );

    // The journal: the canary changed some hosts to v3, a gate failed, the rollback went to 2.0.0.
    let canaries: Vec<String> = run
        .records
        .iter()
        .filter_map(|r| match &r.event {
            Event::InstanceChanged {
                instance,
                version,
                ok: true,
                ..
            } if version == "3.0.0" => Some(instance.clone()),
            _ => None,
        })
        .collect();
    // setWeight 34 of 6 hosts, maxUnavailable 2: the internal ring's host1, then host4 (zone a).
    assert_eq!(
        canaries,
        ["host1", "host4"],
        "the canary changes two hosts, the internal ring first\n{log}"
    );
    assert!(
        run.records.iter().any(
            |r| matches!(&r.event, Event::Gate { passed: false, check, .. } if check == "health")
        ),
        "a failed health gate\n{log}"
    );
    assert!(
        run.records
            .iter()
            .any(|r| matches!(&r.event, Event::RollbackStarted { to, .. } if to == "2.0.0")),
        "an automatic rollback to 2.0.0\n{log}"
    );
    assert!(
        matches!(
            run.records.last().map(|r| &r.event),
            Some(Event::Finished {
                outcome: Outcome::RolledBack,
                ..
            })
        ),
        "finished as rolled back\n{log}"
    );

    // The probe: canary hosts served v3 for a while, the others never did, and all end on v2.
    for (i, h) in fleet.hosts.iter().enumerate() {
        let seen = report.versions_seen(i);
        if canaries.contains(&h.name) {
            assert_eq!(seen, ["2.0.0", "3.0.0", "2.0.0"], "{}: served", h.name);
        } else {
            assert_eq!(seen, ["2.0.0"], "{}: served", h.name);
        }
        assert_eq!(
            report.last_version(i).as_deref(),
            Some("2.0.0"),
            "{}: last served",
            h.name
        );
    }
    let (min, at) = report.min_available();
    eprintln!(
        "netns_canary: {} canaries {canaries:?}; fewest serving {min}/{N} at {:.2}s over {:.1}s",
        canaries.len(),
        at.as_secs_f64(),
        report.took.as_secs_f64()
    );
    // Replacing in place takes down at most the canaries (switched at once on the way back).
    assert!(
        min >= N - canaries.len(),
        "availability fell to {min} at {at:?}:\n{}",
        report.dips()
    );

    // The agents, `rollgate status` and HTTP agree: 2.0.0 everywhere.
    fleet.assert_serving("2.0.0");
    let out = fleet.run(&["status", APP]);
    let status = status_versions(&out);
    assert_eq!(status.len(), N, "{}", text(&out));
    assert!(status.iter().all(|(_, v)| v == "2.0.0"), "{}", text(&out));
    assert!(!fleet.lock_file().exists(), "the lock is released");
}
