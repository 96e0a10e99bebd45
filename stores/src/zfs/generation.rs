//! Cache generations, persisted under `state/` so that several processes agree on "the
//! first release wins". (Stand-in until the shared module from the stores I branch lands.)
//!
//! Invariant: the counter of a cache only changes while its flock is held, and every lease
//! remembers the value it saw; a release publishes only if the value is unchanged.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::IoContext;
use crate::owner::{FileLock, LockMode};
use crate::StoreError;

/// Exclusive access to one cache's generation (and, by convention, to its master copy).
pub struct GenerationGuard {
    _lock: FileLock,
    counter: PathBuf,
}

/// Locks cache `escaped` (a name from [`crate::cache_name::escape`]) in `dir`.
pub fn lock(dir: &Path, escaped: &str) -> Result<GenerationGuard, StoreError> {
    fs::create_dir_all(dir).context(|| format!("creating {}", dir.display()))?;
    let lock = FileLock::acquire(&dir.join(format!("{escaped}.lock")), LockMode::Exclusive)?;
    Ok(GenerationGuard {
        _lock: lock,
        counter: dir.join(format!("{escaped}.generation")),
    })
}

impl GenerationGuard {
    pub fn current(&self) -> Result<u64, StoreError> {
        match fs::read_to_string(&self.counter) {
            Ok(text) => Ok(text.trim().parse().unwrap_or(0)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(StoreError::io(format!("reading {}", self.counter.display()), e)),
        }
    }

    /// Increments the counter (write to a temporary file, then rename: never torn).
    pub fn bump(&self) -> Result<u64, StoreError> {
        let next = self.current()? + 1;
        let tmp = self.counter.with_extension("generation.tmp");
        fs::write(&tmp, next.to_string()).context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &self.counter).context(|| format!("renaming {}", tmp.display()))?;
        Ok(next)
    }
}
