//! Executes parsed commands: loads inputs, calls the library, prints, and picks the exit code.

use std::io::{IsTerminal, Write};
use std::time::Instant;

use crate::cli::{
    AppArgs, ApplyArgs, Cli, Command, Format, InputArgs, PkiCommand, PlanArgs, Progress,
    PromoteArgs, RollbackArgs, StatusArgs, exit, output,
};
use crate::engine::{Interrupts, Run, RunOutcome, current_version, error_chain};
use crate::plan::{self, Capacity};
use crate::spec::{InputError, Manifest, Rollout};
use crate::state::{Actor, Control, Event, Outcome, Record, RolloutSummary, Store, history};
use crate::target::AnyTarget;
use crate::target::Target;
use crate::target::hosts::Hosts;

/// Errors at the command line's edge, each with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    fn code(&self) -> u8 {
        match self {
            CliError::Input(_) => exit::INPUT,
            CliError::Failed(_) => exit::FAILED,
        }
    }
}

fn failed(e: impl std::error::Error) -> CliError {
    CliError::Failed(error_chain(&e))
}

/// Runs a command and returns the process exit code. Errors are printed here.
pub fn run(cli: Cli) -> u8 {
    let result = match cli.command {
        Command::Validate(args) => validate(&args),
        Command::Plan(args) => plan_cmd(&args),
        Command::Pki(cmd) => pki(cmd),
        other => {
            let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts");
            runtime.block_on(run_async(other))
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            e.code()
        }
    }
}

async fn run_async(command: Command) -> Result<u8, CliError> {
    match command {
        Command::Apply(args) => apply(&args).await,
        Command::Resume(args) => resume(&args, None).await,
        Command::Promote(args) => promote(&args).await,
        Command::Pause(args) => control(&args, |actor| Control::Pause { actor }),
        Command::Abort(args) => abort(&args).await,
        Command::Retry(args) => retry(&args).await,
        Command::Rollback(args) => rollback(&args).await,
        Command::Status(args) => status(&args).await,
        Command::History(args) => history_cmd(&args),
        Command::Demo(args) => crate::cli::demo::run(&args).await,
        Command::Validate(_) | Command::Plan(_) | Command::Pki(_) => {
            unreachable!("handled synchronously")
        }
    }
}

fn load(input: &InputArgs) -> Result<Manifest, InputError> {
    Manifest::load(&input.files, input.env.as_deref())
}

fn validate(args: &InputArgs) -> Result<u8, CliError> {
    let m = load(args)?;
    let files: Vec<String> = m
        .sources
        .files
        .iter()
        .map(|s| s.file.display().to_string())
        .collect();
    println!(
        "{}: valid ({} strategy from {}; read {})",
        m.name(),
        m.strategy.name(),
        m.strategy_source,
        files.join(", ")
    );
    Ok(exit::OK)
}

/// N and capacity for the manifest's target.
pub fn instance_count(m: &Manifest, replicas: Option<u32>) -> Result<(u32, Capacity), InputError> {
    let t = &m.rollout.spec.target;
    if let Some(h) = &t.hosts {
        if replicas.is_some() {
            return Err(InputError::general(
                "--replicas applies to kubernetes targets: a host fleet's size is the number of hosts it lists",
            ));
        }
        let n = u32::try_from(h.hosts.len()).unwrap_or(u32::MAX);
        let cap = if h.slots_per_host >= 2 {
            Capacity::TwoSlots
        } else {
            Capacity::InPlace
        };
        return Ok((n, cap));
    }
    match replicas {
        Some(n) => Ok((n, Capacity::Elastic)),
        None => Err(InputError::general(
            "planning a kubernetes target offline needs its size: pass --replicas N",
        )),
    }
}

fn make_plan(m: &Manifest, replicas: Option<u32>) -> Result<plan::Plan, InputError> {
    let (n, capacity) = instance_count(m, replicas)?;
    plan::plan(&m.strategy, n, capacity).map_err(|e| m.sources.error(&e.path, e.message))
}

