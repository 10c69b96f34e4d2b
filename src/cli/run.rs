//! Executes parsed commands: loads inputs, calls the library, prints, and picks the exit code.

use std::time::Instant;

use crate::cli::output::{Reporter, say};
use crate::cli::{
    AppArgs, ApplyArgs, CliError, Command, Format, InputArgs, PlanArgs, Progress, ValidateArgs,
    approve, exit, failed, output,
};
use crate::engine::{Course, Run, current_version, settled};
use crate::error_chain;
use crate::hold::{Env, Hold, ResumePoint, resume_point};
use crate::kube::Kube;
use crate::plan;
use crate::spec::{InputError, Manifest, Rollout};
use crate::state::team::Team;
use crate::state::{
    Actor, ControlKind, Event, Outcome, Record, RolloutSummary, Store, StrategyKind, history,
};
use crate::target::AnyTarget;
use crate::target::Target;

/// Runs a command (any but `demo`) and returns its exit code.
pub fn command(
    command: Command,
    context: Option<String>,
    namespace: Option<String>,
    state: Option<String>,
) -> Result<u8, CliError> {
    match command {
        Command::Validate(args) => validate(&args),
        Command::Plan(args) => plan_cmd(&args),
        Command::Pki(cmd) => crate::cli::pki::command(cmd),
        Command::Completion { shell } => crate::cli::generate::completion(shell),
        Command::Man => crate::cli::generate::man(),
        Command::Schema { kind } => crate::cli::schema::command(kind),
        Command::Artifact(crate::cli::ArtifactCommand::Pack { dir, output }) => {
            crate::cli::artifact::pack(&dir, &output)
        }
        Command::List { output } => crate::cli::list::list(output, &Store::open_default()),
        other => {
            let runtime = crate::cli::runtime().expect("a tokio runtime starts");
            let mut env = Env::new(Store::open_default(), context, namespace);
            env.state = state
                .map(|url| crate::spec::state::EtcdSpec::from_url(&url))
                .transpose()?;
            runtime.block_on(run_async(other, &env))
        }
    }
}

pub(crate) async fn run_async(command: Command, env: &Env) -> Result<u8, CliError> {
    match command {
        Command::Apply(args) => apply(&args, env).await,
        Command::Resume(args) => resume(&args, None, env).await,
        Command::Promote(args) => crate::cli::controls::promote(&args, env).await,
        Command::Pause(args) => crate::cli::controls::pause(&args, env).await,
        Command::Abort(args) => crate::cli::controls::abort(&args, env).await,
        Command::Retry(args) => retry(&args, env).await,
        Command::Rollback(args) => crate::cli::rollback::rollback(&args, env).await,
        Command::Status(args) => crate::cli::inspect::status(&args, env).await,
        Command::History(args) => crate::cli::inspect::history_cmd(&args, env).await,
        Command::Watch(args) => crate::cli::pause_watch::watch(&args, env).await,
        Command::Dashboard(args) => crate::cli::dashboard::run(&args, env).await,
        Command::Validate(_)
        | Command::Plan(_)
        | Command::Pki(_)
        | Command::Demo(_)
        | Command::Completion { .. }
        | Command::Man
        | Command::Schema { .. }
        | Command::List { .. }
        | Command::Artifact(_) => unreachable!("handled before"),
    }
}

fn load(input: &InputArgs) -> Result<Manifest, InputError> {
    let m = Manifest::load(&input.files, input.env.as_deref())?;
    warn_insecure(&m);
    Ok(m)
}

/// `auth: {insecure: true}` is said on stderr by every command that loads the manifest, once.
pub(crate) fn warn_insecure(m: &Manifest) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if let Some(warning) = m.insecure_warning()
        && !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        eprintln!("{warning}");
    }
}

fn validate(args: &ValidateArgs) -> Result<u8, CliError> {
    let m = load(&args.input)?;
    crate::cli::security::check_blocking(&m, args.input.strict)?;
    // A traffic-weighted canary on hosts: whether each weight has an instance of both versions
    // depends on the fleet's size, which the manifest gives; `plan` refuses what this would pass.
    if m.rollout.spec.target.hosts().is_some()
        && matches!(&m.strategy, crate::spec::Strategy::Canary(c) if c.traffic_routing.is_some())
    {
        make_plan(&m, None)?;
    }
    let files: Vec<String> = m
        .sources
        .files
        .iter()
        .map(|s| s.file.display().to_string())
        .collect();
    let value = || {
        serde_json::json!({
            "app": m.name(),
            "valid": true,
            "strategy": m.strategy.name(),
            "strategySource": m.strategy_source,
            "files": files,
        })
    };
    output::out(&match args.output {
        Format::Table | Format::Plain => format!(
            "{}: valid ({} strategy from {}; read {})\n",
            m.name(),
            m.strategy.name(),
            m.strategy_source,
            files.join(", ")
        ),
        Format::Json => format!("{}\n", value()),
        Format::Yaml => serde_yaml::to_string(&value()).expect("serializes"),
    });
    Ok(exit::OK)
}

