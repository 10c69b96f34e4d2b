//! Staging: receiving an artifact (downloaded or uploaded) and installing it as a version.

use super::*;

/// Fails an upload's operation if the upload is dropped before its body is received.
struct UploadCutOff<'a> {
    agent: &'a Agent,
    id: &'a str,
    path: &'a Path,
    armed: bool,
}

impl Drop for UploadCutOff<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(self.path);
            self.agent.finish(
                self.id,
                Err(
                    "the upload ended before the whole artifact arrived (the caller went away)"
                        .into(),
                ),
            );
        }
    }
}

impl Agent {
    /// What an artifact may unpack to, from `limits`.
    fn caps(&self) -> crate::agent::archive::Caps {
        crate::agent::archive::Caps {
            bytes: self.config.limits.unpacked_bytes(),
            entries: self.config.limits.archive_entries,
        }
    }

    fn binary_name(svc: &Service, file_name: Option<&str>) -> String {
        file_name
            .map(str::to_string)
            .unwrap_or_else(|| svc.config.command.clone())
    }

    /// Stages an artifact the agent downloads itself.
    pub fn stage_url(self: &Arc<Self>, service: &str, req: StageRequest) -> Result<Operation> {
        let svc = self.service(service)?.clone();
        Self::check_version(&req.version)?;
        stage::check_sha(&req.sha256).map_err(|e| ManagerError::BadRequest(e.to_string()))?;
        let (op, new) = self.begin(
            OperationKind::Stage,
            service,
            None,
            Some(&req.version),
            &req.request_id,
            Self::fingerprint(OperationKind::Stage, service, &req),
        )?;
        if new {
            let limit = self.config.limits.artifact_bytes;
            let allowed = self.config.allowed_artifact_hosts.clone();
            let caps = self.caps();
            let path = svc.dirs.staging().join(format!("{}.artifact", op.id));
            self.spawn_op(&op, async move {
                let received = stage::download(&req.url, &path, limit, allowed.as_deref()).await;
                let result = match received {
                    Ok((sha, size)) => {
                        install(
                            &svc,
                            &req.version,
                            &path,
                            &req.sha256,
                            &sha,
                            size,
                            req.kind,
                            Self::binary_name(&svc, req.file_name.as_deref()),
                            caps,
                        )
                        .await
                    }
                    Err(e) => Err(error_chain(&e)),
                };
                let _ = std::fs::remove_file(&path);
                result
            });
        }
        Ok(op)
    }

    /// Stages an uploaded artifact. The body is received here, before answering; the
    /// install runs as the operation. A replay does not read the body again.
    pub async fn stage_upload<S, B, E>(
        self: &Arc<Self>,
        service: &str,
        version: &str,
        params: UploadParams,
        body: S,
    ) -> Result<Operation>
    where
        S: futures_util::Stream<Item = std::result::Result<B, E>> + Unpin,
        B: AsRef<[u8]>,
        E: std::fmt::Display,
    {
        let svc = self.service(service)?.clone();
        Self::check_version(version)?;
        stage::check_sha(&params.sha256).map_err(|e| ManagerError::BadRequest(e.to_string()))?;
        let (op, new) = self.begin(
            OperationKind::Stage,
            service,
            None,
            Some(version),
            &params.request_id,
            format!(
                "{}|{version}",
                Self::fingerprint(OperationKind::Stage, service, &params)
            ),
        )?;
        if !new {
            return Ok(op);
        }
        let path = svc.dirs.staging().join(format!("{}.artifact", op.id));
        // When the caller goes away mid-body, the server drops this future: the guard then fails
        // the operation and removes the partial file, so a replay is not answered with an
        // operation that never ends.
        let mut cut_off = UploadCutOff {
            agent: self,
            id: &op.id,
            path: &path,
            armed: true,
        };
        let received = stage::receive(body, &path, self.config.limits.artifact_bytes).await;
        cut_off.armed = false;
        drop(cut_off);
        match received {
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                self.finish(&op.id, Err(error_chain(&e)));
            }
            Ok((sha, size)) => {
                let version = version.to_string();
                let binary = Self::binary_name(&svc, params.file_name.as_deref());
                let caps = self.caps();
                self.spawn_op(&op, async move {
                    let r = install(
                        &svc,
                        &version,
                        &path,
                        &params.sha256,
                        &sha,
                        size,
                        params.kind,
                        binary,
                        caps,
                    )
                    .await;
                    let _ = std::fs::remove_file(&path);
                    r
                });
            }
        }
        self.operation(&op.id)
    }
}

#[allow(clippy::too_many_arguments)]
async fn install(
    svc: &Arc<Service>,
    version: &str,
    path: &std::path::Path,
    expected: &str,
    actual: &str,
    size: u64,
    kind: Option<crate::agent::api::ArtifactKind>,
    binary: String,
    caps: crate::agent::archive::Caps,
) -> OpResult {
    let _guard = svc.lock.lock().await;
    let dirs = svc.dirs.clone();
    let (version, path, expected, actual) = (
        version.to_string(),
        path.to_path_buf(),
        expected.to_string(),
        actual.to_string(),
    );
    let result = tokio::task::spawn_blocking(move || {
        stage::install(
            &dirs, &version, &path, &expected, &actual, kind, &binary, caps,
        )
    })
    .await
    .map_err(|e| e.to_string())?;
    match result {
        Ok(meta) => Ok((
            format!(
                "staged {} ({size} bytes, sha256 {})",
                meta.version, meta.sha256
            ),
            vec![],
        )),
        Err(e) => Err(error_chain(&e)),
    }
}
