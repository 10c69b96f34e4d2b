//! rollgate: health-gated rolling, canary and blue-green rollouts on Kubernetes and host fleets.

pub mod agent;
pub mod cli;
pub mod engine;
pub mod faults;
pub mod health;
pub mod hold;
pub mod notify;
pub mod pki;
pub mod plan;
pub mod spec;
pub mod state;
pub mod strategy;
pub mod target;
