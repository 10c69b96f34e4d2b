//! `rollgate list`: every app with a journal in this machine's state dir, the version it runs as
//! far as its journal tells, and its last rollout's outcome and time.

use serde::Serialize;

use crate::cli::output::{json_line, out, utc};
use crate::cli::{CliError, Progress, exit, failed};
use crate::state::{Outcome, RolloutSummary, Store, history};

/// One app, as `list -o json` prints it (one object a line).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Listed {
    app: String,
    /// What the last finished rollout left running; `null` when the journal cannot tell (the
    /// last one failed without a rollback).
    version: Option<String>,
    /// `succeeded`, `rolledBack`, `failed`, `aborted`; `paused` or `unfinished` (running or
    /// interrupted: `status` says which).
    last: String,
    /// The version the last rollout went to.
    last_to: String,
    /// When the last rollout finished (or started, when it has not), in Unix milliseconds.
    at_ms: u64,
}

pub fn list(mode: Progress, store: &Store) -> Result<u8, CliError> {
    let mut rows = Vec::new();
    for app in store.apps().map_err(failed)? {
        let records = store.read(&app).map_err(failed)?;
        let rollouts = history(&records);
        let Some(last) = rollouts.last() else {
            continue;
        };
        rows.push(Listed {
            version: current(&rollouts),
            last: state(last),
            last_to: last.to.clone(),
            at_ms: last.finished_ms.unwrap_or(last.started_ms),
            app,
        });
    }
    match mode {
        Progress::Json => {
            rows.iter().for_each(json_line);
            return Ok(exit::OK);
        }
        Progress::Yaml => {
            out(&serde_yaml::to_string(&rows).expect("rows serialize"));
            return Ok(exit::OK);
        }
        Progress::Auto | Progress::Plain => {}
    }
    if rows.is_empty() {
        eprintln!("no apps in {}", store.root().display());
        return Ok(exit::OK);
    }
    let mut text = format!(
        "{:<20} {:<12} {:<22} {}\n",
        "APP", "VERSION", "LAST ROLLOUT", "WHEN"
    );
    for r in &rows {
        text.push_str(&format!(
            "{:<20} {:<12} {:<22} {}\n",
            r.app,
            r.version.as_deref().unwrap_or("?"),
            format!("{} to {}", r.last, r.last_to),
            utc(r.at_ms)
        ));
    }
    out(&text);
    Ok(exit::OK)
}

/// What the last rollout left: a success its target; a rollback or abort (or one still under
/// way) its start; a failure without rollback, nobody knows.
fn current(rollouts: &[RolloutSummary]) -> Option<String> {
    let last = rollouts.last()?;
    match last.outcome {
        Some(Outcome::Succeeded) => Some(last.to.clone()),
        Some(Outcome::RolledBack | Outcome::Aborted) | None => last.from.clone(),
        Some(Outcome::Failed) => None,
    }
}

fn state(r: &RolloutSummary) -> String {
    match (&r.outcome, &r.paused) {
        (Some(o), _) => serde_json::to_value(o)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| o.to_string()),
        (None, Some(_)) => "paused".into(),
        (None, None) => "unfinished".into(),
    }
}
