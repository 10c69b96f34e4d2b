//! A small etcd v3 client over etcd's JSON gateway (`POST /v3/...` on each member's client port,
//! served by etcd itself): ranges, transactions, leases; the team state on it is in [`team`].
//!
//! Why the gateway and not the `etcd-client` crate (tonic): that crate generates its gRPC code at
//! build time with `protoc`, and brings tonic and prost; the gateway speaks the same v3 API
//! (same revisions, leases and transactions) as JSON over HTTP, through the reqwest and rustls
//! that rollgate already uses. Keys and values are base64 in the JSON; int64 fields are strings.

pub mod team;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use super::StateError;
use crate::spec::state::EtcdSpec;

/// Seconds an etcd lease lives without a keep-alive: another machine takes the lock this long
/// after its holder stopped renewing it (as the Kubernetes Lease).
pub const LEASE_SECONDS: i64 = 15;
/// Each request's own deadline; a member that does not answer in time is skipped for the next.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(4);

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd TLS file {}: {why}", path.display())]
    Tls { path: PathBuf, why: String },
    #[error("etcd client: {0}")]
    Client(String),
    #[error("etcd {path}: no member answered ({endpoints}): {last}")]
    Unreachable {
        path: &'static str,
        endpoints: String,
        last: String,
    },
    #[error(
        "{app} is locked by {holder}: another rollout of it is running (etcd key {key}; its lease ends in {ttl}s unless renewed)"
    )]
    Locked {
        app: String,
        holder: String,
        key: String,
        ttl: i64,
    },
    #[error("etcd key {key}: {message}")]
    Corrupt { key: String, message: String },
    #[error("stopped: {0}")]
    Lost(String),
    #[error("stopped: the journal could not be written to etcd for 10s: {0}")]
    Mirror(String),
    #[error("{app} has no rollouts in etcd (no keys under {prefix})")]
    NoState { app: String, prefix: String },
    /// The lock key kept changing while rollgate tried to take it.
    #[error("{0}")]
    Busy(String),
    #[error(transparent)]
    State(#[from] StateError),
}

pub type Result<T, E = EtcdError> = std::result::Result<T, E>;

/// A key-value pair as the gateway returns it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Kv {
    #[serde(default, deserialize_with = "bytes")]
    pub key: Vec<u8>,
    #[serde(default, deserialize_with = "bytes")]
    pub value: Vec<u8>,
    #[serde(default, deserialize_with = "int")]
    pub create_revision: i64,
    #[serde(default, deserialize_with = "int")]
    pub lease: i64,
}

impl Kv {
    pub fn key_str(&self) -> String {
        String::from_utf8_lossy(&self.key).into_owned()
    }
}

#[derive(Debug, Default, Deserialize)]
struct Header {
    #[serde(default, deserialize_with = "int")]
    revision: i64,
}

#[derive(Debug, Default, Deserialize)]
struct RangeResponse {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    kvs: Vec<Kv>,
}

/// A transaction's outcome: whether its comparisons held, and its range results.
#[derive(Debug, Default, Deserialize)]
pub struct TxnResponse {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    pub succeeded: bool,
    #[serde(default)]
    responses: Vec<Value>,
}

impl TxnResponse {
    /// The store's revision after the transaction (a key it created has this create_revision).
    pub fn revision(&self) -> i64 {
        self.header.revision
    }

    /// The pairs read by the `i`th operation (a range).
    pub fn kvs(&self, i: usize) -> Vec<Kv> {
        self.responses
            .get(i)
            .and_then(|r| r.get("response_range"))
            .and_then(|r| r.get("kvs"))
            .and_then(|k| serde_json::from_value(k.clone()).ok())
            .unwrap_or_default()
    }
}

fn int<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<i64, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => s.parse().map_err(serde::de::Error::custom),
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| serde::de::Error::custom("not an int64")),
        _ => Ok(0),
    }
}

fn bytes<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<u8>, D::Error> {
    let s = String::deserialize(d)?;
    B64.decode(s).map_err(serde::de::Error::custom)
}

