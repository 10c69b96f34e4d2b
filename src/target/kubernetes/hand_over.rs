//! Hand-over: once every pod is new, the ReplicaSet `prepare` (`prepare.rs`) held under the holder
//! ConfigMap, and the old ones, go back to the Deployment with its template set to the new one;
//! see the target's module docs for the order and why. Also what both share: the Deployment's
//! writes, handing a ReplicaSet to an owner, the holder, and the bounds as its controller reads them.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, PostParams};

use super::reach::params;
use super::view::{View, template_version};
use super::{
    FIELD_MANAGER, HASH_LABEL, HPA_ANNOTATION, Kubernetes, LENT_ANNOTATION, PAUSED_ANNOTATION,
    REPLICAS_ANNOTATION,
};
use crate::spec::KubernetesTarget;
use crate::target::{Result, TargetError};

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

/// The Deployment controller's annotations on its ReplicaSets: the Deployment's replicas, and
/// those plus maxSurge, when it last scaled the set.
const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";

/// The annotations of a ReplicaSet that rollgate gives (back) to the Deployment at `n` pods, as
/// the controller would leave them: desired-replicas N, max-replicas N + maxSurge, and none of
/// rollgate's. A stale desired-replicas (a set last scaled while the paused Deployment had fewer
/// replicas) is a scaling event to the controller on every sync, so it never rolls out again; a
/// rollgate annotation copied onto the set from the paused Deployment would be copied back to the
/// Deployment by `kubectl rollout undo`.
pub(super) fn settled(d: &Deployment, n: u32) -> serde_json::Value {
    serde_json::json!({
        DESIRED_REPLICAS: n.to_string(),
        MAX_REPLICAS: (n + max_surge(d, n)).to_string(),
        REPLICAS_ANNOTATION: null,
        HPA_ANNOTATION: null,
        LENT_ANNOTATION: null,
        PAUSED_ANNOTATION: null,
    })
}

/// The Deployment's maxSurge at `n` pods, resolved as its controller does: a percentage rounds up,
/// 25% when unset, none for Recreate.
pub(super) fn max_surge(d: &Deployment, n: u32) -> u32 {
    rolling_bound(d, n, true)
}

/// The Deployment's maxUnavailable at `n` pods, resolved as its controller does: a percentage
/// rounds down, 25% when unset, none for Recreate.
pub(super) fn max_unavailable(d: &Deployment, n: u32) -> u32 {
    rolling_bound(d, n, false)
}

fn rolling_bound(d: &Deployment, n: u32, surge: bool) -> u32 {
    let strategy = d.spec.as_ref().and_then(|s| s.strategy.as_ref());
    if is_recreate(d) {
        return 0;
    }
    let rolling = strategy.and_then(|s| s.rolling_update.as_ref());
    let bound = match surge {
        true => rolling.and_then(|r| r.max_surge.clone()),
        false => rolling.and_then(|r| r.max_unavailable.clone()),
    };
    match bound.unwrap_or(IntOrString::String("25%".into())) {
        IntOrString::Int(i) => i.max(0) as u32,
        IntOrString::String(s) => {
            let percent: u64 = s.trim_end_matches('%').trim().parse().unwrap_or(0);
            let of_n = percent * u64::from(n);
            let resolved = if surge {
                of_n.div_ceil(100)
            } else {
                of_n / 100
            };
            u32::try_from(resolved).unwrap_or(u32::MAX)
        }
    }
}

pub(super) fn is_recreate(d: &Deployment) -> bool {
    let strategy = d.spec.as_ref().and_then(|s| s.strategy.as_ref());
    strategy.and_then(|s| s.type_.as_deref()) == Some("Recreate")
}

/// Why rollgate refuses to roll Deployment `d` (the field and the reason), if it does: its
/// `strategy: Recreate` (old and new pods must never run side by side, which every rollgate
/// strategy does), or an `image:` target that cannot name its container. Pure, for `validate`,
/// `plan` and `apply` on the live Deployment.
pub fn deployment_problem(k: &KubernetesTarget, d: &Deployment) -> Option<(&'static str, String)> {
    if is_recreate(d) {
        return Some((
            "spec.target.kubernetes.deployment",
            recreate_refusal(&k.deployment),
        ));
    }
    let t = &d.spec.as_ref()?.template;
    container_problem(k, t)
}

pub(super) fn recreate_refusal(name: &str) -> String {
    format!(
        "its strategy is Recreate: old and new pods must never run side by side, and every rollgate strategy runs them side by side; nothing was changed. To roll it with rollgate, give it a RollingUpdate strategy first (kubectl patch deployment {name} -p '{{\"spec\":{{\"strategy\":{{\"type\":\"RollingUpdate\"}}}}}}'); to keep Recreate, roll it with kubectl (kubectl set image deployment/{name} ...)"
    )
}

impl Kubernetes {
    pub(super) async fn patch_deployment(&self, patch: serde_json::Value) -> Result<Deployment> {
        let (pp, patch) = (params(), Patch::Merge(patch));
        self.reach
            .call(|| self.deployments.patch(self.name(), &pp, &patch))
            .await
            .map_err(|e| self.fail("patching it", e))
    }

