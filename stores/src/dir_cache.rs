//! Writable caches of the stores in OBuilder's directory layout (btrfs, the copy stores,
//! overlayfs), written once over a backend's [`TreeOps`]: the latest version of a cache is
//! the published tree `cache/<escaped>`; a lease is a writable clone of it in `cache-tmp/`;
//! releasing the lease replaces the latest version with it ([`TreeOps::replace`]) when the
//! cache's generation is unchanged, else discards it (see [`crate::cache_generation`]).
//!
//! Every step runs under the cache's generation lock, so a lease never clones a version
//! half replaced, and of several leases of one version the first released wins.

use std::path::{Path, PathBuf};

use crate::cache_generation::InUse;
use crate::dir_store::{make_tree, TreeOps};
use crate::error::IoContext;
use crate::layout::{exists, Layout};
use crate::store_dirs::StoreDirs;
use crate::{cache_name, CacheLease, StoreError};

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), StoreError> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).context(|| format!("changing owner of {}", path.display()))
}

/// A private writable copy of cache `name`, which is created empty and owned by `uid:gid`
/// if it does not exist yet.
pub fn lease<'a, O: TreeOps>(
    dirs: &'a StoreDirs,
    ops: &'a O,
    name: &str,
    uid: u32,
    gid: u32,
) -> Result<Lease<'a, O>, StoreError> {
    let escaped = cache_name::escape(name)?;
    let guard = dirs.generations().lock(&escaped)?;
    let latest = dirs.layout().cache_dir().join(&escaped);
    if !exists(&latest) {
        let fresh = dirs.temporary(&dirs.layout().cache_tmp_dir(), &escaped);
        make_tree(ops, &fresh, |t| {
            ops.create_empty(t)?;
            chown(t, uid, gid)?;
            ops.publish(t, &latest)
        })?;
        if exists(&fresh) {
            ops.remove(&fresh)?;
        }
    }
    let generation = guard.generation()?;
    let copy = dirs.temporary(&dirs.layout().cache_tmp_dir(), &escaped);
    make_tree(ops, &copy, |t| {
        ops.clone_writable(&latest, t)?;
        // Like OBuilder's btrfs and rsync stores: the copy belongs to whoever asks now.
        chown(t, uid, gid)
    })?;
    let in_use = dirs.generations().mark_in_use(&escaped)?;
    Ok(Lease {
        dirs,
        ops,
        name: name.to_owned(),
        escaped,
        copy,
        generation,
        finished: false,
        _in_use: in_use,
    })
}

/// Deletes cache `name`: [`StoreError::Busy`] while leases are out if the backend needs
/// that ([`TreeOps::delete_cache_needs_idle`]), else at once (leases taken before are
/// discarded when released).
pub fn delete(dirs: &StoreDirs, ops: &impl TreeOps, name: &str) -> Result<(), StoreError> {
    let escaped = cache_name::escape(name)?;
    let guard = dirs.generations().lock(&escaped)?;
    if ops.delete_cache_needs_idle() && dirs.generations().in_use(&escaped)? {
        return Err(StoreError::Busy(name.to_owned()));
    }
    guard.bump()?;
    let aside = dirs.temporary(&dirs.layout().cache_tmp_dir(), &escaped);
    ops.retire(&dirs.layout().cache_dir().join(&escaped), &aside)
}

/// Names of the existing caches.
pub fn list(dirs: &StoreDirs) -> Result<Vec<String>, StoreError> {
    Ok(Layout::entries(&dirs.layout().cache_dir())?
        .iter()
        .filter_map(|n| cache_name::unescape(n))
        .collect())
}

/// An outstanding lease: the copy is discarded when dropped unreleased.
pub struct Lease<'a, O: TreeOps> {
    dirs: &'a StoreDirs,
    ops: &'a O,
    name: String,
    escaped: String,
    copy: PathBuf,
    generation: u64,
    finished: bool,
    _in_use: InUse,
}

impl<O: TreeOps> Lease<'_, O> {
    /// Under the cache lock: publish the copy as the latest version, or discard it when
    /// another release (or a delete) came first.
    fn publish_or_discard(&self) -> Result<(), StoreError> {
        let guard = self.dirs.generations().lock(&self.escaped)?;
        if !guard.may_publish(self.generation)? {
            tracing::debug!("cache {:?} changed since this copy was taken; discarding it", self.name);
            return self.ops.remove(&self.copy);
        }
        let latest = self.dirs.layout().cache_dir().join(&self.escaped);
        let old = self.dirs.temporary(&self.dirs.layout().cache_tmp_dir(), &self.escaped);
        self.ops.replace(&self.copy, &latest, &old)?;
        guard.bump()?;
        // What the replacement left behind: the previous version, the writable original.
        for leftover in [&self.copy, &old] {
            if exists(leftover) {
                self.ops.remove(leftover)?;
            }
        }
        Ok(())
    }
}

impl<O: TreeOps> CacheLease for Lease<'_, O> {
    fn path(&self) -> &Path {
        &self.copy
    }

    fn release(mut self: Box<Self>) -> Result<(), StoreError> {
        self.finished = true;
        let result = self.publish_or_discard();
        if result.is_err() && exists(&self.copy) {
            let _ = self.ops.remove(&self.copy);
        }
        result
    }
}

impl<O: TreeOps> Drop for Lease<'_, O> {
    fn drop(&mut self) {
        if !self.finished {
            if let Err(e) = self.ops.remove(&self.copy) {
                tracing::warn!("cannot discard cache copy {}: {e}", self.copy.display());
            }
        }
    }
}
