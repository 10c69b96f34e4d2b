//! `rollgate dashboard`: a web view of this machine's rollouts, served from the binary on loopback
//! (or, with TLS and client authentication, `tls`, on another address).
//!
//! Pages and data come from the state dir only: `view` folds an app's journal into the picture
//! (pure), `api` serves it (JSON, and server-sent events fed by polling the fsynced journal every
//! 200 ms), `actions` runs promote / pause / resume / abort / rollback through the same calls as
//! the CLI. Every POST carries the page's per-process CSRF token; every request's `Host` must be
//! the loopback address served (no DNS rebinding); over HTTPS every request must come with a
//! client certificate of the CA or the bearer token. `cluster` adds the apps whose team state is
//! in a namespace, read only.

mod actions;
mod api;
mod cluster;
mod login;
mod tls;
pub mod view;

use std::net::SocketAddr;
use std::sync::Arc;

use crate::cli::{CliError, DashboardArgs, exit};
use crate::hold::Env;
use crate::spec::InputError;
use crate::state::Store;

/// A dashboard being served; dropping `stop` (or sending on it) ends it.
pub struct Served {
    pub url: String,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    shared: Arc<api::Shared>,
}

impl Served {
    /// Stops serving (live streams end) and waits for the actions it started to return.
    pub async fn stop(self) -> Result<(), CliError> {
        let _ = self.stop.send(true);
        let served = self.task.await;
        let shared = self.shared.clone();
        let waited = tokio::task::spawn_blocking(move || shared.join_actions()).await;
        served
            .map_err(|e| CliError::Failed(format!("dashboard: {e}")))?
            .map_err(|e| CliError::Failed(format!("dashboard: {e}")))?;
        waited.map_err(|e| CliError::Failed(format!("dashboard: {e}")))
    }
}

/// Parses `--listen`: an IP address and port.
pub fn listen_addr(listen: &str) -> Result<SocketAddr, InputError> {
    listen.parse().map_err(|_| {
        InputError::general(format!(
            "--listen {listen}: expected an IP address and port, such as 127.0.0.1:7900"
        ))
    })
}

/// Binds `listen` (loopback: no TLS here) and serves the dashboard of `store` in the background.
pub async fn start(listen: &str, store: Store) -> Result<Served, CliError> {
    let args = DashboardArgs {
        listen: listen.to_string(),
        tls_cert: None,
        tls_key: None,
        client_ca: None,
        token_file: None,
    };
    let addr = listen_addr(listen)?;
    let access = tls::access(&args, addr)?;
    start_with(addr, store, None, access).await
}

/// [`start`], with the apps whose team state is in `cluster` listed too, over HTTPS with `access`.
async fn start_with(
    addr: SocketAddr,
    store: Store,
    cluster: Option<cluster::Cluster>,
    access: Option<tls::Access>,
) -> Result<Served, CliError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| CliError::Failed(format!("dashboard: binding {addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| CliError::Failed(format!("dashboard: {e}")))?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let auth = access.as_ref().map(|a| a.auth.clone());
    let shared = Arc::new(api::Shared::new(
        store,
        bound,
        stopped.clone(),
        cluster,
        auth,
    )?);
    let router = api::router(shared.clone());
    let mut stopped_rx = stopped;
    let scheme = if access.is_some() { "https" } else { "http" };
    let task = match access {
        Some(access) => tokio::spawn(tls::serve(listener, access.acceptor, router, stopped_rx)),
        None => tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped_rx.wait_for(|s| *s).await;
                })
                .await
        }),
    };
    Ok(Served {
        url: format!("{scheme}://{bound}/"),
        stop,
        task,
        shared,
    })
}

/// `rollgate dashboard`: serves until Ctrl-C / SIGTERM.
pub async fn run(args: &DashboardArgs, env: &Env) -> Result<u8, CliError> {
    if env.state.is_some() {
        return Err(InputError::general(
            "--state (ROLLGATE_STATE_URL): the dashboard shows this machine's state dir and, with --context/--namespace, a cluster's team state; team state on etcd is not shown yet",
        )
        .into());
    }
    let addr = listen_addr(&args.listen)?;
    let access = tls::access(args, addr)?;
    let cluster = if env.context.is_some() || env.namespace.is_some() {
        Some(cluster::Cluster::connect(env).await?)
    } else {
        None
    };
    let namespace = cluster.as_ref().map(|c| c.namespace.clone());
    let served = start_with(addr, env.store.clone(), cluster, access).await?;
    let interrupted = interrupted();
    // The URL on stdout (alone, first) so scripts can read it; the rest goes to stderr.
    crate::cli::output::out(&format!("{}\n", served.url));
    if let Some(ns) = namespace {
        eprintln!("dashboard: showing the team state of namespace {ns} too (read only)");
    }
    if addr.ip().is_loopback() {
        eprintln!("dashboard: serving on loopback; Ctrl-C stops it");
    } else {
        eprintln!(
            "dashboard: serving HTTPS at {} to authenticated clients; Ctrl-C stops it",
            served.url
        );
    }
    interrupted.await;
    eprintln!("dashboard: stopping (a running action pauses after its current step)");
    served.stop().await?;
    Ok(exit::OK)
}

/// Resolves on the first Ctrl-C or SIGTERM. The handlers are installed when this is called (not
/// when first awaited), so call it before telling anyone to press Ctrl-C.
pub fn interrupted() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let int = signal(SignalKind::interrupt()).ok();
        let term = signal(SignalKind::terminate()).ok();
        async move {
            match (int, term) {
                (Some(mut int), Some(mut term)) => {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
