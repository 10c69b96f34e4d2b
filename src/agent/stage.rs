//! Staging: receive an artifact (URL or upload), verify its sha256, unpack it beside the other
//! versions, and move it into `versions/<version>/` with one rename.

use std::path::{Path, PathBuf};

use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::api::{ArtifactKind, InstalledVersion, redact_url};
use super::archive::{self, ArchiveError};
use super::{now_unix_ms, store};

/// Metadata file written inside each version dir before it is renamed into place.
pub const VERSION_META: &str = ".rollgate-version.json";

/// Why staging failed. Nothing is installed when it does.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("sha256 must be 64 lowercase hex digits")]
    BadSha,
    #[error("downloading {url}")]
    Download {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("downloading {url}: HTTP {status}")]
    DownloadStatus { url: String, status: u16 },
    #[error("only http and https URLs can be staged, not {url}")]
    BadUrl { url: String },
    #[error("artifact host of {url} is not in allowedArtifactHosts")]
    HostNotAllowed { url: String },
    #[error("artifact is larger than the {limit}-byte limit")]
    TooLarge { limit: u64 },
    #[error("receiving the artifact failed: {0}")]
    Receive(String),
    #[error("sha256 mismatch: expected {expected}, got {actual}")]
    ShaMismatch { expected: String, actual: String },
    #[error("version {version} is already installed from a different artifact (sha256 {sha256})")]
    Conflict { version: String, sha256: String },
    #[error("artifact refused")]
    Archive(#[from] ArchiveError),
    #[error("staging I/O on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing version metadata")]
    Store(#[from] store::StoreError),
}

pub type Result<T, E = StageError> = std::result::Result<T, E>;

/// The on-disk layout of one service under the agent's data dir.
#[derive(Debug, Clone)]
pub struct ServiceDirs {
    pub root: PathBuf,
}

impl ServiceDirs {
    pub fn new(data_dir: &Path, service: &str) -> Self {
        ServiceDirs {
            root: data_dir.join("services").join(service),
        }
    }
    pub fn versions(&self) -> PathBuf {
        self.root.join("versions")
    }
    pub fn version(&self, version: &str) -> PathBuf {
        self.versions().join(version)
    }
    pub fn staging(&self) -> PathBuf {
        self.root.join("staging")
    }
    pub fn state_file(&self) -> PathBuf {
        self.root.join("state.json")
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn run(&self) -> PathBuf {
        self.root.join("run")
    }

    /// Creates the dirs and empties `staging/` (leftovers of an interrupted stage).
    pub fn prepare(&self) -> std::io::Result<()> {
        for d in [self.versions(), self.logs(), self.run()] {
            std::fs::create_dir_all(d)?;
        }
        let staging = self.staging();
        if staging.exists() {
            std::fs::remove_dir_all(&staging)?;
        }
        std::fs::create_dir_all(staging)
    }
}

/// Checks a sha256 text.
pub fn check_sha(sha: &str) -> Result<()> {
    if sha.len() == 64
        && sha
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(StageError::BadSha)
    }
}

/// Writes `stream` to `path`, hashing as it goes; fails past `limit` bytes.
pub async fn receive<S, B, E>(mut stream: S, path: &Path, limit: u64) -> Result<(String, u64)>
where
    S: Stream<Item = std::result::Result<B, E>> + Unpin,
    B: AsRef<[u8]>,
    E: std::fmt::Display,
{
    let io = |source| StageError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = tokio::fs::File::create(path).await.map_err(io)?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| StageError::Receive(e.to_string()))?;
        let chunk = chunk.as_ref();
        size += chunk.len() as u64;
        if size > limit {
            return Err(StageError::TooLarge { limit });
        }
        hasher.update(chunk);
        file.write_all(chunk).await.map_err(io)?;
    }
    file.sync_all().await.map_err(io)?;
    Ok((hex::encode(hasher.finalize()), size))
}

