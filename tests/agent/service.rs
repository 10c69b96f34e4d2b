//! The agent as a service of its own: the systemd unit it installs and sd_notify readiness.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

#[test]
fn service_install_writes_a_type_notify_unit() {
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
    let out = Command::new(AGENT)
        .args(["service", "install", "--no-start", "--config"])
        .arg(&cfg)
        .arg("--unit-dir")
        .arg(&units)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let unit = std::fs::read_to_string(units.join("rollgate-agent.service")).unwrap();
    assert!(unit.contains("Type=notify\n"), "{unit}");
    let exec = unit.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
    assert!(
        exec.contains(AGENT) && exec.contains("service run --config"),
        "{exec}"
    );
    assert!(
        exec.contains(&cfg.canonicalize().unwrap().display().to_string()),
        "{exec}"
    );

    let out = Command::new(AGENT)
        .args(["service", "uninstall", "--unit-dir"])
        .arg(&units)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!units.join("rollgate-agent.service").exists());
}

#[test]
fn service_run_notifies_systemd_once_listening() {
    let tmp = tempfile::tempdir().unwrap();
    let sock_path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let cfg = tmp.path().join("agent.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:0\ndataDir: {}\nservices: []\n",
            tmp.path().join("d").display()
        ),
    )
    .unwrap();
    let log = tmp.path().join("agent.log");
    let mut child = Command::new(AGENT)
        .args(["--log-format", "json", "service", "run", "--config"])
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1 within 20s");
    assert_eq!(&buf[..n], b"READY=1");
    // By then the address is written and the agent answers.
    let url = std::fs::read_to_string(tmp.path().join("d/agent.addr")).unwrap();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let n = sock.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert!(child.wait().unwrap().success());
    // `--log-format json`: every line is a JSON object with a level and a message.
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines.iter().any(|v| v["fields"]["message"] == "listening"),
        "{text}"
    );
    assert!(lines.iter().all(|v| v["level"].is_string()));
}
