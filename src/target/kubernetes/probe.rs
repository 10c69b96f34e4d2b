//! Probes of pods: `runOn: cli` from where rollgate runs, at the pod's IP; `runOn: host` through
//! the API server's pod proxy, since a pod has no agent. A probe passes only on the pod's answer.

use kube::ResourceExt;
use kube::client::Body;

use super::Kubernetes;
use crate::health::Probe;
use crate::spec::on_pod::PodUrl;
use crate::spec::{Check, HttpProbe, RunOn};

impl Kubernetes {
    /// One probe of `check` on pod `instance`.
    pub(super) async fn probe_pod(&self, check: &Check, instance: &str) -> Probe {
        match check.run_on {
            RunOn::Cli => self.probe_from_cli(check, instance).await,
            RunOn::Host => match &check.http {
                Some(http) => self.probe_through_proxy(check, http, instance).await,
                // `validate` refuses these on a Kubernetes target; should one get here, it fails.
                None => Probe::Fail(format!(
                    "check {}: only an http check runs on a pod with runOn: host",
                    check.name
                )),
            },
        }
    }

    /// A `runOn: cli` probe, at the pod's IP from the watched copy.
    async fn probe_from_cli(&self, check: &Check, instance: &str) -> Probe {
        // From the watched copy: no request, and no failed probe while the API server restarts.
        let cache = match self.cache().await {
            Ok(cache) => cache,
            Err(e) => return Probe::Fail(format!("pod {instance}: {e}")),
        };
        let pod = cache
            .pods
            .state()
            .into_iter()
            .find(|p| p.name_any() == instance);
        let Some(pod) = pod else {
            return Probe::Fail(format!("pod {instance} is gone"));
        };
        let ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_default();
        let fill = |s: &str| s.replace("{host}", &ip).replace("{instance}", instance);
        crate::health::run::cli_probe(&self.http, check, &fill, check.timeout.0).await
    }

    /// A `runOn: host` http probe: `GET pods/NAME[:PORT]/proxy/PATH` (verb `get` on `pods/proxy`),
    /// which the API server sends on to the pod's IP and answers with the pod's answer.
    async fn probe_through_proxy(&self, check: &Check, http: &HttpProbe, instance: &str) -> Probe {
        let url = match PodUrl::parse(&http.url) {
            Ok(url) => url,
            Err(why) => return Probe::Fail(format!("{:?}: {why}", http.url)),
        };
        let path = url.path.replace("{instance}", instance);
        let name = url.proxy_name(instance);
        let what = format!("GET {path} on pod {name} (through the API server)");
        let request = match kube::core::Request::new(self.pods.resource_url())
            .get_subresource(&format!("proxy{path}"), &name)
        {
            Ok(request) => request.map(Body::from),
            Err(e) => return Probe::Fail(format!("{what}: {e}")),
        };
        // Not the target's own client: that one retries a 503, which may be the pod's answer.
        let Some(client) = &self.pod_prober else {
            return Probe::Fail(format!(
                "{what}: the target was made without a probe client"
            ));
        };
        let answer = async {
            let response = client.send(request).await?;
            let status = response.status().as_u16();
            let body = response.into_body().collect_bytes().await?;
            Ok::<_, kube::Error>((status, body))
        };
        match tokio::time::timeout(check.timeout.0, answer).await {
            Err(_) => Probe::Fail(format!("{what}: no answer within {:?}", check.timeout.0)),
            Ok(Err(e)) => Probe::Fail(format!("{what}: {e}")),
            Ok(Ok((status, body))) => match api_server_refusal(&body) {
                Some(why) => {
                    Probe::Fail(format!("{what}: the API server answered {status}: {why}"))
                }
                None => Probe::of_http_answer(&what, status, &String::from_utf8_lossy(&body), http),
            },
        }
    }
}

/// The API server's own answer rather than the pod's: a `Status` of kind Failure (it could not
/// reach the pod, the pod is gone, the request is forbidden), with its message. Such an answer
/// fails the probe whatever `expectStatus` says: the API server answers 503 when the pod does not.
fn api_server_refusal(body: &[u8]) -> Option<String> {
    let status: serde_json::Value = serde_json::from_slice(body).ok()?;
    (status["kind"] == "Status" && status["status"] == "Failure").then(|| {
        status["message"]
            .as_str()
            .unwrap_or("no message")
            .to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_servers_own_failures_are_told_from_the_pods_answers() {
        let unreachable = br#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"error trying to reach service: dial tcp 10.0.0.7:9: connect: connection refused","reason":"ServiceUnavailable","code":503}"#;
        assert_eq!(
            api_server_refusal(unreachable).as_deref(),
            Some("error trying to reach service: dial tcp 10.0.0.7:9: connect: connection refused")
        );
        assert_eq!(api_server_refusal(b"ok"), None);
        assert_eq!(api_server_refusal(br#"{"status":"Failure"}"#), None);
        assert_eq!(
            api_server_refusal(br#"{"kind":"Status","status":"Success"}"#),
            None
        );
    }
}
