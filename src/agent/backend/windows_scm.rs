//! The Windows SCM backend: a thin shell over `windows-service`; the logic is in `scm_plan`.
//!
//! Built and tested under Wine by `tests/windows/run.sh`. The registered executable must itself
//! speak the service protocol (call the service dispatcher), as the SCM requires of any service
//! binary.

use std::ffi::OsString;
use std::time::{Duration, Instant};

use windows_service::service::{
    ServiceAccess, ServiceAction, ServiceActionType, ServiceDependency, ServiceErrorControl,
    ServiceFailureActions, ServiceFailureResetPeriod, ServiceInfo, ServiceStartType, ServiceState,
    ServiceType,
};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};

use super::scm_plan::{self, ScmServicePlan, ScmState};
use super::{BackendError, Observed, Result, RunSpec, ServiceBackend};
use crate::agent::api::BackendKind;
use crate::agent::config::StartType;
use crate::agent::recovery::ScmActionKind;

/// The SCM backend.
pub struct WindowsScm;

/// An SCM call that failed, with its Win32 error code and the system's message for it
/// (`windows_service::Error` alone prints "IO error in winapi call").
fn scm_err(what: &str, e: windows_service::Error) -> BackendError {
    BackendError::CommandFailed {
        command: what.to_string(),
        detail: scm_plan::win32_detail(&e),
    }
}

/// `ERROR_INVALID_LEVEL`: an SCM without this `ChangeServiceConfig2W` level.
const ERROR_INVALID_LEVEL: i32 = 124;

/// A `ChangeServiceConfig2W` call that an SCM lacking its level refuses is warned about, not
/// fatal: Wine's SCM has neither the delayed auto-start level nor the failure-actions flag's;
/// every Windows since Vista has both.
fn unimplemented_level(what: &str, result: windows_service::Result<()>) -> Result<()> {
    match result {
        Err(windows_service::Error::Winapi(e)) if e.raw_os_error() == Some(ERROR_INVALID_LEVEL) => {
            tracing::warn!(
                "{what}: this service control manager does not implement it (Win32 error 124); left as it is"
            );
            Ok(())
        }
        other => other.map_err(|e| scm_err(what, e)),
    }
}

fn service_info(plan: &ScmServicePlan) -> ServiceInfo {
    ServiceInfo {
        name: OsString::from(&plan.name),
        display_name: OsString::from(&plan.display_name),
        service_type: ServiceType::OWN_PROCESS,
        start_type: match plan.start_type {
            StartType::Auto | StartType::DelayedAuto => ServiceStartType::AutoStart,
            StartType::Demand => ServiceStartType::OnDemand,
            StartType::Disabled => ServiceStartType::Disabled,
        },
        error_control: ServiceErrorControl::Normal,
        executable_path: plan.executable.clone(),
        launch_arguments: plan.arguments.iter().map(OsString::from).collect(),
        dependencies: plan
            .dependencies
            .iter()
            .map(|d| ServiceDependency::Service(OsString::from(d)))
            .collect(),
        account_name: plan.account.as_ref().map(OsString::from),
        account_password: None,
    }
}

fn failure_actions(plan: &ScmServicePlan) -> ServiceFailureActions {
    ServiceFailureActions {
        reset_period: ServiceFailureResetPeriod::After(plan.failure.reset_period),
        reboot_msg: None,
        command: plan.failure.command.as_ref().map(OsString::from),
        actions: Some(
            plan.failure
                .actions
                .iter()
                .map(|a| ServiceAction {
                    action_type: match a.kind {
                        ScmActionKind::Restart => ServiceActionType::Restart,
                        ScmActionKind::RunCommand => ServiceActionType::RunCommand,
                    },
                    delay: a.delay,
                })
                .collect(),
        ),
    }
}

