//! The catalog: a store and its database as one thing.
//!
//! Everything that must change the store and the database together lives here, and only
//! here: getting or preparing an item (adopting a committed item that has no row), committing
//! an item with its row, marking it used, caches (the store's directory and the row of its
//! last use), deleting a tree of items, prune, reconcile and the self-test. The builder asks
//! the catalog for items and never touches the database; maintenance commands (`ls`, `prune`,
//! `delete`, `verify`...) open a catalog alone, without a sandbox or a registry.
//!
//! Cross-process safety comes from the leases ([`lease`]): a build holds a shared lease on
//! every id it uses, prune and delete take the exclusive one before removing an item.

pub mod export_view;
pub mod item;
pub mod lease;
pub mod obuilder;
pub mod prune;
pub mod reconcile;
mod selftest;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use strata_sandbox::Cancel;
use strata_stores::{CacheLease, DiskUsage, PendingItem, Prepared, RootfsView, StepId, Store, StoreError};

use crate::db::{BuildRow, Db, DbError, NewBuild};
use crate::key::IdScheme;

pub use item::{ItemMeta, IMAGE_CONFIG, ITEM_META, LOG};
pub use lease::{ExclusiveLease, Lease, Leases};
pub(crate) use selftest::unique_id as selftest_id;

/// Why a catalog operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Db(#[from] DbError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// No item or cache of that name (a typo, or removed already).
    #[error("{0}")]
    NotFound(String),
    /// A wait (for a lease) ended because the caller cancelled.
    #[error("cancelled")]
    Cancelled,
}

impl CatalogError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> CatalogError {
        CatalogError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Whether `store` holds the items an OBuilder database records (`ids`), in a form it can
/// serve. Adoption is refused when none of them is there (the database of another store)
/// or when any of them is in a layout this store type does not read (OBuilder's overlayfs
/// items hold only their layer's changes): reconcile would otherwise remove them.
fn obuilder_items_servable(store: &dyn Store, ids: &[String]) -> Result<(), String> {
    if ids.is_empty() {
        return Ok(());
    }
    let root = store.root();
    let results: std::collections::HashSet<String> = store
        .list_results()
        .map_err(|e| format!("cannot list the items of the store {}: {e}", root.display()))?
        .into_iter()
        .map(|id| id.to_string())
        .collect();
    let present = ids.iter().filter(|id| results.contains(id.as_str())).count();
    if present == 0 {
        return Err(format!(
            "it records {} OBuilder items and none of them is in the store {} (result/<id>): \
             pass the --store OBuilder was given with this database (same type and path)",
            ids.len(),
            root.display()
        ));
    }
    let incomplete = store
        .incomplete_items()
        .map_err(|e| format!("cannot check the items of the store {}: {e}", root.display()))?;
    let unservable: Vec<&(StepId, String)> = incomplete
        .iter()
        .filter(|(id, _)| ids.iter().any(|i| i == id.as_str()))
        .collect();
    if let Some((id, reason)) = unservable.first() {
        return Err(format!(
            "{} of its {} items are not in a layout this store type can serve (e.g. {id}: \
             {reason}); OBuilder's overlayfs store keeps only each step's changes in \
             result/<id>/rootfs, which strata's overlayfs store cannot read: give strata a new \
             store path (it rebuilds what it needs), or pass the --store type OBuilder used",
            unservable.len(),
            ids.len()
        ));
    }
    Ok(())
}

/// What [`Catalog::get_or_prepare`] found.
pub enum Slot<'a> {
    /// Committed (by this process, another, or one that died before recording it): the
    /// item's directory. Its row exists now.
    Cached(PathBuf),
    /// A writable item to fill, cloned from the parent, without the parent's log and
    /// `strata.json`; give it to [`Catalog::commit`] or abort it.
    Pending(Box<dyn PendingItem + 'a>),
}

/// What is recorded when an item is committed (its size comes from the store).
#[derive(Debug, Clone)]
pub struct Record<'a> {
    pub id: &'a StepId,
    pub parent: Option<&'a StepId>,
    pub op: &'a str,
    pub duration_ms: u64,
    pub base_digest: Option<&'a str>,
}

/// A cache as `cache ls` shows it: on disk, recorded, or both.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CacheInfo {
    pub name: String,
    /// Last use (ms since the epoch), when recorded.
    pub used: Option<i64>,
    /// Whether the store has it (a recorded cache may have been removed by hand).
    #[serde(skip)]
    pub on_disk: bool,
}

/// What `du` shows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Usage {
    pub items: usize,
    pub item_bytes: u64,
    pub caches: usize,
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub free_percent: f64,
}

pub struct Catalog {
    store: Arc<dyn Store>,
    db: Mutex<Db>,
    leases: Leases,
    scheme: IdScheme,
}

