//! Issue 23 §2, a thousand pods: `rollgate apply` against `kubectl set image` + `kubectl rollout
//! status` at N = 20, 200 and 1,000 pods (`ROLLGATE_BENCH_PODS`), rolling 25% / 0, every pod Ready
//! exactly 1 s after it is scheduled, on the test cluster; and rollgate's own cost at each N.
//!
//! - The pods run on bench-only kwok nodes (`kwok-bench-node-*`, 1,000 pods each), tainted so that
//!   nothing else lands there and labelled so that the bench's pods land nowhere else; the test
//!   suite's three nodes (330 pods) stay as they are. They are created when this starts and
//!   deleted when it ends.
//! - Each run makes a fresh namespace per tool (who goes first alternates), waits for N Ready pods
//!   of version 1, times the rollout to version 2, and deletes the namespace, waiting until it is
//!   gone so that the next run starts on a quiet control plane.
//! - rollgate's cost: CPU time (user + system) and peak RSS from GNU time (getrusage of the
//!   child); API requests from the apiserver's
//!   `apiserver_flowcontrol_dispatched_requests_total` of a FlowSchema of its own (rollgate and
//!   kubectl each run as an identity of their own: `tests/cluster/argo.sh identity`); watch
//!   events: what rollgate's three watches (its Deployment by name, its ReplicaSets and pods by
//!   selector) deliver, counted by the same three watches opened by the bench just before
//!   rollgate starts and closed when it exits. The same three watches are open through kubectl's
//!   run too (the same load on the API server and on this machine for both; the count printed
//!   for kubectl is the churn of the same objects under its rollout).
//!
//! `ROLLGATE_BENCH_RUNS` runs at each N (3 by default); medians, and the median of same-run ratios.
//! `ROLLGATE_BENCH_KUBECTL_WATCHES=1` opens a second set of the three watches through kubectl's
//! runs only: the load rollgate's own watches put on the control plane, given to kubectl too.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Namespace, Pod, Toleration};
use kube::Api;
use kube::runtime::watcher;

use crate::cli_cost::{self, Cost};
use crate::kube_bed::{self, APP, Bed, image};

const NODES: usize = 3;
const NODE_PODS: usize = 1000;
const BENCH_LABEL: &str = "rollgate.dev/bench";

/// One run of one N: the two walls and rollgate's cost.
#[derive(Clone, Debug)]
pub struct Run {
    pub kubectl: f64,
    pub rollgate: Cost,
    pub rollgate_requests: f64,
    pub kubectl_requests: f64,
    pub events: u64,
    pub kubectl_events: u64,
}

fn kubectl_bin(bed: &Bed) -> PathBuf {
    PathBuf::from(bed.cluster.kubectl().as_std().get_program())
}

/// The bench-only nodes: kwok's, tainted and labelled for the bench.
async fn nodes(bed: &Bed, create: bool) {
    let mut manifest = String::new();
    for i in 1..=NODES {
        manifest.push_str(&format!(
            "---\napiVersion: v1\nkind: Node\nmetadata:\n  name: kwok-bench-node-{i}\n  annotations: {{kwok.x-k8s.io/node: fake, node.alpha.kubernetes.io/ttl: \"0\"}}\n  labels: {{kubernetes.io/hostname: kwok-bench-node-{i}, kubernetes.io/os: linux, type: kwok, {BENCH_LABEL}: scale}}\nspec:\n  taints: [{{key: {BENCH_LABEL}, value: scale, effect: NoSchedule}}]\nstatus:\n  allocatable: {{cpu: \"1000\", memory: 4Ti, pods: \"{NODE_PODS}\"}}\n  capacity: {{cpu: \"1000\", memory: 4Ti, pods: \"{NODE_PODS}\"}}\n"
        ));
    }
    let path = bed.path("bench-nodes.yaml");
    std::fs::write(&path, manifest).unwrap();
    let verb = if create { "apply" } else { "delete" };
    bed.cluster
        .kubectl()
        .args([verb, "-f"])
        .arg(&path)
        .output()
        .await
        .expect("kubectl");
    if create {
        bed.cluster
            .kubectl()
            .args([
                "wait",
                "--for=condition=Ready",
                "node",
                "-l",
                &format!("{BENCH_LABEL}=scale"),
                "--timeout=60s",
            ])
            .output()
            .await
            .expect("kubectl wait");
    }
}

