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
    let builder = backend::open_for_maintenance(global, &args.store)?;
    let id: strata_stores::StepId = args.id.parse().map_err(CliError::usage)?;
    let known = builder
        .db()
        .exists(&id)
        .map_err(|e| CliError::environment(anyhow::Error::new(e)))?;
    if !known {
        return Err(CliError::usage(anyhow::anyhow!("no item {id} in the store")));
    }
    let removed = builder
        .delete_tree(id.as_str(), &mut |id| println!("Removing {id}"))
        .map_err(|e| CliError::environment(anyhow::Error::new(e)))?;
    if !removed.iter().any(|r| r == id.as_str()) {
        return Err(CliError::environment(anyhow::anyhow!(
            "{id} (or a descendant) is in use by a running build; removed {} items",
            removed.len()
        )));
    }
    println!("Removed {} items", removed.len());
    Ok(exit::SUCCESS)
}
