//! The dashboard's HTTP surface: the embedded page, JSON views, server-sent events, and the guard
//! every request passes (loopback `Host`; for POSTs the CSRF token and `Origin`).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::Stream;
use serde_json::{Value, json};

use super::actions::{self, ActionStatus};
use super::cluster::Cluster;
use super::login;
use super::tls::{Auth, Peer};
use super::view::{self, Layout, NO_ZONE, PlannedStep};
use crate::cli::CliError;
use crate::spec::Manifest;
use crate::state::{Actor, Record, Store, history};

/// How often a live view looks at the journal for appended records.
pub const POLL: Duration = Duration::from_millis(200);

/// How often a live view of an app whose team state is in the cluster reads its ConfigMap.
pub const CLUSTER_POLL: Duration = Duration::from_secs(1);

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/style.css");

/// What every handler shares: the state dir, the token, the actions started here.
pub struct Shared {
    pub store: Store,
    csrf: String,
    /// `Host` values the server answers to: its own loopback address under its names.
    hosts: Vec<String>,
    pub(super) actions: Mutex<BTreeMap<String, ActionStatus>>,
    pub(super) threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// Bumped when an action changes, so live views send it.
    pub(super) generation: AtomicU64,
    stopped: tokio::sync::watch::Receiver<bool>,
    /// With `--context`/`--namespace`: the namespace whose team state is listed too (read only).
    pub(super) cluster: Option<Cluster>,
    /// Over HTTPS: who may come in (any `Host`: the certificate names the server).
    auth: Option<Auth>,
    /// The value of the session cookie `/login` sets for the token (random per process).
    session: String,
}

impl Shared {
    pub fn new(
        store: Store,
        bound: SocketAddr,
        stopped: tokio::sync::watch::Receiver<bool>,
        cluster: Option<Cluster>,
        auth: Option<Auth>,
    ) -> Result<Self, CliError> {
        let port = bound.port();
        let mut hosts = vec![bound.to_string(), format!("localhost:{port}")];
        if bound.is_ipv4() {
            hosts.push(format!("[::1]:{port}"));
        } else {
            hosts.push(format!("127.0.0.1:{port}"));
        }
        Ok(Shared {
            store,
            csrf: token()?,
            hosts,
            actions: Mutex::new(BTreeMap::new()),
            threads: Mutex::new(Vec::new()),
            generation: AtomicU64::new(0),
            stopped,
            cluster,
            auth,
            session: token()?,
        })
    }

    pub(super) fn csrf(&self) -> &str {
        &self.csrf
    }

    pub(super) fn session(&self) -> &str {
        &self.session
    }

    /// The bearer token, when this dashboard takes one.
    pub(super) fn token(&self) -> Option<&str> {
        self.auth.as_ref().and_then(|a| a.token.as_deref())
    }

    /// Waits for every action thread this dashboard started.
    pub fn join_actions(&self) {
        let threads = std::mem::take(&mut *self.threads.lock().expect("threads lock"));
        for t in threads {
            let _ = t.join();
        }
    }

    /// The apps whose team state is in the cluster (none without `--context`/`--namespace`, or
    /// when the cluster cannot be read now).
    async fn cluster_apps(&self) -> Vec<String> {
        match &self.cluster {
            Some(c) => c.apps().await.unwrap_or_default(),
            None => Vec::new(),
        }
    }

    /// Whether `app` is shown from the cluster's team state.
    pub(super) async fn in_cluster(&self, app: &str) -> bool {
        self.cluster_apps().await.iter().any(|a| a == app)
    }

    /// `app`'s journal: the cluster's team state merged with this machine's, or the state dir's.
    async fn records(&self, app: &str) -> Result<Vec<Record>, String> {
        match &self.cluster {
            Some(c) if self.in_cluster(app).await => c.records(&self.store, app).await,
            _ => self.store.read(app).map_err(|e| crate::error_chain(&e)),
        }
    }

    /// The apps in the state dir, by name.
    fn apps(&self) -> Vec<String> {
        let root = self.store.app_dir("");
        let Ok(dir) = std::fs::read_dir(&root) else {
            return Vec::new();
        };
        let mut apps: Vec<String> = dir
            .filter_map(Result::ok)
            .filter(|e| e.path().join("journal.jsonl").is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        apps.sort();
        apps
    }
}

/// 32 random bytes, hex.
fn token() -> Result<String, CliError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| {
            CliError::Failed("dashboard: no system randomness for the CSRF token".into())
        })?;
    Ok(hex::encode(bytes))
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(index))
        .route(
            "/app.js",
            get(|| asset("text/javascript; charset=utf-8", SCRIPT)),
        )
        .route(
            "/style.css",
            get(|| asset("text/css; charset=utf-8", STYLE)),
        )
        .route("/login", get(login::page).post(login::sign_in))
        .route(
            "/login.js",
            get(|| asset("text/javascript; charset=utf-8", login::SCRIPT)),
        )
        .route("/api/apps", get(apps))
        .route("/api/apps/{app}", get(app_view))
        .route("/api/apps/{app}/events", get(events))
        .route("/api/apps/{app}/actions", post(action))
        .layer(middleware::from_fn_with_state(shared.clone(), guard))
        .with_state(shared)
}

