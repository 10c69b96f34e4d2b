//! Runs a plan against a target, step by step: apply, wait ready, gate, advance; roll back on failure.

mod announce;
mod gate;
mod wait;

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use futures_util::future::BoxFuture;

use crate::health::Verdict;
use crate::plan::{Plan, Step, StepKind};
use crate::spec::{AutoRollback, Check, Manifest};
use crate::state::{Actor, Control, ControlKind, Event, Journal, Outcome, Record, Store};
use crate::target::{Change, Instance, Report, Target, TargetError};

/// How long a change waits for the cluster's journal (team state) to have it before it is made.
const MIRROR_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Target(#[from] crate::target::TargetError),
    #[error("rollback to {version} did not complete: {reason}")]
    RollbackIncomplete { version: String, reason: String },
    #[error("{0}")]
    Unsupported(String),
    /// A change could not be journaled before it was made: the run stops at once.
    #[error("{0}")]
    Journal(String),
    /// The app's Lease went to another machine (or could not be renewed): stop, change nothing.
    #[error("{0}")]
    LockLost(String),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    Succeeded,
    RolledBack(String),
    Failed(String),
    /// Waiting for a person: `promote` or `resume` continues.
    Paused(String),
    /// Ctrl-C: the current step finished and the rollout is paused.
    Interrupted,
}

/// How a run goes through the plan's steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Course {
    StepByStep,
    /// `promote --full`: straight to the last step (everything new).
    StraightToLast,
}

/// Counts Ctrl-C / SIGTERM: the first asks to stop after the current step.
#[derive(Debug, Clone, Default)]
pub struct Interrupts(Arc<AtomicU8>);

impl Interrupts {
    pub fn raise(&self) -> u8 {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
    pub fn count(&self) -> u8 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Everything one run needs.
pub struct Run<'a, T: Target> {
    pub target: &'a T,
    pub manifest: &'a Manifest,
    pub plan: &'a Plan,
    pub store: &'a Store,
    pub journal: Mutex<Journal>,
    pub rollout: String,
    /// The version a rollback returns to.
    pub from: Option<String>,
    pub actor: Actor,
    pub interrupts: Interrupts,
    pub on_record: &'a (dyn Fn(&Record) + Sync),
    /// Control requests already handled.
    pub controls_seen: usize,
    /// For metric checks, webhooks and notifications.
    pub http: reqwest::Client,
    /// Notifications and event webhooks in flight; drained (bounded) when the run ends.
    pub outbox: Mutex<announce::Outbox>,
    /// Set when background analysis has reached a verdict, so long pauses end early.
    pub background_done: Arc<std::sync::atomic::AtomicBool>,
    /// The in-cluster state of a Kubernetes target: its journal mirror and Lease.
    pub team: Option<&'a crate::state::team::Session>,
    /// `apply --wait`: at a pause that one `promote` ends, keep the lock and wait for a promote
    /// or abort request instead of ending the run.
    pub wait_at_pauses: bool,
}

impl<T: Target> Report for Run<'_, T> {
    fn report(&self, change: Change) -> BoxFuture<'_, crate::target::Result<()>> {
        Box::pin(self.journal_change(change))
    }
}

/// Counts the instances a step changed successfully, from the target's own change reports (no
/// extra round trip to every instance), and passes the reports on.
struct Counting<'r> {
    inner: &'r dyn Report,
    ok: AtomicUsize,
}

impl Report for Counting<'_> {
    fn report(&self, change: Change) -> BoxFuture<'_, crate::target::Result<()>> {
        let ok = match &change {
            Change::Changed { ok, .. } => usize::from(*ok),
            Change::Many(all) => all
                .iter()
                .filter(|c| matches!(c, Change::Changed { ok: true, .. }))
                .count(),
            Change::Changing { .. } => 0,
        };
        self.ok.fetch_add(ok, Ordering::SeqCst);
        self.inner.report(change)
    }
}

/// Background analysis in flight: the first check to reach a verdict, with its name and measurements.
type Background = tokio::task::JoinHandle<(String, Verdict, Vec<crate::state::Sample>)>;

enum StepResult {
    Done,
    Pause(String),
    Failed(String),
    /// The target was deleted by someone else: the rollout fails with nothing to roll back.
    Gone(String),
}

