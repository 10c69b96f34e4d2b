//! Issue 15 §4: `rollgate validate` says yes only to what `rollgate plan` accepts. Every manifest
//! of the repository (`manifests/**`), the corpus of `tests/cli/corpus/` (the cases that once
//! disagreed among them), and every preset of `strategies/` on every kind of target go through
//! both, as the real binary: both succeed, or both refuse with the same exit code.

use std::path::{Path, PathBuf};

use super::support::{Run, repo, rollgate, workdir};

/// Every `.yaml` file under `dir`, recursively.
fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

/// Whether the manifest at `path` names a Kubernetes target (its size then comes from `--replicas`).
fn is_kubernetes(path: &Path) -> bool {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::from_str::<serde_yaml::Value>(&text)
        .ok()
        .and_then(|v| v.get("spec")?.get("target")?.get("kubernetes").cloned())
        .is_some()
}

fn outcome(run: &Run) -> String {
    format!("exit {}: {}{}", run.code, run.stdout, run.stderr)
}

/// Runs `validate` and `plan` on `path` from `cwd` and says how they disagree, if they do.
fn disagreement(cwd: &Path, path: &Path) -> Option<String> {
    let file = path.display().to_string();
    let validate = rollgate(cwd, &["validate", "-f", &file], &[]);
    // A Kubernetes target is planned at several sizes: no size may make plan refuse what
    // validate accepted.
    let sizes: &[&str] = if is_kubernetes(path) {
        &["0", "1", "3", "10"]
    } else {
        &[]
    };
    let mut plans = Vec::new();
    if sizes.is_empty() {
        plans.push(rollgate(cwd, &["plan", "-f", &file], &[]));
    }
    for n in sizes {
        plans.push(rollgate(cwd, &["plan", "-f", &file, "--replicas", n], &[]));
    }
    for plan in plans {
        let agree = match (validate.code, plan.code) {
            (0, 0) => true,
            (v, p) => v != 0 && v == p,
        };
        if !agree {
            return Some(format!(
                "{file}:\n  validate {}\n  plan     {}",
                outcome(&validate),
                outcome(&plan)
            ));
        }
    }
    None
}

const TARGETS: [(&str, &str); 3] = [
    (
        "hosts-1-slot",
        "  target:\n    hosts:\n      hosts:\n        - {name: h1, address: \"127.0.0.1:7443\", groups: [internal]}\n        - {name: h2, address: \"127.0.0.2:7443\"}\n        - {name: h3, address: \"127.0.0.3:7443\"}\n",
    ),
    (
        "hosts-2-slots",
        "  target:\n    hosts:\n      slotsPerHost: 2\n      hosts:\n        - {name: h1, address: \"127.0.0.1:7443\", groups: [internal]}\n        - {name: h2, address: \"127.0.0.2:7443\"}\n        - {name: h3, address: \"127.0.0.3:7443\"}\n",
    ),
    (
        "kubernetes",
        "  target:\n    kubernetes: {namespace: default, deployment: web}\n",
    ),
];

