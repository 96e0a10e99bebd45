//! The on-disk layout shared by the directory-based stores (OBuilder's):
//! `result/<id>/`, `result-tmp/`, `state/` (database, locks, owners, sandbox), `cache/`,
//! `cache-tmp/`.

use std::fs;
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

    /// Creates the directories that do not exist yet (mode 0700 for the temporaries, whose
    /// contents may be owned by container users).
    pub fn create_dirs(&self) -> Result<(), StoreError> {
        for dir in [self.state_dir(), self.locks_dir(), self.owners_dir()] {
            fs::create_dir_all(&dir).context(|| format!("creating {}", dir.display()))?;
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
