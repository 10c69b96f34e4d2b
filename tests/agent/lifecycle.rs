//! Stage, activate, rollback and prune; two slots; idempotent replays; activation failures.

use std::time::Duration;

use rollgate::agent::api::{
    ArtifactKind, OperationState, PruneRequest, RollbackRequest, RunState, SlotRequest,
};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_activate_rollback_prune() {
    let WebAgent {
        tmp,
        pki: _pki,
        port,
        data,
        agent: _agent,
        client: c,
    } = WebAgent::start();

    let info = c.host_info().await.unwrap();
    assert_eq!(info.services, vec!["web"]);
    assert!(
        info.backends
            .iter()
            .any(|b| b.available && b.kind.to_string() == "supervisor")
    );

    // Three versions in the three artifact forms.
    let script = demo_script(&[]);
    let v1 = tar_gz(&[("bin/web", 0o755, &script)]);
    let v2 = zip(&[("bin/web", 0o755, &script)]);
    // A local file is streamed (the hosts target's path for local artifacts).
    let file = tmp.path().join("v1.tar.gz");
    std::fs::write(&file, &v1).unwrap();
    let op = c
        .stage_file("web", "v1", &file, &upload_params("stage-v1", &v1, None))
        .await
        .unwrap();
    assert_succeeded(
        &c.wait_operation(&op.id, Duration::from_secs(30))
            .await
            .unwrap(),
    );
    assert_succeeded(&stage(&c, "v2", &v2).await);
    let op = c
        .stage_bytes(
            "web",
            "v3",
            script.clone(),
            &rollgate::agent::api::UploadParams {
                file_name: Some("bin/web".into()),
                ..upload_params("stage-v3", &script, Some(ArtifactKind::Binary))
            },
        )
        .await
        .unwrap();
    assert_succeeded(
        &c.wait_operation(&op.id, Duration::from_secs(30))
            .await
            .unwrap(),
    );
    let versions: Vec<String> = c
        .service("web")
        .await
        .unwrap()
        .versions
        .into_iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(versions, vec!["v1", "v2", "v3"]);

    let a1 = activate(&c, "act-v1", "v1", 0).await;
    assert_succeeded(&a1);
    assert_eq!(get_root(port).await.unwrap(), "version v1\n");

    let a2 = activate(&c, "act-v2", "v2", 0).await;
    assert_succeeded(&a2);
    assert_eq!(get_root(port).await.unwrap(), "version v2\n");
    let s = c.service("web").await.unwrap();
    let slot = &s.slots[0];
    assert_eq!(
        (slot.active.as_deref(), slot.previous.as_deref()),
        (Some("v2"), Some("v1"))
    );
    assert_eq!(slot.state, RunState::Running);
    assert!(slot.health.as_ref().is_some_and(|h| h.healthy), "{slot:?}");
    let pid = slot.pid.unwrap();

    // A replayed request returns the same operation and does not act again.
    let replay = c
        .activate(
            "web",
            &rollgate::agent::api::ActivateRequest {
                request_id: "act-v2".into(),
                version: "v2".into(),
                slot: 0,
                timeout_ms: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(replay.id, a2.id);
    assert_eq!(c.service("web").await.unwrap().slots[0].pid, Some(pid));
    // A new request for the version already running and healthy does not restart it.
    let again = activate(&c, "act-v2-again", "v2", 0).await;
    assert_succeeded(&again);
    assert!(again.message.unwrap().contains("already running"));
    assert_eq!(c.service("web").await.unwrap().slots[0].pid, Some(pid));
    // The same request id for another request is refused.
    let reused = c
        .activate(
            "web",
            &rollgate::agent::api::ActivateRequest {
                request_id: "act-v2".into(),
                version: "v3".into(),
                slot: 0,
                timeout_ms: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(reused.status(), Some(409), "{reused}");

    // Rollback goes to the previous version, which then has v2 as its previous.
    let rb = c
        .rollback(
            "web",
            &RollbackRequest {
                request_id: "rb-1".into(),
                slot: 0,
                to: None,
                timeout_ms: None,
            },
        )
        .await
        .unwrap();
    let rb = c
        .wait_operation(&rb.id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_succeeded(&rb);
    assert_eq!(get_root(port).await.unwrap(), "version v1\n");
    let slot = c.service("web").await.unwrap().slots[0].clone();
    assert_eq!(
        (slot.active.as_deref(), slot.previous.as_deref()),
        (Some("v1"), Some("v2"))
    );

    // Prune to zero keeps the active (v1) and previous (v2) versions only.
    let pr = c
        .prune(
            "web",
            &PruneRequest {
                request_id: "prune-1".into(),
                keep: 0,
            },
        )
        .await
        .unwrap();
    let pr = c
        .wait_operation(&pr.id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_succeeded(&pr);
    assert_eq!(pr.removed, vec!["v3"]);
    assert_eq!(
        listing(&data.join("services/web/versions")),
        vec!["v1", "v2"]
    );
    assert_eq!(get_root(port).await.unwrap(), "version v1\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_slots_run_side_by_side_on_their_own_ports() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let ports = free_ports(2);
    let data = tmp.path().join("data");
    let agent = AgentProc::start(tmp.path(), &config(&pki, &data, &web_service(&ports, "")));
    let c = agent.client(&pki.client_auth());
    let script = demo_script(&[]);
    assert_succeeded(&stage(&c, "1.0", &tar_gz(&[("bin/web", 0o755, &script)])).await);
    assert_succeeded(
        &stage(
            &c,
            "2.0",
            &tar_gz(&[("bin/web", 0o755, &script), ("README", 0o644, b"2")]),
        )
        .await,
    );

    assert_succeeded(&activate(&c, "s0", "1.0", 0).await);
    assert_succeeded(&activate(&c, "s1", "2.0", 1).await);
    assert_eq!(get_root(ports[0]).await.unwrap(), "version 1.0\n");
    assert_eq!(get_root(ports[1]).await.unwrap(), "version 2.0\n");

    // Then the old slot is stopped and stays stopped.
    let stop = c
        .stop(
            "web",
            &SlotRequest {
                request_id: "stop-0".into(),
                slot: 0,
            },
        )
        .await
        .unwrap();
    assert_succeeded(
        &c.wait_operation(&stop.id, Duration::from_secs(30))
            .await
            .unwrap(),
    );
    assert!(get_root(ports[0]).await.is_err());
    assert_eq!(get_root(ports[1]).await.unwrap(), "version 2.0\n");
    let s = c.service("web").await.unwrap();
    assert_eq!(s.slots[0].state, RunState::Stopped);
    assert!(!s.slots[0].desired_running);

    let bad_slot = activate_err(&c, 2).await;
    assert_eq!(bad_slot, Some(400));
}

async fn activate_err(c: &rollgate::agent::client::AgentClient, slot: u32) -> Option<u16> {
    c.activate(
        "web",
        &rollgate::agent::api::ActivateRequest {
            request_id: format!("bad-slot-{slot}"),
            version: "1.0".into(),
            slot,
            timeout_ms: None,
        },
    )
    .await
    .unwrap_err()
    .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activation_fails_with_the_reason_and_slow_starts_succeed() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let port = free_ports(1)[0];
    let data = tmp.path().join("data");
    let svc = web_service(&[port], "    recovery: {restart: \"no\"}\n")
        .replace("startTimeout: 15s", "startTimeout: 4s");
    let agent = AgentProc::start(tmp.path(), &config(&pki, &data, &svc));
    let c = agent.client(&pki.client_auth());

    let unhealthy = demo_script(&[("DEMO_HEALTH_STATUS", "500")]);
    let crashing = demo_script(&[("DEMO_CRASH_AT_START", "true"), ("DEMO_EXIT_CODE", "7")]);
    let slow = demo_script(&[("DEMO_START_DELAY_MS", "1500")]);
    for (v, s) in [("sick", &unhealthy), ("crash", &crashing), ("slow", &slow)] {
        assert_succeeded(&stage(&c, v, &tar_gz(&[("bin/web", 0o755, s)])).await);
    }

    // Issue 15 §4: a service that answers 500 fails after failureThreshold (3) checks 100 ms
    // apart, not when startTimeout (4 s) runs out.
    let op = activate(&c, "a-sick", "sick", 0).await;
    assert_eq!(op.state, OperationState::Failed);
    let took = op.finished_unix_ms.unwrap() - op.created_unix_ms;
    let err = op.error.unwrap();
    assert!(
        err.contains("HTTP 500")
            && err.contains("3 consecutive failed checks (failureThreshold 3)"),
        "{err}"
    );
    assert!(took < 2500, "failed after {took} ms: {err}");

    let op = activate(&c, "a-crash", "crash", 0).await;
    assert_eq!(op.state, OperationState::Failed);
    let err = op.error.unwrap();
    assert!(
        err.contains("exit code 7") && err.contains("crashing at start"),
        "{err}"
    );

    let op = activate(&c, "a-slow", "slow", 0).await;
    assert_succeeded(&op);
    assert_eq!(get_root(port).await.unwrap(), "version slow\n");

    let op = activate(&c, "a-missing", "nope", 0).await;
    assert!(op.error.unwrap().contains("not installed"));
}
