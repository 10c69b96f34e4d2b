//! The store: the state dir's files per app (journal, lock, controls, manifests), fsynced appends,
//! and compaction.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::event::RecordRef;
use super::{Actor, Compacted, Control, Event, Outcome, Record, StrategyKind, history, now_ms};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state store {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{app} is locked by {holder}: another rollout of it is running (remove {path} only if that process is gone)"
    )]
    Locked {
        app: String,
        holder: String,
        path: String,
    },
    #[error("journal {path} line {line} is corrupt: {message}")]
    Corrupt {
        path: String,
        line: usize,
        message: String,
    },
}

pub type Result<T, E = StateError> = std::result::Result<T, E>;

/// Rung each time this process appends a control request (a team-state loop copying one from
/// the cluster or etcd), so a run waiting at a pause acts on it at once.
pub fn controls_sent() -> &'static tokio::sync::Notify {
    static SENT: tokio::sync::Notify = tokio::sync::Notify::const_new();
    &SENT
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The state dir for all apps.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    pub fn open_default() -> Self {
        let root = std::env::var_os("ROLLGATE_STATE")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("XDG_STATE_HOME").map(|p| PathBuf::from(p).join("rollgate"))
            })
            .or_else(|| {
                std::env::var_os("HOME").map(|p| PathBuf::from(p).join(".local/state/rollgate"))
            })
            .unwrap_or_else(|| PathBuf::from(".rollgate-state"));
        Store { root }
    }

    pub fn at(root: impl Into<PathBuf>) -> Self {
        Store { root: root.into() }
    }

    pub fn app_dir(&self, app: &str) -> PathBuf {
        self.root.join(app)
    }

    /// Where the state dir is.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The apps with a journal here, by name; none when the state dir does not exist yet.
    pub fn apps(&self) -> Result<Vec<String>> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&self.root)(e)),
        };
        let mut apps = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io(&self.root))?;
            if entry.path().join("journal.jsonl").is_file() {
                apps.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        apps.sort();
        Ok(apps)
    }

    fn ensure(&self, app: &str) -> Result<PathBuf> {
        let dir = self.app_dir(app);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        Ok(dir)
    }

    /// Takes the app's lock, or says who holds it.
    pub fn lock(&self, app: &str, actor: &Actor) -> Result<Lock> {
        let dir = self.ensure(app)?;
        let path = dir.join("lock");
        let holder = format!("{actor} pid {} since {}", std::process::id(), now_ms());
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut f) => {
                // Counted before anything slow (the fsyncs, the compaction): whoever sees this
                // lock and sends a request afterwards is talking to this holder's run.
                let controls_at_lock = self.control_count(app);
                let lock = Lock {
                    path: path.clone(),
                    controls: dir.join("control.jsonl"),
                    controls_at_lock,
                };
                f.write_all(holder.as_bytes())
                    .and_then(|()| f.sync_all())
                    .map_err(io(&path))?;
                sync_dir(&dir);
                // The lock holder is the only writer: the one moment a rewrite is safe.
                if let Err(e) = self.compact(app, LOCAL_KEEP_ROLLOUTS) {
                    tracing::warn!(app, error = %e, "journal compaction skipped");
                }
                Ok(lock)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                // A lock left by a process that is gone on this host is stale: take it over.
                if let Some(pid) = stale_pid(&text, &actor.host) {
                    tracing::warn!(app, pid, "taking over a stale lock");
                    std::fs::remove_file(&path).map_err(io(&path))?;
                    return self.lock(app, actor);
                }
                Err(StateError::Locked {
                    app: app.into(),
                    holder: describe_holder(&text),
                    path: path.display().to_string(),
                })
            }
            Err(e) => Err(io(&path)(e)),
        }
    }

    pub fn journal(&self, app: &str) -> Result<Journal> {
        let dir = self.ensure(app)?;
        let path = dir.join("journal.jsonl");
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .map_err(io(&path))?;
        cut_torn_tail(&file).map_err(io(&path))?;
        Ok(Journal { path, file })
    }

    /// Every record of an app's journal, in order. A torn last line (a crash mid-write) is ignored.
    pub fn read(&self, app: &str) -> Result<Vec<Record>> {
        read_records(&self.app_dir(app).join("journal.jsonl"))
    }

    /// What compaction has folded away from an app's journal so far, if it ever ran.
    pub fn compacted(&self, app: &str) -> Result<Option<Compacted>> {
        let path = self.app_dir(app).join("journal.jsonl");
        let first = match File::open(&path) {
            Ok(f) => BufReader::new(f)
                .lines()
                .next()
                .transpose()
                .map_err(io(&path))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(&path)(e)),
        };
        Ok(first.as_deref().and_then(parse_header))
    }

    /// Rewrites the app's journal when it holds more than `2 * keep` finished rollouts: it keeps
    /// every record of the last `keep` finished rollouts, of any unfinished one, and of the last
    /// successful one (what `rollgate rollback` returns from); the rest are folded into a
    /// [`Compacted`] header line and their stored manifests deleted (`control.jsonl` is trimmed
    /// when the lock is released: see [`Lock`]). Each file is replaced atomically (temp, fsync, rename, dir fsync), so a
    /// crash leaves the old file or the new one. Call it only while holding the app's lock.
    pub fn compact(&self, app: &str, keep: usize) -> Result<Option<Compacted>> {
        let dir = self.app_dir(app);
        let path = dir.join("journal.jsonl");
        let (header, lines) = read_lines(&path)?;
        let records = parse_lines(&path, &lines)?;
        let all = history(&records);
        let finished = all.iter().filter(|r| r.outcome.is_some()).count();
        if finished <= keep.saturating_mul(2) {
            return Ok(None);
        }
        let mut kept: std::collections::HashSet<&str> = all
            .iter()
            .filter(|r| r.outcome.is_some())
            .rev()
            .take(keep)
            .chain(all.iter().filter(|r| r.outcome.is_none()))
            .chain(all.iter().rev().find(|r| {
                r.outcome == Some(Outcome::Succeeded) && r.strategy != StrategyKind::Rollback
            }))
            .map(|r| r.id.as_str())
            .collect();
        let mut summary = header.unwrap_or_default();
        for r in all.iter().filter(|r| !kept.contains(r.id.as_str())) {
            summary.add(r);
        }
        let mut text = serde_json::to_string(&Header {
            compacted: summary.clone(),
        })
        .expect("a header serializes");
        text.push('\n');
        // Records are kept byte for byte; a torn last line is dropped.
        for ((_, line), record) in lines.iter().zip(&records) {
            if kept.contains(record.event.rollout()) {
                text.push_str(line);
                text.push('\n');
            }
        }
        replace(&path, text.as_bytes())?;
        // Manifests of rollouts the journal no longer holds (and temp files a crash left).
        let rollouts = dir.join("rollouts");
        kept.insert("");
        if let Ok(entries) = std::fs::read_dir(&rollouts) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let id = name.strip_suffix(".json").unwrap_or("");
                if !kept.contains(id) || name.starts_with('.') {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
            sync_dir(&rollouts);
        }
        Ok(Some(summary))
    }

    /// Replaces the app's journal with `records` (atomically), keeping its compaction header: for
    /// a caller that merges journals (the team state in the cluster). Hold the app's lock.
    pub fn replace_records(&self, app: &str, records: &[Record]) -> Result<()> {
        let path = self.ensure(app)?.join("journal.jsonl");
        let mut text = String::new();
        if let Some(compacted) = self.compacted(app)? {
            text.push_str(
                &serde_json::to_string(&Header { compacted }).expect("a header serializes"),
            );
            text.push('\n');
        }
        text.push_str(&jsonl(records));
        replace(&path, text.as_bytes())
    }

    /// Keeps `records` aside in the app's dir as `<name>` (JSON lines, written atomically): records
    /// a journal merge set aside, say.
    pub fn set_aside(&self, app: &str, name: &str, records: &[Record]) -> Result<()> {
        let path = self.ensure(app)?.join(name);
        replace(&path, jsonl(records).as_bytes())
    }

    /// Keeps the resolved manifest of a rollout, so `resume`, `promote` and `rollback` need no files.
    pub fn save_manifest(
        &self,
        app: &str,
        rollout: &str,
        manifest: &crate::spec::Rollout,
    ) -> Result<()> {
        let dir = self.ensure(app)?.join("rollouts");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = dir.join(format!("{rollout}.json"));
        let tmp = dir.join(format!(".{rollout}.json.tmp"));
        let text = serde_json::to_vec_pretty(manifest).expect("a manifest serializes");
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(io(&path))?;
        sync_dir(&dir);
        Ok(())
    }

    pub fn load_manifest(&self, app: &str, rollout: &str) -> Result<crate::spec::Rollout> {
        let path = self
            .app_dir(app)
            .join("rollouts")
            .join(format!("{rollout}.json"));
        let text = std::fs::read(&path).map_err(io(&path))?;
        serde_json::from_slice(&text).map_err(|e| StateError::Corrupt {
            path: path.display().to_string(),
            line: e.line(),
            message: e.to_string(),
        })
    }

    /// Appends a control request (promote, pause, abort) for a running rollout to pick up.
    pub fn send_control(&self, app: &str, control: &Control) -> Result<()> {
        let dir = self.ensure(app)?;
        let path = dir.join("control.jsonl");
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        let mut line = serde_json::to_string(control).expect("control serializes");
        line.push('\n');
        f.write_all(line.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(io(&path))?;
        controls_sent().notify_waiters();
        Ok(())
    }

    /// Control requests from index `from` on.
    pub fn controls(&self, app: &str, from: usize) -> Vec<Control> {
        let path = self.app_dir(app).join("control.jsonl");
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Vec::new();
        };
        text.lines()
            .skip(from)
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Who holds the app's lock, if a live process does (`host` is this machine's name: a lock
    /// left by a process that is gone from it does not count; one from another machine does).
    pub fn holder(&self, app: &str, host: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.app_dir(app).join("lock")).ok()?;
        stale_pid(&text, host)
            .is_none()
            .then(|| describe_holder(&text))
    }

    pub fn control_count(&self, app: &str) -> usize {
        let path = self.app_dir(app).join("control.jsonl");
        std::fs::read_to_string(&path).map_or(0, |t| t.lines().count())
    }
}

