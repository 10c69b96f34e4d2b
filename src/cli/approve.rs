//! Signed approvals at the command line: loading the approver's key and certificate, naming who
//! starts a rollout, and checking a rollout's approvals against its manifest's `approvers` rules.

use std::path::{Path, PathBuf};

use crate::approval::{Check, Claim, KubeSide, Rule, Signer};
use crate::cli::{CliError, Progress, SignerArgs, exit};
use crate::hold::Env;
use crate::kube::identity;
use crate::plan::Plan;
use crate::spec::{InputError, Manifest};
use crate::state::team::Team;
use crate::state::{Actor, RolloutSummary, Store, now_ms};

/// Environment variables naming the approver's files (never their contents).
pub const KEY_ENV: &str = "ROLLGATE_APPROVER_KEY";
pub const CERT_ENV: &str = "ROLLGATE_APPROVER_CERT";

/// The approver's signer, from `--key`/`--cert` (or the variables naming the files), if given.
pub(crate) fn signer(args: &SignerArgs) -> Result<Option<Signer>, CliError> {
    match (&args.key, &args.cert) {
        (None, None) => Ok(None),
        (Some(key), Some(cert)) => load(key, cert).map(Some),
        _ => Err(InputError::general(format!(
            "--key ({KEY_ENV}) and --cert ({CERT_ENV}) go together"
        ))
        .into()),
    }
}

fn load(key: &Path, cert: &Path) -> Result<Signer, CliError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .map_err(|e| CliError::from(InputError::general(format!("{}: {e}", p.display()))))
    };
    let (k, c) = (read(key)?, read(cert)?);
    Signer::from_pem(
        &k,
        &key.display().to_string(),
        &c,
        &cert.display().to_string(),
    )
    .map_err(|e| InputError::general(e.to_string()).into())
}

/// Signs `actor`'s approval of `step` of rollout `id`, when `args` name an approver's files.
pub(crate) fn sign(
    args: &SignerArgs,
    app: &str,
    id: &str,
    step: usize,
    actor: &mut Actor,
) -> Result<(), CliError> {
    if let Some(signer) = signer(args)? {
        let claim = Claim {
            app,
            rollout: id,
            step,
        };
        actor.signed = Some(signer.sign(claim, "approve", now_ms()));
    }
    Ok(())
}

/// "APP: promoted by ACTOR[, signed as NAME]".
pub(crate) fn promoted(app: &str, actor: &Actor) -> String {
    match &actor.signed {
        Some(s) => format!("{app}: promoted by {actor}, signed as {}", s.subject),
        None => format!("{app}: promoted by {actor}"),
    }
}

/// Who acts: the environment's names and, on a Kubernetes target (`remote`), the user the API
/// server authenticated. A cluster that cannot say leaves the names, with a warning.
pub(crate) async fn actor(env: &Env, remote: Option<&Team>) -> Actor {
    let mut actor = Actor::from_env();
    if let Some(Team::Kubernetes(_)) = remote {
        match kube_client(env).await {
            Ok(client) => match identity::who_am_i(&client).await {
                Ok(who) => actor.kubernetes = Some(who),
                Err(e) => eprintln!("warning: {}", crate::error_chain(&e)),
            },
            Err(e) => eprintln!("warning: {e}"),
        }
    }
    actor
}

/// Who acts on `m`'s last rollout (a resume, or an abort that runs here): the environment's names,
/// the user the API server authenticated on a Kubernetes target, the subject of the client
/// certificate the CLI reaches a host fleet with. A cluster that cannot say leaves the names, with a
/// warning.
pub(crate) async fn actor_of(env: &Env, m: &Manifest) -> Actor {
    let mut actor = Actor::from_env();
    if m.rollout.spec.target.kubernetes().is_some() {
        match kube_client(env).await {
            Ok(client) => match identity::who_am_i(&client).await {
                Ok(who) => actor.kubernetes = Some(who),
                Err(e) => eprintln!("warning: {}", crate::error_chain(&e)),
            },
            Err(e) => eprintln!("warning: {e}"),
        }
    }
    actor.client = client_subject(m);
    actor
}

/// The subject of the client certificate `m`'s host fleet is reached with, if any.
fn client_subject(m: &Manifest) -> Option<String> {
    let cert = m
        .rollout
        .spec
        .target
        .hosts()?
        .auth
        .as_ref()?
        .cert
        .as_ref()?;
    crate::approval::cert_subject(&std::fs::read_to_string(cert).ok()?)
}

