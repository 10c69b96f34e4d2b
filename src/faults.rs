//! A fault-injection hook for the crash tests: inert unless `ROLLGATE_FAULT_INJECT` is set.
//!
//! `ROLLGATE_FAULT_INJECT=POINT:N[:stop]` makes the process raise `SIGKILL` on itself (or, with
//! `:stop`, `SIGSTOP`, so a test can act while it is frozen and then `SIGCONT` it) right after the
//! `N`th time it passes `POINT` (counted from 1, per process). The points are:
//!
//! - every journal record kind, by its JSON name (`started`, `stepStarted`, `instanceChanging`,
//!   `instanceChanged`, `gate`, `stepDone`, `paused`, `promoted`, `rollbackStarted`, `finished`):
//!   passed once per record, after the write that holds it is fsynced;
//! - `stage`: a host's agent has accepted a staging request (the artifact is unpacking there);
//! - `activate`: a host's agent has accepted an activation (it is switching the service);
//! - `probe`: a health probe of an instance has answered (a gate is running).
//!
//! Before the signal, one line goes to stderr: `rollgate fault hook: POINT #N (DETAIL): SIGKILL`.
//! Nothing else reads the variable; unset, [`point`] costs one relaxed atomic load.

use std::sync::Mutex;
use std::sync::OnceLock;

/// The environment variable that arms the hook.
pub const ENV: &str = "ROLLGATE_FAULT_INJECT";

#[derive(Debug, Clone, PartialEq, Eq)]
struct Armed {
    point: String,
    nth: u64,
    stop: bool,
}

fn parse(spec: &str) -> Option<Armed> {
    let mut parts = spec.split(':');
    let point = parts.next()?.trim().to_string();
    let nth = parts.next()?.trim().parse().ok().filter(|n| *n > 0)?;
    let stop = match parts.next() {
        None | Some("kill") => false,
        Some("stop") => true,
        Some(_) => return None,
    };
    (!point.is_empty() && parts.next().is_none()).then_some(Armed { point, nth, stop })
}

fn armed() -> Option<&'static Mutex<(Armed, u64)>> {
    static ARMED: OnceLock<Option<Mutex<(Armed, u64)>>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var(ENV).ok()?;
            match parse(&spec) {
                Some(a) => Some(Mutex::new((a, 0))),
                None => {
                    eprintln!(
                        "rollgate fault hook: ignoring {ENV}={spec:?}: expected POINT:N or POINT:N:stop"
                    );
                    None
                }
            }
        })
        .as_ref()
}

/// Passes `point` once; `detail` says where (a host, a record). Kills or stops this process when
/// this is the armed point's `N`th pass.
pub fn point(point: &str, detail: &str) {
    let Some(armed) = armed() else { return };
    let (stop, nth) = {
        let mut guard = armed.lock().unwrap_or_else(|e| e.into_inner());
        let (a, seen) = &mut *guard;
        if a.point != point {
            return;
        }
        *seen += 1;
        if *seen != a.nth {
            return;
        }
        (a.stop, a.nth)
    };
    raise(point, nth, detail, stop);
}

#[cfg(unix)]
fn raise(point: &str, nth: u64, detail: &str, stop: bool) {
    use nix::sys::signal::{Signal, raise};
    let signal = if stop {
        Signal::SIGSTOP
    } else {
        Signal::SIGKILL
    };
    eprintln!("rollgate fault hook: {point} #{nth} ({detail}): {signal}");
    let _ = raise(signal);
}

#[cfg(not(unix))]
fn raise(point: &str, nth: u64, detail: &str, _stop: bool) {
    eprintln!("rollgate fault hook: {point} #{nth} ({detail}): exiting at once");
    std::process::abort();
}

/// Passes the point of one journal record of `kind` (`Event::kind`), once its write is fsynced.
pub fn journaled(kind: &str, rollout: &str, instance: Option<&str>) {
    if armed().is_none() {
        return;
    }
    point(
        kind,
        format!("{rollout} {}", instance.unwrap_or_default()).trim_end(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_or_are_refused() {
        assert_eq!(
            parse("instanceChanging:3"),
            Some(Armed {
                point: "instanceChanging".into(),
                nth: 3,
                stop: false
            })
        );
        assert_eq!(parse("activate:1:stop").map(|a| a.stop), Some(true));
        assert_eq!(parse("stage:0"), None);
        assert_eq!(parse("stage"), None);
        assert_eq!(parse("stage:1:pause"), None);
        assert_eq!(parse(":1"), None);
    }
}
