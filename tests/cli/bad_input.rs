//! Every kind of bad input gets one clear line naming file:line:column and the field, and exit code 2.

use super::support::{BASE, rollgate, workdir};

/// Plans `text` saved as web.yaml and returns the error line, asserting exit code 2 and no stdout.
fn error_for(text: &str) -> String {
    error_for_env(text, &[])
}

fn error_for_env(text: &str, env: &[(&str, &str)]) -> String {
    let dir = workdir(&[("web.yaml", text)]);
    let run = rollgate(
        dir.path(),
        &["plan", "-f", "web.yaml", "--replicas", "4", "-o", "json"],
        env,
    );
    assert_eq!(run.code, 2, "stderr: {}", run.stderr);
    assert_eq!(run.stdout, "", "nothing is printed to stdout on bad input");
    run.stderr.trim_end().to_string()
}

#[test]
fn yaml_syntax() {
    let e = error_for("apiVersion: rollgate.dev/v1\nspec: [1, 2\nkind: x\n");
    assert!(e.starts_with("error: web.yaml:3:"), "{e}");
    assert!(e.contains("invalid YAML"), "{e}");
}

#[test]
fn unknown_field_points_at_the_key() {
    let e = error_for(&BASE.replace("maxSurge: 1", "maxSurgee: 1"));
    assert_eq!(
        e,
        "error: web.yaml:11:7: spec.strategy.rolling.maxSurgee: unknown field `maxSurgee`, expected one of `maxSurge`, `maxUnavailable`, `minReadySeconds`"
    );
}

#[test]
fn wrong_type() {
    let e = error_for(&BASE.replace("maxUnavailable: 0", "minReadySeconds: ten"));
    assert_eq!(
        e,
        "error: web.yaml:12:24: spec.strategy.rolling.minReadySeconds: invalid type: string \"ten\", expected a non-negative integer"
    );
}

#[test]
fn bad_percent() {
    let e = error_for(&BASE.replace("maxSurge: 1", "maxSurge: \"130\""));
    assert_eq!(
        e,
        "error: web.yaml:11:17: spec.strategy.rolling.maxSurge: \"130\" is neither an integer nor a percentage like \"25%\""
    );
}

#[test]
fn zero_and_zero() {
    let e = error_for(&BASE.replace("maxSurge: 1", "maxSurge: 0"));
    assert_eq!(
        e,
        "error: web.yaml:12:23: spec.strategy.rolling.maxUnavailable: may not be 0 when maxSurge is 0: no instance could ever be replaced"
    );
    // "0%" is zero too, as in Kubernetes' validation.
    let e = error_for(&BASE.replace("maxSurge: 1", "maxSurge: \"0%\""));
    assert!(e.contains("may not be 0 when maxSurge is 0"), "{e}");
}