impl<'a, T: Target> Run<'a, T> {
    /// A run of rollout `rollout` of `manifest`, journaling into the app's journal in `store`.
    /// Ctrl-C is not watched until the caller sets `interrupts`.
    pub fn new(
        target: &'a T,
        manifest: &'a Manifest,
        plan: &'a Plan,
        store: &'a Store,
        rollout: &str,
        from: Option<String>,
        on_record: &'a (dyn Fn(&Record) + Sync),
    ) -> Result<Self> {
        let http = reqwest::Client::new();
        Ok(Run {
            target,
            manifest,
            plan,
            store,
            journal: Mutex::new(store.journal(manifest.name())?),
            rollout: rollout.to_string(),
            from,
            actor: Actor::from_env(),
            interrupts: Interrupts::default(),
            on_record,
            controls_seen: store.control_count(manifest.name()),
            http: http.clone(),
            outbox: Mutex::new(announce::Outbox::new(http)),
            background_done: Arc::default(),
            team: None,
            wait_at_pauses: false,
        })
    }
}

impl<T: Target> Run<'_, T> {
    /// Appends to the journal (fsynced) and then reports the record.
    pub fn log(&self, event: Event) -> Result<()> {
        self.still_held()?;
        self.journal
            .lock()
            .expect("journal lock")
            .append(event.clone())?;
        if let Some(team) = self.team {
            team.changed();
        }
        self.announce(&event);
        (self.on_record)(&Record {
            at_ms: crate::state::now_ms(),
            event,
        });
        Ok(())
    }

    /// Every decision is journaled before it acts: a run whose Lease is gone stops there.
    fn still_held(&self) -> Result<()> {
        match self.team.and_then(|t| t.lost()) {
            Some(why) => Err(EngineError::LockLost(why)),
            None => Ok(()),
        }
    }

    /// When a run stops (done, paused, failed): stop if the Lease is gone, and wait until the
    /// team's store has the journal, so another machine never sees less than where it stopped.
    /// Between steps the push of a step's first change does this (see `journal_change`).
    async fn checkpoint(&self) -> Result<()> {
        self.still_held()?;
        if let Some(team) = self.team {
            team.flush()
                .await
                .map_err(|e| EngineError::LockLost(error_chain(&e)))?;
        }
        Ok(())
    }

    fn app(&self) -> &str {
        self.manifest.name()
    }

    fn version(&self) -> &str {
        &self.manifest.rollout.spec.version
    }

    fn deadline(&self) -> Duration {
        let manifest = Duration::from_secs(self.manifest.rollout.spec.progress_deadline_seconds);
        self.target.progress_deadline(manifest)
    }

    /// Journals a target's change report before the target acts on it (its [`Report`]). Acting without a journal
    /// would leave instances the journal does not know, so a failed write is
    /// [`TargetError::Journal`]: the target stops, and so does the run (`resume` reconciles).
    async fn journal_change(&self, change: Change) -> crate::target::Result<()> {
        let mut events = Vec::new();
        self.change_events(change, &mut events);
        let written = self
            .journal
            .lock()
            .expect("journal lock")
            .append_all(events.iter().cloned());
        if let Err(e) = written {
            return Err(TargetError::Journal(error_chain(&e)));
        }
        if let Some(team) = self.team {
            team.changed();
            // The cluster's journal learns of a change before the target makes it, so a machine
            // that resumes after a crash knows every change this one began. For a moment only:
            // with the API server away the change goes on (its own retries and deadline apply)
            // and the mirror catches up, or the run stops at its next check. A change's outcome
            // needs no wait: it goes out with the step's end (a resume redoes a change whose
            // outcome it lacks).
            let begins = events
                .iter()
                .any(|e| matches!(e, Event::InstanceChanging { .. }));
            if begins {
                let _ = tokio::time::timeout(MIRROR_WAIT, team.flush()).await;
            }
        }
        for event in events {
            self.announce(&event);
            (self.on_record)(&Record {
                at_ms: crate::state::now_ms(),
                event,
            });
        }
        Ok(())
    }

    fn change_events(&self, change: Change, out: &mut Vec<Event>) {
        match change {
            Change::Changing { instance, version } => out.push(Event::InstanceChanging {
                rollout: self.rollout.clone(),
                instance,
                version,
            }),
            Change::Changed {
                instance,
                version,
                ok,
                detail,
            } => {
                out.push(Event::InstanceChanged {
                    rollout: self.rollout.clone(),
                    instance,
                    version,
                    ok,
                    detail,
                });
            }
            Change::Many(changes) => {
                for c in changes {
                    self.change_events(c, out);
                }
            }
        }
    }

    /// Runs steps `from_step..`; a step is journaled as started before it acts and done after.
    /// With [`Course::StraightToLast`], it goes straight to the last step (everything new).
    pub async fn execute(&mut self, from_step: usize, course: Course) -> Result<RunOutcome> {
        let outcome = self.execute_steps(from_step, course).await;
        let outcome = match outcome {
            Ok(o) => self.checkpoint().await.map(|()| o),
            Err(e) => Err(e),
        };
        if matches!(outcome, Ok(RunOutcome::Succeeded))
            && let Err(e) = self
                .hooks(crate::spec::HookType::PostRollout, None, "")
                .await
        {
            eprintln!("warning: {e}");
        }
        self.drain().await;
        outcome
    }

    async fn execute_steps(&mut self, from_step: usize, course: Course) -> Result<RunOutcome> {
        let background = self
            .plan
            .background_checks(&self.manifest.rollout.spec.checks);
        let mut running: Option<Background> = None;
        let outcome = self
            .execute_with_background(from_step, course, background.as_ref(), &mut running)
            .await;
        if let Some(task) = running {
            task.abort();
        }
        outcome
    }

    async fn execute_with_background(
        &mut self,
        from_step: usize,
        course: Course,
        background: Option<&(usize, Vec<Check>)>,
        running: &mut Option<Background>,
    ) -> Result<RunOutcome> {
        let version = self.version().to_string();
        // Stage everywhere ahead of the waves: staging never touches what runs. A failure leaves
        // the rollout unfinished and changes nothing, so `resume` can stage again.
        self.target.prepare(&version).await?;
        let steps = self.plan.steps.clone();
        let mut i = if course == Course::StraightToLast {
            steps.len().saturating_sub(1).max(from_step)
        } else {
            from_step
        };
        while i < steps.len() {
            if let Some((start, checks)) = background
                && i >= *start
                && running.is_none()
            {
                *running = Some(self.start_background(checks.clone(), i).await?);
            }
            if let Some(task) = running.as_mut()
                && task.is_finished()
            {
                let verdict = task.await.unwrap_or_else(|e| {
                    (
                        "background analysis".into(),
                        Verdict::Fail(e.to_string()),
                        Vec::new(),
                    )
                });
                *running = None;
                return self.background_ended(i, verdict).await;
            }
            if let Some(outcome) = self.before_step(i).await? {
                return Ok(outcome);
            }
            let step = &steps[i];
            self.log(Event::StepStarted {
                rollout: self.rollout.clone(),
                step: i,
                kind: step.kind,
                note: step.note.clone(),
            })?;
            // Another machine sees that this step began, and that the last one ended, before
            // anything of it changes: the step's first change waits for its push (see
            // `journal_change`). The boundary goes out within 50 ms without waiting (with that
            // change when it comes sooner), so a crash while the step waits for pods loses none
            // of it. The lock is looked at here.
            self.still_held()?;
            if let Some(team) = self.team {
                team.push_soon();
            }
            let started = Instant::now();
            match self.run_step_held(i, step).await? {
                StepResult::Done => {
                    self.log(Event::StepDone {
                        rollout: self.rollout.clone(),
                        step: i,
                        millis: started.elapsed().as_millis() as u64,
                    })?;
                }
                StepResult::Pause(reason) => {
                    self.log(Event::Paused {
                        rollout: self.rollout.clone(),
                        step: i,
                        reason: reason.clone(),
                    })?;
                    if !(self.wait_at_pauses && wait::waits_at(step)) {
                        return Ok(RunOutcome::Paused(reason));
                    }
                    // Others see the pause before anyone is asked to end it.
                    self.checkpoint().await?;
                    match self.wait_at_pause(i, &reason).await? {
                        wait::Waited::Promoted { full: true } => {
                            i = (steps.len() - 1).max(i + 1);
                            continue;
                        }
                        wait::Waited::Promoted { full: false } => {}
                        wait::Waited::Ended(outcome) => return Ok(outcome),
                    }
                }
                StepResult::Failed(reason) => return self.on_failure(i, reason).await,
                StepResult::Gone(reason) => {
                    self.log(Event::Finished {
                        rollout: self.rollout.clone(),
                        outcome: Outcome::Failed,
                        detail: reason.clone(),
                    })?;
                    return Ok(RunOutcome::Failed(reason));
                }
            }
            i += 1;
        }
        self.log(Event::Finished {
            rollout: self.rollout.clone(),
            outcome: Outcome::Succeeded,
            detail: format!("every instance on {version}"),
        })?;
        Ok(RunOutcome::Succeeded)
    }

    /// Starts background analysis of `checks`; it sets `background_done` when it has a verdict.
    async fn start_background(&self, checks: Vec<Check>, i: usize) -> Result<Background> {
        let vars = self.metric_vars(&self.target.instances().await?, i);
        let (http, done) = (self.http.clone(), self.background_done.clone());
        Ok(tokio::spawn(async move {
            let verdict = crate::health::run::background(&http, &checks, &vars).await;
            done.store(true, Ordering::SeqCst);
            verdict
        }))
    }

    /// Background analysis reached a verdict at step `i`: an inconclusive one pauses, a failure
    /// fails the rollout.
    async fn background_ended(
        &mut self,
        i: usize,
        (name, verdict, measurements): (String, Verdict, Vec<crate::state::Sample>),
    ) -> Result<RunOutcome> {
        let detail = match &verdict {
            Verdict::Fail(why) | Verdict::Inconclusive(why) => why.clone(),
            _ => String::new(),
        };
        self.log(Event::Gate {
            rollout: self.rollout.clone(),
            step: i,
            check: name.clone(),
            passed: false,
            detail: format!("in the background: {detail}"),
            measurements,
        })?;
        if matches!(verdict, Verdict::Inconclusive(_)) {
            let reason = format!(
                "background check {name} is inconclusive: {detail}: a person decides (promote or abort)"
            );
            self.log(Event::Paused {
                rollout: self.rollout.clone(),
                step: i,
                reason: reason.clone(),
            })?;
            return Ok(RunOutcome::Paused(reason));
        }
        self.on_failure(i, format!("background check {name} failed: {detail}"))
            .await
    }

    /// What stops a run before step `i` begins: a lost Lease, a control request, Ctrl-C, or a
    /// webhook that says no (`pre-rollout` before the first step, `confirm-promotion` before going
    /// to everyone).
    async fn before_step(&mut self, i: usize) -> Result<Option<RunOutcome>> {
        self.still_held()?;
        if let Some(control) = self.take_control() {
            return self.finish_control(control, i).await.map(Some);
        }
        if self.interrupts.count() > 0 {
            self.log(Event::Paused {
                rollout: self.rollout.clone(),
                step: i,
                reason: "interrupted (Ctrl-C)".into(),
            })?;
            return Ok(Some(RunOutcome::Interrupted));
        }
        if i == 0
            && let Err(why) = self
                .hooks(crate::spec::HookType::PreRollout, Some(0), "")
                .await
        {
            self.log(Event::Finished {
                rollout: self.rollout.clone(),
                outcome: Outcome::Failed,
                detail: why.clone(),
            })?;
            return Ok(Some(RunOutcome::Failed(why)));
        }
        // Going to everyone: the blue-green switch, or a canary's last step.
        if self.plan.promotes_at(i)
            && let Err(why) = self
                .hooks(crate::spec::HookType::ConfirmPromotion, Some(i), "")
                .await
        {
            let reason = format!("promotion not confirmed: {why}");
            self.log(Event::Paused {
                rollout: self.rollout.clone(),
                step: i,
                reason: reason.clone(),
            })?;
            return Ok(Some(RunOutcome::Paused(reason)));
        }
        Ok(None)
    }

    /// Runs step `i` while the app's Lease holds: a run whose Lease is gone stops mid-step at
    /// once, even while nothing happens. A target error inside a step (an agent that stopped
    /// answering) fails the step, so `rollback.auto` handles it like any other failure.
    async fn run_step_held(&mut self, i: usize, step: &Step) -> Result<StepResult> {
        let team = self.team;
        let stepped = match team {
            Some(team) => tokio::select! {
                r = self.run_step(i, step) => r,
                why = team.wait_lost() => Err(EngineError::LockLost(why)),
            },
            None => self.run_step(i, step).await,
        };
        let result = match stepped {
            Ok(r) => r,
            Err(EngineError::Target(TargetError::Gone(why))) => StepResult::Gone(why),
            Err(EngineError::Target(e)) => StepResult::Failed(error_chain(&e)),
            Err(e) => return Err(e),
        };
        // A step cut short by a refused write is no failure of the new version.
        self.still_held()?;
        Ok(result)
    }

    async fn run_step(&mut self, idx: usize, step: &Step) -> Result<StepResult> {
        match step.kind {
            StepKind::Scale => {
                let version = self.version().to_string();
                if let Some(delay) = step.duration_seconds.filter(|d| *d > 0) {
                    // Blue-green keeps the old set this long after the switch: a switch back is instant.
                    self.hold(Duration::from_secs(delay)).await;
                }
                let sink = Counting {
                    inner: &*self,
                    ok: AtomicUsize::new(0),
                };
                {
                    // progressDeadlineSeconds bounds the step: no progress by then fails it.
                    let deadline = self.deadline();
                    let end = self.plan.step_end(idx, &self.manifest.rollout.spec.checks);
                    let scaled = tokio::time::timeout(
                        deadline + Duration::from_secs(5),
                        self.target.scale(step, &version, end, deadline, &sink),
                    );
                    match scaled.await {
                        Ok(Ok(())) => {}
                        Ok(Err(TargetError::Journal(why))) => {
                            return Err(EngineError::Journal(why));
                        }
                        Ok(Err(TargetError::Gone(why))) => return Ok(StepResult::Gone(why)),
                        Ok(Err(why)) => return Ok(StepResult::Failed(error_chain(&why))),
                        Err(_) => {
                            return Ok(StepResult::Failed(format!(
                                "no progress within progressDeadlineSeconds ({}s)",
                                deadline.as_secs()
                            )));
                        }
                    }
                }
                let changed = sink.ok.load(Ordering::SeqCst) > 0;
                let min_ready = self.manifest.strategy.min_ready_seconds();
                if min_ready > 0 && changed && !self.target.holds_min_ready() {
                    // minReadySeconds is a hold the user asked for, not a poll.
                    tokio::time::sleep(Duration::from_secs(min_ready)).await;
                }
                let checks: Vec<Check> = self
                    .plan
                    .checks_for(idx, &self.manifest.rollout.spec.checks)
                    .into_iter()
                    .cloned()
                    .collect();
                self.gate(idx, &checks).await
            }
            StepKind::Analysis => {
                let checks: Vec<Check> = self
                    .plan
                    .checks_for(idx, &self.manifest.rollout.spec.checks)
                    .into_iter()
                    .cloned()
                    .collect();
                self.gate(idx, &checks).await
            }
            StepKind::Pause | StepKind::Promote if step.manual => {
                Ok(StepResult::Pause(step.note.clone()))
            }
            StepKind::Pause | StepKind::Promote => {
                self.hold(Duration::from_secs(step.duration_seconds.unwrap_or(0)))
                    .await;
                Ok(StepResult::Done)
            }
            StepKind::Switch => match self.target.switch_traffic(self.version()).await {
                Ok(()) => Ok(StepResult::Done),
                Err(why) => Ok(StepResult::Failed(format!(
                    "traffic switch: {}",
                    error_chain(&why)
                ))),
            },
        }
    }

    /// Waits `length`, cut short by a promote, abort or pause request or by Ctrl-C.
    async fn hold(&self, length: Duration) {
        let end = Instant::now() + length;
        // Short slices, so a request during a long soak is seen within a quarter second.
        while Instant::now() < end {
            if self.interrupts.count() > 0
                || self.background_done.load(Ordering::SeqCst)
                || self.store.control_count(self.app()) > self.controls_seen
            {
                break;
            }
            tokio::time::sleep((end - Instant::now()).min(Duration::from_millis(250))).await;
        }
    }

    /// The first abort or pause request since the last look; promotions only cut timed pauses short.
    fn take_control(&mut self) -> Option<Control> {
        let controls = self.store.controls(self.app(), self.controls_seen);
        self.controls_seen += controls.len();
        controls
            .into_iter()
            .find(|c| matches!(c, Control::Abort { .. } | Control::Pause { .. }))
    }

    async fn finish_control(&mut self, control: Control, step: usize) -> Result<RunOutcome> {
        match control {
            Control::Abort { actor } => {
                let reason = format!("aborted by {actor}");
                self.log(Event::Controlled {
                    rollout: self.rollout.clone(),
                    step,
                    action: ControlKind::Abort,
                    actor,
                })?;
                self.roll_back_and_finish(&reason, Outcome::Aborted).await?;
                Ok(RunOutcome::RolledBack(reason))
            }
            Control::Pause { actor } => {
                let reason = format!("paused by {actor}");
                self.log(Event::Controlled {
                    rollout: self.rollout.clone(),
                    step,
                    action: ControlKind::Pause,
                    actor,
                })?;
                self.log(Event::Paused {
                    rollout: self.rollout.clone(),
                    step,
                    reason: reason.clone(),
                })?;
                Ok(RunOutcome::Paused(reason))
            }
            Control::Promote { .. } => Ok(RunOutcome::Paused("unexpected control".into())),
        }
    }

    async fn on_failure(&mut self, step: usize, reason: String) -> Result<RunOutcome> {
        match self.manifest.rollout.spec.rollback.auto {
            AutoRollback::Yes => {
                self.roll_back_and_finish(&reason, Outcome::RolledBack)
                    .await?;
                Ok(RunOutcome::RolledBack(reason))
            }
            AutoRollback::Pause => {
                let why = format!("failed, waiting for a person (rollback.auto: pause): {reason}");
                self.log(Event::Paused {
                    rollout: self.rollout.clone(),
                    step,
                    reason: why.clone(),
                })?;
                Ok(RunOutcome::Paused(why))
            }
            AutoRollback::No => {
                self.log(Event::Finished {
                    rollout: self.rollout.clone(),
                    outcome: Outcome::Failed,
                    detail: reason.clone(),
                })?;
                Ok(RunOutcome::Failed(reason))
            }
        }
    }

    /// Rolls back (see [`Run::rollback`]) and journals the rollout as finished with `outcome`.
    pub async fn roll_back_and_finish(&mut self, reason: &str, outcome: Outcome) -> Result<()> {
        self.rollback(reason).await?;
        self.log(Event::Finished {
            rollout: self.rollout.clone(),
            outcome,
            detail: reason.to_string(),
        })
    }

    /// Puts every instance back on the old version at once: it is still on disk, so nothing is
    /// downloaded. Journaled before it acts, so a crash mid-rollback is finished by `resume`.
    pub async fn rollback(&mut self, reason: &str) -> Result<()> {
        let Some(from) = self.from.clone() else {
            return Err(EngineError::Unsupported(format!(
                "cannot roll back: no earlier version is known ({reason})"
            )));
        };
        self.still_held()?;
        if let Err(e) = self
            .hooks(crate::spec::HookType::Rollback, None, reason)
            .await
        {
            eprintln!("warning: {e}");
        }
        self.log(Event::RollbackStarted {
            rollout: self.rollout.clone(),
            reason: reason.to_string(),
            to: from.clone(),
        })?;
        self.target
            .restore(&from, self.deadline(), &*self)
            .await
            .map_err(|e| match e {
                TargetError::Journal(why) => EngineError::Journal(why),
                e => EngineError::RollbackIncomplete {
                    version: from.clone(),
                    reason: error_chain(&e),
                },
            })
    }
}

pub use crate::error_chain;

/// The version most instances serve, other than `target_version`: what a rollback returns to.
pub fn current_version(instances: &[Instance], target_version: &str) -> Option<String> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for i in instances {
        let v = match (&i.version, &i.previous) {
            (Some(v), _) if v != target_version => v.clone(),
            (Some(_), Some(p)) => p.clone(),
            _ => continue,
        };
        match counts.iter_mut().find(|(x, _)| *x == v) {
            Some((_, n)) => *n += 1,
            None => counts.push((v, 1)),
        }
    }
    counts.into_iter().max_by_key(|(_, n)| *n).map(|(v, _)| v)
}

/// Whether a rollout to `version` has nothing to do: every instance runs it and the target, where
/// it declares a version of its own (a Deployment's template), declares it. A fleet that shows no
/// instance at all is not settled: nothing seen is not everything done.
pub fn settled(instances: &[Instance], declared: Option<&str>, version: &str) -> bool {
    let all_run = instances
        .iter()
        .all(|i| i.version.as_deref() == Some(version));
    match declared {
        Some(d) => d == version && all_run,
        None => all_run && !instances.is_empty(),
    }
}

#[cfg(test)]
mod tests;
