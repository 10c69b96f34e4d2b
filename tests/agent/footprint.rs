//! Footprint of the agent: idle RSS, peak RSS through staging and activation, binary size.
//!
//! Ignored by default; run against release binaries with
//! `cargo test --release --test agent footprint -- --ignored --nocapture`.
//! Targets (issue 3): idle <= 10 MiB, busy <= 25 MiB, stripped binary <= 15 MiB.

use std::time::Duration;

use crate::support::*;

fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run with --release -- --ignored --nocapture"]
async fn footprint() {
    let WebAgent {
        tmp: _tmp,
        pki,
        port: _port,
        data: _data,
        agent,
        client: _,
    } = WebAgent::start();
    let pid = agent.child.as_ref().unwrap().id();
    let c = agent.client(&pki.client_auth());
    c.host_info().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = proc_kib(pid, "VmRSS:");

    // Busy: stage an artifact holding the real demo binary (streamed, hashed, unpacked),
    // then activate it and wait for health, twice.
    let demo = std::fs::read(DEMO).unwrap();
    let script = b"#!/bin/sh\nexec \"$(dirname \"$0\")/rollgate-demo\" \"$@\"\n".to_vec();
    let art = tar_gz(&[
        ("bin/web", 0o755, &script),
        ("bin/rollgate-demo", 0o755, &demo),
    ]);
    for v in ["b1", "b2"] {
        assert_succeeded(&stage(&c, v, &art).await);
        assert_succeeded(&activate(&c, &format!("a-{v}"), v, 0).await);
    }
    let busy_peak = proc_kib(pid, "VmHWM:");
    let after = proc_kib(pid, "VmRSS:");
    let size = std::fs::metadata(AGENT).unwrap().len();
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "footprint: idle RSS {:.1} MiB, peak RSS through staging {:.1} MiB artifact + 2 activations {:.1} MiB, RSS after {:.1} MiB, binary {:.1} MiB ({})",
        mib(idle),
        art.len() as f64 / 1048576.0,
        mib(busy_peak),
        mib(after),
        size as f64 / 1048576.0,
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release, stripped"
        }
    );
    if !cfg!(debug_assertions) {
        assert!(mib(idle) <= 10.0, "idle RSS {:.1} MiB", mib(idle));
        assert!(mib(busy_peak) <= 25.0, "busy RSS {:.1} MiB", mib(busy_peak));
        assert!(size <= 15 << 20, "binary {size} bytes");
    }
}
