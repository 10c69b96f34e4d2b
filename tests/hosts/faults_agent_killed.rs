//! The fault matrix, agent side: a host's agent is killed with -9 while it stages an artifact and
//! while it activates the old version in a rollback. (Mid-wave is `netns_agent_killed.rs`.) The
//! agent restarts, as systemd would restart it, and `rollgate resume` brings the fleet together.
//!
//! The moment is exact: the CLI's fault hook (`ROLLGATE_FAULT_INJECT=POINT:N:stop`) freezes the CLI
//! right after an agent accepted the request; the test kills that agent, then lets the CLI go on.

use std::time::Duration;

use rollgate::state::Event;

use crate::faults;
use crate::fleet::{APP, Fleet, Running, text};
use crate::netns::root_or_skip;

/// Starts `apply` with the hook armed at `hook` (a `:stop` point), waits until the CLI froze
/// itself there, and returns it with the host named in the hook's line.
fn frozen_at(fleet: &Fleet, manifest: &std::path::Path, hook: &str) -> (Running, String) {
    let mut cmd = fleet.rollgate(&["apply", "-f", manifest.to_str().unwrap(), "-o", "json"]);
    cmd.env(rollgate::faults::ENV, hook);
    let run = Running::spawn(cmd);
    let line = run.wait_stopped(Duration::from_secs(120));
    let host = line
        .split_once('(')
        .and_then(|(_, rest)| rest.split(')').next())
        .unwrap()
        .to_string();
    (run, host)
}

#[test]
fn faults_agent_killed_during_staging_then_the_fleet_converges() {
    if !root_or_skip("faults_agent_killed_during_staging") {
        return;
    }
    const N: usize = 6;
    let mut fleet = Fleet::start(N);
    fleet.install("1.0.0");
    let v2 = fleet.artifact("2.0.0", "");
    let manifest = fleet.manifest(
        "2.0.0",
        &v2,
        "    rolling: {maxSurge: 0, maxUnavailable: 2}\n",
        10,
    );
    // Frozen right after the 2nd agent took the whole artifact and began to install it.
    let (mut run, victim) = frozen_at(&fleet, &manifest, "stage:2:stop");
    let v = fleet.index(&victim);
    fleet.kill_agent(v);
    run.cont();
    let code = run.finish(Duration::from_secs(120));
    let log = format!("{}{}", run.describe(), run.output());
    assert_eq!(code, Some(1), "staging fails on {victim}\n{log}");
    assert!(
        log.contains(&victim),
        "the error names the host {victim}\n{log}"
    );
    assert!(
        !run.records
            .iter()
            .any(|r| matches!(r.event, Event::InstanceChanging { .. })),
        "nothing was switched before every host had staged\n{log}"
    );
    assert!(!fleet.lock_file().exists(), "the lock is released");

    // The agent comes back: the partial install is gone, and the rollout resumes to the end.
    fleet.start_agent(v);
    fleet.wait_agent(v, Duration::from_secs(20));
    let staging = fleet.hosts[v].dir.join("data/services/web/staging");
    let leftovers: Vec<_> = std::fs::read_dir(&staging)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "{victim}: staging left {leftovers:?}");
    let before_resume = fleet.agent_versions();
    assert!(
        before_resume.iter().all(|v| v.as_deref() == Some("1.0.0")),
        "every host still on 1.0.0: {before_resume:?}"
    );
    let out = fleet.run(&["resume", APP, "-o", "plain"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "resume completes\n{}",
        text(&out)
    );
    fleet.assert_serving("2.0.0");
    assert_eq!(fleet.last_rollout()["outcome"], "succeeded");
    assert!(!fleet.lock_file().exists(), "no lock leaked");
    faults::record(faults::Case {
        bed: "netns hosts",
        fault: "agent kill -9 while it installs a staged artifact",
        outcome: "apply exit 1 naming the host, nothing switched; agent restarted; resume completed",
        lost: 0,
        unknown: 0,
    });
}

#[test]
fn faults_agent_killed_during_rollback_then_the_fleet_converges() {
    if !root_or_skip("faults_agent_killed_during_rollback") {
        return;
    }
    const N: usize = 6;
    let mut fleet = Fleet::start(N);
    fleet.install("1.0.0");
    let bad = fleet.artifact("2.0.0", "--health-status 500");
    let manifest = fleet.manifest(
        "2.0.0",
        &bad,
        "    rolling: {maxSurge: 0, maxUnavailable: 2}\n",
        10,
    );
    // Wave 1 (two activations) fails its gate; the 3rd activation is the rollback's first.
    let (mut run, victim) = frozen_at(&fleet, &manifest, "activate:3:stop");
    assert!(
        run.output().contains("rollgate fault hook: activate #3"),
        "{}",
        run.output()
    );
    let v = fleet.index(&victim);
    fleet.kill_agent(v);
    run.cont();
    let code = run.finish(Duration::from_secs(120));
    let log = format!("{}{}", run.describe(), run.output());
    assert_eq!(
        code,
        Some(1),
        "the rollback cannot finish on {victim}\n{log}"
    );
    assert!(
        run.records
            .iter()
            .any(|r| matches!(&r.event, Event::RollbackStarted { to, .. } if to == "1.0.0")),
        "a rollback to 1.0.0 was under way\n{log}"
    );
    assert!(!fleet.lock_file().exists(), "the lock is released");
    // Every other host is back on 1.0.0 already.
    for i in (0..N).filter(|&i| i != v) {
        let got = fleet.agent_status(i).slots[0].active.clone();
        assert_eq!(
            got.as_deref(),
            Some("1.0.0"),
            "{} rolled back\n{log}",
            fleet.hosts[i].name
        );
    }

    // The agent comes back on whichever version its state file says; resume finishes the rollback.
    fleet.start_agent(v);
    fleet.wait_agent(v, Duration::from_secs(20));
    let restarted = fleet.agent_status(v).slots[0].active.clone();
    assert!(
        matches!(restarted.as_deref(), Some("1.0.0" | "2.0.0")),
        "{victim} is on the old or the new version: {restarted:?}"
    );
    let out = fleet.run(&["resume", APP, "-o", "plain"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "resume finishes the rollback\n{}",
        text(&out)
    );
    fleet.assert_serving("1.0.0");
    assert_eq!(fleet.last_rollout()["outcome"], "rolledBack");
    assert!(!fleet.lock_file().exists(), "no lock leaked");
    faults::record(faults::Case {
        bed: "netns hosts",
        fault: "agent kill -9 while it activates the old version in a rollback",
        outcome: &format!(
            "apply exit 1, rollback incomplete; agent restarted on {}; resume rolled back",
            restarted.unwrap_or_default()
        ),
        lost: 0,
        unknown: 0,
    });
}
