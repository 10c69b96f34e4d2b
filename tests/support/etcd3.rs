//! A three-member etcd cluster on loopback for one test (`tests/cluster/etcd3.sh`), on ports and
//! a data dir of its own, stopped when dropped.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Etcd3 {
    dir: PathBuf,
    port: u16,
    /// `etcd://127.0.0.1:P0,127.0.0.1:P1,127.0.0.1:P2/rollgate` for `ROLLGATE_STATE_URL`.
    pub url: String,
    /// The client URLs, comma-separated.
    pub endpoints: String,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cluster/etcd3.sh")
}

impl Etcd3 {
    /// Starts members 0-2 with client ports `port`, `port+2`, `port+4` (peers one above each).
    pub fn up(port: u16) -> Etcd3 {
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
        };
        let out = etcd.script(&["up"]);
        assert!(
            out.status.success(),
            "etcd3.sh up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
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

    /// A member's client URL.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.port + 2 * i as u16)
    }

    /// POSTs `body` to the gateway `path` of member 0 (curl) and parses the answer.
    pub fn call(&self, path: &str, body: &str) -> serde_json::Value {
        for i in 0..3 {
            let out = Command::new("curl")
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