fn plan_cmd(args: &PlanArgs) -> Result<u8, CliError> {
    let m = load(&args.input)?;
    let p = make_plan(&m, args.replicas)?;
    let text = match args.output {
        Format::Table => {
            output::plan_table(m.name(), &m.rollout.spec.version, &m.strategy_source, &p)
        }
        Format::Json => serde_json::to_string_pretty(&p).expect("a plan always serializes") + "\n",
        Format::Yaml => serde_yaml::to_string(&p).expect("a plan always serializes"),
    };
    // A closed pipe (`| head`) is not an error worth a message.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    Ok(exit::OK)
}

fn pki(cmd: PkiCommand) -> Result<u8, CliError> {
    match cmd {
        PkiCommand::Init { dir } => {
            let issued = crate::pki::init(&dir).map_err(failed)?;
            println!(
                "CA written: {} (key {})",
                issued.cert.display(),
                issued.key.display()
            );
        }
        PkiCommand::Issue { dir, agent, client } => {
            let issued = match (agent, client) {
                (Some(host), _) => crate::pki::issue_agent(&dir, &host),
                (None, Some(name)) => crate::pki::issue_client(&dir, &name),
                (None, None) => unreachable!("clap requires one"),
            }
            .map_err(failed)?;
            println!(
                "certificate: {}\nkey: {}",
                issued.cert.display(),
                issued.key.display()
            );
        }
    }
    Ok(exit::OK)
}

/// The target a manifest names, connected lazily (Kubernetes reads its kubeconfig here).
async fn target_for(m: &Manifest) -> Result<AnyTarget, CliError> {
    if let Some(h) = &m.rollout.spec.target.hosts {
        let first_group = match &m.strategy {
            crate::spec::Strategy::Canary(c) => c.first_group.as_deref(),
            _ => None,
        };
        return Hosts::new(h, first_group)
            .map(AnyTarget::Hosts)
            .map_err(failed);
    }
    let Some(k) = &m.rollout.spec.target.kubernetes else {
        return Err(CliError::Failed("the manifest names no target".into()));
    };
    // A relative `manifest:` path starts at the folder of the first manifest file.
    let base = m
        .sources
        .files
        .first()
        .and_then(|s| s.file.parent())
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let min_ready = match &m.strategy {
        crate::spec::Strategy::Rolling(s) => s.min_ready_seconds,
        crate::spec::Strategy::Canary(s) => s.min_ready_seconds,
        crate::spec::Strategy::BlueGreen(s) => s.min_ready_seconds,
    };
    let blue_green = matches!(m.strategy, crate::spec::Strategy::BlueGreen(_));
    crate::target::kubernetes::Kubernetes::new(k, &base, min_ready, blue_green)
        .await
        .map(AnyTarget::Kubernetes)
        .map_err(failed)
}

/// The plan for the target as it is now (its size read from the target).
async fn plan_for(m: &Manifest, target: &AnyTarget) -> Result<plan::Plan, CliError> {
    let n = target.size().await.map_err(failed)?;
    Ok(plan::plan(&m.strategy, n, target.capacity())
        .map_err(|e| m.sources.error(&e.path, e.message))?)
}

/// Where a run starts: a new rollout (with its Started event), or a step of an existing one.
enum Start {
    New { label: String },
    At { step: usize, full: bool },
}