fn make_plan(m: &Manifest, replicas: Option<u32>) -> Result<plan::Plan, InputError> {
    let (n, capacity) = crate::target::offline_size(&m.rollout.spec.target, replicas)
        .map_err(InputError::general)?;
    plan::plan(&m.strategy, n, capacity).map_err(|e| m.sources.error(&e.path, e.message))
}

fn plan_cmd(args: &PlanArgs) -> Result<u8, CliError> {
    let m = load(&args.input)?;
    let p = make_plan(&m, args.replicas)?;
    crate::cli::security::check_blocking(&m, args.input.strict)?;
    let hosts = output::plan_hosts(&m, &p);
    let text = match args.output {
        Format::Table | Format::Plain => output::plan_table(
            m.name(),
            &m.rollout.spec.version,
            &m.strategy_source,
            &p,
            hosts.as_ref().map(|(labelled, _)| labelled.as_slice()),
        ),
        Format::Json => {
            serde_json::to_string_pretty(&output::plan_value(&p, hosts.as_ref()))
                .expect("a plan always serializes")
                + "\n"
        }
        Format::Yaml => serde_yaml::to_string(&output::plan_value(&p, hosts.as_ref()))
            .expect("a plan always serializes"),
    };
    output::out(&text);
    Ok(exit::OK)
}

/// Applies `--namespace` to a manifest's Kubernetes target.
pub(super) fn overrides(m: &mut Manifest, env: &Env) -> Result<(), CliError> {
    match m.rollout.spec.target.kubernetes_mut() {
        Some(k) => {
            if let Some(ns) = &env.namespace {
                k.namespace.clone_from(ns);
            }
            Ok(())
        }
        None => Ok(env.hosts_only(m.name())?),
    }
}

/// The app's journal: this machine's, merged (in memory) with the cluster's for a Kubernetes
/// target. A cluster that cannot be read leaves this machine's, with a warning.
pub(crate) async fn records(
    env: &Env,
    app: &str,
    remote: Option<&Team>,
) -> Result<Vec<Record>, CliError> {
    if let Some(r) = remote {
        match r.records(&env.store).await {
            Ok(Some(records)) => return Ok(records),
            Ok(None) => {}
            Err(e) => eprintln!(
                "warning: {}: showing this machine's journal only",
                error_chain(&e)
            ),
        }
    }
    local_records(env, app, remote)
}

/// The local journal (pulled from the cluster under the lock), for a Kubernetes target only the
/// rollouts in its namespace.
pub(crate) fn local_records(
    env: &Env,
    app: &str,
    remote: Option<&Team>,
) -> Result<Vec<Record>, CliError> {
    let records = env.store.read(app).map_err(failed)?;
    Ok(match remote {
        Some(r) => r.scope(&env.store, records),
        None => records,
    })
}

/// The kubeconfig; an unknown `--context` is a usage error.
async fn kube(env: &Env) -> Result<&Kube, CliError> {
    Ok(env.kube().await?)
}

/// Releases the hold whatever the command's result, and reports the first error.
pub(crate) async fn finish(held: Hold, result: Result<u8, CliError>) -> Result<u8, CliError> {
    let released = held.release().await;
    let code = result?;
    released.map_err(failed)?;
    Ok(code)
}

/// The target a manifest names, connected lazily (Kubernetes reads its kubeconfig here; its
/// writes go out only while this process holds the app's Lease).
pub(crate) async fn target_for(m: &Manifest, env: &Env) -> Result<AnyTarget, CliError> {
    AnyTarget::for_manifest(m, async || {
        let kube = kube(env).await?;
        Ok((
            kube.fenced().map_err(failed)?,
            kube.unretried().map_err(failed)?,
        ))
    })
    .await
}

