//! HTTPS and client authentication for a dashboard served off loopback: a certificate from the
//! project PKI, and client certificates from its CA or a bearer token (from a file or
//! `ROLLGATE_DASHBOARD_TOKEN`; never printed). Off loopback, the dashboard refuses to start without
//! both.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::cli::{CliError, DashboardArgs};
use crate::spec::InputError;

/// The environment variable a token may come from, when `--token-file` is not given.
pub const TOKEN_ENV: &str = "ROLLGATE_DASHBOARD_TOKEN";

/// A token shorter than this is refused: it would be guessed.
const MIN_TOKEN: usize = 16;

/// How long a TLS handshake may take.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// An HTTPS dashboard: its acceptor, and who may use it.
pub struct Access {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub auth: Auth,
}

/// Who may use an HTTPS dashboard: a client certificate of the CA, or the bearer token.
#[derive(Clone)]
pub struct Auth {
    pub token: Option<String>,
    pub client_certs: bool,
}

/// Whether a connection presented a client certificate the CA verified.
#[derive(Clone, Copy)]
pub struct Peer {
    pub client_cert: bool,
}

fn usage(message: String) -> CliError {
    InputError::general(message).into()
}

fn certs(flag: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, CliError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            usage(format!(
                "{flag} {}: {e}: expected PEM certificates",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(usage(format!(
            "{flag} {}: no certificate in it: expected PEM certificates",
            path.display()
        )));
    }
    Ok(certs)
}

/// The token of `--token-file` (trimmed), else of [`TOKEN_ENV`]; its value never appears in a
/// message.
fn token(args: &DashboardArgs) -> Result<Option<String>, CliError> {
    let (token, from) = match &args.token_file {
        Some(path) => (
            std::fs::read_to_string(path)
                .map_err(|e| usage(format!("--token-file {}: {e}", path.display())))?
                .trim()
                .to_string(),
            format!("--token-file {}", path.display()),
        ),
        None => match std::env::var(TOKEN_ENV) {
            Ok(t) if !t.trim().is_empty() => (t.trim().to_string(), TOKEN_ENV.to_string()),
            _ => return Ok(None),
        },
    };
    if token.len() < MIN_TOKEN || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(usage(format!(
            "{from}: the token must be at least {MIN_TOKEN} characters without spaces (e.g. `openssl rand -hex 32`)"
        )));
    }
    Ok(Some(token))
}

/// What `--tls-cert`, `--tls-key`, `--client-ca` and the token make of serving `addr`: `None` for
/// plain HTTP on loopback; an error (a usage error, exit 2) off loopback without TLS and a way to
/// authenticate clients.
pub fn access(args: &DashboardArgs, addr: SocketAddr) -> Result<Option<Access>, CliError> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        if addr.ip().is_loopback() {
            return Ok(None);
        }
        return Err(usage(format!(
            "--listen {addr}: off loopback the dashboard needs TLS (--tls-cert and --tls-key, e.g. from `rollgate pki issue --agent HOST`) and client authentication (--client-ca with certificates from `rollgate pki issue --client NAME`, or a token in --token-file or {TOKEN_ENV})"
        )));
    };
    let token = token(args)?;
    if token.is_none() && args.client_ca.is_none() && !addr.ip().is_loopback() {
        return Err(usage(format!(
            "--listen {addr}: off loopback the dashboard needs client authentication: --client-ca (certificates from `rollgate pki issue --client NAME`) or a token in --token-file or {TOKEN_ENV}"
        )));
    }
    let chain = certs("--tls-cert", cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        usage(format!(
            "--tls-key {}: {e}: expected a PEM private key",
            key.display()
        ))
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls_failed = |e: rustls::Error| CliError::Failed(format!("dashboard TLS: {e}"));
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(tls_failed)?;
    let builder = match &args.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs("--client-ca", ca)? {
                roots.add(c).map_err(tls_failed)?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            // With a token too, a client without a certificate may still come in with the token;
            // a certificate that is presented must chain to the CA and be a client certificate.
            let verifier = if token.is_some() {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|e| CliError::Failed(format!("dashboard TLS: --client-ca: {e}")))?;
            builder.with_client_cert_verifier(Arc::new(
                crate::agent::server::client_usage::RequireClientAuthUsage(verifier),
            ))
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| usage(format!("--tls-cert/--tls-key: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Access {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        auth: Auth {
            client_certs: args.client_ca.is_some(),
            token,
        },
    }))
}

/// Serves `router` over TLS until `stopped`: each connection's handshake, then HTTP/1.1 with the
/// [`Peer`] in every request's extensions.
pub async fn serve(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    router: axum::Router,
    stopped: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut conns = tokio::task::JoinSet::new();
    let mut stop = stopped.clone();
    loop {
        let (tcp, _) = tokio::select! {
            () = stopping(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let (acceptor, router, mut stop) = (acceptor.clone(), router.clone(), stopped.clone());
        conns.spawn(async move {
            let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await else {
                return;
            };
            let peer = Peer {
                client_cert: tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .is_some_and(|c| !c.is_empty()),
            };
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(peer);
                    let router = router.clone();
                    let req = req.map(axum::body::Body::new);
                    async move { tower::ServiceExt::oneshot(router, req).await }
                },
            );
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => { let _ = r; }
                () = stopping(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
        // Forget the connections that ended.
        while conns.try_join_next().is_some() {}
    }
    while conns.join_next().await.is_some() {}
    Ok(())
}

/// Resolves when the dashboard stops (or whoever stops it is gone).
async fn stopping(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
