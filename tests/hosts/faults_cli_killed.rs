//! The fault matrix, CLI side: `rollgate apply` is killed with -9 at every distinct point of a
//! rollout (after each journal record kind, during staging, during an activation, during a gate,
//! during the rollback), then `rollgate resume` runs. Each time the rollout must end completed or
//! rolled back, every host's actual state (asked of its agent) must be one the journal explains,
//! every record the CLI reported must be in the journal, and no lock may be left.
//!
//! The kill is exact: the CLI's fault hook (`ROLLGATE_FAULT_INJECT=POINT:N`, see `src/faults.rs`)
//! raises SIGKILL on itself right after the Nth pass of POINT.

use std::collections::BTreeSet;
use std::time::Duration;

use rollgate::state::{Event, Outcome, Store, history};

use crate::faults;
use crate::fleet::{APP, Fleet, Running, text};
use crate::netns::root_or_skip;

/// One kill point.
struct KillAt {
    /// `ROLLGATE_FAULT_INJECT`.
    hook: &'static str,
    /// What the matrix calls it.
    fault: &'static str,
    /// Roll out a version whose health gate fails, so the kill lands in the rollback.
    bad: bool,
}

const CASES: &[KillAt] = &[
    KillAt {
        hook: "started:1",
        fault: "CLI kill -9 after the Started record (before staging)",
        bad: false,
    },
    KillAt {
        hook: "stage:3",
        fault: "CLI kill -9 during staging (3rd agent unpacking)",
        bad: false,
    },
    KillAt {
        hook: "stepStarted:2",
        fault: "CLI kill -9 after a StepStarted record",
        bad: false,
    },
    KillAt {
        hook: "instanceChanging:3",
        fault: "CLI kill -9 after an InstanceChanging record (wave 2 about to switch)",
        bad: false,
    },
    KillAt {
        hook: "activate:3",
        fault: "CLI kill -9 during an activation (agent switching)",
        bad: false,
    },
    KillAt {
        hook: "instanceChanged:2",
        fault: "CLI kill -9 after an InstanceChanged record (before the gate)",
        bad: false,
    },
    KillAt {
        hook: "probe:3",
        fault: "CLI kill -9 during a gate (3rd probe of 4)",
        bad: false,
    },
    KillAt {
        hook: "gate:1",
        fault: "CLI kill -9 after a Gate record",
        bad: false,
    },
    KillAt {
        hook: "stepDone:1",
        fault: "CLI kill -9 after a StepDone record",
        bad: false,
    },
    KillAt {
        hook: "finished:1",
        fault: "CLI kill -9 after the Finished record (lock still held)",
        bad: false,
    },
    KillAt {
        hook: "gate:1",
        fault: "CLI kill -9 after a failed Gate record (before the rollback)",
        bad: true,
    },
    KillAt {
        hook: "rollbackStarted:1",
        fault: "CLI kill -9 after the RollbackStarted record",
        bad: true,
    },
    KillAt {
        hook: "instanceChanging:3",
        fault: "CLI kill -9 after a rollback's InstanceChanging record",
        bad: true,
    },
    KillAt {
        hook: "activate:3",
        fault: "CLI kill -9 during a rollback's activation",
        bad: true,
    },
    KillAt {
        hook: "instanceChanged:3",
        fault: "CLI kill -9 after a rollback's InstanceChanged record",
        bad: true,
    },
];

