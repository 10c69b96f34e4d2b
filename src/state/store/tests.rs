//! The journal store's tests: appends, compaction, torn tails, the local lock.
use super::*;

fn actor() -> Actor {
    Actor {
        user: "ana".into(),
        host: "box".into(),
        ci: None,
        client: None,
        signed: None,
        kubernetes: None,
    }
}

#[test]
fn records_set_aside_read_back_and_leave_the_journal_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::at(tmp.path());
    let mut journal = store.journal("web").unwrap();
    journal
        .append(Event::StepDone {
            rollout: "web-1".into(),
            step: 0,
            millis: 5,
        })
        .unwrap();
    let aside = vec![Record {
        at_ms: 7,
        event: Event::StepDone {
            rollout: "web-2".into(),
            step: 1,
            millis: 9,
        },
    }];
    store
        .set_aside("web", "journal.discarded-7.jsonl", &aside)
        .unwrap();
    let path = store.app_dir("web").join("journal.discarded-7.jsonl");
    assert_eq!(read_records(&path).unwrap(), aside);
    let kept = store.read("web").unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].event.rollout(), "web-1");
}

#[test]
fn a_torn_last_line_is_ignored_but_a_corrupt_middle_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::at(dir.path());
    let mut j = store.journal("web").unwrap();
    j.append(Event::StepDone {
        rollout: "r".into(),
        step: 0,
        millis: 1,
    })
    .unwrap();
    let path = dir.path().join("web/journal.jsonl");
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(b"{\"atMs\":1,\"ev").unwrap();
    assert_eq!(store.read("web").unwrap().len(), 1);
    f.write_all(b"\n{}\n").unwrap();
    assert!(matches!(
        store.read("web"),
        Err(StateError::Corrupt { line: 2, .. })
    ));
}

#[test]
fn the_lock_names_its_holder_and_is_released_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::at(dir.path());
    let held = store.lock("web", &actor()).unwrap();
    let err = store.lock("web", &actor()).unwrap_err().to_string();
    assert!(err.contains("web is locked by ana@box pid"), "{err}");
    drop(held);
    store.lock("web", &actor()).unwrap();
}

fn finished(j: &mut Journal, id: &str, outcome: Outcome) {
    j.append_all([
        Event::Started {
            rollout: id.into(),
            from: Some("1".into()),
            to: "2".into(),
            strategy: StrategyKind::Rolling,
            actor: actor(),
            steps: 1,
        },
        Event::StepDone {
            rollout: id.into(),
            step: 0,
            millis: 1,
        },
        Event::Finished {
            rollout: id.into(),
            outcome,
            detail: String::new(),
        },
    ])
    .unwrap();
}

