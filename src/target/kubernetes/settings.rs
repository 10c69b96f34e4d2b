//! Settings: which of the Deployment's own progressDeadlineSeconds and minReadySeconds apply. The
//! rollout manifest's win where it sets them; left at their defaults (600 and 0, Kubernetes' own),
//! the Deployment's apply.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;

/// Kubernetes' default progressDeadlineSeconds, which is also the rollout manifest's.
const DEFAULT_PROGRESS_DEADLINE: u64 = 600;

/// The Deployment's own settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Own {
    progress_deadline: Option<u64>,
    min_ready: i32,
}

impl Own {
    pub(super) fn of(d: &Deployment) -> Own {
        let spec = d.spec.as_ref();
        Own {
            progress_deadline: spec
                .and_then(|s| s.progress_deadline_seconds)
                .and_then(|s| u64::try_from(s).ok()),
            min_ready: spec.and_then(|s| s.min_ready_seconds).unwrap_or(0).max(0),
        }
    }

    /// The step's progress deadline: the manifest's, unless it is the default.
    pub(super) fn progress_deadline(&self, manifest: Duration) -> Duration {
        match self.progress_deadline {
            Some(own) if manifest.as_secs() == DEFAULT_PROGRESS_DEADLINE => {
                Duration::from_secs(own)
            }
            _ => manifest,
        }
    }

    /// minReadySeconds of the held ReplicaSet: the manifest's, unless it is 0.
    pub(super) fn min_ready(&self, manifest: i32) -> i32 {
        if manifest > 0 {
            manifest
        } else {
            self.min_ready
        }
    }
}

/// Which of the Deployment's own settings apply over a rollout manifest's (`progress_deadline`,
/// `min_ready` as the manifest resolves them), in words; empty when none does. Pure, for `plan`.
pub fn deployment_settings(progress_deadline: u64, min_ready: u64, d: &Deployment) -> Vec<String> {
    let own = Own::of(d);
    let mut applied = Vec::new();
    if min_ready == 0 && own.min_ready > 0 {
        applied.push(format!(
            "minReadySeconds {} (the Deployment's; the rollout manifest leaves it at 0)",
            own.min_ready
        ));
    }
    let deadline = own
        .progress_deadline(Duration::from_secs(progress_deadline))
        .as_secs();
    if deadline != progress_deadline {
        applied.push(format!(
            "progressDeadlineSeconds {deadline} (the Deployment's; the rollout manifest leaves it at {DEFAULT_PROGRESS_DEADLINE})"
        ));
    }
    applied
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(spec: &str) -> Deployment {
        serde_yaml::from_str(&format!(
            "metadata: {{name: web}}\nspec: {{selector: {{}}, template: {{}}, {spec}}}"
        ))
        .unwrap()
    }

    #[test]
    fn the_deployments_settings_apply_where_the_manifest_leaves_the_defaults() {
        let own = Own::of(&d("minReadySeconds: 3, progressDeadlineSeconds: 30"));
        assert_eq!(
            own.progress_deadline(Duration::from_secs(600)).as_secs(),
            30
        );
        assert_eq!(own.progress_deadline(Duration::from_secs(60)).as_secs(), 60);
        assert_eq!(own.min_ready(0), 3);
        assert_eq!(own.min_ready(5), 5);
        let plain = Own::of(&d("replicas: 2"));
        assert_eq!(
            plain.progress_deadline(Duration::from_secs(600)).as_secs(),
            600
        );
        assert_eq!(plain.min_ready(0), 0);
        let said = deployment_settings(
            600,
            0,
            &d("minReadySeconds: 3, progressDeadlineSeconds: 30"),
        );
        assert_eq!(said.len(), 2, "{said:?}");
        assert!(said[0].starts_with("minReadySeconds 3 (the Deployment's"));
        assert!(deployment_settings(60, 2, &d("minReadySeconds: 3")).is_empty());
    }
}
