//! The planner: a strategy, an instance count and the target's capacity become ordered steps.
//!
//! Pure and total: no I/O, no clock, no async. Every step records the counts of old and new instances
//! once it is done, and the bounds that hold while it runs, so the plan can be checked before it runs.

mod checks;
mod rollback;

pub use checks::{Background, StepEnd};
pub use rollback::rollback_strategy;

use serde::Serialize;

use crate::spec::{IntOrPercent, Rounding, Strategy};
use crate::strategy;

/// The most instances (N) a plan is made for, and the largest count a bound may resolve to.
/// Beyond it a value is a typo, not a fleet; it also keeps every sum of counts far from
/// overflowing, though the planner saturates all the same.
pub const MAX_INSTANCES: u32 = 1_000_000;

/// How the target can hold instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capacity {
    /// Instances can be added freely (a Kubernetes Deployment).
    Elastic,
    /// A fleet of hosts with one slot each: a host is replaced in place, so surge cannot apply.
    InPlace,
    /// A fleet of hosts with two slots each: the new version starts beside the old one.
    TwoSlots,
}

/// maxSurge / maxUnavailable resolved to instance counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Bounds {
    pub max_surge: u32,
    pub max_unavailable: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StepKind {
    #[default]
    Scale,
    Pause,
    Analysis,
    Promote,
    Switch,
}

impl StepKind {
    /// The name the journal and `-o json` use.
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Scale => "scale",
            StepKind::Pause => "pause",
            StepKind::Analysis => "analysis",
            StepKind::Promote => "promote",
            StepKind::Switch => "switch",
        }
    }
}

impl std::fmt::Display for StepKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    pub kind: StepKind,
    /// Instances of the running version once the step is done.
    pub old: u32,
    /// Instances of the incoming version once the step is done.
    pub new: u32,
    /// The fewest ready instances while the step runs.
    pub min_available: u32,
    /// The most instances while the step runs.
    pub max_total: u32,
    /// The canary weight this step works towards, in percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// With `trafficRouting`: the canary's share of traffic the router gets at this step, in
    /// percent (the stable version gets the rest). See [`Step::traffic_first`] for when.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic_weight: Option<u32>,
    /// A timed pause, or the wait before an automatic promotion or a delayed scale-down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<u64>,
    /// A pause or promotion that waits for `rollgate promote`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub manual: bool,
    #[serde(skip_serializing_if = "is_zero")]
    pub approvals: u32,
    /// Who may approve, when approvals must be signed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approvers: Option<crate::spec::ApproversSpec>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub allow_self_approval: bool,
    /// Check names an analysis step runs; empty means all checks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<String>,
    /// What the step is for, in a few words.
    pub note: String,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl Step {
    /// A step that changes no counts (pause, analysis, promote, switch) at `(old, new)`.
    pub fn hold(kind: StepKind, old: u32, new: u32, note: impl Into<String>) -> Self {
        Step {
            kind,
            old,
            new,
            min_available: old.saturating_add(new),
            max_total: old.saturating_add(new),
            weight: None,
            traffic_weight: None,
            duration_seconds: None,
            manual: false,
            approvals: 0,
            approvers: None,
            allow_self_approval: false,
            checks: Vec::new(),
            note: note.into(),
        }
    }
}

impl Step {
    /// Whether the router's weight changes before the step's instances do: when it lowers the
    /// canary's share (traffic leaves instances before they go) or leaves no stable instance (the
    /// stable Service's last pods are going). Otherwise the weight follows once the step's new
    /// instances are ready, so traffic never reaches instances that are not there yet.
    pub fn traffic_first(&self, current: u32) -> bool {
        self.traffic_weight
            .is_some_and(|w| w < current || self.old == 0)
    }
}

