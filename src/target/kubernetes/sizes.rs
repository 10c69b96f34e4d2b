//! Sizes: a step's counts of old and new pods, moved within its bounds as the watch reports
//! progress (as Kubernetes' own rolling update moves them), and resized beside an autoscaler.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::ResourceExt;
use kube::api::Patch;

use super::pod_watch::terminating;
use super::reach::params;
use super::view::{available, held_in, holder_uid_in, lent, pods_left, replicas, stable_in};
use super::{HPA_ANNOTATION, Kubernetes};
use crate::plan::{Step, StepEnd};
use crate::target::{Change, Result, Sink, TargetError};

/// A step of a plan made for `planned` instances, sized for `now` (an HPA changed the count):
/// each count scaled by now/planned, and a step's old and new that made `planned` make `now`. Pure.
fn resize(step: &Step, planned: u32, now: u32) -> Step {
    if planned == now || planned == 0 {
        return step.clone();
    }
    let scale = |x: u32| {
        u32::try_from((u64::from(x) * u64::from(now) + u64::from(planned) / 2) / u64::from(planned))
            .unwrap_or(u32::MAX)
    };
    let mut s = step.clone();
    s.new = scale(step.new).min(now);
    if step.new > 0 && now > 0 {
        s.new = s.new.max(1);
    }
    s.old = if step.old + step.new == planned {
        now - s.new
    } else {
        scale(step.old).min(now)
    };
    s.max_total = scale(step.max_total).max(s.old + s.new);
    s.min_available = scale(step.min_available).min(s.max_total);
    s
}

/// Where a step stands, as far as it can progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    old: u32,
    old_available: u32,
    /// Pods the old sets still have: above `old` while their controller deletes the surplus.
    old_live: u32,
    new: u32,
    new_available: u32,
    new_live: u32,
}

/// The next sizes of (old, new) towards `step`, within its bounds: first remove what keeps
/// `min_available` ready, then add what stays within `max_total`. Pure.
fn next_sizes(step: &Step, c: Counts) -> (u32, u32) {
    // Unavailable pods go first and cost no availability (the ReplicaSet controller deletes
    // not-ready pods first): a set keeps only the available pods `min_available` needs.
    let shrink = |current: u32, target: u32, available: u32, other_available: u32| {
        if target >= current {
            current
        } else {
            target
                .max(
                    step.min_available
                        .saturating_sub(other_available)
                        .min(available),
                )
                .min(current)
        }
    };
    let old = shrink(c.old, step.old, c.old_available, c.new_available);
    let new = shrink(c.new, step.new, c.new_available, c.old_available);
    let grow = |current: u32, target: u32, room: u32| {
        if target <= current {
            current
        } else {
            target.min(current + room)
        }
    };
    let room = step
        .max_total
        .saturating_sub(c.old.max(old) + c.new.max(new));
    let new = grow(new, step.new, room);
    let room = step
        .max_total
        .saturating_sub(c.old.max(old) + c.new.max(new));
    let old = grow(old, step.old, room);
    (old, new)
}

/// Whether shrinking the old sets to `old` is a shrink that nothing waits for: the new set is at
/// the step's count already (no room is being made for it), and `old` is not the step's own count
/// (not the shrink that ends it). Such a shrink may wait for more pods to become available. Pure.
fn waits_for_nothing(step: &Step, c: Counts, old: u32) -> bool {
    old < c.old && old > step.old && c.new >= step.new
}

/// Which way a converge goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Way {
    /// A step of the rollout: a new pod that fails fails the step, and changes are reported.
    Forward,
    /// A step of the rollout that is done once its new pods are asked for
    /// ([`StepEnd::Requested`]): the next step moves on from there as pods become available.
    Ahead,
    /// Back to the stable set (a rollback): the new pods' failures are why it runs, and the
    /// restore reports for itself.
    Back,
}