/// `main` with `side` beside it: `main`'s error at once (`side` dropped), else its value once
/// `side` is done too.
pub(super) async fn beside<T, E>(
    main: impl Future<Output = Result<T, E>>,
    side: impl Future<Output = ()>,
) -> Result<T, E> {
    let mut main = std::pin::pin!(main);
    let mut side = std::pin::pin!(side);
    let mut side_done = false;
    let value = loop {
        tokio::select! {
            value = &mut main => break value?,
            () = &mut side, if !side_done => side_done = true,
        }
    };
    if !side_done {
        side.await;
    }
    Ok(value)
}

/// The plan for the target as it is now (its size read from the target).
pub(crate) async fn plan_for(m: &Manifest, target: &AnyTarget) -> Result<plan::Plan, CliError> {
    let n = target.size().await.map_err(failed)?;
    Ok(plan::plan(&m.strategy, n, target.capacity())
        .map_err(|e| m.sources.error(&e.path, e.message))?)
}

/// Where a run starts: a new rollout (with its Started event), or a step of an existing one.
pub(super) enum Start {
    /// `wait`: `apply --wait` (the run waits at a pause that one `promote` ends); `asked`: who
    /// starts it, as the API server said ([`approve::ask_user`], asked beside the target's
    /// first look).
    New {
        strategy: StrategyKind,
        wait: bool,
        asked: approve::AskedUser,
    },
    At {
        step: usize,
        course: Course,
    },
}

/// Runs (or continues) rollout `id` of `m` under the app's lock, reporting as `mode` says.
#[allow(clippy::too_many_arguments)]
pub(super) async fn drive(
    m: &Manifest,
    target: &AnyTarget,
    env: &Env,
    id: &str,
    from: Option<String>,
    mode: Progress,
    start: Start,
    held: &Hold,
) -> Result<u8, CliError> {
    let store = &env.store;
    let started = Instant::now();
    let plan = plan_for(m, target).await?;
    let reporter = Reporter::new(mode, plan.steps.len());
    let on_record = |r: &Record| reporter.record(r);
    let mut run =
        Run::new(target, m, &plan, store, id, from.clone(), &on_record).map_err(failed)?;
    run.interrupts = crate::cli::install_interrupts();
    run.team = held.team();
    run.controls_seen = held.controls_seen();
    let (step, course) = match start {
        Start::New {
            strategy,
            wait,
            asked,
        } => {
            run.wait_at_pauses = wait;
            // confirm-rollout: a non-2xx answer holds the rollout before anything is recorded or changed.
            if let Err(why) = run
                .hooks(crate::spec::HookType::ConfirmRollout, None, "")
                .await
            {
                reporter.finish();
                say(mode, &format!("{}: held, nothing changed: {why}", m.name()));
                return Ok(exit::PAUSED);
            }
            let actor = approve::starter(m, id, env, &plan, asked).await?;
            store
                .save_manifest(m.name(), id, &m.resolved())
                .map_err(failed)?;
            run.log(Event::Started {
                rollout: id.to_string(),
                from,
                to: m.rollout.spec.version.clone(),
                strategy,
                actor,
                steps: plan.steps.len(),
            })
            .map_err(failed)?;
            (0, Course::StepByStep)
        }
        Start::At { step, course } => (step, course),
    };
    let outcome = run.execute(step, course).await;
    reporter.finish();
    Ok(output::outcome_code(
        &outcome.map_err(failed)?,
        m.name(),
        started,
        mode,
    ))
}

async fn apply(args: &ApplyArgs, env: &Env) -> Result<u8, CliError> {
    let mut m = load(&args.input)?;
    overrides(&mut m, env)?;
    context_namespace(&mut m, env).await?;
    // The live template is read through the same kubeconfig context as the rollout.
    let client = match m.rollout.spec.target.kubernetes() {
        Some(k) if k.manifest.is_none() => Some(kube(env).await?.client().map_err(failed)?),
        _ => None,
    };
    let live = crate::cli::security::check(&m, args.input.strict, client).await?;
    if args.dry_run {
        return crate::cli::dry_run::dry_run(&m, args.output, env).await;
    }
    apply_with(&m, args.output, env, args.wait, live).await
}

