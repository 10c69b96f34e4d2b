//! The agent's YAML configuration: where it listens, how callers authenticate, its services.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::api::{self, BackendKind, CheckSpec};
use super::recovery::Recovery;
use crate::spec::source::{self, Sources};

/// Durations in the agent config have the manifests' grammar (`500ms`, `30s`, `5m`, `1h30m`,
/// `1d`): one parser for both.
pub use crate::spec::quantity::Dur;

/// Errors in the agent configuration, with the file, line and field path where known.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Input(#[from] crate::spec::source::InputError),
}

pub type Result<T, E = ConfigError> = std::result::Result<T, E>;

/// TLS for the listener. With `clientCa`, callers must present a certificate it signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}

/// Where the bearer token is read from; the token itself never appears in the config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// Name of an environment variable holding the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
}

/// Request size limits, and how long and how many connections the listener keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    #[serde(default = "default_json_body")]
    pub json_body_bytes: usize,
    #[serde(default = "default_artifact")]
    pub artifact_bytes: u64,
    /// Connections served at once; further ones wait in the listen backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Time allowed for the TLS handshake, and for each request's headers, counted from the
    /// connection's start or the previous answer (an idle keep-alive connection is closed then).
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: Dur,
    /// Longest pause allowed between two pieces of a request body.
    #[serde(default = "default_body_idle_timeout")]
    pub body_idle_timeout: Dur,
    /// Connections not yet authenticated (TLS handshake, first request) kept at once, apart
    /// from `maxConnections`; past it the oldest is closed, so they never delay authenticated callers.
    #[serde(default = "default_max_unauthenticated")]
    pub max_unauthenticated: usize,
    /// Bytes an archive may unpack to; default 4 × `artifactBytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unpacked_bytes: Option<u64>,
    /// Entries an archive may hold.
    #[serde(default = "default_archive_entries")]
    pub archive_entries: u64,
}

fn default_max_unauthenticated() -> usize {
    64
}
fn default_archive_entries() -> u64 {
    100_000
}

impl Limits {
    /// What an archive may unpack to: `unpackedBytes`, or 4 × `artifactBytes`.
    pub fn unpacked_bytes(&self) -> u64 {
        self.unpacked_bytes
            .unwrap_or(self.artifact_bytes.saturating_mul(4))
    }
}

fn default_max_connections() -> usize {
    256
}
fn default_header_read_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_body_idle_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}

fn default_json_body() -> usize {
    64 * 1024
}
fn default_artifact() -> u64 {
    1 << 30
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            json_body_bytes: default_json_body(),
            artifact_bytes: default_artifact(),
            max_connections: default_max_connections(),
            header_read_timeout: default_header_read_timeout(),
            body_idle_timeout: default_body_idle_timeout(),
            max_unauthenticated: default_max_unauthenticated(),
            unpacked_bytes: None,
            archive_entries: default_archive_entries(),
        }
    }
}

/// A service's health check and how activation waits on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthConfig {
    #[serde(flatten)]
    pub check: CheckSpec,
    #[serde(default = "default_check_timeout")]
    pub timeout: Dur,
    #[serde(default = "default_check_interval")]
    pub interval: Dur,
    /// How long an activation waits for running and healthy.
    #[serde(default = "default_start_timeout")]
    pub start_timeout: Dur,
    /// Consecutive failed checks, once the service has answered, that fail an activation
    /// without waiting out `startTimeout`.
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
}

/// The most `failureThreshold` may be: past it, `startTimeout` is the bound that matters.
pub const MAX_FAILURE_THRESHOLD: u32 = 1000;

fn default_check_timeout() -> Dur {
    Dur(Duration::from_secs(2))
}
fn default_check_interval() -> Dur {
    Dur(Duration::from_millis(500))
}
fn default_start_timeout() -> Dur {
    Dur(Duration::from_secs(60))
}
fn default_failure_threshold() -> u32 {
    3
}

/// Size-rotated stdout/stderr logs of the supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default = "default_log_bytes")]
    pub max_bytes: u64,
    #[serde(default = "default_log_keep")]
    pub keep: u32,
}

