//! The store logic shared by every backend whose items are directories in OBuilder's
//! layout (btrfs, the copy stores): locking, atomic commit, caches, reconcile. A backend
//! only says how to make, clone, publish and remove one tree ([`TreeOps`]).
//!
//! Invariants:
//! - `result/<id>` appears in one atomic step (a snapshot or a rename) and only with the
//!   per-id lock `state/locks/<id>.lock` held, so `result` never sees a half-made item.
//! - Everything in `result-tmp/` and `cache-tmp/` is named by [`ProcessOwner::temp_name`], so
//!   a crashed process's temporaries are recognised and removed by the next open.
//! - Removing a published tree first renames it into a temporary name, so a crash during a
//!   slow removal leaves an orphan, never a half-deleted result or cache.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::cache_generation::{CacheGenerations, InUse};
use crate::error::IoContext;
use crate::layout::Layout;
use crate::owner::{FileLock, LockMode, ProcessOwner};
use crate::{
    cache_name, CacheLease, Committed, DiskUsage, Leftovers, PendingItem, Prepared, Recovered, RootfsView, StepId,
    Store, StoreError, StoreSpec,
};

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
    spec: StoreSpec,
    layout: Layout,
    owner: ProcessOwner,
    caches: CacheGenerations,
    recovered: Recovered,
    ops: T,
}

/// Wraps a failure to set the store up as "this path is unsuitable" (exit code 3 in the CLI).
fn unsuitable(path: &Path, what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unsuitable {
        path: path.to_owned(),
        reason: format!("{what}: {e}"),
    }
}

impl<T: TreeOps> DirStore<T> {
    /// Creates the layout under `spec.path()` if needed, registers this process as an owner,
    /// and (with [`Leftovers::Remove`]) removes the temporaries of dead processes.
    /// `check_root` runs once the root directory exists (e.g. "is this btrfs?").
    pub fn open(
        spec: &StoreSpec,
        leftovers: Leftovers,
        ops: T,
        check_root: impl FnOnce(&Path) -> Result<(), StoreError>,
    ) -> Result<DirStore<T>, StoreError> {
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
            // are plain directories (or snapshots) inside, so this is what keeps them out.
            layout.create_dirs()?;
            let owner = ProcessOwner::register(&layout.owners_dir())?;
            let caches = CacheGenerations::new(&layout.state_dir())?;
            Ok((owner, caches))
        };
        let (owner, caches) = init().map_err(|e| match e {
            StoreError::Io { .. } => unsuitable(&root, "cannot initialise the store", e),
            other => other,
        })?;
        let removed = match leftovers {
            Leftovers::Remove => crate::leftovers::reconcile_temporaries(&layout, |p| ops.remove(p))?,
            Leftovers::Keep => Vec::new(),
        };
        if !removed.is_empty() {
            tracing::info!("removed {} leftover temporaries in {}", removed.len(), root.display());
        }
        Ok(DirStore {
            spec: spec.clone(),
            layout,
            owner,
            caches,
            recovered: Recovered { removed },
            ops,
        })
    }

    /// The leftovers removed when this store was opened.
    pub fn recovered(&self) -> &Recovered {
        &self.recovered
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    fn lock_id(&self, id: &StepId) -> Result<FileLock, StoreError> {
        FileLock::acquire(&self.layout.locks_dir().join(format!("{id}.lock")), LockMode::Exclusive)
    }

    /// Removes a published tree (see [`TreeOps::retire`]).
    fn retire(&self, path: &Path, tmp_dir: &Path, suffix: &str) -> Result<(), StoreError> {
        self.ops.retire(path, &tmp_dir.join(self.owner.temp_name(suffix)))
    }

    /// Runs `make(tmp)`; on failure removes whatever it left at `tmp`.
    fn make_tree(&self, tmp: &Path, make: impl FnOnce(&Path) -> Result<(), StoreError>) -> Result<(), StoreError> {
        make(tmp).inspect_err(|_| {
            if let Err(e) = self.ops.remove(tmp) {
                tracing::warn!("cannot remove {} after a failure: {e}", tmp.display());
            }
        })
    }
}

fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), StoreError> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).context(|| format!("changing owner of {}", path.display()))
}

/// Free and total space of the filesystem holding `path` (kept here for callers of its
/// old place; it lives in [`crate::size`]).
pub use crate::size::statvfs_usage;

impl<T: TreeOps> Store for DirStore<T> {
    fn spec(&self) -> &StoreSpec {
        &self.spec
    }

    fn root(&self) -> &Path {
        &self.layout.root
    }

    fn state_dir(&self) -> PathBuf {
        self.layout.state_dir()
    }

    fn result(&self, id: &StepId) -> Result<Option<PathBuf>, StoreError> {
        let path = self.layout.result(id);
        Ok(exists(&path).then_some(path))
    }

    fn list_results(&self) -> Result<Vec<StepId>, StoreError> {
        self.layout.committed_ids()
    }

