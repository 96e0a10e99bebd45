//! Looking inside a store: `ls`, `info`, `log`, `du`.

use std::io::Write;

use clap::Args;

use super::backend::{self, StoreArgs};
use super::{exit, units, CliError, CliResult, GlobalArgs};
use strata::builder::Builder;
use strata::db::BuildRow;

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

fn env_err(e: impl Into<anyhow::Error>) -> CliError {
    CliError::environment(e)
}

fn row(builder: &Builder, id: &str) -> Result<BuildRow, CliError> {
    builder
        .db()
        .get(id)
        .map_err(env_err)?
        .ok_or_else(|| CliError::usage(anyhow::anyhow!("no item {id} in the store")))
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

pub fn ls(global: &GlobalArgs, args: LsArgs) -> CliResult {
    let builder = backend::open_for_maintenance(global, &args.store)?;
    let rows = builder.db().list().map_err(env_err)?;
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
            r.parent.as_deref().map(short).unwrap_or("-"),
            units::format_time(r.created),
            units::format_time(r.used),
            units::format_size(r.size)
        );
    }
    Ok(exit::SUCCESS)
}

pub fn info(global: &GlobalArgs, args: IdArgs) -> CliResult {
    let builder = backend::open_for_maintenance(global, &args.store)?;
    let mut chain = vec![row(&builder, &args.id)?];
    while let Some(parent) = chain.last().and_then(|r| r.parent.clone()) {
        match builder.db().get(&parent).map_err(env_err)? {
            Some(r) => chain.push(r),
            None => break,
        }
    }
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
        println!("  {}  {}", short(&r.id), r.op);
    }
    Ok(exit::SUCCESS)
}

pub fn log(global: &GlobalArgs, args: IdArgs) -> CliResult {
    let builder = backend::open_for_maintenance(global, &args.store)?;
    let id: strata_stores::StepId = args.id.parse().map_err(CliError::usage)?;
    let path = builder
        .log_path(&id)
        .map_err(env_err)?
        .ok_or_else(|| CliError::usage(anyhow::anyhow!("no item {id} in the store")))?;
    let bytes = std::fs::read(&path).map_err(|e| env_err(anyhow::anyhow!("reading {}: {e}", path.display())))?;
    let _ = std::io::stdout().lock().write_all(&bytes);
    Ok(exit::SUCCESS)
}

pub fn du(global: &GlobalArgs, args: DuArgs) -> CliResult {
    let builder = backend::open_for_maintenance(global, &args.store)?;
    let rows = builder.db().list().map_err(env_err)?;
    let caches = builder.store().list_caches().map_err(env_err)?;
    let usage = builder.store().disk_usage().map_err(env_err)?;
    let bytes: u64 = rows.iter().map(|r| r.size).sum();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "items": rows.len(), "item_bytes": bytes, "caches": caches.len(),
                "total_bytes": usage.total_bytes, "free_bytes": usage.free_bytes,
                "free_percent": usage.free_percent(),
            })
        );
    } else {
        println!("items:  {} ({})", rows.len(), units::format_size(bytes));
        println!("caches: {}", caches.len());
        println!(
            "free:   {} of {} ({:.1}%)",
            units::format_size(usage.free_bytes),
            units::format_size(usage.total_bytes),
            usage.free_percent()
        );
    }
    Ok(exit::SUCCESS)
}
