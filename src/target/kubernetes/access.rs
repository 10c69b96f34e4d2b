//! Access: whether the kubeconfig's user may do what a rollout does, asked before anything changes.

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::Api;
use kube::api::PostParams;

use super::Kubernetes;
use crate::target::Result;

impl Kubernetes {
    /// Asks the API server (one SelfSubjectAccessReview per verb, which any user may make) whether
    /// the kubeconfig's user may do everything a rollout does, and names each verb it may not.
    pub(super) async fn check_access(&self) -> Result<()> {
        let reviews: Api<SelfSubjectAccessReview> =
            Api::all(self.deployments.clone().into_client());
        let ns = &self.spec.namespace;
        let asks = required_access_routed(
            self.blue_green,
            self.pod_prober.is_some(),
            self.gateway.is_some(),
        )
        .into_iter()
        .map(|(group, resource, verb)| {
            let reviews = reviews.clone();
            // `pods/proxy` is resource `pods`, subresource `proxy`.
            let (main, sub) = match resource.split_once('/') {
                Some((main, sub)) => (main, Some(sub.to_string())),
                None => (resource, None),
            };
            let review = SelfSubjectAccessReview {
                spec: SelfSubjectAccessReviewSpec {
                    resource_attributes: Some(ResourceAttributes {
                        group: Some(group.into()),
                        resource: Some(main.into()),
                        subresource: sub,
                        verb: Some(verb.into()),
                        namespace: Some(ns.clone()),
                        ..ResourceAttributes::default()
                    }),
                    ..SelfSubjectAccessReviewSpec::default()
                },
                ..SelfSubjectAccessReview::default()
            };
            async move {
                let answer = reviews.create(&PostParams::default(), &review).await;
                (group, resource, verb, answer)
            }
        });
        let mut denied = Vec::new();
        for (group, resource, verb, answer) in futures_util::future::join_all(asks).await {
            match answer {
                Ok(r) if r.status.as_ref().is_some_and(|s| !s.allowed) => {
                    let resource = if group.is_empty() {
                        resource.to_string()
                    } else {
                        format!("{resource}.{group}")
                    };
                    denied.push(format!("{verb} {resource}"));
                }
                Ok(_) => {}
                // A server that answers no reviews: the requests themselves will say what fails.
                Err(_) => return Ok(()),
            }
        }
        if denied.is_empty() {
            return Ok(());
        }
        Err(self.fail(
            "checking access",
            format!(
                "forbidden: the kubeconfig's user may not {} in namespace {ns}; nothing was changed (the Role rollgate needs is manifests/kubernetes/rbac.yaml)",
                denied.join(", ")
            ),
        ))
    }
}

/// What a rollout asks of the API server, as (API group, resource, verb). The Role in
/// `manifests/kubernetes/rbac.yaml` grants these; blue-green also points Services, and a
/// `runOn: host` check (`probes_pods`) reads pods through the API server's pod proxy.
pub fn required_access(
    blue_green: bool,
    probes_pods: bool,
) -> Vec<(&'static str, &'static str, &'static str)> {
    required_access_routed(blue_green, probes_pods, false)
}

/// [`required_access`], and with `gateway` (a canary with `trafficRouting.gatewayAPI`) the
/// HTTPRoutes it weights (get, and patch at the resourceVersion read) and the Services it pins.
pub fn required_access_routed(
    blue_green: bool,
    probes_pods: bool,
    gateway: bool,
) -> Vec<(&'static str, &'static str, &'static str)> {
    let mut out = Vec::new();
    let mut grant = |group: &'static str, resource: &'static str, verbs: &[&'static str]| {
        out.extend(verbs.iter().map(|verb| (group, resource, *verb)));
    };
    grant(
        "apps",
        "deployments",
        &["get", "list", "watch", "patch", "update"],
    );
    grant(
        "apps",
        "replicasets",
        &["get", "list", "watch", "create", "patch", "delete"],
    );
    grant("", "pods", &["get", "list", "watch"]);
    // The holder (get, create, delete) and the app's journal and controls `rollgate-<app>`
    // (get, create, update, and list + watch for control requests from other machines).
    grant(
        "",
        "configmaps",
        &["get", "list", "watch", "create", "update", "delete"],
    );
    // The app's lock: the Lease `rollgate-<app>`, renewed by update, released by delete.
    grant(
        "coordination.k8s.io",
        "leases",
        &["get", "create", "update", "delete"],
    );
    grant("autoscaling", "horizontalpodautoscalers", &["list"]);
    if blue_green || gateway {
        grant("", "services", &["get", "patch"]);
    }
    if gateway {
        grant("gateway.networking.k8s.io", "httproutes", &["get", "patch"]);
    }
    if probes_pods {
        grant("", "pods/proxy", &["get"]);
    }
    out
}
