//! `manifests/kubernetes/rbac.yaml` is enough and not much more: the real `rollgate` runs with a
//! kubeconfig holding only a token of that ServiceAccount (minted by the TokenRequest API), under
//! the API server's real RBAC, through a rolling, a canary and a blue-green rollout and a
//! `rollgate rollback`. The same account is refused what the Role does not grant, and a Role
//! missing any one verb a rollout needs makes rollgate stop before it changes anything, naming the
//! verb and the resource.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role};
use kube::api::{Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, ResourceExt};
use tokio::io::AsyncWriteExt;

use crate::kube_bed::{self, Bed, image};

const N: i32 = 4;

fn rbac_yaml() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/kubernetes/rbac.yaml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The Role of rbac.yaml.
fn role() -> Role {
    for doc in serde_yaml::Deserializer::from_str(&rbac_yaml()) {
        let value: serde_yaml::Value = serde::Deserialize::deserialize(doc).expect("YAML");
        if value["kind"] == "Role" {
            return serde_yaml::from_value(value).expect("a Role");
        }
    }
    panic!("rbac.yaml has no Role");
}

/// Every (group, resource, verb) a set of rules grants.
fn grants(rules: &[PolicyRule]) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for r in rules {
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                for v in &r.verbs {
                    out.insert((g.clone(), res.clone(), v.clone()));
                }
            }
        }
    }
    out
}

pub(super) async fn kubectl(bed: &Bed, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    let mut cmd = bed.cluster.kubectl();
    cmd.args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("running kubectl");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input
            .write_all(text.as_bytes())
            .await
            .expect("writing stdin");
    }
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("kubectl within 60s")
        .expect("kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Applies rbac.yaml in the bed's namespace, mints a token for its ServiceAccount and writes a
/// kubeconfig holding only that token (and the cluster's address and CA). Returns its path and
/// the token.
pub(super) async fn service_account(bed: &Bed) -> (PathBuf, String) {
    let text = rbac_yaml().replace("namespace: default", &format!("namespace: {}", bed.ns));
    kubectl(bed, &["apply", "-f", "-"], Some(&text)).await;
    let token = kubectl(
        bed,
        &[
            "-n",
            &bed.ns,
            "create",
            "token",
            "rollgate",
            "--duration",
            "1h",
        ],
        None,
    )
    .await;
    let token = String::from_utf8(token.stdout)
        .expect("a token")
        .trim()
        .to_string();
    assert!(!token.is_empty(), "a token was minted");
    let admin: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(bed.cluster.kubeconfig()).expect("the admin kubeconfig"),
    )
    .expect("kubeconfig YAML");
    let cluster = admin["clusters"][0].clone();
    let name = cluster["name"]
        .as_str()
        .expect("a cluster name")
        .to_string();
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [serde_json::to_value(&cluster).unwrap()],
        "users": [{"name": "rollgate", "user": {"token": token}}],
        "contexts": [{"name": "rollgate", "context": {"cluster": name, "user": "rollgate", "namespace": bed.ns}}],
        "current-context": "rollgate",
    });
    let path = bed.path("rollgate.kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).expect("writing kubeconfig");
    (path, token)
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The real `rollgate` with the ServiceAccount's kubeconfig.
pub(super) async fn rollgate_as(
    bed: &Bed,
    kubeconfig: &Path,
    args: &[&str],
) -> std::process::Output {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_rollgate"))
        .args(args)
        .current_dir(bed.dir.path())
        .env("KUBECONFIG", kubeconfig)
        .env("ROLLGATE_STATE", bed.path("state"))
        .env("ROLLGATE_USER", "test")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(240), out)
        .await
        .expect("rollgate finished within 240s")
        .expect("running rollgate");
    eprintln!(
        "rollgate {args:?}: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub(super) async fn client_for(kubeconfig: &Path) -> Client {
    let k = Kubeconfig::read_from(kubeconfig).expect("reading the kubeconfig");
    let mut config = Config::from_custom_kubeconfig(k, &KubeConfigOptions::default())
        .await
        .expect("loading the kubeconfig");
    // Each request once, as rollgate's probes send them: a 503 from the pod proxy is an answer.
    config.default_retry = false;
    Client::try_from(config).expect("a client")
}

/// Whether the client's user may `verb` `resource` in `ns`, as the API server says now.
async fn may(client: &Client, ns: Option<&str>, group: &str, resource: &str, verb: &str) -> bool {
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    // `pods/proxy` is resource `pods`, subresource `proxy`.
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, sub)) => (r, Some(sub.to_string())),
        None => (resource, None),
    };
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                group: Some(group.into()),
                resource: Some(resource.into()),
                subresource,
                verb: Some(verb.into()),
                namespace: ns.map(str::to_string),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    reviews
        .create(&PostParams::default(), &review)
        .await
        .expect("a SelfSubjectAccessReview")
        .status
        .is_some_and(|s| s.allowed)
}

