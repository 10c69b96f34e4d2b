//! Hand-over: `prepare` holds a ReplicaSet of the new version under the holder ConfigMap, the
//! hand-over gives it (and the old ones) back to the Deployment, and `restore` goes back to the
//! stable ReplicaSet; see the target's module docs for the order and why.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::{ConfigMap, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use kube::ResourceExt;
use kube::api::{DeleteParams, ObjectMeta, Patch, PostParams};
use kube::core::SelectorExt;
use sha2::{Digest, Sha256};

use super::reach::{PATIENCE_OUTSIDE_STEPS, params};
use super::view::{View, controller_uid, lent, replicas, rs_version, template_version};
use super::{
    FIELD_MANAGER, HASH_LABEL, HPA_ANNOTATION, Kubernetes, LENT_ANNOTATION, REPLICAS_ANNOTATION,
    VERSION_ANNOTATION,
};
use crate::plan::{Step, StepKind};
use crate::target::{Change, Result, Sink, Target, TargetError};

fn owner_ref(kind: &str, api_version: &str, name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name: name.into(),
        uid: uid.into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

impl Kubernetes {
    /// The pod template of `version`: the Deployment's with the new image, or the manifest's.
    fn new_template(&self, d: &Deployment, version: &str) -> Result<PodTemplateSpec> {
        let mut t = match &self.spec.manifest {
            Some(path) => manifest_template(&self.base_dir.join(path))?,
            None => d
                .spec
                .as_ref()
                .map(|s| s.template.clone())
                .unwrap_or_default(),
        };
        if let Some(image) = &self.spec.image {
            let containers = &mut t
                .spec
                .as_mut()
                .ok_or_else(|| self.fail("its template", "has no pod spec"))?
                .containers;
            let c = match self.container() {
                Some(name) => containers
                    .iter_mut()
                    .find(|c| c.name == name)
                    .ok_or_else(|| {
                        self.fail(
                            "spec.target.kubernetes.container",
                            format!("no container {name}"),
                        )
                    })?,
                None if containers.len() == 1 => &mut containers[0],
                None => {
                    return Err(self.fail(
                        "spec.target.kubernetes.image",
                        "the pod has several containers: name one with container:",
                    ));
                }
            };
            c.image = Some(image.clone());
        }
        let meta = t.metadata.get_or_insert_with(ObjectMeta::default);
        meta.annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(VERSION_ANNOTATION.into(), version.into());
        if let Some(labels) = &mut meta.labels {
            labels.remove(HASH_LABEL);
        }
        Ok(t)
    }

    pub(super) async fn patch_deployment(&self, patch: serde_json::Value) -> Result<Deployment> {
        let (pp, patch) = (params(), Patch::Merge(patch));
        self.reach
            .call(|| self.deployments.patch(self.name(), &pp, &patch))
            .await
            .map_err(|e| self.fail("patching it", e))
    }

    /// Replaces the Deployment's template exactly (a merge patch would keep stale keys), with
    /// `replicas`, still paused, and without the N annotation. Retries a write that races.
    /// `read` is a recent copy to try first (one round trip fewer when nothing changed since).
    async fn set_template(
        &self,
        template: PodTemplateSpec,
        replicas: u32,
        mut read: Option<Deployment>,
    ) -> Result<Deployment> {
        let mut attempts = 0;
        loop {
            let mut d = match read.take() {
                Some(d) => d,
                None => self
                    .reach
                    .call(|| self.deployments.get(self.name()))
                    .await
                    .map_err(|e| self.fail("reading it", e))?,
            };
            if let Some(a) = d.metadata.annotations.as_mut() {
                a.remove(REPLICAS_ANNOTATION);
                a.remove(HPA_ANNOTATION);
            }
            let spec = d.spec.get_or_insert_with(Default::default);
            spec.template = template.clone();
            spec.replicas = Some(replicas as i32);
            spec.paused = Some(true);
            let post = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PostParams::default()
            };
            // A replace whose answer was lost and that is sent again conflicts: read, then again.
            match self
                .reach
                .call(|| self.deployments.replace(self.name(), &post, &d))
                .await
            {
                Ok(d) => return Ok(d),
                Err(kube::Error::Api(s)) if s.code == 409 && attempts < 5 => attempts += 1,
                Err(e) => return Err(self.fail("setting its template", e)),
            }
        }
    }

    /// Gives `rs` to a new controlling owner (one write, so no controller sees it ownerless),
    /// marked as lent or not.
    async fn give(&self, rs: &ReplicaSet, owner: OwnerReference, lend: bool) -> Result<()> {
        let mark = lend.then_some("true");
        let patch = Patch::Merge(serde_json::json!({"metadata": {
            "ownerReferences": [owner],
            "annotations": {LENT_ANNOTATION: mark},
        }}));
        let (pp, name) = (params(), rs.name_any());
        self.reach
            .call(|| self.replica_sets.patch(&name, &pp, &patch))
            .await
            .map(drop)
            .map_err(|e| self.fail(&format!("handing over ReplicaSet {}", rs.name_any()), e))
    }

    async fn ensure_holder(&self, view: &View) -> Result<ConfigMap> {
        if let Some(cm) = &view.holder {
            return Ok(cm.clone());
        }
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(self.holder_name()),
                annotations: Some(
                    [(
                        "rollgate.dev/purpose".to_string(),
                        format!(
                            "holds the new ReplicaSet of {} while rollgate rolls it out; gone when the rollout ends",
                            self.name()
                        ),
                    )]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        };
        let post = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        match self
            .reach
            .call(|| self.config_maps.create(&post, &cm))
            .await
        {
            // Created by this very request, sent again after its answer was lost.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let name = self.holder_name();
                self.reach
                    .call(|| self.config_maps.get(&name))
                    .await
                    .map_err(|e| self.fail("reading the rollout holder", e))
            }
            created => created.map_err(|e| self.fail("creating the rollout holder", e)),
        }
    }

    fn holder_ref(&self, cm: &ConfigMap) -> OwnerReference {
        owner_ref(
            "ConfigMap",
            "v1",
            &self.holder_name(),
            cm.metadata.uid.as_deref().unwrap_or_default(),
        )
    }

    fn deployment_ref(&self, view: &View) -> OwnerReference {
        owner_ref("Deployment", "apps/v1", self.name(), &view.uid)
    }

    /// Hands the held ReplicaSet of `version` (now at N) to the Deployment; see the module docs.
    pub(super) async fn hand_over(&self, version: &str, n: u32, deadline: Duration) -> Result<()> {
        let view = self.view().await?;
        let Some(new) = view.held(version, self.container()).cloned() else {
            let current = view
                .deployment
                .spec
                .as_ref()
                .and_then(|s| template_version(&s.template, self.container()));
            if current.as_deref() == Some(version) {
                return Ok(()); // already handed over
            }
            return Err(self.fail("handing over", self.missing_held(&view, version)));
        };
        let holder = view.holder.clone().expect("held implies a holder");
        // What the holder has once the Deployment gave it its own (below): given back in step 3.
        let held: Vec<ReplicaSet> = view
            .owned_by(&view.uid)
            .chain(view.owned_by(view.holder_uid().unwrap_or_default()))
            .filter(|rs| rs.name_any() != new.name_any())
            .cloned()
            .collect();
        // 1. The Deployment, paused, gives away its ReplicaSets: it owns none, so it scales none.
        let href = self.holder_ref(&holder);
        futures_util::future::try_join_all(
            view.owned_by(&view.uid)
                .map(|rs| self.give(rs, href.clone(), false)),
        )
        .await?;
        // 2. The identical template and N.
        let mut template = new
            .spec
            .as_ref()
            .and_then(|s| s.template.clone())
            .unwrap_or_default();
        if let Some(labels) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
            labels.remove(HASH_LABEL);
        }
        let generation = self
            .set_template(template, n, Some(view.deployment.clone()))
            .await?
            .metadata
            .generation;
        // 3. The new ReplicaSet first (the only active one, already at N), then the rest.
        let dref = self.deployment_ref(&view);
        self.give(&new, dref.clone(), false).await?;
        futures_util::future::try_join_all(
            held.iter().map(|rs| self.give(rs, dref.clone(), false)),
        )
        .await?;
        // 4. Once its controller counts that ReplicaSet as its new one (so its cache has the
        //    adoption and it will not create another), unpaused.
        self.wait_status(deadline, "adopting the new ReplicaSet", move |d| {
            let s = d.status.as_ref();
            s.and_then(|s| s.observed_generation) >= generation
                && s.and_then(|s| s.updated_replicas).unwrap_or(0) == n as i32
        })
        .await?;
        let (unpaused, ()) = futures_util::try_join!(
            self.patch_deployment(serde_json::json!({"spec": {"paused": false}})),
            self.delete_holder(),
        )?;
        if self.blue_green {
            // One ReplicaSet is left: the Services select the app's pods as the user wrote them.
            self.pin(&self.active_service(), None).await?;
            self.pin(&self.preview_service(), None).await?;
        }
        self.wait_rolled_out(n, unpaused.metadata.generation, deadline)
            .await
    }

    /// Deletes the holder ConfigMap; one already gone is fine (a retried delete, or a rollback
    /// after someone else deleted it).
    async fn delete_holder(&self) -> Result<()> {
        let (name, dp) = (self.holder_name(), DeleteParams::background());
        match self
            .reach
            .call(|| self.config_maps.delete(&name, &dp))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(self.fail("deleting the rollout holder", e)),
        }
    }

    /// Why the held ReplicaSet of `version` is not in `view`: someone else deleted it, or its
    /// holder (whose garbage collection deletes it).
    pub(super) fn missing_held(&self, view: &View, version: &str) -> String {
        let ns = &self.spec.namespace;
        let name = self.held_name.lock().expect("held lock").clone();
        let rs = match &name {
            Some(name) => format!("ReplicaSet {ns}/{name} (version {version})"),
            None => format!("the ReplicaSet of version {version}"),
        };
        let holder = format!("ConfigMap {ns}/{}", self.holder_name());
        // Deleted with `--cascade=orphan`, the holder lingers until its dependents are let go.
        let holder_gone = view
            .holder
            .as_ref()
            .is_none_or(|cm| cm.metadata.deletion_timestamp.is_some());
        let still_there = view
            .sets
            .iter()
            .any(|s| Some(s.name_any()) == name && s.metadata.deletion_timestamp.is_none());
        match (holder_gone, still_there) {
            (true, false) => format!(
                "{holder}, which holds {rs} during the rollout, was deleted by someone else (not rollgate); garbage collection deletes {rs} and its pods with it, and rollgate does not recreate them"
            ),
            (true, true) => format!(
                "{holder}, which holds {rs} during the rollout, was deleted by someone else (not rollgate), leaving {rs} without its holder; rollgate does not use it further"
            ),
            (false, true) => format!(
                "{rs} was taken from {holder} by someone else (not rollgate) during the rollout; rollgate does not use it further"
            ),
            (false, false) => format!(
                "{rs} was deleted by someone else (not rollgate) during the rollout; rollgate does not recreate it"
            ),
        }
    }

    /// Pauses the Deployment, records N, and holds a ReplicaSet of `version`: an existing one of
    /// the Deployment's (a rollback), or a new one of the new template.
    pub(super) async fn prepare_held(&self, version: &str) -> Result<()> {
        let view = self.view().await?;
        let d = &view.deployment;
        let container = self.container();
        let current = d
            .spec
            .as_ref()
            .and_then(|s| template_version(&s.template, container));
        if view.held(version, container).is_some() || current.as_deref() == Some(version) {
            return Ok(()); // prepared already, or nothing to prepare
        }
        let active = view
            .owned_by(&view.uid)
            .filter(|rs| replicas(rs) > 0)
            .count();
        if active > 1 {
            return Err(self.fail(
                "prepare",
                "a rollout of its own is under way (several active ReplicaSets): wait for it, or undo it",
            ));
        }
        let n = Self::n_of(d);
        let hpa = self.autoscaler().await?;
        // Paused, the Deployment only ever scales its one active ReplicaSet to spec.replicas.
        self.patch_deployment(serde_json::json!({
            "metadata": {"annotations": {REPLICAS_ANNOTATION: n.to_string(), HPA_ANNOTATION: hpa}},
            "spec": {"paused": true},
        }))
        .await?;
        let holder = self.ensure_holder(&view).await?;
        if hpa.is_some() {
            // The HPA keeps spec.replicas. Lent to the holder, the stable ReplicaSets are scaled by
            // rollgate alone: the Deployment controller, owning none, scales none.
            for rs in view.owned_by(&view.uid) {
                self.give(rs, self.holder_ref(&holder), true).await?;
            }
        }
        // A version the Deployment still keeps (a rollback) is reused: its ReplicaSet exists.
        if let Some(rs) = view
            .owned_by(&view.uid)
            .find(|rs| replicas(rs) == 0 && rs_version(rs, container).as_deref() == Some(version))
        {
            *self.held_name.lock().expect("held lock") = Some(rs.name_any());
            return self.give(rs, self.holder_ref(&holder), false).await;
        }
        let mut template = self.new_template(d, version)?;
        let json = serde_json::to_vec(&template).unwrap_or_default();
        let hash = format!("rg{}", &hex::encode(Sha256::digest(&json))[..8]);
        let labels = template
            .metadata
            .get_or_insert_with(ObjectMeta::default)
            .labels
            .get_or_insert_with(BTreeMap::new);
        if !view.selector.matches(labels) {
            return Err(self.fail(
                "the new pod template",
                "its labels do not match the Deployment's selector",
            ));
        }
        labels.insert(HASH_LABEL.into(), hash.clone());
        let labels = labels.clone();
        let mut selector: LabelSelector = d
            .spec
            .as_ref()
            .map(|s| s.selector.clone())
            .unwrap_or_default();
        selector
            .match_labels
            .get_or_insert_with(BTreeMap::new)
            .insert(HASH_LABEL.into(), hash.clone());
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(format!("{}-{hash}", self.name())),
                labels: Some(labels),
                annotations: Some([(VERSION_ANNOTATION.to_string(), version.to_string())].into()),
                owner_references: Some(vec![self.holder_ref(&holder)]),
                ..ObjectMeta::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(0),
                min_ready_seconds: Some(self.min_ready_seconds),
                selector,
                template: Some(template),
            }),
            status: None,
        };
        *self.held_name.lock().expect("held lock") = Some(rs.name_any());
        let post = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        match self
            .reach
            .call(|| self.replica_sets.create(&post, &rs))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // Left by an earlier attempt of this version (or by this create, sent again after
                // its answer was lost): hold it again.
                let name = rs.name_any();
                let existing = self
                    .reach
                    .call(|| self.replica_sets.get(&name))
                    .await
                    .map_err(|e| self.fail("reading the new ReplicaSet", e))?;
                self.give(&existing, self.holder_ref(&holder), false).await
            }
            Err(e) => Err(self.fail("creating the new ReplicaSet", e)),
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
        let view = self.view().await?;
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
        if current.as_deref() != Some(version) {
            // Already handed over: go back the way a rollout goes, all at once.
            self.prepare(version).await?;
            let mut step = Step::hold(StepKind::Scale, 0, n, "restore");
            step.min_available = n;
            step.max_total = 2 * n;
            return self.scale(&step, version, deadline, sink).await;
        }
        // The stable ReplicaSet is the Deployment's own: back to N at once, then the new one goes.
        sink.report(Change::Changing {
            instance: self.name().into(),
            version: version.into(),
        })
        .await?;
        if hpa {
            // Beside an HPA, the lent ReplicaSets go back: the paused Deployment scales its one
            // active ReplicaSet to spec.replicas, the HPA's count.
            let dref = self.deployment_ref(&view);
            for rs in view.sets.iter().filter(|rs| lent(rs)) {
                self.give(rs, dref.clone(), false).await?;
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
        if let Some(holder) = view.holder_uid() {
            // Not the lent ones: they are the Deployment's again.
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
            "metadata": {"annotations": {REPLICAS_ANNOTATION: null, HPA_ANNOTATION: null}},
            "spec": {"paused": false},
        }))
        .await?;
        if self.blue_green {
            self.pin(&self.active_service(), None).await?;
            self.pin(&self.preview_service(), None).await?;
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

/// The pod template of a Deployment YAML file (`spec.target.kubernetes.manifest`).
pub fn manifest_template(path: &Path) -> Result<PodTemplateSpec> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| TargetError::Setup(format!("{}: {e}", path.display())))?;
    let from: Deployment = serde_yaml::from_str(&text)
        .map_err(|e| TargetError::Setup(format!("{}: not a Deployment: {e}", path.display())))?;
    from.spec
        .map(|s| s.template)
        .ok_or_else(|| TargetError::Setup(format!("{}: no spec.template", path.display())))
}
