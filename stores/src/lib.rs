//! strata's snapshot stores.
//!
//! A store keeps filesystem trees ("items") by step id and hands out writable copies of
//! named caches. Every backend (btrfs, ZFS, overlayfs, copy) is a thin adapter behind the
//! [`Store`] trait; everything shared (database, dedupe, logs, prune) lives in the builder.
//!
//! Contract, for every backend:
//! - An item is a directory holding `rootfs/`, `log` and, for base images, `env`.
//! - An item's full tree is read through [`Store::rootfs`], never through
//!   `result/<id>/rootfs` (see [`Store::result`] for what that holds on each backend).
//! - [`Store::prepare`] takes the per-id build lock (an flock under `state/locks/`), so two
//!   processes never build the same id at once; the second waits and then sees the result
//!   ([`Prepared::Exists`]).
//! - A [`PendingItem`] is invisible to [`Store::result`] until [`PendingItem::commit`];
//!   dropping it without committing discards it. A crash leaves only temporaries, which
//!   the next [`open`] of the store removes when no live process owns them
//!   ([`Leftovers::Keep`] leaves them for `verify` to report).
//! - Nothing under a pending item may be open when it is committed (see
//!   [`PendingItem::commit`]).
//! - A cache lease is a private writable copy of the latest version of the named cache; on
//!   release it becomes the latest version unless another lease of the same cache was
//!   released first (generation check).

pub mod cache_generation;
pub mod cache_name;
pub mod command;
pub mod dir_cache;
pub mod dir_store;
pub mod error;
pub mod layout;
pub mod leftovers;
pub mod owner;
pub mod size;
pub mod spec;
pub mod step_id;
pub mod store_dirs;
pub mod tree_copy;

pub mod btrfs;
pub mod copy;
pub mod overlay;
pub mod zfs;

use std::path::{Path, PathBuf};

pub use error::StoreError;
pub use spec::{RsyncMode, StoreSpec};
pub use step_id::StepId;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What [`Store::prepare`] found once it held the per-id lock.
pub enum Prepared<'a> {
    /// Another build (maybe in another process) committed this id while we waited.
    Exists(PathBuf),
    /// A writable item to fill; commit or drop it.
    Pending(Box<dyn PendingItem + 'a>),
}

/// An item being built: a writable tree (an empty one, or a copy-on-write clone of the base).
pub trait PendingItem: Send {
    /// The item directory: the step writes `rootfs/`, `log` and `env` under it.
    fn path(&self) -> &Path;
    /// Atomically publishes the item under its id. Returns its final directory and its size.
    ///
    /// No open files at commit: the caller must have closed every file (and left every
    /// working directory) under [`PendingItem::path`] before it commits. Publishing may
    /// unmount what is under it (ZFS: the dataset, before `zfs set readonly=on` and the
    /// rename; overlayfs: the writable overlay on `rootfs/`), which fails while a file is
    /// open there (ZFS retries a busy unmount for about 20 s, then gives up), and it may
    /// publish a snapshot taken at that moment (btrfs, ZFS), which a later write through a
    /// descriptor kept open would miss. The stores do not check this; the
    /// builder honours it by detaching the step's log before committing (`StepLog::detach`
    /// in `src/builder/log.rs`).
    fn commit(self: Box<Self>) -> Result<Committed>;
    /// Discards the item. Dropping without committing does the same, ignoring errors.
    fn abort(self: Box<Self>) -> Result<()>;
}

/// A committed item.
#[derive(Debug, Clone)]
pub struct Committed {
    pub path: PathBuf,
    /// Bytes used by this item alone where the backend can tell cheaply, else its apparent size.
    pub size_bytes: u64,
}

/// A read-only view of an item's complete root filesystem (the overlay store mounts one on
/// demand, shared by every holder in every process and unmounted after the last one; other
/// stores just point into the item). Valid while the value lives.
pub trait RootfsView: Send {
    fn path(&self) -> &Path;
}

/// A private writable copy of a cache, mounted into a step at its target.
pub trait CacheLease: Send {
    fn path(&self) -> &Path;
    /// Publishes the copy as the cache's latest version, unless another lease of the same
    /// cache was released since this one was taken (then the copy is discarded).
    fn release(self: Box<Self>) -> Result<()>;
}

/// Free and total space of the filesystem holding the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DiskUsage {
    pub total_bytes: u64,
    pub free_bytes: u64,
}

impl DiskUsage {
    pub fn free_percent(&self) -> f64 {
        if self.total_bytes == 0 {
            return 0.0;
        }
        100.0 * self.free_bytes as f64 / self.total_bytes as f64
    }
}

