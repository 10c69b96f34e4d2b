//! The README's commands, run (issue 20: its hosts example named `pki/ci.pem`, which
//! `pki issue --client ci` never writes). Every `rollgate` line of its shell blocks: the offline ones
//! (`validate`, `plan`, `pki`) run as shown and must exit 0; every path under `pki/` or `team-pki/`
//! the README names must be one those `pki` commands wrote; the commands that need a running fleet
//! must name only flags the binary has (they run for real in `streams.rs`, `watch.rs` and
//! `tests/hosts`); and the README's `plan` output is what `plan` prints.

use std::path::Path;

use super::support::{repo, rollgate};

fn readme() -> String {
    std::fs::read_to_string(repo().join("README.md")).unwrap()
}

/// The `rollgate ...` commands of the README's shell blocks, comments dropped, `[--opt]` groups
/// opened and `a | b` alternatives split (`rollgate pause web | resume web`).
fn commands(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut in_shell = false;
    let mut continued = String::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_shell = matches!(line.trim(), "```sh" | "```bash");
            continue;
        }
        if !in_shell {
            continue;
        }
        let line = line.split(" # ").next().unwrap().trim();
        if line.starts_with('#') {
            continue; // a comment line (`#   ROLLGATE_BIN=PATH  time another rollgate build`)
        }
        if let Some(head) = line.strip_suffix('\\') {
            continued.push_str(head);
            continue;
        }
        let line = std::mem::take(&mut continued) + line;
        // `VAR=x rollgate ...`: the environment prefix is not part of the command.
        let Some(at) = line.find("rollgate ") else {
            continue;
        };
        let line = line[at..].replace(['[', ']'], "");
        for (i, part) in line.split(" | ").enumerate() {
            let part = if i == 0 {
                part.to_string()
            } else {
                format!("rollgate {part}")
            };
            let words: Vec<String> = part.split_whitespace().skip(1).map(String::from).collect();
            if !words.is_empty() {
                out.push(words);
            }
        }
    }
    out
}

#[test]
fn every_readme_command_runs_or_names_real_flags() {
    let text = readme();
    let all = commands(&text);
    assert!(all.len() >= 20, "the README's commands: {all:?}");
    let dir = tempfile::tempdir().unwrap();
    // The files the Examples block names beyond the repository's: a base and its prod overlay.
    let base = std::fs::read_to_string(repo().join("manifests/kubernetes/rolling.yaml")).unwrap();
    std::fs::write(dir.path().join("base.yaml"), base).unwrap();
    std::fs::write(
        dir.path().join("prod.yaml"),
        "spec:\n  strategy:\n    rolling: {maxSurge: \"10%\", maxUnavailable: 0}\n",
    )
    .unwrap();
    copy_dir(&repo().join("manifests"), &dir.path().join("manifests"));
    copy_dir(&repo().join("strategies"), &dir.path().join("strategies"));
    let offline = [("KUBECONFIG", "/nonexistent/rollgate-readme-kubeconfig")];
    let mut ran = 0;
    for words in &all {
        let args: Vec<&str> = words.iter().map(String::as_str).collect();
        match args[0] {
            "validate" | "plan" | "pki" => {
                let run = rollgate(dir.path(), &args, &offline);
                assert_eq!(run.code, 0, "rollgate {}: {}", words.join(" "), run.stderr);
                ran += 1;
            }
            sub => {
                let mut help = rollgate(dir.path(), &[sub, "--help"], &[]);
                assert_eq!(help.code, 0, "rollgate {sub}: no such command");
                // A command group (`artifact pack`): the flags are the nested command's.
                if let Some(nested) = args.get(1).filter(|w| !w.starts_with('-')) {
                    let run = rollgate(dir.path(), &[sub, nested, "--help"], &[]);
                    if run.code == 0 {
                        help = run;
                    }
                }
                for flag in args.iter().filter(|w| w.starts_with('-')) {
                    let flag = flag.split('=').next().unwrap();
                    assert!(
                        help.stdout.lines().any(|l| {
                            l.trim_start().starts_with('-')
                                && l.split([' ', ',']).any(|w| w == flag)
                        }),
                        "rollgate {}: {flag} is not a flag of {sub}",
                        words.join(" ")
                    );
                }
            }
        }
    }
    assert!(ran >= 10, "the offline commands ran: {ran}");
    // Every certificate and key path the README names was written by its `pki` commands.
    let mut named = 0;
    for word in text.split(|c: char| c.is_whitespace() || matches!(c, ',' | '{' | '}' | '`')) {
        let word = word.trim_end_matches(['.', ')']);
        if (word.starts_with("pki/") || word.starts_with("team-pki/")) && word.ends_with(".pem") {
            assert!(
                dir.path().join(word).is_file(),
                "the README names {word}, which its pki commands do not write"
            );
            named += 1;
        }
    }
    assert!(named >= 8, "the README's certificate paths: {named}");
}

/// The README shows `plan`'s output for a command it names: that output, exactly.
#[test]
fn the_readme_plan_example_is_what_plan_prints() {
    let text = readme();
    let cmd = "`rollgate plan -f\nmanifests/kubernetes/canary.yaml --replicas 20`:";
    let after = &text[text.find(cmd).expect("the README's plan example") + cmd.len()..];
    let block = after
        .split("```")
        .nth(1)
        .expect("a block after it")
        .trim_start_matches('\n');
    let run = rollgate(
        &repo(),
        &[
            "plan",
            "-f",
            "manifests/kubernetes/canary.yaml",
            "--replicas",
            "20",
        ],
        &[("KUBECONFIG", "/nonexistent/rollgate-readme-kubeconfig")],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, block);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        if path.is_dir() {
            copy_dir(&path, &to.join(entry.file_name()));
        } else {
            std::fs::copy(&path, to.join(entry.file_name())).unwrap();
        }
    }
}
