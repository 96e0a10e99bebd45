//! `strata clean`: delete every item no running build uses, whatever its age.

use clap::Args;

use super::backend::StoreArgs;
use super::{CliResult, GlobalArgs};
use strata::catalog::prune::PruneOptions;

#[derive(Debug, Args)]
pub struct CleanArgs {
    /// Also delete caches that are not in use
    #[arg(long)]
    pub caches: bool,
    /// One JSON object on stdout
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

pub fn run(global: &GlobalArgs, args: CleanArgs) -> CliResult {
    let options = PruneOptions {
        before_ms: i64::MAX,
        caches: args.caches,
        ..PruneOptions::default()
    };
    super::prune::run_prune(global, &args.store, options, args.json)
}