fn b64(s: &[u8]) -> String {
    B64.encode(s)
}

/// The end of the range of every key starting with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Operations and comparisons of a transaction, as the gateway takes them.
pub mod op {
    use super::*;

    pub fn put(key: &str, value: &str, lease: i64) -> Value {
        let mut put = json!({"key": b64(key.as_bytes()), "value": b64(value.as_bytes())});
        if lease != 0 {
            put["lease"] = json!(lease.to_string());
        }
        json!({ "request_put": put })
    }

    pub fn get(key: &str) -> Value {
        json!({"request_range": {"key": b64(key.as_bytes())}})
    }

    pub fn delete(key: &str) -> Value {
        json!({"request_delete_range": {"key": b64(key.as_bytes())}})
    }

    pub fn delete_prefix(prefix: &str) -> Value {
        json!({"request_delete_range": {
            "key": b64(prefix.as_bytes()),
            "range_end": b64(&prefix_end(prefix)),
        }})
    }

    /// The key's create_revision is `rev` (0: the key does not exist).
    pub fn created_at(key: &str, rev: i64) -> Value {
        json!({"target": "CREATE", "result": "EQUAL", "key": b64(key.as_bytes()),
               "create_revision": rev.to_string()})
    }
}

/// An etcd cluster's client endpoints, tried in turn.
#[derive(Clone)]
pub struct Etcd {
    http: reqwest::Client,
    endpoints: Arc<Vec<String>>,
    /// The member that answered last: asked first next time.
    current: Arc<AtomicUsize>,
}

