//! The agent's request decoding: every request type of `agent::api` from JSON, the query
//! parsers, and whole requests through the real router (auth, body limits, handlers) in memory.
//!
//! Input: a method byte, a flags byte (bit 0: send the right token, bit 1: a JSON content
//! type, bit 2: a wrong token), the path and query up to the first newline, then the body.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request};
use libfuzzer_sys::fuzz_target;
use rollgate::agent::api::{self, ActivateRequest, HealthCheckRequest, PruneRequest};
use rollgate::agent::api::{RollbackRequest, SlotRequest, StageRequest, UploadParams, WaitQuery};
use rollgate::agent::{config, manager::Agent, server::Server};
use tower::ServiceExt;

const TOKEN: &str = "fuzz-token-0123456789abcdef";

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        // SAFETY: runs once, before this process starts any other thread.
        unsafe { std::env::set_var("ROLLGATE_FUZZ_TOKEN", TOKEN) };
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            // Long-polls and health-check timeouts elapse at once instead of stalling a run.
            .start_paused(true)
            .build()
            .unwrap()
    })
}

fn decode_all(body: &[u8]) {
    let _ = serde_json::from_slice::<StageRequest>(body);
    let _ = serde_json::from_slice::<ActivateRequest>(body);
    let _ = serde_json::from_slice::<RollbackRequest>(body);
    let _ = serde_json::from_slice::<PruneRequest>(body);
    let _ = serde_json::from_slice::<SlotRequest>(body);
    let _ = serde_json::from_slice::<HealthCheckRequest>(body);
    let _ = serde_json::from_slice::<UploadParams>(body);
    let _ = serde_json::from_slice::<WaitQuery>(body);
    let _ = serde_json::from_slice::<api::Operation>(body);
    let _ = serde_json::from_slice::<api::ServiceStatus>(body);
    let _ = serde_json::from_slice::<api::ApiError>(body);
    if let Ok(text) = std::str::from_utf8(body) {
        let _ = api::parse_duration_ms(text);
        let _ = api::valid_name(text);
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (method, flags, rest) = (data[0], data[1], &data[2..]);
    let cut = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
    let (path, body) = (&rest[..cut], rest.get(cut + 1..).unwrap_or_default());
    decode_all(body);

    let method = match method % 5 {
        0 => Method::GET,
        1 => Method::POST,
        2 => Method::PUT,
        3 => Method::DELETE,
        _ => Method::PATCH,
    };
    let mut req = Request::builder().method(method).uri(path);
    if flags & 1 != 0 {
        req = req.header("authorization", format!("Bearer {TOKEN}"));
    } else if flags & 4 != 0 {
        req = req.header("authorization", "Bearer wrong-token-0123456789");
    }
    if flags & 2 != 0 {
        req = req.header("content-type", "application/json");
    }
    let Ok(req) = req.body(Body::from(body.to_vec())) else {
        return;
    };
    let authorized = flags & 1 != 0;

    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "listen: 127.0.0.1:0\ndataDir: {}\ntoken: {{env: ROLLGATE_FUZZ_TOKEN}}\nlimits: {{jsonBodyBytes: 4096, artifactBytes: 65536}}\nservices:\n  - name: web\n    command: bin/web\n    ports: [1, 2]\n",
        dir.path().display()
    );
    let cfg = config::parse(&dir.path().join("agent.yaml"), &text).unwrap();
    rt.block_on(async {
        let agent: Arc<Agent> = Agent::open(cfg).unwrap();
        let server = Server::bind(agent.clone(), "127.0.0.1:0").await.unwrap();
        let answer =
            tokio::time::timeout(Duration::from_secs(300), server.router().oneshot(req)).await;
        if let Ok(Ok(resp)) = answer {
            let status = resp.status();
            assert!(
                authorized || status == 401,
                "an unauthenticated request was answered {status}"
            );
            assert!(
                !status.is_server_error() || status == 503,
                "server error {status}"
            );
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap();
            if !status.is_success() {
                let e: api::ApiError = serde_json::from_slice(&bytes)
                    .unwrap_or_else(|_| panic!("a {status} answer is not an ApiError"));
                assert!(!e.code.is_empty());
            }
        }
        agent.shutdown(Duration::from_millis(10)).await;
    });
});
