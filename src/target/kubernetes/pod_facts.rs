//! Pod facts: what a step needs of the pods (which failed, which are going away, and whose they
//! are), folded one watch event at a time. A step reads these few pods instead of scanning every
//! pod on every event (at 1,000 pods that scan made a rollout's cost grow with N²), and a pod
//! wakes a step only when its facts change. Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::watcher::Event;

use super::view::pod_failure;
use super::watched_pod::WatchedPod;

/// One pod that a step must know about: it failed, or it is going away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Fact {
    /// The uids of its owners (its ReplicaSet).
    pub(super) owners: Vec<String>,
    /// Why it will not serve ([`pod_failure`]), if it failed.
    pub(super) failure: Option<String>,
    /// It has a deletion timestamp.
    pub(super) going: bool,
}

impl Fact {
    fn of(p: &Pod) -> Option<Fact> {
        let failure = pod_failure(p);
        let going = p.metadata.deletion_timestamp.is_some();
        (failure.is_some() || going).then(|| Fact {
            owners: p
                .metadata
                .owner_references
                .iter()
                .flatten()
                .map(|o| o.uid.clone())
                .collect(),
            failure,
            going,
        })
    }

    pub(super) fn owned_by(&self, uid: &str) -> bool {
        self.owners.iter().any(|o| o == uid)
    }
}

/// The pods that failed or are going away, by name; every other pod is left out.
#[derive(Debug, Default)]
pub(super) struct PodFacts {
    pub(super) pods: BTreeMap<String, Fact>,
    /// A list under way (the watch started or restarted): it replaces `pods` once done.
    listing: Option<BTreeMap<String, Fact>>,
}

impl PodFacts {
    /// Folds one watch event in; true when the facts changed (a step should look again).
    pub(super) fn fold(&mut self, event: &Event<WatchedPod>) -> bool {
        match event {
            Event::Init => {
                self.listing = Some(BTreeMap::new());
                false
            }
            Event::InitApply(p) => {
                let listing = self.listing.get_or_insert_with(BTreeMap::new);
                if let Some(f) = Fact::of(p) {
                    listing.insert(p.name_any(), f);
                }
                false
            }
            Event::InitDone => {
                let listed = self.listing.take().unwrap_or_default();
                let changed = listed != self.pods;
                self.pods = listed;
                changed
            }
            Event::Apply(p) => {
                let name = p.name_any();
                match Fact::of(p) {
                    Some(f) => self.pods.insert(name, f.clone()) != Some(f),
                    None => self.pods.remove(&name).is_some(),
                }
            }
            Event::Delete(p) => self.pods.remove(&p.name_any()).is_some(),
        }
    }

    /// The first failed pod owned by `uid`: its name and why.
    pub(super) fn failed_of(&self, uid: &str) -> Option<(&str, &str)> {
        self.pods.iter().find_map(|(name, f)| {
            Some((name.as_str(), f.failure.as_deref()?)).filter(|_| f.owned_by(uid))
        })
    }

    /// Pods going away that any of `uids` owns.
    pub(super) fn going_of(&self, uids: &[&str]) -> usize {
        self.pods
            .values()
            .filter(|f| f.going && uids.iter().any(|u| f.owned_by(u)))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateWaiting, ContainerStatus, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};

    fn pod(name: &str, owner: &str) -> WatchedPod {
        WatchedPod(plain(name, owner))
    }

    fn plain(name: &str, owner: &str) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.metadata.owner_references = Some(vec![OwnerReference {
            uid: owner.into(),
            controller: Some(true),
            ..OwnerReference::default()
        }]);
        p
    }

    fn crashing(name: &str, owner: &str) -> WatchedPod {
        let mut p = plain(name, owner);
        p.status = Some(PodStatus {
            container_statuses: Some(vec![ContainerStatus {
                name: "web".into(),
                state: Some(ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some("CrashLoopBackOff".into()),
                        ..ContainerStateWaiting::default()
                    }),
                    ..ContainerState::default()
                }),
                ..ContainerStatus::default()
            }]),
            ..PodStatus::default()
        });
        WatchedPod(p)
    }

    fn going(name: &str, owner: &str) -> WatchedPod {
        let mut p = plain(name, owner);
        p.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        WatchedPod(p)
    }

    #[test]
    fn only_failed_and_going_pods_are_kept_and_only_their_changes_count() {
        let mut f = PodFacts::default();
        assert!(
            !f.fold(&Event::Apply(pod("a", "new"))),
            "a healthy pod is no news"
        );
        assert!(f.pods.is_empty());
        assert!(f.fold(&Event::Apply(crashing("a", "new"))));
        assert!(
            !f.fold(&Event::Apply(crashing("a", "new"))),
            "the same fact again"
        );
        assert_eq!(
            f.failed_of("new"),
            Some(("a", "container web CrashLoopBackOff"))
        );
        assert_eq!(f.failed_of("old"), None);
        assert!(f.fold(&Event::Apply(going("o1", "old"))));
        assert!(f.fold(&Event::Apply(going("o2", "old"))));
        assert_eq!(f.going_of(&["old", "new"]), 2);
        assert_eq!(f.going_of(&["new"]), 0);
        assert!(f.fold(&Event::Delete(going("o1", "old"))));
        assert_eq!(f.going_of(&["old"]), 1);
        assert!(!f.fold(&Event::Delete(pod("b", "new"))), "never kept");
        // A pod that got better is dropped.
        assert!(f.fold(&Event::Apply(pod("a", "new"))));
        assert_eq!(f.failed_of("new"), None);
    }

    #[test]
    fn a_list_replaces_what_was_known_once_it_is_done() {
        let mut f = PodFacts::default();
        f.fold(&Event::Apply(going("gone-meanwhile", "old")));
        assert!(!f.fold(&Event::Init));
        assert!(!f.fold(&Event::InitApply(crashing("a", "new"))));
        assert_eq!(f.going_of(&["old"]), 1, "kept until the list is done");
        assert!(f.fold(&Event::InitDone));
        assert_eq!(f.going_of(&["old"]), 0);
        assert!(f.failed_of("new").is_some());
        // The same list again changes nothing.
        f.fold(&Event::Init);
        f.fold(&Event::InitApply(crashing("a", "new")));
        assert!(!f.fold(&Event::InitDone));
    }
}