impl Etcd {
    pub fn new(spec: &EtcdSpec) -> Result<Etcd> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(2));
        if let Some(tls) = &spec.tls {
            let read = |p: &PathBuf| {
                std::fs::read(p).map_err(|e| EtcdError::Tls {
                    path: p.clone(),
                    why: e.to_string(),
                })
            };
            if let Some(ca) = &tls.ca {
                let cert =
                    reqwest::Certificate::from_pem(&read(ca)?).map_err(|e| EtcdError::Tls {
                        path: ca.clone(),
                        why: format!("not a PEM certificate: {e}"),
                    })?;
                builder = builder
                    .tls_built_in_root_certs(false)
                    .add_root_certificate(cert);
            }
            if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
                let mut pem = read(cert)?;
                pem.push(b'\n');
                pem.extend(read(key)?);
                let identity = reqwest::Identity::from_pem(&pem).map_err(|e| EtcdError::Tls {
                    path: cert.clone(),
                    why: format!("not a PEM certificate and key: {e}"),
                })?;
                builder = builder.identity(identity);
            }
        }
        let http = builder
            .build()
            .map_err(|e| EtcdError::Client(crate::kube::chain(&e)))?;
        Ok(Etcd {
            http,
            endpoints: Arc::new(
                spec.endpoints
                    .iter()
                    .map(|e| e.trim_end_matches('/').to_string())
                    .collect(),
            ),
            current: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// POSTs `body` to `path`, trying each member once from the last one that answered: a member
    /// that is down, cut off or without a leader is skipped.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        path: &'static str,
        body: Value,
    ) -> Result<T> {
        let n = self.endpoints.len();
        let first = self.current.load(Ordering::Relaxed);
        let mut last = String::new();
        for k in 0..n {
            let i = (first + k) % n;
            let url = format!("{}{path}", self.endpoints[i]);
            let sent = self.http.post(&url).json(&body).send().await;
            let response = match sent {
                Ok(r) => r,
                Err(e) => {
                    last = format!("{}: {}", self.endpoints[i], crate::kube::chain(&e));
                    continue;
                }
            };
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            if !status.is_success() {
                last = format!("{}: HTTP {status}: {}", self.endpoints[i], text.trim());
                continue;
            }
            self.current.store(i, Ordering::Relaxed);
            return serde_json::from_str(&text).map_err(|e| EtcdError::Corrupt {
                key: path.to_string(),
                message: format!("{e}: {text}"),
            });
        }
        Err(EtcdError::Unreachable {
            path,
            endpoints: self.endpoints.join(", "),
            last,
        })
    }

    /// Every pair whose key starts with `prefix`, sorted by key, and the store's revision.
    pub async fn range_prefix(&self, prefix: &str) -> Result<(Vec<Kv>, i64)> {
        self.range_since(prefix, 0).await
    }

    /// The pairs under `prefix` created after revision `after`.
    pub async fn range_since(&self, prefix: &str, after: i64) -> Result<(Vec<Kv>, i64)> {
        let mut body =
            json!({"key": b64(prefix.as_bytes()), "range_end": b64(&prefix_end(prefix))});
        if after > 0 {
            body["min_create_revision"] = json!((after + 1).to_string());
        }
        let r: RangeResponse = self.call("/v3/kv/range", body).await?;
        Ok((r.kvs, r.header.revision))
    }

    /// One key, if it exists.
    pub async fn get(&self, key: &str) -> Result<Option<Kv>> {
        let r: RangeResponse = self
            .call("/v3/kv/range", json!({"key": b64(key.as_bytes())}))
            .await?;
        Ok(r.kvs.into_iter().next())
    }

    pub async fn txn(
        &self,
        compare: Vec<Value>,
        success: Vec<Value>,
        failure: Vec<Value>,
    ) -> Result<TxnResponse> {
        self.call(
            "/v3/kv/txn",
            json!({"compare": compare, "success": success, "failure": failure}),
        )
        .await
    }

    /// A new lease of `ttl` seconds: its id.
    pub async fn grant(&self, ttl: i64) -> Result<i64> {
        #[derive(Deserialize)]
        struct Grant {
            #[serde(rename = "ID", default, deserialize_with = "int")]
            id: i64,
        }
        let g: Grant = self
            .call("/v3/lease/grant", json!({"TTL": ttl.to_string()}))
            .await?;
        Ok(g.id)
    }

    /// Renews a lease: its remaining seconds, 0 when it has expired (or was revoked).
    pub async fn keep_alive(&self, id: i64) -> Result<i64> {
        #[derive(Deserialize, Default)]
        struct Ttl {
            #[serde(rename = "TTL", default, deserialize_with = "int")]
            ttl: i64,
        }
        #[derive(Deserialize)]
        struct Answer {
            #[serde(default)]
            result: Ttl,
        }
        let a: Answer = self
            .call("/v3/lease/keepalive", json!({"ID": id.to_string()}))
            .await?;
        Ok(a.result.ttl)
    }

    /// A lease's remaining seconds (-1 when it no longer exists).
    pub async fn time_to_live(&self, id: i64) -> Result<i64> {
        #[derive(Deserialize)]
        struct Ttl {
            #[serde(rename = "TTL", default, deserialize_with = "int")]
            ttl: i64,
        }
        let t: Ttl = self
            .call("/v3/lease/timetolive", json!({"ID": id.to_string()}))
            .await?;
        Ok(t.ttl)
    }

    /// Ends a lease at once: the keys attached to it go.
    pub async fn revoke(&self, id: i64) -> Result<()> {
        let _: Value = self
            .call("/v3/lease/revoke", json!({"ID": id.to_string()}))
            .await?;
        Ok(())
    }

    pub fn endpoints(&self) -> String {
        self.endpoints.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_range_ends_after_its_last_key() {
        assert_eq!(prefix_end("/r/web/"), b"/r/web0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }

    #[test]
    fn gateway_int64s_are_strings() {
        let kv: Kv = serde_json::from_str(
            r#"{"key":"L3QvYQ==","create_revision":"42","value":"eA==","lease":"7"}"#,
        )
        .unwrap();
        assert_eq!(
            (kv.key_str().as_str(), kv.create_revision, kv.lease),
            ("/t/a", 42, 7)
        );
        assert_eq!(kv.value, b"x");
    }
}
