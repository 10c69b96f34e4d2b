//! The operation journal: every operation the agent accepted, by id and by request id, kept in
//! `operations.log` (one JSON record per line, the last line of an id winning), compacted as
//! it grows and read back within a per-line cap at start.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::api::{Operation, OperationState};
use super::now_unix_ms;
use super::store::{self, StoreError};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct OpRecord {
    pub(super) op: Operation,
    pub(super) fingerprint: String,
}

/// Every operation the agent accepted, by id and by request id, and the log they are kept in:
/// `operations.log` in the data dir, one record per line, the last line of an id winning.
pub(super) struct Journal {
    pub(super) ops: HashMap<String, OpRecord>,
    pub(super) by_request: HashMap<String, String>,
    pub(super) log: store::JsonLog,
}

/// Longest record read back: a line past it (one an older agent wrote with a huge error text)
/// is skipped unread.
const MAX_RECORD: usize = 64 * 1024;

/// Finished operations are forgotten after a week.
const KEEP_OPS_MS: u64 = 7 * 86_400_000;

impl Journal {
    /// Appends `id`'s record to the log. Once the log has grown to twice its size at the last
    /// compaction (plus slack), compacts it: one line per operation, forgetting operations
    /// finished more than a week ago. That is about three lines written per operation.
    pub(super) fn record(&mut self, id: &str) -> std::result::Result<(), StoreError> {
        let Some(rec) = self.ops.get(id) else {
            return Ok(());
        };
        self.log.append(rec)?;
        if self.log.lines() > 2 * self.log.base() + 1024 {
            self.compact(now_unix_ms())?;
        }
        Ok(())
    }

    fn compact(&mut self, now_ms: u64) -> std::result::Result<(), StoreError> {
        let path = self.log.path().to_path_buf();
        // Closed before it is replaced: Windows refuses to rename over a file open for append
        // (os error 5). An append after a failed rewrite reopens it.
        self.log.close();
        self.log = Self::rewrite(&mut self.ops, &path, now_ms)?;
        let ops = &self.ops;
        self.by_request.retain(|_, id| ops.contains_key(id));
        Ok(())
    }

    /// Forgets operations finished more than a week before `now_ms` and rewrites the log at
    /// `path` with the rest, oldest first.
    fn rewrite(
        ops: &mut HashMap<String, OpRecord>,
        path: &Path,
        now_ms: u64,
    ) -> std::result::Result<store::JsonLog, StoreError> {
        let cutoff = now_ms.saturating_sub(KEEP_OPS_MS);
        ops.retain(|_, r| !(r.op.state.is_done() && r.op.finished_unix_ms.unwrap_or(0) < cutoff));
        let mut records: Vec<&OpRecord> = ops.values().collect();
        records.sort_by(|a, b| {
            (a.op.created_unix_ms, &a.op.id).cmp(&(b.op.created_unix_ms, &b.op.id))
        });
        store::JsonLog::rewrite(path, records)
    }
}

