//! Load on the team state: 20 apps rolled at once by 4 runners (4 machines: their own state dirs
//! and host names, 5 apps each, every rollout its own process) against one three-member etcd
//! cluster. Each app's journal in etcd holds its own records only, exactly as its runner wrote them.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rollgate::state::Record;

use crate::etcd3::{Etcd3, Machine};
use crate::fleet::{Fleet, Running};
use crate::netns::root_or_skip;

const APPS: usize = 20;
const RUNNERS: [&str; 4] = ["r1", "r2", "r3", "r4"];

/// Every app's rollout started at once, each by its runner (app `k` by runner `k % 4`); waits
/// for all, sampling how many locks etcd holds at once. The rollout ids, the rollouts' times, the
/// most locks held at once.
fn round(
    fleet: &Fleet,
    etcd: &Etcd3,
    runners: &[Machine],
    version: &str,
    strategy: &str,
) -> (Vec<String>, Vec<Duration>, usize) {
    let artifact = fleet.artifact(version, "");
    let started = Instant::now();
    let mut runs: Vec<(String, Running)> = fleet
        .apps
        .iter()
        .enumerate()
        .map(|(k, app)| {
            let m = fleet.manifest_for(app, version, &artifact, strategy, 60);
            let cmd = runners[k % RUNNERS.len()].command(&[
                "apply",
                "-f",
                m.to_str().unwrap(),
                "-o",
                "json",
            ]);
            (app.clone(), Running::spawn(cmd))
        })
        .collect();
    let mut most = 0;
    while runs
        .iter_mut()
        .any(|(_, r)| r.child.try_wait().unwrap().is_none())
        && started.elapsed() < Duration::from_secs(100)
    {
        let locks = etcd
            .keys("/rollgate/")
            .iter()
            .filter(|(k, _)| k.ends_with("/lock"))
            .count();
        most = most.max(locks);
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut ids = Vec::new();
    let mut times = Vec::new();
    for (app, run) in &mut runs {
        let code = run.finish(Duration::from_secs(10));
        assert_eq!(
            code,
            Some(0),
            "{app} {version}: {}{}",
            run.describe(),
            run.output()
        );
        let first = run.records.first().expect("records");
        let last = run.records.last().expect("records");
        times.push(Duration::from_millis(last.at_ms - first.at_ms));
        ids.push(first.event.rollout().to_string());
    }
    eprintln!(
        "load: {APPS} rollouts of {version} by {} runners: {:.1} s in all; per rollout median {:?}, max {:?}; at most {most} locks held at once",
        RUNNERS.len(),
        started.elapsed().as_secs_f64(),
        median(&times),
        times.iter().max().unwrap()
    );
    (ids, times, most)
}

fn median(times: &[Duration]) -> Duration {
    let mut t = times.to_vec();
    t.sort();
    t[t.len() / 2]
}

#[test]
fn etcd_load_20_apps_rolled_at_once_by_4_runners_each_journal_only_its_own() {
    if !root_or_skip("etcd_load_20_apps_4_runners") {
        return;
    }
    let began = Instant::now();
    let Some(etcd) = Etcd3::up(24580) else {
        return;
    };
    let extra: Vec<String> = (1..APPS).map(|k| format!("app{k:02}")).collect();
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    // Two hosts, each agent running the 20 services.
    let fleet = Fleet::start_apps(2, 1, &extra);
    assert_eq!(fleet.apps.len(), APPS);
    let runners: Vec<Machine> = RUNNERS
        .iter()
        .map(|name| Machine::new(&fleet, &etcd, name, false))
        .collect();

    let (installs, _, _) = round(
        &fleet,
        &etcd,
        &runners,
        "1.0.0",
        "    rolling: {maxSurge: 0, maxUnavailable: \"100%\"}\n",
    );
    let (rollouts, _, most) = round(
        &fleet,
        &etcd,
        &runners,
        "2.0.0",
        "    rolling: {maxSurge: 0, maxUnavailable: 1}\n",
    );
    assert!(
        most >= APPS / 2,
        "the rollouts ran at once: at most {most} locks were held together"
    );
    assert!(
        etcd.keys("/rollgate/")
            .iter()
            .all(|(k, _)| !k.ends_with("/lock")),
        "every lock released"
    );

    for (k, app) in fleet.apps.iter().enumerate() {
        assert_eq!(
            fleet.app_versions(app),
            vec![Some("2.0.0".to_string()); 2],
            "{app} on both hosts"
        );
        let runner = &runners[k % RUNNERS.len()];
        let ids = [installs[k].clone(), rollouts[k].clone()];
        // etcd's journal of the app: its two rollouts, every record one of them, as the runner
        // journaled it.
        let prefix = format!("/rollgate/{app}/journal/");
        let mut seen = BTreeSet::new();
        for (key, value) in etcd.keys(&prefix) {
            let rollout = key[prefix.len()..].split('/').next().unwrap().to_string();
            let record: Record = serde_json::from_str(&value).unwrap();
            assert_eq!(record.event.rollout(), rollout, "{key}: {value}");
            assert!(rollout.starts_with(&format!("{app}-")), "{key}: {value}");
            seen.insert(rollout);
        }
        assert_eq!(
            seen,
            ids.iter().cloned().collect(),
            "{app}'s rollouts in etcd"
        );
        for id in &ids {
            assert_eq!(
                etcd.journal_of(app, id),
                runner.journal_of(app, id),
                "{app} {id}: etcd holds the runner's records"
            );
        }
        // Another runner's `history`, from etcd: the same two rollouts, both succeeded.
        let other = &runners[(k + 1) % RUNNERS.len()];
        let h = other.history_of(app);
        let shown: Vec<(&str, &str)> = h
            .iter()
            .map(|r| (r["id"].as_str().unwrap(), r["outcome"].as_str().unwrap()))
            .collect();
        assert_eq!(
            shown,
            [
                (ids[0].as_str(), "succeeded"),
                (ids[1].as_str(), "succeeded")
            ],
            "{app}'s history from {}",
            other.name
        );
    }
    // Each runner's own state dir: its five apps, and at most the apps whose history it was asked
    // for (read from etcd); their journals hold only their own rollouts.
    for (r, runner) in runners.iter().enumerate() {
        let dirs: BTreeSet<String> = std::fs::read_dir(&runner.state)
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let asked = (r + RUNNERS.len() - 1) % RUNNERS.len();
        let of = |i: usize| -> BTreeSet<String> {
            fleet
                .apps
                .iter()
                .enumerate()
                .filter(|(k, _)| k % RUNNERS.len() == i)
                .map(|(_, a)| a.clone())
                .collect()
        };
        let own = of(r);
        let read: BTreeSet<String> = own.union(&of(asked)).cloned().collect();
        assert!(
            own.is_subset(&dirs) && dirs.is_subset(&read),
            "{}'s state dir holds {dirs:?}: its own {own:?}, at most also {:?}",
            runner.name,
            of(asked)
        );
        let store = rollgate::state::Store::at(&runner.state);
        for app in &dirs {
            let records = store.read(app).unwrap();
            assert!(
                records
                    .iter()
                    .all(|r| r.event.rollout().starts_with(&format!("{app}-"))),
                "{}'s journal of {app}",
                runner.name
            );
        }
    }
    eprintln!("load test: {:.1} s in all", began.elapsed().as_secs_f64());
}
