//! `status` and `history`: read an app's journal and its instances, print, and exit with its state.

use std::io::IsTerminal;

use crate::cli::output::{self, Running, json_line, out};
use crate::cli::run::{last_rollout, records, running, target_for};
use crate::cli::{CliError, HistoryArgs, Progress, StatusArgs, approve, exit, watch};
use crate::hold::Env;
use crate::state::{Outcome, Record, RolloutSummary, history};
use crate::target::{AnyTarget, Target};

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

/// `status`: the last rollout and its instances; with `--watch`, as steps and an instance grid
/// followed until it ends or pauses (redrawn in place on a terminal, a line per journal record
/// otherwise), and the process exits with the state's code (or 1 when `--timeout` runs out first).
pub async fn status(args: &StatusArgs, env: &Env) -> Result<u8, CliError> {
    let remote = env.remote_for_app(&args.app).await?;
    let deadline = args.timeout.map(|d| tokio::time::Instant::now() + d.0);
    let redraw = args.watch && args.output == Progress::Auto && std::io::stdout().is_terminal();
    let mut screen = watch::Screen::default();
    let mut shown: Option<usize> = None;
    let mut last_json = String::new();
    let mut target: Option<(AnyTarget, Option<crate::plan::Plan>)> = None;
    let mut interrupted_polls = 0;
    loop {
        let records = records(env, &args.app, remote.as_ref()).await?;
        let (mut last, m) = last_rollout(env, &args.app, &records, remote.as_ref())?;
        approve::check_kube_history(env, &args.app, std::slice::from_mut(&mut last)).await;
        let _ = approve::check_stored(&env.store, &args.app, &mut last);
        let running = running(env, &args.app, remote.as_ref());
        if target.is_none()
            && let Ok(t) = target_for(&m, env).await
        {
            let plan = match t.size().await {
                Ok(n) => crate::plan::plan(&m.strategy, n, t.capacity()).ok(),
                Err(_) => None,
            };
            target = Some((t, plan));
        }
        let instances = match &target {
            Some((t, _)) => Some(t.instances().await),
            None => None,
        };
        let mine: Vec<&Record> = records
            .iter()
            .filter(|r| r.event.rollout() == last.id)
            .collect();
        if matches!(args.output, Progress::Json | Progress::Yaml) {
            let mut value = json_status(args, &last, &running, &instances);
            if let Some(line) = traffic(&target, &last, &m).await {
                value["traffic"] = line.trim_start_matches("traffic: ").into();
            }
            let line = serde_json::to_string(&value).expect("status serializes");
            if line != last_json {
                if args.output == Progress::Json {
                    out(&format!("{line}\n"));
                } else {
                    // One YAML document per update.
                    out(&format!(
                        "---\n{}",
                        serde_yaml::to_string(&value).expect("status serializes")
                    ));
                }
                last_json = line;
            }
        } else {
            let frame = watch::Frame {
                rollout: &last,
                running: &running,
                plan: target.as_ref().and_then(|(_, p)| p.as_ref()),
                manifest: &m,
                records: &mine,
                instances: instances.as_ref(),
            };
            match shown {
                // One-shot `status` keeps its line-per-instance form, which scripts read.
                _ if !args.watch => {
                    out(&output::summary(&last, &running));
                    if let Some(line) = traffic(&target, &last, &m).await {
                        out(&format!("{line}\n"));
                    }
                    if let Some(instances) = &instances {
                        out(&output::instances(instances));
                    }
                }
                _ if redraw => screen.draw(&watch::render(&frame)),
                None => out(&watch::render(&frame)),
                Some(n) => {
                    for r in mine.iter().skip(n) {
                        out(&format!("{}\n", output::describe(&r.event)));
                    }
                }
            }
            shown = Some(mine.len());
        }
        interrupted_polls = match running {
            Running::Interrupted if last.outcome.is_none() => interrupted_polls + 1,
            _ => 0,
        };
        // A closed stdout (`status web | head -1`) ends a watch: nobody reads it any more.
        if !args.watch || last.outcome.is_some() || last.paused.is_some() || output::stdout_closed()
        {
            return Ok(state_code(&last));
        }
        if interrupted_polls >= 2 {
            eprintln!(
                "{}: no process is running the rollout; `rollgate resume {}` continues it",
                args.app, args.app
            );
            return Ok(exit::PAUSED);
        }
        let mut wait = std::time::Duration::from_millis(500);
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                eprintln!(
                    "error: {}: timed out after {} waiting for the rollout to end (it is {})",
                    args.app,
                    args.timeout.map(|d| d.to_string()).unwrap_or_default(),
                    state_word(&last, &running)
                );
                return Ok(exit::FAILED);
            }
            wait = wait.min(left);
        }
        tokio::time::sleep(wait).await;
    }
}

