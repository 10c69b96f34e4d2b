//! Issue 23 §3, a thousand agents: the fan-out benchmark at N = 200, 500 and 1,000 agents
//! (`ROLLGATE_BENCH_AGENTS`), one real `rollgate-agent` and one demo service each on loopback,
//! sharing this machine's CPU, and what the CLI costs per host as N grows.
//!
//! At each N: the fleet installs version 1, the floor is measured (every agent accepting a no-op
//! request sent at once over warm connections, as in `fanout`), then three whole-fleet rollouts
//! (v2, v3, v4, maxUnavailable 100%) each give:
//! - the CLI's wall, CPU time (user + system), peak RSS (GNU time), most file descriptors held at
//!   once (/proc, sampled every 10 ms) and the journal bytes it wrote;
//! - wave issued → agent acknowledged, per agent (as `fanout`), p50 and p99;
//! - the rollout (first step to done, from the journal) against its floor: the acceptance floor's
//!   p99 plus the slowest agent's own activation (accepted → new service healthy, from the agents'
//!   operation logs).
//!
//! Medians over the three rollouts; the CLI's peak RSS is the largest. The agents' own cost (idle
//! RSS, CPU per rollout) and the demo services' RSS are printed too: they are what bounds N here.
//! `ROLLGATE_BENCH_HEALTH_MS` sets the agents' health-check interval (50 ms by default, as
//! `fanout`).

use std::path::Path;
use std::time::{Duration, Instant};

use rollgate::cli::demo::{LocalFleet, package_demo};
use rollgate::state::{Event, Outcome};

use crate::cli_cost::{self, Cost};

/// The medians of one N, for the table and the chart.
#[derive(Clone, Copy, Debug, Default)]
pub struct Figures {
    pub n: usize,
    pub cli_rss_mib: f64,
    pub p50: f64,
    pub p99: f64,
    pub floor_p50: f64,
    pub floor_p99: f64,
    pub wall: f64,
    pub rollout: f64,
    pub rollout_floor: f64,
    pub cpu_ms_per_host: f64,
    pub rss_kib_per_host: f64,
    pub fds: f64,
    pub journal_per_host: f64,
    pub agent_rss_mib: f64,
    pub demo_rss_mib: f64,
    pub agent_cpu_ms: f64,
    /// Rollouts (of 3) that failed; the figures are of the others.
    pub failed: usize,
}

