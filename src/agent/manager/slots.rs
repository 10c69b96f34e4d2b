//! The slot operations: activate, roll back, prune, start and stop, and the desired state they persist.

use super::*;

/// What a start or stop request does to its slot.
#[derive(Debug, Clone, Copy)]
enum SlotAction {
    Start,
    Stop,
}

impl Agent {
    pub fn activate(self: &Arc<Self>, service: &str, req: ActivateRequest) -> Result<Operation> {
        let svc = self.service(service)?.clone();
        Self::check_version(&req.version)?;
        Self::check_timeout(req.timeout_ms)?;
        Self::valid_slot(&svc, req.slot)?;
        let (op, new) = self.begin(
            OperationKind::Activate,
            service,
            Some(req.slot),
            Some(&req.version),
            &req.request_id,
            Self::fingerprint(OperationKind::Activate, service, &req),
        )?;
        if new {
            let agent = self.clone();
            self.spawn_op(&op, async move {
                let _guard = svc.lock.lock().await;
                agent
                    .do_activate(&svc, req.slot, &req.version, req.timeout_ms)
                    .await
            });
        }
        Ok(op)
    }

    pub fn rollback(self: &Arc<Self>, service: &str, req: RollbackRequest) -> Result<Operation> {
        let svc = self.service(service)?.clone();
        Self::check_timeout(req.timeout_ms)?;
        Self::valid_slot(&svc, req.slot)?;
        if let Some(to) = &req.to {
            Self::check_version(to)?;
        }
        let (op, new) = self.begin(
            OperationKind::Rollback,
            service,
            Some(req.slot),
            req.to.as_deref(),
            &req.request_id,
            Self::fingerprint(OperationKind::Rollback, service, &req),
        )?;
        if new {
            let agent = self.clone();
            self.spawn_op(&op, async move {
                let _guard = svc.lock.lock().await;
                let target = match req.to.clone() {
                    Some(to) => to,
                    None => lock(&svc.desired).slots[req.slot as usize]
                        .previous
                        .clone()
                        .ok_or_else(|| "no previous version to roll back to".to_string())?,
                };
                agent
                    .do_activate(&svc, req.slot, &target, req.timeout_ms)
                    .await
                    .map(|(m, r)| (format!("rolled back to {target}: {m}"), r))
            });
        }
        Ok(op)
    }

    pub fn prune(self: &Arc<Self>, service: &str, req: PruneRequest) -> Result<Operation> {
        let svc = self.service(service)?.clone();
        let (op, new) = self.begin(
            OperationKind::Prune,
            service,
            None,
            None,
            &req.request_id,
            Self::fingerprint(OperationKind::Prune, service, &req),
        )?;
        if new {
            self.spawn_op(&op, async move {
                let _guard = svc.lock.lock().await;
                let protected: Vec<String> = lock(&svc.desired)
                    .slots
                    .iter()
                    .flat_map(|s| [s.active.clone(), s.previous.clone()])
                    .flatten()
                    .collect();
                // Removing a version is blocking file work (100k files took 2.6 s): off the
                // async workers, so the API keeps answering meanwhile.
                let dirs = svc.dirs.clone();
                tokio::task::spawn_blocking(move || {
                    let installed = stage::installed(&dirs);
                    let victims = prune_victims(&installed, &protected, req.keep);
                    let mut removed = Vec::new();
                    for v in victims {
                        stage::remove_version(&dirs, &v)
                            .map_err(|e| format!("removing version {v}: {e}"))?;
                        removed.push(v);
                    }
                    Ok((format!("removed {} version(s)", removed.len()), removed))
                })
                .await
                .map_err(|e| format!("prune: {e}"))?
            });
        }
        Ok(op)
    }

    pub fn stop(self: &Arc<Self>, service: &str, req: SlotRequest) -> Result<Operation> {
        self.slot_op(service, req, SlotAction::Stop)
    }

    pub fn start(self: &Arc<Self>, service: &str, req: SlotRequest) -> Result<Operation> {
        self.slot_op(service, req, SlotAction::Start)
    }

