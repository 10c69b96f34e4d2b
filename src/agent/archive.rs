//! Checked unpacking of `.zip`, `.tar.gz` and single-binary artifacts into an empty directory.
//!
//! Every entry is checked before it is written: absolute paths, `..`, links pointing outside
//! the directory, writes through links, and device files are refused. The caller unpacks into
//! a temp dir and discards it on any error, so nothing is installed from a bad artifact.

use std::fs::File;
use std::io::{Read, Seek};
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

/// Unpacks `artifact` into the existing empty dir `dest`. A binary becomes `dest/binary_name`.
pub fn unpack(kind: ArtifactKind, artifact: &Path, dest: &Path, binary_name: &str) -> Result<()> {
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
            unpack_tar_gz(file, dest)?;
        }
        ArtifactKind::Zip => {
            let file = File::open(artifact).map_err(io(artifact))?;
            unpack_zip(file, dest)?;
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
    let t = Path::new(target);
    if target.is_empty()
        || t.is_absolute()
        || target.starts_with('\\')
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

fn unpack_tar_gz(file: File, dest: &Path) -> Result<()> {
    let corrupt = |source| ArchiveError::Corrupt {
        kind: "tar.gz",
        source,
    };
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    // Only the rwx bits are kept: a setuid/setgid bit from an artifact would hand whoever can
    // run the file the agent's (often root's) rights.
    archive.set_preserve_permissions(false);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(false);
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let raw = entry.path().map_err(corrupt)?;
        let name = raw.to_string_lossy().into_owned();
        let rel = safe_relative(&name)?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let kind = entry.header().entry_type();
        use tar::EntryType as T;
        match kind {
            T::Regular | T::Continuous | T::Directory => {}
            T::Symlink | T::Link => {
                let target = entry
                    .link_name()
                    .map_err(corrupt)?
                    .map(|t| t.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if kind == T::Symlink {
                    check_link_target(&rel, &target)?;
                } else {
                    // A hard link names another entry of the archive.
                    safe_relative(&target).map_err(|_| ArchiveError::LinkEscape {
                        entry: name.clone(),
                        target: target.clone(),
                    })?;
                }
            }
            T::Char => return Err(special(&name, "character device")),
            T::Block => return Err(special(&name, "block device")),
            T::Fifo => return Err(special(&name, "fifo")),
            other => return Err(special(&name, &format!("{other:?} entry"))),
        }
        no_link_in_parents(dest, &rel, &name)?;
        if std::fs::symlink_metadata(dest.join(&rel)).is_ok() && kind != T::Directory {
            return Err(ArchiveError::Duplicate { entry: name });
        }
        let unpacked = entry.unpack_in(dest).map_err(|source| {
            // unpack_in reports both I/O trouble and truncated data as io errors.
            if source.kind() == std::io::ErrorKind::UnexpectedEof
                || source.kind() == std::io::ErrorKind::InvalidData
            {
                ArchiveError::Corrupt {
                    kind: "tar.gz",
                    source,
                }
            } else {
                ArchiveError::Io {
                    path: dest.join(&rel),
                    source,
                }
            }
        })?;
        if !unpacked {
            return Err(ArchiveError::Traversal { entry: name });
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

fn unpack_zip<R: Read + Seek>(reader: R, dest: &Path) -> Result<()> {
    let corrupt = |e: zip::result::ZipError| ArchiveError::Corrupt {
        kind: "zip",
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
    };
    let mut zip = zip::ZipArchive::new(reader).map_err(corrupt)?;
    for i in 0..zip.len() {
        let mut file = zip.by_index(i).map_err(corrupt)?;
        let name = file.name().to_string();
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
                let mut link = String::new();
                file.read_to_string(&mut link)
                    .map_err(|source| ArchiveError::Corrupt {
                        kind: "zip",
                        source,
                    })?;
                check_link_target(&rel, &link)?;
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(io)?;
                }
                make_symlink(&link, &target).map_err(io)?;
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
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)
            .map_err(|source| {
                if source.kind() == std::io::ErrorKind::AlreadyExists {
                    ArchiveError::Duplicate {
                        entry: name.clone(),
                    }
                } else {
                    io(source)
                }
            })?;
        std::io::copy(&mut file, &mut out).map_err(|source| ArchiveError::Corrupt {
            kind: "zip",
            source,
        })?;
        set_mode(&target, mode.map(|m| m & 0o777).unwrap_or(0o644)).map_err(io)?;
    }
    Ok(())
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

/// After unpacking: every link that resolves must resolve inside `dest`. This catches chains
/// (`a -> .`, `b -> a/..`) that each look harmless alone.
fn check_links(dest: &Path) -> Result<()> {
    let root = dest.canonicalize().map_err(|source| ArchiveError::Io {
        path: dest.to_path_buf(),
        source,
    })?;
    let mut stack = vec![dest.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|source| ArchiveError::Io {
            path: dir.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(ft) = entry.file_type() else { continue };
            if ft.is_symlink() {
                if let Ok(real) = path.canonicalize()
                    && !real.starts_with(&root)
                {
                    let target = std::fs::read_link(&path)
                        .map(|t| t.display().to_string())
                        .unwrap_or_default();
                    return Err(ArchiveError::LinkEscape {
                        entry: path
                            .strip_prefix(dest)
                            .unwrap_or(&path)
                            .display()
                            .to_string(),
                        target,
                    });
                }
            } else if ft.is_dir() {
                stack.push(path);
            }
        }
    }
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
        let r = unpack(detect(bytes), &art, &dest, "app");
        (dir, r)
    }

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
