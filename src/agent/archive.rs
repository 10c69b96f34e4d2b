//! Checked unpacking of `.zip`, `.tar.gz` and single-binary artifacts into an empty directory.
//!
//! Every entry is checked before it is written: absolute paths, `..`, links pointing outside
//! the directory, writes through links, and device files are refused; every size is capped
//! before it is read ([`Caps`]: names and link targets, entries, unpacked bytes). The caller
//! unpacks into a temp dir and discards it on any error, so nothing is installed from a bad
//! artifact.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};

use super::api::ArtifactKind;

/// Why an artifact was refused.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("entry {entry:?} has an absolute path")]
    AbsolutePath { entry: String },
    #[error("entry {entry:?} climbs out of the version dir with '..'")]
    Traversal { entry: String },
    #[error("link {entry:?} -> {target:?} points outside the version dir")]
    LinkEscape { entry: String, target: String },
    #[error("entry {entry:?} is a {kind}, which is not allowed")]
    SpecialFile { entry: String, kind: String },
    #[error("entry {entry:?} appears twice")]
    Duplicate { entry: String },
    #[error("an entry name or link target of {len} bytes is longer than the {MAX_NAME}-byte limit")]
    NameTooLong { len: u64 },
    #[error("the archive unpacks to more than {limit} bytes (limits.unpackedBytes)")]
    TooLarge { limit: u64 },
    #[error("the archive has more than {limit} entries (limits.archiveEntries)")]
    TooManyEntries { limit: u64 },
    #[error("{what} in a tar archive is not supported")]
    Unsupported { what: &'static str },
    #[error("corrupt {kind} archive")]
    Corrupt {
        kind: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = ArchiveError> = std::result::Result<T, E>;

mod links;

use links::check_links;

/// Longest entry name or link target read from an archive.
pub const MAX_NAME: usize = 4096;

/// Longest pax extended header read from a tar archive.
const MAX_PAX: u64 = 64 * 1024;

/// How much an archive may unpack to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Bytes of file contents, all entries together.
    pub bytes: u64,
    /// Entries of any kind.
    pub entries: u64,
}

impl Default for Caps {
    /// The agent's defaults: 4 × the 1 GiB artifact limit, 100,000 entries.
    fn default() -> Self {
        Caps {
            bytes: 4 << 30,
            entries: 100_000,
        }
    }
}

/// What is left of the caps while unpacking.
struct Budget {
    caps: Caps,
    bytes: u64,
    entries: u64,
}

impl Budget {
    fn new(caps: Caps) -> Budget {
        Budget {
            caps,
            bytes: 0,
            entries: 0,
        }
    }

    fn entry(&mut self) -> Result<()> {
        self.entries += 1;
        if self.entries > self.caps.entries {
            return Err(ArchiveError::TooManyEntries {
                limit: self.caps.entries,
            });
        }
        Ok(())
    }

    /// Copies `from` into the new file `to`, counting against the byte cap, whatever the
    /// archive declared.
    fn copy(&mut self, from: &mut impl Read, to: &Path, kind: &'static str) -> Result<()> {
        let io = |source| ArchiveError::Io {
            path: to.to_path_buf(),
            source,
        };
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(to)
            .map_err(io)?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(ArchiveError::Corrupt { kind, source }),
            };
            self.bytes += n as u64;
            if self.bytes > self.caps.bytes {
                return Err(ArchiveError::TooLarge {
                    limit: self.caps.bytes,
                });
            }
            out.write_all(&buf[..n]).map_err(io)?;
        }
    }
}

/// Reads at most `cap` bytes of an extension record whose declared size is `size`.
fn read_capped(from: &mut impl Read, size: u64, cap: u64, kind: &'static str) -> Result<Vec<u8>> {
    if size > cap {
        return Err(ArchiveError::NameTooLong { len: size });
    }
    let mut out = Vec::with_capacity(size as usize);
    from.take(cap)
        .read_to_end(&mut out)
        .map_err(|source| ArchiveError::Corrupt { kind, source })?;
    Ok(out)
}

/// Detects the artifact kind from its first bytes.
pub fn detect(head: &[u8]) -> ArtifactKind {
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        ArtifactKind::Zip
    } else if head.starts_with(&[0x1f, 0x8b]) {
        ArtifactKind::TarGz
    } else {
        ArtifactKind::Binary
    }
}

