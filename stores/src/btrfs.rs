//! The btrfs store (`btrfs:/PATH`): a subvolume per item, results and cache versions as
//! read-only snapshots, clones as writable snapshots, all through `libbtrfsutil` (no `btrfs`
//! binary except `btrfs subvolume sync` in [`TreeOps::complete_deletes`]).
//!
//! - Clone, commit and delete are O(1) in the size of the tree: a snapshot, a read-only
//!   snapshot, a subvolume delete that returns before the cleaner frees the space.
//! - No quotas (qgroups make snapshot deletion slow). The size recorded at commit is the
//!   number of bytes of file data the item wrote itself, found cheaply by searching the
//!   item's own tree for file extents newer than the snapshot it started from (what
//!   `btrfs subvolume find-new` does). It counts extents in files written or rewritten
//!   since the clone (whole new extents, logical length; inline data by length), not data
//!   shared with the base. A freshly created item counts all its data. When the search
//!   is refused (no CAP_SYS_ADMIN), the apparent size of the tree is recorded instead.
//! - `libbtrfsutil` panics on a path holding a NUL byte; every path goes through
//!   [`checked`] first.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use libbtrfsutil::CreateSnapshotOptions;

use crate::dir_store::{DirStore, TreeOps};
use crate::{Leftovers, Store, StoreError, StoreSpec};

fn checked(path: &Path) -> Result<&Path, StoreError> {
    if path.as_os_str().as_bytes().contains(&0) {
        return Err(StoreError::Btrfs(format!(
            "path {} contains a NUL byte",
            path.display()
        )));
    }
    Ok(path)
}

fn btrfs_error(what: &str, path: &Path, e: libbtrfsutil::Error) -> StoreError {
    StoreError::Btrfs(format!("{what} {}: {e} ({})", path.display(), e.os_error()))
}

/// Tree operations on btrfs subvolumes.
pub struct BtrfsOps;

impl TreeOps for BtrfsOps {
    fn create_empty(&self, path: &Path) -> Result<(), StoreError> {
        libbtrfsutil::create_subvolume(checked(path)?).map_err(|e| btrfs_error("creating subvolume", path, e))
    }

    fn clone_writable(&self, src: &Path, dst: &Path) -> Result<(), StoreError> {
        CreateSnapshotOptions::new()
            .create(checked(src)?, checked(dst)?)
            .map_err(|e| btrfs_error("snapshotting into", dst, e))
    }

    fn publish(&self, tmp: &Path, dst: &Path) -> Result<(), StoreError> {
        CreateSnapshotOptions::new()
            .readonly(true)
            .create(checked(tmp)?, checked(dst)?)
            .map_err(|e| btrfs_error("taking a read-only snapshot into", dst, e))?;
        // The writable original is now a leftover; the caller removes it.
        Ok(())
    }

    fn remove(&self, path: &Path) -> Result<(), StoreError> {
        let path = checked(path)?;
        if std::fs::symlink_metadata(path).is_err() {
            return Ok(());
        }
        match libbtrfsutil::is_subvolume(path) {
            Ok(true) => {
                // Deleting a read-only snapshot needs CAP_SYS_ADMIN (we are root); without
                // it, make it writable first.
                // Recursive: a build may have created subvolumes inside its tree.
                let delete = |p: &Path| libbtrfsutil::DeleteSubvolumeOptions::new().recursive(true).delete(p);
                match delete(path) {
                    Ok(()) => Ok(()),
                    Err(e) if e.errno() == libc::EPERM || e.errno() == libc::EROFS => {
                        libbtrfsutil::set_subvolume_read_only(path, false)
                            .map_err(|e| btrfs_error("making writable", path, e))?;
                        delete(path).map_err(|e| btrfs_error("deleting subvolume", path, e))
                    }
                    Err(e) => Err(btrfs_error("deleting subvolume", path, e)),
                }
            }
            // A plain directory (e.g. a half-made temporary of another backend version).
            Ok(false) => crate::tree_copy::remove_tree(path),
            Err(e) => Err(btrfs_error("inspecting", path, e)),
        }
    }

    fn size(&self, tmp: &Path, published: &Path, cloned: bool) -> Result<u64, StoreError> {
        // The read-only snapshot shares the writable item's tree, with every delayed
        // allocation flushed by the snapshot: search it. Extents older than the clone
        // (the writable item's creation transaction) belong to the base.
        let since = if cloned {
            match libbtrfsutil::subvolume_info(checked(tmp)?) {
                Ok(info) => info.otransid(),
                Err(e) => {
                    tracing::debug!("no subvolume info for {}: {e}; recording apparent size", tmp.display());
                    return crate::size::apparent_size(published);
                }
            }
        } else {
            0
        };
        match extent_bytes_since(checked(published)?, since) {
            Ok(bytes) => Ok(bytes),
            Err(e) => {
                tracing::debug!(
                    "tree search on {} failed: {e}; recording apparent size",
                    published.display()
                );
                crate::size::apparent_size(published)
            }
        }
    }