/// What opening a store does with the temporaries (in `result-tmp/`, `cache-tmp/`) that no
/// live process owns: the leftovers of crashed builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Leftovers {
    /// Remove them (what every command does).
    #[default]
    Remove,
    /// Leave them for [`Store::stale_temporaries`] to report (`strata verify`).
    Keep,
}

pub trait Store: Send + Sync {
    /// The spec this store was opened from (`btrfs:/var/lib/strata`).
    fn spec(&self) -> &StoreSpec;
    /// The store's root directory on the host (for ZFS, the pool's mount point).
    fn root(&self) -> &Path;
    /// Holds the database, locks and the sandbox's state.
    fn state_dir(&self) -> PathBuf;

    /// The item directory of a committed id, if there is one. Cheap, and mounts nothing.
    ///
    /// Its `rootfs/` is the item's full tree on btrfs (a read-only snapshot), ZFS (the
    /// read-only dataset) and the copy stores (a plain tree), but NOT on overlayfs: there it
    /// is an empty directory, the mount point of the item's view while [`Store::rootfs`] holds
    /// one (the item's own changes are its layer, `diff/`). Read the tree through
    /// [`Store::rootfs`]; read `log`, `env` and `image.json` here.
    fn result(&self, id: &StepId) -> Result<Option<PathBuf>>;
    /// Every committed id (for reconcile and `verify`).
    fn list_results(&self) -> Result<Vec<StepId>>;
    /// A read-only (`ro,nosuid,nodev` where the store mounts it) view of the full root
    /// filesystem of a committed item, valid while the returned value lives. Hold it only
    /// while reading: on overlayfs each held view is a host mount.
    fn rootfs(&self, id: &StepId) -> Result<Box<dyn RootfsView + '_>>;

    /// Takes the per-id lock (waiting for another builder of the same id) and, unless the id
    /// was committed meanwhile, prepares an empty item or a writable clone of `base`.
    fn prepare(&self, base: Option<&StepId>, id: &StepId) -> Result<Prepared<'_>>;
    /// Removes a committed item. Children must be deleted first (the builder does).
    fn delete(&self, id: &StepId) -> Result<()>;
    /// Waits until deleted items' space is really free (btrfs cleaner); cheap no-op elsewhere.
    fn complete_deletes(&self) -> Result<()>;

    /// A private writable copy of cache `name`, created empty and owned by `uid:gid` if new.
    fn cache(&self, name: &str, uid: u32, gid: u32) -> Result<Box<dyn CacheLease + '_>>;
    /// Deletes a cache: [`StoreError::Busy`] while leases are out, where the backend needs that.
    fn delete_cache(&self, name: &str) -> Result<()>;
    /// Names of the existing caches.
    fn list_caches(&self) -> Result<Vec<String>>;

    fn disk_usage(&self) -> Result<DiskUsage>;

    /// Temporaries no live process owns, as `result-tmp/<name>` or `cache-tmp/<name>`: what
    /// opening with [`Leftovers::Remove`] removes. A live process's work is never listed.
    fn stale_temporaries(&self) -> Result<Vec<String>>;
    /// Removes the temporaries no live process owns (a failing one is logged and kept) and
    /// forgets dead owners; returns what it removed, named as [`Store::stale_temporaries`].
    fn remove_stale_temporaries(&self) -> Result<Vec<String>>;
    /// Committed items that lost a part every item has (a delete cut short, or damage from
    /// outside), each with what is wrong. One pass over the store, cheap enough for every open.
    fn incomplete_items(&self) -> Result<Vec<(StepId, String)>>;
}

/// Opens (and on first use initialises) the store a spec names, removing leftovers that no
/// live process owns.
///
/// Any number of processes may open one store at once, new or existing: the first use's
/// directories and datasets are made (and mounted) before anything is written into them.
pub fn open(spec: &StoreSpec) -> Result<Box<dyn Store>> {
    open_with(spec, Leftovers::Remove)
}

/// [`open`], saying what to do with the leftovers of dead processes.
pub fn open_with(spec: &StoreSpec, leftovers: Leftovers) -> Result<Box<dyn Store>> {
    match spec {
        StoreSpec::Btrfs(_) => btrfs::open(spec, leftovers),
        StoreSpec::Rsync { .. } | StoreSpec::Xfs(_) => copy::open(spec, leftovers),
        StoreSpec::Zfs { .. } => zfs::open(spec, leftovers),
        StoreSpec::Overlayfs(_) => overlay::open(spec, leftovers),
    }
}
