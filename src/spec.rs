//! The rollout manifest: its serde model, loading with overlays and presets, and validation.

pub mod quantity;
pub mod source;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use quantity::{Dur, IntOrPercent};
pub use source::{InputError, Sources};

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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rollout {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: RolloutSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    /// The application's name: history, locks and `rollback` key on it.
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
}

/// A lifecycle webhook: JSON POSTed at one point of the rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum NotificationFormat {
    #[default]
    Json,
    Slack,
}

fn default_progress_deadline() -> u64 {
    600
}

/// Exactly one of the fields is set.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TargetSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesTarget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<HostsTarget>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubernetesTarget {
    #[serde(default = "default_namespace")]
    pub namespace: String,
    pub deployment: String,
    /// The new image; with several containers, `container` names the one to change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// A Deployment YAML whose pod template is the new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
}

fn default_namespace() -> String {
    "default".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HostsTarget {
    #[serde(default = "one")]
    pub slots_per_host: u32,
    pub hosts: Vec<Host>,
    /// A label (usually `zone`) whose values must never be down at the same time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread_by: Option<String>,
    /// The service, by the name it has in each agent's configuration.
    #[serde(default = "default_service")]
    pub service: String,
    /// Where the new version comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<ArtifactSpec>,
    /// How rollgate authenticates to the agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AgentAuth>,
    /// Called with the new active set at a blue-green switch, and with the old set on a switch back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_switch: Option<TrafficSwitch>,
}

/// A traffic switch hook: a command (given the active set as JSON on stdin and as
/// `ROLLGATE_ACTIVE=ip:port,...`) or an HTTP webhook (the JSON as a POST body). Non-zero exit or a
/// non-2xx answer fails the switch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficSwitch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
    #[serde(default = "ten_seconds")]
    pub timeout: Dur,
}

fn ten_seconds() -> Dur {
    Dur(std::time::Duration::from_secs(10))
}

fn default_service() -> String {
    "app".into()
}

