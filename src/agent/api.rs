//! Wire types of the agent's HTTP/JSON API, shared by the agent server and its client.
//!
//! Every route lives under [`PREFIX`]. Field names are camelCase on the wire. Durations are
//! carried as integer milliseconds (`...Ms`) so both sides agree without a parser.

use serde::{Deserialize, Serialize};

/// Path prefix of every API route.
pub const PREFIX: &str = "/v1";

/// Header carrying the bearer token (`Authorization: Bearer <token>`).
pub const AUTHORIZATION: &str = "authorization";

/// The longest long-poll the server honours; longer `wait` values are clamped to it.
pub const MAX_WAIT_MS: u64 = 120_000;

/// Which service backend runs a service.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// The agent starts and restarts the process itself (every OS; the default).
    #[default]
    Supervisor,
    /// A systemd unit per service slot (Linux).
    Systemd,
    /// A Windows service registered with the Service Control Manager.
    WindowsScm,
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackendKind::Supervisor => "supervisor",
            BackendKind::Systemd => "systemd",
            BackendKind::WindowsScm => "windows-scm",
        })
    }
}

/// Whether one backend can be used on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendInfo {
    pub kind: BackendKind,
    pub available: bool,
    /// Why the backend is unavailable, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `GET /v1/host`: what this agent is and can do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostInfo {
    pub agent_version: String,
    pub hostname: String,
    pub os: String,
    pub arch: String,
    pub backends: Vec<BackendInfo>,
    /// Names of the services this agent manages.
    pub services: Vec<String>,
}

/// Observed run state of one service slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    /// Not running, and not meant to be.
    #[default]
    Stopped,
    /// Process started, not yet known to be up (systemd/SCM `activating`/`START_PENDING`).
    Starting,
    Running,
    Stopping,
    /// Exited and will not be restarted (policy `no`, or recovery exhausted).
    Failed,
    /// Exited and waiting out a restart delay; `crashLoop` says whether it is throttled.
    Backoff,
}

/// How the last run of a process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    pub at_unix_ms: u64,
}

/// The result of one health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthReport {
    pub healthy: bool,
    /// What was seen: the status and body excerpt, the connect error, the exit code.
    pub detail: String,
    pub at_unix_ms: u64,
    pub elapsed_ms: u64,
}

/// State of one slot of a service: a port and the version running on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlotStatus {
    pub slot: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Version the slot is switched to (persisted desired state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<String>,
    /// Version that was active before; what `rollback` goes back to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// Whether the slot is meant to be running.
    pub desired_running: bool,
    pub state: RunState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Milliseconds since the process last started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<ExitInfo>,
    /// Restarts since the agent (re)started the slot.
    pub restarts: u32,
    /// Consecutive failures counted by the recovery policy.
    pub consecutive_failures: u32,
    /// True while rapid crashes are being throttled.
    pub crash_loop: bool,
    /// When the next restart attempt is due, if one is pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_restart_unix_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthReport>,
}

/// One installed version of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstalledVersion {
    pub version: String,
    pub sha256: String,
    pub staged_unix_ms: u64,
}

/// `GET /v1/services[/{name}]`: a service, its versions and its slots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    pub name: String,
    pub backend: BackendKind,
    /// Installed versions, oldest staged first.
    pub versions: Vec<InstalledVersion>,
    pub slots: Vec<SlotStatus>,
    /// Bumped on every change; pass it as `since` to long-poll for the next change.
    pub generation: u64,
}

/// `GET /v1/services`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceList {
    pub services: Vec<ServiceStatus>,
}

/// How an artifact is laid out; detected from its first bytes when not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArtifactKind {
    Zip,
    TarGz,
    /// A single executable, installed under `fileName` (default: the service command's name).
    Binary,
}

/// `POST /v1/services/{name}/stage`: fetch an artifact by URL and install it as `version`.
///
/// A local file is staged with `PUT /v1/services/{name}/artifacts/{version}` instead, the body
/// being the file and the other fields query parameters (see [`UploadParams`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StageRequest {
    pub request_id: String,
    pub version: String,
    pub url: String,
    /// Lowercase hex sha256 of the artifact; mandatory.
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ArtifactKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
}

/// Query parameters of `PUT /v1/services/{name}/artifacts/{version}` (streamed upload).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UploadParams {
    pub request_id: String,
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ArtifactKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
}

/// `POST /v1/services/{name}/activate`: stop, switch, start, wait until running and healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ActivateRequest {
    pub request_id: String,
    pub version: String,
    /// Slot to switch (default 0). With two slots, activate the idle one, then stop the other.
    #[serde(default)]
    pub slot: u32,
    /// How long to wait for running and healthy; default from the service's `health.startTimeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// `POST /v1/services/{name}/rollback`: activate the previous version (or `to`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RollbackRequest {
    pub request_id: String,
    #[serde(default)]
    pub slot: u32,
    /// An installed version to go back to instead of the slot's previous one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// `POST /v1/services/{name}/prune`: keep the newest `keep` versions, and always the active
/// and previous version of every slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PruneRequest {
    pub request_id: String,
    pub keep: usize,
}

/// `POST /v1/services/{name}/stop` and `.../start`: change a slot's desired run state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SlotRequest {
    pub request_id: String,
    #[serde(default)]
    pub slot: u32,
}

/// A health check definition; `{port}`, `{slot}` and `{version}` are expanded per slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum CheckSpec {
    /// HTTP GET; healthy when the status matches and the body contains `bodyContains`.
    #[serde(rename_all = "camelCase")]
    Http {
        url: String,
        #[serde(default = "default_status")]
        status: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body_contains: Option<String>,
    },
    /// TCP connect to `address` (`host:port`).
    Tcp { address: String },
    /// Run a program; healthy when it exits 0.
    Command {
        program: String,
        #[serde(default)]
        args: Vec<String>,
    },
}

