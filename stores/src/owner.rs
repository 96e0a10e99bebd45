//! Who owns a temporary: locks that tell live processes from dead ones.
//!
//! Every process that opens a store takes an exclusive flock on its own owner file
//! `state/owners/<tag>.lock` and keeps it for its lifetime; the kernel drops the lock when
//! the process dies, even under `kill -9`. Temporaries (items being built, cache copies,
//! sandbox bundles, containers) carry the owner tag in their names, so a later process can
//! remove exactly those whose owner is gone and never touch a live process's work.
//!
//! [`FileLock`] is also the per-id build lock and the lease lock used by prune.

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::IoContext;
use crate::StoreError;

/// An flock on a file, released when dropped (or when the process dies).
#[derive(Debug)]
pub struct FileLock {
    _file: File,
    path: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    Shared,
    Exclusive,
}

impl FileLock {
    /// Opens (creating it 0600) the lock file. Only root may open it: another host user who
    /// could would hold the lock as long as it likes, and stall every build waiting for it.
    fn open(path: &Path) -> Result<File, StoreError> {
        use std::os::unix::fs::OpenOptionsExt;
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(crate::layout::PRIVATE_FILE_MODE)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(path)
            .context(|| format!("opening lock {}", path.display()))
    }

    /// Waits for the lock.
    pub fn acquire(path: &Path, mode: LockMode) -> Result<FileLock, StoreError> {
        let file = Self::open(path)?;
        flock(&file, mode, true).context(|| format!("locking {}", path.display()))?;
        Ok(FileLock {
            _file: file,
            path: path.to_owned(),
        })
    }

