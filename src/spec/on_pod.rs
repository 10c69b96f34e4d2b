//! How a `runOn: host` check reaches a pod of a Kubernetes target: a pod has no agent, so the
//! check goes through the API server's pod proxy (`pods/proxy`), which carries HTTP only. Pure:
//! `validate` refuses what cannot run there, and the target sends what can.

use super::{Check, RunOn};

/// Where a `runOn: host` http check goes on a pod, read from its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodUrl {
    pub https: bool,
    /// `None` for `{port}`: the API server then picks the pod's first declared container port.
    pub port: Option<u16>,
    /// The path and query, from the `/` on; `{instance}` is replaced by the pod's name.
    pub path: String,
}

/// Hosts that name the pod itself in a `runOn: host` URL.
const POD_HOSTS: &str = "127.0.0.1, localhost or {host}";

impl PodUrl {
    /// Reads `http[s]://POD[:PORT][/PATH]`, where POD is `127.0.0.1`, `localhost`, `[::1]` or
    /// `{host}` and PORT a number or `{port}`. The error says what was expected.
    pub fn parse(url: &str) -> Result<PodUrl, String> {
        let (https, rest) = if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else {
            return Err("expected an http:// or https:// URL".into());
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        if path.contains('#') {
            return Err("has a fragment (#): the pod proxy sends none".into());
        }
        if path.contains(char::is_whitespace) {
            return Err("has white space in its path: escape it (%20)".into());
        }
        let (host, port) = match authority.rsplit_once(':') {
            // `[::1]` alone has colons inside its brackets and no port.
            Some((host, port)) if !port.ends_with(']') => (host, Some(port)),
            _ => (authority, None),
        };
        let pod = ["127.0.0.1", "localhost", "[::1]", "{host}"]
            .iter()
            .any(|h| h.eq_ignore_ascii_case(host));
        if !pod {
            return Err(format!(
                "its host {host:?} is not the pod: a runOn: host check on a Kubernetes target goes to each pod through the API server's pod proxy, so the host must be {POD_HOSTS}; to probe another address use runOn: cli"
            ));
        }
        let port = match port {
            None => Some(if https { 443 } else { 80 }),
            Some("{port}") => None,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => Some(n),
                _ => {
                    return Err(format!(
                        "port {p:?}: expected a number from 1 to 65535, or {{port}} (the pod's first declared container port)"
                    ));
                }
            },
        };
        let path = if path.is_empty() || path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        Ok(PodUrl { https, port, path })
    }

    /// The pod as the proxy names it: `[https:]NAME[:PORT]`.
    pub fn proxy_name(&self, pod: &str) -> String {
        let scheme = if self.https { "https:" } else { "" };
        match self.port {
            Some(port) => format!("{scheme}{pod}:{port}"),
            None => format!("{scheme}{pod}"),
        }
    }
}

/// Whether `check` runs on each pod through the API server's pod proxy (and so needs
/// `get pods/proxy`).
pub fn through_proxy(check: &Check) -> bool {
    check.run_on == RunOn::Host && check.http.is_some()
}

