//! `rollgate pki`: the private CA and the certificates it issues.

use crate::cli::{CliError, PkiCommand, exit, failed, output};

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
        } => {
            let existing = if force {
                crate::pki::Existing::Replace
            } else {
                crate::pki::Existing::Refuse
            };
            let issued = match (agent, client, approver) {
                (Some(host), ..) => crate::pki::issue_agent_with(&dir, &host, existing),
                (None, Some(name), _) => crate::pki::issue_client_with(&dir, &name, existing),
                (None, None, Some(name)) => crate::pki::issue_approver_with(&dir, &name, existing),
                (None, None, None) => unreachable!("clap requires one"),
            }
            .map_err(failed)?;
            output::out(&format!(
                "certificate: {}\nkey: {}\n",
                issued.cert.display(),
                issued.key.display()
            ));
        }
    }
    Ok(exit::OK)
}
