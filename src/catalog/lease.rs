//! Leases: a build holds a shared lock on every id in its chain (and on the parent it is
//! about to clone); prune and delete take the exclusive lock before removing an item, so
//! they skip (or wait for) anything a build in any process uses.
//!
//! Lock files live in `state/leases/<id>.lock`. Prune unlinks a lease file while holding it
//! exclusively; a waiter that then wins the lock would hold an unlinked inode, so acquiring
//! re-checks that the path still names the locked inode and retries otherwise.
//!
//! The directory is 0700 and the files 0600: another host user who could open a lease file
//! could hold its lock and stall every build of that id (issue 15).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use strata_sandbox::Cancel;
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
        strata_stores::layout::private_dir(&dir)?;
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

    /// [`Leases::share`], giving up when `cancel` fires while it waits (a prune holding the
    /// lease for long): then an `Interrupted` error.
    pub fn share_until(&self, id: &StepId, cancel: &Cancel) -> Result<Lease, StoreError> {
        loop {
            let lock = FileLock::acquire_until(&self.path(id), LockMode::Shared, &|| cancel.is_cancelled())?
                .ok_or_else(|| {
                    StoreError::io(
                        format!("waiting for the lease on {id}"),
                        std::io::Error::new(std::io::ErrorKind::Interrupted, "cancelled"),
                    )
                })?;
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

    #[test]
    fn lease_files_are_private_and_a_wait_ends_on_cancel() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let leases = Leases::new(dir.path()).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("leases")), 0o700);
        let id = StepId::from_digest(&[8; 32]);
        let removing = FileLock::acquire(&leases.path(&id), LockMode::Exclusive).unwrap();
        assert_eq!(mode(&leases.path(&id)), 0o600);
        let cancel = Cancel::new();
        let waiter = {
            let cancel = cancel.clone();
            let dir = dir.path().to_owned();
            let id = id.clone();
            std::thread::spawn(move || Leases::new(&dir).unwrap().share_until(&id, &cancel).map(drop))
        };
        std::thread::sleep(std::time::Duration::from_millis(200));
        cancel.cancel();
        let err = waiter.join().unwrap().unwrap_err();
        assert!(err.to_string().contains("cancelled"), "{err}");
        drop(removing);
        leases
            .share_until(&id, &cancel)
            .expect("a free lease is taken even when cancelled");
    }
}
