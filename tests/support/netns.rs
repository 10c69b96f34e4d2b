//! A LAN of network namespaces for end-to-end tests: a bridge in the root namespace, one namespace
//! per host joined to it by a veth pair, addresses in 10.203.7.0/24.
//!
//! Every name starts with [`PREFIX`], so what a crashed run left behind is found and removed. One
//! LAN exists at a time on a machine: [`Lan::new`] holds an exclusive lock file until it is dropped.

#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Every namespace and link the test bed makes starts with this.
pub const PREFIX: &str = "rgt-";
/// The bridge in the root namespace.
pub const BRIDGE: &str = "rgt-br";
/// The root namespace's address on the bridge: where the CLI and the probe talk from.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 203, 7, 1);
const PREFIX_LEN: u8 = 24;

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// True when the test may run; otherwise prints why it is skipped.
pub fn root_or_skip(test: &str) -> bool {
    if is_root() {
        return true;
    }
    eprintln!("{test}: skipped: network-namespace tests need root");
    false
}

/// Runs `ip ARGS` and panics with its stderr on failure.
pub fn ip(args: &[&str]) -> Output {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `ip ARGS`, ignoring failure (teardown).
fn ip_quiet(args: &[&str]) {
    let _ = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A command that runs `program` inside namespace `ns` (`ip netns exec NS program ...`). iproute2
/// execs the program in place, so the child's pid is the program's.
pub fn in_ns(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(program);
    cmd
}

/// Kills every process in namespace `ns` with SIGKILL and waits (bounded) until none is left.
pub fn kill_all_in(ns: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = Command::new("ip")
            .args(["netns", "pids", ns])
            .stderr(Stdio::null())
            .output();
        let pids: Vec<i32> = out
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        if pids.is_empty() || Instant::now() > deadline {
            return;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Removes every namespace and link named with [`PREFIX`]: what an earlier crashed run left.
pub fn clean_stale() {
    let out = Command::new("ip").args(["netns", "list"]).output();
    if let Ok(out) = out {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // "rgt-h1 (id: 3)"
            let name = line.split_whitespace().next().unwrap_or("");
            if name.starts_with(PREFIX) {
                kill_all_in(name);
                ip_quiet(&["netns", "del", name]);
            }
        }
    }
    let out = Command::new("ip").args(["-o", "link", "show"]).output();
    if let Ok(out) = out {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // "12: rgt-h1@if11: <...>"
            let name = line
                .split(':')
                .nth(1)
                .map(|s| s.trim().split('@').next().unwrap_or(""))
                .unwrap_or("");
            if name.starts_with(PREFIX) {
                ip_quiet(&["link", "del", name]);
            }
        }
    }
}

/// One host of the LAN: its namespace, its address, and its link's name on each side.
#[derive(Debug, Clone)]
pub struct NetHost {
    /// Namespace name, e.g. `rgt-h1`.
    pub ns: String,
    pub ip: Ipv4Addr,
    /// The veth end in the root namespace, attached to the bridge.
    pub outer_link: String,
    /// The veth end inside the namespace (`eth0`).
    pub inner_link: String,
}

impl NetHost {
    /// Cuts the host off the LAN: its own link goes down, as if its cable were pulled.
    pub fn cut(&self) {
        ip(&["-n", &self.ns, "link", "set", &self.inner_link, "down"]);
    }

    /// Reconnects a host that was [`cut`](Self::cut).
    pub fn reconnect(&self) {
        ip(&["-n", &self.ns, "link", "set", &self.inner_link, "up"]);
    }

    /// `ip netns exec` into this host.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        in_ns(&self.ns, program)
    }
}

/// The bridge and its namespaces; all removed on drop, with every process inside them.
pub struct Lan {
    pub hosts: Vec<NetHost>,
    _lock: std::fs::File,
}

impl Lan {
    /// Makes a LAN of `n` hosts named `rgt-h1`..: 10.203.7.11, .12, and so on. Blocks while
    /// another LAN exists (another test, or another test process).
    pub fn new(n: usize) -> Lan {
        assert!((1..=200).contains(&n), "1 to 200 hosts");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(std::env::temp_dir().join("rgt-netns.lock"))
            .expect("open the test-bed lock file");
        lock.lock().expect("take the test-bed lock");
        // Holding the lock, anything with our prefix is left over from a crashed run.
        clean_stale();
        let mut lan = Lan {
            hosts: Vec::new(),
            _lock: lock,
        };
        ip(&["link", "add", BRIDGE, "type", "bridge"]);
        ip(&[
            "addr",
            "add",
            &format!("{GATEWAY}/{PREFIX_LEN}"),
            "dev",
            BRIDGE,
        ]);
        ip(&["link", "set", BRIDGE, "up"]);
        for i in 1..=n {
            lan.add_host(&format!("h{i}"), 10 + i as u8);
        }
        lan
    }

    /// Adds a namespace `rgt-NAME` at 10.203.7.`last_octet` (for extra machines, e.g. a load
    /// balancer); its loopback is up and it can reach every other host and the root namespace.
    pub fn add_host(&mut self, name: &str, last_octet: u8) -> NetHost {
        let ns = format!("{PREFIX}{name}");
        assert!(ns.len() <= 12, "{ns}: keep names short (link names max 15)");
        let outer = ns.clone();
        let peer = format!("{ns}-p");
        let ip_addr = Ipv4Addr::new(10, 203, 7, last_octet);
        ip(&["netns", "add", &ns]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&["link", "add", &outer, "type", "veth", "peer", "name", &peer]);
        ip(&["link", "set", &peer, "netns", &ns]);
        ip(&["-n", &ns, "link", "set", &peer, "name", "eth0"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ip_addr}/{PREFIX_LEN}"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["link", "set", &outer, "master", BRIDGE]);
        ip(&["link", "set", &outer, "up"]);
        let host = NetHost {
            ns,
            ip: ip_addr,
            outer_link: outer,
            inner_link: "eth0".into(),
        };
        self.hosts.push(host.clone());
        host
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for h in &self.hosts {
            kill_all_in(&h.ns);
        }
        for h in &self.hosts {
            ip_quiet(&["netns", "del", &h.ns]);
            ip_quiet(&["link", "del", &h.outer_link]);
        }
        ip_quiet(&["link", "del", BRIDGE]);
    }
}
