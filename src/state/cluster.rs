//! Team state in the cluster: the journal mirrored into a ConfigMap, the app's lock as a Lease,
//! and control requests (promote, pause, abort) from any machine with the kubeconfig.
//!
//! The local fsynced journal stays the write-ahead log. For a Kubernetes target the ConfigMap
//! `rollgate-<app>` in the target's namespace mirrors it: the records and resolved manifests of the
//! last [`KEEP_ROLLOUTS`] rollouts, written with optimistic concurrency (resourceVersion) by a
//! background task after each local append and awaited at every step boundary, so another machine
//! never sees less than the last completed step. The Lease `rollgate-<app>` is the lock. While it is
//! held, a [`Fence`] lets the process's writes out only within [`WRITE_WINDOW`] of the start of the
//! last successful renewal: a process frozen past its Lease writes nothing when it wakes, not even
//! before its renewal task has run.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ObjectMeta, PostParams, Preconditions};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde::{Deserialize, Serialize};

use super::{Actor, Control, Record, StateError, Store};

/// The Lease's duration: another machine takes over a Lease not renewed for this long.
pub const LEASE_SECONDS: i32 = 15;
/// How often the holder renews its Lease.
pub const RENEW_EVERY: Duration = Duration::from_secs(5);
/// How long after the start of its last successful renewal a holder still writes: the Lease
/// duration less 5 s for clock skew between machines and request latency.
pub const WRITE_WINDOW: Duration = Duration::from_secs(10);
/// Rollouts whose records and manifests the ConfigMap keeps (the local journal keeps them all).
pub const KEEP_ROLLOUTS: usize = 10;
/// Older rollouts are dropped from the ConfigMap beyond this size (the API's limit is 1 MiB).
const MAX_BYTES: usize = 900 * 1024;
/// Control requests the ConfigMap keeps.
const KEEP_CONTROLS: usize = 50;
const JOURNAL_KEY: &str = "journal.jsonl";
const CONTROLS_KEY: &str = "controls.jsonl";
const MANIFEST_PREFIX: &str = "rollout.";
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "rollgate");
const APP_LABEL: &str = "rollgate.dev/app";
/// The field manager of every write.
pub const FIELD_MANAGER: &str = "rollgate";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("kubeconfig: {0}")]
    Config(String),
    #[error("--context {name}: the kubeconfig has no such context (it has: {known})")]
    UnknownContext { name: String, known: String },
    #[error("{action} {kind} {namespace}/{name}")]
    Api {
        action: &'static str,
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error(
        "{app} is locked by {holder}: another rollout of it is running (Lease {namespace}/{name}, renewed {age}s ago; it is free {LEASE_SECONDS}s after its last renewal)"
    )]
    Locked {
        app: String,
        holder: String,
        namespace: String,
        name: String,
        age: i64,
    },
    #[error("ConfigMap {namespace}/{name}, key {key}, line {line}: {message}")]
    Corrupt {
        namespace: String,
        name: String,
        key: String,
        line: usize,
        message: String,
    },
    #[error(
        "the journal of {app}'s last rollout is {bytes} bytes, more than a ConfigMap holds ({MAX_BYTES})"
    )]
    TooLarge { app: String, bytes: usize },
    #[error("stopped: {0}")]
    Lost(String),
    #[error(
        "stopped: the journal could not be written to ConfigMap {namespace}/{name} for 10s: {why}"
    )]
    Mirror {
        namespace: String,
        name: String,
        why: String,
    },
    #[error("{app} has no rollouts in namespace {namespace} (ConfigMap {name} does not exist)")]
    NoState {
        app: String,
        namespace: String,
        name: String,
    },
    /// The object kept changing under optimistic concurrency.
    #[error("{0}")]
    Busy(String),
    #[error(transparent)]
    State(#[from] StateError),
}

pub type Result<T, E = ClusterError> = std::result::Result<T, E>;

/// The kubeconfig, read once per process, and the fence its writing clients share.
#[derive(Clone)]
pub struct Kube {
    config: kube::Config,
    fence: Fence,
}

impl Kube {
    /// Reads the kubeconfig (`KUBECONFIG`, else `~/.kube/config`, else in-cluster), at `context`
    /// when given, else at its current context.
    pub async fn connect(context: Option<&str>) -> Result<Kube> {
        let mut config = match context {
            Some(name) => {
                let file = kube::config::Kubeconfig::read()
                    .map_err(|e| ClusterError::Config(chain(&e)))?;
                if !file.contexts.iter().any(|c| c.name == name) {
                    let known: Vec<&str> = file.contexts.iter().map(|c| c.name.as_str()).collect();
                    return Err(ClusterError::UnknownContext {
                        name: name.to_string(),
                        known: known.join(", "),
                    });
                }
                let options = kube::config::KubeConfigOptions {
                    context: Some(name.to_string()),
                    ..Default::default()
                };
                kube::Config::from_custom_kubeconfig(file, &options)
                    .await
                    .map_err(|e| ClusterError::Config(format!("--context {name}: {}", chain(&e))))?
            }
            None => kube::Config::infer()
                .await
                .map_err(|e| ClusterError::Config(chain(&e)))?,
        };
        config.connect_timeout = Some(Duration::from_secs(10));
        Ok(Kube {
            config,
            fence: Fence::default(),
        })
    }

