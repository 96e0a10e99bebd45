//! [`FakeStore`]: a [`Store`] kept in memory, with its items as plain directories.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::hash::{Hash, Hasher};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use strata_stores::{
    cache_name, CacheLease, Committed, DiskUsage, PendingItem, Prepared, RootfsView, RsyncMode, StepId, Store,
    StoreError, StoreSpec,
};

/// The store operations a fault can be scripted for (see [`FakeStore::fail`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreOp {
    Result,
    ListResults,
    Rootfs,
    Prepare,
    /// [`PendingItem::commit`]: the item is discarded (as when a real publish fails).
    Commit,
    /// [`PendingItem::abort`]: the item is still discarded, but the call reports the error.
    Abort,
    Delete,
    CompleteDeletes,
    Cache,
    /// [`CacheLease::release`]: the copy is discarded, the cache keeps its latest version.
    Release,
    DeleteCache,
    ListCaches,
    DiskUsage,
    StaleTemporaries,
    RemoveStaleTemporaries,
    IncompleteItems,
}

/// What a [`StoreCall::Prepare`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrepareOutcome {
    /// A pending item was handed out: the caller builds the id.
    Pending,
    /// The id was committed already (or meanwhile).
    Exists,
    /// An error was returned (a scripted fault, a missing base, an I/O error).
    Failed,
}

/// One call to the store, in the order the calls were made (see [`FakeStore::calls`]).
/// Read-only queries (`result`, `list_results`, `list_caches`, `disk_usage`, ...) are not
/// recorded, except [`Store::rootfs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreCall {
    Prepare {
        base: Option<StepId>,
        id: StepId,
        outcome: PrepareOutcome,
    },
    Commit {
        id: StepId,
        ok: bool,
    },
    /// An explicit [`PendingItem::abort`].
    Abort(StepId),
    /// A pending item dropped without commit or abort (or after a failed commit).
    Discard(StepId),
    Delete {
        id: StepId,
        /// Whether there was a committed item to delete.
        existed: bool,
        ok: bool,
    },
    CompleteDeletes,
    Rootfs(StepId),
    Cache {
        name: String,
        uid: u32,
        gid: u32,
    },
    /// A lease released: `published` says whether its copy became the cache's latest version.
    Release {
        name: String,
        published: bool,
    },
    /// A lease dropped without release (its copy discarded).
    DropLease(String),
    DeleteCache {
        name: String,
        ok: bool,
    },
}

/// What is handed out and not yet given back (see [`FakeStore::outstanding`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outstanding {
    pub pending: usize,
    pub leases: usize,
    pub views: usize,
}

type MakeError = Arc<dyn Fn() -> StoreError + Send + Sync>;

struct Fault {
    op: StoreOp,
    target: Option<String>,
    remaining: usize,
    make: MakeError,
}

struct Item {
    parent: Option<StepId>,
    size: u64,
    digest: Option<u64>,
}

#[derive(Default)]
struct CacheState {
    generation: u64,
    exists: bool,
    leases: usize,
}

struct State {
    items: BTreeMap<StepId, Item>,
    /// Ids whose per-id lock is held (a pending item, or a delete in progress).
    locked: BTreeSet<StepId>,
    caches: BTreeMap<String, CacheState>,
    faults: Vec<Fault>,
    calls: Vec<StoreCall>,
    violations: Vec<String>,
    sizes: HashMap<StepId, u64>,
    total: u64,
    free: u64,
    deferred: u64,
    defer_frees: bool,
    delete_cache_needs_idle: bool,
    /// Names (`result-tmp/<n>`, `cache-tmp/<n>`) of the temporaries live objects own.
    live_temporaries: BTreeSet<String>,
    outstanding: Outstanding,
    next_tmp: u64,
}

/// Default scripted disk: 1 TiB, all of it free.
const DEFAULT_TOTAL: u64 = 1 << 40;

