//! Issue 15 §4: on hosts, a version whose agent-side health answers with a failure fails its
//! activation after the health block's `failureThreshold` consecutive failures, not when the
//! agent's `startTimeout` or the step's deadline runs out; the rollout is rolled back at once.
//! The CLI no longer overrides the agent's `startTimeout` with the step's deadline.

use std::time::Duration;

use rollgate::agent::api::{Operation, OperationKind, OperationState};
use rollgate::state::Event;

use crate::fleet::{Fleet, Running};
use crate::netns::root_or_skip;

const THRESHOLD: u64 = 3;
const INTERVAL_MS: u64 = 200;
/// Longer than the bound under test (reaching it would fail the first half of the test), and
/// what a version that never answers is given (the second half).
const START_TIMEOUT_S: u64 = 5;
/// The step's deadline: the CLI used to send it as the activation's timeout.
const DEADLINE_S: u64 = 60;

/// The activations host `i`'s agent ran, from its `operations.log` (the last line of an id wins).
fn activations(fleet: &Fleet, i: usize) -> Vec<Operation> {
    let log = fleet.hosts[i].dir.join("data").join("operations.log");
    let text = std::fs::read_to_string(&log).unwrap();
    let mut ops: Vec<Operation> = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let op: Operation = serde_json::from_value(v["op"].clone()).unwrap();
        ops.retain(|o| o.id != op.id);
        if op.kind == OperationKind::Activate {
            ops.push(op);
        }
    }
    ops.sort_by_key(|o| o.created_unix_ms);
    ops
}

fn took_ms(op: &Operation) -> u64 {
    op.finished_unix_ms.expect("finished") - op.created_unix_ms
}

#[test]
fn netns_a_version_failing_its_agent_check_is_rolled_back_after_failure_threshold() {
    if !root_or_skip("netns_agent_health_failure_threshold") {
        return;
    }
    let health = format!(
        "{{type: http, url: \"http://127.0.0.1:{{port}}/health\", timeout: 1s, interval: {INTERVAL_MS}ms, startTimeout: {START_TIMEOUT_S}s, failureThreshold: {THRESHOLD}}}"
    );
    let fleet = Fleet::start_with_agent_health(2, &health);
    bad_answers_fail_after_failure_threshold(&fleet);
    silence_fails_at_the_agents_start_timeout(&fleet);
}

