//! The hold on an app while a command changes it (local lock, Lease, journal mirror) and where an unfinished rollout resumes.

use crate::engine::Course;
use crate::kube::{Kube, KubeError};
use crate::plan::Plan;
use crate::spec::Manifest;
use crate::spec::state::EtcdSpec;
use crate::state::etcd::EtcdError;
use crate::state::mirror::{ClusterError, Remote};
use crate::state::team::{Session, Team, TeamError};
use crate::state::{Actor, Control, Lock, RolloutSummary, StateError, Store, history};

#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Kube(#[from] KubeError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// A flag that does not apply to the app's target (`--context` on a host fleet).
    #[error("{0}")]
    Usage(String),
}

impl HoldError {
    /// Whether another rollout of the app holds it (here, or elsewhere through the Lease).
    pub fn is_locked(&self) -> bool {
        matches!(
            self,
            HoldError::State(StateError::Locked { .. })
                | HoldError::Cluster(ClusterError::Locked { .. })
                | HoldError::Etcd(EtcdError::Locked { .. })
        )
    }
}

impl From<TeamError> for HoldError {
    fn from(e: TeamError) -> Self {
        match e {
            TeamError::Cluster(e) => HoldError::Cluster(e),
            TeamError::Etcd(e) => HoldError::Etcd(e),
        }
    }
}

pub type Result<T, E = HoldError> = std::result::Result<T, E>;

/// Where commands find an app's state: the state dir, and the kubeconfig (read on first use) at
/// `context`, with `namespace` over the manifest's; for host fleets, `state` (`--state`) over the
/// manifest's `spec.state`.
pub struct Env {
    pub store: Store,
    pub context: Option<String>,
    pub namespace: Option<String>,
    pub state: Option<EtcdSpec>,
    kube: tokio::sync::OnceCell<Kube>,
}

impl Env {
    pub fn new(store: Store, context: Option<String>, namespace: Option<String>) -> Self {
        Env {
            store,
            context,
            namespace,
            state: None,
            kube: tokio::sync::OnceCell::new(),
        }
    }

    /// The kubeconfig, read once.
    pub async fn kube(&self) -> Result<&Kube, KubeError> {
        self.kube
            .get_or_try_init(|| Kube::connect(self.context.as_deref()))
            .await
    }

    /// `--context` or `--namespace` on an app whose target is a host fleet is a usage error.
    pub fn hosts_only(&self, app: &str) -> Result<()> {
        let flag = match (&self.context, &self.namespace) {
            (Some(_), _) => "--context",
            (None, Some(_)) => "--namespace",
            (None, None) => return Ok(()),
        };
        Err(HoldError::Usage(format!(
            "{flag} applies to kubernetes targets: {app} targets hosts"
        )))
    }

    /// Hands a control request to the running rollout: through the cluster for a Kubernetes target
    /// (it may run on another machine), else through the local state dir.
    pub async fn send(&self, app: &str, remote: Option<&Team>, control: &Control) -> Result<()> {
        match remote {
            Some(r) => Ok(r.send_control(control).await?),
            None => Ok(self.store.send_control(app, control)?),
        }
    }

    /// The team state of a manifest's app: in the cluster for a Kubernetes target; on etcd for a
    /// host fleet with `--state` or `spec.state`; else none (this machine's state dir).
    pub async fn remote_for_manifest(&self, m: &Manifest) -> Result<Option<Team>> {
        let Some(k) = m.rollout.spec.target.kubernetes() else {
            return self.etcd_for(m.name(), &m.rollout);
        };
        let remote = Remote::new(self.kube().await?, &k.namespace, m.name())?;
        Ok(Some(Team::Kubernetes(Box::new(remote))))
    }

    /// A host fleet's state on etcd: `--state`, else the manifest's `spec.state`.
    fn etcd_for(&self, app: &str, rollout: &crate::spec::Rollout) -> Result<Option<Team>> {
        let spec = self
            .state
            .as_ref()
            .or(rollout.spec.state.as_ref().map(|s| &s.etcd));
        let Some(spec) = spec else {
            return Ok(None);
        };
        let remote = crate::state::etcd::team::Remote::new(spec, app)?;
        Ok(Some(Team::Etcd(remote)))
    }

