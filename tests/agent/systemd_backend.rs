//! The systemd backend under a real systemd (PID 1 of its own namespaces), driven by the real
//! agent running as its own least-privilege unit: a rollout v1, v2, a failing v3 rolled back,
//! `Restart=` delays, the `OnFailure=` recovery unit, and `resetAfter`.

use std::time::{Duration, Instant};

use rollgate::agent::api::{ActivateRequest, Operation, OperationState, RollbackRequest};
use rollgate::agent::client::AgentClient;

use crate::support::*;
use crate::systemd::*;

/// `web_service` on the systemd backend, named `name`.
fn systemd_service(name: &str, port: u16, extra: &str) -> String {
    web_service(&[port], extra).replace(
        "  - name: web\n",
        &format!("  - name: {name}\n    backend: systemd\n"),
    )
}

fn install_agent(sd: &Systemd, services: &str) -> (AgentFiles, AgentClient) {
    let files = AgentFiles::write(sd, services);
    assert_ok("service install", &files.install(sd));
    let client = files.client();
    (files, client)
}

async fn stage_to(c: &AgentClient, service: &str, version: &str, bytes: &[u8]) {
    let op = c
        .stage_bytes(
            service,
            version,
            bytes.to_vec(),
            &upload_params(&format!("stage-{service}-{version}"), bytes, None),
        )
        .await
        .unwrap();
    let op = c
        .wait_operation(&op.id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_succeeded(&op);
}

async fn activate_to(c: &AgentClient, service: &str, version: &str) -> Operation {
    let op = c
        .activate(
            service,
            &ActivateRequest {
                request_id: format!("act-{service}-{version}"),
                version: version.to_string(),
                slot: 0,
                timeout_ms: None,
            },
        )
        .await
        .unwrap();
    c.wait_operation(&op.id, Duration::from_secs(60))
        .await
        .unwrap()
}

fn artifact(env: &[(&str, &str)]) -> Vec<u8> {
    tar_gz(&[("bin/web", 0o755, &demo_script(env))])
}

/// The version dir `ExecStart=` of `unit` runs from, as `systemctl show` reports it.
fn exec_version(sd: &Systemd, unit: &str) -> String {
    let exec = sd.prop(unit, "ExecStart");
    let path = exec
        .split("path=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("{exec}"));
    path.split("/versions/")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or_else(|| panic!("{path}"))
        .to_string()
}

#[test]
fn the_systemd_backend_rolls_v1_v2_and_rolls_a_failing_v3_back() {
    let Some(sd) = Systemd::start("systemd_backend rollout") else {
        return;
    };
    let port = free_ports(1)[0];
    let (_files, c) = install_agent(&sd, &systemd_service("web", port, ""));
    let unit = "rollgate-web-0.service";
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut pids = Vec::new();
        for v in ["1.0", "2.0"] {
            stage_to(&c, "web", v, &artifact(&[])).await;
            let op = activate_to(&c, "web", v).await;
            assert_succeeded(&op);
            let show = sd.show(unit);
            assert_eq!(show["ActiveState"], "active", "{v}");
            assert_eq!(exec_version(&sd, unit), v);
            let status = c.service("web").await.unwrap();
            let pid: u32 = show["ExecMainPID"].parse().unwrap();
            assert_eq!(
                status.slots[0].pid,
                Some(pid),
                "the agent reports systemd's main pid"
            );
            assert!(get_root(port).await.unwrap().contains(v));
            pids.push(pid);
        }
        assert_ne!(pids[0], pids[1], "v2 is a new process");

        stage_to(&c, "web", "3.0", &artifact(&[("DEMO_CRASH_AT_START", "1")])).await;
        let op = activate_to(&c, "web", "3.0").await;
        assert_eq!(op.state, OperationState::Failed, "{op:#?}");
        assert_eq!(exec_version(&sd, unit), "3.0");
        // Crashing at start: systemd restarts it (`Restart=on-failure`) until it is rolled back.
        sd.wait_prop(unit, "NRestarts", Duration::from_secs(10), |n| {
            n.parse::<u32>().unwrap_or(0) >= 1
        });

        let op = c
            .rollback(
                "web",
                &RollbackRequest {
                    request_id: "rollback-3".into(),
                    slot: 0,
                    to: None,
                    timeout_ms: None,
                },
            )
            .await
            .unwrap();
        let op = c
            .wait_operation(&op.id, Duration::from_secs(60))
            .await
            .unwrap();
        assert_succeeded(&op);
        let show = sd.show(unit);
        assert_eq!(show["ActiveState"], "active");
        assert_eq!(exec_version(&sd, unit), "2.0");
        assert!(get_root(port).await.unwrap().contains("2.0"));
    });
}