/// The artifact of the new version: a local file streamed to each agent, or a URL the agents fetch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ArtifactSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Required with `url`; computed for `file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// mTLS files (the default) or a bearer token read from a file or an environment variable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AgentAuth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Host {
    pub name: String,
    pub address: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// Exactly one of the fields is set.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CanaryStep {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_weight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<PauseSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisSpec>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PauseSpec {
    /// Without a duration the pause lasts until `rollgate promote`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<Dur>,
    /// Distinct people who must `promote` before the rollout goes on.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub approvals: u32,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AnalysisSpec {
    /// Names from `spec.checks`; empty means all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PrometheusProbe {
    pub address: String,
    /// `{{app}}`, `{{version}}`, `{{canary_version}}`, `{{stable_version}}`, `{{namespace}}` and
    /// `{{hosts}}` are replaced before the query runs.
    pub query: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RunOn {
    #[default]
    Host,
    Cli,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpProbe {
    /// `{host}` and `{instance}` are replaced by rollgate, `{port}` by the agent (the slot port).
    pub url: String,
    #[serde(default = "ok_status")]
    pub expect_status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_contains: Option<String>,
}

fn ok_status() -> u16 {
    200
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpProbe {
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RollbackSpec {
    #[serde(default, with = "auto_rollback")]
    pub auto: AutoRollback,
}

mod auto_rollback {
    use super::AutoRollback;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &AutoRollback, s: S) -> Result<S::Ok, S::Error> {
        match v {
            AutoRollback::Yes => s.serialize_bool(true),
            AutoRollback::No => s.serialize_bool(false),
            AutoRollback::Pause => s.serialize_str("pause"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<AutoRollback, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            B(bool),
            S(String),
        }
        match Raw::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected true, false or \"pause\""))?
        {
            Raw::B(true) => Ok(AutoRollback::Yes),
            Raw::B(false) => Ok(AutoRollback::No),
            Raw::S(s) if s == "pause" => Ok(AutoRollback::Pause),
            Raw::S(s) => Err(serde::de::Error::custom(format!(
                "{s:?}: expected true, false or \"pause\""
            ))),
        }
    }
}

/// A strategy with its `ref` resolved.
#[derive(Debug, Clone, PartialEq)]
pub enum Strategy {
    Rolling(RollingSpec),
    Canary(CanarySpec),
    BlueGreen(BlueGreenSpec),
}

impl Strategy {
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
        let rollout: Rollout = sources.deserialize()?;
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
            resolve_strategy(&rollout.spec.strategy, &sources, &base_dir, vars)?;
        let mut manifest = Manifest {
            rollout,
            strategy,
            strategy_source,
            sources,
        };
        manifest.validate()?;
        manifest.absolutize(&base_dir);
        Ok(manifest)
    }

    pub fn name(&self) -> &str {
        &self.rollout.metadata.name
    }

    /// Relative paths in the manifest are relative to its folder; the journal keeps them absolute so
    /// that `resume` and `rollback` work from any directory.
    fn absolutize(&mut self, base: &Path) {
        let base = std::path::absolute(base).unwrap_or_else(|_| base.to_path_buf());
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(k) = &mut self.rollout.spec.target.kubernetes
            && let Some(m) = &mut k.manifest
            && std::path::Path::new(m.as_str()).is_relative()
        {
            *m = base.join(m.as_str()).display().to_string();
        }
        if let Some(h) = &mut self.rollout.spec.target.hosts {
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

    fn validate(&self) -> Result<(), InputError> {
        let s = &self.sources;
        let r = &self.rollout;
        if !valid_name(&r.metadata.name) {
            return Err(s.error(
                "metadata.name",
                format!("{:?} is not a valid name: expected lowercase letters, digits and '-', starting with a letter", r.metadata.name),
            ));
        }
        if r.spec.version.trim().is_empty() {
            return Err(s.error("spec.version", "must not be empty"));
        }
        if r.spec.version.contains(['/', '\\']) || r.spec.version.contains("..") {
            return Err(s.error(
                "spec.version",
                format!("{:?} must not contain '/', '\\\\' or '..'", r.spec.version),
            ));
        }
        match (&r.spec.target.kubernetes, &r.spec.target.hosts) {
            (Some(_), Some(_)) => {
                return Err(s.error(
                    "spec.target",
                    "has both kubernetes and hosts: expected exactly one of them",
                ));
            }
            (None, None) => {
                return Err(s.error(
                    "spec.target",
                    "is empty: expected exactly one of kubernetes, hosts",
                ));
            }
            (Some(k), None) => {
                if k.image.is_some() && k.manifest.is_some() {
                    return Err(s.error(
                        "spec.target.kubernetes",
                        "has both image and manifest: expected at most one",
                    ));
                }
            }
            (None, Some(h)) => validate_hosts(h, s)?,
        }
        let mut names = std::collections::HashSet::new();
        for (i, c) in r.spec.checks.iter().enumerate() {
            let at = format!("spec.checks[{i}]");
            if !names.insert(c.name.as_str()) {
                return Err(s.error(
                    &format!("{at}.name"),
                    format!(
                        "{:?} is used by another check: names must be unique",
                        c.name
                    ),
                ));
            }
            let kinds = [
                c.http.is_some(),
                c.tcp.is_some(),
                c.command.is_some(),
                c.prometheus.is_some(),
                c.web.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if kinds != 1 {
                return Err(s.error(&at, format!("has {kinds} probes: expected exactly one of http, tcp, command, prometheus, web")));
            }
            if c.is_metric() && c.success_condition.is_none() && c.failure_condition.is_none() {
                return Err(s.error(
                    &at,
                    "a metric check needs successCondition or failureCondition",
                ));
            }
            if !c.is_metric() && (c.success_condition.is_some() || c.failure_condition.is_some()) {
                return Err(s.error(
                    &at,
                    "successCondition and failureCondition apply to prometheus and web checks only",
                ));
            }
            for (field, text) in [
                ("successCondition", &c.success_condition),
                ("failureCondition", &c.failure_condition),
            ] {
                if let Some(text) = text
                    && let Err(e) = crate::health::condition::parse(text)
                {
                    // Point at the character: the value's column plus the offset (plus a quote, if quoted).
                    let path = format!("{at}.{field}");
                    let mut err = s.error(&path, format!("{text:?}: {}", e.message));
                    err.column += e.offset + usize::from(quoted_at(s, &err));
                    return Err(err);
                }
            }
            if let Some(w) = &c.web
                && !["GET", "POST"].contains(&w.method.as_str())
            {
                return Err(s.error(
                    &format!("{at}.web.method"),
                    format!("{:?}: expected GET or POST", w.method),
                ));
            }
            if let Some(cmd) = &c.command
                && cmd.run.is_empty()
            {
                return Err(s.error(
                    &format!("{at}.command.run"),
                    "is empty: expected a program and its arguments",
                ));
            }
            if c.success_threshold == 0 || c.count == 0 {
                return Err(s.error(&at, "count and successThreshold must be at least 1"));
            }
            if c.success_threshold > c.count {
                return Err(s.error(
                    &format!("{at}.successThreshold"),
                    format!("{} is more than count ({})", c.success_threshold, c.count),
                ));
            }
        }
        for (i, n) in r.spec.notifications.iter().enumerate() {
            const EVENTS: [&str; 7] = [
                "started",
                "stepPassed",
                "paused",
                "promoted",
                "failed",
                "rolledBack",
                "succeeded",
            ];
            for (j, e) in n.events.iter().enumerate() {
                if !EVENTS.contains(&e.as_str()) {
                    return Err(s.error(
                        &format!("spec.notifications[{i}].events[{j}]"),
                        format!("{e:?}: expected one of {}", EVENTS.join(", ")),
                    ));
                }
            }
        }
        self.validate_strategy()
    }

    fn validate_strategy(&self) -> Result<(), InputError> {
        let s = &self.sources;
        let at = |field: &str| {
            if self.strategy_source == "inline" {
                format!("spec.strategy.{field}")
            } else {
                format!("spec.strategy.ref ({}): {field}", self.strategy_source)
            }
        };
        let check_analysis = |a: &AnalysisSpec, path: String| -> Result<(), InputError> {
            for (j, name) in a.checks.iter().enumerate() {
                if !self.rollout.spec.checks.iter().any(|c| &c.name == name) {
                    return Err(s.error(
                        &format!("{path}.checks[{j}]"),
                        format!("{name:?} is not a check in spec.checks"),
                    ));
                }
            }
            Ok(())
        };
        match &self.strategy {
            Strategy::Rolling(r) => check_bounds(r.max_surge, r.max_unavailable, &at("rolling"), s),
            Strategy::Canary(c) => {
                check_bounds(c.max_surge, c.max_unavailable, &at("canary"), s)?;
                if c.steps.is_empty() {
                    return Err(s.error(
                        &at("canary.steps"),
                        "is empty: expected at least one setWeight step",
                    ));
                }
                for (i, step) in c.steps.iter().enumerate() {
                    let path = at(&format!("canary.steps[{i}]"));
                    let set = [
                        step.set_weight.is_some(),
                        step.pause.is_some(),
                        step.analysis.is_some(),
                    ];
                    if set.iter().filter(|b| **b).count() != 1 {
                        return Err(
                            s.error(&path, "expected exactly one of setWeight, pause, analysis")
                        );
                    }
                    if let Some(w) = step.set_weight
                        && w > 100
                    {
                        return Err(s.error(
                            &format!("{path}.setWeight"),
                            format!("{w} is over 100: expected a percentage 0..=100"),
                        ));
                    }
                    if let Some(a) = &step.analysis {
                        check_analysis(a, format!("{path}.analysis"))?;
                    }
                }
                if let Some(bg) = &c.analysis {
                    if bg.starting_step >= c.steps.len() {
                        return Err(s.error(
                            &at("canary.analysis.startingStep"),
                            format!(
                                "{} is past the last step (there are {})",
                                bg.starting_step,
                                c.steps.len()
                            ),
                        ));
                    }
                    for (j, name) in bg.checks.iter().enumerate() {
                        match self.rollout.spec.checks.iter().find(|x| &x.name == name) {
                            None => {
                                return Err(s.error(
                                    &at(&format!("canary.analysis.checks[{j}]")),
                                    format!("{name:?} is not a check in spec.checks"),
                                ));
                            }
                            Some(x) if !x.is_metric() => {
                                return Err(s.error(
                                    &at(&format!("canary.analysis.checks[{j}]")),
                                    format!("{name:?} is not a prometheus or web check: background analysis measures the rollout as a whole"),
                                ));
                            }
                            Some(_) => {}
                        }
                    }
                }
                if let (Some(group), Some(h)) = (&c.first_group, &self.rollout.spec.target.hosts)
                    && !h.hosts.iter().any(|host| host.groups.contains(group))
                {
                    return Err(s.error(
                        &at("canary.firstGroup"),
                        format!("{group:?} is not a group of any host"),
                    ));
                }
                Ok(())
            }
            Strategy::BlueGreen(b) => {
                if let Some(a) = &b.pre_promotion_analysis {
                    check_analysis(a, at("blueGreen.prePromotionAnalysis"))?;
                }
                if let Some(a) = &b.post_promotion_analysis {
                    check_analysis(a, at("blueGreen.postPromotionAnalysis"))?;
                }
                Ok(())
            }
        }
    }
}

/// Whether the value at `err`'s position starts with a quote.
fn quoted_at(s: &Sources, err: &InputError) -> bool {
    let Some(file) = &err.file else { return false };
    let Some(source) = s.files.iter().find(|f| &f.file == file) else {
        return false;
    };
    let Ok(text) = std::fs::read_to_string(file) else {
        return source.file.as_os_str().is_empty();
    };
    text.lines()
        .nth(err.line.saturating_sub(1))
        .and_then(|l| l.chars().nth(err.column.saturating_sub(1)))
        .is_some_and(|c| c == '"' || c == '\'')
}

fn check_bounds(
    surge: IntOrPercent,
    unavailable: IntOrPercent,
    at: &str,
    s: &Sources,
) -> Result<(), InputError> {
    if surge.is_zero() && unavailable.is_zero() {
        return Err(s.error(
            &format!("{at}.maxUnavailable"),
            "may not be 0 when maxSurge is 0: no instance could ever be replaced",
        ));
    }
    // As Kubernetes' validation: maxUnavailable over 100% is an error; maxSurge has no such cap.
    if let IntOrPercent::Percent(p) = unavailable
        && p > 100
    {
        return Err(s.error(
            &format!("{at}.maxUnavailable"),
            format!("\"{p}%\" is over 100%: expected at most \"100%\""),
        ));
    }
    Ok(())
}

fn validate_hosts(h: &HostsTarget, s: &Sources) -> Result<(), InputError> {
    if !(1..=2).contains(&h.slots_per_host) {
        return Err(s.error(
            "spec.target.hosts.slotsPerHost",
            format!("{}: expected 1 or 2", h.slots_per_host),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, host) in h.hosts.iter().enumerate() {
        if !seen.insert(host.name.as_str()) {
            return Err(s.error(
                &format!("spec.target.hosts.hosts[{i}].name"),
                format!("{:?} is listed twice", host.name),
            ));
        }
        if !host.address.contains(':') {
            return Err(s.error(
                &format!("spec.target.hosts.hosts[{i}].address"),
                format!(
                    "{:?}: expected HOST:PORT, like \"10.0.0.1:7443\"",
                    host.address
                ),
            ));
        }
    }
    // A bearer token without a CA would go over plain HTTP (issue 17, W6).
    if let Some(a) = &h.auth
        && a.ca.is_none()
        && (a.token_file.is_some() || a.token_env.is_some())
        && let Some((i, host)) = h
            .hosts
            .iter()
            .enumerate()
            .find(|(_, host)| !crate::agent::api::is_loopback_address(&host.address))
    {
        return Err(s.error(
            &format!("spec.target.hosts.hosts[{i}].address"),
            format!(
                "{:?}: a bearer token (auth.tokenFile/tokenEnv) without auth.ca would go over plain HTTP; expected auth.ca (the agent's CA) or a loopback address",
                host.address
            ),
        ));
    }
    if let Some(a) = &h.artifact {
        match (&a.file, &a.url) {
            (Some(_), Some(_)) => {
                return Err(s.error(
                    "spec.target.hosts.artifact",
                    "has both file and url: expected one",
                ));
            }
            (None, None) => {
                return Err(s.error("spec.target.hosts.artifact", "expected file or url"));
            }
            (None, Some(_)) if a.sha256.is_none() => {
                return Err(s.error(
                    "spec.target.hosts.artifact.sha256",
                    "is required with url: artifacts are always verified",
                ));
            }
            _ => {}
        }
        if let Some(sha) = &a.sha256
            && (sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()))
        {
            return Err(s.error(
                "spec.target.hosts.artifact.sha256",
                "expected 64 hex digits",
            ));
        }
    }
    if let Some(t) = &h.traffic_switch {
        match (&t.command, &t.webhook) {
            (Some(c), None) if !c.is_empty() => {}
            (None, Some(u)) if u.starts_with("http://") || u.starts_with("https://") => {}
            (None, Some(u)) => {
                return Err(s.error(
                    "spec.target.hosts.trafficSwitch.webhook",
                    format!("{u:?}: expected an http:// or https:// URL"),
                ));
            }
            _ => {
                return Err(s.error(
                    "spec.target.hosts.trafficSwitch",
                    "expected exactly one of command (a non-empty list) or webhook",
                ));
            }
        }
    }
    if let Some(label) = &h.spread_by {
        for (i, host) in h.hosts.iter().enumerate() {
            if !host.labels.contains_key(label) {
                return Err(s.error(
                    &format!("spec.target.hosts.hosts[{i}].labels"),
                    format!("has no {label:?} label, which spreadBy needs on every host"),
                ));
            }
        }
    }
    Ok(())
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-')
}

fn resolve_strategy(
    spec: &StrategySpec,
    sources: &Sources,
    base_dir: &Path,
    vars: source::Vars<'_>,
) -> Result<(Strategy, String), InputError> {
    let set = [
        spec.rolling.is_some(),
        spec.canary.is_some(),
        spec.blue_green.is_some(),
        spec.reference.is_some(),
    ];
    match set.iter().filter(|b| **b).count() {
        0 => {
            return Err(sources.error(
                "spec.strategy",
                "is empty: expected exactly one of rolling, canary, blueGreen, ref",
            ));
        }
        1 => {}
        _ => {
            return Err(sources.error(
                "spec.strategy",
                "has more than one of rolling, canary, blueGreen, ref: expected exactly one",
            ));
        }
    }
    let Some(name) = &spec.reference else {
        return Ok((inline_strategy(spec), "inline".into()));
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(sources.error(
            "spec.strategy.ref",
            format!("{name:?} is not a preset name: expected letters, digits, '-' or '_'"),
        ));
    }
    let file_name = format!("{name}.yaml");
    let candidates = [
        base_dir.join(&file_name),
        PathBuf::from("strategies").join(&file_name),
    ];
    // A manifest named like a preset (blue-green.yaml) must not be read as its own preset.
    let inputs: Vec<PathBuf> = sources
        .files
        .iter()
        .filter_map(|s| s.file.canonicalize().ok())
        .collect();
    let is_input = |p: &PathBuf| p.canonicalize().is_ok_and(|c| inputs.contains(&c));
    let (preset_sources, origin) = match candidates.iter().find(|p| p.is_file() && !is_input(p)) {
        Some(path) => (
            Sources::read(std::slice::from_ref(path), None, vars)?,
            path.display().to_string(),
        ),
        None => match PRESETS.iter().find(|(n, _)| n == name) {
            Some((n, text)) => {
                let label = PathBuf::from(format!("builtin:strategies/{n}.yaml"));
                (
                    Sources::from_texts(&[(&label, text)], vars)?,
                    format!("builtin:{n}"),
                )
            }
            None => {
                let known: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
                return Err(sources.error(
                    "spec.strategy.ref",
                    format!(
                        "no preset {name:?}: looked for {} and {}, and the built-in presets are {}",
                        candidates[0].display(),
                        candidates[1].display(),
                        known.join(", ")
                    ),
                ));
            }
        },
    };
    let preset: StrategySpec = preset_sources.deserialize()?;
    if preset.reference.is_some() {
        return Err(preset_sources.error("ref", "a preset may not refer to another preset"));
    }
    let count = [
        preset.rolling.is_some(),
        preset.canary.is_some(),
        preset.blue_green.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if count != 1 {
        return Err(preset_sources.error("", "expected exactly one of rolling, canary, blueGreen"));
    }
    Ok((inline_strategy(&preset), origin))
}

fn inline_strategy(spec: &StrategySpec) -> Strategy {
    if let Some(r) = &spec.rolling {
        Strategy::Rolling(r.clone())
    } else if let Some(c) = &spec.canary {
        Strategy::Canary(c.clone())
    } else if let Some(b) = &spec.blue_green {
        Strategy::BlueGreen(b.clone())
    } else {
        unreachable!("resolve_strategy checked that exactly one strategy is set")
    }
}
