//! The dashboard's HTTP API through a real `rollgate dashboard`: every guard refuses with its
//! status and changes nothing; a record appended to the journal reaches a live view within 1 s.

use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rollgate::state::Event;

use super::support::{ROLLGATE, Served, csrf, started_rollout};

async fn post(
    url: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, serde_json::Value) {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(t) = token {
        request = request.header("x-csrf-token", t);
    }
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn posts_need_the_page_token_this_origin_a_known_app_and_json_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = started_rollout(dir.path());
    let served = Served::start(dir.path());
    let response = reqwest::get(&served.url).await.unwrap();
    // The browser is told to load nothing from anywhere else, and not to be framed.
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .unwrap();
    assert!(csp.starts_with("default-src 'self';"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    let page = response.text().await.unwrap();
    let token = csrf(&page);
    let actions = format!("{}api/apps/web/actions", served.url);
    let pause = r#"{"action":"pause"}"#;

    let (status, body) = post(&actions, None, &[], pause).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("X-CSRF-Token"));
    let wrong = "0".repeat(64);
    assert_eq!(post(&actions, Some(&wrong), &[], pause).await.0, 403);
    let (status, body) = post(
        &actions,
        Some(&token),
        &[("origin", "http://evil.example")],
        pause,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("Origin"), "{body}");

    let unknown = format!("{}api/apps/nope/actions", served.url);
    let (status, body) = post(&unknown, Some(&token), &[], pause).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = post(&actions, Some(&token), &[], "{\"action\": ").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("expected"),
        "{body}"
    );
    let (status, body) = post(&actions, Some(&token), &[], r#"{"action":"deploy"}"#).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("deploy"), "{body}");

    // Another site's name resolved to 127.0.0.1 (DNS rebinding) is refused, even for a GET.
    let rebound = reqwest::Client::new()
        .get(format!("{}api/apps/web", served.url))
        .header("host", "evil.example:80")
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status().as_u16(), 403);
    let missing = reqwest::get(format!("{}api/apps/nope", served.url))
        .await
        .unwrap();
    assert_eq!(missing.status().as_u16(), 404);

    // Nothing was asked of the rollout and nothing was journaled.
    assert_eq!(store.control_count("web"), 0);
    assert_eq!(store.read("web").unwrap().len(), 3);

    // With the token, the page's own origin and a known action, it is accepted (pause, with no
    // rollout running, is answered by the CLI's own check: exit 1, nothing to pause).
    let origin = served.url.trim_end_matches('/').to_string();
    let (status, body) = post(&actions, Some(&token), &[("origin", &origin)], pause).await;
    assert_eq!(status, 202, "{body}");
    let view_url = format!("{}api/apps/web", served.url);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v: serde_json::Value = reqwest::get(&view_url).await.unwrap().json().await.unwrap();
        if v["action"]["state"] != "running" {
            assert_eq!(v["action"]["action"], "pause", "{v}");
            assert_eq!(v["action"]["code"], 1, "{v}");
            assert_eq!(v["view"]["state"], "inProgress", "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "the pause did not finish: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served.stop().success());
}

#[tokio::test]
async fn a_record_appended_to_the_journal_reaches_the_live_view_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let store = started_rollout(dir.path());
    let served = Served::start(dir.path());
    let response = reqwest::get(format!("{}api/apps/web/events", served.url))
        .await
        .unwrap();
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut stream = response.bytes_stream();
    let mut text = String::new();
    // The first view: host1 on 2.0.0, made from the three records.
    while !text.contains("\"records\":3") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("a first view within 10 s")
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains("event: record"), "{text}");
    assert!(text.contains("\"host1\""), "{text}");
    let appended = Instant::now();
    store
        .journal("web")
        .unwrap()
        .append(Event::InstanceChanging {
            rollout: "web-1".into(),
            instance: "host2".into(),
            version: "2.0.0".into(),
        })
        .unwrap();
    text.clear();
    while !text.contains("\"records\":4") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("the next view")
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let took = appended.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "the view came after {took:?}"
    );
    assert!(text.contains("\"switching\""), "{text}");
    println!("journal append -> live view: {took:?}");
}

#[test]
fn a_listen_address_off_loopback_or_malformed_or_an_unknown_context_or_etcd_is_a_usage_error() {
    // A kubeconfig with one context, `test`.
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"https://127.0.0.1:1\"}}]\nusers: [{name: u, user: {token: t}}]\ncontexts: [{name: test, context: {cluster: c, user: u}}]\ncurrent-context: test\n",
    )
    .unwrap();
    for (args, says) in [
        (["--listen", "0.0.0.0:7900"], "loopback"),
        (["--listen", "nowhere"], "IP address and port"),
        (["--context", "prod"], "no such context (it has: test)"),
        (
            ["--state", "etcd://127.0.0.1:1/x"],
            "team state on etcd is not shown",
        ),
    ] {
        let out = Command::new(ROLLGATE)
            .arg("dashboard")
            .args(args)
            .env("ROLLGATE_STATE", "/nonexistent")
            .env("KUBECONFIG", &kubeconfig)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(says) && stderr.contains(args[0]),
            "{stderr}"
        );
    }
}

