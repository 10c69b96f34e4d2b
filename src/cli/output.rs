//! Rendering for people (tables) and for tools (JSON, YAML).

use std::fmt::Write as _;

use crate::plan::{Plan, StepKind};

/// The plan as a table with its resolved bounds.
pub fn plan_table(app: &str, version: &str, strategy_source: &str, plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "rollout {app} to version {version}");
    let _ = writeln!(
        out,
        "strategy {} ({strategy_source}), {} instances, maxSurge {}, maxUnavailable {}, minReadySeconds {}",
        plan.strategy, plan.replicas, plan.max_surge, plan.max_unavailable, plan.min_ready_seconds
    );
    let _ = writeln!(
        out,
        "bounds: at most {} instances, at least {} ready at every moment",
        plan.replicas + plan.max_surge,
        plan.replicas.saturating_sub(plan.max_unavailable)
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "{:>4}  {:<9} {:>8} {:>8} {:>13} {:>9}  NOTE", "STEP", "KIND", "OLD", "NEW", "MIN-AVAILABLE", "MAX-TOTAL");
    for (i, s) in plan.steps.iter().enumerate() {
        let kind = match s.kind {
            StepKind::Scale => "scale",
            StepKind::Pause => "pause",
            StepKind::Analysis => "analysis",
            StepKind::Promote => "promote",
            StepKind::Switch => "switch",
        };
        let _ = writeln!(
            out,
            "{:>4}  {:<9} {:>8} {:>8} {:>13} {:>9}  {}",
            i + 1,
            kind,
            s.old,
            s.new,
            s.min_available,
            s.max_total,
            s.note
        );
    }
    for note in &plan.notes {
        let _ = writeln!(out, "\nnote: {note}");
    }
    out
}
