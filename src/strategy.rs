//! Step generators for each strategy. Pure: counts in, steps out.

pub mod blue_green;
pub mod canary;
pub mod rolling;
