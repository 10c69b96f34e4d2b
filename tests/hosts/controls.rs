//! Every control names who gave it (issue 19): a pause sent to the running rollout, a resume, and
//! an abort are journaled with the actor and how far its identity is proven (here: the subject of
//! the client certificate the CLI reaches the fleet with), and `history` shows them in order.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rollgate::cli::demo::{LocalFleet, package_demo};

fn rollgate(state: &Path, user: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rollgate"));
    c.env("ROLLGATE_STATE", state).env("ROLLGATE_USER", user);
    c
}

fn run(state: &Path, user: &str, args: &[&str]) -> (i32, String) {
    let out = rollgate(state, user).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn last_rollout(state: &Path) -> serde_json::Value {
    let (code, out) = run(state, "auditor", &["history", "web", "-o", "json"]);
    assert_eq!(code, 0, "{out}");
    let all: serde_json::Value = serde_json::from_str(&out).unwrap();
    all.as_array().unwrap().last().unwrap().clone()
}

/// Sends `verb` as `user` until a running rollout takes it ("request sent"), for up to 60 s.
fn send_to_running(state: &Path, user: &str, verb: &str) {
    let start = Instant::now();
    let mut tries = Vec::new();
    loop {
        let (code, out) = run(state, user, &[verb, "web", "-o", "plain"]);
        tries.push(format!("{:?} exit {code}: {}", start.elapsed(), out.trim()));
        if code == 0 && out.contains("request sent") {
            eprintln!("{user}: {verb}: {}", tries.join("\n"));
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{verb} never reached a running rollout: {}",
            tries.join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A canary manifest of `version` (its demo artifact packaged into `artifacts`) for `fleet`, with
/// `steps` (YAML list items); returns its path.
fn canary(dir: &Path, fleet: &LocalFleet, artifacts: &Path, version: &str, steps: &str) -> String {
    let artifact = package_demo(artifacts, version, "").unwrap();
    let path = dir.join(format!("v{version}.yaml"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: rollgate.dev/v1\nkind: Rollout\nmetadata: {{name: web}}\nspec:\n  version: \"{version}\"\n  target:\n    hosts:\n      service: web\n      artifact: {{file: \"{}\"}}\n      auth: {}\n      hosts:\n{}  strategy:\n    canary:\n      maxUnavailable: 1\n      steps:\n{steps}  progressDeadlineSeconds: 20\n",
            artifact.display(),
            fleet.auth_yaml(),
            fleet.hosts_yaml("        "),
        ),
    )
    .unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_and_abort_each_name_who_gave_them() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = LocalFleet::start(dir.path(), 3, 1).await.unwrap();
    let artifacts = dir.path().join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let state = dir.path().join("state");
    let manifest =
        |version: &str, steps: &str| canary(dir.path(), &fleet, &artifacts, version, steps);
    let v1 = manifest("1.0.0", "        - setWeight: 100\n");
    let (code, out) = run(&state, "ana", &["apply", "-o", "plain", "-f", &v1]);
    assert_eq!(code, 0, "{out}");

    // v2 soaks a minute after a third of the fleet: long enough for the controls to reach it.
    let v2 = manifest(
        "2.0.0",
        "        - setWeight: 34\n        - pause: {duration: 60s}\n        - setWeight: 100\n",
    );
    let apply = rollgate(&state, "ana")
        .args(["apply", "-o", "plain", "-f", &v2])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once it has started (a `pause` before that would take the free lock to look, and could
    // make the apply find the app locked), ben pauses it.
    let end = Instant::now() + Duration::from_secs(30);
    while last_rollout(&state)["to"] != "2.0.0" {
        assert!(Instant::now() < end, "the v2 apply never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    send_to_running(&state, "ben", "pause");
    let out = apply.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "the apply stops paused: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // cy resumes it; once the resume is journaled, ana aborts it while it soaks again.
    let resume = rollgate(&state, "cy")
        .args(["resume", "web", "-o", "plain"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(30);
    while last_rollout(&state)["controls"].as_array().unwrap().len() < 2 {
        assert!(Instant::now() < end, "the resume was never journaled");
        std::thread::sleep(Duration::from_millis(200));
    }
    send_to_running(&state, "ana", "abort");
    let out = resume.wait_with_output().unwrap();
    assert_ne!(
        out.status.code(),
        Some(0),
        "the aborted resume does not report success"
    );

    let r = last_rollout(&state);
    assert_eq!(r["outcome"], "aborted", "{r}");
    let controls: Vec<(String, String, String)> = r["controls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["action"].as_str().unwrap().to_string(),
                c["actor"]["user"].as_str().unwrap().to_string(),
                c["actor"]["client"].as_str().unwrap_or("-").to_string(),
            )
        })
        .collect();
    let want = |a: &str, u: &str| (a.to_string(), u.to_string(), "demo".to_string());
    assert_eq!(
        controls,
        [
            want("pause", "ben"),
            want("resume", "cy"),
            want("abort", "ana")
        ],
        "{r}"
    );

    // The text history says who, and how far each identity is proven.
    let (code, out) = run(&state, "auditor", &["history", "web"]);
    assert_eq!(code, 0, "{out}");
    // (Which step each control met depends on timing: the lines are matched without it.)
    for (action, who) in [("paused", "ben"), ("resumed", "cy"), ("aborted", "ana")] {
        assert!(
            out.lines().any(
                |l| l.trim_start().starts_with(&format!("{action} at step "))
                    && l.contains(&format!(" by {who}@"))
                    && l.contains("[client certificate demo]")
            ),
            "history shows that {who} {action}, proven by the client certificate: {out}"
        );
    }
}

/// `apply --wait` (issue 23): at a manual pause the run keeps going, holding the lock, and acts at
/// once on a `promote` from another process (the rollout completes, exit 0, the promoter
/// recorded), then, in a second rollout, on an `abort` (rolled back, exit 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_wait_acts_on_a_promote_or_an_abort_from_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = LocalFleet::start(dir.path(), 3, 1).await.unwrap();
    let artifacts = dir.path().join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let state = dir.path().join("state");
    let manifest =
        |version: &str, steps: &str| canary(dir.path(), &fleet, &artifacts, version, steps);
    let (code, out) = run(
        &state,
        "ana",
        &[
            "apply",
            "-o",
            "plain",
            "-f",
            &manifest("1.0.0", "        - setWeight: 100\n"),
        ],
    );
    assert_eq!(code, 0, "{out}");
    let paused = "        - setWeight: 34\n        - pause: {}\n        - setWeight: 100\n";

    // Waits until the apply of `version` is paused, then has `who` send `verb`; returns the
    // apply's exit code and output, and how long it ran after the request was sent.
    let waited = |version: &str, who: &str, verb: &str| {
        let path = manifest(version, paused);
        let apply = rollgate(&state, "ana")
            .args(["apply", "--wait", "-o", "plain", "-f", &path])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let r = last_rollout(&state);
            if r["to"] == version && r["paused"].is_string() {
                break;
            }
            assert!(
                Instant::now() < end,
                "the apply of {version} never paused: {r}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // Still running: it waits instead of ending with exit 3.
        std::thread::sleep(Duration::from_millis(500));
        let (code, out) = run(&state, who, &[verb, "web", "-o", "plain"]);
        assert_eq!(code, 0, "{verb} reaches the waiting apply: {out}");
        assert!(
            out.contains("sent"),
            "{verb} is a request to the running rollout: {out}"
        );
        let sent = Instant::now();
        let mut apply = apply;
        while apply.try_wait().unwrap().is_none() {
            if sent.elapsed() > Duration::from_secs(60) {
                apply.kill().unwrap();
                panic!("the apply did not act on the {verb} within 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = apply.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text, sent.elapsed())
    };

    let (code, text, after) = waited("2.0.0", "ben", "promote");
    assert_eq!(
        code,
        Some(0),
        "promoted, the apply completes the rollout: {text}"
    );
    assert!(
        after < Duration::from_secs(20),
        "acted on at once: {after:?}"
    );
    let r = last_rollout(&state);
    assert_eq!(r["outcome"], "succeeded", "{r}");
    let approvals = r["approvals"].as_array().unwrap();
    assert_eq!(approvals.len(), 1, "{r}");
    assert_eq!(
        approvals[0]["actor"]["user"], "ben",
        "the promoter is recorded: {r}"
    );
    assert_eq!(approvals[0]["step"], 1, "at the pause: {r}");

    let (code, text, _) = waited("3.0.0", "cy", "abort");
    assert_eq!(code, Some(1), "aborted, the apply rolls back: {text}");
    let r = last_rollout(&state);
    assert_eq!(r["outcome"], "aborted", "{r}");
    assert_eq!(r["controls"][0]["actor"]["user"], "cy", "{r}");
    for i in r["instances"].as_array().unwrap() {
        assert_eq!(i[1], "2.0.0", "every instance back on 2.0.0: {r}");
    }
}
