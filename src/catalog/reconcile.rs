//! Keeping the database and the store in agreement.
//!
//! Run quietly at start-up (after the store removed its own dead temporaries) and by
//! `strata verify [--repair]`: every row has a committed result, every result has a row and
//! is whole, every parent exists, no temporary outlived its process, SQLite itself is sound.
//! A `kill -9` between commit and insert leaves a result without a row: it is adopted from
//! the `strata.json` the item carries, and what was built on it stays (a parent adopted in
//! the same pass counts as recorded); one whose parent is gone too cannot be adopted, and
//! goes with what was built on it. A result deleted behind strata's back takes its row, and
//! its descendants, with it; so does an item that lost part of itself (a delete cut short).
//! `verify` opens the store without its start-up removal of dead temporaries
//! ([`strata_stores::Leftovers::Keep`]), so those are reported here before anything removes
//! them; temporaries of live processes are never reported.
//!
//! Leftover containers and bundles of dead processes are the sandbox's to find; `verify`
//! adds them to the same report.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use strata_stores::StepId;

use super::{Catalog, CatalogError, ItemMeta};
use crate::db::NewBuild;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Problem {
    /// SQLite's own check failed.
    Database { message: String },
    /// A row whose id or parent is not a step id (a database edited by hand).
    InvalidRow { id: String },
    /// A row whose item is not in the store.
    RowWithoutResult { id: String },
    /// A committed item without a row.
    ResultWithoutRow { id: String },
    /// A row whose parent has no row.
    MissingParent { id: String, parent: String },
    /// A temporary (`result-tmp/<name>` or `cache-tmp/<name>`) whose owner process is dead:
    /// an interrupted build, cache lease or delete.
    StaleTemporary { name: String },
    /// A committed item that lost a part every item has (a delete cut short, or damage).
    IncompleteItem { id: String, reason: String },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Database { message } => write!(f, "database check failed: {message}"),
            Problem::InvalidRow { id } => write!(f, "{id:?}: a row whose id or parent is not a step id"),
            Problem::RowWithoutResult { id } => write!(f, "{id}: recorded in the database but missing from the store"),
            Problem::ResultWithoutRow { id } => write!(f, "{id}: in the store but not in the database"),
            Problem::MissingParent { id, parent } => write!(f, "{id}: parent {parent} is not recorded"),
            Problem::StaleTemporary { name } => write!(f, "{name}: a temporary left by a process that is gone"),
            Problem::IncompleteItem { id, reason } => write!(f, "{id}: incomplete item: {reason}"),
        }
    }
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    pub problems: Vec<Problem>,
    /// What `repair` did, one line each.
    pub repairs: Vec<String>,
}