    /// The kubeconfig context's namespace, else `default`.
    pub fn default_namespace(&self) -> &str {
        &self.config.default_namespace
    }

    /// A client for reads, the Lease, and control requests (which any machine may send).
    pub fn client(&self) -> Result<Client> {
        Client::try_from(self.config.clone())
            .map_err(|e| ClusterError::Config(format!("kubernetes client: {}", chain(&e))))
    }

    /// A client whose writes go out only while this process holds the app's Lease.
    pub fn fenced(&self) -> Result<Client> {
        let builder = kube::client::ClientBuilder::try_from(self.config.clone())
            .map_err(|e| ClusterError::Config(format!("kubernetes client: {}", chain(&e))))?;
        Ok(builder.with_layer(&FenceLayer(self.fence.clone())).build())
    }

    pub fn fence(&self) -> &Fence {
        &self.fence
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        let text = src.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = src.source();
    }
    s
}

/// Whether this process may write: shut until a Lease is taken, open until a deadline that each
/// renewal moves on, lost for good once another holder is seen.
#[derive(Debug, Clone, Default)]
pub struct Fence(Arc<Mutex<Gate>>);

#[derive(Debug, Default)]
enum Gate {
    #[default]
    Shut,
    Until(Instant),
    Lost(String),
}

impl Fence {
    /// `Ok` when a write may go out now, else why not.
    pub fn check(&self) -> std::result::Result<(), String> {
        match &*self.0.lock().expect("fence lock") {
            Gate::Shut => Err("this process does not hold the app's Lease".into()),
            Gate::Until(deadline) if Instant::now() < *deadline => Ok(()),
            Gate::Until(_) => Err(format!(
                "the Lease was not renewed for {}s, so another machine may have taken it over",
                WRITE_WINDOW.as_secs()
            )),
            Gate::Lost(why) => Err(why.clone()),
        }
    }

    /// Whether the Lease went to someone else: no renewal can reopen the fence.
    pub fn is_lost(&self) -> bool {
        matches!(*self.0.lock().expect("fence lock"), Gate::Lost(_))
    }

    fn open_until(&self, deadline: Instant) {
        let mut gate = self.0.lock().expect("fence lock");
        if !matches!(*gate, Gate::Lost(_)) {
            *gate = Gate::Until(deadline);
        }
    }

    fn lose(&self, why: String) {
        *self.0.lock().expect("fence lock") = Gate::Lost(why);
    }

    fn shut(&self) {
        let mut gate = self.0.lock().expect("fence lock");
        if !matches!(*gate, Gate::Lost(_)) {
            *gate = Gate::Shut;
        }
    }
}

/// Rejects mutating requests (anything but GET, HEAD and OPTIONS, and access reviews) while the
/// fence is not open.
#[derive(Clone)]
struct FenceLayer(Fence);

impl<S> tower::Layer<S> for FenceLayer {
    type Service = Fenced<S>;
    fn layer(&self, inner: S) -> Fenced<S> {
        Fenced {
            inner,
            fence: self.0.clone(),
        }
    }
}

#[derive(Clone)]
struct Fenced<S> {
    inner: S,
    fence: Fence,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, B> tower::Service<hyper::Request<B>> for Fenced<S>
where
    S: tower::Service<hyper::Request<B>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = std::result::Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: hyper::Request<B>) -> Self::Future {
        let reads = [
            hyper::Method::GET,
            hyper::Method::HEAD,
            hyper::Method::OPTIONS,
        ];
        // An access review is a question, not a change: the target asks before it takes the lock.
        let question = request
            .uri()
            .path()
            .starts_with("/apis/authorization.k8s.io/");
        if !reads.contains(request.method())
            && !question
            && let Err(why) = self.fence.check()
        {
            let message = format!("write refused: {why}");
            return Box::pin(async move { Err(message.into()) });
        }
        let call = self.inner.call(request);
        Box::pin(async move { call.await.map_err(Into::into) })
    }
}

/// A control request as kept in the ConfigMap, numbered so a runner takes each once.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Sent {
    seq: u64,
    #[serde(flatten)]
    control: Control,
}

/// What the ConfigMap holds for an app.
#[derive(Debug, Default)]
pub struct Mirror {
    pub records: Vec<Record>,
    /// Rollout id -> resolved manifest (JSON).
    pub manifests: BTreeMap<String, String>,
    controls: Vec<Sent>,
}

/// One app's state in one namespace.
pub struct Remote {
    app: String,
    namespace: String,
    name: String,
    /// Reads, and control requests from machines that do not hold the Lease.
    config_maps: Api<ConfigMap>,
    /// The mirror's writes: only while the Lease is held.
    fenced_maps: Api<ConfigMap>,
    leases: Api<Lease>,
    fence: Fence,
}

fn params() -> PostParams {
    PostParams {
        dry_run: false,
        field_manager: Some(FIELD_MANAGER.into()),
    }
}

fn labels(app: &str) -> BTreeMap<String, String> {
    [
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
        (APP_LABEL.to_string(), app.to_string()),
    ]
    .into()
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_conflict())
}

fn is_already_exists(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_already_exists())
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_not_found())
}

