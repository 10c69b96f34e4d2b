//! The real `rollgate-agent` binary, over mTLS on loopback, managing real `rollgate-demo`
//! processes with the supervisor backend.
#![cfg(unix)]

#[path = "support/agent.rs"]
mod support;
#[path = "support/systemd.rs"]
mod systemd;

mod agent {
    mod artifacts;
    mod attacks;
    mod callers;
    mod footprint;
    mod lifecycle;
    mod restarts;
    mod run_as;
    mod security;
    mod service;
    mod systemd_backend;
    mod systemd_unit;
}