/// Runs (or continues) rollout `id` of `m` under the app's lock, reporting as `mode` says.
#[allow(clippy::too_many_arguments)]
async fn drive(
    m: &Manifest,
    target: &AnyTarget,
    store: &Store,
    id: &str,
    from: Option<String>,
    mode: Progress,
    start: Start,
    lock: crate::state::Lock,
) -> Result<u8, CliError> {
    let started = Instant::now();
    let plan = plan_for(m, target).await?;
    let reporter = Reporter::new(mode, plan.steps.len());
    let on_record = |r: &Record| reporter.record(r);
    let actor = Actor::from_env();
    let mut run =
        Run::new(target, m, &plan, store, id, from.clone(), &on_record).map_err(failed)?;
    run.interrupts = install_interrupts();
    let (step, full) = match start {
        Start::New { label } => {
            // confirm-rollout: a non-2xx answer holds the rollout before anything is recorded or changed.
            if let Err(why) = run
                .hooks(crate::spec::HookType::ConfirmRollout, None, "")
                .await
            {
                reporter.finish();
                println!("{}: held, nothing changed: {why}", m.name());
                return Ok(exit::PAUSED);
            }
            store
                .save_manifest(m.name(), id, &m.resolved())
                .map_err(failed)?;
            run.log(Event::Started {
                rollout: id.to_string(),
                from,
                to: m.rollout.spec.version.clone(),
                strategy: label,
                actor,
                steps: plan.steps.len(),
            })
            .map_err(failed)?;
            (0, false)
        }
        Start::At { step, full } => (step, full),
    };
    let outcome = run.execute(step, full).await;
    reporter.finish();
    drop(lock);
    Ok(outcome_code(&outcome.map_err(failed)?, m.name(), started))
}

/// Prints journal records as they are written: plain lines, JSON lines, or a progress bar.
pub struct Reporter {
    mode: Progress,
    bar: Option<indicatif::ProgressBar>,
}

impl Reporter {
    pub fn new(mode: Progress, steps: usize) -> Self {
        let tty = std::io::stderr().is_terminal();
        let bar = (mode == Progress::Auto && tty).then(|| {
            let bar = indicatif::ProgressBar::new(steps as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} step {pos}/{len} {msg}",
                )
                .expect("a valid template"),
            );
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            bar
        });
        Reporter { mode, bar }
    }

    pub fn record(&self, r: &Record) {
        if self.mode == Progress::Json {
            // A closed pipe (`-o json | head`) must not stop a rollout halfway: output is best effort.
            let _ = writeln!(
                std::io::stdout().lock(),
                "{}",
                serde_json::to_string(r).expect("records serialize")
            );
            return;
        }
        let line = output::describe(&r.event);
        match &self.bar {
            Some(bar) => {
                if let Event::StepDone { step, .. } = &r.event {
                    bar.set_position(*step as u64 + 1);
                }
                bar.set_message(line.clone());
                if !matches!(r.event, Event::InstanceChanging { .. }) {
                    bar.println(line);
                }
            }
            None => {
                let _ = writeln!(std::io::stdout().lock(), "{line}");
            }
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn install_interrupts() -> Interrupts {
    let interrupts = Interrupts::default();
    let handle = interrupts.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        loop {
            #[cfg(unix)]
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            #[cfg(not(unix))]
            let _ = tokio::signal::ctrl_c().await;
            if handle.raise() >= 2 {
                eprintln!(
                    "second interrupt: stopping now; `rollgate resume` continues from the journal"
                );
                std::process::exit(i32::from(exit::INTERRUPTED));
            }
            eprintln!(
                "interrupt: finishing the current step, then pausing (Ctrl-C again to stop at once)"
            );
        }
    });
    interrupts
}

fn outcome_code(outcome: &RunOutcome, app: &str, started: Instant) -> u8 {
    let took = started.elapsed().as_secs_f64();
    match outcome {
        RunOutcome::Succeeded => {
            println!("{app}: succeeded in {took:.1}s");
            exit::OK
        }
        RunOutcome::RolledBack(why) => {
            println!("{app}: rolled back in {took:.1}s: {why}");
            exit::FAILED
        }
        RunOutcome::Failed(why) => {
            println!("{app}: failed after {took:.1}s: {why}");
            exit::FAILED
        }
        RunOutcome::Paused(why) => {
            println!(
                "{app}: paused: {why} (continue with `rollgate promote {app}`, or `rollgate abort {app}`)"
            );
            exit::PAUSED
        }
        RunOutcome::Interrupted => {
            println!(
                "{app}: interrupted; the rollout is paused (`rollgate resume {app}` continues)"
            );
            exit::INTERRUPTED
        }
    }
}

pub async fn apply(args: &ApplyArgs) -> Result<u8, CliError> {
    let m = load(&args.input)?;
    apply_manifest(&m, args.output, &Store::open_default()).await
}

