//! `rollgate dashboard`, run as a real process: its API's guards and live stream, and the page in
//! a real headless Chromium against a real rollout on loopback agents.

#[path = "support/prometheus.rs"]
mod prometheus;

mod dashboard {
    mod api;
    mod browser;
    mod charts;
    mod demo;
    mod load;
    mod support;
    mod tls;
}
