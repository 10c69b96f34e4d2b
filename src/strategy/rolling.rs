//! Rolling update: waves bounded by maxSurge and maxUnavailable, in the fewest steps they allow.

use crate::plan::{Bounds, Step, StepKind, transition};

pub fn steps(n: u32, bounds: Bounds) -> Vec<Step> {
    let mut out = Vec::new();
    transition(n, bounds, (n, 0), (0, n), None, &mut out);
    if out.is_empty() {
        out.push(Step::hold(StepKind::Scale, 0, n, "nothing to replace"));
    }
    out
}