pub async fn apply_manifest(m: &Manifest, mode: Progress, store: &Store) -> Result<u8, CliError> {
    let target = target_for(m).await?;
    plan_for(m, &target).await?;
    let lock = store.lock(m.name(), &Actor::from_env()).map_err(failed)?;
    let instances = target.instances().await.map_err(failed)?;
    let version = &m.rollout.spec.version;
    if instances
        .iter()
        .all(|i| i.version.as_deref() == Some(version.as_str()))
    {
        println!(
            "{}: every instance already runs {version}; nothing to do",
            m.name()
        );
        return Ok(exit::OK);
    }
    let from = current_version(&instances, version);
    let id = format!("{}-{}", m.name(), crate::state::now_ms());
    drive(
        m,
        &target,
        store,
        &id,
        from,
        mode,
        Start::New {
            label: m.strategy.name().into(),
        },
        lock,
    )
    .await
}

/// The last rollout of `app` and its stored manifest.
fn last_rollout(store: &Store, app: &str) -> Result<(RolloutSummary, Manifest), CliError> {
    let records = store.read(app).map_err(failed)?;
    let Some(last) = history(&records).pop() else {
        return Err(CliError::Failed(format!(
            "{app} has no rollouts in {}",
            store.app_dir(app).display()
        )));
    };
    let rollout: Rollout = store.load_manifest(app, &last.id).map_err(failed)?;
    let origin = store
        .app_dir(app)
        .join("rollouts")
        .join(format!("{}.json", last.id));
    let m = Manifest::from_resolved(rollout, &origin)?;
    Ok((last, m))
}

/// Continues the last unfinished rollout. `promoted` says a promote just approved its pause.
async fn resume(args: &AppArgs, promoted: Option<bool>) -> Result<u8, CliError> {
    let store = Store::open_default();
    let (last, m) = last_rollout(&store, &args.app)?;
    if let Some(outcome) = last.outcome {
        // A crash after the last record leaves a dead holder's lock: take it over and release it.
        drop(store.lock(&args.app, &Actor::from_env()));
        println!(
            "{}: the last rollout ({}) already {outcome}; nothing to resume",
            args.app, last.id
        );
        return Ok(if outcome == Outcome::Succeeded {
            exit::OK
        } else {
            exit::FAILED
        });
    }
    let target = target_for(&m).await?;
    let plan = plan_for(&m, &target).await?;
    let lock = store.lock(&args.app, &Actor::from_env()).map_err(failed)?;
    // A rollback that was cut short is finished first.
    if let Some(reason) = &last.rollback {
        let reporter = Reporter::new(args.output, 1);
        let on_record = |r: &Record| reporter.record(r);
        let mut run = Run::new(
            &target,
            &m,
            &plan,
            &store,
            &last.id,
            last.from.clone(),
            &on_record,
        )
        .map_err(failed)?;
        run.interrupts = install_interrupts();
        run.rollback(reason).await.map_err(failed)?;
        run.log(Event::Finished {
            rollout: last.id.clone(),
            outcome: Outcome::RolledBack,
            detail: reason.clone(),
        })
        .map_err(failed)?;
        reporter.finish();
        println!("{}: rollback completed", args.app);
        return Ok(exit::FAILED);
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
        let plan_step = &plan.steps[step.step.min(plan.steps.len() - 1)];
        if plan_step.manual {
            let needed = plan_step.approvals.max(1) as usize;
            let distinct = last.approvers(step.step);
            if promoted.is_none() || distinct.len() < needed {
                println!(
                    "{}: paused at step {} ({reason}); {} of {needed} approvals so far: `rollgate promote {}`",
                    args.app,
                    step.step + 1,
                    distinct.len(),
                    args.app
                );
                return Ok(exit::PAUSED);
            }
            next = step.step + 1;
        } else if promoted.is_some() {
            // A person looked at a failed or inconclusive step and promoted: go past it.
            next = step.step + 1;
        } else {
            next = step.step;
        }
    }
    let start = Start::At {
        step: next,
        full: promoted == Some(true),
    };
    drive(
        &m,
        &target,
        &store,
        &last.id,
        last.from.clone(),
        args.output,
        start,
        lock,
    )
    .await
}

