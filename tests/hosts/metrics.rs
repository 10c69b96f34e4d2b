//! Metric gates against a real Prometheus (Debian's package) scraping the demo service's `/metrics`:
//! a healthy canary promotes, one serving errors over the threshold rolls back, an empty query result
//! pauses as inconclusive, and Prometheus stopped mid-analysis counts as errors up to the limit.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rollgate::cli::demo::{LocalFleet, package_demo};

use crate::prometheus::{Load, Prometheus, prometheus_bin};

fn manifest(fleet: &LocalFleet, version: &str, artifact: &Path, check: &str) -> String {
    format!(
        "apiVersion: rollgate.dev/v1\nkind: Rollout\nmetadata: {{name: web}}\nspec:\n  version: \"{version}\"\n  target:\n    hosts:\n      service: web\n      artifact: {{file: \"{artifact}\"}}\n      auth: {auth}\n      hosts:\n{hosts}  strategy:\n    canary:\n      maxUnavailable: 1\n      steps:\n        - setWeight: 34\n        - analysis: {{checks: [errors]}}\n        - setWeight: 100\n  checks:\n{check}  progressDeadlineSeconds: 20\n",
        artifact = artifact.display(),
        auth = fleet.auth_yaml(),
        hosts = fleet.hosts_yaml("        "),
    )
}

fn error_rate_check(prometheus: &str, version_label: &str, extra: &str) -> String {
    format!(
        "    - name: errors\n      prometheus:\n        address: \"{prometheus}\"\n        query: 'sum(rate(demo_errors_total{{version=\"{version_label}\"}}[5s])) / sum(rate(demo_requests_total{{version=\"{version_label}\"}}[5s]))'\n      successCondition: 'result[0] <= 0.05'\n      initialDelay: 4s\n      interval: 1s\n      count: 3\n{extra}"
    )
}

fn apply(state: &Path, file: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rollgate"))
        .args(["apply", "-o", "plain", "-f"])
        .arg(file)
        .env("ROLLGATE_STATE", state)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_gates_with_a_real_prometheus() {
    let Some(bin) = prometheus_bin() else {
        eprintln!(
            "skipped: prometheus is not installed (tests/run.sh installs it from Debian's packages)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let fleet = LocalFleet::start(dir.path(), 3, 1).await.unwrap();
    let targets: Vec<String> = fleet
        .hosts
        .iter()
        .map(|(_, _, ports)| format!("127.0.0.1:{}", ports[0]))
        .collect();
    let prom_dir = dir.path().join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    let mut prom = Prometheus::start(&bin, &prom_dir, &targets);
    let artifacts = dir.path().join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let state = dir.path().join("state");

    // Traffic to every instance, so the counters move.
    let load = Load::start(&targets);
    let run = |file: PathBuf| {
        let state = state.clone();
        tokio::task::spawn_blocking(move || apply(&state, &file))
    };

    // v1 everywhere (no analysis needed: nothing runs v1 yet, so its check is written for v1 traffic
    // only once it exists; install it with an always-true web-free manifest).
    let v1 = package_demo(&artifacts, "1.0.0", "").unwrap();
    let m = dir.path().join("v1.yaml");
    std::fs::write(
        &m,
        manifest(
            &fleet,
            "1.0.0",
            &v1,
            &error_rate_check(
                &prom.address,
                "1.0.0",
                "      failureLimit: 3\n      inconclusiveLimit: 3\n",
            ),
        ),
    )
    .unwrap();
    let (code, out) = run(m).await.unwrap();
    assert_eq!(code, 0, "{out}");

    // A healthy v2 canary promotes.
    let v2 = package_demo(&artifacts, "2.0.0", "").unwrap();
    let m = dir.path().join("v2.yaml");
    std::fs::write(
        &m,
        manifest(
            &fleet,
            "2.0.0",
            &v2,
            &error_rate_check(&prom.address, "{{version}}", ""),
        ),
    )
    .unwrap();
    let (code, out) = run(m).await.unwrap();
    assert_eq!(code, 0, "healthy canary promotes: {out}");
    assert!(out.contains("gate errors passed"), "{out}");

    // A v3 canary serving 30% errors fails its analysis and rolls back.
    let v3 = package_demo(&artifacts, "3.0.0", "--error-rate 0.3").unwrap();
    let m = dir.path().join("v3.yaml");
    std::fs::write(
        &m,
        manifest(
            &fleet,
            "3.0.0",
            &v3,
            &error_rate_check(&prom.address, "{{version}}", ""),
        ),
    )
    .unwrap();
    let (code, out) = run(m).await.unwrap();
    assert_eq!(code, 1, "error rate over the threshold rolls back: {out}");
    assert!(
        out.contains("successCondition") && out.contains("rolled back"),
        "{out}"
    );

    // Background analysis from the first step catches the bad canary during a long pause.
    let m = dir.path().join("v3-background.yaml");
    let background = manifest(&fleet, "3.0.0", &v3, &error_rate_check(&prom.address, "{{version}}", "")).replace(
        "      steps:\n        - setWeight: 34\n        - analysis: {checks: [errors]}\n        - setWeight: 100\n",
        "      analysis: {checks: [errors], startingStep: 0}\n      steps:\n        - setWeight: 34\n        - pause: {duration: 60s}\n        - setWeight: 100\n",
    );
    assert!(
        background.contains("startingStep"),
        "the manifest was rewritten"
    );
    std::fs::write(&m, background).unwrap();
    let started = std::time::Instant::now();
    let (code, out) = run(m).await.unwrap();
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("background check errors failed"), "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(50),
        "it did not wait out the 60 s pause: {out}"
    );

    // A query that matches nothing is inconclusive, not success or failure: the rollout pauses.
    let m = dir.path().join("v3-empty.yaml");
    std::fs::write(
        &m,
        manifest(
            &fleet,
            "3.0.0",
            &v3,
            &error_rate_check(&prom.address, "no-such-version", ""),
        ),
    )
    .unwrap();
    let (code, out) = run(m).await.unwrap();
    assert_eq!(code, 3, "inconclusive pauses for a person: {out}");
    assert!(out.contains("inconclusive"), "{out}");
    let out = Command::new(env!("CARGO_BIN_EXE_rollgate"))
        .args(["abort", "web"])
        .env("ROLLGATE_STATE", &state)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "abort rolls the paused canary back (and exits 0): {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Prometheus stopped mid-analysis: each query errors, and the consecutive-error limit fails it.
    let m = dir.path().join("v3-down.yaml");
    std::fs::write(
        &m,
        manifest(
            &fleet,
            "2.0.1",
            &v2,
            &error_rate_check(
                &prom.address,
                "{{version}}",
                "      consecutiveErrorLimit: 2\n      timeout: 1s\n",
            ),
        ),
    )
    .unwrap();
    let handle = run(m);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    prom.stop();
    let (code, out) = handle.await.unwrap();
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("3 consecutive errors (consecutiveErrorLimit 2)"),
        "{out}"
    );

    load.stop().await;
    drop(fleet);
}
