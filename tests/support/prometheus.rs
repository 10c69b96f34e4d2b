//! A real Prometheus (Debian's package) for tests: started on a free loopback port, scraping the
//! given targets every second, stopped on drop.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub fn prometheus_bin() -> Option<PathBuf> {
    ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// A plain HTTP/1.0 GET on loopback: true on a 200.
fn http_ok(port: u16, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.ends_with(b"200")
}

pub struct Prometheus {
    child: Child,
    pub address: String,
}

impl Prometheus {
    pub fn start(bin: &Path, dir: &Path, targets: &[String]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!("global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n  - job_name: demo\n    static_configs:\n      - targets: [{}]\n", list.join(", ")),
        )
        .unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .unwrap();
        // Owned at once, so a failed start still stops the process (Drop).
        let mut prometheus = Prometheus {
            child,
            address: format!("http://127.0.0.1:{port}"),
        };
        // Up to 60 s: on two cores beside the test cluster and another test, its start (the
        // TSDB's first block and WAL) once took more than the 10 s this waited before.
        let log = || std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
        let tail = |log: String| -> String {
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            if http_ok(port, "/-/ready") {
                return prometheus;
            }
            if let Ok(Some(status)) = prometheus.child.try_wait() {
                panic!(
                    "prometheus exited ({status}) before it was ready; its log:\n{}",
                    tail(log())
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // The temporary directory goes with the test: the log is printed, not pointed at.
        panic!(
            "prometheus was not ready within 60 s; its log:\n{}",
            tail(log())
        );
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Traffic to every target (a GET of `/` each, every 10 ms) until stopped, so counters move.
pub struct Load {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    pub fn start(targets: &[String]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, targets) = (stop.clone(), targets.to_vec());
        let task = tokio::spawn(async move {
            let http = reqwest::Client::new();
            while !flag.load(Ordering::SeqCst) {
                for t in &targets {
                    let _ = http
                        .get(format!("http://{t}/"))
                        .timeout(Duration::from_secs(1))
                        .send()
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        Load { stop, task }
    }

    pub async fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("the load task");
    }
}
