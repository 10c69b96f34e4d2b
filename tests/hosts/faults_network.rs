//! The fault matrix, network side: a host cut off for less than the step deadline (ridden out, no
//! failure; the longer cut is `netns_cut_off.rs`), and lossy, slow links to every host (the rollout
//! completes, slower, with no false failure).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rollgate::state::Event;

use crate::faults;
use crate::fleet::{Fleet, Running};
use crate::netns::{NetHost, root_or_skip};

/// Records of a finished run that report a failure: a failed change, a failed gate, a rollback.
fn failures(run: &Running) -> Vec<String> {
    run.records
        .iter()
        .filter(|r| {
            matches!(
                r.event,
                Event::InstanceChanged { ok: false, .. }
                    | Event::Gate { passed: false, .. }
                    | Event::RollbackStarted { .. }
            )
        })
        .map(|r| rollgate::cli::output::describe(&r.event))
        .collect()
}

#[test]
fn faults_host_cut_off_shorter_than_the_deadline_is_ridden_out() {
    if !root_or_skip("faults_host_cut_off_shorter_than_the_deadline") {
        return;
    }
    const N: usize = 6;
    const DEADLINE: u64 = 10;
    const CUT: Duration = Duration::from_secs(3);
    let fleet = Fleet::start(N);
    fleet.install("1.0.0");
    let v2 = fleet.artifact("2.0.0", "");
    let manifest = fleet.manifest(
        "2.0.0",
        &v2,
        "    rolling: {maxSurge: 0, maxUnavailable: 1}\n",
        DEADLINE,
    );
    let mut run =
        Running::spawn(fleet.rollgate(&["apply", "-f", manifest.to_str().unwrap(), "-o", "json"]));
    // Cut the third wave's host as it starts switching, for 3 s of a 10 s deadline.
    let changing = |e: &Event| matches!(e, Event::InstanceChanging { .. });
    run.wait_for(Duration::from_secs(60), changing);
    run.wait_for(Duration::from_secs(60), changing);
    let third = run.wait_for(Duration::from_secs(60), changing);
    let Event::InstanceChanging {
        instance: victim, ..
    } = third.event
    else {
        unreachable!()
    };
    let v = fleet.index(&victim);
    fleet.hosts[v].net.cut();
    std::thread::sleep(CUT);
    fleet.hosts[v].net.reconnect();
    let code = run.finish(Duration::from_secs(120));
    let log = format!("{}{}", run.describe(), run.output());
    let failed = failures(&run);
    faults::record(faults::Case {
        bed: "netns hosts",
        fault: "host cut off (ip link set down) for 3 s, deadline 10 s",
        outcome: &format!("exit {code:?}, {} failure records", failed.len()),
        lost: 0,
        unknown: 0,
    });
    assert_eq!(code, Some(0), "the cut is ridden out\n{log}");
    assert!(
        failed.is_empty(),
        "no failure was recorded: {failed:?}\n{log}"
    );
    fleet.assert_serving("2.0.0");
}

/// The other short cut: the host is already unreachable when the rollout starts, and the root
/// namespace has forgotten its MAC address, so new connections fail at once with "no route to
/// host" (ARP gets no answer) instead of hanging. Those errors are retried: once the host is back,
/// 5 s later, the rollout goes on and completes.
#[test]
fn faults_host_unreachable_at_the_start_is_retried_until_it_is_back() {
    if !root_or_skip("faults_host_unreachable_at_the_start") {
        return;
    }
    const N: usize = 3;
    const CUT: Duration = Duration::from_secs(5);
    let fleet = Fleet::start(N);
    fleet.install("1.0.0");
    let v2 = fleet.artifact("2.0.0", "");
    let manifest = fleet.manifest(
        "2.0.0",
        &v2,
        "    rolling: {maxSurge: 0, maxUnavailable: 1}\n",
        10,
    );
    let victim = &fleet.hosts[1];
    victim.net.cut();
    let _ = Command::new("ip")
        .args(["neigh", "flush", "to", &victim.net.ip.to_string()])
        .status();
    let mut run =
        Running::spawn(fleet.rollgate(&["apply", "-f", manifest.to_str().unwrap(), "-o", "json"]));
    std::thread::sleep(CUT);
    victim.net.reconnect();
    let code = run.finish(Duration::from_secs(120));
    let log = format!("{}{}", run.describe(), run.output());
    let failed = failures(&run);
    faults::record(faults::Case {
        bed: "netns hosts",
        fault: "host unreachable (link down, ARP flushed) for the first 5 s of a rollout",
        outcome: &format!("exit {code:?}, {} failure records", failed.len()),
        lost: 0,
        unknown: 0,
    });
    assert_eq!(code, Some(0), "retried until the host was back\n{log}");
    assert!(
        failed.is_empty(),
        "no failure was recorded: {failed:?}\n{log}"
    );
    fleet.assert_serving("2.0.0");
}

