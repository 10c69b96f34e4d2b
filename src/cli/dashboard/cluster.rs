//! Team state in a cluster, read only: with `--context`/`--namespace` the dashboard also lists the
//! apps whose journal is mirrored in rollgate's ConfigMaps in that namespace, and shows each from
//! the cluster's records merged with this machine's (as `rollgate status --namespace` does).
//! Actions on them are refused with the CLI command to run instead.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cli::CliError;
use crate::hold::Env;
use crate::kube::Kube;
use crate::state::mirror::{self, Remote};
use crate::state::{Record, Store};

/// How long the list of the namespace's apps is reused before it is asked for again.
const APPS_TTL: Duration = Duration::from_secs(2);

/// The namespace whose team state is shown, with what was read of it.
pub struct Cluster {
    kube: Kube,
    pub namespace: String,
    /// `--context`, for the commands the page shows.
    pub context: Option<String>,
    apps: tokio::sync::Mutex<Option<(Instant, Vec<String>)>>,
    remotes: Mutex<BTreeMap<String, Arc<Remote>>>,
}

impl Cluster {
    /// The cluster of `--context` (else the kubeconfig's current one) at `--namespace` (else the
    /// context's); its apps are listed once here, so a cluster that cannot be read fails at start.
    pub async fn connect(env: &Env) -> Result<Cluster, CliError> {
        let kube = env.kube().await?.clone();
        let namespace = env
            .namespace
            .clone()
            .unwrap_or_else(|| kube.default_namespace().to_string());
        let cluster = Cluster {
            kube,
            namespace,
            context: env.context.clone(),
            apps: tokio::sync::Mutex::new(None),
            remotes: Mutex::new(BTreeMap::new()),
        };
        cluster.apps().await?;
        Ok(cluster)
    }

    /// The apps with team state in the namespace (cached for [`APPS_TTL`]).
    pub async fn apps(&self) -> Result<Vec<String>, CliError> {
        let mut cached = self.apps.lock().await;
        if let Some((at, apps)) = cached.as_ref()
            && at.elapsed() < APPS_TTL
        {
            return Ok(apps.clone());
        }
        let apps = mirror::apps(&self.kube, &self.namespace).await?;
        *cached = Some((Instant::now(), apps.clone()));
        Ok(apps)
    }

    fn remote(&self, app: &str) -> Result<Arc<Remote>, CliError> {
        let mut remotes = self.remotes.lock().expect("remotes lock");
        if let Some(r) = remotes.get(app) {
            return Ok(r.clone());
        }
        let r = Arc::new(Remote::new(&self.kube, &self.namespace, app)?);
        remotes.insert(app.to_string(), r.clone());
        Ok(r)
    }

    /// `app`'s records: the cluster's merged with this machine's of the namespace (the manifests
    /// this machine lacks are saved in the state dir, as `status` does).
    pub async fn records(&self, store: &Store, app: &str) -> Result<Vec<Record>, String> {
        let remote = self.remote(app).map_err(|e| e.to_string())?;
        match remote.records(store).await {
            Ok(Some(records)) => Ok(records),
            Ok(None) => Ok(Vec::new()),
            Err(e) => Err(crate::error_chain(&e)),
        }
    }

    /// The command that does `action` on `app` from a terminal.
    pub fn command(&self, action: &str, app: &str) -> String {
        let context = self
            .context
            .as_ref()
            .map_or_else(String::new, |c| format!(" --context {c}"));
        format!(
            "rollgate {action} {app}{context} --namespace {}",
            self.namespace
        )
    }
}
