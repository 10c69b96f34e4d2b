//! The dashboard against a real canary on the cluster: its grid for pods groups them by the
//! ReplicaSets the cluster has, with as many pods of each version as are Ready there; and with
//! `--namespace`, another machine lists the app from its team state in the cluster, read only.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use kube::ResourceExt;
use serde_json::Value;

use crate::kube_bed::{self, Bed, image};

const N: i32 = 4;

/// `rollgate dashboard` on a free loopback port over the bed's state dir; it is interrupted
/// (SIGINT, as Ctrl-C) when dropped.
struct Dashboard {
    url: String,
    child: std::process::Child,
}

impl Dashboard {
    fn start(bed: &Bed, state: &str, flags: &[&str]) -> Dashboard {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rollgate"))
            .args(["dashboard", "--listen", "127.0.0.1:0"])
            .args(flags)
            .env("ROLLGATE_STATE", bed.path(state))
            .env("KUBECONFIG", bed.cluster.kubeconfig())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("rollgate dashboard starts");
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .expect("the dashboard prints its URL");
        Dashboard {
            url: first.trim().to_string(),
            child,
        }
    }

    async fn view(&self) -> Value {
        let body: Value = reqwest::get(format!("{}api/apps/web", self.url))
            .await
            .expect("GET /api/apps/web")
            .json()
            .await
            .expect("JSON");
        body["view"].clone()
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = self.child.wait();
    }
}

