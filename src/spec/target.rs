//! Where a rollout deploys to: a Kubernetes Deployment or a fleet of hosts, as the manifest writes it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::*;

/// What a rollout deploys to: written `target: {kubernetes: ...}` or `target: {hosts: ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "TargetFields", into = "TargetFields")]
// One per manifest: boxing the larger variant would save nothing.
#[allow(clippy::large_enum_variant)]
pub enum TargetSpec {
    Kubernetes(KubernetesTarget),
    Hosts(HostsTarget),
}

impl TargetSpec {
    pub fn kubernetes(&self) -> Option<&KubernetesTarget> {
        match self {
            TargetSpec::Kubernetes(k) => Some(k),
            TargetSpec::Hosts(_) => None,
        }
    }

    pub fn hosts(&self) -> Option<&HostsTarget> {
        match self {
            TargetSpec::Hosts(h) => Some(h),
            TargetSpec::Kubernetes(_) => None,
        }
    }

    pub fn kubernetes_mut(&mut self) -> Option<&mut KubernetesTarget> {
        match self {
            TargetSpec::Kubernetes(k) => Some(k),
            TargetSpec::Hosts(_) => None,
        }
    }

    pub fn hosts_mut(&mut self) -> Option<&mut HostsTarget> {
        match self {
            TargetSpec::Hosts(h) => Some(h),
            TargetSpec::Kubernetes(_) => None,
        }
    }
}

impl JsonSchema for TargetSpec {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "TargetSpec".into()
    }

    /// [`TargetFields`] with exactly one key, as `TryFrom` demands.
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let fields = generator.subschema_for::<TargetFields>();
        schemars::json_schema!({
            "description": "What the rollout deploys to: exactly one of kubernetes, hosts",
            "allOf": [fields],
            "minProperties": 1,
            "maxProperties": 1
        })
    }
}

/// The manifest's shape of [`TargetSpec`]: one key naming the target.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TargetFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kubernetes: Option<KubernetesTarget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hosts: Option<HostsTarget>,
}

impl TryFrom<TargetFields> for TargetSpec {
    type Error = &'static str;

    fn try_from(f: TargetFields) -> Result<Self, Self::Error> {
        match (f.kubernetes, f.hosts) {
            (Some(k), None) => Ok(TargetSpec::Kubernetes(k)),
            (None, Some(h)) => Ok(TargetSpec::Hosts(h)),
            (Some(_), Some(_)) => {
                Err("has both kubernetes and hosts: expected exactly one of them")
            }
            (None, None) => Err("is empty: expected exactly one of kubernetes, hosts"),
        }
    }
}

impl From<TargetSpec> for TargetFields {
    fn from(t: TargetSpec) -> Self {
        match t {
            TargetSpec::Kubernetes(k) => TargetFields {
                kubernetes: Some(k),
                hosts: None,
            },
            TargetSpec::Hosts(h) => TargetFields {
                kubernetes: None,
                hosts: Some(h),
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HostsTarget {
    #[serde(default = "one")]
    pub slots_per_host: u32,
    pub hosts: Vec<Host>,
    /// A label (usually `zone`) whose values must never be down at the same time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread_by: Option<String>,
    /// The service, by the name it has in each agent's configuration; `metadata.name` when not set
    /// (filled in at load, so a stored manifest always names it).
    #[serde(default)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(extend("oneOf" = [{"required": ["command"]}, {"required": ["webhook"]}]))]
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

/// The artifact of the new version: a local file streamed to each agent, or a URL the agents fetch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
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
    /// No authentication and plain HTTP, said out loud: for a lab. Required for a non-loopback
    /// agent address without credentials; every run warns.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Host {
    pub name: String,
    pub address: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}
