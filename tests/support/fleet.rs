//! A fleet of hosts on the namespace LAN: a real `rollgate-agent` in each namespace (mTLS, on the
//! namespace's address) supervising the real demo service, versioned artifacts, manifests, the real
//! `rollgate` CLI with a state dir of its own, and an independent availability probe.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rollgate::agent::api::ServiceStatus;
use rollgate::agent::client::{AgentClient, ClientAuth};

use super::netns::{Lan, NetHost};
pub use crate::availability::{Probe, http_get};
pub use crate::running::{Running, status_versions};

pub const ROLLGATE: &str = env!("CARGO_BIN_EXE_rollgate");
pub const AGENT: &str = env!("CARGO_BIN_EXE_rollgate-agent");
pub const DEMO: &str = env!("CARGO_BIN_EXE_rollgate-demo");

/// Every agent listens on this port of its host's address.
pub const AGENT_PORT: u16 = 7443;
/// Every host serves the demo service on this port (slot 0); slot 1, when asked for, on the next.
pub const SERVICE_PORT: u16 = 8080;
/// The app (and agent service) name.
pub const APP: &str = "web";
/// Zones, round robin over the hosts: host1 a, host2 b, host3 c, host4 a, ...
pub const ZONES: [&str; 3] = ["a", "b", "c"];

/// The agents' readiness check: `/` (which every demo version serves), so a version whose
/// `/health` fails is the manifest's gate's to catch.
pub const DEFAULT_AGENT_HEALTH: &str = "{type: http, url: \"http://127.0.0.1:{port}/\", timeout: 1s, interval: 100ms, startTimeout: 5s}";

/// One host of the fleet.
pub struct FleetHost {
    /// Its name in manifests: `host1`, `host2`, ...
    pub name: String,
    pub net: NetHost,
    pub zone: String,
    /// Its files: agent config, log, data dir.
    pub dir: PathBuf,
    agent: Option<Child>,
}

impl FleetHost {
    pub fn agent_addr(&self) -> SocketAddr {
        SocketAddr::from((self.net.ip, AGENT_PORT))
    }
    /// Slot 0's service address.
    pub fn service_addr(&self) -> SocketAddr {
        self.slot_addr(0)
    }
    /// The service address of `slot` (see [`Fleet::start_with_slots`]).
    pub fn slot_addr(&self, slot: u16) -> SocketAddr {
        SocketAddr::from((self.net.ip, SERVICE_PORT + slot))
    }
    pub fn agent_log(&self) -> PathBuf {
        self.dir.join("agent.log")
    }
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Child::id)
    }
}

/// The test bed: a LAN of namespaces, one agent per host, a PKI, artifacts and a state dir.
pub struct Fleet {
    pub hosts: Vec<FleetHost>,
    /// Working dir of the test; manifests and artifacts go here.
    pub dir: PathBuf,
    pub pki: PathBuf,
    /// `ROLLGATE_STATE` for every `rollgate` this fleet runs.
    pub state: PathBuf,
    /// Slots per host (service ports 8080, 8081, ...).
    pub slots: u16,
    /// The services every agent runs: [`APP`], then the extra apps of [`Fleet::start_apps`], each
    /// on ports of its own (app `k`'s slot `s` on `8080 + 10 k + s`).
    pub apps: Vec<String>,
    /// The `health:` block of every agent's services (YAML flow mapping).
    pub agent_health: String,
    demo: PathBuf,
    // Dropped in this order: the LAN (every process in it) before the files.
    pub lan: Lan,
    _tmp: tempfile::TempDir,
}

/// The demo binary, stripped of debug info when `strip` is available (a much smaller artifact to
/// stream and unpack); the unstripped one otherwise.
fn demo_binary(dir: &Path) -> PathBuf {
    let copy = dir.join("rollgate-demo");
    std::fs::copy(DEMO, &copy).expect("copy rollgate-demo");
    let stripped = Command::new("strip")
        .arg(&copy)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        std::fs::copy(DEMO, &copy).expect("copy rollgate-demo");
    }
    copy
}

impl Fleet {
    /// `n` hosts, each with its agent up and answering; no version installed yet.
    pub fn start(n: usize) -> Fleet {
        Self::start_with_slots(n, 1)
    }

    /// Like [`start`](Self::start), with `slots` service slots per host (2 for `slotsPerHost: 2`
    /// and blue-green on two slots), on ports 8080, 8081, ...
    pub fn start_with_slots(n: usize, slots: u16) -> Fleet {
        Self::start_apps(n, slots, &[])
    }

    /// Like [`start_with_slots`](Self::start_with_slots), every agent also running the services
    /// `extra` (each its own app, on its own ports).
    pub fn start_apps(n: usize, slots: u16, extra: &[&str]) -> Fleet {
        Self::start_full(n, slots, extra, DEFAULT_AGENT_HEALTH)
    }

