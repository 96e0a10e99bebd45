//! The overlayfs store (`overlayfs:/PATH`): every item is a layer holding only its own changes,
//! stacked on its ancestors' layers.
//!
//! Layout (OBuilder's names where they exist):
//! - `result/<id>/diff/`: the item's layer (its changes to the parent, with overlay
//!   whiteouts for deletions); `result/<id>/parent`: the parent's id (absent for a root layer);
//!   `log` and `env` next to them (they are not part of the layer);
//! - `result/<id>/rootfs/`: an empty directory, the mount point of the item's view while
//!   someone holds it ([`Store::rootfs`]): the FULL tree, a read-only overlay of its chain of
//!   layers (a read-only bind mount of `diff` for a root layer). Views are mounted on demand
//!   and unmounted after their last user, in any process (see [`view`]), so an idle store
//!   holds no mount: 10,000 results are not 10,000 host mounts, and `rm -rf` of the store
//!   works. OBuilder's overlay store exposes only the last layer there, which breaks
//!   `copy (from (build ...))`.
//! - `result-tmp/<owner>--<n>-<id>/`: an item being built, with the same files plus `work/`;
//!   its `rootfs/` is a writable overlay (upper `diff/`) over the base's chain, or, without a
//!   base, a plain directory that the step creates (it becomes `diff/` at commit);
//! - `cache/<escaped>/`, `cache-tmp/`: caches as plain trees (see [`cache`]), leased and
//!   released by the code every directory store shares ([`crate::dir_cache`]);
//! - `state/`: database, locks, owners, cache generations.
//!
//! Deep chains: overlays are mounted with the new mount API, one `lowerdir+` per layer, so the
//! one-page option limit of `mount(2)` (about 40 long layer paths) does not apply. Lookups of
//! missing names cost one probe per layer, so a base deeper than the flatten depth (256
//! by default; the kernel allows 500) is flattened: the new item starts as a full copy of
//! the base's tree (reflinked where the filesystem can) and becomes a root layer. Kernels
//! before 6.8 mount with `mount(2)` ([`mount::method`]); there a base is also flattened when
//! its stack would not fit the one-page option string (about 55 layers).
//!
//! A clone needs no view: its writable overlay stacks the base's layers directly. Only a
//! flattening copy, and readers of a result's tree, mount a view while they need it.
//!
//! Commit: unmount the writable overlay, drop `work/`, rename the temporary into `result/`
//! (atomic); nothing is mounted. Opening, locks and leftovers are every directory
//! store's ([`StoreDirs`]); crash leftovers are owner-tagged temporaries, and the mounts
//! under dead owners' temporaries are unmounted before the trees are removed. Opening also
//! unmounts views that nobody holds any more (their users died, or an older strata mounted
//! them for good).

mod cache;
pub mod mount;
pub mod view;

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::IoContext;
use crate::layout::{exists, Layout};
use crate::owner::FileLock;
use crate::store_dirs::{unsuitable, StoreDirs};
use crate::tree_copy::{copy_tree, remove_tree, DataCopy};
use crate::{
    CacheLease, Committed, DiskUsage, Leftovers, PendingItem, Prepared, RootfsView, StepId, Store, StoreError,
    StoreSpec,
};

use mount::OverlayLayers;

/// Bases at least this deep are flattened (see the module documentation).
pub const DEFAULT_FLATTEN_DEPTH: usize = 256;

/// The kernel's overlay stack limit.
const MAX_STACK: usize = 500;

pub struct OverlayStore {
    dirs: StoreDirs,
    /// How caches are copied and replaced (they are plain trees, not layers).
    cache_trees: cache::CacheTrees,
    flatten_depth: usize,
}

pub fn open(spec: &StoreSpec, leftovers: Leftovers) -> Result<Box<dyn Store>, StoreError> {
    Ok(Box::new(OverlayStore::open_with(
        spec,
        DEFAULT_FLATTEN_DEPTH,
        leftovers,
    )?))
}

/// Unmounts what the store mounts in an item or temporary (its `rootfs/`), then removes it
/// (never crossing into a mount found there after all).
fn unmount_and_remove(path: &Path) -> Result<(), StoreError> {
    mount::unmount_stack(&path.join("rootfs"))?;
    mount::remove_tree_without_crossing_mounts(path)
}

impl OverlayStore {
    /// Opens (and on first use creates) the store; bases of `flatten_depth` layers or more
    /// are flattened (clamped to the kernel's limit).
    pub fn open(spec: &StoreSpec, flatten_depth: usize) -> Result<OverlayStore, StoreError> {
        Self::open_with(spec, flatten_depth, Leftovers::Remove)
    }

