//! Canary: setWeight, pause and analysis steps, with Argo Rollouts' basic-canary counts.

use crate::plan::{Bounds, Step, StepKind, transition};
use crate::spec::CanaryStep;
use crate::spec::traffic::Scale;

/// Stable and canary counts that `weight` percent of `n` settles at, as Argo Rollouts' basic canary
/// (`approximateWeightedCanaryStableReplicaCounts`) computes them: the canary count is ⌈n·w/100⌉ or
/// ⌊n·w/100⌋, over a total of n or, when `max_surge` > 0, n + 1; the option closest to the weight
/// wins, earlier options on a tie. Between 1% and 99% neither version drops to 0, except that one
/// instance without surge goes to whichever version the weight is closer to.
///
/// One deliberate difference: where Argo finds no option (a tie at n − ½ without surge, like 95% of
/// 10 or 75% of 2) it returns 0 canaries; this returns n − 1 canaries and 1 stable instance.
pub fn counts_for_weight(n: u32, weight: u32, max_surge: u32) -> (u32, u32) {
    if n == 0 {
        return (0, 0);
    }
    let weight = weight.min(100);
    let (n64, w) = (u64::from(n), u64::from(weight));
    let ceil = (n64 * w).div_ceil(100);
    let floor = n64 * w / 100;
    let zero_allowed = weight == 100 || weight == 0 || (n == 1 && max_surge == 0);
    let mut options: Vec<(u64, u64)> = Vec::with_capacity(4); // (canary, total)
    if ceil < n64 || zero_allowed {
        options.push((ceil, n64));
    }
    if !tied(n64, w) && (floor != 0 || zero_allowed) {
        options.push((floor, n64));
    }
    if max_surge > 0 {
        options.push((ceil, n64 + 1));
        if !tied(n64 + 1, w) && (floor != 0 || zero_allowed) {
            options.push((floor, n64 + 1));
        }
    }
    let best = options
        .iter()
        .copied()
        .reduce(|best, o| {
            if delta(w, o) < delta(w, best) {
                o
            } else {
                best
            }
        })
        // Argo returns (0 canaries, n stable) here; the tie at n − ½ goes to n − 1 canaries.
        .unwrap_or((n64 - 1, n64));
    let (canary, total) = best;
    ((total - canary) as u32, canary as u32)
}

/// Whether `total`·w/100 lies exactly halfway between two counts. Computed in f64 as Argo does
/// (`math.Modf`), so the same inputs tie the same way.
fn tied(total: u64, w: u64) -> bool {
    (total as f64 * (w as f64 / 100.0)).fract() == 0.5
}

/// How far `canary` of `total` is from the weight, in percentage points, computed as Argo does.
fn delta(w: u64, (canary, total): (u64, u64)) -> f64 {
    ((canary * 100) as f64 / total as f64 - w as f64).abs()
}

/// How a canary's steps are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mode {
    /// Host fleets, whose hosts are never switched back to the stable version mid-rollout: counts
    /// never move back; a lower weight after a higher one keeps the current split, and a note says so.
    pub forward_only: bool,
    /// `trafficRouting`: a router splits traffic by each setWeight, and the counts follow the
    /// weight or a `setCanaryScale`.
    pub routed: bool,
}

/// Stable and canary counts under a `setCanaryScale`: a fixed count or a percentage of N for the
/// canary, the stable version at N as far as maxSurge allows (the router, not the counts, splits
/// traffic); or the weight's counts, as without a router.
pub fn counts_for_scale(n: u32, weight: u32, max_surge: u32, scale: Scale) -> (u32, u32) {
    let canary = match scale {
        Scale::MatchTrafficWeight => return counts_for_weight(n, weight, max_surge),
        Scale::Replicas(r) => r.min(n),
        Scale::Percent(p) => (u64::from(n) * u64::from(p.min(100))).div_ceil(100) as u32,
    };
    let stable = n.min(n.saturating_add(max_surge).saturating_sub(canary));
    // The stable Service keeps an instance while it has a share of traffic.
    if stable == 0 && weight < 100 && n > 0 {
        return (1, n - 1);
    }
    (stable, canary)
}

