//! The app's lock in the cluster: the Lease `rollgate-<app>`, taken (or taken over once expired),
//! renewed, and released; while it is held, the [`Fence`](crate::kube::Fence) lets this process's
//! writes out only within [`WRITE_WINDOW`] of the start of the last successful renewal, so a
//! process frozen past its Lease writes nothing when it wakes, not even before its renewal task
//! has run. What does not depend on the store (the fence's upkeep, the mirror's pushes, `flush`)
//! is [`Held`]'s.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{DeleteParams, ObjectMeta, Preconditions};

use super::mirror::{
    ClusterError, Remote, Result, control_loop, is_already_exists, is_conflict, labels, params,
    push_loop,
};
use super::team::{Held, Renew, Tasks, Unflushed};
use super::{Actor, Store};
use crate::kube::{WRITE_WINDOW, chain};

/// The Lease's duration: another machine takes over a Lease not renewed for this long.
pub const LEASE_SECONDS: i32 = 15;
/// How often the holder renews its Lease.
pub const RENEW_EVERY: Duration = Duration::from_secs(5);

impl Remote {
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
        // Read once under the Lease: for the control requests already sent, for the pull that
        // follows, and as the base of the first push (a write in between makes it read again).
        let cm = self.read().await?;
        let seen = match self.parse_opt(cm.as_ref())? {
            Some(mirror) => mirror.controls.last().map_or(0, |c| c.seq),
            None => 0,
        };
        *self.read_at_lock.lock().expect("read lock") = Some(cm.clone());
        let shared = Arc::new(Shared {
            app: self.app.clone(),
            namespace: self.namespace.clone(),
            identity,
            held: Held::new(
                self.fence.clone(),
                format!(
                    "the lock on {} (Lease {}/{})",
                    self.app, self.namespace, self.name
                ),
            ),
            lease: Mutex::new((
                lease.metadata.uid.clone(),
                lease.metadata.resource_version.clone(),
            )),
        });
        let tasks = Tasks::new(vec![
            tokio::spawn(renew_loop(
                shared.clone(),
                self.leases.clone(),
                self.name.clone(),
                lease,
            )),
            tokio::spawn(push_loop(
                shared.clone(),
                store.clone(),
                self.fenced_maps.clone(),
                self.name.clone(),
                cm,
            )),
            tokio::spawn(control_loop(
                shared.clone(),
                store.clone(),
                self.config_maps.clone(),
                self.name.clone(),
                seen,
            )),
        ]);
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
pub(crate) fn boot_id() -> Option<String> {
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
pub(crate) fn holder_gone(holder: &str) -> bool {
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
pub(super) struct Shared {
    pub(super) app: String,
    pub(super) namespace: String,
    pub(super) identity: String,
    /// The fence, the renewal and the mirror's pushes.
    pub(super) held: Held,
    /// The Lease's uid and resourceVersion as last written by this process.
    pub(super) lease: Mutex<(Option<String>, Option<String>)>,
}

/// A held Lease with its background tasks: renewal, the journal mirror, control requests.
pub struct Session {
    shared: Arc<Shared>,
    tasks: Tasks,
    leases: Api<Lease>,
    name: String,
    namespace: String,
    /// Set when the Lease was taken over from a holder that stopped renewing it.
    pub took_over: Option<String>,
}

impl Session {
    pub(crate) fn held(&self) -> &Held {
        &self.shared.held
    }

    /// Waits until everything journaled so far is in the cluster ([`Held::flush`]).
    pub async fn flush(&self) -> Result<()> {
        self.shared.held.flush().await.map_err(|e| match e {
            Unflushed::Lost(why) => ClusterError::Lost(why),
            Unflushed::Failing(why) => ClusterError::Mirror {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                why,
            },
        })
    }

    /// Stops the tasks and deletes the Lease, only if it is still this process's (preconditions
    /// on its uid and resourceVersion).
    pub async fn release(mut self) {
        self.tasks.stop().await;
        if !self.shared.held.shut() {
            return;
        }
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

enum Renewal {
    Renewed(Box<Lease>),
    Lost(String),
}

/// Renews the Lease: a replace of `last` (this process's last write of it, so no read first),
/// guarded by its resourceVersion; when that conflicts (or nothing was written yet), the Lease is
/// read, checked to be still this process's, and replaced again.
async fn renew(
    leases: &Api<Lease>,
    name: &str,
    identity: &str,
    last: Option<Lease>,
) -> Result<Renewal, kube::Error> {
    let mut known = last;
    loop {
        let mut lease = match known.take() {
            Some(lease) => lease,
            None => match leases.get_opt(name).await? {
                Some(lease) => lease,
                None => return Ok(Renewal::Lost("the Lease was deleted".into())),
            },
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

/// The Lease renewed (and its uid and resourceVersion kept for the release).
struct Renewer {
    shared: Arc<Shared>,
    leases: Api<Lease>,
    name: String,
    /// The Lease as this process last wrote it.
    last: Option<Lease>,
}

impl Renew for Renewer {
    async fn renew(&mut self) -> std::result::Result<Option<String>, String> {
        match renew(
            &self.leases,
            &self.name,
            &self.shared.identity,
            self.last.take(),
        )
        .await
        {
            Ok(Renewal::Renewed(lease)) => {
                *self.shared.lease.lock().expect("lease") = (
                    lease.metadata.uid.clone(),
                    lease.metadata.resource_version.clone(),
                );
                self.last = Some(*lease);
                Ok(None)
            }
            Ok(Renewal::Lost(why)) => Ok(Some(why)),
            Err(e) => Err(chain(&e)),
        }
    }
}

async fn renew_loop(shared: Arc<Shared>, leases: Api<Lease>, name: String, taken: Lease) {
    let app = shared.app.clone();
    let renewer = Renewer {
        shared: shared.clone(),
        leases,
        name,
        last: Some(taken),
    };
    shared.held.renew_loop(&app, RENEW_EVERY, renewer).await;
}

#[cfg(test)]
mod tests {
    use super::*;

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
