//! What the server checks and loads before it binds: the listen address, the token, the TLS
//! material; `rollgate-agent check-config` runs the same checks.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::{Result, ServerError, client_usage, provider};
use crate::agent::config::{AgentConfig, TokenConfig};

fn read_token(config: &Option<TokenConfig>) -> Result<Option<Arc<str>>> {
    let Some(tc) = config else { return Ok(None) };
    let token = if let Some(file) = &tc.file {
        std::fs::read_to_string(file).map_err(|_| ServerError::Token(file.display().to_string()))?
    } else if let Some(var) = &tc.env {
        std::env::var(var).map_err(|_| ServerError::Token(format!("environment variable {var}")))?
    } else {
        return Ok(None);
    };
    let token = token.trim();
    if token.len() < 16 {
        return Err(ServerError::Token(
            "token source (it must be at least 16 characters)".into(),
        ));
    }
    Ok(Some(Arc::from(token)))
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|source| ServerError::Pem {
            what: "certificates",
            path: path.to_path_buf(),
            source,
        })
}

/// Logs a warning when the agent's own certificate has fewer than 30 days left (or has expired):
/// callers will refuse it then, and nothing else says so in advance.
fn warn_if_expiring(path: &Path, certs: &[CertificateDer<'_>]) {
    use crate::pki::expiry;
    let Some(at) = certs.first().and_then(|c| expiry::not_after(c)) else {
        return;
    };
    let left = expiry::days_left(at, expiry::now());
    if left < expiry::WARN_DAYS {
        tracing::warn!(
            cert = %path.display(),
            days_left = left,
            "the agent's certificate expires in {left} days: reissue it (`rollgate pki issue --agent HOST --force`)"
        );
    }
}

fn tls_config(config: &AgentConfig) -> Result<Option<tokio_rustls::TlsAcceptor>> {
    let Some(tls) = &config.tls else {
        return Ok(None);
    };
    let certs = load_certs(&tls.cert)?;
    warn_if_expiring(&tls.cert, &certs);
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|source| ServerError::Pem {
        what: "private key",
        path: tls.key.clone(),
        source,
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(ServerError::Tls)?;
    let builder = match &tls.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in load_certs(ca)? {
                roots.add(cert).map_err(ServerError::Tls)?;
            }
            // Unauthenticated handshakes are let through so that a caller without a
            // certificate gets a clear 401 instead of a TLS alert; a certificate that is
            // presented must chain to the pinned CA or the handshake fails.
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .allow_unauthenticated()
            .build()
            .map_err(ServerError::Verifier)?;
            // A certificate without any extended key usage passes webpki for every purpose;
            // a client certificate must say it is one (SECURITY.md).
            builder
                .with_client_cert_verifier(Arc::new(client_usage::RequireClientAuthUsage(verifier)))
        }
        None => builder.with_no_client_auth(),
    };
    let mut server = builder
        .with_single_cert(certs, key)
        .map_err(ServerError::Tls)?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(server))))
}

/// What [`Server::bind`] needs before it binds: the address, the token, and the TLS acceptor.
pub(super) struct Prepared {
    pub addr: SocketAddr,
    pub token: Option<Arc<str>>,
    pub mtls: bool,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Everything `bind` checks short of binding: the listen address resolves, the token source reads,
/// a non-loopback address is authenticated, the certificates and key load.
pub(super) async fn prepare(config: &AgentConfig, listen: &str) -> Result<Prepared> {
    let addr: SocketAddr = tokio::net::lookup_host(listen)
        .await
        .ok()
        .and_then(|mut it| it.next())
        .ok_or_else(|| ServerError::BadListen(listen.to_string()))?;
    let token = read_token(&config.token)?;
    let mtls = config.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
    let authenticated = config.tls.is_some() && (mtls || token.is_some());
    if !addr.ip().is_loopback() && !authenticated {
        return Err(ServerError::InsecureListen { addr });
    }
    if config.tls.is_none() && token.is_none() {
        tracing::warn!(%addr, "no TLS and no token: any local process can drive this agent");
    }
    let tls = tls_config(config)?;
    Ok(Prepared {
        addr,
        token,
        mtls,
        tls,
    })
}
