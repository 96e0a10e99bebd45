//! Sizes: the apparent size of a tree (what an item "weighs" when the backend cannot tell
//! cheaply which of its blocks it shares with its parent) and the space of the filesystem
//! holding a store.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::error::IoContext;
use crate::{DiskUsage, StoreError};

/// Sum of the lengths of the regular files and symlinks under `root`, counting each inode
/// once (hard links) and not following symlinks. Directories count nothing. Entries that
/// vanish during the walk are skipped.
pub fn apparent_size(root: &Path) -> Result<u64, StoreError> {
    let mut seen = HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StoreError::io(format!("listing {}", dir.display()), e)),
        };
        for entry in entries {
            let entry = entry.context(|| format!("listing {}", dir.display()))?;
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::io(format!("reading {}", entry.path().display()), e)),
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if (meta.is_file() || meta.file_type().is_symlink())
                && (meta.nlink() <= 1 || seen.insert((meta.dev(), meta.ino())))
            {
                total += meta.len();
            }
        }
    }
    Ok(total)
}

/// Free and total space of the filesystem holding `path`, from statvfs (what an
/// unprivileged user may use counts as free).
pub fn statvfs_usage(path: &Path) -> Result<DiskUsage, StoreError> {
    let st = nix::sys::statvfs::statvfs(path)
        .map_err(|e| StoreError::io(format!("statvfs {}", path.display()), io::Error::from(e)))?;
    let frsize = st.fragment_size() as u64;
    Ok(DiskUsage {
        total_bytes: st.blocks() as u64 * frsize,
        free_bytes: st.blocks_available() as u64 * frsize,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_hard_links_once() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("d")).unwrap();
        fs::write(dir.path().join("d/a"), vec![0u8; 1000]).unwrap();
        fs::hard_link(dir.path().join("d/a"), dir.path().join("b")).unwrap();
        fs::write(dir.path().join("c"), b"xyz").unwrap();
        std::os::unix::fs::symlink("abcd", dir.path().join("l")).unwrap();
        assert_eq!(apparent_size(dir.path()).unwrap(), 1007);
    }
}