/// The page in a headless Chromium (Debian's, as tests/dashboard drives it), when installed:
/// what its instance grid and action bar show, with a screenshot under `target/`.
async fn in_chromium(url: &str, screenshot: &str) -> Option<Value> {
    let driver = std::path::PathBuf::from("/usr/bin/chromedriver");
    let chromium = std::path::PathBuf::from("/usr/bin/chromium");
    if !driver.is_file() || !chromium.is_file() {
        eprintln!("SKIP the page in Chromium: chromium and chromium-driver are not installed");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(&driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let caps = serde_json::json!({"goog:chromeOptions": {"binary": chromium,
        "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,900", "--no-proxy-server"]}});
    let caps = caps.as_object().unwrap().clone();
    let mut client = None;
    for _ in 0..150 {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        if let Ok(c) = fantoccini::ClientBuilder::new(connector)
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            client = Some(c);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let client = client.expect("chromedriver answers");
    client.goto(&format!("{url}#web")).await.unwrap();
    let read = r##"
      const zones = [...document.querySelectorAll(".zone")];
      return zones.length && document.body.dataset.records ? {
        groups: zones.map(z => [z.dataset.kind, z.dataset.zone, z.querySelector("h3").textContent, z.querySelectorAll(".inst").length]),
        buttons: [...document.querySelectorAll("#actions button")].filter(b => !b.hidden).map(b => b.id),
        readOnly: document.getElementById("read-only").hidden ? null : document.getElementById("read-only").textContent,
        nav: [...document.querySelectorAll("nav a")].map(a => [a.dataset.app, a.dataset.source]),
      } : null;"##;
    let mut shown = Value::Null;
    for _ in 0..150 {
        shown = client.execute(read, vec![]).await.unwrap();
        if !shown.is_null() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(screenshot), client.screenshot().await.unwrap()).unwrap();
    client.close().await.unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(!shown.is_null(), "the page never drew its grid");
    Some(shown)
}

/// (group kind, name, version, pods) of each group the dashboard shows.
fn groups(view: &Value) -> Vec<(String, String, String, usize)> {
    view["zones"]
        .as_array()
        .expect("zones")
        .iter()
        .map(|z| {
            (
                z["kind"].as_str().unwrap().to_string(),
                z["zone"].as_str().unwrap().to_string(),
                z["version"].as_str().unwrap_or("").to_string(),
                z["instances"].as_array().unwrap().len(),
            )
        })
        .collect()
}

/// Ready pods of version 1 and of version 2, as the cluster has them.
async fn ready(bed: &Bed) -> (usize, usize) {
    let pods = bed.pods.list(&Default::default()).await.expect("pods");
    let of = |v: &str| {
        pods.items
            .iter()
            .filter(|p| kube_bed::is_ready(p) && kube_bed::pod_image(p) == Some(image(v).as_str()))
            .count()
    };
    (of("1"), of("2"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_groups_a_canarys_pods_by_replica_set_as_the_cluster_has_them() {
    let Some(bed) = Bed::new("dashboard", N, "25%", "0").await else {
        return;
    };
    let rollout = bed.rollout(
        "web.yaml",
        "2",
        &format!("image: \"{}\"", image("2")),
        "  strategy:\n    canary: {maxSurge: 1, maxUnavailable: 0, steps: [{setWeight: 25}, {pause: {}}]}\n  progressDeadlineSeconds: 60\n",
    );
    let rollout = rollout.to_str().unwrap();
    let out = bed.rollgate(&["apply", "-f", rollout]).await;
    assert_eq!(out.status.code(), Some(3), "paused at 25%");
    let dashboard = Dashboard::start(&bed, "state", &[]);

    // Paused: the stable pods under the Deployment, the canary's under its ReplicaSet, which is
    // one the cluster has, each group as many pods as are Ready.
    let (old, new) = ready(&bed).await;
    assert_eq!((old, new), (3, 1), "the cluster at 25%");
    let view = dashboard.view().await;
    // The plan's row: a Kubernetes target is sized by its cluster, and the dashboard finds the
    // size whose plan has the counts the journal recorded; its steps are `plan`'s for that size.
    let out = bed
        .rollgate(&[
            "plan",
            "-f",
            rollout,
            "--replicas",
            &N.to_string(),
            "-o",
            "json",
        ])
        .await;
    let plan: Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
    let planned: Vec<(String, String, bool)> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["kind"].as_str().unwrap().to_string(),
                s["note"].as_str().unwrap().to_string(),
                s["manual"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    let shown: Vec<(String, String, bool)> = view["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["kind"].as_str().unwrap().to_string(),
                s["note"].as_str().unwrap().to_string(),
                s["manual"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(shown, planned, "{view:#}");
    assert!(shown.iter().any(|s| s.0 == "pause" && s.2), "{shown:?}");
    let g = groups(&view);
    assert_eq!(g.len(), 2, "{view:#}");
    assert_eq!((g[0].0.as_str(), g[0].1.as_str()), ("stable", "web"));
    assert_eq!((g[0].2.as_str(), g[0].3), ("1", old), "{view:#}");
    assert_eq!(g[1].0, "replicaSet");
    assert_eq!((g[1].2.as_str(), g[1].3), ("2", new), "{view:#}");
    let names: Vec<String> = bed
        .replica_sets()
        .await
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    assert!(names.contains(&g[1].1), "{} is not among {names:?}", g[1].1);
    // The page draws the same groups, headed by their ReplicaSet and version.
    if let Some(page) = in_chromium(&dashboard.url, "7-kubernetes-replica-sets.png").await {
        let groups = page["groups"].as_array().unwrap();
        assert_eq!(groups.len(), 2, "{page:#}");
        assert_eq!(groups[0][0], "stable", "{page:#}");
        assert_eq!(
            groups[0][2], "stable ReplicaSet of web (1) · 3 pods",
            "{page:#}"
        );
        assert_eq!(groups[0][3], 3, "{page:#}");
        assert_eq!(groups[1][1], g[1].1.as_str(), "{page:#}");
        assert_eq!(
            groups[1][2],
            format!("ReplicaSet {} (2) · 1 pod", g[1].1).as_str(),
            "{page:#}"
        );
        assert_eq!(groups[1][3], 1, "{page:#}");
        assert!(page["readOnly"].is_null(), "{page:#}");
        assert_eq!(
            page["buttons"],
            serde_json::json!(["act-promote", "act-abort"]),
            "{page:#}"
        );
    }

    // Promoted: every pod in the new ReplicaSet, the stable group gone.
    let out = bed.rollgate(&["promote", "web"]).await;
    assert!(out.status.success(), "promoted to the end");
    bed.wait_deployment("version 2 rolled out", |d| {
        kube_bed::rolled_out(d, N, &image("2"))
    })
    .await;
    let view = dashboard.view().await;
    let g = groups(&view);
    assert_eq!(g.len(), 1, "{view:#}");
    assert_eq!(
        (g[0].0.as_str(), g[0].2.as_str(), g[0].3),
        ("replicaSet", "2", N as usize),
        "{view:#}"
    );
    drop(dashboard);

    // Another machine (an empty state dir) with --namespace: the app is listed from the team
    // state in the cluster and shown read only; an action is refused with the command to run.
    let other = Dashboard::start(&bed, "other-state", &["--namespace", &bed.ns]);
    let http = reqwest::Client::new();
    let apps: Value = http
        .get(format!("{}api/apps", other.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(apps["namespace"], bed.ns.as_str(), "{apps:#}");
    assert_eq!(apps["apps"][0]["app"], "web", "{apps:#}");
    assert_eq!(apps["apps"][0]["source"], "cluster", "{apps:#}");
    assert_eq!(apps["apps"][0]["state"], "succeeded", "{apps:#}");
    let body: Value = http
        .get(format!("{}api/apps/web", other.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["cluster"]["namespace"], bed.ns.as_str(), "{body:#}");
    assert_eq!(body["view"]["rollout"]["to"], "2", "{body:#}");
    assert_eq!(
        groups(&body["view"]),
        g,
        "the same picture from the cluster"
    );
    let page = http
        .get(&other.url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let at = page.find("name=\"csrf-token\" content=\"").unwrap() + 27;
    let refused = http
        .post(format!("{}api/apps/web/actions", other.url))
        .header("x-csrf-token", &page[at..at + 64])
        .json(&serde_json::json!({"action": "rollback"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 409);
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(
        refused["cli"],
        format!("rollgate rollback web --namespace {}", bed.ns).as_str(),
        "{refused:#}"
    );
    // The page: the app marked as the cluster's, no buttons, the command to run instead.
    if let Some(page) = in_chromium(&other.url, "8-kubernetes-team-state-read-only.png").await {
        assert_eq!(
            page["nav"],
            serde_json::json!([["web", "cluster"]]),
            "{page:#}"
        );
        assert_eq!(page["buttons"], serde_json::json!([]), "{page:#}");
        let note = page["readOnly"].as_str().unwrap_or_default();
        assert!(note.contains(&format!("namespace {}", bed.ns)), "{page:#}");
    }
    drop(other);
    bed.finish().await;
}
