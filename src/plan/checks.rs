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

impl Plan {
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
}
