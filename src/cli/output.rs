//! Rendering for people (tables) and for tools (JSON, YAML).

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::time::Instant;

use crate::cli::{Progress, exit};
use crate::engine::RunOutcome;
use crate::state::{Event, Record};

use crate::plan::{Plan, StepKind};

/// Set once a write to stdout found it closed (`| head -1`): later output is dropped.
static STDOUT_CLOSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Writes `text` to stdout. A closed pipe is not an error: the command goes on (a rollout is never
/// stopped halfway by its reader going away) and exits with its usual code; any other write error
/// is dropped the same way, as there is nowhere left to report it.
pub fn out(text: &str) {
    if STDOUT_CLOSED.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    if stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .is_err()
    {
        STDOUT_CLOSED.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Whether stdout was found closed.
pub fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(std::sync::atomic::Ordering::Relaxed)
}

/// A line for people: on stdout, or on stderr when stdout carries JSON (`-o json`), so that
/// stdout holds one JSON object a line and nothing else.
pub fn say(mode: Progress, line: &str) {
    if mode == Progress::Json {
        eprintln!("{line}");
    } else {
        out(&format!("{line}\n"));
    }
}

/// One JSON value on one line of stdout.
pub fn json_line(value: &impl serde::Serialize) {
    out(&format!(
        "{}\n",
        serde_json::to_string(value).expect("output serializes")
    ));
}

/// The plan as a table with its resolved bounds. Consecutive steps of the same kind and note are
/// one row (`6-10`, the counts once the last is done); `hosts`, for a host fleet, lists each
/// step's hosts (labelled with their zone) under its row.
pub fn plan_table(
    app: &str,
    version: &str,
    strategy_source: &str,
    plan: &Plan,
    hosts: Option<&[Vec<String>]>,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "rollout {app} to version {version}");
    let surge = match &plan.unusable_surge {
        Some(asked) => format!("{asked} (not usable with one slot per host)"),
        None => plan.max_surge.to_string(),
    };
    let _ = writeln!(
        out,
        "strategy {} ({strategy_source}), {} instances, maxSurge {surge}, maxUnavailable {}, minReadySeconds {}",
        plan.strategy, plan.replicas, plan.max_unavailable, plan.min_ready_seconds
    );
    let _ = writeln!(
        out,
        "bounds: at most {} instances, at least {} ready at every moment",
        plan.replicas.saturating_add(plan.max_surge),
        plan.replicas.saturating_sub(plan.max_unavailable)
    );
    let _ = writeln!(out);
    // A traffic-weighted canary: the router's split (stable/canary) in force after each row.
    let routed = plan.steps.iter().any(|s| s.traffic_weight.is_some());
    let mut split = 0;
    let _ = writeln!(
        out,
        "{:>5}  {:<9} {:>8} {:>8} {:>13} {:>9}  {}NOTE",
        "STEP",
        "KIND",
        "OLD",
        "NEW",
        "MIN-AVAILABLE",
        "MAX-TOTAL",
        if routed { "TRAFFIC  " } else { "" }
    );
    let mut i = 0;
    while i < plan.steps.len() {
        let s = &plan.steps[i];
        let same = |t: &crate::plan::Step| {
            t.kind == s.kind
                && t.note == s.note
                && t.manual == s.manual
                && t.duration_seconds == s.duration_seconds
                && t.approvals == s.approvals
        };
        let mut j = i;
        while j + 1 < plan.steps.len() && same(&plan.steps[j + 1]) {
            j += 1;
        }
        let rows = &plan.steps[i..=j];
        let last = &plan.steps[j];
        let step = if i == j {
            (i + 1).to_string()
        } else {
            format!("{}-{}", i + 1, j + 1)
        };
        let kind = match s.kind {
            StepKind::Scale => "scale",
            StepKind::Pause => "pause",
            StepKind::Analysis => "analysis",
            StepKind::Promote => "promote",
            StepKind::Switch => "switch",
        };
        if let Some(w) = rows.iter().rev().find_map(|r| r.traffic_weight) {
            split = w;
        }
        let traffic = match routed {
            true => format!("{:<9}", format!("{}/{split}", 100 - split)),
            false => String::new(),
        };
        let _ = writeln!(
            out,
            "{step:>5}  {kind:<9} {:>8} {:>8} {:>13} {:>9}  {traffic}{}",
            last.old,
            last.new,
            rows.iter().map(|r| r.min_available).min().unwrap_or(0),
            rows.iter().map(|r| r.max_total).max().unwrap_or(0),
            s.note
        );
        if let Some(hosts) = hosts {
            let waves: Vec<String> = hosts[i..=j.min(hosts.len().saturating_sub(1))]
                .iter()
                .filter(|w| !w.is_empty())
                .map(|w| w.join(", "))
                .collect();
            if !waves.is_empty() {
                let _ = writeln!(out, "{:>7}hosts: {}", "", waves.join(" | "));
            }
        }
        i = j + 1;
    }
    if routed {
        let _ = writeln!(
            out,
            "\nTRAFFIC is the router's split, stable/canary percent, once the row is done (trafficRouting)"
        );
    }
    for note in &plan.notes {
        let _ = writeln!(out, "\nnote: {note}");
    }
    out
}

/// A host fleet's hosts per step: labelled with their zone (`h1 (zone a)`) for the table, and by
/// name for `-o json`.
pub type StepHosts = (Vec<Vec<String>>, Vec<Vec<String>>);

pub fn plan_hosts(m: &crate::spec::Manifest, p: &Plan) -> Option<StepHosts> {
    let h = m.rollout.spec.target.hosts()?;
    let first_group = match &m.strategy {
        crate::spec::Strategy::Canary(c) => c.first_group.as_deref(),
        _ => None,
    };
    let names = crate::target::hosts::step_hosts(h, first_group, &p.steps);
    let label = h.spread_by.as_deref().unwrap_or("zone");
    let labelled = names
        .iter()
        .map(|wave| {
            wave.iter()
                .map(|name| {
                    match h
                        .hosts
                        .iter()
                        .find(|x| &x.name == name)
                        .and_then(|x| x.labels.get(label))
                    {
                        Some(zone) => format!("{name} ({label} {zone})"),
                        None => name.clone(),
                    }
                })
                .collect()
        })
        .collect();
    Some((labelled, names))
}

/// The plan's JSON contract, with `instances` on each step of a host fleet (a free field).
pub fn plan_value(p: &Plan, hosts: Option<&StepHosts>) -> serde_json::Value {
    let mut v = serde_json::to_value(p).expect("a plan always serializes");
    if let (Some((_, names)), Some(steps)) = (hosts, v["steps"].as_array_mut()) {
        for (step, wave) in steps.iter_mut().zip(names) {
            step["instances"] = serde_json::json!(wave);
        }
    }
    v
}

/// One line for a journal event.
pub fn describe(e: &crate::state::Event) -> String {
    use crate::state::Event::*;
    match e {
        Started {
            from,
            to,
            strategy,
            actor,
            steps,
            ..
        } => {
            format!(
                "started {strategy} from {} to {to} ({steps} steps) by {actor}",
                from.as_deref().unwrap_or("nothing")
            )
        }
        StepStarted {
            step, kind, note, ..
        } => format!("step {}: {kind} — {note}", step + 1),
        InstanceChanging {
            instance, version, ..
        } => format!("  {instance}: switching to {version}"),
        InstanceChanged {
            instance,
            version,
            ok: true,
            ..
        } => format!("  {instance}: on {version}, ready"),
        InstanceChanged {
            instance,
            version,
            detail,
            ..
        } => format!("  {instance}: FAILED to switch to {version}: {detail}"),
        Gate {
            check,
            passed: true,
            detail,
            ..
        } => format!("  gate {check} passed {detail}"),
        Gate { check, detail, .. } => format!("  gate {check} FAILED {detail}"),
        StepDone { step, millis, .. } => {
            format!("step {} done in {:.1}s", step + 1, *millis as f64 / 1000.0)
        }
        Paused { reason, .. } => format!("paused: {reason}"),
        Promoted { actor, full, .. } => {
            format!("promoted by {actor}{}", if *full { " (full)" } else { "" })
        }
        Controlled {
            action,
            step,
            actor,
            ..
        } => format!("{action} at step {} by {actor}", step + 1),
        RollbackStarted { reason, to, .. } => format!("rolling back to {to}: {reason}"),
        Finished {
            outcome, detail, ..
        } => format!("{outcome}: {detail}"),
    }
}

/// Whether a rollout without an outcome is still being run.
pub enum Running {
    /// Not known (the lock is in the cluster, or this is not the app's last rollout).
    Unknown,
    /// A live process holds the app's lock: who, and for how long.
    By(String),
    /// No live process holds the app's lock: a crash, a kill, or a failed staging left it.
    Interrupted,
}

/// A rollout's audit record, as `history` and `status` print it.
pub fn summary(r: &crate::state::RolloutSummary, running: &Running) -> String {
    let mut out = String::new();
    let state = match (&r.outcome, &r.paused, running) {
        (Some(o), _, _) => o.to_string(),
        (None, Some(p), _) => format!("paused ({p})"),
        (None, None, Running::Unknown) => "in progress (or interrupted)".into(),
        (None, None, Running::By(holder)) => format!("in progress ({holder})"),
        (None, None, Running::Interrupted) => {
            "interrupted: no process is running it; `rollgate resume` continues it".into()
        }
    };
    let took = r
        .finished_ms
        .map(|f| format!(" in {:.1}s", f.saturating_sub(r.started_ms) as f64 / 1000.0))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "{}  {} -> {}  {}  {state}{took}",
        r.id,
        r.from.as_deref().unwrap_or("-"),
        r.to,
        r.strategy
    );
    if let Some(a) = &r.actor {
        let _ = writeln!(out, "  by {a} at {}", utc(r.started_ms));
    }
    for s in &r.steps {
        let t = s
            .millis
            .map(|m| format!("{:.1}s", m as f64 / 1000.0))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "  step {:>2} {:<8} {:>7}  {}",
            s.step + 1,
            s.kind,
            t,
            s.note
        );
        for g in &s.gates {
            let _ = writeln!(out, "           {g}");
        }
    }
    if !r.approvals.is_empty() {
        let who: Vec<String> = r
            .approvals
            .iter()
            .map(|a| match &a.verification {
                crate::approval::Check::Unverified => {
                    format!("{} (step {}, unverified)", a.actor, a.step + 1)
                }
                crate::approval::Check::Verified { subject, .. } => {
                    format!("{subject} (step {}, signed)", a.step + 1)
                }
                crate::approval::Check::Kubernetes { username, .. } => {
                    format!("{username} (step {}, Kubernetes user)", a.step + 1)
                }
                crate::approval::Check::Refused { reason } => {
                    format!("{} (step {}, REFUSED: {reason})", a.actor, a.step + 1)
                }
            })
            .collect();
        let _ = writeln!(out, "  approved by: {}", who.join(", "));
    }
    for c in &r.controls {
        let _ = writeln!(
            out,
            "  {} at step {} by {} [{}] at {}",
            c.action,
            c.step + 1,
            c.actor,
            c.actor.verified_as(),
            utc(c.at_ms)
        );
    }
    if let Some(rb) = &r.rollback {
        let _ = writeln!(out, "  rollback {rb}");
    }
    if !r.detail.is_empty() {
        let _ = writeln!(out, "  {}", r.detail);
    }
    out
}