/// Monotonic times (µs) of systemd's own journal entries about `unit` whose message contains
/// `needle`.
fn manager_events(sd: &Systemd, unit: &str, needle: &str) -> Vec<u64> {
    sd.journal(&["_PID=1"])
        .iter()
        .filter(|e| e["UNIT"] == unit && e["MESSAGE"].as_str().is_some_and(|m| m.contains(needle)))
        .map(|e| {
            e["__MONOTONIC_TIMESTAMP"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect()
}

#[test]
fn crashes_restart_after_the_configured_delay_then_the_recovery_unit_runs_and_reset_after_counts() {
    let Some(sd) = Systemd::start("systemd_backend recovery") else {
        return;
    };
    let ports = free_ports(2);
    let ran = |name: &str| sd.dir.join(format!("{name}-recovery-ran"));
    // Each run crashes after 2s. `web`: restarts after 2s, twice, then the recovery command.
    // `calm`: the same actions, but a run longer than resetAfter starts the count again.
    let services = format!(
        "{}{}",
        systemd_service(
            "web",
            ports[0],
            &format!(
                "    recovery: {{restart: on-failure, actions: [{{restart: 2s}}, {{restart: 2s}}, {{run: 'echo ran > {}'}}], resetAfter: 1m}}\n",
                ran("web").display()
            ),
        ),
        systemd_service(
            "calm",
            ports[1],
            &format!(
                "    recovery: {{restart: on-failure, actions: [{{restart: 500ms}}, {{restart: 500ms}}, {{run: 'echo ran > {}'}}], resetAfter: 1500ms}}\n",
                ran("calm").display()
            ),
        ),
    );
    let (_files, c) = install_agent(&sd, &services);
    let crashing = artifact(&[("DEMO_EXIT_AFTER_SECS", "2")]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // `calm` first: every activation's `daemon-reload` makes systemd forget the start counts
        // of all units, so activating `calm` during `web`'s crashes would give `web` one more run.
        for s in ["calm", "web"] {
            stage_to(&c, s, "1.0", &crashing).await;
            assert_succeeded(&activate_to(&c, s, "1.0").await);
        }
    });
    let web = "rollgate-web-0.service";
    let calm = "rollgate-calm-0.service";
    assert_eq!(sd.prop(web, "RestartUSec"), "2s");
    // Three runs (the activation's and two restarts), then the start limit: failed, OnFailure=.
    sd.wait_prop(web, "ActiveState", Duration::from_secs(30), |s| {
        s == "failed"
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ran("web").exists() {
        assert!(
            Instant::now() < deadline,
            "the recovery unit did not run: {}",
            sd.journal_text("rollgate-web-0-recovery.service")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let recovery = sd.show("rollgate-web-0-recovery.service");
    assert_eq!(recovery["Result"], "success");
    assert_ne!(recovery["ExecMainExitTimestampMonotonic"], "0");
    let exits = manager_events(&sd, web, "Main process exited");
    let starts = manager_events(&sd, web, "Started");
    assert_eq!(
        (exits.len(), starts.len()),
        (3, 3),
        "{}",
        sd.journal_text(web)
    );
    for (exit, next_start) in exits.iter().zip(&starts[1..]) {
        let gap = Duration::from_micros(next_start - exit);
        assert!(
            gap >= Duration::from_secs(2) && gap < Duration::from_secs(4),
            "restarted {gap:?} after the crash, not after RestartSec=2s"
        );
    }

    // `calm` crashed as often and more, but never within resetAfter of its previous start
    // burst: still restarting, no recovery command.
    sd.wait_prop(calm, "NRestarts", Duration::from_secs(30), |n| {
        n.parse::<u32>().unwrap_or(0) >= 4
    });
    assert_ne!(sd.prop(calm, "ActiveState"), "failed");
    assert!(!ran("calm").exists(), "resetAfter was not honoured");
}
