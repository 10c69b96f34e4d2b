//! Helpers for the agent tests: a PKI, the real agent binary on a free loopback port, artifacts.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rollgate::agent::api::{
    ActivateRequest, ArtifactKind, Operation, OperationState, ServiceStatus, UploadParams,
};
use rollgate::agent::client::{AgentClient, ClientAuth};
use sha2::Digest;

pub const AGENT: &str = env!("CARGO_BIN_EXE_rollgate-agent");
pub const DEMO: &str = env!("CARGO_BIN_EXE_rollgate-demo");

/// A CA with an agent certificate for 127.0.0.1 and a client certificate.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        rollgate::pki::init(dir).unwrap();
        rollgate::pki::issue_agent(dir, "127.0.0.1").unwrap();
        rollgate::pki::issue_client(dir, "tests").unwrap();
        Pki {
            dir: dir.to_path_buf(),
        }
    }
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn client_auth(&self) -> ClientAuth {
        ClientAuth::mtls_files(
            &self.ca(),
            &self.dir.join("client-tests.pem"),
            &self.dir.join("client-tests-key.pem"),
        )
        .unwrap()
    }
    /// The `tls:` block of an agent config pinning this CA for client certificates.
    pub fn tls_yaml(&self, client_ca: bool) -> String {
        let mut s = format!(
            "tls:\n  cert: {}\n  key: {}\n",
            self.dir.join("agent-127.0.0.1.pem").display(),
            self.dir.join("agent-127.0.0.1-key.pem").display()
        );
        if client_ca {
            s.push_str(&format!("  clientCa: {}\n", self.ca().display()));
        }
        s
    }
}

/// Free loopback ports (bound then released; good enough on a test machine).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// A running `rollgate-agent run` process.
pub struct AgentProc {
    pub child: Option<Child>,
    pub url: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub stderr: PathBuf,
}

impl AgentProc {
    /// Writes `config` to `dir/agent.yaml` and starts the agent on it.
    pub fn start(dir: &Path, config: &str) -> AgentProc {
        let path = dir.join("agent.yaml");
        std::fs::write(&path, config).unwrap();
        Self::start_file(dir, &path)
    }

    pub fn start_file(dir: &Path, config: &Path) -> AgentProc {
        Self::start_with(dir, config, None, &[])
    }

    /// Starts the agent through `sh -c '<shell_prefix>; exec rollgate-agent ...'` (say, to hand
    /// it an inherited descriptor: `exec 9<file`), with `env` added to its environment.
    pub fn start_with(
        dir: &Path,
        config: &Path,
        shell_prefix: Option<&str>,
        env: &[(&str, &str)],
    ) -> AgentProc {
        let stderr = dir.join(format!("agent-{}.stderr", std::process::id()));
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr)
            .unwrap();
        let mut command = match shell_prefix {
            Some(prefix) => {
                let mut c = Command::new("/bin/sh");
                c.arg("-c")
                    .arg(format!("{prefix}; exec \"$0\" run --config \"$1\""))
                    .arg(AGENT)
                    .arg(config);
                c
            }
            None => {
                let mut c = Command::new(AGENT);
                c.args(["run", "--config"]).arg(config);
                c
            }
        };
        let mut child = command
            .envs(env.iter().copied())
            .env("ROLLGATE_AGENT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .expect("spawn rollgate-agent");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "agent did not start; stderr:\n{}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                );
            }
        };
        let url = line
            .strip_prefix("rollgate-agent listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        AgentProc {
            child: Some(child),
            url,
            dir: dir.to_path_buf(),
            config: config.to_path_buf(),
            stderr,
        }
    }

    pub fn client(&self, auth: &ClientAuth) -> AgentClient {
        AgentClient::new(&self.url, auth).unwrap()
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// `kill -9`: no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        signal(child.id(), nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "agent did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Service processes a killed agent left behind.
        for pid_file in pid_files(&self.dir) {
            if let Some(pid) = std::fs::read_to_string(&pid_file).ok().and_then(|t| {
                t.split_whitespace()
                    .next()
                    .and_then(|p| p.parse::<i32>().ok())
            }) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

fn pid_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "pid") {
                out.push(p);
            }
        }
    }
    out
}

/// A real agent over mTLS on loopback with one `web` service (the demo, [`web_service`]) on a free
/// port: the set-up most agent tests start from.
pub struct WebAgent {
    pub tmp: tempfile::TempDir,
    pub pki: Pki,
    pub port: u16,
    pub data: PathBuf,
    pub agent: AgentProc,
    pub client: AgentClient,
}

impl WebAgent {
    pub fn start() -> WebAgent {
        let tmp = tempfile::tempdir().unwrap();
        let pki = Pki::new(&tmp.path().join("pki"));
        let port = free_ports(1)[0];
        let data = tmp.path().join("data");
        let agent = AgentProc::start(tmp.path(), &config(&pki, &data, &web_service(&[port], "")));
        let client = agent.client(&pki.client_auth());
        WebAgent {
            tmp,
            pki,
            port,
            data,
            agent,
            client,
        }
    }
}

