//! A traffic-weighted canary on hosts: Debian's nginx in front of the namespace fleet, its
//! upstream rewritten with `weight=` by the example hook `manifests/hosts/nginx-weights.sh`. At 10%
//! on one host of four (a quarter of the instances), the canary gets 10 ± 2% of 2,000 requests
//! through nginx; an abort under load puts all traffic back on the stable hosts before the canary
//! host changes, and no request fails (nginx retries nothing: `proxy_next_upstream off`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::fleet::{APP, Fleet, http_get, text};
use crate::netns::root_or_skip;

const N: usize = 4;
const REQUESTS: usize = 2000;

fn program(candidates: &[&str]) -> Option<String> {
    candidates
        .iter()
        .find(|p| Path::new(p).exists())
        .map(|p| p.to_string())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// nginx's prefix: its config (one worker, so one round-robin state), the upstream file the hook
/// rewrites (every host of version 1 to start with), running.
struct Nginx {
    binary: String,
    prefix: PathBuf,
    port: u16,
}

impl Nginx {
    fn start(binary: String, prefix: PathBuf, fleet: &Fleet) -> Nginx {
        std::fs::create_dir_all(prefix.join("tmp")).unwrap();
        let port = free_port();
        let p = prefix.display();
        std::fs::write(
            prefix.join("nginx.conf"),
            format!(
                "user root;\nworker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/error.log;\nevents {{ worker_connections 512; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {p}/tmp/body;\n  proxy_temp_path {p}/tmp/proxy;\n  fastcgi_temp_path {p}/tmp/fastcgi;\n  uwsgi_temp_path {p}/tmp/uwsgi;\n  scgi_temp_path {p}/tmp/scgi;\n  upstream app {{ include {p}/upstreams.conf; }}\n  server {{\n    listen 127.0.0.1:{port};\n    location / {{ proxy_pass http://app; proxy_next_upstream off; }}\n  }}\n}}\n"
            ),
        )
        .unwrap();
        let servers: String = fleet
            .hosts
            .iter()
            .map(|h| format!("server {} weight=2500;\n", h.service_addr()))
            .collect();
        std::fs::write(prefix.join("upstreams.conf"), servers).unwrap();
        let nginx = Nginx {
            binary,
            prefix,
            port,
        };
        let ok = Command::new(&nginx.binary)
            .args(nginx.args())
            .status()
            .unwrap();
        assert!(ok.success(), "nginx started");
        nginx
    }

    fn args(&self) -> Vec<String> {
        let p = self.prefix.display();
        vec![
            "-p".into(),
            p.to_string(),
            "-c".into(),
            format!("{p}/nginx.conf"),
        ]
    }

    fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new(&self.binary)
            .args(self.args())
            .args(["-s", "stop"])
            .status();
    }
}

/// The version a response through nginx came from, or why it failed.
fn version_of(addr: std::net::SocketAddr) -> Result<String, String> {
    match http_get(addr, "/", Duration::from_secs(5))? {
        (200, body) if body.contains("version 2.0.0") => Ok("2.0.0".into()),
        (200, body) if body.contains("version 1.0.0") => Ok("1.0.0".into()),
        (status, body) => Err(format!("{status}: {body}")),
    }
}

/// Requests through nginx, one after another, until stopped: how many answered, the failures, and
/// how many reached version 2 after `mark`.
struct Load {
    stop: Arc<AtomicBool>,
    mark: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    v2_after_mark: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<Vec<String>>,
}

