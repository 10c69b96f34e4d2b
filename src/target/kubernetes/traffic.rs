//! Traffic: blue-green's Services `<deployment>-active` and `<deployment>-preview`, pinned to one
//! ReplicaSet's pods by pod-template-hash (rolling and canary need no switch).

use k8s_openapi::api::apps::v1::ReplicaSet;
use kube::ResourceExt;
use kube::api::Patch;

use super::reach::params;
use super::view::{replicas, rs_version};
use super::{HASH_LABEL, Kubernetes};
use crate::target::{Result, TargetError};

impl Kubernetes {
    pub(super) fn active_service(&self) -> String {
        format!("{}-active", self.spec.deployment)
    }

    pub(super) fn preview_service(&self) -> String {
        format!("{}-preview", self.spec.deployment)
    }

    /// Points `service` at the pods of one ReplicaSet (its pod-template-hash), or at every pod of
    /// the app with `None`. One patch; a Service that does not exist is not an error.
    pub(super) async fn pin(&self, service: &str, hash: Option<&str>) -> Result<()> {
        let patch = Patch::Merge(serde_json::json!({"spec": {"selector": {HASH_LABEL: hash}}}));
        let pp = params();
        match self
            .reach
            .call(|| self.services.patch(service, &pp, &patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(self.fail(&format!("pointing Service {service}"), e)),
        }
    }

    pub(super) async fn pinned(&self, service: &str) -> Result<Option<String>> {
        let svc = self
            .reach
            .call(|| self.services.get_opt(service))
            .await
            .map_err(|e| self.fail(&format!("reading Service {service}"), e))?;
        Ok(svc
            .and_then(|s| s.spec?.selector)
            .and_then(|sel| sel.get(HASH_LABEL).cloned()))
    }

    /// Active stays on the stable pods, preview shows the new ones, each by its hash.
    pub(super) async fn pin_preview(&self, version: &str) -> Result<()> {
        let active = self.active_service();
        let (view, pinned) = futures_util::try_join!(self.view(), self.pinned(&active))?;
        let hash = |rs: &ReplicaSet| rs.labels().get(HASH_LABEL).cloned();
        let stable = view.stable().find(|rs| replicas(rs) > 0).and_then(hash);
        let new = view.held(version, self.container()).and_then(hash);
        if let (Some(stable), Some(new)) = (stable, new) {
            // Two Services, two patches at once.
            let pin_active = async {
                match pinned {
                    None => self.pin(&active, Some(&stable)).await,
                    Some(_) => Ok(()),
                }
            };
            let preview = self.preview_service();
            futures_util::try_join!(pin_active, self.pin(&preview, Some(&new)))?;
        }
        Ok(())
    }

    /// Both Services back to every pod of the app (at rest), in two patches at once.
    pub(super) async fn unpin_both(&self) -> Result<()> {
        let (active, preview) = (self.active_service(), self.preview_service());
        futures_util::try_join!(self.pin(&active, None), self.pin(&preview, None)).map(drop)
    }

    /// The blue-green switch: the active Service to the running ReplicaSet of `version`.
    pub(super) async fn switch_to(&self, version: &str) -> Result<()> {
        // Rolling and canary need no switch: a Service that selects the app spreads traffic by
        // replica ratio. Blue-green: one patch of the active Service's pod-template-hash.
        let view = self.view().await?;
        let Some(hash) = view
            .sets
            .iter()
            .filter(|rs| replicas(rs) > 0)
            .find(|rs| rs_version(rs, self.container()).as_deref() == Some(version))
            .and_then(|rs| rs.labels().get(HASH_LABEL).cloned())
        else {
            return Err(TargetError::Failed(format!(
                "no running ReplicaSet of {version} to switch to"
            )));
        };
        self.pin(&self.active_service(), Some(&hash)).await
    }
}