fn default_status() -> u16 {
    200
}

/// `POST /v1/services/{name}/health`: run the service's own check now, or `check` if given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheckRequest {
    #[serde(default)]
    pub slot: u32,
    /// Ad-hoc check; `command` checks are refused unless the agent allows remote commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// What a long operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OperationKind {
    Stage,
    Activate,
    Rollback,
    Prune,
    Stop,
    Start,
}

/// Where a long operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OperationState {
    Running,
    Succeeded,
    Failed,
}

impl OperationState {
    pub fn is_done(self) -> bool {
        !matches!(self, OperationState::Running)
    }
}

/// A long operation, returned by every mutating call and by `GET /v1/operations/{id}`.
///
/// Replaying a mutating call with the same `requestId` returns the same operation; the
/// same `requestId` with a different request is refused with 409.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    pub id: String,
    pub request_id: String,
    pub kind: OperationKind,
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub state: OperationState,
    /// Progress while running; a summary when done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Versions removed by a prune.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
    pub created_unix_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_unix_ms: Option<u64>,
}

/// Query of `GET /v1/operations/{id}` and `GET /v1/services/{name}`: long-poll parameters.
///
/// `wait` is `30s`, `500ms`, `2m` or plain milliseconds. An operation answers as soon as it is
/// done; a service answers as soon as its `generation` differs from `since`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WaitQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
}

/// Body of every 4xx/5xx answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiError {
    /// Stable machine-readable code, e.g. `unauthorized`, `bad_request`, `not_found`.
    pub code: String,
    pub message: String,
}

/// Parses a wire duration (`wait=`): a bare number of milliseconds, or the manifests' grammar
/// ([`Dur::parse`](crate::spec::quantity::Dur::parse): `500ms`, `30s`, `1h30m`, `1d`).
pub fn parse_duration_ms(text: &str) -> Option<u64> {
    let text = text.trim();
    match text.parse::<u64>() {
        Ok(ms) => Some(ms),
        Err(_) => crate::spec::quantity::Dur::parse(text)
            .ok()
            .and_then(|d| u64::try_from(d.0.as_millis()).ok()),
    }
}

/// `url` as it may be logged or stored: without credentials (`user:pass@`) and without its
/// query (`X-Amz-Signature=...`) or fragment, which are replaced by `…`.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, url),
    };
    let end = rest.find(['?', '#']).unwrap_or(rest.len());
    let (before, tail) = rest.split_at(end);
    let authority_end = before.find('/').unwrap_or(before.len());
    let (authority, path) = before.split_at(authority_end);
    let host = match authority.rsplit_once('@') {
        Some((_, host)) => format!("…@{host}"),
        None => authority.to_string(),
    };
    let tail = if tail.is_empty() { "" } else { "?…" };
    match scheme {
        Some(s) => format!("{s}://{host}{path}{tail}"),
        None => format!("{host}{path}{tail}"),
    }
}

/// Whether `address` (`host:port`, `[v6]:port`, or a URL's authority) names this machine:
/// `localhost` or a loopback IP. A bearer token may go over plain HTTP only there.
pub fn is_loopback_address(address: &str) -> bool {
    let host = match address.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => address,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether `name` is usable as a service name or version: it becomes a directory name, on
/// Windows hosts too (so not `CON`, `NUL`, `COM1`, ... with or without an extension).
pub fn valid_name(name: &str) -> bool {
    let stem = name
        .split('.')
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase();
    let reserved = matches!(stem.as_str(), "CON" | "PRN" | "AUX" | "NUL")
        || ((stem.starts_with("COM") || stem.starts_with("LPT"))
            && stem.len() == 4
            && stem.as_bytes()[3].is_ascii_digit());
    !reserved
        && !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_credentials_and_queries() {
        assert_eq!(
            redact_url("https://user:pass@art.example:8443/a/b.tgz?X-Amz-Signature=abc#f"),
            "https://…@art.example:8443/a/b.tgz?…"
        );
        assert_eq!(redact_url("http://h/x.tgz"), "http://h/x.tgz");
        assert_eq!(redact_url("not a url?secret"), "not a url?…");
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration_ms("30s"), Some(30_000));
        assert_eq!(parse_duration_ms("250ms"), Some(250));
        assert_eq!(parse_duration_ms("2m"), Some(120_000));
        assert_eq!(parse_duration_ms("1d"), Some(86_400_000));
        assert_eq!(parse_duration_ms("1500"), Some(1500));
        assert_eq!(parse_duration_ms("s"), None);
        assert_eq!(parse_duration_ms("3 weeks"), None);
    }

    #[test]
    fn names_that_would_escape_a_directory_are_invalid() {
        assert!(valid_name("1.2.3+build-4"));
        assert!(!valid_name(".."));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(""));
        assert!(!valid_name("-rf"));
    }

    #[test]
    fn check_spec_wire_form_is_tagged_camel_case() {
        let check: CheckSpec = serde_json::from_str(
            r#"{"type":"http","url":"http://127.0.0.1:1/health","bodyContains":"ok"}"#,
        )
        .unwrap();
        assert_eq!(
            check,
            CheckSpec::Http {
                url: "http://127.0.0.1:1/health".into(),
                status: 200,
                body_contains: Some("ok".into())
            }
        );
        let text = serde_json::to_string(&ActivateRequest {
            request_id: "r1".into(),
            version: "v2".into(),
            slot: 1,
            timeout_ms: None,
        })
        .unwrap();
        assert_eq!(text, r#"{"requestId":"r1","version":"v2","slot":1}"#);
    }
}
