//! Case 8 of the test bed: `rollgate rollback APP` after a completed rollout puts every host back on
//! the old version from what the agents keep on disk: no artifact is read or staged again. By
//! default in health-gated waves of maxUnavailable; with `--fast`, in one step (zone by zone, as
//! spreadBy: zone asks).

use std::time::{Duration, Instant};

use rollgate::agent::api::InstalledVersion;
use rollgate::state::Event;

use crate::fleet::{APP, Fleet, Probe, Running, ZONES, text};
use crate::netns::root_or_skip;

#[test]
fn netns_rollback_after_completed_rollout_restores_v1_without_download() {
    if !root_or_skip("netns_rollback_after_completed_rollout") {
        return;
    }
    const N: usize = 6;
    const MAX_UNAVAILABLE: usize = 2;
    let fleet = Fleet::start(N);
    let v1 = fleet.install("1.0.0");
    let v2 = fleet.artifact("2.0.0", "");
    let manifest = fleet.manifest(
        "2.0.0",
        &v2,
        &format!("    rolling: {{maxSurge: 0, maxUnavailable: {MAX_UNAVAILABLE}}}\n"),
        5,
    );
    let started = Instant::now();
    let out = fleet.run(&["apply", "-f", manifest.to_str().unwrap(), "-o", "plain"]);
    let forward = started.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    fleet.assert_serving("2.0.0");

    // Nothing to download from: both artifacts are gone. What each agent has staged is noted.
    std::fs::remove_file(&v1).unwrap();
    std::fs::remove_file(&v2).unwrap();
    let staged: Vec<Vec<InstalledVersion>> =
        (0..N).map(|i| fleet.agent_status(i).versions).collect();
    for (i, versions) in staged.iter().enumerate() {
        let names: Vec<&str> = versions.iter().map(|v| v.version.as_str()).collect();
        assert!(
            names.contains(&"1.0.0") && names.contains(&"2.0.0"),
            "{}: {names:?}",
            fleet.hosts[i].name
        );
    }

    let probe = Probe::start(fleet.service_addrs(), Duration::from_millis(50));
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let out = fleet.run(&["rollback", APP, "-o", "plain"]);
    let back = started.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let report = probe.stop();
    // The artifacts are deleted: a rollback that reads (or would download) one fails here.
    assert_eq!(
        out.status.code(),
        Some(0),
        "rollback must not need the artifact files (deleted): {}",
        text(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("succeeded in"),
        "it says how long it took: {}",
        text(&out)
    );

    // Every host is back on 1.0.0, and the probe saw each go from 2.0.0 to 1.0.0.
    fleet.assert_serving("1.0.0");
    for i in 0..N {
        assert_eq!(
            report.versions_seen(i),
            ["2.0.0", "1.0.0"],
            "{}: versions served",
            fleet.hosts[i].name
        );
    }
    // Health-gated waves of maxUnavailable: never fewer than N − maxUnavailable serving.
    let (min, at) = report.min_available();
    eprintln!(
        "netns_rollback: forward rollout {:.1}s, rollback {:.1}s; fewest serving {min}/{N} at {:.2}s",
        forward.as_secs_f64(),
        back.as_secs_f64(),
        at.as_secs_f64()
    );
    assert!(
        min >= N - MAX_UNAVAILABLE,
        "availability fell to {min} at {at:?}:\n{}",
        report.dips()
    );
    // Nothing was staged again: the same versions, staged at the same moments, with the same hashes.
    for (i, before) in staged.iter().enumerate() {
        assert_eq!(
            &fleet.agent_status(i).versions,
            before,
            "{}: staged versions changed during the rollback",
            fleet.hosts[i].name
        );
    }
    assert!(!fleet.lock_file().exists(), "the lock is released");

    // Forward to 2.0.0 again (already on every host: nothing is uploaded), then `rollback --fast`:
    // every host switches in one wave.
    let v2 = fleet.artifact("2.0.0", "");
    let out = fleet.run(&["apply", "-f", manifest.to_str().unwrap(), "-o", "plain"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    fleet.assert_serving("2.0.0");
    std::fs::remove_file(&v2).unwrap();
    let mut run = Running::spawn(fleet.rollgate(&["rollback", APP, "--fast", "-o", "json"]));
    let code = run.finish(Duration::from_secs(60));
    let log = run.describe();
    assert_eq!(code, Some(0), "{log}{}", run.output());
    fleet.assert_serving("1.0.0");
    // One step; within it the hosts target still keeps to spreadBy: zone, so each zone's hosts
    // switch together, one zone at a time.
    let steps = run
        .records
        .iter()
        .filter(|r| matches!(r.event, Event::StepStarted { .. }))
        .count();
    assert_eq!(steps, 1, "--fast is one wave\n{log}");
    let index_of = |pred: &dyn Fn(&Event) -> bool| run.records.iter().position(|r| pred(&r.event));
    for zone in ZONES {
        let hosts: Vec<&str> = fleet
            .hosts
            .iter()
            .filter(|h| h.zone == zone)
            .map(|h| h.name.as_str())
            .collect();
        let last_start = hosts
            .iter()
            .map(|h| {
                index_of(
                    &|e| matches!(e, Event::InstanceChanging { instance, .. } if instance == h),
                )
                .expect("every host switches")
            })
            .max();
        let first_done = hosts
            .iter()
            .filter_map(|h| {
                index_of(&|e| matches!(e, Event::InstanceChanged { instance, .. } if instance == h))
            })
            .min();
        assert!(
            last_start < first_done,
            "zone {zone}: {hosts:?} switch together\n{log}"
        );
    }
    for (i, before) in staged.iter().enumerate() {
        assert_eq!(
            &fleet.agent_status(i).versions,
            before,
            "{}: staged versions changed",
            fleet.hosts[i].name
        );
    }
}
