//! The copy stores, `rsync:/PATH` and `xfs:/PATH`: items and caches are plain directory
//! trees, cloned by a native tree copy ([`crate::tree_copy`]) and committed by rename.
//!
//! - `xfs:` shares file data with FICLONE (reflinks) on any filesystem that supports them
//!   (XFS with `reflink=1`, btrfs, ...). Where the filesystem refuses, it copies the bytes
//!   instead and logs one warning per store.
//! - `rsync:` always copies the bytes; no `rsync` binary is needed. `--rsync-mode hardlink`
//!   is accepted for OBuilder compatibility and also copies: OBuilder's hardlink mode
//!   shares unchanged files between a result and its base, so an in-place edit in one
//!   (or a container writing through a link) silently changes the other.
//!
//! The size recorded at commit is the apparent size of the item (see [`crate::size`]):
//! each item owns its full copy here, so that is also what deleting it frees (less for
//! reflinked data).

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::dir_store::{DirStore, TreeOps};
use crate::error::IoContext;
use crate::tree_copy::{copy_tree, remove_tree, DataCopy};
use crate::{Leftovers, Store, StoreError, StoreSpec};

/// Tree operations by copying.
pub struct CopyOps {
    data: DataCopy,
    /// Set once the filesystem refused a reflink: later copies go straight to plain copies.
    reflink_refused: AtomicBool,
    /// Whether a refused reflink is worth a warning (the `xfs:` store promises reflinks;
    /// the overlay store's cache copies only try them).
    warn_on_plain: bool,
}

impl CopyOps {
    pub fn new(data: DataCopy) -> CopyOps {
        CopyOps {
            data,
            reflink_refused: AtomicBool::new(false),
            warn_on_plain: true,
        }
    }

    /// Like [`CopyOps::new`], but a filesystem refusing reflinks is only logged at debug level.
    pub fn quiet(data: DataCopy) -> CopyOps {
        CopyOps {
            warn_on_plain: false,
            ..CopyOps::new(data)
        }
    }

    fn data_copy(&self) -> DataCopy {
        if self.reflink_refused.load(Ordering::Relaxed) {
            DataCopy::Plain
        } else {
            self.data
        }
    }
}

impl TreeOps for CopyOps {
    fn create_empty(&self, path: &Path) -> Result<(), StoreError> {
        fs::create_dir(path).context(|| format!("creating {}", path.display()))
    }

    fn clone_writable(&self, src: &Path, dst: &Path) -> Result<(), StoreError> {
        let report = copy_tree(src, dst, self.data_copy())?;
        if report.reflink_refused && !self.reflink_refused.swap(true, Ordering::Relaxed) {
            let holder = dst.display();
            if self.warn_on_plain {
                tracing::warn!("the filesystem holding {holder} refuses reflinks; copying file data instead");
            } else {
                tracing::debug!("the filesystem holding {holder} refuses reflinks; copying file data instead");
            }
        }
        Ok(())
    }

    fn publish(&self, tmp: &Path, dst: &Path) -> Result<(), StoreError> {
        fs::rename(tmp, dst).context(|| format!("renaming {} to {}", tmp.display(), dst.display()))
    }

    fn remove(&self, path: &Path) -> Result<(), StoreError> {
        remove_tree(path)
    }

    fn size(&self, _tmp: &Path, published: &Path, _cloned: bool) -> Result<u64, StoreError> {
        crate::size::apparent_size(published)
    }
}

/// The concrete copy store.
pub type CopyStore = DirStore<CopyOps>;

pub fn open_copy(spec: &StoreSpec, leftovers: Leftovers) -> Result<CopyStore, StoreError> {
    let data = match spec {
        StoreSpec::Xfs(_) => DataCopy::ReflinkOrPlain,
        _ => DataCopy::Plain,
    };
    DirStore::open(spec, leftovers, CopyOps::new(data), |_| Ok(()))
}

pub fn open(spec: &StoreSpec, leftovers: Leftovers) -> Result<Box<dyn Store>, StoreError> {
    Ok(Box::new(open_copy(spec, leftovers)?))
}
