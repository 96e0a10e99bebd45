//! The ZFS store (`zfs:POOL`, `zfs:/PREFIX/POOL`), driven through the `zfs` command so that it
//! works alike on OpenZFS and on zfs-fuse.
//!
//! Datasets under the store's root dataset `POOL` (mount points always read from the
//! `mountpoint` property, never computed):
//! - `POOL/state`: database, locks (`state/locks/<id>.lock`), owners, cache generations;
//! - `POOL/result/<id>`: a committed item, `readonly=on`, with snapshot `@snap` that children
//!   are cloned from (zfs-fuse has no `.zfs/snapshot`, so the dataset itself is the read-only
//!   view of the result);
//! - `POOL/result-tmp/<owner>--<n>-<id>`: an item being built, a clone of the base's `@snap`
//!   or a new dataset;
//! - `POOL/cache/<name>`: the latest version of a cache, with `@snap` that leases clone;
//!   `<name>` is [`crate::cache_name::escape`] with `%` spelled `:` (ZFS names allow no `%`);
//! - `POOL/cache-tmp/<owner>--<n>-<name>`: a lease (a clone of the cache's `@snap`).
//!
//! Commit: snapshot `@snap`, unmount, `readonly=on`, then `zfs rename` from `result-tmp/`
//! to `result/` and mount. OBuilder builds in the final dataset because ZFS cannot rename a
//! dataset with open files; strata builds under a temporary name instead, so that a dataset
//! in `result/` is always complete (no `@snap` check needed to trust it) and a crash leaves only
//! owner-tagged temporaries. The price: no open files at commit (the rename unmounts the
//! dataset; a busy unmount is retried for ~20 s), the rule [`crate::PendingItem::commit`]
//! states for every store.

mod cache;
pub mod cli;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::cache_generation::CacheGenerations;
use crate::error::IoContext;
use crate::owner::{is_orphan, FileLock, LockMode, ProcessOwner};
use crate::{
    CacheLease, Committed, DiskUsage, Leftovers, PendingItem, Prepared, RootfsView, StepId, Store, StoreError,
    StoreSpec,
};

/// Longest dataset name ZFS accepts (MAXNAMELEN - 1).
const MAX_DATASET_NAME: usize = 255;

pub struct ZfsStore {
    spec: StoreSpec,
    /// The store's root dataset (a pool, or a dataset inside one).
    pool: String,
    root: PathBuf,
    state: PathBuf,
    owner: ProcessOwner,
    caches: CacheGenerations,
}

pub fn open(spec: &StoreSpec, leftovers: Leftovers) -> Result<Box<dyn Store>, StoreError> {
    Ok(Box::new(ZfsStore::open(spec, leftovers)?))
}

/// The datasets every store has under its root dataset.
const GROUPS: [&str; 5] = ["state", "result", "result-tmp", "cache", "cache-tmp"];

/// Attempts to open the store when a file this process just wrote vanished under a mount
/// (another process, maybe an older strata, mounting a group dataset over it).
const OPEN_ATTEMPTS: u32 = 5;

