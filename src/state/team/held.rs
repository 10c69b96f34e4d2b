//! What a held team lock shares with its background tasks, whichever the store (a Kubernetes
//! Lease and ConfigMap, or etcd): the write fence, the renewal that keeps it open, and the
//! journal's pushes to the store that the engine awaits at each step boundary.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::kube::{Fence, RENEW_RETRY, WRITE_WINDOW};

/// How often a waiter looks at the fence again: the check is in memory.
const LOOK_EVERY: Duration = Duration::from_millis(250);
/// How soon a failed push is tried again.
const PUSH_RETRY: Duration = Duration::from_millis(500);
/// How long records that nothing waits for gather before they are pushed together; a
/// [`Held::flush`] pushes at once. A step's outcome goes out with the next step's start anyway
/// (within [`SOON`]): in a step shorter than this, its own records add no write of their own
/// (each write is the whole mirrored journal). With 1 s, a 20-pod canary of five one-second steps
/// made 9 writes of the ConfigMap; with 2 s, 7.
const GATHER: Duration = Duration::from_secs(2);
/// How long a [`Held::push_soon`] waits for a flush to push with: a step's first change
/// usually follows its start within milliseconds, and both go out in one write.
const SOON: Duration = Duration::from_millis(50);

/// One renewal of the lock, as a store makes it.
pub(crate) trait Renew: Send {
    /// `Ok(None)`: renewed; `Ok(Some(why))`: the lock is someone else's now, for good; `Err`: a
    /// failure that may pass (the store away for a moment).
    fn renew(&mut self) -> impl Future<Output = Result<Option<String>, String>> + Send;
}

/// One push of the local journal to the store, as a store makes it.
pub(crate) trait Push: Send {
    /// Writes what the store lacks of the local journal; the error's text on failure.
    fn push(&mut self) -> impl Future<Output = Result<(), String>> + Send;
}

/// Why [`Held::flush`] gave up.
pub(crate) enum Unflushed {
    /// The lock is no longer this process's ([`Held::lost`]'s message).
    Lost(String),
    /// Pushing has kept failing for [`WRITE_WINDOW`]: the last error.
    Failing(String),
}

pub(crate) struct Held {
    fence: Fence,
    /// `the lock on web (etcd key /rollgate/web/lock)`, for messages.
    lock: String,
    /// Bumped after each local append.
    written: AtomicU64,
    wake: tokio::sync::Notify,
    /// Rung by a flush that waits: the push goes out without gathering.
    urgent: tokio::sync::Notify,
    /// Rung by [`Held::push_soon`]: the push goes out within [`SOON`].
    soon: tokio::sync::Notify,
    /// The last `written` value pushed to the store.
    pushed: tokio::sync::watch::Sender<u64>,
    push_error: Mutex<Option<String>>,
}

impl Held {
    /// `fence` open, as the lock was just taken; `lock` names it in messages.
    pub(crate) fn new(fence: Fence, lock: String) -> Held {
        let (pushed, _) = tokio::sync::watch::channel(0);
        Held {
            fence,
            lock,
            written: AtomicU64::new(0),
            wake: tokio::sync::Notify::new(),
            urgent: tokio::sync::Notify::new(),
            soon: tokio::sync::Notify::new(),
            pushed,
            push_error: Mutex::new(None),
        }
    }

    pub(crate) fn fence(&self) -> &Fence {
        &self.fence
    }

    /// Why this process may no longer act for the app, if it may not.
    pub(crate) fn lost(&self) -> Option<String> {
        self.fence.check().err().map(|why| {
            format!(
                "{} is no longer this process's: {why}; nothing more was written",
                self.lock
            )
        })
    }

    /// Resolves once [`Held::lost`] would say so.
    pub(crate) async fn wait_lost(&self) -> String {
        loop {
            if let Some(why) = self.lost() {
                return why;
            }
            tokio::time::sleep(LOOK_EVERY).await;
        }
    }

