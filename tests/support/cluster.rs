//! The real Kubernetes control plane of `tests/cluster`, brought up once per test run and shared by every test.
//!
//! `shared()` runs `tests/cluster/cluster.sh up` the first time it is called (which
//! reuses a cluster that is already up, and builds the binaries on a cold cache),
//! then each test takes its own `kube::Client` (a client belongs to the tokio runtime
//! it was made on, and every `#[tokio::test]` has its own) and its own namespace.
//!
//! The tests skip, saying why, only when the cluster cannot exist here: Go is
//! missing and no binaries are cached. Under CI (`CI` set) they never skip, and a
//! failing `up` fails every test that asked for the cluster, loudly.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::await_condition;
use kube::{Api, Client, Config};

/// The annotation that puts a Node under kwok's control, as `cluster.sh` creates them.
pub const FAKE_NODE_ANNOTATION: (&str, &str) = ("kwok.x-k8s.io/node", "fake");

/// Pod label (any value) that keeps the pod Running but never Ready.
pub const NEVER_READY_LABEL: &str = "rollgate.dev/never-ready";
/// Pod annotation, a Go duration ("1500ms"): exact delay before the pod turns Ready.
pub const READY_DELAY_ANNOTATION: &str = "rollgate.dev/ready-delay";
/// Pod annotation, a Go duration: with `READY_DELAY_ANNOTATION`, the delay is drawn
/// uniformly from `[ready-delay, ready-delay-max)`.
pub const READY_DELAY_MAX_ANNOTATION: &str = "rollgate.dev/ready-delay-max";
/// Pod annotation, a Go duration: the pod's container crashes that long after it
/// turned Ready (CrashLoopBackOff, Ready False; phase Failed with restartPolicy Never).
pub const FAIL_AFTER_ANNOTATION: &str = "rollgate.dev/fail-after";
/// Pod annotation, a Go duration: how long a deleted pod lingers (default 200-500 ms).
pub const DELETE_DELAY_ANNOTATION: &str = "rollgate.dev/delete-delay";

/// A running test control plane.
#[derive(Debug)]
pub struct Cluster {
    kubeconfig: PathBuf,
    bin_dir: PathBuf,
}

static SHARED: OnceLock<Result<Option<Cluster>, String>> = OnceLock::new();

/// The cluster, brought up on first use; `None` (after printing why) when this
/// machine cannot run it and we are not under CI.
///
/// # Panics
///
/// When `cluster.sh up` fails, or when the cluster cannot run under CI.
pub fn shared() -> Option<&'static Cluster> {
    match SHARED.get_or_init(bring_up) {
        Ok(Some(cluster)) => Some(cluster),
        Ok(None) => None,
        Err(message) => panic!("{message}"),
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cluster/cluster.sh")
}

fn bring_up() -> Result<Option<Cluster>, String> {
    let env = cluster_env()?;
    let under_ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
    let cached = env.bin_dir.join("kube-apiserver").is_file();
    let have_go = Command::new("go")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !cached && !have_go {
        let why =
            "the Kubernetes test cluster needs Go to build its binaries, and `go` is not on PATH";
        if under_ci {
            return Err(format!(
                "{why} (CI is set, so this is an error, not a skip)"
            ));
        }
        // Straight to stderr: libtest would hide eprintln! output of a passing test.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: {why}; see tests/cluster/README.md"
        );
        return Ok(None);
    }
    // stderr goes straight to the terminal: a cold `up` builds for many minutes
    // and says so with progress lines.
    let status = Command::new("bash")
        .arg(script())
        .arg("up")
        .status()
        .map_err(|e| format!("could not run {}: {e}", script().display()))?;
    if !status.success() {
        return Err(format!(
            "`{} up` failed ({status}); the components' logs are in {}",
            script().display(),
            env.kubeconfig
                .parent()
                .unwrap_or(Path::new("/"))
                .join("logs")
                .display()
        ));
    }
    Ok(Some(env))
}

/// Reads `cluster.sh env`, which prints `export NAME=value` lines.
fn cluster_env() -> Result<Cluster, String> {
    let out = Command::new("bash")
        .arg(script())
        .arg("env")
        .output()
        .map_err(|e| format!("could not run {}: {e}", script().display()))?;
    if !out.status.success() {
        return Err(format!(
            "`cluster.sh env` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let var = |name: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix("export ")?
                    .strip_prefix(name)?
                    .strip_prefix('=')
            })
            .map(PathBuf::from)
            .ok_or_else(|| format!("`cluster.sh env` printed no {name}: {text}"))
    };
    Ok(Cluster {
        kubeconfig: var("KUBECONFIG")?,
        bin_dir: var("ROLLGATE_KUBE_BIN")?,
    })
}

