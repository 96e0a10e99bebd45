//! The catalog's part of `healthcheck`: the database is sound and agrees with the store, the
//! store can clone, write, commit and delete, and a cache keeps what a step wrote. Each
//! probe leaves nothing behind (its items are never recorded).

use std::time::Instant;

use sha2::{Digest, Sha256};
use strata_stores::{Prepared, StepId};

use super::{Catalog, CatalogError};

/// An id no build will ever use.
pub(crate) fn unique_id(label: &str) -> StepId {
    let mut h = Sha256::new();
    h.update(format!("strata-healthcheck {label} {} {:?}", std::process::id(), Instant::now()).as_bytes());
    StepId::from_digest(&h.finalize())
}

fn broken(what: &str) -> CatalogError {
    CatalogError::io(what, std::io::Error::other("self-test failed"))
}

impl Catalog {
    /// SQLite's own check and [`Catalog::reconcile`] without repairs: the item count, or
    /// the first problem.
    pub fn check_database(&self) -> Result<String, String> {
        let report = self.reconcile(false).map_err(|e| e.to_string())?;
        match report.problems.first() {
            None => Ok(format!("{} items", self.db().count().map_err(|e| e.to_string())?)),
            Some(p) => Err(format!("{} problems, first: {p}", report.problems.len())),
        }
    }

    /// Clones, writes, commits and deletes two throwaway items.
    pub fn check_store(&self) -> Result<String, CatalogError> {
        let store = &*self.store;
        let (a, b) = (unique_id("a"), unique_id("b"));
        let write = |base: Option<&StepId>, id: &StepId| -> Result<(), CatalogError> {
            match store.prepare(base, id)? {
                Prepared::Exists(_) => Ok(()),
                Prepared::Pending(pending) => {
                    let rootfs = pending.path().join("rootfs");
                    std::fs::create_dir_all(&rootfs)
                        .and_then(|_| std::fs::write(rootfs.join(id.as_str()), b"healthcheck"))
                        .map_err(|e| CatalogError::io(format!("writing in {}", rootfs.display()), e))?;
                    pending.commit()?;
                    Ok(())
                }
            }
        };
        let result = write(None, &a).and_then(|_| write(Some(&a), &b)).and_then(|_| {
            // Through a view: on overlayfs `result/<id>/rootfs` is only a mount point while
            // no view is held.
            let view = store.rootfs(&b)?;
            let content =
                std::fs::read(view.path().join(a.as_str())).map_err(|e| CatalogError::io("reading the clone", e))?;
            if content != b"healthcheck" {
                return Err(broken("the clone lost its parent's data"));
            }
            Ok(())
        });
        for id in [&b, &a] {
            if store.result(id)?.is_some() {
                store.delete(id)?;
            }
        }
        result.map(|_| "clone, write, commit, delete".to_owned())
    }

    /// Writes into a cache, releases it, and reads the write back through a new lease.
    pub fn check_cache(&self) -> Result<String, CatalogError> {
        let store = &*self.store;
        let name = format!("strata-healthcheck-{}", std::process::id());
        let lease = store.cache(&name, 0, 0)?;
        let file = lease.path().join("probe");
        std::fs::write(&file, b"x").map_err(|e| CatalogError::io(format!("writing {}", file.display()), e))?;
        lease.release()?;
        let lease = store.cache(&name, 0, 0)?;
        let ok = lease.path().join("probe").exists();
        lease.release()?;
        store.delete_cache(&name)?;
        if ok {
            Ok("write, release, reread".to_owned())
        } else {
            Err(broken("a released cache lost its data"))
        }
    }

    /// The filesystem's free space against a minimum percentage.
    pub fn check_free_space(&self, min_free_percent: f64) -> Result<String, String> {
        let usage = self.store.disk_usage().map_err(|e| e.to_string())?;
        let free = usage.free_percent();
        if free >= min_free_percent {
            Ok(format!("{free:.1}% free"))
        } else {
            Err(format!("{free:.1}% free, below {min_free_percent}%"))
        }
    }
}
