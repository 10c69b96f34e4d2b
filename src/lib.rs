//! rollgate: health-gated rolling, canary and blue-green rollouts on Kubernetes and host fleets.

pub mod agent;
pub mod approval;
pub mod cli;
pub mod engine;
pub mod faults;
pub mod health;
pub mod hold;
pub mod kube;
pub mod notify;
pub mod pki;
pub mod plan;
pub mod spec;
pub mod state;
pub mod strategy;
pub mod target;

/// An error with its sources, each once: how every error is printed.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string().trim_end().to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        s.push_str(": ");
        s.push_str(src.to_string().trim_end());
        cur = src.source();
    }
    s
}
