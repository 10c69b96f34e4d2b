//! rollgate's benchmarks: each figure is measured in the same run as its baseline or physical floor,
//! and printed as a table row: figure, measured, baseline, ratio, target, pass/fail.
//!
//! `cargo bench --bench rollgate` runs them all, the Kubernetes ones on the test control plane of
//! `tests/cluster` (brought up if it is not, and taken down after).
//! `ROLLGATE_BENCH=planner,store,hosts,fanout,recovery,agent,agentcpu,kubernetes` picks some; `ROLLGATE_BENCH_SIZES=8,32,64` sets the fleet sizes of the rollout benchmark.
//! `ROLLGATE_BENCH=argo` (not in the default run: it builds Argo Rollouts from Go modules on first
//! use, about 5 min) compares rollgate with Argo Rollouts on the same cluster: a canary, a
//! blue-green switch and rollback, an abort at a pause, a failing canary
//! (`ROLLGATE_ARGO_BENCH_ROWS`, `ROLLGATE_ARGO_BENCH_N`: see `tests/cluster/argo-bench.sh`).
//! `ROLLGATE_BENCH=pods` (not in the default run: about 8 min) times `rollgate apply` against
//! kubectl at 20, 200 and 1,000 pods (`ROLLGATE_BENCH_PODS`) with rollgate's cost per pod;
//! `ROLLGATE_BENCH=agents` (not in the default run: about 4 min) the fan-out at 200, 500 and
//! 1,000 agents (`ROLLGATE_BENCH_AGENTS`) with the CLI's cost per host. Both write a chart to
//! `target/bench/` (or `ROLLGATE_BENCH_CHARTS`).
//! `ROLLGATE_BENCH_DETAIL=1` adds a per-wave breakdown, the fan-out latency deciles and the
//! moment the fan-out wave was issued; `ROLLGATE_BENCH_PERF=FILE` records each timed CLI run with
//! `perf record -a` (wall-clock timestamps) for `perf report -i FILE --time START,END`.
//! Under `cargo test` (no `--bench` flag) it does nothing, so the test suite stays fast.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rollgate::cli::demo::{LocalFleet, package_demo};
use rollgate::state::{Event, Record};

// The Kubernetes benchmark is the Kubernetes test binary's, on the same test control plane: its
// modules are compiled in here too, so one command runs every figure.
#[path = "../tests/support/cluster.rs"]
mod cluster;
// `crate::kube_bed` in the benchmark's module is this crate's `kube_bed`, as in the test binary.
#[allow(dead_code)]
#[path = "../tests/support/kube_bed.rs"]
mod kube_bed;
#[allow(dead_code)]
#[path = "../tests/kubernetes/bench.rs"]
mod kubernetes_bench;
// Issue 23 §2 and §3: a thousand pods, a thousand agents (not in the default run).
#[path = "rollgate/chart.rs"]
mod chart;
#[path = "rollgate/cli_cost.rs"]
mod cli_cost;
#[path = "rollgate/plane_cpu.rs"]
mod plane_cpu;
#[path = "rollgate/scale_agents.rs"]
mod scale_agents;
#[path = "rollgate/scale_pods.rs"]
mod scale_pods;

struct Row {
    figure: String,
    measured: String,
    baseline: String,
    ratio: String,
    target: String,
    pass: Option<bool>,
}

fn row(
    figure: impl Into<String>,
    measured: impl Into<String>,
    baseline: impl Into<String>,
    ratio: impl Into<String>,
    target: impl Into<String>,
    pass: Option<bool>,
) -> Row {
    Row {
        figure: figure.into(),
        measured: measured.into(),
        baseline: baseline.into(),
        ratio: ratio.into(),
        target: target.into(),
        pass,
    }
}

fn print_table(rows: &[Row]) {
    println!("\n| figure | measured | baseline or floor | ratio | target | pass |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for r in rows {
        let pass = match r.pass {
            Some(true) => "pass",
            Some(false) => "FAIL",
            None => "-",
        };
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.figure, r.measured, r.baseline, r.ratio, r.target, pass
        );
    }
}

/// Runs a command under GNU time: (wall seconds, peak RSS KiB, stdout).
fn timed(cmd: &mut Command) -> (f64, u64, String) {
    let program = cmd.get_program().to_owned();
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    let envs: Vec<_> = cmd
        .get_envs()
        .map(|(k, v)| (k.to_owned(), v.map(|v| v.to_owned())))
        .collect();
    let mut t = Command::new("/usr/bin/time");
    t.arg("-f").arg("TIME %e %M");
    // Profiling: the whole machine while the command runs, with wall-clock timestamps, so a
    // window (e.g. a wave, from the detail lines) can be cut out with `perf report --time`.
    if let Some(out) = std::env::var_os("ROLLGATE_BENCH_PERF") {
        t.args([
            "perf",
            "record",
            "-q",
            "-a",
            "-g",
            "-k",
            "CLOCK_REALTIME",
            "-F",
            "1999",
            "-o",
        ])
        .arg(out)
        .arg("--");
    }
    t.arg(program).args(args);
    for (k, v) in envs {
        match v {
            Some(v) => t.env(k, v),
            None => t.env_remove(k),
        };
    }
    let start = Instant::now();
    let out = t
        .output()
        .expect("/usr/bin/time runs (apt-get install time)");
    let wall = start.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("TIME "))
        .unwrap_or_else(|| panic!("no timing in {stderr}"));
    let rss: u64 = line
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (wall, rss, String::from_utf8_lossy(&out.stdout).into_owned())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

