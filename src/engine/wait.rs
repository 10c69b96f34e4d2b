//! `apply --wait`: at a pause that one `promote` ends, the run keeps the app's lock and waits for
//! a promotion or an abort from anywhere, as a controller does, instead of ending with exit 3.

use std::time::Duration;

use super::{EngineError, Result, Run, RunOutcome};
use crate::plan::Step;
use crate::state::{Control, Event};
use crate::target::Target;

/// How often the control file is looked at when nothing wakes the wait (another process on this
/// machine appended to it).
const LOOK: Duration = Duration::from_millis(100);

/// What ended a wait at a pause.
pub(super) enum Waited {
    /// Go on: with `full`, straight to the last step.
    Promoted { full: bool },
    /// The run ends here (aborted and rolled back, Ctrl-C, ...).
    Ended(RunOutcome),
}

/// Whether a run that waits at pauses waits at `step`: a manual pause that one unsigned promotion
/// ends. A pause that needs several or signed approvals still ends the run, so that `promote`
/// verifies each approval under the lock.
pub(super) fn waits_at(step: &Step) -> bool {
    step.manual && step.approvals <= 1 && step.approvers.is_none()
}

impl<T: Target> Run<'_, T> {
    /// Waits at paused step `i` (already journaled as paused and pushed) for a promote or abort
    /// request, Ctrl-C (the rollout stays paused) or a lost lock. Pause requests change nothing:
    /// the rollout is paused.
    pub(super) async fn wait_at_pause(&mut self, i: usize, reason: &str) -> Result<Waited> {
        let sent = crate::state::store::controls_sent();
        loop {
            let woken = sent.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            self.still_held()?;
            let controls = self.store.controls(self.app(), self.controls_seen);
            tracing::debug!(new = controls.len(), "control requests looked at");
            self.controls_seen += controls.len();
            for control in controls {
                match control {
                    Control::Promote { actor, full } => {
                        self.log(Event::Promoted {
                            rollout: self.rollout.clone(),
                            step: i,
                            actor,
                            full,
                        })?;
                        return Ok(Waited::Promoted { full });
                    }
                    abort @ Control::Abort { .. } => {
                        return self.finish_control(abort, i).await.map(Waited::Ended);
                    }
                    Control::Pause { .. } => {}
                }
            }
            if self.interrupts.count() > 0 {
                return Ok(Waited::Ended(RunOutcome::Paused(reason.to_string())));
            }
            let lost = async {
                match self.team {
                    Some(team) => team.wait_lost().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut woken => {}
                () = tokio::time::sleep(LOOK) => {}
                why = lost => return Err(EngineError::LockLost(why)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::StepKind;

    #[test]
    fn only_a_pause_one_unsigned_promotion_ends_is_waited_at() {
        let pause = |approvals: u32, signed: bool| {
            let mut s = Step::hold(StepKind::Pause, 3, 1, "pause");
            s.manual = true;
            s.approvals = approvals;
            s.approvers = signed.then(crate::spec::ApproversSpec::default);
            s
        };
        assert!(waits_at(&pause(0, false)));
        assert!(waits_at(&pause(1, false)));
        assert!(
            !waits_at(&pause(2, false)),
            "several approvals: promote counts them"
        );
        assert!(
            !waits_at(&pause(1, true)),
            "signed approvals: promote verifies them"
        );
        let timed = Step::hold(StepKind::Pause, 3, 1, "soak");
        assert!(!waits_at(&timed), "a timed pause ends by itself");
    }
}
