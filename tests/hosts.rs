//! Host-fleet rollouts end to end: the real `rollgate`, real `rollgate-agent` processes over mTLS on
//! loopback, and real demo-service processes.

mod hosts {
    mod demo;
}
