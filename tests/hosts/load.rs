//! Load: 200 rollouts of one app in a row (the state store must stay bounded, compaction must lose
//! nothing it keeps), and several apps rolled at once by separate CLIs against one set of agents
//! (no lock crosstalk, each journal only its own).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rollgate::state::{Event, LOCAL_KEEP_ROLLOUTS, Record, Store, history};

use crate::fleet::{APP, Fleet, Running, text};
use crate::netns::root_or_skip;

/// Bytes of an app's whole state dir (journal, controls, stored manifests).
fn store_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

fn mean_ms(times: &[Duration]) -> f64 {
    times.iter().map(Duration::as_secs_f64).sum::<f64>() * 1000.0 / times.len() as f64
}

#[test]
fn load_200_rollouts_in_a_row_keep_the_store_bounded() {
    if !root_or_skip("load_200_rollouts_in_a_row") {
        return;
    }
    const ROLLOUTS: usize = 200;
    let fleet = Fleet::start(2);
    fleet.install("1.0.0");
    let strategy = "    rolling: {maxSurge: 0, maxUnavailable: 1}\n";
    let manifests: Vec<_> = ["1.0.0", "2.0.0"]
        .iter()
        .map(|v| {
            let artifact = fleet.artifact(v, "");
            fleet.manifest(v, &artifact, strategy, 10)
        })
        .collect();
    let store = Store::at(&fleet.state);
    let app_dir = fleet.state.join(APP);
    let mut printed: HashMap<String, Vec<Event>> = HashMap::new();
    let mut ids = Vec::new();
    let mut times = Vec::new();
    let mut sizes = Vec::new();
    let mut most_kept = 0;
    for i in 0..ROLLOUTS {
        // Alternate 2.0.0 and 1.0.0: both stay on disk, so every rollout is the same work.
        let manifest = &manifests[(i + 1) % 2];
        let started = Instant::now();
        let out = fleet.run(&["apply", "-f", manifest.to_str().unwrap(), "-o", "json"]);
        let took = started.elapsed();
        assert_eq!(out.status.code(), Some(0), "rollout {i}\n{}", text(&out));
        let records: Vec<Record> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let id = match &records[0].event {
            Event::Started { rollout, .. } => rollout.clone(),
            other => panic!("rollout {i} began with {other:?}"),
        };
        printed.insert(id.clone(), records.into_iter().map(|r| r.event).collect());
        ids.push(id);
        let kept = history(&store.read(APP).unwrap()).len();
        most_kept = most_kept.max(kept);
        let bytes = store_bytes(&app_dir);
        eprintln!(
            "load: rollout {:>3} {:>6.0} ms; store {bytes:>7} bytes, {kept:>3} rollouts in the journal",
            i + 1,
            took.as_secs_f64() * 1000.0
        );
        times.push(took);
        sizes.push(bytes);
    }
    let (first, last) = (mean_ms(&times[..10]), mean_ms(&times[ROLLOUTS - 10..]));
    eprintln!(
        "load: mean of the first 10 rollouts {first:.0} ms, of the last 10 {last:.0} ms (ratio {:.2}); store at most {} bytes, at the end {} bytes",
        last / first,
        sizes.iter().max().unwrap(),
        sizes.last().unwrap()
    );

    // Bounded: never more than 2 x KEEP + 1 rollouts held (the install counts too), and the store
    // after 200 rollouts no bigger than it was at its largest before the first compaction.
    assert!(
        most_kept <= 2 * LOCAL_KEEP_ROLLOUTS + 1,
        "the journal held {most_kept} rollouts"
    );
    let before_first_compaction = *sizes[..2 * LOCAL_KEEP_ROLLOUTS].iter().max().unwrap();
    assert!(
        *sizes.last().unwrap() <= before_first_compaction,
        "store {} bytes at the end, {before_first_compaction} before compacting",
        sizes.last().unwrap()
    );
    let manifests_kept = std::fs::read_dir(app_dir.join("rollouts")).unwrap().count();
    assert!(
        manifests_kept <= 2 * LOCAL_KEEP_ROLLOUTS + 1,
        "{manifests_kept} manifests kept"
    );

    // Nothing the journal keeps was lost: the kept rollouts are the newest ones, and each one's
    // records are exactly the ones the CLI reported while it ran.
    let records = store.read(APP).unwrap();
    let kept: Vec<String> = history(&records).into_iter().map(|r| r.id).collect();
    assert_eq!(
        kept,
        ids[ids.len() - kept.len()..],
        "the newest rollouts are kept"
    );
    for id in &kept {
        let journaled: Vec<Event> = records
            .iter()
            .filter(|r| {
                serde_json::to_value(&r.event).unwrap()["rollout"].as_str() == Some(id.as_str())
            })
            .map(|r| r.event.clone())
            .collect();
        assert_eq!(&journaled, &printed[id], "records of {id}");
    }
    let compacted = store
        .compacted(APP)
        .unwrap()
        .expect("the journal was compacted");
    assert_eq!(
        compacted.rollouts as usize + kept.len(),
        ROLLOUTS + 1,
        "every rollout is kept or counted: {compacted:?}"
    );
    assert_eq!(compacted.succeeded, compacted.rollouts, "{compacted:?}");
    // `history` shows the kept rollouts, the last one last.
    let out = fleet.run(&["history", APP, "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown.as_array().unwrap().len(), kept.len());
    assert_eq!(shown[kept.len() - 1]["id"], ids[ROLLOUTS - 1].as_str());
    // The text form says how many were folded away.
    let out = fleet.run(&["history", APP]);
    let folded = format!(
        "({} earlier rollouts compacted: {} succeeded,",
        compacted.rollouts, compacted.succeeded
    );
    assert!(text(&out).contains(&folded), "{}", text(&out));
    fleet.assert_serving("1.0.0");
}

#[test]
fn load_many_apps_at_once_on_one_agent_set_without_lock_crosstalk() {
    if !root_or_skip("load_many_apps_at_once") {
        return;
    }
    let fleet = Fleet::start_apps(3, 1, &["api", "jobs", "admin"]);
    let strategy = "    rolling: {maxSurge: 0, maxUnavailable: 1}\n";
    let v1 = fleet.artifact("1.0.0", "");
    let v2 = fleet.artifact("2.0.0", "");
    for app in &fleet.apps {
        let m = fleet.manifest_for(
            app,
            "1.0.0",
            &v1,
            "    rolling: {maxSurge: 0, maxUnavailable: \"100%\"}\n",
            10,
        );
        let out = fleet.run(&["apply", "-f", m.to_str().unwrap(), "-o", "plain"]);
        assert_eq!(out.status.code(), Some(0), "install {app}: {}", text(&out));
    }
    // One CLI per app, each frozen by its fault hook right after its first step started: all four
    // hold their own lock at the same moment. Let go together, their first waves start within the
    // same millisecond, which is how this test found request ids shared across services (409
    // request_id_reused from the agent).
    let mut runs: Vec<(String, Running)> = fleet
        .apps
        .iter()
        .map(|app| {
            let m = fleet.manifest_for(app, "2.0.0", &v2, strategy, 10);
            let mut cmd = fleet.rollgate(&["apply", "-f", m.to_str().unwrap(), "-o", "json"]);
            cmd.env(rollgate::faults::ENV, "stepStarted:1:stop");
            (app.clone(), Running::spawn(cmd))
        })
        .collect();
    for (app, run) in &runs {
        let line = run.wait_stopped(Duration::from_secs(120));
        assert!(line.contains(&format!("{app}-")), "{app}: {line}");
    }
    for (app, run) in &runs {
        let lock = std::fs::read_to_string(fleet.state.join(app).join("lock"))
            .unwrap_or_else(|e| panic!("{app} holds its lock: {e}"));
        assert!(
            lock.contains(&format!("pid {}", run.child.id())),
            "{app}'s lock names its own CLI: {lock}"
        );
    }
    // A second rollout of one app is refused while the others are unaffected.
    let again = fleet.manifest_for("api", "2.0.0", &v2, strategy, 10);
    let out = fleet.run(&["apply", "-f", again.to_str().unwrap(), "-o", "plain"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("api is locked by"),
        "{}",
        text(&out)
    );
    for (_, run) in &runs {
        run.cont();
    }
    for (app, run) in &mut runs {
        let code = run.finish(Duration::from_secs(180));
        assert_eq!(
            code,
            Some(0),
            "{app} completes\n{}{}",
            run.describe(),
            run.output()
        );
    }
    let store = Store::at(&fleet.state);
    for app in &fleet.apps {
        assert_eq!(
            fleet.app_versions(app),
            vec![Some("2.0.0".to_string()); fleet.hosts.len()],
            "{app} on every host"
        );
        assert!(
            !fleet.state.join(app).join("lock").exists(),
            "{app}'s lock released"
        );
        let records = store.read(app).unwrap();
        let foreign: Vec<&Record> = records
            .iter()
            .filter(|r| {
                !serde_json::to_value(&r.event).unwrap()["rollout"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("{app}-"))
            })
            .collect();
        assert!(foreign.is_empty(), "{app}'s journal holds {foreign:?}");
        let h = history(&records);
        assert_eq!(h.len(), 2, "{app}: its install and its rollout");
        assert!(
            h.iter()
                .all(|r| r.outcome == Some(rollgate::state::Outcome::Succeeded))
        );
    }
    // The other services on each host were never touched by another app's rollout: each agent's
    // service ran only the versions of its own rollouts.
    for app in &fleet.apps {
        for i in 0..fleet.hosts.len() {
            let status = fleet.app_status(app, i);
            let versions: Vec<&str> = status.versions.iter().map(|v| v.version.as_str()).collect();
            assert_eq!(versions, ["1.0.0", "2.0.0"], "{app} on host{}", i + 1);
        }
    }
}