    /// [`OverlayStore::open`], saying what to do with the leftovers of dead processes.
    pub fn open_with(spec: &StoreSpec, flatten_depth: usize, leftovers: Leftovers) -> Result<OverlayStore, StoreError> {
        let store = OverlayStore {
            dirs: StoreDirs::open(spec, leftovers, |_| Ok(()), unmount_and_remove)?,
            cache_trees: cache::CacheTrees::new(),
            flatten_depth: flatten_depth.clamp(2, MAX_STACK - 1),
        };
        if leftovers == Leftovers::Remove {
            store.remove_unused_views();
        }
        Ok(store)
    }

    /// Unmounts the views nobody holds (see [`view::remove_unused_views`]); a failure is
    /// logged: the store works with them mounted.
    fn remove_unused_views(&self) {
        if let Err(e) = view::remove_unused_views(self) {
            tracing::warn!("cannot remove leftover views in {}: {e}", self.root().display());
        }
    }

    fn layout(&self) -> &Layout {
        self.dirs.layout()
    }

    /// The layers of a committed item, its own first, then its parent's, up to the root.
    fn chain(&self, id: &StepId) -> Result<Vec<PathBuf>, StoreError> {
        let mut layers = Vec::new();
        let mut current = id.clone();
        loop {
            let item = self.layout().result(&current);
            layers.push(item.join("diff"));
            if layers.len() > MAX_STACK {
                return Err(unsuitable(&item, "layer chain too deep", layers.len()));
            }
            match fs::read_to_string(item.join("parent")) {
                Ok(text) => {
                    current = text.trim().parse()?;
                    if !exists(&self.layout().result(&current)) {
                        return Err(unsuitable(&item, "missing parent layer", current));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(layers),
                Err(e) => return Err(StoreError::io(format!("reading {}/parent", item.display()), e)),
            }
        }
    }

    /// Mounts the read-only full view of a committed item at `target` (`ro,nosuid,nodev`):
    /// an overlay of its chain, or a bind mount of a root layer. The caller serialises.
    fn mount_view(&self, id: &StepId, target: &Path) -> Result<(), StoreError> {
        let layers = self.chain(id)?;
        if layers.len() == 1 {
            mount::bind_read_only(&layers[0], target)
        } else {
            mount::mount_overlay(
                target,
                &OverlayLayers {
                    lower: &layers,
                    upper: None,
                },
            )
        }
    }

    /// Fills the temporary `tmp` with a writable clone of `base`.
    fn clone_base(&self, base: &StepId, tmp: &Path) -> Result<bool, StoreError> {
        let base_item = self.layout().result(base);
        for file in ["env", "log"] {
            let src = base_item.join(file);
            if exists(&src) {
                fs::copy(&src, tmp.join(file)).context(|| format!("copying {}", src.display()))?;
            }
        }
        let layers = self.chain(base)?;
        let rootfs = tmp.join("rootfs");
        let (diff, work) = (tmp.join("diff"), tmp.join("work"));
        let stack = OverlayLayers {
            lower: &layers,
            upper: Some((&diff, &work)),
        };
        if layers.len() >= self.flatten_depth || !mount::overlay_fits(&stack)? {
            let view = view::SharedView::acquire(self, base)?;
            copy_tree(view.path(), &rootfs, DataCopy::ReflinkOrPlain)?;
            return Ok(false);
        }
        for dir in [&diff, &work, &rootfs] {
            fs::create_dir(dir).context(|| format!("creating {}", dir.display()))?;
        }
        // The merged root takes the upper root's owner and mode: give it the base's.
        let top = fs::metadata(&layers[0]).context(|| format!("reading {}", layers[0].display()))?;
        std::os::unix::fs::chown(&diff, Some(top.uid()), Some(top.gid()))
            .context(|| format!("changing owner of {}", diff.display()))?;
        fs::set_permissions(&diff, fs::Permissions::from_mode(top.mode() & 0o7777))
            .context(|| format!("changing mode of {}", diff.display()))?;
        fs::write(tmp.join("parent"), base.as_str()).context(|| format!("writing {}/parent", tmp.display()))?;
        mount::mount_overlay(&rootfs, &stack)?;
        Ok(true)
    }
}

use std::os::unix::fs::PermissionsExt;

impl Store for OverlayStore {
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
        let item = self.layout().result(id);
        Ok(exists(&item).then_some(item))
    }

    fn list_results(&self) -> Result<Vec<StepId>, StoreError> {
        self.layout().committed_ids()
    }

    fn rootfs(&self, id: &StepId) -> Result<Box<dyn RootfsView + '_>, StoreError> {
        if self.result(id)?.is_none() {
            return Err(StoreError::NotFound(id.to_string()));
        }
        Ok(Box::new(view::SharedView::acquire(self, id)?))
    }