#[test]
fn validate_and_plan_agree_on_every_manifest() {
    let mut files = Vec::new();
    yaml_files(&repo().join("manifests"), &mut files);
    yaml_files(&repo().join("tests/cli/corpus"), &mut files);
    files.sort();
    let shipped = files.len();

    // Every preset, and every strategy of the corpus and the examples, on every kind of target.
    let mut strategies: Vec<(String, String)> = Vec::new();
    for entry in std::fs::read_dir(repo().join("strategies")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        strategies.push((name.clone(), format!("  strategy:\n    ref: {name}\n")));
    }
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let Some(strategy) = serde_yaml::from_str::<serde_yaml::Value>(&text)
            .ok()
            .and_then(|v| v.get("spec")?.get("strategy").cloned())
        else {
            continue;
        };
        let body: String = serde_yaml::to_string(&strategy)
            .unwrap()
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect();
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        strategies.push((stem, format!("  strategy:\n{body}")));
    }
    let dir = workdir(&[]);
    for (name, strategy) in &strategies {
        for (target, yaml) in TARGETS {
            let text = format!(
                "apiVersion: rollgate.dev/v1\nkind: Rollout\nmetadata:\n  name: web\nspec:\n  version: \"2.0.0\"\n{yaml}{strategy}"
            );
            let path = dir.path().join(format!("{name}-on-{target}.yaml"));
            std::fs::write(&path, text).unwrap();
            files.push(path);
        }
    }

    let mut refused = 0;
    let mut failures = Vec::new();
    for path in &files {
        if let Some(d) = disagreement(&repo(), path) {
            failures.push(d);
        }
        let validate = rollgate(
            &repo(),
            &["validate", "-f", &path.display().to_string()],
            &[],
        );
        if validate.code != 0 {
            refused += 1;
        }
    }
    eprintln!(
        "validate and plan on {} manifests ({shipped} in the repository, {} generated): {refused} refused by both, {} disagreements",
        files.len(),
        files.len() - shipped,
        failures.len()
    );
    assert!(
        shipped >= 20 && refused >= 10,
        "the corpus has both kinds: {shipped} shipped, {refused} refused"
    );
    assert!(
        failures.is_empty(),
        "validate and plan disagree:\n{}",
        failures.join("\n")
    );
}

/// The rules that used to be `plan`'s alone, now refused by `validate` with file:line:column.
#[test]
fn validate_refuses_what_in_place_hosts_cannot_do() {
    let corpus = repo().join("tests/cli/corpus");
    const IN_PLACE: &str = "is 0, but hosts with slotsPerHost: 1 are replaced in place: set maxUnavailable to at least 1, or use slotsPerHost: 2";
    for (file, want) in [
        (
            "hosts-slots1-blue-green.yaml",
            "hosts-slots1-blue-green.yaml:14:5: spec.strategy.blueGreen: needs room for both versions at once: use slotsPerHost: 2 on a host fleet".to_string(),
        ),
        (
            "hosts-slots1-rolling-unavailable-0.yaml",
            format!("hosts-slots1-rolling-unavailable-0.yaml:14:44: spec.strategy.rolling.maxUnavailable: {IN_PLACE}"),
        ),
        (
            "hosts-slots1-rolling-unavailable-0pct.yaml",
            format!("hosts-slots1-rolling-unavailable-0pct.yaml:13:48: spec.strategy.rolling.maxUnavailable: {IN_PLACE}"),
        ),
        (
            "hosts-slots1-canary-unavailable-0.yaml",
            format!("hosts-slots1-canary-unavailable-0.yaml:15:23: spec.strategy.canary.maxUnavailable: {IN_PLACE}"),
        ),
        (
            "hosts-weighted-one-host.yaml",
            "hosts-weighted-one-host.yaml:16:7: spec.strategy.canary.steps: setWeight 50 sends traffic to a version with no instance (0 stable, 1 canary of 1): raise maxSurge, or setCanaryScale".to_string(),
        ),
    ] {
        for command in ["validate", "plan"] {
            let run = rollgate(&corpus, &[command, "-f", file], &[]);
            assert_eq!(run.code, 2, "{command} {file}: {}", outcome(&run));
            assert_eq!(run.stderr.trim_end(), format!("error: {want}"), "{command} {file}");
        }
    }
    // A preset's maxUnavailable 0 on in-place hosts: the error names the preset.
    let run = rollgate(
        &corpus,
        &["validate", "-f", "hosts-slots1-zero-downtime-preset.yaml"],
        &[],
    );
    assert_eq!(run.code, 2, "{}", outcome(&run));
    assert!(
        run.stderr
            .starts_with("error: hosts-slots1-zero-downtime-preset.yaml:")
            && run.stderr.contains("zero-downtime")
            && run.stderr.contains(IN_PLACE),
        "{}",
        run.stderr
    );
}
