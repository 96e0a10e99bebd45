//! The stores whose items are single trees in OBuilder's directory layout (btrfs, the copy
//! stores): atomic commit by snapshot or rename, clones, deletes. A backend only says how to
//! make, clone, publish and remove one tree ([`TreeOps`]); opening, locks and reconcile come
//! from [`StoreDirs`], caches from [`crate::dir_cache`] (over the same [`TreeOps`]).
//!
//! Invariants:
//! - `result/<id>` appears in one atomic step (a snapshot or a rename) and only with the
//!   per-id lock `state/locks/<id>.lock` held, so `result` never sees a half-made item.
//! - Everything in `result-tmp/` and `cache-tmp/` is named by [`StoreDirs::temporary`], so
//!   a crashed process's temporaries are recognised and removed by the next open.
//! - Removing a published tree first renames it into a temporary name, so a crash during a
//!   slow removal leaves an orphan, never a half-deleted result or cache.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::layout::{exists, Layout};
use crate::owner::FileLock;
use crate::store_dirs::StoreDirs;
use crate::{
    CacheLease, Committed, DiskUsage, Leftovers, PendingItem, Prepared, RootfsView, StepId, Store, StoreError,
    StoreSpec,
};

/// Free and total space of the filesystem holding `path` (kept here for callers of its
/// old place; it lives in [`crate::size`]).
pub use crate::size::statvfs_usage;

/// How one backend makes and removes trees. Paths are always inside the store.
pub trait TreeOps: Send + Sync + 'static {
    /// Creates an empty writable tree at `path` (its parent exists, it does not).
    fn create_empty(&self, path: &Path) -> Result<(), StoreError>;
    /// Creates a writable copy of the published tree `src` at `dst` (which does not exist).
    fn clone_writable(&self, src: &Path, dst: &Path) -> Result<(), StoreError>;
    /// Publishes the finished writable tree `tmp` as `dst` in one atomic step (read-only
    /// where the backend can). Afterwards `tmp` is gone, or is a leftover the caller removes.
    fn publish(&self, tmp: &Path, dst: &Path) -> Result<(), StoreError>;
    /// Removes a tree (writable or published); a missing one is not an error.
    fn remove(&self, path: &Path) -> Result<(), StoreError>;
    /// The size to record at commit, called once `tmp` is published as `published` (and
    /// before `tmp` is removed); `cloned` says whether the item started as a clone.
    fn size(&self, tmp: &Path, published: &Path, cloned: bool) -> Result<u64, StoreError>;
    /// Renames a published tree to `aside` (same filesystem, `aside` does not exist).
    /// `NotFound` when `from` does not exist.
    fn move_aside(&self, from: &Path, aside: &Path) -> io::Result<()> {
        fs::rename(from, aside)
    }
    /// Makes a published tree disappear in one step and removes it: by default moves it
    /// to `aside` (a temporary name, so a crash leaves an orphan, not half a tree) and
    /// removes it there. A missing tree is not an error.
    fn retire(&self, path: &Path, aside: &Path) -> Result<(), StoreError> {
        match self.move_aside(path, aside) {
            Ok(()) => self.remove(aside),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io(format!("moving {} aside", path.display()), e)),
        }
    }
    /// Publishes the finished writable tree `tmp` as `dst`, replacing the published tree
    /// there if any (a cache's latest version), with `aside` free for the old one.
    /// Afterwards `tmp` and `aside` may remain: the caller removes what does. By default
    /// moves the old tree aside and publishes, putting the old tree back on failure.
    fn replace(&self, tmp: &Path, dst: &Path, aside: &Path) -> Result<(), StoreError> {
        let had_old = match self.move_aside(dst, aside) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(StoreError::io(format!("moving {} aside", dst.display()), e)),
        };
        self.publish(tmp, dst).inspect_err(|_| {
            if had_old {
                // Put the previous version back so the cache keeps its content.
                let _ = self.remove(dst);
                let _ = self.move_aside(aside, dst);
            }
        })
    }
    /// Waits until removed trees' space is free.
    fn complete_deletes(&self, _root: &Path) -> Result<(), StoreError> {
        Ok(())
    }
    /// Whether `delete_cache` must answer Busy while leases are out (else it deletes, and
    /// outstanding leases are discarded on release).
    fn delete_cache_needs_idle(&self) -> bool {
        false
    }
}

/// A store made of directories in OBuilder's layout, generic over the tree operations.
pub struct DirStore<T: TreeOps> {
    dirs: StoreDirs,
    ops: T,
}

impl<T: TreeOps> DirStore<T> {
    /// Opens the store ([`StoreDirs::open`]), removing dead processes' temporaries with
    /// the backend's [`TreeOps::remove`]. `check_root` runs once the root directory exists
    /// (e.g. "is this btrfs?").
    pub fn open(
        spec: &StoreSpec,
        leftovers: Leftovers,
        ops: T,
        check_root: impl FnOnce(&Path) -> Result<(), StoreError>,
    ) -> Result<DirStore<T>, StoreError> {
        let dirs = StoreDirs::open(spec, leftovers, check_root, |p| ops.remove(p))?;
        Ok(DirStore { dirs, ops })
    }

    pub fn layout(&self) -> &Layout {
        self.dirs.layout()
    }
}

/// Runs `make(tmp)`; on failure removes whatever it left at `tmp`.
pub(crate) fn make_tree<O: TreeOps>(
    ops: &O,
    tmp: &Path,
    make: impl FnOnce(&Path) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    make(tmp).inspect_err(|_| {
        if let Err(e) = ops.remove(tmp) {
            tracing::warn!("cannot remove {} after a failure: {e}", tmp.display());
        }
    })
}