/// A manifest that names no namespace gets the kubeconfig context's (else `default`), as kubectl.
async fn context_namespace(m: &mut Manifest, env: &Env) -> Result<(), CliError> {
    let named = m
        .sources
        .merged()
        .get("spec")
        .and_then(|s| s.get("target"))
        .and_then(|t| t.get("kubernetes"))
        .and_then(|k| k.get("namespace"))
        .is_some();
    if named || env.namespace.is_some() || m.rollout.spec.target.kubernetes().is_none() {
        return Ok(());
    }
    let ns = kube(env).await?.default_namespace().to_string();
    if let Some(k) = m.rollout.spec.target.kubernetes_mut() {
        k.namespace = ns;
    }
    Ok(())
}

pub async fn apply_manifest(m: &Manifest, mode: Progress, store: &Store) -> Result<u8, CliError> {
    apply_with(m, mode, &Env::new(store.clone(), None, None), false, None).await
}

/// `live`: the Deployment as the pod-security check just read it, if it did (the target's
/// first look, one read fewer).
async fn apply_with(
    m: &Manifest,
    mode: Progress,
    env: &Env,
    wait: bool,
    live: Option<k8s_openapi::api::apps::v1::Deployment>,
) -> Result<u8, CliError> {
    let target = target_for(m, env).await?;
    if let Some(d) = live {
        target.seed(d);
    }
    plan_for(m, &target).await?;
    let remote = env.remote_for_manifest(m).await?;
    // The target's watches start while the lock is taken; what they show is read under it.
    let held = beside(
        Hold::take(&env.store, m.name(), remote.as_ref()),
        target.warm(),
    )
    .await?;
    let result = apply_locked(m, mode, env, &target, &held, wait).await;
    finish(held, result).await
}

async fn apply_locked(
    m: &Manifest,
    mode: Progress,
    env: &Env,
    target: &AnyTarget,
    held: &Hold,
    wait: bool,
) -> Result<u8, CliError> {
    let (instances, declared, asked) = tokio::join!(
        target.instances(),
        target.declared(),
        approve::ask_user(m, env)
    );
    let instances = instances.map_err(failed)?;
    let declared = declared.map_err(failed)?;
    let version = &m.rollout.spec.version;
    if settled(&instances, declared.as_deref(), version) {
        let what = if instances.is_empty() {
            format!("it already declares {version} and runs no instance")
        } else {
            format!("every instance already runs {version}")
        };
        say(mode, &format!("{}: {what}; nothing to do", m.name()));
        return Ok(exit::OK);
    }
    // With no instance running the old version (a Deployment at zero pods), what it declares.
    let from = current_version(&instances, version).or(declared.filter(|d| d.as_str() != version));
    let id = format!("{}-{}", m.name(), crate::state::now_ms());
    drive(
        m,
        target,
        env,
        &id,
        from,
        mode,
        Start::New {
            strategy: (&m.strategy).into(),
            wait,
            asked,
        },
        held,
    )
    .await
}

/// Says an app has no rollouts, here or in the cluster.
fn no_rollouts(env: &Env, app: &str, remote: Option<&Team>) -> CliError {
    let mut text = format!(
        "{app} has no rollouts in {}",
        env.store.app_dir(app).display()
    );
    if let Some(r) = remote {
        text.push_str(&format!(
            " nor in the cluster ({} does not exist)",
            r.describe()
        ));
    }
    CliError::Failed(text)
}

/// The last rollout in `records` and its stored manifest (with `--namespace` applied).
pub(crate) fn last_rollout(
    env: &Env,
    app: &str,
    records: &[Record],
    remote: Option<&Team>,
) -> Result<(RolloutSummary, Manifest), CliError> {
    let Some(last) = history(records).pop() else {
        return Err(no_rollouts(env, app, remote));
    };
    let rollout: Rollout = env.store.load_manifest(app, &last.id).map_err(failed)?;
    let origin = env
        .store
        .app_dir(app)
        .join("rollouts")
        .join(format!("{}.json", last.id));
    let mut m = Manifest::from_resolved(rollout, &origin)?;
    warn_insecure(&m);
    overrides(&mut m, env)?;
    Ok((last, m))
}

/// Continues the last unfinished rollout. `promoted` says a promote just approved its pause.
async fn resume(args: &AppArgs, promoted: Option<Course>, env: &Env) -> Result<u8, CliError> {
    let remote = env.remote_for_app(&args.app).await?;
    let held = Hold::take(&env.store, &args.app, remote.as_ref()).await?;
    let result = resume_locked(args, promoted, env, remote.as_ref(), &held).await;
    finish(held, result).await
}

