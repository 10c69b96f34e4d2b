//! Bad artifacts are refused before anything is installed; staging by URL.

use std::time::Duration;

use rollgate::agent::api::{OperationState, StageRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_artifacts_are_refused_and_nothing_is_installed() {
    let WebAgent {
        tmp,
        pki: _pki,
        port: _port,
        data,
        agent: _agent,
        client: c,
    } = WebAgent::start();
    let good = tar_gz(&[("bin/web", 0o755, &demo_script(&[]))]);
    assert_succeeded(&stage(&c, "good", &good).await);
    let versions = data.join("services/web/versions");
    let before = listing(&versions);
    assert_eq!(before, vec!["good"]);

    let escape_target = tmp.path().join("escaped");
    let abs_name = format!("{}", escape_target.display());
    let mut corrupt = good.clone();
    corrupt.truncate(good.len() / 2);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "traversal",
            tar_gz_raw(b"../../../escaped", tar::EntryType::Regular, None, b"x"),
            "climbs out",
        ),
        (
            "absolute",
            tar_gz_raw(abs_name.as_bytes(), tar::EntryType::Regular, None, b"x"),
            "absolute path",
        ),
        (
            "link-escape",
            tar_gz_raw(b"bin", tar::EntryType::Symlink, Some("../../../.."), b""),
            "points outside",
        ),
        (
            "device",
            tar_gz_raw(b"null", tar::EntryType::Char, None, b""),
            "character device",
        ),
        ("corrupt", corrupt, "corrupt"),
        (
            "zip-traversal",
            zip(&[("../../escaped", 0o644, b"x")]),
            "climbs out",
        ),
    ];
    for (version, bytes, expected) in cases {
        let op = stage(&c, version, &bytes).await;
        assert_eq!(op.state, OperationState::Failed, "{version}: {op:#?}");
        let err = op.error.unwrap();
        assert!(err.contains(expected), "{version}: {err}");
        assert_eq!(
            listing(&versions),
            before,
            "{version} left something installed"
        );
        assert_eq!(
            listing(&data.join("services/web/staging")),
            Vec::<String>::new(),
            "{version}"
        );
    }
    assert!(!escape_target.exists());

    // The sha256 must match the bytes sent.
    let other = tar_gz(&[("bin/web", 0o755, b"#!/bin/sh\nexit 0\n")]);
    let op = c
        .stage_bytes(
            "web",
            "mismatch",
            other,
            &upload_params("stage-mismatch", &good, None),
        )
        .await
        .unwrap();
    let op = c
        .wait_operation(&op.id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(op.state, OperationState::Failed);
    assert!(op.error.unwrap().contains("sha256 mismatch"));
    assert_eq!(listing(&versions), before);

    // Re-staging an existing version from other bytes is refused, the original kept.
    let changed = tar_gz(&[("bin/web", 0o755, b"#!/bin/sh\n")]);
    let op = c
        .stage_bytes(
            "web",
            "good",
            changed.clone(),
            &upload_params("stage-good-2", &changed, None),
        )
        .await
        .unwrap();
    let op = c
        .wait_operation(&op.id, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(op.error.unwrap().contains("already installed"));
    assert_eq!(
        std::fs::read(versions.join("good/bin/web")).unwrap(),
        demo_script(&[])
    );
}

/// Serves `body` with `status` to every request on a loopback port.
async fn file_server(status: u16, body: Vec<u8>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(&body).await;
            });
        }
    });
    format!("http://{addr}/artifact.tar.gz")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_by_url_verifies_the_download() {
    let WebAgent {
        tmp: _tmp,
        pki: _pki,
        port,
        data,
        agent: _agent,
        client: c,
    } = WebAgent::start();
    let art = tar_gz(&[("bin/web", 0o755, &demo_script(&[]))]);
    let url = file_server(200, art.clone()).await;

    let stage_url = |id: &str, version: &str, url: &str, sha: String| StageRequest {
        request_id: id.into(),
        version: version.into(),
        url: url.into(),
        sha256: sha,
        kind: None,
        file_name: None,
    };
    let op = c
        .stage_url("web", &stage_url("u1", "u1", &url, sha256(&art)))
        .await
        .unwrap();
    assert_succeeded(
        &c.wait_operation(&op.id, Duration::from_secs(30))
            .await
            .unwrap(),
    );
    assert_succeeded(&activate(&c, "a-u1", "u1", 0).await);
    assert_eq!(get_root(port).await.unwrap(), "version u1\n");

    let op = c
        .stage_url("web", &stage_url("u2", "u2", &url, sha256(b"other")))
        .await
        .unwrap();
    let op = c
        .wait_operation(&op.id, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(op.error.unwrap().contains("sha256 mismatch"));

    let missing = file_server(404, b"no".to_vec()).await;
    let op = c
        .stage_url("web", &stage_url("u3", "u3", &missing, sha256(&art)))
        .await
        .unwrap();
    let op = c
        .wait_operation(&op.id, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(op.error.unwrap().contains("HTTP 404"));

    let err = c
        .stage_url(
            "web",
            &stage_url("u4", "u4", "file:///etc/passwd", sha256(&art)),
        )
        .await;
    let op = c
        .wait_operation(&err.unwrap().id, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(op.error.unwrap().contains("only http and https"));
    assert_eq!(listing(&data.join("services/web/versions")), vec!["u1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_mid_stage_installs_nothing() {
    let WebAgent {
        tmp,
        pki,
        port: _port,
        data,
        mut agent,
        client: c,
    } = WebAgent::start();

    // A server that sends half the artifact, then stalls.
    let art = tar_gz(&[("bin/web", 0o755, &demo_script(&[]))]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/slow.tar.gz", listener.local_addr().unwrap());
    let half = art[..art.len() / 2].to_vec();
    let total = art.len();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let half = half.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n");
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(&half).await;
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
        }
    });
    let op = c
        .stage_url(
            "web",
            &StageRequest {
                request_id: "slow".into(),
                version: "v1".into(),
                url,
                sha256: sha256(&art),
                kind: None,
                file_name: None,
            },
        )
        .await
        .unwrap();
    // Wait until the partial download is on disk, then kill the agent.
    let staging = data.join("services/web/staging");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while listing(&staging).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "download never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent.kill9();

    let agent = AgentProc::start_file(tmp.path(), &agent.config.clone());
    let c = agent.client(&pki.client_auth());
    let op = c.operation(&op.id).await.unwrap();
    assert_eq!(op.state, OperationState::Failed);
    assert!(op.error.unwrap().contains("interrupted"));
    assert!(c.service("web").await.unwrap().versions.is_empty());
    assert_eq!(listing(&staging), Vec::<String>::new());
    assert_eq!(
        listing(&data.join("services/web/versions")),
        Vec::<String>::new()
    );
}
