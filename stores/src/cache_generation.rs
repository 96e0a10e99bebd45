//! Cache generations shared between processes.
//!
//! OBuilder keeps one in-memory counter per cache name, so two processes sharing a store
//! lose each other's updates. Here each cache (by its escaped name) has, under
//! `state/caches/`:
//! - `<escaped>.lock`: an flock taken exclusively around every read-modify-write of the
//!   cache (take a lease, release one, delete the cache);
//! - `<escaped>.gen`: the generation, a decimal number, replaced atomically (write + rename)
//!   while the lock is held; a missing file means generation 0;
//! - `<escaped>.inuse`: every outstanding lease holds a shared flock on it, so a backend that
//!   cannot delete a cache under a live copy (ZFS: its cache clones hang off the cache's snapshot) can answer `Busy`, across
//!   processes, by trying an exclusive one.
//!
//! Invariant: a lease records the generation it was taken at; on release it may publish its
//! copy only if the generation is unchanged, and publishing bumps it. So of several leases
//! taken from one version, the first released wins and the others are discarded. Deleting a
//! cache bumps the generation too, so leases taken before a delete are discarded.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::error::IoContext;
use crate::owner::{FileLock, LockMode};
use crate::StoreError;

/// The generation files and locks of every cache of one store.
#[derive(Debug, Clone)]
pub struct CacheGenerations {
    dir: PathBuf,
}

impl CacheGenerations {
    /// Uses (and creates) `state_dir/caches`.
    pub fn new(state_dir: &Path) -> Result<CacheGenerations, StoreError> {
        let dir = state_dir.join("caches");
        crate::layout::private_dir(&dir)?;
        Ok(CacheGenerations { dir })
    }

    /// Waits for exclusive use of the cache `escaped` (an output of `cache_name::escape`).
    pub fn lock(&self, escaped: &str) -> Result<CacheGuard, StoreError> {
        let lock = FileLock::acquire(&self.dir.join(format!("{escaped}.lock")), LockMode::Exclusive)?;
        Ok(CacheGuard {
            _lock: lock,
            generation_file: self.dir.join(format!("{escaped}.gen")),
        })
    }

    /// Marks one lease of `escaped` as outstanding until the marker is dropped.
    pub fn mark_in_use(&self, escaped: &str) -> Result<InUse, StoreError> {
        let lock = FileLock::acquire(&self.dir.join(format!("{escaped}.inuse")), LockMode::Shared)?;
        Ok(InUse { _lock: lock })
    }

    /// Whether any process holds a lease of `escaped`. Meaningful under [`Self::lock`],
    /// since leases are taken under it.
    pub fn in_use(&self, escaped: &str) -> Result<bool, StoreError> {
        FileLock::is_held(&self.dir.join(format!("{escaped}.inuse")))
    }
}

/// Exclusive use of one cache; the generation may be read and bumped while it lives.
#[derive(Debug)]
pub struct CacheGuard {
    _lock: FileLock,
    generation_file: PathBuf,
}

impl CacheGuard {
    pub fn generation(&self) -> Result<u64, StoreError> {
        match fs::read_to_string(&self.generation_file) {
            Ok(text) => text.trim().parse().map_err(|_| {
                StoreError::io(
                    format!("reading {}", self.generation_file.display()),
                    io::Error::new(io::ErrorKind::InvalidData, format!("not a generation: {text:?}")),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(StoreError::io(format!("reading {}", self.generation_file.display()), e)),
        }
    }

    /// Increments the generation and returns the new value.
    pub fn bump(&self) -> Result<u64, StoreError> {
        let next = self.generation()? + 1;
        let tmp = self.generation_file.with_extension("gen.tmp");
        write_private(&tmp, format!("{next}\n").as_bytes()).context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &self.generation_file).context(|| format!("replacing {}", self.generation_file.display()))?;
        Ok(next)
    }

    /// Whether a lease taken at generation `taken` may publish its copy now.
    pub fn may_publish(&self, taken: u64) -> Result<bool, StoreError> {
        Ok(self.generation()? == taken)
    }
}

/// Writes `bytes` to a new file (replacing an old one) made 0600.
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = fs::remove_file(path);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(crate::layout::PRIVATE_FILE_MODE)
        .open(path)?
        .write_all(bytes)
}

/// Held by an outstanding lease (a shared flock); see [`CacheGenerations::mark_in_use`].
#[derive(Debug)]
pub struct InUse {
    _lock: FileLock,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_release_wins() {
        let dir = tempfile::tempdir().unwrap();
        let gens = CacheGenerations::new(dir.path()).unwrap();
        let taken_a = gens.lock("c-x").unwrap().generation().unwrap();
        let taken_b = gens.lock("c-x").unwrap().generation().unwrap();
        assert_eq!((taken_a, taken_b), (0, 0));
        {
            let guard = gens.lock("c-x").unwrap();
            assert!(guard.may_publish(taken_b).unwrap());
            assert_eq!(guard.bump().unwrap(), 1);
        }
        assert!(!gens.lock("c-x").unwrap().may_publish(taken_a).unwrap());
        // Persisted: a second handle (another process) sees the same generation.
        let again = CacheGenerations::new(dir.path()).unwrap();
        assert_eq!(again.lock("c-x").unwrap().generation().unwrap(), 1);
        assert_eq!(again.lock("c-y").unwrap().generation().unwrap(), 0);
    }

    #[test]
    fn in_use_follows_markers() {
        let dir = tempfile::tempdir().unwrap();
        let gens = CacheGenerations::new(dir.path()).unwrap();
        assert!(!gens.in_use("c-x").unwrap());
        let a = gens.mark_in_use("c-x").unwrap();
        let b = gens.mark_in_use("c-x").unwrap();
        assert!(gens.in_use("c-x").unwrap());
        drop(a);
        assert!(gens.in_use("c-x").unwrap());
        drop(b);
        assert!(!gens.in_use("c-x").unwrap());
    }
}