/// A [`Store`] for unit tests: no root, no mounts, no file locks.
///
/// The index (committed ids, per-id locks, cache generations and leases) lives in memory;
/// items and caches are plain directories under the store's root, in the directory stores'
/// layout (`result/<id>/`, `result-tmp/`, `cache/`, `cache-tmp/`, `state/`), so a builder
/// writes `rootfs/`, `log` and `strata.json` into [`PendingItem::path`] and reads results by
/// path as it does with a real store. What it promises, as every real store does:
///
/// - [`Store::prepare`] holds a per-id lock (in memory, so per `FakeStore` value) until the
///   pending item is committed or discarded; a second prepare of the id waits for it, then
///   returns [`Prepared::Exists`]. A committed id always gives `Exists`.
/// - A pending item is invisible until commit; abort, drop or a failed commit remove it.
/// - A clone of a base is a plain recursive copy (files, directories and symlinks, with
///   their permission bits; hard links become separate files; ownership is not copied).
///   Other file types are refused with an error.
/// - `delete` of a missing id is a no-op; `prepare` with a missing base is
///   [`StoreError::NotFound`]; `rootfs` of a missing id is `NotFound`.
/// - Caches: a lease is a private copy of the latest version taken at a generation; on
///   release it becomes the latest version only if no other release (or delete) came
///   first. New caches are empty; their owner is recorded in the call log, not set (no
///   chown). `delete_cache` deletes and bumps the generation (leases taken before are then
///   discarded on release), or answers [`StoreError::Busy`] while leases are out if
///   [`FakeStore::set_delete_cache_needs_idle`] says so.
/// - Temporaries: entries of `result-tmp/` and `cache-tmp/` that no live pending item or
///   lease owns are "stale" (create one there to simulate a crashed build's leftover).
///
/// Scripting for fault tests: [`FakeStore::fail`] and friends make the next N calls of an
/// operation fail; [`FakeStore::set_disk_usage`] scripts the disk (commits use space,
/// deletes free it); [`FakeStore::calls`] and the counters say what was asked.
/// Contract breaches it notices (files still open under an item at its commit, deleting an
/// item whose child still exists, a committed item modified afterwards) are reported by
/// [`FakeStore::violations`].
pub struct FakeStore {
    _dir: Option<tempfile::TempDir>,
    root: PathBuf,
    spec: StoreSpec,
    state: Mutex<State>,
    changed: Condvar,
}

fn io_err(context: impl Into<String>, e: io::Error) -> StoreError {
    StoreError::io(context, e)
}

impl FakeStore {
    /// A store in a fresh temporary directory, removed when the store is dropped.
    pub fn new() -> Result<FakeStore, StoreError> {
        let dir = tempfile::Builder::new()
            .prefix("strata-fake-store-")
            .tempdir()
            .map_err(|e| io_err("creating a temporary directory", e))?;
        let root = dir.path().to_path_buf();
        FakeStore::make(Some(dir), root)
    }

    /// A store rooted at `root` (created if needed, never removed by the store). Its
    /// in-memory index starts empty: whatever is under `root/result/` is not a result.
    pub fn at(root: &Path) -> Result<FakeStore, StoreError> {
        FakeStore::make(None, root.to_path_buf())
    }

