//! Host-fleet rollouts end to end: the real `rollgate`, real `rollgate-agent` processes over mTLS on
//! loopback, and real demo-service processes.
// tests/support uses nix (signals, process groups) throughout: Unix only.
#![cfg(unix)]

#[path = "support/availability.rs"]
mod availability;
#[path = "support/etcd3.rs"]
mod etcd3;
#[path = "support/faults.rs"]
mod faults;
#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/netns.rs"]
mod netns;
#[path = "support/prometheus.rs"]
mod prometheus;
#[path = "support/running.rs"]
mod running;

mod hosts {
    mod agent_health;
    mod approvals;
    mod blue_green;
    mod controls;
    mod demo;
    mod etcd_faults;
    mod etcd_load;
    mod etcd_team;
    mod etcd_verbs;
    mod faults_agent_killed;
    mod faults_cli_killed;
    mod faults_disk;
    mod faults_network;
    mod load;
    mod metrics;
    mod netns_agent_killed;
    mod netns_canary;
    mod netns_cli_killed;
    mod netns_cut_off;
    mod netns_lock;
    mod netns_rollback;
    mod netns_rolling;
    mod relative_manifest;
    mod traffic_weights;
    mod webhooks;
}
