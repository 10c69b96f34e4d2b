//! The rolling planner against Kubernetes' Deployment controller: `deployment_util_test.go`'s
//! tables (TestResolveFenceposts, TestMaxUnavailable, TestMinAvailable, TestNewRSNewReplicas) and a
//! port of the controller's rolling loop (`rolling.go`) compared with `plan` for N in 0..=200.
//!
//! The port is written for these tests from the Go source's behaviour: `rolloutRolling` runs
//! `reconcileNewReplicaSet` (scale the new ReplicaSet up to `NewRSNewReplicas`) and, when that did
//! nothing, `reconcileOldReplicaSets` (scale old ReplicaSets down to `N − MaxUnavailable` available).
//! Pods become ready at once, so a sync that scaled up is followed by one that scales down.

use proptest::prelude::*;
use rollgate::plan::{Capacity, Plan, StepKind, plan, resolve_bounds, resolve_fenceposts};
use rollgate::spec::{IntOrPercent, RollingSpec, Strategy as Rollout};

/// `intstr.GetScaledValueFromIntOrPercent`, as Go computes it (in float64).
fn scaled(v: IntOrPercent, total: u32, round_up: bool) -> u32 {
    match v {
        IntOrPercent::Int(i) => i,
        IntOrPercent::Percent(p) => {
            let x = f64::from(p) * f64::from(total) / 100.0;
            (if round_up { x.ceil() } else { x.floor() }) as u32
        }
    }
}

/// Kubernetes' `MaxUnavailable(deployment)`: 0 for 0 replicas, else the fencepost, capped at N.
fn k8s_max_unavailable(n: u32, surge: IntOrPercent, unavailable: IntOrPercent) -> u32 {
    if n == 0 {
        return 0;
    }
    let s = scaled(surge, n, true);
    let mut u = scaled(unavailable, n, false);
    if s == 0 && u == 0 {
        u = 1;
    }
    u.min(n)
}

/// Kubernetes' `NewRSNewReplicas` for a rolling update.
fn new_rs_new_replicas(n: u32, current_pods: u32, new_rs: u32, max_surge: u32) -> u32 {
    let max_total = n + max_surge;
    if current_pods >= max_total {
        return new_rs;
    }
    new_rs + (max_total - current_pods).min(n.saturating_sub(new_rs))
}

/// What the controller does for one rollout from N old pods to N new ones.
#[derive(Debug)]
struct Controller {
    /// The fewest available pods at any moment.
    min_available: u32,
    /// The most pods at any moment.
    max_total: u32,
    /// Times the new ReplicaSet was scaled up: each is a wave of pods to wait for.
    waves: usize,
}

fn controller(n: u32, surge: IntOrPercent, unavailable: IntOrPercent) -> Controller {
    let max_surge = scaled(surge, n, true);
    let min_available = n - k8s_max_unavailable(n, surge, unavailable);
    let (mut old, mut new) = (n, 0u32);
    let mut c = Controller {
        min_available: n,
        max_total: n,
        waves: 0,
    };
    for _ in 0..10 * (n as usize + 2) {
        // reconcileNewReplicaSet: scale up; the new pods are not available until the next sync.
        if new < n {
            let target = new_rs_new_replicas(n, old + new, new, max_surge);
            if target != new {
                c.min_available = c.min_available.min(old + new);
                new = target;
                c.max_total = c.max_total.max(old + new);
                c.waves += 1;
                continue;
            }
        }
        // reconcileOldReplicaSets: nothing is unhealthy, so scale old down to minAvailable.
        if old == 0 {
            assert_eq!(new, n);
            return c;
        }
        let available = old + new;
        assert!(
            available > min_available,
            "controller stuck at ({old}, {new}) for N={n} {surge}/{unavailable}"
        );
        old -= old.min(available - min_available);
        c.min_available = c.min_available.min(old + new);
    }
    panic!("controller did not finish for N={n} {surge}/{unavailable}");
}

