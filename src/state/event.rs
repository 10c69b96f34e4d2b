//! Events: what the journal records, who acted, and the requests sent to a running rollout.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What a rollout ran: one of the manifest's strategies, or a one-command rollback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StrategyKind {
    #[default]
    Rolling,
    Canary,
    BlueGreen,
    Rollback,
}

impl StrategyKind {
    /// The name the journal and `-o json` use.
    pub fn as_str(self) -> &'static str {
        match self {
            StrategyKind::Rolling => "rolling",
            StrategyKind::Canary => "canary",
            StrategyKind::BlueGreen => "blueGreen",
            StrategyKind::Rollback => "rollback",
        }
    }
}

impl From<&crate::spec::Strategy> for StrategyKind {
    fn from(s: &crate::spec::Strategy) -> Self {
        match s {
            crate::spec::Strategy::Rolling(_) => StrategyKind::Rolling,
            crate::spec::Strategy::Canary(_) => StrategyKind::Canary,
            crate::spec::Strategy::BlueGreen(_) => StrategyKind::BlueGreen,
        }
    }
}

impl std::fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is acting: the OS user, the host, and a CI identity when one is found. These names come
/// from the environment and are display hints only; `signed` (an approver certificate's signature)
/// and `client` (the subject of the CLI's client certificate) are what identify a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Actor {
    pub user: String,
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed: Option<crate::approval::Signed>,
    /// On a Kubernetes target: the user the API server authenticated (`SelfSubjectReview`), with
    /// the proof when an approval rule needs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<crate::approval::kube::KubeIdentity>,
}

impl Actor {
    /// Reads the identity from the environment (USER, and common CI variables).
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let user = var("ROLLGATE_USER")
            .or_else(|| var("USER"))
            .or_else(|| var("USERNAME"))
            .unwrap_or_else(|| "unknown".into());
        let host = var("HOSTNAME")
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|s| s.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let ci = if let Some(run) = var("GITHUB_RUN_ID") {
            Some(format!(
                "github-actions {} run {run} by {}",
                var("GITHUB_REPOSITORY").unwrap_or_default(),
                var("GITHUB_ACTOR").unwrap_or_default()
            ))
        } else if let Some(job) = var("CI_JOB_ID") {
            Some(format!(
                "gitlab {} job {job} by {}",
                var("CI_PROJECT_PATH").unwrap_or_default(),
                var("GITLAB_USER_LOGIN").unwrap_or_default()
            ))
        } else if let Some(build) = var("BUILD_TAG") {
            Some(format!("jenkins {build}"))
        } else if let Some(build) = var("BUILDKITE_BUILD_ID") {
            Some(format!("buildkite {build}"))
        } else if let Some(build) = var("CIRCLE_BUILD_NUM") {
            Some(format!("circleci {build}"))
        } else {
            var("CI").map(|_| "ci".to_string())
        };
        Actor {
            user,
            host,
            ci,
            client: None,
            signed: None,
            kubernetes: None,
        }
    }
}

impl Actor {
    /// How far this actor's identity is proven: the Kubernetes user the API server authenticated,
    /// the approver certificate that signed, the CLI's client certificate, or none (names from the
    /// environment only).
    pub fn verified_as(&self) -> String {
        if let Some(k) = &self.kubernetes {
            format!("Kubernetes user {}", k.username)
        } else if let Some(s) = &self.signed {
            format!("signed by certificate {} ({})", s.subject, s.fingerprint)
        } else if let Some(c) = &self.client {
            format!("client certificate {c}")
        } else {
            "unverified: a name from the environment".into()
        }
    }
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.user, self.host)?;
        if let Some(ci) = &self.ci {
            write!(f, " ({ci})")?;
        }
        if let Some(k) = &self.kubernetes {
            write!(f, " (Kubernetes user {})", k.username)?;
        }
        Ok(())
    }
}

/// How many measurements a gate record keeps (the last ones): background analysis measures for as
/// long as a rollout runs, and the record must stay small.
pub const SAMPLES_KEPT: usize = 60;