impl Cluster {
    /// The admin kubeconfig (`system:masters`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// A new client for the calling test's runtime.
    pub async fn client(&self) -> Client {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)
            .unwrap_or_else(|e| panic!("reading {}: {e}", self.kubeconfig.display()));
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .unwrap_or_else(|e| panic!("loading {}: {e}", self.kubeconfig.display()));
        Client::try_from(config).expect("building a kube client")
    }

    /// The kubectl built with the control plane (Debian's is too old), pointed at this cluster.
    pub fn kubectl(&self) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(self.bin_dir.join("kubectl"));
        command.arg("--kubeconfig").arg(&self.kubeconfig);
        command
    }

    /// A fresh namespace named `rg-<purpose>-<random>`, with its default
    /// ServiceAccount in place so that pods can be admitted at once.
    ///
    /// Namespaces are not deleted afterwards: a failed test's objects stay for
    /// inspection, and every `cluster.sh up` starts from an empty etcd.
    pub async fn namespace(&self, client: &Client, purpose: &str) -> String {
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let namespace = Namespace {
            metadata: ObjectMeta {
                generate_name: Some(format!("rg-{purpose}-")),
                labels: Some([("rollgate.dev/test".to_owned(), purpose.to_owned())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        let created = namespaces
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|e| panic!("creating a namespace for {purpose}: {e}"));
        let name = created
            .metadata
            .name
            .expect("the apiserver names generated namespaces");
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
        let has_default = await_condition(accounts, "default", |sa: Option<&ServiceAccount>| {
            sa.is_some()
        });
        tokio::time::timeout(std::time::Duration::from_secs(60), has_default)
            .await
            .unwrap_or_else(|_| panic!("namespace {name} got no default ServiceAccount in 60s"))
            .unwrap_or_else(|e| panic!("watching ServiceAccounts in {name}: {e}"));
        name
    }
}

/// A second kube-apiserver on the cluster's etcd, on its own port (`cluster.sh extra-apiserver`):
/// a client pointed at it can lose its API server while the controllers, the scheduler and kwok
/// carry on through the cluster's own. Stopped when dropped.
pub struct ExtraApiserver {
    port: u16,
    kubeconfig: PathBuf,
}

impl Cluster {
    /// Starts a second apiserver on `port` (one port per test) and waits until it is ready.
    pub async fn extra_apiserver(&self, port: u16) -> ExtraApiserver {
        let kubeconfig = extra_apiserver_command("start", port).await;
        ExtraApiserver {
            port,
            kubeconfig: PathBuf::from(kubeconfig.trim()),
        }
    }
}

impl ExtraApiserver {
    /// Its kubeconfig: the cluster's admin credentials, its port.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// SIGKILL, like a crash; returns once the process is gone.
    pub async fn kill(&self) {
        extra_apiserver_command("kill", self.port).await;
    }

    /// Starts it again and waits until it is ready.
    pub async fn restart(&self) {
        extra_apiserver_command("start", self.port).await;
    }
}

impl Drop for ExtraApiserver {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .args(["extra-apiserver", "stop", &self.port.to_string()])
            .output();
    }
}

/// Runs `cluster.sh extra-apiserver ACTION PORT` and returns its stdout.
async fn extra_apiserver_command(action: &str, port: u16) -> String {
    let out = tokio::process::Command::new("bash")
        .arg(script())
        .args(["extra-apiserver", action, &port.to_string()])
        .output()
        .await
        .unwrap_or_else(|e| panic!("running cluster.sh extra-apiserver {action}: {e}"));
    assert!(
        out.status.success(),
        "cluster.sh extra-apiserver {action} {port}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Watches the objects of kind `K` labelled `app=<app>` until `stop` fires, folding every
/// consistent snapshot of them (never a half-listed one) into `S` with `observe`. Signals `listed`
/// once the first full list is in, so a caller can start acting only once it is watched.
pub fn watch_fold<K, S>(
    api: Api<K>,
    app: &str,
    listed: tokio::sync::oneshot::Sender<()>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    observe: fn(&mut S, &[std::sync::Arc<K>]),
) -> tokio::task::JoinHandle<S>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + Send
        + Sync
        + serde::de::DeserializeOwned
        + 'static,
    S: Default + Send + 'static,
{
    use futures_util::StreamExt;
    use kube::runtime::{reflector, watcher};
    let config = watcher::Config::default().labels(&format!("app={app}"));
    tokio::spawn(async move {
        let (reader, writer) = reflector::store();
        let mut events = reflector(writer, watcher(api, config)).boxed();
        let mut listed = Some(listed);
        let mut seen = S::default();
        loop {
            tokio::select! {
                _ = &mut stop => return seen,
                event = events.next() => {
                    let event = event.expect("watch streams do not end").expect("watching");
                    if matches!(event, watcher::Event::Init | watcher::Event::InitApply(_)) {
                        continue; // the store holds the previous full list until InitDone
                    }
                    observe(&mut seen, &reader.state());
                    if let Some(listed) = listed.take() {
                        let _ = listed.send(());
                    }
                }
            }
        }
    })
}
