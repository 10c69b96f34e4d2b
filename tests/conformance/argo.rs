//! Canary counts against Argo Rollouts' basic canary (`utils/replicaset/canary.go`): the rows of
//! `canary_test.go` that a plan can reach, each under its Argo name.
//!
//! `TestApproximateWeightedNewStableReplicaCounts` pins where each weight settles. For the rows of
//! `TestCalculateReplicaCountsForCanary` this file ports `CalculateReplicaCountsForBasicCanary`
//! (written for these tests from the Go source's behaviour), checks the port against the row, runs
//! it to rest with pods that become ready at once, and checks that the planner's transition from the
//! row's state ends where Argo does, never less available and never above N + maxSurge.
//!
//! Rows a plan cannot reach are left out: those with pods that are not available (a plan assumes
//! each step's pods become ready before the next), with older ReplicaSets, or with traffic routing,
//! setCanaryScale or minPodsPerReplicaSet (rollgate's canary has none of these).

use rollgate::plan::{Bounds, Capacity, resolve_bounds, transition};
use rollgate::spec::IntOrPercent;
use rollgate::strategy::canary::counts_for_weight;

use super::support::{BASE, plan_json};

/// A ReplicaSet as the Go tests give it: spec.replicas and status.availableReplicas.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rs {
    spec: i64,
    available: i64,
}

fn rs(spec: i64, available: i64) -> Rs {
    Rs { spec, available }
}

/// Argo's `resolveFenceposts` for a canary (the same rule as Kubernetes').
fn fenceposts(n: u32, surge: IntOrPercent, unavailable: IntOrPercent) -> (i64, i64) {
    let scale = |v: IntOrPercent, up: bool| -> i64 {
        match v {
            IntOrPercent::Int(i) => i64::from(i),
            IntOrPercent::Percent(p) => {
                let x = f64::from(p) * f64::from(n) / 100.0;
                (if up { x.ceil() } else { x.floor() }) as i64
            }
        }
    };
    let s = scale(surge, true);
    let mut u = scale(unavailable, false);
    if s == 0 && u == 0 {
        u = 1;
    }
    (s, u)
}

/// `GetReplicasForScaleDown`.
fn replicas_for_scale_down(rs: Rs, ignore_availability: bool) -> i64 {
    if rs.spec < rs.available || ignore_availability {
        rs.spec
    } else {
        rs.available
    }
}

/// `calculateScaleDownReplicaCount`.
fn scale_down_count(drain: Rs, desired: i64, scale_down: i64, count: i64) -> i64 {
    if drain.spec > desired {
        desired.max(drain.spec - scale_down)
    } else {
        count
    }
}

/// `adjustReplicaWithinLimits`: returns (drain count, adjust count).
fn within_limits(
    drain: Rs,
    adjust: Rs,
    mut drain_count: i64,
    mut adjust_count: i64,
    max_allowed: i64,
    min_available: i64,
) -> (i64, i64) {
    let over = (adjust_count + drain_count - max_allowed).max(0);
    let mut available = drain.available.min(drain_count);
    adjust_count -= over;
    available += adjust.available.min(adjust_count);
    let lost = (adjust.available - adjust_count).max(0);
    let short = (min_available - available).max(0);
    adjust_count += lost.min(short);
    drain_count -= (adjust_count + drain_count - max_allowed).max(0);
    (drain_count, adjust_count)
}

