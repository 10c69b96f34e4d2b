//! Where a host fleet's team state lives: the manifest's `state:` block (etcd), the
//! `--state`/`ROLLGATE_STATE_URL` form of it, and their validation.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{InputError, Sources};

/// `spec.state`: the team state's store. Without it, a host fleet's state is this machine's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StateSpec {
    pub etcd: EtcdSpec,
}

/// An etcd v3 cluster: its client URLs, the key prefix under which rollgate keeps its keys, and
/// TLS for the client port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EtcdSpec {
    pub endpoints: Vec<String>,
    #[serde(default = "default_prefix")]
    pub prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<EtcdTls>,
}

/// The CA that signed the members' certificates, and this machine's client certificate and key
/// (for `--client-cert-auth`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EtcdTls {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

fn default_prefix() -> String {
    "/rollgate".into()
}

impl EtcdSpec {
    /// What is wrong with it, as (field below `etcd`, message), if anything.
    pub fn problem(&self) -> Option<(String, String)> {
        if self.endpoints.is_empty() {
            return Some((
                "endpoints".into(),
                "is empty: expected one or more client URLs (http://host:2379 or https://host:2379)".into(),
            ));
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            let scheme_ok = e.starts_with("http://") || e.starts_with("https://");
            let host = e.split("://").nth(1).unwrap_or("");
            if !scheme_ok || host.is_empty() || host.trim_end_matches('/').contains('/') {
                return Some((
                    format!("endpoints[{i}]"),
                    format!("{e:?}: expected a client URL such as https://etcd-1:2379"),
                ));
            }
            if self.tls.is_some() && e.starts_with("http://") {
                return Some((
                    format!("endpoints[{i}]"),
                    format!("{e:?} is plain http but tls is set: expected https://"),
                ));
            }
        }
        if !self.prefix.starts_with('/') || self.prefix.len() < 2 || self.prefix.ends_with('/') {
            return Some((
                "prefix".into(),
                format!(
                    "{:?}: expected a key prefix such as /rollgate (a leading '/', no trailing one)",
                    self.prefix
                ),
            ));
        }
        if let Some(t) = &self.tls
            && t.cert.is_some() != t.key.is_some()
        {
            return Some((
                "tls".into(),
                "has one of cert and key: expected both (a client certificate and its key) or neither".into(),
            ));
        }
        None
    }

    /// Relative TLS paths, relative to `base` (the manifest's folder).
    pub fn absolutize(&mut self, base: &Path) {
        if let Some(t) = &mut self.tls {
            for p in [&mut t.ca, &mut t.cert, &mut t.key].into_iter().flatten() {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
    }

    /// `--state` / `ROLLGATE_STATE_URL`: `etcd://h1:2379,h2:2379/prefix` (plain http), or
    /// `etcd+https://h1:2379,h2:2379/prefix?ca=FILE&cert=FILE&key=FILE`.
    pub fn from_url(url: &str) -> Result<EtcdSpec, InputError> {
        let bad = |why: &str| {
            InputError::general(format!(
                "--state {url:?}: {why}: expected etcd://HOST:PORT[,HOST:PORT...]/PREFIX or etcd+https://...?ca=FILE&cert=FILE&key=FILE"
            ))
        };
        let (scheme, rest) = if let Some(r) = url.strip_prefix("etcd+https://") {
            ("https", r)
        } else if let Some(r) = url.strip_prefix("etcd://") {
            ("http", r)
        } else {
            return Err(bad("unknown scheme"));
        };
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (hosts, prefix) = match rest.split_once('/') {
            Some((h, p)) if !p.trim_end_matches('/').is_empty() => {
                (h, format!("/{}", p.trim_end_matches('/')))
            }
            Some((h, _)) => (h, default_prefix()),
            None => (rest, default_prefix()),
        };
        if hosts.is_empty() {
            return Err(bad("no hosts"));
        }
        let endpoints: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| format!("{scheme}://{h}"))
            .collect();
        let mut tls = EtcdTls {
            ca: None,
            cert: None,
            key: None,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| bad("a query without '='"))?;
            let v = std::path::absolute(v).unwrap_or_else(|_| PathBuf::from(v));
            match k {
                "ca" => tls.ca = Some(v),
                "cert" => tls.cert = Some(v),
                "key" => tls.key = Some(v),
                _ => return Err(bad(&format!("unknown query key {k:?}"))),
            }
        }
        let spec = EtcdSpec {
            endpoints,
            prefix,
            tls: (scheme == "https").then_some(tls),
        };
        match spec.problem() {
            Some((field, why)) => Err(bad(&format!("{field} {why}"))),
            None => Ok(spec),
        }
    }
}

/// Validates `spec.state` (when set) against the manifest's target.
pub(super) fn validate(
    state: Option<&StateSpec>,
    hosts: bool,
    s: &Sources,
) -> Result<(), InputError> {
    let Some(state) = state else {
        return Ok(());
    };
    if !hosts {
        return Err(s.error(
            "spec.state",
            "applies to hosts targets: a Kubernetes target keeps its team state in its cluster (Lease and ConfigMap)",
        ));
    }
    match state.etcd.problem() {
        Some((field, why)) => Err(s.error(&format!("spec.state.etcd.{field}"), why)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_url_names_the_endpoints_prefix_and_tls_files() {
        let s = EtcdSpec::from_url("etcd://a:2379,b:2379/team/x").unwrap();
        assert_eq!(s.endpoints, ["http://a:2379", "http://b:2379"]);
        assert_eq!(s.prefix, "/team/x");
        assert!(s.tls.is_none());
        let s = EtcdSpec::from_url("etcd://a:2379").unwrap();
        assert_eq!(s.prefix, "/rollgate");
        let s =
            EtcdSpec::from_url("etcd+https://a:2379/r?ca=/ca.pem&cert=/c.pem&key=/k.pem").unwrap();
        assert_eq!(s.endpoints, ["https://a:2379"]);
        let t = s.tls.unwrap();
        // Absolute as the platform reads it: `/ca.pem` is `Z:\ca.pem` under Wine.
        let abs = |p: &str| std::path::absolute(p).unwrap();
        assert_eq!(t.ca.unwrap(), abs("/ca.pem"));
        assert_eq!(t.key.unwrap(), abs("/k.pem"));
    }

    #[test]
    fn bad_state_urls_say_what_was_expected() {
        for (url, why) in [
            ("http://a:2379", "unknown scheme"),
            ("etcd://", "no hosts"),
            ("etcd+https://a:2379/r?cert=/c.pem", "cert and key"),
            ("etcd://a:2379/r?pw=x", "unknown query key"),
        ] {
            let e = EtcdSpec::from_url(url).unwrap_err().to_string();
            assert!(e.contains(why), "{url}: {e}");
            assert!(e.contains("expected etcd://"), "{url}: {e}");
        }
    }
}