fn rolling(surge: IntOrPercent, unavailable: IntOrPercent, n: u32, cap: Capacity) -> Plan {
    let strategy = Rollout::Rolling(RollingSpec {
        max_surge: surge,
        max_unavailable: unavailable,
        min_ready_seconds: 0,
    });
    plan(&strategy, n, cap).unwrap()
}

/// The plan is never less available than the controller, never takes more waves, and resolves the
/// same bounds.
fn conforms(
    n: u32,
    surge: IntOrPercent,
    unavailable: IntOrPercent,
    cap: Capacity,
) -> Result<(), String> {
    let k = controller(n, surge, unavailable);
    let p = rolling(surge, unavailable, n, cap);
    let what = format!("N={n} maxSurge={surge} maxUnavailable={unavailable} {cap:?}");
    let lowest = p.steps.iter().map(|s| s.min_available).min().unwrap();
    if lowest < k.min_available {
        return Err(format!(
            "{what}: plan goes down to {lowest} available, the controller to {}: {:?}",
            k.min_available, p.steps
        ));
    }
    let mut at = (n, 0);
    let mut moving = 0;
    for s in &p.steps {
        assert_eq!(s.kind, StepKind::Scale);
        if (s.old, s.new) != at {
            moving += 1;
        }
        at = (s.old, s.new);
    }
    if moving > k.waves {
        return Err(format!(
            "{what}: {moving} steps, the controller {} waves: {:?}",
            k.waves, p.steps
        ));
    }
    if p.max_unavailable != k8s_max_unavailable(n, surge, unavailable) {
        return Err(format!("{what}: maxUnavailable {}", p.max_unavailable));
    }
    let surge_k8s = scaled(surge, n, true);
    let surge_expected = if cap == Capacity::TwoSlots {
        surge_k8s.min(n)
    } else {
        surge_k8s
    };
    if p.max_surge != surge_expected {
        return Err(format!("{what}: maxSurge {}", p.max_surge));
    }
    Ok(())
}

/// Every form of a bound: integers (0, small, past N), percentages (0%, rounding, 100%).
const FORMS: [IntOrPercent; 16] = [
    IntOrPercent::Int(0),
    IntOrPercent::Int(1),
    IntOrPercent::Int(2),
    IntOrPercent::Int(3),
    IntOrPercent::Int(5),
    IntOrPercent::Int(17),
    IntOrPercent::Int(250),
    IntOrPercent::Percent(0),
    IntOrPercent::Percent(1),
    IntOrPercent::Percent(10),
    IntOrPercent::Percent(25),
    IntOrPercent::Percent(33),
    IntOrPercent::Percent(50),
    IntOrPercent::Percent(75),
    IntOrPercent::Percent(99),
    IntOrPercent::Percent(100),
];

#[test]
fn plan_keeps_the_controllers_availability_in_no_more_waves_for_every_n_to_200() {
    let mut checked = 0;
    for n in 0..=200 {
        for surge in FORMS
            .iter()
            .copied()
            .chain([IntOrPercent::Percent(150), IntOrPercent::Percent(300)])
        {
            for unavailable in FORMS {
                if surge.is_zero() && unavailable.is_zero() {
                    continue;
                }
                for cap in [Capacity::Elastic, Capacity::TwoSlots] {
                    conforms(n, surge, unavailable, cap).unwrap();
                    checked += 1;
                }
            }
        }
    }
    // Both bounds 0 (as 0 or "0%") is refused at validation.
    assert_eq!(checked, 201 * (18 * 16 - 4) * 2);
}

/// The cases issue 15 reported, pinned: Kubernetes keeps these available, and so does the plan.
#[test]
fn regressions_where_remove_first_went_below_the_controller() {
    let one = IntOrPercent::Int(1);
    let all = IntOrPercent::Percent(100);
    assert_eq!(controller(1, one, one).min_available, 1);
    let p = rolling(one, one, 1, Capacity::Elastic);
    assert_eq!(p.steps[0].min_available, 1, "N=1 1/1: {:?}", p.steps);
    // One wave per step: fewer steps than the controller's waves, at the same lowest availability.
    let (three, two) = (IntOrPercent::Int(3), IntOrPercent::Int(2));
    let k = controller(10, three, two);
    let p = rolling(three, two, 10, Capacity::Elastic);
    assert_eq!((k.waves, k.min_available, k.max_total), (3, 8, 13));
    assert_eq!(p.steps.len(), 2, "{:?}", p.steps);
    assert!(
        p.steps
            .iter()
            .all(|s| s.min_available == 8 && s.max_total == 13)
    );
    for n in [1, 2, 7, 10, 100] {
        assert_eq!(controller(n, all, all).min_available, n);
        let p = rolling(all, all, n, Capacity::Elastic);
        assert!(
            p.steps.iter().all(|s| s.min_available == n),
            "100%/100% at N={n}: {:?}",
            p.steps
        );
    }
}

