//! A host fleet's team state on etcd: the app's lock (a lease and a key created only if absent),
//! the journal one key per record appended by transactions fenced on that lock key, resolved
//! manifests, and control requests from any machine.
//!
//! Keys under `<prefix>/<app>/`: `lock` (the holder, on the lease), `holder` (the last holder,
//! deleted by a clean release: a takeover names it), `journal/<rollout>/<n>` (record n of a
//! rollout), `rollouts/<rollout>.json` (its resolved manifest), `controls/<ms>-<pid>` (promote,
//! pause, abort for the runner). As on Kubernetes, the local fsynced journal is the write-ahead
//! log: a background task appends what it lacks after each local append, and the engine awaits
//! it at each step boundary.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Etcd, EtcdError, Kv, LEASE_SECONDS, Result, op};
use crate::kube::{Fence, WRITE_WINDOW, chain};
use crate::spec::state::EtcdSpec;
use crate::state::lease::{boot_id, holder_gone};
use crate::state::mirror::{MIRRORED_ROLLOUTS, blocks, merge};
use crate::state::team::{Held, Push, Renew, Tasks, Unflushed};
use crate::state::{Actor, Control, Record, Store};

/// How often the holder renews its lease.
const RENEW_EVERY: Duration = Duration::from_secs(5);
/// How often the runner looks for control requests.
const CONTROL_POLL: Duration = Duration::from_millis(500);
/// Operations per transaction (etcd's default limit is 128).
const OPS_PER_TXN: usize = 100;

/// One app's keys.
#[derive(Clone)]
struct Keys {
    app: String,
    /// `<prefix>/<app>/`
    root: String,
}

impl Keys {
    fn lock(&self) -> String {
        format!("{}lock", self.root)
    }
    fn holder(&self) -> String {
        format!("{}holder", self.root)
    }
    fn journal(&self) -> String {
        format!("{}journal/", self.root)
    }
    fn record(&self, rollout: &str, n: usize) -> String {
        format!("{}journal/{rollout}/{n:08}", self.root)
    }
    fn manifest(&self, rollout: &str) -> String {
        format!("{}rollouts/{rollout}.json", self.root)
    }
    fn controls(&self) -> String {
        format!("{}controls/", self.root)
    }
}

/// What etcd holds for an app.
#[derive(Debug, Default)]
struct Stored {
    records: Vec<Record>,
    manifests: BTreeMap<String, String>,
}

/// One app's state on one etcd cluster.
pub struct Remote {
    etcd: Etcd,
    keys: Keys,
}

impl Remote {
    pub fn new(spec: &EtcdSpec, app: &str) -> Result<Remote> {
        Ok(Remote {
            etcd: Etcd::new(spec)?,
            keys: Keys {
                app: app.to_string(),
                root: format!("{}/{app}/", spec.prefix),
            },
        })
    }

    /// `etcd prefix /rollgate/web/`, for messages.
    pub fn describe(&self) -> String {
        format!(
            "etcd prefix {} at {}",
            self.keys.root,
            self.etcd.endpoints()
        )
    }

    /// Everything under the app's prefix; `None` when there is nothing.
    async fn fetch(&self) -> Result<Option<Stored>> {
        let (kvs, _) = self.etcd.range_prefix(&self.keys.root).await?;
        if kvs.is_empty() {
            return Ok(None);
        }
        let journal = self.keys.journal();
        let manifests = format!("{}rollouts/", self.keys.root);
        let mut stored = Stored::default();
        // Records of a rollout are in key order; rollouts in the order they started.
        let mut by_rollout: BTreeMap<String, Vec<Record>> = BTreeMap::new();
        for kv in kvs {
            let key = kv.key_str();
            if let Some(rest) = key.strip_prefix(&journal) {
                let rollout = rest.split('/').next().unwrap_or_default().to_string();
                let record = serde_json::from_slice(&kv.value).map_err(|e| EtcdError::Corrupt {
                    key: key.clone(),
                    message: e.to_string(),
                })?;
                by_rollout.entry(rollout).or_default().push(record);
            } else if let Some(id) = key
                .strip_prefix(&manifests)
                .and_then(|k| k.strip_suffix(".json"))
            {
                let text = String::from_utf8_lossy(&kv.value).into_owned();
                stored.manifests.insert(id.to_string(), text);
            }
        }
        let mut rollouts: Vec<Vec<Record>> = by_rollout.into_values().collect();
        rollouts.sort_by_key(|rs| rs.first().map_or(0, |r| r.at_ms));
        stored.records = rollouts.into_iter().flatten().collect();
        Ok(Some(stored))
    }