    fn slot_op(
        self: &Arc<Self>,
        service: &str,
        req: SlotRequest,
        action: SlotAction,
    ) -> Result<Operation> {
        let svc = self.service(service)?.clone();
        Self::valid_slot(&svc, req.slot)?;
        let kind = match action {
            SlotAction::Start => OperationKind::Start,
            SlotAction::Stop => OperationKind::Stop,
        };
        let (op, new) = self.begin(
            kind,
            service,
            Some(req.slot),
            None,
            &req.request_id,
            Self::fingerprint(kind, service, &req),
        )?;
        if new {
            let agent = self.clone();
            self.spawn_op(&op, async move {
                let _guard = svc.lock.lock().await;
                let slot = req.slot;
                match action {
                    SlotAction::Start => {
                        let version = lock(&svc.desired).slots[slot as usize]
                            .active
                            .clone()
                            .ok_or_else(|| format!("slot {slot} has no active version to start"))?;
                        agent.do_activate(&svc, slot, &version, None).await
                    }
                    SlotAction::Stop => {
                        agent.set_desired(&svc, slot, |s| s.desired_running = false)?;
                        agent
                            .backends
                            .stop(
                                svc.config.backend,
                                &svc.config.name,
                                slot,
                                svc.config.stop_timeout.0,
                            )
                            .await
                            .map_err(|e| error_chain(&e))?;
                        Ok((format!("slot {slot} stopped"), vec![]))
                    }
                }
            });
        }
        Ok(op)
    }

    fn set_desired(
        &self,
        svc: &Service,
        slot: u32,
        f: impl FnOnce(&mut SlotState),
    ) -> std::result::Result<(), String> {
        let mut desired = lock(&svc.desired);
        let mut next = desired.clone();
        f(&mut next.slots[slot as usize]);
        store::write_json(&svc.dirs.state_file(), &next).map_err(|e| error_chain(&e))?;
        *desired = next;
        drop(desired);
        self.bump();
        Ok(())
    }

    /// Stop, switch, start, wait until running and healthy.
    async fn do_activate(
        &self,
        svc: &Service,
        slot: u32,
        version: &str,
        timeout_ms: Option<u64>,
    ) -> OpResult {
        if stage::read_meta(&svc.dirs, version).is_none() {
            return Err(format!(
                "version {version} is not installed; stage it first"
            ));
        }
        let name = &svc.config.name;
        let kind = svc.config.backend;
        let current = lock(&svc.desired).slots[slot as usize].clone();
        let timeout = timeout_ms
            .map(Duration::from_millis)
            .or(svc.config.health.as_ref().map(|h| h.start_timeout.0))
            .unwrap_or(Duration::from_secs(60));
        // Already there and healthy: a new request for the same version does not bounce it.
        if current.active.as_deref() == Some(version) && current.desired_running {
            let o = self.backends.observe(kind, name, slot).await;
            if o.state == RunState::Running && self.check_slot(svc, slot).await.healthy {
                return Ok((format!("slot {slot} already running {version}"), vec![]));
            }
        }
        // 1. graceful stop
        self.backends
            .stop(kind, name, slot, svc.config.stop_timeout.0)
            .await
            .map_err(|e| format!("stopping the running version: {}", error_chain(&e)))?;
        // 2. switch: one atomic write decides old or new after a crash
        let from = current.active.clone();
        self.set_desired(svc, slot, |s| {
            if s.active.as_deref() != Some(version) {
                s.previous = s.active.take();
            }
            s.active = Some(version.to_string());
            s.desired_running = true;
        })?;
        lock(&svc.health)[slot as usize] = None;
        tracing::info!(service = %name, slot, from = ?from, to = version, "switched; starting");
        // 3. start
        self.backends
            .start(kind, &self.run_spec(svc, slot, version))
            .await
            .map_err(|e| format!("starting version {version}: {}", error_chain(&e)))?;
        // 4. wait until running and healthy
        self.wait_ready(svc, slot, timeout).await?;
        Ok((
            format!(
                "slot {slot} running {version}{}",
                from.map(|f| format!(" (was {f})")).unwrap_or_default()
            ),
            vec![],
        ))
    }
}

/// Which versions a prune removes: all but the newest `keep`, never a protected one.
pub fn prune_victims(
    installed: &[crate::agent::api::InstalledVersion],
    protected: &[String],
    keep: usize,
) -> Vec<String> {
    let mut newest_first: Vec<&crate::agent::api::InstalledVersion> = installed.iter().collect();
    newest_first.reverse();
    newest_first
        .into_iter()
        .skip(keep)
        .filter(|v| !protected.contains(&v.version))
        .map(|v| v.version.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::api::InstalledVersion;

    fn v(name: &str, at: u64) -> InstalledVersion {
        InstalledVersion {
            version: name.into(),
            sha256: String::new(),
            staged_unix_ms: at,
        }
    }

    #[test]
    fn prune_keeps_newest_and_never_active_or_previous() {
        let installed = [v("1", 1), v("2", 2), v("3", 3), v("4", 4), v("5", 5)];
        assert_eq!(prune_victims(&installed, &[], 2), vec!["3", "2", "1"]);
        let protected = ["1".to_string(), "2".to_string()];
        assert_eq!(prune_victims(&installed, &protected, 2), vec!["3"]);
        assert_eq!(
            prune_victims(&installed, &protected, 0),
            vec!["5", "4", "3"]
        );
    }
}
