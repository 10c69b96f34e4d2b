//! `rollgate artifact pack DIR -o FILE.tar.gz`: a version dir as the agent unpacks it (README
//! "Artifacts"), packed reproducibly, and its sha256 for the manifest.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::cli::{CliError, exit, output};
use crate::spec::InputError;

/// Packs the contents of `dir` (not `dir` itself) into `out` and prints `SHA256  FILE`.
pub fn pack(dir: &Path, out: &Path) -> Result<u8, CliError> {
    if !dir.is_dir() {
        return Err(InputError::general(format!(
            "{}: not a directory: expected the folder that becomes the version dir",
            dir.display()
        ))
        .into());
    }
    let mut entries = Vec::new();
    walk(dir, Path::new(""), &mut entries)?;
    if !entries.iter().any(|(_, meta)| meta.is_file()) {
        return Err(InputError::general(format!(
            "{}: holds no files: expected at least the program (`command:` in the agent config)",
            dir.display()
        ))
        .into());
    }
    let failed = |what: &str, path: &Path| {
        let what = format!("{what} {}", path.display());
        move |e: std::io::Error| CliError::Failed(format!("{what}: {e}"))
    };
    let file = std::fs::File::create(out).map_err(failed("writing", out))?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    for (rel, meta) in &entries {
        let name = rel.to_string_lossy().replace('\\', "/");
        let mut header = tar::Header::new_gnu();
        // Reproducible: the same folder packs to the same bytes, so to the same sha256.
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        if meta.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            tar.append_data(&mut header, format!("{name}/"), std::io::empty())
                .map_err(failed("writing", out))?;
        } else if meta.is_symlink() {
            let target = std::fs::read_link(dir.join(rel)).map_err(failed("reading", rel))?;
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_mode(0o777);
            header.set_size(0);
            tar.append_link(&mut header, &name, &target)
                .map_err(failed("writing", out))?;
        } else {
            let bytes = std::fs::read(dir.join(rel)).map_err(failed("reading", rel))?;
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(mode(meta));
            header.set_size(bytes.len() as u64);
            tar.append_data(&mut header, &name, bytes.as_slice())
                .map_err(failed("writing", out))?;
        }
    }
    let mut file = tar
        .into_inner()
        .and_then(|gz| gz.finish())
        .map_err(failed("writing", out))?;
    file.flush().map_err(failed("writing", out))?;
    let bytes = std::fs::read(out).map_err(failed("reading", out))?;
    let sha = hex::encode(Sha256::digest(&bytes));
    output::out(&format!("{sha}  {}\n", out.display()));
    Ok(exit::OK)
}

/// Every entry under `root/rel`, sorted, directories before what they hold; links not followed.
fn walk(
    root: &Path,
    rel: &Path,
    out: &mut Vec<(PathBuf, std::fs::Metadata)>,
) -> Result<(), CliError> {
    let here = root.join(rel);
    let read = |e: std::io::Error| CliError::Failed(format!("reading {}: {e}", here.display()));
    let mut names: Vec<_> = std::fs::read_dir(&here)
        .map_err(read)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(read)?;
    names.sort();
    for name in names {
        let rel = rel.join(name);
        let meta = std::fs::symlink_metadata(root.join(&rel)).map_err(read)?;
        let is_dir = meta.is_dir();
        if !(is_dir || meta.is_file() || meta.is_symlink()) {
            return Err(InputError::general(format!(
                "{}: neither a file, a folder nor a link: the agent would refuse it",
                root.join(&rel).display()
            ))
            .into());
        }
        out.push((rel.clone(), meta));
        if is_dir {
            walk(root, &rel, out)?;
        }
    }
    Ok(())
}

/// The file's permission bits (executables stay executable); 0644 where there are none.
fn mode(meta: &std::fs::Metadata) -> u32 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.permissions().mode() & 0o777
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        0o644
    }
}