    fn prepare(&self, base: Option<&StepId>, id: &StepId) -> Result<Prepared<'_>, StoreError> {
        let lock = self.dirs.lock(id, "")?;
        if let Some(path) = self.result(id)? {
            return Ok(Prepared::Exists(path));
        }
        if let Some(base) = base {
            if !exists(&self.layout().result(base)) {
                return Err(StoreError::NotFound(base.to_string()));
            }
        }
        let tmp = self.dirs.temporary(&self.layout().result_tmp_dir(), id.as_str());
        fs::create_dir(&tmp).context(|| format!("creating {}", tmp.display()))?;
        let mut pending = OverlayPending {
            store: self,
            _lock: lock,
            id: id.clone(),
            tmp,
            mounted: false,
            finished: false,
        };
        // On failure `pending` drops and removes the temporary.
        // Without a base the item starts empty, as on every backend: the step makes `rootfs/`.
        if let Some(base) = base {
            pending.mounted = self.clone_base(base, &pending.tmp)?;
        }
        Ok(Prepared::Pending(Box::new(pending)))
    }

    fn delete(&self, id: &StepId) -> Result<(), StoreError> {
        let _lock = self.dirs.lock(id, "")?;
        let item = self.layout().result(id);
        if !exists(&item) {
            return Ok(());
        }
        let aside = self.dirs.temporary(&self.layout().result_tmp_dir(), id.as_str());
        {
            // No view is mounted meanwhile; one still held is detached (its holder is
            // reading an item being deleted).
            let _serial = view::view_lock(self, id)?;
            mount::unmount_stack(&item.join("rootfs"))?;
            // Aside first: a crash during the removal leaves an orphan, not half an item.
            fs::rename(&item, &aside).context(|| format!("moving {} aside", item.display()))?;
        }
        unmount_and_remove(&aside)
    }

    fn complete_deletes(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn cache(&self, name: &str, uid: u32, gid: u32) -> Result<Box<dyn CacheLease + '_>, StoreError> {
        let lease = crate::dir_cache::lease(&self.dirs, &self.cache_trees, name, uid, gid)?;
        Ok(Box::new(lease))
    }

    fn delete_cache(&self, name: &str) -> Result<(), StoreError> {
        crate::dir_cache::delete(&self.dirs, &self.cache_trees, name)
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
        self.remove_unused_views();
        self.dirs.remove_stale_temporaries(unmount_and_remove)
    }

    /// Every item holds its layer `diff/` (a delete moves the item aside before removing
    /// anything, so only damage from outside, or a removal of another kind cut short, loses it).
    fn incomplete_items(&self) -> Result<Vec<(StepId, String)>, StoreError> {
        let layout = self.layout();
        Ok(layout
            .committed_ids()?
            .into_iter()
            .filter(|id| !layout.result(id).join("diff").is_dir())
            .map(|id| (id, "its layer diff/ is gone".to_owned()))
            .collect())
    }
}

struct OverlayPending<'a> {
    store: &'a OverlayStore,
    /// The per-id build lock, held until the item is committed or discarded.
    _lock: FileLock,
    id: StepId,
    tmp: PathBuf,
    /// Whether `rootfs/` is a writable overlay (else it is the layer itself).
    mounted: bool,
    finished: bool,
}

impl OverlayPending<'_> {
    fn publish(&mut self) -> Result<Committed, StoreError> {
        let rootfs = self.tmp.join("rootfs");
        if self.mounted {
            mount::unmount(&rootfs)?;
            remove_tree(&self.tmp.join("work"))?;
        } else {
            let diff = self.tmp.join("diff");
            if exists(&rootfs) {
                fs::rename(&rootfs, &diff).context(|| format!("renaming {}", rootfs.display()))?;
            } else {
                fs::create_dir(&diff).context(|| format!("creating {}", diff.display()))?;
            }
            fs::create_dir(&rootfs).context(|| format!("creating {}", rootfs.display()))?;
        }
        let item = self.store.layout().result(&self.id);
        fs::rename(&self.tmp, &item).context(|| format!("renaming {} to {}", self.tmp.display(), item.display()))?;
        self.finished = true;
        let size_bytes = crate::size::apparent_size(&item.join("diff")).unwrap_or(0);
        Ok(Committed { path: item, size_bytes })
    }
}

impl PendingItem for OverlayPending<'_> {
    fn path(&self) -> &Path {
        &self.tmp
    }

    fn commit(mut self: Box<Self>) -> Result<Committed, StoreError> {
        self.publish()
    }

    fn abort(mut self: Box<Self>) -> Result<(), StoreError> {
        self.finished = true;
        unmount_and_remove(&self.tmp)
    }
}

impl Drop for OverlayPending<'_> {
    fn drop(&mut self) {
        if !self.finished {
            if let Err(e) = unmount_and_remove(&self.tmp) {
                tracing::warn!("cannot discard {}: {e}", self.tmp.display());
            }
        }
    }
}
