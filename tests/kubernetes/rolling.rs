//! A rolling update to a good version: the plan's bounds hold throughout, and the Deployment ends
//! owning N ready replicas of the new template, created once, with its history intact.

use kube::ResourceExt;

use crate::kube_bed::{self, APP, Bed, image};

const N: i32 = 8;
/// 25% of 8.
const SURGE: i32 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_version_rolls_within_bounds_and_the_deployment_adopts_it() {
    let Some(bed) = Bed::new("rolling", N, "25%", "0").await else {
        return;
    };
    let rollout = bed.rollout(
        "web.yaml",
        "2",
        &format!("image: \"{}\"", image("2")),
        "  strategy:\n    rolling: {maxSurge: \"25%\", maxUnavailable: 0}\n  progressDeadlineSeconds: 60\n",
    );
    let observer = bed.observe().await;
    let out = bed
        .rollgate(&["apply", "-f", rollout.to_str().unwrap()])
        .await;
    assert!(out.status.success(), "rollgate apply failed");
    assert!(kube_bed::stdout(&out).contains("succeeded"));
    // The Deployment reports the new template rolled out, so its own view agrees.
    bed.wait_deployment("version 2 rolled out", |d| {
        kube_bed::rolled_out(d, N, &image("2"))
    })
    .await;
    let (sets, pods) = observer.stop().await;

    assert!(
        sets.max_replicas_sum <= N + SURGE,
        "ReplicaSets asked for {} pods at once, more than {N} + maxSurge {SURGE}: {sets:?}",
        sets.max_replicas_sum
    );
    assert!(
        sets.max_replicas_sum > N,
        "it never surged, so it was not a rolling update: {sets:?}"
    );
    let min_ready = pods.min_ready.expect("pods were observed");
    assert!(
        min_ready >= N,
        "only {min_ready} pods were Ready at one point, fewer than {N} - maxUnavailable 0: {pods:?}"
    );
    // Promotion creates no extra pods: exactly N pods of the new version ever existed.
    let created = pods.pods_by_image.get(&image("2")).map_or(0, |s| s.len());
    assert_eq!(
        created, N as usize,
        "pods of version 2 created: {created}, expected {N}: {pods:?}"
    );
    assert_eq!(
        sets.replica_sets.len(),
        2,
        "ReplicaSets seen (one old, one new, nothing else): {:?}",
        sets.replica_sets
    );

    kube_bed::assert_at_rest(&bed).await;
    let d = bed.deployment().await;
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let sets_now = bed.replica_sets().await;
    let new: Vec<_> = sets_now
        .iter()
        .filter(|rs| {
            rs.spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .and_then(kube_bed::template_image)
                == Some(image("2").as_str())
        })
        .collect();
    assert_eq!(new.len(), 1, "one ReplicaSet of version 2: {sets_now:#?}");
    assert_eq!(kube_bed::controller_uid(new[0]), Some(uid.as_str()));
    assert_eq!(new[0].spec.as_ref().and_then(|s| s.replicas), Some(N));
    assert_eq!(
        d.spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .and_then(|a| a.get("rollgate.dev/version"))
            .map(String::as_str),
        Some("2"),
        "the template records the version"
    );

    // `status --watch` of the finished rollout: its steps, then the pods by ReplicaSet (issue 21),
    // and the state's exit code at once.
    let out = bed
        .rollgate(&["status", APP, "--watch", "--timeout", "30s"])
        .await;
    assert_eq!(out.status.code(), Some(0));
    let text = kube_bed::stdout(&out);
    assert!(text.contains("STEPS\n  ✔  1 scale"), "{text}");
    let rs_name = new[0].name_any();
    let group = text
        .lines()
        .find(|l| {
            l.trim_start()
                .starts_with(&format!("ReplicaSet {rs_name} (2)"))
        })
        .unwrap_or_else(|| panic!("a row for ReplicaSet {rs_name}: {text}"));
    assert_eq!(
        group.matches(&format!("{rs_name}-")).count(),
        N as usize,
        "its {N} pods on the row: {group}"
    );

    // kubectl still understands the Deployment: history has both revisions, and undo works.
    let history = bed
        .cluster
        .kubectl()
        .args([
            "-n",
            &bed.ns,
            "rollout",
            "history",
            &format!("deployment/{APP}"),
        ])
        .output()
        .await
        .expect("kubectl rollout history");
    let text = String::from_utf8_lossy(&history.stdout);
    assert!(history.status.success(), "kubectl rollout history: {text}");
    let revisions: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert_eq!(revisions.len(), 2, "two revisions: {text}");
    let undo = bed
        .cluster
        .kubectl()
        .args([
            "-n",
            &bed.ns,
            "rollout",
            "undo",
            &format!("deployment/{APP}"),
        ])
        .output()
        .await
        .expect("kubectl rollout undo");
    assert!(
        undo.status.success(),
        "kubectl rollout undo: {}",
        String::from_utf8_lossy(&undo.stderr)
    );
    bed.wait_deployment("kubectl rollout undo back to version 1", |d| {
        kube_bed::rolled_out(d, N, &image("1"))
    })
    .await;
    assert_eq!(
        bed.replica_sets().await.len(),
        2,
        "undo reused the old ReplicaSet"
    );
    println!(
        "rolling: at most {} pods requested, at least {min_ready} Ready, {created} pods of version 2 created; ReplicaSets {:?}",
        sets.max_replicas_sum,
        sets.replica_sets
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    );
    let _ = d.name_any();
    bed.finish().await;
}