fn describe_holder(text: &str) -> String {
    let mut parts = text.rsplitn(2, " since ");
    let since = parts.next().and_then(|s| s.trim().parse::<u64>().ok());
    let who = parts.next().unwrap_or(text);
    match since {
        Some(ms) => format!("{who}, for {}s", now_ms().saturating_sub(ms) / 1000),
        None => text.trim().to_string(),
    }
}

fn stale_pid(text: &str, host: &str) -> Option<u32> {
    // "<user>@<host>[ (ci)] pid <pid> since <ms>"
    let at_host = text.split_whitespace().next()?.split('@').nth(1)?;
    if at_host != host {
        return None;
    }
    let pid: u32 = text
        .split(" pid ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let alive = Path::new(&format!("/proc/{pid}")).exists() || !Path::new("/proc/self").exists();
    (!alive).then_some(pid)
}

/// Drops a torn last line (a crash mid-write; it was never acknowledged), so the next record starts
/// on a line of its own instead of making the torn one a corrupt line in the middle.
fn cut_torn_tail(file: &File) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    let mut reader = file;
    let mut at = len;
    let mut buf = [0u8; 4096];
    loop {
        let start = at.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(at - start) as usize];
        reader.seek(SeekFrom::Start(start))?;
        reader.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            let end = start + i as u64 + 1;
            if end != len {
                file.set_len(end)?;
                file.sync_data()?;
            }
            return Ok(());
        }
        if start == 0 {
            file.set_len(0)?;
            return file.sync_data();
        }
        at = start;
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// How many finished rollouts a compacted journal keeps in full (it compacts at twice this).
pub const LOCAL_KEEP_ROLLOUTS: usize = 50;

