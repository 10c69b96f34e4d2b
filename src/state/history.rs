//! History: a journal folded into one summary per rollout, and the counts of what compaction folded.

use serde::{Deserialize, Serialize};

use super::{Actor, ControlKind, Event, Outcome, Record, StrategyKind};

/// What compaction folded away: counts of the rollouts whose records are gone, by outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Compacted {
    pub rollouts: u64,
    pub succeeded: u64,
    pub rolled_back: u64,
    pub failed: u64,
    pub aborted: u64,
    /// When the oldest folded rollout started, and the newest one's id and start.
    pub first_ms: Option<u64>,
    pub last_ms: Option<u64>,
    pub last_id: Option<String>,
}

impl Compacted {
    pub(super) fn add(&mut self, r: &RolloutSummary) {
        self.rollouts += 1;
        match r.outcome {
            Some(Outcome::Succeeded) => self.succeeded += 1,
            Some(Outcome::RolledBack) => self.rolled_back += 1,
            Some(Outcome::Failed) => self.failed += 1,
            Some(Outcome::Aborted) => self.aborted += 1,
            None => {}
        }
        self.first_ms = Some(self.first_ms.map_or(r.started_ms, |f| f.min(r.started_ms)));
        if self.last_ms.is_none_or(|l| r.started_ms >= l) {
            self.last_ms = Some(r.started_ms);
            self.last_id = Some(r.id.clone());
        }
    }
}

/// One rollout as told by the journal.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSummary {
    pub id: String,
    pub started_ms: u64,
    pub finished_ms: Option<u64>,
    pub from: Option<String>,
    pub to: String,
    pub strategy: StrategyKind,
    pub actor: Option<Actor>,
    pub steps_total: usize,
    pub steps: Vec<StepSummary>,
    pub outcome: Option<Outcome>,
    pub detail: String,
    pub paused: Option<String>,
    pub rollback: Option<String>,
    /// Who promoted, at which step.
    pub approvals: Vec<Approval>,
    /// Who paused, resumed or aborted, at which step, in order.
    pub controls: Vec<ControlEntry>,
    /// Instance -> version it was last seen changing to, and whether that worked.
    pub instances: Vec<(String, String, bool)>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    pub step: usize,
    pub actor: Actor,
    pub at_ms: u64,
    /// How the approval was verified; `unverified` until [`crate::approval::check`] looks.
    pub verification: crate::approval::Check,
}

/// A pause, resume or abort a person asked for.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ControlEntry {
    pub action: ControlKind,
    pub step: usize,
    pub actor: Actor,
    pub at_ms: u64,
}

