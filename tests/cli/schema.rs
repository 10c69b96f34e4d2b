//! `rollgate schema`: every shipped manifest, preset and agent config is valid against the schema
//! the binary prints, and bad documents are refused by both the schema and the parser.

use std::path::{Path, PathBuf};

use super::support::{BASE, repo, rollgate, workdir};

fn validator(kind: &str) -> jsonschema::Validator {
    let run = rollgate(&repo(), &["schema", kind], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let schema: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert!(
        jsonschema::meta::is_valid(&schema),
        "{kind}: not a valid JSON Schema"
    );
    jsonschema::validator_for(&schema).unwrap()
}

fn yaml(text: &str) -> serde_json::Value {
    serde_yaml::from_str(text).unwrap()
}

fn errors(v: &jsonschema::Validator, doc: &serde_json::Value) -> Vec<String> {
    v.iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml") {
            out.push(path);
        }
    }
}

/// Every YAML under manifests/, strategies/ and packaging/ that rollgate reads (a Rollout, an agent
/// config or a preset) is valid; the counts make sure none was skipped by its shape.
#[test]
fn every_shipped_document_is_valid() {
    let (manifest, strategy, agent) = (
        validator("manifest"),
        validator("strategy"),
        validator("agent-config"),
    );
    let mut files = Vec::new();
    for dir in ["manifests", "strategies", "packaging"] {
        yaml_files(&repo().join(dir), &mut files);
    }
    let (mut manifests, mut presets, mut agents) = (0, 0, 0);
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        if text.contains("kind: ClusterRole") || text.contains("kind: Role") {
            continue; // Kubernetes RBAC (manifests/kubernetes/rbac.yaml), not ours
        }
        let doc = yaml(&text);
        let (v, count) = if doc["kind"] == "Rollout" {
            (&manifest, &mut manifests)
        } else if doc.get("dataDir").is_some() {
            (&agent, &mut agents)
        } else if file.starts_with(repo().join("strategies")) {
            (&strategy, &mut presets)
        } else {
            panic!("{}: which schema?", file.display());
        };
        *count += 1;
        let errs = errors(v, &doc);
        assert!(errs.is_empty(), "{}: {errs:#?}", file.display());
    }
    assert!(manifests >= 6, "{manifests} manifests");
    assert_eq!(presets, 5);
    assert!(agents >= 3, "{agents} agent configs");
}

/// Each bad manifest is refused by the schema and by `validate` (exit 2); the good one by neither.
#[test]
fn bad_manifests_are_refused_by_both() {
    let manifest = validator("manifest");
    assert!(errors(&manifest, &yaml(BASE)).is_empty());
    assert_eq!(rollgate_validate(BASE).0, 0);
    let bad = [
        ("maxSurge: 1", "maxSurge: \"130\""),
        ("maxSurge: 1", "maxSurge: \"5 %\""),
        ("maxSurge: 1", "maxSurge: -1"),
        ("maxSurge: 1", "maxSurgee: 1"),
        ("kind: Rollout", "kind: Deployment"),
        ("rolling:\n      maxSurge: 1\n      maxUnavailable: 0", "{}"),
        (
            "kubernetes: {namespace: default, deployment: web}",
            "{kubernetes: {deployment: web}, hosts: {hosts: []}}",
        ),
        (
            "      maxUnavailable: 0\n",
            "      maxUnavailable: 0\n  checks: [{name: a, http: {url: \"http://x\"}, tcp: {address: \"x:1\"}}]\n",
        ),
        (
            "      maxUnavailable: 0\n",
            "      maxUnavailable: 0\n  checks: [{name: a, tcp: {address: \"x:1\"}, interval: 5}]\n",
        ),
        (
            "      maxUnavailable: 0\n",
            "      maxUnavailable: 0\n  rollback: {auto: \"yes\"}\n",
        ),
    ];
    for (from, to) in bad {
        let text = BASE.replace(from, to);
        assert_ne!(text, BASE, "{from:?} not in BASE");
        assert!(
            !errors(&manifest, &yaml(&text)).is_empty(),
            "the schema accepts {to:?}"
        );
        let (code, stderr) = rollgate_validate(&text);
        assert_eq!(code, 2, "validate accepts {to:?}: {stderr}");
    }
    // What the parser accepts beyond the obvious, the schema accepts too.
    for (from, to) in [
        ("maxSurge: 1", "maxSurge: \"05%\""),
        (
            "      maxUnavailable: 0\n",
            "      maxUnavailable: 0\n  checks: [{name: a, runOn: cli, tcp: {address: \"x:1\"}, interval: 1h30m, initialDelay: 0}]\n  rollback: {auto: pause}\n",
        ),
    ] {
        let text = BASE.replace(from, to);
        assert_eq!(
            errors(&manifest, &yaml(&text)),
            Vec::<String>::new(),
            "{to}"
        );
        assert_eq!(rollgate_validate(&text).0, 0, "{to}");
    }
}

fn rollgate_validate(text: &str) -> (i32, String) {
    let dir = workdir(&[("web.yaml", text)]);
    let run = rollgate(dir.path(), &["validate", "-f", "web.yaml"], &[]);
    (run.code, run.stderr)
}

#[test]
fn a_bad_agent_config_is_refused_by_both() {
    let agent = validator("agent-config");
    let good = "dataDir: /tmp/x\nservices: [{name: web, command: bin/web, ports: [8080], health: {type: http, url: \"http://127.0.0.1:{port}/\"}}]\n";
    assert_eq!(errors(&agent, &yaml(good)), Vec::<String>::new());
    for bad in [
        good.replace("dataDir", "dataDirectory"),
        good.replace("type: http", "type: ftp"),
        good.replace("ports: [8080]", "ports: [80800]"),
        good.replace(
            "/\"}}]",
            "/\"}, recovery: {actions: [{restart: 1s, run: x}]}}]",
        ),
    ] {
        assert_ne!(bad, good);
        assert!(!errors(&agent, &yaml(&bad)).is_empty(), "{bad}");
        let dir = workdir(&[("agent.yaml", &bad)]);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rollgate-agent"))
            .current_dir(dir.path())
            .args(["check-config", "-c", "agent.yaml"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}: {out:?}");
    }
}
