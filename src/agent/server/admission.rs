//! Admission of connections: a slot per authenticated connection, and a separate budget for
//! connections not yet authenticated, the oldest of which is closed when it runs out.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

/// Admission of connections: slots for authenticated ones, a budget for pending ones.
pub(super) struct Gate {
    authenticated: Arc<tokio::sync::Semaphore>,
    pending: std::sync::Mutex<std::collections::VecDeque<(u64, CancellationToken)>>,
    max_pending: usize,
    next: std::sync::atomic::AtomicU64,
}

impl Gate {
    pub(super) fn new(max_connections: usize, max_pending: usize) -> Gate {
        Gate {
            authenticated: Arc::new(tokio::sync::Semaphore::new(max_connections.max(1))),
            pending: Default::default(),
            max_pending: max_pending.max(1),
            next: Default::default(),
        }
    }

    /// A new pending connection; closes the oldest pending one past the budget.
    pub(super) fn admit(self: &Arc<Self>) -> ConnAuth {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let evict = CancellationToken::new();
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.push_back((id, evict.clone()));
        while pending.len() > self.max_pending {
            if let Some((_, oldest)) = pending.pop_front() {
                oldest.cancel();
            }
        }
        ConnAuth {
            gate: self.clone(),
            id,
            evict,
            slot: tokio::sync::OnceCell::new(),
        }
    }

    fn leave_pending(&self, id: u64) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = pending.iter().position(|(p, _)| *p == id) {
            pending.remove(i);
        }
    }
}

/// One connection's standing: pending until authenticated, then holding a slot until it closes.
pub(super) struct ConnAuth {
    gate: Arc<Gate>,
    id: u64,
    pub(super) evict: CancellationToken,
    slot: tokio::sync::OnceCell<Option<tokio::sync::OwnedSemaphorePermit>>,
}

impl ConnAuth {
    /// Moves the connection from the pending budget to an authenticated slot (waiting for one).
    pub(super) async fn promote(&self) {
        self.slot
            .get_or_init(|| async {
                let permit = self.gate.authenticated.clone().acquire_owned().await.ok();
                self.gate.leave_pending(self.id);
                permit
            })
            .await;
    }
}

impl Drop for ConnAuth {
    fn drop(&mut self) {
        self.gate.leave_pending(self.id);
    }
}
