//! The HTTP stack under every Kubernetes client: kube's own (`kube::client::ClientBuilder`'s
//! `TryFrom<Config>`), layer for layer, with one difference: its TCP connections send at once
//! (`TCP_NODELAY`, as client-go's do). Without it the first request on a new connection waited for
//! the API server's delayed acknowledgement of the TLS handshake's last flight (Nagle's
//! algorithm): about 40 ms each time a burst of concurrent requests opened connections, several
//! times in the first quarter second of every command. kube-rs knows (kube-rs/kube#2056, open):
//! once its `Config` can ask for `TCP_NODELAY`, this module goes.

use std::time::Duration;

use http::{Request, Response};
use hyper_timeout::TimeoutConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::retry::RetryPolicy;
use kube::client::{Body, ClientBuilder, ConfigExt, DynBody};
use tower::retry::RetryLayer;
use tower::util::BoxService;
use tower::{BoxError, ServiceBuilder, ServiceExt as _};
use tower_http::ServiceExt as _;
use tower_http::trace::TraceLayer;

/// The service a [`ClientBuilder`] from [`builder`] wraps.
pub type Stack = BoxService<Request<Body>, Response<Box<DynBody>>, BoxError>;

/// kube's client stack for `config`, its connections with `TCP_NODELAY`. A proxy in the
/// kubeconfig gets kube's own stack (and its answer about proxies).
pub fn builder(config: &kube::Config) -> Result<ClientBuilder<Stack>, kube::Error> {
    if config.proxy_url.is_some() {
        return ClientBuilder::try_from(config.clone());
    }
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let https = config.rustls_https_connector_with_connector(http)?;
    let mut connector = TimeoutConnector::new(https);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    connector.set_reset_reader_on_write(config.reset_reader_on_write);
    let client: hyper_util::client::legacy::Client<_, Body> =
        hyper_util::client::legacy::Builder::new(TokioExecutor::new()).build(connector);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(
            config
                .default_retry
                .then(|| RetryLayer::new(RetryPolicy::server_retry())),
        )
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .layer(
            // The spans kube's own stack makes (`RUST_LOG=kube=debug` shows them): one per
            // request, with its method, URL and status.
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request<Body>| {
                    tracing::debug_span!(
                        target: "kube_client::client::builder",
                        "HTTP",
                        http.method = %req.method(),
                        http.url = %req.uri(),
                        http.status_code = tracing::field::Empty,
                        otel.name = req.extensions().get::<&'static str>().unwrap_or(&"HTTP"),
                        otel.kind = "client",
                        otel.status_code = tracing::field::Empty,
                    )
                })
                .on_request(|_: &Request<Body>, _: &tracing::Span| {
                    tracing::debug!(target: "kube_client::client::builder", "requesting");
                })
                .on_response(
                    |res: &Response<hyper::body::Incoming>, _: Duration, span: &tracing::Span| {
                        let status = res.status();
                        span.record("http.status_code", status.as_u16());
                        if status.is_client_error() || status.is_server_error() {
                            span.record("otel.status_code", "ERROR");
                        }
                    },
                )
                .on_body_chunk(())
                .on_eos(
                    |_: Option<&http::HeaderMap>, _: Duration, _: &tracing::Span| {
                        tracing::debug!(target: "kube_client::client::builder", "stream closed");
                    },
                )
                .on_failure(
                    |class: tower_http::classify::ServerErrorsFailureClass,
                     _: Duration,
                     span: &tracing::Span| {
                        span.record("otel.status_code", "ERROR");
                        tracing::error!(target: "kube_client::client::builder", "failed: {class}");
                    },
                ),
        )
        .map_err(BoxError::from)
        .service(client);
    let service = service
        .map_response_body(|body| {
            Box::new(http_body_util::BodyExt::map_err(body, BoxError::from)) as Box<DynBody>
        })
        .boxed();
    Ok(ClientBuilder::new(
        service,
        config.default_namespace.clone(),
    ))
}
