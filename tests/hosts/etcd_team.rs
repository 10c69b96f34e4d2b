//! Team state for host fleets on a real three-member etcd cluster (`tests/cluster/etcd3.sh`):
//! two machines (two state dirs, two host names; the second in a pid namespace of its own where a
//! test needs it not to see the first's processes) drive one fleet of real agents through
//! `ROLLGATE_STATE_URL`.

use std::time::{Duration, Instant};

use rollgate::state::{Event, Record};

use crate::etcd3::{Etcd3, Machine, bed, lost, unknown};
use crate::faults;
use crate::fleet::{APP, Fleet, Running, text};
use crate::netns::root_or_skip;

pub(super) const CANARY_MANUAL: &str = "    canary:\n      maxUnavailable: 1\n      steps:\n        - setWeight: 34\n        - pause: {}\n        - setWeight: 100\n";
pub(super) const CANARY_TIMED: &str = "    canary:\n      maxUnavailable: 1\n      steps:\n        - setWeight: 34\n        - pause: {duration: 6s}\n        - setWeight: 100\n";

/// The fault matrix's test bed of the etcd tests.
pub(super) const BED: &str = "etcd, 3 members on loopback; netns hosts";

/// Machine one's rollout of 2.0.0 (`strategy`, with a pause), once it has reached its pause:
/// the run and the pause's `stepStarted` record.
pub(super) fn at_pause(fleet: &Fleet, one: &Machine, strategy: &str) -> (Running, Record) {
    let v2 = fleet.artifact("2.0.0", "");
    let m2 = fleet.manifest("2.0.0", &v2, strategy, 10);
    let mut run = one.apply(&m2);
    let started = run.wait_for(
        Duration::from_secs(60),
        |e| matches!(e, Event::StepStarted { kind, .. } if *kind == rollgate::plan::StepKind::Pause),
    );
    (run, started)
}

/// The journal keys etcd holds for the app.
pub(super) fn journal_keys(etcd: &Etcd3) -> usize {
    etcd.keys(&format!("/rollgate/{APP}/journal/")).len()
}

