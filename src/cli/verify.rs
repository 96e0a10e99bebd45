//! `strata verify [--repair]`: check the database against the store.

use clap::Args;
use strata_sandbox::cleanup::Orphan;

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
    report: &'a strata::catalog::reconcile::Report,
    #[serde(skip_serializing_if = "Option::is_none")]
    remaining: Option<&'a [strata::catalog::reconcile::Problem]>,
    /// What killed strata processes left of their steps (containers, cgroups, bundles);
    /// removed with `--repair`.
    leftovers: &'a [Orphan],
    #[serde(skip_serializing_if = "Option::is_none")]
    leftovers_remaining: Option<&'a [Orphan]>,
}

pub fn run(global: &GlobalArgs, args: VerifyArgs) -> CliResult {
    // Open without the start-up repair (the store keeps the temporaries of dead processes,
    // the catalog does not reconcile), so verify sees the store as it is.
    let store = backend::open_store_with(global, &args.store, strata_stores::Leftovers::Keep)?;
    let catalog = backend::open_catalog_of(store, &args.store)?;
    let state = catalog.state_dir();
    let dirs = backend::sandbox_dirs(&state);
    let owners = state.join("owners");
    let alive = backend::owner_alive(&owners);
    let leftovers = dirs.find_orphans(&alive).map_err(CliError::environment)?;
    if args.repair && !leftovers.is_empty() {
        dirs.remove_orphans(&alive).map_err(CliError::environment)?;
    }
    let report = catalog.reconcile(args.repair).map_err(CliError::catalog)?;
    let clean = report.problems.is_empty() && leftovers.is_empty();
    // Repaired: consistent now?
    let after = if args.repair && !clean {
        let after = catalog.reconcile(false).map_err(CliError::catalog)?;
        let still = dirs.find_orphans(&alive).map_err(CliError::environment)?;
        Some((after, still))
    } else {
        None
    };
    if args.json {
        let json = JsonReport {
            report: &report,
            remaining: after.as_ref().map(|(a, _)| a.problems.as_slice()),
            leftovers: &leftovers,
            leftovers_remaining: after.as_ref().map(|(_, still)| still.as_slice()),
        };
        println!("{}", serde_json::to_string(&json).unwrap_or_default());
    } else {
        for p in &report.problems {
            println!("problem: {p}");
        }
        for o in &leftovers {
            println!("problem: {o}");
        }
        if args.repair {
            for o in &leftovers {
                println!("repaired: removed {o}");
            }
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
        Some((after, still)) => {
            if !args.json {
                for p in &after.problems {
                    println!("still: {p}");
                }
                for o in &still {
                    println!("still: {o}");
                }
            }
            Ok(if after.problems.is_empty() && still.is_empty() {
                0
            } else {
                1
            })
        }
        None => Ok(1),
    }
}
