//! Archive unpacker: whatever the artifact, nothing is written, linked or re-permissioned outside
//! the destination dir, and an artifact that unpacks leaves no link resolving outside it and no
//! setuid/setgid file.
//!
//! Input: a mode byte, then either raw artifact bytes (`0`: kind detected by magic, `1`: as
//! tar.gz, `2`: gzip-wrapped tar, `3`: zip, `4`: a single binary named by the first line) or
//! (`5`, `6`) a list of entries built into a tar.gz / zip without any name checks:
//! `kind mode_hi mode_lo name_len name link_len link data_len data` repeated.
#![no_main]

use std::io::Write;
use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use rollgate::agent::api::ArtifactKind;
use rollgate::agent::archive;

/// Small caps, so that an input exceeding them is found quickly; `fuzz/ci.sh` also caps each
/// allocation (`-malloc_limit_mb`), so a name or header read past the caps fails the run.
const CAPS: archive::Caps = archive::Caps {
    bytes: 8 << 20,
    entries: 1000,
};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (kind, bytes, binary_name) = match mode % 7 {
        0 => (archive::detect(rest), rest.to_vec(), "app".to_string()),
        1 => (ArtifactKind::TarGz, rest.to_vec(), "app".into()),
        2 => (ArtifactKind::TarGz, gzip(rest), "app".into()),
        3 => (ArtifactKind::Zip, rest.to_vec(), "app".into()),
        4 => {
            let cut = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            let name = String::from_utf8_lossy(&rest[..cut]).into_owned();
            (ArtifactKind::Binary, rest[cut..].to_vec(), name)
        }
        5 => (
            ArtifactKind::TarGz,
            gzip(&tar_of(&entries(rest))),
            "app".into(),
        ),
        _ => (ArtifactKind::Zip, zip_of(&entries(rest)), "app".into()),
    };
    check(kind, &bytes, &binary_name);
});

/// `root/a/b/c/out` is the destination: `..` chains land in dirs we can watch.
fn check(kind: ArtifactKind, bytes: &[u8], binary_name: &str) {
    let base = if Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm")
    } else {
        tempfile::tempdir()
    }
    .unwrap();
    let root = base.path();
    let deep = root.join("a/b/c");
    let dest = deep.join("out");
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::write(root.join("a/secret"), b"secret").unwrap();
    std::fs::write(deep.join("sentinel"), b"sentinel").unwrap();
    let artifact = root.join("artifact");
    std::fs::write(&artifact, bytes).unwrap();
    let before = outside(root, &dest);

    let result = archive::unpack(kind, &artifact, &dest, binary_name, CAPS);
    if result.is_ok() {
        let unpacked: u64 = walk(&dest)
            .iter()
            .filter(|(_, m)| m.is_file())
            .map(|(_, m)| m.len())
            .sum();
        assert!(unpacked <= CAPS.bytes, "unpacked {unpacked} bytes past the cap");
    }

    let after = outside(root, &dest);
    assert_eq!(
        before, after,
        "the unpacker changed something outside its dir: {result:?}"
    );
    if result.is_ok() {
        let real_dest = dest.canonicalize().unwrap();
        for (path, meta) in walk(&dest) {
            if meta.file_type().is_symlink()
                && let Ok(real) = path.canonicalize()
            {
                assert!(
                    real.starts_with(&real_dest),
                    "{} resolves outside: {}",
                    path.display(),
                    real.display()
                );
            }
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                if !meta.file_type().is_symlink() {
                    assert_eq!(
                        meta.permissions().mode() & 0o6000,
                        0,
                        "{} was unpacked setuid/setgid",
                        path.display()
                    );
                }
            }
        }
    }
    // Make everything removable again, whatever modes the archive set.
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let _ = chmod(&d, 0o700);
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
}

#[cfg(unix)]
fn chmod(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Every path outside `dest` with its type, mode and contents (links are not followed).
fn outside(root: &Path, dest: &Path) -> Vec<(PathBuf, String)> {
    let mut out: Vec<_> = walk(root)
        .into_iter()
        .filter(|(p, _)| !p.starts_with(dest))
        .map(|(p, meta)| {
            #[cfg(unix)]
            let mode = {
                use std::os::unix::fs::PermissionsExt;
                meta.permissions().mode()
            };
            let contents = if meta.is_file() {
                std::fs::read(&p).unwrap_or_default()
            } else {
                Vec::new()
            };
            let desc = format!("{:?} {mode:o} {}", meta.file_type(), contents.len());
            (p, desc)
        })
        .collect();
    for dir in [
        root.to_path_buf(),
        root.join("a"),
        root.join("a/b"),
        root.join("a/b/c"),
    ] {
        let meta = std::fs::symlink_metadata(&dir).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            out.push((dir, format!("dir {:o}", meta.permissions().mode())));
        }
    }
    out.sort();
    out
}

fn walk(dir: &Path) -> Vec<(PathBuf, std::fs::Metadata)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(p.clone());
            }
            out.push((p, meta));
        }
    }
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

struct Entry {
    kind: u8,
    mode: u32,
    name: Vec<u8>,
    link: Vec<u8>,
    data: Vec<u8>,
}

fn entries(mut rest: &[u8]) -> Vec<Entry> {
    let take = |n: usize, rest: &mut &[u8]| -> Vec<u8> {
        let n = n.min(rest.len());
        let (a, b) = rest.split_at(n);
        *rest = b;
        a.to_vec()
    };
    let mut out = Vec::new();
    while rest.len() >= 3 && out.len() < 16 {
        let head = take(3, &mut rest);
        let len = take(1, &mut rest).first().copied().unwrap_or(0) as usize;
        let name = take(len.min(99), &mut rest);
        let len = take(1, &mut rest).first().copied().unwrap_or(0) as usize;
        let link = take(len.min(99), &mut rest);
        let len = take(1, &mut rest).first().copied().unwrap_or(0) as usize;
        let data = take(len, &mut rest);
        out.push(Entry {
            kind: head[0],
            mode: u32::from(head[1]) << 8 | u32::from(head[2]),
            name,
            link,
            data,
        });
    }
    out
}

fn tar_of(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..e.name.len()].copy_from_slice(&e.name);
        gnu.linkname[..e.link.len()].copy_from_slice(&e.link);
        h.set_entry_type(match e.kind % 7 {
            0 => tar::EntryType::Regular,
            1 => tar::EntryType::Directory,
            2 => tar::EntryType::Symlink,
            3 => tar::EntryType::Link,
            4 => tar::EntryType::Fifo,
            5 => tar::EntryType::Char,
            _ => tar::EntryType::Regular,
        });
        h.set_mode(e.mode & 0o7777);
        h.set_size(e.data.len() as u64);
        h.set_cksum();
        b.append(&h, &e.data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

fn zip_of(entries: &[Entry]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for e in entries {
        let name = String::from_utf8_lossy(&e.name).into_owned();
        let opts = zip::write::SimpleFileOptions::default().unix_permissions(e.mode & 0o7777);
        let r = match e.kind % 3 {
            0 => w
                .start_file(name, opts)
                .and_then(|_| w.write_all(&e.data).map_err(zip::result::ZipError::Io)),
            1 => w.add_directory(name, opts),
            _ => w.add_symlink(name, String::from_utf8_lossy(&e.link), opts),
        };
        if r.is_err() {
            break;
        }
    }
    w.finish().map(|c| c.into_inner()).unwrap_or_default()
}