fn wait_for(
    service: &windows_service::service::Service,
    want: ServiceState,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let status = service
            .query_status()
            .map_err(|e| scm_err("QueryServiceStatus", e))?;
        if status.current_state == want {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(BackendError::CommandFailed {
                command: format!("waiting for {want:?}"),
                detail: format!("still {:?} after {timeout:?}", status.current_state),
            });
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn install_and_start(plan: ScmServicePlan) -> Result<()> {
    let manager = ServiceManager::local_computer(
        None::<&str>,
        ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE,
    )
    .map_err(|e| scm_err("OpenSCManager", e))?;
    let access = ServiceAccess::QUERY_STATUS
        | ServiceAccess::START
        | ServiceAccess::STOP
        | ServiceAccess::CHANGE_CONFIG
        | ServiceAccess::QUERY_CONFIG;
    let info = service_info(&plan);
    let service = match manager.open_service(&plan.name, access) {
        Ok(service) => {
            service
                .change_config(&info)
                .map_err(|e| scm_err("ChangeServiceConfig", e))?;
            service
        }
        Err(_) => manager
            .create_service(&info, access)
            .map_err(|e| scm_err("CreateService", e))?,
    };
    service
        .set_description(&plan.description)
        .map_err(|e| scm_err("set description", e))?;
    // The service's `env:`: the SCM adds the `Environment` value to the process's environment.
    crate::agent::win32::set_service_environment(&plan.name, &plan.environment).map_err(|e| {
        BackendError::CommandFailed {
            command: "set the service's Environment value".to_string(),
            detail: scm_plan::win32_detail(&e),
        }
    })?;
    unimplemented_level(
        "set delayed auto start",
        service.set_delayed_auto_start(plan.start_type == StartType::DelayedAuto),
    )?;
    service
        .update_failure_actions(failure_actions(&plan))
        .map_err(|e| scm_err("set failure actions", e))?;
    unimplemented_level(
        "set failure actions flag",
        service.set_failure_actions_on_non_crash_failures(plan.failure.non_crash_failures),
    )?;
    service
        .start(&[] as &[&std::ffi::OsStr])
        .map_err(|e| scm_err("StartService", e))?;
    wait_for(&service, ServiceState::Running, Duration::from_secs(60))
}

fn stop_blocking(name: String, timeout: Duration) -> Result<()> {
    let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
        .map_err(|e| scm_err("OpenSCManager", e))?;
    let Ok(service) =
        manager.open_service(&name, ServiceAccess::QUERY_STATUS | ServiceAccess::STOP)
    else {
        return Ok(());
    };
    let status = service
        .query_status()
        .map_err(|e| scm_err("QueryServiceStatus", e))?;
    if status.current_state == ServiceState::Stopped {
        return Ok(());
    }
    // The SCM's stop only sends the control; poll until STOPPED.
    let _ = service.stop();
    wait_for(&service, ServiceState::Stopped, timeout)
}

fn observe_blocking(name: String) -> Observed {
    let Ok(manager) = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
    else {
        return Observed::default();
    };
    let Ok(service) = manager.open_service(&name, ServiceAccess::QUERY_STATUS) else {
        return Observed::default();
    };
    match service.query_status() {
        Ok(status) => Observed {
            state: scm_plan::run_state(match status.current_state {
                ServiceState::Stopped => ScmState::Stopped,
                ServiceState::StartPending => ScmState::StartPending,
                ServiceState::StopPending => ScmState::StopPending,
                ServiceState::Running => ScmState::Running,
                ServiceState::ContinuePending => ScmState::ContinuePending,
                ServiceState::PausePending => ScmState::PausePending,
                ServiceState::Paused => ScmState::Paused,
            }),
            pid: status.process_id,
            ..Observed::default()
        },
        Err(e) => Observed {
            detail: Some(e.to_string()),
            ..Observed::default()
        },
    }
}

fn join_err(e: tokio::task::JoinError) -> BackendError {
    BackendError::CommandFailed {
        command: "SCM call".to_string(),
        detail: e.to_string(),
    }
}

impl ServiceBackend for WindowsScm {
    fn kind(&self) -> BackendKind {
        BackendKind::WindowsScm
    }

    fn availability(&self) -> std::result::Result<(), String> {
        ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
            .map(|_| ())
            .map_err(|e| format!("cannot open the service control manager: {e}"))
    }

    async fn start(&self, spec: &RunSpec) -> Result<()> {
        let plan = scm_plan::plan(spec);
        stop_blocking_async(plan.name.clone(), plan.stop_timeout).await?;
        tokio::task::spawn_blocking(move || install_and_start(plan))
            .await
            .map_err(join_err)?
    }

    async fn stop(&self, service: &str, slot: u32, timeout: Duration) -> Result<()> {
        stop_blocking_async(format!("rollgate-{service}-{slot}"), timeout).await
    }

    async fn observe(&self, service: &str, slot: u32) -> Observed {
        let name = format!("rollgate-{service}-{slot}");
        tokio::task::spawn_blocking(move || observe_blocking(name))
            .await
            .unwrap_or_default()
    }
}

async fn stop_blocking_async(name: String, timeout: Duration) -> Result<()> {
    tokio::task::spawn_blocking(move || stop_blocking(name, timeout))
        .await
        .map_err(join_err)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scm_errors_keep_the_win32_code_and_message() {
        let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
            .expect("the SCM (Wine's services.exe under Wine)");
        let e = manager
            .open_service("rollgate-no-such-service", ServiceAccess::QUERY_STATUS)
            .err()
            .expect("no such service");
        let BackendError::CommandFailed { command, detail } = scm_err("OpenService", e) else {
            panic!("not CommandFailed");
        };
        assert_eq!(command, "OpenService");
        // ERROR_SERVICE_DOES_NOT_EXIST
        assert!(detail.starts_with("Win32 error 1060: "), "{detail}");
        assert!(detail.contains("(os error 1060)"), "{detail}");
    }
}
