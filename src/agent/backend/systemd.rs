//! The systemd backend: one unit per service slot, driven through `systemctl`.
//!
//! Unit text generation is pure and tested as text; only `start`/`stop`/`observe` touch the
//! system, and the backend reports itself unavailable where systemd is not running.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{BackendError, Observed, Result, RunSpec, ServiceBackend};
use crate::agent::api::{BackendKind, ExitInfo, RunState};
use crate::agent::config::{AgentConfig, SandboxConfig};
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
    // WorkingDirectory= takes the rest of the line as the path: no quotes (systemd refuses a
    // quoted one as "not absolute" and will not start the unit), only specifiers escaped.
    u.push_str(&format!(
        "WorkingDirectory={}\n",
        spec.cwd.display().to_string().replace('%', "%%")
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

/// The agent's own restrictions, kept where a test shows the agent still works with them
/// (`tests/agent/systemd_*.rs` run it under this unit). What varies with the configuration
/// (writable paths, capabilities, address families, system calls, umask) is added by
/// [`agent_unit_text`].
const AGENT_SANDBOX: &[&str] = &[
    "ProtectSystem=strict",
    "PrivateTmp=yes",
    "PrivateDevices=yes",
    "DevicePolicy=closed",
    "PrivateMounts=yes",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "RestrictNamespaces=yes",
    "RestrictRealtime=yes",
    "RestrictSUIDSGID=yes",
    "LockPersonality=yes",
    "MemoryDenyWriteExecute=yes",
    "SystemCallArchitectures=native",
    "SystemCallErrorNumber=EPERM",
];

/// Capabilities the agent uses: switch a service to its `user:` (set uid, gid and groups) and
/// signal it afterwards.
const AGENT_CAPABILITIES: &[&str] = &["CAP_SETUID", "CAP_SETGID", "CAP_KILL"];

/// The unit for the agent itself (`rollgate-agent service install` on Linux): `Type=notify`
/// (active once listening), with least privilege widened only by the configuration: its data
/// dir is writable, the systemd unit dir too when a service uses the systemd backend, a port
/// below 1024 adds `CAP_NET_BIND_SERVICE`, and each service's `sandbox:` adds what it needs.
/// Services the supervisor runs inherit these restrictions; systemd-backend services do not.
pub fn agent_unit_text(exe: &Path, config_path: &Path, config: &AgentConfig) -> String {
    let mut u = format!(
        "# Written by `rollgate-agent service install`.\n[Unit]\nDescription=rollgate host agent\nAfter=network-online.target\nWants=network-online.target\n\n[Service]\nType=notify\nExecStart={} service run --config {}\nRestart=on-failure\nRestartSec=2s\nTimeoutStopSec=60s\nKillMode=process\n",
        quote(&exe.display().to_string()),
        quote(&config_path.display().to_string()),
    );
    let sandboxes: Vec<&SandboxConfig> = config.services.iter().map(|s| &s.sandbox).collect();
    let mut rw = vec![config.data_dir.display().to_string()];
    if config
        .services
        .iter()
        .any(|s| s.backend == BackendKind::Systemd)
    {
        rw.push(config.systemd_unit_dir.display().to_string());
    }
    let mut caps: Vec<String> = AGENT_CAPABILITIES.iter().map(|c| c.to_string()).collect();
    if listen_port(&config.listen).is_some_and(|p| p < 1024) {
        caps.push("CAP_NET_BIND_SERVICE".into());
    }
    let mut families: Vec<String> = ["AF_UNIX", "AF_INET", "AF_INET6"].map(String::from).into();
    let mut calls = Vec::new();
    let mut umask = 0o077u32;
    for sb in &sandboxes {
        rw.extend(sb.read_write_paths.iter().map(|p| p.display().to_string()));
        caps.extend(sb.capabilities.iter().cloned());
        families.extend(sb.address_families.iter().cloned());
        calls.extend(sb.system_calls.iter().cloned());
        if let Some(m) = sb
            .umask
            .as_deref()
            .and_then(|m| u32::from_str_radix(m, 8).ok())
        {
            umask &= m;
        }
    }
    for list in [&mut rw, &mut caps, &mut families, &mut calls] {
        dedup_keep_order(list);
    }
    u.push_str(&format!("UMask={umask:04o}\n"));
    if !sandboxes.iter().any(|s| s.new_privileges) {
        u.push_str("NoNewPrivileges=yes\n");
    }
    if !sandboxes.iter().any(|s| s.home) {
        u.push_str("ProtectHome=yes\n");
    }
    for line in AGENT_SANDBOX {
        u.push_str(line);
        u.push('\n');
    }
    u.push_str(&format!("ReadWritePaths={}\n", rw.join(" ")));
    u.push_str(&format!("CapabilityBoundingSet={}\n", caps.join(" ")));
    u.push_str(&format!("RestrictAddressFamilies={}\n", families.join(" ")));
    u.push_str("SystemCallFilter=@system-service\nSystemCallFilter=~@resources\n");
    if !calls.is_empty() {
        u.push_str(&format!("SystemCallFilter={}\n", calls.join(" ")));
    }
    u.push_str("\n[Install]\nWantedBy=multi-user.target\n");
    u
}

/// Checks a service's `sandbox:` block: each value must land in the agent's unit as one word of
/// the setting it is meant for (a space or newline would add others). `Err((field, message))`.
pub fn check_sandbox(sb: &SandboxConfig) -> std::result::Result<(), (String, String)> {
    if let Some(u) = &sb.umask
        && u32::from_str_radix(u, 8).map_or(true, |m| m > 0o777)
    {
        return Err((
            "sandbox.umask".into(),
            format!("expected octal like \"0022\", got {u:?}"),
        ));
    }
    for (field, names, prefix) in [
        ("capabilities", &sb.capabilities, "CAP_"),
        ("addressFamilies", &sb.address_families, "AF_"),
    ] {
        if let Some(n) = names.iter().find(|n| {
            !n.starts_with(prefix)
                || !n
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        }) {
            return Err((
                format!("sandbox.{field}"),
                format!("expected a name like {prefix}…, got {n:?}"),
            ));
        }
    }
    if let Some(p) = sb.read_write_paths.iter().find(|p| {
        !p.is_absolute()
            || p.to_string_lossy()
                .contains(|c: char| c.is_whitespace() || c.is_control())
    }) {
        return Err((
            "sandbox.readWritePaths".into(),
            format!(
                "expected an absolute path without spaces, got {:?}",
                p.display().to_string()
            ),
        ));
    }
    if let Some(n) = sb.system_calls.iter().find(|n| {
        n.is_empty()
            || !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '@' | '-' | '~' | ':'))
    }) {
        return Err((
            "sandbox.systemCalls".into(),
            format!("expected a system call or @group name, got {n:?}"),
        ));
    }
    Ok(())
}