/// One measurement of a metric check: when, the value (a scalar, or a vector's first element;
/// none when the query gave no number), and how it was judged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    pub at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// `success`, `failure`, `inconclusive` or `error`.
    pub outcome: String,
}

/// One journal record. Records are only appended, each fsynced before the action it announces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "camelCase")]
pub enum Event {
    #[serde(rename_all = "camelCase")]
    Started {
        rollout: String,
        from: Option<String>,
        to: String,
        strategy: StrategyKind,
        actor: Actor,
        steps: usize,
    },
    #[serde(rename_all = "camelCase")]
    StepStarted {
        rollout: String,
        step: usize,
        kind: crate::plan::StepKind,
        note: String,
    },
    #[serde(rename_all = "camelCase")]
    InstanceChanging {
        rollout: String,
        instance: String,
        version: String,
    },
    #[serde(rename_all = "camelCase")]
    InstanceChanged {
        rollout: String,
        instance: String,
        version: String,
        ok: bool,
        detail: String,
    },
    #[serde(rename_all = "camelCase")]
    Gate {
        rollout: String,
        step: usize,
        check: String,
        passed: bool,
        detail: String,
        /// A metric check's measurements, oldest first (the last [`SAMPLES_KEPT`]); none for probes.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        measurements: Vec<Sample>,
    },
    #[serde(rename_all = "camelCase")]
    StepDone {
        rollout: String,
        step: usize,
        millis: u64,
    },
    #[serde(rename_all = "camelCase")]
    Paused {
        rollout: String,
        step: usize,
        reason: String,
    },
    #[serde(rename_all = "camelCase")]
    Promoted {
        rollout: String,
        step: usize,
        actor: Actor,
        full: bool,
    },
    /// A person paused, resumed or aborted the rollout (approvals are `Promoted`): who, verified
    /// as far as the target allows, and at which step.
    #[serde(rename_all = "camelCase")]
    Controlled {
        rollout: String,
        step: usize,
        action: ControlKind,
        actor: Actor,
    },
    #[serde(rename_all = "camelCase")]
    RollbackStarted {
        rollout: String,
        reason: String,
        to: String,
    },
    #[serde(rename_all = "camelCase")]
    Finished {
        rollout: String,
        outcome: Outcome,
        detail: String,
    },
}

impl Event {
    /// The record's kind, as its JSON `event` field names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Started { .. } => "started",
            Event::StepStarted { .. } => "stepStarted",
            Event::InstanceChanging { .. } => "instanceChanging",
            Event::InstanceChanged { .. } => "instanceChanged",
            Event::Gate { .. } => "gate",
            Event::StepDone { .. } => "stepDone",
            Event::Paused { .. } => "paused",
            Event::Promoted { .. } => "promoted",
            Event::Controlled { .. } => "controlled",
            Event::RollbackStarted { .. } => "rollbackStarted",
            Event::Finished { .. } => "finished",
        }
    }

    /// The instance an instance record names.
    pub fn instance(&self) -> Option<&str> {
        match self {
            Event::InstanceChanging { instance, .. } | Event::InstanceChanged { instance, .. } => {
                Some(instance)
            }
            _ => None,
        }
    }

    /// The rollout the event belongs to.
    pub fn rollout(&self) -> &str {
        match self {
            Event::Started { rollout, .. }
            | Event::StepStarted { rollout, .. }
            | Event::InstanceChanging { rollout, .. }
            | Event::InstanceChanged { rollout, .. }
            | Event::Gate { rollout, .. }
            | Event::StepDone { rollout, .. }
            | Event::Paused { rollout, .. }
            | Event::Promoted { rollout, .. }
            | Event::Controlled { rollout, .. }
            | Event::RollbackStarted { rollout, .. }
            | Event::Finished { rollout, .. } => rollout,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    Succeeded,
    RolledBack,
    Failed,
    Aborted,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::Succeeded => "succeeded",
            Outcome::RolledBack => "rolled back",
            Outcome::Failed => "failed",
            Outcome::Aborted => "aborted",
        })
    }
}

