//! Opening what commands work on: the store (from `--store`, `STRATA_STORE` or the
//! default), the sandbox, the fetcher and the builder over them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;

use super::{CliError, GlobalArgs};
use strata::builder::Builder;
use strata::catalog::Catalog;
use strata::fetch::{FetchOptions, ImageFetcher};
use strata::key::IdScheme;
use strata_sandbox::cleanup::SandboxDirs;
use strata_sandbox::runtime::{OciSandbox, OciSandboxOptions};
use strata_stores::owner::ProcessOwner;
use strata_stores::{Leftovers, RsyncMode, Store, StoreSpec};

/// Flags shared by the commands that build (`build`, `healthcheck`).
#[derive(Debug, Clone, Args)]
pub struct BackendArgs {
    /// OCI runtime: runc, crun or a path to one
    #[arg(long, default_value = "runc", value_name = "RUNTIME")]
    pub runtime: String,
    /// Redirect a registry: REGISTRY=URL (repeatable; also STRATA_REGISTRY_MIRROR, comma-separated)
    #[arg(long = "registry-mirror", value_name = "REGISTRY=URL")]
    pub registry_mirror: Vec<String>,
    /// Allow plain HTTP to this registry host (loopback registries always may)
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure_registry: Vec<String>,
    /// Let specs read `oci:` and `docker-archive:` images below DIR (repeatable; none by default;
    /// never below /proc, /sys or /dev)
    #[arg(long = "allow-local-images", value_name = "DIR")]
    pub allow_local_images: Vec<PathBuf>,
    /// Refuse a base image that unpacks to more than SIZE (file contents plus 512 bytes per
    /// entry; 0 for no cap)
    #[arg(long = "max-image-size", value_parser = super::units::parse_size, default_value = "50G", value_name = "SIZE")]
    pub max_image_size: u64,
}

/// Flags for the store itself.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Id scheme for a new store: v1 (default) or obuilder; must match an existing store's
    #[arg(long = "id-scheme", value_name = "SCHEME")]
    pub id_scheme: Option<IdScheme>,
    /// Accepted for OBuilder compatibility with rsync: stores (strata always copies):
    /// copy, hardlink or hardlink_unsafe
    #[arg(long = "rsync-mode", value_enum, value_name = "MODE")]
    pub rsync_mode: Option<RsyncModeArg>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RsyncModeArg {
    Copy,
    Hardlink,
    /// OBuilder spells it `hardlink_unsafe`; both spellings are taken.
    #[value(alias = "hardlink_unsafe")]
    HardlinkUnsafe,
}

const DEFAULT_ROOT: &str = "/var/lib/strata";

/// Whether `path` (or its nearest existing ancestor) is on btrfs.
fn on_btrfs(path: &Path) -> bool {
    let mut p = Some(path);
    while let Some(dir) = p {
        if let Ok(st) = nix::sys::statfs::statfs(dir) {
            return st.filesystem_type() == nix::sys::statfs::BTRFS_SUPER_MAGIC;
        }
        p = dir.parent();
    }
    false
}

/// The store spec: `--store`, else `STRATA_STORE` (clap reads both), else
/// `btrfs:/var/lib/strata` on btrfs and `overlayfs:/var/lib/strata` elsewhere.
pub fn store_spec(global: &GlobalArgs, store: &StoreArgs) -> Result<StoreSpec, CliError> {
    let text = match &global.store {
        Some(s) => s.clone(),
        None if on_btrfs(Path::new(DEFAULT_ROOT)) => format!("btrfs:{DEFAULT_ROOT}"),
        None => format!("overlayfs:{DEFAULT_ROOT}"),
    };
    // A spec that does not parse is the user's to fix (exit 2); the error names it.
    let spec: StoreSpec = text.parse().map_err(CliError::usage)?;
    let mode = match store.rsync_mode {
        None | Some(RsyncModeArg::Copy) => RsyncMode::Copy,
        Some(RsyncModeArg::Hardlink) => RsyncMode::Hardlink,
        Some(RsyncModeArg::HardlinkUnsafe) => RsyncMode::HardlinkUnsafe,
    };
    if store.rsync_mode.is_some() && !matches!(spec, StoreSpec::Rsync { .. }) {
        return Err(CliError::usage(anyhow::anyhow!(
            "--rsync-mode only applies to rsync: stores"
        )));
    }
    Ok(spec.with_rsync_mode(mode))
}

pub fn open_store(global: &GlobalArgs, store: &StoreArgs) -> Result<Arc<dyn Store>, CliError> {
    open_store_with(global, store, Leftovers::Remove)
}

/// Opens the store; with [`Leftovers::Keep`] the temporaries of dead processes stay, for
/// `verify` to report before anything removes them.
pub fn open_store_with(
    global: &GlobalArgs,
    store: &StoreArgs,
    leftovers: Leftovers,
) -> Result<Arc<dyn Store>, CliError> {
    let spec = store_spec(global, store)?;
    let opened = strata_stores::open_with(&spec, leftovers)
        .with_context(|| format!("opening store {spec}"))
        .map_err(CliError::environment)?;
    Ok(Arc::from(opened))
}