    fn make(dir: Option<tempfile::TempDir>, root: PathBuf) -> Result<FakeStore, StoreError> {
        for sub in ["result", "result-tmp", "cache", "cache-tmp", "state"] {
            let path = root.join(sub);
            fs::create_dir_all(&path).map_err(|e| io_err(format!("creating {}", path.display()), e))?;
        }
        Ok(FakeStore {
            _dir: dir,
            spec: StoreSpec::Rsync {
                path: root.clone(),
                mode: RsyncMode::Copy,
            },
            root,
            state: Mutex::new(State {
                items: BTreeMap::new(),
                locked: BTreeSet::new(),
                caches: BTreeMap::new(),
                faults: Vec::new(),
                calls: Vec::new(),
                violations: Vec::new(),
                sizes: HashMap::new(),
                total: DEFAULT_TOTAL,
                free: DEFAULT_TOTAL,
                deferred: 0,
                defer_frees: false,
                delete_cache_needs_idle: false,
                live_temporaries: BTreeSet::new(),
                outstanding: Outstanding::default(),
                next_tmp: 0,
            }),
            changed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed.wait(guard).unwrap_or_else(|p| p.into_inner())
    }

    fn item_path(&self, id: &StepId) -> PathBuf {
        self.root.join("result").join(id.as_str())
    }

    // ------------------------------------------------------------ scripting

    /// Makes the next `times` calls of `op` fail with `error()`. Faults are consumed in the
    /// order they were scripted; with several builder threads, which call gets one depends
    /// on timing, so prefer [`FakeStore::fail_for`] when that matters.
    pub fn fail(&self, op: StoreOp, times: usize, error: impl Fn() -> StoreError + Send + Sync + 'static) {
        self.push_fault(op, None, times, Arc::new(error));
    }

    /// Makes the next `times` calls of `op` on `target` (a step id, or a cache name for the
    /// cache operations) fail with `error()`. Operations without a target never match.
    pub fn fail_for(
        &self,
        op: StoreOp,
        target: impl ToString,
        times: usize,
        error: impl Fn() -> StoreError + Send + Sync + 'static,
    ) {
        self.push_fault(op, Some(target.to_string()), times, Arc::new(error));
    }

    /// Shorthand for [`FakeStore::fail`] with [`StoreOp::Prepare`].
    pub fn fail_next_prepares(&self, times: usize, error: impl Fn() -> StoreError + Send + Sync + 'static) {
        self.fail(StoreOp::Prepare, times, error);
    }

    /// Shorthand for [`FakeStore::fail`] with [`StoreOp::Commit`].
    pub fn fail_next_commits(&self, times: usize, error: impl Fn() -> StoreError + Send + Sync + 'static) {
        self.fail(StoreOp::Commit, times, error);
    }

    /// Shorthand for [`FakeStore::fail`] with [`StoreOp::Delete`].
    pub fn fail_next_deletes(&self, times: usize, error: impl Fn() -> StoreError + Send + Sync + 'static) {
        self.fail(StoreOp::Delete, times, error);
    }

    /// Forgets every scripted fault not yet consumed.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    fn push_fault(&self, op: StoreOp, target: Option<String>, times: usize, make: MakeError) {
        if times > 0 {
            self.lock().faults.push(Fault {
                op,
                target,
                remaining: times,
                make,
            });
        }
    }

    /// The error of the first scripted fault matching the call, consuming one use of it.
    fn fault(state: &mut State, op: StoreOp, target: Option<&str>) -> Option<StoreError> {
        let index = state.faults.iter().position(|f| {
            f.op == op
                && match (&f.target, target) {
                    (None, _) => true,
                    (Some(want), Some(got)) => want == got,
                    (Some(_), None) => false,
                }
        })?;
        let fault = &mut state.faults[index];
        fault.remaining -= 1;
        let error = (fault.make)();
        if fault.remaining == 0 {
            state.faults.remove(index);
        }
        Some(error)
    }

    /// Sets what [`Store::disk_usage`] reports from now on (`free` is capped at `total`).
    /// Each commit then takes its item's size from `free`, and each delete gives it back
    /// (at once, or at [`Store::complete_deletes`] with [`FakeStore::set_deferred_frees`]).
    /// The default is 1 TiB, all free.
    pub fn set_disk_usage(&self, total_bytes: u64, free_bytes: u64) {
        let mut state = self.lock();
        state.total = total_bytes;
        state.free = free_bytes.min(total_bytes);
        state.deferred = 0;
    }

    /// What [`Store::disk_usage`] would report (without consuming a fault).
    pub fn disk(&self) -> DiskUsage {
        let state = self.lock();
        DiskUsage {
            total_bytes: state.total,
            free_bytes: state.free,
        }
    }

    /// With `true`, space freed by deletes shows up only after [`Store::complete_deletes`]
    /// (as on btrfs, whose cleaner frees deleted snapshots later).
    pub fn set_deferred_frees(&self, deferred: bool) {
        self.lock().defer_frees = deferred;
    }

    /// The size [`PendingItem::commit`] reports for `id` (and takes from the free space),
    /// instead of the apparent size of its directory.
    pub fn set_item_size(&self, id: &StepId, bytes: u64) {
        self.lock().sizes.insert(id.clone(), bytes);
    }

    /// With `true`, [`Store::delete_cache`] answers [`StoreError::Busy`] while leases of the
    /// cache are out (as ZFS and overlayfs do); by default it deletes, as btrfs and the copy
    /// stores do.
    pub fn set_delete_cache_needs_idle(&self, needs_idle: bool) {
        self.lock().delete_cache_needs_idle = needs_idle;
    }

    /// Commits `id` (cloned from `base`) with `fill` run on its directory, bypassing faults
    /// and the call log: for seeding a store before the code under test runs (calls made
    /// by other threads meanwhile would not be logged, faults scripted meanwhile are lost).
    /// An id committed already is an error.
    pub fn seed(
        &self,
        base: Option<&StepId>,
        id: &StepId,
        fill: impl FnOnce(&Path) -> io::Result<()>,
    ) -> Result<Committed, StoreError> {
        let (calls, faults) = {
            let mut state = self.lock();
            (std::mem::take(&mut state.calls), std::mem::take(&mut state.faults))
        };
        let result = (|| match self.prepare(base, id)? {
            Prepared::Exists(path) => Err(io_err(
                format!("seeding {id}: already committed at {}", path.display()),
                io::ErrorKind::AlreadyExists.into(),
            )),
            Prepared::Pending(pending) => {
                fill(pending.path()).map_err(|e| io_err(format!("seeding {id}"), e))?;
                pending.commit()
            }
        })();
        let mut state = self.lock();
        state.calls = calls;
        state.faults = faults;
        result
    }

    // ------------------------------------------------------------ observing

    /// Every recorded call, oldest first.
    pub fn calls(&self) -> Vec<StoreCall> {
        self.lock().calls.clone()
    }

    /// Forgets the recorded calls (the counters below count from zero again).
    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    fn count(&self, matches: impl Fn(&StoreCall) -> bool) -> usize {
        self.lock().calls.iter().filter(|c| matches(c)).count()
    }

    /// How many times `id` was prepared, whatever the outcome.
    pub fn prepares(&self, id: &StepId) -> usize {
        self.count(|c| matches!(c, StoreCall::Prepare { id: i, .. } if i == id))
    }

    /// How many prepares of `id` handed out a pending item: how many times it was built.
    pub fn builds(&self, id: &StepId) -> usize {
        self.count(|c| matches!(c, StoreCall::Prepare { id: i, outcome: PrepareOutcome::Pending, .. } if i == id))
    }

    /// How many commits of `id` succeeded.
    pub fn commits(&self, id: &StepId) -> usize {
        self.count(|c| matches!(c, StoreCall::Commit { id: i, ok: true } if i == id))
    }

    /// How many deletes of `id` removed a committed item.
    pub fn deletes(&self, id: &StepId) -> usize {
        self.count(|c| matches!(c, StoreCall::Delete { id: i, existed: true, ok: true } if i == id))
    }

    /// The committed ids (like [`Store::list_results`], without faults).
    pub fn committed(&self) -> Vec<StepId> {
        self.lock().items.keys().cloned().collect()
    }

    /// The base `id` was cloned from, if it is committed and had one.
    pub fn parent_of(&self, id: &StepId) -> Option<StepId> {
        self.lock().items.get(id).and_then(|item| item.parent.clone())
    }

    /// Pending items, leases and rootfs views handed out and not yet given back.
    pub fn outstanding(&self) -> Outstanding {
        self.lock().outstanding
    }

    /// Breaches of the store contract seen so far: commits while this process had a file
    /// (or its working directory) open under the item, deletes of an item whose child was
    /// still committed, and committed items whose content changed since their commit
    /// (checked now, by walking every item). Empty when the code under test behaved.
    pub fn violations(&self) -> Vec<String> {
        let (mut found, items) = {
            let state = self.lock();
            let items: Vec<(StepId, Option<u64>)> = state.items.iter().map(|(id, i)| (id.clone(), i.digest)).collect();
            (state.violations.clone(), items)
        };
        for (id, digest) in items {
            let now = tree_digest(&self.item_path(&id)).ok();
            if now != digest {
                found.push(format!("committed item {id} was modified after its commit"));
            }
        }
        found
    }

    // ------------------------------------------------------------ internals

    fn temp_path(state: &mut State, root: &Path, dir: &str, label: &str) -> (PathBuf, String) {
        state.next_tmp += 1;
        let name = format!("{dir}/{}-{label}", state.next_tmp);
        state.live_temporaries.insert(name.clone());
        (root.join(&name), name)
    }

    /// Releases `id`'s per-id lock and wakes waiters.
    fn unlock_id(&self, state: &mut State, id: &StepId) {
        state.locked.remove(id);
        self.changed.notify_all();
    }

    fn free_space(state: &mut State, bytes: u64) {
        if state.defer_frees {
            state.deferred = state.deferred.saturating_add(bytes);
        } else {
            state.free = state.free.saturating_add(bytes).min(state.total);
        }
    }

    /// Removes a pending item's directory and releases its lock.
    fn discard_pending(&self, pending: &FakePending<'_>) -> Result<(), StoreError> {
        let removed = remove_tree(&pending.tmp);
        let mut state = self.lock();
        state.live_temporaries.remove(&pending.tmp_name);
        state.outstanding.pending -= 1;
        self.unlock_id(&mut state, &pending.id);
        removed
    }
}

/// Copies `src` to `dst` (which must not exist): files with their permission bits,
/// directories, symlinks. No ownership, no hard links, no special files.
pub(crate) fn copy_tree(src: &Path, dst: &Path) -> Result<(), StoreError> {
    let meta = fs::symlink_metadata(src).map_err(|e| io_err(format!("reading {}", src.display()), e))?;
    let kind = meta.file_type();
    if kind.is_symlink() {
        let target = fs::read_link(src).map_err(|e| io_err(format!("reading link {}", src.display()), e))?;
        std::os::unix::fs::symlink(&target, dst).map_err(|e| io_err(format!("creating {}", dst.display()), e))
    } else if kind.is_file() {
        fs::copy(src, dst)
            .map(|_| ())
            .map_err(|e| io_err(format!("copying {} to {}", src.display(), dst.display()), e))
    } else if kind.is_dir() {
        fs::create_dir(dst).map_err(|e| io_err(format!("creating {}", dst.display()), e))?;
        let entries = fs::read_dir(src).map_err(|e| io_err(format!("listing {}", src.display()), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_err(format!("listing {}", src.display()), e))?;
            copy_tree(&entry.path(), &dst.join(entry.file_name()))?;
        }
        // Last, so a read-only directory is still filled.
        fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(|e| io_err(format!("setting the mode of {}", dst.display()), e))
    } else {
        Err(io_err(
            format!(
                "{}: the fake store copies only files, directories and symlinks",
                src.display()
            ),
            io::ErrorKind::Unsupported.into(),
        ))
    }
}

/// Removes a tree; a missing one is fine. Makes directories writable where a read-only one
/// stops the removal (no root needed).
pub(crate) fn remove_tree(path: &Path) -> Result<(), StoreError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(format!("reading {}", path.display()), e)),
    };
    if !meta.is_dir() {
        return fs::remove_file(path).map_err(|e| io_err(format!("removing {}", path.display()), e));
    }
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            make_dirs_writable(path);
            fs::remove_dir_all(path).map_err(|e| io_err(format!("removing {}", path.display()), e))
        }
        Err(e) => Err(io_err(format!("removing {}", path.display()), e)),
    }
}

