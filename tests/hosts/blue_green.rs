//! Blue-green on two slots per host, through a real nginx whose upstreams the traffic switch hook
//! rewrites, under a load generator: no failed request across the switch nor across the switch back.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rollgate::cli::demo::{LocalFleet, package_demo};

fn nginx() -> Option<String> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .find(|p| Path::new(p).exists())
        .map(|p| p.to_string())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes nginx's config and the switch hook that rewrites its upstreams and reloads it.
fn setup_nginx(prefix: &Path, nginx: &str, port: u16) -> std::path::PathBuf {
    std::fs::create_dir_all(prefix.join("tmp")).unwrap();
    let p = prefix.display();
    let user = if rustix_is_root() { "user root;\n" } else { "" };
    std::fs::write(
        prefix.join("nginx.conf"),
        format!(
            "{user}worker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/error.log;\nevents {{ worker_connections 512; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {p}/tmp/body;\n  proxy_temp_path {p}/tmp/proxy;\n  fastcgi_temp_path {p}/tmp/fastcgi;\n  uwsgi_temp_path {p}/tmp/uwsgi;\n  scgi_temp_path {p}/tmp/scgi;\n  upstream app {{ include {p}/upstreams.conf; }}\n  server {{\n    listen 127.0.0.1:{port};\n    location / {{ proxy_pass http://app; proxy_next_upstream error timeout http_502; }}\n  }}\n}}\n"
        ),
    )
    .unwrap();
    let hook = prefix.join("switch.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\nset -e\nP={p}\n: > $P/upstreams.new\nfor a in $(echo \"$ROLLGATE_ACTIVE\" | tr ',' ' '); do echo \"server $a;\" >> $P/upstreams.new; done\nmv $P/upstreams.new $P/upstreams.conf\nif [ -f $P/nginx.pid ]; then {nginx} -p $P -c $P/nginx.conf -s reload; else {nginx} -p $P -c $P/nginx.conf; fi\n# Give the master time to start new workers and drain the old ones.\nsleep 0.5\necho \"$ROLLGATE_VERSION $ROLLGATE_ACTIVE\" >> $P/switches.log\n"
        ),
    )
    .unwrap();
    Command::new("chmod").arg("+x").arg(&hook).status().unwrap();
    hook
}

fn rustix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
}

fn manifest(
    fleet: &LocalFleet,
    version: &str,
    artifact: &Path,
    hook: &Path,
    post_check: &str,
) -> String {
    format!(
        "apiVersion: rollgate.dev/v1\nkind: Rollout\nmetadata: {{name: web}}\nspec:\n  version: \"{version}\"\n  target:\n    hosts:\n      service: web\n      slotsPerHost: 2\n      artifact: {{file: \"{artifact}\"}}\n      auth: {auth}\n      trafficSwitch: {{command: [\"{hook}\"]}}\n      hosts:\n{hosts}  strategy:\n    blueGreen:\n      autoPromotionEnabled: true\n      autoPromotionSeconds: 1\n      scaleDownDelaySeconds: 2\n      prePromotionAnalysis: {{checks: [health]}}\n      postPromotionAnalysis: {{checks: [post]}}\n  checks:\n    - name: health\n      http: {{url: \"http://127.0.0.1:{{port}}/health\"}}\n      interval: 100ms\n      count: 3\n      successThreshold: 2\n    - name: post\n      runOn: cli\n      command: {{run: [\"sh\", \"-c\", \"{post_check}\"]}}\n      timeout: 2s\n  progressDeadlineSeconds: 20\n",
        artifact = artifact.display(),
        auth = fleet.auth_yaml(),
        hook = hook.display(),
        hosts = fleet.hosts_yaml("        "),
    )
}

