//! `status` and `history`: read an app's journal and its instances, print, and exit with its state.

use crate::cli::output::{self, Running, json_line, out};
use crate::cli::run::{last_rollout, records, running, target_for};
use crate::cli::{CliError, HistoryArgs, Progress, StatusArgs, approve, exit};
use crate::hold::Env;
use crate::state::{Outcome, RolloutSummary, history};
use crate::target::Target;

/// The exit code that tells a rollout's state: 0 succeeded or in progress, 1 failed, rolled back
/// or aborted, 3 paused.
pub fn state_code(r: &RolloutSummary) -> u8 {
    match (r.outcome, &r.paused) {
        (Some(Outcome::Succeeded), _) => exit::OK,
        (Some(_), _) => exit::FAILED,
        (None, Some(_)) => exit::PAUSED,
        (None, None) => exit::OK,
    }
}

/// The state as one camelCase word, for `status -o json`.
fn state_word(r: &RolloutSummary, running: &Running) -> &'static str {
    match (r.outcome, &r.paused, running) {
        (Some(Outcome::Succeeded), _, _) => "succeeded",
        (Some(Outcome::RolledBack), _, _) => "rolledBack",
        (Some(Outcome::Failed), _, _) => "failed",
        (Some(Outcome::Aborted), _, _) => "aborted",
        (None, Some(_), _) => "paused",
        (None, None, Running::Interrupted) => "interrupted",
        (None, None, _) => "inProgress",
    }
}

pub async fn status(args: &StatusArgs, env: &Env) -> Result<u8, CliError> {
    let remote = env.remote_for_app(&args.app).await?;
    let mut first = true;
    loop {
        let records = records(env, &args.app, remote.as_ref()).await?;
        let (mut last, m) = last_rollout(env, &args.app, &records, remote.as_ref())?;
        approve::check_kube_history(env, &args.app, std::slice::from_mut(&mut last)).await;
        let _ = approve::check_stored(&env.store, &args.app, &mut last);
        let running = running(env, &args.app, remote.as_ref());
        let instances = match target_for(&m, env).await {
            Ok(target) => Some(target.instances().await),
            Err(_) => None,
        };
        if args.output == Progress::Json {
            let instances = match &instances {
                Some(Ok(list)) => serde_json::json!(
                    list.iter()
                        .map(|i| serde_json::json!({"name": i.name, "version": i.version}))
                        .collect::<Vec<_>>()
                ),
                Some(Err(e)) => serde_json::json!({"error": crate::error_chain(e)}),
                None => serde_json::Value::Null,
            };
            json_line(&serde_json::json!({
                "app": args.app,
                "state": state_word(&last, &running),
                "exitCode": state_code(&last),
                "rollout": last,
                "instances": instances,
            }));
        } else {
            if !first {
                out("\n");
            }
            out(&output::summary(&last, &running));
            if let Some(instances) = &instances {
                out(&output::instances(instances));
            }
        }
        first = false;
        // A closed stdout (`status web | head -1`) ends a watch: nobody reads it any more.
        if !args.watch || last.outcome.is_some() || output::stdout_closed() {
            return Ok(state_code(&last));
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// `history`: every rollout, oldest first; `-o json` prints them as one JSON array; `--verify`
/// re-verifies every signed record instead.
pub async fn history_cmd(h: &HistoryArgs, env: &Env) -> Result<u8, CliError> {
    let args = &h.app;
    let remote = env.remote_for_app(&args.app).await?;
    let mut all = history(&records(env, &args.app, remote.as_ref()).await?);
    approve::check_kube_history(env, &args.app, &mut all).await;
    if let Some(code) = approve::check_history(&env.store, &args.app, &mut all, h.verify) {
        return Ok(code);
    }
    if all.is_empty() {
        let place = match &remote {
            Some(r) => format!(
                "{} nor in the cluster ({})",
                env.store.app_dir(&args.app).display(),
                r.describe()
            ),
            None => env.store.app_dir(&args.app).display().to_string(),
        };
        return Err(CliError::Failed(format!(
            "{}: no rollouts recorded in {place}",
            args.app
        )));
    }
    if args.output == Progress::Json {
        json_line(&all);
        return Ok(exit::OK);
    }
    let compacted = env.store.compacted(&args.app).ok().flatten();
    let running = running(env, &args.app, remote.as_ref());
    out(&output::history(&all, compacted.as_ref(), &running));
    Ok(exit::OK)
}
