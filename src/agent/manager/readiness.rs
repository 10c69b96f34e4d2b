//! Readiness: waiting for a slot to run and pass its health check, and running checks on demand.

use super::*;

impl Agent {
    /// Waits until `slot` runs and passes its check. Fails when the service exits, after
    /// `failureThreshold` consecutive failed checks once the service has answered one (an HTTP
    /// status, a command's exit; a refused connection before that is a service still starting),
    /// or at `timeout`.
    pub(super) async fn wait_ready(
        &self,
        svc: &Service,
        slot: u32,
        timeout: Duration,
    ) -> std::result::Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let (interval, threshold) = svc
            .config
            .health
            .as_ref()
            .map(|h| (h.interval.0, h.failure_threshold))
            .unwrap_or((Duration::from_millis(250), 0));
        let mut last = "not started yet".to_string();
        // Consecutive failures since the service first answered; `None` until it has.
        let mut failures: Option<u32> = None;
        loop {
            let o = self
                .backends
                .observe(svc.config.backend, &svc.config.name, slot)
                .await;
            match o.state {
                RunState::Running => match svc.config.health {
                    Some(_) => {
                        let (report, answered) = self.check_slot_answered(svc, slot).await;
                        if report.healthy {
                            return Ok(());
                        }
                        if answered || failures.is_some() {
                            let n = failures.unwrap_or(0) + 1;
                            if n >= threshold {
                                return Err(format!(
                                    "unhealthy: {n} consecutive failed checks (failureThreshold {threshold}); last: {}",
                                    report.detail
                                ));
                            }
                            failures = Some(n);
                        }
                        last = format!("unhealthy: {}", report.detail);
                    }
                    // Without a check, running for a second counts as up.
                    None if o.uptime_ms.unwrap_or(0) >= 1000 => return Ok(()),
                    None => last = "running".into(),
                },
                RunState::Failed | RunState::Backoff => {
                    return Err(format!(
                        "service exited during start: {}{}",
                        describe_exit(&o),
                        stderr_tail(svc, slot)
                    ));
                }
                RunState::Stopped if o.last_exit.is_some() => {
                    return Err(format!(
                        "service stopped during start: {}{}",
                        describe_exit(&o),
                        stderr_tail(svc, slot)
                    ));
                }
                _ => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "not running and healthy within {} ms; last: {last}",
                    timeout.as_millis()
                ));
            }
            tokio::time::sleep(interval).await;
        }
    }

    pub(super) async fn check_slot(&self, svc: &Service, slot: u32) -> HealthReport {
        self.check_slot_answered(svc, slot).await.0
    }

    /// [`Agent::check_slot`], and whether the service answered the check.
    async fn check_slot_answered(&self, svc: &Service, slot: u32) -> (HealthReport, bool) {
        let (report, answered) = match &svc.config.health {
            Some(h) => {
                let version = lock(&svc.desired).slots[slot as usize]
                    .active
                    .clone()
                    .unwrap_or_default();
                let check = self.expand_check(svc, slot, &version, &h.check);
                health::run_answered(
                    &check,
                    h.timeout.0,
                    &self.check_context(svc, slot, &version),
                )
                .await
            }
            None => (
                HealthReport {
                    healthy: true,
                    detail: "no health check configured".into(),
                    at_unix_ms: now_unix_ms(),
                    elapsed_ms: 0,
                },
                true,
            ),
        };
        lock(&svc.health)[slot as usize] = Some(report.clone());
        self.bump();
        (report, answered)
    }

    /// Runs the service's check (or an ad-hoc one) now.
    pub async fn check_health(
        &self,
        service: &str,
        req: HealthCheckRequest,
    ) -> Result<HealthReport> {
        let svc = self.service(service)?;
        Self::valid_slot(svc, req.slot)?;
        match req.check {
            None => Ok(self.check_slot(svc, req.slot).await),
            Some(check) => {
                if matches!(check, CheckSpec::Command { .. }) && !self.config.allow_remote_commands
                {
                    return Err(ManagerError::Forbidden(
                        "command checks from callers are disabled (allowRemoteCommands: false)"
                            .into(),
                    ));
                }
                let version = lock(&svc.desired).slots[req.slot as usize]
                    .active
                    .clone()
                    .unwrap_or_default();
                let check = self.expand_check(svc, req.slot, &version, &check);
                let timeout = Duration::from_millis(req.timeout_ms.unwrap_or(5000).min(60_000));
                let ctx = self.check_context(svc, req.slot, &version);
                Ok(health::run(&check, timeout, &ctx).await)
            }
        }
    }

    fn expand_check(
        &self,
        svc: &Service,
        slot: u32,
        version: &str,
        check: &CheckSpec,
    ) -> CheckSpec {
        let dir = svc.dirs.version(version);
        let port = svc.config.port(slot);
        let x = |s: &str| expand_slot(s, port, slot, version, &dir);
        match check {
            CheckSpec::Http {
                url,
                status,
                body_contains,
            } => CheckSpec::Http {
                url: x(url),
                status: *status,
                body_contains: body_contains.as_deref().map(x),
            },
            CheckSpec::Tcp { address } => CheckSpec::Tcp {
                address: x(address),
            },
            CheckSpec::Command { program, args } => CheckSpec::Command {
                program: x(program),
                args: args.iter().map(|a| x(a)).collect(),
            },
        }
    }

    /// A command check runs like the slot's service: its user, its dir, its environment.
    fn check_context(&self, svc: &Service, slot: u32, version: &str) -> health::CommandContext {
        let spec = self.run_spec(svc, slot, version);
        let cwd = if version.is_empty() || !spec.cwd.is_dir() {
            svc.dirs.root.clone()
        } else {
            spec.cwd
        };
        health::CommandContext {
            user: spec.user,
            cwd,
            env: spec.env,
        }
    }
}

/// The last lines the slot wrote to stderr, to say why it failed.
fn stderr_tail(svc: &Service, slot: u32) -> String {
    let path = svc.dirs.logs().join(format!("slot-{slot}.stderr.log"));
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return String::new();
    }
    let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
    let tail: String = tail.chars().take(400).collect();
    format!("; stderr: {tail}")
}

fn describe_exit(o: &Observed) -> String {
    let mut text = match &o.last_exit {
        Some(e) => match (e.code, e.signal) {
            (Some(c), _) => format!("exit code {c}"),
            (_, Some(s)) => format!("killed by signal {s}"),
            _ => "exited".to_string(),
        },
        None => "exited".to_string(),
    };
    if let Some(d) = &o.detail {
        text.push_str(&format!(" ({d})"));
    }
    text
}