#[test]
fn faults_cli_killed_at_every_point_then_resume() {
    if !root_or_skip("faults_cli_killed_at_every_point") {
        return;
    }
    const N: usize = 6;
    let fleet = Fleet::start(N);
    fleet.install("1.0.0");
    let store = Store::at(&fleet.state);
    let mut current = "1.0.0".to_string();
    let mut failures = Vec::new();
    // `FAULT_CASES=stage:3,gate:1` runs only those kill points (while investigating one).
    let only = std::env::var("FAULT_CASES").ok();
    for (k, case) in CASES.iter().enumerate() {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|h| h == case.hook))
        {
            continue;
        }
        let version = if case.bad {
            format!("9.0.{k}")
        } else {
            format!("2.0.{k}")
        };
        let flags = if case.bad { "--health-status 500" } else { "" };
        let artifact = fleet.artifact(&version, flags);
        // Waves of two hosts, one zone each: host1+host4, host2+host5, host3+host6.
        let manifest = fleet.manifest(
            &version,
            &artifact,
            "    rolling: {maxSurge: 0, maxUnavailable: 2}\n",
            10,
        );
        let mut cmd = fleet.rollgate(&["apply", "-f", manifest.to_str().unwrap(), "-o", "json"]);
        cmd.env(rollgate::faults::ENV, case.hook);
        let mut run = Running::spawn(cmd);
        let code = run.finish(Duration::from_secs(120));
        assert_eq!(
            code,
            None,
            "{}: the hook killed the CLI (exit by signal)\n{}{}",
            case.hook,
            run.describe(),
            run.output()
        );
        assert!(
            run.output().contains(&format!(
                "rollgate fault hook: {}",
                case.hook.replace(':', " #")
            )),
            "{}: killed by the hook, not otherwise\n{}",
            case.hook,
            run.output()
        );
        assert!(
            fleet.lock_file().exists(),
            "{}: a kill -9 leaves the lock",
            case.hook
        );

        // Before resume: every record the CLI reported is in the journal, and every host's state is
        // one the journal explains (it is on the old version, or the journal announced the change).
        let records = store.read(APP).unwrap();
        let last = history(&records).pop().unwrap();
        assert_eq!(
            last.to, version,
            "{}: the killed rollout is the last",
            case.hook
        );
        let journaled: Vec<&Event> = records.iter().map(|r| &r.event).collect();
        let lost = run
            .records
            .iter()
            .filter(|r| !journaled.contains(&&r.event))
            .count() as u32;
        let announced: BTreeSet<String> = records
            .iter()
            .filter_map(|r| match &r.event {
                Event::InstanceChanging {
                    rollout,
                    instance,
                    version: v,
                } if *rollout == last.id && *v == version => Some(instance.clone()),
                _ => None,
            })
            .collect();
        let actual = fleet.agent_versions();
        let unknown_before: Vec<String> = fleet
            .hosts
            .iter()
            .zip(&actual)
            .filter(|(h, v)| {
                let on = v.as_deref();
                let explained = on == Some(current.as_str())
                    || (on == Some(version.as_str()) && announced.contains(&h.name));
                !explained
            })
            .map(|(h, v)| format!("{} on {v:?}", h.name))
            .collect();

        let out = fleet.run(&["resume", APP, "-o", "plain"]);
        let after = fleet.agent_versions();
        let records = store.read(APP).unwrap();
        let summary = history(&records).pop().unwrap();
        let expected = if case.bad {
            Outcome::RolledBack
        } else {
            Outcome::Succeeded
        };
        let landed = if case.bad { &current } else { &version };
        let unknown_after = after
            .iter()
            .filter(|v| v.as_deref() != Some(landed.as_str()))
            .count();
        let lock_left = fleet.lock_file().exists();
        let outcome = format!(
            "resume exit {:?}, {}",
            out.status.code(),
            summary
                .outcome
                .map_or("unfinished".to_string(), |o| o.to_string())
        );
        eprintln!(
            "faults_cli_killed: {:<20} {} before resume {actual:?}; {outcome}; after {after:?}; lock left {lock_left}",
            case.hook,
            if case.bad { "(bad)" } else { "     " }
        );
        faults::record(faults::Case {
            bed: "netns hosts",
            fault: case.fault,
            outcome: &format!("{outcome}{}", if lock_left { ", LOCK LEFT" } else { "" }),
            lost,
            unknown: (unknown_before.len() + unknown_after) as u32,
        });
        let mut problems = Vec::new();
        if lost > 0 {
            problems.push(format!("{lost} reported records missing from the journal"));
        }
        if !unknown_before.is_empty() {
            problems.push(format!(
                "hosts in a state the journal does not explain: {unknown_before:?}"
            ));
        }
        if summary.id != last.id || summary.outcome != Some(expected) {
            problems.push(format!(
                "expected {expected} for {}, got {:?} for {}\n{}",
                last.id,
                summary.outcome,
                summary.id,
                text(&out)
            ));
        }
        if unknown_after > 0 {
            problems.push(format!("after resume, hosts not on {landed}: {after:?}"));
        }
        if lock_left {
            problems.push("the lock was left".into());
        }
        if !problems.is_empty() {
            failures.push(format!("{}: {}", case.hook, problems.join("; ")));
        }
        if !case.bad {
            current = version;
        }
        // The next case starts from a fleet that serves one version.
        if unknown_after > 0 {
            break;
        }
        fleet.assert_serving(&current);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
