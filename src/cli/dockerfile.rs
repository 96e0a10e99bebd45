//! `strata dockerfile -f FILE [--buildkit] [--escape unix|windows]`: OBuilder's conversion.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::check::read_spec_text;
use super::exit::{CliError, CliResult, SUCCESS};
use strata::spec::dockerfile::{to_dockerfile, DockerfileOptions, Escape};
use strata::spec::parse_spec;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EscapeArg {
    /// `\` line continuations; stages start as 0:0
    Unix,
    /// `` ` `` line continuations and an `#escape` line; stages start as ContainerAdministrator
    Windows,
}

#[derive(Debug, Args)]
pub struct DockerfileArgs {
    /// The spec file (`-` reads standard input)
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: PathBuf,
    /// Write caches and secrets as BuildKit `RUN --mount=...` options
    #[arg(long)]
    pub buildkit: bool,
    /// The Dockerfile escape character style
    #[arg(long, value_enum, default_value_t = EscapeArg::Unix)]
    pub escape: EscapeArg,
}

pub fn run(args: &DockerfileArgs) -> CliResult {
    let (name, text) = read_spec_text(&args.file).map_err(CliError::usage)?;
    let spec = parse_spec(&name, &text).map_err(CliError::usage)?;
    let escape = match args.escape {
        EscapeArg::Unix => Escape::Unix,
        EscapeArg::Windows => Escape::Windows,
    };
    let dockerfile = to_dockerfile(
        &spec,
        &DockerfileOptions {
            buildkit: args.buildkit,
            escape,
        },
    )
    .map_err(|e| CliError::usage(anyhow::anyhow!("{}: {e}", name.display())))?;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(dockerfile.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| CliError::environment(anyhow::anyhow!("cannot write to standard output: {e}")))?;
    Ok(SUCCESS)
}