    /// Waits for the lock on a directory (which is opened, never created).
    pub fn acquire_directory(path: &Path, mode: LockMode) -> Result<FileLock, StoreError> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(path)
            .context(|| format!("opening directory {}", path.display()))?;
        flock(&file, mode, true).context(|| format!("locking {}", path.display()))?;
        Ok(FileLock {
            _file: file,
            path: path.to_owned(),
        })
    }

    /// Waits for the lock until `cancelled()` says to stop (checked every few milliseconds at
    /// first, then every 100 ms); `Ok(None)` when cancelled first. A blocking flock cannot
    /// be interrupted by a cancel token (a signal handled by another thread never reaches it).
    pub fn acquire_until(
        path: &Path,
        mode: LockMode,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Option<FileLock>, StoreError> {
        let file = Self::open(path)?;
        let mut delay = std::time::Duration::from_millis(2);
        loop {
            match flock(&file, mode, false) {
                Ok(()) => {
                    return Ok(Some(FileLock {
                        _file: file,
                        path: path.to_owned(),
                    }))
                }
                Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {}
                Err(e) => return Err(StoreError::io(format!("locking {}", path.display()), e)),
            }
            if cancelled() {
                return Ok(None);
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(std::time::Duration::from_millis(100));
        }
    }

    /// Takes the lock if nobody holds a conflicting one, else `None`.
    pub fn try_acquire(path: &Path, mode: LockMode) -> Result<Option<FileLock>, StoreError> {
        let file = Self::open(path)?;
        match flock(&file, mode, false) {
            Ok(()) => Ok(Some(FileLock {
                _file: file,
                path: path.to_owned(),
            })),
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(None),
            Err(e) => Err(StoreError::io(format!("locking {}", path.display()), e)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The metadata of the locked file (to check the path still names it).
    pub fn metadata(&self) -> std::io::Result<std::fs::Metadata> {
        self._file.metadata()
    }

    /// Whether some process holds a lock on `path` that conflicts with an exclusive one.
    pub fn is_held(path: &Path) -> Result<bool, StoreError> {
        if !path.exists() {
            return Ok(false);
        }
        Ok(Self::try_acquire(path, LockMode::Exclusive)?.is_none())
    }
}

fn flock(file: &File, mode: LockMode, wait: bool) -> std::io::Result<()> {
    let mut op = match mode {
        LockMode::Shared => libc::LOCK_SH,
        LockMode::Exclusive => libc::LOCK_EX,
    };
    if !wait {
        op |= libc::LOCK_NB;
    }
    loop {
        // SAFETY: flock on a valid, owned file descriptor.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// This process's claim on the temporaries it creates in one store.
#[derive(Debug)]
pub struct ProcessOwner {
    tag: String,
    counter: AtomicU64,
    _lock: FileLock,
}

/// The name suffix of a live or dead owner's file.
const LOCK_SUFFIX: &str = ".lock";

/// The name suffix of an owner file while it is being registered.
const LOCKING_SUFFIX: &str = ".locking";

/// The owner file of `tag` in `owners_dir`.
fn owner_file(owners_dir: &Path, tag: &str) -> PathBuf {
    owners_dir.join(format!("{tag}{LOCK_SUFFIX}"))
}

/// A registration file this old belongs to a process that died while registering.
const STALE_REGISTRATION: std::time::Duration = std::time::Duration::from_secs(60);

fn is_older_than(path: &Path, age: std::time::Duration) -> bool {
    fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|elapsed| elapsed > age)
}

/// Separates the owner tag from the rest of a temporary's name.
pub const OWNER_SEPARATOR: &str = "--";

impl ProcessOwner {
    /// Registers this process in `owners_dir`.
    pub fn register(owners_dir: &Path) -> Result<ProcessOwner, StoreError> {
        crate::layout::private_dir(owners_dir)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let tag = format!("{}.{:08x}", std::process::id(), nanos);
        // Locked under a private name first, then renamed into place: the owner file never
        // exists unlocked, so a concurrent `forget_dead` cannot take it for a dead owner's
        // (and remove it) between our create and our flock, which would make every later
        // `is_alive` say this live process is gone.
        let locking = owners_dir.join(format!("{tag}{LOCKING_SUFFIX}"));
        let path = owner_file(owners_dir, &tag);
        let mut lock = FileLock::acquire(&locking, LockMode::Exclusive)?;
        fs::rename(&locking, &path).context(|| format!("renaming {} into place", locking.display()))?;
        lock.path = path;
        Ok(ProcessOwner {
            tag,
            counter: AtomicU64::new(0),
            _lock: lock,
        })
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// A fresh temporary name owned by this process: `<tag>--<n>-<suffix>`.
    pub fn temp_name(&self, suffix: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{}{OWNER_SEPARATOR}{n}-{suffix}", self.tag)
    }

    /// The owner tag of a temporary's name, if it has one.
    pub fn owner_of(name: &str) -> Option<&str> {
        name.split_once(OWNER_SEPARATOR).map(|(tag, _)| tag)
    }

    /// Whether the process that owns `tag` is still alive (holds its owner lock).
    pub fn is_alive(owners_dir: &Path, tag: &str) -> Result<bool, StoreError> {
        if tag.contains('/') || tag.is_empty() {
            return Ok(false);
        }
        FileLock::is_held(&owner_file(owners_dir, tag))
    }

    /// Removes owner files of dead processes (after their temporaries are gone), and the
    /// half-registered files of processes that died while registering (only once they are
    /// old: a fresh one may be between its create and its flock).
    pub fn forget_dead(owners_dir: &Path) -> Result<(), StoreError> {
        for name in crate::layout::Layout::entries(owners_dir)? {
            let path = owners_dir.join(&name);
            let tag = match name.strip_suffix(LOCKING_SUFFIX) {
                Some(tag) if is_older_than(&path, STALE_REGISTRATION) => Some(tag),
                Some(_) => None,
                None => name.strip_suffix(LOCK_SUFFIX),
            };
            if let Some(tag) = tag {
                match FileLock::try_acquire(&path, LockMode::Exclusive) {
                    Ok(Some(_lock)) if !tag.is_empty() => {
                        let _ = fs::remove_file(&path);
                    }
                    Ok(_) => {}
                    // The directory left our view (on ZFS another process mounted the state
                    // dataset over it while we looked): nothing of it is ours to forget, and
                    // the next open tries again.
                    Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                        return Ok(())
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

/// Whether a temporary called `name` may be removed: it has no owner tag, or its owner died.
pub fn is_orphan(owners_dir: &Path, name: &str) -> Result<bool, StoreError> {
    match ProcessOwner::owner_of(name) {
        None => Ok(true),
        Some(tag) => Ok(!ProcessOwner::is_alive(owners_dir, tag)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_lock_conflicts_even_in_one_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let held = FileLock::acquire(&path, LockMode::Exclusive).unwrap();
        assert!(FileLock::try_acquire(&path, LockMode::Shared).unwrap().is_none());
        drop(held);
        let a = FileLock::try_acquire(&path, LockMode::Shared).unwrap().unwrap();
        let b = FileLock::try_acquire(&path, LockMode::Shared).unwrap();
        assert!(b.is_some(), "shared locks coexist");
        assert!(FileLock::is_held(&path).unwrap());
        drop((a, b));
        assert!(!FileLock::is_held(&path).unwrap());
    }

    #[test]
    fn lock_files_are_private_and_waits_cancellable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let held = FileLock::acquire(&path, LockMode::Exclusive).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let start = std::time::Instant::now();
        let stop = std::time::Instant::now() + std::time::Duration::from_millis(300);
        let got = FileLock::acquire_until(&path, LockMode::Shared, &|| std::time::Instant::now() > stop).unwrap();
        assert!(got.is_none(), "cancelled while held");
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
        drop(held);
        assert!(FileLock::acquire_until(&path, LockMode::Shared, &|| true)
            .unwrap()
            .is_some());
    }

    #[test]
    fn live_owner_is_not_orphan() {
        let dir = tempfile::tempdir().unwrap();
        let owner = ProcessOwner::register(dir.path()).unwrap();
        let name = owner.temp_name("abc");
        assert_eq!(ProcessOwner::owner_of(&name), Some(owner.tag()));
        assert!(!is_orphan(dir.path(), &name).unwrap());
        assert!(is_orphan(dir.path(), "no-owner-tag").unwrap());
        assert!(is_orphan(dir.path(), "123.dead--0-x").unwrap());
        let tag = owner.tag().to_owned();
        drop(owner);
        assert!(!ProcessOwner::is_alive(dir.path(), &tag).unwrap());
        ProcessOwner::forget_dead(dir.path()).unwrap();
        assert!(crate::layout::Layout::entries(dir.path()).unwrap().is_empty());
    }

    /// Owners registering while another process forgets dead ones all stay alive (the
    /// owner file used to exist unlocked for a moment, and could be removed then).
    #[test]
    fn registering_races_forget_dead() {
        let dir = tempfile::tempdir().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sweeper = {
            let (dir, stop) = (dir.path().to_owned(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    ProcessOwner::forget_dead(&dir).unwrap();
                }
            })
        };
        let owners: Vec<ProcessOwner> = (0..300).map(|_| ProcessOwner::register(dir.path()).unwrap()).collect();
        stop.store(true, Ordering::Relaxed);
        sweeper.join().unwrap();
        for owner in &owners {
            assert!(
                ProcessOwner::is_alive(dir.path(), owner.tag()).unwrap(),
                "{} taken for dead",
                owner.tag()
            );
        }
    }
}