    fn save_manifests(&self, store: &Store, stored: &Stored) -> Result<()> {
        for (id, text) in &stored.manifests {
            let path = store
                .app_dir(&self.keys.app)
                .join("rollouts")
                .join(format!("{id}.json"));
            if path.exists() {
                continue;
            }
            let rollout: crate::spec::Rollout =
                serde_json::from_str(text).map_err(|e| EtcdError::Corrupt {
                    key: self.keys.manifest(id),
                    message: e.to_string(),
                })?;
            store.save_manifest(&self.keys.app, id, &rollout)?;
        }
        Ok(())
    }

    /// etcd's records merged with the local journal, without writing the journal.
    pub async fn records(&self, store: &Store) -> Result<Option<Vec<Record>>> {
        let Some(stored) = self.fetch().await? else {
            return Ok(None);
        };
        self.save_manifests(store, &stored)?;
        let local = store.read(&self.keys.app)?;
        Ok(Some(merge(&local, &stored.records).records))
    }

    /// Brings etcd's records into the local journal (under the lock), as the Kubernetes mirror
    /// does: local records etcd contradicts are kept aside.
    pub async fn pull(&self, store: &Store) -> Result<bool> {
        let Some(stored) = self.fetch().await? else {
            return Ok(false);
        };
        self.save_manifests(store, &stored)?;
        let app = &self.keys.app;
        let local = store.read(app)?;
        let merged = merge(&local, &stored.records);
        if merged.records != local {
            if !merged.discarded.is_empty() {
                store.set_aside(
                    app,
                    &format!("journal.discarded-{}.jsonl", crate::state::now_ms()),
                    &merged.discarded,
                )?;
            }
            store.replace_records(app, &merged.records)?;
        }
        Ok(true)
    }

    /// Adds a control request for whichever machine runs the rollout.
    pub async fn send_control(&self, control: &Control) -> Result<()> {
        if self.etcd.get(&self.keys.holder()).await?.is_none() && self.fetch().await?.is_none() {
            return Err(EtcdError::NoState {
                app: self.keys.app.clone(),
                prefix: self.keys.root.clone(),
            });
        }
        let key = format!(
            "{}{:016}-{}",
            self.keys.controls(),
            crate::state::now_ms(),
            std::process::id()
        );
        let value = serde_json::to_string(control).expect("a control serializes");
        self.etcd
            .txn(vec![], vec![op::put(&key, &value, 0)], vec![])
            .await?;
        Ok(())
    }

    /// Takes the app's lock (or says who holds it) and starts renewing it, appending the local
    /// journal to etcd, and taking control requests. The caller holds the app's local lock.
    pub async fn acquire(&self, store: &Store, actor: &Actor) -> Result<Session> {
        let identity = match boot_id() {
            Some(boot) => format!("{actor} pid {} boot {boot}", std::process::id()),
            None => format!("{actor} pid {}", std::process::id()),
        };
        let started = Instant::now();
        let (lease, lock_rev) = self.take_lock(&identity).await?;
        let fence = Fence::default();
        fence.open_until(started + WRITE_WINDOW);
        // A `holder` key left behind: its run ended without releasing (killed, frozen, cut off).
        let took_over = match self.etcd.get(&self.keys.holder()).await? {
            Some(kv) if kv.value != identity.as_bytes() => Some(format!(
                "took over the lock from {}: its lease ended without a release",
                String::from_utf8_lossy(&kv.value)
            )),
            _ => None,
        };
        let lock = self.keys.lock();
        let written = self
            .etcd
            .txn(
                vec![op::created_at(&lock, lock_rev)],
                vec![op::put(&self.keys.holder(), &identity, 0)],
                vec![],
            )
            .await?;
        if !written.succeeded {
            return Err(EtcdError::Lost(format!(
                "the lock on {} was lost while it was being taken",
                self.keys.app
            )));
        }
        let shared = Arc::new(Shared {
            keys: self.keys.clone(),
            lease,
            lock_rev,
            held: Held::new(
                fence,
                format!("the lock on {} (etcd key {lock})", self.keys.app),
            ),
        });
        let tasks = Tasks::new(vec![
            tokio::spawn(renew_loop(shared.clone(), self.etcd.clone())),
            tokio::spawn(push_loop(shared.clone(), store.clone(), self.etcd.clone())),
            tokio::spawn(control_loop(
                shared.clone(),
                store.clone(),
                self.etcd.clone(),
                written.revision(),
            )),
        ]);
        Ok(Session {
            shared,
            tasks,
            etcd: self.etcd.clone(),
            took_over,
        })
    }

