//! The shared Kubernetes client: the kubeconfig read once per process, and the write fence that lets
//! a process's writes out only while it holds the app's Lease (used by the team state and the target).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use kube::Client;

pub mod client;
pub mod identity;

/// The field manager of every write.
pub const FIELD_MANAGER: &str = "rollgate";
/// How long after the start of its last successful renewal a holder still writes: the Lease
/// duration less 5 s for clock skew between machines and request latency.
pub const WRITE_WINDOW: Duration = Duration::from_secs(10);
/// How soon a holder tries again after a failed renewal. Not its usual period: the window runs
/// from the last success, so a failure followed by a full period would close the fence, if only
/// for a moment, even when the store came back at once.
pub const RENEW_RETRY: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("kubeconfig: {0}")]
    Config(String),
    #[error("--context {name}: the kubeconfig has no such context (it has: {known})")]
    UnknownContext { name: String, known: String },
}

pub type Result<T, E = KubeError> = std::result::Result<T, E>;

/// The kubeconfig, read once per process, and the fence its writing clients share.
#[derive(Clone)]
pub struct Kube {
    config: kube::Config,
    fence: Fence,
    /// Each kind of client, made once: its clones share one pool of connections, so a command's
    /// later requests reuse the TLS connections its first ones opened.
    clients: Arc<Clients>,
}

#[derive(Default)]
struct Clients {
    plain: std::sync::OnceLock<Client>,
    unretried: std::sync::OnceLock<Client>,
    fenced: std::sync::OnceLock<Client>,
}

/// The client in `slot`, made by `make` the first time.
fn made_once(
    slot: &std::sync::OnceLock<Client>,
    make: impl FnOnce() -> Result<Client>,
) -> Result<Client> {
    if let Some(c) = slot.get() {
        return Ok(c.clone());
    }
    let c = make()?;
    Ok(slot.get_or_init(|| c).clone())
}

impl Kube {
    /// Reads the kubeconfig (`KUBECONFIG`, else `~/.kube/config`, else in-cluster), at `context`
    /// when given, else at its current context.
    pub async fn connect(context: Option<&str>) -> Result<Kube> {
        let mut config = match context {
            Some(name) => {
                let file =
                    kube::config::Kubeconfig::read().map_err(|e| KubeError::Config(chain(&e)))?;
                if !file.contexts.iter().any(|c| c.name == name) {
                    let known: Vec<&str> = file.contexts.iter().map(|c| c.name.as_str()).collect();
                    return Err(KubeError::UnknownContext {
                        name: name.to_string(),
                        known: known.join(", "),
                    });
                }
                let options = kube::config::KubeConfigOptions {
                    context: Some(name.to_string()),
                    ..Default::default()
                };
                kube::Config::from_custom_kubeconfig(file, &options)
                    .await
                    .map_err(|e| KubeError::Config(format!("--context {name}: {}", chain(&e))))?
            }
            None => kube::Config::infer()
                .await
                .map_err(|e| KubeError::Config(chain(&e)))?,
        };
        config.connect_timeout = Some(Duration::from_secs(10));
        Ok(Kube {
            config,
            fence: Fence::default(),
            clients: Arc::default(),
        })
    }

    /// The kubeconfig context's namespace, else `default`.
    pub fn default_namespace(&self) -> &str {
        &self.config.default_namespace
    }

    /// A client for reads, the Lease, and control requests (which any machine may send).
    pub fn client(&self) -> Result<Client> {
        made_once(&self.clients.plain, || {
            client::builder(&self.config)
                .map(|b| b.build())
                .map_err(|e| KubeError::Config(format!("kubernetes client: {}", chain(&e))))
        })
    }

    /// A client that sends each request once, without kube's retries of 429, 503 and 504: for
    /// health probes through the API server, where a 503 may be the pod's own answer.
    pub fn unretried(&self) -> Result<Client> {
        made_once(&self.clients.unretried, || {
            let mut config = self.config.clone();
            config.default_retry = false;
            client::builder(&config)
                .map(|b| b.build())
                .map_err(|e| KubeError::Config(format!("kubernetes client: {}", chain(&e))))
        })
    }

    /// A client whose writes go out only while this process holds the app's Lease.
    pub fn fenced(&self) -> Result<Client> {
        made_once(&self.clients.fenced, || {
            let builder = client::builder(&self.config)
                .map_err(|e| KubeError::Config(format!("kubernetes client: {}", chain(&e))))?;
            Ok(builder.with_layer(&FenceLayer(self.fence.clone())).build())
        })
    }

    pub fn fence(&self) -> &Fence {
        &self.fence
    }
}

/// An error with its sources, each once (kube's errors repeat their source in their text).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        let text = src.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = src.source();
    }
    s
}

/// Whether this process may write: shut until a Lease is taken, open until a deadline that each
/// renewal moves on, lost for good once another holder is seen.
#[derive(Debug, Clone, Default)]
pub struct Fence(Arc<Mutex<Gate>>);

