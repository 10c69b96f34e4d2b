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
        let mut outbox = self.outbox.lock().expect("outbox lock");
        if let Some(name) = name {
            let payload = self.payload(name, step, &reason);
            for (i, n) in spec.notifications.iter().enumerate() {
                if n.events.is_empty() || n.events.iter().any(|e| e == name) {
                    outbox.send(
                        Sink::Notification(i),
                        Delivery::Notification(n.clone(), name, payload.clone()),
                    );
                }
            }
        }
        let phase = event.kind();
        for (i, hook) in spec.webhooks.iter().enumerate() {
            if hook.hook_type == crate::spec::HookType::Event {
                outbox.send(
                    Sink::Webhook(i),
                    Delivery::Webhook(hook.clone(), self.payload(phase, step, &reason)),
                );
            }
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
        let queues = self.outbox.lock().expect("outbox lock").close();
        if tokio::time::timeout(Duration::from_secs(10), join_all(queues))
            .await
            .is_err()
        {
            eprintln!(
                "warning: some notifications were still in flight after 10s and were dropped"
            );
        }
    }
}

/// Which notification or `event` webhook of the manifest a delivery goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    Notification(usize),
    Webhook(usize),
}

enum Delivery {
    Notification(
        crate::spec::Notification,
        &'static str,
        crate::notify::Payload,
    ),
    Webhook(crate::spec::Webhook, crate::notify::Payload),
}

impl Delivery {
    async fn send(self, http: &reqwest::Client) {
        let sent = match &self {
            Delivery::Notification(n, name, payload) => {
                crate::notify::notify(http, n, name, payload).await
            }
            Delivery::Webhook(hook, payload) => crate::notify::call(http, hook, payload).await,
        };
        if let Err(e) = sent {
            eprintln!("warning: {e}");
        }
    }
}

/// One queue per receiver, each worked by its own task: a receiver gets a run's events in the
/// order they happened (a Slack channel never reads `succeeded` before the last `stepPassed`),
/// while a slow receiver holds up neither the rollout nor the others.
pub struct Outbox {
    http: reqwest::Client,
    queues: Vec<(
        Sink,
        tokio::sync::mpsc::UnboundedSender<Delivery>,
        tokio::task::JoinHandle<()>,
    )>,
}

impl Outbox {
    pub fn new(http: reqwest::Client) -> Self {
        Outbox {
            http,
            queues: Vec::new(),
        }
    }

    fn send(&mut self, sink: Sink, delivery: Delivery) {
        let tx = match self.queues.iter().find(|(s, ..)| *s == sink) {
            Some((_, tx, _)) => tx,
            None => {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Delivery>();
                let http = self.http.clone();
                let task = tokio::spawn(async move {
                    while let Some(delivery) = rx.recv().await {
                        delivery.send(&http).await;
                    }
                });
                self.queues.push((sink, tx, task));
                &self.queues.last().expect("just pushed").1
            }
        };
        // The task only ends once the sender is dropped, so the queue is open here.
        let _ = tx.send(delivery);
    }

    /// Closes every queue; the handles finish once their queue is delivered.
    fn close(&mut self) -> Vec<tokio::task::JoinHandle<()>> {
        self.queues.drain(..).map(|(_, _, task)| task).collect()
    }
}
