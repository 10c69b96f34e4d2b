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
    run_answered(check, timeout, ctx).await.0
}

/// A failed probe, and whether the service answered it: an HTTP status, a command that ran and
/// exited. A refused connection or a timeout is not an answer; a starting service gives those.
struct Failed {
    detail: String,
    answered: bool,
}

impl Failed {
    fn answer(detail: String) -> Self {
        Failed {
            detail,
            answered: true,
        }
    }
    fn silence(detail: String) -> Self {
        Failed {
            detail,
            answered: false,
        }
    }
}

/// [`run`], and whether the service answered (a pass always is an answer). An activation counts
/// failures towards `failureThreshold` only once its service has answered once.
pub async fn run_answered(
    check: &CheckSpec,
    timeout: Duration,
    ctx: &CommandContext,
) -> (HealthReport, bool) {
    let started = Instant::now();
    let result = tokio::time::timeout(timeout, probe(check, ctx)).await;
    let (healthy, detail, answered) = match result {
        Ok(Ok(detail)) => (true, detail, true),
        Ok(Err(f)) => (false, f.detail, f.answered),
        Err(_) => (
            false,
            format!("timed out after {} ms", timeout.as_millis()),
            false,
        ),
    };
    let report = HealthReport {
        healthy,
        detail,
        at_unix_ms: now_unix_ms(),
        elapsed_ms: started.elapsed().as_millis() as u64,
    };
    (report, answered)
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

async fn probe(check: &CheckSpec, ctx: &CommandContext) -> Result<String, Failed> {
    match check {
        CheckSpec::Http {
            url,
            status,
            body_contains,
        } => {
            let resp = http_client()
                .map_err(Failed::answer)?
                .get(url)
                .send()
                .await
                .map_err(|e| {
                    let detail = format!("GET {url}: {}", crate::error_chain(&e));
                    // Refused, or no answer yet: a service still starting looks like this.
                    if e.is_connect() || e.is_timeout() {
                        Failed::silence(detail)
                    } else {
                        Failed::answer(detail)
                    }
                })?;
            let code = resp.status().as_u16();
            let body = capped_body(resp).await;
            http_verdict(*status, body_contains.as_deref(), code, &body).map_err(Failed::answer)
        }
        CheckSpec::Tcp { address } => tokio::net::TcpStream::connect(address.as_str())
            .await
            .map(|_| format!("connected to {address}"))
            .map_err(|e| Failed::silence(format!("connect {address}: {e}"))),
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
            .map_err(|e| Failed::answer(format!("running {program}: {e}")))?
            .output()
            .await
            .map_err(|e| Failed::answer(format!("running {program}: {e}")))?;
            let stderr: String = String::from_utf8_lossy(&out.stderr)
                .chars()
                .take(200)
                .collect();
            if out.status.success() {
                Ok(format!("{program} exited 0"))
            } else {
                Err(Failed::answer(format!(
                    "{program} exited with {}: {stderr}",
                    out.status
                )))
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

    /// A failure counts towards `failureThreshold` only when the service answered it: an HTTP
    /// status or a command's exit, not a refused connection (a service still starting).
    #[tokio::test]
    async fn a_failure_is_an_answer_or_silence() {
        let ctx = CommandContext::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf).await;
            conn.write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\nconnection: close\r\n\r\nboom")
                .await
                .unwrap();
        });
        let http = |port: u16| CheckSpec::Http {
            url: format!("http://127.0.0.1:{port}/health"),
            status: 200,
            body_contains: None,
        };
        let (r, answered) = run_answered(&http(addr.port()), Duration::from_secs(5), &ctx).await;
        assert!(!r.healthy && answered, "a 500 is an answer: {r:?}");
        server.await.unwrap();
        // Nothing listens there any more: refused, not an answer.
        let (r, answered) = run_answered(&http(addr.port()), Duration::from_secs(5), &ctx).await;
        assert!(!r.healthy && !answered, "a refusal is silence: {r:?}");
        let tcp = CheckSpec::Tcp {
            address: addr.to_string(),
        };
        let (r, answered) = run_answered(&tcp, Duration::from_secs(5), &ctx).await;
        assert!(!r.healthy && !answered, "{r:?}");
        #[cfg(unix)]
        {
            let failing = CheckSpec::Command {
                program: "/bin/false".into(),
                args: vec![],
            };
            let (r, answered) = run_answered(&failing, Duration::from_secs(5), &ctx).await;
            assert!(
                !r.healthy && answered,
                "a failing command is an answer: {r:?}"
            );
        }
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
