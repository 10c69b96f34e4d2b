//! Async client of the agent API, used by the hosts target and the tests.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::api::{
    self, ActivateRequest, ApiError, HealthCheckRequest, HealthReport, HostInfo, Operation,
    PruneRequest, RollbackRequest, ServiceList, ServiceStatus, SlotRequest, StageRequest,
    UploadParams,
};

/// What can go wrong talking to an agent.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("reading client credentials from {path}")]
    Credentials {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("client TLS setup failed")]
    TlsSetup(#[source] reqwest::Error),
    #[error(
        "refusing to send the bearer token over plain HTTP to {url}: use https (give the agent's CA) or reach the agent on loopback"
    )]
    PlainToken { url: String },
    #[error("agent {url} unreachable")]
    AgentUnreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("agent refused {url}: HTTP {status} {code}: {message}")]
    Rejected {
        url: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("agent answered {url} with an unreadable body")]
    BadResponse {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("reading artifact {path}")]
    Artifact {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("operation {id} still running after {waited_ms} ms")]
    OperationTimeout { id: String, waited_ms: u64 },
}

impl ClientError {
    /// Whether the error is the network's, not the agent's: the connection could not be made or
    /// the agent did not answer in time. A refused connection is not: the host answered, and
    /// nothing listens (the agent is down), so retrying would only delay the verdict.
    pub fn is_transient(&self) -> bool {
        let ClientError::AgentUnreachable { source, .. } = self else {
            return false;
        };
        if !(source.is_connect() || source.is_timeout()) {
            return false;
        }
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source);
        while let Some(e) = cause {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                return io.kind() != std::io::ErrorKind::ConnectionRefused;
            }
            cause = e.source();
        }
        true
    }

    /// HTTP status of a refusal, if the agent answered one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Rejected { status, .. } => Some(*status),
            _ => None,
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// How the client proves who it is and whom it trusts.
#[derive(Clone, Default)]
pub struct ClientAuth {
    /// PEM of the CA that signed the agent's certificate (pinned: no public roots are used).
    pub ca_pem: Option<Vec<u8>>,
    /// PEM of the client certificate followed by its PKCS#8 key, for mTLS.
    pub identity_pem: Option<Vec<u8>>,
    /// Bearer token, the alternative to a client certificate.
    pub token: Option<String>,
}

impl std::fmt::Debug for ClientAuth {
    // Never prints the key or the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAuth")
            .field("ca_pem", &self.ca_pem.is_some())
            .field("identity_pem", &self.identity_pem.is_some())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl ClientAuth {
    /// mTLS from PEM files as written by [`crate::pki`]: the CA, the client cert and its key.
    pub fn mtls_files(ca: &Path, cert: &Path, key: &Path) -> Result<Self> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| ClientError::Credentials {
                path: p.display().to_string(),
                source,
            })
        };
        let mut identity = read(cert)?;
        identity.push(b'\n');
        identity.extend(read(key)?);
        Ok(ClientAuth {
            ca_pem: Some(read(ca)?),
            identity_pem: Some(identity),
            token: None,
        })
    }
}

/// A client of one agent, e.g. `https://10.0.0.5:7443`.
#[derive(Debug, Clone)]
pub struct AgentClient {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
    /// How long a call keeps retrying transient network errors (zero: it does not).
    retry_for: Duration,
}

/// How long a connection may wait unused in the pool. Under the agent's `headerReadTimeout`
/// (10 s by default), after which the agent closes an idle connection: a connection the client
/// keeps longer is one the agent may be closing as the next request goes out on it ("peer
/// closed connection", seen at 1,000 agents when one host's staging and its wave were 15 s
/// apart). The pool drops an expired connection when it is next asked for one, however late the
/// agent's close has been read.
const POOL_IDLE: Duration = Duration::from_secs(5);

impl AgentClient {
    /// Builds a client for the agent at `base_url` (scheme, host and port; no path).
    pub fn new(base_url: &str, auth: &ClientAuth) -> Result<Self> {
        if auth.token.is_some()
            && let Some(authority) = base_url.strip_prefix("http://")
            && !api::is_loopback_address(authority.split('/').next().unwrap_or_default())
        {
            return Err(ClientError::PlainToken {
                url: base_url.to_string(),
            });
        }
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(POOL_IDLE);
        if let Some(ca) = &auth.ca_pem {
            let cert = reqwest::Certificate::from_pem(ca).map_err(ClientError::TlsSetup)?;
            builder = builder
                .tls_built_in_root_certs(false)
                .add_root_certificate(cert);
        }
        if let Some(identity) = &auth.identity_pem {
            let identity = reqwest::Identity::from_pem(identity).map_err(ClientError::TlsSetup)?;
            builder = builder.identity(identity);
        }
        let http = builder.build().map_err(ClientError::TlsSetup)?;
        Ok(AgentClient {
            base: base_url.trim_end_matches('/').to_string(),
            http,
            token: auth.token.clone(),
            retry_for: Duration::ZERO,
        })
    }