#[test]
fn etcd_a_pause_on_one_machine_is_promoted_from_another_and_a_second_apply_is_refused() {
    let Some((etcd, fleet)) = bed("etcd_promote_from_another_machine", 24400) else {
        return;
    };
    let one = Machine::new(&fleet, &etcd, "one", false);
    let two = Machine::new(&fleet, &etcd, "two", false);

    let v2 = fleet.artifact("2.0.0", "");
    let m2 = fleet.manifest("2.0.0", &v2, CANARY_MANUAL, 10);
    let out = one.run(&["apply", "-f", m2.to_str().unwrap(), "-o", "plain"]);
    assert_eq!(out.status.code(), Some(3), "paused: {}", text(&out));
    assert!(journal_keys(&etcd) > 0, "the journal is in etcd");
    assert!(
        etcd.keys(&format!("/rollgate/{APP}/lock")).is_empty(),
        "a paused apply releases the lock"
    );

    // Machine two never ran the app: it finds the paused rollout in etcd and promotes it.
    let started = Instant::now();
    let out = two.run(&["promote", APP, "-o", "plain"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "promote from two: {}",
        text(&out)
    );
    eprintln!("promote from machine two: {:?}", started.elapsed());
    fleet.assert_serving("2.0.0");
    for m in [&one, &two] {
        let last = m.history().pop().unwrap();
        assert_eq!(last["to"], "2.0.0", "{}: {last}", m.name);
        assert_eq!(last["outcome"], "succeeded", "{}: {last}", m.name);
        assert!(
            last["approvals"].to_string().contains("machine-two"),
            "{}: the approval names machine two: {last}",
            m.name
        );
    }

    // Two concurrent applies from two machines: the second is refused, naming the first.
    let v3 = fleet.artifact("3.0.0", "");
    let m3 = fleet.manifest("3.0.0", &v3, CANARY_TIMED, 10);
    let mut run = one.apply(&m3);
    run.wait_for(
        Duration::from_secs(60),
        |e| matches!(e, Event::StepStarted { kind, .. } if *kind == rollgate::plan::StepKind::Pause),
    );
    let holder = run.child.id();
    let out = two.run(&["apply", "-f", m3.to_str().unwrap(), "-o", "plain"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr.contains("is locked by") && stderr.contains(&format!("pid {holder}")),
        "the refusal names the holder (pid {holder}): {}",
        text(&out)
    );
    assert!(stderr.contains("machine-one"), "{}", text(&out));
    assert_eq!(
        run.finish(Duration::from_secs(90)),
        Some(0),
        "{}",
        run.output()
    );
    fleet.assert_serving("3.0.0");
    two.assert_last("3.0.0", "succeeded");

    // `rollback` from machine two, which never ran 3.0.0: the previous version is back, and
    // machine one's history shows it.
    let out = two.run(&["rollback", APP, "-o", "plain"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "rollback from two: {}",
        text(&out)
    );
    fleet.assert_serving("2.0.0");
    one.assert_last("2.0.0", "succeeded");
}

#[test]
fn etcd_a_killed_runner_is_resumed_from_another_machine_once_its_lease_ends() {
    let Some((etcd, fleet)) = bed("etcd_killed_runner_resumed", 24420) else {
        return;
    };
    let one = Machine::new(&fleet, &etcd, "one", false);
    let two = Machine::new(&fleet, &etcd, "two", true);

    let (mut run, _) = at_pause(&fleet, &one, CANARY_TIMED);
    run.kill9();
    let killed = Instant::now();

    // At once, the lock is still held: refused, naming the dead runner and the lease's time left.
    let out = two.run(&["resume", APP, "-o", "plain"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is locked by"),
        "{}",
        text(&out)
    );

    // Once the lease ends (15 s without renewal), machine two resumes and finishes.
    let out = two.resume_when_free();
    assert_eq!(
        out.status.code(),
        Some(0),
        "resume from two: {}",
        text(&out)
    );
    let after = killed.elapsed();
    assert!(
        after >= Duration::from_secs(10),
        "not before the lease ended: {after:?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("took over the lock from"),
        "the takeover is said: {}",
        text(&out)
    );
    fleet.assert_serving("2.0.0");
    one.assert_last("2.0.0", "succeeded");
}

#[test]
fn etcd_a_runner_frozen_past_its_lease_is_taken_over_and_writes_nothing_when_it_wakes() {
    let Some((etcd, fleet)) = bed("etcd_frozen_runner", 24440) else {
        return;
    };
    let one = Machine::new(&fleet, &etcd, "one", false);
    let two = Machine::new(&fleet, &etcd, "two", true);

    let (mut run, _) = at_pause(&fleet, &one, CANARY_TIMED);
    let pid = nix::unistd::Pid::from_raw(run.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();

    // Machine two takes over once the frozen runner's lease ends, and finishes the rollout.
    let out = two.resume_when_free();
    assert_eq!(
        out.status.code(),
        Some(0),
        "resume from two: {}",
        text(&out)
    );
    fleet.assert_serving("2.0.0");
    let keys = etcd.keys(&format!("/rollgate/{APP}/journal/"));
    let revision = etcd.revision();

    // The frozen runner wakes: it stops, saying its lock is gone, and writes nothing to etcd
    // (the store's revision does not move) nor to the fleet.
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    let code = run.finish(Duration::from_secs(60));
    assert_ne!(code, Some(0), "{}", run.output());
    assert!(
        run.output().contains("no longer this process's"),
        "it says why it stopped: {}",
        run.output()
    );
    assert_eq!(
        etcd.revision(),
        revision,
        "the woken runner wrote nothing to etcd"
    );
    assert_eq!(etcd.keys(&format!("/rollgate/{APP}/journal/")), keys);
    fleet.assert_serving("2.0.0");
    two.assert_last("2.0.0", "succeeded");
}

#[test]
fn etcd_over_tls_a_rollout_rides_out_its_leader_killed_and_loses_no_record() {
    if !root_or_skip("etcd_tls_leader_killed") {
        return;
    }
    let Some(etcd) = Etcd3::up_tls(24460) else {
        return;
    };
    let fleet = Fleet::start(3);
    fleet.install("1.0.0");
    let one = Machine::new(&fleet, &etcd, "one", false);
    let two = Machine::new(&fleet, &etcd, "two", false);

    let (mut run, started) = at_pause(&fleet, &one, CANARY_TIMED);
    let leader = etcd.leader();
    etcd.kill(leader);
    assert_eq!(
        run.finish(Duration::from_secs(90)),
        Some(0),
        "{}",
        run.output()
    );
    fleet.assert_serving("2.0.0");

    // Every record of the rollout is in etcd (two members left), in order, as this machine wrote it.
    let id = started.event.rollout();
    let local = one.journal_of(APP, id);
    let stored = etcd.journal_of(APP, id);
    faults::record(faults::Case {
        bed: BED,
        fault: "the etcd leader SIGKILLed during a canary's timed pause (TLS client ports)",
        outcome: "ridden out, completed",
        lost: lost(&local, &stored),
        unknown: unknown(&fleet, "2.0.0"),
    });
    assert!(local.len() > 5, "{local:?}");
    assert_eq!(stored, local, "no record lost, none out of order");
    two.assert_last("2.0.0", "succeeded");
}

/// The team state's costs on loopback, through the library (no fleet): taking the lock, one
/// step's records appended and awaited (as the engine does at each step boundary), the release.
#[test]
fn etcd_costs_of_the_lock_a_step_and_the_release() {
    use rollgate::spec::state::EtcdSpec;
    use rollgate::state::{Actor, Event, Store};
    let Some(etcd) = Etcd3::up(24480) else {
        return;
    };
    let spec = EtcdSpec::from_url(&etcd.url).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::at(dir.path());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // Through `Team`, the face the engine and the CLI use.
        let remote = rollgate::state::team::Team::Etcd(
            rollgate::state::etcd::team::Remote::new(&spec, APP).unwrap(),
        );
        let t = Instant::now();
        let session = remote.acquire(&store, &Actor::from_env()).await.unwrap();
        let lock = t.elapsed();
        let mut steps = Vec::new();
        for step in 0..20 {
            let t = Instant::now();
            let mut journal = store.journal(APP).unwrap();
            for event in [
                Event::StepDone {
                    rollout: "r1".into(),
                    step,
                    millis: 1,
                },
                Event::StepDone {
                    rollout: "r1".into(),
                    step,
                    millis: 2,
                },
            ] {
                journal.append(event).unwrap();
                session.changed();
            }
            session.flush().await.unwrap();
            steps.push(t.elapsed());
        }
        let t = Instant::now();
        session.release().await;
        let release = t.elapsed();
        steps.sort();
        eprintln!(
            "etcd team state on loopback (3 members): lock {lock:?}, step (2 records appended and awaited) median {:?} max {:?}, release {release:?}",
            steps[steps.len() / 2],
            steps[steps.len() - 1]
        );
        assert_eq!(etcd.keys(&format!("/rollgate/{APP}/journal/r1/")).len(), 40);
        assert!(etcd.keys(&format!("/rollgate/{APP}/lock")).is_empty(), "released");
    });
}

#[test]
fn etcd_the_whole_cluster_down_past_the_write_window_stops_the_run_and_resume_finishes_it() {
    let Some((etcd, fleet)) = bed("etcd_cluster_down", 24500) else {
        return;
    };
    let one = Machine::new(&fleet, &etcd, "one", false);

    // A pause longer than the write window: etcd is gone while the run waits.
    let long = CANARY_TIMED.replace("duration: 6s", "duration: 30s");
    let (mut run, started) = at_pause(&fleet, &one, &long);
    etcd.must("kill-all");
    let down = Instant::now();
    let code = run.finish(Duration::from_secs(60));
    let stopped_after = down.elapsed();
    assert_eq!(code, Some(1), "{}", run.output());
    assert!(
        run.output().contains("is no longer this process's")
            && run.output().contains("nothing more was written"),
        "a clear message: {}",
        run.output()
    );
    assert!(
        stopped_after < Duration::from_secs(25),
        "stopped within the write window, not at the pause's end: {stopped_after:?}"
    );
    assert!(
        !run.records
            .iter()
            .any(|r| matches!(r.event, Event::StepStarted { step, .. } if step > 1)),
        "no step began without etcd: {}",
        run.describe()
    );
    assert!(
        fleet.agent_versions().contains(&Some("1.0.0".into())),
        "the rollout did not go on: {:?}",
        fleet.agent_versions()
    );

    // etcd back: `resume` on the same machine (the dead runner's lock is freed at once) finishes,
    // and etcd holds the whole rollout as the local journal does.
    etcd.must("start-all");
    let out = one.run(&["resume", APP, "-o", "plain"]);
    assert_eq!(out.status.code(), Some(0), "resume: {}", text(&out));
    fleet.assert_serving("2.0.0");
    let id = started.event.rollout();
    let local = one.journal_of(APP, id);
    let stored = etcd.journal_of(APP, id);
    faults::record(faults::Case {
        bed: BED,
        fault: "the whole etcd cluster SIGKILLed during a 30 s pause, for longer than the 10 s write window",
        outcome: "stopped with exit 1 before the next step; resumed once etcd was back, completed",
        lost: lost(&local, &stored),
        unknown: unknown(&fleet, "2.0.0"),
    });
    assert_eq!(stored, local, "no record lost");
}
