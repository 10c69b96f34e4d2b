//! Paused: the canary's pods watched while a rollout waits at a manual pause (`rollgate watch`),
//! and why they will not serve any more.

use kube::ResourceExt;

use super::Kubernetes;
use super::view::{pod_failure, pod_version};
use crate::target::Result;

/// How long a pod of the new version may stay not Ready after it was Ready before the watch
/// calls it failing (a readiness probe that fails a few times is not yet a failure).
pub const NOT_READY_GRACE_MS: i64 = 10_000;

impl Kubernetes {
    /// Why `version`'s pods are failing now (one crashed, cannot start, or has not been Ready for
    /// [`NOT_READY_GRACE_MS`]), from the watched copy; `None` while they serve. Returns once the
    /// watch has seen a change when `wait` is set, so a caller loops on events, not on a timer.
    pub(super) async fn failing_now(&self, version: &str, wait: bool) -> Result<Option<String>> {
        let cache = self.cache().await?;
        if wait {
            let mut changes = cache.changes.clone();
            // A quiet watch still re-checks the not-Ready grace on time.
            let _ = tokio::time::timeout(
                std::time::Duration::from_millis(NOT_READY_GRACE_MS as u64 / 4),
                changes.changed(),
            )
            .await;
        }
        let now = crate::state::now_ms() as i64;
        for p in cache.pods.state() {
            if p.metadata.deletion_timestamp.is_some()
                || pod_version(&p, self.container()).as_deref() != Some(version)
            {
                continue;
            }
            if let Some(why) = pod_failure(&p) {
                return Ok(Some(format!("pod {}: {why}", p.name_any())));
            }
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
            if let Some(c) = ready
                && c.status == "False"
                && let Some(t) = &c.last_transition_time
                && now - t.0.as_millisecond() > NOT_READY_GRACE_MS
            {
                return Ok(Some(format!(
                    "pod {}: not Ready for {}s{}",
                    p.name_any(),
                    (now - t.0.as_millisecond()) / 1000,
                    c.message
                        .as_deref()
                        .map(|m| format!(" ({m})"))
                        .unwrap_or_default()
                )));
            }
        }
        Ok(None)
    }
}
