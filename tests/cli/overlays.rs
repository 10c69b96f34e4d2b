//! Where `--env` overlays go in the merge, and where `strategy.ref` is looked up (issue 20).

use super::support::{BASE, rollgate, workdir};

/// `-f base.yaml -f web.yaml --env prod` merges base, base.prod, web, web.prod in that order.
#[test]
fn each_files_env_overlay_comes_right_after_it() {
    let base = BASE.replace("maxSurge: 1", "maxSurge: 1\n      minReadySeconds: 1");
    let dir = workdir(&[
        ("base.yaml", &base),
        // base.prod sets two fields; web.yaml (a later -f file) overrides one of them.
        (
            "base.prod.yaml",
            "spec:\n  strategy:\n    rolling: {minReadySeconds: 2, maxSurge: 2}\n",
        ),
        (
            "web.yaml",
            "spec:\n  strategy:\n    rolling: {maxSurge: 3}\n",
        ),
        ("web.prod.yaml", "spec:\n  version: \"2.0.0-prod\"\n"),
    ]);
    let run = rollgate(
        dir.path(),
        &[
            "plan",
            "-f",
            "base.yaml",
            "-f",
            "web.yaml",
            "--env",
            "prod",
            "--replicas",
            "10",
            "-o",
            "json",
        ],
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let plan: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(plan["maxSurge"], 3, "web.yaml wins over base.prod.yaml");
    assert_eq!(plan["minReadySeconds"], 2, "base.prod.yaml over base.yaml");
    // Without --env neither overlay is read.
    let run = rollgate(
        dir.path(),
        &[
            "plan",
            "-f",
            "base.yaml",
            "-f",
            "web.yaml",
            "--replicas",
            "10",
            "-o",
            "json",
        ],
        &[],
    );
    let plan: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(plan["minReadySeconds"], 1);
}

/// `strategy.ref` reads the manifest's folder (and `strategies/` beside it), then the built-in
/// presets; a `strategies/` in the current directory is not read.
#[test]
fn strategy_ref_is_looked_up_beside_the_manifest_not_in_the_current_directory() {
    let manifest = BASE.replace(
        "    rolling:\n      maxSurge: 1\n      maxUnavailable: 0\n",
        "    ref: rolling\n",
    );
    let preset = "rolling: {maxSurge: 7, maxUnavailable: 0}\n";
    let cwd = workdir(&[]);
    std::fs::create_dir(cwd.path().join("strategies")).unwrap();
    std::fs::write(cwd.path().join("strategies/rolling.yaml"), preset).unwrap();
    let app = workdir(&[("web.yaml", &manifest)]);
    let file = app.path().join("web.yaml").display().to_string();
    let plan = |dir: &std::path::Path| {
        let run = rollgate(dir, &["plan", "-f", &file, "--replicas", "10"], &[]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        run.stdout
    };
    // The current directory's strategies/ is ignored: the built-in preset.
    let out = plan(cwd.path());
    assert!(out.contains("builtin:rolling"), "{out}");
    // In a strategies/ folder beside the manifest: that file, from any directory.
    std::fs::create_dir(app.path().join("strategies")).unwrap();
    std::fs::write(app.path().join("strategies/rolling.yaml"), preset).unwrap();
    let out = plan(cwd.path());
    assert!(out.contains("strategies/rolling.yaml"), "{out}");
    assert!(out.contains("at most 17 instances"), "{out}");
    // Next to the manifest: that one first.
    std::fs::write(
        app.path().join("rolling.yaml"),
        "rolling: {maxSurge: 5, maxUnavailable: 0}\n",
    )
    .unwrap();
    let out = plan(std::path::Path::new("/"));
    assert!(out.contains("at most 15 instances"), "{out}");
}