/// What a person asked of a rollout, other than an approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ControlKind {
    Pause,
    Resume,
    Abort,
}

impl std::fmt::Display for ControlKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ControlKind::Pause => "paused",
            ControlKind::Resume => "resumed",
            ControlKind::Abort => "aborted",
        })
    }
}

/// A journal line: the event and when it was written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub at_ms: u64,
    #[serde(flatten)]
    pub event: Event,
}

/// A journal line being written, borrowing its event.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RecordRef<'a> {
    pub(super) at_ms: u64,
    #[serde(flatten)]
    pub(super) event: &'a Event,
}

/// Requests from other `rollgate` invocations to a running rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "camelCase")]
pub enum Control {
    Promote { actor: Actor, full: bool },
    Pause { actor: Actor },
    Abort { actor: Actor },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_is_the_json_event_name() {
        let actor = Actor {
            user: "u".into(),
            host: "h".into(),
            ci: None,
            client: None,
            signed: None,
            kubernetes: None,
        };
        let r = || "r".to_string();
        let all = [
            Event::Started {
                rollout: r(),
                from: None,
                to: r(),
                strategy: StrategyKind::Canary,
                actor: actor.clone(),
                steps: 1,
            },
            Event::StepStarted {
                rollout: r(),
                step: 0,
                kind: crate::plan::StepKind::Scale,
                note: r(),
            },
            Event::InstanceChanging {
                rollout: r(),
                instance: r(),
                version: r(),
            },
            Event::InstanceChanged {
                rollout: r(),
                instance: r(),
                version: r(),
                ok: true,
                detail: r(),
            },
            Event::Gate {
                rollout: r(),
                step: 0,
                check: r(),
                passed: true,
                detail: r(),
                measurements: vec![],
            },
            Event::StepDone {
                rollout: r(),
                step: 0,
                millis: 0,
            },
            Event::Paused {
                rollout: r(),
                step: 0,
                reason: r(),
            },
            Event::Promoted {
                rollout: r(),
                step: 0,
                actor,
                full: false,
            },
            Event::RollbackStarted {
                rollout: r(),
                reason: r(),
                to: r(),
            },
            Event::Finished {
                rollout: r(),
                outcome: Outcome::Succeeded,
                detail: r(),
            },
        ];
        for e in &all {
            let json = serde_json::to_value(e).unwrap();
            assert_eq!(json["event"].as_str(), Some(e.kind()), "{e:?}");
        }
    }

    #[test]
    fn strategy_and_step_kinds_read_the_names_journals_already_hold() {
        let started = r#"{"atMs":1,"event":"started","rollout":"r1","from":null,"to":"2",
            "strategy":"blueGreen","actor":{"user":"u","host":"h"},"steps":3}"#;
        let r: Record = serde_json::from_str(started).unwrap();
        assert!(matches!(
            r.event,
            Event::Started {
                strategy: StrategyKind::BlueGreen,
                ..
            }
        ));
        for (name, kind) in [
            ("scale", crate::plan::StepKind::Scale),
            ("pause", crate::plan::StepKind::Pause),
            ("analysis", crate::plan::StepKind::Analysis),
            ("promote", crate::plan::StepKind::Promote),
            ("switch", crate::plan::StepKind::Switch),
        ] {
            let line = format!(
                r#"{{"atMs":1,"event":"stepStarted","rollout":"r","step":0,"kind":"{name}","note":""}}"#
            );
            let r: Record = serde_json::from_str(&line).unwrap();
            assert!(matches!(r.event, Event::StepStarted { kind: k, .. } if k == kind));
            assert_eq!(serde_json::to_value(kind).unwrap(), name);
            assert_eq!(kind.as_str(), name);
        }
        for k in [
            StrategyKind::Rolling,
            StrategyKind::Canary,
            StrategyKind::BlueGreen,
            StrategyKind::Rollback,
        ] {
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
        let unknown = started.replace("blueGreen", "recreate");
        assert!(serde_json::from_str::<Record>(&unknown).is_err());
    }
}