fn apply(state: &Path, file: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rollgate"))
        .args(["apply", "-o", "plain", "-f"])
        .arg(file)
        .env("ROLLGATE_STATE", state)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_switch_and_switch_back_lose_no_request() {
    let Some(nginx) = nginx() else {
        eprintln!(
            "skipped: nginx is not installed (tests/run.sh installs it from Debian's packages)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let fleet = LocalFleet::start(dir.path(), 2, 2).await.unwrap();
    let artifacts = dir.path().join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let v1 = package_demo(&artifacts, "1.0.0", "").unwrap();
    let v2 = package_demo(&artifacts, "2.0.0", "").unwrap();
    let prefix = dir.path().join("nginx");
    let lb_port = free_port();
    let hook = setup_nginx(&prefix, &nginx, lb_port);
    let state = dir.path().join("state");

    // v1 comes up blue-green from nothing; its switch starts nginx.
    let m1 = dir.path().join("v1.yaml");
    std::fs::write(&m1, manifest(&fleet, "1.0.0", &v1, &hook, "true")).unwrap();
    let (code, out) = apply(&state, &m1);
    assert_eq!(code, 0, "{out}");

    // Load through nginx for the rest of the test.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let load = {
        let (stop, ok, failed, seen) = (stop.clone(), ok.clone(), failed.clone(), seen.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let url = format!("http://127.0.0.1:{lb_port}/");
            while !stop.load(Ordering::SeqCst) {
                match http.get(&url).send().await {
                    Ok(r) if r.status().is_success() => {
                        ok.fetch_add(1, Ordering::SeqCst);
                        let body = r.text().await.unwrap_or_default();
                        let mut seen = seen.lock().unwrap();
                        if seen.last() != Some(&body) {
                            seen.push(body);
                        }
                    }
                    Ok(r) => {
                        failed.fetch_add(1, Ordering::SeqCst);
                        eprintln!("load: status {}", r.status());
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::SeqCst);
                        eprintln!("load: {e}");
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    // v2: switched to, then its post-promotion analysis fails, so traffic switches back to v1,
    // which is still running (scaleDownDelaySeconds).
    let flag = dir.path().join("post-analysis-fails");
    std::fs::write(&flag, "").unwrap();
    let m2 = dir.path().join("v2.yaml");
    std::fs::write(
        &m2,
        manifest(
            &fleet,
            "2.0.0",
            &v2,
            &hook,
            &format!("test ! -e {}", flag.display()),
        ),
    )
    .unwrap();
    let state2 = state.clone();
    let m2b = m2.clone();
    let (code, out) = tokio::task::spawn_blocking(move || apply(&state2, &m2b))
        .await
        .unwrap();
    assert_eq!(code, 1, "v2 is rolled back: {out}");
    assert!(
        out.contains("traffic") || out.contains("rolled back"),
        "{out}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    // v2 again, healthy this time: switched to and kept.
    std::fs::remove_file(&flag).unwrap();
    let state3 = state.clone();
    let (code, out) = tokio::task::spawn_blocking(move || apply(&state3, &m2))
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}");
    tokio::time::sleep(Duration::from_millis(500)).await;

    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    let _ = Command::new(&nginx)
        .args(["-p"])
        .arg(&prefix)
        .args(["-c"])
        .arg(prefix.join("nginx.conf"))
        .args(["-s", "stop"])
        .status();

    let seen = seen.lock().unwrap().clone();
    let switches = std::fs::read_to_string(prefix.join("switches.log")).unwrap();
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "failed requests; versions seen {seen:?}; switches:\n{switches}"
    );
    assert!(ok.load(Ordering::SeqCst) > 100, "the load generator ran");
    // Traffic went 1 -> 2 -> 1 (the switch back) -> 2. While nginx reloads, old and new workers both
    // answer for a moment, so a switch may show as a short flip-flop: look for the order, not a count.
    let versions: Vec<&str> = seen.iter().map(|b| b.trim()).collect();
    let mut want = [
        "version 1.0.0",
        "version 2.0.0",
        "version 1.0.0",
        "version 2.0.0",
    ]
    .into_iter()
    .peekable();
    for v in &versions {
        if want.peek() == Some(v) {
            want.next();
        }
    }
    assert!(
        want.peek().is_none(),
        "versions seen {versions:?}; switches:\n{switches}"
    );
    assert_eq!(versions.last(), Some(&"version 2.0.0"));
    let order: Vec<&str> = switches
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(order, ["1.0.0", "2.0.0", "1.0.0", "2.0.0"], "{switches}");
}
