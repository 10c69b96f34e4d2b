//! `user:` with the supervisor backend: the service runs as that account, not as the agent's.

use std::os::unix::fs::PermissionsExt;

use rollgate::agent::api::OperationState;

use crate::support::*;

fn root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The `Uid:` line of a process: real, effective, saved, filesystem.
fn uids(pid: u32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_runs_as_its_user_and_an_unknown_user_fails_the_activation() {
    if !root() {
        eprintln!("skipped: switching a service to another user needs root (run as root)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // The service's user must be able to reach its version dir.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let ports = free_ports(2);
    let data = tmp.path().join("data");
    let services = format!(
        "{}    user: nobody\n{}",
        web_service(&[ports[0]], ""),
        web_service(&[ports[1]], "    user: rollgate-no-such-user\n")
            .replace("name: web", "name: ghost")
    );
    let agent = AgentProc::start(tmp.path(), &config(&pki, &data, &services));
    let c = agent.client(&pki.client_auth());

    let script = demo_script(&[]);
    let v1 = tar_gz(&[("bin/web", 0o755, &script)]);
    assert_succeeded(&stage(&c, "v1", &v1).await);
    assert_succeeded(&activate(&c, "act-v1", "v1", 0).await);
    let status = c.service("web").await.unwrap();
    let pid = status.slots[0].pid.expect("the service runs");
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    assert_eq!(
        uids(pid),
        vec![nobody.uid.as_raw(); 4],
        "every uid of the service process is nobody's, none is the agent's (root)"
    );
    assert!(
        get_root(ports[0]).await.is_ok(),
        "the service serves as nobody"
    );

    // An account that does not exist: the activation fails and says why; nothing runs.
    let op = c
        .stage_bytes(
            "ghost",
            "v1",
            v1.clone(),
            &upload_params("stage-ghost", &v1, None),
        )
        .await
        .unwrap();
    assert_succeeded(
        &c.wait_operation(&op.id, std::time::Duration::from_secs(30))
            .await
            .unwrap(),
    );
    let op = c
        .activate(
            "ghost",
            &rollgate::agent::api::ActivateRequest {
                request_id: "act-ghost".into(),
                version: "v1".into(),
                slot: 0,
                timeout_ms: Some(10_000),
            },
        )
        .await
        .unwrap();
    let op = c
        .wait_operation(&op.id, std::time::Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(op.state, OperationState::Failed);
    let error = op.error.unwrap_or_default();
    assert!(
        error.contains("\"rollgate-no-such-user\" does not exist on this host"),
        "the reason names the missing user: {error}"
    );
    assert!(
        get_root(ports[1]).await.is_err(),
        "nothing serves for the failed service"
    );
}
