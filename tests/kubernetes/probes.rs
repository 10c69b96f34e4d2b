//! `runOn: host` http checks on pods, through the API server's pod proxy, against a real nginx:
//! a check that passes lets the rollout complete, and nginx saw each new pod probed at its own IP;
//! a check that fails (a 500, a port nothing listens on) rolls the rollout back.
//!
//! kwok's pods are fakes with IPs from kwok's `--cidr` (tests/cluster/cluster.sh). For the API
//! server's proxy to reach a real server there, the test routes that range to the loopback
//! interface (`ip route replace local CIDR dev lo`, idempotent; other tests run beside this one,
//! so `cluster.sh down` takes it away) and starts nginx on 0.0.0.0. So every pod IP answers, and which pod was
//! probed shows in nginx's log as the address the request came to. Needs root and nginx; skips,
//! saying so, without them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::ContainerPort;
use kube::ResourceExt;

use crate::kube_bed::{self, Bed, image};

const N: i32 = 4;

pub(super) fn nginx() -> Option<&'static str> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

/// kwok's pod CIDR, as cluster.sh starts it.
fn pod_cidr() -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cluster/cluster.sh");
    let text = std::fs::read_to_string(&script).expect("reading cluster.sh");
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("--cidr="))
        .expect("cluster.sh gives kwok a --cidr")
        .to_string()
}

/// Whether this test can run here; prints why not.
fn can_run() -> Option<&'static str> {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!(
            "skipped: routing kwok's pod IPs to a local nginx needs root (ip route); run as root"
        );
        return None;
    }
    let Some(nginx) = nginx() else {
        eprintln!(
            "skipped: nginx is not installed (tests/run.sh installs it from Debian's packages)"
        );
        return None;
    };
    Some(nginx)
}

/// Routes kwok's pod CIDR to the loopback interface, so that every pod IP is this machine's.
/// Also used by `rbac`: without it the API server's proxy dials out of the machine.
pub(crate) fn route_pod_ips_here() {
    let cidr = pod_cidr();
    let out = std::process::Command::new("ip")
        .args(["route", "replace", "local", &cidr, "dev", "lo"])
        .output()
        .expect("running ip");
    assert!(
        out.status.success(),
        "ip route replace local {cidr} dev lo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A real nginx on 0.0.0.0:`port`: `/health` answers 200 "ok", `/broken` 500, `/metric` the JSON
/// `{"n": 1}` (for a `web` metric check). Its log line per request: the address the request came
/// to (the pod's IP), the URI and the status.
pub(super) struct Nginx {
    child: tokio::process::Child,
    log: PathBuf,
    pub(super) port: u16,
}

impl Nginx {
    pub(super) async fn start(nginx: &str, dir: &Path) -> Nginx {
        let port = std::net::TcpListener::bind("0.0.0.0:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let p = dir.join("nginx");
        std::fs::create_dir_all(p.join("tmp")).expect("nginx's dir");
        let log = p.join("access.log");
        let d = p.display();
        let conf = format!(
            "user root;\ndaemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections 64; }}\nhttp {{\n  log_format probes '$server_addr $request_uri $status';\n  access_log {log} probes;\n  client_body_temp_path {d}/tmp/body;\n  proxy_temp_path {d}/tmp/proxy;\n  fastcgi_temp_path {d}/tmp/fastcgi;\n  uwsgi_temp_path {d}/tmp/uwsgi;\n  scgi_temp_path {d}/tmp/scgi;\n  server {{\n    listen 0.0.0.0:{port};\n    location = /health {{ return 200 \"ok\\n\"; }}\n    location = /broken {{ return 500 \"broken\\n\"; }}\n    location = /metric {{ default_type application/json; return 200 '{{\"n\": 1}}'; }}\n  }}\n}}\n",
            log = log.display()
        );
        std::fs::write(p.join("nginx.conf"), conf).expect("nginx.conf");
        let child = tokio::process::Command::new(nginx)
            .arg("-p")
            .arg(&p)
            .arg("-c")
            .arg(p.join("nginx.conf"))
            .kill_on_drop(true)
            .spawn()
            .expect("starting nginx");
        let up = async {
            while tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), up)
            .await
            .expect("nginx listening within 10s");
        Nginx { child, log, port }
    }

    /// (address the request came to, URI, status) of every request so far.
    pub(super) fn requests(&self) -> Vec<(String, String, u16)> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                Some((
                    w.next()?.to_string(),
                    w.next()?.to_string(),
                    w.next()?.parse().ok()?,
                ))
            })
            .collect()
    }

    pub(super) async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// `web` with its container declaring `port`, so that `{port}` names it.
async fn bed(purpose: &str, port: u16) -> Option<Bed> {
    let mut web = kube_bed::deployment(N, "25%", "0");
    let spec = web.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
    spec.containers[0].ports = Some(vec![ContainerPort {
        container_port: i32::from(port),
        ..ContainerPort::default()
    }]);
    Bed::with(purpose, web).await
}

