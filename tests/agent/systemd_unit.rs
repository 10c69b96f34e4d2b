//! The agent as a systemd service under a real systemd (PID 1 of its own namespaces): install,
//! readiness on `READY=1`, a graceful stop, uninstall, the unit's exposure rating, and the
//! priorities its log lines reach journald with.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use rollgate::agent::api::{ActivateRequest, OperationState};

use crate::support::*;
use crate::systemd::*;

/// `__MONOTONIC_TIMESTAMP` of a journal entry.
fn mono(entry: &serde_json::Value) -> u64 {
    entry["__MONOTONIC_TIMESTAMP"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap()
}

fn message(entry: &serde_json::Value) -> String {
    entry["MESSAGE"].as_str().unwrap_or_default().to_string()
}

#[test]
fn service_install_starts_the_agent_active_only_once_listening_and_stop_and_uninstall_work() {
    let Some(sd) = Systemd::start("systemd_unit") else {
        return;
    };
    let files = AgentFiles::write(&sd, "  []\n");
    let out = files.install(&sd);
    assert_ok("service install", &out);
    assert!(sd.units().join(AGENT_UNIT).exists());
    assert_eq!(
        sd.prop("multi-user.target", "Wants"),
        AGENT_UNIT,
        "enabled: multi-user.target wants it"
    );

    // `enable --now` returned, so the start job is done: active, and it answers.
    let show = sd.show(AGENT_UNIT);
    assert_eq!(
        (
            show["Type"].as_str(),
            show["ActiveState"].as_str(),
            show["SubState"].as_str()
        ),
        ("notify", "active", "running"),
        "{}",
        sd.journal_text(AGENT_UNIT)
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let info = rt.block_on(files.client().host_info());
    assert!(info.is_ok(), "the agent answers once active: {info:?}");

    // systemd declared it started (on READY=1) only after the agent logged that it listens.
    let journal = sd.journal(&[]);
    let listening = journal
        .iter()
        .find(|e| e["_SYSTEMD_UNIT"] == AGENT_UNIT && message(e).contains("listening"))
        .unwrap_or_else(|| panic!("no 'listening' line: {}", sd.journal_text(AGENT_UNIT)));
    let started = journal
        .iter()
        .find(|e| e["UNIT"] == AGENT_UNIT && e["JOB_TYPE"] == "start" && e["JOB_RESULT"] == "done")
        .expect("systemd's 'Started' entry");
    assert!(
        mono(listening) < mono(started),
        "active before listening: {} vs {}",
        message(listening),
        message(started)
    );

    // A graceful stop: SIGTERM, the agent drains and exits 0 well within TimeoutStopSec=60s.
    let t = Instant::now();
    sd.systemctl(&["stop", AGENT_UNIT]);
    let took = t.elapsed();
    let show = sd.show(AGENT_UNIT);
    assert_eq!(show["ActiveState"], "inactive");
    assert_eq!(show["Result"], "success", "not killed on a timeout");
    assert_eq!(show["ExecMainStatus"], "0");
    assert!(took < Duration::from_secs(30), "stop took {took:?}");
    assert!(
        sd.journal_text(AGENT_UNIT).contains("stopped"),
        "{}",
        sd.journal_text(AGENT_UNIT)
    );

    let out = sd
        .command(AGENT)
        .args(["service", "uninstall"])
        .output()
        .unwrap();
    assert_ok("service uninstall", &out);
    assert!(!sd.units().join(AGENT_UNIT).exists());
    assert!(
        !sd.units()
            .join("multi-user.target.wants")
            .join(AGENT_UNIT)
            .exists()
    );
    assert_eq!(sd.prop(AGENT_UNIT, "LoadState"), "not-found");
}

/// The figure `systemd-analyze --offline=true security` gives the unit `service install`
/// writes: it must stay at or below 4.5 ("OK").
#[test]
fn the_agent_unit_rates_ok_in_systemd_analyze_security() {
    if !std::path::Path::new("/usr/bin/systemd-analyze").exists() {
        eprintln!("SKIP: no systemd-analyze here (Debian's systemd package)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("agent.yaml");
    std::fs::write(
        &cfg,
        format!(
            "dataDir: {}\nservices: []\n",
            tmp.path().join("d").display()
        ),
    )
    .unwrap();
    let units = tmp.path().join("units");
    let out = std::process::Command::new(AGENT)
        .args(["service", "install", "--no-start", "--config"])
        .arg(&cfg)
        .arg("--unit-dir")
        .arg(&units)
        .output()
        .unwrap();
    assert_ok("service install --no-start", &out);
    let out = std::process::Command::new("systemd-analyze")
        .args(["--offline=true", "security"])
        .arg(units.join(AGENT_UNIT))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("{text}{}", String::from_utf8_lossy(&out.stderr)));
    let figure: f64 = line
        .rsplit(':')
        .next()
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    eprintln!("{line}");
    assert!(figure <= 4.5, "{text}");
}

#[test]
fn the_agents_log_lines_reach_journald_with_their_priority() {
    let Some(sd) = Systemd::start("systemd_journald") else {
        return;
    };
    let files = AgentFiles::write(&sd, &web_service(&free_ports(1), ""));
    // ERROR: the port is taken, the agent cannot bind and exits (and the start fails).
    let taken = std::net::TcpListener::bind(("127.0.0.1", files.port)).unwrap();
    let out = files.install(&sd);
    assert!(!out.status.success(), "started although its port is taken");
    drop(taken);
    // INFO: it listens after a restart.
    sd.systemctl(&["reset-failed", AGENT_UNIT]);
    sd.systemctl(&["restart", AGENT_UNIT]);
    // WARN: an operation fails (a version never staged).
    let rt = tokio::runtime::Runtime::new().unwrap();
    let op = rt.block_on(async {
        let c = files.client();
        let op = c
            .activate(
                "web",
                &ActivateRequest {
                    request_id: "act-missing".into(),
                    version: "9.9".into(),
                    slot: 0,
                    timeout_ms: None,
                },
            )
            .await
            .unwrap();
        c.wait_operation(&op.id, Duration::from_secs(30))
            .await
            .unwrap()
    });
    assert_eq!(op.state, OperationState::Failed);
    // The lines are in the journal once journald has read them from the stream.
    let deadline = Instant::now() + Duration::from_secs(10);
    let entries = loop {
        let entries = sd.journal(&["-u", AGENT_UNIT]);
        if entries
            .iter()
            .any(|e| message(e).contains("operation failed"))
            || Instant::now() > deadline
        {
            break entries;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let priority = |needle: &str| -> String {
        let e = entries
            .iter()
            .find(|e| e["SYSLOG_IDENTIFIER"] == "rollgate-agent" && message(e).contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} line: {}", sd.journal_text(AGENT_UNIT)));
        assert!(
            !message(e).starts_with('<'),
            "journald took the prefix as text: {}",
            message(e)
        );
        e["PRIORITY"].as_str().unwrap().to_string()
    };
    assert_eq!(priority("ERROR"), "3", "ERROR -> err");
    assert_eq!(priority("operation failed"), "4", "WARN -> warning");
    assert_eq!(priority("listening url="), "6", "INFO -> info");
    // So `journalctl -p warning` shows warnings and errors only.
    let warnings = sd.journal(&["-u", AGENT_UNIT, "-p", "warning"]);
    assert!(
        warnings
            .iter()
            .filter(|e| e["SYSLOG_IDENTIFIER"] == "rollgate-agent")
            .all(|e| !message(e).contains("listening")),
        "{warnings:#?}"
    );
    assert!(
        warnings
            .iter()
            .any(|e| message(e).contains("operation failed"))
    );
}

/// `manifests/systemd/rollgate-agent.service` is what `service install` writes for
/// `manifests/systemd/agent.yaml` (with the binary and config at their documented paths).
#[test]
fn the_example_unit_is_what_service_install_writes_for_the_example_config() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/systemd");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let units = tmp.path().join("units");
    let out = std::process::Command::new(AGENT)
        .args(["service", "install", "--no-start", "--config"])
        .arg(dir.join("agent.yaml"))
        .arg("--unit-dir")
        .arg(&units)
        .env("ROLLGATE_AGENT_DATA", &data)
        .output()
        .unwrap();
    assert_ok("service install --no-start", &out);
    let written = std::fs::read_to_string(units.join(AGENT_UNIT))
        .unwrap()
        .replace(&data.display().to_string(), "/var/lib/rollgate-agent")
        .replace(&format!("\"{AGENT}\""), "\"/usr/local/bin/rollgate-agent\"")
        .replace(
            &format!(
                "\"{}\"",
                dir.join("agent.yaml").canonicalize().unwrap().display()
            ),
            "\"/etc/rollgate/agent.yaml\"",
        );
    let example = std::fs::read_to_string(dir.join(AGENT_UNIT)).unwrap();
    assert_eq!(
        written, example,
        "regenerate manifests/systemd/{AGENT_UNIT}"
    );
}

/// A line of `/proc/<pid>/status` inside the namespace (pids there are the agent's view).
fn proc_status(sd: &Systemd, pid: u32, key: &str) -> String {
    let out = sd.run("cat", &[&format!("/proc/{pid}/status")]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
        .unwrap_or_else(|| panic!("no {key} for pid {pid}"))
}

#[test]
fn supervised_services_inherit_the_agent_units_restrictions_and_sandbox_widens_them() {
    let Some(sd) = Systemd::start("systemd_unit supervisor") else {
        return;
    };
    let ports = free_ports(1);
    // It runs as nobody: under the agent's UMask=0077 nobody could not even reach its program;
    // its `sandbox:` widens the umask.
    let services = format!(
        "{}    user: nobody\n    sandbox: {{umask: '0022'}}\n",
        web_service(&[ports[0]], ""),
    );
    // nobody must reach its version dir under ours.
    std::fs::set_permissions(&sd.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let files = AgentFiles::write(&sd, &services);
    assert_ok("service install", &files.install(&sd));
    let unit = std::fs::read_to_string(sd.units().join(AGENT_UNIT)).unwrap();
    assert!(unit.contains("\nUMask=0022\n"), "{unit}");
    let c = files.client();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pid = rt.block_on(async {
        let v1 = tar_gz(&[("bin/web", 0o755, &demo_script(&[]))]);
        assert_succeeded(&stage(&c, "v1", &v1).await);
        assert_succeeded(&activate(&c, "act-v1", "v1", 0).await);
        assert!(get_root(ports[0]).await.is_ok());
        c.service("web").await.unwrap().slots[0].pid.unwrap()
    });
    // The service is the agent's child under the agent's unit: its sandbox applies.
    assert_eq!(proc_status(&sd, pid, "NoNewPrivs:"), "1");
    assert_eq!(
        proc_status(&sd, pid, "Seccomp:"),
        "2",
        "the system call filter"
    );
    // CAP_KILL, CAP_SETGID, CAP_SETUID: bits 5, 6, 7.
    assert_eq!(proc_status(&sd, pid, "CapBnd:"), "00000000000000e0");
    let cgroup = sd.run("cat", &[&format!("/proc/{pid}/cgroup")]);
    assert!(
        String::from_utf8_lossy(&cgroup.stdout).contains(AGENT_UNIT),
        "in the agent's cgroup"
    );
}