pub(super) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

/// Every request: on loopback, `Host` must be this server's loopback address (a page from another
/// site that re-resolves its name to 127.0.0.1 sends its own name); over HTTPS, the client must
/// have shown a certificate of the CA or send the token. POSTs also need the page's CSRF token
/// and, when the browser sends one, this server's `Origin`.
async fn guard(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let scheme = match &shared.auth {
        None if !shared.hosts.iter().any(|h| h == host) => {
            return error(
                StatusCode::FORBIDDEN,
                format!("Host {host:?} is not this dashboard's address"),
            );
        }
        None => "http",
        Some(auth) => {
            let cert = request
                .extensions()
                .get::<Peer>()
                .is_some_and(|p| p.client_cert);
            let authenticated = (cert && auth.client_certs)
                || bearer(headers, auth)
                || (auth.token.is_some() && login::has_session(headers, &shared.session))
                || login::open(request.uri().path());
            // A browser without a session is sent to sign in with the token.
            let html = headers
                .get(header::ACCEPT)
                .and_then(|a| a.to_str().ok())
                .is_some_and(|a| a.contains("text/html"));
            if !authenticated
                && html
                && auth.token.is_some()
                && request.method() == axum::http::Method::GET
            {
                return (
                    StatusCode::SEE_OTHER,
                    [(header::LOCATION, HeaderValue::from_static("/login"))],
                )
                    .into_response();
            }
            if !authenticated {
                let mut r = error(
                    StatusCode::UNAUTHORIZED,
                    match (auth.client_certs, auth.token.is_some()) {
                        (true, true) => {
                            "a client certificate of the dashboard's CA or `Authorization: Bearer <token>` is needed"
                        }
                        (true, false) => "a client certificate of the dashboard's CA is needed",
                        _ => "`Authorization: Bearer <token>` is needed",
                    },
                );
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"rollgate dashboard\""),
                );
                return r;
            }
            "https"
        }
    };
    if request.method() == axum::http::Method::POST {
        if let Some(origin) = headers.get(header::ORIGIN)
            && origin.to_str().ok() != Some(format!("{scheme}://{host}").as_str())
        {
            return error(
                StatusCode::FORBIDDEN,
                "the request's Origin is another site",
            );
        }
        let sent = headers
            .get("x-csrf-token")
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        if !same(sent, shared.csrf.as_bytes()) {
            return error(
                StatusCode::FORBIDDEN,
                "missing or wrong X-CSRF-Token (reload the page)",
            );
        }
    }
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    // The page loads nothing from anywhere else, and no other site may frame it.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Whether the request carries the token (`Authorization: Bearer`), compared in constant time.
fn bearer(headers: &HeaderMap, auth: &Auth) -> bool {
    let Some(token) = &auth.token else {
        return false;
    };
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .is_some_and(|sent| same(sent, token.as_bytes()))
}

/// Constant-time equality.
pub(super) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn index(State(shared): State<Arc<Shared>>) -> Response {
    let page = INDEX.replace("{{CSRF}}", &shared.csrf);
    asset("text/html; charset=utf-8", page).await
}

pub(super) async fn asset(content_type: &'static str, body: impl Into<String>) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body.into()).into_response()
}

/// The apps: the state dir's and, with `--context`/`--namespace`, the cluster's (`source`
/// `cluster`: shown from the team state there, read only).
async fn apps(State(shared): State<Arc<Shared>>) -> Response {
    let cluster = shared.cluster_apps().await;
    let mut all: Vec<(String, &str)> = shared
        .apps()
        .into_iter()
        .filter(|a| !cluster.contains(a))
        .map(|a| (a, "local"))
        .chain(cluster.iter().map(|a| (a.clone(), "cluster")))
        .collect();
    all.sort();
    let mut list = Vec::new();
    for (app, source) in all {
        let records = shared.records(&app).await.unwrap_or_default();
        let last = history(&records).pop();
        list.push(json!({"app": app, "source": source, "state": view::state_word(last.as_ref()), "rollout": last}));
    }
    let namespace = shared.cluster.as_ref().map(|c| c.namespace.clone());
    Json(json!({"apps": list, "namespace": namespace})).into_response()
}