/// A complete plan; its JSON form is a fixed contract.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub replicas: u32,
    pub strategy: &'static str,
    pub max_surge: u32,
    pub max_unavailable: u32,
    pub min_ready_seconds: u64,
    pub steps: Vec<Step>,
    /// A canary's background analysis: its checks and the step it starts at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub background: Option<Background>,
    /// Things the user should know about how the bounds were applied.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The manifest's maxSurge when hosts replaced in place cannot use it (the header says so).
    #[serde(skip)]
    pub unusable_surge: Option<String>,
}

/// A plan that cannot be made; `path` is the manifest field to blame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct PlanError {
    pub path: String,
    pub message: String,
}

pub type Result<T, E = PlanError> = std::result::Result<T, E>;

/// `ResolveFenceposts` of Kubernetes' `deployment_util.go`: surge = ⌈p·N/100⌉, unavailable =
/// ⌊p·N/100⌋, and if both come to 0, unavailable is 1. Not capped: see [`resolve_bounds`].
pub fn resolve_fenceposts(surge: IntOrPercent, unavailable: IntOrPercent, n: u32) -> (u32, u32) {
    let max_surge = surge.resolve(n, Rounding::Up);
    let mut max_unavailable = unavailable.resolve(n, Rounding::Down);
    if max_surge == 0 && max_unavailable == 0 {
        max_unavailable = 1;
    }
    (max_surge, max_unavailable)
}

/// Resolves the bounds exactly as Kubernetes does, then applies the target's capacity.
///
/// [`resolve_fenceposts`], then unavailable is capped at N as `MaxUnavailable` does (so N = 0
/// resolves to 0). Literal 0/0 and a maxUnavailable over 100% are rejected at validation, before
/// this is called.
pub fn resolve_bounds(
    surge: IntOrPercent,
    unavailable: IntOrPercent,
    n: u32,
    capacity: Capacity,
    path: &str,
    notes: &mut Vec<String>,
) -> Result<Bounds> {
    for (field, bound, rounding) in [
        ("maxSurge", surge, Rounding::Up),
        ("maxUnavailable", unavailable, Rounding::Down),
    ] {
        let resolved = bound.resolve(n, rounding);
        if resolved > MAX_INSTANCES {
            let how = match bound {
                IntOrPercent::Int(_) => String::new(),
                IntOrPercent::Percent(_) => format!(" (resolves to {resolved} of {n})"),
            };
            return Err(PlanError {
                path: format!("{path}.{field}"),
                message: format!("{bound}{how} is too large: at most {MAX_INSTANCES} instances"),
            });
        }
    }
    let (mut max_surge, max_unavailable) = resolve_fenceposts(surge, unavailable, n);
    let mut max_unavailable = max_unavailable.min(n);
    match capacity {
        Capacity::Elastic => {}
        Capacity::InPlace => {
            if unavailable.is_zero() {
                return Err(PlanError {
                    path: format!("{path}.maxUnavailable"),
                    message: "is 0, but hosts with slotsPerHost: 1 are replaced in place: set maxUnavailable to at least 1, or use slotsPerHost: 2".into(),
                });
            }
            let ignored = if max_surge > 0 {
                format!(", and maxSurge {surge} is not usable with one slot per host")
            } else {
                String::new()
            };
            max_surge = 0;
            if max_unavailable == 0 && n > 0 {
                max_unavailable = 1;
            }
            notes.push(format!(
                "slotsPerHost is 1: hosts are replaced in place, so each wave stops its old instances before it starts the new ones (remove-first, up to maxUnavailable {max_unavailable} at a time){ignored}"
            ));
        }
        Capacity::TwoSlots => {
            if max_surge > n {
                notes.push(format!("slotsPerHost is 2: at most one extra instance per host, so maxSurge is capped at {n}"));
                max_surge = n;
            }
        }
    }
    Ok(Bounds {
        max_surge,
        max_unavailable,
    })
}