    /// Retries each call that fails with a [transient](ClientError::is_transient) error, with
    /// backoff from 100 ms to 1 s, for up to `window`. Every call may be repeated: reads are
    /// reads, and every mutation carries a request id the agent answers a replay of with the
    /// first operation. A streamed upload is not retried (its body cannot be sent twice).
    pub fn retrying(mut self, window: Duration) -> Self {
        self.retry_for = window;
        self
    }

    /// The agent's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}{}", self.base, api::PREFIX, path)
    }

    fn authed(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }

    async fn send<T: DeserializeOwned>(
        &self,
        url: String,
        req: reqwest::RequestBuilder,
    ) -> Result<T> {
        let start = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(100);
        loop {
            let Some(attempt) = req.try_clone() else {
                return self.send_once(url, req).await;
            };
            match self.send_once(url.clone(), attempt).await {
                Err(e) if e.is_transient() && start.elapsed() + backoff < self.retry_for => {
                    tracing::debug!(url = %url, error = %e, "transient network error; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                done => return done,
            }
        }
    }

    async fn send_once<T: DeserializeOwned>(
        &self,
        url: String,
        req: reqwest::RequestBuilder,
    ) -> Result<T> {
        let resp =
            self.authed(req)
                .send()
                .await
                .map_err(|source| ClientError::AgentUnreachable {
                    url: url.clone(),
                    source,
                })?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.bytes().await.unwrap_or_default();
            let (code, message) = match serde_json::from_slice::<ApiError>(&body) {
                Ok(e) => (e.code, e.message),
                Err(_) => (
                    "unknown".to_string(),
                    String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned(),
                ),
            };
            return Err(ClientError::Rejected {
                url,
                status: status.as_u16(),
                code,
                message,
            });
        }
        resp.json::<T>()
            .await
            .map_err(|source| ClientError::BadResponse { url, source })
    }

    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
        timeout: Duration,
    ) -> Result<T> {
        let url = self.url(path);
        let req = self.http.get(&url).query(query).timeout(timeout);
        self.send(url, req).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let url = self.url(path);
        let req = self
            .http
            .post(&url)
            .json(body)
            .timeout(Duration::from_secs(60));
        self.send(url, req).await
    }

    /// `GET /v1/host`.
    pub async fn host_info(&self) -> Result<HostInfo> {
        self.get("/host", &[], Duration::from_secs(30)).await
    }

    /// `GET /v1/services`.
    pub async fn services(&self) -> Result<Vec<ServiceStatus>> {
        let list: ServiceList = self.get("/services", &[], Duration::from_secs(30)).await?;
        Ok(list.services)
    }

    /// `GET /v1/services/{name}`.
    pub async fn service(&self, name: &str) -> Result<ServiceStatus> {
        self.get(&format!("/services/{name}"), &[], Duration::from_secs(30))
            .await
    }

    /// Long-polls `GET /v1/services/{name}?since=G&wait=W`: answers at the first change after
    /// generation `since`, or after `wait` with the unchanged status.
    pub async fn watch_service(
        &self,
        name: &str,
        since: u64,
        wait: Duration,
    ) -> Result<ServiceStatus> {
        let query = [
            ("since", since.to_string()),
            ("wait", format!("{}ms", wait.as_millis())),
        ];
        self.get(
            &format!("/services/{name}"),
            &query,
            wait + Duration::from_secs(30),
        )
        .await
    }

    /// `POST /v1/services/{name}/stage`: the agent fetches `url` and checks its sha256.
    pub async fn stage_url(&self, service: &str, req: &StageRequest) -> Result<Operation> {
        self.post(&format!("/services/{service}/stage"), req).await
    }

    /// `PUT /v1/services/{name}/artifacts/{version}`: streams a local file to the agent.
    pub async fn stage_file(
        &self,
        service: &str,
        version: &str,
        file: &Path,
        params: &UploadParams,
    ) -> Result<Operation> {
        let artifact_err = |source| ClientError::Artifact {
            path: file.display().to_string(),
            source,
        };
        let handle = tokio::fs::File::open(file).await.map_err(artifact_err)?;
        let len = handle.metadata().await.map_err(artifact_err)?.len();
        let stream = tokio_util::io::ReaderStream::new(handle);
        let url = self.url(&format!("/services/{service}/artifacts/{version}"));
        let req = self
            .http
            .put(&url)
            .query(params)
            .header(reqwest::header::CONTENT_LENGTH, len)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(reqwest::Body::wrap_stream(stream))
            .timeout(Duration::from_secs(3600));
        self.send(url, req).await
    }

    /// Streams raw bytes as an artifact (tests, and callers that hold it in memory).
    pub async fn stage_bytes(
        &self,
        service: &str,
        version: &str,
        bytes: Vec<u8>,
        params: &UploadParams,
    ) -> Result<Operation> {
        let url = self.url(&format!("/services/{service}/artifacts/{version}"));
        let req = self
            .http
            .put(&url)
            .query(params)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(bytes)
            .timeout(Duration::from_secs(600));
        self.send(url, req).await
    }

    /// `POST /v1/services/{name}/activate`.
    pub async fn activate(&self, service: &str, req: &ActivateRequest) -> Result<Operation> {
        self.post(&format!("/services/{service}/activate"), req)
            .await
    }

    /// `POST /v1/services/{name}/rollback`.
    pub async fn rollback(&self, service: &str, req: &RollbackRequest) -> Result<Operation> {
        self.post(&format!("/services/{service}/rollback"), req)
            .await
    }

    /// `POST /v1/services/{name}/prune`.
    pub async fn prune(&self, service: &str, req: &PruneRequest) -> Result<Operation> {
        self.post(&format!("/services/{service}/prune"), req).await
    }

    /// `POST /v1/services/{name}/stop`: stop a slot and keep it stopped.
    pub async fn stop(&self, service: &str, req: &SlotRequest) -> Result<Operation> {
        self.post(&format!("/services/{service}/stop"), req).await
    }

    /// `POST /v1/services/{name}/start`: start a slot's active version.
    pub async fn start(&self, service: &str, req: &SlotRequest) -> Result<Operation> {
        self.post(&format!("/services/{service}/start"), req).await
    }

    /// `POST /v1/services/{name}/health`: run a health check on the host now.
    pub async fn check_health(
        &self,
        service: &str,
        req: &HealthCheckRequest,
    ) -> Result<HealthReport> {
        self.post(&format!("/services/{service}/health"), req).await
    }

    /// `GET /v1/operations/{id}`.
    pub async fn operation(&self, id: &str) -> Result<Operation> {
        self.get(&format!("/operations/{id}"), &[], Duration::from_secs(30))
            .await
    }

    /// One long-poll `GET /v1/operations/{id}?wait=W`: answers when done or after `wait`.
    pub async fn poll_operation(&self, id: &str, wait: Duration) -> Result<Operation> {
        let query = [("wait", format!("{}ms", wait.as_millis()))];
        self.get(
            &format!("/operations/{id}"),
            &query,
            wait + Duration::from_secs(30),
        )
        .await
    }

    /// Long-polls until the operation is done; fails after `deadline`.
    pub async fn wait_operation(&self, id: &str, deadline: Duration) -> Result<Operation> {
        let start = tokio::time::Instant::now();
        loop {
            let left = deadline.saturating_sub(start.elapsed());
            let op = self
                .poll_operation(id, left.min(Duration::from_secs(30)))
                .await?;
            if op.state.is_done() {
                return Ok(op);
            }
            if start.elapsed() >= deadline {
                return Err(ClientError::OperationTimeout {
                    id: id.to_string(),
                    waited_ms: start.elapsed().as_millis() as u64,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A client of `addr` over https, trusting a fresh CA.
    fn client(dir: &Path, addr: std::net::SocketAddr) -> AgentClient {
        let ca = crate::pki::init(dir).unwrap();
        let auth = ClientAuth {
            ca_pem: Some(std::fs::read(ca.cert).unwrap()),
            ..Default::default()
        };
        AgentClient::new(&format!("https://{addr}"), &auth).unwrap()
    }

    #[tokio::test]
    async fn a_refused_connection_is_not_transient() {
        let dir = tempfile::tempdir().unwrap();
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        // The listener is gone: nothing listens there any more.
        let c = client(dir.path(), addr).retrying(Duration::from_secs(30));
        let e = c.host_info().await.unwrap_err();
        assert!(!e.is_transient(), "{e:?}");
    }

    #[tokio::test]
    async fn a_connection_dropped_before_the_handshake_is_retried_within_the_window() {
        // Accepts and drops every connection at once, counting them.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                count.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let once = client(&dir.path().join("a"), addr);
        let e = once.host_info().await.unwrap_err();
        assert!(e.is_transient(), "{e:?}");
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "no retry by default");
        // Backoff from 100 ms: within a second it tries again, and it stops once the window is over.
        let retried = client(&dir.path().join("b"), addr).retrying(Duration::from_secs(1));
        let e = retried.host_info().await.unwrap_err();
        assert!(e.is_transient(), "{e:?}");
        assert!(
            accepted.load(Ordering::SeqCst) > 2,
            "retried: 1 + at least 2"
        );
    }
}
