//! `apply --dry-run` and `list` on a real fleet: agents on loopback (mTLS), the real demo service,
//! the real binary. A dry run reaches every agent, changes nothing and journals nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use rollgate::cli::demo::{LocalFleet, package_demo};

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn rollgate(state: &Path, args: &[String]) -> Out {
    let out = Command::new(env!("CARGO_BIN_EXE_rollgate"))
        .args(args)
        .env("ROLLGATE_STATE", state)
        .env("ROLLGATE_USER", "ana")
        .output()
        .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Every file under `dir` with its size: what a dry run must leave as it found it.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, u64> {
    let mut files = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                files.extend(snapshot(&p));
            } else {
                files.insert(p.clone(), e.metadata().unwrap().len());
            }
        }
    }
    files
}

fn manifest(fleet: &LocalFleet, service: &str, version: &str, artifact: Option<&Path>) -> String {
    let artifact = artifact
        .map(|a| format!("      artifact: {{file: \"{}\"}}\n", a.display()))
        .unwrap_or_default();
    format!(
        "apiVersion: rollgate.dev/v1\nkind: Rollout\nmetadata: {{name: web}}\nspec:\n  version: \"{version}\"\n  target:\n    hosts:\n      service: {service}\n{artifact}      auth: {auth}\n      hosts:\n{hosts}  strategy:\n    rolling: {{maxSurge: 0, maxUnavailable: 1}}\n  checks:\n    - name: health\n      http: {{url: \"http://127.0.0.1:{{port}}/health\"}}\n      interval: 100ms\n  progressDeadlineSeconds: 20\n",
        auth = fleet.auth_yaml(),
        hosts = fleet.hosts_yaml("        "),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_changes_nothing_and_list_tells_each_app() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = LocalFleet::start(dir.path(), 2, 1).await.unwrap();
    let artifacts = dir.path().join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let v1 = package_demo(&artifacts, "1.0.0", "").unwrap();
    let state = dir.path().join("state");
    let write = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let m1 = write("v1.yaml", manifest(&fleet, "web", "1.0.0", Some(&v1)));
    let no_artifact = write("v9.yaml", manifest(&fleet, "web", "9.0.0", None));
    let no_service = write(
        "nosuch.yaml",
        manifest(&fleet, "nosuch", "1.0.0", Some(&v1)),
    );
    let run = |args: &[&str]| {
        let state = state.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || rollgate(&state, &args))
    };

    // `list` with no state dir yet: nothing, exit 0.
    let out = run(&["list"]).await.unwrap();
    assert_eq!((out.code, out.stdout.as_str()), (0, ""), "{}", out.stderr);

    // A dry run reaches both agents, says the artifact would be staged, prints the plan.
    let out = run(&["apply", "--dry-run", "-f", &m1]).await.unwrap();
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    for host in ["host1", "host2"] {
        assert!(
            out.stdout.contains(&format!(
                "{host}: agent answers (authenticated), service web runs nothing; 1.0.0 to be staged from {}",
                v1.display()
            )),
            "{}",
            out.stdout
        );
    }
    assert!(
        out.stdout
            .contains("web: dry run: ready to apply, nothing changed")
    );
    assert!(out.stdout.contains("rolling"), "the plan: {}", out.stdout);
    assert_eq!(snapshot(&state), BTreeMap::new(), "a dry run wrote state");
    // Nothing was staged: no agent's data dir has anything of 1.0.0.
    let staged = |root: &Path| -> Vec<PathBuf> {
        snapshot(root)
            .into_keys()
            .filter(|p| !p.starts_with(&artifacts) && p.to_string_lossy().contains("1.0.0"))
            .collect()
    };
    assert_eq!(staged(dir.path()), Vec::<PathBuf>::new());

    // The reasons, with `apply`'s exit codes, and still nothing journaled.
    let out = run(&["apply", "--dry-run", "-f", &no_artifact])
        .await
        .unwrap();
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains("version 9.0.0 is not installed and the manifest names no artifact"),
        "{}",
        out.stderr
    );
    let out = run(&["apply", "--dry-run", "-f", &no_service])
        .await
        .unwrap();
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("host"), "{}", out.stderr);
    let bad = write(
        "bad.yaml",
        manifest(&fleet, "web", "1.0.0", Some(&v1))
            .replace("maxUnavailable: 1", "maxUnavailable: x"),
    );
    let out = run(&["apply", "--dry-run", "-f", &bad]).await.unwrap();
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert_eq!(snapshot(&state), BTreeMap::new(), "a dry run wrote state");

    // For real; then a dry run finds the version installed, and journals nothing more.
    let out = run(&["apply", "-o", "plain", "-f", &m1]).await.unwrap();
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        !staged(dir.path()).is_empty(),
        "the check above would see a staged version"
    );
    let before = snapshot(&state);
    let out = run(&["apply", "--dry-run", "-o", "json", "-f", &m1])
        .await
        .unwrap();
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let json: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(json["dryRun"], true);
    assert!(
        json["checks"][0]
            .as_str()
            .unwrap()
            .ends_with("runs 1.0.0; 1.0.0 installed"),
        "{json}"
    );
    assert!(
        json["plan"]["steps"]
            .as_array()
            .is_some_and(|s| !s.is_empty())
    );
    assert_eq!(snapshot(&state), before, "a dry run wrote state");

    // `list`: the app, its version and its last rollout, in both forms.
    let out = run(&["list"]).await.unwrap();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let row = out.stdout.lines().nth(1).unwrap_or_default();
    assert!(
        row.starts_with("web ") && row.contains(" 1.0.0 ") && row.contains("succeeded to 1.0.0"),
        "{}",
        out.stdout
    );
    let out = run(&["list", "-o", "json"]).await.unwrap();
    let json: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(json["app"], "web");
    assert_eq!(json["version"], "1.0.0");
    assert_eq!(json["last"], "succeeded");
    assert!(json["atMs"].as_u64().unwrap() > 1_700_000_000_000, "{json}");
}
