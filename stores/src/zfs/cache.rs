//! Writable caches on ZFS: a lease is a clone of `cache/<name>@snap`; the first lease
//! released after the cache's generation was read becomes the new `cache/<name>`.
//!
//! A cache is a container dataset `cache/<name>` holding versions `g<N>`; the current one is
//! the highest `N` with a `@snap`. Publishing a lease (all under the cache's generation lock,
//! after bumping the generation):
//! 1. rename the lease to `cache/<name>/g<N+1>` (it has no clones yet, so zfs-fuse lets it);
//! 2. `zfs promote` it: it takes over the old version's `@snap` (and the clones of other
//!    leases, which keep working), and the old version becomes its clone;
//! 3. destroy the old version; rename the inherited `@snap` to `@old-<gen>` and destroy it
//!    deferred (`-d`: it goes when the last other lease does);
//! 4. snapshot the new version as `@snap`: from now on, leases clone it.
//!
//! A crash in the middle leaves a consistent cache (the old contents, or the new ones once
//! step 2 is done), plus stray versions that the next publish or delete sweeps away.

use std::path::{Path, PathBuf};

use super::{cli, ZfsStore};
use crate::cache_generation::InUse;
use crate::{cache_name, CacheLease, StoreError};

/// The dataset component for a cache name: injective escaping with `%` spelled `:`.
pub fn component(name: &str) -> Result<String, StoreError> {
    Ok(cache_name::escape(name)?.replace('%', ":"))
}

fn name_of(component: &str) -> Option<String> {
    cache_name::unescape(&component.replace(':', "%"))
}

/// The dataset holding a cache's versions `g<N>` (normally one; two while publishing).
fn container(store: &ZfsStore, component: &str) -> String {
    format!("{}/cache/{component}", store.pool)
}

pub struct ZfsLease<'a> {
    store: &'a ZfsStore,
    component: String,
    escaped: String,
    dataset: String,
    path: PathBuf,
    generation: u64,
    released: bool,
    _in_use: InUse,
}

/// The newest version `N` of a cache that has its `@snap` (`cache/<component>/g<N>@snap`).
fn current_version(store: &ZfsStore, component: &str) -> Result<Option<u64>, StoreError> {
    let container = container(store, component);
    let snapshots = match cli::list_snapshots_recursive(&container) {
        Ok(s) => s,
        Err(e) if cli::is_missing(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let prefix = format!("{container}/g");
    Ok(snapshots
        .iter()
        .filter_map(|s| s.strip_prefix(&prefix)?.strip_suffix("@snap")?.parse().ok())
        .max())
}

/// A version number above every version dataset of the cache.
fn next_version(store: &ZfsStore, component: &str) -> Result<u64, StoreError> {
    let versions = cli::children(&container(store, component))?;
    Ok(versions
        .iter()
        .filter_map(|v| v.strip_prefix('g')?.parse::<u64>().ok())
        .max()
        .map_or(0, |n| n + 1))
}

fn version(store: &ZfsStore, component: &str, n: u64) -> String {
    format!("{}/g{n}", container(store, component))
}

pub fn lease<'a>(store: &'a ZfsStore, name: &str, uid: u32, gid: u32) -> Result<ZfsLease<'a>, StoreError> {
    let escaped = cache_name::escape(name)?;
    let component = component(name)?;
    let guard = store.caches.lock(&escaped)?;
    let current = match current_version(store, &component)? {
        Some(n) => n,
        None => {
            // New (or left half-made by a crash): the empty root belongs to the first user.
            cli::create(&container(store, &component))?;
            let n = next_version(store, &component)?;
            let first = version(store, &component, n);
            cli::create(&first)?;
            let root = cli::ensure_mounted(&first)?;
            std::os::unix::fs::chown(&root, Some(uid), Some(gid))
                .map_err(|e| StoreError::io(format!("chown {uid}:{gid} {}", root.display()), e))?;
            cli::snapshot(&format!("{first}@snap"))?;
            n
        }
    };
    let generation = guard.generation()?;
    let dataset = store
        .temp_dataset("cache-tmp", &component)
        .map_err(|e| StoreError::InvalidCacheName {
            name: name.to_owned(),
            reason: e.to_string(),
        })?;
    let in_use = store.caches.mark_in_use(&escaped)?;
    cli::clone(&format!("{}@snap", version(store, &component, current)), &dataset)?;
    let mut lease = ZfsLease {
        store,
        component,
        escaped,
        dataset,
        path: PathBuf::new(),
        generation,
        released: false,
        _in_use: in_use,
    };
    lease.path = cli::ensure_mounted(&lease.dataset)?;
    Ok(lease)
}

