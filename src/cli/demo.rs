//! `rollgate demo`: a real local rollout on loopback, with real agents and real service processes.
//!
//! It makes a CA and certificates, starts one `rollgate-agent` per host on 127.0.0.1 (mTLS), packages
//! the demo service as three versioned artifacts, installs v1, rolls v2 out by canary, then rolls out
//! a v3 whose health check fails, which is rolled back automatically.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::agent::client::{AgentClient, ClientAuth};
use crate::cli::CliError;
use crate::cli::run::apply_manifest;
use crate::cli::{DemoArgs, exit};
use crate::spec::Manifest;
use crate::state::Store;

fn fail(what: &str) -> impl FnOnce(std::io::Error) -> CliError + '_ {
    move |e| CliError::Failed(format!("demo: {what}: {e}"))
}

fn sibling(name: &str) -> Result<PathBuf, CliError> {
    let exe = std::env::current_exe().map_err(fail("locating rollgate"))?;
    let path = exe.with_file_name(name);
    // Test binaries live in target/<profile>/deps, one level below the binaries.
    let above = exe.parent().and_then(Path::parent).map(|p| p.join(name));
    if path.is_file() {
        Ok(path)
    } else if let Some(above) = above.filter(|p| p.is_file()) {
        Ok(above)
    } else {
        Err(CliError::Failed(format!(
            "demo: {} not found next to rollgate: build every binary first (`cargo build --release --bins`)",
            path.display()
        )))
    }
}

fn free_ports(n: usize) -> Result<Vec<u16>, CliError> {
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()
        .map_err(fail("finding free ports"))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<std::io::Result<_>>()
        .map_err(fail("finding free ports"))
}

/// A versioned artifact: `bin/web` is the demo binary, and `bin/web.args` holds this version's
/// flags (the demo reads the file named after itself). No wrapper script: a shell and its
/// subprocesses per start are work that 200 instances starting at once on two cores notice.
fn package(dir: &Path, demo_bin: &Path, version: &str, flags: &str) -> Result<PathBuf, CliError> {
    let path = dir.join(format!("web-{version}.tar.gz"));
    let file = std::fs::File::create(&path).map_err(fail("writing an artifact"))?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let args = format!("--version {version} {flags}\n");
    let mut header = tar::Header::new_gnu();
    header.set_size(args.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "bin/web.args", args.as_bytes())
        .map_err(fail("writing an artifact"))?;
    // A plain regular entry: the agent refuses sparse files, which `append_path` may write.
    let bytes = std::fs::read(demo_bin).map_err(fail("reading rollgate-demo"))?;
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(bytes.len() as u64);
    header.set_mode(0o755);
    header.set_cksum();
    tar.append_data(&mut header, "bin/web", bytes.as_slice())
        .map_err(fail("writing an artifact"))?;
    tar.into_inner()
        .and_then(|gz| gz.finish())
        .map_err(fail("writing an artifact"))?;
    Ok(path)
}

struct Agents(Vec<tokio::process::Child>);