impl Remote {
    /// The ConfigMap and Lease `rollgate-<app>` in `namespace`.
    pub fn new(kube: &Kube, namespace: &str, app: &str) -> Result<Remote> {
        let client = kube.client()?;
        Ok(Remote {
            app: app.to_string(),
            namespace: namespace.to_string(),
            name: format!("rollgate-{app}"),
            config_maps: Api::namespaced(client.clone(), namespace),
            fenced_maps: Api::namespaced(kube.fenced()?, namespace),
            leases: Api::namespaced(client, namespace),
            fence: kube.fence.clone(),
        })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// `ConfigMap <namespace>/rollgate-<app>`, for messages.
    pub fn describe(&self) -> String {
        format!("ConfigMap {}/{}", self.namespace, self.name)
    }

    fn api_error(
        &self,
        action: &'static str,
        kind: &'static str,
        source: kube::Error,
    ) -> ClusterError {
        ClusterError::Api {
            action,
            kind,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            source: Box::new(source),
        }
    }

    /// What the cluster holds for the app; `None` when it never ran in this namespace.
    pub async fn fetch(&self) -> Result<Option<Mirror>> {
        let cm = self
            .config_maps
            .get_opt(&self.name)
            .await
            .map_err(|e| self.api_error("reading", "ConfigMap", e))?;
        cm.map(|cm| self.parse(&cm)).transpose()
    }

    fn parse(&self, cm: &ConfigMap) -> Result<Mirror> {
        let data = cm.data.clone().unwrap_or_default();
        let corrupt = |key: &str, line: usize, e: serde_json::Error| ClusterError::Corrupt {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            key: key.to_string(),
            line,
            message: e.to_string(),
        };
        let mut mirror = Mirror::default();
        for (key, text) in &data {
            if key == JOURNAL_KEY {
                for (i, line) in text.lines().enumerate() {
                    if !line.trim().is_empty() {
                        mirror
                            .records
                            .push(serde_json::from_str(line).map_err(|e| corrupt(key, i + 1, e))?);
                    }
                }
            } else if key == CONTROLS_KEY {
                for (i, line) in text.lines().enumerate() {
                    if !line.trim().is_empty() {
                        mirror
                            .controls
                            .push(serde_json::from_str(line).map_err(|e| corrupt(key, i + 1, e))?);
                    }
                }
            } else if let Some(id) = key
                .strip_prefix(MANIFEST_PREFIX)
                .and_then(|k| k.strip_suffix(".json"))
            {
                mirror.manifests.insert(id.to_string(), text.clone());
            }
        }
        Ok(mirror)
    }

    /// The cluster's records merged with the local journal, without writing the journal (another
    /// process here may be appending to it). Manifests this machine lacks are saved locally.
    /// `None` when the app has no state in this namespace.
    pub async fn records(&self, store: &Store) -> Result<Option<Vec<Record>>> {
        let Some(mirror) = self.fetch().await? else {
            return Ok(None);
        };
        self.save_manifests(store, &mirror)?;
        let local = self.scope(store, store.read(&self.app)?);
        Ok(Some(merge(&local, &mirror.records).records))
    }

    /// The records of the app's rollouts in this namespace: the local journal is per app name, and
    /// one name may be rolled out in several namespaces.
    pub fn scope(&self, store: &Store, records: Vec<Record>) -> Vec<Record> {
        in_namespace(store, &self.app, &self.namespace, records)
    }

    /// Brings the cluster's records into the local journal. The caller holds the app's local lock
    /// and its Lease. Local records the cluster contradicts are kept aside, in
    /// `journal.discarded-<ms>.jsonl`. Returns whether the cluster had state for the app.
    pub async fn pull(&self, store: &Store) -> Result<bool> {
        let Some(mirror) = self.fetch().await? else {
            return Ok(false);
        };
        self.save_manifests(store, &mirror)?;
        let local = store.read(&self.app)?;
        let merged = merge(&local, &mirror.records);
        if merged.records != local {
            if !merged.discarded.is_empty() {
                store.set_aside(
                    &self.app,
                    &format!("journal.discarded-{}.jsonl", super::now_ms()),
                    &merged.discarded,
                )?;
            }
            // Through the store, so a compacted journal keeps its header of counts.
            store.replace_records(&self.app, &merged.records)?;
        }
        Ok(true)
    }

    fn save_manifests(&self, store: &Store, mirror: &Mirror) -> Result<()> {
        for (id, text) in &mirror.manifests {
            let path = store
                .app_dir(&self.app)
                .join("rollouts")
                .join(format!("{id}.json"));
            if path.exists() {
                continue;
            }
            let rollout: crate::spec::Rollout =
                serde_json::from_str(text).map_err(|e| ClusterError::Corrupt {
                    namespace: self.namespace.clone(),
                    name: self.name.clone(),
                    key: format!("{MANIFEST_PREFIX}{id}.json"),
                    line: e.line(),
                    message: e.to_string(),
                })?;
            store.save_manifest(&self.app, id, &rollout)?;
        }
        Ok(())
    }

    /// Appends a control request for whichever machine runs the rollout.
    pub async fn send_control(&self, control: &Control) -> Result<()> {
        for _ in 0..20 {
            let Some(mut cm) = self
                .config_maps
                .get_opt(&self.name)
                .await
                .map_err(|e| self.api_error("reading", "ConfigMap", e))?
            else {
                return Err(ClusterError::NoState {
                    app: self.app.clone(),
                    namespace: self.namespace.clone(),
                    name: self.name.clone(),
                });
            };
            let mut controls = self.parse(&cm)?.controls;
            let seq = controls.last().map_or(1, |c| c.seq + 1);
            controls.push(Sent {
                seq,
                control: control.clone(),
            });
            let skip = controls.len().saturating_sub(KEEP_CONTROLS);
            let text: String = controls[skip..]
                .iter()
                .map(|c| serde_json::to_string(c).expect("controls serialize") + "\n")
                .collect();
            cm.data
                .get_or_insert_with(BTreeMap::new)
                .insert(CONTROLS_KEY.into(), text);
            match self.config_maps.replace(&self.name, &params(), &cm).await {
                Ok(_) => return Ok(()),
                Err(e) if is_conflict(&e) => continue,
                Err(e) => return Err(self.api_error("writing", "ConfigMap", e)),
            }
        }
        Err(ClusterError::Busy(format!(
            "{} changed 20 times while a control request was being added: try again",
            self.describe()
        )))
    }

    /// Takes the app's Lease (or says who holds it), opens the fence, and starts renewing the
    /// Lease, mirroring the local journal, and taking control requests from the cluster. The caller
    /// holds the app's local lock.
    pub async fn acquire(&self, store: &Store, actor: &Actor) -> Result<Session> {
        let identity = match boot_id() {
            Some(boot) => format!("{actor} pid {} boot {boot}", std::process::id()),
            None => format!("{actor} pid {}", std::process::id()),
        };
        let started = Instant::now();
        let (lease, took_over) = self.take_lease(&identity).await?;
        self.fence.open_until(started + WRITE_WINDOW);
        let seen = match self.fetch().await? {
            Some(mirror) => mirror.controls.last().map_or(0, |c| c.seq),
            None => 0,
        };
        let (pushed, _) = tokio::sync::watch::channel(0);
        let shared = Arc::new(Shared {
            app: self.app.clone(),
            namespace: self.namespace.clone(),
            identity,
            fence: self.fence.clone(),
            written: AtomicU64::new(0),
            wake: tokio::sync::Notify::new(),
            pushed,
            push_error: Mutex::new(None),
            lease: Mutex::new((lease.metadata.uid.clone(), lease.metadata.resource_version)),
        });
        let tasks = vec![
            tokio::spawn(renew_loop(
                shared.clone(),
                self.leases.clone(),
                self.name.clone(),
            )),
            tokio::spawn(push_loop(
                shared.clone(),
                store.clone(),
                self.fenced_maps.clone(),
                self.name.clone(),
            )),
            tokio::spawn(control_loop(
                shared.clone(),
                store.clone(),
                self.config_maps.clone(),
                self.name.clone(),
                seen,
            )),
        ];
        Ok(Session {
            shared,
            tasks,
            leases: self.leases.clone(),
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            took_over,
        })
    }

    /// Creates the Lease, or takes over an expired one with a resourceVersion-guarded update, so
    /// of two machines racing for it exactly one wins.
    async fn take_lease(&self, identity: &str) -> Result<(Lease, Option<String>)> {
        for _ in 0..5 {
            let now = MicroTime(Timestamp::now());
            let fresh = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    labels: Some(labels(&self.app)),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(identity.to_string()),
                    lease_duration_seconds: Some(LEASE_SECONDS),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now.clone()),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            match self.leases.create(&params(), &fresh).await {
                Ok(lease) => return Ok((lease, None)),
                Err(e) if is_already_exists(&e) => {}
                Err(e) => return Err(self.api_error("creating", "Lease", e)),
            }
            let Some(mut current) = self
                .leases
                .get_opt(&self.name)
                .await
                .map_err(|e| self.api_error("reading", "Lease", e))?
            else {
                continue; // released in between: create it again
            };
            let spec = current.spec.clone().unwrap_or_default();
            let age = age_seconds(&spec);
            let holder = spec.holder_identity.clone().unwrap_or_default();
            let dead = holder_gone(&holder);
            if !expired(&spec) && !dead {
                return Err(ClusterError::Locked {
                    app: self.app.clone(),
                    holder,
                    namespace: self.namespace.clone(),
                    name: self.name.clone(),
                    age,
                });
            }
            current.spec = Some(LeaseSpec {
                holder_identity: Some(identity.to_string()),
                lease_duration_seconds: Some(LEASE_SECONDS),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(spec.lease_transitions.unwrap_or(0) + 1),
                ..LeaseSpec::default()
            });
            match self.leases.replace(&self.name, &params(), &current).await {
                Ok(lease) => {
                    let note = if dead {
                        format!("took over the lock from {holder}: that process is gone")
                    } else {
                        format!(
                            "took over the lock from {holder}: its Lease was not renewed for {age}s"
                        )
                    };
                    return Ok((lease, Some(note)));
                }
                Err(e) if is_conflict(&e) => continue,
                Err(e) => return Err(self.api_error("taking over", "Lease", e)),
            }
        }
        Err(ClusterError::Busy(format!(
            "Lease {}/{} changed 5 times while rollgate tried to take it: try again",
            self.namespace, self.name
        )))
    }
}

