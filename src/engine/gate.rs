//! Gates: every check of a step observed on the new instances (or, for a metric, on the rollout)
//! until its verdict, each verdict journaled.

use futures_util::future::join_all;

use super::{Result, Run, StepResult};
use crate::health::run::until_verdict;
use crate::health::{Gate, Verdict};
use crate::spec::Check;
use crate::state::Event;
use crate::target::{Instance, Target};

impl<T: Target> Run<'_, T> {
    /// Runs every check against every instance on the new version; all must pass.
    pub(super) async fn gate(&self, idx: usize, checks: &[Check]) -> Result<StepResult> {
        if checks.is_empty() {
            return Ok(StepResult::Done);
        }
        let version = self.version().to_string();
        let instances: Vec<Instance> = self.target.instances().await?;
        let on_new: Vec<String> = instances
            .iter()
            .filter(|i| i.serves(&version))
            .map(|i| i.name.clone())
            .collect();
        for check in checks {
            // A metric check measures the whole rollout once; a probe runs against each new instance.
            let samples = crate::health::run::Samples::default();
            let verdicts: Vec<(String, Verdict)> = if check.is_metric() {
                let vars = self.metric_vars(&instances, idx);
                vec![(
                    "the rollout".to_string(),
                    crate::health::run::metric(&self.http, check, &vars, &samples).await,
                )]
            } else {
                let target = self.target;
                let version = version.as_str();
                let runs = on_new.iter().map(|inst| async move {
                    let probe = || target.probe(check, inst, version);
                    let verdict = until_verdict(Gate::new(check), check, probe).await;
                    (inst.clone(), verdict)
                });
                join_all(runs).await
            };
            for (inst, verdict) in verdicts {
                let (passed, detail) = match &verdict {
                    Verdict::Pass => (true, format!("on {inst}")),
                    Verdict::Fail(why) | Verdict::Inconclusive(why) => {
                        (false, format!("on {inst}: {why}"))
                    }
                    Verdict::Pending => (false, format!("on {inst}: no verdict")),
                };
                self.log(Event::Gate {
                    rollout: self.rollout.clone(),
                    step: idx,
                    check: check.name.clone(),
                    passed,
                    detail: detail.clone(),
                    measurements: samples.lock().expect("samples lock").clone(),
                })?;
                match verdict {
                    Verdict::Pass => {}
                    Verdict::Inconclusive(_) => {
                        return Ok(StepResult::Pause(format!(
                            "check {} is inconclusive {detail}: a person decides (promote or abort)",
                            check.name
                        )));
                    }
                    _ => {
                        return Ok(StepResult::Failed(format!(
                            "check {} failed {detail}",
                            check.name
                        )));
                    }
                }
            }
        }
        Ok(StepResult::Done)
    }

    /// The variables a metric query may use.
    pub(super) fn metric_vars(
        &self,
        instances: &[Instance],
        idx: usize,
    ) -> std::collections::BTreeMap<String, String> {
        // The canary's share of traffic at step `idx`: the router's (trafficRouting), else the
        // canary weight the step's counts follow; empty outside a canary.
        let upto = &self.plan.steps[..(idx + 1).min(self.plan.steps.len())];
        let routed = self.plan.steps.iter().any(|s| s.traffic_weight.is_some());
        let weight = upto
            .iter()
            .filter_map(|s| if routed { s.traffic_weight } else { s.weight })
            .next_back()
            .map_or_else(String::new, |w| w.to_string());
        let version = self.version().to_string();
        let stable = self.from.clone().unwrap_or_default();
        let hosts: Vec<&str> = instances.iter().map(|i| i.name.as_str()).collect();
        let mut vars: std::collections::BTreeMap<String, String> = [
            ("app", self.app().to_string()),
            ("version", version.clone()),
            ("canary_version", version),
            ("stable_version", stable),
            ("canary_weight", weight),
            // Empty unless the target names one: a query may use {{namespace}} on any target.
            ("namespace", String::new()),
            ("hosts", hosts.join("|")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        vars.extend(
            self.target
                .metric_labels()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v)),
        );
        vars
    }
}
