//! The pod watch, kept to the new ReplicaSet's pods once a rollout's steps begin.
//!
//! Before the first step a command reads every pod of the Deployment (the plan, `status`'s grid).
//! Once a step moves pods forward, what it reads of pods is the new ones: their failures, the
//! gate's probes, `runOn: cli` addresses. The old pods' going away (a third of the pod events of a
//! rollout, about 2,300 at 1,000 pods) is then sent by the API server to nobody who needs it, on
//! the cores the control plane shares: so the watch is opened again, selecting the new
//! ReplicaSet's `pod-template-hash` too. Its list replaces the watched pods and their facts at
//! once (the store keeps the last full list until the new one is done).
//!
//! It stays wide when a step would read the old pods: the ReplicaSets do not report their
//! terminating pods (`status.terminatingReplicas`, Kubernetes 1.35 and later; the quota wait counts
//! them), or a metric check names every pod (`{{hosts}}`).

use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::ReplicaSet;
use kube::Api;
use kube::runtime::watcher;

use super::view::Cache;
use super::watched_pod::WatchedPod;
use super::{HASH_LABEL, Kubernetes};
use crate::spec::Check;

/// The pods of `config`'s selector, and once `narrow` names a pod-template-hash, only that
/// hash's: the watch is opened again (it lists, then watches) whenever `narrow` changes.
pub(super) fn pods(
    api: Api<WatchedPod>,
    config: watcher::Config,
    narrow: tokio::sync::watch::Receiver<Option<String>>,
) -> impl Stream<Item = watcher::Result<watcher::Event<WatchedPod>>> + Send + 'static {
    let open = move |hash: Option<&str>| -> BoxStream<'static, _> {
        let mut config = config.clone();
        if let Some(hash) = hash {
            config.label_selector = Some(narrowed(config.label_selector.as_deref(), hash));
        }
        watcher(api.clone(), config).boxed()
    };
    let first = open(narrow.borrow().as_deref());
    futures_util::stream::unfold(
        (first, Some(narrow), open),
        |(mut current, mut narrow, open)| async move {
            loop {
                let changed = async {
                    match narrow.as_mut() {
                        Some(rx) => rx.changed().await.is_ok(),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    open_again = changed => {
                        match open_again {
                            true => {
                                let hash = narrow.as_mut().and_then(|rx| rx.borrow_and_update().clone());
                                current = open(hash.as_deref());
                            }
                            // The cache is gone: the watch goes on as it is until dropped.
                            false => narrow = None,
                        }
                    }
                    event = current.next() => return event.map(|e| (e, (current, narrow, open))),
                }
            }
        },
    )
}

/// `selector` with `pod-template-hash=hash` added.
fn narrowed(selector: Option<&str>, hash: &str) -> String {
    match selector.filter(|s| !s.is_empty()) {
        Some(s) => format!("{s},{HASH_LABEL}={hash}"),
        None => format!("{HASH_LABEL}={hash}"),
    }
}

/// Whether a metric check names every pod of the rollout (`{{hosts}}`): the pods must all be
/// watched to name them.
pub(super) fn names_every_pod(checks: &[Check]) -> bool {
    checks.iter().filter(|c| c.is_metric()).any(|c| {
        serde_json::to_string(c)
            .map(|s| s.contains("{{hosts}}"))
            .unwrap_or(true)
    })
}

/// The pods that `sets` report going away (`status.terminatingReplicas`); `None` when one of
/// them does not report it (a cluster before 1.35, or the feature turned off).
pub(super) fn terminating<'a>(sets: impl IntoIterator<Item = &'a ReplicaSet>) -> Option<usize> {
    sets.into_iter()
        .map(|rs| {
            rs.status
                .as_ref()?
                .terminating_replicas
                .map(|n| n.max(0) as usize)
        })
        .sum()
}

/// The pod-template-hash of `rs`'s pods.
fn pod_hash(rs: &ReplicaSet) -> Option<&str> {
    rs.spec
        .as_ref()?
        .template
        .as_ref()?
        .metadata
        .as_ref()?
        .labels
        .as_ref()?
        .get(HASH_LABEL)
        .map(String::as_str)
}

impl Kubernetes {
    /// A step moves pods forward to `new`: from now on the pod watch selects `new`'s pods only,
    /// when nothing a step reads needs the others (see the module's comment). Once is enough.
    pub(super) fn keep_pods_to(&self, cache: &Cache, new: &ReplicaSet, olds: &[&ReplicaSet]) {
        if self.names_every_pod || cache.narrow.borrow().is_some() {
            return;
        }
        if terminating(olds.iter().copied().chain([new])).is_none() {
            return;
        }
        if let Some(hash) = pod_hash(new) {
            tracing::debug!(hash, "pod watch kept to the new ReplicaSet's pods");
            cache.narrow.send_replace(Some(hash.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(terminating: Option<i32>) -> ReplicaSet {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1"},
            "status": {"replicas": 2, "terminatingReplicas": terminating},
        }))
        .unwrap()
    }

    #[test]
    fn terminating_pods_count_only_when_every_set_reports_them() {
        assert_eq!(terminating([&rs(Some(2)), &rs(Some(0))]), Some(2));
        assert_eq!(terminating([&rs(Some(2)), &rs(None)]), None);
        assert_eq!(terminating([&rs(Some(1)), &rs(Some(3))]), Some(4));
    }

    #[test]
    fn the_narrowed_selector_keeps_the_deployments() {
        assert_eq!(
            narrowed(Some("app=web"), "rg1234abcd"),
            "app=web,pod-template-hash=rg1234abcd"
        );
        assert_eq!(narrowed(None, "ab"), "pod-template-hash=ab");
    }

    #[test]
    fn a_metric_check_naming_every_pod_keeps_the_watch_wide() {
        let checks = |query: &str| -> Vec<Check> {
            serde_yaml::from_str(&format!(
                "- name: errors\n  prometheus: {{address: 'http://p:9090', query: '{query}'}}\n  successCondition: result < 1\n- name: up\n  http: {{url: 'http://x:8080/healthz'}}\n"
            ))
            .unwrap()
        };
        assert!(names_every_pod(&checks("sum(errors{pod=~\"{{hosts}}\"})")));
        assert!(!names_every_pod(&checks("sum(errors{app=\"{{app}}\"})")));
    }
}
