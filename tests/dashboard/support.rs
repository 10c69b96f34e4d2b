//! A `rollgate dashboard` process on a free loopback port, and journal records to feed it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rollgate::state::{Actor, Event, Store};

pub const ROLLGATE: &str = env!("CARGO_BIN_EXE_rollgate");

/// A dashboard serving a state dir; dropping it interrupts it (SIGINT), as Ctrl-C would.
pub struct Served {
    /// `http://127.0.0.1:PORT/`, as it printed it.
    pub url: String,
    child: Option<Child>,
}

impl Served {
    pub fn start(state: &Path) -> Served {
        let mut child = Command::new(ROLLGATE)
            .args(["dashboard", "--listen", "127.0.0.1:0"])
            .env("ROLLGATE_STATE", state)
            .env_remove("ROLLGATE_STATE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("rollgate dashboard starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(first)) = lines.next() {
                let _ = tx.send(first);
            }
            // Keep reading: the actions it runs print their progress here.
            for line in lines.map_while(Result::ok) {
                println!("dashboard: {line}");
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the dashboard prints its URL first");
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        Served {
            url,
            child: Some(child),
        }
    }

    /// Interrupts it and returns how it exited.
    pub fn stop(mut self) -> ExitStatus {
        interrupt_and_wait(self.child.take().unwrap())
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            interrupt_and_wait(child);
        }
    }
}

/// SIGINT, then up to 30 s for the process to exit (an action it runs pauses first), then SIGKILL.
pub fn interrupt_and_wait(mut child: Child) -> ExitStatus {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn actor() -> Actor {
    Actor {
        user: "ana".into(),
        host: "test".into(),
        ci: None,
        client: None,
        signed: None,
        kubernetes: None,
    }
}

/// A rollout of app `web` from 1.0.0 to 2.0.0 in `state`, its first step begun, host1 changed.
pub fn started_rollout(state: &Path) -> Store {
    let store = Store::at(state);
    let mut journal = store.journal("web").unwrap();
    let id = "web-1";
    journal
        .append_all([
            Event::Started {
                rollout: id.into(),
                from: Some("1.0.0".into()),
                to: "2.0.0".into(),
                strategy: rollgate::state::StrategyKind::Rolling,
                actor: actor(),
                steps: 2,
            },
            Event::StepStarted {
                rollout: id.into(),
                step: 0,
                kind: rollgate::plan::StepKind::Scale,
                note: "replace a wave".into(),
            },
            Event::InstanceChanged {
                rollout: id.into(),
                instance: "host1".into(),
                version: "2.0.0".into(),
                ok: true,
                detail: String::new(),
            },
        ])
        .unwrap();
    store
}

/// The CSRF token the page embeds.
pub fn csrf(page: &str) -> String {
    let at = page
        .find("name=\"csrf-token\" content=\"")
        .expect("the page embeds a CSRF token")
        + "name=\"csrf-token\" content=\"".len();
    page[at..at + 64].to_string()
}
