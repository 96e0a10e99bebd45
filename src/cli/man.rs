//! `strata man`: the man page (roff) generated from the clap definitions, on stdout.

use std::io::Write;

use clap::{Args, CommandFactory};

use super::exit::{CliError, CliResult, SUCCESS};
use super::Cli;

#[derive(Debug, Args)]
pub struct ManArgs {}

pub fn run(_args: &ManArgs) -> CliResult {
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut page)
        .map_err(|e| CliError::environment(anyhow::anyhow!("cannot render the man page: {e}")))?;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&page)
        .and_then(|()| stdout.flush())
        .map_err(|e| CliError::environment(anyhow::anyhow!("cannot write to standard output: {e}")))?;
    Ok(SUCCESS)
}