async fn promote(args: &PromoteArgs) -> Result<u8, CliError> {
    let store = Store::open_default();
    let actor = Actor::from_env();
    let app = &args.app.app;
    // While a rollout runs, it owns the journal: hand it the promotion as a control request.
    match store.lock(app, &actor) {
        Err(crate::state::StateError::Locked { .. }) => {
            store
                .send_control(
                    app,
                    &Control::Promote {
                        actor,
                        full: args.full,
                    },
                )
                .map_err(failed)?;
            println!("{app}: promotion sent to the running rollout");
            return Ok(exit::OK);
        }
        Err(e) => return Err(failed(e)),
        Ok(lock) => drop(lock),
    }
    let (last, _) = last_rollout(&store, app)?;
    if last.outcome.is_some() || last.paused.is_none() {
        return Err(CliError::Failed(format!(
            "{app}: no paused rollout to promote"
        )));
    }
    let step = last.steps.last().map_or(0, |s| s.step);
    store
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
    println!("{app}: promoted by {actor}");
    resume(&args.app, Some(args.full)).await
}

fn control(args: &AppArgs, make: impl FnOnce(Actor) -> Control) -> Result<u8, CliError> {
    let store = Store::open_default();
    store
        .send_control(&args.app, &make(Actor::from_env()))
        .map_err(failed)?;
    println!(
        "{}: request sent; the running rollout acts on it after its current step",
        args.app
    );
    Ok(exit::OK)
}

async fn abort(args: &AppArgs) -> Result<u8, CliError> {
    let store = Store::open_default();
    let actor = Actor::from_env();
    let lock = match store.lock(&args.app, &actor) {
        Err(crate::state::StateError::Locked { .. }) => {
            return control(args, |actor| Control::Abort { actor });
        }
        Err(e) => return Err(failed(e)),
        Ok(lock) => lock,
    };
    // Nothing runs: roll the paused rollout back here.
    let (last, m) = last_rollout(&store, &args.app)?;
    if let Some(outcome) = last.outcome {
        return Err(CliError::Failed(format!(
            "{}: the last rollout already {outcome}",
            args.app
        )));
    }
    let target = target_for(&m).await?;
    let plan = plan_for(&m, &target).await?;
    let reporter = Reporter::new(args.output, plan.steps.len());
    let on_record = |r: &Record| reporter.record(r);
    let mut run = Run::new(
        &target,
        &m,
        &plan,
        &store,
        &last.id,
        last.from.clone(),
        &on_record,
    )
    .map_err(failed)?;
    let reason = format!("aborted by {actor}");
    run.rollback(&reason).await.map_err(failed)?;
    run.log(Event::Finished {
        rollout: last.id,
        outcome: Outcome::Aborted,
        detail: reason,
    })
    .map_err(failed)?;
    reporter.finish();
    drop(lock);
    println!("{}: aborted and rolled back", args.app);
    Ok(exit::FAILED)
}

async fn retry(args: &AppArgs) -> Result<u8, CliError> {
    let store = Store::open_default();
    let (last, m) = last_rollout(&store, &args.app)?;
    match last.outcome {
        Some(Outcome::Succeeded) => Err(CliError::Failed(format!(
            "{}: the last rollout succeeded; nothing to retry",
            args.app
        ))),
        None => Err(CliError::Failed(format!(
            "{}: the last rollout is unfinished; use `rollgate resume {}`",
            args.app, args.app
        ))),
        Some(_) => apply_manifest(&m, args.output, &store).await,
    }
}

