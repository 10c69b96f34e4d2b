//! A three-member etcd cluster on loopback for one test (`tests/cluster/etcd3.sh`), on ports and
//! a data dir of its own, stopped when dropped.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::fleet::{Fleet, ROLLGATE, text};
use crate::running::Running;

pub struct Etcd3 {
    dir: PathBuf,
    port: u16,
    /// `etcd://127.0.0.1:P0,127.0.0.1:P1,127.0.0.1:P2/rollgate` for `ROLLGATE_STATE_URL`.
    pub url: String,
    /// The client URLs, comma-separated.
    pub endpoints: String,
    /// Client ports over TLS (`up --tls`): the CA and client certificate are in `pki()`.
    pub tls: bool,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cluster/etcd3.sh")
}

/// Whether etcd is built (`cluster.sh build`'s cache, or `ROLLGATE_ETCD_BIN`) or can be (Go).
fn available() -> bool {
    let cached = std::env::var_os("ROLLGATE_ETCD_BIN")
        .map(PathBuf::from)
        .or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
            let version = std::env::var("ROLLGATE_KUBE_VERSION").unwrap_or("v1.36.3".into());
            Some(cache.join("rollgate/kube").join(version).join("etcd"))
        })
        .is_some_and(|p| p.exists());
    let go = Command::new("go")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if cached || go {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "no etcd binary and no Go to build it (tests/cluster/cluster.sh build)"
    );
    eprintln!("skipped: no etcd binary and no Go to build it (tests/cluster/cluster.sh build)");
    false
}

impl Etcd3 {
    /// Starts members 0-2 with client ports `port`, `port+2`, `port+4` (peers one above each).
    /// `None` (after saying why) only when etcd cannot exist here: no cached binary and no Go to
    /// build it; under CI (`CI` set) that fails the test instead.
    pub fn up(port: u16) -> Option<Etcd3> {
        available().then(|| Self::start(port, false))
    }

    /// Like [`up`](Self::up), the client ports over TLS with client certificates required;
    /// `url` is `etcd+https://...?ca=...&cert=...&key=...`.
    pub fn up_tls(port: u16) -> Option<Etcd3> {
        available().then(|| Self::start(port, true))
    }

    fn start(port: u16, tls: bool) -> Etcd3 {
        let dir = std::env::temp_dir().join(format!("rollgate-etcd3-{port}"));
        let mut etcd = Etcd3 {
            dir,
            port,
            url: format!(
                "etcd://127.0.0.1:{port},127.0.0.1:{},127.0.0.1:{}/rollgate",
                port + 2,
                port + 4
            ),
            endpoints: String::new(),
            tls,
        };
        let out = etcd.script(if tls { &["up", "--tls"] } else { &["up"] });
        assert!(
            out.status.success(),
            "etcd3.sh up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if tls {
            let pki = etcd.pki();
            etcd.url = format!(
                "{}?ca={}&cert={}&key={}",
                etcd.url.replace("etcd://", "etcd+https://"),
                pki.join("ca.crt").display(),
                pki.join("client.crt").display(),
                pki.join("client.key").display()
            );
        }
        etcd.endpoints = String::from_utf8_lossy(&etcd.script(&["endpoints"]).stdout)
            .trim()
            .to_string();
        etcd
    }

    pub fn script(&self, args: &[&str]) -> std::process::Output {
        Command::new(script())
            .args(args)
            .env("ROLLGATE_ETCD3_PORT", self.port.to_string())
            .env("ROLLGATE_ETCD3_DIR", &self.dir)
            .output()
            .expect("run tests/cluster/etcd3.sh")
    }

    pub fn pki(&self) -> PathBuf {
        self.dir.join("pki")
    }