/// How long a shrink of the old sets that nothing waits for is held back, so that the pods that
/// become available meanwhile leave together: the last shrink of a step, and any that makes room
/// for the new set, go at once. At 20 pods the old set went in 18 writes, one pod at a time.
const GATHER_SHRINK: Duration = Duration::from_millis(200);

/// How long a ReplicaSet may fail to create pods (a quota, a LimitRange) while nothing of the
/// rollout is going away to make room, before the step fails: time for the quota controller to
/// count pods that went, and for the ReplicaSet controller to try again.
const REFUSED_GRACE: Duration = Duration::from_secs(10);

/// Why a ReplicaSet cannot create its pods: its `ReplicaFailure` condition (the quota or
/// LimitRange that refused them, in the API server's words).
fn replica_failure(rs: &ReplicaSet) -> Option<String> {
    rs.status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "ReplicaFailure" && c.status == "True")
        .map(|c| {
            let reason = c.reason.as_deref().unwrap_or("ReplicaFailure");
            match c.message.as_deref() {
                Some(m) => format!("{reason}: {m}"),
                None => reason.to_string(),
            }
        })
}

/// A step that fails: said as `instance`'s failed change to `version` when `report` (going back,
/// the restore reports for itself), and given back as the step's error.
async fn step_failed(
    sink: Sink<'_>,
    report: bool,
    instance: String,
    version: &str,
    why: TargetError,
) -> Result<TargetError> {
    if report {
        sink.report(Change::Changed {
            instance,
            version: version.into(),
            ok: false,
            detail: why.to_string(),
        })
        .await?;
    }
    Ok(why)
}

impl Kubernetes {
    /// The held ReplicaSet's name once a step has seen it, else the Deployment's.
    fn held_or_name(&self) -> String {
        let held = self.held_name.lock().expect("held lock").clone();
        held.unwrap_or_else(|| self.name().into())
    }

