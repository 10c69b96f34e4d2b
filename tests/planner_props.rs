//! Property tests of the planner's invariants over N in 0..=1000 and every form of the bounds.

use proptest::prelude::*;
use rollgate::plan::{Capacity, MAX_INSTANCES, Plan, StepKind, plan, resolve_bounds};
use rollgate::spec::{
    CanaryScale, CanarySpec, CanaryStep, IntOrPercent, PauseSpec, RollingSpec, Strategy as Rollout,
    TrafficRouting,
};
use rollgate::strategy::canary::counts_for_weight;

fn bound() -> impl Strategy<Value = IntOrPercent> {
    prop_oneof![
        Just(IntOrPercent::Int(0)),
        Just(IntOrPercent::Percent(0)),
        (0u32..=20).prop_map(IntOrPercent::Int),
        (0u32..=2000).prop_map(IntOrPercent::Int),
        (0u32..=100).prop_map(IntOrPercent::Percent),
        Just(IntOrPercent::Percent(100)),
    ]
}

/// maxSurge may go over 100% (Kubernetes accepts it); maxUnavailable may not.
fn surge_bound() -> impl Strategy<Value = IntOrPercent> {
    prop_oneof![bound(), (101u32..=300).prop_map(IntOrPercent::Percent)]
}

fn capacity() -> impl Strategy<Value = Capacity> {
    prop_oneof![
        Just(Capacity::Elastic),
        Just(Capacity::InPlace),
        Just(Capacity::TwoSlots)
    ]
}

/// The invariants every plan keeps, whatever the strategy.
fn check_invariants(n: u32, p: &Plan, monotonic: bool) -> Result<(), TestCaseError> {
    let (s, u) = (p.max_surge, p.max_unavailable);
    prop_assert!(u <= n, "maxUnavailable {} is capped at N {}", u, n);
    let (mut prev_old, mut prev_new) = (n, 0);
    for step in &p.steps {
        prop_assert!(
            step.max_total <= n + s,
            "step {:?} over N + maxSurge {}",
            step,
            n + s
        );
        prop_assert!(
            step.min_available >= n.saturating_sub(u),
            "step {:?} under N - maxUnavailable",
            step
        );
        prop_assert!(step.old + step.new <= step.max_total);
        prop_assert!(step.min_available <= step.old + step.new || step.kind != StepKind::Scale);
        if monotonic {
            prop_assert!(
                step.new >= prev_new && step.old <= prev_old,
                "counts went backwards at {:?}",
                step
            );
        }
        (prev_old, prev_new) = (step.old, step.new);
    }
    let last = p.steps.last().expect("a plan has at least one step");
    prop_assert_eq!((last.old, last.new), (0, n), "the last step is all-new");
    Ok(())
}

