//! The dashboard in a real headless Chromium (Debian's `chromium` and `chromium-driver`, driven
//! over WebDriver) against a real rollout: four `rollgate-agent`s on loopback running the demo
//! service, rolled out by the real `rollgate` CLI. Screenshots of each state go to
//! `target/dashboard-screenshots/`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use rollgate::cli::demo::{LocalFleet, package_demo};
use serde_json::{Value, json};

use super::support::{ROLLGATE, Served, interrupt_and_wait};

/// chromedriver and chromium, or why the test cannot run. Without them and without root (which
/// tests/run.sh needs to install them) the test is skipped; as root their absence is a failure.
pub(super) fn browser() -> Option<(PathBuf, PathBuf)> {
    let find = |name: &str| {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .chain([
                PathBuf::from("/usr/bin"),
                PathBuf::from("/usr/lib/chromium"),
            ])
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    };
    match (find("chromedriver"), find("chromium")) {
        (Some(driver), Some(chromium)) => Some((driver, chromium)),
        _ if nix::unistd::Uid::effective().is_root() => panic!(
            "chromium and chromedriver are not installed: tests/run.sh installs them as root \
             (apt-get install chromium chromium-driver)"
        ),
        _ => {
            eprintln!(
                "SKIP dashboard browser test: chromium and chromedriver are not installed and this \
                 is not root (tests/run.sh installs Debian's chromium and chromium-driver as root)"
            );
            None
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(super) struct Driver(Option<Child>);

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(child) = self.0.take() {
            interrupt_and_wait(child);
        }
    }
}

pub(super) async fn connect(driver: &Path, chromium: &Path) -> (Driver, Client) {
    let port = free_port();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let guard = Driver(Some(child));
    let caps = json!({"goog:chromeOptions": {
        "binary": chromium,
        "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,1100", "--no-first-run", "--no-proxy-server"],
    }});
    let caps = caps.as_object().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(client) => return (guard, client),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("chromedriver on port {port}: {e}"),
        }
    }
}

/// What the page shows, read from its DOM: state, instances (name -> version, state), step
/// states, gate results, promote button, the rollback line.
const READ_PAGE: &str = r##"
const inst = {};
for (const e of document.querySelectorAll(".inst")) inst[e.dataset.instance] = [e.dataset.version, e.dataset.state, e.closest(".zone").dataset.zone];
const promote = document.getElementById("act-promote");
return {
  state: (document.getElementById("state") || {}).textContent || null,
  instances: inst,
  steps: [...document.querySelectorAll("#steps li")].map(e => e.className),
  gates: [...document.querySelectorAll("#gates tbody tr")].map(e => e.textContent),
  promote: !!promote && !promote.hidden && !promote.disabled,
  rollback: (document.getElementById("rollback") || {}).textContent || null,
  action: document.getElementById("action-status").textContent,
  history: document.querySelectorAll("#history li").length,
};
"##;

async fn page(client: &Client) -> Value {
    client.execute(READ_PAGE, vec![]).await.unwrap()
}

/// Waits (up to 90 s) until the page satisfies `ok`, returning what it showed.
async fn until(client: &Client, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let p = page(client).await;
        if ok(&p) {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed {what}: {p:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn versions(p: &Value) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = p["instances"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v[0].as_str().unwrap().to_string()))
        .collect();
    v.sort();
    v
}

fn all_on(p: &Value, version: &str) -> bool {
    let v = versions(p);
    v.len() == 4 && v.iter().all(|(_, ver)| ver == version)
}

async fn screenshot(client: &Client, name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, client.screenshot().await.unwrap()).unwrap();
    path
}