    /// Like [`start`](Self::start), the agents' services with `health` as their `health:` block
    /// (a YAML flow mapping) instead of [`DEFAULT_AGENT_HEALTH`].
    pub fn start_with_agent_health(n: usize, health: &str) -> Fleet {
        Self::start_full(n, 1, &[], health)
    }

    fn start_full(n: usize, slots: u16, extra: &[&str], health: &str) -> Fleet {
        assert!((1..=8).contains(&slots), "1 to 8 slots");
        let lan = Lan::new(n);
        let tmp = tempfile::Builder::new()
            .prefix("rgt-fleet-")
            .tempdir()
            .unwrap();
        let dir = tmp.path().to_path_buf();
        let pki = dir.join("pki");
        rollgate::pki::init(&pki).unwrap();
        rollgate::pki::issue_client(&pki, "tests").unwrap();
        let demo = demo_binary(&dir);
        let mut hosts = Vec::new();
        for (i, net) in lan.hosts.iter().enumerate() {
            rollgate::pki::issue_agent(&pki, &net.ip.to_string()).unwrap();
            let host_dir = dir.join(format!("host{}", i + 1));
            std::fs::create_dir_all(&host_dir).unwrap();
            hosts.push(FleetHost {
                name: format!("host{}", i + 1),
                net: net.clone(),
                zone: ZONES[i % ZONES.len()].into(),
                dir: host_dir,
                agent: None,
            });
        }
        let mut fleet = Fleet {
            hosts,
            state: dir.join("state"),
            slots,
            apps: std::iter::once(APP)
                .chain(extra.iter().copied())
                .map(String::from)
                .collect(),
            agent_health: health.to_string(),
            pki,
            dir,
            demo,
            lan,
            _tmp: tmp,
        };
        for i in 0..n {
            fleet.write_agent_config(i);
            fleet.start_agent(i);
        }
        for i in 0..n {
            fleet.wait_agent(i, Duration::from_secs(20));
        }
        fleet
    }

