//! `status` as a picture: the plan's steps with the current one marked, then the instances grouped
//! by zone (hosts) or ReplicaSet (pods); redrawn in place on a terminal by `status --watch`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::cli::output::{self, Running};
use crate::plan::{Plan, StepKind};
use crate::spec::{Manifest, TargetSpec};
use crate::state::{Event, Record, RolloutSummary};
use crate::target::Instance;

/// Everything one frame shows, read once per poll.
pub struct Frame<'a> {
    pub rollout: &'a RolloutSummary,
    pub running: &'a Running,
    /// The plan the rollout follows, when it can be made again from its stored manifest.
    pub plan: Option<&'a Plan>,
    pub manifest: &'a Manifest,
    /// The journal's records of this rollout, oldest first.
    pub records: &'a [&'a Record],
    pub instances: Option<&'a crate::target::Result<Vec<Instance>>>,
}

/// The frame as text: the summary line, the steps, the instance grid.
pub fn render(f: &Frame<'_>) -> String {
    let mut out = String::new();
    let summary = output::summary(f.rollout, f.running);
    // The summary's first two lines (id, versions, state; who started it): its steps are drawn below.
    for line in summary.lines().take_while(|l| !l.starts_with("  step ")) {
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(out, "\nSTEPS");
    out.push_str(&steps(f));
    if let Some(instances) = f.instances {
        let _ = writeln!(out, "\nINSTANCES");
        out.push_str(&grid(f, instances));
    }
    out
}

/// One line a step: `✔` done, `▶` running (or paused), `✖` where the rollout failed, `·` to come.
fn steps(f: &Frame<'_>) -> String {
    let r = f.rollout;
    let mut out = String::new();
    let current = r.steps.iter().rposition(|s| s.millis.is_none());
    let planned: Vec<(String, String)> = match f.plan {
        Some(plan) if plan.steps.len() == r.steps_total => plan
            .steps
            .iter()
            .map(|s| (kind_word(s.kind).to_string(), s.note.clone()))
            .collect(),
        _ => (0..r.steps_total)
            .map(|i| match r.steps.iter().find(|s| s.step == i) {
                Some(s) => (kind_word(s.kind).to_string(), s.note.clone()),
                None => ("-".into(), String::new()),
            })
            .collect(),
    };
    for (i, (kind, note)) in planned.iter().enumerate() {
        let seen = r.steps.iter().find(|s| s.step == i);
        let (mark, took) = match seen {
            Some(s) if s.millis.is_some() => (
                "✔",
                format!("{:.1}s", s.millis.unwrap_or(0) as f64 / 1000.0),
            ),
            Some(s) if Some(s.step) == current.map(|c| r.steps[c].step) => {
                let mark = match (&r.outcome, &r.paused) {
                    (Some(crate::state::Outcome::Succeeded), _) => "✔",
                    (Some(_), _) => "✖",
                    (None, Some(_)) => "‖",
                    (None, None) => "▶",
                };
                (mark, String::new())
            }
            _ => ("·", String::new()),
        };
        let _ = writeln!(out, "  {mark} {:>2} {kind:<8} {took:>7}  {note}", i + 1);
        if let Some(s) = seen {
            for g in &s.gates {
                let _ = writeln!(out, "              {g}");
            }
        }
    }
    if let Some(paused) = &r.paused {
        let _ = writeln!(out, "  paused: {paused}");
    }
    if let Some(rb) = &r.rollback {
        let _ = writeln!(out, "  rollback {rb}");
    }
    out
}

fn kind_word(kind: StepKind) -> &'static str {
    match kind {
        StepKind::Scale => "scale",
        StepKind::Pause => "pause",
        StepKind::Analysis => "analysis",
        StepKind::Promote => "promote",
        StepKind::Switch => "switch",
    }
}

/// The instances grouped by zone (hosts: the `spreadBy` label, else `zone`) or by ReplicaSet
/// (pods: the name less its last `-suffix`), each with its version and what the journal says.
fn grid(f: &Frame<'_>, instances: &crate::target::Result<Vec<Instance>>) -> String {
    let list = match instances {
        Ok(list) => list,
        Err(e) => return format!("  instances: {}\n", crate::error_chain(e)),
    };
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in list {
        let cell = format!(
            "{} {}{}",
            i.name,
            i.version.as_deref().unwrap_or("-"),
            state_of(f.records, &i.name)
        );
        groups
            .entry(group_of(f.manifest, i))
            .or_default()
            .push(cell);
    }
    let width = groups.keys().map(String::len).max().unwrap_or(0);
    let mut out = String::new();
    for (group, cells) in groups {
        let _ = writeln!(out, "  {group:<width$}  {}", cells.join("   "));
    }
    out
}

/// Where an instance belongs in the grid.
fn group_of(m: &Manifest, i: &Instance) -> String {
    match &m.rollout.spec.target {
        TargetSpec::Hosts(h) => {
            let label = h.spread_by.as_deref().unwrap_or("zone");
            let value = h
                .hosts
                .iter()
                .find(|host| host.name == i.name)
                .and_then(|host| host.labels.get(label));
            match value {
                Some(v) => format!("{label} {v}"),
                None => "hosts".into(),
            }
        }
        // A Deployment's pod is named `<ReplicaSet>-<5 characters>`.
        TargetSpec::Kubernetes(_) => {
            let rs = i
                .name
                .rsplit_once('-')
                .map_or(i.name.as_str(), |(rs, _)| rs);
            format!(
                "ReplicaSet {rs} ({})",
                i.version.as_deref().unwrap_or("no version")
            )
        }
    }
}

/// ` (switching to V)` while the journal has the instance changing, ` (FAILED)` when its last
/// change failed, else nothing.
fn state_of(records: &[&Record], name: &str) -> String {
    let last = records.iter().rev().find_map(|r| match &r.event {
        Event::InstanceChanging {
            instance, version, ..
        } if instance == name => Some((version.clone(), None)),
        Event::InstanceChanged {
            instance,
            version,
            ok,
            ..
        } if instance == name => Some((version.clone(), Some(*ok))),
        _ => None,
    });
    match last {
        Some((v, None)) => format!(" (switching to {v})"),
        Some((v, Some(false))) => format!(" (FAILED to switch to {v})"),
        _ => String::new(),
    }
}

/// Redraws a frame in place on a terminal: the cursor goes back up over the last frame, which is
/// cleared, and nothing is printed when the frame did not change.
#[derive(Default)]
pub struct Screen {
    last: String,
}

impl Screen {
    pub fn draw(&mut self, frame: &str) {
        if let Some(text) = self.next(frame) {
            output::out(&text);
        }
    }

    /// What to write to show `frame`: nothing when it is the one on screen.
    fn next(&mut self, frame: &str) -> Option<String> {
        if frame == self.last {
            return None;
        }
        let lines = self.last.lines().count();
        let mut text = String::new();
        if lines > 0 {
            // Up to the first line of the last frame, then clear to the end of the screen.
            let _ = write!(text, "\x1b[{lines}F\x1b[J");
        }
        text.push_str(frame);
        self.last = frame.to_string();
        Some(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redraw_moves_up_over_the_last_frame_only_when_it_changed() {
        let mut s = Screen::default();
        assert_eq!(s.next("a\nb\n").as_deref(), Some("a\nb\n"));
        assert_eq!(s.next("a\nb\n"), None);
        assert_eq!(
            s.next("a\nc\nd\n").as_deref(),
            Some("\x1b[2F\x1b[Ja\nc\nd\n")
        );
    }
}
