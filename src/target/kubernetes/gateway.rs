//! A traffic-weighted canary through the Gateway API: the weights of HTTPRoutes' backendRefs
//! between a stable and a canary Service, each pinned to its version's pods by pod-template-hash
//! during a rollout and unpinned at rest.

use k8s_openapi::api::apps::v1::ReplicaSet;
use kube::ResourceExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch};

use super::reach::params as patch_params;

use super::view::replicas;
use super::{HASH_LABEL, Kubernetes};
use crate::plan::Step;
use crate::spec::GatewayApi;
use crate::target::{Result, Sink, TargetError};

/// The Gateway API's HTTPRoute, as the standard channel serves it.
pub fn http_route_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        "httproutes",
    )
}

/// The canary's share of an HTTPRoute, in percent, from its backendRefs' weights (a backendRef
/// without a weight weighs 1, as the Gateway API says). `None` when the route names neither.
pub fn canary_share(route: &serde_json::Value, g: &GatewayApi) -> Option<u32> {
    let (mut stable, mut canary, mut found) = (0u64, 0u64, false);
    for rule in route["spec"]["rules"].as_array().into_iter().flatten() {
        for backend in rule["backendRefs"].as_array().into_iter().flatten() {
            let weight = backend["weight"].as_u64().unwrap_or(1);
            match backend["name"].as_str() {
                Some(n) if n == g.canary_service => (canary, found) = (canary + weight, true),
                Some(n) if n == g.stable_service => (stable, found) = (stable + weight, true),
                _ => {}
            }
        }
    }
    match (found, stable + canary) {
        (false, _) => None,
        (true, 0) => Some(0),
        (true, total) => Some((canary * 100 / total) as u32),
    }
}

/// Sets the weights of `route` (every rule's backendRefs naming either Service): `canary` to the
/// canary Service, 100 − `canary` to the stable one, as Argo's Gateway API plugin does. An error
/// names what the route lacks.
pub fn with_weights(
    route: &mut serde_json::Value,
    g: &GatewayApi,
    canary: u32,
) -> std::result::Result<(), String> {
    let (mut has_stable, mut has_canary) = (false, false);
    for rule in route["spec"]["rules"].as_array_mut().into_iter().flatten() {
        for backend in rule["backendRefs"].as_array_mut().into_iter().flatten() {
            let weight = match backend["name"].as_str() {
                Some(n) if n == g.canary_service => {
                    has_canary = true;
                    canary
                }
                Some(n) if n == g.stable_service => {
                    has_stable = true;
                    100 - canary
                }
                _ => continue,
            };
            backend["weight"] = weight.into();
        }
    }
    match (has_stable, has_canary) {
        (true, true) => Ok(()),
        (s, _) => Err(format!(
            "has no backendRef naming Service {:?}: each route must name both stableService and canaryService",
            if s {
                &g.canary_service
            } else {
                &g.stable_service
            }
        )),
    }
}