fn make_dirs_writable(dir: &Path) {
    if let Ok(meta) = fs::symlink_metadata(dir) {
        if meta.is_dir() {
            let _ = fs::set_permissions(dir, fs::Permissions::from_mode((meta.mode() & 0o7777) | 0o700));
            if let Ok(entries) = fs::read_dir(dir) {
                for entry in entries.flatten() {
                    make_dirs_writable(&entry.path());
                }
            }
        }
    }
}

/// The paths under `dir` this process has open (file descriptors, its working directory):
/// what the "no open files at commit" rule forbids.
fn open_under(dir: &Path) -> Vec<String> {
    let mut open = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc/self/fd") {
        for entry in entries.flatten() {
            if let Ok(target) = fs::read_link(entry.path()) {
                if target.starts_with(dir) {
                    open.push(target.display().to_string());
                }
            }
        }
    }
    if let Ok(cwd) = fs::read_link("/proc/self/cwd") {
        if cwd.starts_with(dir) {
            open.push(format!("{} (the working directory)", cwd.display()));
        }
    }
    open.sort();
    open
}

/// A digest of a tree's names, types, permission bits, file contents and link targets.
fn tree_digest(root: &Path) -> io::Result<u64> {
    let mut hasher = DefaultHasher::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let path = root.join(&rel);
        let meta = fs::symlink_metadata(&path)?;
        rel.hash(&mut hasher);
        (meta.mode() & 0o177777).hash(&mut hasher);
        if meta.file_type().is_symlink() {
            fs::read_link(&path)?.hash(&mut hasher);
        } else if meta.is_file() {
            fs::read(&path)?.hash(&mut hasher);
        } else if meta.is_dir() {
            let mut names: Vec<_> = fs::read_dir(&path)?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<io::Result<_>>()?;
            names.sort();
            // Reversed so the stack pops them in order.
            stack.extend(names.into_iter().rev().map(|n| rel.join(n)));
        }
    }
    Ok(hasher.finish())
}

