//! `status --watch` on real rollouts (agents on loopback, mTLS, the real demo service): the steps
//! and the instance grid by zone, redrawn in place on a terminal (a real pty, through util-linux
//! `script`), a line per change on a pipe, the state's exit code when the rollout ends, and
//! `--timeout`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rollgate::cli::demo::{LocalFleet, package_demo};

fn cmd(state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rollgate"));
    c.env("ROLLGATE_STATE", state).env("ROLLGATE_USER", "ana");
    c
}

fn text(out: &Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn manifest(fleet: &LocalFleet, version: &str, artifact: &Path, steps: &str) -> String {
    format!(
        "apiVersion: rollgate.dev/v1\nkind: Rollout\nmetadata: {{name: web}}\nspec:\n  version: \"{version}\"\n  target:\n    hosts:\n      service: web\n      artifact: {{file: \"{artifact}\"}}\n      auth: {auth}\n      hosts:\n{hosts}  strategy:\n    canary:\n      maxUnavailable: 1\n      steps:\n{steps}  checks:\n    - name: health\n      http: {{url: \"http://127.0.0.1:{{port}}/health\"}}\n      interval: 100ms\n  progressDeadlineSeconds: 20\n",
        artifact = artifact.display(),
        auth = fleet.auth_yaml(),
        hosts = fleet.hosts_yaml("        "),
    )
}

/// Starts `apply` in the background and returns once its rollout is in the journal.
#[allow(clippy::zombie_processes)] // the caller waits for the child it gets back
fn apply_in_background(state: &Path, manifest: &Path, to: &str) -> Child {
    let mut child = cmd(state)
        .args(["apply", "-o", "plain", "-f"])
        .arg(manifest)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let since = Instant::now();
    loop {
        let out = cmd(state)
            .args(["status", "web", "-o", "json"])
            .output()
            .unwrap();
        let line = String::from_utf8_lossy(&out.stdout).into_owned();
        if line.contains(&format!("\"to\":\"{to}\"")) && line.contains("\"inProgress\"") {
            return child;
        }
        if since.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the rollout to {to} never started: {line}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

const SLOW: &str =
    "        - setWeight: 34\n        - pause: {duration: 3s}\n        - setWeight: 100\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_redraws_on_a_terminal_follows_on_a_pipe_and_exits_with_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = LocalFleet::start(dir.path(), 3, 1).await.unwrap();
    let artifacts = dir.path().join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let state = dir.path().join("state");
    let write = |name: &str, version: &str, steps: &str| -> PathBuf {
        let artifact = package_demo(&artifacts, version, "").unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, manifest(&fleet, version, &artifact, steps)).unwrap();
        path
    };
    let m1 = write("v1.yaml", "1.0.0", "        - setWeight: 100\n");
    let m2 = write("v2.yaml", "2.0.0", SLOW);
    let m3 = write("v3.yaml", "3.0.0", SLOW);
    let m4 = write(
        "v4.yaml",
        "4.0.0",
        "        - setWeight: 34\n        - pause: {}\n",
    );
    let state2 = state.clone();
    tokio::task::spawn_blocking(move || {
        let state = state2;
        let out = cmd(&state).args(["apply", "-f"]).arg(&m1).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));

        // One-shot `status` keeps its line-per-instance form, which scripts read.
        let (code, stdout, _) = text(&cmd(&state).args(["status", "web"]).output().unwrap());
        assert_eq!(code, 0, "{stdout}");
        assert!(stdout.contains("\n  host1        1.0.0\n"), "{stdout}");

        // A terminal: frames redrawn in place (cursor up, clear), never a scroll of reprints.
        let mut apply = apply_in_background(&state, &m2, "2.0.0");
        let watch = format!("{} status web --watch", env!("CARGO_BIN_EXE_rollgate"));
        let started = Instant::now();
        let out = Command::new("script")
            .args(["-qefc", &watch, "/dev/null"])
            .env("ROLLGATE_STATE", &state)
            .env("TERM", "xterm")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let (code, screen, stderr) = text(&out);
        assert_eq!(code, 0, "exits with the state's code: {screen}{stderr}");
        assert!(
            started.elapsed() >= Duration::from_secs(2),
            "it waited for the end"
        );
        assert!(apply.wait().unwrap().success());
        assert!(screen.contains("\x1b[J"), "redrawn in place: {screen:?}");
        let frames = screen.matches("STEPS").count();
        assert!(frames >= 2, "several frames: {screen:?}");
        assert_eq!(
            screen.matches("\x1b[J").count(),
            frames - 1,
            "each frame after the first is drawn over the last: {screen:?}"
        );
        // The last frame: every step done, every host on 2.0.0.
        let last = screen.rsplit("\x1b[J").next().unwrap();
        for zone in [
            "zone a  host1 2.0.0",
            "zone b  host2 2.0.0",
            "zone c  host3 2.0.0",
        ] {
            assert!(last.contains(zone), "the grid by zone: {last}");
        }
        assert!(last.contains("succeeded"), "{last}");
        assert_eq!(
            last.matches("✔").count(),
            4,
            "four steps, each done: {last}"
        );
        assert_eq!(
            last.matches(" 2.0.0").count(),
            4,
            "the title and 3 hosts: {last}"
        );

        // A pipe: the first frame, then one line per journal record, ending with the outcome.
        let mut apply = apply_in_background(&state, &m3, "3.0.0");
        // --timeout runs out while the rollout still runs: exit 1, and it says so.
        let (code, _, stderr) = text(
            &cmd(&state)
                .args(["status", "web", "--watch", "--timeout", "500ms"])
                .output()
                .unwrap(),
        );
        assert_eq!(code, 1, "{stderr}");
        assert!(
            stderr.contains("timed out after 500ms") && stderr.contains("inProgress"),
            "{stderr}"
        );
        let (code, stdout, stderr) = text(
            &cmd(&state)
                .args(["status", "web", "--watch", "--timeout", "60s"])
                .output()
                .unwrap(),
        );
        assert_eq!(code, 0, "{stdout}{stderr}");
        assert!(apply.wait().unwrap().success());
        assert!(!stdout.contains('\x1b'), "no escapes on a pipe: {stdout:?}");
        assert_eq!(stdout.matches("STEPS").count(), 1, "{stdout}");
        assert!(stdout.contains("step 3: scale"), "{stdout}");
        assert!(stdout.contains("on 3.0.0, ready"), "{stdout}");
        assert!(
            stdout
                .trim_end()
                .lines()
                .last()
                .unwrap()
                .starts_with("succeeded"),
            "ends with the outcome: {stdout}"
        );

        // A pause ends the watch with 3, as `apply` does.
        let out = cmd(&state).args(["apply", "-f"]).arg(&m4).output().unwrap();
        assert_eq!(out.status.code(), Some(3), "{:?}", text(&out));
        let (code, stdout, _) = text(
            &cmd(&state)
                .args(["status", "web", "--watch"])
                .output()
                .unwrap(),
        );
        assert_eq!(code, 3, "{stdout}");
        assert!(
            stdout.contains("‖  2 pause"),
            "the paused step marked: {stdout}"
        );

        // --timeout needs --watch.
        let (code, _, stderr) = text(
            &cmd(&state)
                .args(["status", "web", "--timeout", "5s"])
                .output()
                .unwrap(),
        );
        assert_eq!(code, 2, "{stderr}");
    })
    .await
    .unwrap();
    drop(fleet);
}