#[test]
fn missing_env_var() {
    let text = BASE.replace(
        "deployment: web}",
        "deployment: web, image: \"web:${ROLLGATE_TEST_UNSET_TAG}\"}",
    );
    let e = error_for(&text);
    assert_eq!(
        e,
        "error: web.yaml:8:62: spec.target.kubernetes.image: environment variable ROLLGATE_TEST_UNSET_TAG is not set (write \"${ROLLGATE_TEST_UNSET_TAG:-default}\" to give a default)"
    );
    // Set, it expands; with a default, the default is used.
    let dir = workdir(&[("web.yaml", &text)]);
    let run = rollgate(
        dir.path(),
        &["validate", "-f", "web.yaml"],
        &[("ROLLGATE_TEST_UNSET_TAG", "v9")],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
}

#[test]
fn missing_preset() {
    let text = BASE.replace(
        "    rolling:\n      maxSurge: 1\n      maxUnavailable: 0\n",
        "    ref: nosuch\n",
    );
    let e = error_for(&text);
    assert_eq!(
        e,
        "error: web.yaml:10:10: spec.strategy.ref: no preset \"nosuch\": looked for nosuch.yaml and strategies/nosuch.yaml, and the built-in presets are rolling, one-at-a-time, zero-downtime, canary-10-25-50, blue-green"
    );
}

#[test]
fn two_targets() {
    let text = BASE.replace("    kubernetes:", "    hosts: {hosts: []}\n    kubernetes:");
    assert_eq!(
        error_for(&text),
        "error: web.yaml:7:3: spec.target: has both kubernetes and hosts: expected exactly one of them"
    );
}

#[test]
fn two_strategies() {
    let text = BASE.replace("    rolling:", "    ref: rolling\n    rolling:");
    assert_eq!(
        error_for(&text),
        "error: web.yaml:9:3: spec.strategy: has more than one of rolling, canary, blueGreen, ref: expected exactly one"
    );
}

#[test]
fn bad_duration_and_weight() {
    let text = BASE.replace(
        "    rolling:\n      maxSurge: 1\n      maxUnavailable: 0\n",
        "    canary:\n      steps:\n        - setWeight: 120\n",
    );
    assert_eq!(
        error_for(&text),
        "error: web.yaml:12:22: spec.strategy.canary.steps[0].setWeight: 120 is over 100: expected a percentage 0..=100"
    );
    let text = BASE.replace(
        "    rolling:\n      maxSurge: 1\n      maxUnavailable: 0\n",
        "    canary:\n      steps:\n        - pause: {duration: 5}\n",
    );
    assert_eq!(
        error_for(&text),
        "error: web.yaml:12:29: spec.strategy.canary.steps[0].pause.duration: 5 has no unit: expected a duration like \"5s\" or \"5m\""
    );
}

#[test]
fn in_place_hosts_with_no_unavailability() {
    let text = BASE.replace(
        "    kubernetes: {namespace: default, deployment: web}",
        "    hosts: {hosts: [{name: h1, address: \"127.0.0.1:7443\"}]}",
    );
    let dir = workdir(&[("web.yaml", &text)]);
    let run = rollgate(dir.path(), &["plan", "-f", "web.yaml"], &[]);
    assert_eq!(run.code, 2);
    assert_eq!(
        run.stderr.trim_end(),
        "error: web.yaml:12:23: spec.strategy.rolling.maxUnavailable: is 0, but hosts with slotsPerHost: 1 are replaced in place: set maxUnavailable to at least 1, or use slotsPerHost: 2"
    );
}

#[test]
fn missing_file_and_missing_replicas() {
    let dir = workdir(&[("web.yaml", BASE)]);
    let run = rollgate(dir.path(), &["plan", "-f", "nope.yaml"], &[]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.starts_with("error: nope.yaml: cannot read:"),
        "{}",
        run.stderr
    );
    let run = rollgate(dir.path(), &["plan", "-f", "web.yaml"], &[]);
    assert_eq!(run.code, 2);
    assert_eq!(
        run.stderr.trim_end(),
        "error: planning a kubernetes target offline needs its size: pass --replicas N"
    );
}

#[test]
fn usage_errors_exit_2() {
    let dir = workdir(&[]);
    let run = rollgate(dir.path(), &["plan"], &[]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("--file"), "{}", run.stderr);
}

#[test]
fn condition_typo_is_located_at_the_character() {
    let text = format!(
        "{BASE}  checks:\n    - name: errors\n      prometheus: {{address: \"http://prom:9090\", query: \"up\"}}\n      successCondition: \"result[0] >= 0.99 && reslt < 2\"\n"
    );
    assert_eq!(
        error_for(&text),
        "error: web.yaml:16:47: spec.checks[0].successCondition: \"result[0] >= 0.99 && reslt < 2\": unknown name \"reslt\": expected \"result\""
    );
    let text = text.replace(
        "successCondition: \"result[0] >= 0.99 && reslt < 2\"",
        "successCondition: result = 1",
    );
    assert_eq!(
        error_for(&text),
        "error: web.yaml:16:32: spec.checks[0].successCondition: \"result = 1\": \"=\" is not an operator: write \"==\""
    );
}

/// A pod has no agent: a check that cannot reach it through the API server is refused by
/// `validate` and `plan` alike (issue 15: it used to pass without probing anything).
#[test]
fn a_check_that_cannot_run_on_a_pod() {
    let text = format!(
        "{BASE}  checks:\n    - name: smoke\n      command: {{run: [sh, -c, \"curl -f localhost/health\"]}}\n"
    );
    let expected = "error: web.yaml:15:7: spec.checks[0].command: a command check cannot run on a pod with runOn: host: pods have no agent, and rollgate reaches them only through the API server's pod proxy, which carries HTTP; expected runOn: cli (the command runs where rollgate runs, with {host} the pod's IP) or an http check";
    assert_eq!(error_for(&text), expected);
    let dir = workdir(&[("web.yaml", &text)]);
    let run = rollgate(dir.path(), &["validate", "-f", "web.yaml"], &[]);
    assert_eq!(
        (run.code, run.stderr.trim_end()),
        (2, expected),
        "validate says what plan says"
    );
    let tcp = text.replace(
        "command: {run: [sh, -c, \"curl -f localhost/health\"]}",
        "tcp: {address: \"127.0.0.1:8080\"}",
    );
    assert!(
        error_for(&tcp).starts_with(
            "error: web.yaml:15:7: spec.checks[0].tcp: a tcp check cannot run on a pod with runOn: host"
        ),
        "{}",
        error_for(&tcp)
    );
    let elsewhere = text.replace(
        "command: {run: [sh, -c, \"curl -f localhost/health\"]}",
        "http: {url: \"http://web.default.svc/health\"}",
    );
    assert_eq!(
        error_for(&elsewhere),
        "error: web.yaml:15:19: spec.checks[0].http.url: \"http://web.default.svc/health\": its host \"web.default.svc\" is not the pod: a runOn: host check on a Kubernetes target goes to each pod through the API server's pod proxy, so the host must be 127.0.0.1, localhost or {host}; to probe another address use runOn: cli"
    );
    // From the CLI, both run.
    for ok in [
        text.replace("- name: smoke\n", "- name: smoke\n      runOn: cli\n"),
        elsewhere.replace("- name: smoke\n", "- name: smoke\n      runOn: cli\n"),
    ] {
        let dir = workdir(&[("web.yaml", &ok)]);
        let run = rollgate(dir.path(), &["validate", "-f", "web.yaml"], &[]);
        assert_eq!(run.code, 0, "{}", run.stderr);
    }
}

#[test]
fn team_state_on_etcd() {
    let hosts = BASE
        .replace(
            "    kubernetes: {namespace: default, deployment: web}",
            "    hosts: {hosts: [{name: h1, address: \"127.0.0.1:7443\"}]}",
        )
        .replace("maxUnavailable: 0", "maxUnavailable: 1");
    let e = error_for(&format!("{hosts}  state: {{etcd: {{endpoints: []}}}}\n"));
    assert_eq!(
        e,
        "error: web.yaml:13:18: spec.state.etcd.endpoints: is empty: expected one or more client URLs (http://host:2379 or https://host:2379)"
    );
    let e = error_for(&format!(
        "{hosts}  state:\n    etcd:\n      endpoints: [\"https://e1:2379\", \"e2:2379\"]\n"
    ));
    assert_eq!(
        e,
        "error: web.yaml:15:38: spec.state.etcd.endpoints[1]: \"e2:2379\": expected a client URL such as https://etcd-1:2379"
    );
    let e = error_for(&format!(
        "{hosts}  state: {{etcd: {{endpoints: [\"https://e1:2379\"], tls: {{cert: c.pem}}}}}}\n"
    ));
    assert!(
        e.starts_with("error: web.yaml:13:")
            && e.contains("spec.state.etcd.tls: has one of cert and key"),
        "{e}"
    );
    let e = error_for(&format!(
        "{BASE}  state: {{etcd: {{endpoints: [\"http://e1:2379\"]}}}}\n"
    ));
    assert!(
        e.starts_with("error: web.yaml:13:3: spec.state: applies to hosts targets"),
        "{e}"
    );
    // The flag (or ROLLGATE_STATE_URL) is checked before anything is read or changed.
    let dir = workdir(&[]);
    let run = rollgate(
        dir.path(),
        &["status", "web"],
        &[("ROLLGATE_STATE_URL", "http://e1:2379")],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .starts_with("error: --state \"http://e1:2379\": unknown scheme: expected etcd://"),
        "{}",
        run.stderr
    );
}

#[test]
fn approvers_name_one_kind_of_identity() {
    let canary = |approvers: &str| {
        BASE.replace(
            "    rolling:\n      maxSurge: 1\n      maxUnavailable: 0\n",
            &format!(
                "    canary:\n      steps:\n        - setWeight: 50\n        - pause: {{approvals: 2, approvers: {approvers}}}\n"
            ),
        )
    };
    let e = error_for(&canary("{allowed: [alice]}"));
    assert!(
        e.starts_with("error: web.yaml:")
            && e.contains("spec.strategy.canary.steps[1].pause.approvers: needs `ca` (approver certificates) or `kubernetes: true` (Kubernetes users)"),
        "{e}"
    );
    let e = error_for(&canary("{ca: ca.pem, rbac: true}"));
    assert!(
        e.contains("names both `ca` and `kubernetes: true`")
            || e.contains("`rbac` and `groups` apply to Kubernetes users"),
        "{e}"
    );
    let e = error_for(&canary("{ca: ca.pem, kubernetes: true}"));
    assert!(e.contains("names both `ca` and `kubernetes: true`"), "{e}");
    // A host fleet has no API server to ask.
    let hosts = canary("{kubernetes: true}")
        .replace("    canary:\n", "    canary:\n      maxUnavailable: 1\n")
        .replace(
        "kubernetes: {namespace: default, deployment: web}",
        "hosts: {hosts: [{name: h1, address: \"127.0.0.1:7443\"}, {name: h2, address: \"127.0.0.1:7444\"}]}",
    );
    let dir = workdir(&[("web.yaml", &hosts)]);
    let run = rollgate(dir.path(), &["validate", "-f", "web.yaml"], &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("`kubernetes: true` needs a kubernetes target"),
        "{}",
        run.stderr
    );
    // Valid: Kubernetes users, by RBAC and group.
    let dir = workdir(&[(
        "web.yaml",
        &canary("{kubernetes: true, rbac: true, groups: [release-managers]}"),
    )]);
    let run = rollgate(dir.path(), &["validate", "-f", "web.yaml"], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
}