/// A fresh namespace with `web` at `n` Ready pods of version 1 on the bench nodes.
async fn bed(purpose: &str, n: i32) -> Option<Bed> {
    let mut d: Deployment = kube_bed::deployment(n, "25%", "0");
    let template = &mut d.spec.as_mut().unwrap().template;
    template
        .metadata
        .as_mut()
        .unwrap()
        .annotations
        .get_or_insert_with(Default::default)
        .insert(crate::cluster::READY_DELAY_ANNOTATION.into(), "1s".into());
    let pod = template.spec.as_mut().unwrap();
    pod.node_selector = Some([(BENCH_LABEL.to_string(), "scale".to_string())].into());
    pod.tolerations = Some(vec![Toleration {
        key: Some(BENCH_LABEL.into()),
        operator: Some("Exists".into()),
        effect: Some("NoSchedule".into()),
        ..Toleration::default()
    }]);
    Bed::with(purpose, d).await
}

/// Deletes the namespace and waits until it is gone (its pods too).
async fn finish(bed: Bed) {
    let namespaces: Api<Namespace> = Api::all(bed.client.clone());
    let ns = bed.ns.clone();
    bed.finish().await;
    let deadline = Instant::now() + Duration::from_secs(180);
    while namespaces.get_opt(&ns).await.ok().flatten().is_some() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// An identity of its own (its kubeconfig), its requests counted in FlowSchema `name`.
fn identity(name: &str) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cluster/argo.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .args(["identity", name])
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "argo.sh identity {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The apiserver's metrics, as text.
async fn metrics(bed: &Bed) -> String {
    let pki = bed.cluster.kubeconfig().parent().unwrap().join("pki");
    let server = std::fs::read_to_string(bed.cluster.kubeconfig())
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: ").map(str::to_string))
        .expect("a server in the kubeconfig");
    let out = tokio::process::Command::new("curl")
        .args(["-fsS", "--max-time", "10", "--cacert"])
        .arg(pki.join("ca.crt"))
        .arg("--cert")
        .arg(pki.join("admin.crt"))
        .arg("--key")
        .arg(pki.join("admin.key"))
        .arg(format!("{server}/metrics"))
        .output()
        .await
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Requests of FlowSchema `schema` the apiserver has dispatched so far.
async fn requests(bed: &Bed, schema: &str) -> f64 {
    let needle = format!("flow_schema=\"{schema}\"");
    metrics(bed)
        .await
        .lines()
        .filter(|l| {
            l.starts_with("apiserver_flowcontrol_dispatched_requests_total{") && l.contains(&needle)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The writes the apiserver has served so far, from every client (the controllers' too), by
/// resource (and subresource): `apiserver_request_total` of POST, PUT, PATCH, DELETE and APPLY.
async fn writes(bed: &Bed) -> std::collections::BTreeMap<String, f64> {
    let label = |l: &str, name: &str| -> Option<String> {
        let start = l.find(&format!("{name}=\""))? + name.len() + 2;
        Some(l[start..].split('"').next()?.to_string())
    };
    let mut out = std::collections::BTreeMap::new();
    for l in metrics(bed).await.lines() {
        if !l.starts_with("apiserver_request_total{") {
            continue;
        }
        let verb = label(l, "verb").unwrap_or_default();
        if !matches!(verb.as_str(), "POST" | "PUT" | "PATCH" | "DELETE" | "APPLY") {
            continue;
        }
        let mut what = label(l, "resource").unwrap_or_default();
        if let Some(sub) = label(l, "subresource").filter(|s| !s.is_empty()) {
            what = format!("{what}/{sub}");
        }
        let n = l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        *out.entry(what).or_insert(0.0) += n.unwrap_or(0.0);
    }
    out
}

/// The writes between two readings of [`writes`], the busiest first, in a line.
fn writes_since(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
) -> String {
    let mut d: Vec<(String, f64)> = after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v >= 1.0)
        .collect();
    d.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total: f64 = d.iter().map(|(_, v)| v).sum();
    let each: Vec<String> = d.iter().map(|(k, v)| format!("{k} {v:.0}")).collect();
    format!("apiserver writes {total:.0} ({})", each.join(", "))
}

/// One ReplicaSet event: ms since the watches listed, name, `spec.replicas`, available.
type Seen = (u64, String, i32, i32);

/// Counts the events of rollgate's three watches (not the initial lists) until dropped.
struct EventCount {
    count: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Each ReplicaSet event.
    sets: Arc<std::sync::Mutex<Vec<Seen>>>,
    /// Each pod made after the watches listed (a new one, first seen unbound): when it was first
    /// seen, first seen bound to a node, and first seen Ready.
    pods: Arc<std::sync::Mutex<std::collections::HashMap<String, [Option<u64>; 3]>>>,
}

impl EventCount {
    async fn start(bed: &Bed) -> EventCount {
        let count = Arc::new(AtomicU64::new(0));
        let by_name = watcher::Config::default().fields(&format!("metadata.name={APP}"));
        let by_label = watcher::Config::default().labels(&format!("app={APP}"));
        let (tx, mut rx) = tokio::sync::mpsc::channel(3);
        let sets = Arc::new(std::sync::Mutex::new(Vec::new()));
        let since = Arc::new(std::sync::Mutex::new(Instant::now()));
        let (seen, at) = (sets.clone(), since.clone());
        let pods = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
        let (pods_seen, pods_at) = (pods.clone(), since.clone());
        let tasks = vec![
            count_events(
                bed.deployments.clone(),
                by_name,
                count.clone(),
                tx.clone(),
                |_| {},
            ),
            count_events::<ReplicaSet>(
                bed.replica_sets.clone(),
                by_label.clone(),
                count.clone(),
                tx.clone(),
                move |rs| {
                    let ms = at.lock().unwrap().elapsed().as_millis() as u64;
                    let spec = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
                    let available = rs
                        .status
                        .as_ref()
                        .and_then(|s| s.available_replicas)
                        .unwrap_or(0);
                    let name = rs.metadata.name.clone().unwrap_or_default();
                    seen.lock().unwrap().push((ms, name, spec, available));
                },
            ),
            count_events::<Pod>(bed.pods.clone(), by_label, count.clone(), tx, move |p| {
                let ms = pods_at.lock().unwrap().elapsed().as_millis() as u64;
                let bound = p.spec.as_ref().is_some_and(|s| s.node_name.is_some());
                let ready = p
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                let name = p.metadata.name.clone().unwrap_or_default();
                let mut seen = pods_seen.lock().unwrap();
                // A new pod is first seen unbound; an old one (listed before) bound.
                if !bound && !seen.contains_key(&name) {
                    seen.insert(name.clone(), [Some(ms), None, None]);
                }
                let Some(times) = seen.get_mut(&name) else {
                    return;
                };
                if bound {
                    times[1].get_or_insert(ms);
                }
                if ready {
                    times[2].get_or_insert(ms);
                }
            }),
        ];
        for _ in 0..3 {
            rx.recv().await;
        }
        *since.lock().unwrap() = Instant::now();
        sets.lock().unwrap().clear();
        pods.lock().unwrap().clear();
        EventCount {
            count,
            tasks,
            sets,
            pods,
        }
    }

    /// The events counted, and when (ms after the watches listed) the new ReplicaSet was asked for
    /// and had available a quarter, half, three quarters and all of `n`, and the old one was
    /// asked down to three quarters, half, a quarter and none: where a rollout's time went.
    fn stop(self, n: i32) -> (u64, String) {
        for t in &self.tasks {
            t.abort();
        }
        let sets = self.sets.lock().unwrap().clone();
        let old = sets.iter().find(|s| s.3 == n).map(|s| s.1.clone());
        let first = |f: &dyn Fn(&Seen) -> bool| {
            sets.iter()
                .find(|s| f(s))
                .map_or("-".to_string(), |s| s.0.to_string())
        };
        let quarters = [n / 4, n / 2, 3 * n / 4, n];
        let is_old = |s: &Seen| Some(&s.1) == old.as_ref();
        let asked: Vec<String> = quarters
            .iter()
            .map(|q| first(&|s| !is_old(s) && s.2 >= *q))
            .collect();
        let available: Vec<String> = quarters
            .iter()
            .map(|q| first(&|s| !is_old(s) && s.3 >= *q))
            .collect();
        let down: Vec<String> = [3 * n / 4, n / 2, n / 4, 0]
            .iter()
            .map(|q| first(&|s| is_old(s) && s.2 <= *q))
            .collect();
        // The new pods (every pod made since the watches listed): when each quarter was made,
        // bound and Ready.
        let pods = self.pods.lock().unwrap();
        let made = |i: usize| -> String {
            let mut at: Vec<u64> = pods.values().filter_map(|t| t[i]).collect();
            at.sort_unstable();
            quarters
                .iter()
                .map(|q| {
                    at.get((*q as usize).saturating_sub(1))
                        .map_or("-".to_string(), |t| t.to_string())
                })
                .collect::<Vec<_>>()
                .join("/")
        };
        let trace = format!(
            "new asked {}; pods made {}, bound {}, Ready {}; new available {}; old asked down {}",
            asked.join("/"),
            made(0),
            made(1),
            made(2),
            available.join("/"),
            down.join("/")
        );
        (self.count.load(Ordering::Relaxed), trace)
    }
}

fn count_events<K>(
    api: Api<K>,
    config: watcher::Config,
    count: Arc<AtomicU64>,
    listed: tokio::sync::mpsc::Sender<()>,
    each: impl Fn(&K) + Send + 'static,
) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + Send
        + Sync
        + serde::de::DeserializeOwned
        + 'static,
{
    tokio::spawn(async move {
        let mut events = watcher(api, config).boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::InitDone) => {
                    let _ = listed.send(()).await;
                }
                Ok(watcher::Event::Apply(k) | watcher::Event::Delete(k)) => {
                    each(&k);
                    count.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
    })
}

async fn kubectl_run(n: i32, run: usize, config: &Path) -> Option<(f64, f64, u64)> {
    let k = bed(&format!("bench-pods{n}-kubectl-{run}"), n).await?;
    let bin = kubectl_bin(&k);
    let deploy = format!("deployment/{APP}");
    let image2 = format!("{APP}={}", image("2"));
    let counter = EventCount::start(&k).await;
    // An experiment: the load of rollgate's own three watches (a second set of counting
    // watches) through kubectl's run too, to tell their share of the difference.
    let watches = match std::env::var_os("ROLLGATE_BENCH_KUBECTL_WATCHES") {
        Some(_) => Some(EventCount::start(&k).await),
        None => None,
    };
    let r0 = requests(&k, "kubectl-scale").await;
    let w0 = writes(&k).await;
    let plane = crate::plane_cpu::Snapshot::take();
    let started = Instant::now();
    for args in [
        vec!["set", "image", deploy.as_str(), image2.as_str()],
        vec!["rollout", "status", deploy.as_str(), "--timeout=600s"],
    ] {
        let out = tokio::process::Command::new(&bin)
            .arg("--kubeconfig")
            .arg(config)
            .args(["-n", &k.ns])
            .args(&args)
            .output()
            .await
            .expect("kubectl");
        assert!(out.status.success(), "kubectl {args:?}");
    }
    let wall = started.elapsed().as_secs_f64();
    let plane = plane.since();
    let (events, trace) = counter.stop(n);
    if let Some(w) = watches {
        w.stop(n);
    }
    println!("pods N={n} run {run}: kubectl's {trace}");
    let w = writes_since(&w0, &writes(&k).await);
    println!("pods N={n} run {run}: kubectl's run: {plane}; {w}");
    let requests = requests(&k, "kubectl-scale").await - r0;
    finish(k).await;
    Some((wall, requests, events))
}

async fn rollgate_run(n: i32, run: usize, config: &Path) -> Option<(Cost, f64, u64)> {
    let r = bed(&format!("bench-pods{n}-rollgate-{run}"), n).await?;
    let rollout = r.rollout(
        "web.yaml",
        "2",
        &format!("image: \"{}\"", image("2")),
        "  strategy:\n    rolling: {maxSurge: \"25%\", maxUnavailable: 0}\n  progressDeadlineSeconds: 300\n",
    );
    let counter = EventCount::start(&r).await;
    let r0 = requests(&r, "rollgate-scale").await;
    let (dir, state, config) = (
        r.dir.path().to_path_buf(),
        r.path("state"),
        config.to_path_buf(),
    );
    let w0 = writes(&r).await;
    let spawned = epoch_ms();
    let plane = crate::plane_cpu::Snapshot::take();
    let (cost, code, stdout) = tokio::task::spawn_blocking(move || {
        cli_cost::run(
            crate::rollgate(),
            &["apply", "-o", "json", "-f", rollout.to_str().unwrap()],
            &[
                ("KUBECONFIG", config.to_str().unwrap()),
                ("ROLLGATE_STATE", state.to_str().unwrap()),
                ("ROLLGATE_USER", "bench"),
            ],
            &dir,
        )
    })
    .await
    .unwrap();
    let exited = epoch_ms();
    let plane = plane.since();
    let (events, trace) = counter.stop(n);
    println!("pods N={n} run {run}: rollgate's {trace}");
    let w = writes_since(&w0, &writes(&r).await);
    println!("pods N={n} run {run}: rollgate's run: {plane}; {w}");
    let requests = requests(&r, "rollgate-scale").await - r0;
    assert_eq!(code, Some(0), "rollgate apply at N={n}");
    println!(
        "pods N={n} run {run}: rollgate's steps {}",
        steps(&stdout, spawned, exited)
    );
    finish(r).await;
    Some((cost, requests, events))
}

fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Each step's time (ms) from its start to its last pod ready (`instanceChanged`) and to its end,
/// from the `-o json` records, between the time from the process's start to the first step and
/// from the last step's end to the process's exit: where a rollout's time went.
fn steps(records: &str, spawned: u64, exited: u64) -> String {
    let mut out = Vec::new();
    let (mut first, mut done) = (None, None);
    let (mut start, mut ready) = (None, None);
    for r in records
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    {
        let at = r["atMs"].as_u64().unwrap_or(0);
        match r["event"].as_str() {
            Some("stepStarted") => {
                start = Some(at);
                first.get_or_insert(at);
            }
            Some("instanceChanged") => ready = Some(at),
            Some("stepDone") => {
                done = Some(at);
                let s = start.unwrap_or(at);
                out.push(match ready.take() {
                    Some(c) => format!("{}+{}", c - s, at - c),
                    None => format!("{}", at - s),
                });
            }
            _ => {}
        }
    }
    format!(
        "(start {} ms) {} (exit {} ms)",
        first.map_or(0, |f| f.saturating_sub(spawned)),
        out.join(", "),
        done.map_or(0, |d| exited.saturating_sub(d))
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs every N; `None` when there is no cluster here. The rows, and the medians per N for the
/// chart: (N, rollgate wall, kubectl wall, CPU ms per pod, requests per pod, events per pod).
pub async fn run(sizes: &[i32], runs: usize) -> Option<(Vec<crate::Row>, Vec<[f64; 6]>)> {
    // A namespace on the suite's own nodes, to reach the cluster with (and bring it up first).
    let probe = Bed::new("bench-pods-nodes", 1, "25%", "0").await?;
    let rollgate_config = identity("rollgate-scale");
    let kubectl_config = identity("kubectl-scale");
    nodes(&probe, true).await;
    let mut rows = Vec::new();
    let mut chart = Vec::new();
    let mut per_pod_at: Vec<(i32, f64, f64, f64)> = Vec::new();
    for &n in sizes {
        let mut all: Vec<Run> = Vec::new();
        for run in 0..runs {
            let load = cli_cost::load();
            let (k, r) = if run % 2 == 0 {
                let k = kubectl_run(n, run, &kubectl_config).await?;
                (k, rollgate_run(n, run, &rollgate_config).await?)
            } else {
                let r = rollgate_run(n, run, &rollgate_config).await?;
                (kubectl_run(n, run, &kubectl_config).await?, r)
            };
            let one = Run {
                kubectl: k.0,
                kubectl_requests: k.1,
                kubectl_events: k.2,
                rollgate: r.0,
                rollgate_requests: r.1,
                events: r.2,
            };
            println!(
                "pods N={n} run {run} (load {load}): rollgate {:.2} s, CPU {:.2} s, RSS {:.1} MiB, fds {}, {} requests, {} watch events; kubectl {:.2} s, {} requests, {} watch events; ratio {:.3}",
                one.rollgate.wall,
                one.rollgate.cpu,
                one.rollgate.rss_kib as f64 / 1024.0,
                one.rollgate.fds,
                one.rollgate_requests,
                one.events,
                one.kubectl,
                one.kubectl_requests,
                one.kubectl_events,
                one.rollgate.wall / one.kubectl
            );
            all.push(one);
        }
        let m = |f: fn(&Run) -> f64| median(all.iter().map(f).collect());
        let ratios: Vec<f64> = {
            let mut v: Vec<f64> = all.iter().map(|r| r.rollgate.wall / r.kubectl).collect();
            v.sort_by(f64::total_cmp);
            v
        };
        let ratio = ratios[ratios.len() / 2];
        let (rg, kc) = (m(|r| r.rollgate.wall), m(|r| r.kubectl));
        let cpu = m(|r| r.rollgate.cpu);
        let rss = m(|r| r.rollgate.rss_kib as f64) / 1024.0;
        let req = m(|r| r.rollgate_requests);
        let kreq = m(|r| r.kubectl_requests);
        let events = m(|r| r.events as f64);
        let nf = n as f64;
        rows.push(crate::row(
            format!("Kubernetes N={n}: `rollgate apply` vs `kubectl set image` + `rollout status` (25%/0, ready after 1 s; median of {runs} same-run ratios)"),
            format!("{rg:.2} s"),
            format!("{kc:.2} s (kubectl)"),
            format!("{ratio:.3} (runs {:.2}–{:.2})", ratios[0], ratios[ratios.len() - 1]),
            "≤ 1.05",
            Some(ratio <= 1.05),
        ));
        let (cpu_pod, req_pod, ev_pod) = (cpu * 1000.0 / nf, req / nf, events / nf);
        // Flat or falling from 200 to 1,000: the largest N against the one nearest 200.
        let (target, pass) = match per_pod_at.iter().find(|p| p.0 >= 200) {
            Some(&(m200, c, q, e)) if n > m200 => (
                format!("per pod ≤ 1.10 × at N={m200}"),
                Some(cpu_pod <= 1.10 * c && req_pod <= 1.10 * q && ev_pod <= 1.10 * e),
            ),
            _ => ("-".to_string(), None),
        };
        rows.push(crate::row(
            format!("Kubernetes N={n}: rollgate's cost (CPU, peak RSS, API requests, watch events; per pod)"),
            format!("CPU {cpu:.2} s ({cpu_pod:.2} ms/pod), RSS {rss:.1} MiB, {req:.0} requests ({req_pod:.2}/pod), {events:.0} events ({ev_pod:.1}/pod)"),
            format!("kubectl {kreq:.0} requests"),
            "-",
            target,
            pass,
        ));
        per_pod_at.push((n, cpu_pod, req_pod, ev_pod));
        chart.push([nf, rg, kc, cpu_pod, req_pod, ev_pod]);
    }
    nodes(&probe, false).await;
    finish(probe).await;
    Some((rows, chart))
}

/// The rows of `ROLLGATE_BENCH=pods`, on the test cluster (brought up if it is not, and taken down
/// again after), and the chart `pods.svg` beside the other charts.
pub fn rows(rows: &mut Vec<crate::Row>) {
    let sizes: Vec<i32> = std::env::var("ROLLGATE_BENCH_PODS")
        .unwrap_or_else(|_| "20,200,1000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let runs = std::env::var("ROLLGATE_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cluster/cluster.sh");
    let was_up = std::process::Command::new("bash")
        .arg(&script)
        .arg("status")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("kube-apiserver: running"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let result = runtime.block_on(run(&sizes, runs));
    drop(runtime);
    if !was_up {
        let _ = std::process::Command::new("bash")
            .arg(&script)
            .arg("down")
            .status();
    }
    match result {
        Some((found, chart)) => {
            rows.extend(found);
            let pods = |i: usize| chart.iter().map(|c| (c[0], c[i])).collect::<Vec<_>>();
            crate::chart::write(
                "pods.svg",
                "rollgate on Kubernetes: cost per pod as N grows (rolling 25%/0)",
                "pods (N)",
                &[
                    ("CPU ms per pod", pods(3)),
                    ("API requests per pod", pods(4)),
                    ("watch events per pod", pods(5)),
                ],
            );
        }
        None => rows.push(crate::row(
            "Kubernetes at 1,000 pods",
            "not measured: no test cluster here (see tests/cluster/README.md)",
            "-",
            "-",
            "-",
            None,
        )),
    }
}
