//! `rollgate dashboard` off loopback: HTTPS with a certificate of the project PKI, and only for
//! clients with a client certificate of its CA or the bearer token, checked with a real TLS client
//! (reqwest over rustls). Without TLS and client authentication it does not start (exit 2).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use rollgate::pki;

use super::support::{ROLLGATE, interrupt_and_wait};

const TOKEN: &str = "7c1f0e2a9b8d4c3e5f6a7b8c9d0e1f2a";

/// A dashboard on all addresses (`0.0.0.0`, off loopback) with `flags`; its stderr goes to a file.
struct Tls {
    port: u16,
    child: Option<Child>,
}

impl Tls {
    fn start(dir: &Path, flags: &[&str], env_token: Option<&str>) -> Tls {
        let mut cmd = Command::new(ROLLGATE);
        cmd.args(["dashboard", "--listen", "0.0.0.0:0"])
            .args(flags)
            .env("ROLLGATE_STATE", dir.join("state"))
            .env_remove("ROLLGATE_DASHBOARD_TOKEN")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("dashboard.err")).unwrap());
        if let Some(t) = env_token {
            cmd.env("ROLLGATE_DASHBOARD_TOKEN", t);
        }
        let mut child = cmd.spawn().unwrap();
        let mut url = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut url)
            .unwrap();
        let url = url.trim();
        assert!(url.starts_with("https://0.0.0.0:"), "{url:?}");
        let port = url
            .trim_end_matches('/')
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        Tls {
            port,
            child: Some(child),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Tls {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            interrupt_and_wait(c);
        }
    }
}

fn client(ca: &Path, identity: Option<&pki::Issued>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap());
    if let Some(id) = identity {
        let mut pem = std::fs::read(&id.cert).unwrap();
        pem.extend(std::fs::read(&id.key).unwrap());
        b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    b.build().unwrap()
}

async fn status(req: reqwest::RequestBuilder) -> Result<u16, String> {
    req.send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| rollgate::error_chain(&e))
}

