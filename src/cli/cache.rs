//! `strata cache ls|rm NAME`: the writable caches of a store.

use clap::{Args, Subcommand};

use super::backend::{self, StoreArgs};
use super::{exit, units, CliError, CliResult, GlobalArgs};

#[derive(Debug, Args)]
pub struct CacheArgs {
    #[command(subcommand)]
    pub command: CacheCommand,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// List caches with their last use
    Ls {
        /// One JSON array on stdout
        #[arg(long)]
        json: bool,
    },
    /// Delete a cache (refused while a step uses it, where the store needs that)
    Rm {
        /// The cache name, as in the spec
        name: String,
    },
}

pub fn run(global: &GlobalArgs, args: CacheArgs) -> CliResult {
    let catalog = backend::open_catalog(global, &args.store)?;
    match args.command {
        CacheCommand::Ls { json } => {
            let caches: Vec<_> = catalog
                .caches()
                .map_err(CliError::catalog)?
                .into_iter()
                .filter(|c| c.on_disk)
                .collect();
            if json {
                println!("{}", serde_json::to_string(&caches).unwrap_or_default());
            } else {
                for c in caches {
                    let when = c.used.map(units::format_time).unwrap_or_else(|| "-".into());
                    println!("{:<40}  {when}", c.name);
                }
            }
        }
        CacheCommand::Rm { name } => {
            // A name that neither the store nor the database knows is a mistake (a typo, a
            // cache already removed): the catalog says so (exit 2) rather than "Removed".
            catalog.remove_cache(&name).map_err(CliError::catalog)?;
            println!("Removed cache {name}");
        }
    }
    Ok(exit::SUCCESS)
}