/// Checks that `url` is http(s) and, with an allowlist, names an allowed host (`host` or
/// `host:port`, case-insensitive).
pub fn check_url(url: &str, allowed_hosts: Option<&[String]>) -> Result<()> {
    let bad = || StageError::BadUrl {
        url: redact_url(url),
    };
    let parsed = reqwest::Url::parse(url).map_err(|_| bad())?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(bad());
    }
    if let Some(allowed) = allowed_hosts {
        let host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
        let port = parsed.port_or_known_default();
        let ok = allowed.iter().any(|a| {
            let a = a.to_ascii_lowercase();
            a == host || port.is_some_and(|p| a == format!("{host}:{p}"))
        });
        if !ok {
            return Err(StageError::HostNotAllowed {
                url: redact_url(url),
            });
        }
    }
    Ok(())
}

/// Downloads `url` to `path`, hashing as it goes. Redirects are followed only to URLs that
/// pass [`check_url`] too.
pub async fn download(
    url: &str,
    path: &Path,
    limit: u64,
    allowed_hosts: Option<&[String]>,
) -> Result<(String, u64)> {
    check_url(url, allowed_hosts)?;
    // Errors name the URL without its credentials or query (a presigned URL's signature), and
    // reqwest's own errors, which would quote it whole, without it.
    let err = |source: reqwest::Error| StageError::Download {
        url: redact_url(url),
        source: source.without_url(),
    };
    let allowed: Option<Vec<String>> = allowed_hosts.map(<[String]>::to_vec);
    let redirects = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 10 {
            attempt.error("too many redirects")
        } else if let Err(e) = check_url(attempt.url().as_str(), allowed.as_deref()) {
            attempt.error(e)
        } else {
            attempt.follow()
        }
    });
    let resp = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(30))
        .redirect(redirects)
        .build()
        .map_err(err)?
        .get(url)
        .send()
        .await
        .map_err(err)?;
    if !resp.status().is_success() {
        return Err(StageError::DownloadStatus {
            url: redact_url(url),
            status: resp.status().as_u16(),
        });
    }
    if let Some(len) = resp.content_length()
        && len > limit
    {
        return Err(StageError::TooLarge { limit });
    }
    receive(resp.bytes_stream(), path, limit).await
}

/// Reads the metadata of an installed version.
pub fn read_meta(dirs: &ServiceDirs, version: &str) -> Option<InstalledVersion> {
    store::read_json(&dirs.version(version).join(VERSION_META))
        .ok()
        .flatten()
}

/// Installed versions, oldest staged first.
pub fn installed(dirs: &ServiceDirs) -> Vec<InstalledVersion> {
    let mut out: Vec<InstalledVersion> = std::fs::read_dir(dirs.versions())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| read_meta(dirs, &e.file_name().to_string_lossy()))
        .collect();
    out.sort_by(|a, b| (a.staged_unix_ms, &a.version).cmp(&(b.staged_unix_ms, &b.version)));
    out
}

