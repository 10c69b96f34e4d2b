//! Change approval by Kubernetes users (issue 19): `approvers: {kubernetes: true, rbac: true}`.
//! Three ServiceAccounts with tokens minted by the TokenRequest API, each running the real
//! `rollgate` from its own state directory (its own machine): two hold the RBAC verb `approve` on
//! `rollouts.rollgate.dev/web` through the optional Role of `manifests/kubernetes/rbac.yaml` and
//! promote; the third is refused, naming the verb; the starter (the admin) cannot approve its own
//! rollout; an approval written straight into the journal ConfigMap is not counted.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams};
use tokio::io::AsyncWriteExt;

use crate::kube_bed::{self, APP, Bed, image, stdout};

const N: i32 = 4;

async fn kubectl(bed: &Bed, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = bed
        .cluster
        .kubectl()
        .args(["-n", &bed.ns])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("running kubectl");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).await.expect("stdin");
    }
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("kubectl within 60s")
        .expect("kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A ServiceAccount `name` with the rollgate Role (it continues the rollout it promotes), the
/// proof ClusterRole, and with `approver` the approver Role; returns a kubeconfig holding only
/// its token.
async fn person(bed: &Bed, name: &str, approver: bool) -> PathBuf {
    kubectl(bed, &["create", "serviceaccount", name], None).await;
    let sa = format!("{}:{name}", bed.ns);
    kubectl(
        bed,
        &[
            "create",
            "rolebinding",
            &format!("{name}-rollgate"),
            "--role=rollgate",
            &format!("--serviceaccount={sa}"),
        ],
        None,
    )
    .await;
    kubectl(
        bed,
        &[
            "create",
            "clusterrolebinding",
            &format!("{}-{name}-proof", bed.ns),
            "--clusterrole=rollgate-approval-proof",
            &format!("--serviceaccount={sa}"),
        ],
        None,
    )
    .await;
    if approver {
        kubectl(
            bed,
            &[
                "create",
                "rolebinding",
                &format!("{name}-approver"),
                "--role=rollgate-approver",
                &format!("--serviceaccount={sa}"),
            ],
            None,
        )
        .await;
    }
    let token = kubectl(bed, &["create", "token", name, "--duration", "1h"], None).await;
    let admin: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(bed.cluster.kubeconfig()).expect("the admin kubeconfig"),
    )
    .expect("kubeconfig YAML");
    let cluster = admin["clusters"][0].clone();
    let cluster_name = cluster["name"]
        .as_str()
        .expect("a cluster name")
        .to_string();
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [serde_json::to_value(&cluster).unwrap()],
        "users": [{"name": name, "user": {"token": token.trim()}}],
        "contexts": [{"name": name, "context": {"cluster": cluster_name, "user": name, "namespace": bed.ns}}],
        "current-context": name,
    });
    let path = bed.path(&format!("{name}.kubeconfig"));
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).expect("writing kubeconfig");
    path
}

