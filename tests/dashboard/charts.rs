//! Metric-check charts in a real headless Chromium: a canary on three loopback agents gated by an
//! error-rate query to a real Prometheus (Debian's package) scraping them. Each gate's
//! measurements are drawn as an inline SVG, one dot a measurement, with the success condition as a
//! line: the healthy canary's dots below it, the failing one's above it and red.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fantoccini::Client;
use rollgate::cli::demo::{LocalFleet, package_demo};
use rollgate::state::{Event, Store};
use serde_json::Value;

use super::browser::{browser, connect};
use super::support::{ROLLGATE, Served};
use crate::prometheus::{Load, Prometheus, prometheus_bin};

/// The charts the page draws: check, dots (value, class, cy), threshold (op, value, y).
const READ_CHARTS: &str = r##"
return [...document.querySelectorAll("svg.chart")].map(c => {
  const t = c.querySelector("line.threshold");
  return {
    check: c.dataset.check,
    points: +c.dataset.points,
    dots: [...c.querySelectorAll("circle.point")].map(p => [+p.dataset.value, p.getAttribute("class"), +p.getAttribute("cy")]),
    threshold: t ? [t.dataset.op, +t.dataset.value, +t.getAttribute("y1")] : null,
    state: (document.getElementById("state") || {}).textContent || null,
  };
});
"##;

async fn charts_when(client: &Client, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let c = client.execute(READ_CHARTS, vec![]).await.unwrap();
        if ok(&c) {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed {what}: {c:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The measurements the journal's last gate record of `errors` carries.
fn journaled(state: &Path) -> Vec<rollgate::state::Sample> {
    let records = Store::at(state).read("web").unwrap();
    records
        .iter()
        .rev()
        .find_map(|r| match &r.event {
            Event::Gate {
                check,
                measurements,
                ..
            } if check == "errors" => Some(measurements.clone()),
            _ => None,
        })
        .expect("a gate record of errors")
}

fn apply(state: &Path, file: &Path) -> i32 {
    let out = Command::new(ROLLGATE)
        .args(["apply", "-o", "plain", "-f"])
        .arg(file)
        .env("ROLLGATE_STATE", state)
        .output()
        .unwrap();
    println!(
        "apply {}: {:?}\n{}{}",
        file.display(),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.status.code().unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metric_gates_measurements_are_charted_with_the_success_condition_as_a_line() {
    let Some((driver, chromium)) = browser() else {
        return;
    };
    let Some(bin) = prometheus_bin() else {
        eprintln!("SKIP: prometheus is not installed (tests/run.sh installs it)");
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
    let prom = Prometheus::start(&bin, &prom_dir, &targets);
    let artifacts = dir.path().join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let state = dir.path().join("state");
    // Traffic to every instance, so the counters move.
    let load = Load::start(&targets);
    let manifest = |version: &str, flags: &str, strategy: &str| -> PathBuf {
        let artifact = package_demo(&artifacts, version, flags).unwrap();
        let text = format!(
            "apiVersion: rollgate.dev/v1\nkind: Rollout\nmetadata: {{name: web}}\nspec:\n  version: \"{version}\"\n  target:\n    hosts:\n      service: web\n      artifact: {{file: \"{artifact}\"}}\n      auth: {auth}\n      hosts:\n{hosts}  strategy:\n{strategy}  checks:\n    - name: errors\n      prometheus:\n        address: \"{prom}\"\n        query: 'sum(rate(demo_errors_total{{version=\"{{{{version}}}}\"}}[5s])) / sum(rate(demo_requests_total{{version=\"{{{{version}}}}\"}}[5s]))'\n      successCondition: 'result[0] <= 0.05'\n      initialDelay: 4s\n      interval: 1s\n      count: 3\n  progressDeadlineSeconds: 20\n",
            artifact = artifact.display(),
            auth = fleet.auth_yaml(),
            hosts = fleet.hosts_yaml("        "),
            prom = prom.address,
        );
        let path = dir.path().join(format!("web-{version}.yaml"));
        std::fs::write(&path, text).unwrap();
        path
    };
    let install = "    rolling: {maxSurge: 0, maxUnavailable: \"100%\"}\n";
    let canary = "    canary:\n      maxUnavailable: 1\n      steps:\n        - setWeight: 34\n        - analysis: {checks: [errors]}\n        - setWeight: 100\n";
    let run = |file: PathBuf| {
        let state = state.clone();
        tokio::task::spawn_blocking(move || apply(&state, &file))
    };
    assert_eq!(run(manifest("1.0.0", "", install)).await.unwrap(), 0);

    let served = Served::start(&state);
    let (_driver, client) = connect(&driver, &chromium).await;
    client.goto(&format!("{}#web", served.url)).await.unwrap();

    // A healthy canary: three measurements, each a dot under the line of `result[0] <= 0.05`.
    assert_eq!(run(manifest("2.0.0", "", canary)).await.unwrap(), 0);
    let samples = journaled(&state);
    assert_eq!(samples.len(), 3, "count 3: {samples:?}");
    assert!(
        samples
            .iter()
            .all(|s| s.outcome == "success" && s.value.is_some())
    );
    let c = charts_when(&client, "the healthy canary's chart", |c| {
        c[0]["state"] == "succeeded" && c.as_array().is_some_and(|a| a.len() == 1)
    })
    .await;
    let chart = &c[0];
    assert_eq!(chart["check"], "errors", "{c:#}");
    assert_eq!(chart["points"], 3, "{c:#}");
    let dots = chart["dots"].as_array().unwrap();
    assert_eq!(dots.len(), 3, "{c:#}");
    assert_eq!(chart["threshold"][0], "<=", "{c:#}");
    assert_eq!(chart["threshold"][1], 0.05, "{c:#}");
    let line_y = chart["threshold"][2].as_f64().unwrap();
    for (dot, sample) in dots.iter().zip(&samples) {
        assert_eq!(dot[0].as_f64(), sample.value, "{c:#}");
        assert_eq!(dot[1], "point success", "{c:#}");
        // SVG's y grows downwards: a value under the threshold is drawn below its line.
        assert!(dot[2].as_f64().unwrap() > line_y, "{c:#}");
    }
    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard-screenshots");
    std::fs::create_dir_all(&shot).unwrap();
    std::fs::write(
        shot.join("5-metric-chart.png"),
        client.screenshot().await.unwrap(),
    )
    .unwrap();

    // A canary serving 30% errors: its failed measurement is a red dot above the line.
    assert_eq!(
        run(manifest("3.0.0", "--error-rate 0.3", canary))
            .await
            .unwrap(),
        1
    );
    let c = charts_when(&client, "the failing canary's chart", |c| {
        c[0]["state"] == "rolledBack"
    })
    .await;
    let dots = c[0]["dots"].as_array().unwrap();
    let line_y = c[0]["threshold"][2].as_f64().unwrap();
    let failed: Vec<&Value> = dots.iter().filter(|d| d[1] == "point failure").collect();
    assert!(!failed.is_empty(), "{c:#}");
    for d in failed {
        assert!(d[0].as_f64().unwrap() > 0.05, "{c:#}");
        assert!(d[2].as_f64().unwrap() < line_y, "{c:#}");
    }
    std::fs::write(
        shot.join("6-metric-chart-failed.png"),
        client.screenshot().await.unwrap(),
    )
    .unwrap();

    load.stop().await;
    client.close().await.unwrap();
    assert!(served.stop().success());
    drop(fleet);
}
