//! Gone: the Deployment deleted by someone else mid-rollout. Its own ReplicaSets go with it
//! (garbage collection); what rollgate made for it (the held ReplicaSet and its pods, the holder
//! ConfigMap) is deleted too, and the reason is one line.

use k8s_openapi::api::apps::v1::ReplicaSet;
use kube::ResourceExt;
use kube::api::{DeleteParams, ListParams};

use super::Kubernetes;
use crate::target::{Result, TargetError};

impl Kubernetes {
    /// Whether the Deployment no longer exists (or is being deleted), as the API server says now.
    pub(super) async fn deployment_deleted(&self) -> Result<bool> {
        let name = self.name().to_string();
        let d = self
            .reach
            .call(|| self.deployments.get_opt(&name))
            .await
            .map_err(|e| self.fail("reading it", e))?;
        Ok(d.is_none_or(|d| d.metadata.deletion_timestamp.is_some()))
    }

    /// Whether a rollout of rollgate's left its holder ConfigMap here.
    pub(super) async fn rollout_made(&self) -> Result<bool> {
        let holder = self.holder_name();
        self.reach
            .call(|| self.config_maps.get_opt(&holder))
            .await
            .map(|cm| cm.is_some())
            .map_err(|e| self.fail("reading the rollout holder", e))
    }

    /// The failure of a rollout whose Deployment was deleted: what rollgate made for it is
    /// deleted first, and the reason says so in one line.
    pub(super) async fn deployment_gone(&self) -> TargetError {
        let ns = &self.spec.namespace;
        let deleted = format!(
            "deployment {ns}/{} was deleted by someone else (not rollgate) during the rollout",
            self.name()
        );
        match self.remove_made().await {
            Ok(made) if made.is_empty() => {
                TargetError::Gone(format!("{deleted}; nothing of rollgate's was left"))
            }
            Ok(made) => TargetError::Gone(format!(
                "{deleted}; rollgate deleted what it had made for it: {}",
                made.join(", ")
            )),
            Err(e) => TargetError::Gone(format!(
                "{deleted}; deleting what rollgate had made for it failed: {}",
                crate::error_chain(&e)
            )),
        }
    }

    /// Deletes the ReplicaSets the holder ConfigMap controls (their pods go by garbage
    /// collection) and the holder; returns what it deleted, in words.
    async fn remove_made(&self) -> Result<Vec<String>> {
        let holder = self.holder_name();
        let cm = self
            .reach
            .call(|| self.config_maps.get_opt(&holder))
            .await
            .map_err(|e| self.fail("reading the rollout holder", e))?;
        let mut made = Vec::new();
        let Some(cm) = cm else {
            return Ok(made);
        };
        let uid = cm.metadata.uid.clone().unwrap_or_default();
        let lp = match self.selector.get() {
            Some(selector) => ListParams::default().labels_from(selector),
            None => ListParams::default(),
        };
        let sets = self
            .reach
            .call(|| self.replica_sets.list(&lp))
            .await
            .map_err(|e| self.fail("listing ReplicaSets", e))?;
        let held = |rs: &&ReplicaSet| {
            rs.owner_references()
                .iter()
                .any(|o| o.controller == Some(true) && o.uid == uid)
        };
        let dp = DeleteParams::background();
        for rs in sets.items.iter().filter(held) {
            let name = rs.name_any();
            match self
                .reach
                .call(|| self.replica_sets.delete(&name, &dp))
                .await
            {
                Ok(_) => made.push(format!("ReplicaSet {name} and its pods")),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(self.fail(&format!("deleting ReplicaSet {name}"), e)),
            }
        }
        self.delete_holder().await?;
        made.push(format!("ConfigMap {holder}"));
        Ok(made)
    }
}