/// The first line of a compacted journal: `{"compacted": {...}}`.
#[derive(Serialize, Deserialize)]
struct Header {
    compacted: Compacted,
}

fn parse_header(line: &str) -> Option<Compacted> {
    if !line.starts_with("{\"compacted\"") {
        return None;
    }
    serde_json::from_str::<Header>(line)
        .ok()
        .map(|h| h.compacted)
}

/// Records as JSON lines.
fn jsonl(records: &[Record]) -> String {
    records
        .iter()
        .map(|r| serde_json::to_string(r).expect("records serialize") + "\n")
        .collect()
}

/// Replaces `path` with `bytes` atomically: temp file, fsync, rename, fsync of the dir.
fn replace(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{}.tmp", name.unwrap_or_default()));
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(io(path))?;
    sync_dir(dir);
    Ok(())
}

/// Non-empty journal lines with their line numbers (for errors by position in the file).
type Lines = Vec<(usize, String)>;

/// The journal's compaction header (if any) and its other non-empty lines.
fn read_lines(path: &Path) -> Result<(Option<Compacted>, Lines)> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((None, Vec::new())),
        Err(e) => return Err(io(path)(e)),
    };
    let mut header = None;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io(path))?;
        if i == 0
            && let Some(h) = parse_header(&line)
        {
            header = Some(h);
            continue;
        }
        if !line.trim().is_empty() {
            out.push((i + 1, line));
        }
    }
    Ok((header, out))
}

