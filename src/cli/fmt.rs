//! `strata fmt FILE [--check]`: the canonical readable layout, comments kept.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use super::check::read_spec_text;
use super::exit::{CliError, CliResult, STEP_FAILED, SUCCESS};
use strata::spec::format::format_source;

#[derive(Debug, Args)]
pub struct FmtArgs {
    /// The spec file (`-` reads standard input)
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Print nothing; exit 1 if the file is not in canonical layout
    #[arg(long)]
    pub check: bool,
}

pub fn run(args: &FmtArgs) -> CliResult {
    let (name, text) = read_spec_text(&args.file).map_err(CliError::usage)?;
    let formatted = format_source(&name, &text).map_err(CliError::usage)?;
    if args.check {
        if formatted == text {
            return Ok(SUCCESS);
        }
        eprintln!("{}: not in canonical layout (run `strata fmt` on it)", name.display());
        return Ok(STEP_FAILED);
    }
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(formatted.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| CliError::environment(anyhow::anyhow!("cannot write to standard output: {e}")))?;
    Ok(SUCCESS)
}
