//! PURE: an app's journal folded into what the dashboard draws (steps, instances by zone, gates,
//! history); no I/O, so the page's picture is unit-tested from records alone.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::state::{Event, Outcome, Record, RolloutSummary, Sample, history};

mod pods;
use pods::replica_sets;
pub use pods::{pod_counts, recorded_counts};

/// What the journal does not say, read from the last rollout's stored manifest: its planned steps,
/// its hosts with their zones (or its Deployment), and its checks' conditions.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    pub steps: Vec<PlannedStep>,
    /// (instance, zone), in the manifest's order.
    pub hosts: Vec<(String, String)>,
    /// A Kubernetes target: its Deployment (the grid is then by ReplicaSet, see [`replica_sets`]).
    pub deployment: Option<String>,
    /// Each check's `successCondition` (metric checks only), by name.
    pub conditions: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedStep {
    pub kind: String,
    pub note: String,
    /// A pause that waits for `rollgate promote`.
    pub manual: bool,
    /// Approvals must be signed with an approver certificate (never from the page).
    pub signed: bool,
    /// How many people must approve a manual pause (0: one `promote`).
    pub approvals: u32,
}

/// One app as the page shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppView {
    pub app: String,
    /// `none`, `inProgress`, `paused`, `succeeded`, `rolledBack`, `failed` or `aborted`.
    pub state: &'static str,
    pub rollout: Option<RolloutSummary>,
    pub steps: Vec<StepView>,
    pub zones: Vec<ZoneView>,
    pub gates: Vec<GateView>,
    /// Every rollout, oldest first.
    pub history: Vec<RolloutSummary>,
    /// How many journal records the view was made from.
    pub records: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepView {
    pub index: usize,
    pub kind: String,
    pub note: String,
    pub manual: bool,
    pub signed: bool,
    /// Approvals a manual pause needs, and who approved it so far (unverified names included).
    pub approvals_needed: u32,
    pub approved_by: Vec<String>,
    /// `pending`, `current`, `paused`, `done`, `failed` or `skipped`.
    pub state: &'static str,
    pub millis: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ZoneView {
    /// The zone (hosts), or the ReplicaSet's name (pods).
    pub zone: String,
    /// `zone`, `replicaSet`, or `stable` (the Deployment's own ReplicaSets, not named by the journal).
    pub kind: &'static str,
    /// A ReplicaSet's version.
    pub version: Option<String>,
    pub instances: Vec<InstanceView>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceView {
    pub name: String,
    /// The version it runs (the last one it changed to), if the journal knows.
    pub version: Option<String>,
    /// While `switching`: the version it is changing to.
    pub target: Option<String>,
    /// `healthy`, `switching`, `failed` or `unknown`.
    pub state: &'static str,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GateView {
    pub step: usize,
    pub check: String,
    pub passed: bool,
    pub detail: String,
    pub at_ms: u64,
    /// A metric check's measurements, oldest first.
    pub measurements: Vec<Sample>,
    /// The success condition as a line on the chart, when it is one: (comparison, value).
    pub threshold: Option<(&'static str, f64)>,
    pub condition: Option<String>,
}

/// Where instances not named by the layout (pods, or hosts of an older manifest) are grouped.
pub const NO_ZONE: &str = "-";

/// The state word of a rollout.
pub fn state_word(r: Option<&RolloutSummary>) -> &'static str {
    match r {
        None => "none",
        Some(r) => match (r.outcome, &r.paused) {
            (Some(Outcome::Succeeded), _) => "succeeded",
            (Some(Outcome::RolledBack), _) => "rolledBack",
            (Some(Outcome::Failed), _) => "failed",
            (Some(Outcome::Aborted), _) => "aborted",
            (None, Some(_)) => "paused",
            (None, None) => "inProgress",
        },
    }
}

/// Folds `records` (the app's whole journal, in order) into its view.
pub fn view(app: &str, records: &[Record], layout: &Layout) -> AppView {
    let all = history(records);
    let last = all.last().cloned();
    let id = last.as_ref().map(|r| r.id.as_str());
    AppView {
        app: app.to_string(),
        state: state_word(last.as_ref()),
        steps: last
            .as_ref()
            .map_or_else(Vec::new, |r| steps(r, records, layout)),
        zones: match &layout.deployment {
            Some(deployment) => replica_sets(records, deployment, last.as_ref()),
            None => zones(records, layout, last.as_ref()),
        },
        gates: records
            .iter()
            .filter(|r| Some(r.event.rollout()) == id)
            .filter_map(|r| match &r.event {
                Event::Gate {
                    step,
                    check,
                    passed,
                    detail,
                    measurements,
                    ..
                } => {
                    let condition = layout.conditions.get(check).cloned();
                    Some(GateView {
                        step: *step,
                        check: check.clone(),
                        passed: *passed,
                        detail: detail.clone(),
                        at_ms: r.at_ms,
                        measurements: measurements.clone(),
                        threshold: condition
                            .as_deref()
                            .and_then(|c| crate::health::condition::parse(c).ok())
                            .and_then(|e| crate::health::condition::threshold(&e)),
                        condition,
                    })
                }
                _ => None,
            })
            .collect(),
        rollout: last,
        history: all,
        records: records.len(),
    }
}

/// The plan's steps (from the layout when it matches the rollout, else those the journal saw),
/// each with how far the last rollout got.
fn steps(r: &RolloutSummary, records: &[Record], layout: &Layout) -> Vec<StepView> {
    let mut planned: Vec<PlannedStep> = if layout.steps.len() == r.steps_total {
        layout.steps.clone()
    } else {
        (0..r.steps_total)
            .map(|_| PlannedStep {
                kind: "step".into(),
                note: String::new(),
                manual: false,
                signed: false,
                approvals: 0,
            })
            .collect()
    };
    for s in &r.steps {
        if let Some(p) = planned.get_mut(s.step) {
            p.kind = s.kind.as_str().to_string();
            p.note.clone_from(&s.note);
        }
    }
    let failed_step = records
        .iter()
        .rev()
        .filter(|x| x.event.rollout() == r.id)
        .find_map(|x| match &x.event {
            Event::Gate {
                step,
                passed: false,
                ..
            } => Some(*step),
            _ => None,
        });
    let current = r.steps.last().map(|s| s.step);
    planned
        .into_iter()
        .enumerate()
        .map(|(index, p)| {
            let seen = r.steps.iter().rev().find(|s| s.step == index);
            let millis = seen.and_then(|s| s.millis);
            let state = match (seen, millis) {
                (Some(_), Some(_)) => "done",
                (Some(_), None) if r.outcome.is_some() || failed_step == Some(index) => {
                    if r.outcome == Some(Outcome::Succeeded) {
                        "done"
                    } else {
                        "failed"
                    }
                }
                (Some(_), None) if r.paused.is_some() && current == Some(index) => "paused",
                (Some(_), None) => "current",
                (None, _) if r.outcome.is_some() => "skipped",
                (None, _) => "pending",
            };
            StepView {
                index,
                kind: p.kind,
                note: p.note,
                manual: p.manual,
                signed: p.signed,
                approvals_needed: p.approvals,
                approved_by: r
                    .approvals
                    .iter()
                    .filter(|a| a.step == index)
                    .map(|a| a.actor.user.clone())
                    .collect(),
                state,
                millis,
            }
        })
        .collect()
}

/// Every instance the journal or the layout knows, with its last recorded change, by zone (the
/// layout's zones in order of first appearance, then [`NO_ZONE`]).
fn zones(records: &[Record], layout: &Layout, last: Option<&RolloutSummary>) -> Vec<ZoneView> {
    let mut seen: BTreeMap<&str, InstanceView> = BTreeMap::new();
    for r in records {
        match &r.event {
            Event::InstanceChanging {
                instance, version, ..
            } => {
                let i = seen
                    .entry(instance)
                    .or_insert_with(|| unknown(instance, None));
                i.target = Some(version.clone());
                i.state = "switching";
                i.detail.clear();
            }
            Event::InstanceChanged {
                instance,
                version,
                ok,
                detail,
                ..
            } => {
                let i = seen
                    .entry(instance)
                    .or_insert_with(|| unknown(instance, None));
                i.version = Some(version.clone());
                i.target = None;
                i.state = if *ok { "healthy" } else { "failed" };
                i.detail.clone_from(detail);
            }
            _ => {}
        }
    }
    // Hosts the journal never saw change run what the last rollout started from.
    let before = last.and_then(|r| r.from.clone());
    let mut out: Vec<ZoneView> = Vec::new();
    let mut place = |zone: &str, inst: InstanceView| match out.iter_mut().find(|z| z.zone == zone) {
        Some(z) => z.instances.push(inst),
        None => out.push(ZoneView {
            zone: zone.to_string(),
            kind: "zone",
            version: None,
            instances: vec![inst],
        }),
    };
    for (name, zone) in &layout.hosts {
        let inst = seen
            .remove(name.as_str())
            .unwrap_or_else(|| unknown(name, before.clone()));
        place(zone, inst);
    }
    for (_, inst) in seen {
        place(NO_ZONE, inst);
    }
    out
}

fn unknown(name: &str, version: Option<String>) -> InstanceView {
    InstanceView {
        name: name.to_string(),
        state: if version.is_some() {
            "healthy"
        } else {
            "unknown"
        },
        version,
        target: None,
        detail: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Actor;

    fn rec(at_ms: u64, event: Event) -> Record {
        Record { at_ms, event }
    }

    fn started(id: &str, from: Option<&str>, to: &str, steps: usize) -> Event {
        Event::Started {
            rollout: id.into(),
            from: from.map(Into::into),
            to: to.into(),
            strategy: crate::state::StrategyKind::Canary,
            actor: ana(),
            steps,
        }
    }

    fn ana() -> Actor {
        Actor {
            user: "ana".into(),
            host: "box".into(),
            ci: None,
            client: None,
            signed: None,
            kubernetes: None,
        }
    }

    fn step(id: &str, step: usize, kind: &str) -> Event {
        Event::StepStarted {
            rollout: id.into(),
            step,
            kind: serde_json::from_value(serde_json::json!(kind)).unwrap(),
            note: format!("note {step}"),
        }
    }

    fn changing(id: &str, instance: &str, version: &str) -> Event {
        Event::InstanceChanging {
            rollout: id.into(),
            instance: instance.into(),
            version: version.into(),
        }
    }

    fn changed(id: &str, instance: &str, version: &str, ok: bool) -> Event {
        Event::InstanceChanged {
            rollout: id.into(),
            instance: instance.into(),
            version: version.into(),
            ok,
            detail: if ok { "" } else { "health 500" }.into(),
        }
    }

    fn layout() -> Layout {
        let planned = |kind: &str, manual| PlannedStep {
            kind: kind.into(),
            note: String::new(),
            manual,
            signed: false,
            approvals: if manual { 2 } else { 0 },
        };
        Layout {
            steps: vec![
                planned("scale", false),
                planned("pause", true),
                planned("scale", false),
            ],
            hosts: [("h1", "a"), ("h2", "b"), ("h3", "c"), ("h4", "a")]
                .iter()
                .map(|(h, z)| (h.to_string(), z.to_string()))
                .collect(),
            ..Layout::default()
        }
    }

    type Seen = (String, Option<String>, &'static str);

    fn zone_versions(v: &AppView) -> Vec<(String, Vec<Seen>)> {
        v.zones
            .iter()
            .map(|z| {
                (
                    z.zone.clone(),
                    z.instances
                        .iter()
                        .map(|i| (i.name.clone(), i.version.clone(), i.state))
                        .collect(),
                )
            })
            .collect()
    }

    #[test]
    fn a_paused_canary_shows_its_instances_by_zone_and_the_pause_as_the_current_step() {
        let r = "web-1";
        let records = vec![
            rec(1, started(r, Some("1"), "2", 3)),
            rec(2, step(r, 0, "scale")),
            rec(3, changing(r, "h1", "2")),
            rec(4, changed(r, "h1", "2", true)),
            rec(5, changing(r, "h2", "2")),
            rec(
                6,
                Event::StepDone {
                    rollout: r.into(),
                    step: 0,
                    millis: 40,
                },
            ),
            rec(7, step(r, 1, "pause")),
            rec(
                8,
                Event::Paused {
                    rollout: r.into(),
                    step: 1,
                    reason: "waiting".into(),
                },
            ),
            // One of two approvals so far.
            rec(
                9,
                Event::Promoted {
                    rollout: r.into(),
                    step: 1,
                    actor: ana(),
                    full: false,
                },
            ),
        ];
        let v = view("web", &records, &layout());
        assert_eq!(v.state, "paused");
        let states: Vec<_> = v.steps.iter().map(|s| s.state).collect();
        assert_eq!(states, ["done", "paused", "pending"]);
        assert!(v.steps[1].manual);
        assert_eq!(v.steps[1].approvals_needed, 2);
        assert_eq!(v.steps[1].approved_by, ["ana"]);
        assert!(v.steps[0].approved_by.is_empty());
        assert_eq!(v.steps[0].millis, Some(40));
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            zone_versions(&v),
            [
                (
                    "a".to_string(),
                    vec![
                        ("h1".to_string(), s("2"), "healthy"),
                        ("h4".to_string(), s("1"), "healthy")
                    ]
                ),
                ("b".to_string(), vec![("h2".to_string(), None, "switching")]),
                ("c".to_string(), vec![("h3".to_string(), s("1"), "healthy")]),
            ]
        );
        assert_eq!(v.zones[1].instances[0].target, s("2"));
    }

    #[test]
    fn a_failed_gate_marks_its_step_failed_and_the_rollback_restores_versions() {
        let r = "web-2";
        let records = vec![
            rec(1, started(r, Some("2"), "3", 3)),
            rec(2, step(r, 0, "scale")),
            rec(3, changing(r, "h1", "3")),
            rec(4, changed(r, "h1", "3", false)),
            rec(
                5,
                Event::Gate {
                    rollout: r.into(),
                    step: 0,
                    check: "health".into(),
                    passed: false,
                    detail: "500".into(),
                    measurements: vec![],
                },
            ),
            rec(
                6,
                Event::RollbackStarted {
                    rollout: r.into(),
                    reason: "health failed".into(),
                    to: "2".into(),
                },
            ),
            rec(7, changing(r, "h1", "2")),
            rec(8, changed(r, "h1", "2", true)),
            rec(
                9,
                Event::Finished {
                    rollout: r.into(),
                    outcome: Outcome::RolledBack,
                    detail: "health failed".into(),
                },
            ),
        ];
        let v = view("web", &records, &layout());
        assert_eq!(v.state, "rolledBack");
        let states: Vec<_> = v.steps.iter().map(|s| s.state).collect();
        assert_eq!(states, ["failed", "skipped", "skipped"]);
        assert_eq!(v.gates.len(), 1);
        assert!(!v.gates[0].passed);
        assert_eq!(v.gates[0].check, "health");
        let h1 = &v.zones[0].instances[0];
        assert_eq!(
            (h1.version.as_deref(), h1.state),
            (Some("2"), "healthy"),
            "{h1:?}"
        );
        assert!(v.rollout.unwrap().rollback.unwrap().contains("to 2"));
    }

    #[test]
    fn without_a_matching_layout_steps_come_from_the_journal_and_instances_have_no_zone() {
        let r = "web-3";
        let records = vec![
            rec(1, started(r, None, "1", 2)),
            rec(2, step(r, 0, "scale")),
            rec(3, changed(r, "pod-x", "1", true)),
        ];
        let v = view("web", &records, &Layout::default());
        assert_eq!(v.steps.len(), 2);
        assert_eq!(
            (v.steps[0].kind.as_str(), v.steps[0].state),
            ("scale", "current")
        );
        assert_eq!(
            (v.steps[1].kind.as_str(), v.steps[1].state),
            ("step", "pending")
        );
        assert_eq!(v.zones.len(), 1);
        assert_eq!(v.zones[0].zone, NO_ZONE);
        assert_eq!(v.records, 3);
    }

    #[test]
    fn an_app_without_rollouts_is_empty() {
        let v = view("web", &[], &layout());
        assert_eq!(v.state, "none");
        assert!(v.steps.is_empty());
        assert!(v.rollout.is_none());
        // Its hosts are listed, versions unknown.
        assert_eq!(v.zones.iter().map(|z| z.instances.len()).sum::<usize>(), 4);
        assert!(
            v.zones
                .iter()
                .all(|z| z.instances.iter().all(|i| i.state == "unknown"))
        );
    }

    fn k8s_layout() -> Layout {
        Layout {
            deployment: Some("web".into()),
            conditions: [("errors".to_string(), "result[0] <= 0.05".to_string())].into(),
            ..Layout::default()
        }
    }

    fn groups(v: &AppView) -> Vec<(String, Option<String>, Vec<&'static str>)> {
        v.zones
            .iter()
            .map(|z| {
                assert_eq!(z.kind == "stable", z.zone == "web", "{z:?}");
                (
                    z.zone.clone(),
                    z.version.clone(),
                    z.instances.iter().map(|i| i.state).collect(),
                )
            })
            .collect()
    }

    fn changed_detail(id: &str, instance: &str, version: &str, detail: &str) -> Event {
        Event::InstanceChanged {
            rollout: id.into(),
            instance: instance.into(),
            version: version.into(),
            ok: true,
            detail: detail.into(),
        }
    }

    #[test]
    fn pods_are_grouped_by_replica_set_with_the_counts_the_kubernetes_target_journals() {
        let r = "web-4";
        // As target/kubernetes/sizes.rs journals a canary's first step: the new ReplicaSet, then
        // how many of its pods are available and how many stable ones are left.
        let mut records = vec![
            rec(1, started(r, Some("v1"), "v2", 3)),
            rec(2, step(r, 0, "scale")),
            rec(3, changing(r, "web-7d9f6c5b8", "v2")),
        ];
        let v = view("web", &records, &k8s_layout());
        assert_eq!(
            groups(&v),
            [
                ("web".into(), Some("v1".into()), vec!["healthy"]),
                ("web-7d9f6c5b8".into(), Some("v2".into()), vec!["switching"]),
            ]
        );
        assert_eq!(v.zones[0].instances[0].detail, "stable, count unknown");
        records.push(rec(
            4,
            changed_detail(r, "web-7d9f6c5b8", "v2", "1 of v2 available, 3 old"),
        ));
        let v = view("web", &records, &k8s_layout());
        assert_eq!(
            groups(&v),
            [
                ("web".into(), Some("v1".into()), vec!["healthy"; 3]),
                ("web-7d9f6c5b8".into(), Some("v2".into()), vec!["healthy"]),
            ]
        );
        // Promoted to all four: no stable pod is left.
        records.push(rec(
            5,
            changed_detail(r, "web-7d9f6c5b8", "v2", "4 of v2 available, 0 old"),
        ));
        let v = view("web", &records, &k8s_layout());
        assert_eq!(
            groups(&v),
            [(
                "web-7d9f6c5b8".into(),
                Some("v2".into()),
                vec!["healthy"; 4]
            )]
        );
        assert_eq!(v.zones[0].instances[3].name, "web-7d9f6c5b8/4");
    }

    #[test]
    fn a_restored_deployment_replaces_the_new_replica_sets_pods() {
        let r = "web-5";
        let records = vec![
            rec(1, started(r, Some("v1"), "v3", 3)),
            rec(2, step(r, 0, "scale")),
            rec(3, changing(r, "web-55c8", "v3")),
            rec(
                4,
                changed_detail(r, "web-55c8", "v3", "1 of v3 available, 3 old"),
            ),
            rec(5, changing(r, "web", "v1")),
            rec(6, changed_detail(r, "web", "v1", "4 of v1 available")),
        ];
        let v = view("web", &records, &k8s_layout());
        assert_eq!(
            groups(&v),
            [("web".into(), Some("v1".into()), vec!["healthy"; 4])]
        );
    }

    #[test]
    fn recorded_counts_are_the_steps_pod_counts_of_the_rollout() {
        let r = "web-7";
        let records = vec![
            rec(1, started(r, Some("v1"), "v2", 4)),
            rec(2, step(r, 0, "scale")),
            rec(3, changing(r, "web-9f", "v2")),
            rec(
                4,
                changed_detail(r, "web-9f", "v2", "1 of v2 available, 3 old"),
            ),
            rec(5, step(r, 1, "pause")),
            rec(6, step(r, 2, "scale")),
            rec(
                7,
                changed_detail(r, "web-9f", "v2", "2 of v2 available, 2 old"),
            ),
            rec(
                8,
                changed_detail("other-1", "web-9f", "v2", "4 of v2 available, 0 old"),
            ),
        ];
        assert_eq!(
            recorded_counts(&records, r),
            (4, vec![(0, 3, 1), (2, 2, 2)])
        );
    }

    #[test]
    fn pod_counts_reads_both_details_the_kubernetes_target_writes() {
        assert_eq!(pod_counts("2 of v2 available, 1 old"), Some((2, Some(1))));
        assert_eq!(pod_counts("4 of 1.0.0 available"), Some((4, None)));
        assert_eq!(pod_counts("pod web-1 of v2: CrashLoopBackOff"), None);
        assert_eq!(pod_counts(""), None);
    }

    #[test]
    fn a_metric_gate_carries_its_measurements_and_the_success_condition_as_a_line() {
        let r = "web-6";
        let sample = |at_ms, value| Sample {
            at_ms,
            value: Some(value),
            outcome: "success".into(),
        };
        let records = vec![
            rec(1, started(r, Some("v1"), "v2", 3)),
            rec(2, step(r, 0, "scale")),
            rec(
                3,
                Event::Gate {
                    rollout: r.into(),
                    step: 0,
                    check: "errors".into(),
                    passed: true,
                    detail: "on the rollout".into(),
                    measurements: vec![sample(10, 0.01), sample(20, 0.02), sample(30, 0.0)],
                },
            ),
        ];
        let v = view("web", &records, &k8s_layout());
        assert_eq!(v.gates.len(), 1);
        assert_eq!(v.gates[0].measurements.len(), 3);
        assert_eq!(v.gates[0].threshold, Some(("<=", 0.05)));
        assert_eq!(v.gates[0].condition.as_deref(), Some("result[0] <= 0.05"));
    }
}