impl Store for FakeStore {
    fn spec(&self) -> &StoreSpec {
        &self.spec
    }

    fn root(&self) -> &Path {
        &self.root
    }

    fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }

    fn result(&self, id: &StepId) -> Result<Option<PathBuf>, StoreError> {
        let mut state = self.lock();
        if let Some(e) = Self::fault(&mut state, StoreOp::Result, Some(id.as_str())) {
            return Err(e);
        }
        Ok(state.items.contains_key(id).then(|| self.item_path(id)))
    }

    fn list_results(&self) -> Result<Vec<StepId>, StoreError> {
        let mut state = self.lock();
        if let Some(e) = Self::fault(&mut state, StoreOp::ListResults, None) {
            return Err(e);
        }
        Ok(state.items.keys().cloned().collect())
    }

    fn rootfs(&self, id: &StepId) -> Result<Box<dyn RootfsView + '_>, StoreError> {
        let mut state = self.lock();
        state.calls.push(StoreCall::Rootfs(id.clone()));
        if let Some(e) = Self::fault(&mut state, StoreOp::Rootfs, Some(id.as_str())) {
            return Err(e);
        }
        if !state.items.contains_key(id) {
            return Err(StoreError::NotFound(id.to_string()));
        }
        state.outstanding.views += 1;
        Ok(Box::new(FakeView {
            store: self,
            path: self.item_path(id).join("rootfs"),
        }))
    }

    fn prepare(&self, base: Option<&StepId>, id: &StepId) -> Result<Prepared<'_>, StoreError> {
        let mut state = self.lock();
        let record = |state: &mut State, outcome| {
            state.calls.push(StoreCall::Prepare {
                base: base.cloned(),
                id: id.clone(),
                outcome,
            })
        };
        if let Some(e) = Self::fault(&mut state, StoreOp::Prepare, Some(id.as_str())) {
            record(&mut state, PrepareOutcome::Failed);
            return Err(e);
        }
        while state.locked.contains(id) {
            state = self.wait(state);
        }
        if state.items.contains_key(id) {
            record(&mut state, PrepareOutcome::Exists);
            return Ok(Prepared::Exists(self.item_path(id)));
        }
        if let Some(base) = base {
            if !state.items.contains_key(base) {
                record(&mut state, PrepareOutcome::Failed);
                return Err(StoreError::NotFound(base.to_string()));
            }
        }
        state.locked.insert(id.clone());
        let (tmp, tmp_name) = Self::temp_path(&mut state, &self.root, "result-tmp", id.as_str());
        state.outstanding.pending += 1;
        drop(state);

        let pending = FakePending {
            store: self,
            id: id.clone(),
            parent: base.cloned(),
            tmp,
            tmp_name,
            finished: false,
        };
        let made = match base {
            None => fs::create_dir(&pending.tmp).map_err(|e| io_err(format!("creating {}", pending.tmp.display()), e)),
            Some(base) => copy_tree(&self.item_path(base), &pending.tmp),
        };
        let mut state = self.lock();
        match made {
            Ok(()) => {
                record(&mut state, PrepareOutcome::Pending);
                drop(state);
                Ok(Prepared::Pending(Box::new(pending)))
            }
            Err(e) => {
                record(&mut state, PrepareOutcome::Failed);
                drop(state);
                // Dropping `pending` removes what the copy left and releases the lock; it
                // must not be logged as a discarded build.
                let mut pending = pending;
                pending.finished = true;
                let _ = self.discard_pending(&pending);
                Err(e)
            }
        }
    }

    fn delete(&self, id: &StepId) -> Result<(), StoreError> {
        let mut state = self.lock();
        if let Some(e) = Self::fault(&mut state, StoreOp::Delete, Some(id.as_str())) {
            let existed = state.items.contains_key(id);
            state.calls.push(StoreCall::Delete {
                id: id.clone(),
                existed,
                ok: false,
            });
            return Err(e);
        }
        while state.locked.contains(id) {
            state = self.wait(state);
        }
        let Some(item) = state.items.remove(id) else {
            state.calls.push(StoreCall::Delete {
                id: id.clone(),
                existed: false,
                ok: true,
            });
            return Ok(());
        };
        let children: Vec<String> = state
            .items
            .iter()
            .filter(|(_, i)| i.parent.as_ref() == Some(id))
            .map(|(child, _)| child.to_string())
            .collect();
        if !children.is_empty() {
            state
                .violations
                .push(format!("deleted {id} while its children {children:?} were committed"));
        }
        state.locked.insert(id.clone());
        let (aside, aside_name) = Self::temp_path(&mut state, &self.root, "result-tmp", "deleted");
        drop(state);
        // Like a real store: the item disappears in one step (a rename), then goes.
        let removed = match fs::rename(self.item_path(id), &aside) {
            Ok(()) => remove_tree(&aside),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(format!("moving {} aside", self.item_path(id).display()), e)),
        };
        let mut state = self.lock();
        state.live_temporaries.remove(&aside_name);
        Self::free_space(&mut state, item.size);
        state.calls.push(StoreCall::Delete {
            id: id.clone(),
            existed: true,
            ok: removed.is_ok(),
        });
        self.unlock_id(&mut state, id);
        removed
    }

    fn complete_deletes(&self) -> Result<(), StoreError> {
        let mut state = self.lock();
        state.calls.push(StoreCall::CompleteDeletes);
        if let Some(e) = Self::fault(&mut state, StoreOp::CompleteDeletes, None) {
            return Err(e);
        }
        let deferred = std::mem::take(&mut state.deferred);
        state.free = state.free.saturating_add(deferred).min(state.total);
        Ok(())
    }

    fn cache(&self, name: &str, uid: u32, gid: u32) -> Result<Box<dyn CacheLease + '_>, StoreError> {
        let mut state = self.lock();
        state.calls.push(StoreCall::Cache {
            name: name.to_owned(),
            uid,
            gid,
        });
        if let Some(e) = Self::fault(&mut state, StoreOp::Cache, Some(name)) {
            return Err(e);
        }
        let escaped = cache_name::escape(name)?;
        let latest = self.root.join("cache").join(&escaped);
        // Cache copies are made under the state lock: caches in unit tests are small, and
        // this keeps a release from replacing the latest version during the copy.
        if !state.caches.get(name).is_some_and(|c| c.exists) {
            fs::create_dir(&latest).map_err(|e| io_err(format!("creating {}", latest.display()), e))?;
        }
        let (copy, copy_name) = Self::temp_path(&mut state, &self.root, "cache-tmp", &escaped);
        if let Err(e) = copy_tree(&latest, &copy) {
            let _ = remove_tree(&copy);
            state.live_temporaries.remove(&copy_name);
            let cache = state.caches.entry(name.to_owned()).or_default();
            cache.exists = true;
            return Err(e);
        }
        let cache = state.caches.entry(name.to_owned()).or_default();
        cache.exists = true;
        cache.leases += 1;
        let generation = cache.generation;
        state.outstanding.leases += 1;
        Ok(Box::new(FakeLease {
            store: self,
            name: name.to_owned(),
            latest,
            copy,
            copy_name,
            generation,
            finished: false,
        }))
    }

    fn delete_cache(&self, name: &str) -> Result<(), StoreError> {
        let mut state = self.lock();
        let result = (|| {
            if let Some(e) = Self::fault(&mut state, StoreOp::DeleteCache, Some(name)) {
                return Err(e);
            }
            let escaped = cache_name::escape(name)?;
            let needs_idle = state.delete_cache_needs_idle;
            let Some(cache) = state.caches.get_mut(name) else {
                return Ok(());
            };
            if needs_idle && cache.leases > 0 {
                return Err(StoreError::Busy(name.to_owned()));
            }
            cache.generation += 1;
            if cache.exists {
                cache.exists = false;
                remove_tree(&self.root.join("cache").join(&escaped))?;
            }
            Ok(())
        })();
        state.calls.push(StoreCall::DeleteCache {
            name: name.to_owned(),
            ok: result.is_ok(),
        });
        result
    }

    fn list_caches(&self) -> Result<Vec<String>, StoreError> {
        let mut state = self.lock();
        if let Some(e) = Self::fault(&mut state, StoreOp::ListCaches, None) {
            return Err(e);
        }
        Ok(state
            .caches
            .iter()
            .filter(|(_, c)| c.exists)
            .map(|(name, _)| name.clone())
            .collect())
    }

    fn disk_usage(&self) -> Result<DiskUsage, StoreError> {
        let mut state = self.lock();
        if let Some(e) = Self::fault(&mut state, StoreOp::DiskUsage, None) {
            return Err(e);
        }
        Ok(DiskUsage {
            total_bytes: state.total,
            free_bytes: state.free,
        })
    }

    fn stale_temporaries(&self) -> Result<Vec<String>, StoreError> {
        let mut state = self.lock();
        if let Some(e) = Self::fault(&mut state, StoreOp::StaleTemporaries, None) {
            return Err(e);
        }
        let mut stale = Vec::new();
        for dir in ["result-tmp", "cache-tmp"] {
            let path = self.root.join(dir);
            let entries = fs::read_dir(&path).map_err(|e| io_err(format!("listing {}", path.display()), e))?;
            for entry in entries {
                let entry = entry.map_err(|e| io_err(format!("listing {}", path.display()), e))?;
                let name = format!("{dir}/{}", entry.file_name().to_string_lossy());
                if !state.live_temporaries.contains(&name) {
                    stale.push(name);
                }
            }
        }
        stale.sort();
        Ok(stale)
    }

    fn remove_stale_temporaries(&self) -> Result<Vec<String>, StoreError> {
        {
            let mut state = self.lock();
            if let Some(e) = Self::fault(&mut state, StoreOp::RemoveStaleTemporaries, None) {
                return Err(e);
            }
        }
        let mut removed = Vec::new();
        for name in self.stale_temporaries()? {
            // Live work started since the listing is never touched.
            if self.lock().live_temporaries.contains(&name) {
                continue;
            }
            match remove_tree(&self.root.join(&name)) {
                Ok(()) => removed.push(name),
                Err(e) => warn(&format!("cannot remove {name}: {e}")),
            }
        }
        Ok(removed)
    }

    fn incomplete_items(&self) -> Result<Vec<(StepId, String)>, StoreError> {
        let ids = {
            let mut state = self.lock();
            if let Some(e) = Self::fault(&mut state, StoreOp::IncompleteItems, None) {
                return Err(e);
            }
            state.items.keys().cloned().collect::<Vec<_>>()
        };
        Ok(ids
            .into_iter()
            .filter(|id| !self.item_path(id).join("rootfs").is_dir())
            .map(|id| (id, "its rootfs is gone".to_owned()))
            .collect())
    }
}

