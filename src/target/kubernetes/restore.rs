//! Restore: back to the stable ReplicaSet at N (a rollback mid-rollout, or after the hand-over
//! the way a rollout goes), then what the rollout made is removed and the Deployment settled.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::ResourceExt;
use kube::api::{DeleteParams, Patch};

use super::hand_over::{max_surge, max_unavailable, settled};
use super::reach::{PATIENCE_OUTSIDE_STEPS, params};
use super::sizes::Way;
use super::view::View;
use super::view::{controller_uid, lent, rs_version, template_version};
use super::{HASH_LABEL, HPA_ANNOTATION, Kubernetes, PAUSED_ANNOTATION, REPLICAS_ANNOTATION};
use crate::plan::{Step, StepEnd, StepKind};
use crate::target::{Change, Result, Sink, Target, TargetError};

impl Kubernetes {
    /// Gives the annotations of `sets` (the Deployment's own) the values the controller would
    /// leave at `n` (see `settled`), where they differ.
    async fn settle(
        &self,
        sets: impl Iterator<Item = &ReplicaSet>,
        d: &Deployment,
        n: u32,
    ) -> Result<()> {
        let want = settled(d, n);
        let want = want.as_object().expect("an object");
        let pp = params();
        for rs in sets {
            let have = rs.annotations();
            let differs = want
                .iter()
                .any(|(k, v)| have.get(k).map(String::as_str) != v.as_str());
            if !differs {
                continue;
            }
            let name = rs.name_any();
            let patch = Patch::Merge(serde_json::json!({"metadata": {"annotations": want}}));
            match self
                .reach
                .call(|| self.replica_sets.patch(&name, &pp, &patch))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(self.fail(&format!("annotating ReplicaSet {name}"), e)),
            }
        }
        Ok(())
    }

    /// Deletes the ReplicaSets the holder holds (not the lent ones: they are the Deployment's).
    async fn delete_held(&self, view: &View) -> Result<()> {
        let Some(holder) = view.holder_uid() else {
            return Ok(());
        };
        for rs in view.owned_by(holder).filter(|rs| !lent(rs)) {
            let (name, dp) = (rs.name_any(), DeleteParams::background());
            match self
                .reach
                .call(|| self.replica_sets.delete(&name, &dp))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(self.fail("removing the new ReplicaSet", e)),
            }
        }
        Ok(())
    }

    /// A rollback of a Deployment someone deleted: nothing to restore; what rollgate made for
    /// it is deleted, and the reason is reported and returned.
    async fn gone_back(&self, version: &str, sink: Sink<'_>) -> TargetError {
        let why = self.deployment_gone().await;
        let reported = sink
            .report(Change::Changed {
                instance: self.name().into(),
                version: version.into(),
                ok: false,
                detail: why.to_string(),
            })
            .await;
        match reported {
            Ok(()) => why,
            Err(e) => e,
        }
    }

    /// maxSurge and maxUnavailable of a rollback at `n`: the rollout's own when this process ran
    /// its steps, else the Deployment's (as its controller resolves them).
    fn rollback_bounds(&self, d: &Deployment, n: u32) -> (u32, u32) {
        let (surge, unavailable) = self
            .bounds
            .lock()
            .expect("bounds lock")
            .unwrap_or_else(|| (max_surge(d, n), max_unavailable(d, n)));
        // Both zero cannot move; the Deployment API refuses that too.
        match (surge, unavailable) {
            (0, 0) => (0, 1),
            b => b,
        }
    }

    /// Puts every pod back on `version` (the stable ReplicaSet) and removes what the rollout made.
    pub(super) async fn restore_stable(
        &self,
        version: &str,
        deadline: Duration,
        sink: Sink<'_>,
    ) -> Result<()> {
        // The way back to safety waits longer for an API server that is away.
        self.reach
            .set_patience(deadline.max(PATIENCE_OUTSIDE_STEPS), false);
        // Both reads at once; a Deployment deleted is said as such (its view fails).
        let (deleted, view) = tokio::join!(self.deployment_deleted(), self.view());
        if deleted? {
            return Err(self.gone_back(version, sink).await);
        }
        let view = view?;
        let d = &view.deployment;
        let hpa = d.annotations().contains_key(HPA_ANNOTATION);
        let n = match hpa {
            true => d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0).max(0) as u32,
            false => Self::n_of(d),
        };
        let current = d
            .spec
            .as_ref()
            .and_then(|s| template_version(&s.template, self.container()));
        // Within the rollout's bounds (or, in another process, the Deployment's own).
        let (surge, unavailable) = self.rollback_bounds(d, n);
        let bounded = |old: u32, new: u32, note: &str| {
            let mut step = Step::hold(StepKind::Scale, old, new, note);
            step.min_available = n.saturating_sub(unavailable);
            step.max_total = n + surge;
            step
        };
        if current.as_deref() != Some(version) {
            // Already handed over: go back the way a rollout goes.
            self.prepare(version).await?;
            let step = bounded(0, n, "restore");
            return self
                .scale(&step, version, StepEnd::Ready, deadline, sink)
                .await;
        }
        // The stable ReplicaSet is the Deployment's own: it grows back to N as the new pods go
        // (the failed ones at once), never above N + maxSurge.
        sink.report(Change::Changing {
            instance: self.name().into(),
            version: version.into(),
        })
        .await?;
        let held = view
            .holder_uid()
            .and_then(|h| view.owned_by(h).find(|rs| !lent(rs)))
            .and_then(|rs| rs_version(rs, self.container()));
        let back = match held {
            Some(from) => {
                let step = bounded(n, 0, "rollback");
                self.converge(&step, &from, deadline, sink, Way::Back).await
            }
            None => Ok(()),
        };
        if let Err(e) = &back {
            if self.deployment_deleted().await? {
                return Err(self.gone_back(version, sink).await);
            }
            // Stuck within the bounds: the new pods go at once, to make room for the stable ones.
            eprintln!(
                "warning: rolling back within the rollout's bounds: {}; removing the new pods at once",
                crate::error_chain(e)
            );
            self.delete_held(&view).await?;
        }
        if hpa {
            // Beside an HPA, the lent ReplicaSets go back: the paused Deployment scales its one
            // active ReplicaSet to spec.replicas, the HPA's count.
            let dref = self.deployment_ref(&view);
            for rs in view.sets.iter().filter(|rs| lent(rs)) {
                self.give_annotated(rs, dref.clone(), settled(d, n)).await?;
            }
        } else {
            self.patch_deployment(serde_json::json!({"spec": {"replicas": n}}))
                .await?;
        }
        let waited = self
            .wait_status(deadline, "bringing the stable pods back", move |d| {
                d.status
                    .as_ref()
                    .is_some_and(|s| s.available_replicas.unwrap_or(0) >= n as i32)
            })
            .await;
        // A blue-green switch back is one patch, while the stable set still runs.
        if self.blue_green {
            let stable = view
                .stable()
                .find(|rs| rs_version(rs, self.container()).as_deref() == Some(version))
                .and_then(|rs| rs.labels().get(HASH_LABEL).cloned());
            if stable.is_some() && self.pinned(&self.active_service()).await?.is_some() {
                self.pin(&self.active_service(), stable.as_deref()).await?;
            }
        }
        if view.holder_uid().is_some() {
            self.delete_held(&view).await?;
            self.delete_holder().await?;
        }
        // A ReplicaSet rollgate made that someone else took out of the holder (the holder deleted
        // with its dependents orphaned, and the Deployment adopting them) goes too.
        let made = self
            .held_name
            .lock()
            .expect("held lock")
            .clone()
            .filter(|n| n.starts_with(&format!("{}-rg", self.name())));
        if let Some(name) = made
            && let Some(rs) = view.sets.iter().find(|rs| rs.name_any() == name)
            && rs_version(rs, self.container()).as_deref() != Some(version)
            && controller_uid(rs) != view.holder_uid()
        {
            let dp = DeleteParams::background();
            match self
                .reach
                .call(|| self.replica_sets.delete(&name, &dp))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(self.fail("removing the new ReplicaSet", e)),
            }
        }
        self.patch_deployment(serde_json::json!({
            "metadata": {"annotations": {
                REPLICAS_ANNOTATION: null,
                HPA_ANNOTATION: null,
                PAUSED_ANNOTATION: null,
            }},
            "spec": {"paused": d.annotations().contains_key(PAUSED_ANNOTATION)},
        }))
        .await?;
        // What the controller copied from the paused Deployment, or scaled while it was paused.
        self.settle(view.owned_by(&view.uid), d, n).await?;
        if self.blue_green {
            self.unpin_both().await?;
        }
        let (ok, detail) = match waited {
            Ok(()) => (true, format!("{n} of {version} available")),
            Err(e) => (
                false,
                format!("{version} not back at {n}: {}", crate::error_chain(&e)),
            ),
        };
        sink.report(Change::Changed {
            instance: self.name().into(),
            version: version.into(),
            ok,
            detail: detail.clone(),
        })
        .await?;
        if ok {
            Ok(())
        } else {
            Err(TargetError::Failed(detail))
        }
    }
}
