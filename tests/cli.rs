//! The `rollgate` command line, run as a real process: validate, plan, and every kind of bad input.

mod cli {
    mod agreement;
    mod bad_input;
    mod generate;
    mod history;
    mod hosts_defaults;
    mod limits;
    mod outputs;
    mod plan;
    mod pod_security;
    mod readme;
    mod streams;
    mod support;
    mod watch;
}