/// Where this process runs, as far as its pids mean anything: this boot of the kernel
/// (`/proc/sys/kernel/random/boot_id`, 12 hex digits) and this pid namespace (its inode), e.g.
/// `1c2f3e4d5a6b.4026531836`. A Lease holder names it, so that a process of the same boot and pid
/// namespace can be known dead; containers on one host share the boot but not the pid namespace.
fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let hex: String = id
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(12)
        .collect();
    let ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
    let ns: String = ns
        .to_string_lossy()
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    (hex.len() == 12 && !ns.is_empty()).then(|| format!("{hex}.{ns}"))
}

/// Whether `holder` ("<actor> pid <pid> boot <boot>") is a process of this boot and pid namespace
/// that no longer runs: its Lease may be taken at once, as a local lock left by a dead process is.
/// A holder from another machine, boot or container (or without a boot) is never judged here: its
/// Lease must expire.
fn holder_gone(holder: &str) -> bool {
    let Some(ours) = boot_id() else {
        return false;
    };
    let mut words = holder.split_whitespace().rev();
    let (Some(boot), Some("boot"), Some(pid), Some("pid")) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return false;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    boot == ours && pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
}

/// Seconds since the Lease was last renewed (or acquired).
fn age_seconds(spec: &LeaseSpec) -> i64 {
    let at = spec.renew_time.as_ref().or(spec.acquire_time.as_ref());
    at.map_or(i64::MAX / 2000, |t| {
        (Timestamp::now().as_millisecond() - t.0.as_millisecond()) / 1000
    })
}

