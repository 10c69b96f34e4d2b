//! The fault-injection matrix's ledger: every fault test records what it injected and what it found,
//! one tab-separated line per case, in `target/fault-matrix.tsv`. `tests/run.sh` empties the file
//! before the run and prints it as a table after it (`tests/fault-table.sh`).
//!
//! A case records what it *observed*: the outcome the CLI reported, how many instances or objects
//! ended in a state the journal does not explain (`unknown`), and how many journal records or
//! versions were lost (`lost`). The test still asserts its own expectations; the ledger only makes
//! the matrix visible in one place.

#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;

/// One row of the matrix.
pub struct Case<'a> {
    /// The test bed: `netns hosts`, `loopback hosts` or `kubernetes`.
    pub bed: &'a str,
    /// What was done, e.g. `CLI kill -9 after a Changing record`.
    pub fault: &'a str,
    /// What rollgate did about it, e.g. `resumed, completed`.
    pub outcome: &'a str,
    /// Journal records, versions or objects lost.
    pub lost: u32,
    /// Instances or objects in a state the journal does not know.
    pub unknown: u32,
}

pub fn ledger() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/fault-matrix.tsv")
}

/// Appends one row (one `write` of one line, so parallel tests don't interleave).
pub fn record(case: Case<'_>) {
    let clean = |s: &str| s.replace(['\t', '\n'], " ");
    let line = format!(
        "{}\t{}\t{}\t{}\t{}\n",
        clean(case.bed),
        clean(case.fault),
        clean(case.outcome),
        case.lost,
        case.unknown
    );
    let path = ledger();
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        let _ = f.write_all(line.as_bytes());
    }
}