/// `CalculateReplicaCountsForBasicCanary` with a stable ReplicaSet distinct from the canary and no
/// older ReplicaSets; the desired counts are rollgate's (pinned to Argo's by the table below).
/// Returns (stable, canary).
fn basic_canary(
    n: u32,
    weight: u32,
    surge: IntOrPercent,
    unavailable: IntOrPercent,
    stable: Rs,
    canary: Rs,
) -> (i64, i64) {
    let (max_surge, max_unavailable) = fenceposts(n, surge, unavailable);
    let max_unavailable = if n == 0 {
        0
    } else {
        max_unavailable.min(i64::from(n))
    };
    let (desired_stable, desired_canary) = counts_for_weight(n, weight, max_surge as u32);
    let (desired_stable, desired_canary) = (i64::from(desired_stable), i64::from(desired_canary));
    let max_allowed = i64::from(n) + max_surge;
    let (mut stable_count, mut canary_count) = (stable.spec, canary.spec);
    let mut scale_up = max_allowed - (stable.spec + canary.spec);
    if stable.spec < desired_stable && scale_up > 0 {
        if stable.spec + scale_up < desired_stable {
            stable_count = stable.spec + scale_up;
            scale_up = 0;
        } else {
            stable_count = desired_stable;
            scale_up -= desired_stable - stable.spec;
        }
    }
    if canary.spec < desired_canary && scale_up > 0 {
        canary_count = (canary.spec + scale_up).min(desired_canary);
    }
    let min_available = i64::from(n) - max_unavailable;
    let increasing = desired_canary >= canary.spec;
    let to_scale_down =
        replicas_for_scale_down(canary, !increasing) + replicas_for_scale_down(stable, increasing);
    if to_scale_down <= min_available {
        return (stable_count, canary_count);
    }
    let scale_down = to_scale_down - min_available;
    if !increasing {
        canary_count = scale_down_count(canary, desired_canary, scale_down, canary_count);
        (canary_count, stable_count) = within_limits(
            canary,
            stable,
            canary_count,
            stable_count,
            max_allowed,
            min_available,
        );
    } else {
        stable_count = scale_down_count(stable, desired_stable, scale_down, stable_count);
        (stable_count, canary_count) = within_limits(
            stable,
            canary,
            stable_count,
            canary_count,
            max_allowed,
            min_available,
        );
    }
    (stable_count, canary_count)
}

/// Argo's controller run to rest from `(stable, canary)`, pods ready at once: where it settles and
/// the fewest available pods on the way.
fn argo_at_rest(
    n: u32,
    weight: u32,
    surge: IntOrPercent,
    unavailable: IntOrPercent,
    from: (i64, i64),
) -> ((i64, i64), i64) {
    let (mut stable, mut canary) = from;
    let mut lowest = stable + canary;
    for _ in 0..1000 {
        let next = basic_canary(
            n,
            weight,
            surge,
            unavailable,
            rs(stable, stable),
            rs(canary, canary),
        );
        if next == (stable, canary) {
            return ((stable, canary), lowest);
        }
        // Removed pods go at once; added ones are not available until the next reconcile.
        lowest = lowest.min(stable.min(next.0) + canary.min(next.1));
        (stable, canary) = next;
    }
    panic!("Argo's basic canary did not settle from {from:?}");
}

struct Row {
    name: &'static str,
    replicas: u32,
    weight: u32,
    surge: IntOrPercent,
    unavailable: IntOrPercent,
    stable: Rs,
    canary: Rs,
    expected_stable: i64,
    expected_canary: i64,
}

#[allow(clippy::too_many_arguments)]
fn row(
    name: &'static str,
    replicas: u32,
    weight: u32,
    surge: IntOrPercent,
    unavailable: IntOrPercent,
    stable: Rs,
    canary: Rs,
    expected: (i64, i64),
) -> Row {
    Row {
        name,
        replicas,
        weight,
        surge,
        unavailable,
        stable,
        canary,
        expected_stable: expected.0,
        expected_canary: expected.1,
    }
}