/// A pause whose approvals must be signed is never approved from the page: the answer is the CLI
/// command to run, and nothing is journaled.
#[tokio::test]
async fn a_pause_needing_signed_approvals_answers_with_the_cli_command() {
    let dir = tempfile::tempdir().unwrap();
    let ca = rollgate::pki::init(&dir.path().join("team-pki")).unwrap();
    let hosts: String = (1..=4)
        .map(|i| {
            format!(
                "        - {{name: host{i}, address: \"127.0.0.1:{}\"}}\n",
                9000 + i
            )
        })
        .collect();
    let yaml = format!(
        "apiVersion: rollgate.dev/v1\nkind: Rollout\nmetadata:\n  name: web\nspec:\n  version: \"2.0.0\"\n  target:\n    hosts:\n      hosts:\n{hosts}  strategy:\n    canary:\n      maxUnavailable: 1\n      steps:\n        - setWeight: 25\n        - pause: {{approvals: 1, approvers: {{ca: \"{}\", allowed: [alice]}}}}\n        - setWeight: 100\n",
        ca.cert.display()
    );
    let path = dir.path().join("web.yaml");
    std::fs::write(&path, yaml).unwrap();
    let m = rollgate::spec::Manifest::load(&[path], None).unwrap();
    let (n, capacity) = rollgate::target::offline_size(&m.rollout.spec.target, None).unwrap();
    let plan = rollgate::plan::plan(&m.strategy, n, capacity).unwrap();
    let pause = plan
        .steps
        .iter()
        .position(|s| s.approvers.is_some())
        .unwrap();
    let state = dir.path().join("state");
    let store = rollgate::state::Store::at(&state);
    let id = "web-1";
    store.save_manifest("web", id, &m.resolved()).unwrap();
    store
        .journal("web")
        .unwrap()
        .append_all([
            Event::Started {
                rollout: id.into(),
                from: Some("1.0.0".into()),
                to: "2.0.0".into(),
                strategy: rollgate::state::StrategyKind::Canary,
                actor: super::support::actor(),
                steps: plan.steps.len(),
            },
            Event::StepStarted {
                rollout: id.into(),
                step: pause,
                kind: rollgate::plan::StepKind::Pause,
                note: "approvals".into(),
            },
            Event::Paused {
                rollout: id.into(),
                step: pause,
                reason: "waiting for 1 approval".into(),
            },
        ])
        .unwrap();
    let served = Served::start(&state);
    let page = reqwest::get(&served.url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let actions = format!("{}api/apps/web/actions", served.url);
    let (status, body) = post(&actions, Some(&csrf(&page)), &[], r#"{"action":"promote"}"#).await;
    assert_eq!(status, 409, "{body}");
    let cli = body["cli"].as_str().unwrap();
    assert!(
        cli.starts_with(&format!(
            "ROLLGATE_STATE={} rollgate promote web --key ",
            state.display()
        )),
        "{cli}"
    );
    assert!(cli.contains(" --cert "), "{cli}");
    // The view marks the step as needing signatures; nothing was journaled or sent.
    let v: serde_json::Value = reqwest::get(format!("{}api/apps/web", served.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["view"]["steps"][pause]["signed"], true, "{v}");
    assert_eq!(v["view"]["steps"][pause]["approvalsNeeded"], 1, "{v}");
    assert_eq!(
        v["view"]["steps"][pause]["approvedBy"],
        serde_json::json!([]),
        "{v}"
    );
    assert_eq!(v["view"]["steps"][pause]["state"], "paused", "{v}");
    assert_eq!(store.read("web").unwrap().len(), 3);
    assert_eq!(store.control_count("web"), 0);
}

/// `rollgate dashboard` as the README shows it: 127.0.0.1:7900 (when that port is free here).
#[test]
fn the_default_address_is_loopback_port_7900() {
    if std::net::TcpListener::bind("127.0.0.1:7900").is_err() {
        println!("SKIP: 127.0.0.1:7900 is taken here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(ROLLGATE)
        .arg("dashboard")
        .env("ROLLGATE_STATE", dir.path())
        .env_remove("ROLLGATE_STATE_URL")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "http://127.0.0.1:7900/\n");
    assert!(super::support::interrupt_and_wait(child).success());
}