impl RolloutSummary {
    /// Distinct people who approved `step`: verified certificate subjects, or for a step without
    /// an `approvers` rule the user names (unverified); refused approvals do not count.
    pub fn approvers(&self, step: usize) -> std::collections::BTreeSet<&str> {
        use crate::approval::Check;
        self.approvals
            .iter()
            .filter(|a| a.step == step)
            .filter_map(|a| match &a.verification {
                Check::Verified { subject, .. } => Some(subject.as_str()),
                Check::Kubernetes { username, .. } => Some(username.as_str()),
                Check::Unverified => Some(a.actor.user.as_str()),
                Check::Refused { .. } => None,
            })
            .collect()
    }
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepSummary {
    pub step: usize,
    pub kind: crate::plan::StepKind,
    pub note: String,
    pub millis: Option<u64>,
    pub gates: Vec<String>,
}

/// Folds a journal into one summary per rollout, oldest first.
pub fn history(records: &[Record]) -> Vec<RolloutSummary> {
    let mut out: Vec<RolloutSummary> = Vec::new();
    let find = |out: &mut Vec<RolloutSummary>, id: &str| out.iter().rposition(|r| r.id == id);
    for r in records {
        match &r.event {
            Event::Started {
                rollout,
                from,
                to,
                strategy,
                actor,
                steps,
            } => out.push(RolloutSummary {
                id: rollout.clone(),
                started_ms: r.at_ms,
                from: from.clone(),
                to: to.clone(),
                strategy: *strategy,
                actor: Some(actor.clone()),
                steps_total: *steps,
                ..Default::default()
            }),
            Event::StepStarted {
                rollout,
                step,
                kind,
                note,
            } => {
                if let Some(i) = find(&mut out, rollout) {
                    out[i].paused = None;
                    out[i].steps.push(StepSummary {
                        step: *step,
                        kind: *kind,
                        note: note.clone(),
                        ..Default::default()
                    });
                }
            }
            Event::InstanceChanging { .. } => {}
            Event::InstanceChanged {
                rollout,
                instance,
                version,
                ok,
                ..
            } => {
                if let Some(i) = find(&mut out, rollout) {
                    let inst = &mut out[i].instances;
                    inst.retain(|(name, ..)| name != instance);
                    inst.push((instance.clone(), version.clone(), *ok));
                }
            }
            Event::Gate {
                rollout,
                check,
                passed,
                detail,
                ..
            } => {
                if let Some(i) = find(&mut out, rollout)
                    && let Some(s) = out[i].steps.last_mut()
                {
                    s.gates.push(format!(
                        "{check}: {} {detail}",
                        if *passed { "passed" } else { "FAILED" }
                    ));
                }
            }
            Event::StepDone {
                rollout, millis, ..
            } => {
                if let Some(i) = find(&mut out, rollout)
                    && let Some(s) = out[i].steps.last_mut()
                {
                    s.millis = Some(*millis);
                }
            }
            Event::Paused {
                rollout, reason, ..
            } => {
                if let Some(i) = find(&mut out, rollout) {
                    out[i].paused = Some(reason.clone());
                }
            }
            Event::Promoted {
                rollout,
                actor,
                step,
                ..
            } => {
                if let Some(i) = find(&mut out, rollout) {
                    out[i].approvals.push(Approval {
                        step: *step,
                        actor: actor.clone(),
                        at_ms: r.at_ms,
                        verification: Default::default(),
                    });
                }
            }
            Event::Controlled {
                rollout,
                step,
                action,
                actor,
            } => {
                if let Some(i) = find(&mut out, rollout) {
                    out[i].controls.push(ControlEntry {
                        action: *action,
                        step: *step,
                        actor: actor.clone(),
                        at_ms: r.at_ms,
                    });
                }
            }
            Event::RollbackStarted {
                rollout,
                reason,
                to,
            } => {
                if let Some(i) = find(&mut out, rollout) {
                    out[i].rollback = Some(format!("to {to}: {reason}"));
                }
            }
            Event::Finished {
                rollout,
                outcome,
                detail,
            } => {
                if let Some(i) = find(&mut out, rollout) {
                    out[i].outcome = Some(*outcome);
                    out[i].finished_ms = Some(r.at_ms);
                    out[i].detail = detail.clone();
                    out[i].paused = None;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Store;

    fn actor() -> Actor {
        Actor {
            user: "ana".into(),
            host: "box".into(),
            ci: None,
            client: None,
            signed: None,
            kubernetes: None,
        }
    }

    #[test]
    fn journal_round_trips_and_folds_into_history() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path());
        let mut j = store.journal("web").unwrap();
        j.append(Event::Started {
            rollout: "r1".into(),
            from: Some("1".into()),
            to: "2".into(),
            strategy: StrategyKind::Canary,
            actor: actor(),
            steps: 2,
        })
        .unwrap();
        j.append(Event::StepStarted {
            rollout: "r1".into(),
            step: 0,
            kind: crate::plan::StepKind::Scale,
            note: "w".into(),
        })
        .unwrap();
        j.append(Event::Gate {
            rollout: "r1".into(),
            step: 0,
            check: "health".into(),
            passed: false,
            detail: "500".into(),
            measurements: vec![],
        })
        .unwrap();
        j.append(Event::RollbackStarted {
            rollout: "r1".into(),
            reason: "gate".into(),
            to: "1".into(),
        })
        .unwrap();
        j.append(Event::Finished {
            rollout: "r1".into(),
            outcome: Outcome::RolledBack,
            detail: "".into(),
        })
        .unwrap();
        let h = history(&store.read("web").unwrap());
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].outcome, Some(Outcome::RolledBack));
        assert_eq!(h[0].steps[0].gates, vec!["health: FAILED 500"]);
        assert_eq!(h[0].rollback.as_deref(), Some("to 1: gate"));
    }
}
