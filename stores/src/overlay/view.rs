//! Views on demand: the read-only full tree of a committed item, mounted at
//! `result/<id>/rootfs` while at least one user (in any process) holds it, unmounted after the
//! last one lets go, so that an idle store holds no mount at all.
//!
//! Two lock files per id, under `state/locks/`:
//! - `<id>.view.lock`, exclusive and held briefly: it serialises every decision to mount or
//!   unmount the view of that id (taking it, letting it go, the sweep at open, delete);
//! - `<id>.view-users.lock`: every user holds a shared flock on it (its own open file, so two
//!   users in one process count twice) for as long as it holds the view. The kernel drops the
//!   flock of a process that dies, even under `kill -9`.
//!
//! Taking a view: under the first lock, join the users, then mount unless mounted. Letting it
//! go: under the first lock, leave the users and, if an exclusive flock on the users' file
//! can be had (nobody else holds the view), unmount. A view whose users all died stays
//! mounted until the next open of the store sweeps it ([`remove_unused_views`]); so does every
//! view an older strata mounted for good, and after a reboot nothing is mounted at all: no
//! step is needed to remount anything.

use std::path::{Path, PathBuf};

use crate::owner::{FileLock, LockMode};
use crate::{RootfsView, StepId, StoreError};

use super::{mount, OverlayStore};

/// The lock file whose shared holders are the users of `id`'s view.
fn users_lock(store: &OverlayStore, id: &StepId) -> PathBuf {
    store.layout().locks_dir().join(format!("{id}.view-users.lock"))
}

/// The lock serialising mounts and unmounts of `id`'s view.
pub(super) fn view_lock(store: &OverlayStore, id: &StepId) -> Result<FileLock, StoreError> {
    store.dirs.lock(id, ".view")
}

/// A held view of a committed item: mounted while any holder lives.
pub struct SharedView<'a> {
    store: &'a OverlayStore,
    id: StepId,
    path: PathBuf,
    /// This holder's shared flock on the users' file.
    user: Option<FileLock>,
}

impl<'a> SharedView<'a> {
    /// Joins the users of `id`'s view, mounting it if nobody holds it. The item must exist.
    pub fn acquire(store: &'a OverlayStore, id: &StepId) -> Result<SharedView<'a>, StoreError> {
        let path = store.layout().result(id).join("rootfs");
        let _serial = view_lock(store, id)?;
        // Never waits long: an exclusive holder holds the serialising lock too.
        let user = FileLock::acquire(&users_lock(store, id), LockMode::Shared)?;
        if mount::is_mount_point(&path)? {
            mount::ensure_restricted_view(&path)?;
        } else {
            store.mount_view(id, &path)?;
        }
        Ok(SharedView {
            store,
            id: id.clone(),
            path,
            user: Some(user),
        })
    }

    fn release(&mut self) -> Result<(), StoreError> {
        let Some(user) = self.user.take() else {
            return Ok(());
        };
        let serial = view_lock(self.store, &self.id);
        drop(user);
        // Without the serialising lock, leave the view mounted: the next open sweeps it.
        let _serial = serial?;
        if FileLock::try_acquire(&users_lock(self.store, &self.id), LockMode::Exclusive)?.is_some() {
            mount::unmount_stack(&self.path)?;
        }
        Ok(())
    }
}

impl RootfsView for SharedView<'_> {
    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SharedView<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            tracing::warn!("cannot unmount the view {}: {e}", self.path.display());
        }
    }
}

/// Unmounts the views under `result/` that nobody holds (their users died, or an older strata
/// mounted them for good). One read of `/proc/self/mountinfo`, which is short on a store that
/// holds no idle mounts. Returns the ids whose views were removed.
pub fn remove_unused_views(store: &OverlayStore) -> Result<Vec<StepId>, StoreError> {
    let result_dir = store.layout().result_dir();
    let result_dir = std::fs::canonicalize(&result_dir).unwrap_or(result_dir);
    let mut ids: Vec<StepId> = mount::mounts_under(&result_dir)?
        .iter()
        .filter_map(|mount_point| {
            let rest = mount_point.strip_prefix(&result_dir).ok()?;
            let mut parts = rest.iter();
            let id = parts.next()?.to_str()?.parse().ok()?;
            (parts.next()? == "rootfs" && parts.next().is_none()).then_some(id)
        })
        .collect();
    ids.sort();
    ids.dedup();
    let mut removed = Vec::new();
    for id in ids {
        let _serial = view_lock(store, &id)?;
        if FileLock::try_acquire(&users_lock(store, &id), LockMode::Exclusive)?.is_none() {
            continue; // a live process holds it
        }
        match mount::unmount_stack(&store.layout().result(&id).join("rootfs")) {
            Ok(()) => removed.push(id),
            Err(e) => tracing::warn!("cannot unmount the leftover view of {id}: {e}"),
        }
    }
    if !removed.is_empty() {
        tracing::info!("unmounted {} views nobody holds", removed.len());
    }
    Ok(removed)
}