async fn kube_client(env: &Env) -> Result<kube::Client, CliError> {
    let kube = env.kube().await.map_err(CliError::from)?;
    kube.client().map_err(crate::cli::failed)
}

/// Whether a step of `plan` takes its approvals from Kubernetes users.
fn kube_rule(plan: &Plan, step: usize) -> Option<&crate::spec::ApproversSpec> {
    plan.steps
        .get(step)?
        .approvers
        .as_ref()
        .filter(|a| a.kubernetes)
}

/// For a step whose rule names Kubernetes users: checks the RBAC verb when the rule asks (refused,
/// naming it, before anything is recorded) and has the API server prove the approver's identity.
pub(crate) async fn prove_approval(
    env: &Env,
    plan: &Plan,
    m: &Manifest,
    id: &str,
    step: usize,
    actor: &mut Actor,
) -> Result<(), CliError> {
    let (Some(rule), Some(k)) = (kube_rule(plan, step), m.rollout.spec.target.kubernetes()) else {
        return Ok(());
    };
    let client = kube_client(env).await?;
    let mut who = match actor.kubernetes.take() {
        Some(who) => who,
        None => identity::who_am_i(&client)
            .await
            .map_err(crate::cli::failed)?,
    };
    if rule.rbac {
        identity::may_approve(&client, &who, &k.namespace, m.name())
            .await
            .map_err(crate::cli::failed)?;
    }
    let claim = Claim {
        app: m.name(),
        rollout: id,
        step,
    };
    identity::prove(&client, &mut who, &k.namespace, claim, "approve")
        .await
        .map_err(crate::cli::failed)?;
    actor.kubernetes = Some(who);
    Ok(())
}

/// Checks a rollout's approvals under `plan`'s rules, reading the proofs of Kubernetes identities
/// from the cluster when a rule names Kubernetes users.
pub(crate) async fn check_live(
    env: &Env,
    m: &Manifest,
    plan: &Plan,
    r: &mut RolloutSummary,
) -> Result<(), CliError> {
    let rules = rules(plan);
    let kube_steps = (0..plan.steps.len()).any(|i| kube_rule(plan, i).is_some());
    let Some(k) = m.rollout.spec.target.kubernetes().filter(|_| kube_steps) else {
        crate::approval::check(m.name(), r, &rules);
        return Ok(());
    };
    let rbac = (0..plan.steps.len()).any(|i| kube_rule(plan, i).is_some_and(|a| a.rbac));
    let proofs: Vec<String> = r
        .actor
        .iter()
        .chain(r.approvals.iter().map(|a| &a.actor))
        .filter_map(|a| a.kubernetes.as_ref()?.proof.clone())
        .collect();
    let client = kube_client(env).await?;
    let evidence = identity::evidence(&client, &k.namespace, m.name(), &proofs, rbac).await;
    let side = KubeSide {
        namespace: &k.namespace,
        evidence: &evidence,
    };
    crate::approval::check_with(m.name(), r, &rules, Some(side));
    Ok(())
}

/// `status` and `history` of a Kubernetes app whose rules name Kubernetes users: each rollout's
/// approvals checked against the cluster's proofs (planned at the Deployment's size now).
pub(crate) async fn check_kube_history(env: &Env, app: &str, all: &mut [RolloutSummary]) {
    for r in all.iter_mut() {
        if r.approvals.is_empty() {
            continue;
        }
        let Ok(rollout) = env.store.load_manifest(app, &r.id) else {
            continue;
        };
        if rollout.spec.target.kubernetes().is_none() {
            continue;
        }
        let origin = env
            .store
            .app_dir(app)
            .join("rollouts")
            .join(format!("{}.json", r.id));
        let Ok(mut m) = Manifest::from_resolved(rollout, &origin) else {
            continue;
        };
        if let (Some(ns), Some(k)) = (&env.namespace, m.rollout.spec.target.kubernetes_mut()) {
            k.namespace.clone_from(ns);
        }
        let Ok(target) = crate::cli::run::target_for(&m, env).await else {
            continue;
        };
        let Ok(n) = crate::target::Target::size(&target).await else {
            continue;
        };
        let Ok(plan) = crate::plan::plan(&m.strategy, n, crate::target::Target::capacity(&target))
        else {
            continue;
        };
        let _ = check_live(env, &m, &plan, r).await;
    }
}

