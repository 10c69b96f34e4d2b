//! The agent as a systemd service under a real systemd (PID 1 of its own namespaces): install,
//! readiness on `READY=1`, a graceful stop, uninstall, the unit's exposure rating, and the
//! priorities its log lines reach journald with.

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
    assert_eq!(priority("listening"), "6", "INFO -> info");
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
