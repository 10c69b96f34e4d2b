//! `promote`, `pause` and `abort`: a control request handed to the running rollout, or, when
//! nothing runs, the control carried out by this process under the app's lock.

use crate::cli::output::{Reporter, say};
use crate::cli::run::{
    finish, last_rollout, local_records, plan_for, records, resume_locked, target_for,
};
use crate::cli::{AppArgs, CliError, Progress, PromoteArgs, approve, exit, failed};
use crate::engine::{Course, Run};
use crate::hold::{Env, Hold};
use crate::spec::Manifest;
use crate::state::team::Team;
use crate::state::{Actor, Control, ControlKind, Event, Outcome, Record, RolloutSummary};

pub(super) async fn promote(args: &PromoteArgs, env: &Env) -> Result<u8, CliError> {
    let app = &args.app.app;
    let remote = env.remote_for_app(app).await?;
    // While a rollout runs, it owns the journal: hand it the promotion as a control request.
    let held = match Hold::take(&env.store, app, remote.as_ref()).await {
        Err(e) if e.is_locked() => {
            let actor = approve::actor(env, remote.as_ref()).await;
            env.send(
                app,
                remote.as_ref(),
                &Control::Promote {
                    actor,
                    full: args.full,
                },
            )
            .await
            .map_err(failed)?;
            say(
                args.app.output,
                &format!("{app}: promotion sent to the running rollout"),
            );
            return Ok(exit::OK);
        }
        Err(e) => return Err(e.into()),
        Ok(held) => held,
    };
    let result = promote_locked(args, env, remote.as_ref(), &held).await;
    finish(held, result).await
}

async fn promote_locked(
    args: &PromoteArgs,
    env: &Env,
    remote: Option<&Team>,
    held: &Hold,
) -> Result<u8, CliError> {
    let app = &args.app.app;
    let mut actor = approve::actor(env, remote).await;
    let records = local_records(env, app, remote)?;
    let (last, m) = last_rollout(env, app, &records, remote)?;
    if last.outcome.is_some() || last.paused.is_none() {
        return Err(CliError::Failed(format!(
            "{app}: no paused rollout to promote"
        )));
    }
    let step = last.steps.last().map_or(0, |s| s.step);
    approve::sign(&args.signer, app, &last.id, step, &mut actor)?;
    if m.rollout.spec.target.kubernetes().is_some() {
        let plan = plan_for(&m, &target_for(&m, env).await?).await?;
        approve::prove_approval(env, &plan, &m, &last.id, step, &mut actor).await?;
    }
    env.store
        .journal(app)
        .and_then(|mut j| {
            j.append(Event::Promoted {
                rollout: last.id.clone(),
                step,
                actor: actor.clone(),
                full: args.full,
            })
        })
        .map_err(failed)?;
    held.changed();
    say(args.app.output, &approve::promoted(app, &actor));
    let course = if args.full {
        Course::StraightToLast
    } else {
        Course::StepByStep
    };
    resume_locked(&args.app, Some(course), env, remote, held).await
}

async fn control(
    args: &AppArgs,
    remote: Option<&Team>,
    env: &Env,
    make: impl FnOnce(Actor) -> Control,
) -> Result<u8, CliError> {
    // The last rollout's manifest says how this machine reaches the target, so how far the
    // sender's identity can be proven; without one, the environment's names and the cluster's.
    let last = match records(env, &args.app, remote).await {
        Ok(records) => last_rollout(env, &args.app, &records, remote).ok(),
        Err(_) => None,
    };
    let actor = match last {
        Some((_, m)) => approve::actor_of(env, &m).await,
        None => approve::actor(env, remote).await,
    };
    env.send(&args.app, remote, &make(actor))
        .await
        .map_err(failed)?;
    say(
        args.output,
        &format!(
            "{}: request sent; the running rollout acts on it after its current step",
            args.app
        ),
    );
    Ok(exit::OK)
}

