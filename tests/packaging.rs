//! The Debian package: its agent unit comes from the generator, and real dpkg installs, removes and purges it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use rollgate::agent::backend::systemd::agent_unit_text;
use rollgate::agent::config;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The packaged unit is exactly what `rollgate-agent service install` writes for the packaged
/// config at its installed paths. `ROLLGATE_BLESS=1` rewrites packaging/rollgate-agent.service.
#[test]
fn packaged_unit_is_what_service_install_generates() {
    let cfg =
        config::load(&[repo().join("packaging/agent.yaml")], None).expect("packaging/agent.yaml");
    let want = agent_unit_text(
        Path::new("/usr/bin/rollgate-agent"),
        Path::new("/etc/rollgate/agent.yaml"),
        &cfg,
    );
    let path = repo().join("packaging/rollgate-agent.service");
    if std::env::var_os("ROLLGATE_BLESS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        have, want,
        "packaging/rollgate-agent.service is stale: rerun with ROLLGATE_BLESS=1"
    );
}

fn on_path(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// What must not exist on this machine before or after the install test.
fn host_leftovers() -> Vec<String> {
    let mut found: Vec<String> = [
        "/usr/bin/rollgate",
        "/usr/bin/rollgate-agent",
        "/etc/rollgate",
        "/var/lib/rollgate-agent",
    ]
    .iter()
    .filter(|p| Path::new(p).exists())
    .map(|p| p.to_string())
    .collect();
    if Command::new("getent")
        .args(["passwd", "rollgate"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        found.push("user rollgate".into());
    }
    if Command::new("dpkg-query")
        .args(["-W", "rollgate"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        found.push("dpkg package rollgate".into());
    }
    found
}

/// Builds the .deb from the debug binaries this test run already built (no release build),
/// installs it with dpkg into overlays of /usr, /etc and /var in a private mount namespace
/// (packaging/install-test.sh does the checks), and checks nothing reached the host.
#[test]
fn deb_installs_runs_removes_and_purges() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP deb_installs_runs_removes_and_purges: needs root (dpkg, mount namespace)");
        return;
    }
    for tool in ["cargo-deb", "dpkg", "unshare", "systemd-analyze"] {
        if !on_path(tool) {
            eprintln!(
                "SKIP deb_installs_runs_removes_and_purges: {tool} is not installed (tests/run.sh installs it)"
            );
            return;
        }
    }
    let before = host_leftovers();
    assert!(
        before.is_empty(),
        "the host already has {before:?}: refusing to test over it"
    );
    // The binaries of this build (cargo builds them for integration tests).
    let bin = Path::new(env!("CARGO_BIN_EXE_rollgate-agent"));
    assert!(
        bin.ends_with("debug/rollgate-agent"),
        "expected a debug build: {}",
        bin.display()
    );

    // The completions and the man page, from this build's rollgate, where the .deb's assets name
    // them (cargo-deb reads target/release/ as the profile's directory, target/debug/ here).
    let generated = bin.with_file_name("generated");
    let out = Command::new(repo().join("packaging/generate.sh"))
        .arg(env!("CARGO_BIN_EXE_rollgate"))
        .arg(&generated)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "packaging/generate.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let work = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let out = Command::new("cargo")
        .current_dir(repo())
        .args([
            "deb",
            "--no-build",
            "--profile",
            "dev",
            "--strip",
            "--fast",
            "--quiet",
            "-o",
        ])
        .arg(work.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo deb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let built = t.elapsed();
    let deb = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("cargo deb wrote no .deb");

    let t = Instant::now();
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private"])
        .arg(repo().join("packaging/install-test.sh"))
        .arg(&deb)
        .arg(work.path())
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("cargo deb {built:?}, install test {:?}\n{log}", t.elapsed());
    assert!(out.status.success(), "install test failed:\n{log}");
    assert!(
        log.contains("\nOK\n"),
        "install test did not finish:\n{log}"
    );

    let after = host_leftovers();
    assert!(
        after.is_empty(),
        "the install test leaked onto the host: {after:?}"
    );
}