/// `(st_dev, st_ino)` of a path.
fn identity(path: &Path) -> std::io::Result<(u64, u64)> {
    let m = fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

/// Whether `dir` is the root of a filesystem other than its parent's.
fn is_mounted_over(dir: &Path) -> Result<bool, StoreError> {
    let own = identity(dir).context(|| format!("reading {}", dir.display()))?;
    let parent = dir.join("..");
    let up = identity(&parent).context(|| format!("reading {}", parent.display()))?;
    Ok(own.0 != up.0)
}

/// Creates (on first use) and mounts the group datasets of the store rooted at `pool`
/// (mounted at `root`) and the state directories, serialised with every other process
/// opening the store by an flock on the root directory.
///
/// Unserialised, a process could find a group dataset created by another but not yet
/// mounted (`zfs create` mounts in a second step), mount it itself and write into it while
/// the creator's mount landed on top, or write into the bare mount point before anyone's
/// mount: the files vanished under the mount (CI: `opening lock .../state/owners/...: No
/// such file or directory`). Under the lock, every `zfs create` and mount of the groups
/// runs to completion before anyone looks, so nothing is written until the state dataset is
/// mounted, and nothing is mounted over it afterwards.
fn prepare_groups(pool: &str, root: &Path) -> Result<PathBuf, StoreError> {
    let lock = loop {
        let lock = FileLock::acquire_directory(root, LockMode::Exclusive)?;
        // The root itself was mounted over while we waited (its mount raced ours): lock
        // the directory now in view instead.
        let locked = lock.metadata().context(|| format!("reading {}", root.display()))?;
        let current = identity(root).context(|| format!("reading {}", root.display()))?;
        if (locked.dev(), locked.ino()) == current {
            break lock;
        }
    };
    let present = cli::mounted_children(pool)?;
    for group in GROUPS {
        let dataset = format!("{pool}/{group}");
        match present.get(group) {
            Some(true) => {}
            Some(false) => {
                cli::ensure_mounted(&dataset)?;
            }
            None => {
                cli::create(&dataset)?;
                cli::ensure_mounted(&dataset)?;
            }
        }
    }
    let state = cli::mount_state(&format!("{pool}/state"))?.1;
    if !is_mounted_over(&state)? {
        return Err(StoreError::Unsuitable {
            path: state,
            reason: format!("dataset {pool}/state says it is mounted here, but nothing is"),
        });
    }
    // Every mount point 0700 (the root dataset's and each group's, kept in the dataset's
    // root directory; `-d 1` lists no item): items hold setuid binaries and device nodes, `state` the database
    // and lock files; no other host user may reach them.
    for mountpoint in cli::mountpoints(pool)? {
        crate::layout::make_private(&mountpoint)?;
    }
    for dir in [state.join("locks"), state.join("owners"), state.join("caches")] {
        crate::layout::private_dir(&dir)?;
    }
    drop(lock);
    Ok(state)
}

fn is_not_found(e: &StoreError) -> bool {
    matches!(e, StoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}

impl ZfsStore {
    /// Opens the store, creating its group datasets on first use and, with
    /// [`Leftovers::Remove`], destroying temporaries whose owner process is dead.
    pub fn open(spec: &StoreSpec, leftovers: Leftovers) -> Result<ZfsStore, StoreError> {
        let StoreSpec::Zfs { pool, .. } = spec else {
            return Err(StoreError::InvalidSpec {
                spec: spec.to_string(),
                reason: "not a zfs store spec".to_owned(),
            });
        };
        let unsuitable = |e: StoreError| match e {
            e @ StoreError::Unsuitable { .. } => e,
            e => StoreError::Unsuitable {
                path: spec.path(),
                reason: format!("cannot use zfs dataset {pool:?}: {e}"),
            },
        };
        let root = cli::ensure_mounted(pool).map_err(unsuitable)?;
        let mut attempt = 1;
        let (state, owner, caches) = loop {
            let registered = prepare_groups(pool, &root).map_err(unsuitable).and_then(|state| {
                let owner = ProcessOwner::register(&state.join("owners"))?;
                let caches = CacheGenerations::new(&state)?;
                Ok((state, owner, caches))
            });
            match registered {
                Err(e) if is_not_found(&e) && attempt < OPEN_ATTEMPTS => {
                    tracing::debug!("opening {spec}: {e}; a mount raced this open, trying again");
                    attempt += 1;
                }
                other => break other?,
            }
        };
        let store = ZfsStore {
            spec: spec.clone(),
            pool: pool.clone(),
            root,
            state,
            owner,
            caches,
        };
        if leftovers == Leftovers::Remove {
            let removed = store.remove_stale_temporaries()?;
            if !removed.is_empty() {
                tracing::info!("removed {} leftover temporaries of {}", removed.len(), store.spec);
            }
        }
        Ok(store)
    }

    fn owners_dir(&self) -> PathBuf {
        self.state.join("owners")
    }

    fn result_dataset(&self, id: &StepId) -> String {
        format!("{}/result/{id}", self.pool)
    }

    fn group(&self, group: &str) -> String {
        format!("{}/{group}", self.pool)
    }

    fn lock_path(&self, id: &StepId) -> PathBuf {
        self.state.join("locks").join(format!("{id}.lock"))
    }

    /// A new temporary dataset name in `group`, owned by this process.
    fn temp_dataset(&self, group: &str, suffix: &str) -> Result<String, StoreError> {
        let name = format!("{}/{group}/{}", self.pool, self.owner.temp_name(suffix));
        // Room for a snapshot suffix such as `@old-18446744073709551615`.
        if name.len() + 26 > MAX_DATASET_NAME {
            return Err(StoreError::Unsuitable {
                path: self.root.clone(),
                reason: format!("dataset name {name:?} is too long for zfs"),
            });
        }
        Ok(name)
    }

    /// Temporaries of dead processes (items being built, cache leases), as `group/name`.
    fn stale(&self) -> Result<Vec<String>, StoreError> {
        let mut stale = Vec::new();
        for group in ["result-tmp", "cache-tmp"] {
            for name in cli::children(&self.group(group))? {
                if is_orphan(&self.owners_dir(), &name)? {
                    stale.push(format!("{group}/{name}"));
                }
            }
        }
        Ok(stale)
    }
}

impl Store for ZfsStore {
    fn spec(&self) -> &StoreSpec {
        &self.spec
    }

    fn root(&self) -> &Path {
        &self.root
    }

    fn state_dir(&self) -> PathBuf {
        self.state.clone()
    }

    fn result(&self, id: &StepId) -> Result<Option<PathBuf>, StoreError> {
        match cli::ensure_mounted(&self.result_dataset(id)) {
            Ok(path) => Ok(Some(path)),
            Err(e) if cli::is_missing(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn list_results(&self) -> Result<Vec<StepId>, StoreError> {
        let mut ids: Vec<StepId> = cli::children(&self.group("result"))?
            .into_iter()
            .filter_map(|n| n.parse().ok())
            .collect();
        ids.sort();
        Ok(ids)
    }

    fn rootfs(&self, id: &StepId) -> Result<Box<dyn RootfsView + '_>, StoreError> {
        let item = self.result(id)?.ok_or_else(|| StoreError::NotFound(id.to_string()))?;
        Ok(Box::new(DatasetRootfs(item.join("rootfs"))))
    }

    fn prepare(&self, base: Option<&StepId>, id: &StepId) -> Result<Prepared<'_>, StoreError> {
        let lock = FileLock::acquire(&self.lock_path(id), LockMode::Exclusive)?;
        if let Some(path) = self.result(id)? {
            return Ok(Prepared::Exists(path));
        }
        let dataset = self.temp_dataset("result-tmp", id.as_str())?;
        match base {
            None => {
                cli::create(&dataset)?;
            }
            Some(base) => {
                let origin = format!("{}@snap", self.result_dataset(base));
                cli::clone(&origin, &dataset).map_err(|e| {
                    if cli::is_missing(&e) {
                        StoreError::NotFound(base.to_string())
                    } else {
                        e
                    }
                })?;
            }
        }
        let mut pending = ZfsPending {
            store: self,
            _lock: lock,
            id: id.clone(),
            dataset,
            path: PathBuf::new(),
            finished: false,
        };
        // On failure `pending` drops here and destroys the dataset.
        pending.path = cli::ensure_mounted(&pending.dataset)?;
        Ok(Prepared::Pending(Box::new(pending)))
    }

    fn delete(&self, id: &StepId) -> Result<(), StoreError> {
        let _lock = FileLock::acquire(&self.lock_path(id), LockMode::Exclusive)?;
        cli::destroy(&self.result_dataset(id), false)
    }

    fn complete_deletes(&self) -> Result<(), StoreError> {
        // `zfs destroy` returns once the space is accounted as free.
        Ok(())
    }

    fn stale_temporaries(&self) -> Result<Vec<String>, StoreError> {
        self.stale()
    }

    /// Destroys temporaries of dead processes. A cache dataset that live leases were cloned
    /// from stays until they are gone.
    fn remove_stale_temporaries(&self) -> Result<Vec<String>, StoreError> {
        let mut removed = Vec::new();
        for name in self.stale()? {
            let dataset = format!("{}/{name}", self.pool);
            match cli::destroy(&dataset, false) {
                Ok(()) => removed.push(name),
                Err(e) => tracing::warn!("keeping leftover {dataset}: {e}"),
            }
        }
        ProcessOwner::forget_dead(&self.owners_dir())?;
        Ok(removed)
    }

    /// `zfs destroy -r` removes the snapshot `@snap` before the dataset: a destroy cut short
    /// leaves an item that children cannot be cloned from. (Two `zfs list`s in all.)
    fn incomplete_items(&self) -> Result<Vec<(StepId, String)>, StoreError> {
        let result = self.group("result");
        let snapped: std::collections::HashSet<String> = cli::list_snapshots_recursive(&result)?
            .into_iter()
            .filter_map(|s| {
                s.strip_prefix(&format!("{result}/"))?
                    .strip_suffix("@snap")
                    .map(str::to_owned)
            })
            .collect();
        Ok(self
            .list_results()?
            .into_iter()
            .filter(|id| !snapped.contains(id.as_str()))
            .map(|id| (id, "its snapshot @snap is gone (a destroy was cut short)".to_owned()))
            .collect())
    }

    fn cache(&self, name: &str, uid: u32, gid: u32) -> Result<Box<dyn CacheLease + '_>, StoreError> {
        Ok(Box::new(cache::lease(self, name, uid, gid)?))
    }

    fn delete_cache(&self, name: &str) -> Result<(), StoreError> {
        cache::delete(self, name)
    }

    fn list_caches(&self) -> Result<Vec<String>, StoreError> {
        cache::list(self)
    }

    fn disk_usage(&self) -> Result<DiskUsage, StoreError> {
        // The pool's statvfs (zfs-fuse and OpenZFS both report the pool's space there).
        crate::size::statvfs_usage(&self.root)
    }
}

/// A committed item's rootfs: the dataset is `readonly=on`, so it is its own read-only view.
struct DatasetRootfs(PathBuf);

impl RootfsView for DatasetRootfs {
    fn path(&self) -> &Path {
        &self.0
    }
}

struct ZfsPending<'a> {
    store: &'a ZfsStore,
    /// The per-id build lock, held until the item is committed or discarded.
    _lock: FileLock,
    id: StepId,
    dataset: String,
    path: PathBuf,
    finished: bool,
}

impl ZfsPending<'_> {
    fn publish(&mut self) -> Result<Committed, StoreError> {
        let target = self.store.result_dataset(&self.id);
        cli::snapshot(&format!("{}@snap", self.dataset))?;
        cli::unmount(&self.dataset)?;
        cli::set(&self.dataset, "readonly=on")?;
        cli::rename(&self.dataset, &target)?;
        // From here on the item is committed, whatever happens next.
        self.finished = true;
        let path = cli::ensure_mounted(&target)?;
        let size_bytes = cli::bytes_property(&target, "used").unwrap_or(0);
        Ok(Committed { path, size_bytes })
    }
}

impl PendingItem for ZfsPending<'_> {
    fn path(&self) -> &Path {
        &self.path
    }

    fn commit(mut self: Box<Self>) -> Result<Committed, StoreError> {
        self.publish()
    }

    fn abort(mut self: Box<Self>) -> Result<(), StoreError> {
        self.finished = true;
        cli::destroy(&self.dataset, false)
    }
}

impl Drop for ZfsPending<'_> {
    fn drop(&mut self) {
        if !self.finished {
            if let Err(e) = cli::destroy(&self.dataset, false) {
                tracing::warn!("discarding {}: {e}", self.dataset);
            }
        }
    }
}
