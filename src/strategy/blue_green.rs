//! Blue-green: bring up the new set, analyse, promote, switch, analyse, then retire the old set.

use crate::plan::{Step, StepKind};
use crate::spec::BlueGreenSpec;

pub fn steps(n: u32, spec: &BlueGreenSpec) -> Vec<Step> {
    let preview = match spec.preview_replica_count {
        0 => n,
        p => p.min(n),
    };
    let mut out = Vec::new();
    out.push(Step {
        max_total: n.saturating_add(preview),
        min_available: n,
        ..Step::hold(
            StepKind::Scale,
            n,
            preview,
            format!("bring up the new set ({preview} of {n}) behind the preview"),
        )
    });
    if let Some(a) = &spec.pre_promotion_analysis {
        let mut s = Step::hold(StepKind::Analysis, n, preview, "pre-promotion analysis");
        s.checks = a.checks.clone();
        out.push(s);
    }
    let mut promote = Step::hold(StepKind::Promote, n, preview, "");
    if spec.auto_promotion_enabled {
        promote.duration_seconds = Some(spec.auto_promotion_seconds);
        promote.note = format!(
            "promote automatically after {}s",
            spec.auto_promotion_seconds
        );
    } else {
        promote.manual = true;
        promote.note = "wait for `rollgate promote`".into();
    }
    out.push(promote);
    if preview < n {
        out.push(Step {
            max_total: n.saturating_mul(2),
            min_available: n.saturating_add(preview),
            ..Step::hold(StepKind::Scale, n, n, "scale the new set to full size")
        });
    }
    out.push(Step::hold(
        StepKind::Switch,
        n,
        n,
        "switch traffic to the new set",
    ));
    if let Some(a) = &spec.post_promotion_analysis {
        let mut s = Step::hold(StepKind::Analysis, n, n, "post-promotion analysis");
        s.checks = a.checks.clone();
        out.push(s);
    }
    let mut down = Step {
        min_available: n,
        ..Step::hold(StepKind::Scale, 0, n, "")
    };
    down.max_total = n.saturating_mul(2);
    down.duration_seconds = Some(spec.scale_down_delay_seconds);
    down.note = format!(
        "scale down the old set after {}s",
        spec.scale_down_delay_seconds
    );
    out.push(down);
    out
}