    fn write_agent_config(&self, i: usize) {
        let h = &self.hosts[i];
        let mut config = format!(
            "listen: \"{addr}\"\ndataDir: \"{data}\"\ntls:\n  cert: \"{pki}/agent-{ip}.pem\"\n  key: \"{pki}/agent-{ip}-key.pem\"\n  clientCa: \"{pki}/ca.pem\"\nshutdownGrace: 5s\nservices:\n",
            addr = h.agent_addr(),
            data = h.dir.join("data").display(),
            pki = self.pki.display(),
            ip = h.net.ip,
        );
        for (k, app) in self.apps.iter().enumerate() {
            config.push_str(&format!(
                "  - name: {app}\n    command: bin/web\n    args: [\"--listen\", \"0.0.0.0:{{port}}\"]\n    ports: [{ports}]\n    stopTimeout: 3s\n    health: {health}\n",
                health = self.agent_health,
                ports = (0..self.slots)
                    .map(|s| (SERVICE_PORT + 10 * k as u16 + s).to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            ));
        }
        std::fs::write(h.dir.join("agent.yaml"), config).unwrap();
    }

    /// Starts host `i`'s agent inside its namespace (again, after [`kill_agent`](Self::kill_agent)).
    pub fn start_agent(&mut self, i: usize) {
        let h = &mut self.hosts[i];
        assert!(h.agent.is_none(), "{}: agent already running", h.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(h.agent_log())
            .unwrap();
        let child = h
            .net
            .command(AGENT)
            .arg("run")
            .arg("--config")
            .arg(h.dir.join("agent.yaml"))
            .env("ROLLGATE_AGENT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start rollgate-agent in its namespace");
        h.agent = Some(child);
    }

    /// Waits until host `i`'s agent answers over mTLS.
    pub fn wait_agent(&self, i: usize, within: Duration) {
        let h = &self.hosts[i];
        let client = self.client(i);
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < within {
            match block_on(client.host_info()) {
                Ok(_) => return,
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "{}: agent did not answer at {} within {within:?}: {last}\n{}",
            h.name,
            h.agent_addr(),
            tail(&h.agent_log(), 30)
        );
    }

    /// `kill -9` host `i`'s agent: no chance to clean up. Its service keeps running.
    pub fn kill_agent(&mut self, i: usize) {
        let mut child = self.hosts[i].agent.take().expect("agent running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// An mTLS client of host `i`'s agent.
    pub fn client(&self, i: usize) -> AgentClient {
        let auth = ClientAuth::mtls_files(
            &self.pki.join("ca.pem"),
            &self.pki.join("client-tests.pem"),
            &self.pki.join("client-tests-key.pem"),
        )
        .unwrap();
        AgentClient::new(&format!("https://{}", self.hosts[i].agent_addr()), &auth).unwrap()
    }

    /// The agent's view of host `i`'s service.
    pub fn agent_status(&self, i: usize) -> ServiceStatus {
        self.app_status(APP, i)
    }

    /// The agent's view of host `i`'s service `app`.
    pub fn app_status(&self, app: &str, i: usize) -> ServiceStatus {
        block_on(self.client(i).service(app))
            .unwrap_or_else(|e| panic!("{}: agent status of {app}: {e}", self.hosts[i].name))
    }

    /// The version each host's agent has active on slot 0 of `app`.
    pub fn app_versions(&self, app: &str) -> Vec<Option<String>> {
        (0..self.hosts.len())
            .map(|i| {
                self.app_status(app, i)
                    .slots
                    .first()
                    .and_then(|s| s.active.clone())
            })
            .collect()
    }

    /// The version each host's agent has active on slot 0.
    pub fn agent_versions(&self) -> Vec<Option<String>> {
        (0..self.hosts.len())
            .map(|i| {
                self.agent_status(i)
                    .slots
                    .first()
                    .and_then(|s| s.active.clone())
            })
            .collect()
    }

    /// What each host's service answers on `GET /version` from the root namespace, or the error.
    pub fn served_versions(&self) -> Vec<Result<String, String>> {
        self.hosts
            .iter()
            .map(|h| http_get(h.service_addr(), "/version", Duration::from_secs(2)).map(|r| r.1))
            .collect()
    }

    /// Packages the demo service as `web-VERSION.tar.gz`: `bin/web` runs the demo binary with
    /// `--version VERSION FLAGS` (e.g. `--health-status 500` for a version whose /health fails).
    pub fn artifact(&self, version: &str, flags: &str) -> PathBuf {
        self.artifact_with(version, flags, &[])
    }

    /// [`artifact`](Self::artifact) with extra files (name, contents) in the archive.
    pub fn artifact_with(&self, version: &str, flags: &str, extra: &[(&str, &[u8])]) -> PathBuf {
        let path = self.dir.join(format!("web-{version}.tar.gz"));
        let file = std::fs::File::create(&path).unwrap();
        let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        let script = format!(
            "#!/bin/sh\nexec \"$(dirname \"$0\")/rollgate-demo\" --version {version} {flags} \"$@\"\n"
        );
        let bytes = std::fs::read(&self.demo).unwrap();
        let files = [
            ("bin/web", script.as_bytes()),
            ("bin/rollgate-demo", bytes.as_slice()),
        ];
        for &(name, data) in files.iter().chain(extra) {
            // A plain regular entry: the agent refuses sparse files, which `append_path` may write.
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(data.len() as u64);
            header.set_mode(0o755);
            header.set_cksum();
            tar.append_data(&mut header, name, data).unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap();
        path
    }

    /// The `hosts:` list of the manifest.
    pub fn hosts_yaml(&self) -> String {
        self.hosts
            .iter()
            .map(|h| {
                format!(
                    "        - {{name: {}, address: \"{}\", labels: {{zone: {}}}{}}}\n",
                    h.name,
                    h.agent_addr(),
                    h.zone,
                    if h.name == "host1" {
                        ", groups: [internal]"
                    } else {
                        ""
                    }
                )
            })
            .collect()
    }

    /// Writes `web-VERSION.yaml`: the fleet, `artifact`, `strategy` (YAML under `strategy:`,
    /// indented four spaces), the health gate (`/health` through each agent), automatic rollback
    /// and `progressDeadlineSeconds: deadline`.
    pub fn manifest(
        &self,
        version: &str,
        artifact: &Path,
        strategy: &str,
        deadline: u64,
    ) -> PathBuf {
        self.manifest_for(APP, version, artifact, strategy, deadline)
    }

    /// [`manifest`](Self::manifest) of app (and agent service) `app`: `APP-VERSION.yaml`.
    pub fn manifest_for(
        &self,
        app: &str,
        version: &str,
        artifact: &Path,
        strategy: &str,
        deadline: u64,
    ) -> PathBuf {
        let text = format!(
            "apiVersion: rollgate.dev/v1\nkind: Rollout\nmetadata:\n  name: {app}\nspec:\n  version: \"{version}\"\n  target:\n    hosts:\n      service: {app}\n      spreadBy: zone\n      artifact: {{file: \"{artifact}\"}}\n      auth: {{ca: \"{pki}/ca.pem\", cert: \"{pki}/client-tests.pem\", key: \"{pki}/client-tests-key.pem\"}}\n      hosts:\n{hosts}  strategy:\n{strategy}  checks:\n    - name: health\n      http: {{url: \"http://127.0.0.1:{{port}}/health\"}}\n      interval: 100ms\n      count: 2\n      successThreshold: 2\n      failureLimit: 0\n      timeout: 1s\n  rollback: {{auto: true}}\n  progressDeadlineSeconds: {deadline}\n",
            artifact = artifact.display(),
            pki = self.pki.display(),
            hosts = self.hosts_yaml(),
        );
        let path = self.dir.join(format!("{app}-{version}.yaml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `rollgate ARGS` with this fleet's state dir, not yet started.
    pub fn rollgate(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(ROLLGATE);
        cmd.args(args)
            .env("ROLLGATE_STATE", &self.state)
            .env_remove("ROLLGATE_LOG")
            .current_dir(&self.dir)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `rollgate ARGS` to the end.
    pub fn run(&self, args: &[&str]) -> Output {
        self.rollgate(args).output().expect("run rollgate")
    }

    /// Installs `version` everywhere at once (the starting point of a test) and checks it serves.
    pub fn install(&self, version: &str) -> PathBuf {
        let artifact = self.artifact(version, "");
        let manifest = self.manifest(
            version,
            &artifact,
            "    rolling: {maxSurge: 0, maxUnavailable: \"100%\"}\n",
            10,
        );
        let out = self.run(&["apply", "-f", manifest.to_str().unwrap(), "-o", "plain"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "install {version}: {}",
            text(&out)
        );
        self.assert_serving(version);
        artifact
    }

    /// Every host's agent has `version` active and its service answers `/version` with it.
    pub fn assert_serving(&self, version: &str) {
        let want: Vec<Option<String>> = vec![Some(version.to_string()); self.hosts.len()];
        assert_eq!(self.agent_versions(), want, "agents' active versions");
        let want: Vec<Result<String, String>> = vec![Ok(version.to_string()); self.hosts.len()];
        assert_eq!(self.served_versions(), want, "GET /version on each host");
    }

    /// [`assert_serving`](Self::assert_serving) over links that lose packets: a GET whose packets
    /// are lost past its 2 s timeout is tried again, for `within` in all; what is compared at the
    /// end is the last answer of each host (a host that serves another version never passes).
    pub fn assert_serving_through_loss(&self, version: &str, within: Duration) {
        let end = Instant::now() + within;
        let want: Vec<Result<String, String>> = vec![Ok(version.to_string()); self.hosts.len()];
        let mut served = self.served_versions();
        while served != want && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(100));
            for (i, answer) in served.iter_mut().enumerate() {
                if answer.is_err() {
                    *answer = http_get(
                        self.hosts[i].service_addr(),
                        "/version",
                        Duration::from_secs(2),
                    )
                    .map(|r| r.1);
                }
            }
        }
        assert_eq!(served, want, "GET /version on each host (links impaired)");
        let want: Vec<Option<String>> = vec![Some(version.to_string()); self.hosts.len()];
        assert_eq!(self.agent_versions(), want, "agents' active versions");
    }

    /// Waits (bounded) until every host serves `version`, e.g. after an agent restarted its service.
    pub fn wait_serving(&self, version: &str, within: Duration) {
        let end = Instant::now() + within;
        let want: Vec<Result<String, String>> = vec![Ok(version.to_string()); self.hosts.len()];
        while self.served_versions() != want && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(100));
        }
        self.assert_serving(version);
    }

    /// The service address of every host, for a [`Probe`].
    pub fn service_addrs(&self) -> Vec<SocketAddr> {
        self.hosts.iter().map(FleetHost::service_addr).collect()
    }

    /// Index of the host named `name`.
    pub fn index(&self, name: &str) -> usize {
        self.hosts
            .iter()
            .position(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    /// The last lines of every agent's log, for failure messages.
    pub fn logs(&self) -> String {
        self.hosts
            .iter()
            .map(|h| format!("--- {} agent log\n{}", h.name, tail(&h.agent_log(), 15)))
            .collect()
    }

    /// The last rollout of the app, as `rollgate history APP -o json` shows it.
    pub fn last_rollout(&self) -> serde_json::Value {
        let out = self.run(&["history", APP, "-o", "json"]);
        assert_eq!(out.status.code(), Some(0), "history: {}", text(&out));
        let history: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("history is JSON ({e}): {}", text(&out)));
        history
            .as_array()
            .and_then(|a| a.last().cloned())
            .unwrap_or_else(|| panic!("no rollouts: {}", text(&out)))
    }

    /// The app's lock file, if any.
    pub fn lock_file(&self) -> PathBuf {
        self.state.join(APP).join("lock")
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "test bed in {} (removed now)\n{}",
                self.dir.display(),
                self.logs()
            );
        }
        for h in &mut self.hosts {
            if let Some(mut child) = h.agent.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // `lan` drops next: every service process left in the namespaces is killed with it.
    }
}

/// Stdout and stderr of a finished command, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn tail(path: &Path, lines: usize) -> String {
    let t = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = t.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n") + "\n"
}

/// Runs a future to completion on a small runtime of its own.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}
