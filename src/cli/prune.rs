//! `strata prune`: delete least-recently-used leaves until a target is met; safe from cron
//! while builds run.

use std::time::Duration;

use clap::Args;

use super::backend::{self, StoreArgs};
use super::{exit, units, CliError, CliResult, GlobalArgs};
use strata::catalog::prune::{cutoff_older_than, KeepFree, PruneOptions, PruneReport, Removed};

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Only items last used longer ago than this (0s = everything used before now)
    #[arg(long = "older-than", value_parser = units::parse_duration, value_name = "DURATION", conflicts_with = "before")]
    pub older_than: Option<Duration>,
    /// Only items last used before this RFC 3339 time
    #[arg(long, value_parser = units::parse_time, value_name = "TIMESTAMP")]
    pub before: Option<i64>,
    /// Delete at most N items
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Stop once this much is free: a percentage (20%) or a size (50G)
    #[arg(long = "keep-free", value_parser = parse_keep_free, value_name = "PERCENT|SIZE")]
    pub keep_free: Option<KeepFree>,
    /// Stop once the items use at most this much
    #[arg(long = "max-used", value_parser = units::parse_size, value_name = "SIZE")]
    pub max_used: Option<u64>,
    /// Also delete caches that are not in use (alone: only caches, no items)
    #[arg(long)]
    pub caches: bool,
    /// Print what would be deleted; delete nothing
    #[arg(long = "dry-run")]
    pub dry_run: bool,
    /// One JSON object on stdout
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

fn parse_keep_free(text: &str) -> Result<KeepFree, String> {
    match text.strip_suffix('%') {
        Some(p) => p
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|p| (0.0..=100.0).contains(p))
            .map(KeepFree::Percent)
            .ok_or_else(|| format!("invalid percentage {text:?}")),
        None => units::parse_size(text).map(KeepFree::Bytes),
    }
}

pub fn print_report(report: &PruneReport, json: bool) {
    if json {
        println!("{}", serde_json::to_string(report).unwrap_or_default());
        return;
    }
    let verb = if report.dry_run { "Would remove" } else { "Removed" };
    println!(
        "{verb} {} items, {} in {:.2}s ({}; {} in use skipped)",
        report.removed.len(),
        units::format_size(report.bytes_freed),
        report.seconds,
        report.stopped,
        report.skipped_in_use
    );
    for cache in &report.caches_removed {
        println!("{verb} cache {cache}");
    }
}

pub fn run_prune(global: &GlobalArgs, store: &StoreArgs, options: PruneOptions, json: bool) -> CliResult {
    let catalog = backend::open_catalog(global, store)?;
    let verb = if options.dry_run { "Would remove" } else { "Removing" };
    let mut on_remove = |r: &Removed| {
        // `-q` (cron): only errors; `--json` still prints its object.
        if !json && !global.quiet {
            println!(
                "{verb} {} ({}, last used {})",
                r.id,
                units::format_size(r.size),
                units::format_time(r.used)
            );
        }
    };
    let report = catalog.prune(&options, &mut on_remove).map_err(CliError::catalog)?;
    if json || !global.quiet {
        print_report(&report, json);
    }
    Ok(exit::SUCCESS)
}

pub fn run(global: &GlobalArgs, args: PruneArgs) -> CliResult {
    let before_ms = match (args.older_than, args.before) {
        (Some(age), _) => cutoff_older_than(age),
        (None, Some(t)) => t,
        (None, None) if args.keep_free.is_some() || args.max_used.is_some() || args.limit.is_some() => {
            strata::db::now_ms()
        }
        // `prune --caches` alone: the caches, and no item (none was last used before 1970).
        (None, None) if args.caches => 0,
        (None, None) => {
            return Err(CliError::usage(anyhow::anyhow!(
                "say what to prune: --older-than, --before, --keep-free, --max-used, --limit or --caches"
            )))
        }
    };
    let options = PruneOptions {
        before_ms,
        limit: args.limit,
        keep_free: args.keep_free,
        max_used: args.max_used,
        dry_run: args.dry_run,
        caches: args.caches,
    };
    run_prune(global, &args.store, options, args.json)
}
