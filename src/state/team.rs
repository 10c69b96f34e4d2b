//! The team state behind one face: a Kubernetes target's (Lease and ConfigMap, [`super::mirror`])
//! or a host fleet's on etcd ([`super::etcd`]). The engine and the CLI hold a [`Team`] and a
//! [`Session`] and never ask which; a closed enum, as the set of stores is fixed.
//!
//! Both keep the same contract: `acquire` takes the app's lock (or fails naming its holder) and
//! starts renewing it; `pull` brings the team's journal into the local one under that lock;
//! `changed` after each local append, `flush` at each step boundary (fails once the lock is lost
//! or the store has refused writes for the write window); `lost` says, in memory, that the lock
//! is no longer this process's, after which nothing more is written; `release` frees the lock.
//! The part of a session that does not depend on the store is one type, [`Held`].

mod held;

pub(crate) use held::{Held, Push, Renew, Tasks, Unflushed};

use super::etcd::EtcdError;
use super::mirror::ClusterError;
use super::{Actor, Control, Record, Store, etcd, lease, mirror};

#[derive(Debug, thiserror::Error)]
pub enum TeamError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Etcd(#[from] EtcdError),
}

impl TeamError {
    /// Whether another rollout of the app holds the lock.
    pub fn is_locked(&self) -> bool {
        matches!(
            self,
            TeamError::Cluster(ClusterError::Locked { .. })
                | TeamError::Etcd(EtcdError::Locked { .. })
        )
    }
}

pub type Result<T, E = TeamError> = std::result::Result<T, E>;

/// Where an app's team state lives.
pub enum Team {
    Kubernetes(Box<mirror::Remote>),
    Etcd(etcd::team::Remote),
}

impl Team {
    pub async fn acquire(&self, store: &Store, actor: &Actor) -> Result<Session> {
        Ok(match self {
            Team::Kubernetes(r) => Session::Kubernetes(Box::new(r.acquire(store, actor).await?)),
            Team::Etcd(r) => Session::Etcd(r.acquire(store, actor).await?),
        })
    }

    /// Brings the team's records into the local journal; whether it had any.
    pub async fn pull(&self, store: &Store) -> Result<bool> {
        Ok(match self {
            Team::Kubernetes(r) => r.pull(store).await?,
            Team::Etcd(r) => r.pull(store).await?,
        })
    }

    /// The team's records merged with the local journal (not written); `None` when it has none.
    pub async fn records(&self, store: &Store) -> Result<Option<Vec<Record>>> {
        Ok(match self {
            Team::Kubernetes(r) => r.records(store).await?,
            Team::Etcd(r) => r.records(store).await?,
        })
    }

    /// The records of this team's rollouts among the local journal's.
    pub fn scope(&self, store: &Store, records: Vec<Record>) -> Vec<Record> {
        match self {
            Team::Kubernetes(r) => r.scope(store, records),
            Team::Etcd(_) => records,
        }
    }

    pub async fn send_control(&self, control: &Control) -> Result<()> {
        match self {
            Team::Kubernetes(r) => Ok(r.send_control(control).await?),
            Team::Etcd(r) => Ok(r.send_control(control).await?),
        }
    }

    /// Where the state is, for messages.
    pub fn describe(&self) -> String {
        match self {
            Team::Kubernetes(r) => r.describe(),
            Team::Etcd(r) => r.describe(),
        }
    }
}

/// A held team lock with its background tasks.
pub enum Session {
    Kubernetes(Box<lease::Session>),
    Etcd(etcd::team::Session),
}

impl Session {
    pub fn took_over(&self) -> Option<&str> {
        match self {
            Session::Kubernetes(s) => s.took_over.as_deref(),
            Session::Etcd(s) => s.took_over.as_deref(),
        }
    }

    fn held(&self) -> &Held {
        match self {
            Session::Kubernetes(s) => s.held(),
            Session::Etcd(s) => s.held(),
        }
    }

    pub fn lost(&self) -> Option<String> {
        self.held().lost()
    }

    pub async fn wait_lost(&self) -> String {
        self.held().wait_lost().await
    }

    pub fn changed(&self) {
        self.held().changed()
    }

    /// Pushes what was journaled so far within 50 ms (with a flush that comes sooner), without
    /// waiting for it.
    pub fn push_soon(&self) {
        self.held().push_soon()
    }

    pub async fn flush(&self) -> Result<()> {
        match self {
            Session::Kubernetes(s) => Ok(s.flush().await?),
            Session::Etcd(s) => Ok(s.flush().await?),
        }
    }

    pub fn push_error(&self) -> Option<String> {
        self.held().push_error()
    }

    pub async fn release(self) {
        match self {
            Session::Kubernetes(s) => (*s).release().await,
            Session::Etcd(s) => s.release().await,
        }
    }
}