impl Catalog {
    /// The catalog of an opened store: opens (creating or migrating) its database and
    /// records the id scheme on first use, or checks `scheme` against the recorded one.
    /// The database of a store OBuilder made is adopted (backed up, migrated, scheme
    /// `obuilder`) when the store holds the items it records (see [`Db::open_with`]).
    pub fn open(store: Arc<dyn Store>, scheme: Option<IdScheme>) -> Result<Catalog, CatalogError> {
        let state = store.state_dir();
        let check_items = |ids: &[String]| obuilder_items_servable(&*store, ids);
        let (db, adoption) = Db::open_with(&state, scheme, &check_items)?;
        if let Some(adoption) = adoption {
            tracing::warn!(
                "adopted OBuilder's store database {} ({} items, id scheme obuilder); \
                 OBuilder's original is kept as {}",
                db.path().display(),
                adoption.rows,
                adoption.backup.display()
            );
        }
        let scheme = db.id_scheme(scheme)?;
        let leases = Leases::new(&state)?;
        Ok(Catalog {
            store,
            db: Mutex::new(db),
            leases,
            scheme,
        })
    }

    pub fn scheme(&self) -> IdScheme {
        self.scheme
    }

    /// The store's state directory (database, leases, sandbox state).
    pub fn state_dir(&self) -> PathBuf {
        self.store.state_dir()
    }

    fn db(&self) -> MutexGuard<'_, Db> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    // ---- for builds ----

    /// A shared lease on `id`, held by a build until it ends: prune and delete skip it.
    /// [`CatalogError::Cancelled`] when `cancel` fires while a prune holds the item.
    pub fn lease(&self, id: &StepId, cancel: &Cancel) -> Result<Lease, CatalogError> {
        match self.leases.share_until(id, cancel) {
            Ok(lease) => Ok(lease),
            Err(_) if cancel.is_cancelled() => Err(CatalogError::Cancelled),
            Err(e) => Err(e.into()),
        }
    }

