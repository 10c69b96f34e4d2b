//! The `recovery:` block: one restart policy mapped onto the supervisor, systemd and the SCM.
//!
//! Everything here is pure so the mapping is tested as text on every OS.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::config::Dur;

/// When a stopped process is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    No,
    /// Restart after a non-zero exit or a signal (the default).
    #[default]
    OnFailure,
    /// Restart after any exit.
    Always,
}

/// What to do on the n-th consecutive failure: exactly one of `restart` or `run`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct RecoveryAction {
    /// Restart after this delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<Dur>,
    /// Run this command line (through the shell) and leave the service stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
}

impl RecoveryAction {
    pub fn restart(delay: Duration) -> Self {
        RecoveryAction {
            restart: Some(Dur(delay)),
            run: None,
        }
    }
}

/// The `recovery:` block of a service.
///
/// ```yaml
/// recovery:
///   restart: on-failure       # no | on-failure | always
///   actions:                  # by consecutive failure; the last one repeats
///     - restart: 0s
///     - restart: 10s
///     - run: /usr/local/bin/page-oncall web
///   resetAfter: 1d            # a run this long resets the failure count
///   throttle: 1500ms          # a run shorter than this is a rapid crash: back off
///   maxBackoff: 60s
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Recovery {
    #[serde(default)]
    pub restart: RestartPolicy,
    #[serde(default = "default_actions")]
    pub actions: Vec<RecoveryAction>,
    #[serde(default = "default_reset_after")]
    pub reset_after: Dur,
    #[serde(default = "default_throttle")]
    pub throttle: Dur,
    #[serde(default = "default_max_backoff")]
    pub max_backoff: Dur,
}

fn default_actions() -> Vec<RecoveryAction> {
    vec![
        RecoveryAction::restart(Duration::ZERO),
        RecoveryAction::restart(Duration::from_secs(1)),
        RecoveryAction::restart(Duration::from_secs(5)),
    ]
}
fn default_reset_after() -> Dur {
    Dur(Duration::from_secs(86_400))
}
fn default_throttle() -> Dur {
    Dur(Duration::from_millis(1500))
}
fn default_max_backoff() -> Dur {
    Dur(Duration::from_secs(60))
}

impl Default for Recovery {
    fn default() -> Self {
        Recovery {
            restart: RestartPolicy::default(),
            actions: default_actions(),
            reset_after: default_reset_after(),
            throttle: default_throttle(),
            max_backoff: default_max_backoff(),
        }
    }
}

/// A recovery block that does not make sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecoveryError {
    #[error("recovery.actions[{0}] must set exactly one of `restart` or `run`")]
    AmbiguousAction(usize),
    #[error("recovery.actions[{0}]: an action after `run` is never reached")]
    UnreachableAction(usize),
}

impl Recovery {
    pub fn validate(&self) -> Result<(), RecoveryError> {
        for (i, a) in self.actions.iter().enumerate() {
            if a.restart.is_some() == a.run.is_some() {
                return Err(RecoveryError::AmbiguousAction(i));
            }
            if i > 0 && self.actions[i - 1].run.is_some() {
                return Err(RecoveryError::UnreachableAction(i));
            }
        }
        Ok(())
    }

    /// Delays of the restart actions before the first `run` action.
    fn restart_delays(&self) -> Vec<Duration> {
        self.actions
            .iter()
            .map_while(|a| a.restart.map(|d| d.0))
            .collect()
    }

    fn run_command(&self) -> Option<&str> {
        self.actions.iter().find_map(|a| a.run.as_deref())
    }
}

/// Failure bookkeeping the supervisor keeps per slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FailureCount {
    /// Consecutive failures (reset by a run longer than `resetAfter`).
    pub consecutive: u32,
    /// Consecutive runs shorter than `throttle`.
    pub rapid: u32,
}

/// What the supervisor does after a process exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Restart {
        delay: Duration,
        crash_loop: bool,
    },
    RunCommand(String),
    /// Stay stopped (`failed` if the exit was a failure).
    Stay,
}