impl Kubernetes {
    fn http_routes(&self) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.deployments.clone().into_client(),
            self.namespace(),
            &http_route_resource(),
        )
    }

    /// The canary's share now, read from the first route: what the router sends it.
    pub(super) async fn canary_weight(&self) -> Result<Option<u32>> {
        let Some(g) = &self.gateway else {
            return Ok(None);
        };
        let Some(name) = g.routes().into_iter().next() else {
            return Ok(None);
        };
        let api = self.http_routes();
        let route = self
            .reach
            .call(|| api.get(&name))
            .await
            .map_err(|e| self.fail(&format!("reading HTTPRoute {name}"), e))?;
        Ok(canary_share(
            &serde_json::to_value(&route).unwrap_or_default(),
            g,
        ))
    }

    /// Every route's canary share now (`None`: a route that names neither Service), for `status`.
    pub async fn route_weights(&self) -> Result<Vec<(String, Option<u32>)>> {
        let Some(g) = &self.gateway else {
            return Ok(Vec::new());
        };
        let api = self.http_routes();
        let mut out = Vec::new();
        for name in g.routes() {
            let route = self
                .reach
                .call(|| api.get(&name))
                .await
                .map_err(|e| self.fail(&format!("reading HTTPRoute {name}"), e))?;
            let value = serde_json::to_value(&route).unwrap_or_default();
            out.push((name, canary_share(&value, g)));
        }
        Ok(out)
    }

    /// Writes `canary` percent to every route (a merge patch of its rules at the resourceVersion
    /// read, read again on a conflict). The journal has it already: the step that sets it is journaled as started.
    pub(super) async fn set_weights(&self, canary: u32) -> Result<()> {
        let Some(g) = &self.gateway else {
            return Ok(());
        };
        let api = self.http_routes();
        for name in g.routes() {
            let mut tries = 0;
            loop {
                let route = self
                    .reach
                    .call(|| api.get(&name))
                    .await
                    .map_err(|e| self.fail(&format!("reading HTTPRoute {name}"), e))?;
                let mut value = serde_json::to_value(&route).unwrap_or_default();
                with_weights(&mut value, g, canary)
                    .map_err(|why| TargetError::Failed(format!("HTTPRoute {name} {why}")))?;
                // The rules whole, at the resourceVersion read: a change in between is a conflict.
                let patch = Patch::Merge(serde_json::json!({
                    "metadata": {"resourceVersion": route.resource_version()},
                    "spec": {"rules": value["spec"]["rules"]},
                }));
                let pp = patch_params();
                match self.reach.call(|| api.patch(&name, &pp, &patch)).await {
                    Ok(_) => break,
                    Err(kube::Error::Api(s)) if s.code == 409 && tries < 5 => tries += 1,
                    Err(e) => return Err(self.fail(&format!("weighting HTTPRoute {name}"), e)),
                }
            }
        }
        Ok(())
    }

    /// Before anything changes: both Services exist (a weight to a Service that is not there
    /// sends traffic nowhere) and every route names both.
    pub(super) async fn check_routes(&self) -> Result<()> {
        let Some(g) = &self.gateway else {
            return Ok(());
        };
        let api = self.http_routes();
        for name in g.routes() {
            let route = self
                .reach
                .call(|| api.get_opt(&name))
                .await
                .map_err(|e| self.fail(&format!("reading HTTPRoute {name}"), e))?
                .ok_or_else(|| {
                    TargetError::Failed(format!(
                        "HTTPRoute {name} (strategy.canary.trafficRouting.gatewayAPI) not found in namespace {}; nothing was changed",
                        self.namespace()
                    ))
                })?;
            let mut value = serde_json::to_value(&route).unwrap_or_default();
            with_weights(&mut value, g, 0).map_err(|why| {
                TargetError::Failed(format!("HTTPRoute {name} {why}; nothing was changed"))
            })?;
        }
        for service in [&g.stable_service, &g.canary_service] {
            let found = self
                .reach
                .call(|| self.services.get_opt(service))
                .await
                .map_err(|e| self.fail(&format!("reading Service {service}"), e))?;
            if found.is_none() {
                return Err(TargetError::Failed(format!(
                    "Service {service} (strategy.canary.trafficRouting.gatewayAPI) not found in namespace {}; nothing was changed",
                    self.namespace()
                )));
            }
        }
        Ok(())
    }

    /// Pins the stable Service to the stable pods and the canary Service to `version`'s.
    pub(super) async fn pin_canary(&self, version: &str) -> Result<()> {
        let Some(g) = &self.gateway else {
            return Ok(());
        };
        let view = self.view().await?;
        let hash = |rs: &ReplicaSet| rs.labels().get(HASH_LABEL).cloned();
        let stable = view.stable().find(|rs| replicas(rs) > 0).and_then(hash);
        let new = view.held(version, self.container()).and_then(hash);
        if let (Some(stable), Some(new)) = (stable, new) {
            if self.pinned(&g.stable_service).await?.is_none() {
                self.pin(&g.stable_service, Some(&stable)).await?;
            }
            self.pin(&g.canary_service, Some(&new)).await?;
        }
        Ok(())
    }

    /// At rest: all traffic to the stable Service, then both Services select every pod again.
    pub(super) async fn unpin_canary(&self) -> Result<()> {
        let Some(g) = &self.gateway else {
            return Ok(());
        };
        self.pin(&g.stable_service, None).await?;
        self.set_weights(0).await?;
        self.pin(&g.canary_service, None).await
    }

    /// A step with a router: the weight before the instances when it lowers the canary's share or
    /// leaves no stable instance, after them otherwise; at the end of the rollout, back to rest.
    pub(super) async fn scale_routed(
        &self,
        step: &Step,
        version: &str,
        end: crate::plan::StepEnd,
        deadline: std::time::Duration,
        sink: Sink<'_>,
    ) -> Result<()> {
        if self.gateway.is_none() {
            return self.scale_step(step, version, end, deadline, sink).await;
        }
        let first = match step.traffic_weight {
            Some(_) => step.traffic_first(self.canary_weight().await?.unwrap_or(0)),
            None => false,
        };
        if let Some(w) = step.traffic_weight.filter(|_| first) {
            self.set_weights(w).await?;
        }
        self.scale_step(step, version, end, deadline, sink).await?;
        if step.old == 0 {
            // Everything is new and handed over: both Services may select every pod again.
            return self.unpin_canary().await;
        }
        if let Some(w) = step.traffic_weight.filter(|_| !first) {
            self.set_weights(w).await?;
        }
        Ok(())
    }

    /// The way back: all traffic to the stable Service first, then the pods, then rest.
    pub(super) async fn restore_routed(
        &self,
        version: &str,
        deadline: std::time::Duration,
        sink: Sink<'_>,
    ) -> Result<()> {
        if self.gateway.is_none() {
            return self.restore_stable(version, deadline, sink).await;
        }
        self.set_weights(0).await?;
        self.restore_stable(version, deadline, sink).await?;
        self.unpin_canary().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route() -> serde_json::Value {
        serde_json::json!({"spec": {"rules": [
            {"backendRefs": [{"name": "web-stable", "port": 80}, {"name": "web-canary", "port": 80, "weight": 0}]},
            {"backendRefs": [{"name": "other", "port": 80, "weight": 7}]}
        ]}})
    }

    fn gateway() -> GatewayApi {
        GatewayApi {
            http_route: Some("web".into()),
            http_routes: Vec::new(),
            stable_service: "web-stable".into(),
            canary_service: "web-canary".into(),
        }
    }

    #[test]
    fn weights_go_to_both_services_and_nothing_else() {
        let mut r = route();
        assert_eq!(canary_share(&r, &gateway()), Some(0));
        with_weights(&mut r, &gateway(), 10).unwrap();
        let refs = &r["spec"]["rules"][0]["backendRefs"];
        assert_eq!(refs[0]["weight"], 90);
        assert_eq!(refs[1]["weight"], 10);
        assert_eq!(r["spec"]["rules"][1]["backendRefs"][0]["weight"], 7);
        assert_eq!(canary_share(&r, &gateway()), Some(10));
    }

    #[test]
    fn a_route_without_the_canary_service_is_refused() {
        let mut r =
            serde_json::json!({"spec": {"rules": [{"backendRefs": [{"name": "web-stable"}]}]}});
        let err = with_weights(&mut r, &gateway(), 10).unwrap_err();
        assert!(err.contains("\"web-canary\""), "{err}");
    }
}
