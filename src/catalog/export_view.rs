//! What `strata export` reads from the catalog: an item's chain, base first, with each
//! item's directory, and the step context file (`context.json`) the builder writes into every
//! run and copy item: the environment, working directory and user the step ran with.
//!
//! The context cannot be rebuilt from the chain's ops: `(env ...)`, `(workdir ...)` and
//! `(user ...)` make no item of their own, so they are not in the recorded op texts.

use std::path::{Path, PathBuf};

use strata_stores::StepId;

use super::{Catalog, CatalogError};
use crate::db::BuildRow;

/// The file in a run or copy item that records the context the step ran in.
pub const STEP_CONTEXT: &str = "context.json";

/// The build context of a step (`context.json`): its environment in order (the image's,
/// the spec's `(env ...)` ops on top, and the default `PATH` when neither set one), its
/// working directory and its numeric user.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StepContext {
    pub env: Vec<(String, String)>,
    pub workdir: String,
    pub uid: u32,
    pub gid: u32,
}

impl StepContext {
    /// Writes `item/context.json` (the item is being filled; a clone's inherited copy is
    /// replaced).
    pub fn write(&self, item: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(item.join(STEP_CONTEXT), json)
    }

    /// Reads `item/context.json`; `None` when it is missing (a base item, or an item built by
    /// a strata that did not record it) or unreadable.
    pub fn read(item: &Path) -> Option<StepContext> {
        let bytes = std::fs::read(item.join(STEP_CONTEXT)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// One item of an export: its row and its directory in the store.
#[derive(Debug, Clone)]
pub struct ChainItem {
    pub row: BuildRow,
    pub dir: PathBuf,
}

impl Catalog {
    /// `id` and its ancestors, the base first, each with its directory. Fails with
    /// [`CatalogError::NotFound`] for an unknown id, and when an ancestor is missing from the
    /// database or the store (the chain would not start at a base image).
    pub fn export_chain(&self, id: &StepId) -> Result<Vec<ChainItem>, CatalogError> {
        let mut rows = self.chain(id)?;
        if let Some(parent) = rows.last().and_then(|r| r.parent.clone()) {
            return Err(CatalogError::NotFound(format!(
                "{id} has an ancestor {parent} that is not in the store"
            )));
        }
        rows.reverse();
        let mut chain = Vec::with_capacity(rows.len());
        for row in rows {
            let dir = self
                .result(&row.id)?
                .ok_or_else(|| CatalogError::NotFound(format!("item {} is recorded but not in the store", row.id)))?;
            chain.push(ChainItem { row, dir });
        }
        Ok(chain)
    }
}