/// Says on stderr what the real stores log as a warning (the fakes do not use `tracing`).
fn warn(message: &str) {
    eprintln!("fake store: {message}");
}

struct FakeView<'a> {
    store: &'a FakeStore,
    path: PathBuf,
}

impl RootfsView for FakeView<'_> {
    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for FakeView<'_> {
    fn drop(&mut self) {
        self.store.lock().outstanding.views -= 1;
    }
}

struct FakePending<'a> {
    store: &'a FakeStore,
    id: StepId,
    parent: Option<StepId>,
    tmp: PathBuf,
    tmp_name: String,
    finished: bool,
}

impl PendingItem for FakePending<'_> {
    fn path(&self) -> &Path {
        &self.tmp
    }

    fn commit(self: Box<Self>) -> Result<Committed, StoreError> {
        let store = self.store;
        {
            let mut state = store.lock();
            if let Some(e) = FakeStore::fault(&mut state, StoreOp::Commit, Some(self.id.as_str())) {
                state.calls.push(StoreCall::Commit {
                    id: self.id.clone(),
                    ok: false,
                });
                // Dropping `self` discards the item.
                return Err(e);
            }
        }
        let open = open_under(&self.tmp);
        if !open.is_empty() {
            store.lock().violations.push(format!(
                "commit of {} while {} under it were open",
                self.id,
                open.join(", ")
            ));
        }
        let final_path = store.item_path(&self.id);
        if let Err(e) = fs::rename(&self.tmp, &final_path) {
            let mut state = store.lock();
            state.calls.push(StoreCall::Commit {
                id: self.id.clone(),
                ok: false,
            });
            return Err(io_err(format!("publishing {}", final_path.display()), e));
        }
        let scripted = store.lock().sizes.get(&self.id).copied();
        let size_bytes = match scripted {
            Some(size) => size,
            None => strata_stores::size::apparent_size(&final_path).unwrap_or(0),
        };
        let digest = tree_digest(&final_path).ok();
        let mut this = self;
        this.finished = true;
        let mut state = store.lock();
        state.items.insert(
            this.id.clone(),
            Item {
                parent: this.parent.clone(),
                size: size_bytes,
                digest,
            },
        );
        state.free = state.free.saturating_sub(size_bytes);
        state.live_temporaries.remove(&this.tmp_name);
        state.outstanding.pending -= 1;
        state.calls.push(StoreCall::Commit {
            id: this.id.clone(),
            ok: true,
        });
        store.unlock_id(&mut state, &this.id);
        Ok(Committed {
            path: final_path,
            size_bytes,
        })
    }

    fn abort(self: Box<Self>) -> Result<(), StoreError> {
        let mut this = self;
        this.finished = true;
        let fault = {
            let mut state = this.store.lock();
            state.calls.push(StoreCall::Abort(this.id.clone()));
            FakeStore::fault(&mut state, StoreOp::Abort, Some(this.id.as_str()))
        };
        let removed = this.store.discard_pending(&this);
        match fault {
            Some(e) => Err(e),
            None => removed,
        }
    }
}