    /// Moves towards `step`'s counts on every watch event until they hold, a pod fails (going
    /// forward), a ReplicaSet cannot create pods and nothing can make room, the Deployment is
    /// deleted, or nothing progresses for `deadline`.
    pub(super) async fn converge(
        &self,
        step: &Step,
        version: &str,
        deadline: Duration,
        sink: Sink<'_>,
        way: Way,
    ) -> Result<()> {
        let cache = self.cache().await?;
        let mut changes = cache.moves.clone();
        let holder = self.holder_name();
        let container = self.container();
        let forward = way != Way::Back;
        let mut last: Option<Counts> = None;
        let mut last_progress = tokio::time::Instant::now();
        let mut old_set: Option<u32> = None;
        let mut new_set: Option<u32> = None;
        let mut first: Option<Counts> = None;
        let mut announced: Option<String> = None;
        // A refusal to create pods: said once when it begins; since when nothing moved.
        let mut said: Option<String> = None;
        let mut going_before = 0usize;
        let mut still_since = tokio::time::Instant::now();
        // Since when a shrink that nothing waits for has been held back.
        let mut shrink_since: Option<tokio::time::Instant> = None;
        loop {
            changes.borrow_and_update();
            // The Deployment deleted (the watch sees it go, the API server confirms).
            let watched_gone = cache
                .deployment
                .state()
                .iter()
                .all(|d| d.metadata.deletion_timestamp.is_some());
            if watched_gone && self.deployment_deleted().await? {
                let why = self.deployment_gone().await;
                return Err(step_failed(sink, forward, self.held_or_name(), version, why).await?);
            }
            let all = cache.sets.state();
            // The view's held and stable sets, in the watched copy (which has no holder ConfigMap:
            // its uid is the one the held ReplicaSets name).
            let live = || {
                all.iter()
                    .map(AsRef::as_ref)
                    .filter(|rs: &&ReplicaSet| rs.metadata.deletion_timestamp.is_none())
            };
            let holder_uid = holder_uid_in(live(), &holder);
            let held = holder_uid
                .as_deref()
                .and_then(|uid| held_in(live(), uid, version, container));
            if held.is_none() {
                // Not in the watched copy: not seen yet (the watch lags behind `prepare`), or gone
                // because someone else deleted it or its holder. The API server says which; a
                // ReplicaSet gone is never recreated behind the user's back.
                let view = self.view().await?;
                let there = view
                    .held(version, container)
                    .is_some_and(|rs| rs.metadata.deletion_timestamp.is_none());
                if !there && !forward {
                    return Ok(()); // nothing new left to scale down
                }
                if !there {
                    let why = TargetError::Failed(self.missing_held(&view, version));
                    return Err(step_failed(sink, true, self.held_or_name(), version, why).await?);
                }
            }
            let mut wake = last_progress + deadline;
            if let Some(new) = held {
                let new_name = new.name_any();
                self.held_name
                    .lock()
                    .expect("held lock")
                    .get_or_insert_with(|| new_name.clone());
                let new_uid = new.metadata.uid.clone().unwrap_or_default();
                let olds: Vec<_> = stable_in(
                    all.iter().map(AsRef::as_ref),
                    &cache.uid,
                    holder_uid.as_deref(),
                )
                .collect();
                let c = Counts {
                    old: olds.iter().map(|rs| replicas(rs)).sum(),
                    old_available: olds.iter().map(|rs| available(rs)).sum(),
                    old_live: olds.iter().map(|rs| pods_left(rs)).sum(),
                    new: replicas(new),
                    new_available: available(new),
                    new_live: pods_left(new),
                };
                let uids: Vec<&str> = olds
                    .iter()
                    .filter_map(|rs| rs.metadata.uid.as_deref())
                    .chain([new_uid.as_str()])
                    .collect();
                if forward {
                    self.keep_pods_to(cache, new, &olds);
                }
                // The few pods that failed or are going away (not every pod, on every event); the
                // ReplicaSets count their own going away where they report it (the pod watch may
                // be kept to the new pods).
                let (failed, going) = {
                    let facts = cache.pod_facts.lock().expect("pod facts lock");
                    let failed = facts
                        .failed_of(&new_uid)
                        .map(|(pod, why)| format!("pod {pod} of {version}: {why}"));
                    let going = terminating(olds.iter().copied().chain([new]))
                        .unwrap_or_else(|| facts.going_of(&uids));
                    (failed, going)
                };
                // A new pod that crashed or cannot pull its image will not get better by waiting.
                if let Some(why) = failed.filter(|_| forward) {
                    let why = TargetError::Failed(why);
                    return Err(step_failed(sink, true, new_name, version, why).await?);
                }
                if last != Some(c) {
                    last = Some(c);
                    last_progress = tokio::time::Instant::now();
                    wake = last_progress + deadline;
                }
                // Pods the ReplicaSets cannot create (a quota or LimitRange refused them): said at
                // once; waited for only while pods of the rollout are going away to make room.
                if last_progress > still_since || going != going_before {
                    still_since = tokio::time::Instant::now();
                    going_before = going;
                }
                // Going back, the new set only shrinks: its refusals are no longer the point.
                let refused = std::iter::once(new)
                    .filter(|_| forward)
                    .chain(olds.iter().copied())
                    .find_map(|rs| Some((rs.name_any(), replica_failure(rs)?)));
                match &refused {
                    Some((rs, why)) => {
                        if said.as_deref() != Some(why.as_str()) {
                            let waiting = match going {
                                0 => String::new(),
                                n => format!(
                                    " (waiting while {n} pod{} of the rollout go away)",
                                    if n == 1 { "" } else { "s" }
                                ),
                            };
                            eprintln!(
                                "warning: ReplicaSet {rs} cannot create pods: {why}{waiting}"
                            );
                            said = Some(why.clone());
                        }
                        if going == 0 && still_since.elapsed() >= REFUSED_GRACE {
                            let why = format!(
                                "ReplicaSet {rs} cannot create pods, and nothing of the rollout is going away to make room: {why}"
                            );
                            let why = TargetError::Failed(why);
                            return Err(step_failed(sink, forward, new_name, version, why).await?);
                        }
                        if going == 0 {
                            wake = wake.min(still_since + REFUSED_GRACE);
                        }
                    }
                    None => said = None,
                }
                // An old set that grows (a restore) must be available too; one that shrinks must
                // have let its pods go, so that a pause shows the step's counts and the next step
                // adds pods only beside what is really left.
                let old_grew = step.old > first.get_or_insert(c).old;
                let old_ready = c.old == step.old
                    && c.old_live <= step.old
                    && (!old_grew || c.old_available >= step.old);
                let new_ready =
                    c.new == step.new && c.new_live <= step.new && c.new_available >= step.new;
                // Ahead: the step's new pods are asked for (their set's controller makes them); the
                // old sets shrink as they become available, on into the next step, so the waves
                // overlap pod by pod as a Deployment's own rolling update does. An old set that
                // must grow (a restore) is never passed over.
                if way == Way::Ahead && c.new == step.new && c.old >= step.old {
                    if announced.is_some() {
                        sink.report(Change::Changed {
                            instance: new_name.clone(),
                            version: version.into(),
                            ok: true,
                            detail: format!(
                                "{} pods of {version} asked for ({} available), {} old; the next step goes on",
                                c.new, c.new_available, c.old
                            ),
                        })
                        .await?;
                    }
                    return Ok(());
                }
                if new_ready && old_ready {
                    if announced.is_some() {
                        sink.report(Change::Changed {
                            instance: new_name.clone(),
                            version: version.into(),
                            ok: true,
                            detail: format!("{} of {version} available, {} old", c.new, c.old),
                        })
                        .await?;
                    }
                    return Ok(());
                }
                let (old, new_size) = next_sizes(step, c);
                // A shrink of the old sets that nothing waits for (the new set is at the step's
                // count, and this is not the shrink that ends the step) gathers the pods that
                // become available within `GATHER_SHRINK` into one write instead of one each.
                let idle_shrink = waits_for_nothing(step, c, old);
                let gather_until = match (idle_shrink, shrink_since) {
                    (false, _) => {
                        shrink_since = None;
                        None
                    }
                    (true, Some(since)) => Some(since + GATHER_SHRINK),
                    (true, None) => {
                        let now = tokio::time::Instant::now();
                        shrink_since = Some(now);
                        Some(now + GATHER_SHRINK)
                    }
                };
                let gathering = gather_until.filter(|until| tokio::time::Instant::now() < *until);
                if let Some(until) = gathering {
                    wake = wake.min(until);
                }
                if old != c.old && old_set != Some(old) && gathering.is_none() {
                    shrink_since = None;
                    let lent_sets: Vec<_> = olds.iter().filter(|rs| lent(rs)).collect();
                    match lent_sets
                        .iter()
                        .find(|rs| replicas(rs) > 0)
                        .or(lent_sets.first())
                    {
                        // Beside an HPA the stable ReplicaSet itself: spec.replicas is the HPA's.
                        Some(rs) => {
                            let rs_name = rs.name_any();
                            let (pp, patch) = (
                                params(),
                                Patch::Merge(serde_json::json!({"spec": {"replicas": old}})),
                            );
                            self.reach
                                .call(|| self.replica_sets.patch(&rs_name, &pp, &patch))
                                .await
                                .map_err(|e| self.fail(&format!("scaling {rs_name}"), e))?;
                        }
                        None => {
                            self.patch_deployment(serde_json::json!({"spec": {"replicas": old}}))
                                .await?;
                        }
                    }
                    old_set = Some(old);
                }
                if new_size != c.new && new_set != Some(new_size) {
                    if announced.is_none() && forward {
                        sink.report(Change::Changing {
                            instance: new_name.clone(),
                            version: version.into(),
                        })
                        .await?;
                        announced = Some(new_name.clone());
                    }
                    let pp = params();
                    let patch = Patch::Merge(serde_json::json!({"spec": {"replicas": new_size}}));
                    self.reach
                        .call(|| self.replica_sets.patch(&new_name, &pp, &patch))
                        .await
                        .map_err(|e| self.fail(&format!("scaling {new_name}"), e))?;
                    new_set = Some(new_size);
                }
            }
            match tokio::time::timeout_at(wake, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    return Err(TargetError::Failed(format!(
                        "the watch of {} ended",
                        self.name()
                    )));
                }
                Err(_) if tokio::time::Instant::now() < last_progress + deadline => {}
                Err(_) => {
                    let refused = said
                        .as_deref()
                        .map_or_else(String::new, |why| format!(" (pods refused: {why})"));
                    let where_ = match way {
                        Way::Forward | Way::Ahead => format!(
                            "{} of {} pods of {version} available",
                            last.map_or(0, |c| c.new_available),
                            step.new
                        ),
                        Way::Back => format!(
                            "{} of {} stable pods available, {} of {version} left",
                            last.map_or(0, |c| c.old_available),
                            step.old,
                            last.map_or(0, |c| c.new)
                        ),
                    };
                    let why = format!(
                        "no progress within progressDeadlineSeconds ({}s): {where_}{refused}{}",
                        deadline.as_secs(),
                        self.outage_note()
                    );
                    let instance = announced.unwrap_or_else(|| self.name().into());
                    let why = TargetError::Failed(why);
                    return Err(step_failed(sink, forward, instance, version, why).await?);
                }
            }
        }
    }

    /// Sizes `step` for N as it is now (beside an HPA, its count), converges on it, and hands over
    /// once everything is new.
    pub(super) async fn scale_step(
        &self,
        step: &Step,
        version: &str,
        end: StepEnd,
        deadline: Duration,
        sink: Sink<'_>,
    ) -> Result<()> {
        // A request that finds no API server keeps trying as long as the step may.
        self.reach.set_patience(deadline, true);
        // The Deployment from the run's watch: a copy from before `prepare` still has spec.replicas
        // at N, and a later one has the annotation, so no request is needed between steps.
        let cache = self.cache().await?;
        let watched = cache
            .deployment
            .state()
            .first()
            .map(|d| Deployment::clone(d));
        let d = match watched {
            Some(d) => d,
            None => self.read_deployment().await?,
        };
        let planned = Self::n_of(&d);
        // Beside an HPA, N is its count at the step boundary: the step is sized for it.
        let (step, n) = if d.annotations().contains_key(HPA_ANNOTATION) {
            let now = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0).max(0) as u32;
            (resize(step, planned, now), now)
        } else {
            (step.clone(), planned)
        };
        let step = &step;
        {
            let mut bounds = self.bounds.lock().expect("bounds lock");
            let (surge, unavailable) = bounds.unwrap_or_default();
            *bounds = Some((
                surge.max(step.max_total.saturating_sub(n)),
                unavailable.max(n.saturating_sub(step.min_available)),
            ));
        }
        let way = match end {
            StepEnd::Ready => Way::Forward,
            StepEnd::Requested => Way::Ahead,
        };
        self.converge(step, version, deadline, sink, way).await?;
        if step.old == 0 && step.new >= n {
            self.hand_over(version, n, deadline).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::StepKind;

    fn step(old: u32, new: u32, min_available: u32, max_total: u32) -> Step {
        let mut s = Step::hold(StepKind::Scale, old, new, "");
        s.min_available = min_available;
        s.max_total = max_total;
        s
    }

    fn counts(old: u32, old_available: u32, new: u32, new_available: u32) -> Counts {
        Counts {
            old,
            old_available,
            old_live: old,
            new,
            new_available,
            new_live: new,
        }
    }

    #[test]
    fn surge_adds_first_then_removes_what_is_replaced() {
        // N=10, surge 3, unavailable 0: step to (7, 3).
        let s = step(7, 3, 10, 13);
        assert_eq!(next_sizes(&s, counts(10, 10, 0, 0)), (10, 3));
        assert_eq!(next_sizes(&s, counts(10, 10, 3, 1)), (9, 3));
        assert_eq!(next_sizes(&s, counts(10, 10, 3, 3)), (7, 3));
    }

    #[test]
    fn without_surge_removes_before_adding() {
        // N=4, surge 0, unavailable 1: step to (3, 1).
        let s = step(3, 1, 3, 4);
        assert_eq!(next_sizes(&s, counts(4, 4, 0, 0)), (3, 0));
        assert_eq!(next_sizes(&s, counts(3, 3, 0, 0)), (3, 1));
    }

    #[test]
    fn never_exceeds_max_total_while_old_shrinks_late() {
        let s = step(0, 10, 10, 13);
        // The old set has not shrunk yet: no room.
        assert_eq!(next_sizes(&s, counts(10, 10, 3, 3)), (7, 3));
        assert_eq!(next_sizes(&s, counts(7, 7, 3, 3)), (7, 6));
    }

    #[test]
    fn a_rollback_drops_failed_pods_first_and_stays_within_max_total() {
        // Issue 16, bug 9: N=4, surge 1, canary at (2, 2) whose new pods crashed.
        let s = step(4, 0, 4, 5);
        assert_eq!(next_sizes(&s, counts(2, 2, 2, 0)), (3, 0));
        assert_eq!(next_sizes(&s, counts(3, 2, 0, 0)), (4, 0));
        // Healthy new pods (an abort) go only as stable ones become available.
        assert_eq!(next_sizes(&s, counts(2, 2, 2, 2)), (3, 2));
        assert_eq!(next_sizes(&s, counts(3, 3, 2, 2)), (3, 1));
        assert_eq!(next_sizes(&s, counts(3, 3, 1, 1)), (4, 1));
    }

    #[test]
    fn only_a_shrink_that_nothing_waits_for_may_wait() {
        // N=20, surge 5, unavailable 0: step to (10, 10), the new set asked for in full.
        let s = step(10, 10, 20, 25);
        // 3 new pods available: the old set may go to 17; nothing waits for that.
        assert_eq!(next_sizes(&s, counts(20, 20, 10, 3)).0, 17);
        assert!(waits_for_nothing(&s, counts(20, 20, 10, 3), 17));
        // The shrink that ends the step goes at once.
        assert!(!waits_for_nothing(&s, counts(17, 17, 10, 10), 10));
        // A shrink that makes room for new pods goes at once.
        let s = step(10, 10, 20, 25);
        assert!(!waits_for_nothing(&s, counts(20, 20, 5, 5), 15));
        // Growing, or standing still, is no shrink.
        assert!(!waits_for_nothing(&s, counts(10, 10, 10, 10), 12));
        assert!(!waits_for_nothing(&s, counts(17, 17, 10, 3), 17));
    }

    #[test]
    fn steps_follow_an_autoscaler_that_changed_n() {
        // Rolling N=4, surge 1: (3, 1) within 4..5; the HPA makes it 8.
        let r = resize(&step(3, 1, 4, 5), 4, 8);
        assert_eq!((r.old, r.new, r.min_available, r.max_total), (6, 2, 8, 10));
        // The last step ends at the new N exactly; a canary keeps at least one new instance.
        let r = resize(&step(0, 4, 4, 5), 4, 6);
        assert_eq!((r.old, r.new), (0, 6));
        let r = resize(&step(9, 1, 10, 11), 10, 3);
        assert_eq!((r.old, r.new), (2, 1));
        // Blue-green's preview (old N, new N): both follow.
        let r = resize(&step(4, 4, 4, 8), 4, 6);
        assert_eq!((r.old, r.new, r.max_total), (6, 6, 12));
        // Unchanged N: the step as planned.
        assert_eq!(resize(&step(3, 1, 4, 5), 4, 4), step(3, 1, 4, 5));
    }
}
