//! `strategy.canary.trafficRouting` and `setCanaryScale`: a canary split by traffic weight through
//! a router (a Gateway API HTTPRoute, or the hosts' `trafficSwitch` hook), and their validation.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{CanarySpec, InputError, Sources, TargetSpec};

/// Exactly one router.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct TrafficRouting {
    /// Kubernetes: the weights of one or several HTTPRoutes' backendRefs.
    #[serde(
        default,
        rename = "gatewayAPI",
        alias = "gatewayApi",
        skip_serializing_if = "Option::is_none"
    )]
    pub gateway_api: Option<GatewayApi>,
    /// Hosts: `spec.target.hosts.trafficSwitch` is called at every weight with the weights per
    /// version and the instances of each (README "Traffic-weighted canary").
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub traffic_switch: bool,
}

/// Gateway API routes in the Deployment's namespace whose backendRefs name both Services.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GatewayApi {
    /// One HTTPRoute, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_route: Option<String>,
    /// Several HTTPRoutes, by name (with or instead of `httpRoute`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_routes: Vec<String>,
    /// The Service the stable version's weight goes to: pinned to the stable pods during a rollout.
    pub stable_service: String,
    /// The Service the canary's weight goes to: pinned to the canary pods during a rollout.
    pub canary_service: String,
}

impl GatewayApi {
    /// Every route named, `httpRoute` first, each once.
    pub fn routes(&self) -> Vec<String> {
        let mut out: Vec<String> = self.http_route.iter().cloned().collect();
        for r in &self.http_routes {
            if !out.contains(r) {
                out.push(r.clone());
            }
        }
        out
    }
}

/// How many canary instances run, independent of the weight. Exactly one field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct CanaryScale {
    /// A fixed count of canary instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// A percentage of N, rounded up (Argo's `weight`; `percent` is accepted too).
    #[serde(default, alias = "percent", skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Back to the default: canary instances follow the traffic weight.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub match_traffic_weight: bool,
}

/// A validated scale: what the planner reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    MatchTrafficWeight,
    Replicas(u32),
    Percent(u32),
}

impl CanaryScale {
    pub fn scale(&self) -> Scale {
        match (self.replicas, self.weight) {
            (Some(r), _) => Scale::Replicas(r),
            (None, Some(p)) => Scale::Percent(p),
            (None, None) => Scale::MatchTrafficWeight,
        }
    }
}

/// Checks `trafficRouting` and `setCanaryScale` steps of a canary against its target; `at` makes
/// a field path (`canary.trafficRouting` -> `spec.strategy.canary.trafficRouting`).
pub(super) fn check(
    c: &CanarySpec,
    target: &TargetSpec,
    s: &Sources,
    at: &dyn Fn(&str) -> String,
) -> Result<(), InputError> {
    for (i, step) in c.steps.iter().enumerate() {
        let Some(scale) = &step.set_canary_scale else {
            continue;
        };
        let path = at(&format!("canary.steps[{i}].setCanaryScale"));
        if c.traffic_routing.is_none() {
            return Err(s.error(
                &path,
                "needs canary.trafficRouting: without a router the canary's instances are its weight",
            ));
        }
        let set = [
            scale.replicas.is_some(),
            scale.weight.is_some(),
            scale.match_traffic_weight,
        ];
        if set.iter().filter(|b| **b).count() != 1 {
            return Err(s.error(
                &path,
                "expected exactly one of replicas, weight (percent), matchTrafficWeight: true",
            ));
        }
        if let Some(p) = scale.weight
            && p > 100
        {
            return Err(s.error(
                &format!("{path}.weight"),
                format!("{p} is over 100: expected a percentage 0..=100"),
            ));
        }
    }
    let Some(t) = &c.traffic_routing else {
        return Ok(());
    };
    let path = at("canary.trafficRouting");
    match (&t.gateway_api, t.traffic_switch, target) {
        (Some(_), true, _) | (None, false, _) => Err(s.error(
            &path,
            "expected exactly one of gatewayAPI (kubernetes) or trafficSwitch: true (hosts)",
        )),
        (Some(g), false, TargetSpec::Kubernetes(_)) => {
            let gpath = format!("{path}.gatewayAPI");
            if g.routes().is_empty() {
                return Err(s.error(
                    &gpath,
                    "names no route: expected httpRoute: NAME or httpRoutes: [NAME, ...]",
                ));
            }
            for (field, name) in [
                ("stableService", &g.stable_service),
                ("canaryService", &g.canary_service),
            ] {
                if name.is_empty() {
                    return Err(s.error(
                        &format!("{gpath}.{field}"),
                        "is empty: expected a Service name",
                    ));
                }
            }
            if g.stable_service == g.canary_service {
                return Err(s.error(
                    &format!("{gpath}.canaryService"),
                    "is the stableService: expected two Services (one pinned to each version)",
                ));
            }
            Ok(())
        }
        (Some(_), false, TargetSpec::Hosts(_)) => Err(s.error(
            &format!("{path}.gatewayAPI"),
            "needs a kubernetes target: on hosts use trafficSwitch: true with spec.target.hosts.trafficSwitch",
        )),
        (None, true, TargetSpec::Hosts(h)) if h.traffic_switch.is_none() => Err(s.error(
            &format!("{path}.trafficSwitch"),
            "needs spec.target.hosts.trafficSwitch (a command or webhook that sets the weights)",
        )),
        (None, true, TargetSpec::Hosts(_)) => Ok(()),
        (None, true, TargetSpec::Kubernetes(_)) => Err(s.error(
            &format!("{path}.trafficSwitch"),
            "needs a hosts target: on kubernetes use gatewayAPI",
        )),
    }
}

