//! The team state's mirror: the local journal copied into the ConfigMap `rollgate-<app>` in the
//! target's namespace, control requests (promote, pause, abort) from any machine with the
//! kubeconfig, and the merge of the cluster's journal with this machine's.
//!
//! The local fsynced journal stays the write-ahead log. The ConfigMap mirrors it: the records and
//! resolved manifests of the last [`MIRRORED_ROLLOUTS`] rollouts, written with optimistic
//! concurrency (resourceVersion) by a background task after each local append and awaited at every
//! step boundary, so another machine never sees less than the last completed step. The Lease and
//! its fence are in [`super::lease`] and [`crate::kube`].

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde::{Deserialize, Serialize};

use super::lease::{LEASE_SECONDS, Shared};
use super::team::Push;
use super::{Control, Record, StateError, Store};
use crate::kube::{FIELD_MANAGER, Fence, Kube, KubeError, chain};

/// Rollouts whose records and manifests the ConfigMap keeps (the local journal keeps them all, up
/// to its own compaction: [`super::LOCAL_MIRRORED_ROLLOUTS`]).
pub const MIRRORED_ROLLOUTS: usize = 10;
/// Older rollouts are dropped from the ConfigMap beyond this size (the API's limit is 1 MiB).
const MAX_BYTES: usize = 900 * 1024;
/// Control requests the ConfigMap keeps.
const KEEP_CONTROLS: usize = 50;
const JOURNAL_KEY: &str = "journal.jsonl";
const CONTROLS_KEY: &str = "controls.jsonl";
const MANIFEST_PREFIX: &str = "rollout.";
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "rollgate");
const APP_LABEL: &str = "rollgate.dev/app";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Kube(#[from] KubeError),
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

/// A control request as kept in the ConfigMap, numbered so a runner takes each once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Sent {
    pub(super) seq: u64,
    #[serde(flatten)]
    control: Control,
}

/// What the ConfigMap holds for an app.
#[derive(Debug, Default)]
pub struct Mirror {
    pub records: Vec<Record>,
    /// Rollout id -> resolved manifest (JSON).
    pub manifests: BTreeMap<String, String>,
    pub(super) controls: Vec<Sent>,
}

/// One app's state in one namespace.
pub struct Remote {
    pub(super) app: String,
    pub(super) namespace: String,
    pub(super) name: String,
    /// Reads, and control requests from machines that do not hold the Lease.
    pub(super) config_maps: Api<ConfigMap>,
    /// The mirror's writes: only while the Lease is held.
    pub(super) fenced_maps: Api<ConfigMap>,
    pub(super) leases: Api<Lease>,
    pub(super) fence: Fence,
    /// The ConfigMap as read when the Lease was taken (`None` inside: it did not exist), for the
    /// pull that follows: one read, not two.
    pub(super) read_at_lock: std::sync::Mutex<Option<Option<ConfigMap>>>,
}

pub(super) fn params() -> PostParams {
    PostParams {
        dry_run: false,
        field_manager: Some(FIELD_MANAGER.into()),
    }
}

pub(super) fn labels(app: &str) -> BTreeMap<String, String> {
    [
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
        (APP_LABEL.to_string(), app.to_string()),
    ]
    .into()
}

pub(super) fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_conflict())
}

pub(super) fn is_already_exists(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_already_exists())
}

pub(super) fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_not_found())
}