fn default_log_bytes() -> u64 {
    10 << 20
}
fn default_log_keep() -> u32 {
    3
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            max_bytes: default_log_bytes(),
            keep: default_log_keep(),
        }
    }
}

/// Windows SCM start type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum StartType {
    #[default]
    Auto,
    DelayedAuto,
    Demand,
    Disabled,
}

/// One managed service.
///
/// `command` is relative to the version dir; in `args`, `env` values and the health check,
/// `{port}`, `{slot}`, `{version}` and `{dir}` are replaced per slot at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceConfig {
    pub name: String,
    #[serde(default)]
    pub backend: BackendKind,
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// One port per slot; two ports give two slots (`slotsPerHost: 2`).
    #[serde(default)]
    pub ports: Vec<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthConfig>,
    #[serde(default)]
    pub recovery: Recovery,
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout: Dur,
    /// Account to run as (systemd `User=`, SCM account).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub start_type: StartType,
    #[serde(default)]
    pub dependencies: Vec<String>,
    #[serde(default)]
    pub logs: LogConfig,
    /// What the agent's own systemd unit must also allow for this service (supervisor backend).
    #[serde(default)]
    pub sandbox: SandboxConfig,
}

/// What a service run by the supervisor needs beyond the agent's least-privilege systemd unit,
/// whose restrictions it inherits; `rollgate-agent service install` widens the unit by these.
///
/// ```yaml
/// sandbox: {readWritePaths: [/var/www], capabilities: [CAP_NET_BIND_SERVICE], umask: "0022"}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SandboxConfig {
    /// Writable paths besides the data dir (`ReadWritePaths=`).
    #[serde(default)]
    pub read_write_paths: Vec<PathBuf>,
    /// Capabilities besides the agent's own (`CapabilityBoundingSet=`).
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Address families besides `AF_UNIX AF_INET AF_INET6` (`RestrictAddressFamilies=`).
    #[serde(default)]
    pub address_families: Vec<String>,
    /// System calls or `@groups` besides `@system-service` (`SystemCallFilter=`).
    #[serde(default)]
    pub system_calls: Vec<String>,
    /// Setuid programs may raise privileges (no `NoNewPrivileges=`).
    #[serde(default)]
    pub new_privileges: bool,
    /// /home, /root and /run/user are visible (no `ProtectHome=`).
    #[serde(default)]
    pub home: bool,
    /// A umask wider than `0077` for the files the agent creates, as octal (`"0022"` lets a
    /// service running as another `user:` read its version dir).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub umask: Option<String>,
}

fn default_stop_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}

impl ServiceConfig {
    /// Number of slots (at least one).
    pub fn slots(&self) -> u32 {
        self.ports.len().max(1) as u32
    }

    pub fn port(&self, slot: u32) -> Option<u16> {
        self.ports.get(slot as usize).copied()
    }
}

/// The whole agent configuration.
///
/// ```yaml
/// listen: 0.0.0.0:7443
/// dataDir: /var/lib/rollgate-agent
/// tls: {cert: agent.pem, key: agent-key.pem, clientCa: ca.pem}
/// services:
///   - name: web
///     command: rollgate-demo
///     args: ["--listen", "127.0.0.1:{port}", "--version", "{version}"]
///     ports: [8080, 8081]
///     health: {type: http, url: "http://127.0.0.1:{port}/health", timeout: 2s}
///     recovery: {restart: on-failure, actions: [{restart: 0s}, {restart: 10s}]}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentConfig {
    #[serde(default = "default_listen")]
    pub listen: String,
    pub data_dir: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenConfig>,
    #[serde(default)]
    pub limits: Limits,
    /// When set, artifact URLs (and their redirects) must name one of these hosts, as `host`
    /// or `host:port`; otherwise any http(s) host is allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_artifact_hosts: Option<Vec<String>>,
    /// Allow `command` checks sent by callers (agent-configured ones always run).
    #[serde(default)]
    pub allow_remote_commands: bool,
    /// How long shutdown waits for operations in flight and service stops.
    #[serde(default = "default_grace")]
    pub shutdown_grace: Dur,
    /// Where the systemd backend writes units.
    #[serde(default = "default_unit_dir")]
    pub systemd_unit_dir: PathBuf,
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
}