    /// The committed item `id` (recording it if it has no row), or a pending item cloned
    /// from `parent` to build it in. The caller holds the id's lease.
    pub fn get_or_prepare(&self, parent: Option<&StepId>, id: &StepId) -> Result<Slot<'_>, CatalogError> {
        if let Some(path) = self.store.result(id)? {
            self.ensure_row(id, parent, &path)?;
            return Ok(Slot::Cached(path));
        }
        let pending = match self.store.prepare(parent, id)? {
            Prepared::Exists(path) => {
                self.ensure_row(id, parent, &path)?;
                return Ok(Slot::Cached(path));
            }
            Prepared::Pending(pending) => pending,
        };
        // A clone inherits its parent's log and metadata: start afresh.
        for inherited in [LOG, ITEM_META] {
            let path = pending.path().join(inherited);
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    let _ = pending.abort();
                    return Err(CatalogError::io(format!("removing {}", path.display()), e));
                }
                _ => {}
            }
        }
        Ok(Slot::Pending(pending))
    }

    /// Makes sure a committed item has its row (adopting one committed by another process,
    /// or by a process killed between commit and insert, from its `strata.json`).
    fn ensure_row(&self, id: &StepId, parent: Option<&StepId>, item: &Path) -> Result<(), CatalogError> {
        let db = self.db();
        if db.exists(id)? {
            return Ok(());
        }
        let meta = ItemMeta::read(item);
        db.insert_build(&NewBuild {
            id,
            parent,
            size: 0,
            duration_ms: meta.as_ref().map(|m| m.duration_ms).unwrap_or(0),
            op: meta.as_ref().map(|m| m.op.as_str()).unwrap_or(""),
            base_digest: meta.as_ref().and_then(|m| m.base_digest.as_deref()),
        })?;
        Ok(())
    }

    /// Commits a filled item and records it: `strata.json` first (so a crash between commit
    /// and insert leaves an adoptable item), then the store's commit, then the row. On
    /// failure before the commit the item is aborted. No file in the item may be open.
    pub fn commit(&self, pending: Box<dyn PendingItem + '_>, record: &Record<'_>) -> Result<(), CatalogError> {
        let meta = ItemMeta {
            id: record.id.to_string(),
            parent: record.parent.map(|p| p.to_string()),
            op: record.op.to_owned(),
            scheme: self.scheme.to_string(),
            base_digest: record.base_digest.map(str::to_owned),
            duration_ms: record.duration_ms,
        };
        let path = pending.path().join(ITEM_META);
        let written = serde_json::to_vec_pretty(&meta)
            .map_err(std::io::Error::other)
            .and_then(|json| std::fs::write(&path, json));
        if let Err(e) = written {
            let _ = pending.abort();
            return Err(CatalogError::io(format!("writing {}", path.display()), e));
        }
        let committed = pending.commit()?;
        self.db().insert_build(&NewBuild {
            id: record.id,
            parent: record.parent,
            size: committed.size_bytes,
            duration_ms: record.duration_ms,
            op: record.op,
            base_digest: record.base_digest,
        })?;
        Ok(())
    }

    /// Marks an item as used now (prune goes by last use).
    pub fn touch(&self, id: &StepId) -> Result<(), CatalogError> {
        Ok(self.db().touch(id)?)
    }

    /// A writable cache for a step, recorded as used now.
    pub fn cache(&self, name: &str, uid: u32, gid: u32) -> Result<Box<dyn CacheLease + '_>, CatalogError> {
        let lease = self.store.cache(name, uid, gid)?;
        self.db().touch_cache(name)?;
        Ok(lease)
    }

    /// The directory of a committed item, if present.
    pub fn result(&self, id: &StepId) -> Result<Option<PathBuf>, CatalogError> {
        Ok(self.store.result(id)?)
    }

    /// A committed item's rootfs, readable for as long as the view lives.
    pub fn rootfs(&self, id: &StepId) -> Result<Box<dyn RootfsView + '_>, CatalogError> {
        Ok(self.store.rootfs(id)?)
    }

    /// The log of a committed item.
    pub fn log_path(&self, id: &StepId) -> Result<Option<PathBuf>, CatalogError> {
        Ok(self.result(id)?.map(|p| p.join(LOG)))
    }

    // ---- for people and tools ----

    /// Every recorded item, least recently used first.
    pub fn items(&self) -> Result<Vec<BuildRow>, CatalogError> {
        Ok(self.db().list()?)
    }

    /// One item's row; [`CatalogError::NotFound`] when it is not recorded.
    pub fn item(&self, id: &StepId) -> Result<BuildRow, CatalogError> {
        self.db()
            .get(id)?
            .ok_or_else(|| CatalogError::NotFound(format!("no item {id} in the store")))
    }

    /// An item and its ancestors, the item first (as far as they are recorded).
    pub fn chain(&self, id: &StepId) -> Result<Vec<BuildRow>, CatalogError> {
        let mut chain = vec![self.item(id)?];
        while let Some(parent) = chain.last().and_then(|r| r.parent.clone()) {
            match self.db().get(&parent)? {
                Some(row) => chain.push(row),
                None => break,
            }
        }
        Ok(chain)
    }

    /// The caches the store has or the database remembers, with their last use.
    pub fn caches(&self) -> Result<Vec<CacheInfo>, CatalogError> {
        let on_disk = self.store.list_caches()?;
        let recorded = self.db().caches()?;
        let mut caches: Vec<CacheInfo> = on_disk
            .iter()
            .map(|name| CacheInfo {
                name: name.clone(),
                used: recorded.iter().find(|(n, _, _)| n == name).map(|(_, _, used)| *used),
                on_disk: true,
            })
            .collect();
        for (name, _, used) in recorded {
            if !on_disk.contains(&name) {
                caches.push(CacheInfo {
                    name,
                    used: Some(used),
                    on_disk: false,
                });
            }
        }
        Ok(caches)
    }

    /// Removes a cache from the store and forgets it: [`StoreError::Busy`] while a step
    /// uses it (where the store needs that), [`CatalogError::NotFound`] for an unknown name.
    pub fn remove_cache(&self, name: &str) -> Result<(), CatalogError> {
        let Some(cache) = self.caches()?.into_iter().find(|c| c.name == name) else {
            return Err(CatalogError::NotFound(format!(
                "no cache named {name:?} (`strata cache ls` lists them)"
            )));
        };
        if cache.on_disk {
            self.store.delete_cache(name)?;
        }
        self.db().delete_cache(name)?;
        Ok(())
    }

    /// Item count and sizes, caches, and the filesystem's space.
    pub fn usage(&self) -> Result<Usage, CatalogError> {
        let rows = self.items()?;
        let caches = self.store.list_caches()?.len();
        let disk: DiskUsage = self.store.disk_usage()?;
        Ok(Usage {
            items: rows.len(),
            item_bytes: rows.iter().map(|r| r.size).sum(),
            caches,
            total_bytes: disk.total_bytes,
            free_bytes: disk.free_bytes,
            free_percent: disk.free_percent(),
        })
    }

    /// Deletes `id` and every descendant, children first; `on_delete` sees each id just
    /// before it goes. Items leased by a running build are skipped (with their ancestors).
    /// Returns the ids removed.
    pub fn delete_tree(&self, id: &StepId, on_delete: &mut dyn FnMut(&StepId)) -> Result<Vec<StepId>, CatalogError> {
        let mut removed = Vec::new();
        self.delete_tree_inner(id, on_delete, &mut removed)?;
        Ok(removed)
    }

    fn delete_tree_inner(
        &self,
        id: &StepId,
        on_delete: &mut dyn FnMut(&StepId),
        removed: &mut Vec<StepId>,
    ) -> Result<bool, CatalogError> {
        let mut all_children_gone = true;
        let children = self.db().children(id)?;
        for child in children {
            match child {
                crate::db::Child::Valid(child) => {
                    all_children_gone &= self.delete_tree_inner(&child, on_delete, removed)?;
                }
                // A row edited by hand names no item in the store: only the row goes.
                crate::db::Child::Invalid(raw) => self.db().delete_invalid(&raw)?,
            }
        }
        if !all_children_gone {
            return Ok(false);
        }
        let Some(lease) = self.leases.try_exclusive(id)? else {
            return Ok(false);
        };
        on_delete(id);
        // Without asking `result` first: that would mount the view of an item that may be
        // incomplete; deleting an absent item is a no-op on every store.
        self.store.delete(id)?;
        self.db().delete(id)?;
        lease.removed();
        removed.push(id.clone());
        Ok(true)
    }
}
