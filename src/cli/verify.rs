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

/// What `--json` prints: the report, and with `--repair` what is still wrong afterwards.
#[derive(serde::Serialize)]
struct JsonReport<'a> {
    #[serde(flatten)]
    report: &'a crate::build::reconcile::Report,
    #[serde(skip_serializing_if = "Option::is_none")]
    remaining: Option<&'a [crate::build::reconcile::Problem]>,
}

pub fn run(global: &GlobalArgs, args: VerifyArgs) -> CliResult {
    // Open without the start-up repair (the store keeps the temporaries of dead processes,
    // the builder does not reconcile), so verify sees the store as it is.
    let store = backend::open_store_with(global, &args.store, strata_stores::Leftovers::Keep)?;
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
    // Repaired: consistent now?
    let after = if args.repair && !clean {
        Some(
            builder
                .reconcile(false)
                .map_err(|e| CliError::environment(anyhow::Error::new(e)))?,
        )
    } else {
        None
    };
    if args.json {
        let json = JsonReport {
            report: &report,
            remaining: after.as_ref().map(|a| a.problems.as_slice()),
        };
        println!("{}", serde_json::to_string(&json).unwrap_or_default());
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
    match after {
        _ if clean => Ok(0),
        Some(after) => {
            if !args.json {
                for p in &after.problems {
                    println!("still: {p}");
                }
            }
            Ok(if after.problems.is_empty() { 0 } else { 1 })
        }
        None => Ok(1),
    }
}