/// Plans `strategy` for `n` instances on a target with `capacity`.
pub fn plan(strategy: &Strategy, n: u32, capacity: Capacity) -> Result<Plan> {
    if n > MAX_INSTANCES {
        return Err(PlanError {
            path: "spec.target".into(),
            message: format!("{n} instances is too many: at most {MAX_INSTANCES}"),
        });
    }
    let mut notes = Vec::new();
    let (bounds, min_ready_seconds, steps) = match strategy {
        Strategy::Rolling(r) => {
            let b = resolve_bounds(
                r.max_surge,
                r.max_unavailable,
                n,
                capacity,
                "spec.strategy.rolling",
                &mut notes,
            )?;
            (b, r.min_ready_seconds, strategy::rolling::steps(n, b))
        }
        Strategy::Canary(c) => {
            let b = resolve_bounds(
                c.max_surge,
                c.max_unavailable,
                n,
                capacity,
                "spec.strategy.canary",
                &mut notes,
            )?;
            (
                b,
                c.min_ready_seconds,
                strategy::canary::steps(
                    n,
                    b,
                    &c.steps,
                    strategy::canary::Mode {
                        forward_only: capacity != Capacity::Elastic,
                        routed: c.traffic_routing.is_some(),
                    },
                    &mut notes,
                ),
            )
        }
        Strategy::BlueGreen(bg) => {
            if capacity == Capacity::InPlace {
                return Err(PlanError {
                    path: "spec.strategy.blueGreen".into(),
                    message:
                        "needs room for both versions at once: use slotsPerHost: 2 on a host fleet"
                            .into(),
                });
            }
            if bg.preview_replica_count > MAX_INSTANCES {
                return Err(PlanError {
                    path: "spec.strategy.blueGreen.previewReplicaCount".into(),
                    message: format!(
                        "{} is too large: at most {MAX_INSTANCES}",
                        bg.preview_replica_count
                    ),
                });
            }
            let b = Bounds {
                max_surge: n,
                max_unavailable: 0,
            };
            (b, bg.min_ready_seconds, strategy::blue_green::steps(n, bg))
        }
    };
    if let Some(s) = steps.iter().filter(|_| n > 0).find(|s| {
        s.traffic_weight
            .is_some_and(|w| (w < 100 && s.old == 0) || (w > 0 && s.new == 0))
    }) {
        let w = s.traffic_weight.unwrap_or(0);
        return Err(PlanError {
            path: "spec.strategy.canary.steps".into(),
            message: format!(
                "setWeight {w} sends traffic to a version with no instance ({} stable, {} canary of {n}): raise maxSurge, or setCanaryScale",
                s.old, s.new
            ),
        });
    }
    let requested = match strategy {
        Strategy::Rolling(r) => Some(r.max_surge),
        Strategy::Canary(c) => Some(c.max_surge),
        Strategy::BlueGreen(_) => None,
    };
    let unusable_surge = requested
        .filter(|s| capacity == Capacity::InPlace && s.resolve(n, Rounding::Up) > 0)
        .map(|s| s.to_string());
    let background = match strategy {
        Strategy::Canary(c) => checks::background(c, &steps),
        _ => None,
    };
    Ok(Plan {
        unusable_surge,
        replicas: n,
        strategy: strategy.name(),
        max_surge: bounds.max_surge,
        max_unavailable: bounds.max_unavailable,
        min_ready_seconds,
        steps,
        background,
        notes,
    })
}