fn default_listen() -> String {
    "127.0.0.1:7443".to_string()
}
fn default_grace() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_unit_dir() -> PathBuf {
    PathBuf::from("/etc/systemd/system")
}

impl AgentConfig {
    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }

    /// Resolves relative paths (data dir, TLS files, token file) against `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.data_dir);
        if let Some(tls) = &mut self.tls {
            fix(&mut tls.cert);
            fix(&mut tls.key);
            if let Some(ca) = &mut tls.client_ca {
                fix(ca);
            }
        }
        if let Some(TokenConfig { file: Some(f), .. }) = &mut self.token {
            fix(f);
        }
    }
}

/// Loads `files` (with `<file>.<env>.yaml` overlays and `${VAR:-default}` expansion, the
/// same rules as manifests), validates, and resolves relative paths against the first file.
pub fn load(files: &[PathBuf], env: Option<&str>) -> Result<AgentConfig> {
    let sources = Sources::read(files, env, &source::process_env)?;
    finish(&sources, files.first().map(PathBuf::as_path))
}

/// Parses and validates config text; `path` names it in errors and anchors relative paths.
pub fn parse(path: &Path, text: &str) -> Result<AgentConfig> {
    let sources = Sources::from_texts(&[(path, text)], &source::process_env)?;
    finish(&sources, Some(path))
}

fn finish(sources: &Sources, first: Option<&Path>) -> Result<AgentConfig> {
    let mut config: AgentConfig = sources.deserialize()?;
    validate(&config).map_err(|(field, message)| sources.error(&field, message))?;
    let base = first
        .and_then(Path::parent)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // Service processes run in their version dir: every path must be absolute.
    let base = std::path::absolute(base).unwrap_or_else(|_| base.to_path_buf());
    config.resolve_paths(&base);
    Ok(config)
}

/// Checks what serde cannot; errors carry the field path they are about.
fn validate(config: &AgentConfig) -> std::result::Result<(), (String, String)> {
    let mut seen = std::collections::BTreeSet::new();
    let mut ports = std::collections::BTreeSet::new();
    for (i, s) in config.services.iter().enumerate() {
        let at = |field: &str, m: String| (format!("services[{i}].{field}"), m);
        if !api::valid_name(&s.name) {
            return Err(at(
                "name",
                "expected letters, digits, '.', '_', '-' or '+'".into(),
            ));
        }
        if !seen.insert(s.name.clone()) {
            return Err(at("name", format!("duplicate service name {:?}", s.name)));
        }
        let cmd = Path::new(&s.command);
        if s.command.is_empty()
            || cmd.is_absolute()
            || cmd
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(at(
                "command",
                format!(
                    "command {:?} must be a relative path inside the version dir",
                    s.command
                ),
            ));
        }
        for (j, p) in s.ports.iter().enumerate() {
            if !ports.insert(*p) {
                return Err(at(
                    &format!("ports[{j}]"),
                    format!("port {p} is used twice"),
                ));
            }
        }
        if let Some(h) = &s.health
            && !(1..=MAX_FAILURE_THRESHOLD).contains(&h.failure_threshold)
        {
            return Err(at(
                "health.failureThreshold",
                format!(
                    "expected 1 to {MAX_FAILURE_THRESHOLD} consecutive failures, got {}",
                    h.failure_threshold
                ),
            ));
        }
        s.recovery
            .validate()
            .map_err(|e| at("recovery", e.to_string()))?;
        super::backend::systemd::check_sandbox(&s.sandbox).map_err(|(f, m)| at(&f, m))?;
    }
    if config.limits.max_connections == 0 {
        return Err(("limits.maxConnections".into(), "expected at least 1".into()));
    }
    if config.limits.max_unauthenticated == 0 {
        return Err((
            "limits.maxUnauthenticated".into(),
            "expected at least 1".into(),
        ));
    }
    if let Some(TokenConfig {
        file: None,
        env: None,
    }) = &config.token
    {
        return Err(("token".into(), "expected `file` or `env`".into()));
    }
    Ok(())
}

