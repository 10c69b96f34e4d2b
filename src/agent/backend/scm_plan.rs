//! Portable plan of a Windows SCM service: what `windows_scm` hands to the SCM, tested anywhere.

use std::time::Duration;

use super::RunSpec;
use crate::agent::config::StartType;
use crate::agent::recovery::{self, ScmFailurePlan};

/// Everything `CreateService`/`ChangeServiceConfig[2]` needs for one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScmServicePlan {
    /// Service key name: `rollgate-<service>-<slot>`.
    pub name: String,
    pub display_name: String,
    pub description: String,
    /// The executable inside the version dir: activation points it at the new version.
    pub executable: std::path::PathBuf,
    pub arguments: Vec<String>,
    pub start_type: StartType,
    pub account: Option<String>,
    pub dependencies: Vec<String>,
    pub failure: ScmFailurePlan,
    /// How long to poll for STOPPED after sending the stop control.
    pub stop_timeout: Duration,
    /// Environment, stored in the service's `Environment` registry value (`K=V` strings).
    pub environment: Vec<String>,
}

/// Builds the SCM plan of a slot.
pub fn plan(spec: &RunSpec) -> ScmServicePlan {
    let name = format!("rollgate-{}-{}", spec.service, spec.slot);
    ScmServicePlan {
        display_name: format!("rollgate {} (slot {})", spec.service, spec.slot),
        description: spec.description.clone().unwrap_or_else(|| {
            format!(
                "{} version {}, managed by rollgate-agent",
                spec.service, spec.version
            )
        }),
        name,
        executable: spec.program.clone(),
        arguments: spec.args.clone(),
        start_type: spec.start_type,
        account: spec.user.clone(),
        dependencies: spec.dependencies.clone(),
        failure: recovery::to_scm(&spec.recovery),
        stop_timeout: spec.stop_timeout,
        environment: spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
    }
}

/// An error's message with the Win32 error code found in its chain (`Win32 error 5: Access is
/// denied. (os error 5)`), or its plain message when the chain holds none.
pub fn win32_detail(e: &(dyn std::error::Error + 'static)) -> String {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(code) = io.raw_os_error()
        {
            return format!("Win32 error {code}: {io}");
        }
        next = err.source();
    }
    e.to_string()
}

/// SCM states as the agent reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScmState {
    Stopped,
    StartPending,
    StopPending,
    Running,
    ContinuePending,
    PausePending,
    Paused,
}

/// Maps an SCM state onto the agent's run state.
pub fn run_state(state: ScmState) -> crate::agent::api::RunState {
    use crate::agent::api::RunState as R;
    match state {
        ScmState::Stopped => R::Stopped,
        ScmState::StartPending | ScmState::ContinuePending => R::Starting,
        ScmState::StopPending | ScmState::PausePending => R::Stopping,
        ScmState::Running | ScmState::Paused => R::Running,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::config::LogConfig;
    use crate::agent::recovery::{Recovery, ScmActionKind};

    #[derive(Debug, thiserror::Error)]
    #[error("IO error in winapi call")]
    struct Wrapped(#[source] std::io::Error);

    #[test]
    fn win32_detail_keeps_the_code_and_its_message() {
        let e = Wrapped(std::io::Error::from_raw_os_error(5));
        let detail = win32_detail(&e);
        assert!(detail.starts_with("Win32 error 5: "), "{detail}");
        assert!(detail.contains("(os error 5)"), "{detail}");
        let plain = std::io::Error::other("no code");
        assert_eq!(win32_detail(&Wrapped(plain)), "IO error in winapi call");
    }

    #[test]
    fn plan_points_binary_into_version_dir_and_maps_recovery() {
        let spec = RunSpec {
            service: "web".into(),
            slot: 0,
            version: "3".into(),
            program: r"C:\rollgate\services\web\versions\3\web.exe".into(),
            args: vec!["--port".into(), "8080".into()],
            env: [("A".to_string(), "1".to_string())].into(),
            cwd: r"C:\rollgate\services\web\versions\3".into(),
            recovery: Recovery::default(),
            stop_timeout: Duration::from_secs(20),
            user: None,
            description: None,
            start_type: StartType::DelayedAuto,
            dependencies: vec!["Tcpip".into()],
            log_dir: "logs".into(),
            logs: LogConfig::default(),
            run_dir: "run".into(),
        };
        let p = plan(&spec);
        assert_eq!(p.name, "rollgate-web-0");
        assert!(
            p.executable
                .to_string_lossy()
                .ends_with(r"versions\3\web.exe")
        );
        assert_eq!(p.start_type, StartType::DelayedAuto);
        assert_eq!(p.environment, vec!["A=1"]);
        assert_eq!(p.failure.actions.len(), 3);
        assert!(
            p.failure
                .actions
                .iter()
                .all(|a| a.kind == ScmActionKind::Restart)
        );
        assert_eq!(
            run_state(ScmState::StopPending),
            crate::agent::api::RunState::Stopping
        );
    }
}