/// One whole-fleet rollout's figures.
struct Rollout {
    cost: Cost,
    journal: u64,
    p50: f64,
    p99: f64,
    rollout: f64,
    rollout_floor: f64,
    agent_cpu: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// RSS (MiB) of each agent's demo service (its children, spawned from any of its threads).
fn demo_rss(agents: &[u32]) -> Vec<f64> {
    agents
        .iter()
        .flat_map(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/task"))
                .into_iter()
                .flatten()
                .flatten()
                .flat_map(|task| {
                    std::fs::read_to_string(task.path().join("children"))
                        .unwrap_or_default()
                        .split_whitespace()
                        .filter_map(|p| p.parse::<u32>().ok())
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
        })
        .map(|p| crate::vm(p, "VmRSS:"))
        .collect()
}

/// One N: the fleet, v1, the floor, three rollouts.
pub async fn one(n: usize) -> Figures {
    let health = std::env::var("ROLLGATE_BENCH_HEALTH_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let dir = tempfile::tempdir().unwrap();
    println!(
        "agents N={n}: load {} before the fleet starts",
        cli_cost::load()
    );
    let started = Instant::now();
    let fleet = LocalFleet::start_tuned(dir.path(), n, 1, Duration::from_millis(health))
        .await
        .unwrap_or_else(|e| panic!("starting {n} agents: {e}"));
    println!(
        "agents N={n}: fleet up in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let pids = fleet.agent_pids();
    let agent_idle = median(pids.iter().map(|p| crate::vm(*p, "VmRSS:")).collect());
    let artifacts = dir.path().join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let state = dir.path().join("state");
    let once = "    rolling: {maxSurge: 0, maxUnavailable: \"100%\"}\n";
    let apply = |version: &str| {
        let artifact = package_demo(&artifacts, version, "").unwrap();
        let m = dir.path().join(format!("{version}.yaml"));
        std::fs::write(
            &m,
            crate::manifest(&fleet, version, &artifact, once, "    []\n"),
        )
        .unwrap();
        let journal = state.join("web/journal.jsonl");
        let before = size(&journal);
        let (cost, code, _) = cli_cost::run(
            crate::rollgate(),
            &["apply", "-o", "plain", "-f", m.to_str().unwrap()],
            &[("ROLLGATE_STATE", state.to_str().unwrap())],
            dir.path(),
        );
        let ok = crate::last_rollout(&state).iter().any(|r| {
            matches!(
                &r.event,
                Event::Finished {
                    outcome: Outcome::Succeeded,
                    ..
                }
            )
        });
        if !(ok && code == Some(0)) {
            println!("agents N={n}: the rollout to {version} failed ({code:?}); see above");
        }
        (cost, size(&journal) - before, ok && code == Some(0))
    };
    let (install, _, installed) = apply("1.0.0");
    assert!(installed, "version 1 installed on {n} agents");
    println!(
        "agents N={n}: v1 installed in {:.1} s; load {}",
        install.wall,
        cli_cost::load()
    );
    let demo = median(demo_rss(&pids));
    let floor = crate::acceptance_floor(&fleet).await;
    let mut per: Vec<Rollout> = Vec::new();
    let mut failed = 0;
    for version in ["2.0.0", "3.0.0", "4.0.0"] {
        let load = cli_cost::load();
        let cpu_before: f64 = pids.iter().map(|p| crate::cpu_seconds(*p)).sum();
        let (cost, journal, ok) = apply(version);
        if !ok {
            failed += 1;
            continue;
        }
        let agent_cpu: f64 = pids.iter().map(|p| crate::cpu_seconds(*p)).sum::<f64>() - cpu_before;
        let latencies = crate::wave_latencies(&state, dir.path(), &fleet, version);
        let recs = crate::last_rollout(&state);
        let started = crate::at(&recs, |e| matches!(e, Event::StepStarted { .. }));
        let done = crate::at(&recs, |e| matches!(e, Event::StepDone { .. }));
        let rollout = (done.last().unwrap() - started[0]) as f64 / 1000.0;
        let slowest = fleet
            .hosts
            .iter()
            .filter_map(|(name, ..)| {
                let (c, f) = crate::find_activate(&dir.path().join(name).join("data"), version)?;
                Some(f.saturating_sub(c))
            })
            .max()
            .unwrap_or(0) as f64;
        let rollout_floor = (floor.1 + slowest) / 1000.0;
        let (p50, p99) = (
            crate::percentile(latencies.clone(), 0.5),
            crate::percentile(latencies, 0.99),
        );
        println!(
            "agents N={n} {version} (load {load}): CLI wall {:.2} s, CPU {:.2} s, RSS {:.1} MiB, fds {}, journal {journal} B; ack p50/p99 {p50:.0}/{p99:.0} ms (floor {:.0}/{:.0}); rollout {rollout:.2} s over floor {rollout_floor:.2} s (slowest activation {slowest:.0} ms); agents' CPU {:.2} s",
            cost.wall,
            cost.cpu,
            cost.rss_kib as f64 / 1024.0,
            cost.fds,
            floor.0,
            floor.1,
            agent_cpu
        );
        per.push(Rollout {
            cost,
            journal,
            p50,
            p99,
            rollout,
            rollout_floor,
            agent_cpu,
        });
    }
    let m = |f: fn(&Rollout) -> f64| median(per.iter().map(f).collect());
    let nf = n as f64;
    let figures = Figures {
        n,
        cli_rss_mib: per.iter().map(|p| p.cost.rss_kib).max().unwrap_or(0) as f64 / 1024.0,
        p50: m(|p| p.p50),
        p99: m(|p| p.p99),
        floor_p50: floor.0,
        floor_p99: floor.1,
        wall: m(|p| p.cost.wall),
        rollout: m(|p| p.rollout),
        rollout_floor: m(|p| p.rollout_floor),
        cpu_ms_per_host: m(|p| p.cost.cpu) * 1000.0 / nf,
        rss_kib_per_host: m(|p| p.cost.rss_kib as f64) / nf,
        fds: m(|p| p.cost.fds as f64),
        journal_per_host: m(|p| p.journal as f64) / nf,
        agent_rss_mib: agent_idle,
        demo_rss_mib: demo,
        agent_cpu_ms: m(|p| p.agent_cpu) * 1000.0 / nf,
        failed,
    };
    drop(fleet);
    figures
}

/// The rows of every N; the per-host costs are compared with the first N's.
pub fn rows(all: &[Figures]) -> Vec<crate::Row> {
    let mut rows = Vec::new();
    let first = all.first().copied().unwrap_or_default();
    for f in all {
        let n = f.n;
        if f.failed > 0 {
            rows.push(crate::row(
                format!("fan-out N={n}: whole-fleet rollouts that failed"),
                format!("{} of 3", f.failed),
                "-",
                "-",
                "0",
                Some(false),
            ));
        }
        rows.push(crate::row(
            format!("fan-out N={n}: CLI peak RSS"),
            format!("{:.1} MiB", f.cli_rss_mib),
            "-",
            "-",
            if n >= 1000 { "≤ 150 MiB" } else { "-" },
            (n >= 1000).then_some(f.cli_rss_mib <= 150.0),
        ));
        rows.push(crate::row(
            format!(
                "fan-out N={n}: wave issued → agent acknowledged, p50 / p99 (median of 3 rollouts)"
            ),
            format!("{:.0} / {:.0} ms", f.p50, f.p99),
            format!(
                "{:.0} / {:.0} ms: no-op request to all at once",
                f.floor_p50, f.floor_p99
            ),
            format!(
                "{:.2} / {:.2}",
                f.p50 / f.floor_p50.max(1.0),
                f.p99 / f.floor_p99.max(1.0)
            ),
            "-",
            None,
        ));
        rows.push(crate::row(
            format!(
                "fan-out N={n}: whole-fleet rollout, first step → done (CLI wall with staging)"
            ),
            format!("{:.2} s ({:.2} s)", f.rollout, f.wall),
            format!(
                "{:.2} s: floor p99 + slowest agent's activation",
                f.rollout_floor
            ),
            format!("{:.2}", f.rollout / f.rollout_floor),
            "-",
            None,
        ));
        let flat = |now: f64, then: f64| now <= 1.10 * then;
        let later = n > first.n;
        rows.push(crate::row(
            format!(
                "fan-out N={n}: CLI cost per host (CPU, peak RSS, fds held at once, journal bytes)"
            ),
            format!(
                "{:.2} ms, {:.0} KiB, {:.2} fds, {:.0} B",
                f.cpu_ms_per_host,
                f.rss_kib_per_host,
                f.fds / n as f64,
                f.journal_per_host
            ),
            if later {
                format!(
                    "N={}: {:.2} ms, {:.0} KiB, {:.2} fds, {:.0} B",
                    first.n,
                    first.cpu_ms_per_host,
                    first.rss_kib_per_host,
                    first.fds / first.n as f64,
                    first.journal_per_host
                )
            } else {
                "-".into()
            },
            "-",
            if later {
                format!("≤ 1.10 × at N={}", first.n)
            } else {
                "-".into()
            },
            later.then(|| {
                flat(f.cpu_ms_per_host, first.cpu_ms_per_host)
                    && flat(f.rss_kib_per_host, first.rss_kib_per_host)
                    && flat(f.fds / n as f64, first.fds / first.n as f64)
                    && flat(f.journal_per_host, first.journal_per_host)
            }),
        ));
        rows.push(crate::row(
            format!(
                "fan-out N={n}: each agent (idle RSS; CPU per rollout) and its demo service (RSS)"
            ),
            format!(
                "{:.1} MiB; {:.1} ms; {:.1} MiB",
                f.agent_rss_mib, f.agent_cpu_ms, f.demo_rss_mib
            ),
            "-",
            "-",
            "-",
            None,
        ));
    }
    rows
}

/// The rows of `ROLLGATE_BENCH=agents`, and the chart `agents.svg`.
pub fn run(rows_out: &mut Vec<crate::Row>, runtime: &tokio::runtime::Runtime) {
    let sizes: Vec<usize> = std::env::var("ROLLGATE_BENCH_AGENTS")
        .unwrap_or_else(|_| "200,500,1000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let mut all = Vec::new();
    for n in sizes {
        all.push(runtime.block_on(one(n)));
    }
    rows_out.extend(rows(&all));
    let series =
        |f: fn(&Figures) -> f64| all.iter().map(|x| (x.n as f64, f(x))).collect::<Vec<_>>();
    crate::chart::write(
        "agents.svg",
        "rollgate fan-out: the CLI's cost per host as N grows",
        "agents (N)",
        &[
            ("CLI CPU ms per host", series(|f| f.cpu_ms_per_host)),
            (
                "CLI peak RSS KiB per host / 100",
                series(|f| f.rss_kib_per_host / 100.0),
            ),
            (
                "journal bytes per host / 100",
                series(|f| f.journal_per_host / 100.0),
            ),
        ],
    );
}