/// The API server's answer to who the CLI's user is, asked ahead of [`starter`] (beside the
/// run's first reads); `None` off Kubernetes.
pub(crate) type AskedUser =
    Option<Result<Result<crate::approval::kube::KubeIdentity, identity::IdentityError>, CliError>>;

/// Asks the API server who the CLI's user is, on a Kubernetes target: for [`starter`].
pub(crate) async fn ask_user(m: &Manifest, env: &Env) -> AskedUser {
    m.rollout.spec.target.kubernetes()?;
    Some(match kube_client(env).await {
        Ok(client) => Ok(identity::who_am_i(&client).await),
        Err(e) => Err(e),
    })
}

/// Who starts rollout `id` of `m`: the environment's names, the subject of the client certificate
/// the CLI uses for a host fleet, and, when `ROLLGATE_APPROVER_KEY`/`_CERT` name an approver
/// certificate, its signature on the start. On a Kubernetes target, the user the API server
/// authenticated (`asked`, from [`ask_user`]), proven when a step's approvals come from
/// Kubernetes users.
pub(crate) async fn starter(
    m: &Manifest,
    id: &str,
    env: &Env,
    plan: &Plan,
    asked: AskedUser,
) -> Result<Actor, CliError> {
    let mut actor = Actor::from_env();
    let proven = (0..plan.steps.len()).any(|i| kube_rule(plan, i).is_some());
    if let (Some(k), Some(asked)) = (m.rollout.spec.target.kubernetes(), asked) {
        match asked? {
            Ok(mut who) => {
                if proven {
                    let client = kube_client(env).await?;
                    let claim = Claim {
                        app: m.name(),
                        rollout: id,
                        step: 0,
                    };
                    identity::prove(&client, &mut who, &k.namespace, claim, "start")
                        .await
                        .map_err(crate::cli::failed)?;
                }
                actor.kubernetes = Some(who);
            }
            Err(e) if proven => return Err(crate::cli::failed(e)),
            Err(e) => eprintln!("warning: {}", crate::error_chain(&e)),
        }
    }
    actor.client = client_subject(m);
    let from_env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let args = SignerArgs {
        key: from_env(KEY_ENV),
        cert: from_env(CERT_ENV),
    };
    if let Some(signer) = signer(&args)? {
        let claim = Claim {
            app: m.name(),
            rollout: id,
            step: 0,
        };
        actor.signed = Some(signer.sign(claim, "start", now_ms()));
    }
    Ok(actor)
}

/// The approval rule of each plan step, with its CA read now.
pub(crate) fn rules(plan: &Plan) -> impl Fn(usize) -> Option<Rule> + '_ {
    |step| {
        let s = plan.steps.get(step)?;
        let approvers = s.approvers.clone()?;
        let ca_pem = match &approvers.ca {
            Some(ca) => std::fs::read_to_string(ca)
                .map_err(|e| format!("the approvers CA {} cannot be read: {e}", ca.display())),
            None => Err("the rule names no approvers CA".to_string()),
        };
        Some(Rule {
            approvers,
            ca_pem,
            approvals: s.approvals,
            allow_self_approval: s.allow_self_approval,
        })
    }
}

/// Checks the approvals of a rollout from the journal, under the manifest it stored (planned
/// offline). Without a plan (a Kubernetes target sized by its cluster) they stay unverified.
pub(crate) fn check_stored(store: &Store, app: &str, r: &mut RolloutSummary) -> Result<(), String> {
    if r.approvals.is_empty() && r.actor.as_ref().is_none_or(|a| a.signed.is_none()) {
        return Ok(());
    }
    let rollout = store
        .load_manifest(app, &r.id)
        .map_err(|e| crate::error_chain(&e))?;
    let origin = store
        .app_dir(app)
        .join("rollouts")
        .join(format!("{}.json", r.id));
    let m = Manifest::from_resolved(rollout, &origin).map_err(|e| e.to_string())?;
    let Ok((n, capacity)) = crate::target::offline_size(&m.rollout.spec.target, None) else {
        return Ok(());
    };
    let plan = crate::plan::plan(&m.strategy, n, capacity).map_err(|e| e.message)?;
    crate::approval::check(app, r, &rules(&plan));
    Ok(())
}

