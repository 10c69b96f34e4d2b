//! Crash-safe files: every write goes to a temp file, then is renamed over the target, so a reader
//! sees the old or the new content, never a torn one.
//!
//! Two strengths. [`write_atomic`] also fsyncs the file and its dir: for what must survive a power
//! cut (which version a slot runs, a staged version's metadata). [`write_atomic_volatile`] skips the
//! flushes: for what only needs to survive the *agent* dying (pid files). The page cache outlives a
//! killed process, and after a power cut the processes and operations those files describe are gone
//! too. Each flush costs about 2 ms on this project's disk, and an activation wrote four such files,
//! so this was most of an agent's time on the hot path.
//!
//! [`JsonLog`] is the volatile strength for records written often (operations): appended to one
//! file, with no temp file per write.

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
        // Agent state is the agent's alone (0600 from the start, not narrowed after).
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut file = opts.open(&tmp).map_err(err)?;
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

/// An append-only file of JSON records, one per line: for records written on the hot path, where
/// a temp file and a rename per write would create an inode each time (on a filesystem without a
/// journal, ext4 scans past every recently deleted inode to find a free one; with 200 agents on one
/// disk that was 11–21% of the agents' CPU during a wave, by `perf record -a`).
///
/// An append is one `write` of one whole line and is not flushed: like
/// [`write_atomic_volatile`], it survives the agent being killed, not a power cut. A line torn by a
/// power cut is skipped when the log is read; [`JsonLog::rewrite`] compacts it atomically and
/// durably.
#[derive(Debug)]
pub struct JsonLog {
    path: PathBuf,
    /// None once [`JsonLog::close`]d; the next append reopens it.
    file: Option<std::fs::File>,
    len: u64,
    lines: usize,
    base: usize,
}

impl JsonLog {
    /// Every whole, parseable record in the log at `path`, oldest first, and how many lines were
    /// skipped (torn, not a record, or longer than `max_line` bytes, which is not held in
    /// memory). A missing log is empty.
    pub fn read<T: DeserializeOwned>(path: &Path, max_line: usize) -> Result<(Vec<T>, usize)> {
        use std::io::BufRead;
        let err = |source| StoreError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(source) => return Err(err(source)),
        };
        let mut reader = std::io::BufReader::new(file);
        let mut records = Vec::new();
        let mut skipped = 0;
        let mut line = Vec::new();
        let mut too_long = false;
        loop {
            let buf = reader.fill_buf().map_err(err)?;
            if buf.is_empty() {
                break;
            }
            let (chunk, ends) = match buf.iter().position(|b| *b == b'\n') {
                Some(i) => (&buf[..i], Some(i + 1)),
                None => (buf, None),
            };
            if !too_long && line.len() + chunk.len() <= max_line {
                line.extend_from_slice(chunk);
            } else {
                too_long = true;
                line.clear();
            }
            let used = ends.unwrap_or(buf.len());
            reader.consume(used);
            if ends.is_some() {
                Self::take(&mut line, &mut too_long, &mut records, &mut skipped);
            }
        }
        Self::take(&mut line, &mut too_long, &mut records, &mut skipped);
        Ok((records, skipped))
    }

    fn take<T: DeserializeOwned>(
        line: &mut Vec<u8>,
        too_long: &mut bool,
        records: &mut Vec<T>,
        skipped: &mut usize,
    ) {
        if *too_long {
            *skipped += 1;
        } else if !line.is_empty() {
            match serde_json::from_slice(line) {
                Ok(r) => records.push(r),
                Err(_) => *skipped += 1,
            }
        }
        line.clear();
        *too_long = false;
    }

    /// Replaces the log at `path` with exactly `records` (temp file, fsync, rename) and opens it
    /// for appending.
    pub fn rewrite<'a, T: Serialize + 'a>(
        path: &Path,
        records: impl IntoIterator<Item = &'a T>,
    ) -> Result<JsonLog> {
        let mut bytes = Vec::new();
        let mut lines = 0;
        for r in records {
            bytes.extend(line(path, r)?);
            lines += 1;
        }
        write_atomic(path, &bytes)?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|source| StoreError::Write {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(JsonLog {
            path: path.to_path_buf(),
            file: Some(file),
            len: bytes.len() as u64,
            lines,
            base: lines,
        })
    }

    /// Appends `record` as one line. On failure the log is cut back to its last whole line.
    pub fn append<T: Serialize>(&mut self, record: &T) -> Result<()> {
        let bytes = line(&self.path, record)?;
        let err = |source| StoreError::Write {
            path: self.path.clone(),
            source,
        };
        let file = match &mut self.file {
            Some(f) => f,
            None => {
                let mut opts = std::fs::OpenOptions::new();
                opts.append(true).create(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
                self.file.insert(opts.open(&self.path).map_err(err)?)
            }
        };
        if let Err(source) = file.write_all(&bytes) {
            let _ = file.set_len(self.len);
            return Err(err(source));
        }
        self.len += bytes.len() as u64;
        self.lines += 1;
        Ok(())
    }

    /// Closes the append handle (before the file is replaced: Windows refuses to rename over a
    /// file that is open). The next append reopens it.
    pub fn close(&mut self) {
        self.file = None;
    }

    /// Where the log is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lines in the log: the ones it was last rewritten with and the ones appended since.
    pub fn lines(&self) -> usize {
        self.lines
    }

    /// Lines the log was last rewritten with.
    pub fn base(&self) -> usize {
        self.base
    }
}

fn line<T: Serialize>(path: &Path, record: &T) -> Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec(record).map_err(|source| StoreError::Corrupt {
        path: path.to_path_buf(),
        source,
    })?;
    bytes.push(b'\n');
    Ok(bytes)
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

    #[test]
    fn json_log_appends_whole_lines_skips_torn_ones_and_rewrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ops.log");
        assert_eq!(JsonLog::read::<Vec<i32>>(&path, 1024).unwrap(), (vec![], 0));
        let mut log = JsonLog::rewrite(&path, &[vec![1], vec![2, 3]]).unwrap();
        log.append(&vec![4]).unwrap();
        assert_eq!(log.lines(), 3);
        assert_eq!(
            JsonLog::read::<Vec<i32>>(&path, 1024).unwrap(),
            (vec![vec![1], vec![2, 3], vec![4]], 0)
        );
        drop(log);
        // A power cut mid-line: the torn tail is skipped, the rest is kept.
        let mut torn = std::fs::read(&path).unwrap();
        torn.extend(b"[5, 6");
        std::fs::write(&path, &torn).unwrap();
        let (records, skipped) = JsonLog::read::<Vec<i32>>(&path, 1024).unwrap();
        assert_eq!((records.len(), skipped), (3, 1));
        // A rewrite keeps exactly what it is given; appends go after it on a line of their own.
        let mut log = JsonLog::rewrite(&path, &records[1..]).unwrap();
        log.append(&vec![7]).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "[2,3]\n[4]\n[7]\n");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("ops.log")]);
    }
}
