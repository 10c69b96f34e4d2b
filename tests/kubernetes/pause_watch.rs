//! `rollgate watch` (issue 16): a canary that crashes during a long manual pause is rolled back
//! without a promote, and the Deployment then rolls out normally with kubectl; a healthy canary's
//! watch ends, changing nothing, when someone promotes.

use std::time::{Duration, Instant};

use crate::cluster::FAIL_AFTER_ANNOTATION;
use crate::kube_bed::{self, APP, Bed, image, stdout};

const N: i32 = 4;
const STEPS: &str = "  strategy:\n    canary: {maxSurge: 1, maxUnavailable: 0, steps: [{setWeight: 25}, {pause: {}}, {setWeight: 100}]}\n  progressDeadlineSeconds: 60\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_crashes_during_the_pause_is_rolled_back_by_the_watch() {
    let Some(bed) = Bed::new("pausewatch", N, "1", "0").await else {
        return;
    };
    // The canary turns Ready, then crashes 8 s later: after `apply` has paused.
    kube_bed::template_file(bed.dir.path(), "2", &[], &[(FAIL_AFTER_ANNOTATION, "8s")]);
    let rollout = bed.rollout("web.yaml", "2", "manifest: deployment-2.yaml", STEPS);
    let out = bed
        .rollgate(&["apply", "-f", rollout.to_str().unwrap()])
        .await;
    assert_eq!(out.status.code(), Some(3), "paused at the manual pause");

    let started = Instant::now();
    let out = bed.rollgate(&["watch", APP]).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "the watch rolled back: {text}");
    assert!(
        text.contains("rolled back: failed while paused at step 2: pod web-"),
        "the watch says why: {text}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "noticed at once, not at a deadline: {:?}",
        started.elapsed()
    );
    bed.wait_deployment("version 1 back on every pod", |d| {
        kube_bed::rolled_out(d, N, &image("1"))
    })
    .await;
    kube_bed::assert_at_rest(&bed).await;
    let history = stdout(&bed.rollgate(&["history", APP]).await);
    assert!(history.contains("rolled back"), "{history}");
    assert!(
        !history.contains("approved by"),
        "nobody promoted: {history}"
    );

    // The Deployment controller rolls out the next change by itself.
    bed.kubectl(&[
        "set",
        "image",
        &format!("deployment/{APP}"),
        &format!("{APP}={}", image("3")),
    ])
    .await;
    bed.kubectl(&[
        "rollout",
        "status",
        &format!("deployment/{APP}"),
        "--timeout=120s",
    ])
    .await;
    bed.wait_deployment("kubectl rolled out version 3", |d| {
        kube_bed::rolled_out(d, N, &image("3"))
    })
    .await;
    bed.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_is_watched_until_promoted() {
    let Some(bed) = Bed::new("pausewatch-ok", N, "1", "0").await else {
        return;
    };
    let rollout = bed.rollout(
        "web.yaml",
        "2",
        &format!("image: \"{}\"", image("2")),
        STEPS,
    );
    let out = bed
        .rollgate(&["apply", "-f", rollout.to_str().unwrap()])
        .await;
    assert_eq!(out.status.code(), Some(3), "paused at the manual pause");
    let promote = async {
        // The watch holds nothing: a promote from elsewhere goes through while it runs.
        tokio::time::sleep(Duration::from_secs(5)).await;
        bed.rollgate(&["promote", APP]).await
    };
    let (watched, promoted) = tokio::join!(bed.rollgate(&["watch", APP]), promote);
    assert!(
        promoted.status.success(),
        "the promote finished the rollout"
    );
    assert_eq!(
        watched.status.code(),
        Some(0),
        "the watch ended with the pause"
    );
    assert!(
        stdout(&watched).contains("the pause ended"),
        "{}",
        stdout(&watched)
    );
    bed.wait_deployment("version 2 rolled out", |d| {
        kube_bed::rolled_out(d, N, &image("2"))
    })
    .await;
    // Nothing to watch once the rollout is done.
    let out = bed.rollgate(&["watch", APP]).await;
    assert_eq!(out.status.code(), Some(1), "not paused: nothing to watch");
    bed.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_that_starts_failing_during_the_pause_rolls_back_at_its_interval() {
    let Some(bed) = Bed::new("pausewatch-check", N, "1", "0").await else {
        return;
    };
    let flag = bed.path("broken");
    let rest = format!(
        "{STEPS}  checks:\n    - {{name: smoke, command: {{run: [sh, -c, \"test ! -e {}\"]}}, runOn: cli, interval: 500ms, failureLimit: 1}}\n",
        flag.display()
    );
    let rollout = bed.rollout(
        "web.yaml",
        "2",
        &format!("image: \"{}\"", image("2")),
        &rest,
    );
    let out = bed
        .rollgate(&["apply", "-f", rollout.to_str().unwrap()])
        .await;
    assert_eq!(out.status.code(), Some(3), "the check passed; paused");
    let breaks = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        std::fs::write(&flag, "").expect("breaking the check");
        Instant::now()
    };
    let (out, broke_at) = tokio::join!(bed.rollgate(&["watch", APP]), breaks);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "rolled back: {text}");
    assert!(
        text.contains("failed while paused at step 2: check smoke failed on web-")
            && text.contains("2 probes in a row (failureLimit 1)"),
        "the check and its limit are named: {text}"
    );
    assert!(
        broke_at.elapsed() < Duration::from_secs(30),
        "noticed within a few intervals: {:?}",
        broke_at.elapsed()
    );
    bed.wait_deployment("version 1 back", |d| {
        kube_bed::rolled_out(d, N, &image("1"))
    })
    .await;
    kube_bed::assert_at_rest(&bed).await;
    bed.finish().await;
}