/// A Lease is free when it names no holder, or when its holder has not renewed it for its duration
/// (by this machine's clock: clocks must agree within the 5 s margin of [`WRITE_WINDOW`]).
fn expired(spec: &LeaseSpec) -> bool {
    if spec.holder_identity.as_deref().is_none_or(str::is_empty) {
        return true;
    }
    let Some(at) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return true;
    };
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS));
    Timestamp::now().as_millisecond() > at.0.as_millisecond() + duration * 1000
}

/// What a session's tasks share.
struct Shared {
    app: String,
    namespace: String,
    identity: String,
    fence: Fence,
    /// Bumped after each local append.
    written: AtomicU64,
    wake: tokio::sync::Notify,
    /// The last `written` value mirrored to the cluster.
    pushed: tokio::sync::watch::Sender<u64>,
    push_error: Mutex<Option<String>>,
    /// The Lease's uid and resourceVersion as last written by this process.
    lease: Mutex<(Option<String>, Option<String>)>,
}

/// A held Lease with its background tasks: renewal, the journal mirror, control requests.
pub struct Session {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    leases: Api<Lease>,
    name: String,
    namespace: String,
    /// Set when the Lease was taken over from a holder that stopped renewing it.
    pub took_over: Option<String>,
}

impl Session {
    /// Why this process may no longer act for the app, if it may not.
    pub fn lost(&self) -> Option<String> {
        self.shared.fence.check().err().map(|why| {
            format!(
                "the lock on {} (Lease {}/{}) is no longer this process's: {why}; nothing more was written",
                self.shared.app, self.namespace, self.name
            )
        })
    }

