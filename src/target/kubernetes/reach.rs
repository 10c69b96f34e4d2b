//! Reach: the API server's reachability, requests retried through its restarts, and errors that say
//! which request failed and why.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kube::api::PatchParams;

use super::{FIELD_MANAGER, Kubernetes};
use crate::target::TargetError;

/// Retries of requests and watches: 100 ms doubling to 2 s, so a restarted API server is found
/// again within 2 s of answering (kube's watcher default grows to 30 s, most of a step).
pub(super) const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MOST: Duration = Duration::from_secs(2);
/// How long a request keeps retrying outside a step (before the first), and at least how long
/// during a rollback: a rollback is the way back to safety.
pub(super) const PATIENCE_OUTSIDE_STEPS: Duration = Duration::from_secs(60);

/// The API server's reachability, as requests and watches find it. A loss is reported once, when
/// it begins, and its end once, with how long it lasted: a restarting API server costs a pause, and
/// the output says so, instead of failing the step.
pub(super) struct Reach {
    lost: std::sync::Mutex<Option<(tokio::time::Instant, String)>>,
    /// How long a request retries connection errors and "unavailable" answers: the step's
    /// progressDeadlineSeconds while a step runs.
    patience_ms: AtomicU64,
    /// Whether that patience is a step's progressDeadlineSeconds (for the reason of a failure).
    in_step: std::sync::atomic::AtomicBool,
}

impl Default for Reach {
    fn default() -> Self {
        Reach {
            lost: std::sync::Mutex::default(),
            patience_ms: AtomicU64::new(PATIENCE_OUTSIDE_STEPS.as_millis() as u64),
            in_step: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl Reach {
    pub(super) fn set_patience(&self, patience: Duration, in_step: bool) {
        let ms = u64::try_from(patience.as_millis()).unwrap_or(u64::MAX);
        self.patience_ms.store(ms, Ordering::Relaxed);
        self.in_step.store(in_step, Ordering::Relaxed);
    }

    /// How long a request retries now, in words: "progressDeadlineSeconds (5s)" during a step.
    fn patience_text(&self) -> String {
        let secs = self.patience_ms.load(Ordering::Relaxed) as f64 / 1000.0;
        if self.in_step.load(Ordering::Relaxed) {
            format!("progressDeadlineSeconds ({secs:.0}s)")
        } else {
            format!("{secs:.0}s")
        }
    }

    pub(super) fn lost(&self, e: &dyn std::error::Error) {
        let mut lost = self.lost.lock().expect("reach lock");
        if lost.is_none() {
            // kube's errors repeat their source in their text: the first and the root suffice.
            let mut root = e;
            while let Some(source) = root.source() {
                root = source;
            }
            let why = if std::ptr::addr_eq(root, e) {
                e.to_string()
            } else {
                format!("{e} ({root})")
            };
            eprintln!("warning: lost the Kubernetes API server: {why}; retrying");
            *lost = Some((tokio::time::Instant::now(), why));
        }
    }

    pub(super) fn regained(&self) {
        if let Some((since, _)) = self.lost.lock().expect("reach lock").take() {
            eprintln!(
                "the Kubernetes API server answers again, after {:.1}s",
                since.elapsed().as_secs_f64()
            );
        }
    }

    /// Since when, and why, the API server has been out of reach.
    pub(super) fn outage(&self) -> Option<(tokio::time::Instant, String)> {
        self.lost.lock().expect("reach lock").clone()
    }

    /// Runs `request` until the API server answers it, retrying what a restart causes (no
    /// connection, a connection cut, 429 / 5xx) for the current patience. Requests are retried
    /// whole, so each is idempotent or handles its own replay (409 on create, 404 on delete).
    pub(super) async fn call<T, F, Fut>(&self, mut request: F) -> kube::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = kube::Result<T>>,
    {
        let patience = Duration::from_millis(self.patience_ms.load(Ordering::Relaxed));
        let started = tokio::time::Instant::now();
        let mut pause = RETRY_FIRST;
        loop {
            match request().await {
                Err(e) if transient(&e) && started.elapsed() + pause < patience => {
                    self.lost(&e);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_MOST);
                }
                Err(e) if transient(&e) => return Err(e),
                answered => {
                    self.regained();
                    return answered;
                }
            }
        }
    }
}

/// Whether an error is the API server being away (restarting, overloaded) rather than an answer.
pub(super) fn transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => matches!(s.code, 429 | 500 | 502 | 503 | 504),
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => true,
        _ => false,
    }
}

/// The watches' backoff after an error (see `RETRY_FIRST`); reset by the next event.
pub(super) struct WatchRetry(pub(super) Duration);

impl Iterator for WatchRetry {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let pause = self.0;
        self.0 = (pause * 2).min(RETRY_MOST);
        Some(pause)
    }
}

impl kube::runtime::utils::Backoff for WatchRetry {
    fn reset(&mut self) {
        self.0 = RETRY_FIRST;
    }
}

pub(super) fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
}

impl Kubernetes {
    pub(super) fn fail(&self, what: &str, e: impl std::fmt::Display + 'static) -> TargetError {
        // The API server's refusal names the verb and the resource; say where the grant lives.
        let message = match (&e as &dyn std::any::Any).downcast_ref::<kube::Error>() {
            Some(kube::Error::Api(s)) if s.code == 403 => format!(
                "{what}: forbidden: {} (the Role rollgate needs is manifests/kubernetes/rbac.yaml)",
                s.message
            ),
            // The request retried for as long as it may: say so, not only the last error.
            Some(k) if transient(k) => {
                let away = match self.reach.outage() {
                    Some((since, why)) => format!(
                        "out of reach for {:.0}s: {why}",
                        since.elapsed().as_secs_f64()
                    ),
                    None => format!("out of reach: {e}"),
                };
                format!(
                    "{what}: no answer from the Kubernetes API server within {}; {away}",
                    self.reach.patience_text()
                )
            }
            _ => format!("{what}: {e}"),
        };
        TargetError::Rejected {
            instance: format!(
                "deployment {}/{}",
                self.spec.namespace, self.spec.deployment
            ),
            message,
        }
    }

    /// Appended to a timeout's reason while the API server is out of reach.
    pub(super) fn outage_note(&self) -> String {
        self.reach
            .outage()
            .map_or_else(String::new, |(since, why)| {
                format!(
                    " (the Kubernetes API server has been out of reach for {:.0}s: {why})",
                    since.elapsed().as_secs_f64()
                )
            })
    }
}