impl Catalog {
    /// Checks the store against the database; with `repair`, fixes what it finds.
    pub fn reconcile(&self, repair: bool) -> Result<Report, CatalogError> {
        let mut report = Report::default();
        let store = &*self.store;
        let messages = self.db().quick_check()?;
        for message in messages {
            report.problems.push(Problem::Database { message });
        }
        let stale = store.stale_temporaries()?;
        if !stale.is_empty() {
            report
                .problems
                .extend(stale.into_iter().map(|name| Problem::StaleTemporary { name }));
            if repair {
                for name in store.remove_stale_temporaries()? {
                    report.repairs.push(format!("removed {name} (its process is gone)"));
                }
            }
        }
        // Rows before items: a build commits its item before it records it, so an item
        // committed between the two reads is seen without its row (and adopted, which is
        // harmless), never a row without its item (which would be removed).
        let rows = self.db().list()?;
        let results: BTreeSet<StepId> = store.list_results()?.into_iter().collect();
        let row_ids: HashSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        let mut doomed: Vec<StepId> = Vec::new();
        // Rows no build wrote (a database edited by hand): they name no item; only the row goes.
        // (Bound first: the database guard must not live into the loop.)
        let invalid = self.db().invalid_rows()?;
        for raw in invalid {
            report.problems.push(Problem::InvalidRow { id: raw.clone() });
            if repair {
                self.db().delete_invalid(&raw)?;
                report.repairs.push(format!("removed the row {raw:?} (not a step id)"));
            }
        }

        let incomplete: BTreeSet<StepId> = store
            .incomplete_items()?
            .into_iter()
            .map(|(id, reason)| {
                report.problems.push(Problem::IncompleteItem {
                    id: id.to_string(),
                    reason,
                });
                id
            })
            .collect();
        for id in &incomplete {
            if row_ids.contains(id.as_str()) {
                // Removed with its descendants below.
                doomed.push(id.clone());
            } else if repair {
                if let Some(lease) = self.leases.try_exclusive(id)? {
                    store.delete(id)?;
                    lease.removed();
                    report
                        .repairs
                        .push(format!("removed {id} (incomplete, never recorded)"));
                }
            }
        }

        // Items without a row: adoptable when their `strata.json` says how they were made.
        let mut adoptable: BTreeMap<StepId, ItemMeta> = BTreeMap::new();
        for id in &results {
            if row_ids.contains(id.as_str()) || incomplete.contains(id) {
                continue;
            }
            report.problems.push(Problem::ResultWithoutRow { id: id.to_string() });
            match self.item_meta(id)? {
                Some(meta) => {
                    adoptable.insert(id.clone(), meta);
                }
                None if repair => {
                    if let Some(lease) = self.leases.try_exclusive(id)? {
                        store.delete(id)?;
                        lease.removed();
                        report
                            .repairs
                            .push(format!("removed {id} (no record of how it was made)"));
                    }
                }
                None => {}
            }
        }

        // A parent is recorded when it has a row or is adopted in this pass: judging parents
        // by the rows alone would take an adopted item's children for orphans.
        let recorded: HashSet<&str> = row_ids
            .iter()
            .copied()
            .chain(adoptable.keys().map(StepId::as_str))
            .collect();
        let mut unadoptable: HashSet<&StepId> = HashSet::new();
        for (id, meta) in &adoptable {
            if let Some(parent) = &meta.parent {
                if !recorded.contains(parent.as_str()) {
                    // Its chain is gone: removed (with what was built on it) below.
                    report.problems.push(Problem::MissingParent {
                        id: id.to_string(),
                        parent: parent.clone(),
                    });
                    unadoptable.insert(id);
                    doomed.push(id.clone());
                }
            }
        }

        for row in &rows {
            if !results.contains(&row.id) {
                report
                    .problems
                    .push(Problem::RowWithoutResult { id: row.id.to_string() });
                doomed.push(row.id.clone());
            }
            if let Some(parent) = &row.parent {
                if !recorded.contains(parent.as_str()) {
                    report.problems.push(Problem::MissingParent {
                        id: row.id.to_string(),
                        parent: parent.to_string(),
                    });
                    doomed.push(row.id.clone());
                }
            }
        }
        if repair {
            // Adopted before anything is removed: an adopted item built on a removed one is
            // then found as its child, and goes with it.
            for (id, meta) in &adoptable {
                // Recorded meanwhile by the build that committed it: its row says more.
                if unadoptable.contains(id) || self.db().get(id)?.is_some() {
                    continue;
                }
                let parent: Option<StepId> = meta.parent.as_deref().and_then(|p| p.parse().ok());
                self.db().insert_build(&NewBuild {
                    id,
                    parent: parent.as_ref(),
                    size: 0,
                    duration_ms: meta.duration_ms,
                    op: &meta.op,
                    base_digest: meta.base_digest.as_deref(),
                })?;
                report.repairs.push(format!("adopted {id} (committed, never recorded)"));
            }
            let mut seen = HashSet::new();
            doomed.retain(|id| seen.insert(id.clone()));
            let mut gone: HashSet<StepId> = HashSet::new();
            for id in doomed {
                // Gone already, as a descendant of one removed before.
                if gone.contains(&id) {
                    continue;
                }
                // Descendants of a lost item cannot be trusted on every store (an overlay
                // layer needs its parents): remove them, children first.
                for removed in self.delete_tree(&id, &mut |_| {})? {
                    gone.insert(removed.clone());
                    report
                        .repairs
                        .push(format!("removed {removed} (its chain was incomplete)"));
                }
            }
        }
        Ok(report)
    }

    /// What an item's `strata.json` says of how it was made, if it says.
    ///
    /// Read from the item's directory (`result/<id>/`, the OBuilder layout) where it is
    /// there, without asking the store for the item: that would mount the overlay store's
    /// view, which fails for an item whose parent layer is gone. Else (a ZFS dataset not
    /// mounted) through [`strata_stores::Store::result`].
    fn item_meta(&self, id: &StepId) -> Result<Option<ItemMeta>, CatalogError> {
        let dir = self.store.root().join("result").join(id.as_str());
        if let Some(meta) = ItemMeta::read(&dir) {
            return Ok(Some(meta));
        }
        Ok(self.store.result(id)?.as_deref().and_then(ItemMeta::read))
    }
}
