//! `rollgate watch APP` (not `status --watch`, which is `cli/watch`): while a rollout waits at a
//! pause, watches the new version's pods and rolls the rollout back when they fail, until someone
//! promotes or aborts it.
//!
//! The rollout's checks (not metric ones) are probed too, each at its interval on each new
//! instance: more than `failureLimit` failures in a row on one instance is a failure.
//!
//! `apply` still exits 3 at a pause (the scripting contract): the watch is a second, long-lived
//! command (a CI job's background step, a terminal) that holds nothing while all is well, so
//! `promote` and `abort` from anywhere work as before. It takes the app's lock (and Lease) only to
//! roll back, and then only if the rollout is still paused at the same step.

use crate::cli::controls::roll_back_here;
use crate::cli::output::say;
use crate::cli::run::{finish, last_rollout, local_records, records, target_for};
use crate::cli::{AppArgs, CliError, exit, failed};
use crate::health::Probe;
use crate::hold::{Env, Hold};
use crate::spec::Check;
use crate::state::team::Team;
use crate::state::{Outcome, RolloutSummary};
use crate::target::{AnyTarget, Target};

use std::collections::BTreeMap;

/// The step a rollout waits at, if it is paused.
fn paused_at(r: &RolloutSummary) -> Option<usize> {
    if r.outcome.is_some() || r.paused.is_none() {
        return None;
    }
    r.steps
        .last()
        .filter(|s| s.millis.is_none())
        .map(|s| s.step)
}

pub async fn watch(args: &AppArgs, env: &Env) -> Result<u8, CliError> {
    let app = &args.app;
    let remote = env.remote_for_app(app).await?;
    let (last, m) = last_rollout(
        env,
        app,
        &records(env, app, remote.as_ref()).await?,
        remote.as_ref(),
    )?;
    let Some(step) = paused_at(&last) else {
        return Err(CliError::Failed(format!(
            "{app}: the last rollout ({}) is not paused; nothing to watch",
            last.id
        )));
    };
    let version = m.rollout.spec.version.clone();
    let target = target_for(&m, env).await?;
    say(
        args.output,
        &format!(
            "{app}: watching {version}'s pods while {} waits at step {}: rolled back if they fail; the watch ends with the pause",
            last.id,
            step + 1
        ),
    );
    let checks = watch_checks(&target, &m.rollout.spec.checks, &version);
    tokio::pin!(checks);
    loop {
        let (now, _) = last_rollout(
            env,
            app,
            &records(env, app, remote.as_ref()).await?,
            remote.as_ref(),
        )?;
        if now.id != last.id || paused_at(&now) != Some(step) {
            let how = match now.outcome {
                Some(o) => format!("the rollout {o}"),
                None => "promoted".to_string(),
            };
            say(
                args.output,
                &format!("{app}: the pause ended ({how}); watch done"),
            );
            return Ok(exit::OK);
        }
        let why = tokio::select! {
            why = &mut checks => Some(why),
            pods = target.failing(&version, true) => pods.map_err(failed)?,
        };
        let Some(why) = why else {
            continue;
        };
        match Hold::take(&env.store, app, remote.as_ref()).await {
            // Someone is promoting or aborting right now: look again once they are done.
            Err(e) if e.is_locked() => continue,
            Err(e) => return Err(e.into()),
            Ok(held) => {
                let result =
                    roll_back(args, env, remote.as_ref(), &held, &last.id, step, &why).await;
                return finish(held, result).await;
            }
        }
    }
}

/// Probes the rollout's checks (not the metric ones) on each instance of `version` at each check's
/// interval, for as long as it is polled; returns why once more than a check's `failureLimit`
/// probes in a row have failed on one instance.
async fn watch_checks(target: &AnyTarget, checks: &[Check], version: &str) -> String {
    let probed: Vec<&Check> = checks.iter().filter(|c| !c.is_metric()).collect();
    if probed.is_empty() {
        return std::future::pending().await;
    }
    let start = tokio::time::Instant::now();
    let mut due: Vec<_> = probed.iter().map(|c| start + c.initial_delay.0).collect();
    let mut in_a_row: BTreeMap<(usize, String), u32> = BTreeMap::new();
    loop {
        let (i, at) = due
            .iter()
            .copied()
            .enumerate()
            .min_by_key(|(_, at)| *at)
            .expect("one check or more");
        tokio::time::sleep_until(at).await;
        let check = probed[i];
        due[i] = tokio::time::Instant::now() + check.interval.0;
        let Ok(instances) = target.instances().await else {
            continue;
        };
        for inst in instances.iter().filter(|x| x.serves(version)) {
            let key = (i, inst.name.clone());
            match target.probe(check, &inst.name, version).await {
                Probe::Pass => {
                    in_a_row.remove(&key);
                }
                Probe::Fail(why) => {
                    let n = in_a_row.entry(key).or_default();
                    *n += 1;
                    if *n > check.failure_limit {
                        return format!(
                            "check {} failed on {}: {n} probes in a row (failureLimit {}): {why}",
                            check.name, inst.name, check.failure_limit
                        );
                    }
                }
            }
        }
    }
}

/// Under the hold: rolls the rollout back if it is still paused at `step`.
async fn roll_back(
    args: &AppArgs,
    env: &Env,
    remote: Option<&Team>,
    held: &Hold,
    id: &str,
    step: usize,
    why: &str,
) -> Result<u8, CliError> {
    let app = &args.app;
    let records = local_records(env, app, remote)?;
    let (last, m) = last_rollout(env, app, &records, remote)?;
    if last.id != id || paused_at(&last) != Some(step) {
        say(
            args.output,
            &format!("{app}: the pause ended meanwhile; watch done"),
        );
        return Ok(exit::OK);
    }
    let reason = format!("failed while paused at step {}: {why}", step + 1);
    roll_back_here(
        env,
        &m,
        &last,
        held,
        args.output,
        &reason,
        Outcome::RolledBack,
    )
    .await?;
    say(args.output, &format!("{app}: rolled back: {reason}"));
    Ok(exit::FAILED)
}
