//! Which checks gate which step: the plan says it, so the engine only reads it.
//!
//! A check named by an analysis step, or by a canary's background `analysis`, runs only there; every
//! other check gates each scale step. A canary's background analysis starts at the first plan step
//! that reaches the weight in force at its `startingStep`.

use serde::Serialize;

use crate::plan::{Plan, Step, StepKind};
use crate::spec::{CanarySpec, Check};

/// Checks that run beside the steps, from `from_step` to the end of the rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Background {
    pub from_step: usize,
    pub checks: Vec<String>,
}

/// The background analysis of a canary planned as `steps`, if it has one.
pub(super) fn background(canary: &CanarySpec, steps: &[Step]) -> Option<Background> {
    let bg = canary.analysis.as_ref()?;
    let last = bg.starting_step.min(canary.steps.len().saturating_sub(1));
    let weight = canary.steps[..=last]
        .iter()
        .filter_map(|s| s.set_weight)
        .next_back()
        .unwrap_or(0);
    let from_step = steps
        .iter()
        .position(|s| s.weight.unwrap_or(0) >= weight)
        .unwrap_or(0);
    Some(Background {
        from_step,
        checks: bg.checks.clone(),
    })
}

/// When a scale step is done, and so when the next one may begin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepEnd {
    /// When its changed instances are ready and the instances it removes are gone.
    Ready,
    /// When its new instances are asked for: the next step's changes begin while they come up
    /// (the instances it removes go as they become ready, within the step's bounds), as a
    /// Deployment's own rolling update overlaps its pods. A target whose changes are not counts
    /// (a host fleet's) treats it as `Ready`.
    Requested,
}

impl Plan {
    /// When step `index` (of a run gated by `all`) is done: `Requested` only for a scale step that
    /// nothing gates or watches (no check, no traffic weight, no hold, no approval) followed by
    /// another such scale step, so the waves of a rollout without checks overlap as Kubernetes'
    /// do. The last scale step, and any step before a pause, analysis, switch or promotion, is
    /// done only when `Ready`.
    pub fn step_end(&self, index: usize, all: &[Check]) -> StepEnd {
        let (Some(step), Some(next)) = (self.steps.get(index), self.steps.get(index + 1)) else {
            return StepEnd::Ready;
        };
        let plain = |s: &Step| {
            s.kind == StepKind::Scale
                && s.traffic_weight.is_none()
                && s.duration_seconds.is_none()
                && !s.manual
                && s.approvals == 0
        };
        if plain(step) && plain(next) && self.checks_for(index, all).is_empty() {
            StepEnd::Requested
        } else {
            StepEnd::Ready
        }
    }

    /// The checks of `all` that gate step `index`: an analysis step's own (all of them when it names
    /// none); for any other step, those no analysis step and no background analysis names.
    pub fn checks_for<'a>(&self, index: usize, all: &'a [Check]) -> Vec<&'a Check> {
        let Some(step) = self.steps.get(index) else {
            return Vec::new();
        };
        if step.kind == StepKind::Analysis {
            return all
                .iter()
                .filter(|c| step.checks.is_empty() || step.checks.contains(&c.name))
                .collect();
        }
        let named = |name: &String| {
            self.steps.iter().any(|s| s.checks.contains(name))
                || self
                    .background
                    .as_ref()
                    .is_some_and(|b| b.checks.contains(name))
        };
        all.iter().filter(|c| !named(&c.name)).collect()
    }

    /// The checks of `all` that run in the background, and the step they start at.
    pub fn background_checks(&self, all: &[Check]) -> Option<(usize, Vec<Check>)> {
        let bg = self.background.as_ref()?;
        let checks = all
            .iter()
            .filter(|c| bg.checks.contains(&c.name))
            .cloned()
            .collect();
        Some((bg.from_step, checks))
    }

    /// Whether step `index` takes the new version to everyone: the blue-green switch, or a canary's
    /// last step (when it is not the only one).
    pub fn promotes_at(&self, index: usize) -> bool {
        let Some(step) = self.steps.get(index) else {
            return false;
        };
        step.kind == StepKind::Switch
            || (self.strategy == "canary" && index > 0 && index + 1 == self.steps.len())
    }
}

#[cfg(test)]
mod tests {
    use crate::plan::{Capacity, plan};
    use crate::spec::{Check, Strategy};

    fn canary(yaml: &str) -> Strategy {
        Strategy::Canary(serde_yaml::from_str(yaml).unwrap())
    }

    fn check(name: &str) -> Check {
        serde_yaml::from_str(&format!(
            "{{name: {name}, tcp: {{address: \"127.0.0.1:80\"}}}}"
        ))
        .unwrap()
    }

