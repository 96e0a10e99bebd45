//! Writable caches of the overlay store: the latest version is the plain tree
//! `cache/<escaped>`; a lease is a copy of it in `cache-tmp/` (reflinked where the filesystem
//! can); releasing it swaps it in atomically (`renameat2(RENAME_EXCHANGE)`) when the
//! cache's generation is unchanged, else discards it. Leases, generations and deletes are
//! the shared [`crate::dir_cache`]; this module only says how the trees are made
//! ([`CacheTrees`]).
//!
//! Why not an overlay per lease, as OBuilder does: publishing an overlay lease means merging
//! its upper layer (with whiteouts) into a master that other leases use as their lower layer
//! at that moment, which overlayfs leaves undefined; OBuilder merges every writer's files and
//! never propagates deletions. A copy has exact "first release wins" semantics, leaves
//! `delete_cache` free to delete at any time (outstanding leases are discarded on release),
//! and costs one copy of the cache per lease.

use std::io;
use std::path::Path;

use crate::copy::CopyOps;
use crate::dir_store::TreeOps;
use crate::layout::exists;
use crate::tree_copy::DataCopy;
use crate::StoreError;

/// Cache trees: copied like the `xfs:` store's items (reflinks where the filesystem can),
/// except that a release exchanges the new version with the old one in one step, so the
/// cache is never without a latest version, not even after a crash.
pub struct CacheTrees(CopyOps);

impl CacheTrees {
    pub fn new() -> CacheTrees {
        CacheTrees(CopyOps::quiet(DataCopy::ReflinkOrPlain))
    }
}

impl TreeOps for CacheTrees {
    fn create_empty(&self, path: &Path) -> Result<(), StoreError> {
        self.0.create_empty(path)
    }

    fn clone_writable(&self, src: &Path, dst: &Path) -> Result<(), StoreError> {
        self.0.clone_writable(src, dst)
    }

    fn publish(&self, tmp: &Path, dst: &Path) -> Result<(), StoreError> {
        self.0.publish(tmp, dst)
    }

    fn remove(&self, path: &Path) -> Result<(), StoreError> {
        self.0.remove(path)
    }

    fn size(&self, tmp: &Path, published: &Path, cloned: bool) -> Result<u64, StoreError> {
        self.0.size(tmp, published, cloned)
    }

    /// After the exchange `tmp` holds the previous version, for the caller to remove.
    fn replace(&self, tmp: &Path, dst: &Path, _aside: &Path) -> Result<(), StoreError> {
        if exists(dst) {
            exchange(tmp, dst)
        } else {
            self.publish(tmp, dst)
        }
    }
}

/// Swaps two paths atomically (both must exist).
fn exchange(a: &Path, b: &Path) -> Result<(), StoreError> {
    nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        a,
        nix::fcntl::AT_FDCWD,
        b,
        nix::fcntl::RenameFlags::RENAME_EXCHANGE,
    )
    .map_err(|e| {
        StoreError::io(
            format!("exchanging {} and {}", a.display(), b.display()),
            io::Error::from(e),
        )
    })
}