/// A traffic-weighted canary's split now: read from the HTTPRoutes on Kubernetes; on hosts, what
/// the journal's last finished step gave the `trafficSwitch` hook (which keeps no state to read).
async fn traffic(
    target: &Option<(AnyTarget, Option<crate::plan::Plan>)>,
    last: &crate::state::RolloutSummary,
    m: &crate::spec::Manifest,
) -> Option<String> {
    let crate::spec::Strategy::Canary(c) = &m.strategy else {
        return None;
    };
    c.traffic_routing.as_ref()?;
    let (t, plan) = target.as_ref()?;
    if let AnyTarget::Kubernetes(k) = t {
        return Some(match k.route_weights().await {
            Ok(routes) => {
                let each: Vec<String> = routes
                    .iter()
                    .map(|(name, w)| match w {
                        Some(w) => format!("httproute/{name} stable {}% canary {w}%", 100 - w),
                        None => format!("httproute/{name} names neither Service"),
                    })
                    .collect();
                format!("traffic: {}", each.join(", "))
            }
            Err(e) => format!("traffic: unknown ({})", crate::error_chain(&e)),
        });
    }
    let plan = plan.as_ref()?;
    let w = match last.outcome {
        Some(crate::state::Outcome::Succeeded) => {
            return Some(format!("traffic: all to {}", last.to));
        }
        Some(_) => 0,
        None => last
            .steps
            .iter()
            .filter(|s| s.millis.is_some())
            .filter_map(|s| plan.steps.get(s.step).and_then(|p| p.traffic_weight))
            .next_back()
            .unwrap_or(0),
    };
    Some(format!(
        "traffic: stable {}% canary {w}% (as the trafficSwitch hook was last told)",
        100 - w
    ))
}

/// `status -o json`: one object.
fn json_status(
    args: &StatusArgs,
    last: &RolloutSummary,
    running: &Running,
    instances: &Option<crate::target::Result<Vec<crate::target::Instance>>>,
) -> serde_json::Value {
    let instances = match instances {
        Some(Ok(list)) => serde_json::json!(
            list.iter()
                .map(|i| serde_json::json!({"name": i.name, "version": i.version}))
                .collect::<Vec<_>>()
        ),
        Some(Err(e)) => serde_json::json!({"error": crate::error_chain(e)}),
        None => serde_json::Value::Null,
    };
    serde_json::json!({
        "app": args.app,
        "state": state_word(last, running),
        "exitCode": state_code(last),
        "rollout": last,
        "instances": instances,
    })
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
    match args.output {
        Progress::Json => {
            json_line(&all);
            return Ok(exit::OK);
        }
        Progress::Yaml => {
            out(&serde_yaml::to_string(&all).expect("history serializes"));
            return Ok(exit::OK);
        }
        Progress::Auto | Progress::Plain => {}
    }
    let compacted = env.store.compacted(&args.app).ok().flatten();
    let running = running(env, &args.app, remote.as_ref());
    out(&output::history(&all, compacted.as_ref(), &running));
    Ok(exit::OK)
}
