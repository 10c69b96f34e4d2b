//! Unit tests of the engine: the step loop on tokio's paused clock, against a fleet in memory.

use std::sync::Mutex;

use super::*;
use crate::health::Probe;
use crate::plan::Capacity;
use crate::spec::Sources;
use crate::target::Sink;

fn inst(name: &str, v: Option<&str>, p: Option<&str>) -> Instance {
    Instance {
        name: name.into(),
        version: v.map(Into::into),
        previous: p.map(Into::into),
        installed: vec![],
        running: v.into_iter().map(Into::into).collect(),
    }
}

#[test]
fn current_version_is_the_majority_old_version() {
    let fleet = [
        inst("a", Some("1"), None),
        inst("b", Some("2"), Some("1")),
        inst("c", Some("1"), None),
    ];
    assert_eq!(current_version(&fleet, "2").as_deref(), Some("1"));
    assert_eq!(current_version(&[inst("a", None, None)], "2"), None);
}

#[test]
fn settled_only_when_what_runs_and_what_is_declared_agree() {
    let two = [inst("a", Some("2"), None), inst("b", Some("2"), Some("1"))];
    assert!(settled(&two, None, "2"));
    assert!(settled(&two, Some("2"), "2"));
    // Pods on 2, the Deployment's template still on 1: its controller would bring 1 back.
    assert!(!settled(&two, Some("1"), "2"));
    assert!(!settled(&[inst("a", Some("1"), None)], None, "2"));
    assert!(!settled(&[inst("a", None, None)], None, "2"));
    // Nothing seen is not everything done: a fleet with no instance, or a Deployment at zero
    // pods whose template is another version.
    assert!(!settled(&[], None, "2"));
    assert!(!settled(&[], Some("1"), "2"));
    assert!(settled(&[], Some("2"), "2"));
}

/// Instances in memory: a step sets the counts at once (the fake is for the loop's logic only).
struct Fleet {
    instances: Mutex<Vec<Instance>>,
    from: String,
}

impl Fleet {
    fn new(n: usize, version: &str) -> Self {
        let instances = (0..n)
            .map(|i| inst(&format!("h{i}"), Some(version), None))
            .collect();
        Fleet {
            instances: Mutex::new(instances),
            from: version.to_string(),
        }
    }

    async fn set(&self, new: u32, version: &str, sink: Sink<'_>) -> crate::target::Result<()> {
        let names: Vec<String> = self
            .instances
            .lock()
            .unwrap()
            .iter()
            .map(|i| i.name.clone())
            .collect();
        for (i, name) in names.into_iter().enumerate() {
            let want = if (i as u32) < new {
                version
            } else {
                &self.from
            };
            if self.instances.lock().unwrap()[i].version.as_deref() == Some(want) {
                continue;
            }
            sink.report(Change::Changing {
                instance: name.clone(),
                version: want.to_string(),
            })
            .await?;
            {
                let mut all = self.instances.lock().unwrap();
                all[i].previous = all[i].version.replace(want.to_string());
                all[i].running = vec![want.to_string()];
            }
            sink.report(Change::Changed {
                instance: name,
                version: want.to_string(),
                ok: true,
                detail: String::new(),
            })
            .await?;
        }
        Ok(())
    }
}

impl Target for Fleet {
    async fn size(&self) -> crate::target::Result<u32> {
        Ok(self.instances.lock().unwrap().len() as u32)
    }
    fn capacity(&self) -> Capacity {
        Capacity::InPlace
    }
    async fn instances(&self) -> crate::target::Result<Vec<Instance>> {
        Ok(self.instances.lock().unwrap().clone())
    }
    async fn prepare(&self, _version: &str) -> crate::target::Result<()> {
        Ok(())
    }
    async fn scale(
        &self,
        step: &Step,
        version: &str,
        _end: crate::plan::StepEnd,
        _deadline: Duration,
        sink: Sink<'_>,
    ) -> crate::target::Result<()> {
        self.set(step.new, version, sink).await
    }
    async fn restore(
        &self,
        version: &str,
        _deadline: Duration,
        sink: Sink<'_>,
    ) -> crate::target::Result<()> {
        let n = self.instances.lock().unwrap().len() as u32;
        self.set(n, version, sink).await
    }
    async fn switch_traffic(&self, _version: &str) -> crate::target::Result<()> {
        Ok(())
    }
    async fn probe(&self, _check: &Check, _instance: &str, _version: &str) -> Probe {
        Probe::Pass
    }
}

fn manifest(strategy: &str) -> Manifest {
    let text = format!(
        "apiVersion: rollgate.dev/v1\nkind: Rollout\nmetadata: {{name: web}}\nspec:\n  version: \"2\"\n  target:\n    hosts:\n      hosts:\n        - {{name: h0, address: \"127.0.0.1:1\"}}\n        - {{name: h1, address: \"127.0.0.1:2\"}}\n  strategy:\n{strategy}"
    );
    let sources = Sources::from_texts(&[(std::path::Path::new("web.yaml"), &text)], &|_| None)
        .expect("valid yaml");
    Manifest::from_sources(sources, &|_| None).expect("a valid manifest")
}

/// Runs `m` from step 0 on a two-instance fleet at version 1; returns the outcome and the journal.
async fn run(m: &Manifest) -> (RunOutcome, Vec<Event>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::at(dir.path());
    let fleet = Fleet::new(2, "1");
    let plan = crate::plan::plan(&m.strategy, 2, fleet.capacity()).unwrap();
    let seen = Mutex::new(Vec::new());
    let on_record = |r: &Record| seen.lock().unwrap().push(r.event.clone());
    let mut run = Run::new(
        &fleet,
        m,
        &plan,
        &store,
        "web-1",
        Some("1".into()),
        &on_record,
    )
    .unwrap();
    let outcome = run.execute(0, Course::StepByStep).await.unwrap();
    drop(run);
    (outcome, seen.into_inner().unwrap())
}

fn step_millis(events: &[Event]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::StepDone { millis, .. } => Some(*millis),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_timed_pause_and_min_ready_seconds_run_on_tokio_time() {
    let m = manifest(
        "    canary:\n      maxUnavailable: 1\n      minReadySeconds: 30\n      steps:\n        - setWeight: 50\n        - pause: {duration: 10m}\n        - setWeight: 100\n",
    );
    let wall = std::time::Instant::now();
    let (outcome, events) = run(&m).await;
    assert_eq!(outcome, RunOutcome::Succeeded);
    // On a paused clock the hour-long parts take no real time, and each is measured in full.
    assert!(
        wall.elapsed() < Duration::from_secs(120),
        "{:?}",
        wall.elapsed()
    );
    let millis = step_millis(&events);
    assert_eq!(millis.len(), 3, "{events:?}");
    assert!((30_000..31_000).contains(&millis[0]), "{millis:?}");
    assert!((600_000..601_000).contains(&millis[1]), "{millis:?}");
    assert!((30_000..31_000).contains(&millis[2]), "{millis:?}");
}

#[tokio::test(start_paused = true)]
async fn a_manual_pause_stops_the_loop_there() {
    let m = manifest(
        "    canary:\n      maxUnavailable: 1\n      steps:\n        - setWeight: 50\n        - pause: {}\n        - setWeight: 100\n",
    );
    let (outcome, events) = run(&m).await;
    assert!(matches!(outcome, RunOutcome::Paused(_)), "{outcome:?}");
    assert_eq!(step_millis(&events).len(), 1, "{events:?}");
    assert!(matches!(events.last(), Some(Event::Paused { step: 1, .. })));
}