    /// A member's client URL.
    pub fn endpoint(&self, i: usize) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port + 2 * i as u16)
    }

    /// The member that leads now (`etcd3.sh leader`).
    pub fn leader(&self) -> usize {
        let out = self.script(&["leader"]);
        assert!(
            out.status.success(),
            "etcd3.sh leader: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }

    /// Runs `etcd3.sh CMD` (`kill-all`, `start-all`, ...) and asserts it succeeded.
    pub fn must(&self, cmd: &str) {
        let out = self.script(&[cmd]);
        assert!(
            out.status.success(),
            "etcd3.sh {cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// SIGKILLs member `i`.
    pub fn kill(&self, i: usize) {
        let out = self.script(&["kill", &i.to_string()]);
        assert!(out.status.success(), "etcd3.sh kill {i}");
    }

    /// SIGSTOPs member `i`: frozen, it answers neither its peers nor clients (one member of
    /// three cut off), until [`cont`](Self::cont).
    pub fn stop(&self, i: usize) {
        let out = self.script(&["stop", &i.to_string()]);
        assert!(out.status.success(), "etcd3.sh stop {i}");
    }

    pub fn cont(&self, i: usize) {
        let out = self.script(&["cont", &i.to_string()]);
        assert!(out.status.success(), "etcd3.sh cont {i}");
    }

    /// POSTs `body` to the gateway `path` of member 0 (curl) and parses the answer.
    pub fn call(&self, path: &str, body: &str) -> serde_json::Value {
        for i in 0..3 {
            let mut curl = Command::new("curl");
            if self.tls {
                let pki = self.pki();
                curl.arg("--cacert")
                    .arg(pki.join("ca.crt"))
                    .arg("--cert")
                    .arg(pki.join("client.crt"))
                    .arg("--key")
                    .arg(pki.join("client.key"));
            }
            let out = curl
                .args(["-fsS", "--max-time", "3", "-d", body])
                .arg(format!("{}{path}", self.endpoint(i)))
                .output()
                .expect("run curl");
            if out.status.success() {
                return serde_json::from_slice(&out.stdout).expect("etcd answers JSON");
            }
        }
        panic!("no etcd member answered {path}");
    }

    /// The store's revision: it moves on every write anywhere in the cluster.
    pub fn revision(&self) -> i64 {
        let v = self.call("/v3/kv/range", r#"{"key":"AA=="}"#);
        v["header"]["revision"].as_str().unwrap().parse().unwrap()
    }

    /// The records etcd holds for rollout `id` of `app` (JSON), in order.
    pub fn journal_of(&self, app: &str, id: &str) -> Vec<String> {
        self.keys(&format!("/rollgate/{app}/journal/{id}/"))
            .into_iter()
            .map(|(_, v)| v)
            .collect()
    }

    /// Waits (at most 10 s) until the lease that `key` is attached to is kept alive: its TTL, read
    /// every 100 ms, goes up. A fault injected then begins right after a renewal.
    pub fn await_keep_alive(&self, key: &str) {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let got = self.call(
            "/v3/kv/range",
            &serde_json::json!({"key": b64.encode(key)}).to_string(),
        );
        let lease = got["kvs"][0]["lease"]
            .as_str()
            .unwrap_or_else(|| panic!("{key} is on a lease: {got}"))
            .to_string();
        let ttl = || {
            let v = self.call(
                "/v3/lease/timetolive",
                &serde_json::json!({ "ID": lease }).to_string(),
            );
            v["TTL"].as_str().unwrap_or("-1").parse::<i64>().unwrap()
        };
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut last = ttl();
        while std::time::Instant::now() < end {
            std::thread::sleep(std::time::Duration::from_millis(100));
            let now = ttl();
            if now > last {
                return;
            }
            last = now;
        }
        panic!("the lease of {key} was not kept alive within 10 s");
    }

    /// The keys (and values) under `prefix`, in key order.
    pub fn keys(&self, prefix: &str) -> Vec<(String, String)> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut end = prefix.as_bytes().to_vec();
        *end.last_mut().unwrap() += 1;
        let body = serde_json::json!({"key": b64.encode(prefix), "range_end": b64.encode(end)});
        let v = self.call("/v3/kv/range", &body.to_string());
        v["kvs"]
            .as_array()
            .map(|kvs| {
                kvs.iter()
                    .map(|kv| {
                        let get = |f: &str| {
                            String::from_utf8(b64.decode(kv[f].as_str().unwrap_or("")).unwrap())
                                .unwrap()
                        };
                        (get("key"), get("value"))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Etcd3 {
    fn drop(&mut self) {
        let _ = self.script(&["down"]);
    }
}

/// The bed of a host-fleet test on etcd: a three-member cluster on `port` and three hosts
/// serving 1.0.0. `None` (after saying why) where the test cannot run: not root, or no etcd.
pub fn bed(test: &str, port: u16) -> Option<(Etcd3, Fleet)> {
    if !crate::netns::root_or_skip(test) {
        return None;
    }
    let etcd = Etcd3::up(port)?;
    let fleet = Fleet::start(3);
    fleet.install("1.0.0");
    Some((etcd, fleet))
}

/// Local records (of the machine that wrote them) that etcd does not hold at their place: the
/// fault matrix's `lost`.
pub fn lost(local: &[String], stored: &[String]) -> u32 {
    local
        .iter()
        .enumerate()
        .filter(|(i, r)| stored.get(*i) != Some(r))
        .count() as u32
}

/// Hosts whose agent's active version or whose service's answer is not `version`: the fault
/// matrix's `unknown` once a rollout has ended on `version`.
pub fn unknown(fleet: &Fleet, version: &str) -> u32 {
    let active = fleet.agent_versions();
    let served = fleet.served_versions();
    active
        .iter()
        .zip(&served)
        .filter(|(a, s)| a.as_deref() != Some(version) || s.as_deref() != Ok(version))
        .count() as u32
}

/// One machine of a team: its own state dir and host name, the etcd cluster's URL.
pub struct Machine {
    pub name: &'static str,
    pub state: PathBuf,
    dir: PathBuf,
    url: String,
    /// In a pid namespace of its own (`unshare`), as another machine is: it cannot judge the
    /// other's processes dead, so it waits for their lease to end.
    apart: bool,
}

impl Machine {
    pub fn new(fleet: &Fleet, etcd: &Etcd3, name: &'static str, apart: bool) -> Machine {
        Machine {
            name,
            state: fleet.dir.join(format!("state-{name}")),
            dir: fleet.dir.clone(),
            url: etcd.url.clone(),
            apart,
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = if self.apart {
            let mut c = Command::new("unshare");
            c.args(["--pid", "--fork", "--mount-proc", ROLLGATE]);
            c
        } else {
            Command::new(ROLLGATE)
        };
        c.args(args)
            .current_dir(&self.dir)
            .env("ROLLGATE_STATE", &self.state)
            .env("ROLLGATE_STATE_URL", &self.url)
            .env("HOSTNAME", format!("machine-{}", self.name))
            .env_remove("ROLLGATE_LOG")
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run rollgate")
    }

    /// `apply -f MANIFEST -o json` on this machine, in the background.
    pub fn apply(&self, manifest: &Path) -> Running {
        Running::spawn(self.command(&["apply", "-f", manifest.to_str().unwrap(), "-o", "json"]))
    }

    /// `resume APP` once the app's lock is free (another machine's lease ended): tried every
    /// second while it is refused (exit 1), for at most 30 s.
    pub fn resume_when_free(&self) -> Output {
        let mut waited = 0;
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
            waited += 1;
            let out = self.run(&["resume", crate::fleet::APP, "-o", "plain"]);
            if out.status.code() != Some(1) || waited > 30 {
                return out;
            }
        }
    }

    /// `history APP -o json` on this machine (from etcd), its rollouts oldest first.
    pub fn history_of(&self, app: &str) -> Vec<serde_json::Value> {
        let out = self.run(&["history", app, "-o", "json"]);
        assert_eq!(out.status.code(), Some(0), "history: {}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The records of rollout `id` of `app` in this machine's local journal (JSON), in order.
    pub fn journal_of(&self, app: &str, id: &str) -> Vec<String> {
        rollgate::state::Store::at(&self.state)
            .read(app)
            .unwrap()
            .into_iter()
            .filter(|r| r.event.rollout() == id)
            .map(|r| serde_json::to_string(&r).unwrap())
            .collect()
    }

    /// The app's last rollout, as this machine's `history` shows it, went to `to` with `outcome`.
    pub fn assert_last(&self, to: &str, outcome: &str) {
        let last = self.history().pop().unwrap();
        assert_eq!(
            (last["to"].as_str(), last["outcome"].as_str()),
            (Some(to), Some(outcome)),
            "{}: {last}",
            self.name
        );
    }

    pub fn history(&self) -> Vec<serde_json::Value> {
        self.history_of(crate::fleet::APP)
    }
}