/// Unpacks `artifact` into the existing empty dir `dest`, within `caps`. A binary becomes
/// `dest/binary_name`.
pub fn unpack(
    kind: ArtifactKind,
    artifact: &Path,
    dest: &Path,
    binary_name: &str,
    caps: Caps,
) -> Result<()> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ArchiveError::Io { path, source }
    };
    match kind {
        ArtifactKind::Binary => {
            let rel = safe_relative(binary_name)?;
            let target = dest.join(&rel);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(io(parent))?;
            }
            std::fs::copy(artifact, &target).map_err(io(&target))?;
            set_mode(&target, 0o755).map_err(io(&target))?;
        }
        ArtifactKind::TarGz => {
            let file = File::open(artifact).map_err(io(artifact))?;
            unpack_tar_gz(file, dest, caps)?;
        }
        ArtifactKind::Zip => {
            let file = File::open(artifact).map_err(io(artifact))?;
            unpack_zip(file, dest, caps)?;
        }
    }
    check_links(dest)
}

/// Turns an archive entry name into a relative path, refusing absolute paths and `..`.
pub fn safe_relative(name: &str) -> Result<PathBuf> {
    if name.starts_with('/') || name.starts_with('\\') || name.get(1..2) == Some(":") {
        return Err(ArchiveError::AbsolutePath {
            entry: name.to_string(),
        });
    }
    let mut out = PathBuf::new();
    // Backslashes separate components too: a Windows-made archive must not smuggle `..\`.
    for part in name.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => {
                return Err(ArchiveError::Traversal {
                    entry: name.to_string(),
                });
            }
            p => out.push(p),
        }
    }
    for c in out.components() {
        if !matches!(c, Component::Normal(_)) {
            return Err(ArchiveError::AbsolutePath {
                entry: name.to_string(),
            });
        }
    }
    Ok(out)
}

/// Checks that a link at `rel` pointing at `target` stays inside the dir, lexically.
pub fn check_link_target(rel: &Path, target: &str) -> Result<()> {
    let escape = || ArchiveError::LinkEscape {
        entry: rel.display().to_string(),
        target: target.to_string(),
    };
    // A root-relative target (`/etc/passwd`) is refused on every platform: on Windows `/` is
    // not "absolute" to `Path`, yet it names the root of the current drive.
    if target.is_empty()
        || target.len() > MAX_NAME
        || Path::new(target).is_absolute()
        || target.starts_with(['/', '\\'])
        || target.get(1..2) == Some(":")
    {
        return Err(escape());
    }
    let mut depth: i64 = rel
        .parent()
        .map(|p| p.components().count() as i64)
        .unwrap_or(0);
    for part in target.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return Err(escape());
                }
            }
            _ => depth += 1,
        }
    }
    Ok(())
}

/// Refuses to write `rel` if any of its parent dirs inside `dest` is a symlink.
fn no_link_in_parents(dest: &Path, rel: &Path, entry: &str) -> Result<()> {
    let mut cur = dest.to_path_buf();
    if let Some(parent) = rel.parent() {
        for c in parent.components() {
            cur.push(c);
            if let Ok(meta) = std::fs::symlink_metadata(&cur)
                && meta.file_type().is_symlink()
            {
                return Err(ArchiveError::LinkEscape {
                    entry: entry.to_string(),
                    target: "(written through a link)".to_string(),
                });
            }
        }
    }
    Ok(())
}

/// Long names, long link targets and pax paths of the next tar entry, read within the caps.
#[derive(Default)]
struct TarExtensions {
    name: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
}