/// Decides what follows an exit after `uptime`, updating `count`.
pub fn on_exit(
    recovery: &Recovery,
    success: bool,
    uptime: Duration,
    count: &mut FailureCount,
) -> Decision {
    if uptime >= recovery.reset_after.0 {
        *count = FailureCount::default();
    }
    if uptime < recovery.throttle.0 {
        count.rapid += 1;
    } else {
        count.rapid = 0;
    }
    let restart = match recovery.restart {
        RestartPolicy::No => false,
        RestartPolicy::OnFailure => !success,
        RestartPolicy::Always => true,
    };
    if !restart {
        return Decision::Stay;
    }
    let mut delay = Duration::ZERO;
    if !success {
        count.consecutive += 1;
        let idx = (count.consecutive as usize - 1).min(recovery.actions.len().saturating_sub(1));
        match recovery.actions.get(idx) {
            Some(RecoveryAction { run: Some(cmd), .. }) => {
                return Decision::RunCommand(cmd.clone());
            }
            Some(RecoveryAction {
                restart: Some(d), ..
            }) => delay = d.0,
            _ => {}
        }
    }
    let backoff = if count.rapid == 0 {
        Duration::ZERO
    } else {
        let base = Duration::from_secs(1);
        base.saturating_mul(1u32 << (count.rapid - 1).min(16))
            .min(recovery.max_backoff.0)
    };
    Decision::Restart {
        delay: delay.max(backoff),
        crash_loop: count.rapid >= 2,
    }
}

fn secs(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Lines for a systemd unit, split by section.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SystemdRecovery {
    /// Lines for `[Unit]` (start limits, `OnFailure=`).
    pub unit: Vec<String>,
    /// Lines for `[Service]` (`Restart=`, `RestartSec=`, steps).
    pub service: Vec<String>,
    /// The command an `OnFailure=` unit runs, if there is a `run` action.
    pub on_failure_command: Option<String>,
}

/// Maps `recovery` onto systemd. `recovery_unit` names the unit `OnFailure=` points at.
///
/// Escalating delays use `RestartSteps=`/`RestartMaxDelaySec=` (systemd 254+). A `run` action
/// becomes a start limit of one more than the restarts before it, then `OnFailure=`.
pub fn to_systemd(recovery: &Recovery, recovery_unit: &str) -> SystemdRecovery {
    let mut out = SystemdRecovery::default();
    let policy = match recovery.restart {
        RestartPolicy::No => "no",
        RestartPolicy::OnFailure => "on-failure",
        RestartPolicy::Always => "always",
    };
    out.service.push(format!("Restart={policy}"));
    let delays = recovery.restart_delays();
    let first = delays.first().copied().unwrap_or(Duration::ZERO);
    // systemd refuses a zero RestartSec with steps; 100ms is its own default.
    let first = if first.is_zero() {
        Duration::from_millis(100)
    } else {
        first
    };
    out.service.push(format!("RestartSec={}", secs(first)));
    if let Some(last) = delays.last().copied()
        && delays.len() > 1
        && last > first
    {
        out.service
            .push(format!("RestartSteps={}", delays.len() - 1));
        out.service
            .push(format!("RestartMaxDelaySec={}", secs(last)));
    }
    match recovery.run_command() {
        Some(cmd) if recovery.restart != RestartPolicy::No => {
            out.unit.push(format!(
                "StartLimitIntervalSec={}",
                secs(recovery.reset_after.0)
            ));
            out.unit
                .push(format!("StartLimitBurst={}", delays.len() + 1));
            out.unit.push(format!("OnFailure={recovery_unit}"));
            out.on_failure_command = Some(cmd.to_string());
        }
        _ => out.unit.push("StartLimitIntervalSec=0".to_string()),
    }
    out
}

/// One SCM failure action (`SC_ACTION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScmActionKind {
    Restart,
    RunCommand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScmAction {
    pub kind: ScmActionKind,
    pub delay: Duration,
}

/// What `ChangeServiceConfig2(SERVICE_CONFIG_FAILURE_ACTIONS[_FLAG])` is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScmFailurePlan {
    pub reset_period: Duration,
    /// The command line run by a `RunCommand` action (the SCM has one per service).
    pub command: Option<String>,
    pub actions: Vec<ScmAction>,
    /// `SERVICE_FAILURE_ACTIONS_FLAG`: a stop with a non-zero exit code also counts.
    pub non_crash_failures: bool,
}