impl Drop for FakePending<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.finished = true;
            self.store.lock().calls.push(StoreCall::Discard(self.id.clone()));
            if let Err(e) = self.store.discard_pending(self) {
                warn(&format!("cannot discard {}: {e}", self.tmp.display()));
            }
        }
    }
}

struct FakeLease<'a> {
    store: &'a FakeStore,
    name: String,
    latest: PathBuf,
    copy: PathBuf,
    copy_name: String,
    generation: u64,
    finished: bool,
}

impl FakeLease<'_> {
    /// Under the state lock: the lease is given back, its copy published or removed.
    fn finish(&self, state: &mut State, publish: bool) -> Result<bool, StoreError> {
        state.outstanding.leases -= 1;
        state.live_temporaries.remove(&self.copy_name);
        let cache = state.caches.entry(self.name.clone()).or_default();
        cache.leases -= 1;
        if publish && cache.generation == self.generation {
            let (old, old_name) = FakeStore::temp_path(state, &self.store.root, "cache-tmp", "old");
            state.live_temporaries.remove(&old_name);
            let had_old = fs::rename(&self.latest, &old).is_ok();
            if let Err(e) = fs::rename(&self.copy, &self.latest) {
                if had_old {
                    let _ = fs::rename(&old, &self.latest);
                }
                let _ = remove_tree(&self.copy);
                return Err(io_err(format!("publishing {}", self.latest.display()), e));
            }
            let cache = state.caches.entry(self.name.clone()).or_default();
            cache.generation += 1;
            cache.exists = true;
            if had_old {
                remove_tree(&old)?;
            }
            Ok(true)
        } else {
            remove_tree(&self.copy)?;
            Ok(false)
        }
    }
}

impl CacheLease for FakeLease<'_> {
    fn path(&self) -> &Path {
        &self.copy
    }

    fn release(self: Box<Self>) -> Result<(), StoreError> {
        let mut this = self;
        this.finished = true;
        let mut state = this.store.lock();
        let fault = FakeStore::fault(&mut state, StoreOp::Release, Some(&this.name));
        let published = this.finish(&mut state, fault.is_none());
        state.calls.push(StoreCall::Release {
            name: this.name.clone(),
            published: matches!(published, Ok(true)),
        });
        match fault {
            Some(e) => Err(e),
            None => published.map(|_| ()),
        }
    }
}

impl Drop for FakeLease<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.finished = true;
            let mut state = self.store.lock();
            state.calls.push(StoreCall::DropLease(self.name.clone()));
            if let Err(e) = self.finish(&mut state, false) {
                drop(state);
                warn(&format!("cannot discard cache copy {}: {e}", self.copy.display()));
            }
        }
    }
}
