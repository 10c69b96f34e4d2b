//! `rollgate dashboard`, run as a real process: its API's guards and live stream, and the page in
//! a real headless Chromium against a real rollout on loopback agents.

mod dashboard {
    mod api;
    mod browser;
    mod demo;
    mod load;
    mod support;
}
