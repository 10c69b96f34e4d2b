//! `rollgate pki`: the private CA and the certificates it issues.

use std::path::Path;

use crate::cli::{CliError, PkiCommand, exit, failed, output};
use crate::pki::expiry;
use crate::spec::InputError;

/// Runs a `pki` command.
pub(crate) fn command(cmd: PkiCommand) -> Result<u8, CliError> {
    match cmd {
        PkiCommand::Init { dir } => {
            let issued = crate::pki::init(&dir).map_err(failed)?;
            output::out(&format!(
                "CA written: {} (key {})\n",
                issued.cert.display(),
                issued.key.display()
            ));
        }
        PkiCommand::Issue {
            dir,
            agent,
            client,
            approver,
            force,
            days,
        } => {
            let existing = if force {
                crate::pki::Existing::Replace
            } else {
                crate::pki::Existing::Refuse
            };
            let issued = match (agent, client, approver) {
                (Some(host), ..) => crate::pki::issue_agent_for(&dir, &host, existing, days),
                (None, Some(name), _) => crate::pki::issue_client_for(&dir, &name, existing, days),
                (None, None, Some(name)) => {
                    crate::pki::issue_approver_for(&dir, &name, existing, days)
                }
                (None, None, None) => unreachable!("clap requires one"),
            }
            .map_err(failed)?;
            output::out(&format!(
                "certificate: {}\nkey: {}\nexpires: {}\n",
                issued.cert.display(),
                issued.key.display(),
                expires(&issued.cert)
            ));
        }
        PkiCommand::Check { dir } => return check(&dir),
    }
    Ok(exit::OK)
}

/// `DATE UTC (N days)` for the certificate in `path`.
fn expires(path: &Path) -> String {
    match expiry::of_pem_file(path) {
        Some(at) => format!(
            "{} ({} days)",
            output::utc(u64::try_from(at).unwrap_or(0) * 1000),
            expiry::days_left(at, expiry::now())
        ),
        None => "unreadable".into(),
    }
}

/// Every certificate in `dir` (keys skipped) with its expiry; a warning for each with fewer than
/// [`expiry::WARN_DAYS`] days left, and then exit 1.
fn check(dir: &Path) -> Result<u8, CliError> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        InputError::general(format!(
            "{}: {e}: expected a pki directory (`rollgate pki init`)",
            dir.display()
        ))
    })?;
    let mut files: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "pem") && !p.to_string_lossy().ends_with("-key.pem")
        })
        .collect();
    files.sort();
    let now = expiry::now();
    let mut soon = 0;
    for file in &files {
        let Some(at) = expiry::of_pem_file(file) else {
            continue;
        };
        let left = expiry::days_left(at, now);
        output::out(&format!("{}: expires {}\n", file.display(), expires(file)));
        if left < expiry::WARN_DAYS {
            soon += 1;
            let what = if at <= now {
                "has expired".to_string()
            } else {
                format!("expires in {left} days")
            };
            eprintln!(
                "warning: {} {what}: reissue it (`rollgate pki issue ... --force`)",
                file.display()
            );
        }
    }
    if files.is_empty() {
        return Err(InputError::general(format!("{}: no certificates", dir.display())).into());
    }
    Ok(if soon > 0 { exit::FAILED } else { exit::OK })
}
