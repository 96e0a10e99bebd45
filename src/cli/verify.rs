//! `strata verify [--repair]`: check the database against the store.

use clap::Args;

use super::backend::{self, StoreArgs};
use super::{CliError, CliResult, GlobalArgs};

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Fix what can be fixed, and say what was done
    #[arg(long)]
    pub repair: bool,
    /// One JSON object on stdout
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

pub fn run(global: &GlobalArgs, args: VerifyArgs) -> CliResult {
    let store = backend::open_store(global, &args.store)?;
    // Open without the start-up repair, so verify sees the store as it is.
    let builder = crate::build::Builder::new(
        store,
        std::sync::Arc::new(crate::build::unavailable::NoSandbox),
        std::sync::Arc::new(crate::build::unavailable::NoFetcher),
        args.store.id_scheme,
    )
    .map_err(|e| CliError::environment(anyhow::Error::new(e)))?;
    let report = builder
        .reconcile(args.repair)
        .map_err(|e| CliError::environment(anyhow::Error::new(e)))?;
    let clean = report.problems.is_empty();
    if args.json {
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
    } else {
        for p in &report.problems {
            println!("problem: {p}");
        }
        for r in &report.repairs {
            println!("repaired: {r}");
        }
        if clean {
            println!("store is consistent");
        }
    }
    if clean {
        return Ok(0);
    }
    if args.repair {
        // Repaired: consistent now?
        let after = builder
            .reconcile(false)
            .map_err(|e| CliError::environment(anyhow::Error::new(e)))?;
        for p in &after.problems {
            println!("still: {p}");
        }
        return Ok(if after.problems.is_empty() { 0 } else { 1 });
    }
    Ok(1)
}
