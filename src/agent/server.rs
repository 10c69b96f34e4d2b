//! The agent's HTTPS server: mTLS or bearer-token auth, size limits, JSON errors, the routes.
//!
//! | route | body → answer |
//! |---|---|
//! | `GET /v1/host` | → `HostInfo` |
//! | `GET /v1/services` | → `ServiceList` |
//! | `GET /v1/services/{name}?since=G&wait=30s` | → `ServiceStatus` (long-poll on `generation`) |
//! | `POST /v1/services/{name}/stage` | `StageRequest` → 202 `Operation` |
//! | `PUT /v1/services/{name}/artifacts/{version}?requestId&sha256[&kind&fileName]` | raw artifact → 202 `Operation` |
//! | `POST /v1/services/{name}/activate` | `ActivateRequest` → 202 `Operation` |
//! | `POST /v1/services/{name}/rollback` | `RollbackRequest` → 202 `Operation` |
//! | `POST /v1/services/{name}/prune` | `PruneRequest` → 202 `Operation` |
//! | `POST /v1/services/{name}/stop`, `.../start` | `SlotRequest` → 202 `Operation` |
//! | `POST /v1/services/{name}/health` | `HealthCheckRequest` → `HealthReport` |
//! | `GET /v1/operations/{id}?wait=30s` | → `Operation` (long-poll until done) |
//!
//! A replayed request id answers with the first operation. Refusals are JSON `ApiError`:
//! 400 `bad_request`, 401 `unauthorized`, 403 `forbidden`, 404 `not_found`,
//! 405 `method_not_allowed`, 409 `request_id_reused`, 413 `body_too_large`, 415 `unsupported_media_type`,
//! 503 `shutting_down`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::api::{
    self, ActivateRequest, ApiError, HealthCheckRequest, PruneRequest, RollbackRequest,
    ServiceList, SlotRequest, StageRequest, UploadParams, WaitQuery,
};
use super::config::AgentConfig;
use super::manager::{Agent, ManagerError};
use crate::error_chain;

mod admission;
pub(crate) mod client_usage;
mod preflight;

use preflight::{Prepared, prepare};

use admission::{ConnAuth, Gate};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(
        "refusing to listen on non-loopback {addr} without TLS and a client CA or bearer token"
    )]
    InsecureListen { addr: SocketAddr },
    #[error("listen address {0:?} is not host:port")]
    BadListen(String),
    #[error("binding {addr}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reading {what} from {path}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("TLS setup")]
    Tls(#[source] rustls::Error),
    #[error("client CA verifier")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    #[error("reading the bearer token from {0}")]
    Token(String),
}

pub type Result<T, E = ServerError> = std::result::Result<T, E>;

/// Per-connection facts handed to the handlers.
#[derive(Clone, Copy)]
struct Peer {
    client_cert: bool,
}

#[derive(Clone)]
struct AppState {
    agent: Arc<Agent>,
    token: Option<Arc<str>>,
    /// With a client CA, a verified client certificate authenticates the caller.
    mtls: bool,
}

/// A bound, not yet serving, listener.
pub struct Server {
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: Router,
    addr: SocketAddr,
    limits: ConnLimits,
}

/// What one connection may take: a slow or silent peer is cut off, and only so many are served.
#[derive(Clone, Copy)]
struct ConnLimits {
    max_connections: usize,
    max_unauthenticated: usize,
    header_read: Duration,
    body_idle: Duration,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Server {
    /// What `rollgate-agent check-config` runs: every check of [`Server::bind`] but the bind.
    pub async fn check(config: &AgentConfig, listen: &str) -> Result<SocketAddr> {
        Ok(prepare(config, listen).await?.addr)
    }

    /// Checks the security policy, loads TLS material and binds `listen` (port 0 is fine).
    pub async fn bind(agent: Arc<Agent>, listen: &str) -> Result<Server> {
        let config = agent.config().clone();
        let Prepared {
            addr,
            token,
            mtls,
            tls,
        } = prepare(&config, listen).await?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind {
                addr: addr.to_string(),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: addr.to_string(),
            source,
        })?;
        let state = AppState { agent, token, mtls };
        Ok(Server {
            listener,
            tls,
            app: router(state, config.limits.json_body_bytes),
            addr,
            limits: ConnLimits {
                max_connections: config.limits.max_connections.max(1),
                max_unauthenticated: config.limits.max_unauthenticated.max(1),
                header_read: config.limits.header_read_timeout.0,
                body_idle: config.limits.body_idle_timeout.0,
            },
        })
    }

