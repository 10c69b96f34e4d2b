//! A real systemd as PID 1 of its own pid, mount, UTS and IPC namespaces, seeing only the units
//! the test gives it.
//!
//! Isolation matters: the namespace shares the host's root file system, so a unit of the host
//! (say `systemd-tmpfiles-setup.service`, pulled in by the real `sysinit.target`) would act on
//! the host. systemd therefore gets `SYSTEMD_UNIT_PATH` set to one directory of ours, mounted on
//! `/etc/systemd/system` inside, holding empty stand-ins for the standard targets, the halt chain
//! and journald (without its `/dev/log` socket, whose symlink would land in the host's `/dev`).
//! `/run` and `/var/log/journal` are fresh tmpfs mounts inside, journald is volatile and does not
//! read the kernel log. systemd and everything it starts live in a cgroup of their own, removed
//! after the halt (`SIGRTMIN+3`). One systemd at a time: a file lock serialises the tests.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Where units live inside the namespace (our directory is mounted there).
pub const UNIT_DIR: &str = "/etc/systemd/system";

const LOCK: &str = "/tmp/rollgate-systemd.lock";
const SYSTEMD: &str = "/lib/systemd/systemd";
const TARGET: &str = "rollgate-test.target";

/// Standard targets a unit may name (`After=network-online.target`, `WantedBy=multi-user.target`,
/// the default dependencies): empty stand-ins, so none of the host's wants is followed.
const STAND_INS: &[&str] = &[
    "sysinit",
    "basic",
    "sockets",
    "multi-user",
    "network",
    "network-online",
    "network-pre",
    "local-fs",
    "remote-fs",
    "paths",
    "timers",
    "slices",
    "nss-lookup",
    "nss-user-lookup",
];

/// Copied from the host's systemd as they are: what a halt needs.
const COPIED: &[&str] = &[
    "halt.target",
    "systemd-halt.service",
    "shutdown.target",
    "umount.target",
    "final.target",
    "systemd-journald.socket",
];

/// The script `unshare` runs as PID 1 before it becomes systemd. `$1` names the cgroup, `$2` is
/// our directory.
const START: &str = r#"set -e
if [ -f /sys/fs/cgroup/cgroup.procs ]; then dirs=/sys/fs/cgroup; else dirs="/sys/fs/cgroup/systemd /sys/fs/cgroup/unified"; fi
for d in $dirs; do [ -d "$d" ] || continue; mkdir -p "$d/$1"; echo 0 > "$d/$1/cgroup.procs"; done
mount -t tmpfs -o mode=755 tmpfs /run
mount --bind "$2/units" /etc/systemd/system
mount --bind "$2/journald.conf" /etc/systemd/journald.conf
if [ -d /var/log/journal ]; then mount -t tmpfs tmpfs /var/log/journal; fi
exec env -i container=rollgate-test SYSTEMD_UNIT_PATH=/etc/systemd/system PATH=/usr/sbin:/usr/bin:/sbin:/bin "$3" --system --unit=rollgate-test.target --show-status=false
"#;

/// A running systemd in its own namespaces; halted on drop.
pub struct Systemd {
    /// systemd's pid as the host sees it.
    pub pid: i32,
    /// Our directory: `units/` (mounted on [`UNIT_DIR`] inside) and whatever the test puts here.
    /// It is under the target dir, not `/tmp`, so it stays visible to units with `PrivateTmp=`.
    pub dir: PathBuf,
    unshare: Option<Child>,
    cgroup: String,
    _tmp: tempfile::TempDir,
    _lock: std::fs::File,
}

/// Why systemd cannot run here, or `None` when it can.
fn unsupported() -> Option<String> {
    if !cfg!(target_os = "linux") {
        return Some("not Linux".into());
    }
    if !nix::unistd::Uid::effective().is_root() {
        return Some("needs root (namespaces, mounts, cgroups)".into());
    }
    for tool in [
        "/lib/systemd/systemd",
        "/usr/bin/unshare",
        "/usr/bin/nsenter",
    ] {
        if !Path::new(tool).exists() {
            return Some(format!(
                "{tool} is missing (Debian's systemd and util-linux)"
            ));
        }
    }
    if !Path::new("/etc/systemd/journald.conf").exists() {
        return Some("/etc/systemd/journald.conf is missing".into());
    }
    None
}