/// The reachable rows of `TestCalculateReplicaCountsForCanary`; expected is (stable, canary).
fn rows() -> Vec<Row> {
    use IntOrPercent::{Int, Percent};
    vec![
        row(
            "Use max surge int to scale up canary",
            10,
            20,
            Int(2),
            Int(0),
            rs(10, 10),
            rs(0, 0),
            (10, 2),
        ),
        row(
            "Use max surge percentage to scale up canary",
            10,
            20,
            Percent(20),
            Int(0),
            rs(10, 10),
            rs(0, 0),
            (10, 2),
        ),
        row(
            "Scale down extra stable replicas",
            10,
            20,
            Percent(20),
            Int(0),
            rs(10, 10),
            rs(2, 2),
            (8, 2),
        ),
        row(
            "Do not go past max surge",
            10,
            30,
            Int(2),
            Int(0),
            rs(10, 10),
            rs(0, 0),
            (10, 2),
        ),
        row(
            "Use max unavailable int to scale down stableRS",
            10,
            20,
            Int(0),
            Int(2),
            rs(10, 10),
            rs(0, 0),
            (8, 0),
        ),
        row(
            "Use max surge percentage to scale down stableRS",
            10,
            20,
            Int(0),
            Percent(20),
            rs(10, 10),
            rs(0, 0),
            (8, 0),
        ),
        row(
            "Do not go past max unavailable",
            10,
            30,
            Int(0),
            Int(2),
            rs(10, 10),
            rs(0, 0),
            (8, 0),
        ),
        row(
            "Use Max Surge and Max Unavailable",
            10,
            50,
            Int(2),
            Int(1),
            rs(10, 10),
            rs(0, 0),
            (9, 2),
        ),
        row(
            "Scale canaryRS to zero on setWeight of 0%",
            10,
            0,
            Int(1),
            Int(1),
            rs(10, 10),
            rs(1, 1),
            (10, 0),
        ),
        row(
            "Scale stable to zero on setWeight of 100%",
            10,
            100,
            Int(1),
            Int(1),
            rs(1, 1),
            rs(10, 10),
            (0, 10),
        ),
        row(
            "Do not scale canaryRS down to zero on non-zero weight",
            1,
            20,
            Int(1),
            Int(0),
            rs(1, 1),
            rs(0, 0),
            (1, 1),
        ),
        row(
            "Do not scale canaryRS down to zero on non-100 weight",
            1,
            90,
            Int(1),
            Int(0),
            rs(1, 1),
            rs(0, 0),
            (1, 1),
        ),
        row(
            "Scale canaryRS to zero on <50 weight without surge",
            1,
            49,
            Int(0),
            Int(1),
            rs(1, 1),
            rs(0, 0),
            (1, 0),
        ),
        row(
            "Scale stableRS down to zero on >=50 weight without surge",
            1,
            51,
            Int(0),
            Int(1),
            rs(1, 1),
            rs(0, 0),
            (0, 0),
        ),
        row(
            "Scale canaryRS to one on >=50 weight without surge and stable replicas",
            1,
            51,
            Int(0),
            Int(1),
            rs(0, 0),
            rs(0, 0),
            (0, 1),
        ),
        row(
            "Do not round past maxSurge with uneven setWeight divisor",
            10,
            5,
            Int(0),
            Int(1),
            rs(10, 10),
            rs(0, 0),
            (9, 0),
        ),
        row(
            "Do not round past maxSurge with uneven setWeight divisor (part 2)",
            10,
            5,
            Int(0),
            Int(1),
            rs(9, 9),
            rs(0, 0),
            (9, 1),
        ),
        // rollgate refuses 0%/0% at validation, as Kubernetes does; the planner resolves it as Argo.
        row(
            "Use maxUnavailable of 1 when percentage of maxUnavailable and maxSurge result in 0 replicas",
            10,
            10,
            Percent(0),
            Percent(0),
            rs(10, 10),
            rs(0, 0),
            (9, 0),
        ),
        row(
            "Ignore setCanaryScale when trafficRouting is missing and use setWeight for replicas",
            10,
            20,
            Percent(20),
            Int(0),
            rs(10, 10),
            rs(0, 0),
            (10, 2),
        ),
        row(
            "scale down to maxunavailable without exceeding maxSurge",
            3,
            99,
            Int(0),
            Int(2),
            rs(3, 3),
            rs(0, 0),
            (1, 0),
        ),
        row(
            "scale down to maxunavailable without exceeding maxSurge (part 2)",
            3,
            99,
            Int(0),
            Int(2),
            rs(1, 1),
            rs(0, 0),
            (1, 2),
        ),
        row(
            "honor maxUnavailable when aborting or reducing weight part 1",
            4,
            0,
            Int(1),
            Int(0),
            rs(0, 0),
            rs(4, 4),
            (1, 4),
        ),
        row(
            "honor maxUnavailable when aborting or reducing weight part 3",
            4,
            0,
            Int(1),
            Int(0),
            rs(1, 1),
            rs(4, 4),
            (1, 3),
        ),
        // promoteFull: Argo ignores the weight and goes to 100%, as rollgate's last step does.
        row(
            "promote full does not consider weight",
            4,
            100,
            Int(4),
            Int(4),
            rs(4, 4),
            rs(0, 0),
            (0, 4),
        ),
        row(
            "promote full still honors maxSurge/maxUnavailable",
            4,
            100,
            Int(3),
            Int(0),
            rs(4, 4),
            rs(0, 0),
            (4, 3),
        ),
    ]
}