/// Runs `rollgate apply` as a process and returns its exit code.
async fn apply(state: &Path, manifest: PathBuf) -> i32 {
    let state = state.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(ROLLGATE)
            .args(["apply", "-o", "plain", "-f"])
            .arg(&manifest)
            .env("ROLLGATE_STATE", &state)
            .output()
            .unwrap();
        println!(
            "apply {}: {:?}\n{}{}",
            manifest.display(),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out.status.code().unwrap_or(-1)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_rollout_shown_promoted_and_rolled_back_in_headless_chromium() {
    let Some((driver, chromium)) = browser() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let fleet = LocalFleet::start(dir.path(), 4, 1).await.unwrap();
    let artifacts = dir.path().join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let state = dir.path().join("state");
    let manifest = |version: &str, flags: &str, strategy: &str| {
        let artifact = package_demo(&artifacts, version, flags).unwrap();
        let text = format!(
            "apiVersion: rollgate.dev/v1\nkind: Rollout\nmetadata:\n  name: web\nspec:\n  version: \"{version}\"\n  target:\n    hosts:\n      service: web\n      spreadBy: zone\n      artifact: {{file: \"{artifact}\"}}\n      auth: {auth}\n      hosts:\n{hosts}  strategy:\n{strategy}  checks:\n    - name: health\n      http: {{url: \"http://127.0.0.1:{{port}}/\"}}\n      interval: 200ms\n      count: 3\n      successThreshold: 2\n      failureLimit: 0\n      timeout: 1s\n  rollback: {{auto: true}}\n  progressDeadlineSeconds: 30\n",
            artifact = artifact.display(),
            auth = fleet.auth_yaml(),
            hosts = fleet.hosts_yaml("        "),
        );
        let path = dir.path().join(format!("web-{version}.yaml"));
        std::fs::write(&path, text).unwrap();
        path
    };
    let install = "    rolling: {maxSurge: 0, maxUnavailable: \"100%\"}\n";
    let canary = "    canary:\n      maxUnavailable: 1\n      firstGroup: internal\n      steps:\n        - setWeight: 25\n        - pause: {}\n        - setWeight: 50\n";

    assert_eq!(apply(&state, manifest("1.0.0", "", install)).await, 0);
    let served = Served::start(&state);
    let (_driver, client) = connect(&driver, &chromium).await;
    client.goto(&format!("{}#web", served.url)).await.unwrap();

    // v1 everywhere, zones a (host1, host4), b, c.
    let p = until(&client, "v1 on every instance", |p| {
        p["state"] == "succeeded" && all_on(p, "1.0.0")
    })
    .await;
    assert_eq!(p["instances"]["host4"][2], "a", "{p:#}");
    assert_eq!(p["instances"]["host2"][2], "b", "{p:#}");
    assert!(
        !p["promote"].as_bool().unwrap(),
        "nothing to promote: {p:#}"
    );
    screenshot(&client, "1-v1-installed.png").await;

    // The canary's first step puts v2 on host1 (the internal ring), then waits for a promote.
    assert_eq!(apply(&state, manifest("2.0.0", "", canary)).await, 3);
    let p = until(&client, "the canary paused with a Promote button", |p| {
        p["state"] == "paused" && p["promote"] == true
    })
    .await;
    let expected = |v1: &[&str]| -> Vec<(String, String)> {
        ["host1", "host2", "host3", "host4"]
            .iter()
            .map(|h| {
                let v = if v1.contains(h) { "1.0.0" } else { "2.0.0" };
                (h.to_string(), v.to_string())
            })
            .collect()
    };
    assert_eq!(
        versions(&p),
        expected(&["host2", "host3", "host4"]),
        "{p:#}"
    );
    assert_eq!(p["steps"][0], "done", "{p:#}");
    assert_eq!(p["steps"][1], "paused", "{p:#}");
    assert_eq!(p["steps"][2], "pending", "{p:#}");
    screenshot(&client, "2-v2-canary-paused.png").await;

    // Promote from the page: confirm, and the rollout continues to v2 everywhere.
    client
        .find(Locator::Id("act-promote"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    client.accept_alert().await.unwrap();
    // The journal's `succeeded` reaches the page a moment before the action's own end (the
    // action's thread returns after the rollout has written it): wait for both.
    let p = until(&client, "v2 everywhere and the promote ended ok", |p| {
        p["state"] == "succeeded"
            && all_on(p, "2.0.0")
            && p["action"]
                .as_str()
                .is_some_and(|a| !a.ends_with(": running"))
    })
    .await;
    assert!(
        p["steps"].as_array().unwrap().iter().all(|s| s == "done"),
        "{p:#}"
    );
    assert!(
        p["action"].as_str().unwrap().starts_with("promote: ok"),
        "{p:#}"
    );
    screenshot(&client, "3-v2-promoted.png").await;

    // A bad v3: the agents start it (its /health answers), but every answer of `/` is a 500, so
    // the manifest's gate fails on host1; the rollback puts v2 back.
    let bad = "    canary:\n      maxUnavailable: 1\n      firstGroup: internal\n      steps:\n        - setWeight: 25\n        - setWeight: 50\n";
    assert_eq!(
        apply(&state, manifest("3.0.0", "--error-rate 1.0", bad)).await,
        1
    );
    let p = until(&client, "the failed gate and the rollback", |p| {
        p["state"] == "rolledBack" && all_on(p, "2.0.0")
    })
    .await;
    let gates: Vec<&str> = p["gates"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        gates
            .iter()
            .any(|g| g.contains("health") && g.contains("FAILED")),
        "{p:#}"
    );
    assert!(
        p["rollback"].as_str().unwrap().contains("to 2.0.0"),
        "{p:#}"
    );
    assert_eq!(p["steps"][0], "failed", "{p:#}");
    assert_eq!(p["history"], 3, "{p:#}");
    screenshot(&client, "4-v3-rolled-back.png").await;

    // Nothing came from outside the binary: the page and every resource it loaded (script,
    // stylesheet, API calls; the event stream, still open, is not listed yet) are the dashboard's
    // own.
    let loaded = client
        .execute(
            "return [location.href, ...performance.getEntriesByType('resource').map(e => e.name)];",
            vec![],
        )
        .await
        .unwrap();
    let loaded: Vec<&str> = loaded
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(loaded.len() >= 4, "{loaded:?}");
    for url in &loaded {
        assert!(
            url.starts_with(&served.url),
            "{url} is not the dashboard's: {loaded:?}"
        );
    }
    for own in ["app.js", "style.css", "api/apps", "api/apps/web/actions"] {
        assert!(
            loaded.iter().any(|u| u.ends_with(own)),
            "{own} not loaded: {loaded:?}"
        );
    }
    client.close().await.unwrap();
    assert!(served.stop().success());
    drop(fleet);
}