#[test]
fn compaction_keeps_the_last_rollouts_byte_for_byte_and_counts_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::at(dir.path());
    let mut j = store.journal("web").unwrap();
    let manifest: crate::spec::Rollout = serde_yaml::from_str(
        "apiVersion: rollgate.dev/v1\nkind: Rollout\nmetadata: {name: web}\nspec:\n  version: '2'\n  target: {hosts: {service: web, hosts: []}}\n  strategy: {rolling: {maxSurge: 0, maxUnavailable: 1}}\n",
    )
    .unwrap();
    // r0 succeeds, then 9 rollbacks: r0 stays, as what `rollgate rollback` needs.
    finished(&mut j, "r0", Outcome::Succeeded);
    for i in 1..10 {
        finished(&mut j, &format!("r{i}"), Outcome::RolledBack);
    }
    for i in 0..10 {
        store
            .save_manifest("web", &format!("r{i}"), &manifest)
            .unwrap();
    }
    j.append(Event::Started {
        rollout: "r10".into(),
        from: Some("1".into()),
        to: "2".into(),
        strategy: StrategyKind::Rolling,
        actor: actor(),
        steps: 1,
    })
    .unwrap();
    for _ in 0..5 {
        store
            .send_control("web", &Control::Pause { actor: actor() })
            .unwrap();
    }
    // Compaction runs with no journal handle open, as under the lock before the engine
    // opens its own (Windows refuses to replace a file that is open).
    drop(j);
    let path = dir.path().join("web/journal.jsonl");
    let before = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        store.compact("web", 5).unwrap(),
        None,
        "10 finished <= 2 * 5"
    );
    let summary = store
        .compact("web", 4)
        .unwrap()
        .expect("10 finished > 2 * 4");
    assert_eq!(summary.rollouts, 5, "r1..r5 folded");
    assert_eq!((summary.succeeded, summary.rolled_back), (0, 5));
    assert_eq!(summary.last_id.as_deref(), Some("r5"));
    let after = std::fs::read_to_string(&path).unwrap();
    let kept: Vec<&str> = before
        .lines()
        .filter(|l| {
            ["r0", "r6", "r7", "r8", "r9", "r10"]
                .iter()
                .any(|id| l.contains(&format!("\"{id}\"")))
        })
        .collect();
    assert_eq!(after.lines().skip(1).collect::<Vec<_>>(), kept);
    let ids: Vec<String> = history(&store.read("web").unwrap())
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, ["r0", "r6", "r7", "r8", "r9", "r10"]);
    assert_eq!(store.compacted("web").unwrap(), Some(summary));
    let mut manifests: Vec<String> = std::fs::read_dir(dir.path().join("web/rollouts"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    manifests.sort();
    assert_eq!(
        manifests,
        ["r0.json", "r6.json", "r7.json", "r8.json", "r9.json"]
    );
    assert_eq!(
        store.control_count("web"),
        5,
        "requests are trimmed when a lock is released, not by compaction"
    );
    // A second compaction adds to the first one's counts.
    let mut j = store.journal("web").unwrap();
    for i in 11..16 {
        finished(&mut j, &format!("r{i}"), Outcome::Failed);
    }
    drop(j);
    let again = store.compact("web", 4).unwrap().unwrap();
    assert_eq!(
        (again.rollouts, again.rolled_back, again.failed),
        (10, 9, 1)
    );
}

#[test]
fn taking_the_lock_compacts_and_appends_go_on_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::at(dir.path());
    let mut j = store.journal("web").unwrap();
    for i in 0..=2 * LOCAL_KEEP_ROLLOUTS {
        finished(&mut j, &format!("r{i}"), Outcome::Succeeded);
    }
    drop(j);
    let lock = store.lock("web", &actor()).unwrap();
    assert_eq!(
        history(&store.read("web").unwrap()).len(),
        LOCAL_KEEP_ROLLOUTS
    );
    let mut j = store.journal("web").unwrap();
    finished(&mut j, "next", Outcome::Succeeded);
    drop(lock);
    let h = history(&store.read("web").unwrap());
    assert_eq!(h.len(), LOCAL_KEEP_ROLLOUTS + 1);
    assert_eq!(h.last().unwrap().id, "next");
}

#[test]
fn replacing_the_records_keeps_the_compaction_header() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::at(dir.path());
    let mut j = store.journal("web").unwrap();
    for i in 0..5 {
        finished(&mut j, &format!("r{i}"), Outcome::Succeeded);
    }
    drop(j);
    let summary = store.compact("web", 2).unwrap().unwrap();
    let records = store.read("web").unwrap();
    store.replace_records("web", &records[3..]).unwrap();
    assert_eq!(store.compacted("web").unwrap(), Some(summary));
    assert_eq!(store.read("web").unwrap(), records[3..]);
}

#[test]
fn a_torn_tail_is_cut_before_the_next_append() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::at(dir.path());
    finished(&mut store.journal("web").unwrap(), "r1", Outcome::Succeeded);
    let path = dir.path().join("web/journal.jsonl");
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(b"{\"atMs\":1,\"ev").unwrap();
    finished(&mut store.journal("web").unwrap(), "r2", Outcome::Succeeded);
    let ids: Vec<String> = history(&store.read("web").unwrap())
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, ["r1", "r2"]);
}

#[test]
fn a_lock_of_a_dead_process_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::at(dir.path());
    std::fs::create_dir_all(dir.path().join("web")).unwrap();
    std::fs::write(dir.path().join("web/lock"), "ana@box pid 4000000 since 1").unwrap();
    store.lock("web", &actor()).unwrap();
}

/// A run counts as its own every request sent after its lock was taken, and the request file is
/// trimmed only when the lock is freed.
#[test]
fn requests_after_the_lock_are_the_runs_and_release_trims_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::at(dir.path());
    let pause = || Control::Pause { actor: actor() };
    for _ in 0..3 {
        store.send_control("web", &pause()).unwrap();
    }
    let lock = store.lock("web", &actor()).unwrap();
    assert_eq!(
        lock.controls_at_lock(),
        3,
        "the three earlier ones are seen"
    );
    for _ in 0..LOCAL_KEEP_ROLLOUTS {
        store.send_control("web", &pause()).unwrap();
    }
    assert_eq!(
        store.controls("web", lock.controls_at_lock()).len(),
        LOCAL_KEEP_ROLLOUTS,
        "every request after the lock is the run's"
    );
    drop(lock);
    assert_eq!(store.control_count("web"), LOCAL_KEEP_ROLLOUTS);
    assert_eq!(
        store.lock("web", &actor()).unwrap().controls_at_lock(),
        LOCAL_KEEP_ROLLOUTS
    );
}