    /// Creates the lock key on a new lease in a transaction that requires it absent, so of two
    /// machines racing for it exactly one wins. A key whose holder is a dead process of this boot
    /// and pid namespace is freed at once (its lease revoked); any other must expire.
    async fn take_lock(&self, identity: &str) -> Result<(i64, i64)> {
        let lock = self.keys.lock();
        for _ in 0..5 {
            let lease = self.etcd.grant(LEASE_SECONDS).await?;
            let r = self
                .etcd
                .txn(
                    vec![op::created_at(&lock, 0)],
                    vec![op::put(&lock, identity, lease)],
                    vec![op::get(&lock)],
                )
                .await?;
            if r.succeeded {
                return Ok((lease, r.revision()));
            }
            let _ = self.etcd.revoke(lease).await;
            let Some(held) = r.kvs(0).into_iter().next() else {
                continue; // released in between
            };
            let holder = String::from_utf8_lossy(&held.value).into_owned();
            if holder_gone(&holder) {
                let _ = self.etcd.revoke(held.lease).await;
                continue;
            }
            let ttl = self.etcd.time_to_live(held.lease).await.unwrap_or(-1);
            return Err(EtcdError::Locked {
                app: self.keys.app.clone(),
                holder,
                key: lock,
                ttl: ttl.max(0),
            });
        }
        Err(EtcdError::Busy(format!(
            "etcd key {lock} changed 5 times while rollgate tried to take it: try again"
        )))
    }
}

/// What a session's tasks share.
struct Shared {
    keys: Keys,
    lease: i64,
    /// The lock key's create_revision: every journal write compares it.
    lock_rev: i64,
    /// The fence, the keep-alive and the journal's appends.
    held: Held,
}

/// A held lock with its background tasks: keep-alive, journal appends, control requests.
pub struct Session {
    shared: Arc<Shared>,
    tasks: Tasks,
    etcd: Etcd,
    /// Set when the lock was taken from a holder whose lease ended without a release.
    pub took_over: Option<String>,
}

impl Session {
    pub(crate) fn held(&self) -> &Held {
        &self.shared.held
    }

    /// Waits until everything journaled so far is in etcd ([`Held::flush`]).
    pub async fn flush(&self) -> Result<()> {
        self.shared.held.flush().await.map_err(|e| match e {
            Unflushed::Lost(why) => EtcdError::Lost(why),
            Unflushed::Failing(why) => EtcdError::Mirror(why),
        })
    }

    /// Stops the tasks; if the lock is still this process's, deletes `holder` and the control
    /// requests in a transaction fenced on the lock key, then revokes the lease (the lock key goes
    /// with it).
    pub async fn release(mut self) {
        self.tasks.stop().await;
        if !self.shared.held.shut() {
            return;
        }
        let keys = &self.shared.keys;
        let _ = self
            .etcd
            .txn(
                vec![op::created_at(&keys.lock(), self.shared.lock_rev)],
                vec![
                    op::delete(&keys.holder()),
                    op::delete_prefix(&keys.controls()),
                    op::delete(&keys.lock()),
                ],
                vec![],
            )
            .await;
        let _ = self.etcd.revoke(self.shared.lease).await;
    }
}

/// The lease kept alive.
struct KeepAlive {
    etcd: Etcd,
    lease: i64,
}

impl Renew for KeepAlive {
    async fn renew(&mut self) -> std::result::Result<Option<String>, String> {
        match self.etcd.keep_alive(self.lease).await {
            Ok(ttl) if ttl > 0 => Ok(None),
            Ok(_) => Ok(Some(format!(
                "its etcd lease ended (not renewed for {LEASE_SECONDS}s)"
            ))),
            Err(e) => Err(chain(&e)),
        }
    }
}

async fn renew_loop(shared: Arc<Shared>, etcd: Etcd) {
    let lease = KeepAlive {
        etcd,
        lease: shared.lease,
    };
    shared
        .held
        .renew_loop(&shared.keys.app, RENEW_EVERY, lease)
        .await;
}