    /// The cluster state of an app named on the command line: in the namespace of its last rollout
    /// here (or `--namespace`) when that targeted Kubernetes; when this machine never ran it, in
    /// `--namespace`, else the kubeconfig context's namespace, if there is a kubeconfig.
    ///
    /// With `--state` (`ROLLGATE_STATE_URL`), on that etcd cluster; else, when this machine last
    /// ran the app on a host fleet whose manifest has `spec.state`, there.
    pub async fn remote_for_app(&self, app: &str) -> Result<Option<Team>> {
        if let Some(spec) = &self.state {
            self.hosts_only(app)?;
            let remote = crate::state::etcd::team::Remote::new(spec, app)?;
            return Ok(Some(Team::Etcd(remote)));
        }
        let local = self.store.read(app)?;
        if let Some(last) = history(&local).pop() {
            let rollout = self.store.load_manifest(app, &last.id)?;
            let Some(k) = rollout.spec.target.kubernetes() else {
                self.hosts_only(app)?;
                return self.etcd_for(app, &rollout);
            };
            let ns = self.namespace.as_ref().unwrap_or(&k.namespace);
            let remote = Remote::new(self.kube().await?, ns, app)?;
            return Ok(Some(Team::Kubernetes(Box::new(remote))));
        }
        match self.kube().await {
            Ok(kube) => {
                let ns = self
                    .namespace
                    .as_deref()
                    .unwrap_or(kube.default_namespace());
                Ok(Some(Team::Kubernetes(Box::new(Remote::new(
                    kube, ns, app,
                )?))))
            }
            // No kubeconfig at all: a machine that drives host fleets only.
            Err(_) if self.context.is_none() && self.namespace.is_none() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// An app's lock: the local lock file and, with team state (a Kubernetes target, or a host fleet
/// on etcd), the team lock with the journal mirror. `release` must be called: it flushes the
/// mirror and frees the team lock at once.
pub struct Hold {
    _local: Lock,
    team: Option<Session>,
    /// Control requests already in the local file when the lock was taken: the ones after are
    /// for the run this hold starts, however long it takes to begin.
    controls_at_lock: usize,
}

impl Hold {
    /// Takes the app's lock here and, with team state, the team lock; then brings the team's
    /// journal into the local one.
    pub async fn take(store: &Store, app: &str, remote: Option<&Team>) -> Result<Hold> {
        let actor = Actor::from_env();
        let local = store.lock(app, &actor)?;
        let controls_at_lock = local.controls_at_lock();
        let Some(remote) = remote else {
            return Ok(Hold {
                _local: local,
                team: None,
                controls_at_lock,
            });
        };
        let session = remote.acquire(store, &actor).await?;
        if let Some(note) = session.took_over() {
            eprintln!("warning: {app}: {note}");
        }
        if let Err(e) = remote.pull(store).await {
            session.release().await;
            return Err(e.into());
        }
        Ok(Hold {
            _local: local,
            team: Some(session),
            controls_at_lock,
        })
    }

    /// How many control requests the run under this hold has seen before it starts: those sent
    /// before the lock was taken were for an earlier run.
    pub fn controls_seen(&self) -> usize {
        self.controls_at_lock
    }

    /// The team half of the hold, with team state.
    pub fn team(&self) -> Option<&Session> {
        self.team.as_ref()
    }

    /// Says the local journal changed, so the mirror catches up.
    pub fn changed(&self) {
        if let Some(team) = &self.team {
            team.changed();
        }
    }

    /// Flushes the mirror and frees the Lease (and the local lock).
    pub async fn release(self) -> Result<(), TeamError> {
        let Some(team) = self.team else {
            return Ok(());
        };
        let flushed = match team.lost() {
            Some(_) => Ok(()), // the engine has said so already
            None => team.flush().await,
        };
        team.release().await;
        flushed
    }
}

/// Where an unfinished rollout goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumePoint {
    /// A rollback was cut short: finish it.
    FinishRollback { reason: String },
    /// Run from `step`, as `course` says.
    At { step: usize, course: Course },
    /// A manual pause without enough approvals yet.
    AwaitingApprovals {
        step: usize,
        reason: String,
        approvals: usize,
        needed: usize,
    },
}

/// Where `last` resumes under `plan`; `promoted` says a promote just approved its pause, and how far
/// it goes. A pure function of the history.
pub fn resume_point(last: &RolloutSummary, plan: &Plan, promoted: Option<Course>) -> ResumePoint {
    if let Some(reason) = &last.rollback {
        return ResumePoint::FinishRollback {
            reason: reason.clone(),
        };
    }
    let done = last
        .steps
        .iter()
        .filter(|s| s.millis.is_some())
        .map(|s| s.step + 1)
        .max()
        .unwrap_or(0);
    let mut next = done;
    if let (Some(reason), Some(step)) = (&last.paused, last.steps.last())
        && step.millis.is_none()
    {
        let plan_step = plan
            .steps
            .get(step.step.min(plan.steps.len().saturating_sub(1)));
        if let Some(plan_step) = plan_step.filter(|s| s.manual) {
            let needed = plan_step.approvals.max(1) as usize;
            let approvals = last.approvers(step.step).len();
            if promoted.is_none() || approvals < needed {
                return ResumePoint::AwaitingApprovals {
                    step: step.step,
                    reason: reason.clone(),
                    approvals,
                    needed,
                };
            }
            next = step.step + 1;
        } else if promoted.is_some() {
            // A person looked at a failed or inconclusive step and promoted: go past it.
            next = step.step + 1;
        } else {
            next = step.step;
        }
    }
    ResumePoint::At {
        step: next,
        course: promoted.unwrap_or(Course::StepByStep),
    }
}