impl TarExtensions {
    /// Takes in an extension entry (GNU `L`/`K`, pax `x`/`g`); false for any other entry.
    fn take_in<R: Read>(&mut self, entry: &mut tar::Entry<R>) -> Result<bool> {
        use tar::EntryType as T;
        let kind = entry.header().entry_type();
        let size = entry.size();
        match kind {
            T::GNULongName | T::GNULongLink => {
                let mut bytes = read_capped(entry, size, MAX_NAME as u64, "tar.gz")?;
                while bytes.last() == Some(&0) {
                    bytes.pop();
                }
                if kind == T::GNULongName {
                    self.name = Some(bytes);
                } else {
                    self.link = Some(bytes);
                }
            }
            T::XHeader | T::XGlobalHeader => {
                let bytes = read_capped(entry, size, MAX_PAX, "tar.gz")?;
                if kind == T::XGlobalHeader {
                    return Ok(true);
                }
                for ext in tar::PaxExtensions::new(&bytes) {
                    let ext = ext.map_err(|source| ArchiveError::Corrupt {
                        kind: "tar.gz",
                        source,
                    })?;
                    let value = ext.value_bytes();
                    match ext.key_bytes() {
                        b"path" => self.name = Some(value.to_vec()),
                        b"linkpath" => self.link = Some(value.to_vec()),
                        // Raw iteration does not apply a pax size; sizes that need one are
                        // far past the caps anyway.
                        b"size" => {
                            return Err(ArchiveError::Unsupported {
                                what: "a pax size record",
                            });
                        }
                        _ => {}
                    }
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

fn unpack_tar_gz(file: File, dest: &Path, caps: Caps) -> Result<()> {
    let corrupt = |source| ArchiveError::Corrupt {
        kind: "tar.gz",
        source,
    };
    let mut archive =
        tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
    let mut budget = Budget::new(caps);
    let mut ext = TarExtensions::default();
    // Raw entries: the tar crate would read a GNU long name or a pax header whole, whatever
    // its size (a 256 MiB name took the agent to 3 GB); here they are read within the caps.
    for entry in archive.entries().map_err(corrupt)?.raw(true) {
        let mut entry = entry.map_err(corrupt)?;
        budget.entry()?;
        if ext.take_in(&mut entry)? {
            continue;
        }
        let taken = std::mem::take(&mut ext);
        let raw_name = match taken.name {
            Some(n) => n,
            None => entry.header().path_bytes().into_owned(),
        };
        let name = String::from_utf8_lossy(&raw_name).into_owned();
        let rel = safe_relative(&name)?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let kind = entry.header().entry_type();
        let link = match taken.link {
            Some(l) => Some(l),
            None => entry.header().link_name_bytes().map(|l| l.into_owned()),
        }
        .map(|l| String::from_utf8_lossy(&l).into_owned())
        .unwrap_or_default();
        use tar::EntryType as T;
        match kind {
            T::Regular | T::Continuous | T::Directory => {}
            T::Symlink => check_link_target(&rel, &link)?,
            // A hard link names another entry of the archive.
            T::Link => {
                safe_relative(&link).map_err(|_| ArchiveError::LinkEscape {
                    entry: name.clone(),
                    target: link.clone(),
                })?;
            }
            T::Char => return Err(special(&name, "character device")),
            T::Block => return Err(special(&name, "block device")),
            T::Fifo => return Err(special(&name, "fifo")),
            other => return Err(special(&name, &format!("{other:?} entry"))),
        }
        no_link_in_parents(dest, &rel, &name)?;
        let target = dest.join(&rel);
        let io = |source| ArchiveError::Io {
            path: target.clone(),
            source,
        };
        if std::fs::symlink_metadata(&target).is_ok() && kind != T::Directory {
            return Err(ArchiveError::Duplicate { entry: name });
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        // Only the rwx bits, without group or world write: a setuid/setgid bit from an
        // artifact would hand whoever can run the file the agent's (often root's) rights.
        let mode = entry.header().mode().unwrap_or(0o644) & 0o755;
        match kind {
            T::Directory => std::fs::create_dir_all(&target).map_err(io)?,
            T::Symlink => make_symlink(&link, &target).map_err(io)?,
            T::Link => {
                let src_rel = safe_relative(&link)?;
                no_link_in_parents(dest, &src_rel, &name)?;
                let src = dest.join(&src_rel);
                match std::fs::symlink_metadata(&src) {
                    Ok(m) if m.is_file() => std::fs::hard_link(&src, &target).map_err(io)?,
                    _ => {
                        return Err(ArchiveError::LinkEscape {
                            entry: name,
                            target: link,
                        });
                    }
                }
            }
            _ => {
                budget.copy(&mut entry, &target, "tar.gz")?;
                set_mode(&target, mode).map_err(io)?;
            }
        }
    }
    Ok(())
}

fn special(entry: &str, kind: &str) -> ArchiveError {
    ArchiveError::SpecialFile {
        entry: entry.to_string(),
        kind: kind.to_string(),
    }
}

fn unpack_zip(mut reader: File, dest: &Path, caps: Caps) -> Result<()> {
    let corrupt = |e: zip::result::ZipError| ArchiveError::Corrupt {
        kind: "zip",
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
    };
    // The zip crate keeps one entry per name, the last one: duplicates would install silently.
    if let Some(entry) = zip_duplicate(&mut reader) {
        return Err(ArchiveError::Duplicate { entry });
    }
    let mut zip = zip::ZipArchive::new(reader).map_err(corrupt)?;
    if zip.len() as u64 > caps.entries {
        return Err(ArchiveError::TooManyEntries {
            limit: caps.entries,
        });
    }
    let mut budget = Budget::new(caps);
    for i in 0..zip.len() {
        let mut file = zip.by_index(i).map_err(corrupt)?;
        budget.entry()?;
        let name = file.name().to_string();
        if name.len() > MAX_NAME {
            return Err(ArchiveError::NameTooLong {
                len: name.len() as u64,
            });
        }
        let rel = safe_relative(&name)?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let target = dest.join(&rel);
        let io = |source| ArchiveError::Io {
            path: target.clone(),
            source,
        };
        no_link_in_parents(dest, &rel, &name)?;
        let mode = file.unix_mode();
        let fmt = mode.map(|m| m & 0o170_000).unwrap_or(0);
        match fmt {
            0 | 0o100_000 | 0o040_000 => {}
            0o120_000 => {
                let size = file.size();
                let link = read_capped(&mut file, size, MAX_NAME as u64, "zip")?;
                let link = String::from_utf8_lossy(&link).into_owned();
                check_link_target(&rel, &link)?;
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(io)?;
                }
                make_symlink(&link, &target).map_err(|source| {
                    if source.kind() == std::io::ErrorKind::AlreadyExists {
                        ArchiveError::Duplicate {
                            entry: name.clone(),
                        }
                    } else {
                        io(source)
                    }
                })?;
                continue;
            }
            0o020_000 => return Err(special(&name, "character device")),
            0o060_000 => return Err(special(&name, "block device")),
            0o010_000 => return Err(special(&name, "fifo")),
            _ => return Err(special(&name, "special file")),
        }
        if file.is_dir() || fmt == 0o040_000 {
            std::fs::create_dir_all(&target).map_err(io)?;
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        budget
            .copy(&mut file, &target, "zip")
            .map_err(|e| match e {
                ArchiveError::Io { source, .. }
                    if source.kind() == std::io::ErrorKind::AlreadyExists =>
                {
                    ArchiveError::Duplicate {
                        entry: name.clone(),
                    }
                }
                e => e,
            })?;
        set_mode(&target, mode.map(|m| m & 0o755).unwrap_or(0o644)).map_err(io)?;
    }
    Ok(())
}

/// The first name the zip's central directory lists twice. Reads the end record and walks the
/// directory's fixed-size headers; an archive it cannot walk is left to the zip crate to judge.
fn zip_duplicate(file: &mut File) -> Option<String> {
    let len = file.seek(SeekFrom::End(0)).ok()?;
    let tail_len = len.min(65_557);
    file.seek(SeekFrom::Start(len - tail_len)).ok()?;
    let mut tail = vec![0u8; tail_len as usize];
    file.read_exact(&mut tail).ok()?;
    let at = (0..tail.len().saturating_sub(21))
        .rev()
        .find(|&i| tail[i..].starts_with(b"PK\x05\x06"))?;
    let le32 = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64;
    let le16 = |b: &[u8]| u16::from_le_bytes([b[0], b[1]]) as usize;
    let (size, offset) = (le32(&tail[at + 12..]), le32(&tail[at + 16..]));
    if offset == 0xFFFF_FFFF || size > len {
        return None;
    }
    file.seek(SeekFrom::Start(offset)).ok()?;
    let mut dir = Vec::new();
    file.take(size).read_to_end(&mut dir).ok()?;
    let mut seen = std::collections::HashSet::new();
    let mut i = 0;
    while i + 46 <= dir.len() && dir[i..].starts_with(b"PK\x01\x02") {
        let (n, x, c) = (
            le16(&dir[i + 28..]),
            le16(&dir[i + 30..]),
            le16(&dir[i + 32..]),
        );
        let name = dir.get(i + 46..i + 46 + n)?;
        if !seen.insert(name.to_vec()) {
            return Some(String::from_utf8_lossy(name).into_owned());
        }
        i += 46 + n + x + c;
    }
    None
}

#[cfg(unix)]
fn make_symlink(target: &str, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(not(unix))]
fn make_symlink(_target: &str, link: &Path) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        format!(
            "symlinks in archives are not supported here: {}",
            link.display()
        ),
    ))
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_are_checked() {
        assert_eq!(
            safe_relative("./bin/app").unwrap(),
            PathBuf::from("bin/app")
        );
        assert!(matches!(
            safe_relative("/etc/passwd"),
            Err(ArchiveError::AbsolutePath { .. })
        ));
        assert!(matches!(
            safe_relative("a/../../x"),
            Err(ArchiveError::Traversal { .. })
        ));
        assert!(matches!(
            safe_relative("a\\..\\..\\x"),
            Err(ArchiveError::Traversal { .. })
        ));
        assert!(matches!(
            safe_relative("C:\\x"),
            Err(ArchiveError::AbsolutePath { .. })
        ));
    }

    #[test]
    fn link_targets_are_checked_lexically() {
        assert!(check_link_target(Path::new("lib/libx.so"), "../lib64/libx.so").is_ok());
        assert!(check_link_target(Path::new("lib/libx.so"), "../../etc").is_err());
        assert!(check_link_target(Path::new("x"), "/etc/passwd").is_err());
        assert!(check_link_target(Path::new("x"), "..").is_err());
    }

    #[test]
    fn kinds_are_detected_by_magic() {
        assert_eq!(detect(b"PK\x03\x04rest"), ArtifactKind::Zip);
        assert_eq!(detect(&[0x1f, 0x8b, 8]), ArtifactKind::TarGz);
        assert_eq!(detect(b"\x7fELF"), ArtifactKind::Binary);
    }

    fn tar_gz(build: impl FnOnce(&mut tar::Builder<flate2::write::GzEncoder<Vec<u8>>>)) -> Vec<u8> {
        let enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut b = tar::Builder::new(enc);
        build(&mut b);
        b.into_inner().unwrap().finish().unwrap()
    }

    fn unpack_bytes(bytes: &[u8]) -> (tempfile::TempDir, Result<()>) {
        let dir = tempfile::tempdir().unwrap();
        let art = dir.path().join("a.tgz");
        std::fs::write(&art, bytes).unwrap();
        let dest = dir.path().join("out");
        std::fs::create_dir(&dest).unwrap();
        let r = unpack(detect(bytes), &art, &dest, "app", Caps::default());
        (dir, r)
    }

    // Symlinks in archives unpack on Unix only: on Windows `make_symlink` refuses them all.
    #[cfg(unix)]
    #[test]
    fn tar_with_files_and_inner_links_unpacks() {
        let bytes = tar_gz(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_size(5);
            h.set_mode(0o755);
            h.set_cksum();
            b.append_data(&mut h, "bin/app", &b"hello"[..]).unwrap();
            let mut l = tar::Header::new_gnu();
            l.set_entry_type(tar::EntryType::Symlink);
            l.set_size(0);
            b.append_link(&mut l, "current", "bin/app").unwrap();
        });
        let (dir, r) = unpack_bytes(&bytes);
        r.unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("out/current")).unwrap(),
            b"hello"
        );
    }

