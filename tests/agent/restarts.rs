//! Crashes and restart policy with backoff; stop timeout; the agent killed mid-activation.

use std::time::{Duration, Instant};

use rollgate::agent::api::{ActivateRequest, OperationState, RunState, SlotRequest};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_service_is_restarted_and_crash_loops_back_off() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let port = free_ports(1)[0];
    let data = tmp.path().join("data");
    let svc = web_service(
        &[port],
        "    recovery: {restart: on-failure, actions: [{restart: 0s}, {restart: 1s}], throttle: 1500ms, maxBackoff: 8s}\n",
    );
    let agent = AgentProc::start(tmp.path(), &config(&pki, &data, &svc));
    let c = agent.client(&pki.client_auth());

    // Exits with code 3 two seconds after starting: restarted, each time with a new pid.
    let flaky = demo_script(&[("DEMO_EXIT_AFTER_SECS", "2"), ("DEMO_EXIT_CODE", "3")]);
    assert_succeeded(&stage(&c, "flaky", &tar_gz(&[("bin/web", 0o755, &flaky)])).await);
    assert_succeeded(&activate(&c, "a-flaky", "flaky", 0).await);
    let first_pid = c.service("web").await.unwrap().slots[0].pid.unwrap();
    let s = wait_status(&c, Duration::from_secs(20), |s| {
        s.slots[0].restarts >= 2 && s.slots[0].state == RunState::Running
    })
    .await;
    assert_ne!(s.slots[0].pid, Some(first_pid));
    assert_eq!(s.slots[0].last_exit.as_ref().unwrap().code, Some(3));

    // Crashing at start: a rapid crash loop, throttled with growing delays, flagged in state.
    let crashy = demo_script(&[("DEMO_CRASH_AT_START", "1")]);
    assert_succeeded(&stage(&c, "crashy", &tar_gz(&[("bin/web", 0o755, &crashy)])).await);
    let op = activate(&c, "a-crashy", "crashy", 0).await;
    assert_eq!(op.state, OperationState::Failed);
    let started = Instant::now();
    let s = wait_status(&c, Duration::from_secs(20), |s| {
        s.slots[0].consecutive_failures >= 3 && s.slots[0].state == RunState::Backoff
    })
    .await;
    let slot = &s.slots[0];
    assert!(slot.crash_loop, "{slot:?}");
    let delay = slot.next_restart_unix_ms.unwrap() - slot.last_exit.as_ref().unwrap().at_unix_ms;
    // Third rapid crash: 1s, 2s, then 4s of backoff (more than the 1s the actions ask).
    assert!(delay >= 3_500, "backoff delay {delay} ms");
    // Three failures took at least the first two backoffs (1s + 2s).
    assert!(started.elapsed() >= Duration::from_millis(2_500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_kills_after_stop_timeout_when_sigterm_is_ignored() {
    let WebAgent {
        tmp: _tmp,
        pki: _pki,
        port,
        data,
        agent: _agent,
        client: c,
    } = WebAgent::start();
    let stubborn = demo_script(&[("DEMO_IGNORE_SIGTERM", "true")]);
    assert_succeeded(&stage(&c, "stubborn", &tar_gz(&[("bin/web", 0o755, &stubborn)])).await);
    assert_succeeded(&activate(&c, "a", "stubborn", 0).await);

    let started = Instant::now();
    let op = c
        .stop(
            "web",
            &SlotRequest {
                request_id: "stop".into(),
                slot: 0,
            },
        )
        .await
        .unwrap();
    assert_succeeded(
        &c.wait_operation(&op.id, Duration::from_secs(30))
            .await
            .unwrap(),
    );
    let took = started.elapsed();
    // stopTimeout is 3s in web_service.
    assert!(
        took >= Duration::from_millis(2_800),
        "stopped after {took:?}"
    );
    assert!(get_root(port).await.is_err());
    let slot = c.service("web").await.unwrap().slots[0].clone();
    assert_eq!(slot.last_exit.unwrap().signal, Some(9));
    assert!(
        std::fs::read_to_string(data.join("services/web/logs/slot-0.stderr.log"))
            .unwrap()
            .contains("ignoring SIGTERM")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_mid_activation_comes_back_consistent() {
    let WebAgent {
        tmp,
        pki,
        port,
        data: _data,
        mut agent,
        client: c,
    } = WebAgent::start();
    assert_succeeded(&stage(&c, "v1", &tar_gz(&[("bin/web", 0o755, &demo_script(&[]))])).await);
    let slow = demo_script(&[("DEMO_START_DELAY_MS", "4000")]);
    assert_succeeded(&stage(&c, "v2", &tar_gz(&[("bin/web", 0o755, &slow)])).await);
    assert_succeeded(&activate(&c, "a1", "v1", 0).await);

    let op = c
        .activate(
            "web",
            &ActivateRequest {
                request_id: "a2".into(),
                version: "v2".into(),
                slot: 0,
                timeout_ms: None,
            },
        )
        .await
        .unwrap();
    // Kill it once the new version is starting (after the switch, before it is healthy).
    wait_status(&c, Duration::from_secs(10), |s| {
        s.slots[0].active.as_deref() == Some("v2") && s.slots[0].pid.is_some()
    })
    .await;
    agent.kill9();

    let agent = AgentProc::start_file(tmp.path(), &agent.config.clone());
    let c = agent.client(&pki.client_auth());
    let old = c.operation(&op.id).await.unwrap();
    assert_eq!(old.state, OperationState::Failed);
    assert!(old.error.unwrap().contains("interrupted"));
    let s = c.service("web").await.unwrap();
    let active = s.slots[0].active.clone().unwrap();
    assert!(active == "v1" || active == "v2");
    // The agent brings the slot back to its desired state, serving exactly the reported
    // version: the orphaned process of the killed agent was reaped, not left on the port.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(body) = get_root(port).await {
            assert_eq!(body, format!("version {active}\n"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "service not back: {:#?}",
            c.service("web").await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let s = c.service("web").await.unwrap();
    assert_eq!(s.slots[0].state, RunState::Running);
    assert_eq!(
        s.slots[0].restarts, 0,
        "no crash loop from a port clash: {s:#?}"
    );

    // A graceful stop stops the service; the next start restores it from desired state.
    let mut agent = agent;
    assert!(agent.terminate().success());
    assert!(get_root(port).await.is_err());
    let _agent = AgentProc::start_file(tmp.path(), &agent.config.clone());
    let deadline = Instant::now() + Duration::from_secs(20);
    while get_root(port).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "service not restored after agent restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(get_root(port).await.unwrap(), format!("version {active}\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_runs_its_command_after_the_restarts_and_always_restarts_clean_exits() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let ports = free_ports(2);
    let data = tmp.path().join("data");
    let marker = tmp.path().join("paged");
    let svc = web_service(
        &ports[..1],
        &format!(
            "    recovery: {{restart: on-failure, actions: [{{restart: 0s}}, {{run: \"echo paged >> {}\"}}], throttle: 10ms}}\n",
            marker.display()
        ),
    );
    let always = web_service(
        &ports[1..],
        "    recovery: {restart: always, throttle: 10ms}\n",
    )
    .replace("name: web", "name: cron");
    let agent = AgentProc::start(tmp.path(), &config(&pki, &data, &format!("{svc}{always}")));
    let c = agent.client(&pki.client_auth());

    // First failure: restarted at once; second: the `run` action, then the slot stays failed.
    let dies = demo_script(&[("DEMO_EXIT_AFTER_SECS", "2"), ("DEMO_EXIT_CODE", "4")]);
    assert_succeeded(&stage(&c, "dies", &tar_gz(&[("bin/web", 0o755, &dies)])).await);
    assert_succeeded(&activate(&c, "a-dies", "dies", 0).await);
    let s = wait_status(&c, Duration::from_secs(20), |s| {
        s.slots[0].state == RunState::Failed
    })
    .await;
    assert_eq!(s.slots[0].restarts, 1, "{s:#?}");
    assert_eq!(s.slots[0].consecutive_failures, 2);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "recovery command did not run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // `always` restarts a process that exits cleanly.
    let quits = demo_script(&[("DEMO_EXIT_AFTER_SECS", "2"), ("DEMO_EXIT_CODE", "0")]);
    let op = c
        .stage_bytes(
            "cron",
            "q",
            tar_gz(&[("bin/web", 0o755, &quits)]),
            &upload_params("stage-q", &tar_gz(&[("bin/web", 0o755, &quits)]), None),
        )
        .await;
    // Two gzip runs of the same input are byte-identical, so the sha256 matches.
    let op = c
        .wait_operation(&op.unwrap().id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_succeeded(&op);
    let op = c
        .activate(
            "cron",
            &ActivateRequest {
                request_id: "a-q".into(),
                version: "q".into(),
                slot: 0,
                timeout_ms: None,
            },
        )
        .await
        .unwrap();
    assert_succeeded(
        &c.wait_operation(&op.id, Duration::from_secs(30))
            .await
            .unwrap(),
    );
    let start = Instant::now();
    loop {
        let s = c.service("cron").await.unwrap();
        let slot = &s.slots[0];
        if slot.restarts >= 2 {
            assert_eq!(slot.last_exit.as_ref().unwrap().code, Some(0));
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{slot:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
