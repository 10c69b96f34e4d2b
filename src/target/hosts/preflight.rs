//! `apply --dry-run` on a fleet: each agent answers, authenticated, for the service, and the new
//! version is installed there or its artifact can be had; nothing is sent that changes anything.

use futures_util::future::join_all;

use super::{Artifact, Hosts};
use crate::target::{Result, TargetError};

impl Hosts {
    /// One line per host saying what `apply` would find there, or the first host's failure.
    pub async fn preflight(&self, version: &str) -> Result<Vec<String>> {
        let artifact = self.artifact_reachable().await?;
        let lines = join_all(self.order.iter().map(async |name| {
            let client = self.client(name)?;
            let status = client.service(&self.service).await.map_err(|source| {
                TargetError::AgentUnreachable {
                    instance: name.clone(),
                    source,
                }
            })?;
            let running = status
                .slots
                .iter()
                .filter_map(|s| s.active.as_deref())
                .collect::<Vec<_>>()
                .join(", ");
            let running = if running.is_empty() {
                "nothing"
            } else {
                &running
            };
            let installed = status.versions.iter().any(|v| v.version == version);
            let how = match (installed, &artifact) {
                (true, _) => format!("{version} installed"),
                (false, Some(a)) => format!("{version} to be staged from {a}"),
                (false, None) => {
                    return Err(TargetError::Rejected {
                        instance: name.clone(),
                        message: format!(
                            "version {version} is not installed and the manifest names no artifact"
                        ),
                    });
                }
            };
            Ok(format!(
                "{name}: agent answers (authenticated), service {} runs {running}; {how}",
                self.service
            ))
        }))
        .await;
        lines.into_iter().collect()
    }

    /// The artifact as `apply` would send it: a file read and hashed (done at construction), or a
    /// URL that answers a HEAD from here (the agents fetch it themselves).
    async fn artifact_reachable(&self) -> Result<Option<String>> {
        match &self.artifact {
            None => Ok(None),
            Some(Artifact::File { path, sha256 }) => {
                Ok(Some(format!("{} (sha256 {sha256})", path.display())))
            }
            Some(Artifact::Url { url, .. }) => {
                let answer = self
                    .http
                    .head(url)
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status)
                    .map_err(|e| TargetError::Setup(format!("artifact {url}: {e}")))?;
                Ok(Some(format!("{url} (HEAD: {})", answer.status())))
            }
        }
    }
}