fn dedup_keep_order(list: &mut Vec<String>) {
    let mut seen = std::collections::BTreeSet::new();
    list.retain(|x| seen.insert(x.clone()));
}

/// The port of a `listen:` address (`host:port`, `[v6]:port`).
fn listen_port(listen: &str) -> Option<u16> {
    listen.rsplit_once(':')?.1.parse().ok()
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
        // A start limit hit by an earlier version (its `OnFailure=` ran) would refuse this start.
        let _ = systemctl(&["reset-failed", &name]).await;
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
            "WorkingDirectory=/var/lib/rg/services/web/versions/2.0",
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

    #[cfg(unix)]
    fn agent_config(yaml: &str) -> AgentConfig {
        crate::agent::config::parse(Path::new("/etc/rollgate/agent.yaml"), yaml).unwrap()
    }

    // systemd units and their absolute paths are a Linux matter.
    #[cfg(unix)]
    #[test]
    fn agent_unit_is_type_notify_with_least_privilege() {
        let config = agent_config("dataDir: /var/lib/rollgate-agent\nservices: []\n");
        let text = agent_unit_text(
            Path::new("/usr/bin/rollgate-agent"),
            Path::new("/etc/rollgate/agent.yaml"),
            &config,
        );
        for line in [
            "Type=notify",
            "ExecStart=\"/usr/bin/rollgate-agent\" service run --config \"/etc/rollgate/agent.yaml\"",
            "UMask=0077",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "PrivateTmp=yes",
            "ReadWritePaths=/var/lib/rollgate-agent",
            "CapabilityBoundingSet=CAP_SETUID CAP_SETGID CAP_KILL",
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
            "SystemCallFilter=@system-service",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    // systemd units and their absolute paths are a Linux matter.
    #[cfg(unix)]
    #[test]
    fn agent_unit_is_widened_by_the_configuration_only() {
        let config = agent_config(
            "listen: 0.0.0.0:443\ndataDir: /srv/agent\nsystemdUnitDir: /etc/systemd/system\nservices:\n  - name: a\n    backend: systemd\n    command: bin/a\n  - name: b\n    command: bin/b\n    sandbox: {readWritePaths: [/var/www], capabilities: [CAP_NET_RAW], addressFamilies: [AF_NETLINK], systemCalls: ['@resources'], newPrivileges: true, home: true, umask: '0022'}\n",
        );
        let text = agent_unit_text(Path::new("/a"), Path::new("/c"), &config);
        for line in [
            "ReadWritePaths=/srv/agent /etc/systemd/system /var/www",
            "CapabilityBoundingSet=CAP_SETUID CAP_SETGID CAP_KILL CAP_NET_BIND_SERVICE CAP_NET_RAW",
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
            "SystemCallFilter=@resources",
            "UMask=0022",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(
            !text.contains("NoNewPrivileges") && !text.contains("ProtectHome"),
            "{text}"
        );
        // The filter that re-allows comes after the one that denies.
        assert!(
            text.find("SystemCallFilter=@resources") > text.find("SystemCallFilter=~@resources")
        );
    }

    #[test]
    fn sandbox_values_that_could_break_the_unit_are_refused() {
        for (bad, field) in [
            (
                r#"readWritePaths: ["/a\nExecStartPre=/bin/evil"]"#,
                "sandbox.readWritePaths",
            ),
            ("capabilities: [cap_net_raw]", "sandbox.capabilities"),
            ("systemCalls: ['@x y']", "sandbox.systemCalls"),
            ("umask: '999'", "sandbox.umask"),
        ] {
            let yaml = format!(
                "dataDir: /d\nservices:\n  - name: a\n    command: bin/a\n    sandbox: {{{bad}}}\n"
            );
            let e = crate::agent::config::parse(Path::new("a.yaml"), &yaml)
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{bad}: {e}");
        }
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