#[test]
fn calculate_replica_counts_for_canary_rows_a_plan_can_reach() {
    let rows = rows();
    assert_eq!(rows.len(), 25);
    for r in rows {
        let name = r.name;
        // The port gives the row's answer...
        assert_eq!(
            basic_canary(
                r.replicas,
                r.weight,
                r.surge,
                r.unavailable,
                r.stable,
                r.canary
            ),
            (r.expected_stable, r.expected_canary),
            "port: {name}"
        );
        // ...and the planner, from the row's state, ends where Argo comes to rest.
        let bounds: Bounds = resolve_bounds(
            r.surge,
            r.unavailable,
            r.replicas,
            Capacity::Elastic,
            "x",
            &mut Vec::new(),
        )
        .unwrap();
        let from = (r.stable.spec as u32, r.canary.spec as u32);
        let ((stable, canary), argo_lowest) = argo_at_rest(
            r.replicas,
            r.weight,
            r.surge,
            r.unavailable,
            (r.stable.spec, r.canary.spec),
        );
        let to = counts_for_weight(r.replicas, r.weight, bounds.max_surge);
        assert_eq!(
            (i64::from(to.0), i64::from(to.1)),
            (stable, canary),
            "rest: {name}"
        );
        let mut steps = Vec::new();
        transition(r.replicas, bounds, from, to, Some(r.weight), &mut steps);
        let end = steps.last().map_or(from, |s| (s.old, s.new));
        assert_eq!(end, to, "plan: {name}: {steps:#?}");
        for s in &steps {
            assert!(
                i64::from(s.min_available) >= argo_lowest,
                "{name}: {s:?} is less available than Argo ({argo_lowest})"
            );
            assert!(
                s.max_total <= r.replicas + bounds.max_surge,
                "{name}: {s:?}"
            );
        }
    }
}

/// `TestApproximateWeightedNewStableReplicaCounts`: (replicas, weight, maxSurge, canary, stable).
#[test]
fn approximate_weighted_canary_stable_replica_counts_rows() {
    let rows: Vec<(u32, u32, u32, u32, u32)> = vec![
        (0, 0, 0, 0, 0),
        (0, 50, 0, 0, 0),
        (0, 100, 0, 0, 0),
        (0, 0, 1, 0, 0),
        (0, 50, 1, 0, 0),
        (0, 100, 1, 0, 0),
        (1, 0, 0, 0, 1),
        (1, 1, 0, 0, 1),
        (1, 49, 0, 0, 1),
        (1, 50, 0, 1, 0),
        (1, 99, 0, 1, 0),
        (1, 100, 0, 1, 0),
        (1, 0, 1, 0, 1),
        (1, 1, 1, 1, 1),
        (1, 49, 1, 1, 1),
        (1, 50, 1, 1, 1),
        (1, 99, 1, 1, 1),
        (1, 100, 1, 1, 0),
        (2, 0, 0, 0, 2),
        (2, 1, 0, 1, 1),
        (2, 50, 0, 1, 1),
        (2, 99, 0, 1, 1),
        (2, 100, 0, 2, 0),
        (2, 0, 1, 0, 2),
        (2, 1, 1, 1, 2),
        (2, 50, 1, 1, 1),
        (2, 99, 1, 2, 1),
        (2, 100, 1, 2, 0),
        (3, 10, 0, 1, 2),
        (3, 25, 0, 1, 2),
        (3, 33, 0, 1, 2),
        (3, 34, 0, 1, 2),
        (3, 49, 0, 1, 2),
        (3, 50, 0, 2, 1),
        (3, 10, 1, 1, 3),
        (3, 25, 1, 1, 3),
        (3, 33, 1, 1, 2),
        (3, 34, 1, 1, 2),
        (3, 49, 1, 2, 2),
        (3, 50, 1, 2, 2),
        (10, 0, 1, 0, 10),
        (10, 1, 0, 1, 9),
        (10, 14, 0, 1, 9),
        (10, 15, 0, 2, 8),
        (10, 16, 0, 2, 8),
        (10, 99, 0, 9, 1),
        (10, 100, 1, 10, 0),
        (10, 0, 1, 0, 10),
        (10, 1, 1, 1, 10),
        (10, 18, 1, 2, 9),
        (10, 19, 1, 2, 9),
        (10, 20, 1, 2, 8),
        (10, 23, 1, 2, 8),
        (10, 24, 1, 3, 8),
        (10, 25, 1, 3, 8),
        (10, 99, 1, 10, 1),
        (10, 100, 1, 10, 0),
    ];
    assert_eq!(rows.len(), 57, "every row of the Go table");
    for (replicas, weight, surge, canary, stable) in rows {
        assert_eq!(
            counts_for_weight(replicas, weight, surge),
            (stable, canary),
            "replicas:{replicas}_weight:{weight}_maxweight:100_surge:{surge}"
        );
    }
}

