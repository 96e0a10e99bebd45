//! `strata completions SHELL`: shell completions generated from the clap definitions.

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use super::exit::{CliResult, SUCCESS};
use super::Cli;

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to write completions for
    #[arg(value_enum)]
    pub shell: Shell,
}

pub fn run(args: &CompletionsArgs) -> CliResult {
    let mut command = Cli::command();
    clap_complete::generate(args.shell, &mut command, "strata", &mut std::io::stdout());
    Ok(SUCCESS)
}
