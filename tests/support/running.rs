//! A `rollgate` command run in the background by a host test, its JSON-lines journal read as it
//! comes, and the parsing of `rollgate status`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rollgate::state::{Event, Record};

/// A `rollgate` command running in the background with `-o json`: its journal records as they come.
pub struct Running {
    pub child: Child,
    rx: mpsc::Receiver<Record>,
    pub records: Vec<Record>,
    stdout_rest: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Running {
    /// Starts `cmd`, which must print JSON-lines records (`-o json`).
    pub fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start rollgate");
        let (tx, rx) = mpsc::channel();
        let stdout_rest = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().unwrap();
        let rest = stdout_rest.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                match serde_json::from_str::<Record>(&line) {
                    Ok(r) => {
                        let _ = tx.send(r);
                    }
                    Err(_) => {
                        let mut rest = rest.lock().unwrap();
                        rest.push_str(&line);
                        rest.push('\n');
                    }
                }
            }
        });
        let err = child.stderr.take().unwrap();
        let errbuf = stderr.clone();
        std::thread::spawn(move || {
            // Line by line, so a process that stopped itself can be read while it is stopped.
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut buf = errbuf.lock().unwrap();
                buf.push_str(&line);
                buf.push('\n');
            }
        });
        Running {
            child,
            rx,
            records: Vec::new(),
            stdout_rest,
            stderr,
        }
    }

    /// Waits for the first record (from now on) matching `pred`; panics after `within`.
    pub fn wait_for(&mut self, within: Duration, pred: impl Fn(&Event) -> bool) -> Record {
        let end = Instant::now() + within;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(r) => {
                    self.records.push(r.clone());
                    if pred(&r.event) {
                        return r;
                    }
                }
                Err(_) => panic!(
                    "no matching record within {within:?}; got so far:\n{}\n{}",
                    self.describe(),
                    self.output()
                ),
            }
        }
    }

    /// Waits for the process to exit (killing it after `within`) and drains its records.
    pub fn finish(&mut self, within: Duration) -> Option<i32> {
        let end = Instant::now() + within;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                let _ = self.child.wait();
                // Give the readers a moment to drain before panicking with the output.
                std::thread::sleep(Duration::from_millis(200));
                while let Ok(r) = self.rx.try_recv() {
                    self.records.push(r);
                }
                panic!(
                    "rollgate still running after {within:?}; killed\n{}\n{}",
                    self.describe(),
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // The reader ends at EOF: collect everything.
        while let Ok(r) = self.rx.recv_timeout(Duration::from_secs(5)) {
            self.records.push(r);
        }
        status.code()
    }

    /// Whether the process is stopped (SIGSTOP, e.g. by its fault hook's `:stop`): state `T`.
    pub fn stopped(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next().map(|st| st == "T"))
            })
            .unwrap_or(false)
    }

    /// Waits until the process stopped itself at its fault hook's `:stop` point, and returns the
    /// hook's line (`rollgate fault hook: POINT #N (DETAIL): SIGSTOP`).
    pub fn wait_stopped(&self, within: Duration) -> String {
        let end = Instant::now() + within;
        loop {
            let err = self.stderr.lock().unwrap().clone();
            if let Some(line) = err.lines().find(|l| l.starts_with("rollgate fault hook:"))
                && self.stopped()
            {
                return line.to_string();
            }
            assert!(
                Instant::now() < end,
                "not stopped at its fault hook within {within:?}\n{}\n{}",
                self.describe(),
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGCONT: a stopped process goes on.
    pub fn cont(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGCONT,
        )
        .unwrap();
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        while let Ok(r) = self.rx.recv_timeout(Duration::from_millis(500)) {
            self.records.push(r);
        }
    }

    /// Non-JSON stdout and all stderr so far.
    pub fn output(&self) -> String {
        format!(
            "stdout (other than records):\n{}stderr:\n{}",
            self.stdout_rest.lock().unwrap(),
            self.stderr.lock().unwrap()
        )
    }

    /// Records so far, one per line.
    pub fn describe(&self) -> String {
        self.records
            .iter()
            .map(|r| {
                format!(
                    "{} {}\n",
                    r.at_ms,
                    rollgate::cli::output::describe(&r.event)
                )
            })
            .collect()
    }
}

impl Drop for Running {
    // A test that fails while its CLI is stopped (or still running) must not leave it behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Each host's version as `rollgate status APP` prints it (`  host1   2.0.0`).
pub fn status_versions(out: &Output) -> Vec<(String, String)> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some(name), Some(version), None) if name.starts_with("host") => {
                    Some((name.to_string(), version.to_string()))
                }
                _ => None,
            }
        })
        .collect()
}
