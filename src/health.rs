//! Health gates: the pure verdict over a series of probe results; `run` observes until a verdict.

pub mod condition;
pub mod metrics;
pub mod run;

use crate::spec::{Check, HttpProbe};

/// The result of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Pass,
    Fail(String),
}

impl Probe {
    /// The verdict on one answer to an `http` check (`what` names the request): the status must
    /// be `expectStatus`, and the body contain `bodyContains`.
    pub fn of_http_answer(what: &str, status: u16, body: &str, h: &HttpProbe) -> Probe {
        if status != h.expect_status {
            Probe::Fail(format!(
                "{what}: status {status}, expected {}",
                h.expect_status
            ))
        } else if let Some(want) = &h.body_contains
            && !body.contains(want.as_str())
        {
            Probe::Fail(format!("{what}: body lacks {want:?}"))
        } else {
            Probe::Pass
        }
    }
}

/// Where a gate stands after some probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Keep probing.
    Pending,
    Pass,
    Fail(String),
    /// Metric checks only: too many measurements without data; a person decides.
    Inconclusive(String),
}

/// The thresholds of one check, folded over its probes.
///
/// A gate passes once `successThreshold` consecutive probes pass; it fails once more than
/// `failureLimit` probes fail, or when `count` probes have run without passing.
#[derive(Debug, Clone)]
pub struct Gate {
    pub success_threshold: u32,
    pub failure_limit: u32,
    pub count: u32,
    probes: u32,
    consecutive: u32,
    failures: u32,
    last_failure: Option<String>,
}

impl Gate {
    pub fn new(check: &Check) -> Self {
        Gate {
            success_threshold: check.success_threshold.max(1),
            failure_limit: check.failure_limit,
            count: check.count.max(check.success_threshold).max(1),
            probes: 0,
            consecutive: 0,
            failures: 0,
            last_failure: None,
        }
    }

    pub fn observe(&mut self, probe: Probe) -> Verdict {
        self.probes += 1;
        match probe {
            Probe::Pass => self.consecutive += 1,
            Probe::Fail(why) => {
                self.consecutive = 0;
                self.failures += 1;
                self.last_failure = Some(why);
            }
        }
        self.verdict()
    }

    pub fn verdict(&self) -> Verdict {
        let why = || {
            self.last_failure
                .clone()
                .unwrap_or_else(|| "no passing probe".into())
        };
        if self.failures > self.failure_limit {
            Verdict::Fail(format!(
                "{} of {} probes failed (failureLimit {}): {}",
                self.failures,
                self.probes,
                self.failure_limit,
                why()
            ))
        } else if self.consecutive >= self.success_threshold {
            Verdict::Pass
        } else if self.probes >= self.count {
            // Out of probes: the remaining ones could not reach the threshold.
            Verdict::Fail(format!(
                "{} consecutive passes needed within {} probes: {}",
                self.success_threshold,
                self.count,
                why()
            ))
        } else {
            Verdict::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(count: u32, success_threshold: u32, failure_limit: u32) -> Check {
        serde_yaml::from_str(&format!(
            "{{name: c, tcp: {{address: 'x:1'}}, count: {count}, successThreshold: {success_threshold}, failureLimit: {failure_limit}}}"
        ))
        .unwrap()
    }

    #[test]
    fn passes_after_consecutive_successes() {
        let mut g = Gate::new(&check(3, 2, 1));
        assert_eq!(g.observe(Probe::Pass), Verdict::Pending);
        assert_eq!(g.observe(Probe::Pass), Verdict::Pass);
    }

    #[test]
    fn a_failure_resets_the_streak_and_the_limit_fails_the_gate() {
        let mut g = Gate::new(&check(5, 2, 1));
        assert_eq!(g.observe(Probe::Pass), Verdict::Pending);
        assert_eq!(g.observe(Probe::Fail("500".into())), Verdict::Pending);
        assert_eq!(g.observe(Probe::Pass), Verdict::Pending);
        assert!(
            matches!(g.observe(Probe::Fail("500".into())), Verdict::Fail(m) if m.contains("2 of 4 probes failed"))
        );
    }

    #[test]
    fn runs_out_of_probes() {
        let mut g = Gate::new(&check(2, 2, 5));
        assert_eq!(g.observe(Probe::Fail("x".into())), Verdict::Pending);
        assert!(
            matches!(g.observe(Probe::Pass), Verdict::Fail(m) if m.contains("2 consecutive passes"))
        );
    }

    #[test]
    fn default_check_is_one_probe_no_failures() {
        let mut g = Gate::new(&serde_yaml::from_str("{name: c, tcp: {address: 'x:1'}}").unwrap());
        assert!(matches!(
            g.observe(Probe::Fail("refused".into())),
            Verdict::Fail(_)
        ));
    }
}