#[tokio::test]
async fn off_loopback_it_serves_https_only_to_a_client_certificate_or_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    let ca = pki::init(&pki_dir).unwrap().cert;
    let server = pki::issue_agent(&pki_dir, "127.0.0.1").unwrap();
    let ana = pki::issue_client(&pki_dir, "ana").unwrap();
    // A client certificate of another CA.
    let other_dir = dir.path().join("other-pki");
    pki::init(&other_dir).unwrap();
    let stranger = pki::issue_client(&other_dir, "eve").unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let (cert, key) = (server.cert.to_str().unwrap(), server.key.to_str().unwrap());

    let served = Tls::start(
        dir.path(),
        &[
            "--tls-cert",
            cert,
            "--tls-key",
            key,
            "--client-ca",
            ca.to_str().unwrap(),
            "--token-file",
            token_file.to_str().unwrap(),
        ],
        None,
    );
    let anonymous = client(&ca, None);
    // Without a certificate or the token: refused.
    assert_eq!(status(anonymous.get(served.url("/"))).await, Ok(401));
    assert_eq!(
        status(anonymous.get(served.url("/api/apps"))).await,
        Ok(401)
    );
    let wrong = anonymous
        .get(served.url("/api/apps"))
        .bearer_auth("7c1f0e2a9b8d4c3e5f6a7b8c9d0e1f2b");
    assert_eq!(status(wrong).await, Ok(401));
    // With the token: served.
    let page = anonymous
        .get(served.url("/"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("csrf-token"));
    assert_eq!(
        status(anonymous.get(served.url("/api/apps")).bearer_auth(TOKEN)).await,
        Ok(200)
    );
    // A browser signs in with the token once: `/` sends it to `/login`, whose POST sets a session
    // cookie (not the token) that lets it in.
    let browser = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let to_login = browser
        .get(served.url("/"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(to_login.status(), 303);
    assert_eq!(to_login.headers()["location"], "/login");
    let login = browser.get(served.url("/login")).send().await.unwrap();
    assert_eq!(login.status(), 200);
    let csrf = super::support::csrf(&login.text().await.unwrap());
    let sign_in = |token: &str| {
        browser
            .post(served.url("/login"))
            .header("x-csrf-token", &csrf)
            .json(&serde_json::json!({ "token": token }))
            .send()
    };
    assert_eq!(sign_in("not-the-token-at-all").await.unwrap().status(), 401);
    let signed = sign_in(TOKEN).await.unwrap();
    assert_eq!(signed.status(), 204);
    let cookie = signed.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.starts_with("rollgate-session=")
            && cookie.contains("HttpOnly")
            && cookie.contains("Secure"),
        "{cookie}"
    );
    assert!(
        !cookie.contains(TOKEN),
        "the cookie is not the token: {cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_string();
    let with_session = browser
        .get(served.url("/api/apps"))
        .header("cookie", &session);
    assert_eq!(status(with_session).await, Ok(200));
    let forged = browser
        .get(served.url("/api/apps"))
        .header("cookie", format!("rollgate-session={TOKEN}"));
    assert_eq!(status(forged).await, Ok(401));

    // With a client certificate of the CA: served, no token needed.
    let with_cert = client(&ca, Some(&ana));
    assert_eq!(
        status(with_cert.get(served.url("/api/apps"))).await,
        Ok(200)
    );
    // A certificate of another CA fails the handshake.
    let r = status(client(&ca, Some(&stranger)).get(served.url("/api/apps"))).await;
    assert!(r.is_err(), "{r:?}");
    // Plain HTTP gets no page.
    let plain = reqwest::get(format!("http://127.0.0.1:{}/", served.port)).await;
    assert!(
        plain.is_err() || plain.as_ref().unwrap().status() != 200,
        "{plain:?}"
    );
    drop(served);
    let log = std::fs::read_to_string(dir.path().join("dashboard.err")).unwrap();
    assert!(log.contains("serving HTTPS at https://0.0.0.0:"), "{log}");
    assert!(!log.contains(TOKEN), "the token is never printed: {log}");

    // Client certificates only (no token): a client without one fails the handshake.
    let served = Tls::start(
        dir.path(),
        &[
            "--tls-cert",
            cert,
            "--tls-key",
            key,
            "--client-ca",
            ca.to_str().unwrap(),
        ],
        None,
    );
    let r = status(anonymous.get(served.url("/api/apps"))).await;
    assert!(r.is_err(), "{r:?}");
    assert_eq!(
        status(with_cert.get(served.url("/api/apps"))).await,
        Ok(200)
    );
    drop(served);

    // The token from the environment.
    let served = Tls::start(
        dir.path(),
        &["--tls-cert", cert, "--tls-key", key],
        Some(TOKEN),
    );
    assert_eq!(
        status(anonymous.get(served.url("/api/apps"))).await,
        Ok(401)
    );
    assert_eq!(
        status(anonymous.get(served.url("/api/apps")).bearer_auth(TOKEN)).await,
        Ok(200)
    );
}

#[test]
fn off_loopback_without_tls_and_client_authentication_it_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    pki::init(&pki_dir).unwrap();
    let server = pki::issue_agent(&pki_dir, "127.0.0.1").unwrap();
    let short = dir.path().join("short-token");
    std::fs::write(&short, "s3cret-ish").unwrap();
    let (cert, key) = (server.cert.to_str().unwrap(), server.key.to_str().unwrap());
    for (args, says) in [
        (vec![], "needs TLS (--tls-cert and --tls-key"),
        (
            vec!["--tls-cert", cert, "--tls-key", key],
            "needs client authentication: --client-ca",
        ),
        (
            vec![
                "--tls-cert",
                cert,
                "--tls-key",
                key,
                "--token-file",
                short.to_str().unwrap(),
            ],
            "the token must be at least 16 characters",
        ),
    ] {
        let out = Command::new(ROLLGATE)
            .args(["dashboard", "--listen", "0.0.0.0:7900"])
            .args(&args)
            .env("ROLLGATE_STATE", dir.path().join("state"))
            .env_remove("ROLLGATE_DASHBOARD_TOKEN")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(!stderr.contains("s3cret-ish"), "{stderr}");
        assert!(
            out.stdout.is_empty(),
            "no URL: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// The README's commands for a dashboard off loopback, run as written (the port made free): the
/// PKI, the server and client certificates, the dashboard; a browser's client certificate gets
/// the page, a client without one does not.
#[tokio::test]
async fn the_readme_https_example_runs_as_written() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let intro = "Served to client certificates of the PKI:";
    let block = readme[readme.find(intro).expect("the README's HTTPS example") + intro.len()..]
        .split("```")
        .nth(1)
        .unwrap()
        .trim_start_matches("sh\n");
    let lines: Vec<String> = block
        .replace("\\\n", " ")
        .lines()
        .map(|l| l.split(" # ").next().unwrap().trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    let dir = tempfile::tempdir().unwrap();
    let run = |line: &str| -> Vec<String> {
        line.split_whitespace()
            .skip(1)
            .map(|w| w.replace("0.0.0.0:7900", "0.0.0.0:0"))
            .collect()
    };
    let ok = |args: &[String]| {
        let out = Command::new(ROLLGATE)
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // The CA, as the README's Hosts section makes it.
    ok(&["pki", "init", "--dir", "pki"].map(String::from));
    ok(&run(&lines[0]));
    ok(&run(&lines[1]));
    let mut child = Command::new(ROLLGATE)
        .args(run(&lines[2]))
        .current_dir(dir.path())
        .env("ROLLGATE_STATE", dir.path().join("state"))
        .env_remove("ROLLGATE_DASHBOARD_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut url = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut url)
        .unwrap();
    let port: u16 = url
        .trim()
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let guard = Tls {
        port,
        child: Some(child),
    };
    let pki_dir = dir.path().join("pki");
    let ana = pki::Issued {
        cert: pki_dir.join("client-ana.pem"),
        key: pki_dir.join("client-ana-key.pem"),
    };
    // The certificate names dash.example.com: resolve it to this machine.
    let at = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let url = format!("https://dash.example.com:{port}/");
    let named = |id: Option<&pki::Issued>| {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(pki_dir.join("ca.pem")).unwrap())
            .unwrap();
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(ca)
            .resolve("dash.example.com", at);
        if let Some(id) = id {
            let mut pem = std::fs::read(&id.cert).unwrap();
            pem.extend(std::fs::read(&id.key).unwrap());
            b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
        }
        b.build().unwrap()
    };
    let page = named(Some(&ana)).get(&url).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("rollgate dashboard"));
    let r = status(named(None).get(&url)).await;
    assert!(r.is_err(), "without a client certificate: {r:?}");
    drop(guard);
}