    /// The routes behind their auth and body limits, without the listener, for in-process
    /// callers (the `agent_request` fuzz target). Requests carry no client certificate.
    pub fn router(&self) -> Router {
        self.app.clone()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://addr` or `http://addr`.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Serves until `cancel`; then waits up to `grace` for open connections.
    ///
    /// A connection is *pending* from its accept until a request on it authenticates (with
    /// mTLS, until its handshake presents a certificate). Pending connections share a budget of
    /// `limits.maxUnauthenticated`, the oldest closed when a new one would exceed it; a request
    /// that fails authentication is answered 401 and its connection closed. Authenticated
    /// connections take one of `limits.maxConnections` slots, waiting for one when all are held.
    /// So callers that never authenticate cannot hold what authenticated callers need.
    pub async fn serve(self, cancel: CancellationToken, grace: Duration) {
        let conns = TaskTracker::new();
        let gate = Arc::new(Gate::new(
            self.limits.max_connections,
            self.limits.max_unauthenticated,
        ));
        let limits = self.limits;
        loop {
            let (tcp, _peer) = tokio::select! {
                r = self.listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = cancel.cancelled() => break,
            };
            let app = self.app.clone();
            let tls = self.tls.clone();
            let cancel = cancel.clone();
            let conn = Arc::new(gate.admit());
            conns.spawn(async move {
                let evicted = conn.evict.clone();
                tokio::select! {
                    _ = evicted.cancelled() => {
                        tracing::debug!("closed an unauthenticated connection: too many pending");
                    }
                    _ = handle(tcp, tls, conn, app, limits, cancel) => {}
                }
            });
        }
        conns.close();
        if tokio::time::timeout(grace, conns.wait()).await.is_err() {
            tracing::warn!("grace period ran out with connections open; closing them");
        }
    }
}

/// Handshake (with TLS), then serve one connection.
async fn handle(
    tcp: tokio::net::TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    conn: Arc<ConnAuth>,
    app: Router,
    limits: ConnLimits,
    cancel: CancellationToken,
) {
    let Some(acceptor) = tls else {
        let peer = Peer { client_cert: false };
        return serve_conn(tcp, peer, conn, app, limits, cancel).await;
    };
    let stream = match tokio::time::timeout(limits.header_read, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake refused");
            return;
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            return;
        }
    };
    let client_cert = stream
        .get_ref()
        .1
        .peer_certificates()
        .is_some_and(|c| !c.is_empty());
    if client_cert {
        // The verifier accepted the certificate: the connection is authenticated.
        conn.promote().await;
    }
    serve_conn(stream, Peer { client_cert }, conn, app, limits, cancel).await
}

async fn serve_conn<I>(
    io: I,
    peer: Peer,
    conn: Arc<ConnAuth>,
    app: Router,
    limits: ConnLimits,
    cancel: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(peer);
            req.extensions_mut().insert(conn.clone());
            let app = app.clone();
            let req = req.map(|body| idle_limited(body, limits.body_idle));
            async move { tower::ServiceExt::oneshot(app, req).await }
        });
    // The header timer also runs while a keep-alive connection waits for its next request.
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => { let _ = r; }
        _ = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// A request body that fails once the peer sends nothing for `idle`, instead of holding its
