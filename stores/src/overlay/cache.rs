//! Writable caches of the overlay store: the latest version is the plain tree
//! `cache/<escaped>`; a lease is a copy of it in `cache-tmp/` (reflinked where the filesystem
//! can); releasing it swaps it in atomically (`renameat2(RENAME_EXCHANGE)`) when the
//! cache's generation is unchanged, else discards it.
//!
//! Why not an overlay per lease, as OBuilder does: publishing an overlay lease means merging
//! its upper layer (with whiteouts) into a master that other leases use as their lower layer
//! at that moment, which overlayfs leaves undefined; OBuilder merges every writer's files and
//! never propagates deletions. A copy has exact "first release wins" semantics, leaves
//! `delete_cache` free to delete at any time (outstanding leases are discarded on release),
//! and costs one copy of the cache per lease.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{exists, OverlayStore};
use crate::cache_generation::InUse;
use crate::layout::Layout;
use crate::tree_copy::{copy_tree, remove_tree, DataCopy};
use crate::{cache_name, CacheLease, StoreError};

pub struct OverlayLease<'a> {
    store: &'a OverlayStore,
    escaped: String,
    copy: PathBuf,
    generation: u64,
    finished: bool,
    _in_use: InUse,
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), StoreError> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .map_err(|e| StoreError::io(format!("changing owner of {}", path.display()), e))
}

fn latest(store: &OverlayStore, escaped: &str) -> PathBuf {
    store.layout.cache_dir().join(escaped)
}

pub fn lease<'a>(store: &'a OverlayStore, name: &str, uid: u32, gid: u32) -> Result<OverlayLease<'a>, StoreError> {
    let escaped = cache_name::escape(name)?;
    let guard = store.caches.lock(&escaped)?;
    let latest = latest(store, &escaped);
    if !exists(&latest) {
        let fresh = store.layout.cache_tmp_dir().join(store.owner.temp_name(&escaped));
        let made = fs::create_dir(&fresh)
            .map_err(|e| StoreError::io(format!("creating {}", fresh.display()), e))
            .and_then(|()| chown(&fresh, uid, gid))
            .and_then(|()| {
                fs::rename(&fresh, &latest)
                    .map_err(|e| StoreError::io(format!("renaming {} to {}", fresh.display(), latest.display()), e))
            });
        if let Err(e) = made {
            let _ = remove_tree(&fresh);
            return Err(e);
        }
    }
    let generation = guard.generation()?;
    let copy = store.layout.cache_tmp_dir().join(store.owner.temp_name(&escaped));
    if let Err(e) = copy_tree(&latest, &copy, DataCopy::ReflinkOrPlain).and_then(|_| chown(&copy, uid, gid)) {
        let _ = remove_tree(&copy);
        return Err(e);
    }
    let in_use = store.caches.mark_in_use(&escaped)?;
    Ok(OverlayLease {
        store,
        escaped,
        copy,
        generation,
        finished: false,
        _in_use: in_use,
    })
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

impl OverlayLease<'_> {
    fn publish_or_discard(&self) -> Result<(), StoreError> {
        let guard = self.store.caches.lock(&self.escaped)?;
        if !guard.may_publish(self.generation)? {
            return remove_tree(&self.copy);
        }
        let latest = latest(self.store, &self.escaped);
        if exists(&latest) {
            // After the exchange `self.copy` holds the previous version.
            exchange(&self.copy, &latest)?;
        } else {
            fs::rename(&self.copy, &latest)
                .map_err(|e| StoreError::io(format!("renaming {} to {}", self.copy.display(), latest.display()), e))?;
        }
        guard.bump()?;
        remove_tree(&self.copy)
    }
}

impl CacheLease for OverlayLease<'_> {
    fn path(&self) -> &Path {
        &self.copy
    }

    fn release(mut self: Box<Self>) -> Result<(), StoreError> {
        self.finished = true;
        let result = self.publish_or_discard();
        if result.is_err() {
            let _ = remove_tree(&self.copy);
        }
        result
    }
}

impl Drop for OverlayLease<'_> {
    fn drop(&mut self) {
        if !self.finished {
            if let Err(e) = remove_tree(&self.copy) {
                tracing::warn!("cannot discard cache copy {}: {e}", self.copy.display());
            }
        }
    }
}

/// Deletes a cache at once; leases taken before are discarded when released.
pub fn delete(store: &OverlayStore, name: &str) -> Result<(), StoreError> {
    let escaped = cache_name::escape(name)?;
    let guard = store.caches.lock(&escaped)?;
    guard.bump()?;
    let latest = latest(store, &escaped);
    let aside = store.layout.cache_tmp_dir().join(store.owner.temp_name(&escaped));
    match fs::rename(&latest, &aside) {
        Ok(()) => remove_tree(&aside),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io(format!("moving {} aside", latest.display()), e)),
    }
}

pub fn list(store: &OverlayStore) -> Result<Vec<String>, StoreError> {
    Ok(Layout::entries(&store.layout.cache_dir())?
        .iter()
        .filter_map(|n| cache_name::unescape(n))
        .collect())
}