/// Waits until the authorizer has the Role as changed (RBAC is applied from a watch, not at once).
pub(super) async fn until_may(
    client: &Client,
    ns: &str,
    access: (&str, &str, &str),
    allowed: bool,
) {
    let (group, resource, verb) = access;
    let settled = async {
        while may(client, Some(ns), group, resource, verb).await != allowed {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), settled)
        .await
        .unwrap_or_else(|_| panic!("{verb} {resource} not {allowed} within 30s"));
}

async fn services(bed: &Bed) {
    let api: Api<Service> = Api::namespaced(bed.client.clone(), &bed.ns);
    for name in ["web-active", "web-preview"] {
        kube_bed::service(&api, name).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_account_is_enough_for_every_strategy_and_a_rollback() {
    let Some(bed) = Bed::new("rbac", N, "25%", "0").await else {
        return;
    };
    services(&bed).await;
    let (kubeconfig, token) = service_account(&bed).await;
    let mut outputs = Vec::new();
    // The kubeconfig is that account and nothing else.
    let who = kubectl(
        &bed,
        &[
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "auth",
            "whoami",
            "-o",
            "json",
        ],
        None,
    )
    .await;
    let who: serde_json::Value = serde_json::from_slice(&who.stdout).expect("whoami JSON");
    assert_eq!(
        who["status"]["userInfo"]["username"],
        format!("system:serviceaccount:{}:rollgate", bed.ns)
    );

    let runs = [
        (
            "2",
            "  strategy:\n    rolling: {maxSurge: \"25%\", maxUnavailable: 0}\n",
        ),
        (
            "3",
            "  strategy:\n    canary: {maxSurge: 1, maxUnavailable: 0, steps: [{setWeight: 50}, {pause: {duration: 1s}}]}\n",
        ),
        (
            "4",
            "  strategy:\n    blueGreen: {autoPromotionEnabled: true, scaleDownDelaySeconds: 1}\n",
        ),
    ];
    for (version, strategy) in runs {
        let rollout = bed.rollout(
            &format!("web-{version}.yaml"),
            version,
            &format!("image: \"{}\"", image(version)),
            &format!("{strategy}  progressDeadlineSeconds: 60\n"),
        );
        let out = rollgate_as(
            &bed,
            &kubeconfig,
            &["apply", "-f", rollout.to_str().unwrap()],
        )
        .await;
        assert!(
            out.status.success(),
            "{strategy}: rollgate apply as the ServiceAccount"
        );
        outputs.push(out);
        bed.wait_deployment(&format!("version {version} rolled out"), move |d| {
            kube_bed::rolled_out(d, N, &image(version))
        })
        .await;
        kube_bed::assert_at_rest(&bed).await;
    }
    let out = rollgate_as(&bed, &kubeconfig, &["rollback", "web"]).await;
    assert!(
        out.status.success(),
        "rollgate rollback as the ServiceAccount"
    );
    outputs.push(out);
    bed.wait_deployment("back on version 3", |d| {
        kube_bed::rolled_out(d, N, &image("3"))
    })
    .await;
    kube_bed::assert_at_rest(&bed).await;
    let out = rollgate_as(&bed, &kubeconfig, &["status", "web"]).await;
    assert!(
        out.status.success(),
        "rollgate status as the ServiceAccount"
    );
    outputs.push(out);
    // The token is a secret: no run printed it, nor the journal kept it.
    for out in &outputs {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!text.contains(&token), "rollgate printed the token");
    }
    let journal = walk(&bed.path("state"));
    assert!(!journal.is_empty(), "the runs kept a journal");
    for entry in journal {
        let bytes = std::fs::read(&entry).expect("reading the state");
        assert!(
            !String::from_utf8_lossy(&bytes).contains(&token),
            "{} holds the token",
            entry.display()
        );
    }
    bed.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_role_grants_little_more_and_every_verb_it_checks_is_needed() {
    let Some(bed) = Bed::new("rbac-minimal", 2, "25%", "0").await else {
        return;
    };
    let Some(other) = Bed::new("rbac-other", 2, "25%", "0").await else {
        return;
    };
    let (kubeconfig, _) = service_account(&bed).await;
    let sa = client_for(&kubeconfig).await;

    // The Role holds nothing beyond what a rollout checks.
    let needed: BTreeSet<(String, String, String)> =
        rollgate::target::kubernetes::required_access(true, true)
            .into_iter()
            .map(|(g, r, v)| (g.into(), r.into(), v.into()))
            .collect();
    let granted = grants(role().rules.as_deref().unwrap_or_default());
    let missing: Vec<_> = needed.difference(&granted).collect();
    assert!(missing.is_empty(), "rbac.yaml lacks {missing:?}");
    let extra: BTreeSet<String> = granted
        .difference(&needed)
        .map(|(g, r, v)| {
            format!(
                "{v} {r}{}",
                if g.is_empty() {
                    String::new()
                } else {
                    format!(".{g}")
                }
            )
        })
        .collect();
    assert_eq!(extra, BTreeSet::new(), "grants beyond a rollout's checks");

    // Refused: other namespaces, anything cluster-wide, Secrets, making or removing workloads.
    let ns = bed.ns.as_str();
    let refused: [(Option<&str>, &str, &str, &str); 14] = [
        (Some(other.ns.as_str()), "apps", "deployments", "get"),
        (Some(other.ns.as_str()), "apps", "deployments", "patch"),
        (None, "apps", "deployments", "list"),
        (None, "", "namespaces", "list"),
        (None, "", "nodes", "get"),
        (Some(ns), "", "secrets", "get"),
        (Some(ns), "", "pods", "create"),
        (Some(ns), "", "pods", "delete"),
        (Some(ns), "apps", "deployments", "create"),
        (Some(ns), "apps", "deployments", "delete"),
        (Some(ns), "rbac.authorization.k8s.io", "roles", "update"),
        (Some(ns), "", "serviceaccounts", "impersonate"),
        // Probes only read through the pod proxy, and never run commands in a pod.
        (Some(ns), "", "pods/proxy", "create"),
        (Some(ns), "", "pods/exec", "create"),
    ];
    for (in_ns, group, resource, verb) in refused {
        assert!(
            !may(&sa, in_ns, group, resource, verb).await,
            "the ServiceAccount may {verb} {resource} in {in_ns:?}"
        );
    }
    for (group, resource, verb) in rollgate::target::kubernetes::required_access(true, true) {
        assert!(
            may(&sa, Some(ns), group, resource, verb).await,
            "{verb} {resource}"
        );
    }

    // The real thing, in another namespace: refused before anything changes there.
    let other_before = other.deployment().await;
    let rollout = other.rollout(
        "web.yaml",
        "2",
        &format!("image: \"{}\"", image("2")),
        "  strategy:\n    rolling: {maxSurge: 1, maxUnavailable: 0}\n",
    );
    let out = rollgate_as(
        &bed,
        &kubeconfig,
        &["apply", "-f", rollout.to_str().unwrap()],
    )
    .await;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("may not get deployments.apps, list deployments.apps")
            && err.contains(&format!("in namespace {}", other.ns)),
        "{err}"
    );
    assert_eq!(
        other.deployment().await.resource_version(),
        other_before.resource_version(),
        "the other namespace's Deployment is untouched"
    );

    // The pod proxy as rollgate's `runOn: host` checks use it: the Role's `get pods/proxy` lets
    // the request through to the pod (which, a kwok fake, may not answer: anything but 403).
    let pod = bed
        .pods
        .list(&Default::default())
        .await
        .expect("listing pods")
        .items
        .into_iter()
        .next()
        .expect("a pod of web");
    let request = kube::core::Request::new(
        Api::<k8s_openapi::api::core::v1::Pod>::namespaced(sa.clone(), ns).resource_url(),
    )
    .get_subresource("proxy/health", &format!("{}:9", pod.name_any()))
    .expect("a proxy request");
    // The pod's IP must be this machine's (as `probes` routes it), or the API server's proxy dials
    // out of it and whatever answers there decides the status.
    let routed = nix::unistd::Uid::effective().is_root();
    if routed {
        crate::kubernetes::probes::route_pod_ips_here();
    } else {
        eprintln!("pod proxy check skipped: routing kwok's pod IPs here needs root (ip route)");
    }
    let started = std::time::Instant::now();
    let answer = sa
        .send(request.map(kube::client::Body::from))
        .await
        .expect("an answer from the API server");
    assert!(
        !routed || answer.status().as_u16() != 403,
        "get pods/proxy is what a probe through the pod proxy needs: {}",
        answer.status()
    );
    eprintln!(
        "pod proxy as the ServiceAccount: {} in {:?}",
        answer.status(),
        started.elapsed()
    );

    // Each verb a rollout checks, taken away in turn: rollgate names it and changes nothing. The
    // rollout is blue-green with a `runOn: host` check, so it needs every verb there is.
    services(&bed).await;
    let plain = bed.rollout(
        "plain.yaml",
        "2",
        &format!("image: \"{}\"", image("2")),
        "  strategy:\n    blueGreen: {autoPromotionEnabled: true, scaleDownDelaySeconds: 1}\n",
    );
    let rollout = bed.rollout(
        "web.yaml",
        "2",
        &format!("image: \"{}\"", image("2")),
        "  strategy:\n    blueGreen: {autoPromotionEnabled: true, scaleDownDelaySeconds: 1}\n  checks:\n    - {name: smoke, http: {url: \"http://127.0.0.1:8080/health\"}}\n",
    );
    let roles: Api<Role> = Api::namespaced(bed.client.clone(), ns);
    let full = role().rules.unwrap_or_default();
    let holders: Api<ConfigMap> = Api::namespaced(bed.client.clone(), ns);
    let before = bed.deployment().await;
    let sets_before: Vec<String> = bed
        .replica_sets()
        .await
        .iter()
        .map(|r| r.name_any())
        .collect();
    let mut refusals = 0;
    for (group, resource, verb) in rollgate::target::kubernetes::required_access(true, true) {
        let mut rules = full.clone();
        for r in &mut rules {
            if r.api_groups.iter().flatten().any(|g| g == group)
                && r.resources.iter().flatten().any(|x| x == resource)
            {
                r.verbs.retain(|v| v != verb);
            }
        }
        rules.retain(|r| !r.verbs.is_empty());
        roles
            .patch(
                "rollgate",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"rules": rules})),
            )
            .await
            .expect("patching the Role");
        until_may(&sa, ns, (group, resource, verb), false).await;

        let out = rollgate_as(
            &bed,
            &kubeconfig,
            &["apply", "-f", rollout.to_str().unwrap()],
        )
        .await;
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let qualified = if group.is_empty() {
            resource.to_string()
        } else {
            format!("{resource}.{group}")
        };
        assert_eq!(
            out.status.code(),
            Some(1),
            "without {verb} {qualified}: {err}"
        );
        assert!(
            err.contains(&format!("forbidden: the kubeconfig's user may not {verb} {qualified} in namespace {ns}; nothing was changed")),
            "without {verb} {qualified}: {err}"
        );
        assert_eq!(
            bed.deployment().await.resource_version(),
            before.resource_version(),
            "without {verb} {qualified}: the Deployment changed"
        );
        let sets: Vec<String> = bed
            .replica_sets()
            .await
            .iter()
            .map(|r| r.name_any())
            .collect();
        assert_eq!(
            sets, sets_before,
            "without {verb} {qualified}: ReplicaSets changed"
        );
        assert!(
            holders
                .get_opt("web-rollgate")
                .await
                .expect("ConfigMaps")
                .is_none(),
            "without {verb} {qualified}: a holder was created"
        );
        refusals += 1;
    }
    let history = rollgate_as(&bed, &kubeconfig, &["history", "web"]).await;
    assert!(
        String::from_utf8_lossy(&history.stderr).contains("no rollouts recorded"),
        "a refused rollout leaves no journal"
    );
    assert_eq!(
        refusals,
        rollgate::target::kubernetes::required_access(true, true).len(),
        "every verb a blue-green rollout checks was taken away once"
    );

    // The full Role back: the rollout goes through (without the check, which a kwok pod cannot
    // answer here; tests/kubernetes/probes.rs runs such checks against a real server).
    roles
        .patch(
            "rollgate",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"rules": full})),
        )
        .await
        .expect("restoring the Role");
    for access in rollgate::target::kubernetes::required_access(true, true) {
        until_may(&sa, ns, access, true).await;
    }
    let out = rollgate_as(&bed, &kubeconfig, &["apply", "-f", plain.to_str().unwrap()]).await;
    assert!(out.status.success(), "with the full Role");
    bed.wait_deployment("version 2 rolled out", |d| {
        kube_bed::rolled_out(d, 2, &image("2"))
    })
    .await;
    other.finish().await;
    bed.finish().await;
}