/// One-command rollback: the version before the last successful rollout, from the versions kept on
/// disk, as a health-gated rolling update in waves of maxUnavailable (or all at once with `--fast`).
async fn rollback(args: &RollbackArgs) -> Result<u8, CliError> {
    let store = Store::open_default();
    let app = &args.app.app;
    let all = history(&store.read(app).map_err(failed)?);
    let Some(last) = all
        .iter()
        .rev()
        .find(|r| r.outcome == Some(Outcome::Succeeded) && r.strategy != "rollback")
    else {
        return Err(CliError::Failed(format!(
            "{app}: no completed rollout to roll back"
        )));
    };
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
    if let Some(h) = &mut stored.spec.target.hosts {
        // Only what is already on disk: a rollback never reads or downloads an artifact.
        h.artifact = None;
    }
    let original = Manifest::from_resolved(stored, &store.app_dir(app))?;
    let unavailable = if args.fast {
        crate::spec::IntOrPercent::Percent(100)
    } else {
        let original_target = target_for(&original).await?;
        crate::spec::IntOrPercent::Int(
            plan_for(&original, &original_target)
                .await?
                .max_unavailable
                .max(1),
        )
    };
    let mut rollout = original.resolved();
    rollout.spec.version = to.clone();
    rollout.spec.strategy = if matches!(original.strategy, crate::spec::Strategy::BlueGreen(_)) {
        // Blue-green goes back the way it came: old set up beside the new, one switch, then retire.
        crate::spec::StrategySpec {
            blue_green: Some(crate::spec::BlueGreenSpec {
                auto_promotion_enabled: true,
                auto_promotion_seconds: 0,
                preview_replica_count: 0,
                scale_down_delay_seconds: 0,
                min_ready_seconds: 0,
                pre_promotion_analysis: None,
                post_promotion_analysis: None,
            }),
            ..Default::default()
        }
    } else {
        // Kubernetes can add pods: bring the previous set back at full size at once (surge 100%,
        // nothing unavailable), reusing its ReplicaSet. Hosts go back in waves of maxUnavailable.
        let elastic = original.rollout.spec.target.kubernetes.is_some();
        crate::spec::StrategySpec {
            rolling: Some(crate::spec::RollingSpec {
                max_surge: if elastic {
                    crate::spec::IntOrPercent::Percent(100)
                } else {
                    crate::spec::IntOrPercent::Int(0)
                },
                max_unavailable: if elastic {
                    crate::spec::IntOrPercent::Int(0)
                } else {
                    unavailable
                },
                min_ready_seconds: 0,
            }),
            ..Default::default()
        }
    };
    if let Some(h) = &mut rollout.spec.target.hosts {
        // Only what is already on disk: a rollback never downloads.
        h.artifact = None;
    }
    let m = Manifest::from_resolved(rollout, &store.app_dir(app))?;
    let target = target_for(&m).await?;
    let lock = store.lock(app, &Actor::from_env()).map_err(failed)?;
    let instances = target.instances().await.map_err(failed)?;
    let missing: Vec<&str> = instances
        .iter()
        .filter(|i| !i.installed.contains(&to))
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
        &m,
        &target,
        &store,
        &id,
        from,
        args.app.output,
        Start::New {
            label: "rollback".into(),
        },
        lock,
    )
    .await
}

async fn status(args: &StatusArgs) -> Result<u8, CliError> {
    let store = Store::open_default();
    loop {
        let (last, m) = last_rollout(&store, &args.app)?;
        print!("{}", output::summary(&last));
        if let Ok(target) = target_for(&m).await {
            match target.instances().await {
                Ok(instances) => {
                    for i in instances {
                        println!("  {:<12} {}", i.name, i.version.as_deref().unwrap_or("-"));
                    }
                }
                Err(e) => println!("  instances: {}", error_chain(&e)),
            }
        }
        if !args.watch || last.outcome.is_some() {
            return Ok(exit::OK);
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        println!();
    }
}

fn history_cmd(args: &AppArgs) -> Result<u8, CliError> {
    let store = Store::open_default();
    let all = history(&store.read(&args.app).map_err(failed)?);
    if all.is_empty() {
        println!(
            "{}: no rollouts recorded in {}",
            args.app,
            store.app_dir(&args.app).display()
        );
        return Ok(exit::OK);
    }
    if args.output == Progress::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&all).expect("history serializes")
        );
        return Ok(exit::OK);
    }
    for r in &all {
        print!("{}", output::summary(r));
    }
    Ok(exit::OK)
}
