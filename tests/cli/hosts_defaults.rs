//! Safe defaults for hosts targets (issue 20): `auth` required off loopback, `auth: {insecure: true}`
//! warned about on every run, `service` defaulting to `metadata.name`, and an agent without the
//! service named as such (real agents on loopback, the real demo service).

use super::support::{rollgate, workdir};
use rollgate::cli::demo::{LocalFleet, package_demo};

fn hosts_manifest(target_extra: &str, address: &str) -> String {
    format!(
        "apiVersion: rollgate.dev/v1\nkind: Rollout\nmetadata: {{name: web}}\nspec:\n  version: \"2.0.0\"\n  target:\n    hosts:\n{target_extra}      hosts:\n        - {{name: h1, address: \"127.0.0.1:7443\"}}\n        - {{name: h2, address: \"{address}\"}}\n  strategy:\n    rolling: {{maxUnavailable: 1}}\n"
    )
}

#[test]
fn auth_is_required_off_loopback_and_insecure_is_said_on_every_run() {
    // No auth, a non-loopback agent: an input error at the address, nothing printed on stdout.
    let dir = workdir(&[("web.yaml", &hosts_manifest("", "10.0.0.2:7443"))]);
    for cmd in ["validate", "plan"] {
        let run = rollgate(dir.path(), &[cmd, "-f", "web.yaml"], &[]);
        assert_eq!(run.code, 2, "{cmd}: {}", run.stderr);
        assert_eq!(run.stdout, "");
        assert!(
            run.stderr.starts_with(
                "error: web.yaml:10:31: spec.target.hosts.hosts[1].address: \"10.0.0.2:7443\" is not a loopback address and spec.target.hosts has no auth"
            ),
            "{}",
            run.stderr
        );
        assert!(
            run.stderr.contains("auth: {insecure: true}"),
            "{}",
            run.stderr
        );
    }
    // Loopback alone needs no auth, and no warning.
    let dir = workdir(&[("web.yaml", &hosts_manifest("", "127.0.0.2:7443"))]);
    let run = rollgate(dir.path(), &["validate", "-f", "web.yaml"], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stderr, "");

    // `insecure: true` is accepted, and every command that loads it warns on stderr.
    let insecure = hosts_manifest("      auth: {insecure: true}\n", "10.0.0.2:7443");
    let dir = workdir(&[("web.yaml", &insecure)]);
    for args in [
        &["validate", "-f", "web.yaml"][..],
        &["plan", "-f", "web.yaml", "-o", "json"],
    ] {
        let run = rollgate(dir.path(), args, &[]);
        assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
        assert_eq!(
            run.stderr.matches("warning:").count(),
            1,
            "once: {}",
            run.stderr
        );
        assert!(
            run.stderr.contains(
                "warning: web.yaml: spec.target.hosts.auth.insecure: rollgate talks to the agents of web over plain HTTP, unauthenticated"
            ),
            "{args:?}: {}",
            run.stderr
        );
    }
    // Insecure beside credentials, or auth without any: input errors naming the field.
    let both = hosts_manifest(
        "      auth: {insecure: true, ca: ca.pem}\n",
        "10.0.0.2:7443",
    );
    let empty = hosts_manifest("      auth: {}\n", "10.0.0.2:7443");
    for (text, want) in [
        (
            both,
            "error: web.yaml:8:24: spec.target.hosts.auth.insecure: true beside credentials",
        ),
        (
            empty,
            "error: web.yaml:8:7: spec.target.hosts.auth: has no credentials",
        ),
    ] {
        let dir = workdir(&[("web.yaml", &text)]);
        let run = rollgate(dir.path(), &["validate", "-f", "web.yaml"], &[]);
        assert_eq!(run.code, 2, "{}", run.stderr);
        assert!(run.stderr.starts_with(want), "{want}\n{}", run.stderr);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_defaults_to_the_app_name_and_a_missing_one_is_named() {
    let dir = tempfile::tempdir().unwrap();
    // The agents run the demo as service `web`.
    let fleet = LocalFleet::start(dir.path(), 2, 1).await.unwrap();
    let artifact = package_demo(dir.path(), "1.0.0", "").unwrap();
    let manifest = |name: &str, service: &str| {
        format!(
            "apiVersion: rollgate.dev/v1\nkind: Rollout\nmetadata: {{name: {name}}}\nspec:\n  version: \"1.0.0\"\n  target:\n    hosts:\n{service}      artifact: {{file: \"{}\"}}\n      auth: {}\n      hosts:\n{}  strategy:\n    rolling: {{maxUnavailable: 1}}\n  progressDeadlineSeconds: 20\n",
            artifact.display(),
            fleet.auth_yaml(),
            fleet.hosts_yaml("        ")
        )
    };
    std::fs::write(dir.path().join("web.yaml"), manifest("web", "")).unwrap();
    std::fs::write(
        dir.path().join("api.yaml"),
        manifest("api", "      service: nope\n"),
    )
    .unwrap();
    let state = dir.path().join("state");
    let state = state.to_str().unwrap().to_string();
    let d = dir.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        let env = [("ROLLGATE_STATE", state.as_str())];
        // No `service`: metadata.name (`web`), which the agents run.
        let run = rollgate(&d, &["apply", "-o", "plain", "-f", "web.yaml"], &env);
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
        assert!(run.stdout.contains("web: succeeded"), "{}", run.stdout);
        // A service no agent has: said as such, with what the agent has, not "agent unreachable".
        let run = rollgate(&d, &["apply", "-o", "plain", "-f", "api.yaml"], &env);
        assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
        let all = format!("{}{}", run.stdout, run.stderr);
        assert!(
            all.contains("has no service \"nope\" (it has: web)")
                && all.contains("agent at 127.0.0.1:"),
            "{all}"
        );
        assert!(!all.contains("unreachable"), "{all}");
    })
    .await
    .unwrap();
    drop(fleet);
}