/// Names the refused approvals of `step`, for a paused rollout.
pub(crate) fn say_refused(mode: Progress, r: &RolloutSummary, step: usize) {
    for a in r.approvals.iter().filter(|a| a.step == step) {
        if let Check::Refused { reason } = &a.verification {
            let at = crate::cli::output::utc(a.at_ms);
            let line = format!(
                "  refused: the approval by {} at {at} (not counted): {reason}",
                a.actor
            );
            crate::cli::output::say(mode, &line);
        }
    }
}

/// Checks every rollout's approvals for `history`; with `verify`, prints the verdicts and returns
/// the exit code instead.
pub(crate) fn check_history(
    store: &Store,
    app: &str,
    all: &mut [RolloutSummary],
    verify: bool,
) -> Option<u8> {
    if verify {
        return Some(verify_history(store, app, all));
    }
    for r in all.iter_mut() {
        let _ = check_stored(store, app, r);
    }
    None
}

/// `history --verify`: re-verifies every signed record (and every approval a rule requires to be
/// signed) and names each that fails; exit 1 when any does.
fn verify_history(store: &Store, app: &str, all: &mut [RolloutSummary]) -> u8 {
    let (mut ok, mut failed) = (0, 0);
    for r in all.iter_mut() {
        if let Err(why) = check_stored(store, app, r) {
            line(format!("FAILED {}: cannot verify: {why}", r.id));
            failed += 1;
            continue;
        }
        if let Some(signed) = r.actor.as_ref().and_then(|a| a.signed.as_ref()) {
            // The start is signed with an approver certificate: verified against the first rule's CA.
            let origin = store
                .app_dir(app)
                .join("rollouts")
                .join(format!("{}.json", r.id));
            let ca = store
                .load_manifest(app, &r.id)
                .ok()
                .and_then(|m| Manifest::from_resolved(m, &origin).ok())
                .and_then(|m| first_ca(&m));
            let claim = Claim {
                app,
                rollout: &r.id,
                step: 0,
            };
            match ca.map(|ca| crate::approval::verify(&ca, claim, "start", signed)) {
                Some(Ok(subject)) => {
                    ok += 1;
                    line(format!("ok     {}: started by {subject} (signed)", r.id));
                }
                Some(Err(why)) => {
                    failed += 1;
                    line(format!(
                        "FAILED {}: the start signed as {}: {why}",
                        r.id, signed.subject
                    ));
                }
                None => line(format!(
                    "-      {}: the start is signed by {}, but no approvers CA is named to check it",
                    r.id, signed.subject
                )),
            }
        }
        for a in &r.approvals {
            let at = format!("{} step {}", r.id, a.step + 1);
            match &a.verification {
                Check::Verified {
                    subject,
                    fingerprint,
                } => {
                    ok += 1;
                    line(format!(
                        "ok     {at}: approved by {subject} (certificate sha256 {})",
                        &fingerprint[..16.min(fingerprint.len())]
                    ));
                }
                Check::Kubernetes {
                    username, proof, ..
                } => {
                    ok += 1;
                    line(format!(
                        "ok     {at}: approved by {username} (Kubernetes user, proof {proof})"
                    ));
                }
                Check::Refused { reason } => {
                    failed += 1;
                    line(format!(
                        "FAILED {at}: the approval by {}: {reason}",
                        a.actor
                    ));
                }
                Check::Unverified => line(format!(
                    "-      {at}: approved by {} (unverified: no approvers rule)",
                    a.actor
                )),
            }
        }
    }
    line(format!(
        "{app}: {ok} signed records verified, {failed} failed"
    ));
    if failed > 0 { exit::FAILED } else { exit::OK }
}

fn first_ca(m: &Manifest) -> Option<String> {
    let crate::spec::Strategy::Canary(c) = &m.strategy else {
        return None;
    };
    c.steps
        .iter()
        .find_map(|s| s.pause.as_ref()?.approvers.as_ref()?.ca.as_ref())
        .and_then(|ca| std::fs::read_to_string(ca).ok())
}

/// One line of stdout (a closed pipe is not an error worth a message).
fn line(text: String) {
    crate::cli::output::out(&(text + "\n"));
}
