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
    let builder = backend::open_for_maintenance(global, &args.store)?;
    match args.command {
        CacheCommand::Ls { json } => {
            let names = builder.store().list_caches().map_err(CliError::environment)?;
            let used: std::collections::HashMap<String, i64> = builder
                .db()
                .caches()
                .map_err(CliError::environment)?
                .into_iter()
                .map(|(name, _, used)| (name, used))
                .collect();
            if json {
                let list: Vec<_> = names
                    .iter()
                    .map(|n| serde_json::json!({"name": n, "used": used.get(n)}))
                    .collect();
                println!("{}", serde_json::Value::Array(list));
            } else {
                for n in names {
                    let when = used
                        .get(&n)
                        .map(|t| units::format_time(*t))
                        .unwrap_or_else(|| "-".into());
                    println!("{n:<40}  {when}");
                }
            }
        }
        CacheCommand::Rm { name } => {
            // A name that neither the store nor the database knows is a mistake (a typo, a
            // cache already removed): say so rather than "Removed".
            let on_disk = builder
                .store()
                .list_caches()
                .map_err(CliError::environment)?
                .contains(&name);
            let recorded = builder
                .db()
                .caches()
                .map_err(CliError::environment)?
                .iter()
                .any(|(n, _, _)| *n == name);
            if !on_disk && !recorded {
                return Err(CliError::usage(anyhow::anyhow!(
                    "no cache named {name:?} (`strata cache ls` lists them)"
                )));
            }
            if on_disk {
                builder.store().delete_cache(&name).map_err(CliError::environment)?;
            }
            builder.db().delete_cache(&name).map_err(CliError::environment)?;
            println!("Removed cache {name}");
        }
    }
    Ok(exit::SUCCESS)
}
