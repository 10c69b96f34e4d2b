//! Local health checks (HTTP, TCP, command), each bounded by a timeout and by what it reads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::api::{CheckSpec, HealthReport};
use super::now_unix_ms;

/// Most of an HTTP check's body that is read; the rest is not (an endless body took the agent
/// to 6 GB).
pub const MAX_BODY: usize = 64 * 1024;

/// How a `command` check runs: like the service it checks, as its user, in its version dir,
/// with its environment and nothing of the agent's (no token, no inherited descriptors).
#[derive(Debug, Clone, Default)]
pub struct CommandContext {
    pub user: Option<String>,
    pub cwd: PathBuf,
    pub env: BTreeMap<String, String>,
}

/// Runs `check` once; never takes longer than `timeout`.
pub async fn run(check: &CheckSpec, timeout: Duration, ctx: &CommandContext) -> HealthReport {
    let started = Instant::now();
    let result = tokio::time::timeout(timeout, probe(check, ctx)).await;
    let (healthy, detail) = match result {
        Ok(Ok(detail)) => (true, detail),
        Ok(Err(detail)) => (false, detail),
        Err(_) => (false, format!("timed out after {} ms", timeout.as_millis())),
    };
    HealthReport {
        healthy,
        detail,
        at_unix_ms: now_unix_ms(),
        elapsed_ms: started.elapsed().as_millis() as u64,
    }
}

/// Whether an HTTP answer passes: the status matches and the body contains the text.
pub fn http_verdict(
    expected: u16,
    body_contains: Option<&str>,
    status: u16,
    body: &str,
) -> Result<String, String> {
    let excerpt: String = body.chars().take(120).collect();
    if status != expected {
        return Err(format!("HTTP {status} (expected {expected}): {excerpt}"));
    }
    if let Some(needle) = body_contains
        && !body.contains(needle)
    {
        return Err(format!(
            "HTTP {status} but body lacks {needle:?}: {excerpt}"
        ));
    }
    Ok(format!("HTTP {status}"))
}

/// One client for every HTTP check: building one loads the TLS roots, which is not free.
fn http_client() -> Result<&'static reqwest::Client, String> {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    if let Some(c) = CLIENT.get() {
        return Ok(c);
    }
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1)
        .build()
        .map_err(|e| format!("http client: {e}"))?;
    Ok(CLIENT.get_or_init(|| client))
}

/// At most [`MAX_BODY`] bytes of the body, read as it comes.
async fn capped_body(mut resp: reqwest::Response) -> String {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        let room = MAX_BODY - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_BODY {
            break;
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

async fn probe(check: &CheckSpec, ctx: &CommandContext) -> Result<String, String> {
    match check {
        CheckSpec::Http {
            url,
            status,
            body_contains,
        } => {
            let resp = http_client()?
                .get(url)
                .send()
                .await
                .map_err(|e| format!("GET {url}: {}", crate::error_chain(&e)))?;
            let code = resp.status().as_u16();
            let body = capped_body(resp).await;
            http_verdict(*status, body_contains.as_deref(), code, &body)
        }
        CheckSpec::Tcp { address } => tokio::net::TcpStream::connect(address.as_str())
            .await
            .map(|_| format!("connected to {address}"))
            .map_err(|e| format!("connect {address}: {e}")),
        CheckSpec::Command { program, args } => {
            let cwd = if ctx.cwd.as_os_str().is_empty() {
                Path::new(".")
            } else {
                &ctx.cwd
            };
            let out = super::backend::supervisor::service_command(
                Path::new(program),
                args,
                cwd,
                ctx.user.as_deref(),
                &ctx.env,
            )
            .map_err(|e| format!("running {program}: {e}"))?
            .output()
            .await
            .map_err(|e| format!("running {program}: {e}"))?;
            let stderr: String = String::from_utf8_lossy(&out.stderr)
                .chars()
                .take(200)
                .collect();
            if out.status.success() {
                Ok(format!("{program} exited 0"))
            } else {
                Err(format!("{program} exited with {}: {stderr}", out.status))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_verdict_checks_status_then_body() {
        assert!(http_verdict(200, None, 200, "ok").is_ok());
        assert!(http_verdict(200, Some("ok"), 200, "all ok").is_ok());
        let e = http_verdict(200, None, 500, "boom").unwrap_err();
        assert!(e.contains("HTTP 500 (expected 200)"), "{e}");
        assert!(http_verdict(200, Some("ready"), 200, "starting").is_err());
    }

    #[tokio::test]
    async fn tcp_and_command_checks() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let up = run(
            &CheckSpec::Tcp {
                address: addr.clone(),
            },
            Duration::from_secs(2),
            &CommandContext::default(),
        )
        .await;
        assert!(up.healthy, "{up:?}");
        drop(listener);
        let down = run(
            &CheckSpec::Tcp { address: addr },
            Duration::from_secs(2),
            &CommandContext::default(),
        )
        .await;
        assert!(!down.healthy);

        // `true` and `sleep 5`, in their Windows forms there.
        #[cfg(unix)]
        let (ok, slow) = (
            CheckSpec::Command {
                program: "true".into(),
                args: vec![],
            },
            CheckSpec::Command {
                program: "sleep".into(),
                args: vec!["5".into()],
            },
        );
        #[cfg(windows)]
        let (ok, slow) = (
            CheckSpec::Command {
                program: "cmd".into(),
                args: vec!["/c".into(), "exit 0".into()],
            },
            CheckSpec::Command {
                program: "ping".into(),
                args: vec!["-n".into(), "6".into(), "127.0.0.1".into()],
            },
        );
        // A command check runs with a cleared environment: give it what finds the programs.
        #[cfg(unix)]
        let env = [("PATH".to_string(), "/usr/bin:/bin".to_string())].into();
        #[cfg(windows)]
        let env = ["PATH", "SystemRoot"]
            .into_iter()
            .filter_map(|k| Some((k.to_string(), std::env::var(k).ok()?)))
            .collect();
        let ctx = CommandContext {
            env,
            ..CommandContext::default()
        };
        assert!(run(&ok, Duration::from_secs(5), &ctx).await.healthy);
        let r = run(&slow, Duration::from_millis(200), &ctx).await;
        assert!(!r.healthy && r.detail.contains("timed out"), "{r:?}");
    }
}