/// The apps whose team state is in `namespace`: the names on rollgate's ConfigMaps there (read
/// only; sorted).
pub async fn apps(kube: &Kube, namespace: &str) -> Result<Vec<String>> {
    let maps: Api<ConfigMap> = Api::namespaced(kube.client()?, namespace);
    let selector = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
    let list = maps
        .list_metadata(&kube::api::ListParams::default().labels(&selector))
        .await
        .map_err(|e| ClusterError::Api {
            action: "listing",
            kind: "ConfigMaps",
            namespace: namespace.to_string(),
            name: format!("-l {selector}"),
            source: Box::new(e),
        })?;
    let mut apps: Vec<String> = list
        .items
        .iter()
        .filter_map(|cm| cm.metadata.labels.as_ref()?.get(APP_LABEL).cloned())
        .filter(|app| !app.is_empty())
        .collect();
    apps.sort();
    apps.dedup();
    Ok(apps)
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
            fence: kube.fence().clone(),
            read_at_lock: std::sync::Mutex::default(),
        })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// `ConfigMap <namespace>/rollgate-<app>`, for messages.
    pub fn describe(&self) -> String {
        format!("ConfigMap {}/{}", self.namespace, self.name)
    }

    pub(super) fn api_error(
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
        let cm = self.read().await?;
        cm.map(|cm| self.parse(&cm)).transpose()
    }

    /// The app's ConfigMap, if there is one.
    pub(super) async fn read(&self) -> Result<Option<ConfigMap>> {
        self.config_maps
            .get_opt(&self.name)
            .await
            .map_err(|e| self.api_error("reading", "ConfigMap", e))
    }

    pub(super) fn parse_opt(&self, cm: Option<&ConfigMap>) -> Result<Option<Mirror>> {
        cm.map(|cm| self.parse(cm)).transpose()
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
        let at_lock = self.read_at_lock.lock().expect("read lock").take();
        let mirror = match at_lock {
            Some(cm) => self.parse_opt(cm.as_ref())?,
            None => self.fetch().await?,
        };
        let Some(mirror) = mirror else {
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
}

/// The local journal's last rollouts written into the ConfigMap.
struct Mirroring {
    app: String,
    namespace: String,
    store: Store,
    config_maps: Api<ConfigMap>,
    name: String,
    /// The ConfigMap as last written or read (`Some(None)`: known to be absent), `None` when it
    /// must be read again (after a failure).
    last: Option<Option<ConfigMap>>,
}

impl Push for Mirroring {
    async fn push(&mut self) -> std::result::Result<(), String> {
        push(
            &self.app,
            &self.namespace,
            &self.store,
            &self.config_maps,
            &self.name,
            &mut self.last,
        )
        .await
        .map_err(|e| chain(&e))
    }
}

pub(super) async fn push_loop(
    shared: Arc<Shared>,
    store: Store,
    config_maps: Api<ConfigMap>,
    name: String,
    last: Option<ConfigMap>,
) {
    // The read under the Lease: a ConfigMap that was absent then is created without reading.
    let last = Some(last);
    let mirroring = Mirroring {
        app: shared.app.clone(),
        namespace: shared.namespace.clone(),
        store,
        config_maps,
        name,
        last,
    };
    shared.held.push_loop(mirroring).await;
}

/// Writes the local journal's last rollouts into the ConfigMap, keeping its control requests.
async fn push(
    app: &str,
    namespace: &str,
    store: &Store,
    config_maps: &Api<ConfigMap>,
    name: &str,
    last: &mut Option<Option<ConfigMap>>,
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
            Some(known) => known,
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
        *last = Some(Some(written.map_err(|e| api("writing", e))?));
        return Ok(());
    }
    Err(ClusterError::Busy(format!(
        "ConfigMap {name} kept changing while the journal was written"
    )))
}

/// The ConfigMap's data for the local records: the last [`MIRRORED_ROLLOUTS`] rollouts (fewer if they
/// would not fit) and their manifests.
fn mirror_data(store: &Store, app: &str, records: &[Record]) -> Result<BTreeMap<String, String>> {
    let blocks = blocks(records);
    let mut keep = blocks.len().min(MIRRORED_ROLLOUTS);
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
pub(super) async fn control_loop(
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
                tracing::debug!(seq = sent.seq, "a control request from the cluster");
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
pub(crate) fn blocks(records: &[Record]) -> Vec<(String, Vec<Record>)> {
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
        let records: Vec<Record> = (0..MIRRORED_ROLLOUTS as u64 + 3)
            .map(|i| rec(i, &format!("r{i}"), 0))
            .collect();
        let data = mirror_data(&store, "web", &records).unwrap();
        let kept = data[JOURNAL_KEY].lines().count();
        assert_eq!(kept, MIRRORED_ROLLOUTS);
        assert!(data[JOURNAL_KEY].contains("\"r12\""));
        assert!(!data[JOURNAL_KEY].contains("\"r2\""));
    }
}
