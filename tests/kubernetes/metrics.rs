//! The same metric checks as on hosts, on the Kubernetes target: a canary analysed by a real
//! Prometheus promotes when healthy and rolls back when its error rate is over the threshold.
//!
//! kwok's pods serve nothing, so Prometheus scrapes a test exporter instead: a `rollgate-demo`
//! process per version on loopback, labelled with that version, with traffic sent to it.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::kube_bed::{self, Bed, image};
use crate::prometheus::{Prometheus, prometheus_bin};

struct Exporter(Child);

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn exporter(version: &str, error_rate: &str) -> (Exporter, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_rollgate-demo"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--version",
            version,
            "--error-rate",
            error_rate,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (Exporter(child), format!("127.0.0.1:{port}"))
}

fn check(prometheus: &str) -> String {
    format!(
        "  checks:\n    - name: errors\n      prometheus:\n        address: \"{prometheus}\"\n        query: 'sum(rate(demo_errors_total{{version=\"{{{{version}}}}\"}}[5s])) / sum(rate(demo_requests_total{{version=\"{{{{version}}}}\"}}[5s]))'\n      successCondition: 'result[0] <= 0.05'\n      initialDelay: 3s\n      interval: 1s\n      count: 2\n      inconclusiveLimit: 5\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_analysed_by_prometheus_promotes_or_rolls_back() {
    let Some(bin) = prometheus_bin() else {
        eprintln!(
            "skipped: prometheus is not installed (tests/run.sh installs it from Debian's packages)"
        );
        return;
    };
    let (_good, good) = exporter("2", "0");
    let (_bad, bad) = exporter("3", "0.3");
    // Prometheus and its traffic first: by the time the namespace is ready it has samples.
    let prom_tmp = tempfile::tempdir().unwrap();
    let prom_dir = prom_tmp.path().to_path_buf();
    let prom = Prometheus::start(&bin, &prom_dir, &[good.clone(), bad.clone()]);
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, targets) = (stop.clone(), [good.clone(), bad.clone()]);
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            while !stop.load(Ordering::SeqCst) {
                for t in &targets {
                    let _ = http
                        .get(format!("http://{t}/"))
                        .timeout(Duration::from_secs(1))
                        .send()
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let Some(bed) = Bed::new("metrics", 4, "25%", "0").await else {
        return;
    };
    let strategy = format!(
        "  strategy:\n    canary:\n      maxSurge: 1\n      maxUnavailable: 0\n      steps:\n        - setWeight: 25\n        - analysis: {{checks: [errors]}}\n        - setWeight: 100\n  progressDeadlineSeconds: 60\n{}",
        check(&prom.address)
    );

    let good_rollout = bed.rollout(
        "v2.yaml",
        "2",
        &format!("image: \"{}\"", image("2")),
        &strategy,
    );
    let out = bed
        .rollgate(&["apply", "-o", "plain", "-f", good_rollout.to_str().unwrap()])
        .await;
    assert!(
        out.status.success(),
        "a healthy canary promotes: {}",
        kube_bed::stdout(&out)
    );
    assert!(
        kube_bed::stdout(&out).contains("gate errors passed"),
        "{}",
        kube_bed::stdout(&out)
    );
    bed.wait_deployment("version 2 rolled out", |d| {
        kube_bed::rolled_out(d, 4, &image("2"))
    })
    .await;

    let bad_rollout = bed.rollout(
        "v3.yaml",
        "3",
        &format!("image: \"{}\"", image("3")),
        &strategy,
    );
    let out = bed
        .rollgate(&["apply", "-o", "plain", "-f", bad_rollout.to_str().unwrap()])
        .await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "30% errors rolls back: {}",
        kube_bed::stdout(&out)
    );
    assert!(
        kube_bed::stdout(&out).contains("successCondition"),
        "{}",
        kube_bed::stdout(&out)
    );
    bed.wait_deployment("back on version 2", |d| {
        kube_bed::rolled_out(d, 4, &image("2"))
    })
    .await;

    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    drop(prom);
    bed.finish().await;
}