/// Polls `status -o json` until the last rollout to `version` is paused.
async fn until_paused(bed: &Bed, version: &str) {
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        let out = bed.rollgate(&["status", APP, "-o", "json"]).await;
        let text = stdout(&out);
        if let Ok(r) = serde_json::from_str::<serde_json::Value>(&text)
            && r["rollout"]["to"] == version
            && r["rollout"]["paused"].is_string()
        {
            return;
        }
        assert!(Instant::now() < end, "never paused: {text}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `apply --wait` (issue 23) through the team state: the apply keeps running at the pause, a
/// `promote` from another process reaches it through the ConfigMap and it completes the rollout
/// (exit 0); the next rollout's waiting apply rolls back on an `abort` (exit 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_wait_acts_on_a_promote_and_an_abort_sent_through_the_cluster() {
    let Some(bed) = Bed::new("applywait", N, "1", "0").await else {
        return;
    };
    for (version, verb, code) in [("2", "promote", 0), ("3", "abort", 1)] {
        let rollout = bed.rollout(
            &format!("web-{version}.yaml"),
            version,
            &format!("image: \"{}\"", image(version)),
            STEPS,
        );
        let path = rollout.to_str().unwrap();
        let send = async {
            until_paused(&bed, version).await;
            // Still running: the apply waits instead of ending with exit 3.
            tokio::time::sleep(Duration::from_secs(1)).await;
            (bed.rollgate(&[verb, APP]).await, Instant::now())
        };
        let args = ["apply", "--wait", "-f", path];
        let (applied, (sent, sent_at)) = tokio::join!(bed.rollgate(&args), send);
        assert!(
            stdout(&sent).contains("sent"),
            "{verb} went to the running apply: {}",
            stdout(&sent)
        );
        assert_eq!(
            applied.status.code(),
            Some(code),
            "{verb}: {}",
            stdout(&applied)
        );
        assert!(sent_at.elapsed() < Duration::from_secs(30));
    }
    bed.wait_deployment("version 2 back on every pod after the abort", |d| {
        kube_bed::rolled_out(d, N, &image("2"))
    })
    .await;
    let history = stdout(&bed.rollgate(&["history", APP]).await);
    assert!(history.contains("aborted"), "{history}");
    kube_bed::assert_at_rest(&bed).await;
    bed.finish().await;
}
