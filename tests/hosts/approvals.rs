//! Pause steps that need approvals from distinct people, `promote` recording who approved, and
//! `rollback` after a completed rollout, from the versions kept on disk.

use std::path::{Path, PathBuf};
use std::process::Command;

use rollgate::cli::demo::{LocalFleet, package_demo};

fn rollgate(state: &Path, user: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rollgate"))
        .args(args)
        .env("ROLLGATE_STATE", state)
        .env("ROLLGATE_USER", user)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn manifest(fleet: &LocalFleet, version: &str, artifact: &Path, steps: &str) -> String {
    format!(
        "apiVersion: rollgate.dev/v1\nkind: Rollout\nmetadata: {{name: web}}\nspec:\n  version: \"{version}\"\n  target:\n    hosts:\n      service: web\n      artifact: {{file: \"{artifact}\"}}\n      auth: {auth}\n      hosts:\n{hosts}  strategy:\n    canary:\n      maxUnavailable: 1\n      steps:\n{steps}  checks:\n    - name: health\n      http: {{url: \"http://127.0.0.1:{{port}}/health\"}}\n      interval: 100ms\n  progressDeadlineSeconds: 20\n",
        artifact = artifact.display(),
        auth = fleet.auth_yaml(),
        hosts = fleet.hosts_yaml("        "),
    )
}

/// Hosts that `rollgate status` lists on `version`.
fn hosts_on(status: &str, version: &str) -> usize {
    status
        .lines()
        .filter(|l| l.starts_with("  host") && l.split_whitespace().nth(1) == Some(version))
        .count()
}

fn history(state: &Path) -> serde_json::Value {
    let (code, out) = rollgate(state, "auditor", &["history", "web", "-o", "json"]);
    assert_eq!(code, 0, "{out}");
    serde_json::from_str(&out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_approvals_then_rollback_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = LocalFleet::start(dir.path(), 3, 1).await.unwrap();
    let artifacts = dir.path().join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let v1 = package_demo(&artifacts, "1.0.0", "").unwrap();
    let v2 = package_demo(&artifacts, "2.0.0", "").unwrap();
    let state = dir.path().join("state");
    let run = |user: &'static str, args: Vec<String>| {
        let state = state.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            rollgate(&state, user, &args)
        })
    };

    let m1 = dir.path().join("v1.yaml");
    std::fs::write(
        &m1,
        manifest(&fleet, "1.0.0", &v1, "        - setWeight: 100\n"),
    )
    .unwrap();
    let (code, out) = run(
        "ana",
        vec![
            "apply".into(),
            "-o".into(),
            "plain".into(),
            "-f".into(),
            m1.display().to_string(),
        ],
    )
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}");

    // v2 pauses after a third of the fleet until two different people approve.
    let m2 = dir.path().join("v2.yaml");
    std::fs::write(
        &m2,
        manifest(
            &fleet,
            "2.0.0",
            &v2,
            "        - setWeight: 34\n        - pause: {approvals: 2}\n        - setWeight: 100\n",
        ),
    )
    .unwrap();
    let (code, out) = run(
        "ana",
        vec![
            "apply".into(),
            "-o".into(),
            "plain".into(),
            "-f".into(),
            m2.display().to_string(),
        ],
    )
    .await
    .unwrap();
    assert_eq!(code, 3, "paused, waiting for promotion: {out}");
    let (code, out) = run("ana", vec!["status".into(), "web".into()])
        .await
        .unwrap();
    assert_eq!(code, 3, "status exits 3 while paused: {out}");
    assert_eq!(
        hosts_on(&out, "2.0.0"),
        1,
        "one instance of three on 2.0.0: {out}"
    );

    let (code, out) = run("bob", vec!["promote".into(), "web".into()])
        .await
        .unwrap();
    assert_eq!(code, 3, "one approval of two: {out}");
    assert!(out.contains("1 of 2 approvals"), "{out}");
    // The same person again does not count twice.
    let (code, out) = run("bob", vec!["promote".into(), "web".into()])
        .await
        .unwrap();
    assert_eq!(code, 3, "{out}");
    let (code, out) = run(
        "carol",
        vec!["promote".into(), "web".into(), "-o".into(), "plain".into()],
    )
    .await
    .unwrap();
    assert_eq!(
        code, 0,
        "two distinct approvals continue the rollout: {out}"
    );
    let h = history(&state);
    let last = &h.as_array().unwrap()[1];
    assert_eq!(last["outcome"], "succeeded");
    let approvals: Vec<&str> = last["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["actor"]["user"].as_str().unwrap())
        .collect();
    assert_eq!(
        approvals,
        ["bob", "bob", "carol"],
        "who approved is recorded: {last}"
    );
    // Without `approvers`, the names come from the environment: marked so.
    assert!(
        last["approvals"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["verification"]["status"] == "unverified"),
        "{last}"
    );

    // One-command rollback to 1.0.0, with the artifact gone: only what is on disk is used.
    std::fs::remove_file(&v1).unwrap();
    let (code, out) = run(
        "dave",
        vec!["rollback".into(), "web".into(), "-o".into(), "plain".into()],
    )
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("succeeded in"),
        "it says how long it took: {out}"
    );
    let (_, out) = run("dave", vec!["status".into(), "web".into()])
        .await
        .unwrap();
    assert_eq!(
        hosts_on(&out, "1.0.0"),
        3,
        "every host back on 1.0.0: {out}"
    );
    let h = history(&state);
    let rb = &h.as_array().unwrap()[2];
    assert_eq!(
        (
            rb["strategy"].as_str(),
            rb["outcome"].as_str(),
            rb["to"].as_str()
        ),
        (Some("rollback"), Some("succeeded"), Some("1.0.0"))
    );
    drop(fleet);
}