pub fn fetch_options(backend: &BackendArgs) -> Result<FetchOptions, CliError> {
    let mut options = FetchOptions::from_cli(&backend.registry_mirror, &backend.insecure_registry)
        .map_err(CliError::usage)?
        .allow_local_images(&backend.allow_local_images)
        .map_err(|e| CliError::usage(anyhow::anyhow!(e)))?;
    options.max_image_bytes = backend.max_image_size;
    Ok(options)
}

/// Opens store, sandbox, fetcher and builder; reconciles the store quietly.
pub fn open_builder(global: &GlobalArgs, store_args: &StoreArgs, backend: &BackendArgs) -> Result<Builder, CliError> {
    let store = open_store(global, store_args)?;
    let state = store.state_dir();
    let owners = state.join("owners");
    // This process's claim on its containers and bundles; dies with the process.
    let owner = ProcessOwner::register(&owners).map_err(CliError::environment)?;
    let dirs = sandbox_dirs(&state);
    let mut options = OciSandboxOptions::new(dirs.state, owner.tag(), dirs.bundles);
    options.runtime = backend.runtime.clone();
    let sandbox = OciSandbox::new(options).map_err(CliError::environment)?;
    if let Err(e) = sandbox.cleanup_orphans(&owner_alive(&owners)) {
        tracing::warn!("cleaning up leftover containers: {e}");
    }
    // The owner lock must be held for the life of the process.
    std::mem::forget(owner);
    let fetcher = ImageFetcher::new(fetch_options(backend)?);
    let catalog = open_catalog_of(store, store_args)?;
    reconcile_quietly(&catalog);
    Ok(Builder::new(Arc::new(catalog), Arc::new(sandbox), Arc::new(fetcher)))
}

/// The catalog (database) of an opened store.
pub fn open_catalog_of(store: Arc<dyn Store>, store_args: &StoreArgs) -> Result<Catalog, CliError> {
    Catalog::open(store, store_args.id_scheme).map_err(|e| CliError::environment(anyhow::Error::new(e)))
}

/// Opens the catalog for commands that never run steps (ls, prune, delete...): no runtime
/// or registry needed. Removes what killed strata processes left, and reconciles quietly.
pub fn open_catalog(global: &GlobalArgs, store_args: &StoreArgs) -> Result<Catalog, CliError> {
    let store = open_store(global, store_args)?;
    // Steps of a strata that was killed: their containers, cgroups and bundles go now, as
    // when a build opens the store.
    let state = store.state_dir();
    match sandbox_dirs(&state).remove_orphans(&owner_alive(&state.join("owners"))) {
        Ok(removed) => {
            for orphan in removed {
                tracing::info!("removed {orphan}");
            }
        }
        Err(e) => tracing::warn!("cleaning up leftover containers: {e}"),
    }
    let catalog = open_catalog_of(store, store_args)?;
    reconcile_quietly(&catalog);
    Ok(catalog)
}

/// Where a store's sandbox keeps runtime state and bundles (as [`OciSandboxOptions`] says).
pub fn sandbox_dirs(state: &Path) -> SandboxDirs {
    SandboxDirs {
        state: state.join("sandbox"),
        bundles: state.join("bundles"),
    }
}

/// Whether the strata process with owner tag `tag` lives (unknown counts as alive).
pub fn owner_alive(owners: &Path) -> impl Fn(&str) -> bool + '_ {
    move |tag| ProcessOwner::is_alive(owners, tag).unwrap_or(true)
}

fn reconcile_quietly(catalog: &Catalog) {
    match catalog.reconcile(true) {
        Ok(report) => {
            for line in &report.repairs {
                tracing::info!("repaired: {line}");
            }
        }
        Err(e) => tracing::warn!("reconciling the store: {e}"),
    }
}

/// Reads `--secret ID:FILE` values.
pub fn read_secrets(flags: &[String]) -> Result<std::collections::HashMap<String, Vec<u8>>, CliError> {
    let mut secrets = std::collections::HashMap::new();
    for flag in flags {
        let Some((id, file)) = flag.split_once(':') else {
            return Err(CliError::usage(anyhow::anyhow!("--secret {flag:?}: expected ID:FILE")));
        };
        if id.is_empty() || id.contains('/') {
            return Err(CliError::usage(anyhow::anyhow!(
                "--secret {flag:?}: invalid secret id {id:?}"
            )));
        }
        let value = std::fs::read(PathBuf::from(file))
            .with_context(|| format!("reading secret {id:?} from {file}"))
            .map_err(CliError::usage)?;
        secrets.insert(id.to_owned(), value);
    }
    Ok(secrets)
}