/// Loads the operation journal from `data_dir/operations.log` (and from `data_dir/operations/`,
/// one file per operation, where agents before the log kept it), marks operations a previous
/// agent left running as interrupted, and rewrites the log compacted.
pub(super) fn load_journal(data_dir: &Path) -> Result<Journal, StoreError> {
    let legacy = data_dir.join("operations");
    let mut records: Vec<OpRecord> = Vec::new();
    for entry in std::fs::read_dir(&legacy).into_iter().flatten().flatten() {
        if let Ok(Some(rec)) = store::read_json::<OpRecord>(&entry.path()) {
            records.push(rec);
        }
    }
    let path = data_dir.join("operations.log");
    let (logged, skipped) = store::JsonLog::read::<OpRecord>(&path, MAX_RECORD)?;
    if skipped > 0 {
        tracing::warn!(path = %path.display(), skipped, "skipped torn or unreadable operation records");
    }
    records.extend(logged);
    let mut ops = HashMap::new();
    for mut rec in records {
        if rec.op.state == OperationState::Running {
            rec.op.state = OperationState::Failed;
            rec.op.error = Some("interrupted: the agent restarted during this operation".into());
            rec.op.finished_unix_ms = Some(now_unix_ms());
        }
        ops.insert(rec.op.id.clone(), rec);
    }
    let log = Journal::rewrite(&mut ops, &path, now_unix_ms())?;
    let by_request = ops
        .values()
        .map(|r| (r.op.request_id.clone(), r.op.id.clone()))
        .collect();
    if legacy.exists() {
        let _ = std::fs::remove_dir_all(&legacy);
    }
    Ok(Journal {
        ops,
        by_request,
        log,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::api::OperationKind;

    fn rec(id: &str, state: OperationState, created: u64, finished: Option<u64>) -> OpRecord {
        OpRecord {
            op: Operation {
                id: id.into(),
                request_id: format!("req-{id}"),
                kind: OperationKind::Activate,
                service: "web".into(),
                slot: Some(0),
                version: Some("1.0.0".into()),
                state,
                message: None,
                error: None,
                removed: vec![],
                created_unix_ms: created,
                finished_unix_ms: finished,
            },
            fingerprint: format!("fp-{id}"),
        }
    }

    #[test]
    fn journal_replays_the_log_migrates_the_old_dir_and_marks_interrupted_ops() {
        let dir = tempfile::tempdir().unwrap();
        let now = now_unix_ms();
        // An agent from before the log: one file per operation.
        let legacy = dir.path().join("operations");
        let old = rec("op-old", OperationState::Succeeded, now - 10, Some(now - 9));
        store::write_json(&legacy.join("op-old.json"), &old).unwrap();
        // The log: `a` accepted then finished, `b` accepted and never finished, `c` finished
        // more than a week ago, and a line torn by a power cut.
        let week = KEEP_OPS_MS;
        let mut text = String::new();
        for r in [
            rec("a", OperationState::Running, now - 5, None),
            rec("b", OperationState::Running, now - 4, None),
            rec("a", OperationState::Succeeded, now - 5, Some(now - 3)),
            rec(
                "c",
                OperationState::Succeeded,
                now - week - 9,
                Some(now - week - 8),
            ),
        ] {
            text.push_str(&serde_json::to_string(&r).unwrap());
            text.push('\n');
        }
        text.push_str("{\"op\":{\"id\":\"d\"");
        std::fs::write(dir.path().join("operations.log"), text).unwrap();

        let journal = load_journal(dir.path()).unwrap();
        let state = |id: &str| journal.ops.get(id).map(|r| r.op.state);
        assert_eq!(state("a"), Some(OperationState::Succeeded));
        assert_eq!(state("b"), Some(OperationState::Failed));
        assert!(
            journal.ops["b"]
                .op
                .error
                .as_deref()
                .unwrap()
                .contains("interrupted")
        );
        assert_eq!(state("op-old"), Some(OperationState::Succeeded));
        assert_eq!(state("c"), None, "finished more than a week ago");
        assert_eq!(
            journal.by_request.get("req-a").map(String::as_str),
            Some("a")
        );
        assert!(!journal.by_request.contains_key("req-c"));
        assert!(!legacy.exists(), "the old dir is folded into the log");
        // The log was rewritten with exactly what was kept, oldest first, one line each.
        let (back, skipped) =
            store::JsonLog::read::<OpRecord>(&dir.path().join("operations.log"), MAX_RECORD)
                .unwrap();
        let ids: Vec<&str> = back.iter().map(|r| r.op.id.as_str()).collect();
        assert_eq!((ids, skipped), (vec!["op-old", "a", "b"], 0));
    }

    #[test]
    fn journal_log_is_compacted_as_it_grows() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = load_journal(dir.path()).unwrap();
        let now = now_unix_ms();
        for i in 0..2000u64 {
            let id = format!("op-{i}");
            journal
                .ops
                .insert(id.clone(), rec(&id, OperationState::Running, now, None));
            journal.record(&id).unwrap();
            let op = &mut journal.ops.get_mut(&id).unwrap().op;
            op.state = OperationState::Succeeded;
            op.finished_unix_ms = Some(now);
            journal.record(&id).unwrap();
        }
        let (back, _) =
            store::JsonLog::read::<OpRecord>(&dir.path().join("operations.log"), MAX_RECORD)
                .unwrap();
        // 4000 lines were appended; compactions left one line per operation now and then.
        assert!(
            back.len() < 3500,
            "{} lines for 2000 operations",
            back.len()
        );
        // Whatever was compacted, the last line of every op says it succeeded.
        let mut last = HashMap::new();
        for r in back {
            last.insert(r.op.id.clone(), r.op.state);
        }
        assert_eq!(last.len(), 2000);
        assert!(last.values().all(|s| *s == OperationState::Succeeded));
    }
}
