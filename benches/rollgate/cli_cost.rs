//! What one CLI run costs, measured from outside: wall, CPU (user + system), peak RSS (GNU time's
//! getrusage of the child) and the most file descriptors it held at once (sampled from /proc).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One run's cost.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cost {
    pub wall: f64,
    pub cpu: f64,
    pub rss_kib: u64,
    pub fds: usize,
}

/// The machine's load average (1, 5, 15 min), to print before a run.
pub fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The children of `pid` (its main thread's), from /proc.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Runs `program args` with `envs` under GNU time in `dir` (blocking), sampling its open file
/// descriptors every 10 ms. Returns the cost, the exit code and stdout.
pub fn run(
    program: &str,
    args: &[&str],
    envs: &[(&str, &str)],
    dir: &std::path::Path,
) -> (Cost, Option<i32>, String) {
    let out_file = tempfile::NamedTempFile::new().expect("a temp file");
    let err_file = tempfile::NamedTempFile::new().expect("a temp file");
    let mut cmd = Command::new("/usr/bin/time");
    cmd.args(["-f", "TIME %e %M %U %S", program])
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out_file.reopen().unwrap())
        .stderr(err_file.reopen().unwrap());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .expect("/usr/bin/time runs (apt-get install time)");
    let mut fds = 0;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting") {
            break status;
        }
        for pid in children(child.id()) {
            let n = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
            fds = fds.max(n);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let wall = start.elapsed().as_secs_f64();
    let stderr = std::fs::read_to_string(err_file.path()).unwrap_or_default();
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("TIME "))
        .unwrap_or_else(|| panic!("no timing in {stderr}"));
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // GNU time exits with the command's status.
    let code = status.code();
    let cost = Cost {
        wall,
        rss_kib: f.get(1).copied().unwrap_or(0.0) as u64,
        cpu: f.get(2).copied().unwrap_or(0.0) + f.get(3).copied().unwrap_or(0.0),
        fds,
    };
    let stdout = std::fs::read_to_string(out_file.path()).unwrap_or_default();
    if code != Some(0) {
        let tail: Vec<&str> = stdout.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        eprintln!(
            "{program} {args:?} exited {code:?}:\n{stderr}\nlast lines of its output:\n{}",
            tail.join("\n")
        );
    }
    (cost, code, stdout)
}
