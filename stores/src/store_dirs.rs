//! The base every store in OBuilder's directory layout embeds (btrfs, the copy stores,
//! overlayfs): opening the layout, this process's owner registration, the cache
//! generations, per-id locks, owner-tagged temporary names and the sweep of dead processes'
//! temporaries. Written once so that no backend can open, lock or reconcile differently
//! (an overlay store that rewrote the open once lost the 0700 modes).
//!
//! A backend adds what its items are ([`crate::dir_store::DirStore`] over a
//! [`crate::dir_store::TreeOps`], or the overlay store's layers) and how one of its
//! temporaries is removed (a subvolume delete, a tree removal, an unmount first).

use std::path::{Path, PathBuf};

use crate::cache_generation::CacheGenerations;
use crate::layout::Layout;
use crate::owner::{FileLock, LockMode, ProcessOwner};
use crate::{DiskUsage, Leftovers, StepId, StoreError, StoreSpec};

/// An open store's directories and this process's registration in it.
pub struct StoreDirs {
    spec: StoreSpec,
    layout: Layout,
    owner: ProcessOwner,
    generations: CacheGenerations,
}

/// Wraps a failure to set the store up as "this path is unsuitable" (exit code 3 in the CLI).
pub(crate) fn unsuitable(path: &Path, what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unsuitable {
        path: path.to_owned(),
        reason: format!("{what}: {e}"),
    }
}

impl StoreDirs {
    /// Creates the layout under `spec.path()` if needed (every directory private, see
    /// [`crate::layout`]), registers this process as an owner, and (with
    /// [`Leftovers::Remove`]) removes the temporaries of dead processes with
    /// `remove_leftover`. `check_root` runs once the root directory exists (e.g. "is this
    /// btrfs?").
    pub fn open(
        spec: &StoreSpec,
        leftovers: Leftovers,
        check_root: impl FnOnce(&Path) -> Result<(), StoreError>,
        remove_leftover: impl FnMut(&Path) -> Result<(), StoreError>,
    ) -> Result<StoreDirs, StoreError> {
        let root = spec.path();
        crate::layout::private_dir(&root).map_err(|e| unsuitable(&root, "cannot create the store directory", e))?;
        if !root.is_dir() {
            return Err(unsuitable(&root, "not a directory", "store root"));
        }
        check_root(&root)?;
        let layout = Layout::new(&root);
        let init = || -> Result<(ProcessOwner, CacheGenerations), StoreError> {
            // 0700: items hold container root filesystems (setuid binaries, device nodes,
            // other users' files) that host users must not reach through the store; results
            // are plain directories (or snapshots, or layers) inside, so this is what keeps
            // them out.
            layout.create_dirs()?;
            let owner = ProcessOwner::register(&layout.owners_dir())?;
            let generations = CacheGenerations::new(&layout.state_dir())?;
            Ok((owner, generations))
        };
        let (owner, generations) = init().map_err(|e| match e {
            StoreError::Io { .. } => unsuitable(&root, "cannot initialise the store", e),
            other => other,
        })?;
        let removed = match leftovers {
            Leftovers::Remove => crate::leftovers::reconcile_temporaries(&layout, remove_leftover)?,
            Leftovers::Keep => Vec::new(),
        };
        if !removed.is_empty() {
            tracing::info!("removed {} leftover temporaries in {}", removed.len(), root.display());
        }
        Ok(StoreDirs {
            spec: spec.clone(),
            layout,
            owner,
            generations,
        })
    }

    /// The spec the store was opened from.
    pub fn spec(&self) -> &StoreSpec {
        &self.spec
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The generations and locks of the store's caches.
    pub fn generations(&self) -> &CacheGenerations {
        &self.generations
    }

    /// Takes the exclusive lock `state/locks/<id><purpose>.lock`: with an empty `purpose`,
    /// the per-id build lock (held to prepare, commit and delete the item).
    pub fn lock(&self, id: &StepId, purpose: &str) -> Result<FileLock, StoreError> {
        FileLock::acquire(
            &self.layout.locks_dir().join(format!("{id}{purpose}.lock")),
            LockMode::Exclusive,
        )
    }

    /// A new name in `dir` (`result-tmp/` or `cache-tmp/`) owned by this process, so that a
    /// crash leaves something the next open recognises and removes.
    pub fn temporary(&self, dir: &Path, suffix: &str) -> PathBuf {
        dir.join(self.owner.temp_name(suffix))
    }

    /// See [`crate::Store::stale_temporaries`].
    pub fn stale_temporaries(&self) -> Result<Vec<String>, StoreError> {
        crate::leftovers::stale_temporaries(&self.layout)
    }

    /// See [`crate::Store::remove_stale_temporaries`]; `remove` removes one temporary.
    pub fn remove_stale_temporaries(
        &self,
        remove: impl FnMut(&Path) -> Result<(), StoreError>,
    ) -> Result<Vec<String>, StoreError> {
        crate::leftovers::reconcile_temporaries(&self.layout, remove)
    }

    pub fn disk_usage(&self) -> Result<DiskUsage, StoreError> {
        crate::size::statvfs_usage(&self.layout.root)
    }
}
