//! Bad callers are refused with a clear error and change nothing on disk.

use std::process::Command;
use std::time::Duration;

use rollgate::agent::client::{AgentClient, ClientAuth, ClientError};

use crate::support::*;

fn snapshot(data: &std::path::Path) -> (Vec<String>, Vec<String>) {
    (
        operations(data),
        listing(&data.join("services/web/versions")),
    )
}

async fn raw(url: &str, auth: &ClientAuth, body: Vec<u8>) -> (u16, serde_json::Value) {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(auth.ca_pem.as_ref().unwrap()).unwrap(),
        );
    if let Some(id) = &auth.identity_pem {
        b = b.identity(reqwest::Identity::from_pem(id).unwrap());
    }
    let resp = b
        .build()
        .unwrap()
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refuses_missing_and_foreign_certificates_and_bad_bodies() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let foreign = Pki::new(&tmp.path().join("foreign"));
    let port = free_ports(1)[0];
    let data = tmp.path().join("data");
    let agent = AgentProc::start(tmp.path(), &config(&pki, &data, &web_service(&[port], "")));
    let good = agent.client(&pki.client_auth());
    assert_succeeded(
        &stage(
            &good,
            "v1",
            &tar_gz(&[("bin/web", 0o755, &demo_script(&[]))]),
        )
        .await,
    );
    let before = snapshot(&data);

    // No client certificate: a clear 401.
    let anonymous = ClientAuth {
        ca_pem: pki.client_auth().ca_pem,
        ..ClientAuth::default()
    };
    let err = agent.client(&anonymous).host_info().await.unwrap_err();
    match &err {
        ClientError::Rejected {
            status,
            code,
            message,
            ..
        } => {
            assert_eq!((*status, code.as_str()), (401, "unauthorized"));
            assert!(message.contains("client certificate"), "{message}");
        }
        other => panic!("expected a 401, got {other}"),
    }

    // A certificate from another CA: the TLS handshake fails, nothing is served.
    let stranger = ClientAuth {
        ca_pem: pki.client_auth().ca_pem,
        identity_pem: foreign.client_auth().identity_pem,
        token: None,
    };
    let err = agent.client(&stranger).host_info().await.unwrap_err();
    assert!(matches!(err, ClientError::AgentUnreachable { .. }), "{err}");
    // And a client pinning another CA does not trust this agent.
    let err = agent
        .client(&foreign.client_auth())
        .host_info()
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::AgentUnreachable { .. }), "{err}");

    // A token is not accepted where only client certificates are configured.
    let token_only = ClientAuth {
        ca_pem: pki.client_auth().ca_pem,
        identity_pem: None,
        token: Some("x".repeat(32)),
    };
    let err = agent.client(&token_only).host_info().await.unwrap_err();
    assert_eq!(err.status(), Some(401));

    // Malformed, misshapen, oversized and misdirected bodies.
    let url = format!("{}/v1/services/web/activate", agent.url);
    let auth = pki.client_auth();
    let (status, body) = raw(&url, &auth, b"{\"requestId\":".to_vec()).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
    let (status, body) = raw(
        &url,
        &auth,
        br#"{"requestId":"x","version":"v1","bogus":1}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["message"].as_str().unwrap().contains("unknown field"),
        "{body}"
    );
    let huge = format!(r#"{{"requestId":"x","version":"{}"}}"#, "v".repeat(200_000));
    let (status, body) = raw(&url, &auth, huge.into_bytes()).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (413, Some("body_too_large")),
        "{body}"
    );
    let (status, body) = raw(
        &format!("{}/v1/services/nope/activate", agent.url),
        &auth,
        br#"{"requestId":"y","version":"v1"}"#.to_vec(),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
    let (status, _) = raw(
        &url,
        &auth,
        br#"{"requestId":"z","version":"../../etc"}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 400);

    assert_eq!(
        snapshot(&data),
        before,
        "a refused request changed the data dir"
    );
    assert_eq!(good.service("web").await.unwrap().slots[0].active, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_auth_and_upload_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let port = free_ports(1)[0];
    let data = tmp.path().join("data");
    let token = "s3cret-token-0123456789abcdef";
    std::fs::write(tmp.path().join("token"), format!("{token}\n")).unwrap();
    let cfg = format!(
        "listen: 127.0.0.1:0\ndataDir: {}\n{}token: {{file: token}}\nlimits: {{artifactBytes: 4096}}\nservices:\n{}",
        data.display(),
        pki.tls_yaml(false),
        web_service(&[port], "")
    );
    let agent = AgentProc::start(tmp.path(), &cfg);
    let ca = pki.client_auth().ca_pem;
    let with = |t: Option<&str>| {
        AgentClient::new(
            &agent.url,
            &ClientAuth {
                ca_pem: ca.clone(),
                identity_pem: None,
                token: t.map(str::to_string),
            },
        )
        .unwrap()
    };
    let before = snapshot(&data);
    let err = with(Some("wrong-token-0123456789"))
        .host_info()
        .await
        .unwrap_err();
    match &err {
        ClientError::Rejected {
            status: 401,
            message,
            ..
        } => assert_eq!(message, "invalid bearer token"),
        other => panic!("{other}"),
    }
    assert_eq!(with(None).services().await.unwrap_err().status(), Some(401));
    let c = with(Some(token));
    assert_eq!(c.host_info().await.unwrap().services, vec!["web"]);

    let big = vec![7u8; 8192];
    let err = c
        .stage_bytes("web", "big", big.clone(), &upload_params("big", &big, None))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(413), "{err}");
    assert_eq!(snapshot(&data), before);
    assert!(
        !agent.stderr_text().contains(token),
        "the token leaked into the log"
    );
}

#[test]
fn refuses_non_loopback_listen_without_auth() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("agent.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 0.0.0.0:0\ndataDir: {}\nservices: []\n",
            tmp.path().join("d").display()
        ),
    )
    .unwrap();
    let out = Command::new(AGENT)
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to listen on non-loopback"),
        "{stderr}"
    );
}

#[test]
fn check_config_names_file_line_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("agent.yaml");
    std::fs::write(
        &cfg,
        "dataDir: /tmp/x\nservices:\n  - name: web\n    command: bin/web\n    stopTimeout: soon\n",
    )
    .unwrap();
    let out = Command::new(AGENT)
        .args(["check-config", "-f"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("agent.yaml:5:"), "{stderr}");
    assert!(stderr.contains("services[0].stopTimeout"), "{stderr}");

    std::fs::write(&cfg, "dataDir: /tmp/x\nservices: []\n").unwrap();
    let out = Command::new(AGENT)
        .args(["check-config", "-f"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = Duration::ZERO;
}