/// The target's instances and the version each runs, one a line, or why they could not be read.
pub fn instances(instances: &crate::target::Result<Vec<crate::target::Instance>>) -> String {
    let mut out = String::new();
    match instances {
        Ok(instances) => {
            for i in instances {
                let _ = writeln!(
                    out,
                    "  {:<12} {}",
                    i.name,
                    i.version.as_deref().unwrap_or("-")
                );
            }
        }
        Err(e) => {
            let _ = writeln!(out, "  instances: {}", crate::error_chain(e));
        }
    }
    out
}

/// An app's rollouts, oldest first, after a line on those compacted away; only the last one
/// says whether it is being run.
pub fn history(
    all: &[crate::state::RolloutSummary],
    compacted: Option<&crate::state::Compacted>,
    running: &Running,
) -> String {
    let mut out = String::new();
    if let Some(c) = compacted {
        let _ = writeln!(
            out,
            "({} earlier rollouts compacted: {} succeeded, {} rolled back, {} failed, {} aborted)",
            c.rollouts, c.succeeded, c.rolled_back, c.failed, c.aborted
        );
    }
    for (i, r) in all.iter().enumerate() {
        let last = i + 1 == all.len();
        out.push_str(&summary(r, if last { running } else { &Running::Unknown }));
    }
    out
}