/// The app named in a path, if the state dir (or the cluster) has it (an unknown or malformed
/// name is a 404).
async fn known(shared: &Shared, app: &str) -> Result<(), Box<Response>> {
    if shared.apps().iter().any(|a| a == app) || shared.in_cluster(app).await {
        Ok(())
    } else {
        let mut places = shared.store.app_dir("").display().to_string();
        if let Some(c) = &shared.cluster {
            places.push_str(&format!(" or in namespace {}", c.namespace));
        }
        Err(Box::new(error(
            StatusCode::NOT_FOUND,
            format!("no app {app:?} in {places}"),
        )))
    }
}

async fn app_view(State(shared): State<Arc<Shared>>, Path(app): Path<String>) -> Response {
    if let Err(r) = known(&shared, &app).await {
        return *r;
    }
    let records = match shared.records(&app).await {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_GATEWAY, e),
    };
    let remote = shared.in_cluster(&app).await;
    Json(payload(&shared, &app, &records, remote, &mut None)).into_response()
}

/// The view of `app` made from `records`, with the action started here and the lock's holder
/// (for an app shown from the cluster: the namespace, and no actions); `cache` keeps the layout of
/// the last rollout across calls.
fn payload(
    shared: &Shared,
    app: &str,
    records: &[Record],
    remote: bool,
    cache: &mut Option<(String, Layout)>,
) -> Value {
    let last_id = history(records).pop().map(|r| r.id);
    let layout = match (cache.as_ref(), &last_id) {
        // A Kubernetes plan found from the journal's counts once there are some.
        (Some((id, layout)), Some(last))
            if id == last && (!layout.steps.is_empty() || layout.deployment.is_none()) =>
        {
            layout.clone()
        }
        (_, Some(last)) => {
            let layout = layout(&shared.store, app, last, records);
            *cache = Some((last.clone(), layout.clone()));
            layout
        }
        (_, None) => Layout::default(),
    };
    let v = view::view(app, records, &layout);
    if remote && let Some(c) = &shared.cluster {
        return json!({"view": v, "action": null, "running": null, "cluster": {
            "namespace": c.namespace,
            "promote": c.command("promote", app),
        }});
    }
    let action = shared
        .actions
        .lock()
        .expect("actions lock")
        .get(app)
        .cloned();
    let running = shared.store.holder(app, &Actor::from_env().host);
    json!({"view": v, "action": action, "running": running})
}

/// The planned steps, the hosts (with zones) or the Deployment, and the metric checks' success
/// conditions of rollout `id`'s stored manifest; no steps when it cannot be planned offline (a
/// Kubernetes target is sized by its cluster).
pub(super) fn layout(store: &Store, app: &str, id: &str, records: &[Record]) -> Layout {
    let Ok(rollout) = store.load_manifest(app, id) else {
        return Layout::default();
    };
    let origin = store
        .app_dir(app)
        .join("rollouts")
        .join(format!("{id}.json"));
    let Ok(m) = Manifest::from_resolved(rollout, &origin) else {
        return Layout::default();
    };
    let hosts = m.rollout.spec.target.hosts().map_or_else(Vec::new, |h| {
        let key = h.spread_by.as_deref().unwrap_or("zone");
        h.hosts
            .iter()
            .map(|host| {
                let zone = host.labels.get(key).map_or(NO_ZONE, String::as_str);
                (host.name.clone(), zone.to_string())
            })
            .collect()
    });
    // A Kubernetes target is sized by its cluster: the size whose plan has the journal's counts.
    let plan = match m.rollout.spec.target.kubernetes() {
        None => crate::target::offline_size(&m.rollout.spec.target, None)
            .ok()
            .and_then(|(n, capacity)| crate::plan::plan(&m.strategy, n, capacity).ok()),
        Some(_) => {
            let (total, counts) = view::recorded_counts(records, id);
            let most = counts
                .iter()
                .map(|&(_, old, new)| old + new)
                .max()
                .unwrap_or(0);
            (1..=most.saturating_mul(2).saturating_add(2))
                .filter(|_| !counts.is_empty())
                .filter_map(|n| {
                    let (n, capacity) =
                        crate::target::offline_size(&m.rollout.spec.target, Some(n)).ok()?;
                    crate::plan::plan(&m.strategy, n, capacity).ok()
                })
                .find(|plan| {
                    plan.steps.len() == total
                        && counts.iter().all(|&(step, old, new)| {
                            plan.steps
                                .get(step)
                                .is_some_and(|s| (s.old, s.new) == (old, new))
                        })
                })
        }
    };
    let steps = plan.map_or_else(Vec::new, |plan| {
        plan.steps
            .iter()
            .map(|s| PlannedStep {
                kind: s.kind.as_str().to_string(),
                note: s.note.clone(),
                manual: s.manual,
                signed: s.approvers.is_some(),
                approvals: s.approvals,
            })
            .collect()
    });
    let conditions = m
        .rollout
        .spec
        .checks
        .iter()
        .filter(|c| c.is_metric())
        .filter_map(|c| Some((c.name.clone(), c.success_condition.clone()?)))
        .collect();
    Layout {
        steps,
        hosts,
        deployment: m
            .rollout
            .spec
            .target
            .kubernetes()
            .map(|k| k.deployment.clone()),
        conditions,
    }
}