/// connection open forever.
fn idle_limited(body: hyper::body::Incoming, idle: Duration) -> axum::body::Body {
    use futures_util::StreamExt;
    let frames = axum::body::Body::new(body).into_data_stream();
    let limited = futures_util::stream::unfold(Some(frames), move |frames| async move {
        let mut frames = frames?;
        match tokio::time::timeout(idle, frames.next()).await {
            Ok(Some(chunk)) => Some((chunk, Some(frames))),
            Ok(None) => None,
            Err(_) => Some((
                Err(axum::Error::new(format!(
                    "request body stalled for {}s",
                    idle.as_secs_f64()
                ))),
                None,
            )),
        }
    });
    axum::body::Body::from_stream(limited)
}

fn router(state: AppState, json_limit: usize) -> Router {
    let v1 = Router::new()
        .route("/host", get(host))
        .route("/services", get(services))
        .route("/services/{name}", get(service))
        .route("/services/{name}/stage", post(stage))
        .route(
            "/services/{name}/artifacts/{version}",
            put(upload).layer(DefaultBodyLimit::disable()),
        )
        .route("/services/{name}/activate", post(activate))
        .route("/services/{name}/rollback", post(rollback))
        .route("/services/{name}/prune", post(prune))
        .route("/services/{name}/stop", post(stop))
        .route("/services/{name}/start", post(start))
        .route("/services/{name}/health", post(check_health))
        .route("/operations/{id}", get(operation))
        .method_not_allowed_fallback(|| async {
            Fail::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        });
    Router::new()
        .nest(api::PREFIX, v1)
        .fallback(|| async { Fail::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(DefaultBodyLimit::max(json_limit))
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth))
        .with_state(state)
}

/// A refusal as JSON: `{"code": ..., "message": ...}`.
pub struct Fail {
    status: StatusCode,
    body: ApiError,
}

impl Fail {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Fail {
            status,
            body: ApiError {
                code: code.to_string(),
                message: message.into(),
            },
        }
    }
}

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<ManagerError> for Fail {
    fn from(e: ManagerError) -> Self {
        let (status, code) = match &e {
            ManagerError::UnknownService(_) | ManagerError::UnknownOperation(_) => {
                (StatusCode::NOT_FOUND, "not_found")
            }
            ManagerError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ManagerError::RequestIdReused(_) => (StatusCode::CONFLICT, "request_id_reused"),
            ManagerError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ManagerError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            ManagerError::Store(_) | ManagerError::Prepare { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        Fail::new(status, code, error_chain(&e))
    }
}

/// JSON body whose rejections are JSON too.
struct Body<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = Fail;

    async fn from_request(req: Request, state: &S) -> std::result::Result<Self, Fail> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(rejection) => {
                let status = rejection.status();
                let code = match status {
                    StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
                    StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
                    _ => "bad_request",
                };
                // 422 (valid JSON, wrong shape) is reported as a plain 400.
                let status = if status == StatusCode::UNPROCESSABLE_ENTITY {
                    StatusCode::BAD_REQUEST
                } else {
                    status
                };
                Err(Fail::new(status, code, rejection.body_text()))
            }
        }
    }
}

/// Path parameters whose rejections (say, a name that is not UTF-8 once percent-decoded) are
/// JSON too.
struct Params<T>(T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = Fail;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> std::result::Result<Self, Fail> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Params(v)),
            Err(rejection) => Err(Fail::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                rejection.body_text(),
            )),
        }
    }
}

fn query<T: DeserializeOwned>(uri: &Uri) -> std::result::Result<T, Fail> {
    axum::extract::Query::<T>::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|e| Fail::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))
}

