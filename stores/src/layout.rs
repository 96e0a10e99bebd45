//! The on-disk layout shared by the directory-based stores (OBuilder's):
//! `result/<id>/`, `result-tmp/`, `state/` (database, locks, owners, sandbox), `cache/`,
//! `cache-tmp/`.
//!
//! Privacy: the store root and every directory above are 0700 ([`private_dir`]). Items hold
//! container root filesystems (setuid-root binaries, device nodes, world-writable `/tmp`s,
//! other users' files) and `state/` holds the database, logs' metadata and lock files: a host
//! user who could reach them could gain root, read secrets or block builds.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::IoContext;
use crate::{StepId, StoreError};

#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }

    pub fn result_dir(&self) -> PathBuf {
        self.root.join("result")
    }
    pub fn result(&self, id: &StepId) -> PathBuf {
        self.result_dir().join(id.as_str())
    }
    pub fn result_tmp_dir(&self) -> PathBuf {
        self.root.join("result-tmp")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }
    pub fn locks_dir(&self) -> PathBuf {
        self.state_dir().join("locks")
    }
    pub fn owners_dir(&self) -> PathBuf {
        self.state_dir().join("owners")
    }
    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }
    pub fn cache_tmp_dir(&self) -> PathBuf {
        self.root.join("cache-tmp")
    }

    /// Makes the root and the store's directories private (0700), creating those that do not
    /// exist yet and tightening those an older strata made 0755.
    pub fn create_dirs(&self) -> Result<(), StoreError> {
        for dir in [
            self.root.clone(),
            self.state_dir(),
            self.locks_dir(),
            self.owners_dir(),
            self.result_dir(),
            self.result_tmp_dir(),
            self.cache_dir(),
            self.cache_tmp_dir(),
        ] {
            private_dir(&dir)?;
        }
        Ok(())
    }

    /// Lists the names in `dir` (empty if it does not exist).
    pub fn entries(dir: &Path) -> Result<Vec<String>, StoreError> {
        let read = match fs::read_dir(dir) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::io(format!("listing {}", dir.display()), e)),
        };
        let mut names = Vec::new();
        for entry in read {
            let entry = entry.context(|| format!("listing {}", dir.display()))?;
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    /// The committed ids under `result/` (names that are not ids are ignored).
    pub fn committed_ids(&self) -> Result<Vec<StepId>, StoreError> {
        Ok(Self::entries(&self.result_dir())?
            .into_iter()
            .filter_map(|n| n.parse().ok())
            .collect())
    }
}

/// Whether anything (a symlink included) is at `path`.
pub fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

/// Mode of every directory strata makes for itself in a store (and of the store root).
pub const PRIVATE_DIR_MODE: u32 = 0o700;

/// Mode of every file strata writes outside an item (database, locks, generations).
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// Creates `dir` (and missing parents, with the default mode) as a private directory, or, if
/// it exists, takes group and other access away from it. Concurrent callers are fine.
pub fn private_dir(dir: &Path) -> Result<(), StoreError> {
    match fs::DirBuilder::new().mode(PRIVATE_DIR_MODE).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent() {
                fs::create_dir_all(parent).context(|| format!("creating {}", parent.display()))?;
            }
            match fs::DirBuilder::new().mode(PRIVATE_DIR_MODE).create(dir) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                    return Err(StoreError::io(format!("creating {}", dir.display()), e))
                }
                _ => {}
            }
        }
        Err(e) => return Err(StoreError::io(format!("creating {}", dir.display()), e)),
    }
    make_private(dir)
}

/// Takes group and other access away from the directory `dir` (the umask may have narrowed
/// a fresh one; an older strata made them 0755). Keeps the owner's bits as they are.
pub fn make_private(dir: &Path) -> Result<(), StoreError> {
    let meta = fs::metadata(dir).context(|| format!("reading {}", dir.display()))?;
    if !meta.is_dir() {
        return Err(StoreError::io(
            format!("{} is not a directory", dir.display()),
            io::ErrorKind::NotADirectory.into(),
        ));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode != PRIVATE_DIR_MODE {
        fs::set_permissions(dir, fs::Permissions::from_mode(PRIVATE_DIR_MODE))
            .context(|| format!("making {} private (mode 0700)", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_dirs_are_made_and_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("a/b/fresh");
        private_dir(&fresh).unwrap();
        assert_eq!(fs::metadata(&fresh).unwrap().permissions().mode() & 0o7777, 0o700);
        let old = dir.path().join("old");
        fs::create_dir(&old).unwrap();
        fs::set_permissions(&old, fs::Permissions::from_mode(0o1777)).unwrap();
        private_dir(&old).unwrap();
        assert_eq!(fs::metadata(&old).unwrap().permissions().mode() & 0o7777, 0o700);
        fs::write(dir.path().join("file"), "x").unwrap();
        assert!(private_dir(&dir.path().join("file")).is_err());
    }
}