    /// Replaces the Deployment's template exactly (a merge patch would keep stale keys), with
    /// `replicas`, still paused, and without the N annotation. `read` is a recent copy: the
    /// rollout's annotations it has are removed by one JSON patch, which, unlike a replace of
    /// that copy, neither conflicts with the status its controller wrote since nor writes back
    /// any other field. A patch refused (an annotation gone meanwhile) reads and replaces,
    /// retrying a write that races.
    async fn set_template(
        &self,
        template: PodTemplateSpec,
        replicas: u32,
        read: &Deployment,
    ) -> Result<Deployment> {
        let (pp, patch) = (params(), template_patch(read, &template, replicas));
        match self
            .reach
            .call(|| self.deployments.patch(self.name(), &pp, &patch))
            .await
        {
            Ok(d) => return Ok(d),
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 422 => {}
            Err(e) => return Err(self.fail("setting its template", e)),
        }
        let mut attempts = 0;
        loop {
            let mut d = self.read_deployment().await?;
            if let Some(a) = d.metadata.annotations.as_mut() {
                a.remove(REPLICAS_ANNOTATION);
                a.remove(HPA_ANNOTATION);
                a.remove(PAUSED_ANNOTATION);
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
    pub(super) async fn give(
        &self,
        rs: &ReplicaSet,
        owner: OwnerReference,
        lend: bool,
    ) -> Result<()> {
        let mark = lend.then_some("true");
        self.give_annotated(rs, owner, serde_json::json!({LENT_ANNOTATION: mark}))
            .await
    }

    /// Gives `rs` to a new controlling owner with `annotations` merged (a null removes one), in
    /// one write.
    pub(super) async fn give_annotated(
        &self,
        rs: &ReplicaSet,
        owner: OwnerReference,
        annotations: serde_json::Value,
    ) -> Result<()> {
        let patch = Patch::Merge(serde_json::json!({"metadata": {
            "ownerReferences": [owner],
            "annotations": annotations,
        }}));
        let (pp, name) = (params(), rs.name_any());
        self.reach
            .call(|| self.replica_sets.patch(&name, &pp, &patch))
            .await
            .map(drop)
            .map_err(|e| self.fail(&format!("handing over ReplicaSet {}", rs.name_any()), e))
    }

    pub(super) fn holder_ref(&self, cm: &ConfigMap) -> OwnerReference {
        owner_ref(
            "ConfigMap",
            "v1",
            &self.holder_name(),
            cm.metadata.uid.as_deref().unwrap_or_default(),
        )
    }

    pub(super) fn deployment_ref(&self, view: &View) -> OwnerReference {
        owner_ref("Deployment", "apps/v1", self.name(), &view.uid)
    }

    /// Hands the held ReplicaSet of `version` (now at N) to the Deployment; see the module docs.
    pub(super) async fn hand_over(&self, version: &str, n: u32, deadline: Duration) -> Result<()> {
        // The watch's copy, which the last step just saw at N (three reads fewer); the API
        // server's when the watch does not show the held ReplicaSet.
        let view = match self.watched_view().await? {
            Some(v) if v.held(version, self.container()).is_some() => v,
            _ => self.view().await?,
        };
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
            .set_template(template, n, &view.deployment)
            .await?
            .metadata
            .generation;
        // 3. The new ReplicaSet first (the only active one, already at N), then the rest.
        //    Each with the annotations the controller would leave at N (see `settled`).
        let dref = self.deployment_ref(&view);
        let settled = settled(&view.deployment, n);
        self.give_annotated(&new, dref.clone(), settled.clone())
            .await?;
        futures_util::future::try_join_all(
            held.iter()
                .map(|rs| self.give_annotated(rs, dref.clone(), settled.clone())),
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
        // A Deployment paused before the rollout stays paused (as `set_template` left it).
        let paused = view
            .deployment
            .annotations()
            .contains_key(PAUSED_ANNOTATION);
        let (unpaused, ()) = futures_util::try_join!(
            self.patch_deployment(serde_json::json!({"spec": {"paused": paused}})),
            self.delete_holder(),
        )?;
        if self.blue_green {
            // One ReplicaSet is left: the Services select the app's pods as the user wrote them.
            self.unpin_both().await?;
        }
        self.wait_rolled_out(n, unpaused.metadata.generation, deadline)
            .await
    }

    /// Deletes the holder ConfigMap; one already gone is fine (a retried delete, or a rollback
    /// after someone else deleted it).
    pub(super) async fn delete_holder(&self) -> Result<()> {
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
}

/// The JSON patch that gives `d` exactly `template`, `replicas` and `paused: true`, and removes
/// the rollout's annotations `d` has (`add` replaces a member that exists).
fn template_patch(d: &Deployment, template: &PodTemplateSpec, replicas: u32) -> Patch<()> {
    let pointer = |key: &str| {
        format!(
            "/metadata/annotations/{}",
            key.replace('~', "~0").replace('/', "~1")
        )
    };
    let mut ops = vec![
        serde_json::json!({"op": "add", "path": "/spec/template", "value": template}),
        serde_json::json!({"op": "add", "path": "/spec/replicas", "value": replicas}),
        serde_json::json!({"op": "add", "path": "/spec/paused", "value": true}),
    ];
    for key in [REPLICAS_ANNOTATION, HPA_ANNOTATION, PAUSED_ANNOTATION] {
        if d.annotations().contains_key(key) {
            ops.push(serde_json::json!({"op": "remove", "path": pointer(key)}));
        }
    }
    Patch::Json(
        serde_json::from_value(serde_json::Value::Array(ops)).expect("a JSON patch's operations"),
    )
}

/// Why `spec.target.kubernetes` cannot name the container its `image:` replaces in `t` (the field
/// and the reason, naming the containers there are), if it cannot: pure, for `validate` and `plan`
/// on the live template. Native sidecars (init containers that keep running) can be named.
pub fn container_problem(
    k: &KubernetesTarget,
    t: &PodTemplateSpec,
) -> Option<(&'static str, String)> {
    k.image.as_ref()?;
    let spec = t.spec.as_ref()?;
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"))
        .map(|c| c.name.as_str());
    match k.container.as_deref() {
        Some(name) if names.iter().copied().chain(sidecars).any(|c| c == name) => None,
        Some(name) => Some((
            "spec.target.kubernetes.container",
            format!("no container {name} (it has: {})", names.join(", ")),
        )),
        None if names.len() <= 1 => None,
        None => Some((
            "spec.target.kubernetes.image",
            format!(
                "the pod has several containers ({}): name the one to update with container:",
                names.join(", ")
            ),
        )),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_surge_resolves_as_the_deployment_controller_does() {
        let d = |strategy: &str| -> Deployment {
            serde_yaml::from_str(&format!(
                "metadata: {{name: web}}\nspec: {{selector: {{}}, template: {{}}, strategy: {strategy}}}"
            ))
            .unwrap()
        };
        assert_eq!(max_surge(&d("{rollingUpdate: {maxSurge: 2}}"), 8), 2);
        assert_eq!(max_surge(&d("{rollingUpdate: {maxSurge: \"25%\"}}"), 6), 2);
        assert_eq!(max_surge(&d("{}"), 3), 1);
        assert_eq!(max_surge(&d("{type: Recreate}"), 3), 0);
        assert_eq!(
            max_unavailable(&d("{rollingUpdate: {maxUnavailable: \"25%\"}}"), 6),
            1
        );
        assert_eq!(max_unavailable(&d("{}"), 3), 0);
        assert_eq!(
            max_unavailable(&d("{rollingUpdate: {maxUnavailable: 2}}"), 8),
            2
        );
        let s = settled(&d("{rollingUpdate: {maxSurge: 1}}"), 3);
        assert_eq!(s[DESIRED_REPLICAS], "3");
        assert_eq!(s[MAX_REPLICAS], "4");
        assert!(s[REPLICAS_ANNOTATION].is_null());
    }

    #[test]
    fn the_template_patch_sets_exactly_the_new_template_and_leaves_the_rest() {
        let paused: Deployment = serde_yaml::from_str(
            "metadata: {name: web, labels: {team: a}, annotations: {rollgate.dev/replicas: \"4\", owner: x}}
spec:
  replicas: 3
  paused: true
  minReadySeconds: 5
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web, stale: yes}}
    spec: {containers: [{name: web, image: r/web:1, env: [{name: OLD, value: \"1\"}]}]}
status: {replicas: 7, observedGeneration: 9}",
        )
        .unwrap();
        let template: PodTemplateSpec = serde_yaml::from_str(
            "metadata: {labels: {app: web}}\nspec: {containers: [{name: web, image: r/web:2}]}",
        )
        .unwrap();
        let Patch::Json(patch) = template_patch(&paused, &template, 4) else {
            panic!("not a JSON patch");
        };
        let mut doc = serde_json::to_value(&paused).unwrap();
        json_patch::patch(&mut doc, &patch).unwrap();
        let after: Deployment = serde_json::from_value(doc).unwrap();
        let spec = after.spec.as_ref().unwrap();
        // Exactly the new template: the label and env var only the old one had are gone.
        assert_eq!(spec.template, template);
        assert_eq!(spec.replicas, Some(4));
        assert_eq!(spec.paused, Some(true));
        // The rollout's annotation goes; everything else is as it was.
        let annotations = after.metadata.annotations.clone().unwrap();
        assert!(!annotations.contains_key(REPLICAS_ANNOTATION));
        assert_eq!(annotations["owner"], "x");
        assert_eq!(after.metadata.labels, paused.metadata.labels);
        assert_eq!(spec.min_ready_seconds, Some(5));
        assert_eq!(after.status, paused.status);
        // A copy without the annotations removes none (a remove of a missing one is refused).
        let mut bare = paused.clone();
        bare.metadata.annotations = None;
        let Patch::Json(patch) = template_patch(&bare, &template, 4) else {
            panic!("not a JSON patch");
        };
        let mut doc = serde_json::to_value(&bare).unwrap();
        json_patch::patch(&mut doc, &patch).unwrap();
    }
}
