//! Canary: setWeight, pause and analysis steps, with Argo Rollouts' basic-canary counts.

use crate::plan::{Bounds, Step, StepKind, transition};
use crate::spec::CanaryStep;

/// Stable and canary counts for `weight` percent of `n`: the achievable split closest to the weight,
/// with at least one canary whenever 0 < weight < 100. Totals up to `n + max_surge` are considered,
/// so surge buys a closer split; ties go to the smaller total. `at` is the current split: the result
/// never has fewer canaries or more stable instances than it, so counts only move forwards.
pub fn counts_for_weight(n: u32, weight: u32, max_surge: u32, at: (u32, u32)) -> (u32, u32) {
    if n == 0 || weight >= 100 {
        return (0, n);
    }
    if weight == 0 {
        return at;
    }
    let w = u64::from(weight);
    let (at_stable, at_canary) = (u64::from(at.0), u64::from(at.1));
    let mut best: Option<(u64, u64, u64, u64)> = None; // (error numerator, total, stable, canary)
    let extra = max_surge.min(n);
    for total in n..=n + extra {
        let t = u64::from(total);
        // Nearest canary count, half rounding up, kept inside 1..=t-1 where possible...
        let mut c = ((w * t + 50) / 100).clamp(1, t.saturating_sub(1).max(1));
        // ...and never behind the current split, nor more than n of either version.
        c = c
            .max(at_canary)
            .max(t.saturating_sub(at_stable))
            .max(t.saturating_sub(u64::from(n)));
        if c > u64::from(n) || c > t {
            continue;
        }
        let err = (c * 100).abs_diff(w * t);
        // Compare err/t across totals without floating point.
        let better = match best {
            None => true,
            Some((be, bt, ..)) => u128::from(err) * u128::from(bt) < u128::from(be) * u128::from(t),
        };
        if better {
            best = Some((err, t, t - c, c));
        }
    }
    match best {
        Some((_, _, stable, canary)) => (stable as u32, canary as u32),
        None => (0, n),
    }
}

pub fn steps(n: u32, bounds: Bounds, spec: &[CanaryStep]) -> Vec<Step> {
    let mut out = Vec::new();
    let mut at = (n, 0);
    let mut weight = 0;
    for step in spec {
        if let Some(w) = step.set_weight {
            weight = w;
            let to = counts_for_weight(n, w, bounds.max_surge, at);
            let before = out.len();
            transition(n, bounds, at, to, Some(w), &mut out);
            if out.len() == before {
                let mut hold = Step::hold(
                    StepKind::Scale,
                    at.0,
                    at.1,
                    format!("canary weight {w}% (no change in counts)"),
                );
                hold.weight = Some(w);
                out.push(hold);
            }
            at = to;
        } else if let Some(p) = &step.pause {
            let mut s = Step::hold(StepKind::Pause, at.0, at.1, "");
            s.weight = Some(weight);
            s.approvals = p.approvals;
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
    if at != (0, n) || out.is_empty() {
        let before = out.len();
        transition(n, bounds, at, (0, n), Some(100), &mut out);
        if out.len() == before {
            out.push(Step::hold(StepKind::Scale, 0, n, "all new"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_round_to_the_nearest_count() {
        assert_eq!(counts_for_weight(10, 10, 0, (10, 0)), (9, 1));
        assert_eq!(counts_for_weight(10, 25, 0, (10, 0)), (7, 3)); // 2.5 rounds half up
        assert_eq!(counts_for_weight(10, 50, 0, (10, 0)), (5, 5));
        assert_eq!(
            counts_for_weight(100_000, 1, 0, (100_000, 0)),
            (99_000, 1000)
        );
    }

    #[test]
    fn at_least_one_canary() {
        assert_eq!(counts_for_weight(10, 1, 0, (10, 0)), (9, 1));
        assert_eq!(counts_for_weight(1, 50, 0, (1, 0)), (0, 1));
        assert_eq!(counts_for_weight(1, 50, 1, (1, 0)), (1, 1));
        assert_eq!(counts_for_weight(3, 99, 0, (3, 0)), (1, 2));
    }

    #[test]
    fn surge_buys_a_closer_split() {
        // 20% of 4 is 0.8: one of four is 25%, one of five is exactly 20%.
        assert_eq!(counts_for_weight(4, 20, 1, (4, 0)), (4, 1));
        assert_eq!(counts_for_weight(4, 20, 0, (4, 0)), (3, 1));
    }

    #[test]
    fn counts_never_move_backwards() {
        // 44% of 451 with surge prefers a total of 475 (266 + 209); 46% would prefer 270 + 230.
        let first = counts_for_weight(451, 44, 49, (451, 0));
        let second = counts_for_weight(451, 46, 49, first);
        assert!(
            second.0 <= first.0 && second.1 >= first.1,
            "{first:?} -> {second:?}"
        );
    }
}
