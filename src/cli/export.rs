//! `strata export ID DEST`: an item as an image (`oci:DIR[:TAG]`,
//! `docker-archive:FILE[:NAME:TAG]`, `docker://HOST/NAME[:TAG]`) or a rootfs tar (`tar:FILE`,
//! `-` for stdout).

use std::io::Write;

use clap::Args;

use super::backend::{self, StoreArgs};
use super::{exit, CliError, CliResult, GlobalArgs};
use strata::export::{self, Dest, ExportError, ExportOptions};
use strata_stores::StepId;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The step id
    pub id: String,
    /// oci:DIR[:TAG], docker-archive:FILE[:NAME:TAG], docker://HOST/NAME[:TAG], tar:FILE, or - (a rootfs tar on stdout)
    pub dest: String,
    /// One layer holding the whole rootfs (default: one layer per step)
    #[arg(long)]
    pub squash: bool,
    /// Keep files' modification times (default: all set to SOURCE_DATE_EPOCH, else 0)
    #[arg(long = "keep-mtimes")]
    pub keep_mtimes: bool,
    /// Allow plain HTTP to this registry host for docker:// (loopback registries always may)
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure_registry: Vec<String>,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// `SOURCE_DATE_EPOCH` (whole seconds), else 0.
fn epoch() -> Result<u64, CliError> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(text) if !text.trim().is_empty() => text.trim().parse().map_err(|_| {
            CliError::usage(anyhow::anyhow!(
                "SOURCE_DATE_EPOCH={text:?} is not a whole number of seconds"
            ))
        }),
        _ => Ok(0),
    }
}

fn failed(error: ExportError) -> CliError {
    if error.is_usage() {
        CliError::usage(error)
    } else {
        CliError::environment(error)
    }
}

pub fn run(global: &GlobalArgs, args: ExportArgs) -> CliResult {
    let id: StepId = args.id.parse().map_err(CliError::usage)?;
    let dest: Dest = args.dest.parse().map_err(failed)?;
    let options = ExportOptions {
        squash: args.squash,
        keep_mtimes: args.keep_mtimes,
        epoch: epoch()?,
        insecure_registries: args.insecure_registry.clone(),
        docker_config: None,
    };
    let catalog = backend::open_catalog(global, &args.store)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let exported = export::export(&catalog, &id, &dest, &options, &mut out).map_err(failed)?;
    if let Some(digest) = exported.manifest_digest.as_deref().or(exported.image_id.as_deref()) {
        let _ = writeln!(out, "{digest}");
    }
    if !global.quiet {
        let layers = match exported.layers {
            1 => "1 layer".to_owned(),
            n => format!("{n} layers"),
        };
        eprintln!("exported {id} to {} ({layers})", args.dest);
    }
    Ok(exit::SUCCESS)
}
