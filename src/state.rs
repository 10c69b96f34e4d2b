//! The embedded state store: an append-only, fsynced journal per app, a lock file, and history.
//!
//! Layout under the state dir (`$ROLLGATE_STATE`, else `$XDG_STATE_HOME/rollgate`, else
//! `~/.local/state/rollgate`): `<app>/journal.jsonl`, `<app>/lock`, `<app>/control.jsonl`,
//! `<app>/rollouts/<id>.json`.
//!
//! The store stays bounded: whoever takes the lock compacts the app's journal once it holds more
//! than twice [`KEEP_ROLLOUTS`] finished rollouts (see [`Store::compact`]).

pub mod cluster;

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

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

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.display().to_string(),
        source,
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Who is acting: the OS user, the host, and a CI identity when one is found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Actor {
    pub user: String,
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci: Option<String>,
}

impl Actor {
    /// Reads the identity from the environment (USER, and common CI variables).
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let user = var("ROLLGATE_USER")
            .or_else(|| var("USER"))
            .or_else(|| var("USERNAME"))
            .unwrap_or_else(|| "unknown".into());
        let host = var("HOSTNAME")
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|s| s.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let ci = if let Some(run) = var("GITHUB_RUN_ID") {
            Some(format!(
                "github-actions {} run {run} by {}",
                var("GITHUB_REPOSITORY").unwrap_or_default(),
                var("GITHUB_ACTOR").unwrap_or_default()
            ))
        } else if let Some(job) = var("CI_JOB_ID") {
            Some(format!(
                "gitlab {} job {job} by {}",
                var("CI_PROJECT_PATH").unwrap_or_default(),
                var("GITLAB_USER_LOGIN").unwrap_or_default()
            ))
        } else if let Some(build) = var("BUILD_TAG") {
            Some(format!("jenkins {build}"))
        } else if let Some(build) = var("BUILDKITE_BUILD_ID") {
            Some(format!("buildkite {build}"))
        } else if let Some(build) = var("CIRCLE_BUILD_NUM") {
            Some(format!("circleci {build}"))
        } else {
            var("CI").map(|_| "ci".to_string())
        };
        Actor { user, host, ci }
    }
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.user, self.host)?;
        if let Some(ci) = &self.ci {
            write!(f, " ({ci})")?;
        }
        Ok(())
    }
}

/// One journal record. Records are only appended, each fsynced before the action it announces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "camelCase")]
pub enum Event {
    #[serde(rename_all = "camelCase")]
    Started {
        rollout: String,
        from: Option<String>,
        to: String,
        strategy: String,
        actor: Actor,
        steps: usize,
    },
    #[serde(rename_all = "camelCase")]
    StepStarted {
        rollout: String,
        step: usize,
        kind: String,
        note: String,
    },
    #[serde(rename_all = "camelCase")]
    InstanceChanging {
        rollout: String,
        instance: String,
        version: String,
    },
    #[serde(rename_all = "camelCase")]
    InstanceChanged {
        rollout: String,
        instance: String,
        version: String,
        ok: bool,
        detail: String,
    },
    #[serde(rename_all = "camelCase")]
    Gate {
        rollout: String,
        step: usize,
        check: String,
        passed: bool,
        detail: String,
    },
    #[serde(rename_all = "camelCase")]
    StepDone {
        rollout: String,
        step: usize,
        millis: u64,
    },
    #[serde(rename_all = "camelCase")]
    Paused {
        rollout: String,
        step: usize,
        reason: String,
    },
    #[serde(rename_all = "camelCase")]
    Promoted {
        rollout: String,
        step: usize,
        actor: Actor,
        full: bool,
    },
    #[serde(rename_all = "camelCase")]
    RollbackStarted {
        rollout: String,
        reason: String,
        to: String,
    },
    #[serde(rename_all = "camelCase")]
    Finished {
        rollout: String,
        outcome: Outcome,
        detail: String,
    },
}

