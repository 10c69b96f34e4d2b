//! Issue 15 §5: `rollgate apply -f web.yaml` (a bare file name, as in the README) then
//! `rollgate rollback web` failed with "target setup: reading client credentials from <state
//! dir>/pki/...": the parent of `web.yaml` is the empty path, so the manifest's relative paths were
//! stored relative and later resolved against the state dir. Every path of a stored manifest is
//! absolute now, whatever form `-f` took; an error reading one keeps its I/O error.

use std::path::{Path, PathBuf};

use crate::fleet::{APP, Fleet, text};
use crate::netns::root_or_skip;

/// The stored manifests' paths: the hosts target's auth files and artifact.
fn stored_paths(fleet: &Fleet) -> Vec<String> {
    let dir = fleet.state.join(APP).join("rollouts");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let hosts = &v["spec"]["target"]["hosts"];
        for p in [
            &hosts["auth"]["ca"],
            &hosts["auth"]["cert"],
            &hosts["auth"]["key"],
            &hosts["artifact"]["file"],
        ] {
            // A rollback's stored manifest names no artifact.
            if let Some(p) = p.as_str() {
                out.push(p.to_string());
            }
        }
    }
    out
}

#[test]
fn netns_rollback_after_apply_from_a_relative_manifest() {
    if !root_or_skip("netns_rollback_after_apply_from_a_relative_manifest") {
        return;
    }
    let fleet = Fleet::start(1);
    fleet.install("1.0.0");
    // The manifest's folder holds its credentials and artifacts; its paths are relative to it.
    // Nothing of the same names is beside the state dir or in the other working dirs, so a
    // path resolved against the wrong folder fails.
    let x = fleet.dir.join("x");
    let y = fleet.dir.join("y");
    std::fs::create_dir_all(x.join("pki")).unwrap();
    std::fs::create_dir_all(&y).unwrap();
    for f in ["ca.pem", "client-tests.pem", "client-tests-key.pem"] {
        std::fs::copy(fleet.pki.join(f), x.join("pki").join(f)).unwrap();
    }
    let forms: [(&str, PathBuf, String); 4] = [
        ("2.0.0", x.clone(), "web.yaml".into()),
        ("3.0.0", x.clone(), "./web.yaml".into()),
        ("4.0.0", y.clone(), "../x/web.yaml".into()),
        (
            "5.0.0",
            PathBuf::from("/"),
            x.join("web.yaml").display().to_string(),
        ),
    ];
    for (version, cwd, file) in &forms {
        let artifact = fleet.artifact(version, "");
        let name = artifact.file_name().unwrap().to_str().unwrap().to_string();
        std::fs::rename(&artifact, x.join(&name)).unwrap();
        let written = fleet.manifest(version, &artifact, "    rolling: {maxUnavailable: 1}\n", 10);
        let manifest = std::fs::read_to_string(&written)
            .unwrap()
            .replace(&artifact.display().to_string(), &name)
            .replace(&fleet.pki.display().to_string(), "pki");
        std::fs::remove_file(&written).unwrap();
        assert!(
            !manifest.contains(&fleet.dir.display().to_string()),
            "{manifest}"
        );
        std::fs::write(x.join("web.yaml"), manifest).unwrap();

        let out = fleet
            .rollgate(&["apply", "-f", file, "-o", "plain"])
            .current_dir(cwd)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "apply -f {file}: {}",
            text(&out)
        );
        fleet.assert_serving(version);

        // Every stored path is absolute and names the file beside the manifest.
        let paths = stored_paths(&fleet);
        assert!(paths.len() >= 4, "{paths:?}");
        for p in paths {
            let p = Path::new(&p);
            assert!(p.is_absolute(), "-f {file}: stored {p:?}");
            assert!(p.exists(), "-f {file}: stored {p:?} does not exist");
        }

        // From another folder, with no file at hand: the stored manifest is enough.
        let out = fleet
            .rollgate(&["rollback", APP, "-o", "plain"])
            .current_dir("/")
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "rollback after apply -f {file} (from {}): {}",
            cwd.display(),
            text(&out)
        );
        // Each rollback goes back to 1.0.0, where the next apply starts from.
        fleet.assert_serving("1.0.0");
    }

    // A credential gone: the error says which file and why.
    std::fs::remove_file(x.join("pki/client-tests-key.pem")).unwrap();
    let out = fleet
        .rollgate(&["rollback", APP, "-o", "plain"])
        .current_dir("/")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stderr.contains(&x.join("pki").display().to_string())
            && stderr.contains("No such file or directory"),
        "the error keeps the path and the I/O error: {}",
        text(&out)
    );
}
