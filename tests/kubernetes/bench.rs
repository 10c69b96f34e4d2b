//! The benchmarks of issues 6 and 8, not timed tests: `cargo bench --bench rollgate` runs them
//! with the others (`ROLLGATE_BENCH=kubernetes` alone), and `cargo test --release --test
//! kubernetes bench -- --ignored --nocapture` on their own; both print rollgate's times against
//! kubectl's on the same cluster, and the table rows.
//!
//! N=20, maxSurge 25%, maxUnavailable 0, every pod Ready exactly 1 s after it is scheduled (kwok's
//! `rollgate.dev/ready-delay`).
//!
//! - A rollout: `rollgate apply` with no gates against `kubectl set image` plus `kubectl rollout
//!   status`. rollgate's time is split from its `-o json` records: start-up to the first step, each
//!   step's convergence, the gaps between steps, the hand-over, and the exit.
//! - A rollback after it: `rollgate rollback` against `kubectl rollout undo` plus `kubectl rollout
//!   status`; and, for the same undo, `rollgate apply` of the previous version with maxSurge 100%.
//! - Failure to recovery (issue 8 §4): a canary (25%) whose check fails. From the failed gate's
//!   record to the moment a pod watch sees every pod of the old version Ready again and none of
//!   the new one, against the floor of one check interval (1 s) plus one pod start (1 s); and
//!   kubectl's way, `rollout undo` plus `rollout status` issued once a quarter of the pods run the
//!   new version, timed the same way from the undo.
//!
//! Each pair runs in fresh namespaces, `ROLLGATE_BENCH_RUNS` times (3 by default); medians.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{reflector, watcher};

use crate::kube_bed::{self, APP, Bed, image};

const N: i32 = 20;
/// kwok's ready delay of every pod, and the failing check's interval.
const START_MS: u64 = 1000;
const CHECK_INTERVAL_MS: u64 = 1000;

