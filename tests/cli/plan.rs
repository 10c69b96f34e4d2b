//! `rollgate plan` and `validate` on the shipped examples and presets, and the JSON contract.

use serde_json::Value;

use super::support::{BASE, repo, rollgate, workdir};

fn examples() -> Vec<String> {
    let mut out = Vec::new();
    for dir in ["manifests/kubernetes", "manifests/hosts"] {
        for entry in std::fs::read_dir(repo().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") && is_rollout(&path) {
                out.push(path.strip_prefix(repo()).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    assert!(
        out.len() >= 6,
        "an example for each target kind and strategy: {out:?}"
    );
    out
}

fn is_rollout(path: &std::path::Path) -> bool {
    std::fs::read_to_string(path)
        .unwrap()
        .contains("kind: Rollout")
}

#[test]
fn every_example_validates_and_plans_to_the_json_contract() {
    for example in examples() {
        let run = rollgate(&repo(), &["validate", "-f", &example], &[]);
        assert_eq!(run.code, 0, "{example}: {}", run.stderr);
        let run = rollgate(
            &repo(),
            &["plan", "-f", &example, "--replicas", "10", "-o", "json"],
            &[],
        );
        let run = if run.code == 2 && run.stderr.contains("--replicas applies to kubernetes") {
            rollgate(&repo(), &["plan", "-f", &example, "-o", "json"], &[])
        } else {
            run
        };
        assert_eq!(run.code, 0, "{example}: {}", run.stderr);
        let plan: Value = serde_json::from_str(&run.stdout).unwrap();
        check_contract(&example, &plan);
    }
}

/// The fixed `plan -o json` contract, and the bounds it promises.
fn check_contract(what: &str, plan: &Value) {
    let n = plan["replicas"]
        .as_u64()
        .unwrap_or_else(|| panic!("{what}: replicas"));
    let surge = plan["maxSurge"].as_u64().unwrap();
    let unavailable = plan["maxUnavailable"].as_u64().unwrap();
    let strategy = plan["strategy"].as_str().unwrap();
    assert!(
        ["rolling", "canary", "blueGreen"].contains(&strategy),
        "{what}: {strategy}"
    );
    let steps = plan["steps"].as_array().unwrap();
    assert!(!steps.is_empty(), "{what}");
    for s in steps {
        let kind = s["kind"].as_str().unwrap();
        assert!(
            ["scale", "pause", "analysis", "switch", "promote"].contains(&kind),
            "{what}: {kind}"
        );
        let (old, new) = (s["old"].as_u64().unwrap(), s["new"].as_u64().unwrap());
        let (min_available, max_total) = (
            s["minAvailable"].as_u64().unwrap(),
            s["maxTotal"].as_u64().unwrap(),
        );
        assert!(max_total <= n + surge, "{what}: {s}");
        assert!(
            min_available >= n.saturating_sub(unavailable),
            "{what}: {s}"
        );
        assert!(old + new <= max_total, "{what}: {s}");
    }
    let last = steps.last().unwrap();
    assert_eq!(
        (last["old"].as_u64(), last["new"].as_u64()),
        (Some(0), Some(n)),
        "{what}: the last step is all-new"
    );
}

#[test]
fn every_preset_plans_from_disk_and_builtin() {
    for preset in [
        "rolling",
        "one-at-a-time",
        "zero-downtime",
        "canary-10-25-50",
        "blue-green",
    ] {
        let text = BASE
            .replace(
                "    rolling:\n      maxSurge: 1\n      maxUnavailable: 0\n",
                &format!("    ref: {preset}\n"),
            )
            .replace(
                "spec:\n",
                "spec:\n  checks: [{name: smoke, runOn: cli, http: {url: \"http://x/health\"}}]\n",
            );
        // From ./strategies/ in the repository...
        let dir = workdir(&[("web.yaml", &text)]);
        let path = dir.path().join("web.yaml").display().to_string();
        let run = rollgate(
            &repo(),
            &["plan", "-f", &path, "--replicas", "20", "-o", "json"],
            &[],
        );
        assert_eq!(run.code, 0, "{preset}: {}", run.stderr);
        check_contract(preset, &serde_json::from_str(&run.stdout).unwrap());
        // ...and built into the binary, from a directory without strategies/.
        let run = rollgate(
            dir.path(),
            &["plan", "-f", "web.yaml", "--replicas", "20"],
            &[],
        );
        assert_eq!(run.code, 0, "{preset}: {}", run.stderr);
        assert!(
            run.stdout.contains(&format!("builtin:{preset}")),
            "{}",
            run.stdout
        );
    }
}

#[test]
fn a_preset_next_to_the_manifest_wins() {
    let text = BASE.replace(
        "    rolling:\n      maxSurge: 1\n      maxUnavailable: 0\n",
        "    ref: rolling\n",
    );
    let dir = workdir(&[
        ("web.yaml", &text),
        (
            "rolling.yaml",
            "rolling: {maxSurge: 0, maxUnavailable: 2}\n",
        ),
    ]);
    let run = rollgate(
        dir.path(),
        &["plan", "-f", "web.yaml", "--replicas", "4", "-o", "json"],
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let plan: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        (plan["maxSurge"].as_u64(), plan["maxUnavailable"].as_u64()),
        (Some(0), Some(2))
    );
}

#[test]
fn overlays_and_env_files_merge() {
    let dir = workdir(&[
        ("web.yaml", BASE),
        (
            "prod.yaml",
            "spec:\n  strategy:\n    rolling:\n      maxSurge: \"50%\"\n",
        ),
        ("web.prod.yaml", "spec:\n  version: \"3.0.0\"\n"),
    ]);
    let run = rollgate(
        dir.path(),
        &[
            "plan",
            "-f",
            "web.yaml",
            "-f",
            "prod.yaml",
            "--env",
            "prod",
            "--replicas",
            "10",
        ],
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("version 3.0.0"), "{}", run.stdout);
    assert!(
        run.stdout.contains("maxSurge 5, maxUnavailable 0"),
        "{}",
        run.stdout
    );
    // An overlay's own error is reported in the overlay's file.
    std::fs::write(
        dir.path().join("web.prod.yaml"),
        "spec:\n  version: \"3\"\n  bogus: 1\n",
    )
    .unwrap();
    let run = rollgate(
        dir.path(),
        &["validate", "-f", "web.yaml", "--env", "prod"],
        &[],
    );
    assert_eq!(run.code, 2);
    assert!(
        run.stderr
            .starts_with("error: web.prod.yaml:3:3: spec.bogus: unknown field `bogus`"),
        "{}",
        run.stderr
    );
}

#[test]
fn table_shows_counts_and_bounds() {
    let run = rollgate(
        &repo(),
        &["plan", "-f", "manifests/hosts/rolling.yaml"],
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .contains("6 instances, maxSurge 0, maxUnavailable 1"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("at least 5 ready at every moment"),
        "{}",
        run.stdout
    );
    // Six identical waves are one row, each wave's host kept (issue 20).
    assert_eq!(
        run.stdout.lines().filter(|l| l.contains(" scale ")).count(),
        1,
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("  1-6  scale  "), "{}", run.stdout);
    assert!(
        run.stdout.contains(
            "hosts: h1 (zone a) | h2 (zone a) | h3 (zone b) | h4 (zone b) | h5 (zone c) | h6 (zone c)"
        ),
        "{}",
        run.stdout
    );
}

#[test]
fn large_plans_are_complete() {
    let dir = workdir(&[("web.yaml", &BASE.replace("maxSurge: 1", "maxSurge: \"1%\""))]);
    let run = rollgate(
        dir.path(),
        &[
            "plan",
            "-f",
            "web.yaml",
            "--replicas",
            "100000",
            "-o",
            "json",
        ],
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let plan: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(plan["maxSurge"], 1000);
    assert_eq!(plan["steps"].as_array().unwrap().len(), 100);
    check_contract("100k", &plan);
}

/// Issue 20, "plans people can read": a hosts plan names each wave's hosts and zone (`-o json`:
/// `instances` per step), identical consecutive rows are one, and the header agrees with the notes.
#[test]
fn a_hosts_plan_names_its_hosts_merges_repeats_and_never_contradicts_itself() {
    let run = rollgate(&repo(), &["plan", "-f", "manifests/hosts/canary.yaml"], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let t = &run.stdout;
    assert!(
        t.contains("maxSurge 1 (not usable with one slot per host)"),
        "the header says what the note says: {t}"
    );
    assert!(
        t.contains("maxSurge 1 is not usable with one slot per host"),
        "{t}"
    );
    // The internal ring first (h1), then zone by zone.
    assert!(
        t.contains("    1  scale            3        1             3         4  canary weight 25%\n       hosts: h1 (zone a)\n"),
        "{t}"
    );
    assert!(
        t.contains("  5-6  scale            0        4             3         4  canary weight 100%\n       hosts: h3 (zone b) | h4 (zone b)\n"),
        "two identical rows merged, each wave's hosts kept: {t}"
    );
    assert_eq!(t.matches("canary weight 100%").count(), 1, "{t}");

    let run = rollgate(
        &repo(),
        &["plan", "-f", "manifests/hosts/canary.yaml", "-o", "json"],
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let plan: Value = serde_json::from_str(&run.stdout).unwrap();
    check_contract("canary.yaml", &plan);
    let instances: Vec<Value> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["instances"].clone())
        .collect();
    assert_eq!(
        instances,
        vec![
            serde_json::json!(["h1"]),
            serde_json::json!([]),
            serde_json::json!(["h2"]),
            serde_json::json!([]),
            serde_json::json!(["h3"]),
            serde_json::json!(["h4"]),
        ],
        "every step, unmerged, with its hosts: {}",
        run.stdout
    );
    // A Kubernetes plan has no `instances`: the contract is unchanged.
    let dir = workdir(&[("web.yaml", BASE)]);
    let run = rollgate(
        dir.path(),
        &["plan", "-f", "web.yaml", "--replicas", "4", "-o", "json"],
        &[("KUBECONFIG", "/nonexistent/kubeconfig")],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!run.stdout.contains("instances"), "{}", run.stdout);
}