/// Makes every packet on `host`'s link slower and some of them lost, both ways. With `tc netem`
/// (when the kernel has it): 40 ms ± 10 ms delay and 3% loss each way. Without it (this project's
/// CI kernel is built without `CONFIG_NET_SCH_NETEM`): 3% loss each way with nftables inside the
/// namespace, and a token bucket of 20 Mbit/s with up to 50 ms of queue toward the host.
fn impair(host: &NetHost) -> String {
    let netem = |dev: &str, ns: Option<&str>| {
        let mut cmd = Command::new("tc");
        if let Some(ns) = ns {
            cmd.args(["-n", ns]);
        }
        cmd.args([
            "qdisc", "add", "dev", dev, "root", "netem", "delay", "40ms", "10ms", "loss", "3%",
        ])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    };
    if netem(&host.outer_link, None) && netem(&host.inner_link, Some(&host.ns)) {
        return "tc netem delay 40ms±10ms loss 3% each way".into();
    }
    let rules = format!(
        "table inet rgt_loss {{\n  chain in {{ type filter hook input priority 0; iifname \"{dev}\" numgen random mod 100 < 3 drop; }}\n  chain out {{ type filter hook output priority 0; oifname \"{dev}\" numgen random mod 100 < 3 drop; }}\n}}\n",
        dev = host.inner_link
    );
    let mut nft = host
        .command("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("run nft (nftables) in the namespace");
    std::io::Write::write_all(nft.stdin.as_mut().unwrap(), rules.as_bytes()).unwrap();
    drop(nft.stdin.take());
    assert!(nft.wait().unwrap().success(), "nft rules for {}", host.ns);
    let tbf = Command::new("tc")
        .args([
            "qdisc",
            "add",
            "dev",
            &host.outer_link,
            "root",
            "tbf",
            "rate",
            "20mbit",
            "burst",
            "32kb",
            "latency",
            "50ms",
        ])
        .status()
        .unwrap();
    assert!(tbf.success(), "tc tbf on {}", host.outer_link);
    "3% loss each way (nftables), 20 Mbit/s token bucket with 50 ms of queue (tc tbf); no netem in this kernel".into()
}

#[test]
fn faults_lossy_slow_links_still_complete_without_false_failures() {
    if !root_or_skip("faults_lossy_slow_links") {
        return;
    }
    if !Command::new("nft")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        eprintln!("faults_lossy_slow_links: skipped: needs nft (apt install nftables)");
        return;
    }
    const N: usize = 6;
    let fleet = Fleet::start(N);
    fleet.install("1.0.0");
    let strategy = "    rolling: {maxSurge: 0, maxUnavailable: 2}\n";
    let rollout = |version: &str| {
        let artifact = fleet.artifact(version, "");
        let manifest = fleet.manifest(version, &artifact, strategy, 30);
        let started = Instant::now();
        let mut run = Running::spawn(fleet.rollgate(&[
            "apply",
            "-f",
            manifest.to_str().unwrap(),
            "-o",
            "json",
        ]));
        let code = run.finish(Duration::from_secs(300));
        (code, started.elapsed(), run)
    };
    // The same rollout on clean links, then on impaired ones.
    let (code, clean, run) = rollout("2.0.0");
    assert_eq!(code, Some(0), "{}{}", run.describe(), run.output());
    let mut how = String::new();
    for h in &fleet.lan.hosts {
        how = impair(h);
    }
    let (code, impaired, run) = rollout("3.0.0");
    let failed = failures(&run);
    eprintln!(
        "faults_lossy_slow_links: {how}: rollout (staging included) {:.2} s clean, {:.2} s impaired",
        clean.as_secs_f64(),
        impaired.as_secs_f64()
    );
    faults::record(faults::Case {
        bed: "netns hosts",
        fault: &format!("every link impaired: {how}"),
        outcome: &format!(
            "exit {code:?}, {} failure records; {:.1} s vs {:.1} s clean",
            failed.len(),
            impaired.as_secs_f64(),
            clean.as_secs_f64()
        ),
        lost: 0,
        unknown: 0,
    });
    assert_eq!(
        code,
        Some(0),
        "completes on impaired links\n{}{}",
        run.describe(),
        run.output()
    );
    assert!(failed.is_empty(), "no false failure: {failed:?}");
    // Still through the impaired links: a probe whose packets are lost is tried again (CI once saw
    // one host's GET time out, EAGAIN, after a rollout that had passed).
    fleet.assert_serving_through_loss("3.0.0", Duration::from_secs(30));
}
