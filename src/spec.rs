//! The rollout manifest: its serde model, loading with overlays and presets, and validation.

mod auto_rollback;
pub mod on_pod;
pub mod quantity;
mod resolve;
pub mod source;
pub mod state;
mod target;
pub mod traffic;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::approval::ApproversSpec;

pub use quantity::{Dur, IntOrPercent, Rounding};
pub use source::{InputError, Sources};
pub use target::{
    AgentAuth, ArtifactSpec, Host, HostsTarget, KubernetesTarget, TargetSpec, TrafficSwitch,
};
pub use traffic::{CanaryScale, GatewayApi, TrafficRouting};

pub const API_VERSION: &str = "rollgate.dev/v1";

/// Presets built into the binary; files with the same name on disk take precedence.
pub const PRESETS: &[(&str, &str)] = &[
    ("rolling", include_str!("../strategies/rolling.yaml")),
    (
        "one-at-a-time",
        include_str!("../strategies/one-at-a-time.yaml"),
    ),
    (
        "zero-downtime",
        include_str!("../strategies/zero-downtime.yaml"),
    ),
    (
        "canary-10-25-50",
        include_str!("../strategies/canary-10-25-50.yaml"),
    ),
    ("blue-green", include_str!("../strategies/blue-green.yaml")),
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rollout {
    #[schemars(extend("const" = API_VERSION))]
    pub api_version: String,
    #[schemars(extend("const" = "Rollout"))]
    pub kind: String,
    pub metadata: Metadata,
    pub spec: RolloutSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    /// The application's name: history, locks and `rollback` key on it.
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RolloutSpec {
    pub version: String,
    pub target: TargetSpec,
    pub strategy: StrategySpec,
    #[serde(default)]
    pub checks: Vec<Check>,
    #[serde(default)]
    pub rollback: RollbackSpec,
    /// A step that makes no progress for this long fails (Kubernetes' default is 600).
    #[serde(default = "default_progress_deadline")]
    pub progress_deadline_seconds: u64,
    /// Lifecycle webhooks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<Webhook>,
    /// Where events are sent; never blocks or fails a rollout.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notifications: Vec<Notification>,
    /// Host fleets: the team state's store (etcd); without it, this machine's state dir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<state::StateSpec>,
}

/// A lifecycle webhook: JSON POSTed at one point of the rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Webhook {
    pub name: String,
    #[serde(rename = "type")]
    pub hook_type: HookType,
    pub url: String,
    #[serde(default = "five_seconds")]
    pub timeout: Dur,
    /// Extra attempts after a non-2xx answer or a timeout.
    #[serde(default = "two")]
    pub retries: u32,
}

fn two() -> u32 {
    2
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum HookType {
    /// Before anything changes; a non-2xx answer holds the rollout (exit code 3, nothing changed).
    ConfirmRollout,
    /// Before the first step; a non-2xx answer fails the rollout before anything changed.
    PreRollout,
    /// Before going to everyone (the last canary step, or the blue-green switch); non-2xx pauses.
    ConfirmPromotion,
    /// After success; its failure is logged only.
    PostRollout,
    /// When a rollback starts; its failure is logged only.
    Rollback,
    /// Every journal event; never blocks, failures are logged.
    Event,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Notification {
    pub url: String,
    #[serde(default)]
    pub format: NotificationFormat,
    /// Which events; empty means all of started, stepPassed, paused, promoted, failed, rolledBack, succeeded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    #[serde(default = "five_seconds")]
    pub timeout: Dur,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum NotificationFormat {
    #[default]
    Json,
    Slack,
}

fn one() -> u32 {
    1
}

fn default_progress_deadline() -> u64 {
    600
}

/// Exactly one of the fields is set.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct StrategySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling: Option<RollingSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanarySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blue_green: Option<BlueGreenSpec>,
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RollingSpec {
    #[serde(default = "quarter")]
    pub max_surge: IntOrPercent,
    #[serde(default = "quarter")]
    pub max_unavailable: IntOrPercent,
    #[serde(default)]
    pub min_ready_seconds: u64,
}

fn quarter() -> IntOrPercent {
    IntOrPercent::Percent(25)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CanarySpec {
    #[serde(default = "one_instance")]
    pub max_surge: IntOrPercent,
    #[serde(default = "zero_instances")]
    pub max_unavailable: IntOrPercent,
    #[serde(default)]
    pub min_ready_seconds: u64,
    /// For host fleets: a group whose hosts take the first canary step, whatever its weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_group: Option<String>,
    pub steps: Vec<CanaryStep>,
    /// Metric checks that run in the background for the rest of the rollout from `startingStep`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<BackgroundAnalysis>,
    /// Traffic split by weight through a router (README "Traffic-weighted canary"), not only by
    /// replica counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_routing: Option<TrafficRouting>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackgroundAnalysis {
    /// Names of metric checks in `spec.checks`.
    pub checks: Vec<String>,
    /// The index in `steps` from which it runs.
    #[serde(default)]
    pub starting_step: usize,
}

fn one_instance() -> IntOrPercent {
    IntOrPercent::Int(1)
}

fn zero_instances() -> IntOrPercent {
    IntOrPercent::Int(0)
}

/// Exactly one of the fields is set.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct CanaryStep {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_weight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<PauseSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisSpec>,
    /// With `trafficRouting`: how many canary instances run from here on (Argo's setCanaryScale).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_canary_scale: Option<CanaryScale>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PauseSpec {
    /// Without a duration the pause lasts until `rollgate promote`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<Dur>,
    /// Distinct people who must `promote` before the rollout goes on.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub approvals: u32,
    /// Only approvals signed with approver certificates from this CA count (README "Change approval").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvers: Option<ApproversSpec>,
    /// Whether the person who started the rollout may be one of two or more approvers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_self_approval: bool,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AnalysisSpec {
    /// Names from `spec.checks`; empty means all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BlueGreenSpec {
    #[serde(default)]
    pub auto_promotion_enabled: bool,
    #[serde(default)]
    pub auto_promotion_seconds: u64,
    /// Instances of the new set before promotion; absent or 0 means full size.
    #[serde(default)]
    pub preview_replica_count: u32,
    #[serde(default = "thirty")]
    pub scale_down_delay_seconds: u64,
    #[serde(default)]
    pub min_ready_seconds: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_promotion_analysis: Option<AnalysisSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_promotion_analysis: Option<AnalysisSpec>,
}

fn thirty() -> u64 {
    30
}

/// A health gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(extend("oneOf" = [{"required": ["http"]}, {"required": ["tcp"]}, {"required": ["command"]}, {"required": ["prometheus"]}, {"required": ["web"]}]))]
pub struct Check {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandProbe>,
    /// Where the probe runs: on each `host` through its agent, or from the `cli`.
    #[serde(default)]
    pub run_on: RunOn,
    #[serde(default = "five_seconds")]
    pub interval: Dur,
    /// Probes per gate; the gate passes when `successThreshold` consecutive probes pass.
    #[serde(default = "one")]
    pub count: u32,
    /// Failed probes tolerated before the gate fails.
    #[serde(default)]
    pub failure_limit: u32,
    #[serde(default = "one")]
    pub success_threshold: u32,
    #[serde(default)]
    pub initial_delay: Dur,
    #[serde(default = "two_seconds")]
    pub timeout: Dur,
    /// Whether this check also decides instance readiness (on hosts).
    #[serde(default)]
    pub readiness: bool,
    /// A PromQL query, run from the CLI at each interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusProbe>,
    /// A JSON endpoint, with the value picked by `jsonPath`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web: Option<WebProbe>,
    /// Metric checks: the measurement succeeds when this holds (see the condition language).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_condition: Option<String>,
    /// Metric checks: the measurement fails when this holds; it is tried first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_condition: Option<String>,
    /// Metric checks: measurements with no data tolerated before a person must decide.
    #[serde(default)]
    pub inconclusive_limit: u32,
    /// Metric checks: query errors in a row tolerated before the check fails.
    #[serde(default = "four")]
    pub consecutive_error_limit: u32,
}

fn four() -> u32 {
    4
}

impl Check {
    /// Prometheus and web checks measure a value; the others probe instances.
    pub fn is_metric(&self) -> bool {
        self.prometheus.is_some() || self.web.is_some()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PrometheusProbe {
    pub address: String,
    /// `{{app}}`, `{{version}}`, `{{canary_version}}`, `{{canary_weight}}`, `{{stable_version}}`, `{{namespace}}` and
    /// `{{hosts}}` are replaced before the query runs.
    pub query: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WebProbe {
    pub url: String,
    #[serde(default = "get")]
    pub method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    pub json_path: String,
}

fn get() -> String {
    "GET".into()
}

fn five_seconds() -> Dur {
    Dur(std::time::Duration::from_secs(5))
}

fn two_seconds() -> Dur {
    Dur(std::time::Duration::from_secs(2))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RunOn {
    #[default]
    Host,
    Cli,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpProbe {
    /// `{host}` and `{instance}` are replaced by rollgate, `{port}` by the agent (the slot port);
    /// on a Kubernetes pod with `runOn: host`, see `spec::on_pod`.
    pub url: String,
    #[serde(default = "ok_status")]
    pub expect_status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_contains: Option<String>,
}

fn ok_status() -> u16 {
    200
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpProbe {
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CommandProbe {
    pub run: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AutoRollback {
    #[default]
    Yes,
    No,
    Pause,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RollbackSpec {
    #[serde(default, with = "auto_rollback")]
    #[schemars(schema_with = "auto_rollback::schema")]
    pub auto: AutoRollback,
}

/// A strategy with its `ref` resolved.
#[derive(Debug, Clone, PartialEq)]
pub enum Strategy {
    Rolling(RollingSpec),
    Canary(CanarySpec),
    BlueGreen(BlueGreenSpec),
}

impl Strategy {
    /// How long a changed instance stays ready before it counts as available.
    pub fn min_ready_seconds(&self) -> u64 {
        match self {
            Strategy::Rolling(r) => r.min_ready_seconds,
            Strategy::Canary(c) => c.min_ready_seconds,
            Strategy::BlueGreen(b) => b.min_ready_seconds,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Strategy::Rolling(_) => "rolling",
            Strategy::Canary(_) => "canary",
            Strategy::BlueGreen(_) => "blueGreen",
        }
    }
}

/// A loaded, validated manifest: the document plus its resolved strategy.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub rollout: Rollout,
    pub strategy: Strategy,
    /// Where the strategy came from: `inline`, a file, or `builtin:NAME`.
    pub strategy_source: String,
    pub sources: Sources,
}

impl Manifest {
    /// Loads `files` with overlays and the process environment, resolves the strategy and validates.
    pub fn load(files: &[PathBuf], env: Option<&str>) -> Result<Self, InputError> {
        Self::load_with(files, env, &source::process_env)
    }

    pub fn load_with(
        files: &[PathBuf],
        env: Option<&str>,
        vars: source::Vars<'_>,
    ) -> Result<Self, InputError> {
        let sources = Sources::read(files, env, vars)?;
        Self::from_sources(sources, vars)
    }

    pub fn from_sources(sources: Sources, vars: source::Vars<'_>) -> Result<Self, InputError> {
        let mut rollout: Rollout = sources.deserialize()?;
        if let Some(h) = rollout.spec.target.hosts_mut()
            && h.service.is_empty()
        {
            h.service = rollout.metadata.name.clone();
        }
        if rollout.api_version != API_VERSION {
            return Err(sources.error(
                "apiVersion",
                format!(
                    "{:?} is not supported: expected {API_VERSION:?}",
                    rollout.api_version
                ),
            ));
        }
        if rollout.kind != "Rollout" {
            return Err(sources.error("kind", format!("{:?}: expected \"Rollout\"", rollout.kind)));
        }
        let base_dir = sources
            .files
            .first()
            .and_then(|s| s.file.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        let (strategy, strategy_source) =
            resolve::resolve_strategy(&rollout.spec.strategy, &sources, &base_dir, vars)?;
        let mut manifest = Manifest {
            rollout,
            strategy,
            strategy_source,
            sources,
        };
        manifest.validate()?;
        manifest.check_approver_cas(&base_dir)?;
        manifest.absolutize(&base_dir);
        Ok(manifest)
    }

    pub fn name(&self) -> &str {
        &self.rollout.metadata.name
    }

    /// The warning every command that loads a hosts manifest with `auth: {insecure: true}` prints.
    pub fn insecure_warning(&self) -> Option<String> {
        let h = self.rollout.spec.target.hosts()?;
        h.auth.as_ref().filter(|a| a.insecure).map(|_| {
            format!(
                "warning: {}: spec.target.hosts.auth.insecure: rollgate talks to the agents of {} over plain HTTP, unauthenticated (a lab only)",
                self.sources
                    .files
                    .first()
                    .map(|f| f.file.display().to_string())
                    .unwrap_or_default(),
                self.name()
            )
        })
    }

    /// Relative paths in the manifest are relative to its folder; the journal keeps them absolute so
    /// that `resume` and `rollback` work from any directory.
    fn absolutize(&mut self, base: &Path) {
        // `-f web.yaml` has the empty path as its parent, which `absolute` refuses: that is the
        // current directory (issue 15 §5: the paths stayed relative, and `rollback` failed).
        let base = if base.as_os_str().is_empty() {
            Path::new(".")
        } else {
            base
        };
        let base = std::path::absolute(base).unwrap_or_else(|_| base.to_path_buf());
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(k) = self.rollout.spec.target.kubernetes_mut()
            && let Some(m) = &mut k.manifest
            && std::path::Path::new(m.as_str()).is_relative()
        {
            *m = base.join(m.as_str()).display().to_string();
        }
        self.absolutize_approver_cas(&base);
        if let Some(st) = &mut self.rollout.spec.state {
            st.etcd.absolutize(&base);
        }
        if let Some(h) = self.rollout.spec.target.hosts_mut() {
            if let Some(a) = &mut h.artifact
                && let Some(f) = &mut a.file
            {
                fix(f);
            }
            if let Some(auth) = &mut h.auth {
                for p in [
                    &mut auth.ca,
                    &mut auth.cert,
                    &mut auth.key,
                    &mut auth.token_file,
                ]
                .into_iter()
                .flatten()
                {
                    fix(p);
                }
            }
        }
    }

    /// The manifest with its strategy resolved inline, as the journal stores it.
    pub fn resolved(&self) -> Rollout {
        let mut r = self.rollout.clone();
        r.spec.strategy = match &self.strategy {
            Strategy::Rolling(x) => StrategySpec {
                rolling: Some(x.clone()),
                ..Default::default()
            },
            Strategy::Canary(x) => StrategySpec {
                canary: Some(x.clone()),
                ..Default::default()
            },
            Strategy::BlueGreen(x) => StrategySpec {
                blue_green: Some(x.clone()),
                ..Default::default()
            },
        };
        r
    }

    /// Rebuilds a manifest from a stored, resolved rollout.
    pub fn from_resolved(rollout: Rollout, origin: &Path) -> Result<Self, InputError> {
        let text =
            serde_yaml::to_string(&rollout).map_err(|e| InputError::general(e.to_string()))?;
        let sources = Sources::from_texts(&[(origin, &text)], &|_| None)?;
        Self::from_sources(sources, &|_| None)
    }
}
