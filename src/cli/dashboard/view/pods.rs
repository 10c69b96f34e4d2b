//! PURE: a Kubernetes rollout's pods by ReplicaSet, from what its target journals.

use super::{InstanceView, ZoneView};
use crate::state::{Event, Record, RolloutSummary};

/// The pods of a Kubernetes rollout, by ReplicaSet, as far as the journal knows them. The journal
/// names no pod: a Kubernetes target journals each ReplicaSet it grows (its name, its version, and
/// on arrival how many of its pods are available and how many stable ones are left), and the
/// Deployment itself when a rollback restores it. So each ReplicaSet the last rollout changed is a
/// group with one cell per available pod, and the stable pods are a group under the Deployment's
/// name with the rollout's `from` version and the last stable count recorded.
pub(super) fn replica_sets(
    records: &[Record],
    deployment: &str,
    last: Option<&RolloutSummary>,
) -> Vec<ZoneView> {
    let Some(last) = last else {
        return Vec::new();
    };
    // (name, version, state, detail, pods available), in order of first appearance.
    let mut sets: Vec<(String, String, &'static str, String, Option<u32>)> = Vec::new();
    let mut stable: Option<u32> = None;
    for r in records.iter().filter(|r| r.event.rollout() == last.id) {
        let (instance, version, state, detail) = match &r.event {
            Event::InstanceChanging {
                instance, version, ..
            } => (instance, version, "switching", ""),
            Event::InstanceChanged {
                instance,
                version,
                ok,
                detail,
                ..
            } => (
                instance,
                version,
                if *ok { "healthy" } else { "failed" },
                detail.as_str(),
            ),
            _ => continue,
        };
        let counts = pod_counts(detail);
        if let Some((_, Some(old))) = counts {
            stable = Some(old);
        }
        let i = match sets.iter().position(|s| &s.0 == instance) {
            Some(i) => i,
            None => {
                sets.push((
                    instance.clone(),
                    version.clone(),
                    state,
                    String::new(),
                    None,
                ));
                sets.len() - 1
            }
        };
        let s = &mut sets[i];
        s.1.clone_from(version);
        s.2 = state;
        s.3 = detail.to_string();
        if let Some((new, _)) = counts {
            s.4 = Some(new);
        }
    }
    let cells = |name: &str, version: Option<&str>, state: &'static str, detail: &str, n: u32| {
        (1..=n.max(1))
            .map(|k| InstanceView {
                name: format!("{name}/{k}"),
                version: (state != "switching" || n > 0)
                    .then(|| version.map(str::to_string))
                    .flatten(),
                target: (state == "switching")
                    .then(|| version.map(str::to_string))
                    .flatten(),
                state,
                detail: detail.to_string(),
            })
            .collect::<Vec<_>>()
    };
    let mut out = Vec::new();
    // The stable pods, unless the Deployment itself is in the journal (a rollback restored it).
    if !sets.iter().any(|s| s.0 == deployment) && stable != Some(0) {
        let state = if last.from.is_some() {
            "healthy"
        } else {
            "unknown"
        };
        out.push(ZoneView {
            zone: deployment.to_string(),
            kind: "stable",
            version: last.from.clone(),
            instances: match stable {
                Some(n) => cells(deployment, last.from.as_deref(), state, "stable", n),
                None => cells(
                    deployment,
                    last.from.as_deref(),
                    state,
                    "stable, count unknown",
                    1,
                ),
            },
        });
    }
    // A rollback that restored the Deployment scaled the new sets down: the healthy ones are gone.
    let restored = sets.iter().any(|s| s.0 == deployment && s.2 == "healthy");
    for (name, version, state, detail, pods) in sets {
        let gone = restored && name != deployment;
        if state == "healthy" && (pods == Some(0) || gone) {
            continue;
        }
        out.push(ZoneView {
            instances: cells(&name, Some(&version), state, &detail, pods.unwrap_or(0)),
            kind: if name == deployment {
                "stable"
            } else {
                "replicaSet"
            },
            zone: name,
            version: Some(version),
        });
    }
    out
}

/// The pod counts in a Kubernetes target's instance detail: `N of V available` and, while stable
/// pods are left, `, M old` (written by `target/kubernetes/sizes.rs` and `restore.rs`).
pub fn pod_counts(detail: &str) -> Option<(u32, Option<u32>)> {
    let (new, rest) = detail.split_once(" of ")?;
    let new = new.parse().ok()?;
    let old = rest
        .rsplit_once(" available, ")
        .and_then(|(_, old)| old.strip_suffix(" old"))
        .and_then(|n| n.parse().ok());
    if !rest.contains(" available") {
        return None;
    }
    Some((new, old))
}

/// The steps a Kubernetes rollout's journal says it planned, and the (step, old, new) pod counts it
/// recorded when a step's ReplicaSets arrived: what its plan must agree with.
pub fn recorded_counts(records: &[Record], rollout: &str) -> (usize, Vec<(usize, u32, u32)>) {
    let mut total = 0;
    let mut step = None;
    let mut counts = Vec::new();
    for r in records.iter().filter(|r| r.event.rollout() == rollout) {
        match &r.event {
            Event::Started { steps, .. } => total = *steps,
            Event::StepStarted { step: s, .. } => step = Some(*s),
            Event::RollbackStarted { .. } => step = None,
            Event::InstanceChanged {
                ok: true, detail, ..
            } => {
                if let (Some(s), Some((new, Some(old)))) = (step, pod_counts(detail)) {
                    counts.push((s, old, new));
                }
            }
            _ => {}
        }
    }
    (total, counts)
}