/// Replaces `{port}`, `{slot}`, `{version}` and `{dir}` in `text`.
pub fn expand_slot(text: &str, port: Option<u16>, slot: u32, version: &str, dir: &Path) -> String {
    text.replace("{port}", &port.map(|p| p.to_string()).unwrap_or_default())
        .replace("{slot}", &slot.to_string())
        .replace("{version}", version)
        .replace("{dir}", &dir.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "listen: 127.0.0.1:0\ndataDir: ${DATA:-/tmp/x}\nservices:\n  - name: web\n    command: bin/demo\n    ports: [8080, 8081]\n    health: {type: http, url: 'http://127.0.0.1:{port}/health', timeout: 1s}\n";

    #[test]
    fn parses_with_defaults_and_env_expansion() {
        let c = parse(Path::new("/etc/agent.yaml"), GOOD).unwrap();
        // `/tmp/x` is absolute only on Unix; on Windows it is resolved against the file's dir.
        #[cfg(unix)]
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        let web = c.service("web").unwrap();
        assert_eq!(web.slots(), 2);
        assert_eq!(web.stop_timeout.0, Duration::from_secs(10));
        let h = web.health.as_ref().unwrap();
        assert_eq!(h.timeout.0, Duration::from_secs(1));
        assert!(matches!(h.check, CheckSpec::Http { status: 200, .. }));
        assert_eq!(h.failure_threshold, 3, "failureThreshold defaults to 3");
    }

    #[test]
    fn failure_threshold_is_one_to_a_thousand() {
        let set = |n: &str| {
            GOOD.replace(
                "timeout: 1s}",
                &format!("timeout: 1s, failureThreshold: {n}}}"),
            )
        };
        let c = parse(Path::new("a.yaml"), &set("5")).unwrap();
        assert_eq!(
            c.service("web")
                .unwrap()
                .health
                .as_ref()
                .unwrap()
                .failure_threshold,
            5
        );
        for bad in ["0", "1001"] {
            let e = parse(Path::new("a.yaml"), &set(bad))
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("a.yaml:7:") && e.contains("services[0].health.failureThreshold"),
                "{bad}: {e}"
            );
        }
        let e = parse(Path::new("a.yaml"), &set("-1"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("a.yaml:7:"), "{e}");
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let bad = GOOD.replace("ports: [8080, 8081]", "ports: [8080, high]");
        let e = parse(Path::new("a.yaml"), &bad).unwrap_err().to_string();
        assert!(e.starts_with("a.yaml:6:"), "{e}");
        assert!(e.contains("services[0].ports[1]"), "{e}");

        let dup = format!("{GOOD}  - name: web\n    command: x\n");
        let e = parse(Path::new("a.yaml"), &dup).unwrap_err().to_string();
        assert!(
            e.contains("services[1].name") && e.contains("duplicate service name"),
            "{e}"
        );

        let escape = GOOD.replace("bin/demo", "../../bin/sh");
        let e = parse(Path::new("a.yaml"), &escape).unwrap_err().to_string();
        assert!(
            e.starts_with("a.yaml:5:") && e.contains("services[0].command"),
            "{e}"
        );

        let unknown = GOOD.replace("listen:", "listne:");
        let e = parse(Path::new("a.yaml"), &unknown)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("a.yaml:1:") && e.contains("unknown field"),
            "{e}"
        );
    }

    #[test]
    fn slot_placeholders() {
        assert_eq!(
            expand_slot(
                "--listen 127.0.0.1:{port} v{version} s{slot} {dir}/x",
                Some(81),
                1,
                "2",
                Path::new("/v/2")
            ),
            "--listen 127.0.0.1:81 v2 s1 /v/2/x"
        );
    }
}