impl<T: TreeOps> Store for DirStore<T> {
    fn spec(&self) -> &StoreSpec {
        self.dirs.spec()
    }

    fn root(&self) -> &Path {
        &self.layout().root
    }

    fn state_dir(&self) -> PathBuf {
        self.layout().state_dir()
    }

    fn result(&self, id: &StepId) -> Result<Option<PathBuf>, StoreError> {
        let path = self.layout().result(id);
        Ok(exists(&path).then_some(path))
    }

    fn list_results(&self) -> Result<Vec<StepId>, StoreError> {
        self.layout().committed_ids()
    }

    fn rootfs(&self, id: &StepId) -> Result<Box<dyn RootfsView + '_>, StoreError> {
        let item = self.layout().result(id);
        if !exists(&item) {
            return Err(StoreError::NotFound(id.to_string()));
        }
        Ok(Box::new(DirView(item.join("rootfs"))))
    }

    fn prepare(&self, base: Option<&StepId>, id: &StepId) -> Result<Prepared<'_>, StoreError> {
        let lock = self.dirs.lock(id, "")?;
        let final_path = self.layout().result(id);
        if exists(&final_path) {
            return Ok(Prepared::Exists(final_path));
        }
        let tmp = self.dirs.temporary(&self.layout().result_tmp_dir(), id.as_str());
        match base {
            None => make_tree(&self.ops, &tmp, |t| self.ops.create_empty(t))?,
            Some(base) => {
                let base_path = self.layout().result(base);
                if !exists(&base_path) {
                    return Err(StoreError::NotFound(base.to_string()));
                }
                make_tree(&self.ops, &tmp, |t| self.ops.clone_writable(&base_path, t))?;
            }
        }
        Ok(Prepared::Pending(Box::new(Pending {
            store: self,
            tmp,
            final_path,
            cloned: base.is_some(),
            finished: false,
            _lock: lock,
        })))
    }

    fn delete(&self, id: &StepId) -> Result<(), StoreError> {
        let _lock = self.dirs.lock(id, "")?;
        let aside = self.dirs.temporary(&self.layout().result_tmp_dir(), id.as_str());
        self.ops.retire(&self.layout().result(id), &aside)
    }

    fn complete_deletes(&self) -> Result<(), StoreError> {
        self.ops.complete_deletes(&self.layout().root)
    }

    fn cache(&self, name: &str, uid: u32, gid: u32) -> Result<Box<dyn CacheLease + '_>, StoreError> {
        let lease = crate::dir_cache::lease(&self.dirs, &self.ops, name, uid, gid)?;
        Ok(Box::new(lease))
    }

    fn delete_cache(&self, name: &str) -> Result<(), StoreError> {
        crate::dir_cache::delete(&self.dirs, &self.ops, name)
    }

    fn list_caches(&self) -> Result<Vec<String>, StoreError> {
        crate::dir_cache::list(&self.dirs)
    }

    fn disk_usage(&self) -> Result<DiskUsage, StoreError> {
        self.dirs.disk_usage()
    }

    fn stale_temporaries(&self) -> Result<Vec<String>, StoreError> {
        self.dirs.stale_temporaries()
    }

    fn remove_stale_temporaries(&self) -> Result<Vec<String>, StoreError> {
        self.dirs.remove_stale_temporaries(|p| self.ops.remove(p))
    }

    /// Every item holds `rootfs/`; one without it lost its tree (a removal cut short or
    /// damage from outside: a delete itself moves the item aside first, or, on btrfs, drops
    /// the subvolume in one step).
    fn incomplete_items(&self) -> Result<Vec<(StepId, String)>, StoreError> {
        let layout = self.layout();
        Ok(layout
            .committed_ids()?
            .into_iter()
            .filter(|id| !layout.result(id).join("rootfs").is_dir())
            .map(|id| (id, "its rootfs is gone".to_owned()))
            .collect())
    }
}

struct DirView(PathBuf);

impl RootfsView for DirView {
    fn path(&self) -> &Path {
        &self.0
    }
}

struct Pending<'a, T: TreeOps> {
    store: &'a DirStore<T>,
    tmp: PathBuf,
    final_path: PathBuf,
    cloned: bool,
    finished: bool,
    _lock: FileLock,
}

impl<T: TreeOps> PendingItem for Pending<'_, T> {
    fn path(&self) -> &Path {
        &self.tmp
    }

    fn commit(mut self: Box<Self>) -> Result<Committed, StoreError> {
        self.store.ops.publish(&self.tmp, &self.final_path)?;
        self.finished = true;
        // Measured after publishing: btrfs flushes delayed allocations when snapshotting,
        // so only then are the item's extents in its tree. The item is committed either way.
        let size_bytes = match self.store.ops.size(&self.tmp, &self.final_path, self.cloned) {
            Ok(size) => size,
            Err(e) => {
                tracing::warn!("cannot measure {}: {e}; recording size 0", self.final_path.display());
                0
            }
        };
        if exists(&self.tmp) {
            if let Err(e) = self.store.ops.remove(&self.tmp) {
                tracing::warn!("committed, but cannot remove {}: {e}", self.tmp.display());
            }
        }
        Ok(Committed {
            path: self.final_path.clone(),
            size_bytes,
        })
    }

    fn abort(mut self: Box<Self>) -> Result<(), StoreError> {
        self.finished = true;
        self.store.ops.remove(&self.tmp)
    }
}

impl<T: TreeOps> Drop for Pending<'_, T> {
    fn drop(&mut self) {
        if !self.finished {
            if let Err(e) = self.store.ops.remove(&self.tmp) {
                tracing::warn!("cannot discard {}: {e}", self.tmp.display());
            }
        }
    }
}
