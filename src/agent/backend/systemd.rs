//! The systemd backend: one unit per service slot, driven through `systemctl`.
//!
//! Unit text generation is pure and tested as text; only `start`/`stop`/`observe` touch the
//! system, and the backend reports itself unavailable where systemd is not running.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{BackendError, Observed, Result, RunSpec, ServiceBackend};
use crate::agent::api::{BackendKind, ExitInfo, RunState};
use crate::agent::recovery;

/// The systemd backend.
pub struct Systemd {
    pub unit_dir: PathBuf,
}

/// Name of the unit of a service slot.
pub fn unit_name(service: &str, slot: u32) -> String {
    format!("rollgate-{service}-{slot}.service")
}

/// Name of the unit `OnFailure=` starts for a `run` recovery action.
pub fn recovery_unit_name(service: &str, slot: u32) -> String {
    format!("rollgate-{service}-{slot}-recovery.service")
}

/// Quotes one word for `ExecStart=`/`Environment=`: double quotes, with `\`, `"`, `%` and `$`
/// escaped so systemd passes it through literally.
pub fn quote(word: &str) -> String {
    let mut out = String::with_capacity(word.len() + 2);
    out.push('"');
    for c in word.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '%' => out.push_str("%%"),
            '$' => out.push_str("$$"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn seconds(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// The unit text for a slot, and the recovery unit's text when there is a `run` action.
pub fn unit_text(spec: &RunSpec) -> (String, Option<String>) {
    let rec = recovery::to_systemd(
        &spec.recovery,
        &recovery_unit_name(&spec.service, spec.slot),
    );
    let mut u = String::new();
    u.push_str("# Written by rollgate-agent; changes are overwritten on the next activation.\n");
    u.push_str("[Unit]\n");
    let description = spec
        .description
        .clone()
        .unwrap_or_else(|| format!("rollgate service {}", spec.service));
    u.push_str(&format!(
        "Description={description} (slot {}, version {})\n",
        spec.slot, spec.version
    ));
    u.push_str("After=network-online.target\nWants=network-online.target\n");
    for dep in &spec.dependencies {
        u.push_str(&format!("Requires={dep}\nAfter={dep}\n"));
    }
    for line in &rec.unit {
        u.push_str(line);
        u.push('\n');
    }
    u.push_str("\n[Service]\nType=simple\n");
    let mut exec = quote(&spec.program.display().to_string());
    for a in &spec.args {
        exec.push(' ');
        exec.push_str(&quote(a));
    }
    u.push_str(&format!("ExecStart={exec}\n"));
    u.push_str(&format!(
        "WorkingDirectory={}\n",
        quote(&spec.cwd.display().to_string())
    ));
    for (k, v) in &spec.env {
        u.push_str(&format!("Environment={}\n", quote(&format!("{k}={v}"))));
    }
    if let Some(user) = &spec.user {
        u.push_str(&format!("User={user}\n"));
    }
    for line in &rec.service {
        u.push_str(line);
        u.push('\n');
    }
    u.push_str(&format!(
        "TimeoutStopSec={}\nKillMode=mixed\nKillSignal=SIGTERM\n",
        seconds(spec.stop_timeout)
    ));
    u.push_str("\n[Install]\nWantedBy=multi-user.target\n");
    let recovery_unit = rec.on_failure_command.map(|cmd| {
        format!(
            "# Written by rollgate-agent: the `run` recovery action of {service} slot {slot}.\n[Unit]\nDescription=rollgate recovery action for {service} slot {slot}\n\n[Service]\nType=oneshot\nExecStart=/bin/sh -c {cmd}\n",
            service = spec.service,
            slot = spec.slot,
            cmd = quote(&cmd),
        )
    });
    (u, recovery_unit)
}

/// The unit for the agent itself (`rollgate-agent service install` on Linux).
pub fn agent_unit_text(exe: &Path, config: &Path) -> String {
    format!(
        "# Written by `rollgate-agent service install`.\n[Unit]\nDescription=rollgate host agent\nAfter=network-online.target\nWants=network-online.target\n\n[Service]\nType=notify\nExecStart={} service run --config {}\nRestart=on-failure\nRestartSec=2s\nTimeoutStopSec=60s\nKillMode=process\n\n[Install]\nWantedBy=multi-user.target\n",
        quote(&exe.display().to_string()),
        quote(&config.display().to_string()),
    )
}

/// Parses `systemctl show` output into what the agent reports.
pub fn parse_show(text: &str) -> Observed {
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
            .unwrap_or("")
    };
    let sub = get("SubState");
    let state = match get("ActiveState") {
        "active" | "reloading" => RunState::Running,
        "activating" if sub == "auto-restart" => RunState::Backoff,
        "activating" => RunState::Starting,
        "deactivating" => RunState::Stopping,
        "failed" => RunState::Failed,
        _ => RunState::Stopped,
    };
    let pid = get("MainPID").parse::<u32>().ok().filter(|p| *p != 0);
    let code = get("ExecMainStatus").parse::<i32>().ok();
    let exited = get("ExecMainExitTimestampMonotonic")
        .parse::<u64>()
        .unwrap_or(0)
        != 0;
    Observed {
        state,
        pid,
        restarts: get("NRestarts").parse().unwrap_or(0),
        last_exit: (exited && code.is_some()).then_some(ExitInfo {
            code,
            signal: None,
            at_unix_ms: 0,
        }),
        ..Observed::default()
    }
}

async fn systemctl(args: &[&str]) -> Result<String> {
    let out = tokio::process::Command::new("systemctl")
        .args(args)
        .output()
        .await
        .map_err(|e| BackendError::CommandFailed {
            command: format!("systemctl {}", args.join(" ")),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(BackendError::CommandFailed {
            command: format!("systemctl {}", args.join(" ")),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl ServiceBackend for Systemd {
    fn kind(&self) -> BackendKind {
        BackendKind::Systemd
    }

    fn availability(&self) -> std::result::Result<(), String> {
        if cfg!(target_os = "linux") && Path::new("/run/systemd/system").is_dir() {
            Ok(())
        } else {
            Err("systemd is not running (no /run/systemd/system)".to_string())
        }
    }

    async fn start(&self, spec: &RunSpec) -> Result<()> {
        let (unit, recovery_unit) = unit_text(spec);
        let name = unit_name(&spec.service, spec.slot);
        let write = |path: PathBuf, text: &str| {
            crate::agent::store::write_atomic(&path, text.as_bytes()).map_err(|e| {
                BackendError::Write {
                    path,
                    source: std::io::Error::other(e.to_string()),
                }
            })
        };
        write(self.unit_dir.join(&name), &unit)?;
        if let Some(text) = recovery_unit {
            write(
                self.unit_dir
                    .join(recovery_unit_name(&spec.service, spec.slot)),
                &text,
            )?;
        }
        systemctl(&["daemon-reload"]).await?;
        systemctl(&["restart", &name]).await?;
        Ok(())
    }

    async fn stop(&self, service: &str, slot: u32, _timeout: Duration) -> Result<()> {
        let name = unit_name(service, slot);
        if self.unit_dir.join(&name).exists() {
            systemctl(&["stop", &name]).await?;
        }
        Ok(())
    }

    async fn observe(&self, service: &str, slot: u32) -> Observed {
        let name = unit_name(service, slot);
        match systemctl(&[
            "show",
            &name,
            "-p",
            "ActiveState,SubState,MainPID,ExecMainStatus,ExecMainExitTimestampMonotonic,NRestarts",
        ])
        .await
        {
            Ok(text) => parse_show(&text),
            Err(e) => Observed {
                detail: Some(e.to_string()),
                ..Observed::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::config::{LogConfig, StartType};
    use crate::agent::recovery::{Recovery, RecoveryAction};

    fn spec() -> RunSpec {
        RunSpec {
            service: "web".into(),
            slot: 1,
            version: "2.0".into(),
            program: "/var/lib/rg/services/web/versions/2.0/bin/web".into(),
            args: vec!["--listen".into(), "127.0.0.1:8081".into(), "50%".into()],
            env: [("GREETING".to_string(), "hi \"there\" $HOME".to_string())].into(),
            cwd: "/var/lib/rg/services/web/versions/2.0".into(),
            recovery: Recovery {
                actions: vec![
                    RecoveryAction::restart(Duration::ZERO),
                    RecoveryAction::restart(Duration::from_secs(10)),
                    RecoveryAction {
                        restart: None,
                        run: Some("/usr/bin/logger web failed".into()),
                    },
                ],
                ..Recovery::default()
            },
            stop_timeout: Duration::from_secs(15),
            user: Some("web".into()),
            description: None,
            start_type: StartType::Auto,
            dependencies: vec![],
            log_dir: "/tmp".into(),
            logs: LogConfig::default(),
            run_dir: "/tmp".into(),
        }
    }

    #[test]
    fn unit_text_has_exec_dirs_env_user_and_recovery() {
        let (unit, recovery) = unit_text(&spec());
        for line in [
            "ExecStart=\"/var/lib/rg/services/web/versions/2.0/bin/web\" \"--listen\" \"127.0.0.1:8081\" \"50%%\"",
            "WorkingDirectory=\"/var/lib/rg/services/web/versions/2.0\"",
            "Environment=\"GREETING=hi \\\"there\\\" $$HOME\"",
            "User=web",
            "Restart=on-failure",
            "RestartSec=100ms",
            "RestartSteps=1",
            "RestartMaxDelaySec=10s",
            "StartLimitBurst=3",
            "OnFailure=rollgate-web-1-recovery.service",
            "TimeoutStopSec=15000ms",
            "Description=rollgate service web (slot 1, version 2.0)",
        ] {
            assert!(
                unit.lines().any(|l| l == line),
                "missing {line:?} in\n{unit}"
            );
        }
        let recovery = recovery.unwrap();
        assert!(
            recovery.contains("ExecStart=/bin/sh -c \"/usr/bin/logger web failed\""),
            "{recovery}"
        );
        // [Unit] settings must come before [Service].
        assert!(unit.find("OnFailure=").unwrap() < unit.find("[Service]").unwrap());
    }

    #[test]
    fn agent_unit_is_type_notify() {
        let text = agent_unit_text(
            Path::new("/usr/bin/rollgate-agent"),
            Path::new("/etc/rollgate/agent.yaml"),
        );
        assert!(text.contains("Type=notify\n"));
        assert!(text.contains("ExecStart=\"/usr/bin/rollgate-agent\" service run --config \"/etc/rollgate/agent.yaml\""));
    }

    #[test]
    fn show_output_maps_to_states() {
        let o = parse_show(
            "ActiveState=activating\nSubState=auto-restart\nMainPID=0\nExecMainStatus=3\nExecMainExitTimestampMonotonic=99\nNRestarts=4\n",
        );
        assert_eq!(o.state, RunState::Backoff);
        assert_eq!(o.restarts, 4);
        assert_eq!(o.last_exit.unwrap().code, Some(3));
        let o = parse_show("ActiveState=active\nSubState=running\nMainPID=42\n");
        assert_eq!((o.state, o.pid), (RunState::Running, Some(42)));
    }
}
