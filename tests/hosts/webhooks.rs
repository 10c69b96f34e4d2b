//! Lifecycle webhooks and notifications against a recording HTTP receiver: their order and payloads,
//! a receiver that answers 500, and one that never answers.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{StatusCode, Uri};
use rollgate::cli::demo::{LocalFleet, package_demo};

type Calls = Arc<Mutex<Vec<(String, serde_json::Value)>>>;

/// Records every POST; `/fail*` answers 500, `/slow*` answers after 30 s, the rest 200. A
/// `stepPassed` notification is recorded only after 1.5 s (longer than the post-rollout hook's
/// timeout that comes before `succeeded`), so a sender that does not keep a receiver's events in
/// order is caught.
async fn receiver() -> (String, Calls) {
    let calls: Calls = Arc::default();
    let recorded = calls.clone();
    let app = axum::Router::new().fallback(move |uri: Uri, body: Bytes| {
        let recorded = recorded.clone();
        async move {
            let path = uri.path().to_string();
            let json: serde_json::Value =
                serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
            if path == "/notify" && json["event"] == "stepPassed" {
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
            recorded.lock().unwrap().push((path.clone(), json));
            if path.starts_with("/slow") {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            if path.starts_with("/fail") {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::OK
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, calls)
}

fn manifest(fleet: &LocalFleet, version: &str, artifact: &Path, extra: &str) -> String {
    format!(
        "apiVersion: rollgate.dev/v1\nkind: Rollout\nmetadata: {{name: web}}\nspec:\n  version: \"{version}\"\n  target:\n    hosts:\n      service: web\n      artifact: {{file: \"{artifact}\"}}\n      auth: {auth}\n      hosts:\n{hosts}  strategy:\n    canary:\n      maxUnavailable: 1\n      steps:\n        - setWeight: 50\n        - setWeight: 100\n  checks:\n    - name: health\n      http: {{url: \"http://127.0.0.1:{{port}}/health\"}}\n      interval: 100ms\n  progressDeadlineSeconds: 8\n{extra}",
        artifact = artifact.display(),
        auth = fleet.auth_yaml(),
        hosts = fleet.hosts_yaml("        "),
    )
}

fn hooks(url: &str, confirm_rollout: &str, confirm_promotion: &str) -> String {
    format!(
        "  webhooks:\n    - {{name: gate, type: confirm-rollout, url: \"{url}/{confirm_rollout}\", timeout: 1s, retries: 0}}\n    - {{name: pre, type: pre-rollout, url: \"{url}/pre\"}}\n    - {{name: promo, type: confirm-promotion, url: \"{url}/{confirm_promotion}\", timeout: 1s, retries: 1}}\n    - {{name: post, type: post-rollout, url: \"{url}/slow-post\", timeout: 1s, retries: 0}}\n    - {{name: rb, type: rollback, url: \"{url}/rollback\"}}\n    - {{name: ev, type: event, url: \"{url}/event\"}}\n  notifications:\n    - {{url: \"{url}/notify\"}}\n    - {{url: \"{url}/fail-slack\", format: slack, events: [succeeded, rolledBack]}}\n"
    )
}

async fn apply(state: &Path, file: &Path) -> (i32, String) {
    let (state, file) = (state.to_path_buf(), file.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_rollgate"))
            .args(["apply", "-o", "plain", "-f"])
            .arg(&file)
            .env("ROLLGATE_STATE", &state)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    })
    .await
    .unwrap()
}

fn paths(calls: &Calls, prefix: &str) -> Vec<(String, serde_json::Value)> {
    calls
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, _)| p.starts_with(prefix))
        .cloned()
        .collect()
}

fn take(calls: &Calls) -> Vec<String> {
    let taken: Vec<String> = calls.lock().unwrap().drain(..).map(|(p, _)| p).collect();
    taken
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_gate_and_report_and_notifications_never_block() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = LocalFleet::start(dir.path(), 2, 1).await.unwrap();
    let artifacts = dir.path().join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let state = dir.path().join("state");
    let (url, calls) = receiver().await;
    let v1 = package_demo(&artifacts, "1.0.0", "").unwrap();
    let v2 = package_demo(&artifacts, "2.0.0", "").unwrap();
    let v3 = package_demo(&artifacts, "3.0.0", "--health-status 500").unwrap();
    let write = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };

    let (code, out) = apply(
        &state,
        &write("v1.yaml", manifest(&fleet, "1.0.0", &v1, "")),
    )
    .await;
    assert_eq!(code, 0, "{out}");

    // confirm-rollout answering 500 holds the rollout: exit 3, nothing recorded, nothing changed.
    let (code, out) = apply(
        &state,
        &write(
            "held.yaml",
            manifest(&fleet, "2.0.0", &v2, &hooks(&url, "fail-confirm", "promo")),
        ),
    )
    .await;
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("held, nothing changed") && out.contains("500"),
        "{out}"
    );
    assert_eq!(take(&calls), ["/fail-confirm"], "no other hook ran");
    let history = Command::new(env!("CARGO_BIN_EXE_rollgate"))
        .args(["history", "web", "-o", "json"])
        .env("ROLLGATE_STATE", &state)
        .output()
        .unwrap();
    let history: serde_json::Value = serde_json::from_slice(&history.stdout).unwrap();
    assert_eq!(
        history.as_array().unwrap().len(),
        1,
        "the held rollout left no record"
    );

    // Confirmed: every gating hook in order; post-rollout never answers and notifications to a 500
    // receiver fail, yet the rollout succeeds.
    let (code, out) = apply(
        &state,
        &write(
            "v2.yaml",
            manifest(&fleet, "2.0.0", &v2, &hooks(&url, "confirm", "promo")),
        ),
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("slow-post") && out.contains("did not answer within 1s"),
        "post-rollout's timeout is reported: {out}"
    );
    assert!(
        out.contains("fail-slack answered 500"),
        "a failed notification is reported, not fatal: {out}"
    );
    let gating: Vec<String> = calls
        .lock()
        .unwrap()
        .iter()
        .map(|(p, _)| p.clone())
        .filter(|p| ["/confirm", "/pre", "/promo", "/slow-post"].contains(&p.as_str()))
        .collect();
    assert_eq!(gating, ["/confirm", "/pre", "/promo", "/slow-post"]);
    let (_, pre) = &paths(&calls, "/pre")[0];
    assert_eq!(
        (
            pre["app"].as_str(),
            pre["fromVersion"].as_str(),
            pre["toVersion"].as_str(),
            pre["phase"].as_str()
        ),
        (
            Some("web"),
            Some("1.0.0"),
            Some("2.0.0"),
            Some("pre-rollout")
        )
    );
    let events: Vec<String> = paths(&calls, "/notify")
        .iter()
        .map(|(_, b)| b["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(events.first().map(String::as_str), Some("started"));
    assert_eq!(events.last().map(String::as_str), Some("succeeded"));
    assert!(
        events.iter().filter(|e| *e == "stepPassed").count() >= 2,
        "{events:?}"
    );
    let slack = paths(&calls, "/fail-slack");
    assert_eq!(slack.len(), 1, "only the events it asked for");
    assert!(
        slack[0].1["text"]
            .as_str()
            .unwrap()
            .contains("web 1.0.0 → 2.0.0: succeeded"),
        "{slack:?}"
    );
    assert!(
        paths(&calls, "/event").len() >= 5,
        "every journal event goes to the event hook"
    );
    take(&calls);

    // A failing v3: the rollback hook and the rolledBack notifications carry the reason.
    let (code, out) = apply(
        &state,
        &write(
            "v3.yaml",
            manifest(&fleet, "3.0.0", &v3, &hooks(&url, "confirm", "promo")),
        ),
    )
    .await;
    assert_eq!(code, 1, "{out}");
    let rb = paths(&calls, "/rollback");
    assert_eq!(rb.len(), 1);
    assert!(
        rb[0].1["reason"].as_str().unwrap().contains("3.0.0"),
        "{rb:?}"
    );
    assert!(
        paths(&calls, "/promo").is_empty(),
        "never got as far as promotion"
    );
    let events: Vec<String> = paths(&calls, "/notify")
        .iter()
        .map(|(_, b)| b["event"].as_str().unwrap().to_string())
        .collect();
    assert!(
        events.ends_with(&["failed".to_string(), "rolledBack".to_string()]),
        "{events:?}"
    );
    take(&calls);

    // confirm-promotion answering 500 (after its retry) pauses before going to everyone.
    let v4 = package_demo(&artifacts, "4.0.0", "").unwrap();
    let (code, out) = apply(
        &state,
        &write(
            "v4.yaml",
            manifest(&fleet, "4.0.0", &v4, &hooks(&url, "confirm", "fail-promo")),
        ),
    )
    .await;
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("promotion not confirmed"), "{out}");
    assert_eq!(paths(&calls, "/fail-promo").len(), 2, "one retry");
    drop(fleet);
}