fn wait_of(q: &WaitQuery) -> std::result::Result<Duration, Fail> {
    match &q.wait {
        None => Ok(Duration::ZERO),
        Some(w) => api::parse_duration_ms(w)
            .map(|ms| Duration::from_millis(ms.min(api::MAX_WAIT_MS)))
            .ok_or_else(|| {
                Fail::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("wait={w:?}: expected a duration like 30s or 500ms"),
                )
            }),
    }
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(
    State(state): State<AppState>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let peer = req.extensions().get::<Peer>().copied();
    let cert_ok = state.mtls && peer.is_some_and(|p| p.client_cert);
    let bearer = req
        .headers()
        .get(api::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let token_ok = match (&state.token, bearer) {
        // Exact: `Bearer  <t>` or `<t>\t` is not the token.
        (Some(expected), Some(given)) => same(expected.as_bytes(), given.as_bytes()),
        _ => false,
    };
    let open = !state.mtls && state.token.is_none();
    if cert_ok || token_ok || open {
        if let Some(conn) = req.extensions().get::<Arc<ConnAuth>>().cloned() {
            conn.promote().await;
        }
        return next.run(req).await;
    }
    let message = match (bearer, state.mtls, state.token.is_some()) {
        (Some(_), _, true) => "invalid bearer token",
        (Some(_), _, false) => "bearer tokens are not accepted here; present a client certificate",
        (None, true, true) => "a client certificate or a bearer token is required",
        (None, true, false) => "a client certificate signed by the agent's CA is required",
        (None, false, _) => "a bearer token is required",
    };
    tracing::info!(path = %req.uri().path(), reason = message, "refused unauthenticated request");
    // A connection that failed authentication is closed after the answer: it must not keep a
    // place that callers with credentials need.
    let mut resp = Fail::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    resp.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    resp
}

type Answer<T> = std::result::Result<Json<T>, Fail>;

async fn host(State(s): State<AppState>) -> Json<api::HostInfo> {
    Json(s.agent.host_info())
}

async fn services(State(s): State<AppState>) -> Json<ServiceList> {
    Json(ServiceList {
        services: s.agent.list().await,
    })
}

async fn service(
    State(s): State<AppState>,
    Params(name): Params<String>,
    uri: Uri,
) -> Answer<api::ServiceStatus> {
    let q: WaitQuery = query(&uri)?;
    let wait = wait_of(&q)?;
    Ok(Json(s.agent.watch(&name, q.since, wait).await?))
}

async fn operation(
    State(s): State<AppState>,
    Params(id): Params<String>,
    uri: Uri,
) -> Answer<api::Operation> {
    let q: WaitQuery = query(&uri)?;
    let wait = wait_of(&q)?;
    Ok(Json(s.agent.wait_operation(&id, wait).await?))
}

fn accepted(op: api::Operation) -> Response {
    let status = if op.state.is_done() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    tracing::info!(op = %op.id, kind = ?op.kind, service = %op.service, version = ?op.version, state = ?op.state, "operation");
    (status, Json(op)).into_response()
}

async fn stage(
    State(s): State<AppState>,
    Params(name): Params<String>,
    Body(req): Body<StageRequest>,
) -> std::result::Result<Response, Fail> {
    Ok(accepted(s.agent.stage_url(&name, req)?))
}

async fn upload(
    State(s): State<AppState>,
    Params((name, version)): Params<(String, String)>,
    uri: Uri,
    req: Request,
) -> std::result::Result<Response, Fail> {
    let params: UploadParams = query(&uri)?;
    let limit = s.agent.config().limits.artifact_bytes;
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(Fail::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("artifact is larger than the {limit}-byte limit"),
        ));
    }
    let stream = req.into_body().into_data_stream();
    Ok(accepted(
        s.agent
            .stage_upload(&name, &version, params, stream)
            .await?,
    ))
}

async fn activate(
    State(s): State<AppState>,
    Params(name): Params<String>,
    Body(req): Body<ActivateRequest>,
) -> std::result::Result<Response, Fail> {
    Ok(accepted(s.agent.activate(&name, req)?))
}

async fn rollback(
    State(s): State<AppState>,
    Params(name): Params<String>,
    Body(req): Body<RollbackRequest>,
) -> std::result::Result<Response, Fail> {
    Ok(accepted(s.agent.rollback(&name, req)?))
}

