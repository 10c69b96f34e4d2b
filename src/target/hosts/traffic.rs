//! The hosts target's traffic switch: the hook told which hosts serve a version, or, for a
//! traffic-weighted canary, the weight of each version and the instances that serve it.

use std::time::Duration;

use super::Hosts;
use crate::plan::Step;
use crate::target::{Result, Sink, TargetError};

impl Hosts {
    /// Every host running `version`, as `ip:port` of the slot that runs it.
    async fn active_set(&self, version: &str) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for (name, view) in self.views_each(Duration::from_secs(5)).await {
            // An unreachable host is left out of the active set: the balancer must not send to it.
            let Ok(view) = view else { continue };
            if let Some(slot) = view.slot_running(version) {
                let ip = self
                    .address(&name)
                    .rsplit_once(':')
                    .map_or("", |(h, _)| h)
                    .to_string();
                out.push((name.clone(), format!("{ip}:{}", slot.port.unwrap_or(0))));
            }
        }
        Ok(out)
    }

    /// Every version running on a reachable host, with `ip:port` of each slot that runs it, in
    /// the order first seen.
    async fn serving(&self) -> Vec<(String, Vec<(String, String)>)> {
        let mut out: Vec<(String, Vec<(String, String)>)> = Vec::new();
        for (name, view) in self.views_each(Duration::from_secs(5)).await {
            let Ok(view) = view else { continue };
            let ip = self
                .address(&name)
                .rsplit_once(':')
                .map_or("", |(h, _)| h)
                .to_string();
            for slot in view.running() {
                let Some(v) = &slot.active else { continue };
                let at = (name.clone(), format!("{ip}:{}", slot.port.unwrap_or(0)));
                match out.iter_mut().find(|(x, _)| x == v) {
                    Some((_, list)) => list.push(at),
                    None => out.push((v.clone(), vec![at])),
                }
            }
        }
        out
    }

    /// Tells the hook that `version` gets `weight` percent of traffic and the other versions
    /// share the rest equally (one, the stable version, in a canary). The JSON on stdin (or the
    /// POST body) is `{"service", "version", "weights": [{"version", "weight", "instances":
    /// [{"host", "address"}]}], "active": [...]}`, `active` being every instance with a weight
    /// above 0; `ROLLGATE_WEIGHTS` is `v1=90,v2=10` (README "Traffic-weighted canary").
    pub(super) async fn call_weights_hook(
        &self,
        version: &str,
        weight: u32,
    ) -> std::result::Result<(), String> {
        self.call_weights_hook_without(version, weight, &[]).await
    }

    /// [`call_weights_hook`](Self::call_weights_hook), leaving out the instances of `draining`
    /// hosts (about to be changed: the balancer stops sending to them first).
    async fn call_weights_hook_without(
        &self,
        version: &str,
        weight: u32,
        draining: &[String],
    ) -> std::result::Result<(), String> {
        let mut serving = self.serving().await;
        for (_, instances) in &mut serving {
            instances.retain(|(host, _)| !draining.contains(host));
        }
        serving.retain(|(_, instances)| !instances.is_empty());
        serving.sort_by(|a, b| a.0.cmp(&b.0));
        let others = serving.iter().filter(|(v, _)| v != version).count() as u32;
        let mut weights = Vec::new();
        let mut active = Vec::new();
        let mut env = Vec::new();
        for (v, instances) in &serving {
            let w = match v == version {
                true => weight,
                // The rest, split equally; the first takes what does not divide.
                false => {
                    let share = (100 - weight) / others.max(1);
                    let first = serving.iter().find(|(x, _)| x != version).map(|(x, _)| x);
                    share
                        + if first == Some(v) {
                            (100 - weight) % others.max(1)
                        } else {
                            0
                        }
                }
            };
            let list: Vec<serde_json::Value> = instances
                .iter()
                .map(|(host, address)| serde_json::json!({"host": host, "address": address}))
                .collect();
            if w > 0 {
                active.extend(list.iter().cloned());
            }
            env.push(format!("{v}={w}"));
            weights.push(serde_json::json!({"version": v, "weight": w, "instances": list}));
        }
        if !serving.iter().any(|(v, _)| v == version) {
            // The version has no instance yet: the hook hears its weight all the same.
            env.push(format!("{version}={weight}"));
            weights
                .push(serde_json::json!({"version": version, "weight": weight, "instances": []}));
        }
        if let Some(lock) = &self.weighted {
            *lock.lock().expect("weight lock") = weight;
        }
        let payload = serde_json::json!({
            "service": self.service,
            "version": version,
            "weights": weights,
            "active": active,
        });
        let addresses: Vec<String> = active
            .iter()
            .filter_map(|a| a["address"].as_str().map(str::to_string))
            .collect();
        self.run_hook(payload, &addresses, version, Some(env.join(",")))
            .await
    }

    /// A step of a weighted canary: the weight before the hosts change when it lowers the canary's
    /// share or leaves no stable instance; and after them always, with the instances as they are.
    pub(super) async fn scale_weighted(
        &self,
        step: &Step,
        version: &str,
        deadline: Duration,
        sink: Sink<'_>,
    ) -> Result<()> {
        let Some(w) = step.traffic_weight.filter(|_| self.weighted.is_some()) else {
            return self.scale_hosts(step, version, deadline, sink).await;
        };
        let current = self
            .weighted
            .as_ref()
            .map_or(0, |l| *l.lock().expect("weight lock"));
        // Hosts this step changes leave the balancer first (one slot per host is replaced in
        // place), at the weight in force or, when it goes first, the step's.
        let draining = self.changing(step, version).await?;
        let first = step.traffic_first(current);
        if first || !draining.is_empty() {
            let w = if first { w } else { current };
            self.call_weights_hook_without(version, w, &draining)
                .await
                .map_err(|e| TargetError::Failed(format!("traffic switch: {e}")))?;
        }
        self.scale_hosts(step, version, deadline, sink).await?;
        self.call_weights_hook(version, w)
            .await
            .map_err(|e| TargetError::Failed(format!("traffic switch: {e}")))
    }

    /// The hosts `step` changes: those that start `version` or stop another version (the same
    /// choice as the step's own, first `new` hosts in wave order new, last `old` hosts old).
    async fn changing(&self, step: &Step, version: &str) -> Result<Vec<String>> {
        let views = self.views().await?;
        let n = views.len();
        Ok(views
            .iter()
            .enumerate()
            .filter(|(i, (_, view))| {
                let new = *i < step.new as usize;
                let keep_old = *i >= n.saturating_sub(step.old as usize);
                (new && !view.runs(version)) || (!keep_old && view.runs_other(version))
            })
            .map(|(_, (name, _))| name.clone())
            .collect())
    }

    pub(super) async fn call_switch_hook(&self, version: &str) -> std::result::Result<(), String> {
        let set = self
            .active_set(version)
            .await
            .map_err(|e| crate::error_chain(&e))?;
        let payload = serde_json::json!({
            "service": self.service,
            "version": version,
            "active": set.iter().map(|(host, address)| serde_json::json!({"host": host, "address": address})).collect::<Vec<_>>(),
        });
        let addresses: Vec<String> = set.iter().map(|(_, a)| a.clone()).collect();
        self.run_hook(payload, &addresses, version, None).await
    }

    /// Runs the hook's command (the JSON on stdin) or POSTs it to the webhook.
    async fn run_hook(
        &self,
        payload: serde_json::Value,
        addresses: &[String],
        version: &str,
        weights: Option<String>,
    ) -> std::result::Result<(), String> {
        let Some(hook) = &self.spec.traffic_switch else {
            return Ok(());
        };
        let timeout = hook.timeout.0;
        if let Some(cmd) = &hook.command {
            let mut command = tokio::process::Command::new(&cmd[0]);
            if let Some(w) = &weights {
                command.env("ROLLGATE_WEIGHTS", w);
            }
            let mut child = command
                .args(&cmd[1..])
                .env("ROLLGATE_ACTIVE", addresses.join(","))
                .env("ROLLGATE_VERSION", version)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("{}: {e}", cmd[0]))?;
            if let Some(mut stdin) = child.stdin.take() {
                use tokio::io::AsyncWriteExt;
                let _ = stdin.write_all(payload.to_string().as_bytes()).await;
            }
            let out = tokio::time::timeout(timeout, child.wait_with_output())
                .await
                .map_err(|_| format!("{}: no answer within {timeout:?}", cmd[0]))?
                .map_err(|e| format!("{}: {e}", cmd[0]))?;
            if !out.status.success() {
                return Err(format!(
                    "{}: {}: {}",
                    cmd[0],
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            return Ok(());
        }
        if let Some(url) = &hook.webhook {
            let mut last = String::new();
            for attempt in 0..3 {
                match self
                    .http
                    .post(url)
                    .json(&payload)
                    .timeout(timeout)
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => return Ok(()),
                    Ok(r) => last = format!("{url}: status {}", r.status()),
                    Err(e) => last = format!("{url}: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
            return Err(last);
        }
        Ok(())
    }
}
