//! Team state in the cluster: two "machines" (two state dirs, one kubeconfig) share an app through
//! the ConfigMap `rollgate-web` (journal, manifests, control requests) and the Lease `rollgate-web`
//! (the lock). The real `rollgate` binary on the real control plane.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::PostParams;
use kube::runtime::wait::await_condition;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};

use crate::faults;
use serde_json::Value;

use crate::kube_bed::{self, APP, Bed, image};

const STATE: &str = "rollgate-web";

/// One machine: its own state dir, host name and user, the cluster's kubeconfig.
struct Machine<'a> {
    bed: &'a Bed,
    name: String,
    state: PathBuf,
    user: &'static str,
    kubeconfig: PathBuf,
    /// In a pid namespace of its own (with its own /proc), as another machine or a container is:
    /// it cannot see the other machines' processes, nor judge them dead.
    apart: bool,
}

impl<'a> Machine<'a> {
    fn new(bed: &'a Bed, name: &str, user: &'static str) -> Self {
        Machine {
            bed,
            name: name.to_string(),
            state: bed.path(name),
            user,
            kubeconfig: bed.cluster.kubeconfig().to_path_buf(),
            apart: false,
        }
    }

    /// A machine whose processes live in their own pid namespace (needs root: `unshare`).
    fn apart(bed: &'a Bed, name: &str, user: &'static str) -> Self {
        Machine {
            apart: true,
            ..Machine::new(bed, name, user)
        }
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let rollgate = env!("CARGO_BIN_EXE_rollgate");
        let mut c = if self.apart {
            let mut c = tokio::process::Command::new("unshare");
            c.args(["--pid", "--fork", "--mount-proc", rollgate]);
            c
        } else {
            tokio::process::Command::new(rollgate)
        };
        c.args(args)
            .current_dir(self.bed.dir.path())
            .env("KUBECONFIG", &self.kubeconfig)
            .env("ROLLGATE_STATE", &self.state)
            .env("ROLLGATE_USER", self.user)
            // Each machine has its own host name: `ana@machine-one`.
            .env("HOSTNAME", format!("machine-{}", self.name))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }

    async fn run(&self, args: &[&str]) -> Output {
        let out = self.command(args).output();
        let out = tokio::time::timeout(Duration::from_secs(240), out)
            .await
            .expect("rollgate finished within 240s")
            .expect("running rollgate");
        show(self.user, args, &out);
        out
    }

    fn spawn(&self, args: &[&str]) -> tokio::process::Child {
        self.command(args).spawn().expect("starting rollgate")
    }

