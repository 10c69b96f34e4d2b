//! One agent lifecycle for every platform: open, bind, announce, serve until stopped, drain.
//!
//! The foreground `run`, systemd's `service run` and the Windows service's `service_main` all
//! call [`run`]; they differ only in how a stop arrives and whom they tell (the [`Hooks`]).

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::config::AgentConfig;
use super::manager::{Agent, ManagerError};
use super::server::{Server, ServerError};
use super::store::{self, StoreError};

/// A step of the lifecycle that failed before the agent was serving.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("opening the agent's data dir")]
    Open(#[source] ManagerError),
    #[error("binding the listen address")]
    Bind(#[source] ServerError),
    #[error("writing the agent's address to {path}")]
    WriteAddr {
        path: PathBuf,
        #[source]
        source: StoreError,
    },
}

impl DaemonError {
    /// The service-specific exit code a service manager is given: 2 when the configuration
    /// cannot be used as written (a bad listen address, a missing certificate), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            DaemonError::Bind(ServerError::BadListen(_) | ServerError::InsecureListen { .. }) => 2,
            _ => 1,
        }
    }
}

pub type Result<T, E = DaemonError> = std::result::Result<T, E>;

/// What the caller overrides of the configuration.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Replaces `listen:` (port 0 picks a free port).
    pub listen: Option<String>,
    /// Another file the bound URL is written to (it always goes to `<dataDir>/agent.addr`).
    pub addr_file: Option<PathBuf>,
}

/// How the lifecycle tells its service manager where it is.
pub trait Hooks {
    /// The agent is listening at `url` and its address files are written.
    fn ready(&mut self, url: &str);
    /// A stop arrived; the drain (up to `grace`) begins.
    fn stopping(&mut self, grace: Duration);
}

/// No service manager to tell (tests, the foreground `run` outside systemd).
impl Hooks for () {
    fn ready(&mut self, _url: &str) {}
    fn stopping(&mut self, _grace: Duration) {}
}

/// Runs the agent until `stop` resolves, then drains: operations in flight get the
/// configuration's `shutdownGrace` (a warning says so when it runs out), open connections too.
///
/// Returns an error only for what keeps the agent from serving; it is never reported ready then.
pub async fn run(
    config: AgentConfig,
    options: Options,
    stop: impl Future<Output = ()>,
    hooks: &mut impl Hooks,
) -> Result<()> {
    let grace = config.shutdown_grace.0;
    let listen = options.listen.unwrap_or_else(|| config.listen.clone());
    let data_dir = config.data_dir.clone();
    let agent = Agent::open(config).map_err(DaemonError::Open)?;
    let server = Server::bind(agent.clone(), &listen)
        .await
        .map_err(DaemonError::Bind)?;
    let url = server.url();
    let mut addr_files = vec![data_dir.join("agent.addr")];
    addr_files.extend(options.addr_file);
    for path in addr_files {
        store::write_atomic(&path, url.as_bytes())
            .map_err(|source| DaemonError::WriteAddr { path, source })?;
    }
    tracing::info!(%url, data_dir = %data_dir.display(), "listening");
    let cancel = CancellationToken::new();
    let serving = tokio::spawn(server.serve(cancel.clone(), grace));
    // The reconcile runs beside the server so a slow start of a service does not delay
    // readiness; a stop waits for it before draining.
    let reconcile = {
        let agent = agent.clone();
        tokio::spawn(async move { agent.reconcile().await })
    };
    agent.spawn_health_loop();
    hooks.ready(&url);
    stop.await;
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "stopping: finishing operations in flight"
    );
    hooks.stopping(grace);
    cancel.cancel();
    let _ = reconcile.await;
    drain(&agent, grace).await;
    let _ = serving.await;
    tracing::info!("stopped");
    Ok(())
}

/// The agent's drain, itself bounded: the manager's shutdown warns and marks what is still in
/// flight as interrupted when the grace runs out; this bounds the marking too.
async fn drain(agent: &Arc<Agent>, grace: Duration) {
    let bound = grace + Duration::from_secs(5);
    if tokio::time::timeout(bound, agent.shutdown(grace))
        .await
        .is_err()
    {
        tracing::warn!(
            grace_ms = bound.as_millis() as u64,
            "the drain did not finish within its bound; exiting anyway"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Seen(Vec<String>);

    impl Hooks for Seen {
        fn ready(&mut self, url: &str) {
            self.0.push(format!("ready {url}"));
        }
        fn stopping(&mut self, _grace: Duration) {
            self.0.push("stopping".into());
        }
    }

    fn config(dir: &std::path::Path, listen: &str) -> AgentConfig {
        let path = dir.join("agent.yaml");
        let text = format!(
            "listen: \"{listen}\"\ndataDir: \"{}\"\nservices: []\n",
            dir.join("data").display().to_string().replace('\\', "/")
        );
        std::fs::write(&path, text).unwrap();
        super::super::config::load(&[path], None).unwrap()
    }

    #[tokio::test]
    async fn ready_after_listening_with_the_address_written_then_stops() {
        let dir = tempfile::tempdir().unwrap();
        let extra = dir.path().join("addr");
        let mut seen = Seen(vec![]);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let cfg = config(dir.path(), "127.0.0.1:0");
        let data = cfg.data_dir.clone();
        let run = run(
            cfg,
            Options {
                listen: None,
                addr_file: Some(extra.clone()),
            },
            async {
                let _ = rx.await;
            },
            &mut seen,
        );
        let stopper = async {
            for _ in 0..200 {
                if data.join("agent.addr").exists() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            tx.send(()).unwrap();
        };
        let (result, ()) = tokio::join!(run, stopper);
        result.unwrap();
        let url = std::fs::read_to_string(data.join("agent.addr")).unwrap();
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        assert_eq!(std::fs::read_to_string(extra).unwrap(), url);
        assert_eq!(seen.0, vec![format!("ready {url}"), "stopping".to_string()]);
    }

    #[tokio::test]
    async fn a_taken_port_is_an_error_and_never_ready() {
        let dir = tempfile::tempdir().unwrap();
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let listen = taken.local_addr().unwrap().to_string();
        let mut seen = Seen(vec![]);
        let err = run(
            config(dir.path(), &listen),
            Options::default(),
            std::future::pending(),
            &mut seen,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, DaemonError::Bind(_)), "{err:?}");
        assert_eq!(err.exit_code(), 1);
        assert!(seen.0.is_empty(), "{:?}", seen.0);
    }
}