fn bad_answers_fail_after_failure_threshold(fleet: &Fleet) {
    fleet.install("1.0.0");
    // 2.0.0 starts and answers, but its /health (the agents' check here) answers 500.
    let bad = fleet.artifact("2.0.0", "--health-status 500");
    let manifest = fleet.manifest(
        "2.0.0",
        &bad,
        "    rolling: {maxSurge: 0, maxUnavailable: 1}\n",
        DEADLINE_S,
    );
    let mut run =
        Running::spawn(fleet.rollgate(&["apply", "-f", manifest.to_str().unwrap(), "-o", "json"]));
    let code = run.finish(Duration::from_secs(2 * DEADLINE_S));
    let log = run.describe();
    assert_eq!(
        code,
        Some(1),
        "a rolled-back rollout\n{log}{}",
        run.output()
    );
    fleet.assert_serving("1.0.0");

    // The first wave's host failed its activation, with the agent's reason.
    let failed = run
        .records
        .iter()
        .find_map(|r| match &r.event {
            Event::InstanceChanged {
                instance,
                version,
                ok: false,
                detail,
                ..
            } if version == "2.0.0" => Some((instance.clone(), detail.clone(), r.at_ms)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("a failed activation of 2.0.0\n{log}"));
    let (host, detail, failed_at) = failed;
    assert!(
        detail.contains(&format!("{THRESHOLD} consecutive failed checks"))
            && detail.contains("HTTP 500"),
        "the reason names the threshold and the last failure: {detail}"
    );
    let changing_at = run
        .records
        .iter()
        .find_map(|r| match &r.event {
            Event::InstanceChanging {
                instance, version, ..
            } if *instance == host && version == "2.0.0" => Some(r.at_ms),
            _ => None,
        })
        .unwrap();
    let back_at = run
        .records
        .iter()
        .find_map(|r| match &r.event {
            Event::InstanceChanged {
                instance,
                version,
                ok: true,
                ..
            } if *instance == host && version == "1.0.0" => Some(r.at_ms),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{host} rolled back to 1.0.0\n{log}"));

    // The agent's own record of the two activations on that host: the bad one, and the
    // rollback's (one start: stop the running version, start, first passing check).
    let i = fleet.index(&host);
    let ops = activations(fleet, i);
    let bad_op = ops
        .iter()
        .rfind(|o| o.version.as_deref() == Some("2.0.0"))
        .expect("an activation of 2.0.0");
    let start_op = ops
        .iter()
        .rfind(|o| o.version.as_deref() == Some("1.0.0"))
        .expect("the rollback's activation of 1.0.0");
    assert_eq!(bad_op.state, OperationState::Failed, "{bad_op:?}");
    assert_eq!(start_op.state, OperationState::Succeeded, "{start_op:?}");
    let bad_ms = took_ms(bad_op);
    let one_start_ms = took_ms(start_op);
    let bound_ms = THRESHOLD * INTERVAL_MS + one_start_ms;
    eprintln!(
        "agent_health: bad activation failed in {bad_ms} ms (failureThreshold {THRESHOLD} x interval {INTERVAL_MS} ms + one start {one_start_ms} ms = {bound_ms} ms); \
         CLI: activation reported failed {} ms after it began, {host} back on 1.0.0 after {} ms; \
         startTimeout {START_TIMEOUT_S} s, step deadline {DEADLINE_S} s",
        failed_at - changing_at,
        back_at - changing_at,
    );
    // 500 ms of slack: each check takes some time, the first may come before the process
    // listens (a refusal, not yet counted), and two starts on a busy machine differ.
    assert!(
        bad_ms <= bound_ms + 500,
        "the bad activation took {bad_ms} ms, more than {THRESHOLD} x {INTERVAL_MS} ms + one start ({one_start_ms} ms)\n{log}"
    );
    // And the host was back within the bound plus one more start (the rollback's own),
    // staging the bad version included: nowhere near startTimeout or the step deadline.
    assert!(
        back_at - changing_at < 10_000,
        "back on 1.0.0 only {} ms after the change began\n{log}",
        back_at - changing_at
    );
}

/// A version that never answers (it does not listen for two minutes) is a start still under
/// way: it fails at the agent's `startTimeout`, no longer at the step's deadline, which the CLI
/// used to send as the activation's timeout.
fn silence_fails_at_the_agents_start_timeout(fleet: &Fleet) {
    let silent = fleet.artifact("3.0.0", "--start-delay-ms 120000");
    let manifest = fleet.manifest(
        "3.0.0",
        &silent,
        "    rolling: {maxSurge: 0, maxUnavailable: 1}\n",
        DEADLINE_S,
    );
    let mut run =
        Running::spawn(fleet.rollgate(&["apply", "-f", manifest.to_str().unwrap(), "-o", "json"]));
    let code = run.finish(Duration::from_secs(2 * DEADLINE_S));
    let log = run.describe();
    assert_eq!(
        code,
        Some(1),
        "a rolled-back rollout\n{log}{}",
        run.output()
    );
    fleet.assert_serving("1.0.0");
    let detail = run
        .records
        .iter()
        .find_map(|r| match &r.event {
            Event::InstanceChanged {
                version,
                ok: false,
                detail,
                ..
            } if version == "3.0.0" => Some(detail.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("a failed activation of 3.0.0\n{log}"));
    assert!(
        detail.contains(&format!(
            "not running and healthy within {} ms",
            START_TIMEOUT_S * 1000
        )),
        "the agent's startTimeout decided: {detail}"
    );
    let took = (0..fleet.hosts.len())
        .flat_map(|i| activations(fleet, i))
        .filter(|o| o.version.as_deref() == Some("3.0.0"))
        .map(|o| {
            assert_eq!(o.state, OperationState::Failed, "{o:?}");
            took_ms(&o)
        })
        .max()
        .expect("an activation of 3.0.0");
    eprintln!(
        "agent_health: a version that never answers failed its activation in {took} ms (startTimeout {START_TIMEOUT_S} s, step deadline {DEADLINE_S} s)"
    );
    assert!(
        (START_TIMEOUT_S * 1000..START_TIMEOUT_S * 1000 + 3000).contains(&took),
        "the activation took {took} ms: startTimeout is {START_TIMEOUT_S} s\n{log}"
    );
}