impl Event {
    /// The rollout the event belongs to.
    pub fn rollout(&self) -> &str {
        match self {
            Event::Started { rollout, .. }
            | Event::StepStarted { rollout, .. }
            | Event::InstanceChanging { rollout, .. }
            | Event::InstanceChanged { rollout, .. }
            | Event::Gate { rollout, .. }
            | Event::StepDone { rollout, .. }
            | Event::Paused { rollout, .. }
            | Event::Promoted { rollout, .. }
            | Event::RollbackStarted { rollout, .. }
            | Event::Finished { rollout, .. } => rollout,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    Succeeded,
    RolledBack,
    Failed,
    Aborted,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::Succeeded => "succeeded",
            Outcome::RolledBack => "rolled back",
            Outcome::Failed => "failed",
            Outcome::Aborted => "aborted",
        })
    }
}

/// A journal line: the event and when it was written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub at_ms: u64,
    #[serde(flatten)]
    pub event: Event,
}

/// A journal line being written, borrowing its event.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RecordRef<'a> {
    at_ms: u64,
    #[serde(flatten)]
    event: &'a Event,
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
                f.write_all(holder.as_bytes())
                    .and_then(|()| f.sync_all())
                    .map_err(io(&path))?;
                sync_dir(&dir);
                let lock = Lock { path };
                // The lock holder is the only writer: the one moment a rewrite is safe.
                if let Err(e) = self.compact(app, KEEP_ROLLOUTS) {
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
    /// [`Compacted`] header line and their stored manifests deleted. `control.jsonl` keeps its last
    /// `keep` requests. Each file is replaced atomically (temp, fsync, rename, dir fsync), so a
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
            .chain(
                all.iter()
                    .rev()
                    .find(|r| r.outcome == Some(Outcome::Succeeded) && r.strategy != "rollback"),
            )
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
        let controls = dir.join("control.jsonl");
        if let Ok(text) = std::fs::read_to_string(&controls) {
            let all: Vec<&str> = text.lines().collect();
            if all.len() > keep {
                let mut rest = all[all.len() - keep..].join("\n");
                rest.push('\n');
                replace(&controls, rest.as_bytes())?;
            }
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
            .map_err(io(&path))
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
pub const KEEP_ROLLOUTS: usize = 50;

/// What compaction folded away: counts of the rollouts whose records are gone, by outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Compacted {
    pub rollouts: u64,
    pub succeeded: u64,
    pub rolled_back: u64,
    pub failed: u64,
    pub aborted: u64,
    /// When the oldest folded rollout started, and the newest one's id and start.
    pub first_ms: Option<u64>,
    pub last_ms: Option<u64>,
    pub last_id: Option<String>,
}

impl Compacted {
    fn add(&mut self, r: &RolloutSummary) {
        self.rollouts += 1;
        match r.outcome {
            Some(Outcome::Succeeded) => self.succeeded += 1,
            Some(Outcome::RolledBack) => self.rolled_back += 1,
            Some(Outcome::Failed) => self.failed += 1,
            Some(Outcome::Aborted) => self.aborted += 1,
            None => {}
        }
        self.first_ms = Some(self.first_ms.map_or(r.started_ms, |f| f.min(r.started_ms)));
        if self.last_ms.is_none_or(|l| r.started_ms >= l) {
            self.last_ms = Some(r.started_ms);
            self.last_id = Some(r.id.clone());
        }
    }
}

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
}

impl Drop for Lock {
    fn drop(&mut self) {
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
        crate::faults::journaled(&events);
        Ok(())
    }
}

/// Requests from other `rollgate` invocations to a running rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "camelCase")]
pub enum Control {
    Promote { actor: Actor, full: bool },
    Pause { actor: Actor },
    Resume { actor: Actor },
    Abort { actor: Actor },
}

/// One rollout as told by the journal.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSummary {
    pub id: String,
    pub started_ms: u64,
    pub finished_ms: Option<u64>,
    pub from: Option<String>,
    pub to: String,
    pub strategy: String,
    pub actor: Option<Actor>,
    pub steps_total: usize,
    pub steps: Vec<StepSummary>,
    pub outcome: Option<Outcome>,
    pub detail: String,
    pub paused: Option<String>,
    pub rollback: Option<String>,
    /// Who promoted, at which step.
    pub approvals: Vec<Approval>,
    /// Instance -> version it was last seen changing to, and whether that worked.
    pub instances: Vec<(String, String, bool)>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    pub step: usize,
    pub actor: Actor,
    pub at_ms: u64,
}

