//! The fault matrix, disk side: one host's service directory (its `versions/` and `staging/`) sits
//! on a small tmpfs that the new version does not fit in. Staging fails with ENOSPC, named with the
//! host; nothing is switched anywhere, the old version keeps serving, and nothing half-installed is
//! left on that host.

use std::process::Command;
use std::time::Duration;

use rollgate::state::Event;

use crate::faults;
use crate::fleet::{Fleet, Running};
use crate::netns::root_or_skip;

/// A tmpfs mounted over a directory; lazily unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn du_bytes(dir: &std::path::Path) -> u64 {
    let out = Command::new("du").arg("-sb").arg(dir).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap()
}

#[test]
fn faults_full_disk_on_a_host_fails_staging_cleanly() {
    if !root_or_skip("faults_full_disk_on_a_host") {
        return;
    }
    const N: usize = 6;
    let mut fleet = Fleet::start(N);
    fleet.install("1.0.0");
    let victim = "host5";
    let v = fleet.index(victim);
    // The agent stops (its service keeps running); its service dir moves onto a tmpfs with 4 MiB
    // to spare; the agent starts again on it.
    fleet.kill_agent(v);
    let service_dir = fleet.hosts[v].dir.join("data/services/web");
    let aside = fleet.hosts[v].dir.join("web-aside");
    assert!(
        Command::new("cp")
            .arg("-a")
            .arg(&service_dir)
            .arg(&aside)
            .status()
            .unwrap()
            .success()
    );
    let size = du_bytes(&service_dir) + (4 << 20);
    assert!(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "rgt-full"])
            .arg(&service_dir)
            .status()
            .unwrap()
            .success(),
        "mount a tmpfs"
    );
    let _tmpfs = Tmpfs(service_dir.clone());
    assert!(
        Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", aside.display()))
            .arg(&service_dir)
            .status()
            .unwrap()
            .success()
    );
    fleet.start_agent(v);
    fleet.wait_agent(v, Duration::from_secs(20));
    fleet.wait_serving("1.0.0", Duration::from_secs(20));

    // 2.0.0 carries 32 MiB of zeros: a small download that unpacks to more than the tmpfs holds.
    let zeros = vec![0u8; 32 << 20];
    let v2 = fleet.artifact_with("2.0.0", "", &[("share/padding", &zeros)]);
    let manifest = fleet.manifest(
        "2.0.0",
        &v2,
        "    rolling: {maxSurge: 0, maxUnavailable: 2}\n",
        10,
    );
    let mut run =
        Running::spawn(fleet.rollgate(&["apply", "-f", manifest.to_str().unwrap(), "-o", "json"]));
    let code = run.finish(Duration::from_secs(120));
    let log = format!("{}{}", run.describe(), run.output());
    let error_line = run
        .output()
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default()
        .to_string();
    eprintln!("faults_full_disk: {error_line}");
    let switched = run
        .records
        .iter()
        .filter(|r| matches!(r.event, Event::InstanceChanging { .. }))
        .count();
    let versions: Vec<String> = std::fs::read_dir(service_dir.join("versions"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let staging: Vec<String> = std::fs::read_dir(service_dir.join("staging"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let serving = fleet.agent_versions();
    let unknown = serving
        .iter()
        .filter(|s| s.as_deref() != Some("1.0.0"))
        .count() as u32;
    faults::record(faults::Case {
        bed: "netns hosts",
        fault: "versions dir on a full tmpfs (ENOSPC while unpacking)",
        outcome: &format!(
            "apply exit {code:?}, {switched} hosts switched, old version serving; {victim} holds {versions:?}, staging {staging:?}"
        ),
        lost: 0,
        unknown,
    });
    assert_eq!(code, Some(1), "the rollout fails\n{log}");
    assert!(
        error_line.contains(victim) && error_line.contains("No space left on device"),
        "the error names {victim} and ENOSPC: {error_line}\n{log}"
    );
    assert_eq!(switched, 0, "nothing switched before all had staged\n{log}");
    fleet.assert_serving("1.0.0");
    assert_eq!(versions, ["1.0.0"], "{victim}: nothing half-installed");
    assert!(staging.is_empty(), "{victim}: staging left {staging:?}");
    assert!(!fleet.lock_file().exists(), "the lock is released");
}
