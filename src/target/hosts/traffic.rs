//! The hosts target's traffic switch: the hook told which hosts serve a version.

use std::time::Duration;

use super::Hosts;
use crate::target::Result;

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

    pub(super) async fn call_switch_hook(&self, version: &str) -> std::result::Result<(), String> {
        let Some(hook) = &self.spec.traffic_switch else {
            return Ok(());
        };
        let set = self
            .active_set(version)
            .await
            .map_err(|e| crate::error_chain(&e))?;
        let payload = serde_json::json!({
            "service": self.service,
            "version": version,
            "active": set.iter().map(|(host, address)| serde_json::json!({"host": host, "address": address})).collect::<Vec<_>>(),
        });
        let addresses: Vec<&str> = set.iter().map(|(_, a)| a.as_str()).collect();
        let timeout = hook.timeout.0;
        if let Some(cmd) = &hook.command {
            let mut child = tokio::process::Command::new(&cmd[0])
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
