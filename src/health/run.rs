//! Runs checks: the one loop that observes a check until its gate gives a verdict, and the probes
//! rollgate makes itself (`runOn: cli`) for every target.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::metrics::{Measurement, MetricGate, measure_value};
use super::{Gate, Probe, Verdict};
use crate::spec::Check;
use crate::state::{SAMPLES_KEPT, Sample, now_ms};

/// A gate: observations in, a verdict out (pure).
pub trait Observe {
    type Observation;
    fn observe(&mut self, observation: Self::Observation) -> Verdict;
}

impl Observe for Gate {
    type Observation = Probe;
    fn observe(&mut self, probe: Probe) -> Verdict {
        Gate::observe(self, probe)
    }
}

impl Observe for MetricGate {
    type Observation = Measurement;
    fn observe(&mut self, m: Measurement) -> Verdict {
        MetricGate::observe(self, m)
    }
}

/// Waits the check's `initialDelay`, then observes once per `interval` until `gate` decides. It
/// picks no deadline: the caller bounds it.
pub async fn until_verdict<G: Observe, F: Future<Output = G::Observation>>(
    mut gate: G,
    check: &Check,
    mut next: impl FnMut() -> F,
) -> Verdict {
    if !check.initial_delay.0.is_zero() {
        tokio::time::sleep(check.initial_delay.0).await;
    }
    loop {
        match gate.observe(next().await) {
            Verdict::Pending => tokio::time::sleep(check.interval.0).await,
            done => return done,
        }
    }
}

/// A metric check's measurements so far, kept for its gate record (the last [`SAMPLES_KEPT`]).
pub type Samples = Arc<Mutex<Vec<Sample>>>;

/// Measures a metric check every `interval` until its limits give a verdict; each measurement is
/// added to `samples`.
pub async fn metric(
    http: &reqwest::Client,
    check: &Check,
    vars: &BTreeMap<String, String>,
    samples: &Samples,
) -> Verdict {
    let next = || async {
        let (value, m) = measure_value(http, check, vars).await;
        let outcome = match &m {
            Measurement::Success(_) => "success",
            Measurement::Failure(_) => "failure",
            Measurement::Inconclusive(_) => "inconclusive",
            Measurement::Error(_) => "error",
        };
        let mut kept = samples.lock().expect("samples lock");
        if kept.len() >= SAMPLES_KEPT {
            kept.remove(0);
        }
        kept.push(Sample {
            at_ms: now_ms(),
            value,
            outcome: outcome.into(),
        });
        m
    };
    until_verdict(MetricGate::new(check), check, next).await
}

/// Background analysis: every check measured at its interval for as long as the rollout runs; the
/// first check to fail or to become inconclusive ends it with its verdict and its measurements.
pub async fn background(
    http: &reqwest::Client,
    checks: &[Check],
    vars: &BTreeMap<String, String>,
) -> (String, Verdict, Vec<Sample>) {
    if checks.is_empty() {
        return std::future::pending().await;
    }
    let runs = checks.iter().map(|c| {
        Box::pin(async move {
            let mut endless = c.clone();
            endless.count = u32::MAX;
            let samples = Samples::default();
            let verdict = metric(http, &endless, vars, &samples).await;
            let samples = std::mem::take(&mut *samples.lock().expect("samples lock"));
            (c.name.clone(), verdict, samples)
        })
    });
    futures_util::future::select_all(runs).await.0
}

/// A probe run from where rollgate runs.
pub async fn cli_probe(
    http: &reqwest::Client,
    check: &Check,
    fill: &(dyn Fn(&str) -> String + Sync),
    timeout: Duration,
) -> Probe {
    if let Some(h) = &check.http {
        let url = fill(&h.url);
        return match http.get(&url).timeout(timeout).send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let body = resp.text().await.unwrap_or_default();
                Probe::of_http_answer(&format!("GET {url}"), status, &body, h)
            }
            Err(e) => Probe::Fail(format!("GET {url}: {e}")),
        };
    }
    if let Some(t) = &check.tcp {
        let addr = fill(&t.address);
        return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr)).await {
            Ok(Ok(_)) => Probe::Pass,
            Ok(Err(e)) => Probe::Fail(format!("connect {addr}: {e}")),
            Err(_) => Probe::Fail(format!("connect {addr}: timed out after {timeout:?}")),
        };
    }
    if let Some(c) = &check.command {
        let args: Vec<String> = c.run.iter().map(|a| fill(a)).collect();
        let run = tokio::process::Command::new(&args[0])
            .args(&args[1..])
            .kill_on_drop(true)
            .output();
        return match tokio::time::timeout(timeout, run).await {
            Ok(Ok(out)) if out.status.success() => Probe::Pass,
            Ok(Ok(out)) => Probe::Fail(format!("{}: {}", args[0], out.status)),
            Ok(Err(e)) => Probe::Fail(format!("{}: {e}", args[0])),
            Err(_) => Probe::Fail(format!("{}: timed out after {timeout:?}", args[0])),
        };
    }
    Probe::Fail("check has no probe".into())
}
