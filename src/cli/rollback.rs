//! `rollgate rollback APP`: the one-command rollback, a health-gated rollout back to the version
//! before the last successful one, from the versions kept on disk.

use crate::cli::run::{Start, beside, drive, finish, overrides, plan_for, records, target_for};
use crate::cli::{CliError, RollbackArgs, failed};
use crate::hold::{Env, Hold};
use crate::plan;
use crate::spec::Manifest;
use crate::state::{Outcome, StrategyKind, history};
use crate::target::{AnyTarget, Target};

/// One-command rollback: the version before the last successful rollout, from the versions kept on
/// disk, as a health-gated rolling update in waves of maxUnavailable (or all at once with `--fast`).
pub(super) async fn rollback(args: &RollbackArgs, env: &Env) -> Result<u8, CliError> {
    let app = &args.app.app;
    let store = &env.store;
    let remote = env.remote_for_app(app).await?;
    let all = history(&records(env, app, remote.as_ref()).await?);
    let Some(last) = all
        .iter()
        .rev()
        .find(|r| r.outcome == Some(Outcome::Succeeded) && r.strategy != StrategyKind::Rollback)
    else {
        return Err(CliError::Failed(format!(
            "{app}: no completed rollout to roll back"
        )));
    };
    if let Some(v) = &args.to {
        let deployed = all.iter().any(|r| {
            r.from.as_deref() == Some(v.as_str())
                || (r.to == *v && r.outcome == Some(Outcome::Succeeded))
        });
        // Compacted rollouts are only counted: a version deployed before them is not known here.
        if !deployed && env.store.compacted(app).ok().flatten().is_none() {
            let mut known: Vec<&str> = all
                .iter()
                .flat_map(|r| r.from.as_deref().into_iter().chain([r.to.as_str()]))
                .collect();
            known.sort_unstable();
            known.dedup();
            return Err(CliError::Failed(format!(
                "{app}: version {v} was never deployed (the journal knows {})",
                known.join(", ")
            )));
        }
    }
    let to = match (&args.to, &last.from) {
        (Some(v), _) => v.clone(),
        (None, Some(v)) => v.clone(),
        (None, None) => {
            return Err(CliError::Failed(format!(
                "{app}: the last rollout had no earlier version; pass --to VERSION"
            )));
        }
    };
    let mut stored = store.load_manifest(app, &last.id).map_err(failed)?;
    if let Some(h) = stored.spec.target.hosts_mut() {
        // Only what is already on disk: a rollback never reads or downloads an artifact.
        h.artifact = None;
    }
    let mut original = Manifest::from_resolved(stored, &store.app_dir(app))?;
    overrides(&mut original, env)?;
    let original_target = target_for(&original, env).await?;
    let unavailable = if args.fast {
        crate::spec::IntOrPercent::Percent(100)
    } else {
        crate::spec::IntOrPercent::Int(
            plan_for(&original, &original_target)
                .await?
                .max_unavailable
                .max(1),
        )
    };
    let mut rollout = original.resolved();
    rollout.spec.version = to.clone();
    rollout.spec.strategy =
        plan::rollback_strategy(&original.strategy, original_target.capacity(), unavailable);
    if let Some(h) = rollout.spec.target.hosts_mut() {
        // Only what is already on disk: a rollback never downloads.
        h.artifact = None;
    }
    let m = Manifest::from_resolved(rollout, &store.app_dir(app))?;
    let target = target_for(&m, env).await?;
    // The target's watches start while the lock is taken; what they show is read under it.
    let held = beside(Hold::take(&env.store, app, remote.as_ref()), target.warm()).await?;
    let result = rollback_locked(args, env, &m, &target, &to, &held).await;
    finish(held, result).await
}

async fn rollback_locked(
    args: &RollbackArgs,
    env: &Env,
    m: &Manifest,
    target: &AnyTarget,
    to: &str,
    held: &Hold,
) -> Result<u8, CliError> {
    let app = &args.app.app;
    let (instances, asked) =
        tokio::join!(target.instances(), crate::cli::approve::ask_user(m, env));
    let instances = instances.map_err(failed)?;
    let missing: Vec<&str> = instances
        .iter()
        .filter(|i| !i.installed.iter().any(|v| v == to))
        .map(|i| i.name.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(CliError::Failed(format!(
            "{app}: version {to} is no longer on {}; roll forward with apply instead",
            missing.join(", ")
        )));
    }
    let from = instances
        .iter()
        .find_map(|i| i.version.clone().filter(|v| *v != to));
    let id = format!("{app}-{}", crate::state::now_ms());
    drive(
        m,
        target,
        env,
        &id,
        from,
        args.app.output,
        Start::New {
            strategy: StrategyKind::Rollback,
            wait: false,
            asked,
        },
        held,
    )
    .await
}