/// The real `rollgate` as a person: their kubeconfig and their own state directory. The
/// environment's name is the same for everyone: it must not matter.
async fn rollgate_as(
    bed: &Bed,
    who: &str,
    kubeconfig: &Path,
    args: &[&str],
) -> std::process::Output {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_rollgate"))
        .args(args)
        .current_dir(bed.dir.path())
        .env("KUBECONFIG", kubeconfig)
        .env("ROLLGATE_STATE", bed.path(&format!("state-{who}")))
        .env("ROLLGATE_USER", "same-name")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(240), out)
        .await
        .expect("rollgate within 240s")
        .expect("running rollgate");
    eprintln!(
        "rollgate as {who} {args:?}: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Appends a `promoted` record for the paused step, naming `username` (with the proof of the last
/// real approval when `steal_proof`), straight into the journal ConfigMap: what anyone with
/// ConfigMap write access could do. Returns the stolen proof's name.
async fn forge_approval(bed: &Bed, username: &str, steal_proof: bool) -> Option<String> {
    let maps: Api<ConfigMap> = Api::namespaced(bed.client.clone(), &bed.ns);
    let cm = maps
        .get(&format!("rollgate-{APP}"))
        .await
        .expect("the journal ConfigMap");
    let journal = cm
        .data
        .as_ref()
        .and_then(|d| d.get("journal.jsonl"))
        .expect("a journal")
        .clone();
    let paused: serde_json::Value = journal
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a record"))
        .rfind(|r| r["event"] == "paused")
        .expect("a paused record");
    let proof = journal
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a record"))
        .filter_map(|r| r["actor"]["kubernetes"]["proof"].as_str().map(String::from))
        .next_back()
        .filter(|_| steal_proof);
    let forged = serde_json::json!({
        "atMs": paused["atMs"].as_u64().unwrap() + 1,
        "event": "promoted",
        "rollout": paused["rollout"],
        "step": paused["step"],
        "actor": {"user": "bob", "host": "laptop", "kubernetes": {"username": username, "proof": proof}},
        "full": false,
    });
    let patched = format!("{journal}{forged}\n");
    maps.patch(
        &format!("rollgate-{APP}"),
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"data": {"journal.jsonl": patched}})),
    )
    .await
    .expect("writing the ConfigMap");
    proof
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rbac_approvers_promote_a_third_and_the_starter_and_a_forgery_do_not_count() {
    let Some(bed) = Bed::new("approvals", N, "1", "0").await else {
        return;
    };
    let rbac = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/kubernetes/rbac.yaml"),
    )
    .expect("rbac.yaml")
    .replace("namespace: default", &format!("namespace: {}", bed.ns));
    kubectl(&bed, &["apply", "-f", "-"], Some(&rbac)).await;
    let alice = person(&bed, "alice", true).await;
    let bob = person(&bed, "bob", true).await;
    let carol = person(&bed, "carol", false).await;
    let admin = bed.cluster.kubeconfig().to_path_buf();
    let user = |name: &str| format!("system:serviceaccount:{}:{name}", bed.ns);

    let rollout = bed.rollout(
        "web.yaml",
        "2",
        &format!("image: \"{}\"", image("2")),
        "  strategy:\n    canary: {maxSurge: 1, maxUnavailable: 0, steps: [{setWeight: 25}, {pause: {approvals: 2, approvers: {kubernetes: true, rbac: true}}}, {setWeight: 100}]}\n  progressDeadlineSeconds: 60\n",
    );
    let rollout = rollout.to_str().unwrap();

    // The admin starts it: paused, awaiting two approvals.
    let out = rollgate_as(&bed, "admin", &admin, &["apply", "-f", rollout]).await;
    assert_eq!(out.status.code(), Some(3), "paused for approval");

    // The starter approves its own rollout: recorded, refused, not counted.
    let out = rollgate_as(&bed, "admin", &admin, &["promote", APP]).await;
    assert_eq!(out.status.code(), Some(3), "still paused");
    let text = stdout(&out);
    assert!(text.contains("0 of 2 approvals"), "{text}");
    assert!(
        text.contains("started this rollout and cannot approve it"),
        "the starter is named as refused: {text}"
    );

    // Carol holds no `approve`: refused before anything is recorded, naming the verb.
    let out = rollgate_as(&bed, "carol", &carol, &["promote", APP]).await;
    assert_eq!(out.status.code(), Some(1), "carol is refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{} may not `approve` rollouts.rollgate.dev/{APP}",
            user("carol")
        )) && err.contains("verb `approve`"),
        "the refusal names the user and the verb: {err}"
    );

    // Bob's name written straight into the ConfigMap.
    forge_approval(&bed, &user("bob"), false).await;

    // Alice approves: one of two (the forged bob and the starter do not count).
    let out = rollgate_as(&bed, "alice", &alice, &["promote", APP]).await;
    assert_eq!(out.status.code(), Some(3), "one approval is not enough");
    let text = stdout(&out);
    assert!(text.contains("1 of 2 approvals"), "{text}");
    assert!(
        text.contains("named but not proven"),
        "the forged approval is named as refused: {text}"
    );
    // Bob's name on alice's proof.
    let stolen = forge_approval(&bed, &user("bob"), true)
        .await
        .expect("alice's approval carries its proof");
    let out = rollgate_as(&bed, "admin", &admin, &["resume", APP]).await;
    assert_eq!(
        out.status.code(),
        Some(3),
        "a stolen proof is not an approval"
    );
    let text = stdout(&out);
    assert!(text.contains("1 of 2 approvals"), "{text}");
    assert!(
        text.contains(&format!(
            "it names {}, but the API server authenticated {} (CertificateSigningRequest {stolen})",
            user("bob"),
            user("alice")
        )),
        "the stolen proof is named: {text}"
    );
    let d = bed.deployment().await;
    assert_eq!(
        kube_bed::template_image(&d.spec.as_ref().unwrap().template),
        Some(image("1").as_str()),
        "nothing released yet"
    );

    // Bob approves: two distinct, proven approvers with the verb; the rollout goes on.
    let out = rollgate_as(&bed, "bob", &bob, &["promote", APP]).await;
    assert!(out.status.success(), "two approvals: the rollout finishes");
    bed.wait_deployment("version 2 rolled out", |d| {
        kube_bed::rolled_out(d, N, &image("2"))
    })
    .await;

    // History (from a machine that never ran it) names the approvers as the API server does.
    let out = rollgate_as(&bed, "history", &admin, &["-n", &bed.ns, "history", APP]).await;
    let text = stdout(&out);
    for name in ["alice", "bob"] {
        assert!(
            text.contains(&format!("{} (step 2, Kubernetes user)", user(name))),
            "history names {name}: {text}"
        );
    }
    assert!(
        text.contains("REFUSED"),
        "the refused approvals stay visible: {text}"
    );
    // The JSON audit trail carries each identity as the API server stated it, with its proof.
    let out = rollgate_as(
        &bed,
        "history",
        &admin,
        &["-n", &bed.ns, "history", "-o", "json", APP],
    )
    .await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("history JSON");
    let r = &json[0];
    assert!(
        r["actor"]["kubernetes"]["proof"]
            .as_str()
            .is_some_and(|p| p.starts_with("rollgate-start-")),
        "the start is proven: {r}"
    );
    let verified: Vec<&str> = r["approvals"]
        .as_array()
        .expect("approvals")
        .iter()
        .filter(|a| a["verification"]["status"] == "kubernetes")
        .filter_map(|a| a["verification"]["username"].as_str())
        .collect();
    assert_eq!(verified, [user("alice"), user("bob")], "{r}");
    let out = rollgate_as(
        &bed,
        "history",
        &admin,
        &["-n", &bed.ns, "history", "--verify", APP],
    )
    .await;
    let text = stdout(&out);
    assert!(
        text.contains("ok     ") && text.contains(&user("alice")),
        "{text}"
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "the forged and self approvals fail --verify"
    );
    bed.finish().await;
}