/// Moves from `(old, new)` to `(old_to, new_to)` in as few bounded scale steps as the bounds allow.
///
/// A step creates at most maxSurge + maxUnavailable instances (its wave). It uses surge before
/// unavailability: it removes instances before creating only the part of its wave that the surge
/// room (up to N + maxSurge) cannot hold, and never below N − maxUnavailable; once the created
/// instances are ready it removes the rest, down to the target but never below the target's total.
/// With no surge room (hosts replaced in place) that is remove-first; with room for the whole wave
/// nothing is removed before its replacement is ready, as Kubernetes' Deployment controller does.
pub fn transition(
    n: u32,
    bounds: Bounds,
    from: (u32, u32),
    to: (u32, u32),
    weight: Option<u32>,
    out: &mut Vec<Step>,
) {
    let floor = n.saturating_sub(bounds.max_unavailable);
    let cap = n.saturating_add(bounds.max_surge);
    let wave = cap - floor;
    let target_total = to.0.saturating_add(to.1);
    let (mut old, mut new) = from;
    while (old, new) != to {
        let start_total = old.saturating_add(new);
        // What this step creates: towards the target, at most one wave, and never so much that the
        // removals it needs would go below the floor.
        let missing =
            to.0.saturating_sub(old)
                .saturating_add(to.1.saturating_sub(new));
        let removable = old
            .saturating_sub(to.0)
            .saturating_add(new.saturating_sub(to.1));
        let room = cap.saturating_sub(start_total);
        let create = missing
            .min(wave)
            .min(room.saturating_add(removable.min(start_total.saturating_sub(floor))));
        // Phase A: remove, while everything is ready, only what the surge room cannot hold.
        let mut cut = create.saturating_sub(room);
        let cut_old = old.saturating_sub(to.0).min(cut);
        cut -= cut_old;
        let cut_new = new.saturating_sub(to.1).min(cut);
        let (old_a, new_a) = (old - cut_old, new - cut_new);
        // Phase B: create, new instances first.
        let add_new = to.1.saturating_sub(new_a).min(create);
        let add_old = to.0.saturating_sub(old_a).min(create - add_new);
        let (old_b, new_b) = (old_a.saturating_add(add_old), new_a.saturating_add(add_new));
        // Phase C: once created instances are ready, remove the rest while availability and the
        // target's total allow.
        let total_b = old_b.saturating_add(new_b);
        let keep = floor.max(target_total.min(total_b));
        let mut room = total_b.saturating_sub(keep);
        let cut_old = old_b.saturating_sub(to.0).min(room);
        room -= cut_old;
        let cut_new = new_b.saturating_sub(to.1).min(room);
        let (old_c, new_c) = (old_b - cut_old, new_b - cut_new);
        if (old_c, new_c) == (old, new) {
            // Cannot happen with maxSurge + maxUnavailable >= 1; guard against looping forever.
            debug_assert!(false, "no progress from {from:?} to {to:?} with {bounds:?}");
            break;
        }
        out.push(Step {
            kind: StepKind::Scale,
            old: old_c,
            new: new_c,
            min_available: old_a.saturating_add(new_a).min(old_c.saturating_add(new_c)),
            max_total: start_total.max(total_b),
            weight,
            traffic_weight: None,
            duration_seconds: None,
            manual: false,
            approvals: 0,
            approvers: None,
            allow_self_approval: false,
            checks: Vec::new(),
            note: match weight {
                Some(w) => format!("canary weight {w}%"),
                None => "replace a wave".into(),
            },
        });
        (old, new) = (old_c, new_c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{CanarySpec, CanaryStep, RollingSpec};

    fn rolling(s: IntOrPercent, u: IntOrPercent) -> Strategy {
        Strategy::Rolling(RollingSpec {
            max_surge: s,
            max_unavailable: u,
            min_ready_seconds: 0,
        })
    }

    fn counts(p: &Plan) -> Vec<(u32, u32)> {
        p.steps.iter().map(|s| (s.old, s.new)).collect()
    }

    #[test]
    fn bounds_resolve_like_kubernetes() {
        let mut notes = vec![];
        let b = resolve_bounds(
            IntOrPercent::Percent(25),
            IntOrPercent::Percent(25),
            10,
            Capacity::Elastic,
            "x",
            &mut notes,
        )
        .unwrap();
        assert_eq!(
            b,
            Bounds {
                max_surge: 3,
                max_unavailable: 2
            }
        );
        // Both round to zero: the fenceposts make unavailable 1, and MaxUnavailable caps it at
        // N, so N = 0 resolves to 0.
        let one = IntOrPercent::Percent(1);
        assert_eq!(resolve_fenceposts(one, one, 0), (0, 1));
        let b = resolve_bounds(one, one, 0, Capacity::Elastic, "x", &mut notes).unwrap();
        assert_eq!(
            b,
            Bounds {
                max_surge: 0,
                max_unavailable: 0
            }
        );
        let b = resolve_bounds(
            IntOrPercent::Int(0),
            IntOrPercent::Percent(10),
            5,
            Capacity::Elastic,
            "x",
            &mut notes,
        )
        .unwrap();
        assert_eq!(
            b,
            Bounds {
                max_surge: 0,
                max_unavailable: 1
            }
        );
        // Unavailable is capped at N.
        let b = resolve_bounds(
            IntOrPercent::Int(0),
            IntOrPercent::Int(50),
            4,
            Capacity::Elastic,
            "x",
            &mut notes,
        )
        .unwrap();
        assert_eq!(b.max_unavailable, 4);
    }

    #[test]
    fn zero_downtime_rolls_one_by_one() {
        let p = plan(
            &rolling(IntOrPercent::Int(1), IntOrPercent::Int(0)),
            3,
            Capacity::Elastic,
        )
        .unwrap();
        assert_eq!(counts(&p), vec![(2, 1), (1, 2), (0, 3)]);
        assert!(
            p.steps
                .iter()
                .all(|s| s.max_total == 4 && s.min_available == 3)
        );
    }

    #[test]
    fn surge_is_used_before_unavailability() {
        // Regression (issue 15): N = 1 with 1/1 planned a moment with nothing ready.
        let p = plan(
            &rolling(IntOrPercent::Int(1), IntOrPercent::Int(1)),
            1,
            Capacity::Elastic,
        )
        .unwrap();
        assert_eq!(counts(&p), vec![(0, 1)]);
        assert_eq!((p.steps[0].min_available, p.steps[0].max_total), (1, 2));
        // Regression (issue 15): 100%/100% planned a full outage.
        let full = IntOrPercent::Percent(100);
        let p = plan(&rolling(full, full), 4, Capacity::TwoSlots).unwrap();
        assert_eq!(counts(&p), vec![(0, 4)]);
        assert_eq!((p.steps[0].min_available, p.steps[0].max_total), (4, 8));
        // A wave that surge can hold removes nothing first; a larger one only the excess.
        let p = plan(
            &rolling(IntOrPercent::Int(3), IntOrPercent::Int(2)),
            7,
            Capacity::Elastic,
        )
        .unwrap();
        assert_eq!(counts(&p), vec![(2, 5), (0, 7)]);
        let bounds: Vec<_> = p
            .steps
            .iter()
            .map(|s| (s.min_available, s.max_total))
            .collect();
        assert_eq!(bounds, vec![(5, 10), (7, 9)]);
    }

    #[test]
    fn in_place_hosts_ignore_surge_and_say_so() {
        let p = plan(
            &rolling(IntOrPercent::Percent(25), IntOrPercent::Int(2)),
            6,
            Capacity::InPlace,
        )
        .unwrap();
        assert_eq!(p.max_surge, 0);
        assert_eq!(p.unusable_surge.as_deref(), Some("25%"));
        assert_eq!(counts(&p), vec![(4, 2), (2, 4), (0, 6)]);
        assert!(
            p.steps
                .iter()
                .all(|s| s.max_total == 6 && s.min_available == 4)
        );
        assert!(p.notes[0].contains("replaced in place"), "{:?}", p.notes);
        assert!(p.notes[0].contains("remove-first"), "{:?}", p.notes);
        assert!(
            p.notes[0].contains("maxSurge 25% is not usable with one slot per host"),
            "{:?}",
            p.notes
        );
        // Without a surge to ignore, plan still says the waves are remove-first.
        let p = plan(
            &rolling(IntOrPercent::Int(0), IntOrPercent::Int(2)),
            6,
            Capacity::InPlace,
        )
        .unwrap();
        assert!(p.notes[0].contains("remove-first"), "{:?}", p.notes);
        let err = plan(
            &rolling(IntOrPercent::Int(1), IntOrPercent::Int(0)),
            6,
            Capacity::InPlace,
        )
        .unwrap_err();
        assert!(err.message.contains("slotsPerHost: 1"), "{err}");
    }

    #[test]
    fn canary_counts_follow_weights() {
        let steps = vec![
            CanaryStep {
                set_weight: Some(10),
                ..Default::default()
            },
            CanaryStep {
                pause: Some(Default::default()),
                ..Default::default()
            },
            CanaryStep {
                set_weight: Some(50),
                ..Default::default()
            },
        ];
        let c = Strategy::Canary(CanarySpec {
            max_surge: IntOrPercent::Int(1),
            max_unavailable: IntOrPercent::Int(0),
            min_ready_seconds: 0,
            first_group: None,
            steps,
            analysis: None,
            traffic_routing: None,
        });
        let p = plan(&c, 10, Capacity::Elastic).unwrap();
        let c = counts(&p);
        assert_eq!(c[0], (9, 1));
        assert_eq!(p.steps[1].kind, StepKind::Pause);
        assert!(p.steps[1].manual);
        assert!(c.contains(&(5, 5)));
        assert_eq!(*c.last().unwrap(), (0, 10));
    }

    /// Regression (issue 20): `--replicas 3435973837` and `maxSurge: 4294967295` wrapped around in
    /// the bounds line; now they are input errors naming the field, and sums saturate.
    #[test]
    fn absurd_counts_are_refused_and_sums_never_wrap() {
        let huge = IntOrPercent::Int(u32::MAX);
        let err = plan(&rolling(huge, IntOrPercent::Int(0)), 10, Capacity::Elastic).unwrap_err();
        assert_eq!(err.path, "spec.strategy.rolling.maxSurge");
        assert!(err.message.contains("at most 1000000"), "{err}");
        let err = plan(
            &rolling(IntOrPercent::Int(1), IntOrPercent::Int(1_000_001)),
            10,
            Capacity::Elastic,
        )
        .unwrap_err();
        assert_eq!(err.path, "spec.strategy.rolling.maxUnavailable");
        let one = IntOrPercent::Int(1);
        let err = plan(&rolling(one, one), 3_435_973_837, Capacity::Elastic).unwrap_err();
        assert_eq!(err.path, "spec.target");
        let err = plan(
            &rolling(IntOrPercent::Percent(u32::MAX), one),
            MAX_INSTANCES,
            Capacity::Elastic,
        )
        .unwrap_err();
        assert!(err.message.contains("resolves to"), "{err}");
        // The largest accepted values plan without wrapping.
        let max = IntOrPercent::Int(MAX_INSTANCES);
        let p = plan(&rolling(max, max), MAX_INSTANCES, Capacity::Elastic).unwrap();
        assert_eq!(counts(&p), vec![(0, MAX_INSTANCES)]);
        assert_eq!(p.steps[0].max_total, 2 * MAX_INSTANCES);
        // The step arithmetic itself saturates, whatever it is given.
        let mut out = Vec::new();
        let b = Bounds {
            max_surge: u32::MAX,
            max_unavailable: u32::MAX,
        };
        transition(u32::MAX, b, (u32::MAX, 0), (0, u32::MAX), None, &mut out);
        assert_eq!(out.last().map(|s| (s.old, s.new)), Some((0, u32::MAX)));
        assert!(out.iter().all(|s| s.max_total == u32::MAX));
        assert_eq!(
            Step::hold(StepKind::Pause, u32::MAX, 5, "").max_total,
            u32::MAX
        );
    }

    #[test]
    fn zero_instances_is_one_empty_step() {
        let p = plan(
            &rolling(IntOrPercent::Percent(25), IntOrPercent::Percent(25)),
            0,
            Capacity::Elastic,
        )
        .unwrap();
        assert_eq!(counts(&p), vec![(0, 0)]);
    }
}
