//! The `rollgate` command line, run as a real process: validate, plan, and every kind of bad input.

mod cli {
    mod agreement;
    mod artifact;
    mod bad_input;
    mod dry_run;
    mod generate;
    mod history;
    mod hosts_defaults;
    mod limits;
    mod outputs;
    mod overlays;
    mod pki_expiry;
    mod plan;
    mod pod_security;
    mod readme;
    mod schema;
    mod streams;
    mod support;
    mod watch;
}