    fn rootfs(&self, id: &StepId) -> Result<Box<dyn RootfsView + '_>, StoreError> {
        let item = self.layout.result(id);
        if !exists(&item) {
            return Err(StoreError::NotFound(id.to_string()));
        }
        Ok(Box::new(DirView(item.join("rootfs"))))
    }

    fn prepare(&self, base: Option<&StepId>, id: &StepId) -> Result<Prepared<'_>, StoreError> {
        let lock = self.lock_id(id)?;
        let final_path = self.layout.result(id);
        if exists(&final_path) {
            return Ok(Prepared::Exists(final_path));
        }
        let tmp = self.layout.result_tmp_dir().join(self.owner.temp_name(id.as_str()));
        match base {
            None => self.make_tree(&tmp, |t| self.ops.create_empty(t))?,
            Some(base) => {
                let base_path = self.layout.result(base);
                if !exists(&base_path) {
                    return Err(StoreError::NotFound(base.to_string()));
                }
                self.make_tree(&tmp, |t| self.ops.clone_writable(&base_path, t))?;
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
        let _lock = self.lock_id(id)?;
        self.retire(&self.layout.result(id), &self.layout.result_tmp_dir(), id.as_str())
    }

    fn complete_deletes(&self) -> Result<(), StoreError> {
        self.ops.complete_deletes(&self.layout.root)
    }

    fn cache(&self, name: &str, uid: u32, gid: u32) -> Result<Box<dyn CacheLease + '_>, StoreError> {
        let escaped = cache_name::escape(name)?;
        let guard = self.caches.lock(&escaped)?;
        let latest = self.layout.cache_dir().join(&escaped);
        if !exists(&latest) {
            let fresh = self.layout.cache_tmp_dir().join(self.owner.temp_name(&escaped));
            self.make_tree(&fresh, |t| {
                self.ops.create_empty(t)?;
                chown(t, uid, gid)?;
                self.ops.publish(t, &latest)
            })?;
            if exists(&fresh) {
                self.ops.remove(&fresh)?;
            }
        }
        let generation = guard.generation()?;
        let copy = self.layout.cache_tmp_dir().join(self.owner.temp_name(&escaped));
        self.make_tree(&copy, |t| {
            self.ops.clone_writable(&latest, t)?;
            // Like OBuilder's btrfs and rsync stores: the copy belongs to whoever asks now.
            chown(t, uid, gid)
        })?;
        let in_use = self.caches.mark_in_use(&escaped)?;
        Ok(Box::new(Lease {
            store: self,
            name: name.to_owned(),
            escaped,
            copy,
            generation,
            finished: false,
            _in_use: in_use,
        }))
    }

    fn delete_cache(&self, name: &str) -> Result<(), StoreError> {
        let escaped = cache_name::escape(name)?;
        let guard = self.caches.lock(&escaped)?;
        if self.ops.delete_cache_needs_idle() && self.caches.in_use(&escaped)? {
            return Err(StoreError::Busy(name.to_owned()));
        }
        guard.bump()?;
        self.retire(
            &self.layout.cache_dir().join(&escaped),
            &self.layout.cache_tmp_dir(),
            &escaped,
        )
    }

    fn list_caches(&self) -> Result<Vec<String>, StoreError> {
        Ok(Layout::entries(&self.layout.cache_dir())?
            .iter()
            .filter_map(|n| cache_name::unescape(n))
            .collect())
    }

    fn disk_usage(&self) -> Result<DiskUsage, StoreError> {
        statvfs_usage(&self.layout.root)
    }

    fn stale_temporaries(&self) -> Result<Vec<String>, StoreError> {
        crate::leftovers::stale_temporaries(&self.layout)
    }

    fn remove_stale_temporaries(&self) -> Result<Vec<String>, StoreError> {
        crate::leftovers::reconcile_temporaries(&self.layout, |p| self.ops.remove(p))
    }

    /// Every item holds `rootfs/`; one without it lost its tree (a removal cut short or
    /// damage from outside: a delete itself moves the item aside first, or, on btrfs, drops
    /// the subvolume in one step).
    fn incomplete_items(&self) -> Result<Vec<(StepId, String)>, StoreError> {
        Ok(self
            .layout
            .committed_ids()?
            .into_iter()
            .filter(|id| !self.layout.result(id).join("rootfs").is_dir())
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

struct Lease<'a, T: TreeOps> {
    store: &'a DirStore<T>,
    name: String,
    escaped: String,
    copy: PathBuf,
    generation: u64,
    finished: bool,
    _in_use: InUse,
}

impl<T: TreeOps> Lease<'_, T> {
    /// Under the cache lock: publish the copy as the latest version, or discard it when
    /// another release (or a delete) came first.
    fn publish_or_discard(&self) -> Result<(), StoreError> {
        let store = self.store;
        let guard = store.caches.lock(&self.escaped)?;
        if !guard.may_publish(self.generation)? {
            tracing::debug!("cache {:?} changed since this copy was taken; discarding it", self.name);
            return store.ops.remove(&self.copy);
        }
        let latest = store.layout.cache_dir().join(&self.escaped);
        let old = store.layout.cache_tmp_dir().join(store.owner.temp_name(&self.escaped));
        let had_old = match store.ops.move_aside(&latest, &old) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(StoreError::io(format!("moving {} aside", latest.display()), e)),
        };
        if let Err(e) = store.ops.publish(&self.copy, &latest) {
            if had_old {
                // Put the previous version back so the cache keeps its content.
                let _ = store.ops.remove(&latest);
                let _ = store.ops.move_aside(&old, &latest);
            }
            return Err(e);
        }
        guard.bump()?;
        if exists(&self.copy) {
            store.ops.remove(&self.copy)?;
        }
        if had_old {
            store.ops.remove(&old)?;
        }
        Ok(())
    }
}

impl<T: TreeOps> CacheLease for Lease<'_, T> {
    fn path(&self) -> &Path {
        &self.copy
    }

    fn release(mut self: Box<Self>) -> Result<(), StoreError> {
        self.finished = true;
        let result = self.publish_or_discard();
        if result.is_err() && exists(&self.copy) {
            let _ = self.store.ops.remove(&self.copy);
        }
        result
    }
}

impl<T: TreeOps> Drop for Lease<'_, T> {
    fn drop(&mut self) {
        if !self.finished {
            if let Err(e) = self.store.ops.remove(&self.copy) {
                tracing::warn!("cannot discard cache copy {}: {e}", self.copy.display());
            }
        }
    }
}