/// Where Argo is wrong: at a tie of n − ½ canaries without surge (95% of 10, 90% of 5, 75% of 2)
/// `approximateWeightedCanaryStableReplicaCounts` finds no option and returns 0 canaries, so a high
/// weight would roll the canary back. rollgate keeps n − 1 canaries and one stable instance.
#[test]
fn a_tie_at_n_minus_a_half_keeps_n_minus_one_canaries_where_argo_returns_none() {
    assert_eq!(counts_for_weight(10, 95, 0), (1, 9));
    assert_eq!(counts_for_weight(5, 90, 0), (1, 4));
    assert_eq!(counts_for_weight(2, 75, 0), (1, 1));
    assert_eq!(counts_for_weight(50, 99, 0), (1, 49));
    // With surge Argo has options there, and rollgate agrees with them.
    assert_eq!(counts_for_weight(10, 95, 1), (1, 10));
}

fn canary(strategy: &str) -> String {
    BASE.replace(
        "    rolling:\n      maxSurge: 1\n      maxUnavailable: 0\n",
        strategy,
    )
}

/// Counts of the last scale step at `weight`, and the pauses right after it.
fn settled(plan: &serde_json::Value, weight: u64) -> (u64, u64) {
    let steps = plan["steps"].as_array().unwrap();
    let i = steps
        .iter()
        .rposition(|s| s["kind"] == "scale" && s["weight"] == weight)
        .unwrap_or_else(|| panic!("no step at {weight}%: {plan}"));
    let counts = |s: &serde_json::Value| (s["old"].as_u64().unwrap(), s["new"].as_u64().unwrap());
    for s in steps[i + 1..].iter().take_while(|s| s["kind"] == "pause") {
        assert_eq!(counts(s), counts(&steps[i]), "{s}");
    }
    counts(&steps[i])
}

/// Regression (issue 15): the built-in `canary-10-25-50` at N = 10 held 9 + 3 = 12 instances at 25%
/// through its 5-minute soak; Argo holds 8 + 3 = 11, and so does `plan` now. Surge (25%: 13) is for
/// the transition only.
#[test]
fn the_builtin_preset_settles_at_argos_total() {
    let manifest = canary("    ref: canary-10-25-50\n").replace(
        "spec:\n",
        "spec:\n  checks: [{name: smoke, runOn: cli, http: {url: \"http://x/health\"}}]\n",
    );
    let plan = plan_json(&manifest, 10);
    assert_eq!(settled(&plan, 10), (9, 1));
    assert_eq!(settled(&plan, 25), (8, 3));
    assert_eq!(settled(&plan, 50), (5, 5));
    for s in plan["steps"].as_array().unwrap() {
        assert!(s["maxTotal"].as_u64().unwrap() <= 13, "{s}");
        assert!(s["minAvailable"].as_u64().unwrap() >= 10, "{s}");
    }
}

/// Regression (issue 15): a lower weight after a higher one said "no change in counts"; Argo scales
/// the canary back, and so does `plan`, within the same bounds.
#[test]
fn a_lower_weight_scales_the_canary_back() {
    let plan = plan_json(
        &canary(
            "    canary:\n      maxSurge: 1\n      maxUnavailable: 0\n      steps:\n        - setWeight: 50\n        - pause: {}\n        - setWeight: 20\n        - pause: {}\n        - setWeight: 0\n        - pause: {}\n",
        ),
        10,
    );
    assert_eq!(settled(&plan, 50), (5, 5));
    assert_eq!(settled(&plan, 20), (8, 2));
    assert_eq!(settled(&plan, 0), (10, 0));
    let text = plan.to_string();
    assert!(!text.contains("no change in counts"), "{text}");
    for s in plan["steps"].as_array().unwrap() {
        assert!(s["maxTotal"].as_u64().unwrap() <= 11, "{s}");
        assert!(s["minAvailable"].as_u64().unwrap() >= 10, "{s}");
    }
}

/// N = 1 as Argo: without surge the instance goes to the closer version; with surge both run.
#[test]
fn one_instance_follows_argo() {
    let steps = |surge: u32| {
        canary(&format!(
            "    canary:\n      maxSurge: {surge}\n      maxUnavailable: 1\n      steps:\n        - setWeight: 49\n        - pause: {{}}\n        - setWeight: 76\n        - pause: {{}}\n"
        ))
    };
    let plan = plan_json(&steps(0), 1);
    assert_eq!(settled(&plan, 49), (1, 0));
    assert_eq!(settled(&plan, 76), (0, 1));
    let plan = plan_json(&steps(1), 1);
    assert_eq!(settled(&plan, 49), (1, 1));
    assert_eq!(settled(&plan, 76), (1, 1));
}