    /// Resolves once [`Session::lost`] would say so (it looks four times a second: the check is
    /// in memory).
    pub async fn wait_lost(&self) -> String {
        loop {
            if let Some(why) = self.lost() {
                return why;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Says the local journal grew: the mirror task pushes it.
    pub fn changed(&self) {
        self.shared.written.fetch_add(1, Ordering::SeqCst);
        self.shared.wake.notify_one();
    }

    /// Waits until everything journaled so far is in the cluster; fails when the Lease is lost, or
    /// when writing the ConfigMap has kept failing for [`WRITE_WINDOW`] (a rollout must not go on
    /// where other machines cannot see it).
    pub async fn flush(&self) -> Result<()> {
        let target = self.shared.written.load(Ordering::SeqCst);
        let mut pushed = self.shared.pushed.subscribe();
        let started = Instant::now();
        loop {
            if *pushed.borrow_and_update() >= target {
                return Ok(());
            }
            if let Some(why) = self.lost() {
                return Err(ClusterError::Lost(why));
            }
            if started.elapsed() > WRITE_WINDOW
                && let Some(why) = self.push_error()
            {
                return Err(ClusterError::Mirror {
                    namespace: self.namespace.clone(),
                    name: self.name.clone(),
                    why,
                });
            }
            // Woken by the push, or after a quarter second to look at the fence again.
            let _ = tokio::time::timeout(Duration::from_millis(250), pushed.changed()).await;
        }
    }

    /// The last error of the mirror task, if its last push failed.
    pub fn push_error(&self) -> Option<String> {
        self.shared.push_error.lock().expect("push error").clone()
    }

    /// Stops the tasks and deletes the Lease, only if it is still this process's (preconditions
    /// on its uid and resourceVersion).
    pub async fn release(mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
        if self.shared.fence.is_lost() {
            return;
        }
        self.shared.fence.shut();
        for _ in 0..3 {
            let (uid, resource_version) = self.shared.lease.lock().expect("lease").clone();
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid,
                    resource_version,
                }),
                ..DeleteParams::default()
            };
            match self.leases.delete(&self.name, &params).await {
                Err(e) if is_conflict(&e) => {
                    // A renewal we cut short may have landed: delete it only if it is still ours.
                    let Ok(Some(lease)) = self.leases.get_opt(&self.name).await else {
                        return;
                    };
                    let holder = lease.spec.as_ref().and_then(|s| s.holder_identity.clone());
                    if holder.as_deref() != Some(self.shared.identity.as_str()) {
                        return;
                    }
                    *self.shared.lease.lock().expect("lease") =
                        (lease.metadata.uid, lease.metadata.resource_version);
                }
                _ => return,
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

enum Renewal {
    Renewed(Box<Lease>),
    Lost(String),
}

async fn renew(leases: &Api<Lease>, name: &str, identity: &str) -> Result<Renewal, kube::Error> {
    loop {
        let Some(mut lease) = leases.get_opt(name).await? else {
            return Ok(Renewal::Lost("the Lease was deleted".into()));
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        if holder != identity {
            return Ok(Renewal::Lost(format!("the Lease is now held by {holder}")));
        }
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match leases.replace(name, &params(), &lease).await {
            Ok(lease) => return Ok(Renewal::Renewed(Box::new(lease))),
            Err(e) if is_conflict(&e) => continue,
            Err(e) => return Err(e),
        }
    }
}

async fn renew_loop(shared: Arc<Shared>, leases: Api<Lease>, name: String) {
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        let started = Instant::now();
        match renew(&leases, &name, &shared.identity).await {
            Ok(Renewal::Renewed(lease)) => {
                *shared.lease.lock().expect("lease") =
                    (lease.metadata.uid, lease.metadata.resource_version);
                shared.fence.open_until(started + WRITE_WINDOW);
            }
            Ok(Renewal::Lost(why)) => {
                shared.fence.lose(why);
                return;
            }
            // Transient: the fence closes by itself if renewals keep failing.
            Err(e) => eprintln!(
                "warning: renewing the lock on {}: {}",
                shared.app,
                chain(&e)
            ),
        }
    }
}

async fn push_loop(shared: Arc<Shared>, store: Store, config_maps: Api<ConfigMap>, name: String) {
    let mut last: Option<ConfigMap> = None;
    loop {
        shared.wake.notified().await;
        let version = shared.written.load(Ordering::SeqCst);
        loop {
            if shared.fence.is_lost() {
                return;
            }
            let result = match shared.fence.check() {
                Err(why) => Err(why),
                Ok(()) => push(
                    &shared.app,
                    &shared.namespace,
                    &store,
                    &config_maps,
                    &name,
                    &mut last,
                )
                .await
                .map_err(|e| chain(&e)),
            };
            match result {
                Ok(()) => {
                    *shared.push_error.lock().expect("push error") = None;
                    shared.pushed.send_replace(version);
                    break;
                }
                Err(why) => {
                    *shared.push_error.lock().expect("push error") = Some(why);
                    last = None;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

/// Writes the local journal's last rollouts into the ConfigMap, keeping its control requests.
async fn push(
    app: &str,
    namespace: &str,
    store: &Store,
    config_maps: &Api<ConfigMap>,
    name: &str,
    last: &mut Option<ConfigMap>,
) -> Result<(), ClusterError> {
    let records = in_namespace(store, app, namespace, store.read(app)?);
    let data = mirror_data(store, app, &records)?;
    let api = |action, source| ClusterError::Api {
        action,
        kind: "ConfigMap",
        namespace: namespace.to_string(),
        name: name.to_string(),
        source: Box::new(source),
    };
    for _ in 0..10 {
        let current = match last.take() {
            Some(cm) => Some(cm),
            None => config_maps
                .get_opt(name)
                .await
                .map_err(|e| api("reading", e))?,
        };
        let written = match current {
            None => {
                let cm = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(name.to_string()),
                        labels: Some(labels(app)),
                        ..ObjectMeta::default()
                    },
                    data: Some(data.clone()),
                    ..ConfigMap::default()
                };
                match config_maps.create(&params(), &cm).await {
                    Err(e) if is_already_exists(&e) => continue,
                    other => other,
                }
            }
            Some(mut cm) => {
                let mut next = data.clone();
                if let Some(controls) = cm.data.as_mut().and_then(|d| d.remove(CONTROLS_KEY)) {
                    next.insert(CONTROLS_KEY.into(), controls);
                }
                cm.data = Some(next);
                cm.metadata
                    .labels
                    .get_or_insert_with(BTreeMap::new)
                    .extend(labels(app));
                match config_maps.replace(name, &params(), &cm).await {
                    Err(e) if is_conflict(&e) || is_not_found(&e) => continue,
                    other => other,
                }
            }
        };
        *last = Some(written.map_err(|e| api("writing", e))?);
        return Ok(());
    }
    Err(ClusterError::Busy(format!(
        "ConfigMap {name} kept changing while the journal was written"
    )))
}

/// The ConfigMap's data for the local records: the last [`KEEP_ROLLOUTS`] rollouts (fewer if they
/// would not fit) and their manifests.
fn mirror_data(store: &Store, app: &str, records: &[Record]) -> Result<BTreeMap<String, String>> {
    let blocks = blocks(records);
    let mut keep = blocks.len().min(KEEP_ROLLOUTS);
    loop {
        let chosen = &blocks[blocks.len() - keep..];
        let mut data = BTreeMap::new();
        let journal: String = chosen
            .iter()
            .flat_map(|(_, rs)| rs.iter())
            .map(|r| serde_json::to_string(r).expect("records serialize") + "\n")
            .collect();
        data.insert(JOURNAL_KEY.to_string(), journal);
        for (id, _) in chosen {
            let path = store
                .app_dir(app)
                .join("rollouts")
                .join(format!("{id}.json"));
            if let Ok(text) = std::fs::read_to_string(&path) {
                data.insert(format!("{MANIFEST_PREFIX}{id}.json"), text);
            }
        }
        let bytes: usize = data.iter().map(|(k, v)| k.len() + v.len()).sum();
        if bytes <= MAX_BYTES {
            return Ok(data);
        }
        if keep <= 1 {
            return Err(ClusterError::TooLarge {
                app: app.to_string(),
                bytes,
            });
        }
        keep -= 1;
    }
}

/// Copies new control requests from the ConfigMap into the local control file, where the engine
/// looks for them.
async fn control_loop(
    shared: Arc<Shared>,
    store: Store,
    config_maps: Api<ConfigMap>,
    name: String,
    mut seen: u64,
) {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(config_maps, config)
        .default_backoff()
        .applied_objects()
        .boxed();
    while let Some(event) = events.next().await {
        let Ok(cm) = event else { continue };
        let text = cm
            .data
            .as_ref()
            .and_then(|d| d.get(CONTROLS_KEY))
            .cloned()
            .unwrap_or_default();
        for sent in text
            .lines()
            .filter_map(|l| serde_json::from_str::<Sent>(l).ok())
        {
            if sent.seq > seen {
                seen = sent.seq;
                if let Err(e) = store.send_control(&shared.app, &sent.control) {
                    eprintln!("warning: {}", chain(&e));
                }
            }
        }
    }
}

/// Keeps the records of rollouts whose manifest targets `namespace` (and of those whose manifest
/// is missing: nothing says they belong elsewhere).
fn in_namespace(store: &Store, app: &str, namespace: &str, records: Vec<Record>) -> Vec<Record> {
    let mut here: BTreeMap<String, bool> = BTreeMap::new();
    records
        .into_iter()
        .filter(|r| {
            let id = r.event.rollout();
            *here.entry(id.to_string()).or_insert_with(|| {
                store.load_manifest(app, id).map_or(true, |m| {
                    m.spec
                        .target
                        .kubernetes()
                        .is_some_and(|k| k.namespace == namespace)
                })
            })
        })
        .collect()
}

/// Records grouped by rollout, the groups in the order their rollouts started.
fn blocks(records: &[Record]) -> Vec<(String, Vec<Record>)> {
    let mut out: Vec<(String, Vec<Record>)> = Vec::new();
    for r in records {
        let id = r.event.rollout();
        match out.iter_mut().find(|(x, _)| x == id) {
            Some((_, rs)) => rs.push(r.clone()),
            None => out.push((id.to_string(), vec![r.clone()])),
        }
    }
    out
}

/// The local journal and the cluster's, merged.
#[derive(Debug, Default, PartialEq)]
pub struct Merged {
    pub records: Vec<Record>,
    /// Local records the cluster contradicts (written by a run that lost its Lease).
    pub discarded: Vec<Record>,
}

/// Merges rollout by rollout: where one side's records extend the other's, the longer wins (local
/// records not yet pushed, or records another machine wrote); where they differ, the cluster wins.
/// Rollouts only one side knows are kept (the cluster forgets old ones).
pub fn merge(local: &[Record], remote: &[Record]) -> Merged {
    let local = blocks(local);
    let remote = blocks(remote);
    let mut out: Vec<(String, Vec<Record>)> = Vec::new();
    let mut discarded = Vec::new();
    for (id, l) in &local {
        let chosen = match remote.iter().find(|(x, _)| x == id) {
            None => l.clone(),
            Some((_, r)) if r.starts_with(l) => r.clone(),
            Some((_, r)) if l.starts_with(r) => l.clone(),
            Some((_, r)) => {
                let common = l.iter().zip(r).take_while(|(a, b)| a == b).count();
                discarded.extend_from_slice(&l[common..]);
                r.clone()
            }
        };
        out.push((id.clone(), chosen));
    }
    for (id, r) in &remote {
        if !out.iter().any(|(x, _)| x == id) {
            out.push((id.clone(), r.clone()));
        }
    }
    // Stable: rollouts in the order they started.
    out.sort_by_key(|(_, rs)| rs.first().map_or(0, |r| r.at_ms));
    Merged {
        records: out.into_iter().flat_map(|(_, rs)| rs).collect(),
        discarded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Event;

    #[test]
    fn only_a_dead_process_of_this_boot_gives_up_its_lease_early() {
        let Some(boot) = boot_id() else {
            return; // no /proc: never judged, the Lease must expire
        };
        // A pid above the kernel's limit (4194304) never runs.
        let dead = format!("ana@box pid 4999999 boot {boot}");
        assert!(holder_gone(&dead));
        let alive = format!("ana@box pid {} boot {boot}", std::process::id());
        assert!(!holder_gone(&alive), "this process is alive");
        let init = format!("ana@box pid 1 boot {boot}");
        assert!(!holder_gone(&init), "pid 1 runs");
        assert!(
            !holder_gone("ana@box pid 4999999 boot 000000000000.4026531836"),
            "another machine's (or boot's) process is never judged"
        );
        assert!(!holder_gone("ana@box pid 4999999"), "no boot: never judged");
    }

    fn rec(at_ms: u64, rollout: &str, step: usize) -> Record {
        Record {
            at_ms,
            event: Event::StepDone {
                rollout: rollout.into(),
                step,
                millis: 1,
            },
        }
    }

    #[test]
    fn the_longer_side_of_a_rollout_wins() {
        let local = vec![rec(1, "a", 0), rec(2, "a", 1)];
        let remote = vec![rec(1, "a", 0), rec(2, "a", 1), rec(3, "a", 2)];
        assert_eq!(merge(&local, &remote).records, remote);
        // Records not pushed yet (the CLI was killed between the append and the push) are kept.
        assert_eq!(merge(&remote, &local).records, remote);
    }

    #[test]
    fn where_the_sides_differ_the_cluster_wins_and_the_local_tail_is_kept_aside() {
        let local = vec![rec(1, "a", 0), rec(5, "a", 1)];
        let remote = vec![rec(1, "a", 0), rec(6, "a", 1), rec(7, "a", 2)];
        let merged = merge(&local, &remote);
        assert_eq!(merged.records, remote);
        assert_eq!(merged.discarded, vec![rec(5, "a", 1)]);
    }

    #[test]
    fn rollouts_only_one_side_knows_are_kept_in_start_order() {
        let local = vec![rec(1, "old", 0), rec(10, "mine", 0)];
        let remote = vec![rec(5, "theirs", 0)];
        let merged = merge(&local, &remote);
        assert_eq!(
            merged.records,
            vec![rec(1, "old", 0), rec(5, "theirs", 0), rec(10, "mine", 0)]
        );
        assert!(merged.discarded.is_empty());
    }

    #[test]
    fn the_mirror_keeps_the_last_rollouts_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path());
        let records: Vec<Record> = (0..KEEP_ROLLOUTS as u64 + 3)
            .map(|i| rec(i, &format!("r{i}"), 0))
            .collect();
        let data = mirror_data(&store, "web", &records).unwrap();
        let kept = data[JOURNAL_KEY].lines().count();
        assert_eq!(kept, KEEP_ROLLOUTS);
        assert!(data[JOURNAL_KEY].contains("\"r12\""));
        assert!(!data[JOURNAL_KEY].contains("\"r2\""));
    }

    #[test]
    fn a_shut_fence_refuses_and_a_lost_one_never_reopens() {
        let fence = Fence::default();
        assert!(fence.check().is_err());
        fence.open_until(Instant::now() + Duration::from_secs(60));
        assert!(fence.check().is_ok());
        fence.open_until(Instant::now() - Duration::from_millis(1));
        assert!(fence.check().unwrap_err().contains("not renewed"));
        fence.lose("the Lease is now held by bo@box pid 7".into());
        fence.open_until(Instant::now() + Duration::from_secs(60));
        assert!(fence.check().unwrap_err().contains("bo@box"));
    }

    #[tokio::test]
    async fn the_fenced_client_lets_reads_through_and_writes_only_while_the_fence_is_open() {
        use tower::{Layer, ServiceExt};
        let fence = Fence::default();
        let inner = tower::service_fn(|_: hyper::Request<()>| async {
            Ok::<_, std::convert::Infallible>("sent")
        });
        let service = FenceLayer(fence.clone()).layer(inner);
        let request = |method: hyper::Method| {
            hyper::Request::builder()
                .method(method)
                .uri("/api/v1/namespaces/shop/configmaps/rollgate-web")
                .body(())
                .unwrap()
        };
        let get = service.clone().oneshot(request(hyper::Method::GET)).await;
        assert_eq!(get.unwrap(), "sent");
        for method in [
            hyper::Method::POST,
            hyper::Method::PUT,
            hyper::Method::PATCH,
            hyper::Method::DELETE,
        ] {
            let refused = service.clone().oneshot(request(method)).await.unwrap_err();
            assert!(
                refused.to_string().starts_with("write refused: "),
                "{refused}"
            );
        }
        fence.open_until(Instant::now() + Duration::from_secs(60));
        let put = service.clone().oneshot(request(hyper::Method::PUT)).await;
        assert_eq!(put.unwrap(), "sent");
        fence.lose("the Lease is now held by bo@box pid 7".into());
        let put = service.clone().oneshot(request(hyper::Method::PUT)).await;
        assert!(put.unwrap_err().to_string().contains("bo@box"));
    }

    #[test]
    fn a_lease_expires_its_duration_after_its_last_renewal() {
        let at = |ago_s: i64| {
            Some(MicroTime(
                Timestamp::from_millisecond(Timestamp::now().as_millisecond() - ago_s * 1000)
                    .unwrap(),
            ))
        };
        let spec = |ago_s| LeaseSpec {
            holder_identity: Some("ana@box pid 1".into()),
            lease_duration_seconds: Some(15),
            renew_time: at(ago_s),
            ..LeaseSpec::default()
        };
        assert!(!expired(&spec(3)));
        assert!(expired(&spec(16)));
        assert!(expired(&LeaseSpec::default()));
    }
}
