//! The agent's attack surface (SECURITY.md): who gets past TLS and auth, what a replay,
//! an oversized body or a slow connection can do, which artifact URLs are fetched, and that
//! secrets never reach the logs.

use std::io::{BufRead, BufReader, Read};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rollgate::agent::api::{
    ActivateRequest, HealthCheckRequest, OperationState, SlotRequest, StageRequest,
};
use rollgate::agent::client::{AgentClient, ClientAuth, ClientError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// A CA of the test's own, so that it can issue expired and misused certificates.
struct TestCa {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    fn new(dir: &Path, name: &str) -> TestCa {
        std::fs::create_dir_all(dir).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("test CA {name}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2090, 1, 1);
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
        TestCa {
            dir: dir.to_path_buf(),
            issuer: Issuer::new(params, key),
        }
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Issues `<stem>.pem` and `<stem>-key.pem` for 127.0.0.1 with one extended key usage.
    fn issue(
        &self,
        stem: &str,
        eku: ExtendedKeyUsagePurpose,
        valid: (i32, i32),
    ) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, stem);
        params.subject_alt_names = vec![SanType::IpAddress(IpAddr::from([127, 0, 0, 1]))];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![eku];
        params.use_authority_key_identifier_extension = true;
        params.not_before = rcgen::date_time_ymd(valid.0, 1, 1);
        params.not_after = rcgen::date_time_ymd(valid.1, 1, 1);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (
            self.dir.join(format!("{stem}.pem")),
            self.dir.join(format!("{stem}-key.pem")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    /// Issues `<stem>.pem` and `<stem>-key.pem` with no extended key usage at all.
    fn issue_without_eku(&self, stem: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, stem);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.not_before = rcgen::date_time_ymd(VALID.0, 1, 1);
        params.not_after = rcgen::date_time_ymd(VALID.1, 1, 1);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (
            self.dir.join(format!("{stem}.pem")),
            self.dir.join(format!("{stem}-key.pem")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    fn client(&self, stem: &str, valid: (i32, i32)) -> ClientAuth {
        let (c, k) = self.issue(stem, ExtendedKeyUsagePurpose::ClientAuth, valid);
        ClientAuth::mtls_files(&self.ca(), &c, &k).unwrap()
    }

    /// An agent config serving `cert` and pinning this CA for client certificates.
    fn config(&self, cert: &(PathBuf, PathBuf), data: &Path, extra: &str) -> String {
        format!(
            "listen: 127.0.0.1:0\ndataDir: {}\ntls:\n  cert: {}\n  key: {}\n  clientCa: {}\n{extra}services:\n  - name: web\n    command: bin/web\n",
            data.display(),
            cert.0.display(),
            cert.1.display(),
            self.ca().display()
        )
    }
}

const VALID: (i32, i32) = (2020, 2090);

fn unreachable(err: &ClientError) -> String {
    assert!(
        matches!(err, ClientError::AgentUnreachable { .. }),
        "expected a failed TLS handshake, got {err}"
    );
    let mut chain = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        chain.push_str(&format!(": {s}"));
        source = s.source();
    }
    chain
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_admits_only_current_certificates_of_the_pinned_ca_used_for_their_purpose() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new(&tmp.path().join("ca"), "pinned");
    let other = TestCa::new(&tmp.path().join("other"), "other");
    let server = ca.issue("server", ExtendedKeyUsagePurpose::ServerAuth, VALID);
    let agent = AgentProc::start(
        tmp.path(),
        &ca.config(&server, &tmp.path().join("data"), ""),
    );

    // The control: a current client certificate of the pinned CA is served.
    let good = ca.client("client", VALID);
    assert_eq!(
        agent.client(&good).host_info().await.unwrap().services,
        ["web"]
    );

    // No client certificate: the handshake completes and every route answers 401.
    let anonymous = ClientAuth {
        ca_pem: good.ca_pem.clone(),
        ..ClientAuth::default()
    };
    let err = agent.client(&anonymous).services().await.unwrap_err();
    assert_eq!(err.status(), Some(401), "{err}");

    // An expired certificate of the pinned CA: the handshake fails.
    let expired = ca.client("expired", (2020, 2021));
    let chain = unreachable(&agent.client(&expired).host_info().await.unwrap_err());
    assert!(!chain.contains("401"), "{chain}");

    // A certificate from another CA: the handshake fails.
    let stranger = ClientAuth {
        ca_pem: good.ca_pem.clone(),
        ..other.client("stranger", VALID)
    };
    unreachable(&agent.client(&stranger).host_info().await.unwrap_err());

    // The agent's own server certificate presented as a client certificate: refused, since
    // it is not issued for client authentication.
    let misused = ClientAuth::mtls_files(&ca.ca(), &server.0, &server.1).unwrap();
    unreachable(&agent.client(&misused).host_info().await.unwrap_err());

    // An agent serving a client certificate (right CA, right address, wrong purpose): the
    // client refuses to talk to it, so a stolen client certificate cannot impersonate an agent.
    let client_as_server = ca.issue(
        "client-as-server",
        ExtendedKeyUsagePurpose::ClientAuth,
        VALID,
    );
    let dir2 = tmp.path().join("impostor");
    std::fs::create_dir_all(&dir2).unwrap();
    let impostor = AgentProc::start(&dir2, &ca.config(&client_as_server, &dir2.join("data"), ""));
    let chain = unreachable(&impostor.client(&good).host_info().await.unwrap_err());
    assert!(
        chain.to_lowercase().contains("certificate"),
        "the client should say why it refused: {chain}"
    );
}

/// W7 (issue 17): a certificate of the pinned CA without any extended key usage was accepted
/// as a client certificate; SECURITY.md says the client-auth usage is required.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w7_a_client_certificate_without_client_auth_usage_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new(&tmp.path().join("ca"), "pinned");
    let server = ca.issue("server", ExtendedKeyUsagePurpose::ServerAuth, VALID);
    let agent = AgentProc::start(
        tmp.path(),
        &ca.config(&server, &tmp.path().join("data"), ""),
    );
    let good = ca.client("client", VALID);
    assert_eq!(
        agent.client(&good).host_info().await.unwrap().services,
        ["web"]
    );
    let (c, k) = ca.issue_without_eku("no-eku");
    let no_eku = ClientAuth::mtls_files(&ca.ca(), &c, &k).unwrap();
    unreachable(&agent.client(&no_eku).host_info().await.unwrap_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_and_missing_tokens_are_refused_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let data = tmp.path().join("data");
    let token = "known-test-token-5f1c9a0e7d";
    std::fs::write(tmp.path().join("token"), token).unwrap();
    let cfg = format!(
        "listen: 127.0.0.1:0\ndataDir: {}\n{}token: {{file: token}}\nservices:\n{}",
        data.display(),
        pki.tls_yaml(false),
        web_service(&[free_ports(1)[0]], "")
    );
    let agent = AgentProc::start(tmp.path(), &cfg);
    let with = |t: Option<&str>| {
        agent.client(&ClientAuth {
            ca_pem: pki.client_auth().ca_pem,
            identity_pem: None,
            token: t.map(str::to_string),
        })
    };
    let before = (
        operations(&data),
        listing(&data.join("services/web/versions")),
    );
    let stop = SlotRequest {
        request_id: "stop-1".into(),
        slot: 0,
    };
    // A near miss (one character off, same length), another token, a prefix, and none.
    let near = format!("{}X", &token[..token.len() - 1]);
    for t in [
        Some(near.as_str()),
        Some("other-token-0123456789"),
        Some(&token[..10]),
        None,
    ] {
        for err in [
            with(t).stop("web", &stop).await.unwrap_err(),
            with(t).host_info().await.unwrap_err(),
        ] {
            match &err {
                ClientError::Rejected { status, code, .. } => {
                    assert_eq!((*status, code.as_str()), (401, "unauthorized"), "{t:?}")
                }
                other => panic!("{t:?}: expected a 401, got {other}"),
            }
        }
    }
    // A client certificate is not a credential where only the token is configured.
    let cert_only = pki.client_auth();
    assert_eq!(
        agent
            .client(&cert_only)
            .host_info()
            .await
            .unwrap_err()
            .status(),
        Some(401)
    );
    let after = (
        operations(&data),
        listing(&data.join("services/web/versions")),
    );
    assert_eq!(before, after, "a refused request changed the data dir");
    // The right token works.
    assert_eq!(
        with(Some(token)).host_info().await.unwrap().services,
        ["web"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_mutations_run_once_and_a_reused_id_with_another_body_is_409() {
    let WebAgent {
        tmp: _tmp,
        pki: _pki,
        port,
        data,
        agent: _agent,
        client: c,
    } = WebAgent::start();
    let v1 = tar_gz(&[("bin/web", 0o755, &demo_script(&[]))]);
    let v2 = tar_gz(&[("bin/web", 0o755, &demo_script(&[("DEMO_X", "2")]))]);

    let params = upload_params("stage-v1", &v1, None);
    let first = c
        .stage_bytes("web", "v1", v1.clone(), &params)
        .await
        .unwrap();
    assert_succeeded(
        &c.wait_operation(&first.id, Duration::from_secs(60))
            .await
            .unwrap(),
    );
    let again = c
        .stage_bytes("web", "v1", v1.clone(), &params)
        .await
        .unwrap();
    assert_eq!(again.id, first.id, "a replayed stage is the same operation");
    // Same id, another artifact: refused.
    let err = c
        .stage_bytes(
            "web",
            "v1",
            v2.clone(),
            &upload_params("stage-v1", &v2, None),
        )
        .await
        .unwrap_err();
    assert_rejected(&err, 409, "request_id_reused");

    let activate = ActivateRequest {
        request_id: "activate-v1".into(),
        version: "v1".into(),
        slot: 0,
        timeout_ms: None,
    };
    let op = c.activate("web", &activate).await.unwrap();
    let op = c
        .wait_operation(&op.id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_succeeded(&op);
    let running = c.service("web").await.unwrap().slots[0].clone();
    let pid = running.pid.expect("running");
    let ops_before = operations(&data);

    let replay = c.activate("web", &activate).await.unwrap();
    assert_eq!(replay.id, op.id);
    assert_eq!(replay.state, op.state);
    let err = c
        .activate(
            "web",
            &ActivateRequest {
                version: "v2".into(),
                ..activate.clone()
            },
        )
        .await
        .unwrap_err();
    assert_rejected(&err, 409, "request_id_reused");
    let err = c
        .stop(
            "web",
            &SlotRequest {
                request_id: "activate-v1".into(),
                slot: 0,
            },
        )
        .await
        .unwrap_err();
    assert_rejected(&err, 409, "request_id_reused");

    // Nothing ran twice: the same process serves, no operation was added, v1 staged once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let now = c.service("web").await.unwrap();
    assert_eq!(
        now.slots[0].pid,
        Some(pid),
        "the replay restarted the service"
    );
    assert_eq!(now.slots[0].restarts, running.restarts);
    assert_eq!(now.versions.len(), 1);
    assert_eq!(operations(&data), ops_before);
    assert!(get_root(port).await.unwrap().contains("v1"));
}

fn assert_rejected(err: &ClientError, want_status: u16, want_code: &str) {
    match err {
        ClientError::Rejected { status, code, .. } => {
            assert_eq!((*status, code.as_str()), (want_status, want_code), "{err}")
        }
        other => panic!("expected HTTP {want_status} {want_code}, got {other}"),
    }
}

/// A TLS connection to the agent with the given client identity, as a raw byte stream.
async fn tls_connect(
    url: &str,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let addr = url.trim_start_matches("https://");
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

/// Reads until the peer closes or errors; returns what was read and when it ended.
async fn read_to_close<R: tokio::io::AsyncRead + Unpin>(r: &mut R, limit: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, r.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "the agent kept the connection open past {limit:?}; got {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_and_slow_connections_are_cut_off() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let data = tmp.path().join("data");
    let cfg = format!(
        "listen: 127.0.0.1:0\ndataDir: {}\n{}limits: {{jsonBodyBytes: 1024, artifactBytes: 4096, maxConnections: 3, maxUnauthenticated: 3, headerReadTimeout: 1s, bodyIdleTimeout: 1s}}\nservices:\n{}",
        data.display(),
        pki.tls_yaml(true),
        web_service(&[free_ports(1)[0]], "")
    );
    let agent = AgentProc::start(tmp.path(), &cfg);
    let auth = pki.client_auth();
    let c = agent.client(&auth);
    let identity = (
        pki.dir.join("client-tests.pem"),
        pki.dir.join("client-tests-key.pem"),
    );
    let identity = Some((identity.0.as_path(), identity.1.as_path()));

    // Oversized JSON and a declared oversized upload: 413, nothing recorded.
    let huge = ActivateRequest {
        request_id: "x".repeat(2000),
        version: "v1".into(),
        slot: 0,
        timeout_ms: None,
    };
    assert_rejected(
        &c.activate("web", &huge).await.unwrap_err(),
        413,
        "body_too_large",
    );
    let big = vec![1u8; 8192];
    assert_rejected(
        &c.stage_bytes("web", "big", big.clone(), &upload_params("big", &big, None))
            .await
            .unwrap_err(),
        413,
        "body_too_large",
    );
    assert!(operations(&data).is_empty());
    assert!(listing(&data.join("services/web/versions")).is_empty());

    // Headers trickled one line at a time: cut off at the header deadline although bytes keep
    // coming (classic slowloris).
    let mut slow = tls_connect(&agent.url, &pki.ca(), identity).await;
    let started = Instant::now();
    slow.write_all(b"GET /v1/host HTTP/1.1\r\nHost: agent\r\n")
        .await
        .unwrap();
    let mut cut = false;
    for i in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if slow
            .write_all(format!("X-Slow-{i}: y\r\n").as_bytes())
            .await
            .is_err()
            || slow.flush().await.is_err()
        {
            cut = true;
            break;
        }
        let mut probe = [0u8; 1];
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(1), slow.read(&mut probe)).await {
            assert!(
                !matches!(r, Ok(1..)),
                "the agent answered incomplete headers"
            );
            cut = true;
            break;
        }
    }
    let took = started.elapsed();
    assert!(cut, "the agent kept reading headers for {took:?}");
    assert!(took < Duration::from_secs(3), "cut off only after {took:?}");

    // A body that stalls: the request fails after the body idle timeout instead of hanging.
    let mut stall = tls_connect(&agent.url, &pki.ca(), identity).await;
    stall
        .write_all(
            b"POST /v1/services/web/activate HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{\"requestId\":",
        )
        .await
        .unwrap();
    stall.flush().await.unwrap();
    let started = Instant::now();
    let answer = read_to_close(&mut stall, Duration::from_secs(5)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(800));

    // An idle keep-alive connection is closed at the header deadline too.
    let mut idle = tls_connect(&agent.url, &pki.ca(), identity).await;
    idle.write_all(b"GET /v1/host HTTP/1.1\r\nHost: agent\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let answer = read_to_close(&mut idle, Duration::from_secs(5)).await;
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    assert!(started.elapsed() < Duration::from_secs(3));

    // Connections that never start TLS are unauthenticated: past `maxUnauthenticated` (3) the
    // oldest is closed, and none of them holds back an authenticated caller (issue 17, W1).
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(
            tokio::net::TcpStream::connect(agent.url.trim_start_matches("https://"))
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let info = agent.client(&auth).host_info().await.unwrap();
    let waited = started.elapsed();
    assert_eq!(info.services, ["web"]);
    assert!(
        waited < Duration::from_millis(600),
        "silent connections held back an authenticated caller for {waited:?}"
    );
    let started = Instant::now();
    read_to_close(&mut silent[0], Duration::from_secs(3)).await;
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "the oldest unauthenticated connection was not closed when the budget ran out"
    );

    // Authenticated connections: at most 3 are served at once, so a 4th caller waits until
    // the header deadline frees a slot, then is served.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tls_connect(&agent.url, &pki.ca(), identity).await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let info = agent.client(&auth).host_info().await.unwrap();
    let waited = started.elapsed();
    assert_eq!(info.services, ["web"]);
    assert!(
        waited >= Duration::from_millis(600),
        "served at once ({waited:?}): the connection limit did not hold"
    );
    assert!(waited < Duration::from_secs(8), "waited {waited:?}");
    for mut s in held {
        read_to_close(&mut s, Duration::from_secs(3)).await;
    }
    for mut s in silent.into_iter().skip(1) {
        read_to_close(&mut s, Duration::from_secs(3)).await;
    }
    drop(c);
}

/// An HTTP server answering every request with `status`, `headers` and `body`.
async fn http_server(status: u16, headers: String, body: Vec<u8>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let (headers, body) = (headers.clone(), body.clone());
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&body).await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifact_urls_must_be_http_and_on_the_allowlist_redirects_included() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let data = tmp.path().join("data");
    let artifact = tar_gz(&[("bin/web", 0o755, b"#!/bin/sh\n")]);
    let good = http_server(200, String::new(), artifact.clone()).await;
    // Redirects to the same artifact on `localhost`, which is not on the list.
    let redirect = http_server(
        302,
        format!("Location: http://localhost:{good}/a.tgz\r\n"),
        Vec::new(),
    )
    .await;
    let cfg = format!(
        "listen: 127.0.0.1:0\ndataDir: {}\n{}allowedArtifactHosts: [\"127.0.0.1:{good}\", \"127.0.0.1:{redirect}\"]\nservices:\n{}",
        data.display(),
        pki.tls_yaml(true),
        web_service(&[free_ports(1)[0]], "")
    );
    let agent = AgentProc::start(tmp.path(), &cfg);
    let c = agent.client(&pki.client_auth());
    let stage = |id: &str, version: &str, url: String| StageRequest {
        request_id: id.into(),
        version: version.into(),
        url,
        sha256: sha256(&artifact),
        kind: None,
        file_name: None,
    };

    for (i, url) in [
        "file:///etc/passwd".to_string(),
        "ftp://127.0.0.1/a.tgz".to_string(),
        "gopher://127.0.0.1/a".to_string(),
        format!("http://localhost:{good}/a.tgz"),
        format!("http://127.0.0.1:{}/a.tgz", good.wrapping_add(1)),
        "https://example.com/a.tgz".to_string(),
    ]
    .into_iter()
    .enumerate()
    {
        let op = c
            .stage_url("web", &stage(&format!("bad-{i}"), "v1", url.clone()))
            .await
            .unwrap();
        let op = c
            .wait_operation(&op.id, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(op.state, OperationState::Failed, "{url}: {op:#?}");
        let message = op.error.unwrap_or_default();
        assert!(
            message.contains("only http and https") || message.contains("allowedArtifactHosts"),
            "{url}: {message}"
        );
    }
    assert!(listing(&data.join("services/web/versions")).is_empty());

    // A redirect off the list fails the operation; nothing is installed.
    let op = c
        .stage_url(
            "web",
            &stage(
                "redirect",
                "v1",
                format!("http://127.0.0.1:{redirect}/a.tgz"),
            ),
        )
        .await
        .unwrap();
    let op = c
        .wait_operation(&op.id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        op.state,
        rollgate::agent::api::OperationState::Failed,
        "{op:#?}"
    );
    assert!(
        op.error
            .as_deref()
            .unwrap_or_default()
            .contains("allowedArtifactHosts"),
        "{op:#?}"
    );
    assert!(listing(&data.join("services/web/versions")).is_empty());

    // The allowed host is fetched and installed.
    let op = c
        .stage_url(
            "web",
            &stage("ok", "v1", format!("http://127.0.0.1:{good}/a.tgz")),
        )
        .await
        .unwrap();
    assert_succeeded(
        &c.wait_operation(&op.id, Duration::from_secs(30))
            .await
            .unwrap(),
    );
    assert_eq!(listing(&data.join("services/web/versions")), ["v1"]);
}

/// The base64 body of every PEM block in `pem` (what a leaked key would look like in a log).
fn pem_body_lines(pem: &str) -> Vec<String> {
    pem.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_session_logs_neither_the_token_nor_key_material() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let port = free_ports(1)[0];
    let data = tmp.path().join("data");
    let token = "known-test-token-7c2e41d98b0a";
    std::fs::write(tmp.path().join("token"), format!("{token}\n")).unwrap();
    let cfg = format!(
        "listen: 127.0.0.1:0\ndataDir: {}\n{}token: {{file: token}}\nshutdownGrace: 10s\nservices:\n{}",
        data.display(),
        pki.tls_yaml(true),
        web_service(&[port], "")
    );
    let cfg_path = tmp.path().join("agent.yaml");
    std::fs::write(&cfg_path, cfg).unwrap();

    // The agent at its most verbose, every line of stdout and stderr kept.
    let stderr_path = tmp.path().join("agent.stderr");
    let mut child = Command::new(AGENT)
        .args(["--log-level", "trace", "run", "--config"])
        .arg(&cfg_path)
        .env_remove("ROLLGATE_AGENT_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut first = String::new();
        r.read_line(&mut first).unwrap();
        tx.send(first.clone()).unwrap();
        let mut rest = String::new();
        let _ = r.read_to_string(&mut rest);
        first + &rest
    });
    let first = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    let url = first
        .trim()
        .strip_prefix("rollgate-agent listening on ")
        .unwrap()
        .to_string();
    let guard = KillOnDrop(Some(child));

    let by_token = AgentClient::new(
        &url,
        &ClientAuth {
            ca_pem: pki.client_auth().ca_pem,
            identity_pem: None,
            token: Some(token.into()),
        },
    )
    .unwrap();
    let by_cert = AgentClient::new(&url, &pki.client_auth()).unwrap();
    let wrong = AgentClient::new(
        &url,
        &ClientAuth {
            ca_pem: pki.client_auth().ca_pem,
            identity_pem: None,
            token: Some(format!("{token}-wrong")),
        },
    )
    .unwrap();

    let v1 = tar_gz(&[("bin/web", 0o755, &demo_script(&[]))]);
    assert_succeeded(&stage(&by_token, "v1", &v1).await);
    assert_succeeded(&activate(&by_cert, "act-1", "v1", 0).await);
    let report = by_token
        .check_health("web", &HealthCheckRequest::default())
        .await
        .unwrap();
    assert!(report.healthy, "{report:?}");
    assert_eq!(wrong.host_info().await.unwrap_err().status(), Some(401));
    let op = by_token
        .stop(
            "web",
            &SlotRequest {
                request_id: "stop-1".into(),
                slot: 0,
            },
        )
        .await
        .unwrap();
    assert_succeeded(
        &by_token
            .wait_operation(&op.id, Duration::from_secs(30))
            .await
            .unwrap(),
    );

    let mut child = guard;
    let status = child.terminate();
    assert!(status.success(), "{status}");
    let stdout = reader.join().unwrap();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(
        stderr.lines().count() > 10,
        "the session should have logged something:\n{stderr}"
    );

    // The agent's whole output, and everything it wrote to its data dir.
    let mut haystacks = vec![
        ("stdout".to_string(), stdout),
        ("stderr".to_string(), stderr),
    ];
    let mut stack = vec![data.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                haystacks.push((
                    p.display().to_string(),
                    String::from_utf8_lossy(&bytes).into_owned(),
                ));
            }
        }
    }
    let mut secrets = vec![("the bearer token".to_string(), token.to_string())];
    for key in [
        "ca-key.pem",
        "agent-127.0.0.1-key.pem",
        "client-tests-key.pem",
    ] {
        let pem = std::fs::read_to_string(pki.dir.join(key)).unwrap();
        let lines = pem_body_lines(&pem);
        assert!(!lines.is_empty());
        for line in lines {
            secrets.push((format!("a line of {key}"), line));
        }
    }
    for (what, text) in &haystacks {
        assert!(
            !text.contains("PRIVATE KEY"),
            "{what} holds a PEM private key"
        );
        for (secret, value) in &secrets {
            assert!(!text.contains(value.as_str()), "{what} leaks {secret}");
        }
    }
}

/// Kills the agent if the test fails before stopping it.
struct KillOnDrop(Option<std::process::Child>);

impl KillOnDrop {
    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.0.take().unwrap();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