/// The `rollgate` binary the bench runs: this tree's, or `ROLLGATE_BIN` (another build, to compare
/// two commits on one machine; or a wrapper that profiles it).
fn rollgate() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("ROLLGATE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_rollgate").into())
    })
}

fn planner(rows: &mut Vec<Row>) {
    let dir = tempfile::tempdir().unwrap();
    let rolling = dir.path().join("rolling.yaml");
    std::fs::write(&rolling, "apiVersion: rollgate.dev/v1\nkind: Rollout\nmetadata: {name: web}\nspec:\n  version: \"2\"\n  target: {kubernetes: {deployment: web}}\n  strategy: {rolling: {maxSurge: \"1%\", maxUnavailable: 0}}\n").unwrap();
    let canary = dir.path().join("canary.yaml");
    let steps: String = (1..=10)
        .map(|w| {
            format!(
                "        - setWeight: {}\n        - pause: {{duration: 1m}}\n",
                w * 9
            )
        })
        .collect();
    std::fs::write(&canary, format!("apiVersion: rollgate.dev/v1\nkind: Rollout\nmetadata: {{name: web}}\nspec:\n  version: \"2\"\n  target: {{kubernetes: {{deployment: web}}}}\n  strategy:\n    canary:\n      maxSurge: \"1%\"\n      maxUnavailable: 0\n      steps:\n{steps}")).unwrap();
    // The floor: starting the process at all.
    let floor = median(
        (0..7)
            .map(|_| timed(Command::new(rollgate()).arg("--version")).0)
            .collect(),
    );
    for (name, file) in [("rolling 1%/0", &rolling), ("canary, 10 weights", &canary)] {
        for n in [1_000u32, 10_000, 100_000] {
            let runs: Vec<(f64, u64)> = (0..7)
                .map(|_| {
                    // The planner alone: with a kubeconfig `plan` also reads the Deployment
                    // for its pod-security check (a round trip to whatever cluster it names).
                    let (t, rss, out) = timed(
                        Command::new(rollgate())
                            .env_remove("KUBECONFIG")
                            .args(["plan", "-o", "json", "--replicas", &n.to_string(), "-f"])
                            .arg(file),
                    );
                    assert!(out.contains("\"steps\""), "plan printed a plan");
                    (t, rss)
                })
                .collect();
            let t = median(runs.iter().map(|r| r.0).collect());
            let rss = runs.iter().map(|r| r.1).max().unwrap_or(0) as f64 / 1024.0;
            let pass = (n == 100_000).then_some(t < 0.050 && rss < 50.0);
            rows.push(row(
                format!("planner: `plan` {name}, N={n} (wall, peak RSS)"),
                format!("{:.1} ms, {rss:.1} MiB", t * 1000.0),
                format!("process start {:.1} ms", floor * 1000.0),
                format!("{:.2}", t / floor),
                if n == 100_000 {
                    "< 50 ms, < 50 MiB".into()
                } else {
                    "-".to_string()
                },
                pass,
            ));
        }
    }
}