/// The rollout's check: `url` on each new pod, with `runOn` left to its default (`host`).
fn check(url: &str) -> String {
    format!(
        "  checks:\n    - name: smoke\n      http: {{url: \"{url}\", bodyContains: ok}}\n      interval: 200ms\n      count: 2\n      successThreshold: 2\n      timeout: 2s\n  rollback: {{auto: true}}\n  progressDeadlineSeconds: 60\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_whose_pods_answer_the_check_completes_and_each_new_pod_was_probed() {
    let Some(nginx) = can_run() else { return };
    route_pod_ips_here();
    let dir = tempfile::tempdir().expect("a temp dir");
    let server = Nginx::start(nginx, dir.path()).await;
    let Some(bed) = bed("probes-pass", server.port).await else {
        return;
    };
    let rollout = bed.rollout(
        "web.yaml",
        "2",
        &format!("image: \"{}\"", image("2")),
        &format!(
            "  strategy:\n    canary: {{maxSurge: 1, maxUnavailable: 0, steps: [{{setWeight: 50}}, {{setWeight: 100}}]}}\n{}",
            check("http://{host}:{port}/health")
        ),
    );
    let out = bed
        .rollgate(&["apply", "-f", rollout.to_str().unwrap()])
        .await;
    assert!(
        out.status.success(),
        "the check passed on every new pod: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    bed.wait_deployment("version 2 rolled out", |d| {
        kube_bed::rolled_out(d, N, &image("2"))
    })
    .await;
    kube_bed::assert_at_rest(&bed).await;

    // Each pod of version 2 was probed at its own IP, through the API server, and answered 200.
    let requests = server.requests();
    let pods = bed
        .pods
        .list(&Default::default())
        .await
        .expect("listing pods");
    let new: Vec<_> = pods
        .items
        .iter()
        .filter(|p| kube_bed::pod_image(p) == Some(image("2").as_str()))
        .collect();
    assert_eq!(new.len(), N as usize, "N pods of version 2");
    for pod in new {
        let ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .expect("a pod IP");
        let probes = requests
            .iter()
            .filter(|(to, uri, status)| *to == ip && uri == "/health" && *status == 200)
            .count();
        assert!(
            probes >= 2,
            "pod {} ({ip}) answered {probes} probes, expected at least count (2): {requests:?}",
            pod.name_any()
        );
    }
    server.stop().await;
    bed.finish().await;
}

/// Runs `rollout` and checks it rolled back to version 1, naming `reason`.
async fn rolls_back(bed: &Bed, rollout: &Path, reason: &str) {
    let out = bed
        .rollgate(&["apply", "-f", rollout.to_str().unwrap()])
        .await;
    let text = kube_bed::stdout(&out);
    assert_eq!(out.status.code(), Some(1), "exit code 1 for a rollback");
    assert!(text.contains("rolled back"), "stdout: {text}");
    assert!(text.contains(reason), "the reason names {reason:?}: {text}");
    bed.wait_deployment("version 1 back at N", |d| {
        kube_bed::rolled_out(d, N, &image("1"))
    })
    .await;
    kube_bed::assert_at_rest(bed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_whose_pods_fail_the_check_rolls_back() {
    let Some(nginx) = can_run() else { return };
    route_pod_ips_here();
    let dir = tempfile::tempdir().expect("a temp dir");
    let server = Nginx::start(nginx, dir.path()).await;
    let Some(bed) = bed("probes-fail", server.port).await else {
        return;
    };
    let port = server.port;

    // Rolling, the new pods answer 500.
    let rollout = bed.rollout(
        "web.yaml",
        "2",
        &format!("image: \"{}\"", image("2")),
        &format!(
            "  strategy:\n    rolling: {{maxSurge: 1, maxUnavailable: 0}}\n{}",
            check(&format!("http://127.0.0.1:{port}/broken"))
        ),
    );
    rolls_back(&bed, &rollout, "status 500, expected 200").await;
    assert!(
        server
            .requests()
            .iter()
            .any(|(_, uri, status)| uri == "/broken" && *status == 500),
        "nginx answered the probe: {:?}",
        server.requests()
    );

    // Canary, nothing listens on the port: the API server's own 503 fails the probe.
    let closed = std::net::TcpListener::bind("0.0.0.0:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let rollout = bed.rollout(
        "web.yaml",
        "3",
        &format!("image: \"{}\"", image("3")),
        &format!(
            "  strategy:\n    canary: {{maxSurge: 1, maxUnavailable: 0, steps: [{{setWeight: 25}}, {{setWeight: 100}}]}}\n{}",
            check(&format!("http://localhost:{closed}/health"))
        ),
    );
    rolls_back(&bed, &rollout, "error trying to reach service").await;
    server.stop().await;
    bed.finish().await;
}