impl RolloutSummary {
    /// Distinct people (by user name) who approved `step`.
    pub fn approvers(&self, step: usize) -> std::collections::BTreeSet<&str> {
        self.approvals
            .iter()
            .filter(|a| a.step == step)
            .map(|a| a.actor.user.as_str())
            .collect()
    }
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepSummary {
    pub step: usize,
    pub kind: String,
    pub note: String,
    pub millis: Option<u64>,
    pub gates: Vec<String>,
}

/// Folds a journal into one summary per rollout, oldest first.
pub fn history(records: &[Record]) -> Vec<RolloutSummary> {
    let mut out: Vec<RolloutSummary> = Vec::new();
    let find = |out: &mut Vec<RolloutSummary>, id: &str| out.iter().rposition(|r| r.id == id);
    for r in records {
        match &r.event {
            Event::Started {
                rollout,
                from,
                to,
                strategy,
                actor,
                steps,
            } => out.push(RolloutSummary {
                id: rollout.clone(),
                started_ms: r.at_ms,
                from: from.clone(),
                to: to.clone(),
                strategy: strategy.clone(),
                actor: Some(actor.clone()),
                steps_total: *steps,
                ..Default::default()
            }),
            Event::StepStarted {
                rollout,
                step,
                kind,
                note,
            } => {
                if let Some(i) = find(&mut out, rollout) {
                    out[i].paused = None;
                    out[i].steps.push(StepSummary {
                        step: *step,
                        kind: kind.clone(),
                        note: note.clone(),
                        ..Default::default()
                    });
                }
            }
            Event::InstanceChanging { .. } => {}
            Event::InstanceChanged {
                rollout,
                instance,
                version,
                ok,
                ..
            } => {
                if let Some(i) = find(&mut out, rollout) {
                    let inst = &mut out[i].instances;
                    inst.retain(|(name, ..)| name != instance);
                    inst.push((instance.clone(), version.clone(), *ok));
                }
            }
            Event::Gate {
                rollout,
                check,
                passed,
                detail,
                ..
            } => {
                if let Some(i) = find(&mut out, rollout)
                    && let Some(s) = out[i].steps.last_mut()
                {
                    s.gates.push(format!(
                        "{check}: {} {detail}",
                        if *passed { "passed" } else { "FAILED" }
                    ));
                }
            }
            Event::StepDone {
                rollout, millis, ..
            } => {
                if let Some(i) = find(&mut out, rollout)
                    && let Some(s) = out[i].steps.last_mut()
                {
                    s.millis = Some(*millis);
                }
            }
            Event::Paused {
                rollout, reason, ..
            } => {
                if let Some(i) = find(&mut out, rollout) {
                    out[i].paused = Some(reason.clone());
                }
            }
            Event::Promoted {
                rollout,
                actor,
                step,
                ..
            } => {
                if let Some(i) = find(&mut out, rollout) {
                    out[i].approvals.push(Approval {
                        step: *step,
                        actor: actor.clone(),
                        at_ms: r.at_ms,
                    });
                }
            }
            Event::RollbackStarted {
                rollout,
                reason,
                to,
            } => {
                if let Some(i) = find(&mut out, rollout) {
                    out[i].rollback = Some(format!("to {to}: {reason}"));
                }
            }
            Event::Finished {
                rollout,
                outcome,
                detail,
            } => {
                if let Some(i) = find(&mut out, rollout) {
                    out[i].outcome = Some(*outcome);
                    out[i].finished_ms = Some(r.at_ms);
                    out[i].detail = detail.clone();
                    out[i].paused = None;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_set_aside_read_back_and_leave_the_journal_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::at(tmp.path());
        let mut journal = store.journal("web").unwrap();
        journal
            .append(Event::StepDone {
                rollout: "web-1".into(),
                step: 0,
                millis: 5,
            })
            .unwrap();
        let aside = vec![Record {
            at_ms: 7,
            event: Event::StepDone {
                rollout: "web-2".into(),
                step: 1,
                millis: 9,
            },
        }];
        store
            .set_aside("web", "journal.discarded-7.jsonl", &aside)
            .unwrap();
        let path = store.app_dir("web").join("journal.discarded-7.jsonl");
        assert_eq!(read_records(&path).unwrap(), aside);
        let kept = store.read("web").unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].event.rollout(), "web-1");
    }

    fn actor() -> Actor {
        Actor {
            user: "ana".into(),
            host: "box".into(),
            ci: None,
        }
    }

    #[test]
    fn journal_round_trips_and_folds_into_history() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path());
        let mut j = store.journal("web").unwrap();
        j.append(Event::Started {
            rollout: "r1".into(),
            from: Some("1".into()),
            to: "2".into(),
            strategy: "canary".into(),
            actor: actor(),
            steps: 2,
        })
        .unwrap();
        j.append(Event::StepStarted {
            rollout: "r1".into(),
            step: 0,
            kind: "scale".into(),
            note: "w".into(),
        })
        .unwrap();
        j.append(Event::Gate {
            rollout: "r1".into(),
            step: 0,
            check: "health".into(),
            passed: false,
            detail: "500".into(),
        })
        .unwrap();
        j.append(Event::RollbackStarted {
            rollout: "r1".into(),
            reason: "gate".into(),
            to: "1".into(),
        })
        .unwrap();
        j.append(Event::Finished {
            rollout: "r1".into(),
            outcome: Outcome::RolledBack,
            detail: "".into(),
        })
        .unwrap();
        let h = history(&store.read("web").unwrap());
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].outcome, Some(Outcome::RolledBack));
        assert_eq!(h[0].steps[0].gates, vec!["health: FAILED 500"]);
        assert_eq!(h[0].rollback.as_deref(), Some("to 1: gate"));
    }

    #[test]
    fn a_torn_last_line_is_ignored_but_a_corrupt_middle_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path());
        let mut j = store.journal("web").unwrap();
        j.append(Event::StepDone {
            rollout: "r".into(),
            step: 0,
            millis: 1,
        })
        .unwrap();
        let path = dir.path().join("web/journal.jsonl");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"atMs\":1,\"ev").unwrap();
        assert_eq!(store.read("web").unwrap().len(), 1);
        f.write_all(b"\n{}\n").unwrap();
        assert!(matches!(
            store.read("web"),
            Err(StateError::Corrupt { line: 2, .. })
        ));
    }

    #[test]
    fn the_lock_names_its_holder_and_is_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path());
        let held = store.lock("web", &actor()).unwrap();
        let err = store.lock("web", &actor()).unwrap_err().to_string();
        assert!(err.contains("web is locked by ana@box pid"), "{err}");
        drop(held);
        store.lock("web", &actor()).unwrap();
    }

    fn finished(j: &mut Journal, id: &str, outcome: Outcome) {
        j.append_all([
            Event::Started {
                rollout: id.into(),
                from: Some("1".into()),
                to: "2".into(),
                strategy: "rolling".into(),
                actor: actor(),
                steps: 1,
            },
            Event::StepDone {
                rollout: id.into(),
                step: 0,
                millis: 1,
            },
            Event::Finished {
                rollout: id.into(),
                outcome,
                detail: String::new(),
            },
        ])
        .unwrap();
    }

    #[test]
    fn compaction_keeps_the_last_rollouts_byte_for_byte_and_counts_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path());
        let mut j = store.journal("web").unwrap();
        let manifest: crate::spec::Rollout = serde_yaml::from_str(
            "apiVersion: rollgate.dev/v1\nkind: Rollout\nmetadata: {name: web}\nspec:\n  version: '2'\n  target: {hosts: {service: web, hosts: []}}\n  strategy: {rolling: {maxSurge: 0, maxUnavailable: 1}}\n",
        )
        .unwrap();
        // r0 succeeds, then 9 rollbacks: r0 stays, as what `rollgate rollback` needs.
        finished(&mut j, "r0", Outcome::Succeeded);
        for i in 1..10 {
            finished(&mut j, &format!("r{i}"), Outcome::RolledBack);
        }
        for i in 0..10 {
            store
                .save_manifest("web", &format!("r{i}"), &manifest)
                .unwrap();
        }
        j.append(Event::Started {
            rollout: "r10".into(),
            from: Some("1".into()),
            to: "2".into(),
            strategy: "rolling".into(),
            actor: actor(),
            steps: 1,
        })
        .unwrap();
        for _ in 0..5 {
            store
                .send_control("web", &Control::Pause { actor: actor() })
                .unwrap();
        }
        let path = dir.path().join("web/journal.jsonl");
        let before = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            store.compact("web", 5).unwrap(),
            None,
            "10 finished <= 2 * 5"
        );
        let summary = store
            .compact("web", 4)
            .unwrap()
            .expect("10 finished > 2 * 4");
        assert_eq!(summary.rollouts, 5, "r1..r5 folded");
        assert_eq!((summary.succeeded, summary.rolled_back), (0, 5));
        assert_eq!(summary.last_id.as_deref(), Some("r5"));
        let after = std::fs::read_to_string(&path).unwrap();
        let kept: Vec<&str> = before
            .lines()
            .filter(|l| {
                ["r0", "r6", "r7", "r8", "r9", "r10"]
                    .iter()
                    .any(|id| l.contains(&format!("\"{id}\"")))
            })
            .collect();
        assert_eq!(after.lines().skip(1).collect::<Vec<_>>(), kept);
        let ids: Vec<String> = history(&store.read("web").unwrap())
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, ["r0", "r6", "r7", "r8", "r9", "r10"]);
        assert_eq!(store.compacted("web").unwrap(), Some(summary));
        let mut manifests: Vec<String> = std::fs::read_dir(dir.path().join("web/rollouts"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        manifests.sort();
        assert_eq!(
            manifests,
            ["r0.json", "r6.json", "r7.json", "r8.json", "r9.json"]
        );
        assert_eq!(store.control_count("web"), 4);
        // A second compaction adds to the first one's counts.
        let mut j = store.journal("web").unwrap();
        for i in 11..16 {
            finished(&mut j, &format!("r{i}"), Outcome::Failed);
        }
        let again = store.compact("web", 4).unwrap().unwrap();
        assert_eq!(
            (again.rollouts, again.rolled_back, again.failed),
            (10, 9, 1)
        );
    }

    #[test]
    fn taking_the_lock_compacts_and_appends_go_on_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path());
        let mut j = store.journal("web").unwrap();
        for i in 0..=2 * KEEP_ROLLOUTS {
            finished(&mut j, &format!("r{i}"), Outcome::Succeeded);
        }
        drop(j);
        let lock = store.lock("web", &actor()).unwrap();
        assert_eq!(history(&store.read("web").unwrap()).len(), KEEP_ROLLOUTS);
        let mut j = store.journal("web").unwrap();
        finished(&mut j, "next", Outcome::Succeeded);
        drop(lock);
        let h = history(&store.read("web").unwrap());
        assert_eq!(h.len(), KEEP_ROLLOUTS + 1);
        assert_eq!(h.last().unwrap().id, "next");
    }

    #[test]
    fn replacing_the_records_keeps_the_compaction_header() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path());
        let mut j = store.journal("web").unwrap();
        for i in 0..5 {
            finished(&mut j, &format!("r{i}"), Outcome::Succeeded);
        }
        let summary = store.compact("web", 2).unwrap().unwrap();
        let records = store.read("web").unwrap();
        store.replace_records("web", &records[3..]).unwrap();
        assert_eq!(store.compacted("web").unwrap(), Some(summary));
        assert_eq!(store.read("web").unwrap(), records[3..]);
    }

    #[test]
    fn a_torn_tail_is_cut_before_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path());
        finished(&mut store.journal("web").unwrap(), "r1", Outcome::Succeeded);
        let path = dir.path().join("web/journal.jsonl");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"atMs\":1,\"ev").unwrap();
        finished(&mut store.journal("web").unwrap(), "r2", Outcome::Succeeded);
        let ids: Vec<String> = history(&store.read("web").unwrap())
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, ["r1", "r2"]);
    }

    #[test]
    fn a_lock_of_a_dead_process_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path());
        std::fs::create_dir_all(dir.path().join("web")).unwrap();
        std::fs::write(dir.path().join("web/lock"), "ana@box pid 4000000 since 1").unwrap();
        store.lock("web", &actor()).unwrap();
    }
}