/// The steps of a canary (see [`Mode`]).
pub fn steps(
    n: u32,
    bounds: Bounds,
    spec: &[CanaryStep],
    mode: Mode,
    notes: &mut Vec<String>,
) -> Vec<Step> {
    let mut out = Vec::new();
    let mut at = (n, 0);
    let mut weight = 0;
    let mut scale = Scale::MatchTrafficWeight;
    let mut held = Vec::new();
    for step in spec {
        let w = match (step.set_weight, step.set_canary_scale) {
            (Some(w), _) => w,
            (None, Some(s)) if mode.routed => {
                scale = s.scale();
                weight
            }
            _ => {
                push_hold(step, at, weight, &mut out);
                continue;
            }
        };
        let routes = step.set_weight.is_some() && mode.routed;
        weight = w;
        let mut to = counts_for_scale(n, w, bounds.max_surge, scale);
        if mode.forward_only && (to.0 > at.0 || to.1 < at.1) {
            held.push(format!("{w}%"));
            to = (to.0.min(at.0), to.1.max(at.1));
        }
        let before = out.len();
        transition(n, bounds, at, to, Some(w), &mut out);
        if out.len() == before && (routes || !mode.routed) {
            let what = if mode.routed {
                "no change in replicas"
            } else {
                "no change in counts"
            };
            let mut hold = Step::hold(
                StepKind::Scale,
                at.0,
                at.1,
                format!("canary weight {w}% ({what})"),
            );
            hold.weight = Some(w);
            out.push(hold);
        }
        if mode.routed && out.len() > before {
            for s in &mut out[before..] {
                s.note = match routes {
                    true => format!("canary {} replicas, traffic {w}% after", s.new),
                    false => format!("canary scale: {} replicas", s.new),
                };
            }
            if routes {
                let last = out.last_mut().expect("a step was pushed");
                last.traffic_weight = Some(w);
                last.note = format!("traffic {w}% to canary ({} replicas)", last.new);
            }
        }
        at = to;
    }
    if !held.is_empty() {
        notes.push(format!(
            "hosts do not scale a canary back: at {} (below an earlier weight) the canary keeps its instances",
            held.join(", ")
        ));
    }
    if at != (0, n) || out.is_empty() {
        let before = out.len();
        transition(n, bounds, at, (0, n), Some(100), &mut out);
        if out.len() == before {
            out.push(Step::hold(StepKind::Scale, 0, n, "all new"));
        }
        if mode.routed {
            for s in &mut out[before..] {
                s.note = format!(
                    "canary {} replicas, traffic {weight}% until the last",
                    s.new
                );
            }
            let last = out.last_mut().expect("a step was pushed");
            last.traffic_weight = Some(100);
            last.weight = Some(100);
            last.note = "traffic 100% to canary, then all new".into();
        }
    }
    out
}

