//! `-o` means the same on every command (issue 20): `table` (the default; `auto` too) | `json` |
//! `yaml` where it makes sense | `plain`, and a clear error where a command cannot.

use super::support::{repo, rollgate, workdir};

#[test]
fn every_command_takes_the_same_words_and_refuses_what_it_cannot_do() {
    let example = "manifests/hosts/canary.yaml";
    // validate: one line for people, one object for tools.
    let run = rollgate(&repo(), &["validate", "-f", example], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.starts_with("billing: valid (canary strategy"),
        "{}",
        run.stdout
    );
    let plain = rollgate(&repo(), &["validate", "-f", example, "-o", "plain"], &[]);
    assert_eq!(plain.stdout, run.stdout);
    let run = rollgate(&repo(), &["validate", "-f", example, "-o", "json"], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["app"], "billing");
    assert_eq!(v["valid"], true);
    assert_eq!(v["strategy"], "canary");
    assert_eq!(v["files"][0], example);
    let run = rollgate(&repo(), &["validate", "-f", example, "-o", "yaml"], &[]);
    let y: serde_json::Value = serde_yaml::from_str(&run.stdout).unwrap();
    assert_eq!(y, v, "yaml and json say the same");

    // plan: plain is the table; auto is an alias of table.
    let table = rollgate(&repo(), &["plan", "-f", example], &[]);
    for word in ["plain", "auto", "table"] {
        let run = rollgate(&repo(), &["plan", "-f", example, "-o", word], &[]);
        assert_eq!(run.code, 0, "{word}: {}", run.stderr);
        assert_eq!(run.stdout, table.stdout, "{word}");
    }
    let json = rollgate(&repo(), &["plan", "-f", example, "-o", "json"], &[]);
    let yaml = rollgate(&repo(), &["plan", "-f", example, "-o", "yaml"], &[]);
    let j: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let y: serde_json::Value = serde_yaml::from_str(&yaml.stdout).unwrap();
    assert_eq!(j, y);

    // The commands that stream a rollout refuse yaml before doing anything, and say what they take.
    let dir = workdir(&[]);
    let state = dir.path().join("state");
    let env = [("ROLLGATE_STATE", state.to_str().unwrap())];
    for args in [
        vec!["apply", "-f", "nope.yaml", "-o", "yaml"],
        vec!["resume", "web", "-o", "yaml"],
        vec!["abort", "web", "-o", "yaml"],
        vec!["rollback", "web", "-o", "yaml"],
        vec!["promote", "web", "-o", "yaml"],
        vec!["demo", "-o", "yaml"],
    ] {
        let run = rollgate(dir.path(), &args, &env);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(
            run.stderr.starts_with("error: -o yaml: ")
                && run.stderr.contains("expected -o table, plain or json"),
            "{args:?}: {}",
            run.stderr
        );
        assert_eq!(run.stdout, "");
    }
    assert!(!state.exists(), "nothing was done");
    // An unknown word lists the four.
    let run = rollgate(&repo(), &["status", "web", "-o", "xml"], &[]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr
            .contains("[possible values: table, plain, json, yaml]"),
        "{}",
        run.stderr
    );
    let run = rollgate(&repo(), &["plan", "-f", example, "-o", "xml"], &[]);
    assert!(
        run.stderr
            .contains("[possible values: table, json, yaml, plain]"),
        "{}",
        run.stderr
    );
}
