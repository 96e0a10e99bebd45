//! `strata delete ID`: delete an item and all its descendants, children first.

use clap::Args;

use super::backend::{self, StoreArgs};
use super::{exit, CliError, CliResult, GlobalArgs};

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The step id
    pub id: String,
    #[command(flatten)]
    pub store: StoreArgs,
}

pub fn run(global: &GlobalArgs, args: DeleteArgs) -> CliResult {
    let id: strata_stores::StepId = args.id.parse().map_err(CliError::usage)?;
    let catalog = backend::open_catalog(global, &args.store)?;
    catalog.item(&id).map_err(CliError::catalog)?;
    let removed = catalog
        .delete_tree(&id, &mut |id| println!("Removing {id}"))
        .map_err(CliError::catalog)?;
    if !removed.contains(&id) {
        return Err(CliError::environment(anyhow::anyhow!(
            "{id} (or a descendant) is in use by a running build; removed {} items",
            removed.len()
        )));
    }
    println!("Removed {} items", removed.len());
    Ok(exit::SUCCESS)
}
