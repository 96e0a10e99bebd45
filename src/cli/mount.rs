//! `strata mount ID DIR` and `strata umount DIR`: a read-only look inside an item.
//!
//! The mount at DIR is a read-only, `nosuid`, `nodev` bind mount of the item's full tree, as
//! the store's view shows it (a read-only snapshot, dataset or tree on btrfs, ZFS and the copy
//! stores; on overlayfs an overlay of the item's layers). It outlives the command: the view
//! the store mounted to make it is released at once (on overlayfs the store stays free of
//! idle mounts), and DIR keeps the tree until `strata umount DIR`. Unmount it before deleting
//! or pruning the item: the store does not know about it.

use std::path::PathBuf;

use clap::Args;
use strata_stores::overlay::mount;
use strata_stores::StepId;

use super::backend::{self, StoreArgs};
use super::{exit, CliError, CliResult, GlobalArgs};

#[derive(Debug, Args)]
pub struct MountArgs {
    /// The step id
    pub id: String,
    /// An existing directory to mount the item's root filesystem on (read-only)
    pub dir: PathBuf,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Args)]
pub struct UmountArgs {
    /// A directory `strata mount` mounted an item on
    pub dir: PathBuf,
}

pub fn mount(global: &GlobalArgs, args: MountArgs) -> CliResult {
    let id: StepId = args.id.parse().map_err(CliError::usage)?;
    if !args.dir.is_dir() {
        return Err(CliError::usage(anyhow::anyhow!(
            "{} is not a directory",
            args.dir.display()
        )));
    }
    let store = backend::open_store(global, &args.store)?;
    let view = store.rootfs(&id).map_err(|e| match e {
        strata_stores::StoreError::NotFound(_) => CliError::usage(e),
        e => CliError::environment(e),
    })?;
    mount::bind_read_only(view.path(), &args.dir).map_err(CliError::environment)?;
    drop(view);
    eprintln!("mounted {id} read-only on {}", args.dir.display());
    Ok(exit::SUCCESS)
}

pub fn umount(args: UmountArgs) -> CliResult {
    let is_mount = mount::is_mount_point(&args.dir).map_err(CliError::usage)?;
    if !is_mount {
        return Err(CliError::usage(anyhow::anyhow!(
            "{} is not a mount point",
            args.dir.display()
        )));
    }
    mount::unmount(&args.dir).map_err(CliError::environment)?;
    Ok(exit::SUCCESS)
}
