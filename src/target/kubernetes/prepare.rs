//! Prepare: before the first step, the Deployment paused with N recorded, and a ReplicaSet of the
//! new version held under the holder ConfigMap (a new one of the new template, or the
//! Deployment's own of that version for a rollback); undone when it fails, before anything ran.
//! The hand-over (`hand_over.rs`) gives the held set back once every pod is new.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::{ConfigMap, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use kube::api::{ObjectMeta, PostParams};
use kube::core::SelectorExt;
use sha2::{Digest, Sha256};

use super::hand_over::{is_recreate, manifest_template, recreate_refusal, settled};
use super::view::{View, replicas, rs_version, template_image, template_version};
use super::{
    FIELD_MANAGER, HASH_LABEL, HPA_ANNOTATION, IMAGE_ANNOTATION, Kubernetes, PAUSED_ANNOTATION,
    REPLICAS_ANNOTATION, VERSION_ANNOTATION,
};
use crate::target::Result;

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
            let spec = t
                .spec
                .as_mut()
                .ok_or_else(|| self.fail("its template", "has no pod spec"))?;
            let names: Vec<String> = spec.containers.iter().map(|c| c.name.clone()).collect();
            // Native sidecars (init containers that keep running) can be named too.
            let sidecars = spec
                .init_containers
                .iter_mut()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"));
            let c = match self.container() {
                Some(name) => spec
                    .containers
                    .iter_mut()
                    .chain(sidecars)
                    .find(|c| c.name == name)
                    .ok_or_else(|| {
                        self.fail(
                            "spec.target.kubernetes.container",
                            format!("no container {name} (it has: {})", names.join(", ")),
                        )
                    })?,
                None if spec.containers.len() == 1 => &mut spec.containers[0],
                None => {
                    return Err(self.fail(
                        "spec.target.kubernetes.image",
                        format!(
                            "the pod has several containers ({}): name the one to update with container:",
                            names.join(", ")
                        ),
                    ));
                }
            };
            c.image = Some(image.clone());
        }
        let image = template_image(&t, self.container()).map(str::to_string);
        let meta = t.metadata.get_or_insert_with(ObjectMeta::default);
        let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
        annotations.insert(VERSION_ANNOTATION.into(), version.into());
        match image {
            Some(image) => annotations.insert(IMAGE_ANNOTATION.into(), image),
            None => annotations.remove(IMAGE_ANNOTATION),
        };
        if let Some(labels) = &mut meta.labels {
            labels.remove(HASH_LABEL);
        }
        Ok(t)
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

    /// Refuses a Deployment paused with a change of its template that its controller has not
    /// rolled out (its template differs from its active ReplicaSet's): rolling it, or rolling
    /// back and unpausing, would release that change. Nothing is changed.
    fn refuse_staged_change(&self, view: &View) -> Result<()> {
        let Some(active) = view.owned_by(&view.uid).find(|rs| replicas(rs) > 0) else {
            return Ok(());
        };
        let without_hash = |t: Option<&PodTemplateSpec>| {
            let mut t = t.cloned().unwrap_or_default();
            if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
                labels.remove(HASH_LABEL);
            }
            serde_json::to_value(t).unwrap_or_default()
        };
        let staged = without_hash(view.deployment.spec.as_ref().map(|s| &s.template));
        let running = without_hash(active.spec.as_ref().and_then(|s| s.template.as_ref()));
        if staged == running {
            return Ok(());
        }
        Err(self.fail(
            "prepare",
            format!(
                "it is paused with a change of its pod template that is not rolled out (its template differs from its active ReplicaSet {}); nothing was changed: release that change first (kubectl rollout resume), or set the template back to the running one, then run rollgate again",
                active.name_any()
            ),
        ))
    }

    /// Pauses the Deployment, records N, and holds a ReplicaSet of `version`: an existing one of
    /// the Deployment's (a rollback), or a new one of the new template.
    pub(super) async fn prepare_held(&self, version: &str) -> Result<()> {
        // The autoscaler is asked beside the view (its answer counts only for a first prepare).
        let (view, hpa) = tokio::join!(self.view(), self.autoscaler());
        let view = view?;
        let d = &view.deployment;
        let container = self.container();
        let current = d
            .spec
            .as_ref()
            .and_then(|s| template_version(&s.template, container));
        if view.held(version, container).is_some() || current.as_deref() == Some(version) {
            return Ok(()); // prepared already, or nothing to prepare
        }
        if is_recreate(d) {
            return Err(self.fail("prepare", recreate_refusal(self.name())));
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
        // Paused by someone else (rollgate's own pause records N): it is left paused at the end,
        // and refused when the pause holds back a change of its template.
        let ours = d.annotations().contains_key(REPLICAS_ANNOTATION);
        let was_paused = match ours {
            true => d.annotations().contains_key(PAUSED_ANNOTATION),
            false => d.spec.as_ref().and_then(|s| s.paused) == Some(true),
        };
        if was_paused && !ours {
            self.refuse_staged_change(&view)?;
        }
        // Everything that can be refused is decided before the first write: the ReplicaSet to
        // reuse (a version the Deployment still keeps: a rollback), else the new template.
        let reuse = view
            .owned_by(&view.uid)
            .find(|rs| replicas(rs) == 0 && rs_version(rs, container).as_deref() == Some(version))
            .cloned();
        let template = match reuse {
            Some(_) => None,
            None => Some(self.labelled_template(&view, version)?),
        };
        let n = Self::n_of(d);
        let hpa = hpa?;
        // Paused, the Deployment only ever scales its one active ReplicaSet to spec.replicas. The
        // holder ConfigMap is made beside the pause (it holds nothing yet).
        let pause = self.patch_deployment(serde_json::json!({
            "metadata": {"annotations": {
                REPLICAS_ANNOTATION: n.to_string(),
                HPA_ANNOTATION: hpa,
                PAUSED_ANNOTATION: was_paused.then_some("true"),
            }},
            "spec": {"paused": true},
        }));
        let (paused, holder) = tokio::join!(pause, self.ensure_holder(&view));
        let held = match (paused, holder) {
            (Err(e), holder) => {
                // Nothing else changed: a holder made beside the refused pause goes again.
                if holder.is_ok()
                    && view.holder.is_none()
                    && let Err(undo) = self.delete_holder().await
                {
                    eprintln!(
                        "warning: removing the rollout holder after `{}`: {}",
                        crate::error_chain(&e),
                        crate::error_chain(&undo)
                    );
                }
                return Err(e);
            }
            (Ok(_), Err(e)) => Err(e),
            (Ok(_), Ok(holder)) => {
                self.hold(&view, &holder, version, hpa.is_some(), reuse, template)
                    .await
            }
        };
        if let Err(e) = &held {
            // Nothing ran yet: the Deployment goes back to how prepare found it.
            if let Err(undo) = self.undo_prepare().await {
                eprintln!(
                    "warning: undoing what prepare did after `{}`: {}",
                    crate::error_chain(e),
                    crate::error_chain(&undo)
                );
            }
        }
        held
    }

    /// The new pod template of `version` with its own pod-template-hash, and that hash.
    fn labelled_template(&self, view: &View, version: &str) -> Result<(PodTemplateSpec, String)> {
        let d = &view.deployment;
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
        Ok((template, hash))
    }

    /// Undoes what `prepare` did before any step ran: the ReplicaSets the holder holds go back
    /// to the Deployment (lent ones, a reused one) and the holder is deleted; the Deployment loses
    /// rollgate's annotations and is paused only if it was before.
    async fn undo_prepare(&self) -> Result<()> {
        let view = self.view().await?;
        let d = &view.deployment;
        let n = Self::n_of(d);
        if let Some(holder) = view.holder_uid() {
            let dref = self.deployment_ref(&view);
            for rs in view.owned_by(holder) {
                self.give_annotated(rs, dref.clone(), settled(d, n)).await?;
            }
            self.delete_holder().await?;
        }
        self.patch_deployment(serde_json::json!({
            "metadata": {"annotations": {
                REPLICAS_ANNOTATION: null,
                HPA_ANNOTATION: null,
                PAUSED_ANNOTATION: null,
            }},
            "spec": {"paused": d.annotations().contains_key(PAUSED_ANNOTATION)},
        }))
        .await
        .map(drop)
    }

    /// Holds the ReplicaSet of `version` under the holder (created with the paused Deployment):
    /// `reuse`, or a new one of `template`; beside an HPA, lends the stable ones.
    async fn hold(
        &self,
        view: &View,
        holder: &ConfigMap,
        version: &str,
        hpa: bool,
        reuse: Option<ReplicaSet>,
        template: Option<(PodTemplateSpec, String)>,
    ) -> Result<()> {
        let d = &view.deployment;
        if hpa {
            // The HPA keeps spec.replicas. Lent to the holder, the stable ReplicaSets are scaled by
            // rollgate alone: the Deployment controller, owning none, scales none.
            for rs in view.owned_by(&view.uid) {
                self.give(rs, self.holder_ref(holder), true).await?;
            }
        }
        if let Some(rs) = reuse {
            *self.held_name.lock().expect("held lock") = Some(rs.name_any());
            return self.give(&rs, self.holder_ref(holder), false).await;
        }
        let Some((mut template, hash)) = template else {
            return Ok(());
        };
        let labels = template
            .metadata
            .get_or_insert_with(ObjectMeta::default)
            .labels
            .get_or_insert_with(BTreeMap::new)
            .clone();
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
                owner_references: Some(vec![self.holder_ref(holder)]),
                ..ObjectMeta::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(0),
                // The manifest's, or where it leaves it at 0, the Deployment's own.
                min_ready_seconds: Some(
                    super::settings::Own::of(d).min_ready(self.min_ready_seconds),
                ),
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
                self.give(&existing, self.holder_ref(holder), false).await
            }
            Err(e) => Err(self.fail("creating the new ReplicaSet", e)),
        }
    }
}