/// Verifies and installs a received artifact as `version` (blocking: run off the runtime).
///
/// Re-staging the same version with the same sha256 is a no-op; with another sha256 it fails.
#[allow(clippy::too_many_arguments)]
pub fn install(
    dirs: &ServiceDirs,
    version: &str,
    artifact: &Path,
    expected_sha: &str,
    actual_sha: &str,
    kind: Option<ArtifactKind>,
    binary_name: &str,
    caps: archive::Caps,
) -> Result<InstalledVersion> {
    if expected_sha != actual_sha {
        return Err(StageError::ShaMismatch {
            expected: expected_sha.to_string(),
            actual: actual_sha.to_string(),
        });
    }
    if let Some(existing) = read_meta(dirs, version) {
        if existing.sha256 == actual_sha {
            return Ok(existing);
        }
        return Err(StageError::Conflict {
            version: version.to_string(),
            sha256: existing.sha256,
        });
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StageError::Io { path, source }
    };
    let kind = match kind {
        Some(k) => k,
        None => {
            let mut head = [0u8; 8];
            let n = std::io::Read::read(
                &mut std::fs::File::open(artifact).map_err(io(artifact))?,
                &mut head,
            )
            .map_err(io(artifact))?;
            archive::detect(&head[..n])
        }
    };
    let tmp = dirs
        .staging()
        .join(format!("{version}.{}.unpack", now_unix_ms()));
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let result = (|| {
        archive::unpack(kind, artifact, &tmp, binary_name, caps)?;
        let meta = InstalledVersion {
            version: version.to_string(),
            sha256: actual_sha.to_string(),
            staged_unix_ms: now_unix_ms(),
        };
        store::write_json(&tmp.join(VERSION_META), &meta)?;
        let dest = dirs.version(version);
        std::fs::create_dir_all(dirs.versions()).map_err(io(&dest))?;
        std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
        store::sync_dir(&dirs.versions()).map_err(io(&dest))?;
        Ok(meta)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// Removes an installed version: renamed away first so it vanishes at once.
pub fn remove_version(dirs: &ServiceDirs, version: &str) -> std::io::Result<()> {
    let trash = dirs
        .staging()
        .join(format!("{version}.{}.trash", now_unix_ms()));
    std::fs::create_dir_all(dirs.staging())?;
    std::fs::rename(dirs.version(version), &trash)?;
    store::sync_dir(&dirs.versions())?;
    std::fs::remove_dir_all(trash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    #[test]
    fn binary_install_is_idempotent_and_conflicts_on_other_sha() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = ServiceDirs::new(dir.path(), "web");
        dirs.prepare().unwrap();
        let art = dir.path().join("art");
        std::fs::write(&art, b"#!/bin/sh\necho hi\n").unwrap();
        let s = sha(b"#!/bin/sh\necho hi\n");
        let first = install(&dirs, "v1", &art, &s, &s, None, "app", Default::default()).unwrap();
        assert!(dirs.version("v1").join("app").exists());
        let again = install(&dirs, "v1", &art, &s, &s, None, "app", Default::default()).unwrap();
        assert_eq!(first, again);
        let other = sha(b"x");
        let e = install(
            &dirs,
            "v1",
            &art,
            &other,
            &other,
            None,
            "app",
            Default::default(),
        )
        .unwrap_err();
        assert!(matches!(e, StageError::Conflict { .. }), "{e}");
        assert_eq!(installed(&dirs).len(), 1);
    }

    #[test]
    fn sha_mismatch_installs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = ServiceDirs::new(dir.path(), "web");
        dirs.prepare().unwrap();
        let art = dir.path().join("art");
        std::fs::write(&art, b"data").unwrap();
        let e = install(
            &dirs,
            "v1",
            &art,
            &sha(b"other"),
            &sha(b"data"),
            None,
            "app",
            Default::default(),
        )
        .unwrap_err();
        assert!(matches!(e, StageError::ShaMismatch { .. }));
        assert!(!dirs.version("v1").exists());
        assert_eq!(std::fs::read_dir(dirs.staging()).unwrap().count(), 0);
    }

    #[test]
    fn artifact_urls_must_be_http_and_on_the_allowlist() {
        assert!(check_url("https://repo.example/a.tgz", None).is_ok());
        for url in [
            "file:///etc/passwd",
            "ftp://repo.example/a.tgz",
            "FILE:///etc/passwd",
            "http://",
            "not a url",
        ] {
            assert!(
                matches!(check_url(url, None), Err(StageError::BadUrl { .. })),
                "{url}"
            );
        }
        let allowed = vec!["Repo.Example".to_string(), "127.0.0.1:8080".to_string()];
        let allowed = Some(allowed.as_slice());
        assert!(check_url("https://repo.example/a.tgz", allowed).is_ok());
        assert!(check_url("http://127.0.0.1:8080/a", allowed).is_ok());
        for url in [
            "http://127.0.0.1:8081/a",
            "https://evil.example/a.tgz",
            "https://repo.example.evil/a",
            "https://repo.example@evil.example/a",
        ] {
            assert!(
                matches!(
                    check_url(url, allowed),
                    Err(StageError::HostNotAllowed { .. })
                ),
                "{url}"
            );
        }
    }

    #[test]
    fn sha_text_is_checked() {
        assert!(check_sha(&"a".repeat(64)).is_ok());
        assert!(check_sha(&"A".repeat(64)).is_err());
        assert!(check_sha("abc").is_err());
    }
}
