//! The embedded state store: an append-only, fsynced journal per app, a lock file, and history.
//!
//! Layout under the state dir (`$ROLLGATE_STATE`, else `$XDG_STATE_HOME/rollgate`, else
//! `~/.local/state/rollgate`): `<app>/journal.jsonl`, `<app>/lock`, `<app>/control.jsonl`,
//! `<app>/rollouts/<id>.json`.
//!
//! The store stays bounded: whoever takes the lock compacts the app's journal once it holds more
//! than twice [`LOCAL_KEEP_ROLLOUTS`] finished rollouts (see [`Store::compact`]).
//!
//! In files of one concern each: `event` (what is journaled), `store` (the files, the lock,
//! compaction), `history` (the journal folded per rollout); and for a Kubernetes target the team
//! state in the cluster: `mirror` (the journal's copy in a ConfigMap, control requests) and `lease`
//! (the app's lock as a Lease); for a host fleet with `spec.state`, the same on etcd (`etcd`); and
//! `team`, the one face of both that the engine and the CLI use.

pub mod etcd;
mod event;
mod history;
pub mod lease;
pub mod mirror;
pub(crate) mod store;
pub mod team;

pub use event::{
    Actor, Control, ControlKind, Event, Outcome, Record, SAMPLES_KEPT, Sample, StrategyKind, now_ms,
};
pub use history::{Approval, Compacted, RolloutSummary, StepSummary, history};
pub use store::{Journal, LOCAL_KEEP_ROLLOUTS, Lock, Result, StateError, Store};
