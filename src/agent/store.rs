//! Crash-safe files: every write goes to a temp file, then is renamed over the target, so a reader
//! sees the old or the new content, never a torn one.
//!
//! Two strengths. [`write_atomic`] also fsyncs the file and its dir: for what must survive a power
//! cut (which version a slot runs, a staged version's metadata). [`write_atomic_volatile`] skips the
//! flushes: for what only needs to survive the *agent* dying (operation records, pid files). The page
//! cache outlives a killed process, and after a power cut the processes and operations those files
//! describe are gone too. Each flush costs about 2 ms on this project's disk, and an activation wrote
//! four such files, so this is most of an agent's time on the hot path.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A file that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Writes `bytes` to `path` atomically and durably: temp file in the same dir, fsync, rename, fsync dir.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write(path, bytes, true)
}

/// Writes `bytes` to `path` atomically (temp file, rename) without flushing it to disk: it survives
/// the agent being killed, not a power cut.
pub fn write_atomic_volatile(path: &Path, bytes: &[u8]) -> Result<()> {
    write(path, bytes, false)
}

fn write(path: &Path, bytes: &[u8], durable: bool) -> Result<()> {
    let err = |source| StoreError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    {
        let mut file = std::fs::File::create(&tmp).map_err(err)?;
        file.write_all(bytes).map_err(err)?;
        if durable {
            file.sync_all().map_err(err)?;
        }
    }
    std::fs::rename(&tmp, path).map_err(err)?;
    if durable {
        sync_dir(dir).map_err(err)?;
    }
    Ok(())
}

/// Serializes `value` as pretty JSON and writes it atomically and durably.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    write_atomic(path, &to_json(path, value)?)
}

/// [`write_json`] for records that need only survive the agent dying ([`write_atomic_volatile`]).
pub fn write_json_volatile<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    write_atomic_volatile(path, &to_json(path, value)?)
}

fn to_json<T: Serialize>(path: &Path, value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(value).map_err(|source| StoreError::Corrupt {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads JSON from `path`; `Ok(None)` when the file does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| StoreError::Corrupt {
                    path: path.to_path_buf(),
                    source,
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StoreError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Makes a rename or create inside `dir` durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_json(&path, &vec![1, 2, 3]).unwrap();
        write_json(&path, &vec![4]).unwrap();
        let back: Option<Vec<i32>> = read_json(&path).unwrap();
        assert_eq!(back, Some(vec![4]));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
        assert!(
            read_json::<Vec<i32>>(&dir.path().join("missing"))
                .unwrap()
                .is_none()
        );
    }
}