impl ZfsLease<'_> {
    /// Makes this lease the cache's newest version. Only the lease itself is renamed: zfs-fuse
    /// refuses to rename a dataset whose snapshot has mounted clones (the other leases).
    fn publish(&self) -> Result<(), StoreError> {
        let old = current_version(self.store, &self.component)?;
        let new = version(self.store, &self.component, next_version(self.store, &self.component)?);
        cli::rename(&self.dataset, &new)?;
        if let Some(old) = old {
            let old = version(self.store, &self.component, old);
            cli::promote(&new)?;
            // The old version is now a clone of `new@snap` without snapshots of its own.
            cli::destroy(&old, false)?;
            let retired = format!("{new}@old-{}", self.generation);
            cli::rename(&format!("{new}@snap"), &retired)?;
            cli::destroy_deferred(&retired)?;
        }
        cli::snapshot(&format!("{new}@snap"))?;
        // Versions a crash left behind (each a clone of the current one, or unused).
        let new_name = new.rsplit('/').next().unwrap_or_default();
        for stray in cli::children(&container(self.store, &self.component))? {
            if stray != new_name {
                let stray = format!("{}/{stray}", container(self.store, &self.component));
                if let Err(e) = cli::destroy(&stray, false) {
                    tracing::warn!("keeping stray cache version {stray}: {e}");
                }
            }
        }
        Ok(())
    }
}

impl CacheLease for ZfsLease<'_> {
    fn path(&self) -> &Path {
        &self.path
    }

    fn release(mut self: Box<Self>) -> Result<(), StoreError> {
        self.released = true;
        let guard = self.store.caches.lock(&self.escaped)?;
        if guard.generation()? != self.generation {
            // Another lease was published first: this copy loses.
            return cli::destroy(&self.dataset, false);
        }
        // Bump first: whatever happens below, the leases taken before are now stale.
        guard.bump()?;
        self.publish()
    }
}

impl Drop for ZfsLease<'_> {
    fn drop(&mut self) {
        if !self.released {
            if let Err(e) = cli::destroy(&self.dataset, false) {
                tracing::warn!("discarding cache lease {}: {e}", self.dataset);
            }
        }
    }
}

/// Deletes a cache, or answers [`StoreError::Busy`] while a live process holds a lease.
pub fn delete(store: &ZfsStore, name: &str) -> Result<(), StoreError> {
    let escaped = cache_name::escape(name)?;
    let component = component(name)?;
    let guard = store.caches.lock(&escaped)?;
    // A clone cannot outlive its origin: answer Busy while any process holds a lease.
    if store.caches.in_use(&escaped)? {
        return Err(StoreError::Busy(name.to_owned()));
    }
    // -R: leases of dead processes are clones of this cache; they go with it.
    cli::destroy(&container(store, &component), true)?;
    guard.bump()?;
    Ok(())
}

pub fn list(store: &ZfsStore) -> Result<Vec<String>, StoreError> {
    let mut names: Vec<String> = cli::children(&store.group("cache"))?
        .iter()
        .filter_map(|c| name_of(c))
        .collect();
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_are_valid_zfs_names_and_round_trip() {
        for name in ["", "ok", "../x", "a/b", "a b", "%", "c:d", "é"] {
            let c = component(name).unwrap();
            assert!(
                c.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b)),
                "{c}"
            );
            assert_eq!(name_of(&c).as_deref(), Some(name));
        }
    }
}
