//! Local health checks (HTTP, TCP, command), each bounded by a timeout.

use std::time::{Duration, Instant};

use super::api::{CheckSpec, HealthReport};
use super::now_unix_ms;

/// Runs `check` once; never takes longer than `timeout`.
pub async fn run(check: &CheckSpec, timeout: Duration) -> HealthReport {
    let started = Instant::now();
    let result = tokio::time::timeout(timeout, probe(check)).await;
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

async fn probe(check: &CheckSpec) -> Result<String, String> {
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
                .map_err(|e| format!("GET {url}: {}", error_chain(&e)))?;
            let code = resp.status().as_u16();
            let body = resp.text().await.unwrap_or_default();
            http_verdict(*status, body_contains.as_deref(), code, &body)
        }
        CheckSpec::Tcp { address } => tokio::net::TcpStream::connect(address.as_str())
            .await
            .map(|_| format!("connected to {address}"))
            .map_err(|e| format!("connect {address}: {e}")),
        CheckSpec::Command { program, args } => {
            let out = tokio::process::Command::new(program)
                .args(args)
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
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

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
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
        )
        .await;
        assert!(up.healthy, "{up:?}");
        drop(listener);
        let down = run(&CheckSpec::Tcp { address: addr }, Duration::from_secs(2)).await;
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
        assert!(run(&ok, Duration::from_secs(5)).await.healthy);
        let r = run(&slow, Duration::from_millis(200)).await;
        assert!(!r.healthy && r.detail.contains("timed out"), "{r:?}");
    }
}