impl Load {
    fn start(addr: std::net::SocketAddr) -> Load {
        let (stop, mark) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (ok, v2_after_mark) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let thread = {
            let (stop, mark, ok, v2) = (
                stop.clone(),
                mark.clone(),
                ok.clone(),
                v2_after_mark.clone(),
            );
            std::thread::spawn(move || {
                let mut errors = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    match version_of(addr) {
                        Ok(v) => {
                            ok.fetch_add(1, Ordering::SeqCst);
                            if mark.load(Ordering::SeqCst) && v == "2.0.0" {
                                v2.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        Err(e) => errors.push(e),
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                errors
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        Load {
            stop,
            mark,
            ok,
            v2_after_mark,
            thread,
        }
    }

    /// (answered, failures, answers from version 2 after the mark).
    fn stop(self) -> (u64, Vec<String>, u64) {
        std::thread::sleep(Duration::from_millis(300));
        self.stop.store(true, Ordering::SeqCst);
        let errors = self.thread.join().unwrap();
        (
            self.ok.load(Ordering::SeqCst),
            errors,
            self.v2_after_mark.load(Ordering::SeqCst),
        )
    }
}

#[test]
fn netns_nginx_weighted_canary_splits_10_percent_and_aborts_under_load_without_a_failure() {
    if !root_or_skip("netns_nginx_weighted_canary") {
        return;
    }
    let (Some(nginx), Some(_)) = (
        program(&["/usr/sbin/nginx", "/usr/bin/nginx"]),
        program(&["/usr/bin/jq", "/usr/local/bin/jq"]),
    ) else {
        eprintln!(
            "skipped: nginx or jq is not installed (tests/run.sh installs both from Debian's packages)"
        );
        return;
    };
    let fleet = Fleet::start(N);
    fleet.install("1.0.0");
    let lb = Nginx::start(nginx.clone(), fleet.dir.join("nginx"), &fleet);
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/hosts/nginx-weights.sh");
    let weights_log = fleet.dir.join("weights.log");
    let hook = format!(
        "echo \"$ROLLGATE_WEIGHTS\" >> {log}; exec {example} {upstreams}",
        log = weights_log.display(),
        example = example.display(),
        upstreams = lb.prefix.join("upstreams.conf").display(),
    );
    let v2 = fleet.artifact("2.0.0", "");
    let manifest = fleet.manifest(
        "2.0.0",
        &v2,
        "    canary:\n      maxUnavailable: 1\n      trafficRouting: {trafficSwitch: true}\n      steps:\n        - setWeight: 10\n        - pause: {}\n",
        20,
    );
    let with_hook = std::fs::read_to_string(&manifest).unwrap().replace(
        "      hosts:\n",
        &format!("      trafficSwitch: {{command: [sh, -c, {hook:?}]}}\n      hosts:\n"),
    );
    std::fs::write(&manifest, with_hook).unwrap();
    let rollgate = |args: &[&str]| {
        fleet
            .rollgate(args)
            .env("NGINX", &nginx)
            .env("NGINX_ARGS", lb.args().join(" "))
            .output()
            .unwrap()
    };

    // To 10% under load: the canary host leaves the upstream before it is replaced in place.
    let load = Load::start(lb.addr());
    let out = rollgate(&["apply", "-f", manifest.to_str().unwrap(), "-o", "plain"]);
    let (answered, errors, _) = load.stop();
    assert_eq!(out.status.code(), Some(3), "paused at 10%: {}", text(&out));
    eprintln!(
        "traffic_weights: to 10% under load: {answered} requests, {} failed",
        errors.len()
    );
    assert!(
        errors.is_empty(),
        "failed requests on the way to 10%: {errors:?}"
    );
    assert!(answered > 50, "the load ran");
    let told = std::fs::read_to_string(&weights_log).unwrap();
    assert_eq!(
        told.lines().collect::<Vec<_>>(),
        ["1.0.0=100,2.0.0=0", "1.0.0=90,2.0.0=10"],
        "the canary host drained, replaced, then given 10%"
    );
    let upstreams = std::fs::read_to_string(lb.prefix.join("upstreams.conf")).unwrap();
    assert_eq!(
        upstreams.matches("weight=3000;").count(),
        3,
        "three stable hosts share 90%: {upstreams}"
    );
    assert_eq!(
        upstreams.matches("weight=1000;").count(),
        1,
        "one canary host has 10%: {upstreams}"
    );
    let status = text(&rollgate(&["status", APP]));
    assert!(
        status.contains("traffic: stable 90% canary 10%"),
        "{status}"
    );

    // 2,000 requests through nginx: the canary's share is its weight, not its quarter of hosts.
    let mut canary = 0;
    for _ in 0..REQUESTS {
        match version_of(lb.addr()) {
            Ok(v) if v == "2.0.0" => canary += 1,
            Ok(_) => {}
            Err(e) => panic!("a request through nginx failed: {e}"),
        }
    }
    let share = canary as f64 * 100.0 / REQUESTS as f64;
    eprintln!(
        "traffic_weights: canary served {canary} of {REQUESTS} requests ({share:.1}%) at setWeight 10 on 1 of {N} hosts"
    );
    assert!(
        (8.0..=12.0).contains(&share),
        "canary share {share:.1}% at 10% weight"
    );

    // An abort under load: all traffic to the stable hosts first, then the canary host goes back.
    let load = Load::start(lb.addr());
    let started = Instant::now();
    let out = rollgate(&["abort", APP]);
    let took = started.elapsed();
    load.mark.store(true, Ordering::SeqCst);
    assert!(
        out.status.code().is_some_and(|c| c != 2),
        "abort: {}",
        text(&out)
    );
    std::thread::sleep(Duration::from_millis(1200));
    let (answered, errors, late) = load.stop();
    let told = std::fs::read_to_string(&weights_log).unwrap();
    eprintln!(
        "traffic_weights: abort in {:.1}s under load: {answered} requests, {} failed; hook told:\n{told}",
        took.as_secs_f64(),
        errors.len()
    );
    assert!(errors.is_empty(), "failed requests: {errors:?}");
    assert!(answered > 100, "the load ran");
    assert_eq!(late, 0, "no request reached version 2 after the abort");
    let lines: Vec<&str> = told.lines().collect();
    assert_eq!(
        lines,
        [
            "1.0.0=100,2.0.0=0",
            "1.0.0=90,2.0.0=10",
            "1.0.0=100,2.0.0=0",
            "1.0.0=100"
        ],
        "the weight back to stable before the canary host changed, then every host"
    );
    fleet.assert_serving("1.0.0");
    let upstreams = std::fs::read_to_string(lb.prefix.join("upstreams.conf")).unwrap();
    assert_eq!(
        upstreams.matches("weight=2500;").count(),
        N,
        "every host back in the upstream: {upstreams}"
    );
}