/// Parses journal lines; a torn last line (a crash mid-write) is dropped, a corrupt earlier one is
/// an error naming its line.
fn parse_lines(path: &Path, lines: &[(usize, String)]) -> Result<Vec<Record>> {
    let mut out = Vec::with_capacity(lines.len());
    for (i, (number, line)) in lines.iter().enumerate() {
        match serde_json::from_str(line) {
            Ok(r) => out.push(r),
            Err(_) if i + 1 == lines.len() => break,
            Err(e) => {
                return Err(StateError::Corrupt {
                    path: path.display().to_string(),
                    line: *number,
                    message: e.to_string(),
                });
            }
        }
    }
    Ok(out)
}

fn read_records(path: &Path) -> Result<Vec<Record>> {
    let (_, lines) = read_lines(path)?;
    parse_lines(path, &lines)
}

/// A held lock; dropping it releases it.
#[derive(Debug)]
pub struct Lock {
    path: PathBuf,
    controls: PathBuf,
    controls_at_lock: usize,
}

impl Lock {
    /// How many control requests `control.jsonl` held when the lock was taken: the ones after
    /// are for the run under this lock, however long it takes to start.
    pub fn controls_at_lock(&self) -> usize {
        self.controls_at_lock
    }
}

impl Drop for Lock {
    /// Trims `control.jsonl` to its last [`LOCAL_KEEP_ROLLOUTS`] requests (the run is over: the
    /// file's line numbers no longer matter), then frees the lock.
    fn drop(&mut self) {
        if let Ok(text) = std::fs::read_to_string(&self.controls) {
            let all: Vec<&str> = text.lines().collect();
            if all.len() > LOCAL_KEEP_ROLLOUTS {
                let mut rest = all[all.len() - LOCAL_KEEP_ROLLOUTS..].join("\n");
                rest.push('\n');
                if let Err(e) = replace(&self.controls, rest.as_bytes()) {
                    tracing::warn!(error = %e, "control requests not trimmed");
                }
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// An open journal; every append is fsynced before it returns.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
}

impl Journal {
    pub fn append(&mut self, event: Event) -> Result<()> {
        self.append_all(std::iter::once(event))
    }

    /// Appends several events with one write and one fsync: a wave's worth of changes costs one
    /// disk flush, not one per instance.
    pub fn append_all(&mut self, events: impl IntoIterator<Item = Event>) -> Result<()> {
        let at_ms = now_ms();
        let mut text = String::new();
        let events: Vec<Event> = events.into_iter().collect();
        for event in &events {
            text.push_str(
                &serde_json::to_string(&RecordRef { at_ms, event }).expect("events serialize"),
            );
            text.push('\n');
        }
        if text.is_empty() {
            return Ok(());
        }
        self.file
            .write_all(text.as_bytes())
            .and_then(|()| self.file.sync_data())
            .map_err(io(&self.path))?;
        for event in &events {
            crate::faults::journaled(event.kind(), event.rollout(), event.instance());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
