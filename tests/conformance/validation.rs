//! maxSurge / maxUnavailable validated as Kubernetes validates a Deployment's rolling update
//! (`pkg/apis/apps/validation`: `ValidatePositiveIntOrPercent`, `IsNotMoreThan100Percent`, both
//! zero), through the real binary, each error with file:line:column; and N = 0 as `MaxUnavailable`.

use super::support::{BASE, input_error, plan_json};

fn rolling(surge: &str, unavailable: &str) -> String {
    BASE.replace(
        "      maxSurge: 1\n      maxUnavailable: 0\n",
        &format!("      maxSurge: {surge}\n      maxUnavailable: {unavailable}\n"),
    )
}

/// validation_test.go: `MaxUnavailable: intstr.FromString("110%")` → "must not be greater than 100%".
#[test]
fn max_unavailable_over_100_percent_is_an_input_error() {
    assert_eq!(
        input_error(&rolling("1", "\"110%\"")),
        "error: web.yaml:12:23: spec.strategy.rolling.maxUnavailable: \"110%\" is over 100%: expected at most \"100%\""
    );
    // The same for a canary.
    let canary = BASE.replace(
        "    rolling:\n      maxSurge: 1\n      maxUnavailable: 0\n",
        "    canary:\n      maxSurge: 1\n      maxUnavailable: \"101%\"\n      steps: [{setWeight: 50}]\n",
    );
    assert_eq!(
        input_error(&canary),
        "error: web.yaml:12:23: spec.strategy.canary.maxUnavailable: \"101%\" is over 100%: expected at most \"100%\""
    );
    // 100% is the most, and is valid.
    let plan = plan_json(&rolling("1", "\"100%\""), 4);
    assert_eq!(plan["maxUnavailable"], 4);
}

/// Kubernetes caps only maxUnavailable: a maxSurge over 100% is valid there, and here.
#[test]
fn max_surge_over_100_percent_is_valid() {
    let plan = plan_json(&rolling("\"200%\"", "0"), 4);
    assert_eq!(plan["maxSurge"], 8);
    let steps = plan["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 1, "{plan}");
    assert_eq!(
        steps[0]["minAvailable"], 4,
        "nothing goes before its replacement is ready"
    );
}

/// `IsValidPercent` is `^[0-9]+%$`: no spaces, no sign.
#[test]
fn a_percentage_with_spaces_is_an_input_error() {
    assert_eq!(
        input_error(&rolling("\" 5%\"", "0")),
        "error: web.yaml:11:17: spec.strategy.rolling.maxSurge: \" 5%\" has spaces: expected an integer or a percentage like \"25%\""
    );
    assert_eq!(
        input_error(&rolling("1", "\"5 %\"")),
        "error: web.yaml:12:23: spec.strategy.rolling.maxUnavailable: \"5 %\" has spaces: expected an integer or a percentage like \"25%\""
    );
    let e = input_error(&rolling("\"+5%\"", "0"));
    assert!(
        e.starts_with("error: web.yaml:11:17: spec.strategy.rolling.maxSurge: \"+5%\" is neither"),
        "{e}"
    );
}

/// validation_test.go: `MaxSurge: intstr.FromString("20Percent")` is not a percentage.
#[test]
fn twenty_percent_spelled_out_is_an_input_error() {
    assert_eq!(
        input_error(&rolling("\"20Percent\"", "0")),
        "error: web.yaml:11:17: spec.strategy.rolling.maxSurge: \"20Percent\" is neither an integer nor a percentage like \"25%\""
    );
}

/// validation_test.go: `MaxSurge: "0%"`, `MaxUnavailable: 0` → "may not be 0 when `maxSurge` is 0".
#[test]
fn zero_percent_and_zero_is_an_input_error() {
    let e = input_error(&rolling("\"0%\"", "0"));
    assert!(
        e.starts_with("error: web.yaml:12:23: spec.strategy.rolling.maxUnavailable: may not be 0 when maxSurge is 0"),
        "{e}"
    );
}

/// `MaxUnavailable` returns 0 for 0 replicas, so "capped at N" holds at N = 0 too.
#[test]
fn zero_instances_resolve_max_unavailable_to_zero() {
    for (surge, unavailable) in [("\"25%\"", "\"25%\""), ("0", "1"), ("\"1%\"", "\"1%\"")] {
        let plan = plan_json(&rolling(surge, unavailable), 0);
        assert_eq!(plan["maxUnavailable"], 0, "{surge}/{unavailable}: {plan}");
        assert_eq!(plan["steps"].as_array().unwrap().len(), 1);
    }
}
