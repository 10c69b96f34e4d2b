//! `rollgate demo --dashboard` (as the README's Quick start shows it): the dashboard's URL is
//! printed, it serves the demo's state while the demo runs and after it until Ctrl-C.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::support::{ROLLGATE, interrupt_and_wait};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_with_dashboard_prints_its_url_and_serves_until_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(ROLLGATE);
    command.args(["demo", "--dashboard"]);
    // The README's command exactly, unless something here already listens on its port.
    if std::net::TcpListener::bind("127.0.0.1:7900").is_err() {
        println!("127.0.0.1:7900 is taken here: serving on a free port instead");
        command.args(["--dashboard-listen", "127.0.0.1:0"]);
    }
    let mut child = command
        .args(["-o", "plain", "--dir"])
        .arg(dir.path().join("demo"))
        .env_remove("ROLLGATE_STATE")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("demo: {line}");
            let _ = tx.send(line);
        }
    });
    let mut url = None;
    let mut lines = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(240))
            .expect("the demo goes on");
        if let Some(at) = line.find("dashboard on http://") {
            url = Some(line[at + "dashboard on ".len()..].trim().to_string());
        }
        let done = line.contains("until Ctrl-C");
        lines.push(line);
        if done {
            break;
        }
    }
    let url = url.unwrap_or_else(|| panic!("no dashboard URL in {lines:#?}"));
    assert!(
        lines.iter().any(|l| l.contains("v3 was rolled back")),
        "{lines:#?}"
    );
    // After the demo, its three rollouts are still served.
    let view: serde_json::Value = reqwest::get(format!("{url}api/apps/web"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["view"]["state"], "rolledBack", "{view}");
    assert_eq!(view["view"]["history"].as_array().unwrap().len(), 3);
    let status = interrupt_and_wait(child);
    assert_eq!(status.code(), Some(0));
    assert!(
        reqwest::get(&url).await.is_err(),
        "still serving after Ctrl-C"
    );
}