/// An mTLS agent config with `services` (YAML list items, indented by two spaces).
pub fn config(pki: &Pki, data_dir: &Path, services: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\ndataDir: {}\n{}shutdownGrace: 10s\nservices:\n{services}",
        data_dir.display(),
        pki.tls_yaml(true)
    )
}

/// The demo service on `ports`, with an HTTP health check and the given recovery block.
pub fn web_service(ports: &[u16], extra: &str) -> String {
    format!(
        "  - name: web\n    command: bin/web\n    args: [\"--listen\", \"127.0.0.1:{{port}}\", \"--version\", \"{{version}}\"]\n    ports: [{}]\n    stopTimeout: 3s\n    health: {{type: http, url: \"http://127.0.0.1:{{port}}/health\", timeout: 1s, interval: 100ms, startTimeout: 15s}}\n{extra}",
        ports
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// A launcher script for the real demo binary with `DEMO_*` settings baked in.
pub fn demo_script(env: &[(&str, &str)]) -> Vec<u8> {
    let mut s = String::from("#!/bin/sh\n");
    for (k, v) in env {
        s.push_str(&format!("export {k}='{v}'\n"));
    }
    s.push_str(&format!("exec '{DEMO}' \"$@\"\n"));
    s.into_bytes()
}

pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A `.tar.gz` with the given (path, mode, contents) files.
pub fn tar_gz(files: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(enc);
    for (path, mode, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_cksum();
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

/// A `.tar.gz` with one raw entry whose name is written as is (no path checks).
pub fn tar_gz_raw(name: &[u8], kind: tar::EntryType, link: Option<&str>, data: &[u8]) -> Vec<u8> {
    let enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(enc);
    let mut h = tar::Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(0o755);
    if let Some(link) = link {
        h.as_gnu_mut().unwrap().linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    h.set_cksum();
    b.append(&h, data).unwrap();
    b.into_inner().unwrap().finish().unwrap()
}

/// A `.zip` with the given (path, mode, contents) files.
pub fn zip(files: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (path, mode, data) in files {
        let opts = zip::write::SimpleFileOptions::default().unix_permissions(*mode);
        w.start_file(*path, opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

pub fn upload_params(request_id: &str, bytes: &[u8], kind: Option<ArtifactKind>) -> UploadParams {
    UploadParams {
        request_id: request_id.to_string(),
        sha256: sha256(bytes),
        kind,
        file_name: None,
    }
}

/// Uploads `bytes` as `version` and waits for the stage operation to finish.
pub async fn stage(c: &AgentClient, version: &str, bytes: &[u8]) -> Operation {
    let op = c
        .stage_bytes(
            "web",
            version,
            bytes.to_vec(),
            &upload_params(&format!("stage-{version}"), bytes, None),
        )
        .await
        .unwrap();
    c.wait_operation(&op.id, Duration::from_secs(60))
        .await
        .unwrap()
}

/// Activates `version` on `slot` and waits for the outcome.
pub async fn activate(c: &AgentClient, request_id: &str, version: &str, slot: u32) -> Operation {
    let op = c
        .activate(
            "web",
            &ActivateRequest {
                request_id: request_id.to_string(),
                version: version.to_string(),
                slot,
                timeout_ms: None,
            },
        )
        .await
        .unwrap();
    c.wait_operation(&op.id, Duration::from_secs(60))
        .await
        .unwrap()
}

pub fn assert_succeeded(op: &Operation) {
    assert_eq!(op.state, OperationState::Succeeded, "{op:#?}");
}

/// GET `http://127.0.0.1:port/` body, or the error.
pub async fn get_root(port: u16) -> Result<String, String> {
    let resp = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    resp.text().await.map_err(|e| e.to_string())
}

/// Long-polls the service until `pred` holds or `deadline` passes.
pub async fn wait_status(
    c: &AgentClient,
    deadline: Duration,
    pred: impl Fn(&ServiceStatus) -> bool,
) -> ServiceStatus {
    let start = Instant::now();
    let mut status = c.service("web").await.unwrap();
    while !pred(&status) {
        assert!(
            start.elapsed() < deadline,
            "condition not reached in {deadline:?}; last status {status:#?}"
        );
        status = c
            .watch_service("web", status.generation, Duration::from_secs(2))
            .await
            .unwrap();
    }
    status
}

/// Entries of `dir` (names), sorted; empty if it does not exist.
/// The ids of the operations an agent recorded in `data/operations.log`, sorted.
pub fn operations(data: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(data.join("operations.log")).unwrap_or_default();
    let mut ids: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["op"]["id"].as_str().map(str::to_string))
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