    fn move_aside(&self, from: &Path, aside: &Path) -> io::Result<()> {
        // A read-only subvolume cannot be renamed (EROFS): make it writable first. The
        // tree being retired or replaced, nobody relies on it staying read-only.
        let from_checked = checked(from).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        checked(aside).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        if std::fs::symlink_metadata(from_checked).is_err() {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        if let Ok(true) = libbtrfsutil::subvolume_read_only(from_checked) {
            libbtrfsutil::set_subvolume_read_only(from_checked, false).map_err(|e| e.os_error())?;
        }
        std::fs::rename(from, aside)
    }

    fn retire(&self, path: &Path, _aside: &Path) -> Result<(), StoreError> {
        // Deleting a subvolume unlinks it at once (the cleaner frees its space later), so
        // there is no half-deleted state to hide behind a rename.
        self.remove(path)
    }

    fn complete_deletes(&self, root: &Path) -> Result<(), StoreError> {
        let root = checked(root)?;
        let root = root
            .to_str()
            .ok_or_else(|| StoreError::Btrfs(format!("non-UTF-8 path {}", root.display())))?;
        // BTRFS_IOC_SYNC also wakes the cleaner thread, which otherwise may sleep for a
        // whole commit interval (30 s) before dropping deleted subvolumes.
        libbtrfsutil::sync(Path::new(root)).map_err(|e| btrfs_error("syncing", Path::new(root), e))?;
        crate::command::run("btrfs", &["subvolume", "sync", "--", root]).map(|_| ())
    }
}

pub type BtrfsStore = DirStore<BtrfsOps>;

/// Fails unless `root` is on btrfs.
fn check_btrfs(root: &Path) -> Result<(), StoreError> {
    let st = nix::sys::statfs::statfs(root).map_err(|e| StoreError::Unsuitable {
        path: root.to_owned(),
        reason: format!("cannot statfs: {e}"),
    })?;
    if st.filesystem_type() != nix::sys::statfs::BTRFS_SUPER_MAGIC {
        return Err(StoreError::Unsuitable {
            path: root.to_owned(),
            reason: format!(
                "not on a btrfs filesystem (filesystem type {:#x}); use rsync:/ or xfs:/ for other filesystems",
                st.filesystem_type().0
            ),
        });
    }
    Ok(())
}

pub fn open_btrfs(spec: &StoreSpec, leftovers: Leftovers) -> Result<BtrfsStore, StoreError> {
    checked(&spec.path())?;
    DirStore::open(spec, leftovers, BtrfsOps, check_btrfs)
}

pub fn open(spec: &StoreSpec, leftovers: Leftovers) -> Result<Box<dyn Store>, StoreError> {
    Ok(Box::new(open_btrfs(spec, leftovers)?))
}

// ---- BTRFS_IOC_TREE_SEARCH (the kernel ABI; see linux/btrfs.h) ----

#[repr(C)]
#[derive(Clone, Copy)]
struct SearchKey {
    tree_id: u64,
    min_objectid: u64,
    max_objectid: u64,
    min_offset: u64,
    max_offset: u64,
    min_transid: u64,
    max_transid: u64,
    min_type: u32,
    max_type: u32,
    nr_items: u32,
    unused: u32,
    unused1: u64,
    unused2: u64,
    unused3: u64,
    unused4: u64,
}

const SEARCH_BUF: usize = 4096 - std::mem::size_of::<SearchKey>();

#[repr(C)]
struct SearchArgs {
    key: SearchKey,
    buf: [u8; SEARCH_BUF],
}

nix::ioctl_readwrite!(btrfs_tree_search, 0x94, 17, SearchArgs);

const EXTENT_DATA_KEY: u32 = 108;
const HEADER_LEN: usize = 32;
const FILE_EXTENT_INLINE: u8 = 0;

fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8)
        .map(|s| u64::from_le_bytes(s.try_into().unwrap_or([0; 8])))
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes(s.try_into().unwrap_or([0; 4])))
}

