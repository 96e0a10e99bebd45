//! Prune: delete least-recently-used leaves until a target is met.
//!
//! Leaves only (a parent becomes a candidate once its children are gone); each candidate is
//! re-read just before deletion (its `used` may have moved: obuilder#157) and taken with the
//! exclusive lease, so an item any running build (in any process) uses or is about to clone
//! is skipped (ocaml-ci#873). Deletes do not wait for the filesystem's cleaner; the free
//! space target is judged on `statvfs` plus the recorded sizes freed so far, whichever
//! says more, so a slow btrfs cleaner cannot make prune delete more than needed.
//!
//! Two prunes at once: each skips what the other holds (the exclusive lease), so they
//! never delete the same item twice and never fight; both stop when the target is met.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use strata_stores::StepId;

use super::lease::ExclusiveLease;
use super::{Catalog, CatalogError};
use crate::db::BuildRow;

/// When prune may stop early.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KeepFree {
    Percent(f64),
    Bytes(u64),
}

#[derive(Debug, Clone, Default)]
pub struct PruneOptions {
    /// Only items last used before this time (ms since the epoch).
    pub before_ms: i64,
    /// At most this many items.
    pub limit: Option<usize>,
    /// Stop once this much is free.
    pub keep_free: Option<KeepFree>,
    /// Stop once the items use at most this many bytes (by recorded sizes).
    pub max_used: Option<u64>,
    /// Say what would go; change nothing.
    pub dry_run: bool,
    /// Also delete caches not in use.
    pub caches: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Removed {
    pub id: StepId,
    pub size: u64,
    pub used: i64,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct PruneReport {
    pub removed: Vec<Removed>,
    pub bytes_freed: u64,
    /// Candidates skipped because a build holds them.
    pub skipped_in_use: usize,
    /// Caches removed (with `dry_run`: the caches that would be).
    pub caches_removed: Vec<String>,
    pub seconds: f64,
    pub dry_run: bool,
    /// Why prune stopped.
    pub stopped: String,
}

const BATCH: usize = 64;

impl Catalog {
    fn target_met(
        &self,
        options: &PruneOptions,
        start_free: u64,
        freed: u64,
        used_total: u64,
    ) -> Result<Option<String>, CatalogError> {
        if let Some(max) = options.max_used {
            if used_total <= max {
                return Ok(Some(format!("items use {used_total} bytes, at most {max}")));
            }
        }
        if let Some(keep) = options.keep_free {
            let usage = self.store.disk_usage()?;
            let free = usage
                .free_bytes
                .max(start_free.saturating_add(freed))
                .min(usage.total_bytes);
            let met = match keep {
                KeepFree::Percent(p) => usage.total_bytes > 0 && 100.0 * free as f64 / usage.total_bytes as f64 >= p,
                KeepFree::Bytes(b) => free >= b,
            };
            if met {
                return Ok(Some(format!("{free} bytes free")));
            }
        }
        Ok(None)
    }

    pub fn prune(
        &self,
        options: &PruneOptions,
        on_remove: &mut dyn FnMut(&Removed),
    ) -> Result<PruneReport, CatalogError> {
        let started = Instant::now();
        let mut report = PruneReport {
            dry_run: options.dry_run,
            ..PruneReport::default()
        };
        let start_free = self.store.disk_usage()?.free_bytes;
        let mut used_total: u64 = self.db().list()?.iter().map(|r| r.size).sum();
        if options.dry_run {
            self.plan_prune(options, start_free, &mut used_total, &mut report, on_remove)?;
            if options.caches {
                // Each would be tried; one a build holds then may be skipped (Busy).
                report.caches_removed = self.store.list_caches()?;
            }
        } else {
            let mut skipped: HashSet<StepId> = HashSet::new();
            loop {
                let removed = report.removed.len();
                if let Some(why) = self.should_stop(options, start_free, removed, report.bytes_freed, used_total)? {
                    report.stopped = why;
                    break;
                }
                let candidates: Vec<BuildRow> = self
                    .db()
                    .lru_leaves(options.before_ms, BATCH + skipped.len())?
                    .into_iter()
                    .filter(|r| !skipped.contains(&r.id))
                    .collect();
                if candidates.is_empty() {
                    report.stopped = "no more candidates".to_owned();
                    break;
                }
                // Remove this batch of leaves from the store, holding each one's lease until
                // its row is gone too; then drop all their rows in one transaction. (A crash
                // in between leaves rows without items, which the next command repairs.)
                let mut done: Vec<(ExclusiveLease, Removed)> = Vec::new();
                for candidate in candidates {
                    let so_far = report.removed.len() + done.len();
                    if !done.is_empty()
                        && self
                            .should_stop(options, start_free, so_far, report.bytes_freed, used_total)?
                            .is_some()
                    {
                        break;
                    }
                    let id = candidate.id.clone();
                    let Some(lease) = self.leases.try_exclusive(&id)? else {
                        skipped.insert(candidate.id.clone());
                        report.skipped_in_use += 1;
                        continue;
                    };
                    // Re-check under the lease: still recorded, still a leaf, still old.
                    let fresh = self.db().get(&id)?;
                    let Some(fresh) = fresh else { continue };
                    if fresh.children > 0 || fresh.used >= options.before_ms {
                        continue;
                    }
                    if self.store.result(&id)?.is_some() {
                        self.store.delete(&id)?;
                    }
                    report.bytes_freed += fresh.size;
                    used_total = used_total.saturating_sub(fresh.size);
                    let removed = Removed {
                        id: fresh.id,
                        size: fresh.size,
                        used: fresh.used,
                    };
                    done.push((lease, removed));
                }
                // Parents may have become leaves, and the target may be met: re-query after.
                self.forget_removed(done, &mut report, on_remove)?;
            }
            if !report.removed.is_empty() {
                self.store.complete_deletes()?;
            }
            if options.caches {
                self.prune_caches(&mut report)?;
            }
        }
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Why prune stops before removing another item, if it does, with `removed` items
    /// (`freed` bytes) gone or going so far.
    fn should_stop(
        &self,
        options: &PruneOptions,
        start_free: u64,
        removed: usize,
        freed: u64,
        used_total: u64,
    ) -> Result<Option<String>, CatalogError> {
        if options.keep_free.is_some() || options.max_used.is_some() {
            if let Some(why) = self.target_met(options, start_free, freed, used_total)? {
                return Ok(Some(format!("target met: {why}")));
            }
        }
        let limit = options.limit.unwrap_or(usize::MAX);
        if removed >= limit {
            return Ok(Some(format!("limit of {limit} reached")));
        }
        Ok(None)
    }

    /// Deletes the rows of items just removed from the store (one transaction), then their
    /// lease files, and reports them.
    fn forget_removed(
        &self,
        done: Vec<(ExclusiveLease, Removed)>,
        report: &mut PruneReport,
        on_remove: &mut dyn FnMut(&Removed),
    ) -> Result<(), CatalogError> {
        if done.is_empty() {
            return Ok(());
        }
        let ids: Vec<&StepId> = done.iter().map(|(_, r)| &r.id).collect();
        // (Bound first: the database guard must not live into the retry.)
        let deleted = self.db().delete_many(&ids);
        if let Err(e) = deleted {
            if !e.is_disk_full() {
                return Err(e.into());
            }
            // A full disk: what the deletes freed comes back only once the filesystem's
            // cleaner has run (btrfs, ZFS). Wait for it, then retry.
            self.store.complete_deletes()?;
            self.db().delete_many(&ids)?;
        }
        for (lease, removed) in done {
            lease.removed();
            on_remove(&removed);
            report.removed.push(removed);
        }
        Ok(())
    }

    fn prune_caches(&self, report: &mut PruneReport) -> Result<(), CatalogError> {
        for name in self.store.list_caches()? {
            match self.store.delete_cache(&name) {
                Ok(()) => {
                    self.db().delete_cache(&name)?;
                    report.caches_removed.push(name);
                }
                Err(strata_stores::StoreError::Busy(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// `--dry-run`: the same order, computed in memory.
    fn plan_prune(
        &self,
        options: &PruneOptions,
        start_free: u64,
        used_total: &mut u64,
        report: &mut PruneReport,
        on_remove: &mut dyn FnMut(&Removed),
    ) -> Result<(), CatalogError> {
        let rows = self.db().list()?;
        let mut children: HashMap<StepId, usize> = HashMap::new();
        for r in &rows {
            if let Some(p) = &r.parent {
                *children.entry(p.clone()).or_default() += 1;
            }
        }
        let mut gone: HashSet<StepId> = HashSet::new();
        loop {
            // The same batches as the real prune: the current leaves, oldest first (`rows`
            // is ordered by `used`); a parent they leave childless waits for the next batch.
            let batch: Vec<&BuildRow> = rows
                .iter()
                .filter(|r| {
                    !gone.contains(&r.id)
                        && r.used < options.before_ms
                        && children.get(&r.id).copied().unwrap_or(0) == 0
                })
                .take(BATCH)
                .collect();
            if batch.is_empty() {
                report.stopped = "no more candidates".to_owned();
                return Ok(());
            }
            for row in batch {
                let removed = report.removed.len();
                if let Some(why) = self.should_stop(options, start_free, removed, report.bytes_freed, *used_total)? {
                    report.stopped = why;
                    return Ok(());
                }
                gone.insert(row.id.clone());
                if let Some(p) = &row.parent {
                    if let Some(n) = children.get_mut(p) {
                        *n = n.saturating_sub(1);
                    }
                }
                let removed = Removed {
                    id: row.id.clone(),
                    size: row.size,
                    used: row.used,
                };
                report.bytes_freed += removed.size;
                *used_total = used_total.saturating_sub(removed.size);
                on_remove(&removed);
                report.removed.push(removed);
            }
        }
    }
}

/// `--older-than D` as a cutoff in ms since the epoch.
pub fn cutoff_older_than(age: Duration) -> i64 {
    crate::db::now_ms() - age.as_millis() as i64
}
