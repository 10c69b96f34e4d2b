//! The seam between the engine and what it deploys to: host fleets now, Kubernetes next.

pub mod hosts;

use std::time::Duration;

use crate::health::Probe;
use crate::spec::Check;

/// One instance as the target sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub name: String,
    /// The version it serves now, if any.
    pub version: Option<String>,
    /// The version it served before, kept for an instant rollback.
    pub previous: Option<String>,
    /// Versions already on the instance (no download needed).
    pub installed: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("{instance}: agent unreachable")]
    AgentUnreachable {
        instance: String,
        #[source]
        source: crate::agent::client::ClientError,
    },
    #[error("{instance}: {message}")]
    Rejected { instance: String, message: String },
    #[error("target setup: {0}")]
    Setup(String),
}

pub type Result<T, E = TargetError> = std::result::Result<T, E>;

/// What the engine needs from a target. Implementations wait on events (long-polls, watches); the
/// engine decides deadlines.
pub trait Target {
    /// Every instance, in the target's natural order.
    fn instances(&self) -> impl Future<Output = Result<Vec<Instance>>> + Send;
    /// Makes `version` available on `instances` ahead of their wave, without touching what runs.
    fn prepare(
        &self,
        version: &str,
        instances: &[String],
    ) -> impl Future<Output = Result<()>> + Send;
    /// Switches `instances` to `version` and waits until each is running and ready, or `deadline`.
    /// Each instance's outcome is reported separately.
    fn switch(
        &self,
        instances: &[String],
        version: &str,
        deadline: Duration,
    ) -> impl Future<Output = Vec<(String, Result<()>)>> + Send;
    /// One probe of `check` against `instance` (or from the CLI, for `runOn: cli`).
    fn probe(&self, check: &Check, instance: &str) -> impl Future<Output = Probe> + Send;
}
