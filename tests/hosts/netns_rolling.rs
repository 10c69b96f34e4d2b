//! Case 1 of the test bed: a rolling update to a good v2 never has fewer than N − maxUnavailable
//! hosts serving, and never has hosts down in two zones at once.

use std::time::Duration;

use crate::fleet::{APP, Fleet, Probe, ZONES, status_versions, text};
use crate::netns::root_or_skip;

#[test]
fn netns_rolling_to_good_v2_keeps_n_minus_max_unavailable_serving() {
    if !root_or_skip("netns_rolling_to_good_v2") {
        return;
    }
    const N: usize = 6;
    const MAX_UNAVAILABLE: usize = 2;
    let fleet = Fleet::start(N);
    fleet.install("1.0.0");
    let v2 = fleet.artifact("2.0.0", "");
    let manifest = fleet.manifest(
        "2.0.0",
        &v2,
        &format!("    rolling: {{maxSurge: 0, maxUnavailable: {MAX_UNAVAILABLE}}}\n"),
        5,
    );

    let probe = Probe::start(fleet.service_addrs(), Duration::from_millis(50));
    std::thread::sleep(Duration::from_millis(300));
    let out = fleet.run(&["apply", "-f", manifest.to_str().unwrap(), "-o", "plain"]);
    std::thread::sleep(Duration::from_millis(300));
    let report = probe.stop();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // The probe ran throughout: it saw every host go from v1 to v2, and took samples at its pace.
    for i in 0..N {
        assert_eq!(
            report.versions_seen(i),
            ["1.0.0", "2.0.0"],
            "{}: versions served, in order",
            fleet.hosts[i].name
        );
    }
    let expected = report.took.as_millis() as usize / 50 * N;
    assert!(
        report.sample_count() * 2 >= expected,
        "the probe took {} samples in {:?}, expected about {expected}",
        report.sample_count(),
        report.took
    );
    let (min, at) = report.min_available();
    eprintln!(
        "netns_rolling: {} samples over {:.1}s; fewest serving {min}/{N} at {:.2}s",
        report.sample_count(),
        report.took.as_secs_f64(),
        at.as_secs_f64()
    );
    assert!(
        min >= N - MAX_UNAVAILABLE,
        "availability fell to {min} of {N} at {at:?} (maxUnavailable {MAX_UNAVAILABLE}); ticks with a host down:\n{}",
        report.dips()
    );
    // spreadBy: zone: the hosts down at any tick are all in one zone.
    for (t, row) in report.timeline() {
        let zones: std::collections::BTreeSet<&str> = row
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_none())
            .map(|(i, _)| ZONES[i % ZONES.len()])
            .collect();
        assert!(
            zones.len() <= 1,
            "hosts down in zones {zones:?} at once at {t:?}:\n{}",
            report.dips()
        );
    }

    // The CLI and the agents agree.
    fleet.assert_serving("2.0.0");
    let out = fleet.run(&["status", APP]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let status = status_versions(&out);
    assert_eq!(status.len(), N, "{}", text(&out));
    assert!(status.iter().all(|(_, v)| v == "2.0.0"), "{}", text(&out));
    assert!(!fleet.lock_file().exists(), "the lock is released");
}