/// `unix_ms` as `YYYY-MM-DD HH:MM:SS UTC` (the proleptic Gregorian calendar, days from civil).
pub fn utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Shift the epoch to 0000-03-01 so that leap days end a 400-year era.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Prints journal records as they are written: plain lines, JSON lines, or a progress bar.
pub struct Reporter {
    mode: Progress,
    bar: Option<indicatif::ProgressBar>,
}

impl Reporter {
    pub fn new(mode: Progress, steps: usize) -> Self {
        let tty = std::io::stderr().is_terminal();
        let bar = (mode == Progress::Auto && tty).then(|| {
            let bar = indicatif::ProgressBar::new(steps as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} step {pos}/{len} {msg}",
                )
                .expect("a valid template"),
            );
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            bar
        });
        Reporter { mode, bar }
    }

    pub fn record(&self, r: &Record) {
        if self.mode == Progress::Json {
            json_line(r);
            return;
        }
        let line = describe(&r.event);
        match &self.bar {
            Some(bar) => {
                if let Event::StepDone { step, .. } = &r.event {
                    bar.set_position(*step as u64 + 1);
                }
                bar.set_message(line.clone());
                if !matches!(r.event, Event::InstanceChanging { .. }) {
                    bar.println(line);
                }
            }
            None => out(&format!("{line}\n")),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Prints how a run ended (for people: on stderr under `-o json`) and returns its exit code.
pub fn outcome_code(outcome: &RunOutcome, app: &str, started: Instant, mode: Progress) -> u8 {
    let took = started.elapsed().as_secs_f64();
    let (line, code) = match outcome {
        RunOutcome::Succeeded => (format!("{app}: succeeded in {took:.1}s"), exit::OK),
        RunOutcome::RolledBack(why) => (
            format!("{app}: rolled back in {took:.1}s: {why}"),
            exit::FAILED,
        ),
        RunOutcome::Failed(why) => (
            format!("{app}: failed after {took:.1}s: {why}"),
            exit::FAILED,
        ),
        RunOutcome::Paused(why) => (
            format!(
                "{app}: paused: {why} (continue with `rollgate promote {app}`, or `rollgate abort {app}`)"
            ),
            exit::PAUSED,
        ),
        RunOutcome::Interrupted => (
            format!(
                "{app}: interrupted; the rollout is paused (`rollgate resume {app}` continues)"
            ),
            exit::INTERRUPTED,
        ),
    };
    say(mode, &line);
    code
}

#[cfg(test)]
mod utc_tests {
    use super::utc;

    #[test]
    fn formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        // `date -u -d @951782400` (a leap day in a year divisible by 400)
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_795_786_833_449), "2026-11-27 13:40:33 UTC");
        assert_eq!(utc(4_107_542_399_999), "2100-02-28 23:59:59 UTC");
        assert_eq!(utc(4_107_542_400_000), "2100-03-01 00:00:00 UTC");
    }
}