    // Symlinks in archives unpack on Unix only: on Windows `make_symlink` refuses them all.
    #[cfg(unix)]
    #[test]
    fn chained_links_escaping_are_refused() {
        let bytes = tar_gz(|b| {
            for (name, target) in [("a", "."), ("b", "a/..")] {
                let mut l = tar::Header::new_gnu();
                l.set_entry_type(tar::EntryType::Symlink);
                l.set_size(0);
                b.append_link(&mut l, name, target).unwrap();
            }
        });
        let (_dir, r) = unpack_bytes(&bytes);
        assert!(matches!(r, Err(ArchiveError::LinkEscape { .. })), "{r:?}");
    }

    #[test]
    fn setuid_and_setgid_bits_are_dropped_from_tar_entries() {
        // Found by the `archive` fuzz target: tar entries kept their mode's 0o7000 bits
        // (fuzz/regressions/archive/tar-entry-keeps-setuid-bit).
        let bytes = tar_gz(|b| {
            for (name, mode) in [("bin/suid", 0o4755), ("bin/sgid", 0o2711)] {
                let mut h = tar::Header::new_gnu();
                h.set_size(2);
                h.set_mode(mode);
                h.set_cksum();
                b.append_data(&mut h, name, &b"hi"[..]).unwrap();
            }
        });
        let (dir, r) = unpack_bytes(&bytes);
        r.unwrap();
        for name in ["bin/suid", "bin/sgid"] {
            assert!(
                dir.path().join("out").join(name).is_file(),
                "{name} unpacked"
            );
        }
        #[cfg(unix)]
        for (name, want) in [("bin/suid", 0o755), ("bin/sgid", 0o711)] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("out").join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o7777, want, "{name}");
        }
    }

    #[test]
    fn device_entries_are_refused() {
        let bytes = tar_gz(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Char);
            h.set_size(0);
            h.set_cksum();
            b.append_data(&mut h, "null", &b""[..]).unwrap();
        });
        let (_dir, r) = unpack_bytes(&bytes);
        assert!(matches!(r, Err(ArchiveError::SpecialFile { .. })), "{r:?}");
    }
}