fn runs() -> usize {
    std::env::var("ROLLGATE_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

/// A fresh namespace with `web` at N ready replicas of version 1, each pod Ready 1 s after it starts.
async fn bed(purpose: &str) -> Option<Bed> {
    let mut d: Deployment = kube_bed::deployment(N, "25%", "0");
    let spec = d.spec.as_mut().unwrap();
    spec.template
        .metadata
        .as_mut()
        .unwrap()
        .annotations
        .get_or_insert_with(Default::default)
        .insert(crate::cluster::READY_DELAY_ANNOTATION.into(), "1s".into());
    Bed::with(purpose, d).await
}

async fn kubectl(bed: &Bed, args: &[&str]) -> Duration {
    let started = Instant::now();
    let out = bed
        .cluster
        .kubectl()
        .args(["-n", &bed.ns])
        .args(args)
        .output()
        .await
        .expect("kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed()
}

/// Runs rollgate; returns its wall time, its `-o json` records (when asked for), and when it
/// started and ended (ms since the epoch, the records' clock).
async fn rollgate(
    bed: &Bed,
    args: &[&str],
    expect: i32,
) -> (Duration, Vec<serde_json::Value>, u64, u64) {
    let started_ms = now_ms();
    let started = Instant::now();
    let out = bed.rollgate(args).await;
    let took = started.elapsed();
    let ended_ms = now_ms();
    assert_eq!(out.status.code(), Some(expect), "rollgate {args:?}");
    let records = kube_bed::stdout(&out)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (took, records, started_ms, ended_ms)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn at(r: &serde_json::Value) -> u64 {
    r["atMs"].as_u64().expect("atMs")
}

/// Where an apply's time went, from its records: start-up, each step (converged / hand-over or
/// gate / gap to the next), exit.
fn profile(records: &[serde_json::Value], started_ms: u64, ended_ms: u64) -> String {
    let mut out = Vec::new();
    let mut last = started_ms;
    let mut step_start = None;
    let mut converged = None;
    for r in records {
        match r["event"].as_str() {
            Some("stepStarted") => {
                let label = if step_start.is_none() {
                    "start-up"
                } else {
                    "gap"
                };
                out.push(format!("{label} {}", at(r) - last));
                step_start = Some(at(r));
            }
            Some("instanceChanged") if r["ok"] == true => converged = Some(at(r)),
            Some("stepDone") => {
                let s = step_start.unwrap_or(last);
                match converged.take() {
                    Some(c) => out.push(format!("step {} {}+{}", r["step"], c - s, at(r) - c)),
                    None => out.push(format!("step {} {}", r["step"], at(r) - s)),
                }
            }
            _ => {}
        }
        last = at(r);
    }
    out.push(format!("exit {}", ended_ms.saturating_sub(last)));
    format!("{} ms", out.join(", "))
}

/// Watches pods and keeps the time (ms since the epoch) at which every pod of version 1 was last
/// seen Ready again with none of version 2 Ready: `None` while that does not hold.
struct Recovery {
    since: Arc<Mutex<Option<u64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recovery {
    fn watch(bed: &Bed) -> Recovery {
        let since = Arc::new(Mutex::new(Some(now_ms())));
        let (reader, writer) = reflector::store::<Pod>();
        let mut events = reflector(
            writer,
            watcher(bed.pods.clone(), watcher::Config::default()),
        )
        .boxed();
        let shared = since.clone();
        let (old, new) = (image("1"), image("2"));
        let task = tokio::spawn(async move {
            while let Some(event) = events.next().await {
                if matches!(
                    event,
                    Ok(watcher::Event::Init | watcher::Event::InitApply(_)) | Err(_)
                ) {
                    continue;
                }
                let pods = reader.state();
                let ready = |img: &str| {
                    pods.iter()
                        .filter(|p| kube_bed::is_ready(p) && kube_bed::pod_image(p) == Some(img))
                        .count() as i32
                };
                let recovered = ready(&old) >= N && ready(&new) == 0;
                let mut since = shared.lock().unwrap();
                match (recovered, *since) {
                    (true, None) => *since = Some(now_ms()),
                    (false, Some(_)) => *since = None,
                    _ => {}
                }
            }
        });
        Recovery { since, task }
    }

    /// When the pods last came back to version 1, waiting (by watch) until they have.
    async fn recovered_at(self) -> u64 {
        let wait = async {
            loop {
                if let Some(t) = *self.since.lock().unwrap() {
                    return t;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let t = tokio::time::timeout(Duration::from_secs(120), wait)
            .await
            .expect("version 1 back within 120s");
        self.task.abort();
        t
    }
}

/// Waits (by watch) until `count` pods of `image` are Ready.
async fn ready_pods_of(bed: &Bed, image: &str, count: i32) {
    let (reader, writer) = reflector::store::<Pod>();
    let mut events = reflector(
        writer,
        watcher(bed.pods.clone(), watcher::Config::default()),
    )
    .boxed();
    let ready = async {
        while let Some(event) = events.next().await {
            if matches!(
                event,
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) | Err(_)
            ) {
                continue;
            }
            let n = reader
                .state()
                .iter()
                .filter(|p| kube_bed::is_ready(p) && kube_bed::pod_image(p) == Some(image))
                .count() as i32;
            if n >= count {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), ready)
        .await
        .unwrap_or_else(|_| panic!("{count} pods of {image} Ready within 120s"));
}

/// rollgate: a canary to version 2 whose check fails at the first gate. From the failed gate's
/// record to every pod on version 1 again.
async fn rollgate_recovery(run: usize) -> Option<Duration> {
    let r = bed(&format!("bench-recover-rollgate-{run}")).await?;
    let rollout = r.rollout(
        "bad.yaml",
        "2",
        &format!("image: \"{}\"", image("2")),
        &format!(
            "  strategy:\n    canary: {{maxSurge: \"25%\", maxUnavailable: 0, steps: [{{setWeight: 25}}, {{pause: {{}}}}]}}\n  checks:\n    - {{name: smoke, command: {{run: [sh, -c, \"exit 1\"]}}, runOn: cli, interval: {CHECK_INTERVAL_MS}ms}}\n  rollback: {{auto: true}}\n  progressDeadlineSeconds: 60\n"
        ),
    );
    let recovery = Recovery::watch(&r);
    let (_, records, _, _) = rollgate(
        &r,
        &["apply", "-o", "json", "-f", rollout.to_str().unwrap()],
        1,
    )
    .await;
    let failed = records
        .iter()
        .find(|r| r["event"] == "gate" && r["passed"] == false)
        .map(at)
        .expect("the check failed");
    let back = recovery.recovered_at().await;
    r.finish().await;
    Some(Duration::from_millis(back.saturating_sub(failed)))
}

/// kubectl: `set image` to version 2; once a quarter of the pods run it, `rollout undo` and
/// `rollout status`. From the undo to every pod on version 1 again (watched), and to `rollout
/// status` returning.
async fn kubectl_recovery(run: usize) -> Option<(Duration, Duration)> {
    let k = bed(&format!("bench-recover-kubectl-{run}")).await?;
    let deploy = format!("deployment/{APP}");
    kubectl(
        &k,
        &["set", "image", &deploy, &format!("{APP}={}", image("2"))],
    )
    .await;
    ready_pods_of(&k, &image("2"), N / 4).await;
    let recovery = Recovery::watch(&k);
    let failed = now_ms();
    let started = Instant::now();
    kubectl(&k, &["rollout", "undo", &deploy]).await;
    kubectl(&k, &["rollout", "status", &deploy, "--timeout=300s"]).await;
    let status = started.elapsed();
    let back = recovery.recovered_at().await;
    k.finish().await;
    Some((Duration::from_millis(back.saturating_sub(failed)), status))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run with --ignored --nocapture"]
async fn bench_rollgate_against_kubectl() {
    for row in run().await.unwrap_or_default() {
        println!("{}", row.join(" | "));
    }
}

/// One row of the benchmark table: figure, measured, baseline, ratio, target, pass.
pub type Row = [String; 6];

/// Runs the benchmark, printing each run's figures, and returns the table rows (also run by
/// `cargo bench --bench rollgate`); `None` when there is no cluster here.
pub async fn run() -> Option<Vec<Row>> {
    let runs = runs();
    let deploy = format!("deployment/{APP}");
    let status = ["rollout", "status", deploy.as_str(), "--timeout=300s"];
    let (mut k_roll, mut k_undo, mut r_roll, mut r_back) = (vec![], vec![], vec![], vec![]);
    let (mut r_fast, mut r_recover, mut k_recover, mut k_recover_status) =
        (vec![], vec![], vec![], vec![]);
    for run in 0..runs {
        let k = bed(&format!("bench-kubectl-{run}")).await?;
        let started = Instant::now();
        let set = kubectl(
            &k,
            &["set", "image", &deploy, &format!("{APP}={}", image("2"))],
        )
        .await;
        kubectl(&k, &status).await;
        k_roll.push(started.elapsed());
        let started = Instant::now();
        kubectl(&k, &["rollout", "undo", &deploy]).await;
        kubectl(&k, &status).await;
        k_undo.push(started.elapsed());

        let r = bed(&format!("bench-rollgate-{run}")).await?;
        let rollout = r.rollout(
            "web.yaml",
            "2",
            &format!("image: \"{}\"", image("2")),
            "  strategy:\n    rolling: {maxSurge: \"25%\", maxUnavailable: 0}\n",
        );
        let (took, records, started_ms, ended_ms) = rollgate(
            &r,
            &["apply", "-o", "json", "-f", rollout.to_str().unwrap()],
            0,
        )
        .await;
        r_roll.push(took);
        let apply_profile = profile(&records, started_ms, ended_ms);
        r_back.push(rollgate(&r, &["rollback", APP], 0).await.0);
        // What the Kubernetes target does when asked to go back at once (the automatic rollback's
        // way, and what `rollback` would do with maxSurge 100%): the previous ReplicaSet is reused.
        rollgate(&r, &["apply", "-f", rollout.to_str().unwrap()], 0).await;
        let back = r.rollout(
            "back.yaml",
            "1",
            &format!("image: \"{}\"", image("1")),
            "  strategy:\n    rolling: {maxSurge: \"100%\", maxUnavailable: 0}\n",
        );
        r_fast.push(
            rollgate(&r, &["apply", "-f", back.to_str().unwrap()], 0)
                .await
                .0,
        );
        k.finish().await;
        r.finish().await;

        let recovered = rollgate_recovery(run).await?;
        r_recover.push(recovered);
        let (recovered, status) = kubectl_recovery(run).await?;
        k_recover.push(recovered);
        k_recover_status.push(status);
        println!(
            "run {run}: kubectl rollout {:?} (set image {set:?}) undo {:?}; rollgate apply {:?} ({apply_profile}) rollback {:?} back at 100% surge {:?}; failure to recovery: rollgate {:?}, kubectl undo {:?} (rollout status back after {:?})",
            k_roll[run],
            k_undo[run],
            r_roll[run],
            r_back[run],
            r_fast[run],
            r_recover[run],
            k_recover[run],
            k_recover_status[run],
        );
    }
    // The same-run ratios, whose median moves less with the machine's load than a ratio of medians.
    let per_run = |r: &[Duration], k: &[Duration]| {
        let mut v: Vec<f64> = r
            .iter()
            .zip(k)
            .map(|(r, k)| r.as_secs_f64() / k.as_secs_f64())
            .collect();
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v)
    };
    let (roll_ratio, roll_ratios) = per_run(&r_roll, &k_roll);
    let (back_ratio, back_ratios) = per_run(&r_back, &k_undo);
    let (recover_ratio, recover_ratios) = per_run(&r_recover, &k_recover);
    println!(
        "per-run ratios (median): apply/kubectl {roll_ratios:.2?} ({roll_ratio:.2}); rollback/undo {back_ratios:.2?} ({back_ratio:.2}); recovery rollgate/kubectl {recover_ratios:.2?} ({recover_ratio:.2})"
    );
    let (k_roll, k_undo, r_roll, r_back, r_fast) = (
        median(k_roll),
        median(k_undo),
        median(r_roll),
        median(r_back),
        median(r_fast),
    );
    let (r_recover, k_recover, k_recover_status) = (
        median(r_recover),
        median(k_recover),
        median(k_recover_status),
    );
    let floor = Duration::from_millis(CHECK_INTERVAL_MS + START_MS);
    println!(
        "N={N}, maxSurge 25%, maxUnavailable 0, ready after 1s, medians of {runs}:\n  rollout:  rollgate apply {r_roll:?} / kubectl set image + rollout status {k_roll:?} = {:.2}\n  rollback: rollgate rollback {r_back:?} / kubectl rollout undo + rollout status {k_undo:?} = {:.2}\n  back to the previous version at maxSurge 100%: rollgate apply {r_fast:?} / kubectl rollout undo + rollout status = {:.2}\n  failure to recovery (canary 25%, check fails): rollgate {r_recover:?} / floor check interval + pod start {floor:?} = {:.2}; kubectl rollout undo to recovered {k_recover:?} (+ rollout status returning {k_recover_status:?}); rollgate / kubectl = {:.2}",
        r_roll.as_secs_f64() / k_roll.as_secs_f64(),
        r_back.as_secs_f64() / k_undo.as_secs_f64(),
        r_fast.as_secs_f64() / k_undo.as_secs_f64(),
        r_recover.as_secs_f64() / floor.as_secs_f64(),
        r_recover.as_secs_f64() / k_recover.as_secs_f64(),
    );
    let secs = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    let spread = |v: &[f64]| {
        format!(
            "{:.2}–{:.2}",
            v.first().copied().unwrap_or(0.0),
            v.last().copied().unwrap_or(0.0)
        )
    };
    let row = |figure: String,
               measured: String,
               baseline: String,
               ratio: String,
               target: &str,
               pass: Option<bool>|
     -> Row {
        [
            figure,
            measured,
            baseline,
            ratio,
            target.to_string(),
            pass.map_or(
                "-".into(),
                |p| if p { "pass".into() } else { "FAIL".into() },
            ),
        ]
    };
    let recover_floor = r_recover.as_secs_f64() / floor.as_secs_f64();
    Some(vec![
        row(
            format!("Kubernetes: `rollgate apply` vs `kubectl set image` + `rollout status` (N={N}, 25%/0, ready after 1 s; median of {runs} same-run ratios)"),
            secs(r_roll),
            format!("{} (kubectl)", secs(k_roll)),
            format!("{roll_ratio:.2} (runs {})", spread(&roll_ratios)),
            "≤ 1.10",
            Some(roll_ratio <= 1.10),
        ),
        row(
            "Kubernetes: `rollgate rollback` vs `kubectl rollout undo` + `rollout status`".into(),
            secs(r_back),
            format!("{} (kubectl)", secs(k_undo)),
            format!("{back_ratio:.2} (runs {})", spread(&back_ratios)),
            "≤ 0.6",
            Some(back_ratio <= 0.6),
        ),
        row(
            "Kubernetes: failure → every pod on the old version Ready again (canary 25%, a check fails)".into(),
            secs(r_recover),
            format!("check interval + pod start {}", secs(floor)),
            format!("{recover_floor:.2}"),
            "≤ 1.00",
            Some(recover_floor <= 1.0),
        ),
        row(
            "Kubernetes: the same recovery by `kubectl rollout undo` (to `rollout status` returning)".into(),
            format!("{} ({})", secs(k_recover), secs(k_recover_status)),
            "-".into(),
            format!("rollgate / kubectl {recover_ratio:.2} (runs {})", spread(&recover_ratios)),
            "-",
            None,
        ),
    ])
}