/// Bytes of file extents in the subvolume at `path` whose generation is above `since`.
/// Only tree blocks written after `since` are visited, so the cost follows what changed.
fn extent_bytes_since(path: &Path, since: u64) -> io::Result<u64> {
    let dir = File::open(path)?;
    let mut args = SearchArgs {
        key: SearchKey {
            tree_id: 0, // the subvolume holding the descriptor
            min_objectid: 0,
            max_objectid: u64::MAX,
            min_offset: 0,
            max_offset: u64::MAX,
            min_transid: since.saturating_add(1),
            max_transid: u64::MAX,
            min_type: EXTENT_DATA_KEY,
            max_type: EXTENT_DATA_KEY,
            nr_items: 0,
            unused: 0,
            unused1: 0,
            unused2: 0,
            unused3: 0,
            unused4: 0,
        },
        buf: [0; SEARCH_BUF],
    };
    let mut total = 0u64;
    loop {
        args.key.nr_items = 4096;
        // SAFETY: the descriptor is open and `args` has the kernel's layout and size.
        unsafe { btrfs_tree_search(dir.as_raw_fd(), &mut args) }.map_err(io::Error::from)?;
        let count = args.key.nr_items;
        if count == 0 {
            return Ok(total);
        }
        let mut at = 0usize;
        let mut last = (0u64, 0u32, 0u64);
        for _ in 0..count {
            let (Some(objectid), Some(offset), Some(kind), Some(len)) = (
                le_u64(&args.buf, at + 8),
                le_u64(&args.buf, at + 16),
                le_u32(&args.buf, at + 24),
                le_u32(&args.buf, at + 28),
            ) else {
                return Ok(total);
            };
            let item = args
                .buf
                .get(at + HEADER_LEN..at + HEADER_LEN + len as usize)
                .unwrap_or(&[]);
            if kind == EXTENT_DATA_KEY {
                total += file_extent_bytes(item, since);
            }
            last = (objectid, kind, offset);
            at += HEADER_LEN + len as usize;
        }
        // Continue just after the last key returned. The kernel compares whole keys
        // (objectid, type, offset), so items of other types come back too and are skipped.
        let (objectid, kind, offset) = last;
        if offset < u64::MAX {
            args.key.min_objectid = objectid;
            args.key.min_type = kind;
            args.key.min_offset = offset + 1;
        } else if objectid < u64::MAX {
            args.key.min_objectid = objectid + 1;
            args.key.min_type = 0;
            args.key.min_offset = 0;
        } else {
            return Ok(total);
        }
    }
}

/// Logical bytes of one `btrfs_file_extent_item` newer than `since` (holes count nothing).
fn file_extent_bytes(item: &[u8], since: u64) -> u64 {
    let (Some(generation), Some(ram_bytes), Some(&kind)) = (le_u64(item, 0), le_u64(item, 8), item.get(20)) else {
        return 0;
    };
    if generation <= since {
        return 0;
    }
    if kind == FILE_EXTENT_INLINE {
        return ram_bytes;
    }
    match (le_u64(item, 21), le_u64(item, 45)) {
        (Some(disk_bytenr), Some(num_bytes)) if disk_bytenr != 0 => num_bytes,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_args_have_the_kernel_size() {
        assert_eq!(std::mem::size_of::<SearchKey>(), 104);
        assert_eq!(std::mem::size_of::<SearchArgs>(), 4096);
    }

    #[test]
    fn extent_items_are_decoded() {
        let mut regular = vec![0u8; 53];
        regular[0..8].copy_from_slice(&10u64.to_le_bytes());
        regular[20] = 1;
        regular[21..29].copy_from_slice(&4096u64.to_le_bytes());
        regular[45..53].copy_from_slice(&8192u64.to_le_bytes());
        assert_eq!(file_extent_bytes(&regular, 9), 8192);
        assert_eq!(file_extent_bytes(&regular, 10), 0, "not newer than the clone");
        regular[21..29].copy_from_slice(&0u64.to_le_bytes());
        assert_eq!(file_extent_bytes(&regular, 0), 0, "a hole");
        let mut inline = vec![0u8; 21 + 5];
        inline[0..8].copy_from_slice(&3u64.to_le_bytes());
        inline[8..16].copy_from_slice(&5u64.to_le_bytes());
        assert_eq!(file_extent_bytes(&inline, 0), 5);
    }

    #[test]
    fn nul_in_path_is_an_error_not_a_panic() {
        let bad = Path::new(std::ffi::OsStr::from_bytes(b"/tmp/a\0b"));
        assert!(BtrfsOps.create_empty(bad).is_err());
        assert!(BtrfsOps.remove(bad).is_err());
    }
}
