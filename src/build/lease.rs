//! Leases: a build holds a shared lock on every id in its chain (and on the parent it is
//! about to clone); prune and delete take the exclusive lock before removing an item, so
//! they skip (or wait for) anything a build in any process uses.
//!
//! Lock files live in `state/leases/<id>.lock`. Prune unlinks a lease file while holding it
//! exclusively; a waiter that then wins the lock would hold an unlinked inode, so acquiring
//! re-checks that the path still names the locked inode and retries otherwise.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use strata_stores::owner::{FileLock, LockMode};
use strata_stores::{StepId, StoreError};

pub struct Leases {
    dir: PathBuf,
}

/// A held lease; released on drop.
#[derive(Debug)]
pub struct Lease {
    _lock: FileLock,
}

impl Leases {
    pub fn new(state_dir: &Path) -> Result<Leases, StoreError> {
        let dir = state_dir.join("leases");
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(format!("creating {}", dir.display()), e))?;
        Ok(Leases { dir })
    }

    fn path(&self, id: &StepId) -> PathBuf {
        self.dir.join(format!("{id}.lock"))
    }

    fn still_linked(lock: &FileLock) -> bool {
        match (std::fs::metadata(lock.path()), lock.metadata()) {
            (Ok(on_disk), Ok(held)) => on_disk.ino() == held.ino() && on_disk.dev() == held.dev(),
            _ => false,
        }
    }

    /// Takes a shared lease, waiting while a prune or delete removes the item.
    pub fn share(&self, id: &StepId) -> Result<Lease, StoreError> {
        loop {
            let lock = FileLock::acquire(&self.path(id), LockMode::Shared)?;
            if Self::still_linked(&lock) {
                return Ok(Lease { _lock: lock });
            }
        }
    }

    /// Takes the exclusive lease if no build holds the id, for removing it.
    pub fn try_exclusive(&self, id: &StepId) -> Result<Option<ExclusiveLease>, StoreError> {
        let path = self.path(id);
        match FileLock::try_acquire(&path, LockMode::Exclusive)? {
            Some(lock) if Self::still_linked(&lock) => Ok(Some(ExclusiveLease { lock })),
            _ => Ok(None),
        }
    }
}

/// The right to remove an item; [`ExclusiveLease::removed`] unlinks the lease file.
pub struct ExclusiveLease {
    lock: FileLock,
}

impl ExclusiveLease {
    /// The item is gone: drop its lease file too (while still holding the lock).
    pub fn removed(self) {
        let _ = std::fs::remove_file(self.lock.path());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_lease_blocks_removal() {
        let dir = tempfile::tempdir().unwrap();
        let leases = Leases::new(dir.path()).unwrap();
        let id = StepId::from_digest(&[7; 32]);
        let held = leases.share(&id).unwrap();
        assert!(leases.try_exclusive(&id).unwrap().is_none());
        drop(held);
        let ex = leases.try_exclusive(&id).unwrap().unwrap();
        ex.removed();
        // A new lease after removal works on a fresh file.
        let _again = leases.share(&id).unwrap();
        assert!(leases.try_exclusive(&id).unwrap().is_none());
    }
}