/// Maps `recovery` onto the SCM. The SCM repeats the last action, like the supervisor.
/// It cannot restart a service that stopped cleanly, so `always` behaves as `on-failure`.
pub fn to_scm(recovery: &Recovery) -> ScmFailurePlan {
    let actions = if recovery.restart == RestartPolicy::No {
        Vec::new()
    } else {
        recovery
            .actions
            .iter()
            .map(|a| match (&a.restart, &a.run) {
                (Some(d), _) => ScmAction {
                    kind: ScmActionKind::Restart,
                    delay: d.0,
                },
                _ => ScmAction {
                    kind: ScmActionKind::RunCommand,
                    delay: Duration::ZERO,
                },
            })
            .collect()
    };
    ScmFailurePlan {
        reset_period: recovery.reset_after.0,
        command: if recovery.restart == RestartPolicy::No {
            None
        } else {
            recovery.run_command().map(str::to_string)
        },
        actions,
        non_crash_failures: recovery.restart != RestartPolicy::No,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Recovery {
        serde_yaml::from_str(
            "restart: on-failure\nactions:\n  - restart: 0s\n  - restart: 10s\n  - run: /bin/page web\nresetAfter: 1d\n",
        )
        .unwrap()
    }

    #[test]
    fn yaml_block_parses_and_validates() {
        let r = example();
        r.validate().unwrap();
        assert_eq!(r.actions.len(), 3);
        assert_eq!(r.reset_after.0, Duration::from_secs(86_400));
        let bad: Recovery =
            serde_yaml::from_str("actions:\n  - run: a\n  - restart: 1s\n").unwrap();
        assert_eq!(bad.validate(), Err(RecoveryError::UnreachableAction(1)));
        let both: Recovery = serde_yaml::from_str("actions:\n  - {run: a, restart: 1s}\n").unwrap();
        assert_eq!(both.validate(), Err(RecoveryError::AmbiguousAction(0)));
    }

    #[test]
    fn systemd_mapping_as_text() {
        let m = to_systemd(&example(), "rollgate-recovery@web.service");
        assert_eq!(
            m.service,
            vec![
                "Restart=on-failure",
                "RestartSec=100ms",
                "RestartSteps=1",
                "RestartMaxDelaySec=10s"
            ]
        );
        assert_eq!(
            m.unit,
            vec![
                "StartLimitIntervalSec=86400s",
                "StartLimitBurst=3",
                "OnFailure=rollgate-recovery@web.service"
            ]
        );
        assert_eq!(m.on_failure_command.as_deref(), Some("/bin/page web"));

        let never = Recovery {
            restart: RestartPolicy::No,
            ..Recovery::default()
        };
        let m = to_systemd(&never, "x");
        assert_eq!(m.service[0], "Restart=no");
        assert_eq!(m.unit, vec!["StartLimitIntervalSec=0"]);
    }

    #[test]
    fn scm_mapping_keeps_order_and_command() {
        let plan = to_scm(&example());
        assert_eq!(plan.reset_period, Duration::from_secs(86_400));
        assert_eq!(plan.command.as_deref(), Some("/bin/page web"));
        assert!(plan.non_crash_failures);
        assert_eq!(
            plan.actions,
            vec![
                ScmAction {
                    kind: ScmActionKind::Restart,
                    delay: Duration::ZERO
                },
                ScmAction {
                    kind: ScmActionKind::Restart,
                    delay: Duration::from_secs(10)
                },
                ScmAction {
                    kind: ScmActionKind::RunCommand,
                    delay: Duration::ZERO
                },
            ]
        );
        let never = to_scm(&Recovery {
            restart: RestartPolicy::No,
            ..example()
        });
        assert!(never.actions.is_empty() && never.command.is_none());
    }

    #[test]
    fn supervisor_escalates_then_runs_command() {
        let r = example();
        let mut c = FailureCount::default();
        let long = Duration::from_secs(60);
        assert_eq!(
            on_exit(&r, false, long, &mut c),
            Decision::Restart {
                delay: Duration::ZERO,
                crash_loop: false
            }
        );
        assert_eq!(
            on_exit(&r, false, long, &mut c),
            Decision::Restart {
                delay: Duration::from_secs(10),
                crash_loop: false
            }
        );
        assert_eq!(
            on_exit(&r, false, long, &mut c),
            Decision::RunCommand("/bin/page web".into())
        );
        // A run longer than resetAfter starts the count again.
        assert!(matches!(
            on_exit(&r, false, Duration::from_secs(90_000), &mut c),
            Decision::Restart { delay, .. } if delay.is_zero()
        ));
        // A clean exit under on-failure stays stopped.
        assert_eq!(on_exit(&r, true, long, &mut c), Decision::Stay);
    }

    #[test]
    fn rapid_crashes_back_off_exponentially_and_flag_crash_loop() {
        let r = Recovery::default();
        let mut c = FailureCount::default();
        let quick = Duration::from_millis(10);
        let delays: Vec<_> = (0..5)
            .map(|_| match on_exit(&r, false, quick, &mut c) {
                Decision::Restart { delay, crash_loop } => (delay.as_secs(), crash_loop),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            delays,
            vec![(1, false), (2, true), (5, true), (8, true), (16, true)]
        );
        let capped = Recovery {
            max_backoff: Dur(Duration::from_secs(3)),
            ..Recovery::default()
        };
        let mut c = FailureCount::default();
        for _ in 0..6 {
            on_exit(&capped, false, quick, &mut c);
        }
        assert!(matches!(
            on_exit(&capped, false, quick, &mut c),
            Decision::Restart { delay, .. } if delay == Duration::from_secs(5)
        ));
    }
}