#[cfg(test)]
mod tests {
    use crate::spec::Manifest;

    fn load(target: &str, canary: &str) -> Result<Manifest, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.yaml");
        std::fs::write(
            &path,
            format!(
                "apiVersion: rollgate.dev/v1\nkind: Rollout\nmetadata: {{name: web}}\nspec:\n  version: \"2\"\n  target:\n{target}  strategy:\n    canary:\n      maxUnavailable: 1\n{canary}"
            ),
        )
        .unwrap();
        Manifest::load(&[path], None).map_err(|e| e.to_string())
    }

    const KUBE: &str = "    kubernetes: {deployment: web, image: \"web:2\"}\n";
    const HOSTS: &str = "    hosts:\n      hosts: [{name: h1, address: \"127.0.0.1:7443\"}, {name: h2, address: \"127.0.0.1:7444\"}]\n";

    #[test]
    fn gateway_api_needs_a_kubernetes_target_a_route_and_two_services() {
        let ok = "      trafficRouting: {gatewayAPI: {httpRoute: web, stableService: a, canaryService: b}}\n      steps: [{setWeight: 5}]\n";
        load(KUBE, ok).unwrap();
        let err = load(HOSTS, ok).unwrap_err();
        assert!(
            err.contains("trafficRouting.gatewayAPI") && err.contains("kubernetes"),
            "{err}"
        );
        let err = load(KUBE, "      trafficRouting: {gatewayAPI: {stableService: a, canaryService: b}}\n      steps: [{setWeight: 5}]\n").unwrap_err();
        assert!(err.contains("names no route"), "{err}");
        let err = load(KUBE, "      trafficRouting: {gatewayAPI: {httpRoute: web, stableService: a, canaryService: a}}\n      steps: [{setWeight: 5}]\n").unwrap_err();
        assert!(
            err.contains("canaryService") && err.contains("m.yaml:"),
            "{err}"
        );
    }

    #[test]
    fn traffic_switch_needs_the_hosts_hook_and_a_scale_needs_a_router() {
        let err = load(
            HOSTS,
            "      trafficRouting: {trafficSwitch: true}\n      steps: [{setWeight: 5}]\n",
        )
        .unwrap_err();
        assert!(err.contains("spec.target.hosts.trafficSwitch"), "{err}");
        let hooked = format!("{HOSTS}      trafficSwitch: {{command: [/bin/true]}}\n");
        load(&hooked, "      trafficRouting: {trafficSwitch: true}\n      steps: [{setCanaryScale: {replicas: 1}}, {setWeight: 5}]\n").unwrap();
        let err = load(
            KUBE,
            "      steps: [{setCanaryScale: {replicas: 1}}, {setWeight: 5}]\n",
        )
        .unwrap_err();
        assert!(
            err.contains("steps[0].setCanaryScale") && err.contains("needs canary.trafficRouting"),
            "{err}"
        );
        let err = load(&hooked, "      trafficRouting: {trafficSwitch: true}\n      steps: [{setCanaryScale: {replicas: 1, weight: 5}}]\n").unwrap_err();
        assert!(err.contains("exactly one of replicas"), "{err}");
    }
}