async fn prune(
    State(s): State<AppState>,
    Params(name): Params<String>,
    Body(req): Body<PruneRequest>,
) -> std::result::Result<Response, Fail> {
    Ok(accepted(s.agent.prune(&name, req)?))
}

async fn stop(
    State(s): State<AppState>,
    Params(name): Params<String>,
    Body(req): Body<SlotRequest>,
) -> std::result::Result<Response, Fail> {
    Ok(accepted(s.agent.stop(&name, req)?))
}

async fn start(
    State(s): State<AppState>,
    Params(name): Params<String>,
    Body(req): Body<SlotRequest>,
) -> std::result::Result<Response, Fail> {
    Ok(accepted(s.agent.start(&name, req)?))
}

async fn check_health(
    State(s): State<AppState>,
    Params(name): Params<String>,
    Body(req): Body<HealthCheckRequest>,
) -> Answer<api::HealthReport> {
    Ok(Json(s.agent.check_health(&name, req).await?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// The routes of an agent with one service and no auth, over a fresh data dir.
    async fn app(dir: &Path) -> Router {
        let text = format!(
            "dataDir: {}\nservices:\n  - name: web\n    command: bin/web\n",
            dir.display()
        );
        let config = super::super::config::parse(&dir.join("agent.yaml"), &text).unwrap();
        let agent = Agent::open(config).unwrap();
        Server::bind(agent, "127.0.0.1:0").await.unwrap().router()
    }

    #[tokio::test]
    async fn a_wrong_method_is_refused_as_json() {
        // Found by the `agent_request` fuzz target: a known route called with another method
        // answered axum's bare 405, which the client could not read as an `ApiError`
        // (fuzz/regressions/agent_request/wrong-method-answers-405-without-api-error).
        let dir = tempfile::tempdir().unwrap();
        for (method, uri) in [
            ("POST", "/v1/services/web"),
            ("GET", "/v1/services/web/activate"),
            ("DELETE", "/v1/host"),
        ] {
            let req = axum::http::Request::builder()
                .method(method)
                .uri(uri)
                .body(axum::body::Body::from("{}"))
                .unwrap();
            let resp = tower::ServiceExt::oneshot(app(dir.path()).await, req)
                .await
                .unwrap();
            assert_eq!(
                resp.status(),
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {uri}"
            );
            let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
                .await
                .unwrap();
            let e: ApiError = serde_json::from_slice(&body).unwrap();
            assert_eq!(e.code, "method_not_allowed");
        }
    }

    #[tokio::test]
    async fn a_path_that_is_not_utf8_is_refused_as_json() {
        // Found by the `agent_request` fuzz target: `%eb` in a path parameter answered axum's
        // plain-text 400 instead of an `ApiError`
        // (fuzz/regressions/agent_request/bad-percent-encoding-in-path-answers-plain-400).
        let dir = tempfile::tempdir().unwrap();
        for (method, uri) in [
            ("GET", "/v1/services/%eb"),
            ("POST", "/v1/services/%eb/health"),
            (
                "PUT",
                "/v1/services/web/artifacts/%ff?requestId=r&sha256=00",
            ),
            ("GET", "/v1/operations/%c3%28"),
        ] {
            let req = axum::http::Request::builder()
                .method(method)
                .uri(uri)
                .header("content-type", "application/json")
                .body(axum::body::Body::from("{}"))
                .unwrap();
            let resp = tower::ServiceExt::oneshot(app(dir.path()).await, req)
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{method} {uri}");
            let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
                .await
                .unwrap();
            let e: ApiError = serde_json::from_slice(&body)
                .unwrap_or_else(|_| panic!("{method} {uri}: {}", String::from_utf8_lossy(&body)));
            assert_eq!(e.code, "bad_request");
        }
    }

    #[test]
    fn token_comparison_is_exact() {
        assert!(same(b"secret-token-1234", b"secret-token-1234"));
        assert!(!same(b"secret-token-1234", b"secret-token-1235"));
        assert!(!same(b"short", b"longer"));
    }
}
