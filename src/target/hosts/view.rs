//! What a host's agent reports: its slots and installed versions, and what the target reads from them.

use std::time::Duration;

use futures_util::future::join_all;

use super::Hosts;
use crate::agent::api::RunState;
use crate::target::{Instance, Result, TargetError};

/// One slot of one host, as its agent reports it.
#[derive(Debug, Clone)]
pub(super) struct SlotView {
    pub(super) slot: u32,
    pub(super) port: Option<u16>,
    pub(super) active: Option<String>,
    pub(super) previous: Option<String>,
    pub(super) running: bool,
    pub(super) uptime_ms: Option<u64>,
}

#[derive(Debug, Clone)]
pub(super) struct HostView {
    pub(super) slots: Vec<SlotView>,
    pub(super) installed: Vec<String>,
}

impl HostView {
    pub(super) fn running(&self) -> impl Iterator<Item = &SlotView> {
        self.slots.iter().filter(|s| s.running)
    }

    pub(super) fn runs(&self, version: &str) -> bool {
        self.running().any(|s| s.active.as_deref() == Some(version))
    }

    pub(super) fn runs_other(&self, version: &str) -> bool {
        self.running().any(|s| s.active.as_deref() != Some(version))
    }

    pub(super) fn slot_running(&self, version: &str) -> Option<&SlotView> {
        self.running()
            .find(|s| s.active.as_deref() == Some(version))
    }

    /// Where to start `version`: a stopped slot (one that already holds it first), else none.
    pub(super) fn idle_slot(&self, version: &str) -> Option<u32> {
        let stopped = || self.slots.iter().filter(|s| !s.running);
        stopped()
            .find(|s| s.active.as_deref() == Some(version))
            .or_else(|| stopped().next())
            .map(|s| s.slot)
    }

    pub(super) fn instance(&self, name: &str) -> Instance {
        // The most recently started running slot is the one a rollout last touched.
        let newest = self
            .running()
            .min_by_key(|s| s.uptime_ms.unwrap_or(u64::MAX));
        let primary = newest.or_else(|| self.slots.first());
        let previous = if self.slots.len() > 1 {
            self.slots
                .iter()
                .find(|s| Some(s.slot) != primary.map(|p| p.slot))
                .and_then(|s| s.active.clone())
        } else {
            primary.and_then(|s| s.previous.clone())
        };
        Instance {
            name: name.to_string(),
            version: primary.and_then(|s| s.active.clone()),
            previous,
            installed: self.installed.clone(),
            running: self.running().filter_map(|s| s.active.clone()).collect(),
        }
    }
}

impl Hosts {
    pub(super) async fn view(&self, name: &str) -> Result<HostView> {
        let status = self.service_of(name).await?;
        let slots = status
            .slots
            .iter()
            .map(|s| SlotView {
                slot: s.slot,
                port: s.port,
                active: s.active.clone(),
                previous: s.previous.clone(),
                running: s.desired_running
                    && matches!(s.state, RunState::Running | RunState::Starting),
                uptime_ms: s.uptime_ms,
            })
            .collect();
        Ok(HostView {
            slots,
            installed: status.versions.iter().map(|v| v.version.clone()).collect(),
        })
    }

    /// Every host's view, each bounded by `limit`; unreachable hosts come back as errors, so one
    /// dead agent does not stop the others from being acted on.
    pub(super) async fn views_each(&self, limit: Duration) -> Vec<(String, Result<HostView>)> {
        let calls = self.order.iter().map(|name| async move {
            let view = match tokio::time::timeout(limit, self.view(name)).await {
                Ok(v) => v,
                Err(_) => Err(TargetError::Rejected {
                    instance: name.clone(),
                    message: format!("agent did not answer within {limit:?}"),
                }),
            };
            (name.clone(), view)
        });
        join_all(calls).await
    }

    pub(super) async fn views(&self) -> Result<Vec<(String, HostView)>> {
        let calls = self
            .order
            .iter()
            .map(|name| async move { self.view(name).await.map(|v| (name.clone(), v)) });
        join_all(calls).await.into_iter().collect()
    }
}