    /// This machine's local journal, one JSON value per record.
    fn local_journal(&self) -> Vec<Value> {
        std::fs::read_to_string(self.state.join(APP).join("journal.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

fn show(who: &str, args: &[&str], out: &Output) {
    eprintln!(
        "{who}: rollgate {args:?}: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn finished(who: &str, child: tokio::process::Child) -> Output {
    let out = tokio::time::timeout(Duration::from_secs(240), child.wait_with_output())
        .await
        .expect("rollgate finished within 240s")
        .expect("waiting for rollgate");
    show(who, &["(spawned)"], &out);
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The journal the cluster holds for `web` in `ns`.
async fn cluster_journal(bed: &Bed, ns: &str) -> Vec<Value> {
    let maps: Api<ConfigMap> = Api::namespaced(bed.client.clone(), ns);
    let cm = maps.get(STATE).await.expect("reading rollgate-web");
    journal_of(&cm)
}

fn journal_of(cm: &ConfigMap) -> Vec<Value> {
    cm.data
        .as_ref()
        .and_then(|d| d.get("journal.jsonl"))
        .map(|t| {
            t.lines()
                .map(|l| serde_json::from_str(l).expect("journal line"))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the cluster's journal satisfies `cond` (by watching the ConfigMap).
async fn wait_journal(bed: &Bed, what: &str, cond: impl Fn(&[Value]) -> bool + Send + 'static) {
    let maps: Api<ConfigMap> = Api::namespaced(bed.client.clone(), &bed.ns);
    let done = await_condition(maps, STATE, move |cm: Option<&ConfigMap>| {
        cm.is_some_and(|cm| cond(&journal_of(cm)))
    });
    tokio::time::timeout(Duration::from_secs(120), done)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within 120s"))
        .unwrap_or_else(|e| panic!("{what}: watch failed: {e}"));
}

/// Waits until the Lease is free by its own terms: its duration past its last renewal.
async fn wait_lease_expired(bed: &Bed) {
    let leases: Api<Lease> = Api::namespaced(bed.client.clone(), &bed.ns);
    let Some(lease) = leases.get_opt(STATE).await.expect("reading the Lease") else {
        return;
    };
    let spec = lease.spec.expect("a Lease spec");
    let renewed = spec.renew_time.expect("renewTime").0.as_millisecond();
    let until = renewed + i64::from(spec.lease_duration_seconds.expect("a duration")) * 1000 + 500;
    let now = k8s_openapi::jiff::Timestamp::now().as_millisecond();
    if until > now {
        tokio::time::sleep(Duration::from_millis((until - now) as u64)).await;
    }
}

async fn lease(bed: &Bed) -> Option<Lease> {
    let leases: Api<Lease> = Api::namespaced(bed.client.clone(), &bed.ns);
    leases.get_opt(STATE).await.expect("reading the Lease")
}

/// Everything a write by rollgate could change on the Deployment and its ReplicaSets (not status).
fn shape_of_deployment(d: &Deployment) -> Value {
    serde_json::json!({
        "generation": d.metadata.generation,
        "spec": d.spec,
        "labels": d.metadata.labels,
        "annotations": d.metadata.annotations,
    })
}

fn shape_of_set(rs: &ReplicaSet) -> Value {
    serde_json::json!({
        "generation": rs.metadata.generation,
        "spec": rs.spec,
        "labels": rs.metadata.labels,
        "annotations": rs.metadata.annotations,
        "owners": rs.metadata.owner_references,
    })
}

async fn snapshot(bed: &Bed) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    out.insert(
        "deployment".to_string(),
        shape_of_deployment(&bed.deployment().await),
    );
    for rs in bed.replica_sets().await {
        out.insert(format!("rs/{}", rs.name_any()), shape_of_set(&rs));
    }
    out
}

/// Waits until rollgate's ReplicaSet has grown to `n` (a step is under way).
async fn wait_new_set_grown(bed: &Bed, n: i32) {
    let mut grown = watcher(bed.replica_sets.clone(), watcher::Config::default())
        .filter_map(|e| async move {
            match e {
                Ok(watcher::Event::Apply(rs)) | Ok(watcher::Event::InitApply(rs)) => Some(rs),
                _ => None,
            }
        })
        .filter(move |rs: &ReplicaSet| {
            let grown = rs.name_any().contains("-rg")
                && rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0) >= n;
            async move { grown }
        })
        .boxed();
    tokio::time::timeout(Duration::from_secs(60), grown.next())
        .await
        .expect("the new ReplicaSet grew within 60s");
}

fn history(out: &Output) -> Vec<Value> {
    serde_json::from_slice::<Value>(&out.stdout)
        .expect("history JSON")
        .as_array()
        .expect("a list of rollouts")
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_paused_on_one_machine_is_seen_and_promoted_from_another() {
    const N: i32 = 4;
    let Some(bed) = Bed::new("team-promote", N, "25%", "0").await else {
        return;
    };
    let rollout = bed.rollout(
        "web.yaml",
        "2",
        &format!("image: \"{}\"", image("2")),
        "  strategy:\n    canary: {maxSurge: 1, maxUnavailable: 0, steps: [{setWeight: 50}, {pause: {}}]}\n  progressDeadlineSeconds: 60\n",
    );
    let rollout = rollout.to_str().unwrap();
    let ns = bed.ns.clone();
    let one = Machine::new(&bed, "one", "ana");
    let two = Machine::new(&bed, "two", "bo");

    let out = one.run(&["apply", "-f", rollout]).await;
    assert_eq!(out.status.code(), Some(3), "paused at the pause");

    // Machine two never ran web: status and history come from the cluster.
    let out = two.run(&["status", "web", "-n", &ns]).await;
    assert_eq!(
        out.status.code(),
        Some(3),
        "status from machine two: paused"
    );
    let text = kube_bed::stdout(&out);
    assert!(text.contains("paused"), "{text}");
    assert!(text.contains("by ana@"), "{text}");
    let out = two.run(&["history", "web", "-n", &ns, "-o", "json"]).await;
    let seen = history(&out);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["actor"]["user"], "ana");
    assert!(seen[0]["paused"].is_string(), "{seen:?}");
    assert!(seen[0]["outcome"].is_null(), "{seen:?}");

    let out = two.run(&["promote", "web", "-n", &ns]).await;
    assert!(out.status.success(), "promoted from machine two");
    bed.wait_deployment("version 2 rolled out", |d| {
        kube_bed::rolled_out(d, N, &image("2"))
    })
    .await;
    kube_bed::assert_at_rest(&bed).await;

    // Machine one sees what machine two did, without being told the namespace.
    let out = one.run(&["history", "web", "-o", "json"]).await;
    let seen = history(&out);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["outcome"], "succeeded", "{seen:?}");
    assert_eq!(seen[0]["approvals"][0]["actor"]["user"], "bo", "{seen:?}");
    assert!(lease(&bed).await.is_none(), "the Lease is released");
    let maps: Api<ConfigMap> = Api::namespaced(bed.client.clone(), &ns);
    let cm = maps.get(STATE).await.expect("the state ConfigMap");
    assert_eq!(
        cm.labels()
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("rollgate")
    );
    bed.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_concurrent_applies_one_is_refused_and_the_other_is_aborted_from_elsewhere() {
    const N: i32 = 4;
    let Some(bed) = Bed::new("team-lock", N, "25%", "0").await else {
        return;
    };
    let rollout = bed.rollout(
        "web.yaml",
        "2",
        &format!("image: \"{}\"", image("2")),
        "  strategy:\n    canary: {maxSurge: 1, maxUnavailable: 0, steps: [{setWeight: 50}, {pause: {duration: 10m}}]}\n  progressDeadlineSeconds: 60\n",
    );
    let rollout = rollout.to_str().unwrap();
    let ns = bed.ns.clone();
    let machines = [
        Machine::new(&bed, "one", "ana"),
        Machine::new(&bed, "two", "bo"),
    ];
    let mut runs = [
        machines[0].spawn(&["apply", "-f", rollout]),
        machines[1].spawn(&["apply", "-f", rollout]),
    ];
    // Exactly one is refused: the first to exit, with the lock error naming the other.
    let [a, b] = &mut runs;
    let refused = tokio::time::timeout(Duration::from_secs(120), async {
        tokio::select! {
            _ = a.wait() => 0,
            _ = b.wait() => 1,
        }
    })
    .await
    .expect("one apply is refused");
    let winner = 1 - refused;
    let [first, second] = runs;
    let (loser_run, winner_run) = if refused == 0 {
        (first, second)
    } else {
        (second, first)
    };
    let (loser, holder) = (&machines[refused], &machines[winner]);
    let out = finished(loser.user, loser_run).await;
    assert_eq!(out.status.code(), Some(1), "the lock's exit code");
    let why = stderr(&out);
    assert!(
        why.contains(&format!("web is locked by {}@", holder.user)),
        "{why}"
    );

    // The winner holds the pause; a further apply from the other machine changes nothing.
    wait_journal(&bed, "the winner at its timed pause", |j| {
        j.iter()
            .any(|r| r["event"] == "stepStarted" && r["kind"] == "pause")
    })
    .await;
    let before = snapshot(&bed).await;
    let journal_before = cluster_journal(&bed, &ns).await;
    let out = loser.run(&["apply", "-f", rollout]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is locked by"), "{}", stderr(&out));
    assert_eq!(
        snapshot(&bed).await,
        before,
        "a refused apply changes nothing"
    );
    let journal_after = cluster_journal(&bed, &ns).await;
    assert_eq!(
        journal_after
            .iter()
            .filter(|r| r["event"] == "started")
            .count(),
        1,
        "one rollout in the cluster's journal"
    );
    assert!(journal_after.starts_with(&journal_before));
    assert!(
        loser.local_journal().is_empty(),
        "the refused machine journaled nothing"
    );

    // Abort from the other machine: the running rollout rolls back by itself.
    let out = loser.run(&["abort", "web", "-n", &ns]).await;
    assert!(out.status.success(), "the abort request is sent");
    let out = finished(holder.user, winner_run).await;
    assert_eq!(out.status.code(), Some(1), "an aborted rollout exits 1");
    let text = kube_bed::stdout(&out);
    assert!(
        text.contains(&format!("aborted by {}@", loser.user)),
        "{text}"
    );
    bed.wait_deployment("version 1 back", |d| {
        kube_bed::rolled_out(d, N, &image("1"))
    })
    .await;
    kube_bed::assert_at_rest(&bed).await;
    let out = loser
        .run(&["history", "web", "-n", &ns, "-o", "json"])
        .await;
    assert_eq!(history(&out)[0]["outcome"], "aborted");
    bed.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_pause_running_on_one_machine_is_cut_short_by_promote_from_another() {
    const N: i32 = 4;
    let Some(bed) = Bed::new("team-soak", N, "25%", "0").await else {
        return;
    };
    let rollout = bed.rollout(
        "web.yaml",
        "2",
        &format!("image: \"{}\"", image("2")),
        "  strategy:\n    canary: {maxSurge: 1, maxUnavailable: 0, steps: [{setWeight: 50}, {pause: {duration: 1h}}]}\n  progressDeadlineSeconds: 60\n",
    );
    let ns = bed.ns.clone();
    let one = Machine::new(&bed, "one", "ana");
    let two = Machine::new(&bed, "two", "bo");
    let run = one.spawn(&["apply", "-f", rollout.to_str().unwrap()]);
    wait_journal(&bed, "the run at its one-hour pause", |j| {
        j.iter()
            .any(|r| r["event"] == "stepStarted" && r["kind"] == "pause")
    })
    .await;
    let out = two.run(&["promote", "web", "-n", &ns]).await;
    assert!(out.status.success());
    assert!(
        kube_bed::stdout(&out).contains("promotion sent to the running rollout"),
        "{}",
        kube_bed::stdout(&out)
    );
    let out = finished(one.user, run).await;
    assert!(out.status.success(), "the run went on past its pause");
    bed.wait_deployment("version 2 rolled out", |d| {
        kube_bed::rolled_out(d, N, &image("2"))
    })
    .await;
    kube_bed::assert_at_rest(&bed).await;
    bed.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_killed_on_one_machine_is_resumed_on_another_once_its_lease_expires() {
    const N: i32 = 6;
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: the second machine runs in its own pid namespace, which needs root");
        return;
    }
    let Some(bed) = Bed::new("team-kill", N, "25%", "0").await else {
        return;
    };
    // Each new pod takes 2 s to be Ready, so the kill lands mid-step.
    kube_bed::template_file(
        bed.dir.path(),
        "2",
        &[],
        &[(crate::cluster::READY_DELAY_ANNOTATION, "2s")],
    );
    let rollout = bed.rollout(
        "web.yaml",
        "2",
        "manifest: deployment-2.yaml",
        "  strategy:\n    rolling: {maxSurge: 1, maxUnavailable: 0}\n  progressDeadlineSeconds: 60\n",
    );
    let ns = bed.ns.clone();
    let one = Machine::new(&bed, "one", "ana");
    // Machine two must not see machine one's processes: on one host, a Lease left by a dead
    // process of the same pid namespace is taken at once (see `resume_after_the_cli_is_killed`).
    let two = Machine::apart(&bed, "two", "bo");
    let observer = bed.observe().await;
    let mut run = one.spawn(&["apply", "-f", rollout.to_str().unwrap()]);
    wait_new_set_grown(&bed, 2).await;
    // Mid-step: the second new pod is asked for, and Ready only 2 s later. (Not at the very
    // moment a step ends: a record appended a millisecond before a kill -9 is only in this
    // machine's journal; see README "Reliability".)
    tokio::time::sleep(Duration::from_millis(500)).await;
    run.start_kill().expect("kill -9");
    assert!(!run.wait().await.expect("rollgate exits").success());

    // Until the Lease expires, the other machine may not act.
    let out = two.run(&["resume", "web", "-n", &ns]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("web is locked by ana@"),
        "{}",
        stderr(&out)
    );
    wait_lease_expired(&bed).await;
    let out = two.run(&["resume", "web", "-n", &ns]).await;
    assert!(out.status.success(), "resumed on machine two");
    assert!(
        stderr(&out).contains("took over the lock from ana@"),
        "{}",
        stderr(&out)
    );
    bed.wait_deployment("version 2 rolled out", |d| {
        kube_bed::rolled_out(d, N, &image("2"))
    })
    .await;
    let (sets, pods) = observer.stop().await;
    kube_bed::assert_at_rest(&bed).await;
    assert!(
        sets.max_replicas_sum <= N + 1,
        "maxSurge 1 across machines: {sets:?}"
    );
    assert!(
        pods.min_ready.expect("pods") >= N,
        "maxUnavailable 0 across machines: {pods:?}"
    );
    let created = pods.pods_by_image.get(&image("2")).map_or(0, |s| s.len());
    assert_eq!(created, N as usize, "each new pod created once: {pods:?}");
    let out = one.run(&["history", "web", "-o", "json"]).await;
    assert_eq!(history(&out)[0]["outcome"], "succeeded");
    // What machine one journaled but never got into the cluster before the kill.
    let cluster = cluster_journal(&bed, &ns).await;
    let journal = one.local_journal();
    let missing: Vec<_> = journal.iter().filter(|r| !cluster.contains(r)).collect();
    eprintln!("machine one's records the cluster lacks: {missing:#?}");
    let lost = missing.len();
    assert_eq!(
        lost, 0,
        "every record of machine one reached the cluster before the kill"
    );
    faults::record(faults::Case {
        bed: "kubernetes",
        fault: "CLI kill -9 mid-step on machine 1; `resume` on machine 2",
        outcome: "refused while the Lease lasted; then taken over and completed within bounds, each new pod created once",
        lost: u32::try_from(lost).unwrap_or(u32::MAX),
        unknown: u32::try_from(created.saturating_sub(N as usize)).unwrap_or(u32::MAX),
    });
    bed.finish().await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_frozen_past_its_lease_is_taken_over_and_stops_by_itself_when_it_wakes() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    const N: i32 = 6;
    let Some(bed) = Bed::new("team-frozen", N, "25%", "0").await else {
        return;
    };
    kube_bed::template_file(
        bed.dir.path(),
        "2",
        &[],
        &[(crate::cluster::READY_DELAY_ANNOTATION, "2s")],
    );
    let rollout = bed.rollout(
        "web.yaml",
        "2",
        "manifest: deployment-2.yaml",
        "  strategy:\n    rolling: {maxSurge: 1, maxUnavailable: 0}\n  progressDeadlineSeconds: 60\n",
    );
    let ns = bed.ns.clone();
    let one = Machine::new(&bed, "one", "ana");
    let two = Machine::new(&bed, "two", "bo");
    let run = one.spawn(&["apply", "-f", rollout.to_str().unwrap()]);
    let pid = Pid::from_raw(i32::try_from(run.id().expect("a pid")).expect("a pid"));
    wait_new_set_grown(&bed, 2).await;
    kill(pid, Signal::SIGSTOP).expect("SIGSTOP");

    wait_lease_expired(&bed).await;
    let out = two.run(&["resume", "web", "-n", &ns]).await;
    assert!(out.status.success(), "machine two finished the rollout");
    assert!(
        stderr(&out).contains("took over the lock from ana@"),
        "{}",
        stderr(&out)
    );
    bed.wait_deployment("version 2 rolled out", |d| {
        kube_bed::rolled_out(d, N, &image("2"))
    })
    .await;
    kube_bed::assert_at_rest(&bed).await;

    // Watch the Deployment and its ReplicaSets while the frozen runner wakes.
    let before = snapshot(&bed).await;
    let maps: Api<ConfigMap> = Api::namespaced(bed.client.clone(), &ns);
    let state_before = maps.get(STATE).await.expect("state").resource_version();
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let sets = bed.replica_sets.clone();
    let deployments = bed.deployments.clone();
    let expected = before.clone();
    let watching = tokio::spawn(async move {
        let mut changed = Vec::new();
        let mut sets = watcher(sets, watcher::Config::default()).boxed();
        let mut deployments = watcher(deployments, watcher::Config::default()).boxed();
        loop {
            tokio::select! {
                _ = &mut stopped => return changed,
                Some(Ok(e)) = sets.next() => {
                    if let watcher::Event::Apply(rs) | watcher::Event::InitApply(rs) = e {
                        let key = format!("rs/{}", rs.name_any());
                        if expected.get(&key) != Some(&shape_of_set(&rs)) {
                            changed.push(key);
                        }
                    }
                }
                Some(Ok(e)) = deployments.next() => {
                    if let watcher::Event::Apply(d) | watcher::Event::InitApply(d) = e
                        && expected.get("deployment") != Some(&shape_of_deployment(&d))
                    {
                        changed.push("deployment".to_string());
                    }
                }
            }
        }
    });
    kill(pid, Signal::SIGCONT).expect("SIGCONT");
    let out = finished("ana (woken)", run).await;
    let _ = stop.send(());
    let changed = watching.await.expect("the watch task");
    assert_eq!(
        out.status.code(),
        Some(1),
        "the woken runner stops with an error"
    );
    let why = stderr(&out);
    assert!(why.contains("is no longer this process's"), "{why}");
    assert!(changed.is_empty(), "the woken runner wrote to {changed:?}");
    assert_eq!(
        snapshot(&bed).await,
        before,
        "nothing changed after the wake"
    );
    assert_eq!(
        maps.get(STATE).await.expect("state").resource_version(),
        state_before,
        "the woken runner wrote nothing to the cluster's journal"
    );
    assert!(lease(&bed).await.is_none(), "no Lease is taken again");
    let out = two.run(&["history", "web", "-n", &ns, "-o", "json"]).await;
    assert_eq!(history(&out)[0]["outcome"], "succeeded");
    faults::record(faults::Case {
        bed: "kubernetes",
        fault: "CLI frozen (SIGSTOP) past its Lease mid-step; machine 2 resumes; then SIGCONT",
        outcome: "machine 2 took over and completed; the woken CLI stopped with an error and wrote nothing",
        lost: 0,
        unknown: u32::try_from(changed.len()).unwrap_or(u32::MAX),
    });
    bed.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_and_context_flags_choose_where_rollgate_acts() {
    const N: i32 = 2;
    let Some(bed) = Bed::new("team-ns-x", N, "25%", "0").await else {
        return;
    };
    // A second namespace with its own `web`; the manifest names the first.
    let other = bed.cluster.namespace(&bed.client, "team-ns-y").await;
    let other_deployments: Api<Deployment> = Api::namespaced(bed.client.clone(), &other);
    other_deployments
        .create(&PostParams::default(), &kube_bed::deployment(N, "25%", "0"))
        .await
        .expect("creating web in the second namespace");
    let rolled = |version: &'static str| {
        await_condition(
            other_deployments.clone(),
            APP,
            move |d: Option<&Deployment>| {
                d.is_some_and(|d| kube_bed::rolled_out(d, N, &image(version)))
            },
        )
    };
    tokio::time::timeout(Duration::from_secs(120), rolled("1"))
        .await
        .expect("web in the second namespace at version 1")
        .expect("watching");
    let before = snapshot(&bed).await;
    let rollout = bed.rollout(
        "web.yaml",
        "2",
        &format!("image: \"{}\"", image("2")),
        "  strategy:\n    rolling: {maxSurge: 1, maxUnavailable: 0}\n  progressDeadlineSeconds: 60\n",
    );
    let rollout = rollout.to_str().unwrap();
    let one = Machine::new(&bed, "one", "ana");
    let two = Machine::new(&bed, "two", "bo");

    // An unknown context is a usage error, before anything is read or written.
    let out = one
        .run(&["apply", "-f", rollout, "--context", "nowhere"])
        .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--context nowhere: the kubeconfig has no such context"),
        "{}",
        stderr(&out)
    );
    // --namespace on a host fleet's manifest is a usage error too.
    let hosts = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/hosts/rolling.yaml");
    let out = one
        .run(&[
            "apply",
            "-f",
            hosts.to_str().unwrap(),
            "--namespace",
            &other,
        ])
        .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--namespace applies to kubernetes targets"));

    // A context whose namespace is the second one: a manifest that names none goes there.
    let mut config =
        kube::config::Kubeconfig::read_from(bed.cluster.kubeconfig()).expect("the kubeconfig");
    let current = config.current_context.clone().expect("a current context");
    let mut team = config
        .contexts
        .iter()
        .find(|c| c.name == current)
        .expect("the current context")
        .clone();
    team.name = "team-y".into();
    team.context.as_mut().expect("a context").namespace = Some(other.clone());
    config.contexts.push(team);
    let kubeconfig = bed.path("kubeconfig-team");
    std::fs::write(
        &kubeconfig,
        serde_yaml::to_string(&config).expect("kubeconfig YAML"),
    )
    .expect("writing the kubeconfig");
    let unnamed = bed.path("unnamed.yaml");
    std::fs::write(
        &unnamed,
        format!(
            "apiVersion: rollgate.dev/v1\nkind: Rollout\nmetadata: {{name: {APP}}}\nspec:\n  version: \"2\"\n  target:\n    kubernetes: {{deployment: {APP}, image: \"{}\"}}\n  strategy:\n    rolling: {{maxSurge: 1, maxUnavailable: 0}}\n  progressDeadlineSeconds: 60\n",
            image("2")
        ),
    )
    .expect("writing the rollout");
    let mut one = one;
    one.kubeconfig = kubeconfig;
    let out = one
        .run(&[
            "apply",
            "-f",
            unnamed.to_str().unwrap(),
            "--context",
            "team-y",
        ])
        .await;
    assert!(
        out.status.success(),
        "rolled out in the context's namespace"
    );
    tokio::time::timeout(Duration::from_secs(120), rolled("2"))
        .await
        .expect("web in the second namespace at version 2")
        .expect("watching");

    // --namespace wins over the manifest's namespace.
    let rollout = bed.rollout(
        "web-3.yaml",
        "3",
        &format!("image: \"{}\"", image("3")),
        "  strategy:\n    rolling: {maxSurge: 1, maxUnavailable: 0}\n  progressDeadlineSeconds: 60\n",
    );
    let out = two
        .run(&[
            "apply",
            "-f",
            rollout.to_str().unwrap(),
            "--namespace",
            &other,
        ])
        .await;
    assert!(
        out.status.success(),
        "rolled out in the namespace of the flag"
    );
    tokio::time::timeout(Duration::from_secs(120), rolled("3"))
        .await
        .expect("web in the second namespace at version 3")
        .expect("watching");
    assert_eq!(
        snapshot(&bed).await,
        before,
        "the manifest's namespace is untouched"
    );
    let maps: Api<ConfigMap> = Api::namespaced(bed.client.clone(), &bed.ns);
    assert!(maps.get_opt(STATE).await.expect("reading").is_none());
    let out = two
        .run(&["history", "web", "-n", &other, "-o", "json"])
        .await;
    let seen = history(&out);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0]["actor"]["user"], "ana");
    assert_eq!(seen[1]["actor"]["user"], "bo");
    assert!(seen.iter().all(|r| r["outcome"] == "succeeded"), "{seen:?}");
    // The first namespace holds no state of web: a machine that ran it elsewhere says so too.
    let out = two.run(&["history", "web", "-n", &bed.ns]).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "history of an app with no rollouts exits 1"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no rollouts recorded"), "{stderr}");
    let namespaces: Api<Namespace> = Api::all(bed.client.clone());
    let _ = namespaces.delete(&other, &Default::default()).await;
    bed.finish().await;
}
