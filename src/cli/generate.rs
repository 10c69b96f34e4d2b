//! `rollgate completion SHELL` and `rollgate man`: generated from the clap definitions themselves.

use clap::CommandFactory;

use crate::cli::{Cli, CliError, exit, output};

/// Shell completions for `shell`, on stdout.
pub fn completion(shell: clap_complete::Shell) -> Result<u8, CliError> {
    let mut text = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "rollgate", &mut text);
    output::out(&String::from_utf8_lossy(&text));
    Ok(exit::OK)
}

/// The man page (roff), on stdout.
pub fn man() -> Result<u8, CliError> {
    let mut text = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut text)
        .map_err(|e| CliError::Failed(format!("rendering the man page: {e}")))?;
    output::out(&String::from_utf8_lossy(&text));
    Ok(exit::OK)
}