fn records(state: &Path) -> Vec<Record> {
    let text = std::fs::read_to_string(state.join("web/journal.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Records of the last rollout only.
fn last_rollout(state: &Path) -> Vec<Record> {
    let all = records(state);
    let start = all
        .iter()
        .rposition(|r| matches!(r.event, Event::Started { .. }))
        .unwrap_or(0);
    all[start..].to_vec()
}

fn manifest(
    fleet: &LocalFleet,
    version: &str,
    artifact: &Path,
    strategy: &str,
    checks: &str,
) -> String {
    format!(
        "apiVersion: rollgate.dev/v1\nkind: Rollout\nmetadata: {{name: web}}\nspec:\n  version: \"{version}\"\n  target:\n    hosts:\n      service: web\n      artifact: {{file: \"{artifact}\"}}\n      auth: {auth}\n      hosts:\n{hosts}  strategy:\n{strategy}  checks:\n{checks}  progressDeadlineSeconds: 60\n",
        artifact = artifact.display(),
        auth = fleet.auth_yaml(),
        hosts = fleet.hosts_yaml("        "),
    )
}

fn apply(state: &Path, file: &Path) -> (f64, u64, i32) {
    let mut cmd = Command::new(rollgate());
    cmd.args(["apply", "-o", "plain", "-f"])
        .arg(file)
        .env("ROLLGATE_STATE", state);
    let (t, rss, _) = timed(&mut cmd);
    let code = if last_rollout(state).iter().any(|r| {
        matches!(
            &r.event,
            Event::Finished {
                outcome: rollgate::state::Outcome::Succeeded,
                ..
            }
        )
    }) {
        0
    } else {
        1
    };
    (t, rss, code)
}

fn at(records: &[Record], pred: impl Fn(&Event) -> bool) -> Vec<u64> {
    records
        .iter()
        .filter(|r| pred(&r.event))
        .map(|r| r.at_ms)
        .collect()
}

async fn hosts_floor(rows: &mut Vec<Row>, sizes: &[usize]) {
    const D_MS: u64 = 500;
    const M_S: u64 = 1;
    for &n in sizes {
        let dir = tempfile::tempdir().unwrap();
        let fleet = LocalFleet::start_tuned(dir.path(), n, 1, Duration::from_millis(20))
            .await
            .unwrap();
        let artifacts = dir.path().join("artifacts");
        std::fs::create_dir_all(&artifacts).unwrap();
        let flags = format!("--start-delay-ms {D_MS}");
        let v1 = package_demo(&artifacts, "1.0.0", &flags).unwrap();
        let v2 = package_demo(&artifacts, "2.0.0", &flags).unwrap();
        let state = dir.path().join("state");
        let install = "    rolling: {maxSurge: 0, maxUnavailable: \"100%\"}\n";
        let m1 = dir.path().join("v1.yaml");
        std::fs::write(&m1, manifest(&fleet, "1.0.0", &v1, install, "    []\n")).unwrap();
        assert_eq!(apply(&state, &m1).2, 0, "install v1");
        let strategy = format!(
            "    rolling: {{maxSurge: 0, maxUnavailable: \"25%\", minReadySeconds: {M_S}}}\n"
        );
        let m2 = dir.path().join("v2.yaml");
        std::fs::write(&m2, manifest(&fleet, "2.0.0", &v2, &strategy, "    []\n")).unwrap();
        let (wall, _, code) = apply(&state, &m2);
        assert_eq!(code, 0, "v2 rolled out");
        let recs = last_rollout(&state);
        let steps_started = at(&recs, |e| matches!(e, Event::StepStarted { .. }));
        let steps_done = at(&recs, |e| matches!(e, Event::StepDone { .. }));
        let waves = steps_started.len() as f64;
        let floor = waves * (D_MS as f64 / 1000.0 + M_S as f64);
        let rollout = (*steps_done.last().unwrap() - steps_started[0]) as f64 / 1000.0;
        // Per-wave overhead: from a wave's last instance ready (its StepDone) to the next wave's first command.
        let changing = at(&recs, |e| matches!(e, Event::InstanceChanging { .. }));
        let gaps: Vec<f64> = steps_done
            .iter()
            .filter_map(|done| {
                changing
                    .iter()
                    .find(|c| **c >= *done)
                    .map(|c| (*c - *done) as f64 / 1000.0)
            })
            .collect();
        let worst_gap = gaps.iter().cloned().fold(0.0, f64::max);
        let overhead = (rollout - floor) / waves;
        if std::env::var_os("ROLLGATE_BENCH_DETAIL").is_some() {
            wave_breakdown(&recs, dir.path(), &fleet, "2.0.0", D_MS);
        }
        rows.push(row(
            format!(
                "hosts rollout N={n}, {waves} waves, d={D_MS}ms, m={M_S}s (first step to done)"
            ),
            format!("{rollout:.2} s (wall {wall:.2} s with staging)"),
            format!("floor {floor:.2} s"),
            format!("{:.3}", rollout / floor),
            "≤ 1.05".to_string(),
            Some(rollout / floor <= 1.05),
        ));
        rows.push(row(
            format!("hosts rollout N={n}: overhead per wave (avg over floor; worst ready-to-next-command gap)"),
            format!("{:.0} ms; gap {:.0} ms", overhead * 1000.0, worst_gap * 1000.0),
            "0".to_string(),
            "-".to_string(),
            "≤ 500 ms".to_string(),
            Some(overhead <= 0.5 && worst_gap <= 0.5),
        ));
        drop(fleet);
    }
}

fn vm(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

async fn fanout(rows: &mut Vec<Row>, n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let fleet = LocalFleet::start_tuned(dir.path(), n, 1, Duration::from_millis(50))
        .await
        .unwrap();
    let artifacts = dir.path().join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let v1 = package_demo(&artifacts, "1.0.0", "").unwrap();
    let state = dir.path().join("state");
    let once = "    rolling: {maxSurge: 0, maxUnavailable: \"100%\"}\n";
    // Idle: started, answering, nothing installed yet.
    let idle: Vec<f64> = fleet
        .agent_pids()
        .iter()
        .map(|p| vm(*p, "VmRSS:"))
        .collect();
    let m1 = dir.path().join("v1.yaml");
    std::fs::write(&m1, manifest(&fleet, "1.0.0", &v1, once, "    []\n")).unwrap();
    assert_eq!(apply(&state, &m1).2, 0, "install v1 on {n}");
    let floor = acceptance_floor(&fleet).await;
    // Three waves (v2, v3, v4), each one rollout of the whole fleet at once; the figure is the
    // median wave, and every wave's p99 is printed beside it.
    let mut waves = Vec::new();
    let mut cli_rss_kib = 0;
    let mut wall = 0.0;
    for version in ["2.0.0", "3.0.0", "4.0.0"] {
        let artifact = package_demo(&artifacts, version, "").unwrap();
        let m = dir.path().join(format!("{version}.yaml"));
        std::fs::write(&m, manifest(&fleet, version, &artifact, once, "    []\n")).unwrap();
        let (w, rss, code) = apply(&state, &m);
        assert_eq!(code, 0, "{version} on {n}");
        cli_rss_kib = cli_rss_kib.max(rss);
        wall = w;
        waves.push(wave_latencies(&state, dir.path(), &fleet, version));
    }
    let busy: Vec<f64> = fleet
        .agent_pids()
        .iter()
        .map(|p| vm(*p, "VmHWM:"))
        .collect();
    let p99s: Vec<f64> = waves.iter().map(|l| percentile(l.clone(), 0.99)).collect();
    let median = {
        let mut order: Vec<usize> = (0..waves.len()).collect();
        order.sort_by(|a, b| p99s[*a].total_cmp(&p99s[*b]));
        order[order.len() / 2]
    };
    let latencies = waves[median].clone();
    let (p50, p99) = (
        percentile(latencies.clone(), 0.5),
        percentile(latencies, 0.99),
    );
    let each: Vec<String> = p99s.iter().map(|p| format!("{p:.0}")).collect();
    let cli = cli_rss_kib as f64 / 1024.0;
    rows.push(row(
        format!("fan-out: CLI peak RSS driving {n} agents"),
        format!("{cli:.1} MiB"),
        "-",
        "-",
        "≤ 100 MiB",
        Some(cli <= 100.0),
    ));
    rows.push(row(
        format!(
            "fan-out: wave issued → agent acknowledged, {n} agents (p50 / p99 of the median of 3 waves; each wave's p99: {} ms)",
            each.join(", ")
        ),
        format!("{p50:.0} / {p99:.0} ms"),
        format!(
            "{:.0} / {:.0} ms: the same {n} agents accepting a no-op request sent at once (one whole rollout {wall:.1} s)",
            floor.0, floor.1
        ),
        format!("{:.2} / {:.2}", p50 / floor.0.max(1.0), p99 / floor.1.max(1.0)),
        "p99 ≤ 250 ms",
        Some(p99 <= 250.0),
    ));
    let idle_max = idle.iter().cloned().fold(0.0, f64::max);
    let busy_max = busy.iter().cloned().fold(0.0, f64::max);
    rows.push(row(
        "agent: idle RSS (max over the fleet)",
        format!("{idle_max:.1} MiB"),
        "CodeDeploy agent ~50 MB, Tentacle ~10 MB",
        format!("{:.2} of Tentacle", idle_max / 10.0),
        "≤ 10 MiB",
        Some(idle_max <= 10.0),
    ));
    rows.push(row(
        "agent: peak RSS through staging and activation",
        format!("{busy_max:.1} MiB"),
        "Tentacle 60–100 MB deploying",
        format!("{:.2} of 60 MB", busy_max / 60.0),
        "≤ 25 MiB",
        Some(busy_max <= 25.0),
    ));
    drop(fleet);
}

/// Per agent of `fleet`, ms from the CLI journaling the wave's command for it (the wave is
/// issued) to the agent recording the activation of `version` (it accepted the command: the
/// agent records each operation when it accepts it).
fn wave_latencies(state: &Path, dir: &Path, fleet: &LocalFleet, version: &str) -> Vec<f64> {
    let recs = last_rollout(state);
    let mut latencies = Vec::new();
    for (name, ..) in &fleet.hosts {
        let sent = recs.iter().find_map(|r| match &r.event {
            Event::InstanceChanging { instance, .. } if instance == name => Some(r.at_ms),
            _ => None,
        });
        let created = find_activate_created(&dir.join(name).join("data"), version);
        if let (Some(s), Some(c)) = (sent, created) {
            latencies.push(c.saturating_sub(s) as f64);
        }
    }
    assert_eq!(
        latencies.len(),
        fleet.hosts.len(),
        "every agent acknowledged {version}"
    );
    if std::env::var_os("ROLLGATE_BENCH_DETAIL").is_some() {
        if let Some(first) = recs
            .iter()
            .find(|r| matches!(r.event, Event::InstanceChanging { .. }))
        {
            println!(
                "fan-out wave {version} issued at unix {:.3} s",
                first.at_ms as f64 / 1000.0
            );
        }
        let mut sorted = latencies.clone();
        sorted.sort_by(f64::total_cmp);
        let deciles: Vec<String> = (0..=10)
            .map(|i| format!("{:.0}", sorted[((sorted.len() - 1) * i) / 10]))
            .collect();
        println!(
            "fan-out wave {version}: acknowledgement latency deciles (ms): {}",
            deciles.join(" ")
        );
    }
    latencies
}

/// Where a wave's time goes, per wave, worst instance: journal write → agent accepted the
/// activation, accepted → service started (minus the service's own start delay) → ready, ready →
/// the CLI's Changed record, and Changed → StepDone (minReadySeconds and gates).
fn wave_breakdown(recs: &[Record], dir: &Path, fleet: &LocalFleet, version: &str, d_ms: u64) {
    let changing: std::collections::HashMap<&str, u64> = recs
        .iter()
        .filter_map(|r| match &r.event {
            Event::InstanceChanging { instance, .. } => Some((instance.as_str(), r.at_ms)),
            _ => None,
        })
        .collect();
    let changed: std::collections::HashMap<&str, u64> = recs
        .iter()
        .filter_map(|r| match &r.event {
            Event::InstanceChanged { instance, .. } => Some((instance.as_str(), r.at_ms)),
            _ => None,
        })
        .collect();
    let mut waves: std::collections::BTreeMap<u64, Vec<(u64, u64, u64, u64)>> = Default::default();
    for (name, ..) in &fleet.hosts {
        let (Some(c0), Some(c1)) = (changing.get(name.as_str()), changed.get(name.as_str())) else {
            continue;
        };
        let Some((created, finished)) = find_activate(&dir.join(name).join("data"), version) else {
            continue;
        };
        waves.entry(*c0).or_default().push((
            created.saturating_sub(*c0),
            finished.saturating_sub(created),
            c1.saturating_sub(finished),
            *c1,
        ));
    }
    let done = at(recs, |e| matches!(e, Event::StepDone { .. }));
    for (i, (start, w)) in waves.iter().enumerate() {
        let max = |f: fn(&(u64, u64, u64, u64)) -> u64| w.iter().map(f).max().unwrap_or(0);
        let last_changed = max(|x| x.3);
        let step_done = done
            .iter()
            .find(|d| **d >= last_changed)
            .copied()
            .unwrap_or(0);
        println!(
            "wave {i}: {} instances; command→accepted ≤ {} ms; accepted→ready ≤ {} ms (start delay {d_ms}); ready→Changed ≤ {} ms; Changed→StepDone {} ms; wave total {} ms",
            w.len(),
            max(|x| x.0),
            max(|x| x.1),
            max(|x| x.2),
            step_done.saturating_sub(last_changed),
            step_done.saturating_sub(*start),
        );
    }
}

/// The agent's last record of its activate operation for `version`, from the operation log in
/// its data dir.
fn activate_op(data: &Path, version: &str) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(data.join("operations.log")).ok()?;
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["op"].clone())
        .find(|op| op["kind"] == "activate" && op["version"] == version)
}

/// (created, finished) of the agent's activate operation for `version`.
fn find_activate(data: &Path, version: &str) -> Option<(u64, u64)> {
    let op = activate_op(data, version)?;
    Some((
        op["createdUnixMs"].as_u64()?,
        op["finishedUnixMs"].as_u64()?,
    ))
}

/// The floor of a fan-out on this machine: every agent of `fleet` accepting a request that does
/// nothing (a prune that keeps everything), sent to all at once over warm mTLS connections by the
/// same client code the CLI uses, timed like the wave: sent → the agent's operation created.
/// (p50, p99) in ms.
async fn acceptance_floor(fleet: &LocalFleet) -> (f64, f64) {
    use rollgate::agent::api::PruneRequest;
    use rollgate::agent::client::{AgentClient, ClientAuth};
    let auth = ClientAuth::mtls_files(&fleet.ca, &fleet.client_cert, &fleet.client_key).unwrap();
    let clients: Vec<(String, AgentClient)> = fleet
        .hosts
        .iter()
        .map(|(name, port, _)| {
            let url = format!("https://127.0.0.1:{port}");
            (name.clone(), AgentClient::new(&url, &auth).unwrap())
        })
        .collect();
    // Warm: one connection per agent, as the CLI has from reading the hosts' state before a wave.
    futures_util::future::join_all(clients.iter().map(|(_, c)| c.services())).await;
    let sent = rollgate::state::now_ms();
    let ops = futures_util::future::join_all(clients.iter().map(|(name, c)| {
        let req = PruneRequest {
            request_id: format!("floor-{name}-{sent}"),
            keep: 1000,
        };
        async move { c.prune("web", &req).await }
    }))
    .await;
    let latencies: Vec<f64> = ops
        .into_iter()
        .map(|op| {
            op.expect("prune accepted")
                .created_unix_ms
                .saturating_sub(sent) as f64
        })
        .collect();
    (
        percentile(latencies.clone(), 0.5),
        percentile(latencies, 0.99),
    )
}

/// CPU seconds (user + system) a process has used, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the 14th field, stime 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// What one accepted request costs an agent: CPU time over 500 no-op operations (a prune that
/// keeps everything) sent one after another over one warm mTLS connection.
async fn agent_cpu(rows: &mut Vec<Row>) {
    use rollgate::agent::api::PruneRequest;
    use rollgate::agent::client::{AgentClient, ClientAuth};
    const REQUESTS: usize = 500;
    let dir = tempfile::tempdir().unwrap();
    let fleet = LocalFleet::start_tuned(dir.path(), 1, 1, Duration::from_millis(100))
        .await
        .unwrap();
    let auth = ClientAuth::mtls_files(&fleet.ca, &fleet.client_cert, &fleet.client_key).unwrap();
    let (_, port, _) = &fleet.hosts[0];
    let client = AgentClient::new(&format!("https://127.0.0.1:{port}"), &auth).unwrap();
    client.services().await.unwrap();
    let pid = fleet.agent_pids()[0];
    let before = cpu_seconds(pid);
    let start = Instant::now();
    for i in 0..REQUESTS {
        let req = PruneRequest {
            request_id: format!("cpu-{i}"),
            keep: 1000,
        };
        let op = client.prune("web", &req).await.unwrap();
        client
            .wait_operation(&op.id, Duration::from_secs(10))
            .await
            .unwrap();
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - before;
    rows.push(row(
        "agent: CPU per accepted operation (500 no-op prunes in a row, each waited for)",
        format!("{:.2} ms", cpu * 1000.0 / REQUESTS as f64),
        format!(
            "wall {:.2} ms per operation",
            wall * 1000.0 / REQUESTS as f64
        ),
        "-",
        "-",
        None,
    ));
    drop(fleet);
}

fn find_activate_created(data: &Path, version: &str) -> Option<u64> {
    activate_op(data, version)?["createdUnixMs"].as_u64()
}

async fn recovery(rows: &mut Vec<Row>) {
    const D_MS: u64 = 500;
    let dir = tempfile::tempdir().unwrap();
    let fleet = LocalFleet::start_tuned(dir.path(), 8, 1, Duration::from_millis(20))
        .await
        .unwrap();
    let artifacts = dir.path().join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let flags = format!("--start-delay-ms {D_MS}");
    let v1 = package_demo(&artifacts, "1.0.0", &flags).unwrap();
    let bad = package_demo(&artifacts, "2.0.0", &format!("{flags} --error-rate 1.0")).unwrap();
    let state = dir.path().join("state");
    let m1 = dir.path().join("v1.yaml");
    std::fs::write(
        &m1,
        manifest(
            &fleet,
            "1.0.0",
            &v1,
            "    rolling: {maxSurge: 0, maxUnavailable: \"100%\"}\n",
            "    []\n",
        ),
    )
    .unwrap();
    assert_eq!(apply(&state, &m1).2, 0);
    let interval_ms = 1000;
    let checks = format!(
        "    - name: serves\n      http: {{url: \"http://127.0.0.1:{{port}}/\"}}\n      interval: {interval_ms}ms\n"
    );
    let m2 = dir.path().join("v2.yaml");
    std::fs::write(
        &m2,
        manifest(
            &fleet,
            "2.0.0",
            &bad,
            "    canary:\n      maxUnavailable: 2\n      steps:\n        - setWeight: 25\n",
            &checks,
        ),
    )
    .unwrap();
    apply(&state, &m2);
    let recs = last_rollout(&state);
    let failed = at(&recs, |e| matches!(e, Event::Gate { passed: false, .. }));
    let finished = at(&recs, |e| {
        matches!(
            e,
            Event::Finished {
                outcome: rollgate::state::Outcome::RolledBack,
                ..
            }
        )
    });
    let (Some(f), Some(done)) = (failed.first(), finished.first()) else {
        rows.push(row(
            "failure → recovery on hosts",
            "the rollout did not fail as set up",
            "-",
            "-",
            "-",
            Some(false),
        ));
        return;
    };
    let took = (*done - *f) as f64;
    let budget = (interval_ms + D_MS) as f64;
    rows.push(row(
        "failure → every instance on the old version (hosts, kept on disk)",
        format!("{took:.0} ms"),
        format!("check interval + start = {budget:.0} ms"),
        format!("{:.2}", took / budget),
        "≤ 1.00",
        Some(took <= budget),
    ));
    drop(fleet);
}

fn binary_size(rows: &mut Vec<Row>) {
    let agent = PathBuf::from(env!("CARGO_BIN_EXE_rollgate-agent"));
    let size = std::fs::metadata(&agent).map(|m| m.len()).unwrap_or(0) as f64 / (1024.0 * 1024.0);
    rows.push(row(
        "agent: release binary size (stripped by the release profile)",
        format!("{size:.1} MiB"),
        "-",
        "-",
        "≤ 15 MiB",
        Some(size <= 15.0),
    ));
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("rollgate benchmarks: run them with `cargo bench --bench rollgate`");
        return;
    }
    let want = std::env::var("ROLLGATE_BENCH")
        .unwrap_or_else(|_| "planner,store,hosts,fanout,recovery,agent,agentcpu,kubernetes".into());
    let want: std::collections::BTreeSet<String> =
        want.split(',').map(|w| w.trim().to_string()).collect();
    let want = |name: &str| want.contains(name);
    let sizes: Vec<usize> = std::env::var("ROLLGATE_BENCH_SIZES")
        .unwrap_or_else(|_| "8,32,64".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let fan: usize = std::env::var("ROLLGATE_BENCH_FANOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut rows = Vec::new();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    println!(
        "machine: {} cores, {cpu}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if want("planner") {
        planner(&mut rows);
    }
    if want("store") {
        store(&mut rows);
    }
    if want("hosts") {
        runtime.block_on(hosts_floor(&mut rows, &sizes));
    }
    if want("fanout") || want("agent") {
        runtime.block_on(fanout(&mut rows, fan));
    }
    if want("recovery") {
        runtime.block_on(recovery(&mut rows));
    }
    if want("agentcpu") {
        runtime.block_on(agent_cpu(&mut rows));
    }
    if want("agent") {
        binary_size(&mut rows);
    }
    if want("kubernetes") {
        kubernetes_rows(&mut rows);
    }
    if want("argo") {
        argo_rows(&mut rows);
    }
    if want("pods") {
        scale_pods::rows(&mut rows);
    }
    if want("agents") {
        scale_agents::run(&mut rows, &runtime);
    }
    print_table(&rows);
}

/// The Kubernetes figures on the test control plane (`tests/cluster`), which this brings up if it
/// is not up (a cold cache builds it from Go modules first) and takes down again after.
fn kubernetes_rows(rows: &mut Vec<Row>) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cluster/cluster.sh");
    let was_up = Command::new("bash")
        .arg(&script)
        .arg("status")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("kube-apiserver: running"));
    // A runtime of its own, like the test's: kube clients belong to the runtime they were made on.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let result = runtime.block_on(kubernetes_bench::run());
    drop(runtime);
    if !was_up {
        let _ = Command::new("bash").arg(&script).arg("down").status();
    }
    match result {
        Some(found) => {
            for [figure, measured, baseline, ratio, target, pass] in found {
                rows.push(Row {
                    figure,
                    measured,
                    baseline,
                    ratio,
                    target,
                    pass: match pass.as_str() {
                        "pass" => Some(true),
                        "FAIL" => Some(false),
                        _ => None,
                    },
                });
            }
        }
        None => rows.push(row(
            "Kubernetes figures",
            "not measured: no test cluster here (see tests/cluster/README.md)",
            "-",
            "-",
            "-",
            None,
        )),
    }
}

/// rollgate against Argo Rollouts on the test cluster, in the same run (the rows it picks by
/// `ROLLGATE_ARGO_BENCH_ROWS`, inherited from this process's environment):
/// `tests/cluster/argo-bench.sh` (see its header) with this build's `rollgate`, which starts the
/// cluster and Argo's controller if they do not run (building the controller on a cold cache) and
/// prints the rows. What this started, it stops again after.
fn argo_rows(rows: &mut Vec<Row>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cluster");
    let running = |script: &str, what: &str| {
        Command::new("bash")
            .arg(dir.join(script))
            .arg("status")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(what))
    };
    let cluster_was_up = running("cluster.sh", "kube-apiserver: running");
    let argo_was_up = running("argo.sh", "rollouts-controller: running");
    let runs = std::env::var("ROLLGATE_BENCH_RUNS").unwrap_or_else(|_| "3".into());
    let out = Command::new("bash")
        .arg(dir.join("argo-bench.sh"))
        .env("ROLLGATE_BIN", rollgate())
        .env("ROLLGATE_ARGO_BENCH_RUNS", runs)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("running bash");
    if !cluster_was_up {
        let _ = Command::new("bash")
            .arg(dir.join("cluster.sh"))
            .arg("down")
            .status();
    } else if !argo_was_up {
        let _ = Command::new("bash")
            .arg(dir.join("argo.sh"))
            .arg("down")
            .status();
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let found: Vec<Row> = text
        .lines()
        .filter(|l| l.starts_with("| vs Argo"))
        .filter_map(|l| {
            let cells: Vec<&str> = l
                .trim()
                .trim_matches('|')
                .split(" | ")
                .map(str::trim)
                .collect();
            let [figure, measured, baseline, ratio, target, pass] = cells[..] else {
                return None;
            };
            let pass = match pass {
                "pass" => Some(true),
                "FAIL" => Some(false),
                _ => None,
            };
            Some(row(
                format!("Kubernetes {figure}"),
                measured,
                baseline,
                ratio,
                target,
                pass,
            ))
        })
        .collect();
    if !out.status.success() || found.is_empty() {
        rows.push(row(
            "Kubernetes vs Argo Rollouts",
            format!("not measured: tests/cluster/argo-bench.sh {}", out.status),
            "-",
            "-",
            "-",
            Some(false),
        ));
    }
    rows.extend(found);
}

/// The state store under 200 rollouts of one app: each "rollout" takes the lock (which compacts),
/// writes a 4-wave rollout's records (Started, 4 x [StepStarted, 2 Changing, 2 Changed, Gate,
/// StepDone], Finished: one fsync per record group, as the engine does) and releases the lock.
/// Figure: mean time of the last 10 rollouts against the first 10, and the store's size at the end
/// against its size before the first compaction.
fn store(rows: &mut Vec<Row>) {
    use rollgate::state::{Actor, LOCAL_KEEP_ROLLOUTS, Outcome, Store};
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::at(tmp.path());
    let actor = Actor {
        user: "bench".into(),
        host: "bench".into(),
        ci: None,
        client: None,
        signed: None,
        kubernetes: None,
    };
    let bytes = |dir: &Path| -> u64 {
        let mut total = 0;
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let m = e.metadata().unwrap();
                if m.is_dir() {
                    stack.push(e.path())
                } else {
                    total += m.len()
                }
            }
        }
        total
    };
    let mut times = Vec::new();
    let mut sizes = Vec::new();
    for i in 0..200 {
        let start = Instant::now();
        let lock = store.lock("web", &actor).unwrap();
        let mut j = store.journal("web").unwrap();
        let id = format!("web-{i}");
        j.append(Event::Started {
            rollout: id.clone(),
            from: Some("1".into()),
            to: "2".into(),
            strategy: rollgate::state::StrategyKind::Rolling,
            actor: actor.clone(),
            steps: 4,
        })
        .unwrap();
        for step in 0..4 {
            j.append(Event::StepStarted {
                rollout: id.clone(),
                step,
                kind: rollgate::plan::StepKind::Scale,
                note: "replace a wave".into(),
            })
            .unwrap();
            let hosts = [format!("h{}", 2 * step), format!("h{}", 2 * step + 1)];
            j.append_all(hosts.iter().map(|h| Event::InstanceChanging {
                rollout: id.clone(),
                instance: h.clone(),
                version: "2".into(),
            }))
            .unwrap();
            j.append_all(hosts.iter().map(|h| Event::InstanceChanged {
                rollout: id.clone(),
                instance: h.clone(),
                version: "2".into(),
                ok: true,
                detail: "ready".into(),
            }))
            .unwrap();
            j.append(Event::Gate {
                rollout: id.clone(),
                step,
                check: "health".into(),
                passed: true,
                detail: "on h0".into(),
                measurements: vec![],
            })
            .unwrap();
            j.append(Event::StepDone {
                rollout: id.clone(),
                step,
                millis: 1,
            })
            .unwrap();
        }
        j.append(Event::Finished {
            rollout: id.clone(),
            outcome: Outcome::Succeeded,
            detail: String::new(),
        })
        .unwrap();
        drop(lock);
        times.push(start.elapsed().as_secs_f64());
        sizes.push(bytes(&tmp.path().join("web")));
    }
    let mean = |t: &[f64]| t.iter().sum::<f64>() / t.len() as f64;
    // The journal grows to 2 x LOCAL_KEEP_ROLLOUTS rollouts, is compacted to LOCAL_KEEP_ROLLOUTS, grows again:
    // a saw tooth of LOCAL_KEEP_ROLLOUTS rollouts. Not creeping up means the last 10 cost what the same
    // phase of the tooth cost one cycle earlier. The first 10, on an empty store, are context.
    let cycle = LOCAL_KEEP_ROLLOUTS;
    let (first, settled, last) = (
        mean(&times[..10]),
        mean(&times[190 - cycle..200 - cycle]),
        mean(&times[190..]),
    );
    rows.push(row(
        format!(
            "state store: time per rollout, last 10 of 200 vs the same point of the previous compaction cycle (#{}-{}); lock with compaction, 30 records in 22 fsynced writes; first 10 on an empty store: {:.2} ms",
            191 - cycle,
            200 - cycle,
            first * 1000.0
        ),
        format!("{:.2} ms", last * 1000.0),
        format!("{:.2} ms", settled * 1000.0),
        format!("{:.2}", last / settled),
        "≤ 1.20",
        Some(last / settled <= 1.2),
    ));
    let peak = *sizes[..2 * LOCAL_KEEP_ROLLOUTS].iter().max().unwrap();
    let end = *sizes.last().unwrap();
    rows.push(row(
        "state store: size after 200 rollouts vs before the first compaction",
        format!("{} KiB", end / 1024),
        format!("{} KiB", peak / 1024),
        format!("{:.2}", end as f64 / peak as f64),
        "≤ 1.00",
        Some(end <= peak),
    ));
}
