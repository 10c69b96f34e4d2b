//! Absurd inputs through the real binaries: huge counts, huge files, and what `run` would refuse
//! reaching `check-config` first; `${VAR}` forms people already write.

use std::process::Command;

use super::support::{BASE, rollgate, workdir};

fn plan(text: &str, replicas: &str) -> super::support::Run {
    let dir = workdir(&[("web.yaml", text)]);
    rollgate(
        dir.path(),
        &["plan", "-f", "web.yaml", "--replicas", replicas],
        &[],
    )
}

/// Regression (issue 20): `plan --replicas 3435973837` printed `at most 1 instances, at least
/// 3435973837 ready`.
#[test]
fn replicas_over_a_million_is_a_flag_error() {
    let run = plan(BASE, "3435973837");
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert_eq!(run.stdout, "");
    assert!(run.stderr.contains("--replicas"), "{}", run.stderr);
    assert!(run.stderr.contains("0..=1000000"), "{}", run.stderr);
    assert_eq!(plan(BASE, "1000000").code, 0);
}

/// Regression (issue 20): `maxSurge: 4294967295` with `--replicas 10` printed `at most 9
/// instances` while the table said 20.
#[test]
fn a_bound_over_a_million_is_an_input_error_at_its_field() {
    let run = plan(&BASE.replace("maxSurge: 1", "maxSurge: 4294967295"), "10");
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert_eq!(run.stdout, "");
    assert_eq!(
        run.stderr.trim_end(),
        "error: web.yaml:11:17: spec.strategy.rolling.maxSurge: 4294967295 is too large: at most 1000000 instances"
    );
    let run = plan(
        &BASE.replace("maxSurge: 1", "maxSurge: \"4000000000%\""),
        "1000",
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("web.yaml:11:17: spec.strategy.rolling.maxSurge: 4000000000% (resolves to"),
        "{}",
        run.stderr
    );
    // The largest accepted: the bounds line and the table agree.
    let run = plan(&BASE.replace("maxSurge: 1", "maxSurge: 1000000"), "10");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .contains("bounds: at most 1000010 instances, at least 10 ready"),
        "{}",
        run.stdout
    );
}

/// A file of `size` bytes or more: a valid manifest padded with comments.
fn padded(size: usize) -> String {
    let mut text = BASE.to_string();
    let line = format!("# {}\n", "x".repeat(100));
    while text.len() < size {
        text.push_str(&line);
    }
    text
}

/// Regression (issue 20): a 50 MB manifest validated in 52 s and 3.1 GB.
#[test]
fn manifests_and_agent_configs_over_4_mib_are_refused_naming_the_file() {
    let dir = workdir(&[("web.yaml", &padded(5 << 20))]);
    let started = std::time::Instant::now();
    let run = rollgate(dir.path(), &["validate", "-f", "web.yaml"], &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.starts_with("error: web.yaml: is 5242")
            && run.stderr.contains("over the limit of 4194304 (4 MiB)"),
        "{}",
        run.stderr
    );
    assert!(started.elapsed().as_secs() < 5, "refused before parsing");
    // Under the limit is fine.
    let dir = workdir(&[("web.yaml", &padded(3 << 20))]);
    let run = rollgate(dir.path(), &["validate", "-f", "web.yaml"], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);

    let mut config = String::from("dataDir: /tmp/rollgate-limits\nservices: []\n");
    while config.len() < 5 << 20 {
        config.push_str("# padding padding padding padding padding padding\n");
    }
    let dir = workdir(&[("agent.yaml", &config)]);
    let out = Command::new(env!("CARGO_BIN_EXE_rollgate-agent"))
        .current_dir(dir.path())
        .args(["check-config", "-c", "agent.yaml"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("agent.yaml: is 5"), "{stderr}");
    assert!(stderr.contains("over the limit"), "{stderr}");
}

fn check_config(dir: &std::path::Path, flag: &str) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rollgate-agent"))
        .current_dir(dir)
        .args(["check-config", flag, "agent.yaml"])
        .env_remove("ROLLGATE_AGENT_LOG")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Regression (issue 20): `check-config` said ok to configs that `run` rejects.
#[test]
fn check_config_refuses_what_run_refuses_with_the_same_flag() {
    let pki = tempfile::tempdir().unwrap();
    rollgate::pki::init(pki.path()).unwrap();
    let agent = rollgate::pki::issue_agent(pki.path(), "127.0.0.1").unwrap();
    let tls = |cert: &str| {
        format!(
            "tls:\n  cert: \"{cert}\"\n  key: \"{}\"\n  clientCa: \"{}\"\n",
            agent.key.display(),
            pki.path().join("ca.pem").display()
        )
    };
    let good = format!(
        "listen: \"0.0.0.0:7443\"\ndataDir: data\n{}services: []\n",
        tls(&agent.cert.display().to_string())
    );
    let dir = workdir(&[("agent.yaml", &good)]);
    for flag in ["-c", "--config", "-f", "--file"] {
        let (code, text) = check_config(dir.path(), flag);
        assert_eq!(code, 0, "{flag}: {text}");
        assert!(text.contains("agent.yaml: ok"), "{text}");
    }

    // A missing certificate file.
    let missing = format!(
        "listen: \"0.0.0.0:7443\"\ndataDir: data\n{}services: []\n",
        tls("/nonexistent/agent.pem")
    );
    let dir = workdir(&[("agent.yaml", &missing)]);
    let (code, text) = check_config(dir.path(), "-c");
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("/nonexistent/agent.pem"), "{text}");
    assert!(!text.contains(": ok"), "{text}");

    // A non-loopback address without TLS.
    let dir = workdir(&[(
        "agent.yaml",
        "listen: \"0.0.0.0:7443\"\ndataDir: data\nservices: []\n",
    )]);
    let (code, text) = check_config(dir.path(), "-c");
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("refusing to listen on non-loopback 0.0.0.0:7443"),
        "{text}"
    );

    // A listen address that is not host:port.
    let dir = workdir(&[(
        "agent.yaml",
        "listen: \"nowhere\"\ndataDir: data\nservices: []\n",
    )]);
    let (code, text) = check_config(dir.path(), "-c");
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("\"nowhere\" is not host:port"), "{text}");
    // Nothing was created: check-config binds nothing and writes nothing.
    assert!(!dir.path().join("data").exists());
}

/// `${VAR:default}` (Spring's form) beside `${VAR:-default}`; and regression (issue 16, bug 7):
/// `version: "${VERSION}"` lost its quotes (3.20 failed as the float 3.2; 20261202 became a number).
#[test]
fn spring_defaults_and_quoted_versions() {
    let text = BASE.replace("version: \"2.0.0\"", "version: \"${VERSION}\"");
    let dir = workdir(&[("web.yaml", &text)]);
    for (value, shown) in [("3.20", "3.20"), ("20261202", "20261202")] {
        let run = rollgate(
            dir.path(),
            &["plan", "-f", "web.yaml", "--replicas", "2"],
            &[("VERSION", value)],
        );
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert!(
            run.stdout
                .starts_with(&format!("rollout web to version {shown}\n")),
            "{}",
            run.stdout
        );
    }
    let text = BASE.replace(
        "version: \"2.0.0\"",
        "version: \"${ROLLGATE_TEST_UNSET:2.0.0-rc:1}\"",
    );
    let dir = workdir(&[("web.yaml", &text)]);
    let run = rollgate(
        dir.path(),
        &["plan", "-f", "web.yaml", "--replicas", "2"],
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .starts_with("rollout web to version 2.0.0-rc:1\n"),
        "{}",
        run.stdout
    );
}