/// Any bound at all, up to u32::MAX as an integer or a percentage.
fn any_bound() -> impl Strategy<Value = IntOrPercent> {
    prop_oneof![
        bound(),
        any::<u32>().prop_map(IntOrPercent::Int),
        any::<u32>().prop_map(IntOrPercent::Percent),
        (MAX_INSTANCES - 2..=MAX_INSTANCES + 2).prop_map(IntOrPercent::Int),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Regression (issue 20): huge N and bounds wrapped around. Either the plan is refused, naming
    /// N (`spec.target`) or the bound, or every count in it is what u64 arithmetic says.
    #[test]
    fn huge_values_are_refused_or_never_wrap(
        n in prop_oneof![0u32..=20, any::<u32>(), MAX_INSTANCES - 2..=MAX_INSTANCES + 2],
        surge in any_bound(),
        unavailable in any_bound(),
        blue_green in any::<bool>(),
        cap in capacity(),
    ) {
        prop_assume!(!(surge.is_zero() && unavailable.is_zero()));
        let strategy = if blue_green {
            Rollout::BlueGreen(rollgate::spec::BlueGreenSpec {
                auto_promotion_enabled: true,
                auto_promotion_seconds: 0,
                preview_replica_count: 0,
                scale_down_delay_seconds: 0,
                min_ready_seconds: 0,
                pre_promotion_analysis: None,
                post_promotion_analysis: None,
            })
        } else {
            Rollout::Rolling(RollingSpec { max_surge: surge, max_unavailable: unavailable, min_ready_seconds: 0 })
        };
        if n > MAX_INSTANCES {
            let err = plan(&strategy, n, cap).unwrap_err();
            prop_assert_eq!(err.path, "spec.target");
            return Ok(());
        }
        let mut notes = vec![];
        let bounds = resolve_bounds(surge, unavailable, n, cap, "x", &mut notes);
        if !blue_green {
            match &bounds {
                Err(e) => {
                    let err = plan(&strategy, n, cap).unwrap_err();
                    prop_assert_eq!(err.path, e.path.replacen('x', "spec.strategy.rolling", 1));
                    return Ok(());
                }
                // A long plan (one instance a step over a large fleet) is the slow kind, not the
                // kind that wraps: skipped to keep each case quick.
                Ok(b) if n.div_ceil((b.max_surge + b.max_unavailable).max(1)) > 5_000 => return Ok(()),
                Ok(_) => {}
            }
        }
        let Ok(p) = plan(&strategy, n, cap) else {
            return Ok(());
        };
        let n64 = u64::from(n);
        for step in &p.steps {
            prop_assert!(u64::from(step.old) + u64::from(step.new) <= u64::from(step.max_total));
            prop_assert!(u64::from(step.max_total) <= n64 + u64::from(p.max_surge), "{:?}", step);
            prop_assert!(u64::from(step.max_total) <= 2 * n64, "{:?}", step);
            prop_assert!(step.old <= n && step.new <= n, "{:?}", step);
        }
        prop_assert!(p.max_surge <= MAX_INSTANCES && p.max_unavailable <= n);
    }

    #[test]
    fn rolling_keeps_bounds_in_the_fewest_steps(n in 0u32..=1000, surge in surge_bound(), unavailable in bound(), cap in capacity()) {
        prop_assume!(!(surge.is_zero() && unavailable.is_zero()));
        let strategy = Rollout::Rolling(RollingSpec { max_surge: surge, max_unavailable: unavailable, min_ready_seconds: 0 });
        let Ok(p) = plan(&strategy, n, cap) else {
            // The only refusal: in-place hosts with a maxUnavailable of 0 (or "0%").
            prop_assert!(cap == Capacity::InPlace && unavailable.is_zero());
            return Ok(());
        };
        check_invariants(n, &p, true)?;
        // Each step can replace at most maxSurge + maxUnavailable instances, so no plan can be shorter
        // than ceil(N / (s + u)); the planner must reach that.
        let per_step = p.max_surge + p.max_unavailable;
        let floor = if n == 0 { 1 } else { n.div_ceil(per_step) as usize };
        prop_assert_eq!(p.steps.len(), floor);
        // Bounds are resolved as Kubernetes does.
        let mut notes = vec![];
        let b = resolve_bounds(surge, unavailable, n, Capacity::Elastic, "x", &mut notes).unwrap();
        if cap == Capacity::Elastic {
            prop_assert_eq!(b.max_surge, p.max_surge);
            prop_assert_eq!(b.max_unavailable, p.max_unavailable);
        }
        prop_assert!(b.max_unavailable <= n);
        // Surge before unavailability: a step removes before creating only what its surge room
        // cannot hold, so where surge covers the whole rollout nothing is ever unavailable.
        if p.max_surge >= n {
            prop_assert!(p.steps.iter().all(|s| s.min_available >= n), "{:?}", p.steps);
        }
        if cap == Capacity::InPlace {
            prop_assert!(p.notes.iter().any(|note| note.contains("remove-first")), "{:?}", p.notes);
        }
    }

    #[test]
    fn canary_keeps_bounds_and_weights(
        n in 0u32..=1000,
        surge in surge_bound(),
        unavailable in bound(),
        mut weights in prop::collection::vec(0u32..=100, 1..8),
        pause_every in 1usize..4,
        cap in capacity(),
    ) {
        prop_assume!(!(surge.is_zero() && unavailable.is_zero()));
        weights.sort_unstable();
        weights.dedup();
        let mut steps = Vec::new();
        for (i, w) in weights.iter().enumerate() {
            steps.push(CanaryStep { set_weight: Some(*w), ..Default::default() });
            if i % pause_every == 0 {
                steps.push(CanaryStep { pause: Some(PauseSpec::default()), ..Default::default() });
            }
        }
        let strategy = Rollout::Canary(CanarySpec {
            max_surge: surge, max_unavailable: unavailable, min_ready_seconds: 0, first_group: None, steps, analysis: None, traffic_routing: None,
        });
        let Ok(p) = plan(&strategy, n, cap) else {
            prop_assert!(cap == Capacity::InPlace && unavailable.is_zero());
            return Ok(());
        };
        check_invariants(n, &p, true)?;
        let per_step = (p.max_surge + p.max_unavailable).max(1);
        for w in &weights {
            // Every weight is reached, with a canary whenever 0 < w < 100.
            let at: Vec<_> = p.steps.iter().filter(|s| s.weight == Some(*w) && s.kind == StepKind::Scale).collect();
            prop_assert!(!at.is_empty());
            let end = at.last().unwrap();
            // Argo's one exception: a single instance without surge goes to the closer version.
            let single = n == 1 && p.max_surge == 0;
            if n > 0 && *w > 0 && *w < 100 && !(single && *w < 50) {
                prop_assert!(end.new >= 1, "weight {} gave no canary: {:?}", w, end);
            }
            // The settled total is N, or N + 1 where surge buys a closer split (as Argo): surge
            // beyond that is for the transition only.
            prop_assert!(end.old + end.new <= n + u32::from(p.max_surge > 0), "{:?}", end);
            if n > 1 && *w < 100 && *w > 0 {
                prop_assert!(end.old >= 1, "weight {} left no stable instance: {:?}", w, end);
            }
        }
        // A weight change never takes more scale steps than the instances it must replace allow.
        let mut prev = (n, 0);
        let mut targets = weights.clone();
        if targets.last() != Some(&100) {
            targets.push(100);
        }
        for w in &targets {
            let scale: Vec<_> = p.steps.iter().filter(|s| s.weight == Some(*w) && s.kind == StepKind::Scale).collect();
            if let Some(last) = scale.last() {
                let moved = last.new.abs_diff(prev.1).max(last.old.abs_diff(prev.0));
                prop_assert!(scale.len() <= (moved.div_ceil(per_step) as usize).max(1), "{} steps to move {} at {}", scale.len(), moved, w);
                prev = (last.old, last.new);
            }
        }
    }

    /// A traffic-weighted canary (issue 24): the same bounds, whatever the weights and canary
    /// scales, in any order; each setWeight sets the router exactly once, in the order written,
    /// on a step whose counts keep a stable instance while the stable version has traffic; the
    /// last step sends everything to the canary.
    #[test]
    fn routed_canary_keeps_bounds_and_sets_each_weight_once(
        n in 1u32..=500,
        surge in surge_bound(),
        unavailable in bound(),
        script in prop::collection::vec((0u32..=100, prop::option::of(0u32..=3)), 1..8),
        cap in capacity(),
    ) {
        prop_assume!(!(surge.is_zero() && unavailable.is_zero()));
        let mut steps = Vec::new();
        let mut weights = Vec::new();
        for (w, scale) in &script {
            if let Some(k) = scale {
                let s = match k {
                    0 => CanaryScale { replicas: Some(w * n / 100), ..Default::default() },
                    1 => CanaryScale { weight: Some(*w), ..Default::default() },
                    _ => CanaryScale { match_traffic_weight: true, ..Default::default() },
                };
                steps.push(CanaryStep { set_canary_scale: Some(s), ..Default::default() });
            }
            steps.push(CanaryStep { set_weight: Some(*w), ..Default::default() });
            weights.push(*w);
        }
        let strategy = Rollout::Canary(CanarySpec {
            max_surge: surge, max_unavailable: unavailable, min_ready_seconds: 0, first_group: None, steps, analysis: None,
            traffic_routing: Some(TrafficRouting { traffic_switch: true, ..Default::default() }),
        });
        let p = match plan(&strategy, n, cap) {
            Ok(p) => p,
            Err(e) if e.message.contains("no instance") => {
                // Refused only where bounds or a scale leave a version with traffic no instance.
                prop_assert!(n == 1 || script.iter().any(|(_, s)| s.is_some()) || cap != Capacity::Elastic, "{}", e);
                return Ok(());
            }
            Err(e) => {
                prop_assert!(cap == Capacity::InPlace && unavailable.is_zero(), "{}", e);
                return Ok(());
            }
        };
        check_invariants(n, &p, cap != Capacity::Elastic)?;
        // In order; a weight written twice in a row (100, then 100 at the end) is one change.
        let mut set: Vec<u32> = p.steps.iter().filter_map(|s| s.traffic_weight).collect();
        set.dedup();
        let mut want = weights.clone();
        want.push(100);
        want.dedup();
        prop_assert_eq!(&set, &want, "{:#?}", p.steps);
        for s in p.steps.iter().filter(|s| s.traffic_weight.is_some_and(|w| w < 100)) {
            prop_assert!(s.old >= 1, "traffic to a stable version with no instance: {:?}", s);
        }
        let last = p.steps.last().unwrap();
        prop_assert_eq!((last.old, last.new, last.traffic_weight), (0, n, Some(100)));
    }

    #[test]
    fn canary_weights_in_any_order_settle_where_argo_does(
        n in 0u32..=300,
        surge in surge_bound(),
        unavailable in bound(),
        weights in prop::collection::vec(0u32..=100, 1..8),
        cap in capacity(),
    ) {
        prop_assume!(!(surge.is_zero() && unavailable.is_zero()));
        let steps = weights
            .iter()
            .flat_map(|w| {
                [
                    CanaryStep { set_weight: Some(*w), ..Default::default() },
                    CanaryStep { pause: Some(PauseSpec::default()), ..Default::default() },
                ]
            })
            .collect();
        let strategy = Rollout::Canary(CanarySpec {
            max_surge: surge, max_unavailable: unavailable, min_ready_seconds: 0, first_group: None, steps, analysis: None, traffic_routing: None,
        });
        let Ok(p) = plan(&strategy, n, cap) else {
            prop_assert!(cap == Capacity::InPlace && unavailable.is_zero());
            return Ok(());
        };
        // Hosts never switch a host back mid-rollout: their counts only move forwards.
        check_invariants(n, &p, cap != Capacity::Elastic)?;
        if cap == Capacity::Elastic {
            // Each pause holds exactly Argo's settled split for the weight before it.
            for (i, w) in weights.iter().enumerate() {
                let pause = p.steps.iter().filter(|s| s.kind == StepKind::Pause).nth(i).unwrap();
                prop_assert_eq!((pause.old, pause.new), counts_for_weight(n, *w, p.max_surge), "at {}%", w);
            }
        }
    }
}