#[derive(Debug, Default)]
enum Gate {
    #[default]
    Shut,
    Until(Instant),
    Lost(String),
}

impl Fence {
    /// `Ok` when a write may go out now, else why not.
    pub fn check(&self) -> std::result::Result<(), String> {
        match &*self.0.lock().expect("fence lock") {
            Gate::Shut => Err("this process does not hold the app's team-state lock".into()),
            Gate::Until(deadline) if Instant::now() < *deadline => Ok(()),
            Gate::Until(_) => Err(format!(
                "the app's team-state lock (a Kubernetes Lease or an etcd lease) was not renewed for {}s, so another machine may have taken it over",
                WRITE_WINDOW.as_secs()
            )),
            Gate::Lost(why) => Err(why.clone()),
        }
    }

    /// Whether the Lease went to someone else: no renewal can reopen the fence.
    pub fn is_lost(&self) -> bool {
        matches!(*self.0.lock().expect("fence lock"), Gate::Lost(_))
    }

    pub(crate) fn open_until(&self, deadline: Instant) {
        let mut gate = self.0.lock().expect("fence lock");
        if !matches!(*gate, Gate::Lost(_)) {
            *gate = Gate::Until(deadline);
        }
    }

    pub(crate) fn lose(&self, why: String) {
        *self.0.lock().expect("fence lock") = Gate::Lost(why);
    }

    pub(crate) fn shut(&self) {
        let mut gate = self.0.lock().expect("fence lock");
        if !matches!(*gate, Gate::Lost(_)) {
            *gate = Gate::Shut;
        }
    }
}

/// Rejects mutating requests (anything but GET, HEAD and OPTIONS, and access reviews) while the
/// fence is not open.
#[derive(Clone)]
struct FenceLayer(Fence);

impl<S> tower::Layer<S> for FenceLayer {
    type Service = Fenced<S>;
    fn layer(&self, inner: S) -> Fenced<S> {
        Fenced {
            inner,
            fence: self.0.clone(),
        }
    }
}

#[derive(Clone)]
struct Fenced<S> {
    inner: S,
    fence: Fence,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, B> tower::Service<hyper::Request<B>> for Fenced<S>
where
    S: tower::Service<hyper::Request<B>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = std::result::Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: hyper::Request<B>) -> Self::Future {
        let reads = [
            hyper::Method::GET,
            hyper::Method::HEAD,
            hyper::Method::OPTIONS,
        ];
        // An access review is a question, not a change: the target asks before it takes the lock.
        let question = request
            .uri()
            .path()
            .starts_with("/apis/authorization.k8s.io/");
        if !reads.contains(request.method())
            && !question
            && let Err(why) = self.fence.check()
        {
            let message = format!("write refused: {why}");
            return Box::pin(async move { Err(message.into()) });
        }
        let call = self.inner.call(request);
        Box::pin(async move { call.await.map_err(Into::into) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shut_fence_refuses_and_a_lost_one_never_reopens() {
        let fence = Fence::default();
        assert!(fence.check().is_err());
        fence.open_until(Instant::now() + Duration::from_secs(60));
        assert!(fence.check().is_ok());
        fence.open_until(Instant::now() - Duration::from_millis(1));
        assert!(fence.check().unwrap_err().contains("not renewed"));
        fence.lose("the Lease is now held by bo@box pid 7".into());
        fence.open_until(Instant::now() + Duration::from_secs(60));
        assert!(fence.check().unwrap_err().contains("bo@box"));
    }

    #[tokio::test]
    async fn the_fenced_client_lets_reads_through_and_writes_only_while_the_fence_is_open() {
        use tower::{Layer, ServiceExt};
        let fence = Fence::default();
        let inner = tower::service_fn(|_: hyper::Request<()>| async {
            Ok::<_, std::convert::Infallible>("sent")
        });
        let service = FenceLayer(fence.clone()).layer(inner);
        let request = |method: hyper::Method| {
            hyper::Request::builder()
                .method(method)
                .uri("/api/v1/namespaces/shop/configmaps/rollgate-web")
                .body(())
                .unwrap()
        };
        let get = service.clone().oneshot(request(hyper::Method::GET)).await;
        assert_eq!(get.unwrap(), "sent");
        for method in [
            hyper::Method::POST,
            hyper::Method::PUT,
            hyper::Method::PATCH,
            hyper::Method::DELETE,
        ] {
            let refused = service.clone().oneshot(request(method)).await.unwrap_err();
            assert!(
                refused.to_string().starts_with("write refused: "),
                "{refused}"
            );
        }
        fence.open_until(Instant::now() + Duration::from_secs(60));
        let put = service.clone().oneshot(request(hyper::Method::PUT)).await;
        assert_eq!(put.unwrap(), "sent");
        fence.lose("the Lease is now held by bo@box pid 7".into());
        let put = service.clone().oneshot(request(hyper::Method::PUT)).await;
        assert!(put.unwrap_err().to_string().contains("bo@box"));
    }
}
