//! The last check of an unpacked archive: every link, followed inside the dir, stays inside.

use std::path::{Path, PathBuf};

use super::{ArchiveError, Result};

/// After unpacking, with every entry in place: every link must stay inside `dest` when
/// followed, whether or not what it names exists. This catches chains (`a -> .`, `b -> a/..`)
/// that each look harmless alone, and links that dangle now but would resolve outside once the
/// dir is moved beside other versions (`p -> a/../other-version`).
pub(super) fn check_links(dest: &Path) -> Result<()> {
    let mut stack = vec![PathBuf::new()];
    while let Some(dir) = stack.pop() {
        let full = dest.join(&dir);
        let entries = std::fs::read_dir(&full).map_err(|source| ArchiveError::Io {
            path: full.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let rel = dir.join(entry.file_name());
            let Ok(ft) = entry.file_type() else { continue };
            if ft.is_symlink() {
                if escapes(dest, &rel) {
                    let target = std::fs::read_link(dest.join(&rel))
                        .map(|t| t.display().to_string())
                        .unwrap_or_default();
                    return Err(ArchiveError::LinkEscape {
                        entry: rel.display().to_string(),
                        target,
                    });
                }
            } else if ft.is_dir() {
                stack.push(rel);
            }
        }
    }
    Ok(())
}

/// Whether following the link at `rel` (inside `dest`) ever leaves `dest`: its target is walked
/// component by component, links inside expanded as they come, `..` above `dest` an escape.
/// A loop (more than 40 links) counts as an escape.
fn escapes(dest: &Path, rel: &Path) -> bool {
    let mut at: Vec<std::ffi::OsString> = rel
        .components()
        .map(|c| c.as_os_str().to_os_string())
        .collect();
    let mut todo: std::collections::VecDeque<std::ffi::OsString> = Default::default();
    let mut hops = 0;
    let mut expand = |at: &mut Vec<std::ffi::OsString>,
                      todo: &mut std::collections::VecDeque<std::ffi::OsString>|
     -> bool {
        let here: PathBuf = at.iter().collect();
        let Ok(target) = std::fs::read_link(dest.join(&here)) else {
            return true;
        };
        hops += 1;
        let text = target.to_string_lossy().into_owned();
        if hops > 40 || text.is_empty() {
            return true;
        }
        if target.is_absolute() || text.starts_with(['/', '\\']) || text.get(1..2) == Some(":") {
            return true;
        }
        at.pop();
        for part in text.split(['/', '\\']).rev() {
            todo.push_front(part.into());
        }
        false
    };
    if expand(&mut at, &mut todo) {
        return true;
    }
    while let Some(part) = todo.pop_front() {
        match part.to_str() {
            Some("") | Some(".") => {}
            Some("..") => {
                if at.pop().is_none() {
                    return true;
                }
            }
            _ => {
                at.push(part);
                let here: PathBuf = at.iter().collect();
                let is_link = std::fs::symlink_metadata(dest.join(&here))
                    .is_ok_and(|m| m.file_type().is_symlink());
                if is_link && expand(&mut at, &mut todo) {
                    return true;
                }
            }
        }
    }
    false
}