pub(super) async fn resume_locked(
    args: &AppArgs,
    promoted: Option<Course>,
    env: &Env,
    remote: Option<&Team>,
    held: &Hold,
) -> Result<u8, CliError> {
    let store = &env.store;
    let records = local_records(env, &args.app, remote)?;
    let (mut last, m) = last_rollout(env, &args.app, &records, remote)?;
    if let Some(outcome) = last.outcome {
        say(
            args.output,
            &format!(
                "{}: the last rollout ({}) already {outcome}; nothing to resume",
                args.app, last.id
            ),
        );
        return Ok(if outcome == Outcome::Succeeded {
            exit::OK
        } else {
            exit::FAILED
        });
    }
    let target = target_for(&m, env).await?;
    let plan = plan_for(&m, &target).await?;
    approve::check_live(env, &m, &plan, &mut last).await?;
    let (step, course) = match resume_point(&last, &plan, promoted) {
        ResumePoint::At { step, course } => (step, course),
        ResumePoint::AwaitingApprovals {
            step,
            reason,
            approvals,
            needed,
        } => {
            say(
                args.output,
                &format!(
                    "{}: paused at step {} ({reason}); {approvals} of {needed} approvals so far: `rollgate promote {}`",
                    args.app,
                    step + 1,
                    args.app
                ),
            );
            approve::say_refused(args.output, &last, step);
            return Ok(exit::PAUSED);
        }
        // A rollback that was cut short is finished first.
        ResumePoint::FinishRollback { reason } => {
            let reporter = Reporter::new(args.output, 1);
            let on_record = |r: &Record| reporter.record(r);
            let mut run = Run::new(
                &target,
                &m,
                &plan,
                store,
                &last.id,
                last.from.clone(),
                &on_record,
            )
            .map_err(failed)?;
            run.interrupts = crate::cli::install_interrupts();
            run.team = held.team();
            run.controls_seen = held.controls_seen();
            run.roll_back_and_finish(&reason, Outcome::RolledBack)
                .await
                .map_err(failed)?;
            reporter.finish();
            say(args.output, &format!("{}: rollback completed", args.app));
            return Ok(exit::FAILED);
        }
    };
    if promoted.is_none() {
        // A promote records its approver; a plain resume records who resumed.
        let actor = approve::actor_of(env, &m).await;
        crate::cli::controls::record_control(
            env,
            &args.app,
            &last.id,
            step,
            ControlKind::Resume,
            actor,
            held,
        )?;
    }
    let start = Start::At { step, course };
    drive(
        &m,
        &target,
        env,
        &last.id,
        last.from.clone(),
        args.output,
        start,
        held,
    )
    .await
}

async fn retry(args: &AppArgs, env: &Env) -> Result<u8, CliError> {
    let remote = env.remote_for_app(&args.app).await?;
    let records = records(env, &args.app, remote.as_ref()).await?;
    let (last, m) = last_rollout(env, &args.app, &records, remote.as_ref())?;
    match last.outcome {
        Some(Outcome::Succeeded) => Err(CliError::Failed(format!(
            "{}: the last rollout succeeded; nothing to retry",
            args.app
        ))),
        None => Err(CliError::Failed(format!(
            "{}: the last rollout is unfinished; use `rollgate resume {}`",
            args.app, args.app
        ))),
        Some(_) => apply_with(&m, args.output, env, false, None).await,
    }
}

/// Whether the app's last rollout, if unfinished, is being run: from the local lock (team state
/// keeps its lock in the cluster, where this does not look).
pub(crate) fn running<T>(env: &Env, app: &str, remote: Option<&T>) -> output::Running {
    if remote.is_some() {
        return output::Running::Unknown;
    }
    match env.store.holder(app, &Actor::from_env().host) {
        Some(holder) => output::Running::By(holder),
        None => output::Running::Interrupted,
    }
}

#[cfg(test)]
mod tests {
    use super::beside;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn beside_says_the_main_error_at_once_and_otherwise_waits_for_the_side() {
        // The side never ends: an error of the main work does not wait for it.
        let failed: Result<(), &str> =
            beside(async { Err("locked") }, std::future::pending()).await;
        assert_eq!(failed, Err("locked"));
        // The main work ends first: its value comes once the side has ended too.
        let side_ended = AtomicBool::new(false);
        let value: Result<u8, ()> = beside(async { Ok(7) }, async {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            side_ended.store(true, Ordering::SeqCst);
        })
        .await;
        assert_eq!(value, Ok(7));
        assert!(side_ended.load(Ordering::SeqCst));
    }
}