/// Why `check` cannot run on a Kubernetes target, as (the field at fault, below the check, and
/// what to write instead); `None` when it can.
pub fn refusal(check: &Check) -> Option<(&'static str, String)> {
    if check.run_on != RunOn::Host || check.is_metric() {
        return None;
    }
    if check.command.is_some() {
        return Some((
            "command",
            "a command check cannot run on a pod with runOn: host: pods have no agent, and rollgate reaches them only through the API server's pod proxy, which carries HTTP; expected runOn: cli (the command runs where rollgate runs, with {host} the pod's IP) or an http check".into(),
        ));
    }
    if check.tcp.is_some() {
        return Some((
            "tcp",
            "a tcp check cannot run on a pod with runOn: host: rollgate reaches pods only through the API server's pod proxy, which carries HTTP; expected runOn: cli (connects from where rollgate runs to {host}, the pod's IP) or an http check".into(),
        ));
    }
    let http = check.http.as_ref()?;
    PodUrl::parse(&http.url)
        .err()
        .map(|why| ("http.url", format!("{:?}: {why}", http.url)))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::spec::{Manifest, Sources};

    fn load(checks: &str) -> Result<Manifest, crate::spec::InputError> {
        let text = format!(
            "apiVersion: rollgate.dev/v1\nkind: Rollout\nmetadata: {{name: web}}\nspec:\n  version: \"2\"\n  target:\n    kubernetes: {{namespace: shop, deployment: web}}\n  strategy:\n    rolling: {{maxSurge: 1, maxUnavailable: 0}}\n  checks:\n{checks}"
        );
        let sources = Sources::from_texts(&[(Path::new("web.yaml"), &text)], &|_| None)?;
        Manifest::from_sources(sources, &|_| None)
    }

    fn error(checks: &str) -> String {
        load(checks).expect_err("an input error").to_string()
    }

    #[test]
    fn a_command_check_on_pods_is_an_input_error_naming_what_to_use() {
        let e = error("    - name: smoke\n      command: {run: [sh, -c, \"exit 0\"]}\n");
        assert!(
            e.starts_with("web.yaml:12:7: spec.checks[0].command: a command check cannot run on a pod with runOn: host"),
            "{e}"
        );
        assert!(
            e.contains("expected runOn: cli") && e.contains("or an http check"),
            "{e}"
        );
        // The same check from the CLI is fine.
        load("    - name: smoke\n      runOn: cli\n      command: {run: [sh, -c, \"exit 0\"]}\n")
            .expect("runOn: cli runs the command where rollgate runs");
    }

    #[test]
    fn a_tcp_check_on_pods_is_an_input_error() {
        let e =
            error("    - name: up\n      runOn: host\n      tcp: {address: \"127.0.0.1:8080\"}\n");
        assert!(
            e.starts_with("web.yaml:13:7: spec.checks[0].tcp: a tcp check cannot run on a pod"),
            "{e}"
        );
        assert!(e.contains("expected runOn: cli"), "{e}");
    }

    #[test]
    fn an_http_check_must_address_the_pod() {
        let e = error("    - name: smoke\n      http: {url: \"http://web.shop.svc/health\"}\n");
        assert!(
            e.starts_with("web.yaml:12:19: spec.checks[0].http.url: \"http://web.shop.svc/health\": its host \"web.shop.svc\" is not the pod"),
            "{e}"
        );
        assert!(e.contains("use runOn: cli"), "{e}");
        let e = error("    - name: smoke\n      http: {url: \"http://127.0.0.1:99999/\"}\n");
        assert!(e.contains("port \"99999\": expected a number"), "{e}");
        let e = error("    - name: smoke\n      http: {url: \"127.0.0.1:80/\"}\n");
        assert!(e.contains("expected an http:// or https:// URL"), "{e}");
        load("    - name: smoke\n      http: {url: \"http://127.0.0.1:{port}/health\"}\n")
            .expect("{port} is the pod's first container port");
    }

    #[test]
    fn urls_on_pods() {
        let u = PodUrl::parse("http://127.0.0.1:8080/health?full=1").unwrap();
        assert_eq!(
            u,
            PodUrl {
                https: false,
                port: Some(8080),
                path: "/health?full=1".into()
            }
        );
        assert_eq!(u.proxy_name("web-1"), "web-1:8080");
        let u = PodUrl::parse("https://{host}:{port}").unwrap();
        assert_eq!((u.port, u.path.as_str()), (None, "/"));
        assert_eq!(u.proxy_name("web-1"), "https:web-1");
        assert_eq!(PodUrl::parse("http://LOCALHOST").unwrap().port, Some(80));
        assert_eq!(PodUrl::parse("https://[::1]/x").unwrap().port, Some(443));
        assert_eq!(PodUrl::parse("http://[::1]:81/").unwrap().port, Some(81));
        assert!(PodUrl::parse("http://10.0.0.1:80/").is_err());
        assert!(PodUrl::parse("http://127.0.0.1:0/").is_err());
        assert!(PodUrl::parse("http://127.0.0.1/a b").is_err());
    }
}
