//! `rollgate artifact pack`: the archive it builds is installed and run by a real agent (loopback,
//! mTLS), its printed sha256 is the file's, and the same folder packs to the same bytes.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use rollgate::cli::demo::LocalFleet;
use sha2::{Digest, Sha256};

fn rollgate(state: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rollgate"))
        .args(args)
        .env("ROLLGATE_STATE", state)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn find(root: &Path, suffix: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(root).ok()?.flatten() {
        let p = e.path();
        if p.to_string_lossy().ends_with(suffix) {
            return Some(p);
        }
        if p.is_dir()
            && !p.is_symlink()
            && let Some(found) = find(&p, suffix)
        {
            return Some(found);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_installs_and_runs_what_pack_built() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // The version dir as README "Artifacts" describes it: the program under bin/, a config file.
    let src = dir.path().join("web");
    std::fs::create_dir_all(src.join("bin")).unwrap();
    std::fs::create_dir_all(src.join("conf")).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_rollgate-demo"), src.join("bin/web")).unwrap();
    std::fs::write(src.join("conf/app.toml"), "greeting = \"hi\"\n").unwrap();

    let tarball = dir.path().join("web-2.0.0.tar.gz");
    let (code, stdout, stderr) = rollgate(
        dir.path(),
        &[
            "artifact",
            "pack",
            src.to_str().unwrap(),
            "-o",
            tarball.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    let sha = hex::encode(Sha256::digest(std::fs::read(&tarball).unwrap()));
    assert_eq!(stdout, format!("{sha}  {}\n", tarball.display()));
    // Reproducible: packing again gives the same sha256.
    let again = dir.path().join("again.tar.gz");
    let (_, stdout, _) = rollgate(
        dir.path(),
        &[
            "artifact",
            "pack",
            src.to_str().unwrap(),
            "-o",
            again.to_str().unwrap(),
        ],
    );
    assert!(stdout.starts_with(&sha), "{stdout}");
    // Not a folder: an input error.
    let (code, _, stderr) = rollgate(dir.path(), &["artifact", "pack", "nope", "-o", "x.tar.gz"]);
    assert_eq!(code, 2, "{stderr}");

    let fleet = LocalFleet::start(dir.path(), 1, 1).await.unwrap();
    let manifest = format!(
        "apiVersion: rollgate.dev/v1\nkind: Rollout\nmetadata: {{name: web}}\nspec:\n  version: \"2.0.0\"\n  target:\n    hosts:\n      service: web\n      artifact: {{file: web-2.0.0.tar.gz, sha256: \"{sha}\"}}\n      auth: {auth}\n      hosts:\n{hosts}  strategy:\n    rolling: {{maxSurge: 0, maxUnavailable: 1}}\n  checks:\n    - name: health\n      http: {{url: \"http://127.0.0.1:{{port}}/health\"}}\n      interval: 100ms\n  progressDeadlineSeconds: 20\n",
        auth = fleet.auth_yaml(),
        hosts = fleet.hosts_yaml("        "),
    );
    std::fs::write(dir.path().join("web.yaml"), manifest).unwrap();
    let path = dir.path().join("web.yaml");
    let st = state.clone();
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
        rollgate(&st, &["apply", "-o", "plain", "-f", path.to_str().unwrap()])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{stdout}{stderr}");

    // Unpacked as packed, the program still executable; it runs with ROLLGATE_VERSION.
    let conf = find(&dir.path().join("host1"), "versions/2.0.0/conf/app.toml").expect("conf");
    assert_eq!(
        std::fs::read_to_string(conf).unwrap(),
        "greeting = \"hi\"\n"
    );
    let bin = find(&dir.path().join("host1"), "versions/2.0.0/bin/web").expect("bin/web");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(bin).unwrap().permissions().mode() & 0o111,
            0o111
        );
    }
    let port = fleet.hosts[0].2[0];
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.write_all(b"GET /version HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.ends_with("2.0.0\n"), "{answer}");
}