/// Milliseconds since the epoch, as the journal's `atMs`.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Without checks nothing looks at a wave once it is up, so its step ends when its pods are asked
/// for and the next wave grows as pods become available, as the Deployment controller's own
/// rolling update does: the first step is done before the first wave's pods are available (each
/// is Ready 1 s after it starts), while the bounds still hold throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_checks_the_waves_overlap_within_the_bounds() {
    use futures_util::StreamExt;
    use kube::runtime::watcher;

    let Some(bed) = Bed::new("rolling-overlap", N, "25%", "0").await else {
        return;
    };
    let rollout = bed.rollout(
        "web.yaml",
        "2",
        &format!("image: \"{}\"", image("2")),
        "  strategy:\n    rolling: {maxSurge: \"25%\", maxUnavailable: 0}\n  progressDeadlineSeconds: 60\n",
    );
    // When the new ReplicaSet first has a whole wave (maxSurge) available, by the test's own watch.
    let (first_wave_tx, first_wave_rx) = tokio::sync::oneshot::channel::<u64>();
    let sets = bed.replica_sets.clone();
    let watching = tokio::spawn(async move {
        let mut first_wave_tx = Some(first_wave_tx);
        let mut events = watcher(sets, watcher::Config::default()).boxed();
        while let Some(event) = events.next().await {
            let rs = match event {
                Ok(watcher::Event::Apply(rs) | watcher::Event::InitApply(rs)) => rs,
                _ => continue,
            };
            let of_new = rs
                .spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .and_then(kube_bed::template_image)
                == Some(image("2").as_str());
            let available = rs
                .status
                .as_ref()
                .and_then(|s| s.available_replicas)
                .unwrap_or(0);
            if of_new
                && available >= SURGE
                && let Some(tx) = first_wave_tx.take()
            {
                let _ = tx.send(now_ms());
            }
        }
    });
    let observer = bed.observe().await;
    let out = bed
        .rollgate(&["apply", "-o", "json", "-f", rollout.to_str().unwrap()])
        .await;
    assert!(out.status.success(), "rollgate apply failed");
    let (sets, pods) = observer.stop().await;
    let first_wave = first_wave_rx
        .await
        .expect("the first wave became available");
    watching.abort();
    let records: Vec<serde_json::Value> = kube_bed::stdout(&out)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let step_done = |step: u64| {
        records
            .iter()
            .find(|r| r["event"] == "stepDone" && r["step"] == step)
            .and_then(|r| r["atMs"].as_u64())
            .unwrap_or_else(|| panic!("a stepDone record of step {step}: {records:?}"))
    };
    assert!(
        step_done(0) < first_wave,
        "step 1 ended at {} ms, after its wave was available at {first_wave} ms: it waited",
        step_done(0)
    );
    assert!(
        sets.max_replicas_sum <= N + SURGE,
        "more than N + maxSurge pods asked for: {sets:?}"
    );
    let min_ready = pods.min_ready.expect("pods were observed");
    assert!(
        min_ready >= N,
        "{min_ready} pods Ready at one point, fewer than N - 0: {pods:?}"
    );
    let created = pods.pods_by_image.get(&image("2")).map_or(0, |s| s.len());
    assert_eq!(created, N as usize, "every new pod created once: {pods:?}");
    kube_bed::assert_at_rest(&bed).await;
    bed.finish().await;
}