/// The local records etcd lacks, appended.
struct Appending {
    shared: Arc<Shared>,
    store: Store,
    etcd: Etcd,
    /// Records etcd holds per rollout; read again after any failure.
    known: Option<BTreeMap<String, usize>>,
}

impl Push for Appending {
    async fn push(&mut self) -> std::result::Result<(), String> {
        push(&self.shared, &self.store, &self.etcd, &mut self.known)
            .await
            .map_err(|e| chain(&e))
    }
}

async fn push_loop(shared: Arc<Shared>, store: Store, etcd: Etcd) {
    let appending = Appending {
        shared: shared.clone(),
        store,
        etcd,
        known: None,
    };
    shared.held.push_loop(appending).await;
}

/// How many records etcd holds for each rollout.
async fn counts(etcd: &Etcd, keys: &Keys) -> Result<BTreeMap<String, usize>> {
    let (kvs, _) = etcd.range_prefix(&keys.journal()).await?;
    let mut out = BTreeMap::new();
    for kv in kvs {
        let key = kv.key_str();
        let rollout = key[keys.journal().len()..]
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        *out.entry(rollout).or_insert(0) += 1;
    }
    Ok(out)
}

/// Appends the local records etcd lacks (of the last [`MIRRORED_ROLLOUTS`] rollouts) and deletes
/// older rollouts, in transactions that hold only while the lock key is this process's.
async fn push(
    shared: &Shared,
    store: &Store,
    etcd: &Etcd,
    known: &mut Option<BTreeMap<String, usize>>,
) -> Result<()> {
    let keys = &shared.keys;
    let records = store.read(&keys.app)?;
    let all = blocks(&records);
    let chosen = &all[all.len().saturating_sub(MIRRORED_ROLLOUTS)..];
    let have = match known.take() {
        Some(k) => k,
        None => counts(etcd, keys).await?,
    };
    let mut ops = Vec::new();
    let mut next = have.clone();
    for (id, rs) in chosen {
        let from = have.get(id).copied().unwrap_or(0);
        if from == 0 {
            let path = store
                .app_dir(&keys.app)
                .join("rollouts")
                .join(format!("{id}.json"));
            if let Ok(text) = std::fs::read_to_string(&path) {
                ops.push(op::put(&keys.manifest(id), &text, 0));
            }
        }
        for (n, r) in rs.iter().enumerate().skip(from) {
            let value = serde_json::to_string(r).expect("records serialize");
            ops.push(op::put(&keys.record(id, n), &value, 0));
        }
        next.insert(id.clone(), rs.len().max(from));
    }
    for id in have.keys() {
        if !chosen.iter().any(|(x, _)| x == id) {
            ops.push(op::delete_prefix(&format!("{}{id}/", keys.journal())));
            ops.push(op::delete(&keys.manifest(id)));
            next.remove(id);
        }
    }
    for chunk in ops.chunks(OPS_PER_TXN) {
        let r = etcd
            .txn(
                vec![op::created_at(&keys.lock(), shared.lock_rev)],
                chunk.to_vec(),
                vec![op::get(&keys.lock())],
            )
            .await?;
        if !r.succeeded {
            let why = match r.kvs(0).first() {
                Some(Kv { value, .. }) => format!(
                    "etcd key {} is now held by {}",
                    keys.lock(),
                    String::from_utf8_lossy(value)
                ),
                None => format!("etcd key {} is gone (its lease ended)", keys.lock()),
            };
            shared.held.fence().lose(why.clone());
            return Err(EtcdError::Lost(why));
        }
    }
    *known = Some(next);
    Ok(())
}

/// Copies control requests created after `seen` (a revision) into the local control file, where
/// the engine looks for them.
async fn control_loop(shared: Arc<Shared>, store: Store, etcd: Etcd, mut seen: i64) {
    loop {
        tokio::time::sleep(CONTROL_POLL).await;
        let Ok((mut kvs, _)) = etcd.range_since(&shared.keys.controls(), seen).await else {
            continue;
        };
        kvs.sort_by_key(|kv| kv.create_revision);
        for kv in kvs {
            seen = seen.max(kv.create_revision);
            match serde_json::from_slice::<Control>(&kv.value) {
                Ok(control) => {
                    if let Err(e) = store.send_control(&shared.keys.app, &control) {
                        eprintln!("warning: {}", chain(&e));
                    }
                }
                Err(e) => eprintln!("warning: etcd key {}: {e}", kv.key_str()),
            }
        }
    }
}