    /// Says the local journal grew: the push task pushes it.
    pub(crate) fn changed(&self) {
        self.written.fetch_add(1, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Has what was journaled so far pushed within [`SOON`] (with a flush that comes sooner),
    /// without waiting.
    pub(crate) fn push_soon(&self) {
        self.soon.notify_one();
    }

    /// Waits until everything journaled so far is in the store; fails when the lock is lost, or
    /// when pushing has kept failing for [`WRITE_WINDOW`] (a rollout must not go on where other
    /// machines cannot see it).
    pub(crate) async fn flush(&self) -> Result<(), Unflushed> {
        let target = self.written.load(Ordering::SeqCst);
        let mut pushed = self.pushed.subscribe();
        if *pushed.borrow() < target {
            self.urgent.notify_one();
        }
        let started = Instant::now();
        loop {
            if *pushed.borrow_and_update() >= target {
                return Ok(());
            }
            if let Some(why) = self.lost() {
                return Err(Unflushed::Lost(why));
            }
            if started.elapsed() > WRITE_WINDOW
                && let Some(why) = self.push_error()
            {
                return Err(Unflushed::Failing(why));
            }
            // Woken by the push, or after a quarter second to look at the fence again.
            let _ = tokio::time::timeout(LOOK_EVERY, pushed.changed()).await;
        }
    }

    /// The last error of the push task, if its last push failed.
    pub(crate) fn push_error(&self) -> Option<String> {
        self.push_error.lock().expect("push error").clone()
    }

    /// The push task: after each [`changed`](Held::changed) (gathering changes for up to
    /// `GATHER` unless a flush waits), pushes until a push succeeds (every
    /// half second while it fails, or while the fence is closed); ends once the lock is lost.
    pub(crate) async fn push_loop(&self, mut store: impl Push) {
        loop {
            self.wake.notified().await;
            // Records nothing waits for go out together, one write for the lot: after `GATHER`,
            // within `SOON` of a step boundary, or at once when a flush waits (a change about to
            // be made, a run stopping).
            let gathered = async {
                tokio::select! {
                    () = self.urgent.notified() => {}
                    () = self.soon.notified() => {
                        let _ = tokio::time::timeout(SOON, self.urgent.notified()).await;
                    }
                }
            };
            let _ = tokio::time::timeout(GATHER, gathered).await;
            let version = self.written.load(Ordering::SeqCst);
            loop {
                if self.fence.is_lost() {
                    return;
                }
                let result = match self.fence.check() {
                    Err(why) => Err(why),
                    Ok(()) => store.push().await,
                };
                match result {
                    Ok(()) => {
                        *self.push_error.lock().expect("push error") = None;
                        self.pushed.send_replace(version);
                        break;
                    }
                    Err(why) => {
                        *self.push_error.lock().expect("push error") = Some(why);
                        tokio::time::sleep(PUSH_RETRY).await;
                    }
                }
            }
        }
    }

    /// The renewal task: renews the lock every `every` (sooner after a failure: the window runs
    /// from the last success), opening the fence for [`WRITE_WINDOW`] from the start of each
    /// renewal that succeeds; ends once the lock is someone else's.
    pub(crate) async fn renew_loop(&self, app: &str, every: Duration, mut lock: impl Renew) {
        let mut wait = every;
        let mut failing = false;
        loop {
            tokio::time::sleep(wait).await;
            wait = every;
            let started = Instant::now();
            match lock.renew().await {
                Ok(None) => {
                    self.fence.open_until(started + WRITE_WINDOW);
                    failing = false;
                }
                Ok(Some(why)) => {
                    self.fence.lose(why);
                    return;
                }
                // Transient: the fence closes by itself if renewals keep failing. Said once a
                // streak, not at every retry.
                Err(e) => {
                    if !failing {
                        eprintln!("warning: renewing the lock on {app}: {e} (trying again)");
                    }
                    failing = true;
                    wait = RENEW_RETRY;
                }
            }
        }
    }

    /// Before a release: whether the lock is still this process's; if it is, the fence shuts
    /// (nothing more goes out but the release itself).
    pub(crate) fn shut(&self) -> bool {
        if self.fence.is_lost() {
            return false;
        }
        self.fence.shut();
        true
    }
}

/// A session's background tasks: aborted when dropped, or stopped (and awaited) by a release.
pub(crate) struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Tasks {
    pub(crate) fn new(tasks: Vec<tokio::task::JoinHandle<()>>) -> Tasks {
        Tasks(tasks)
    }

    /// Aborts every task and waits until each has ended.
    pub(crate) async fn stop(&mut self) {
        for task in self.0.drain(..) {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}