    #[test]
    fn named_checks_run_only_where_they_are_named() {
        let s = canary(
            "{steps: [{setWeight: 25}, {analysis: {checks: [deep]}}, {setWeight: 50}, \
             {setWeight: 100}], analysis: {checks: [errors], startingStep: 2}}",
        );
        let p = plan(&s, 4, Capacity::Elastic).unwrap();
        let all = [check("ready"), check("deep"), check("errors")];
        let names = |i: usize| -> Vec<String> {
            p.checks_for(i, &all)
                .iter()
                .map(|c| c.name.clone())
                .collect()
        };
        let analysis = p
            .steps
            .iter()
            .position(|s| s.kind == crate::plan::StepKind::Analysis);
        let analysis = analysis.expect("an analysis step");
        assert_eq!(names(analysis), ["deep"]);
        assert_eq!(names(0), ["ready"]);
        let (from, bg) = p.background_checks(&all).expect("background analysis");
        assert_eq!(
            bg.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["errors"]
        );
        assert_eq!(
            p.steps[from].weight,
            Some(50),
            "starts where weight 50 is first reached"
        );
        assert!(p.promotes_at(p.steps.len() - 1));
        assert!(!p.promotes_at(0));
    }

    #[test]
    fn an_analysis_step_naming_nothing_runs_every_check() {
        let s = canary("{steps: [{setWeight: 50}, {analysis: {}}, {setWeight: 100}]}");
        let p = plan(&s, 2, Capacity::Elastic).unwrap();
        let all = [check("a"), check("b")];
        let i = p
            .steps
            .iter()
            .position(|s| s.kind == crate::plan::StepKind::Analysis)
            .unwrap();
        assert_eq!(p.checks_for(i, &all).len(), 2);
        assert!(p.background.is_none());
    }

    #[test]
    fn a_rolling_update_promotes_nowhere() {
        let s = Strategy::Rolling(serde_yaml::from_str("{maxUnavailable: 1}").unwrap());
        let p = plan(&s, 3, Capacity::Elastic).unwrap();
        assert!((0..p.steps.len()).all(|i| !p.promotes_at(i)));
    }

    #[test]
    fn only_ungated_scale_steps_before_another_scale_step_end_when_requested() {
        use crate::plan::{StepEnd, StepKind};
        let rolling = Strategy::Rolling(
            serde_yaml::from_str("{maxSurge: '25%', maxUnavailable: 0}").unwrap(),
        );
        let p = plan(&rolling, 20, Capacity::Elastic).unwrap();
        let last = p.steps.len() - 1;
        assert!(last >= 2, "{:?}", p.steps);
        let ends = |all: &[Check]| -> Vec<StepEnd> {
            (0..p.steps.len()).map(|i| p.step_end(i, all)).collect()
        };
        // No checks: every wave but the last overlaps the next.
        let free = ends(&[]);
        assert!(free[..last].iter().all(|e| *e == StepEnd::Requested));
        assert_eq!(free[last], StepEnd::Ready);
        // A check gates every scale step: none overlaps.
        assert!(ends(&[check("ready")]).iter().all(|e| *e == StepEnd::Ready));

        // A canary: a pause, an analysis step, a traffic weight or a check-gated step waits.
        let s = canary(
            "{steps: [{setWeight: 20}, {setWeight: 40}, {pause: {}}, {setWeight: 60}, \
             {analysis: {checks: [deep]}}, {setWeight: 80}, {setWeight: 100}]}",
        );
        let p = plan(&s, 10, Capacity::Elastic).unwrap();
        let all = [check("deep")];
        let kinds: Vec<(StepKind, Option<u32>, StepEnd)> = (0..p.steps.len())
            .map(|i| (p.steps[i].kind, p.steps[i].weight, p.step_end(i, &all)))
            .collect();
        for (i, (kind, _, end)) in kinds.iter().enumerate() {
            let next = kinds.get(i + 1).map(|k| k.0);
            let expected = if *kind == StepKind::Scale && next == Some(StepKind::Scale) {
                StepEnd::Requested
            } else {
                StepEnd::Ready
            };
            assert_eq!(*end, expected, "step {i} of {kinds:?}");
        }
        assert!(kinds.iter().any(|k| k.2 == StepEnd::Requested), "{kinds:?}");
        let s = canary(
            "{steps: [{setWeight: 20}, {setWeight: 50}, {setWeight: 100}], \
             trafficRouting: {gatewayAPI: {httpRoute: r, stableService: s, canaryService: c}}}",
        );
        let p = plan(&s, 10, Capacity::Elastic).unwrap();
        for (i, step) in p.steps.iter().enumerate() {
            let weighted = |j: usize| p.steps.get(j).is_none_or(|s| s.traffic_weight.is_some());
            if weighted(i) || weighted(i + 1) {
                assert_eq!(
                    p.step_end(i, &[]),
                    StepEnd::Ready,
                    "a router's weight waits for its pods: step {i} {step:?}"
                );
            }
        }
        assert!(
            (0..p.steps.len()).any(|i| p.step_end(i, &[]) == StepEnd::Requested),
            "the replicas between two weights overlap: {:?}",
            p.steps
        );
    }
}
