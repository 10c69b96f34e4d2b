//! `rollgate apply --dry-run`: every check `apply` makes before it takes the lock, and the plan,
//! with nothing changed and nothing journaled.

use crate::cli::output::{json_line, plan_hosts, plan_table, plan_value, say};
use crate::cli::run::{plan_for, target_for};
use crate::cli::{CliError, Progress, exit, failed};
use crate::hold::Env;
use crate::spec::Manifest;
use crate::target::AnyTarget;

/// Reaches the target as `apply` would (agents authenticated with the new version installed or
/// its artifact at hand; on Kubernetes the access reviews and the Deployment) and prints the plan.
pub async fn dry_run(m: &Manifest, mode: Progress, env: &Env) -> Result<u8, CliError> {
    let target = target_for(m, env).await?;
    let plan = plan_for(m, &target).await?;
    let version = &m.rollout.spec.version;
    let checks = match &target {
        AnyTarget::Hosts(h) => h.preflight(version).await.map_err(failed)?,
        AnyTarget::Kubernetes(_) => vec![format!(
            "the kubeconfig's user may do every verb the rollout needs; the Deployment has {} replicas",
            plan.replicas
        )],
    };
    let hosts = plan_hosts(m, &plan);
    if mode == Progress::Json {
        json_line(&serde_json::json!({
            "app": m.name(),
            "version": version,
            "dryRun": true,
            "checks": checks,
            "plan": plan_value(&plan, hosts.as_ref()),
        }));
    } else {
        for line in &checks {
            say(mode, line);
        }
        say(
            mode,
            plan_table(
                m.name(),
                version,
                &m.strategy_source,
                &plan,
                hosts.as_ref().map(|(labelled, _)| labelled.as_slice()),
            )
            .trim_end(),
        );
    }
    say(
        mode,
        &format!("{}: dry run: ready to apply, nothing changed", m.name()),
    );
    Ok(exit::OK)
}