impl Drop for Agents {
    fn drop(&mut self) {
        // SIGTERM lets each agent stop its services gracefully; kill_on_drop is the backstop.
        #[cfg(unix)]
        for child in &self.0 {
            if let Some(pid) = child.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        for child in &mut self.0 {
            for _ in 0..50 {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Agents on loopback, each supervising the demo service, with mTLS from a fresh CA. Tests and the
/// demo share it; dropping it stops the agents (and so their services).
pub struct LocalFleet {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// (name, agent port, service ports)
    pub hosts: Vec<(String, u16, Vec<u16>)>,
    _agents: Agents,
}

impl LocalFleet {
    /// Starts `n` agents with `slots` service slots each, and waits until each answers over mTLS.
    pub async fn start(dir: &Path, n: usize, slots: usize) -> Result<Self, CliError> {
        Self::start_tuned(dir, n, slots, Duration::from_millis(100)).await
    }

    /// [`LocalFleet::start`] with the agents' health-check interval set (benchmarks poll faster).
    pub async fn start_tuned(
        dir: &Path,
        n: usize,
        slots: usize,
        health_interval: Duration,
    ) -> Result<Self, CliError> {
        let agent_bin = sibling("rollgate-agent")?;
        let pki = dir.join("pki");
        let map = |e: crate::pki::PkiError| CliError::Failed(format!("pki: {e}"));
        let ca = crate::pki::init(&pki).map_err(map)?;
        let server = crate::pki::issue_agent(&pki, "127.0.0.1").map_err(map)?;
        let client = crate::pki::issue_client(&pki, "demo").map_err(map)?;
        let ports = free_ports(n * (1 + slots))?;
        let mut children = Vec::new();
        let mut hosts = Vec::new();
        for i in 0..n {
            let agent_port = ports[i * (1 + slots)];
            let service_ports: Vec<u16> =
                ports[i * (1 + slots) + 1..(i + 1) * (1 + slots)].to_vec();
            let name = format!("host{}", i + 1);
            let host_dir = dir.join(&name);
            std::fs::create_dir_all(&host_dir).map_err(fail("creating a host dir"))?;
            let port_list: Vec<String> = service_ports.iter().map(u16::to_string).collect();
            let config = format!(
                "listen: \"127.0.0.1:{agent_port}\"\ndataDir: \"{data}\"\ntls:\n  cert: \"{cert}\"\n  key: \"{key}\"\n  clientCa: \"{ca}\"\nservices:\n  - name: web\n    command: bin/web\n    args: [\"--listen\", \"127.0.0.1:{{port}}\"]\n    ports: [{ports}]\n    stopTimeout: 5s\n    health: {{type: http, url: \"http://127.0.0.1:{{port}}/health\", timeout: 1s, interval: {interval}ms, startTimeout: 15s}}\n",
                data = host_dir.join("data").display(),
                cert = server.cert.display(),
                key = server.key.display(),
                ca = ca.cert.display(),
                ports = port_list.join(", "),
                interval = health_interval.as_millis(),
            );
            let config_path = host_dir.join("agent.yaml");
            std::fs::write(&config_path, config).map_err(fail("writing an agent config"))?;
            let log = std::fs::File::create(host_dir.join("agent.log"))
                .map_err(fail("creating an agent log"))?;
            let child = tokio::process::Command::new(&agent_bin)
                .arg("run")
                .arg("--config")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().map_err(fail("agent log"))?)
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .map_err(fail("starting rollgate-agent"))?;
            children.push(child);
            hosts.push((name, agent_port, service_ports));
        }
        let fleet = LocalFleet {
            dir: dir.to_path_buf(),
            ca: ca.cert,
            client_cert: client.cert,
            client_key: client.key,
            hosts,
            _agents: Agents(children),
        };
        fleet.wait_up().await?;
        Ok(fleet)
    }

    async fn wait_up(&self) -> Result<(), CliError> {
        let auth = ClientAuth::mtls_files(&self.ca, &self.client_cert, &self.client_key)
            .map_err(|e| CliError::Failed(e.to_string()))?;
        for (name, port, _) in &self.hosts {
            let client = AgentClient::new(&format!("https://127.0.0.1:{port}"), &auth)
                .map_err(|e| CliError::Failed(e.to_string()))?;
            let mut last = String::new();
            let mut up = false;
            for _ in 0..100 {
                match client.host_info().await {
                    Ok(_) => {
                        up = true;
                        break;
                    }
                    Err(e) => last = e.to_string(),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if !up {
                return Err(CliError::Failed(format!(
                    "agent {name} did not start: {last} (see {}/{name}/agent.log)",
                    self.dir.display()
                )));
            }
        }
        Ok(())
    }

    /// The agents' process ids, in host order.
    pub fn agent_pids(&self) -> Vec<u32> {
        self._agents
            .0
            .iter()
            .filter_map(tokio::process::Child::id)
            .collect()
    }

    /// The `hosts:` list of a manifest, zones a, b, c in turn, host1 in group `internal`.
    pub fn hosts_yaml(&self, indent: &str) -> String {
        let mut out = String::new();
        for (i, (name, port, _)) in self.hosts.iter().enumerate() {
            let zone = ["a", "b", "c"][i % 3];
            let group = if i == 0 { ", groups: [internal]" } else { "" };
            out.push_str(&format!("{indent}- {{name: {name}, address: \"127.0.0.1:{port}\", labels: {{zone: {zone}}}{group}}}\n"));
        }
        out
    }

    /// The `auth:` value of a manifest.
    pub fn auth_yaml(&self) -> String {
        format!(
            "{{ca: \"{}\", cert: \"{}\", key: \"{}\"}}",
            self.ca.display(),
            self.client_cert.display(),
            self.client_key.display()
        )
    }
}

/// Packages the demo service as `web-<version>.tar.gz` in `dir`; `flags` select its behaviour.
pub fn package_demo(dir: &Path, version: &str, flags: &str) -> Result<PathBuf, CliError> {
    package(dir, &sibling("rollgate-demo")?, version, flags)
}

pub async fn run(args: &DemoArgs) -> Result<u8, CliError> {
    sibling("rollgate-agent")?;
    let demo_bin = sibling("rollgate-demo")?;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("rollgate-demo-{}", std::process::id())),
    };
    if dir.join("pki").exists() {
        return Err(CliError::Failed(format!(
            "demo: {} already holds a demo; pass a new --dir",
            dir.display()
        )));
    }
    let created = !dir.exists();
    std::fs::create_dir_all(&dir).map_err(fail("creating the demo dir"))?;
    let dir = std::path::absolute(&dir).map_err(fail("creating the demo dir"))?;
    // The agents (and their services) are stopped when `stages` returns: then the files can go.
    let result = stages(args, &dir, &demo_bin).await;
    let say = |line: &str| crate::cli::output::say(args.output, line);
    if args.keep {
        say(&format!(
            "demo: its files are in {} (agents under host*/, artifacts/, the journal in state/)",
            dir.display()
        ));
    } else {
        let removed = remove_demo_files(&dir, created, args.hosts.clamp(1, 32));
        say(&format!(
            "demo: removed its files from {}{} (--keep keeps them)",
            dir.display(),
            removed
                .err()
                .map(|e| format!(" except: {e}"))
                .unwrap_or_default()
        ));
    }
    result
}

/// Removes what the demo wrote: all of `dir` when the demo created it, else only its own entries.
fn remove_demo_files(dir: &Path, created: bool, hosts: usize) -> std::io::Result<()> {
    if created {
        return std::fs::remove_dir_all(dir);
    }
    let mut names: Vec<String> = ["pki", "artifacts", "state"].map(String::from).to_vec();
    names.extend((1..=hosts).map(|i| format!("host{i}")));
    names.extend(["1.0.0", "2.0.0", "3.0.0"].map(|v| format!("web-{v}.yaml")));
    for name in names {
        let path = dir.join(name);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path)?,
            Ok(_) => std::fs::remove_file(&path)?,
            Err(_) => {}
        }
    }
    Ok(())
}

/// The demo's rollouts in `dir`, with its agents; they stop when this returns.
async fn stages(args: &DemoArgs, dir: &Path, demo_bin: &Path) -> Result<u8, CliError> {
    let say = |line: &str| crate::cli::output::say(args.output, line);
    say(&format!("demo: working in {}", dir.display()));
    let n = args.hosts.clamp(1, 32);
    let fleet = LocalFleet::start(dir, n, 1).await?;
    say(&format!(
        "demo: {n} agents up on loopback, mTLS with a fresh CA"
    ));
    let hosts_yaml = fleet.hosts_yaml("        ");
    let auth_yaml = fleet.auth_yaml();

    let artifacts = dir.join("artifacts");
    std::fs::create_dir_all(&artifacts).map_err(fail("creating the artifacts dir"))?;
    let v1 = package(&artifacts, demo_bin, "1.0.0", "")?;
    let v2 = package(&artifacts, demo_bin, "2.0.0", "")?;
    let v3 = package(&artifacts, demo_bin, "3.0.0", "--health-status 500")?;

    let store = Store::at(dir.join("state"));
    let dashboard = if args.dashboard {
        let served = crate::cli::dashboard::start(&args.dashboard_listen, store.clone()).await?;
        say(&format!("demo: dashboard on {}", served.url));
        Some(served)
    } else {
        None
    };
    let manifest = |version: &str, artifact: &Path, strategy: &str| {
        format!(
            "apiVersion: rollgate.dev/v1\nkind: Rollout\nmetadata:\n  name: web\nspec:\n  version: \"{version}\"\n  target:\n    hosts:\n      service: web\n      spreadBy: zone\n      artifact: {{file: \"{artifact}\"}}\n      auth: {auth_yaml}\n      hosts:\n{hosts_yaml}  strategy:\n{strategy}  checks:\n    - name: health\n      http: {{url: \"http://127.0.0.1:{{port}}/health\"}}\n      interval: 200ms\n      count: 3\n      successThreshold: 2\n      failureLimit: 0\n      timeout: 1s\n  rollback: {{auto: true}}\n  progressDeadlineSeconds: 8\n",
            artifact = artifact.display(),
        )
    };
    let install = "    rolling: {maxSurge: 0, maxUnavailable: \"100%\"}\n";
    let canary = "    canary:\n      maxUnavailable: 1\n      firstGroup: internal\n      steps:\n        - setWeight: 25\n        - pause: {duration: 1s}\n        - setWeight: 50\n        - analysis: {}\n";
    let stages = [
        ("install v1 everywhere", "1.0.0", &v1, install, exit::OK),
        (
            "canary v1 -> v2, the internal ring first",
            "2.0.0",
            &v2,
            canary,
            exit::OK,
        ),
        (
            "canary to a bad v3 (its /health answers 500): rolled back automatically",
            "3.0.0",
            &v3,
            canary,
            exit::FAILED,
        ),
    ];
    let mut ok = true;
    for (title, version, artifact, strategy, expected) in stages {
        say(&format!("\n== {title}"));
        let path = dir.join(format!("web-{version}.yaml"));
        std::fs::write(&path, manifest(version, artifact, strategy))
            .map_err(fail("writing a manifest"))?;
        let m = Manifest::load(&[path], None)?;
        let code = apply_manifest(&m, args.output, &store).await?;
        if code != expected {
            say(&format!("demo: expected exit code {expected}, got {code}"));
            ok = false;
            break;
        }
    }
    say(&format!(
        "\n== history (ROLLGATE_STATE={} rollgate history web)",
        store_root(dir).display()
    ));
    for r in crate::state::history(
        &store
            .read("web")
            .map_err(|e| CliError::Failed(e.to_string()))?,
    ) {
        say(crate::cli::output::summary(&r, &crate::cli::output::Running::Unknown).trim_end());
    }
    say(&format!(
        "\ndemo: {}; stopping the agents",
        if ok {
            "done: v2 serves everywhere, v3 was rolled back"
        } else {
            "FAILED"
        }
    ));
    if let Some(served) = dashboard {
        drop(fleet);
        let interrupted = crate::cli::dashboard::interrupted();
        say(&format!(
            "demo: agents stopped; the dashboard still serves {} until Ctrl-C",
            served.url
        ));
        interrupted.await;
        served.stop().await?;
    }
    Ok(if ok { exit::OK } else { exit::FAILED })
}

fn store_root(dir: &Path) -> PathBuf {
    dir.join("state")
}