/// A pause or analysis step at the counts `at` and the weight in force.
fn push_hold(step: &CanaryStep, at: (u32, u32), weight: u32, out: &mut Vec<Step>) {
    if let Some(p) = &step.pause {
        let mut s = Step::hold(StepKind::Pause, at.0, at.1, "");
        s.weight = Some(weight);
        s.approvals = p.approvals;
        s.approvers = p.approvers.clone();
        s.allow_self_approval = p.allow_self_approval;
        match p.duration {
            Some(d) if p.approvals == 0 => {
                s.duration_seconds = Some(d.0.as_secs());
                s.note = format!("pause {d}");
            }
            _ => {
                s.manual = true;
                s.duration_seconds = p.duration.map(|d| d.0.as_secs());
                s.note = match p.approvals {
                    0 => "pause until promoted".into(),
                    k => format!("pause until {k} people approve"),
                };
            }
        }
        out.push(s);
    } else if let Some(a) = &step.analysis {
        let mut s = Step::hold(StepKind::Analysis, at.0, at.1, "analysis");
        s.weight = Some(weight);
        s.checks = a.checks.clone();
        out.push(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::PauseSpec;

    #[test]
    fn weights_settle_at_the_closest_split_over_n_or_n_plus_one() {
        assert_eq!(counts_for_weight(10, 10, 0), (9, 1));
        // 2.5 of 10 is a tie: the first option, ⌈2.5⌉ of 10, wins.
        assert_eq!(counts_for_weight(10, 25, 0), (7, 3));
        assert_eq!(counts_for_weight(10, 50, 0), (5, 5));
        assert_eq!(counts_for_weight(100_000, 1, 0), (99_000, 1000));
        // Surge buys a closer split, one instance over N at most, whatever maxSurge is.
        assert_eq!(counts_for_weight(10, 25, 3), (8, 3));
        assert_eq!(counts_for_weight(4, 20, 1), (4, 1));
        assert_eq!(counts_for_weight(4, 20, 0), (3, 1));
    }

    #[test]
    fn one_instance_follows_argo() {
        // Without surge the single instance goes to the closer version...
        assert_eq!(counts_for_weight(1, 49, 0), (1, 0));
        assert_eq!(counts_for_weight(1, 50, 0), (0, 1));
        // ...with surge both run from 1% to 99%.
        assert_eq!(counts_for_weight(1, 1, 1), (1, 1));
        assert_eq!(counts_for_weight(1, 99, 1), (1, 1));
        assert_eq!(counts_for_weight(1, 100, 1), (0, 1));
    }

    #[test]
    fn a_tie_at_n_minus_a_half_keeps_one_stable_instance() {
        // Argo returns 0 canaries here (no option passes its filters); rollgate keeps n - 1.
        assert_eq!(counts_for_weight(10, 95, 0), (1, 9));
        assert_eq!(counts_for_weight(2, 75, 0), (1, 1));
        assert_eq!(counts_for_weight(5, 90, 0), (1, 4));
    }

    #[test]
    fn a_lower_weight_scales_the_canary_back() {
        let spec = |w: u32| CanaryStep {
            set_weight: Some(w),
            ..Default::default()
        };
        let pause = CanaryStep {
            pause: Some(PauseSpec::default()),
            ..Default::default()
        };
        let bounds = Bounds {
            max_surge: 3,
            max_unavailable: 0,
        };
        let plan = [spec(50), pause.clone(), spec(25), pause, spec(0)];
        let mut notes = Vec::new();
        let steps = steps(10, bounds, &plan, Mode::default(), &mut notes);
        assert!(notes.is_empty());
        let at = |steps: &[Step], w: u32| {
            let s = steps
                .iter()
                .rfind(|s| s.weight == Some(w) && s.kind == StepKind::Scale)
                .unwrap();
            (s.old, s.new)
        };
        assert_eq!(at(&steps, 50), (5, 5));
        assert_eq!(at(&steps, 25), (8, 3), "{steps:#?}");
        assert_eq!(at(&steps, 0), (10, 0), "{steps:#?}");
        assert!(
            steps
                .iter()
                .all(|s| s.min_available >= 10 && s.max_total <= 13)
        );
        assert!(!steps.iter().any(|s| s.note.contains("no change")));
        // Hosts hold the split instead, and the plan says so.
        let hosts = Mode {
            forward_only: true,
            routed: false,
        };
        let held = super::steps(10, bounds, &plan, hosts, &mut notes);
        assert_eq!(at(&held, 25), (5, 5), "{held:#?}");
        assert_eq!(at(&held, 0), (5, 5), "{held:#?}");
        assert!(notes[0].contains("at 25%, 0%"), "{notes:?}");
    }
}

#[cfg(test)]
mod routed {
    use super::*;
    use crate::spec::CanaryScale;

    fn weight(w: u32) -> CanaryStep {
        CanaryStep {
            set_weight: Some(w),
            ..Default::default()
        }
    }

    fn scale(s: CanaryScale) -> CanaryStep {
        CanaryStep {
            set_canary_scale: Some(s),
            ..Default::default()
        }
    }

    const ROUTED: Mode = Mode {
        forward_only: false,
        routed: true,
    };

    fn surge(s: u32) -> Bounds {
        Bounds {
            max_surge: s,
            max_unavailable: 0,
        }
    }

    /// (weight set, old, new) of every step that sets the router.
    fn traffic(steps: &[Step]) -> Vec<(u32, u32, u32)> {
        steps
            .iter()
            .filter_map(|s| s.traffic_weight.map(|w| (w, s.old, s.new)))
            .collect()
    }

    #[test]
    fn each_set_weight_sets_the_router_once_on_its_last_step() {
        let spec = [weight(1), weight(10), weight(50)];
        let steps = steps(10, surge(1), &spec, ROUTED, &mut Vec::new());
        assert_eq!(
            traffic(&steps),
            [(1, 10, 1), (10, 9, 1), (50, 5, 5), (100, 0, 10)],
            "{steps:#?}"
        );
        // Without a router no step sets one.
        let plain = super::steps(10, surge(1), &spec, Mode::default(), &mut Vec::new());
        assert!(traffic(&plain).is_empty());
    }

    #[test]
    fn a_canary_scale_fixes_the_replicas_whatever_the_weight() {
        let one = CanaryScale {
            replicas: Some(1),
            ..Default::default()
        };
        let spec = [scale(one), weight(5), weight(40), weight(90)];
        let steps = steps(10, surge(1), &spec, ROUTED, &mut Vec::new());
        // The stable version stays at N (maxSurge 1 makes room for the one canary).
        assert_eq!(
            traffic(&steps),
            [(5, 10, 1), (40, 10, 1), (90, 10, 1), (100, 0, 10)],
            "{steps:#?}"
        );
        // A percentage of N, rounded up; the stable version gives way beyond maxSurge.
        let fifth = CanaryScale {
            weight: Some(15),
            ..Default::default()
        };
        let steps = super::steps(
            10,
            surge(1),
            &[scale(fifth), weight(50)],
            ROUTED,
            &mut Vec::new(),
        );
        assert_eq!(traffic(&steps)[0], (50, 9, 2), "{steps:#?}");
        // matchTrafficWeight goes back to the weight's counts.
        let back = CanaryScale {
            match_traffic_weight: true,
            ..Default::default()
        };
        let steps = super::steps(
            10,
            surge(1),
            &[scale(one), weight(50), scale(back)],
            ROUTED,
            &mut Vec::new(),
        );
        let after: Vec<_> = steps.iter().map(|s| (s.old, s.new)).collect();
        assert!(after.contains(&(5, 5)), "{after:?}");
        assert_eq!(traffic(&steps)[0], (50, 10, 1));
    }

    #[test]
    fn the_router_moves_first_when_the_canary_shrinks_or_the_stable_is_gone() {
        let steps = steps(
            4,
            surge(1),
            &[weight(50), weight(25)],
            ROUTED,
            &mut Vec::new(),
        );
        let t: Vec<&Step> = steps
            .iter()
            .filter(|s| s.traffic_weight.is_some())
            .collect();
        assert!(!t[0].traffic_first(0), "up: after the pods");
        assert!(t[1].traffic_first(50), "down: before the pods go");
        assert!(t[2].traffic_first(25), "the last stable pods go: before");
        // A scale that leaves the stable version without an instance below 100% is never planned.
        let all = CanaryScale {
            replicas: Some(4),
            ..Default::default()
        };
        assert_eq!(counts_for_scale(4, 50, 0, all.scale()), (1, 3));
    }
}
