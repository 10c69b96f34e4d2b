//! Pod-security warnings for `validate`, `plan` and `apply`: where a Kubernetes target's pod
//! template falls short of the recommended securityContext. `--strict` makes them errors (exit 2).

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::PodTemplateSpec;

use crate::cli::CliError;
use crate::spec::{InputError, KubernetesTarget, Manifest, Sources};
use crate::target::kubernetes::{
    Kubernetes, deployment_problem, deployment_settings, pod_security_warnings,
};

/// How long `validate` and `plan` wait for the cluster to read a live template.
const LIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The checks of `validate` and `plan`, which run outside a tokio runtime. A `manifest:` template
/// is checked offline; an `image:` target's template is the live Deployment's, read when the
/// kubeconfig reaches the cluster within 5 s (otherwise a note says it was not checked).
pub fn check_blocking(m: &Manifest, strict: bool) -> Result<(), CliError> {
    let Some(k) = m.rollout.spec.target.kubernetes() else {
        return Ok(());
    };
    if k.manifest.is_some() {
        return report(findings_in_file(m, k)?, strict);
    }
    let runtime = crate::cli::runtime()
        .map_err(|e| CliError::Failed(format!("starting a tokio runtime: {e}")))?;
    runtime.block_on(check(m, strict, None)).map(drop)
}

/// The checks of `apply`: the template that would be rolled out, from the file or the cluster.
/// Returns the live Deployment when it was read (the rollout's first look at it).
pub async fn check(
    m: &Manifest,
    strict: bool,
    client: Option<kube::Client>,
) -> Result<Option<Deployment>, CliError> {
    let Some(k) = m.rollout.spec.target.kubernetes() else {
        return Ok(None);
    };
    if k.manifest.is_some() {
        return report(findings_in_file(m, k)?, strict).map(|()| None);
    }
    let at = format!("deployment {}/{}", k.namespace, k.deployment);
    match tokio::time::timeout(LIVE_TIMEOUT, live_template(k, client)).await {
        Ok(Ok(Some(d))) => match deployment_problem(k, &d) {
            // The live Deployment decides which container `image:` replaces, and whether its
            // strategy (Recreate) lets rollgate roll it.
            Some((field, why)) => Err(m.sources.error(field, format!("{at}: {why}")).into()),
            None => {
                // Which of the Deployment's own settings apply (the manifest leaves the default).
                let spec = &m.rollout.spec;
                let min_ready = m.strategy.min_ready_seconds();
                for applies in deployment_settings(spec.progress_deadline_seconds, min_ready, &d) {
                    eprintln!("note: {at}: {applies}");
                }
                let template = d.spec.as_ref().map(|s| &s.template);
                report(
                    findings_live(&at, template.unwrap_or(&PodTemplateSpec::default())),
                    strict,
                )?;
                Ok(Some(d))
            }
        },
        Ok(Ok(None)) => {
            eprintln!("note: pod security not checked: {at} does not exist");
            Ok(None)
        }
        Ok(Err(why)) => {
            eprintln!(
                "note: pod security not checked: {at} not read ({})",
                short_reason(&why)
            );
            Ok(None)
        }
        Err(_) => {
            eprintln!(
                "note: pod security not checked: the template of {at} is read from the cluster, which did not answer within {}s",
                LIVE_TIMEOUT.as_secs()
            );
            Ok(None)
        }
    }
}

/// Why the cluster could not be read, in a few words: the innermost cause of a long chain.
fn short_reason(why: &str) -> String {
    if why.contains("failed to infer config") {
        return "no kubeconfig: set KUBECONFIG or --context".into();
    }
    let last = why.rsplit(": ").next().unwrap_or(why).trim();
    let mut short: String = last.chars().take(60).collect();
    if short.len() < last.len() {
        short.push('…');
    }
    format!("cluster unreachable: {short}")
}

/// The Deployment as the cluster has it, through `client` (else the kubeconfig's current
/// context).
async fn live_template(
    k: &KubernetesTarget,
    client: Option<kube::Client>,
) -> Result<Option<Deployment>, String> {
    let target = match client {
        Some(client) => Kubernetes::with_client(k, Path::new("."), 0, false, client),
        None => Kubernetes::new(k, Path::new("."), 0, false).await,
    }
    .map_err(|e| crate::error_chain(&e))?;
    target
        .live_deployment()
        .await
        .map_err(|e| crate::error_chain(&e))
}

/// One finding, as it is printed after `warning: ` or `error: `.
type Finding = String;

fn findings_live(at: &str, t: &PodTemplateSpec) -> Vec<Finding> {
    pod_security_warnings(t)
        .iter()
        .map(|w| format!("{at}: {w}"))
        .collect()
}

/// The warnings for a `manifest:` Deployment file, each at its file, line and column. A file that
/// cannot be read or is not a Deployment is an input error.
fn findings_in_file(m: &Manifest, k: &KubernetesTarget) -> Result<Vec<Finding>, InputError> {
    let written = k.manifest.as_deref().unwrap_or_default();
    let path = shown(Path::new(written));
    let field = "spec.target.kubernetes.manifest";
    let sources = Sources::read_literal(&path).map_err(|e| {
        if e.line == 0 {
            m.sources.error(field, e.to_string())
        } else {
            e
        }
    })?;
    let deployment: Deployment = sources.deserialize()?;
    let Some(spec) = deployment.spec else {
        return Err(sources.error("spec", "missing: expected a Deployment with spec.template"));
    };
    Ok(pod_security_warnings(&spec.template)
        .into_iter()
        .map(|w| {
            let mut e = sources.error(&w.path, format!("container {}: {}", w.container, w.message));
            e.path = w.path;
            e.to_string()
        })
        .collect())
}

/// `path` relative to the working directory when it is below it (the manifest keeps it absolute).
fn shown(path: &Path) -> PathBuf {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| path.to_path_buf())
}

/// Prints the findings as warnings; under `strict` as errors, and then fails with exit code 2.
fn report(found: Vec<Finding>, strict: bool) -> Result<(), CliError> {
    if !strict {
        for f in &found {
            eprintln!("warning: {f}");
        }
        return Ok(());
    }
    if found.is_empty() {
        return Ok(());
    }
    for f in &found {
        eprintln!("error: {f}");
    }
    Err(CliError::Input(InputError::general(format!(
        "{} pod-security warning{} and --strict: nothing was done",
        found.len(),
        if found.len() == 1 { "" } else { "s" }
    ))))
}