/// `rollgate` with extra environment variables (the approver's files).
fn rollgate_with(state: &Path, user: &str, env: &[(&str, &Path)], args: &[&str]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rollgate"));
    cmd.args(args)
        .env("ROLLGATE_STATE", state)
        .env("ROLLGATE_USER", user)
        .env_remove("ROLLGATE_APPROVER_KEY")
        .env_remove("ROLLGATE_APPROVER_CERT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Issue 19: with `approvers`, only signatures by approver certificates of the manifest's CA count,
/// by certificate subject; names from the environment, forged or replayed records, another CA's
/// certificates, client certificates and the starter's own approval are refused and named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_approvals_count_certificates_not_names() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = LocalFleet::start(dir.path(), 3, 1).await.unwrap();
    let artifacts = dir.path().join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let v1 = package_demo(&artifacts, "1.0.0", "").unwrap();
    let v2 = package_demo(&artifacts, "2.0.0", "").unwrap();
    let state = dir.path().join("state");
    let (pki, other) = (dir.path().join("team-pki"), dir.path().join("other-pki"));
    let pki_s = pki.display().to_string();
    let other_s = other.display().to_string();
    for args in [
        vec!["pki", "init", "--dir", &pki_s],
        vec!["pki", "issue", "--dir", &pki_s, "--approver", "alice"],
        vec!["pki", "issue", "--dir", &pki_s, "--approver", "bob"],
        vec!["pki", "issue", "--dir", &pki_s, "--approver", "carol"],
        vec!["pki", "issue", "--dir", &pki_s, "--client", "ci"],
        vec!["pki", "init", "--dir", &other_s],
        vec!["pki", "issue", "--dir", &other_s, "--approver", "bob"],
    ] {
        let (code, out) = rollgate_with(&state, "ana", &[], &args);
        assert_eq!(code, 0, "{args:?}: {out}");
    }
    let files = |dir: &Path, stem: &str| {
        (
            dir.join(format!("{stem}-key.pem")),
            dir.join(format!("{stem}.pem")),
        )
    };
    // Runs `rollgate` in a blocking task, signing with `signer` when given.
    let run = |user: &'static str, signer: Option<(PathBuf, PathBuf)>, args: Vec<String>| {
        let state = state.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let env: Vec<(&str, &Path)> = signer
                .as_ref()
                .map(|(k, c)| {
                    vec![
                        ("ROLLGATE_APPROVER_KEY", k.as_path()),
                        ("ROLLGATE_APPROVER_CERT", c.as_path()),
                    ]
                })
                .unwrap_or_default();
            rollgate_with(&state, user, &env, &args)
        })
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();

    let m1 = dir.path().join("v1.yaml");
    std::fs::write(
        &m1,
        manifest(&fleet, "1.0.0", &v1, "        - setWeight: 100\n"),
    )
    .unwrap();
    let (code, out) = run(
        "ana",
        None,
        s(&["apply", "-o", "plain", "-f", &m1.display().to_string()]),
    )
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}");

    // A CA that cannot be read is an error at validate, naming the field and where it is.
    let pause = |ca: &str| {
        format!(
            "        - setWeight: 34\n        - pause: {{approvals: 2, approvers: {{ca: \"{ca}\", allowed: [alice, bob, carol]}}}}\n        - setWeight: 100\n"
        )
    };
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        manifest(&fleet, "2.0.0", &v2, &pause("team-pki/missing.pem")),
    )
    .unwrap();
    let (code, out) = run(
        "ana",
        None,
        s(&["validate", "-f", &bad.display().to_string()]),
    )
    .await
    .unwrap();
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("bad.yaml:")
            && out.contains("steps[1].pause.approvers.ca")
            && out.contains("missing.pem"),
        "names file, line, column and field: {out}"
    );

    // carol starts v2, identified by her approver certificate.
    let m2 = dir.path().join("v2.yaml");
    std::fs::write(
        &m2,
        manifest(&fleet, "2.0.0", &v2, &pause("team-pki/ca.pem")),
    )
    .unwrap();
    let (code, out) = run(
        "carol",
        Some(files(&pki, "approver-carol")),
        s(&["apply", "-o", "plain", "-f", &m2.display().to_string()]),
    )
    .await
    .unwrap();
    assert_eq!(code, 3, "paused, waiting for approvals: {out}");
    let promote = |user: &'static str, signer: Option<(PathBuf, PathBuf)>| {
        run(user, signer, s(&["promote", "web", "-o", "plain"]))
    };

    // Refused, each named, none counted: a name from the environment, a certificate of another
    // CA, a client certificate, and the starter approving her own rollout.
    for (user, signer, why) in [
        ("alice", None, "not signed"),
        (
            "bob",
            Some(files(&other, "approver-bob")),
            "not issued by the approvers CA",
        ),
        (
            "ci",
            Some(files(&pki, "client-ci")),
            "not an approver certificate",
        ),
        (
            "carol",
            Some(files(&pki, "approver-carol")),
            "started this rollout",
        ),
    ] {
        let (code, out) = promote(user, signer).await.unwrap();
        assert_eq!(code, 3, "{why}: {out}");
        assert!(out.contains("0 of 2 approvals"), "{why}: {out}");
        assert!(out.contains("refused") && out.contains(why), "{why}: {out}");
    }
    // alice twice, under two environment names: one approver.
    for user in ["alice", "bob"] {
        let (code, out) = promote(user, Some(files(&pki, "approver-alice")))
            .await
            .unwrap();
        assert_eq!(code, 3, "{out}");
        assert!(out.contains("1 of 2 approvals"), "{out}");
    }

    // A record written straight into the journal: alice's signature claimed for bob.
    let journal = state.join("web").join("journal.jsonl");
    let promoted = || {
        std::fs::read_to_string(&journal)
            .unwrap()
            .lines()
            .rev()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|v| v["event"] == "promoted")
            .unwrap()
    };
    let append = |line: serde_json::Value| {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&journal)
            .unwrap();
        writeln!(f, "{line}").unwrap();
    };
    let alice = promoted();
    let mut as_bob = alice.clone();
    as_bob["actor"]["user"] = "bob".into();
    as_bob["actor"]["signed"]["subject"] = "bob".into();
    append(as_bob);
    let (code, out) = run("ana", None, s(&["resume", "web", "-o", "plain"]))
        .await
        .unwrap();
    assert_eq!(code, 3, "the forged record does not count: {out}");
    assert!(out.contains("1 of 2 approvals"), "{out}");
    assert!(out.contains("claims subject \"bob\""), "{out}");

    // bob, with his own certificate: two distinct approvers, the rollout goes on.
    // (With the flags this time; the others used the variables naming the files.)
    let (key, cert) = files(&pki, "approver-bob");
    let (key, cert) = (key.display().to_string(), cert.display().to_string());
    let (code, out) = run(
        "bob",
        None,
        s(&[
            "promote", "web", "-o", "plain", "--key", &key, "--cert", &cert,
        ]),
    )
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("signed as bob"), "{out}");
    assert!(
        !out.contains("PRIVATE KEY"),
        "the key is never printed: {out}"
    );
    let (_, out) = run("ana", None, s(&["status", "web"])).await.unwrap();
    assert_eq!(hosts_on(&out, "2.0.0"), 3, "{out}");

    // alice's approval of v2 replayed into the next rollout: refused, not counted.
    let v3 = package_demo(&artifacts, "3.0.0", "").unwrap();
    let m3 = dir.path().join("v3.yaml");
    std::fs::write(
        &m3,
        manifest(&fleet, "3.0.0", &v3, &pause("team-pki/ca.pem")),
    )
    .unwrap();
    let (code, out) = run(
        "ana",
        None,
        s(&["apply", "-o", "plain", "-f", &m3.display().to_string()]),
    )
    .await
    .unwrap();
    assert_eq!(code, 3, "{out}");
    let v3_id = history(&state)[2]["id"].as_str().unwrap().to_string();
    let mut replay = alice.clone();
    replay["rollout"] = v3_id.into();
    append(replay);
    let (code, out) = run("ana", None, s(&["resume", "web", "-o", "plain"]))
        .await
        .unwrap();
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("0 of 2 approvals"), "{out}");
    assert!(out.contains("does not cover this record"), "{out}");

    // history names every approval with how it was verified.
    let h = history(&state);
    let last = &h.as_array().unwrap()[1];
    assert_eq!(last["outcome"], "succeeded");
    let seen: Vec<(String, String)> = last["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let v = &a["verification"];
            let who = v["subject"]
                .as_str()
                .unwrap_or(a["actor"]["user"].as_str().unwrap());
            (who.to_string(), v["status"].as_str().unwrap().to_string())
        })
        .collect();
    let want = [
        ("alice", "refused"),
        ("bob", "refused"),
        ("ci", "refused"),
        ("carol", "refused"),
        ("alice", "verified"),
        ("alice", "verified"),
        ("bob", "refused"),
        ("bob", "verified"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(seen, want, "{last}");
    let (code, out) = run("ana", None, s(&["history", "web"])).await.unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("REFUSED: not signed") && out.contains("bob (step 2, signed)"),
        "{out}"
    );

    // history --verify re-checks every signed record and names each that fails.
    let (code, out) = run("ana", None, s(&["history", "web", "--verify"]))
        .await
        .unwrap();
    assert_eq!(code, 1, "{out}");
    for why in [
        "not issued by the approvers CA",
        "not an approver certificate",
        "started this rollout",
        "claims subject",
        "does not cover this record",
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with("FAILED") && l.contains(why)),
            "{why}: {out}"
        );
    }
    assert!(out.contains("started by carol (signed)"), "{out}");
    assert!(
        out.contains("web: 4 signed records verified, 6 failed"),
        "carol's start, alice twice, bob; and six refused: {out}"
    );
    drop(fleet);
}
