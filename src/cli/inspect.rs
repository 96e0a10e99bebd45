//! Looking inside a store: `ls`, `info`, `log`, `du`.

use std::io::Write;

use clap::Args;

use super::backend::{self, StoreArgs};
use super::{exit, units, CliError, CliResult, GlobalArgs};
use strata_stores::StepId;

#[derive(Debug, Args)]
pub struct LsArgs {
    /// One JSON array on stdout
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Args)]
pub struct IdArgs {
    /// The step id
    pub id: String,
    /// JSON on stdout
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Args)]
pub struct DuArgs {
    /// One JSON object on stdout
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

fn step_id(text: &str) -> Result<StepId, CliError> {
    text.parse().map_err(CliError::usage)
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

pub fn ls(global: &GlobalArgs, args: LsArgs) -> CliResult {
    let catalog = backend::open_catalog(global, &args.store)?;
    let rows = catalog.items().map_err(CliError::catalog)?;
    if args.json {
        println!("{}", serde_json::to_string(&rows).unwrap_or_default());
        return Ok(exit::SUCCESS);
    }
    println!(
        "{:<64}  {:<12}  {:<24}  {:<24}  {:>10}",
        "ID", "PARENT", "CREATED", "LAST USED", "SIZE"
    );
    for r in rows {
        println!(
            "{:<64}  {:<12}  {:<24}  {:<24}  {:>10}",
            r.id,
            r.parent.as_ref().map(|p| short(p.as_str())).unwrap_or("-"),
            units::format_time(r.created),
            units::format_time(r.used),
            units::format_size(r.size)
        );
    }
    Ok(exit::SUCCESS)
}

pub fn info(global: &GlobalArgs, args: IdArgs) -> CliResult {
    let id = step_id(&args.id)?;
    let catalog = backend::open_catalog(global, &args.store)?;
    let chain = catalog.chain(&id).map_err(CliError::catalog)?;
    if args.json {
        println!("{}", serde_json::to_string(&chain).unwrap_or_default());
        return Ok(exit::SUCCESS);
    }
    let item = &chain[0];
    println!("id:        {}", item.id);
    println!("op:        {}", item.op);
    println!("created:   {}", units::format_time(item.created));
    println!("last used: {}", units::format_time(item.used));
    println!("size:      {}", units::format_size(item.size));
    println!("took:      {:.3}s", item.duration_ms as f64 / 1000.0);
    println!("children:  {}", item.children);
    if let Some(digest) = chain.iter().find_map(|r| r.base_digest.as_deref()) {
        println!("base:      {digest}");
    }
    println!("chain:");
    for r in &chain {
        println!("  {}  {}", short(r.id.as_str()), r.op);
    }
    Ok(exit::SUCCESS)
}

pub fn log(global: &GlobalArgs, args: IdArgs) -> CliResult {
    let id = step_id(&args.id)?;
    let catalog = backend::open_catalog(global, &args.store)?;
    let path = catalog
        .log_path(&id)
        .map_err(CliError::catalog)?
        .ok_or_else(|| CliError::usage(anyhow::anyhow!("no item {id} in the store")))?;
    let bytes =
        std::fs::read(&path).map_err(|e| CliError::environment(anyhow::anyhow!("reading {}: {e}", path.display())))?;
    let _ = std::io::stdout().lock().write_all(&bytes);
    Ok(exit::SUCCESS)
}

pub fn du(global: &GlobalArgs, args: DuArgs) -> CliResult {
    let catalog = backend::open_catalog(global, &args.store)?;
    let usage = catalog.usage().map_err(CliError::catalog)?;
    if args.json {
        println!("{}", serde_json::to_string(&usage).unwrap_or_default());
    } else {
        println!("items:  {} ({})", usage.items, units::format_size(usage.item_bytes));
        println!("caches: {}", usage.caches);
        println!(
            "free:   {} of {} ({:.1}%)",
            units::format_size(usage.free_bytes),
            units::format_size(usage.total_bytes),
            usage.free_percent
        );
    }
    Ok(exit::SUCCESS)
}