fn form() -> impl Strategy<Value = IntOrPercent> {
    prop_oneof![
        Just(IntOrPercent::Int(0)),
        Just(IntOrPercent::Percent(0)),
        Just(IntOrPercent::Percent(100)),
        (1u32..=20).prop_map(IntOrPercent::Int),
        (0u32..=300).prop_map(IntOrPercent::Int),
        (0u32..=100).prop_map(IntOrPercent::Percent),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn plan_conforms_to_the_controller(
        n in 0u32..=200,
        surge in prop_oneof![form(), (101u32..=300).prop_map(IntOrPercent::Percent)],
        unavailable in form(),
        two_slots in any::<bool>(),
    ) {
        prop_assume!(!(surge.is_zero() && unavailable.is_zero()));
        let cap = if two_slots { Capacity::TwoSlots } else { Capacity::Elastic };
        if let Err(e) = conforms(n, surge, unavailable, cap) {
            prop_assert!(false, "{}", e);
        }
    }
}

fn parse(v: Option<&str>) -> Result<IntOrPercent, String> {
    // ValueOrDefault(nil, 0): an omitted bound is 0 in ResolveFenceposts.
    v.map_or(Ok(IntOrPercent::Int(0)), IntOrPercent::parse)
}

/// `TestResolveFenceposts`, row by row (rows are numbered as in the Go table).
#[test]
fn resolve_fenceposts_table() {
    type Row = (
        Option<&'static str>,
        Option<&'static str>,
        u32,
        u32,
        u32,
        bool,
    );
    let rows: [Row; 7] = [
        (Some("0%"), Some("0%"), 0, 0, 1, false),
        (Some("39%"), Some("39%"), 10, 4, 3, false),
        (Some("oops"), Some("39%"), 10, 0, 0, true),
        (Some("55%"), Some("urg"), 10, 0, 0, true),
        (None, Some("39%"), 10, 0, 3, false),
        (Some("39%"), None, 10, 4, 0, false),
        (None, None, 10, 0, 1, false),
    ];
    for (i, (surge, unavailable, desired, want_surge, want_unavailable, want_error)) in
        rows.into_iter().enumerate()
    {
        match (parse(surge), parse(unavailable)) {
            (Ok(s), Ok(u)) => {
                assert!(!want_error, "row {i}: expected an error");
                assert_eq!(
                    resolve_fenceposts(s, u, desired),
                    (want_surge, want_unavailable),
                    "row {i}"
                );
            }
            _ => assert!(want_error, "row {i}: unexpected error"),
        }
    }
}

/// `TestMaxUnavailable` (maxSurge 1). The Recreate row has no rollgate counterpart.
#[test]
fn max_unavailable_table() {
    let rows = [
        (
            "maxUnavailable less than replicas",
            10,
            IntOrPercent::Int(5),
            5,
        ),
        (
            "maxUnavailable equal replicas",
            10,
            IntOrPercent::Int(10),
            10,
        ),
        (
            "maxUnavailable greater than replicas",
            5,
            IntOrPercent::Int(10),
            5,
        ),
        (
            "maxUnavailable with replicas is 0",
            0,
            IntOrPercent::Int(10),
            0,
        ),
        (
            "maxUnavailable less than replicas with percents",
            10,
            IntOrPercent::Percent(50),
            5,
        ),
        (
            "maxUnavailable equal replicas with percents",
            10,
            IntOrPercent::Percent(100),
            10,
        ),
        (
            "maxUnavailable greater than replicas with percents",
            5,
            IntOrPercent::Percent(100),
            5,
        ),
    ];
    for (name, replicas, unavailable, expected) in rows {
        let b = resolve_bounds(
            IntOrPercent::Int(1),
            unavailable,
            replicas,
            Capacity::Elastic,
            "x",
            &mut Vec::new(),
        )
        .unwrap();
        assert_eq!(b.max_unavailable, expected, "{name}");
        assert_eq!(
            k8s_max_unavailable(replicas, IntOrPercent::Int(1), unavailable),
            expected,
            "port: {name}"
        );
        let p = rolling(
            IntOrPercent::Int(1),
            unavailable,
            replicas,
            Capacity::Elastic,
        );
        assert_eq!(p.max_unavailable, expected, "plan: {name}");
    }
}

/// `TestMinAvailable` (maxSurge 1): the plan never has fewer ready than N − maxUnavailable, and
/// that is the figure `plan` prints. The Recreate row has no rollgate counterpart.
#[test]
fn min_available_table() {
    let rows = [
        (
            "replicas greater than maxUnavailable",
            10,
            IntOrPercent::Int(5),
            5,
        ),
        (
            "replicas equal maxUnavailable",
            10,
            IntOrPercent::Int(10),
            0,
        ),
        (
            "replicas less than maxUnavailable",
            5,
            IntOrPercent::Int(10),
            0,
        ),
        ("replicas is 0", 0, IntOrPercent::Int(10), 0),
        (
            "replicas greater than maxUnavailable with percents",
            10,
            IntOrPercent::Percent(60),
            4,
        ),
        (
            "replicas equal maxUnavailable with percents",
            10,
            IntOrPercent::Percent(100),
            0,
        ),
        (
            "replicas less than maxUnavailable with percents",
            5,
            IntOrPercent::Percent(100),
            0,
        ),
    ];
    for (name, replicas, unavailable, expected) in rows {
        let p = rolling(
            IntOrPercent::Int(1),
            unavailable,
            replicas,
            Capacity::Elastic,
        );
        assert_eq!(p.replicas - p.max_unavailable, expected, "{name}");
        assert!(
            p.steps.iter().all(|s| s.min_available >= expected),
            "{name}: {:?}",
            p.steps
        );
    }
}

/// `TestNewRSNewReplicas` (rolling rows; another ReplicaSet holds 5 pods): pins the port above.
#[test]
fn new_rs_new_replicas_table() {
    let rows = [
        ("can not scale up - to newRSReplicas", 1, 5, 1, 5),
        ("scale up - to depReplicas", 6, 2, 10, 6),
    ];
    for (name, dep_replicas, new_rs, max_surge, expected) in rows {
        // GetReplicaCountForReplicaSets(allRSs) counts only rs5 in the Go test.
        assert_eq!(
            new_rs_new_replicas(dep_replicas, 5, new_rs, max_surge),
            expected,
            "{name}"
        );
    }
}

/// Hosts with `slotsPerHost: 1` cannot surge: their waves stay remove-first, and `plan` says so.
#[test]
fn in_place_hosts_stay_remove_first_and_plan_says_so() {
    let manifest = include_str!("../../manifests/hosts/rolling.yaml");
    let run = super::support::rollgate(manifest, &["plan", "-f", "web.yaml", "-o", "json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let plan: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let notes = plan["notes"].to_string();
    assert!(notes.contains("slotsPerHost is 1"), "{notes}");
    assert!(notes.contains("remove-first"), "{notes}");
    for s in plan["steps"].as_array().unwrap() {
        // One host at a time, stopped before its replacement starts: 5 of 6 ready, never 7.
        assert_eq!(
            (s["minAvailable"].as_u64(), s["maxTotal"].as_u64()),
            (Some(5), Some(6)),
            "{s}"
        );
    }
    let run = super::support::rollgate(manifest, &["plan", "-f", "web.yaml"]);
    assert!(
        run.stdout.contains("note: slotsPerHost is 1"),
        "{}",
        run.stdout
    );
}