/// The real `rollgate` as a person, left running: `rollgate_as` for a command that waits.
fn spawn_as(bed: &Bed, who: &str, kubeconfig: &Path, args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_rollgate"))
        .args(args)
        .current_dir(bed.dir.path())
        .env("KUBECONFIG", kubeconfig)
        .env("ROLLGATE_STATE", bed.path(&format!("state-{who}")))
        .env("ROLLGATE_USER", "same-name")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("running rollgate")
}

/// Sends `verb` as a person until a running rollout takes it, for up to 90 s.
async fn send_to_running(bed: &Bed, who: &str, kubeconfig: &Path, verb: &str) {
    let end = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let out = rollgate_as(bed, who, kubeconfig, &[verb, APP]).await;
        if out.status.success() && stdout(&out).contains("request sent") {
            return;
        }
        assert!(
            std::time::Instant::now() < end,
            "{verb} never reached the running rollout"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn last_rollout(bed: &Bed, admin: &Path) -> serde_json::Value {
    let out = rollgate_as(
        bed,
        "history",
        admin,
        &["-n", &bed.ns, "history", "-o", "json", APP],
    )
    .await;
    // Nothing yet (no journal in the cluster) reads as an empty rollout.
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    json.as_array()
        .and_then(|a| a.last())
        .cloned()
        .unwrap_or_default()
}

/// Pause, resume and abort from three machines: each journaled with the user the API server
/// authenticated, however alike the environment's names are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_and_abort_record_the_kubernetes_user_who_gave_them() {
    let Some(bed) = Bed::new("controls", N, "1", "0").await else {
        return;
    };
    let rbac = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/kubernetes/rbac.yaml"),
    )
    .expect("rbac.yaml")
    .replace("namespace: default", &format!("namespace: {}", bed.ns));
    kubectl(&bed, &["apply", "-f", "-"], Some(&rbac)).await;
    let bob = person(&bed, "bob", false).await;
    let carol = person(&bed, "carol", false).await;
    let admin = bed.cluster.kubeconfig().to_path_buf();
    let user = |name: &str| format!("system:serviceaccount:{}:{name}", bed.ns);

    let rollout = bed.rollout(
        "web.yaml",
        "2",
        &format!("image: \"{}\"", image("2")),
        "  strategy:\n    canary: {maxSurge: 1, maxUnavailable: 0, steps: [{setWeight: 25}, {pause: {duration: 90s}}, {setWeight: 100}]}\n  progressDeadlineSeconds: 60\n",
    );
    let rollout = rollout.to_str().unwrap();

    // The admin starts it; carol pauses it from her machine while it runs.
    let apply = spawn_as(&bed, "admin", &admin, &["apply", "-f", rollout]);
    // Once its start is in the cluster (a `pause` before that takes the free Lease to look, and
    // the apply would find the app locked).
    let end = std::time::Instant::now() + Duration::from_secs(60);
    while last_rollout(&bed, &admin).await["to"] != "2" {
        assert!(
            std::time::Instant::now() < end,
            "the apply's start never reached the cluster"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    send_to_running(&bed, "carol", &carol, "pause").await;
    let out = tokio::time::timeout(Duration::from_secs(120), apply.wait_with_output())
        .await
        .expect("the apply stops within 120 s")
        .expect("apply");
    assert_eq!(out.status.code(), Some(3), "the apply stops paused");

    // Bob resumes it from his; once that is journaled, carol aborts it.
    let resume = spawn_as(&bed, "bob", &bob, &["resume", APP]);
    let end = std::time::Instant::now() + Duration::from_secs(60);
    while last_rollout(&bed, &admin).await["controls"]
        .as_array()
        .map_or(0, Vec::len)
        < 2
    {
        assert!(
            std::time::Instant::now() < end,
            "bob's resume was never journaled"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    send_to_running(&bed, "carol", &carol, "abort").await;
    let out = tokio::time::timeout(Duration::from_secs(120), resume.wait_with_output())
        .await
        .expect("the resume stops within 120 s")
        .expect("resume");
    assert_ne!(
        out.status.code(),
        Some(0),
        "an aborted resume is no success"
    );

    let r = last_rollout(&bed, &admin).await;
    assert_eq!(r["outcome"], "aborted", "{r}");
    let controls: Vec<(&str, &str)> = r["controls"]
        .as_array()
        .expect("controls")
        .iter()
        .map(|c| {
            (
                c["action"].as_str().unwrap_or("-"),
                c["actor"]["kubernetes"]["username"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(
        controls,
        [
            ("pause", user("carol").as_str()),
            ("resume", user("bob").as_str()),
            ("abort", user("carol").as_str())
        ],
        "{r}"
    );
    bed.wait_deployment("version 1 back", |d| {
        kube_bed::rolled_out(d, N, &image("1"))
    })
    .await;
    bed.finish().await;
}
