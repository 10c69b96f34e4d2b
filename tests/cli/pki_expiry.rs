//! Certificate expiry through the real binaries: `pki issue` prints it and takes `--days`,
//! `pki check` warns (exit 1) within 30 days, and the agent logs a warning at start.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use super::support::rollgate;

#[test]
fn expiry_is_printed_checked_and_logged_by_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_eq!(rollgate(d, &["pki", "init"], &[]).code, 0);
    let run = rollgate(d, &["pki", "issue", "--client", "ci"], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("expires: 20"), "{}", run.stdout);
    // Everything valid for years: listed, no warning, exit 0.
    let run = rollgate(d, &["pki", "check"], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("pki/client-ci.pem: expires "),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("pki/ca.pem: expires "),
        "{}",
        run.stdout
    );
    assert_eq!(run.stderr, "");

    let run = rollgate(
        d,
        &["pki", "issue", "--agent", "127.0.0.1", "--days", "10"],
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains(" UTC (10 days)") || run.stdout.contains(" UTC (9 days)"),
        "{}",
        run.stdout
    );
    let run = rollgate(d, &["pki", "check", "pki"], &[]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr
            .contains("warning: pki/agent-127.0.0.1.pem expires in "),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("client-ci"), "{}", run.stderr);
    // Not a pki dir: an input error.
    assert_eq!(rollgate(d, &["pki", "check", "nope"], &[]).code, 2);
    assert_eq!(
        rollgate(d, &["pki", "issue", "--client", "x", "--days", "0"], &[]).code,
        2
    );

    // The agent says so when it starts.
    std::fs::write(
        d.join("agent.yaml"),
        "listen: 127.0.0.1:0\ndataDir: data\ntls: {cert: pki/agent-127.0.0.1.pem, key: pki/agent-127.0.0.1-key.pem, clientCa: pki/ca.pem}\n",
    )
    .unwrap();
    let mut agent = Command::new(env!("CARGO_BIN_EXE_rollgate-agent"))
        .current_dir(d)
        .args(["run", "-c", "agent.yaml"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    for line in BufReader::new(agent.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        let done = line.contains("listening");
        seen.push(line);
        if done || seen.len() > 50 {
            break;
        }
    }
    agent.kill().unwrap();
    agent.wait().unwrap();
    assert!(
        seen.iter()
            .any(|l| l.contains("WARN") && l.contains("the agent's certificate expires in")),
        "{seen:#?}"
    );
}