impl Systemd {
    /// Starts systemd and waits until it is running; `None`, with the reason on stderr, where it
    /// cannot run (the test then skips).
    pub fn start(test: &str) -> Option<Systemd> {
        if let Some(why) = unsupported() {
            eprintln!("SKIP {test}: no systemd in a namespace here: {why}");
            return None;
        }
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK)
            .unwrap();
        lock.lock().unwrap();
        let tmp = tempfile::Builder::new()
            .prefix("systemd-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        let dir = tmp.path().to_path_buf();
        write_units(&dir);
        let cgroup = format!("rollgate-test-{}", std::process::id());
        let log = std::fs::File::create(dir.join("systemd.log")).unwrap();
        let unshare = Command::new("unshare")
            .args([
                "--pid",
                "--fork",
                "--mount",
                "--mount-proc",
                "--uts",
                "--ipc",
            ])
            .args(["sh", "-c", START, "start"])
            .arg(&cgroup)
            .arg(&dir)
            .arg(SYSTEMD)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn unshare");
        let mut sd = Systemd {
            pid: 0,
            dir,
            unshare: Some(unshare),
            cgroup,
            _tmp: tmp,
            _lock: lock,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while sd.pid == 0 {
            let parent = sd.unshare.as_ref().unwrap().id() as i32;
            sd.pid = child_of(parent).unwrap_or(0);
            if sd.pid == 0 {
                assert!(
                    Instant::now() < deadline,
                    "systemd did not start: {}",
                    sd.log()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        loop {
            let out = sd.run("systemctl", &["is-system-running"]);
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if state == "running" || state == "degraded" {
                break;
            }
            if Instant::now() > deadline {
                eprintln!(
                    "SKIP {test}: systemd did not come up within 30s (state {state:?}): {}",
                    sd.log()
                );
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(sd)
    }

    /// Our `units/` directory, mounted on [`UNIT_DIR`] inside.
    pub fn units(&self) -> PathBuf {
        self.dir.join("units")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("systemd.log")).unwrap_or_default()
    }

    /// A command that runs `program` inside the namespaces.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.pid.to_string(), "-m", "-p", "-u", "-i", "--"])
            .arg(program)
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        self.command(program).args(args).output().unwrap()
    }

    /// `systemctl args…`, asserting success; its stdout.
    pub fn systemctl(&self, args: &[&str]) -> String {
        let out = self.run("systemctl", args);
        assert!(
            out.status.success(),
            "systemctl {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `systemctl show unit`: every property.
    pub fn show(&self, unit: &str) -> BTreeMap<String, String> {
        self.systemctl(&["show", unit])
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// One property of `systemctl show unit`.
    pub fn prop(&self, unit: &str, name: &str) -> String {
        self.systemctl(&["show", unit, "-p", name, "--value"])
            .trim()
            .to_string()
    }

    /// Waits until `unit`'s `name` property satisfies `pred`; returns the last value.
    pub fn wait_prop(
        &self,
        unit: &str,
        name: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.prop(unit, name);
            if pred(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{unit} {name}={v:?} after {timeout:?}; status:\n{}",
                String::from_utf8_lossy(
                    &self
                        .run("systemctl", &["status", "--no-pager", unit])
                        .stdout
                )
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `journalctl -o json args…` inside: one JSON object per entry.
    pub fn journal(&self, args: &[&str]) -> Vec<serde_json::Value> {
        let out = self
            .command("journalctl")
            .args(["-o", "json", "--no-pager"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// The journal of `unit`, as `journalctl -u` prints it, for failure messages.
    pub fn journal_text(&self, unit: &str) -> String {
        let out = self.run("journalctl", &["--no-pager", "-u", unit]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Halts systemd (`SIGRTMIN+3`) and waits until its namespace is gone.
    pub fn halt(&mut self) {
        let Some(mut unshare) = self.unshare.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-s", "RTMIN+3", &self.pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        let exited = loop {
            if let Ok(Some(_)) = unshare.try_wait() {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if !exited {
            // Killing PID 1 of a pid namespace kills every process in it.
            eprintln!("systemd did not halt within 30s; killing its namespace");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = unshare.wait();
        }
        remove_cgroup(&self.cgroup);
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        self.halt();
    }
}

/// The pid (as the host sees it) of `parent`'s first child.
fn child_of(parent: i32) -> Option<i32> {
    let text = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

fn remove_cgroup(name: &str) {
    for base in [
        "/sys/fs/cgroup/systemd",
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup",
    ] {
        let root = Path::new(base).join(name);
        if root.is_dir() {
            remove_dirs(&root);
        }
    }
}

/// cgroup directories are removed bottom-up with rmdir (their files cannot be deleted).
fn remove_dirs(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_dirs(&e.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

fn write_units(dir: &Path) {
    let units = dir.join("units");
    std::fs::create_dir_all(&units).unwrap();
    for t in STAND_INS {
        std::fs::write(
            units.join(format!("{t}.target")),
            format!("[Unit]\nDescription={t} (stand-in of the rollgate tests)\n"),
        )
        .unwrap();
    }
    let host = Path::new("/lib/systemd/system");
    for f in COPIED {
        std::fs::copy(host.join(f), units.join(f)).unwrap();
    }
    // journald without its /dev/log and audit sockets.
    let journald = std::fs::read_to_string(host.join("systemd-journald.service"))
        .unwrap()
        .replace(" systemd-journald-dev-log.socket", "")
        .replace(" systemd-journald-audit.socket", "");
    std::fs::write(units.join("systemd-journald.service"), journald).unwrap();
    std::fs::write(
        units.join(TARGET),
        "[Unit]\nDescription=rollgate tests\nWants=systemd-journald.service\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("journald.conf"),
        "[Journal]\nStorage=volatile\nReadKMsg=no\nRateLimitBurst=0\n",
    )
    .unwrap();
}

/// The real agent's files for a run under `sd`: mTLS on a free loopback port, config, PKI and
/// data dir in `sd.dir` (outside `/tmp`, which the agent's unit makes private).
pub struct AgentFiles {
    pub pki: crate::support::Pki,
    pub port: u16,
    pub config: PathBuf,
    pub data: PathBuf,
}

pub const AGENT_UNIT: &str = "rollgate-agent.service";

impl AgentFiles {
    /// Writes `agent.yaml` with `services` (YAML list items, indented by two spaces).
    pub fn write(sd: &Systemd, services: &str) -> AgentFiles {
        let pki = crate::support::Pki::new(&sd.dir.join("pki"));
        let port = crate::support::free_ports(1)[0];
        let data = sd.dir.join("data");
        let config = sd.dir.join("agent.yaml");
        let text = crate::support::config(&pki, &data, services)
            .replace("listen: 127.0.0.1:0", &format!("listen: 127.0.0.1:{port}"));
        std::fs::write(&config, text).unwrap();
        AgentFiles {
            pki,
            port,
            config,
            data,
        }
    }

    /// `rollgate-agent service install --config …` inside `sd` (it enables and starts the unit).
    pub fn install(&self, sd: &Systemd) -> Output {
        sd.command(crate::support::AGENT)
            .args(["service", "install", "--config"])
            .arg(&self.config)
            .output()
            .unwrap()
    }

    /// A client for the agent once `agent.addr` is written.
    pub fn client(&self) -> rollgate::agent::client::AgentClient {
        let url = std::fs::read_to_string(self.data.join("agent.addr")).expect("agent.addr");
        rollgate::agent::client::AgentClient::new(url.trim(), &self.pki.client_auth()).unwrap()
    }
}

/// Asserts a command succeeded, with its output in the message.
pub fn assert_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