/// What a live view remembers between two looks at the journal.
struct Watch {
    shared: Arc<Shared>,
    /// Shown from the cluster's team state: read every [`CLUSTER_POLL`].
    remote: bool,
    app: String,
    /// (length, modified) of the journal, and the action generation, when last sent.
    seen: Option<(u64, Option<SystemTime>, u64)>,
    sent_records: usize,
    cache: Option<(String, Layout)>,
    queue: std::collections::VecDeque<SseEvent>,
}

/// Server-sent events: `view` (the whole picture) whenever the journal grows or an action changes,
/// and `record` for each appended journal record (the lines `apply -o json` prints).
async fn events(State(shared): State<Arc<Shared>>, Path(app): Path<String>) -> Response {
    if let Err(r) = known(&shared, &app).await {
        return *r;
    }
    let remote = shared.in_cluster(&app).await;
    let watch = Watch {
        remote,
        shared,
        app,
        seen: None,
        sent_records: 0,
        cache: None,
        queue: Default::default(),
    };
    Sse::new(stream(watch))
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn stream(watch: Watch) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    futures_util::stream::unfold(watch, |mut w| async move {
        loop {
            if let Some(e) = w.queue.pop_front() {
                return Some((Ok(e), w));
            }
            if *w.shared.stopped.borrow() {
                return None;
            }
            let generation = w.shared.generation.load(Ordering::SeqCst);
            let (now, remote_records) = if w.remote {
                // The cluster's records, read each poll: the view is sent when they change.
                match w.shared.records(&w.app).await {
                    Ok(records) => {
                        let last = records.last().map_or(0, |r| r.at_ms);
                        let n = records.len() as u64;
                        (Some((n, None, last)), Some(records))
                    }
                    Err(_) => (w.seen, None),
                }
            } else {
                let path = w.shared.store.app_dir(&w.app).join("journal.jsonl");
                let meta = std::fs::metadata(&path).ok();
                let now = (
                    meta.as_ref().map_or(0, std::fs::Metadata::len),
                    meta.and_then(|m| m.modified().ok()),
                    generation,
                );
                (Some(now), None)
            };
            if w.seen != now {
                w.seen = now;
                let records = match remote_records {
                    Some(r) => Ok(r),
                    None => w.shared.records(&w.app).await,
                };
                if let Ok(records) = records {
                    let body = payload(&w.shared, &w.app, &records, w.remote, &mut w.cache);
                    // A compacted journal starts over: its records were sent already.
                    let from = if records.len() < w.sent_records {
                        records.len()
                    } else {
                        w.sent_records
                    };
                    for r in &records[from..] {
                        if let Ok(e) = SseEvent::default().event("record").json_data(r) {
                            w.queue.push_back(e);
                        }
                    }
                    w.sent_records = records.len();
                    if let Ok(e) = SseEvent::default().event("view").json_data(&body) {
                        w.queue.push_back(e);
                    }
                    continue;
                }
            }
            let mut stopped = w.shared.stopped.clone();
            let poll = if w.remote { CLUSTER_POLL } else { POLL };
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = stopped.wait_for(|s| *s) => {}
            }
        }
    })
}

async fn action(
    State(shared): State<Arc<Shared>>,
    Path(app): Path<String>,
    _headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = known(&shared, &app).await {
        return *r;
    }
    let request: actions::ActionRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "the request body: {e}; expected {{\"action\": \"promote|pause|resume|abort|rollback\", \"full\": false}}"
                ),
            );
        }
    };
    if let Some(c) = &shared.cluster
        && shared.in_cluster(&app).await
    {
        return (
            StatusCode::CONFLICT,
            Json(json!({
                "error": format!("{app}'s team state is in namespace {}: the dashboard shows it read only; act from a terminal", c.namespace),
                "cli": c.command(request.action.as_str(), &app),
            })),
        )
            .into_response();
    }
    match actions::start(&shared, &app, request) {
        Ok(status) => (StatusCode::ACCEPTED, Json(status)).into_response(),
        Err(actions::Refused { status, body }) => (status, Json(body)).into_response(),
    }
}