/// Asks the running rollout to pause; with nothing running there is nothing to pause (exit 1).
pub(super) async fn pause(args: &AppArgs, env: &Env) -> Result<u8, CliError> {
    let remote = env.remote_for_app(&args.app).await?;
    match Hold::take(&env.store, &args.app, remote.as_ref()).await {
        Err(e) if e.is_locked() => {
            control(args, remote.as_ref(), env, |actor| Control::Pause { actor }).await
        }
        Err(e) => Err(e.into()),
        Ok(held) => {
            let nothing = Err(CliError::Failed(format!(
                "{}: no rollout is running; nothing to pause",
                args.app
            )));
            finish(held, nothing).await
        }
    }
}

pub(super) async fn abort(args: &AppArgs, env: &Env) -> Result<u8, CliError> {
    let remote = env.remote_for_app(&args.app).await?;
    let held = match Hold::take(&env.store, &args.app, remote.as_ref()).await {
        Err(e) if e.is_locked() => {
            return control(args, remote.as_ref(), env, |actor| Control::Abort { actor }).await;
        }
        Err(e) => return Err(e.into()),
        Ok(held) => held,
    };
    let result = abort_locked(args, env, remote.as_ref(), &held).await;
    finish(held, result).await
}

/// Rolls the unfinished rollout `last` back from this process (which holds it) and ends it with
/// `outcome`: `abort`, and `watch` when a paused rollout fails.
pub(crate) async fn roll_back_here(
    env: &Env,
    m: &Manifest,
    last: &RolloutSummary,
    held: &Hold,
    output: Progress,
    reason: &str,
    outcome: Outcome,
) -> Result<(), CliError> {
    let target = target_for(m, env).await?;
    let plan = plan_for(m, &target).await?;
    let reporter = Reporter::new(output, plan.steps.len());
    let on_record = |r: &Record| reporter.record(r);
    let mut run = Run::new(
        &target,
        m,
        &plan,
        &env.store,
        &last.id,
        last.from.clone(),
        &on_record,
    )
    .map_err(failed)?;
    run.team = held.team();
    run.controls_seen = held.controls_seen();
    run.roll_back_and_finish(reason, outcome)
        .await
        .map_err(failed)?;
    reporter.finish();
    Ok(())
}

/// Nothing runs: roll the paused rollout back here.
async fn abort_locked(
    args: &AppArgs,
    env: &Env,
    remote: Option<&Team>,
    held: &Hold,
) -> Result<u8, CliError> {
    let records = local_records(env, &args.app, remote)?;
    let (last, m) = last_rollout(env, &args.app, &records, remote)?;
    if let Some(outcome) = last.outcome {
        return Err(CliError::Failed(format!(
            "{}: the last rollout already {outcome}",
            args.app
        )));
    }
    let actor = approve::actor_of(env, &m).await;
    let reason = format!("aborted by {actor}");
    let step = last.steps.last().map_or(0, |s| s.step);
    record_control(
        env,
        &args.app,
        &last.id,
        step,
        ControlKind::Abort,
        actor,
        held,
    )?;
    roll_back_here(env, &m, &last, held, args.output, &reason, Outcome::Aborted).await?;
    say(
        args.output,
        &format!("{}: aborted and rolled back", args.app),
    );
    // The abort did what was asked: it succeeded (the rollout's own outcome is `aborted`).
    Ok(exit::OK)
}

/// Journals that `actor` paused, resumed or aborted rollout `id` at `step`, before it takes effect.
pub(super) fn record_control(
    env: &Env,
    app: &str,
    id: &str,
    step: usize,
    action: ControlKind,
    actor: Actor,
    held: &Hold,
) -> Result<(), CliError> {
    env.store
        .journal(app)
        .and_then(|mut j| {
            j.append(Event::Controlled {
                rollout: id.to_string(),
                step,
                action,
                actor,
            })
        })
        .map_err(failed)?;
    held.changed();
    Ok(())
}
