//! The agent's log lines on a journald stream, each prefixed with its syslog priority (`<3>`).
//!
//! Under systemd, stderr is a stream socket to journald (`$JOURNAL_STREAM` names it), and
//! journald reads a leading `<N>` as the line's priority, so `journalctl -p warning` shows
//! warnings and errors only. The mapping is the one users expect from the Event Log too:
//! ERROR → 3 (err), WARN → 4 (warning), INFO → 6 (info), DEBUG and TRACE → 7 (debug).

use std::io::Write;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// The syslog priority of a tracing level.
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// Prefixes every line of `text` with `<priority>`.
pub fn prefix_lines(priority: u8, text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 8);
    for line in text.split_inclusive(|b| *b == b'\n') {
        out.extend_from_slice(format!("<{priority}>").as_bytes());
        out.extend_from_slice(line);
    }
    out
}

/// Whether stderr is the journald stream systemd connected (`$JOURNAL_STREAM` is
/// `device:inode` of it), not merely inherited by a child with its stderr redirected.
pub fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        use std::os::unix::fs::MetadataExt;
        let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
            return false;
        };
        let Ok(meta) = std::fs::File::from(fd).metadata() else {
            return false;
        };
        stream.to_string_lossy() == format!("{}:{}", meta.dev(), meta.ino())
    }
    #[cfg(not(unix))]
    {
        let _ = stream;
        false
    }
}

/// A `MakeWriter` for stderr that prefixes each event's lines with its priority.
#[derive(Debug, Clone, Copy, Default)]
pub struct JournalStderr;

/// One event's text, written to stderr in one piece (with its prefixes) when dropped.
pub struct PriorityLine {
    priority: u8,
    buf: Vec<u8>,
}

impl Write for PriorityLine {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for PriorityLine {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            let _ = std::io::stderr()
                .lock()
                .write_all(&prefix_lines(self.priority, &self.buf));
        }
    }
}

impl<'a> MakeWriter<'a> for JournalStderr {
    type Writer = PriorityLine;

    fn make_writer(&'a self) -> PriorityLine {
        PriorityLine {
            priority: priority(&Level::INFO),
            buf: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> PriorityLine {
        PriorityLine {
            priority: priority(meta.level()),
            buf: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(
            [
                Level::ERROR,
                Level::WARN,
                Level::INFO,
                Level::DEBUG,
                Level::TRACE
            ]
            .map(|l| priority(&l)),
            [3, 4, 6, 7, 7]
        );
    }

    #[test]
    fn every_line_of_an_event_gets_the_prefix() {
        assert_eq!(prefix_lines(4, b"one\ntwo\n"), b"<4>one\n<4>two\n");
        assert_eq!(prefix_lines(3, b"no newline"), b"<3>no newline");
    }
}
