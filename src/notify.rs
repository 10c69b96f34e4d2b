//! Lifecycle webhooks (Flagger's set) and notifications, both plain HTTP POSTs of JSON.
//!
//! Gating hooks (`confirm-rollout`, `pre-rollout`, `confirm-promotion`) return whether the rollout
//! may go on; the others, and every notification, only report: their failures are logged, never
//! fatal, and they never hold the rollout up for longer than their timeout.

use std::time::Duration;

use serde::Serialize;

use crate::spec::{HookType, Notification, NotificationFormat, Webhook};
use crate::state::Event;

/// What every hook and notification receives.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Payload {
    pub app: String,
    pub rollout: String,
    pub phase: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_version: Option<String>,
    pub to_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<usize>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// Posts `payload` to `hook`, retrying; Ok when some attempt answered 2xx.
pub async fn call(http: &reqwest::Client, hook: &Webhook, payload: &Payload) -> Result<(), String> {
    let mut last = String::new();
    for attempt in 0..=hook.retries {
        match http
            .post(&hook.url)
            .json(payload)
            .timeout(hook.timeout.0)
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => last = format!("{} answered {}", hook.url, r.status()),
            Err(e) if e.is_timeout() => {
                last = format!("{} did not answer within {}", hook.url, hook.timeout)
            }
            Err(e) => last = format!("{}: {e}", hook.url),
        }
        if attempt < hook.retries {
            tokio::time::sleep(Duration::from_millis(200 << attempt.min(5))).await;
        }
    }
    Err(format!(
        "webhook {} ({}): {last}",
        hook.name,
        hook_type_name(hook.hook_type)
    ))
}

pub fn hook_type_name(t: HookType) -> &'static str {
    match t {
        HookType::ConfirmRollout => "confirm-rollout",
        HookType::PreRollout => "pre-rollout",
        HookType::ConfirmPromotion => "confirm-promotion",
        HookType::PostRollout => "post-rollout",
        HookType::Rollback => "rollback",
        HookType::Event => "event",
    }
}

/// The notification name of a journal event, if it is one users are told about.
pub fn notification_event(e: &Event) -> Option<&'static str> {
    Some(match e {
        Event::Started { .. } => "started",
        Event::StepDone { .. } => "stepPassed",
        Event::Paused { .. } => "paused",
        Event::Promoted { .. } => "promoted",
        Event::RollbackStarted { .. } => "failed",
        Event::Finished { outcome, .. } => match outcome {
            crate::state::Outcome::Succeeded => "succeeded",
            crate::state::Outcome::RolledBack | crate::state::Outcome::Aborted => "rolledBack",
            crate::state::Outcome::Failed => "failed",
        },
        _ => return None,
    })
}

/// The body of a notification in the configured format.
pub fn notification_body(n: &Notification, event: &str, payload: &Payload) -> serde_json::Value {
    match n.format {
        NotificationFormat::Json => serde_json::json!({ "event": event, "payload": payload }),
        NotificationFormat::Slack => {
            let mut text = format!(
                "rollgate: {} {} → {}: {event}",
                payload.app,
                payload.from_version.as_deref().unwrap_or("-"),
                payload.to_version
            );
            if let Some(step) = payload.step {
                text.push_str(&format!(" (step {})", step + 1));
            }
            if !payload.reason.is_empty() {
                text.push_str(&format!(": {}", payload.reason));
            }
            serde_json::json!({ "text": text })
        }
    }
}

/// Sends one notification; errors are returned for logging only.
pub async fn notify(
    http: &reqwest::Client,
    n: &Notification,
    event: &str,
    payload: &Payload,
) -> Result<(), String> {
    let body = notification_body(n, event, payload);
    match http
        .post(&n.url)
        .json(&body)
        .timeout(n.timeout.0)
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("notification to {} answered {}", n.url, r.status())),
        Err(e) => Err(format!("notification to {}: {e}", n.url)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload() -> Payload {
        Payload {
            app: "web".into(),
            rollout: "web-1".into(),
            phase: "rolledBack".into(),
            from_version: Some("1".into()),
            to_version: "2".into(),
            step: Some(2),
            reason: "check failed".into(),
        }
    }

    #[test]
    fn slack_and_json_bodies() {
        let n: Notification = serde_yaml::from_str("{url: 'http://x', format: slack}").unwrap();
        assert_eq!(
            notification_body(&n, "rolledBack", &payload())["text"],
            "rollgate: web 1 → 2: rolledBack (step 3): check failed"
        );
        let n: Notification = serde_yaml::from_str("{url: 'http://x'}").unwrap();
        let body = notification_body(&n, "rolledBack", &payload());
        assert_eq!(body["event"], "rolledBack");
        assert_eq!(body["payload"]["toVersion"], "2");
    }

    #[test]
    fn events_map_to_notifications() {
        let e = Event::Finished {
            rollout: "r".into(),
            outcome: crate::state::Outcome::RolledBack,
            detail: String::new(),
        };
        assert_eq!(notification_event(&e), Some("rolledBack"));
        let e = Event::InstanceChanging {
            rollout: "r".into(),
            instance: "h".into(),
            version: "2".into(),
        };
        assert_eq!(notification_event(&e), None);
    }
}
