//! Access: whether the kubeconfig's user may do what a rollout does, asked before anything changes.

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, ResourceRule, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    SelfSubjectRulesReview, SelfSubjectRulesReviewSpec,
};
use kube::Api;
use kube::api::PostParams;

use super::Kubernetes;
use crate::target::Result;

/// How long a granted review stands for this process.
const GRANTED_FOR: std::time::Duration = std::time::Duration::from_secs(10);

fn granted_reviews() -> &'static std::sync::Mutex<Vec<(String, std::time::Instant)>> {
    static GRANTED: std::sync::Mutex<Vec<(String, std::time::Instant)>> =
        std::sync::Mutex::new(Vec::new());
    &GRANTED
}

fn recently_granted(key: &str) -> bool {
    let mut all = granted_reviews().lock().expect("access cache lock");
    all.retain(|(_, at)| at.elapsed() < GRANTED_FOR);
    all.iter().any(|(k, _)| k == key)
}

fn remember_granted(key: String) {
    let mut all = granted_reviews().lock().expect("access cache lock");
    all.push((key, std::time::Instant::now()));
}

impl Kubernetes {
    /// Asks the API server whether the kubeconfig's user may do everything a rollout does, and
    /// names each verb it may not: one SelfSubjectRulesReview (which any user may make) for the
    /// namespace's rules, then one SelfSubjectAccessReview for each verb those rules do not grant
    /// (the rules review may be incomplete, as with a webhook authorizer: the access review is the
    /// authority).
    pub(super) async fn check_access(&self) -> Result<()> {
        let ns = &self.spec.namespace;
        let required = required_access_routed(
            self.blue_green,
            self.pod_prober.is_some(),
            self.gateway.is_some(),
        );
        // A command that makes a second target for the same Deployment (`rollback`: the last
        // rollout's and its own) asks once.
        let key = format!("{ns} {required:?}");
        if recently_granted(&key) {
            return Ok(());
        }
        self.review_access(ns, required).await?;
        remember_granted(key);
        Ok(())
    }

    async fn review_access(
        &self,
        ns: &String,
        required: Vec<(&'static str, &'static str, &'static str)>,
    ) -> Result<()> {
        let client = self.deployments.clone().into_client();
        let rules: Api<SelfSubjectRulesReview> = Api::all(client.clone());
        let review = SelfSubjectRulesReview {
            spec: SelfSubjectRulesReviewSpec {
                namespace: Some(ns.clone()),
            },
            ..SelfSubjectRulesReview::default()
        };
        let granted_by_rules = match rules.create(&PostParams::default(), &review).await {
            Ok(r) => r.status.map(|s| s.resource_rules).unwrap_or_default(),
            // A server that answers no rules review: every verb is asked about on its own.
            Err(_) => Vec::new(),
        };
        let reviews: Api<SelfSubjectAccessReview> = Api::all(client);
        let asks = required
            .into_iter()
            .filter(|(group, resource, verb)| !granted(&granted_by_rules, group, resource, verb))
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

/// Whether `rules` (a rules review's) grant `verb` on `resource` (`pods/proxy` for a
/// subresource) of API group `group`, as RBAC matches them: `*` for any group, resource or verb,
/// `*/proxy` for a subresource of any resource. A rule limited to some resourceNames is not
/// counted (a rollout also lists, watches and creates). Pure.
fn granted(rules: &[ResourceRule], group: &str, resource: &str, verb: &str) -> bool {
    let sub = resource.split_once('/').map(|(_, sub)| sub);
    rules.iter().any(|r| {
        let any_of = |list: &Option<Vec<String>>, want: &str| {
            list.iter().flatten().any(|x| x == "*" || x == want)
        };
        r.resource_names.as_ref().is_none_or(Vec::is_empty)
            && r.verbs.iter().any(|v| v == "*" || v == verb)
            && any_of(&r.api_groups, group)
            && r.resources.iter().flatten().any(|x| {
                x == "*"
                    || x == resource
                    || sub.is_some_and(|sub| x.strip_prefix("*/") == Some(sub))
            })
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(groups: &[&str], resources: &[&str], verbs: &[&str], names: &[&str]) -> ResourceRule {
        let list = |x: &[&str]| Some(x.iter().map(|s| s.to_string()).collect());
        ResourceRule {
            api_groups: list(groups),
            resources: list(resources),
            verbs: verbs.iter().map(|s| s.to_string()).collect(),
            resource_names: if names.is_empty() { None } else { list(names) },
        }
    }

    #[test]
    fn rules_grant_as_rbac_matches_them() {
        let role = [
            rule(
                &["apps"],
                &["deployments", "replicasets"],
                &["get", "patch"],
                &[],
            ),
            rule(&[""], &["pods"], &["*"], &[]),
            rule(&[""], &["configmaps"], &["get"], &["rollgate-web"]),
            rule(&["*"], &["*/proxy"], &["get"], &[]),
        ];
        assert!(granted(&role, "apps", "replicasets", "patch"));
        assert!(!granted(&role, "apps", "replicasets", "delete"), "verb");
        assert!(!granted(&role, "", "deployments", "get"), "group");
        assert!(granted(&role, "", "pods", "watch"), "any verb");
        assert!(
            granted(&role, "", "pods/proxy", "get"),
            "any resource's subresource"
        );
        assert!(!granted(&role, "", "pods/proxy", "create"));
        assert!(
            !granted(&role, "", "configmaps", "get"),
            "a rule for some names only is asked about on its own"
        );
        let pods_only = [rule(&[""], &["pods"], &["get"], &[])];
        assert!(
            !granted(&pods_only, "", "pods/proxy", "get"),
            "a resource is not its subresource"
        );
        let admin = [rule(&["*"], &["*"], &["*"], &[])];
        assert!(
            required_access_routed(true, true, true)
                .iter()
                .all(|(g, r, v)| granted(&admin, g, r, v))
        );
        assert!(!granted(&[], "", "pods", "get"));
    }
}
