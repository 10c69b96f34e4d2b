//! What a run tells the outside: notifications, `event` webhooks, and the lifecycle webhooks it waits on.

use std::time::Duration;

use futures_util::future::join_all;

use super::Run;
use crate::state::Event;
use crate::target::Target;

impl<T: Target> Run<'_, T> {
    pub(super) fn payload(
        &self,
        phase: &str,
        step: Option<usize>,
        reason: &str,
    ) -> crate::notify::Payload {
        crate::notify::Payload {
            app: self.app().to_string(),
            rollout: self.rollout.clone(),
            phase: phase.to_string(),
            from_version: self.from.clone(),
            to_version: self.version().to_string(),
            step,
            reason: reason.to_string(),
        }
    }

    /// Sends notifications and `event` webhooks for a journal event, in the background.
    pub(super) fn announce(&self, event: &Event) {
        let spec = &self.manifest.rollout.spec;
        if spec.notifications.is_empty() && spec.webhooks.is_empty() {
            return;
        }
        let name = crate::notify::notification_event(event);
        let (step, reason) = match event {
            Event::StepDone { step, .. }
            | Event::StepStarted { step, .. }
            | Event::Gate { step, .. } => (Some(*step), String::new()),
            Event::Paused { step, reason, .. } => (Some(*step), reason.clone()),
            Event::RollbackStarted { reason, .. } => (None, reason.clone()),
            Event::Finished { detail, .. } => (None, detail.clone()),
            _ => (None, String::new()),
        };
        let mut pending = self.pending.lock().expect("pending lock");
        if let Some(name) = name {
            let payload = self.payload(name, step, &reason);
            for n in spec
                .notifications
                .iter()
                .filter(|n| n.events.is_empty() || n.events.iter().any(|e| e == name))
            {
                let (http, n, payload) = (self.http.clone(), n.clone(), payload.clone());
                pending.push(tokio::spawn(async move {
                    if let Err(e) = crate::notify::notify(&http, &n, name, &payload).await {
                        eprintln!("warning: {e}");
                    }
                }));
            }
        }
        let phase = event.kind();
        for hook in spec
            .webhooks
            .iter()
            .filter(|h| h.hook_type == crate::spec::HookType::Event)
        {
            let (http, hook, payload) = (
                self.http.clone(),
                hook.clone(),
                self.payload(phase, step, &reason),
            );
            pending.push(tokio::spawn(async move {
                if let Err(e) = crate::notify::call(&http, &hook, &payload).await {
                    eprintln!("warning: {e}");
                }
            }));
        }
    }

    /// Calls the webhooks of one type in order; the first that does not answer 2xx is the error.
    pub async fn hooks(
        &self,
        kind: crate::spec::HookType,
        step: Option<usize>,
        reason: &str,
    ) -> std::result::Result<(), String> {
        let phase = crate::notify::hook_type_name(kind);
        for hook in self
            .manifest
            .rollout
            .spec
            .webhooks
            .iter()
            .filter(|h| h.hook_type == kind)
        {
            crate::notify::call(&self.http, hook, &self.payload(phase, step, reason)).await?;
        }
        Ok(())
    }

    /// Waits (bounded) for notifications still in flight.
    pub async fn drain(&self) {
        let pending: Vec<_> = std::mem::take(&mut *self.pending.lock().expect("pending lock"));
        if tokio::time::timeout(Duration::from_secs(10), join_all(pending))
            .await
            .is_err()
        {
            eprintln!(
                "warning: some notifications were still in flight after 10s and were dropped"
            );
        }
    }
}
